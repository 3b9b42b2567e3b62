"""Scan engines: the ordered, bounded window of submitted work that the local process pool and
Dask share (:func:`in_input_order`), and the distributed engine on Dask distributed:
``scan --engine dask [--scheduler ADDRESS]``.

Work is split by **source** (:func:`medforensics.io.discover` groups DICOM instances into series,
so one task is one series, one radiograph or one volume file). Each task ships the source (file
paths: the workers must see the same file system) and a small :class:`Settings` object; each
worker process loads the detectors once per distinct settings and keeps them (:func:`worker_detectors`).
Verdicts travel back without heatmaps, and :meth:`DaskEngine.run` yields them in input order from
a bounded window of submitted tasks, so that ``scan --json`` writes the same lines as a local scan.

A worker that dies (killed, out of memory) loses its tasks; the scheduler runs them again on
another worker. A source whose task has killed ``allowed_failures + 1`` workers is given up: its
verdict carries an error (and no fingerprint, so that ``scan --resume`` tries it again).

See docs/scale.md for running on a cluster (``dask scheduler`` / ``dask worker``, dask-jobqueue).
"""
from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import threading
import time
import uuid
from asyncio import CancelledError as AsyncCancelled
from concurrent.futures import CancelledError as PoolCancelled
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from .core import Kind, MedForensicsError, Verdict, one_line
from .detectors.base import DetectorOptions
from .fusion import FusionConfig
from .io import Source

if TYPE_CHECKING:  # pragma: no cover
    from distributed import Client, LocalCluster

#: How many times a task may be running on a worker that dies before the source is given up
#: (the scheduler's ``distributed.scheduler.allowed-failures``, set on a local cluster; a
#: separate scheduler uses its own configuration).
ALLOWED_FAILURES = 3


