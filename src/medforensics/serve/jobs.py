"""Scan jobs of the review service: uploads, the demo, the quiz and the gateway's checked series
are scanned in worker processes (the same ``scan_source`` as ``medforensics scan``), their
heatmaps kept for the viewer's overlays, and each result becomes a work-list item.

A job's files live under the service's data folder; an item records where (relative to that
folder, so the folder can move), the image's shape and default window, and its heatmap file.
"""
from __future__ import annotations

import logging
import multiprocessing
import queue as queue_mod
import threading
import uuid
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from ..core import Image, MedForensicsError, one_line

LOG = logging.getLogger("medforensics.serve")

__all__ = ["JobRunner", "load_item_image", "scan_one"]


def scan_one(files: list[str], uid: str | None, heat_path: str, settings: Any) -> dict:
    """In a worker process: scan the source made of ``files`` (the one with ``uid`` when they
    hold several), save its heatmaps to ``heat_path`` and return its record with a ``view`` entry
    (shape, default window, heatmap file) for the viewer."""
    from ..engine import worker_detectors
    from ..io import discover
    from ..scan import scan_source
    from .render import default_window, save_heatmaps

    sources, _ = discover(files)
    source = next((s for s in sources if uid is None or s.uid == uid), None)
    if source is None:
        raise MedForensicsError(files[0], "no image found")
    view: dict[str, Any] = {}

    def keep(verdict, image: Image) -> None:
        view["shape"] = list(image.pixels.shape)
        view["window"] = [float(v) for v in default_window(image)]
        if any(e.heatmap is not None for e in verdict.evidence):
            save_heatmaps(verdict, Path(heat_path))
            view["heatmaps"] = Path(heat_path).name

    verdict = scan_source(source, worker_detectors(settings), settings.config, threads=settings.threads or 1,
                          then=keep)
    record = verdict.to_dict()
    view["files"] = [str(f) for f in source.files]
    record["view"] = view
    return record


def load_item_image(data: Path, record: dict) -> Image:
    """The pixels of an item, read again from its files (paths relative to ``data``)."""
    from ..io import discover, load_source

    files = [str(data / f) for f in record.get("view", {}).get("files", [])]
    if not files:
        raise MedForensicsError(record.get("path", "item"), "has no image files to show")
    sources, _ = discover(files)
    uid = record.get("uid")
    source = next((s for s in sources if s.uid == uid), sources[0] if len(sources) == 1 else None)
    if source is None:
        raise MedForensicsError(record.get("path", "item"), "its image files are gone or changed")
    return load_source(source)


@dataclass
class _Job:
    job_id: int
    paths: list[Path]
    source: str
    # called with (item_id, spec) for each stored item (the quiz registers its images)
    on_item: Callable[[int, Any], None] | None = None
    specs: dict[str, Any] | None = None
    gateway_series: str | None = None
    gateway_checked_at: str | None = None
    # the item whose record this job's single result replaces (a gateway series checked again)
    replace_item: int | None = None


class JobRunner:
    """One thread that runs the queued jobs one after another, each source of a job in the pool
    of ``workers`` spawned scan processes; progress goes to the store as items are added."""

    def __init__(self, store, data: Path, scan_settings: Any, workers: int = 1):
        self.store, self.data, self.scan_settings, self.workers = store, Path(data), scan_settings, workers
        self._queue: queue_mod.Queue[_Job | None] = queue_mod.Queue()
        self._pool: ProcessPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        (self.data / "results").mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="serve-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._pool is not None:   # the item being scanned finishes; the rest are dropped
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, job_id: int, paths: Sequence[Path], *, source: str = "scan",
               on_item: Callable[[int, Any], None] | None = None, specs: dict[str, Any] | None = None,
               gateway_series: str | None = None, gateway_checked_at: str | None = None,
               replace_item: int | None = None) -> None:
        """Queue ``paths`` (files and folders under the data folder) as job ``job_id``."""
        self._queue.put(_Job(job_id, [Path(p) for p in paths], source, on_item, specs, gateway_series,
                             gateway_checked_at, replace_item))

    def idle(self) -> bool:
        return self._queue.empty() and not any(j.state in ("queued", "running") for j in self.store.jobs(limit=20))

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as e:  # noqa: BLE001 - one failed job must not stop the others; it says why
                # the reason (which may name uploaded files) goes to the job, not to the log
                LOG.error("job %s failed (%s)", job.job_id, type(e).__name__)
                self.store.update_job(job.job_id, state="failed", message=one_line(e, 300))

    def _run(self, job: _Job) -> None:
        from ..io import discover

        sources, skipped = discover(job.paths)
        self.store.update_job(job.job_id, state="running", total=len(sources), done=0,
                              message=f"{len(skipped)} file(s) skipped (not images)" if skipped else "")
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        futures: list[tuple[Any, Future]] = []
        for src in sources:
            heat = self.data / "results" / f"{uuid.uuid4().hex}.npz"
            files = [str(f) for f in src.files]
            futures.append((src, self._pool.submit(scan_one, files, src.uid, str(heat), self.scan_settings)))
        errors = 0
        for done, (src, fut) in enumerate(futures, 1):
            try:
                record = fut.result()
            except Exception as e:  # noqa: BLE001 - the item is kept with its error, as scan keeps it
                record = {"path": str(src.path), "kind": "series" if src.kind == "dicom-series" else "image",
                          "uid": src.uid, "n_instances": len(src.files), "modality": None, "evidence": [],
                          "errors": [str(MedForensicsError.wrap(src.path, e, "cannot be scanned"))],
                          "view": {"files": [str(f) for f in src.files]}}
            errors += bool(record.get("errors"))
            self._store_item(job, src, record)
            self.store.update_job(job.job_id, done=done)
        self.store.update_job(job.job_id, state="done",
                              message=f"{len(sources)} item(s), {errors} with errors" if errors else
                              f"{len(sources)} item(s)")

    def _store_item(self, job: _Job, src, record: dict) -> None:
        view = record.setdefault("view", {})
        view["files"] = [_relative(self.data, f) for f in view.get("files", [])]
        record["path"] = _relative(self.data, record["path"])
        # messages name files as the work list does, without where the service keeps its data
        root = f"{self.data.resolve()}/"
        for key in ("errors", "warnings"):
            record[key] = [m.replace(root, "") for m in record.get(key, [])]
        shape = view.get("shape") or []
        n_frames = int(shape[0]) if len(shape) == 3 else 1
        name = _relative(self.data / "uploads", record["path"]) if record["path"].startswith("uploads/") \
            else Path(record["path"]).name
        if job.source == "quiz":
            name = "quiz image"
        if job.gateway_checked_at:
            record["gateway_checked_at"] = job.gateway_checked_at
        if job.replace_item is not None:
            self.store.replace_record(job.replace_item, record)
            return
        item_id = self.store.add_item(job.job_id, path=record["path"], name=name, source=job.source, record=record,
                                      n_frames=n_frames, gateway_series=job.gateway_series)
        if job.on_item is not None:
            job.on_item(item_id, (job.specs or {}).get(str(Path(src.files[0]).resolve())))


def _relative(base: Path, path: str) -> str:
    """``path`` relative to ``base`` when it lies inside it (POSIX separators), else unchanged."""
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)