def worker_threads(workers: int) -> int:
    """Threads per worker process (torch's, and those that run a 2D image's detectors at once)
    when ``workers`` processes share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def in_input_order(jobs: Iterable[tuple[Source, Verdict | None]], submit: Callable[[Source], object],
                   result: Callable[[Source, object], Verdict], limit: Callable[[], int],
                   cancel: Callable[[list], None]) -> Iterator[Verdict]:
    """The ordered, bounded window of both engines (the local process pool and Dask): yield one
    verdict per ``(source, earlier)`` job in input order, ``earlier`` (a reused result) as it is,
    otherwise ``result(source, submit(source))``. At most ``limit()`` submitted jobs wait at a
    time, so memory stays flat on long runs and an interruption leaves little queued work;
    closing the generator early hands the jobs still pending to ``cancel``.
    """
    window: deque[tuple[Source, object]] = deque()

    def take() -> Verdict:
        src, item = window.popleft()
        return item if isinstance(item, Verdict) else result(src, item)

    try:
        for src, earlier in jobs:
            window.append((src, earlier if earlier is not None else submit(src)))
            while len(window) > limit() or (window and isinstance(window[0][1], Verdict)):
                yield take()
        while window:
            yield take()
    finally:
        pending = [item for _, item in window if not isinstance(item, Verdict)]
        if pending:
            cancel(pending)


@dataclass(frozen=True)
class Settings:
    """What every task needs besides its source: the detectors' names and options, fusion
    thresholds, whether to draw figures, and torch's threads per worker (``None``: leave it).
    ``key`` names the detector set a worker caches (a digest of names and options)."""

    names: tuple[str, ...] | None
    options: DetectorOptions | None
    config: FusionConfig
    figures: bool = False
    debug: bool = False
    threads: int | None = None

    @property
    def key(self) -> str:
        return hashlib.sha256(pickle.dumps((self.names, self.options, self.threads))).hexdigest()


# ------------------------------------------------------------------------------ on the workers

#: per worker process: the detectors of the latest settings (``Settings.key`` -> detectors)
_LOADED: dict[str, list] = {}
_LOCK = threading.Lock()


def worker_detectors(settings: Settings) -> list:
    """On a worker: the detectors of ``settings``, loaded on this process's first task and kept
    (only the latest set: a worker serving two scans with other detectors reloads)."""
    key = settings.key
    with _LOCK:
        if key not in _LOADED:
            from .detectors.base import load_detectors

            if settings.threads:
                import torch

                torch.set_num_threads(settings.threads)
            _LOADED.clear()
            _LOADED[key] = load_detectors(list(settings.names) if settings.names is not None else None,
                                          settings.options)
        return _LOADED[key]


def _ignore_sigint() -> None:
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _interrupts_plugin():
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreInterrupts(WorkerPlugin):
        """Workers of a local cluster ignore Ctrl-C (also those restarted after a crash)."""

        def setup(self, worker) -> None:
            _ignore_sigint()

    return IgnoreInterrupts()


# ------------------------------------------------------------------------------ on the client

class ClusterLost(Exception):
    """The connection to the Dask scheduler was lost during a scan (:func:`medforensics.scan.scan`
    turns it into ``ScanAborted``)."""


class DaskEngine:
    """A connection to a Dask scheduler (``scheduler="tcp://HOST:8786"``) or, without one, a
    :class:`distributed.LocalCluster` of ``workers`` processes with one thread each, started by
    :meth:`start` and closed by :meth:`close` (or use it as a context manager).

    ``connect_timeout`` (seconds) bounds the wait for a scheduler; by default Dask's
    ``distributed.comm.timeouts.connect``.
    """

    def __init__(self, scheduler: str | None = None, workers: int = 2, *, connect_timeout: float | None = None,
                 allowed_failures: int = ALLOWED_FAILURES):
        self.scheduler = scheduler
        self.workers = max(1, workers)
        self.connect_timeout = connect_timeout
        self.allowed_failures = allowed_failures
        self.client: Client | None = None
        self.cluster: LocalCluster | None = None

    def __enter__(self) -> "DaskEngine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def local(self) -> bool:
        """Whether this engine runs its own local cluster."""
        return self.scheduler is None

    def start(self) -> "DaskEngine":
        """Start the local cluster or connect to the scheduler; a scheduler that cannot be reached
        is a :class:`~medforensics.core.MedForensicsError` naming its address."""
        if self.client is not None:
            return self
        try:
            import dask
            from distributed import Client, LocalCluster
        except ImportError:
            raise MedForensicsError(None, "the dask engine needs Dask distributed: pip install 'medforensics[scale]'") from None
        import logging

        if self.local:
            with dask.config.set({"distributed.scheduler.allowed-failures": self.allowed_failures}):
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", silence_logs=logging.ERROR)
            self.client = Client(self.cluster, set_as_default=False)
            # Ctrl-C reaches the whole process group: this process stops the scan and reports;
            # the workers, like the local pool's, would only print tracebacks
            self.client.register_plugin(_interrupts_plugin(), name="medforensics-ignore-sigint")
            return self
        timeout = self.connect_timeout if self.connect_timeout is not None else \
            dask.config.get("distributed.comm.timeouts.connect")
        try:
            self.client = Client(self.scheduler, timeout=timeout, set_as_default=False)
        except Exception as e:  # noqa: BLE001 - OSError, TimeoutError, ValueError of a bad address: one line
            raise MedForensicsError.wrap(self.scheduler, e, "cannot connect to the Dask scheduler") from None
        return self

    def close(self) -> None:
        """Disconnect (and stop the local cluster). Tasks still queued by this client are
        forgotten by the scheduler."""
        client, cluster, self.client, self.cluster = self.client, self.cluster, None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def threads(self) -> int:
        """The task threads of all workers connected now."""
        assert self.client is not None, "the engine is not started"
        return sum(self.client.nthreads().values())

    def settings(self, names, options, config, figures, debug) -> Settings:
        """The tasks' settings; on a local cluster torch gets its share of the cores as in the
        local process pool, on a cluster one thread per task thread (run one worker process per
        core, ``--nthreads 1``)."""
        threads = worker_threads(self.workers) if self.local else 1
        return Settings(tuple(names) if names is not None else None, options, config, figures, debug, threads)

    def run(self, jobs: Iterable[tuple[Source, Verdict | None]], settings: Settings,
            task: Callable[[Source, Settings], Verdict]) -> Iterator[Verdict]:
        """Yield one verdict per ``(source, earlier)`` job, in order: ``earlier`` (a reused
        result) as it is, otherwise ``task(source, settings)`` run on a worker (a module-level
        function, which the workers import: :func:`medforensics.scan.scan` hands its own). At most
        about twice as many tasks as the cluster has task threads are submitted at a time;
        closing the generator cancels them. A lost scheduler raises :class:`ClusterLost`."""
        self.start()
        client = self.client
        assert client is not None
        from distributed import KilledWorker

        run_id = uuid.uuid4().hex[:8]
        numbers = itertools.count()
        limit, checked = max(4, 2 * self.threads()), time.monotonic()

        def submit(src: Source):
            return client.submit(task, src, settings, pure=False, key=f"medforensics-scan-{run_id}-{next(numbers)}")

        def current_limit() -> int:
            nonlocal limit, checked
            if time.monotonic() - checked > 2:  # workers may come and go (adaptive clusters)
                limit, checked = max(4, 2 * self.threads()), time.monotonic()
            return limit

        def result(src: Source, future) -> Verdict:
            try:
                return future.result()
            except KilledWorker as e:
                return _given_up(src, e)
            except (AsyncCancelled, PoolCancelled, OSError) as e:  # the scheduler went away (a task's own errors are in its verdict)
                if settings.debug:
                    raise
                raise ClusterLost(f"lost the Dask cluster ({type(e).__name__}: {one_line(e, 200)})") from None

        def cancel(pending: list) -> None:
            if self.client is not None:
                self.client.cancel(pending)

        yield from in_input_order(jobs, submit, result, current_limit, cancel)


def _given_up(source: Source, e: BaseException) -> Verdict:
    """The verdict of a source whose task killed too many workers (the scheduler's
    ``allowed-failures``); no fingerprint, so that a resumed scan tries it again."""
    kind = Kind.SERIES if source.kind == "dicom-series" else Kind.IMAGE
    return Verdict(path=str(source.path), kind=kind, uid=source.uid, n_instances=len(source.files), score=None,
                   label=None, errors=[f"{source.path}: every Dask worker that analysed it died (killed, perhaps for "
                                       f"lack of memory): {one_line(e, 300)}"])
