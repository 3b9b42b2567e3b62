"""The scan pipeline: sources -> images -> detectors -> evidence -> fusion -> verdicts.

Every source yields exactly one :class:`~medforensics.core.Verdict`: an unreadable one yields a
verdict with ``errors`` and no score, and the scan goes on. A detector that fails on an image adds
an error to that image's verdict; the others still run.

A folder with a CT slice and a copy of it cut short (four fast detectors named here; without
names every detector runs, and ``workers=4`` would analyse sources in four processes):

>>> import shutil
>>> import tempfile
>>> from pathlib import Path
>>> from pydicom.data import get_testdata_file
>>> from medforensics.scan import scan
>>> folder = tempfile.TemporaryDirectory()
>>> study = Path(folder.name)
>>> _ = shutil.copy(get_testdata_file("CT_small.dcm"), study / "a.dcm")
>>> _ = (study / "b.dcm").write_bytes((study / "a.dcm").read_bytes()[:2000])
>>> for verdict in scan([study], ["copy_move", "dicom_header", "noise_residual", "ct_physics"]):
...     print(Path(verdict.path).name, verdict.label, verdict.assessed, verdict.errors)
a.dcm authentic ['copy_move', 'dicom_header', 'noise_residual', 'ct_physics'] []
b.dcm None [] ['...b.dcm: no pixel data (not an image: CT Image Storage)']
>>> folder.cleanup()
"""
from __future__ import annotations

import hashlib
import re
import signal
import sys
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from .core import Evidence, Image, Kind, MedForensicsError, Verdict, one_line
from .detectors.base import Detector, DetectorOptions, load_detectors
from .engine import DaskEngine, in_input_order, worker_threads
from .engine import Settings as DaskSettings
from .fusion import FusionConfig, fuse
from .io import Source, discover, load_source

if TYPE_CHECKING:   # the summary module imports rich, which scanning without a terminal does not need
    from .report.summary import Tally


#: Why a detector that reads Hounsfield units does not assess a rendered CT image
#: (``Image.meta["not_physical_units"]``; the DICOM loader sets it when a rescale is unusable).
DISPLAY_VALUES = ("the pixels are display values of a rendered export (its C2PA manifest declares a CT image), "
                  "not Hounsfield units")
#: DICOM modality codes: two to sixteen capitals, digits or underscores.
_MODALITY_CODE = re.compile(r"[A-Z0-9_]{2,16}")


def declared_modality(image: Image, trust: Sequence[str] | None = None) -> tuple[str | None, str]:
    """The modality that an intact C2PA manifest of a PNG/JPEG/TIFF declares for the DICOM image
    it was rendered from (medforensics ``export`` records it), and the signer's trust status
    (``trusted``, ``not-checked``; ``""`` when nothing is declared).

    :func:`scan_source` gives such an image that modality instead of ``XR`` (a CT slice exported
    to PNG is not a radiograph) and marks its pixels as display values
    (``meta["not_physical_units"]``): detectors that read Hounsfield units do not assess it. A
    manifest whose signature or hashes fail declares nothing, and neither does one whose signer
    does not chain to the ``trust`` anchors when they are given (``scan --trust``): otherwise a
    forger could keep the radiograph detectors away from a fake by signing a manifest that calls
    it CT. Without anchors the declaration holds and the verdict warns that its signer was not
    checked.
    """
    if image.format not in ("png", "jpeg", "tiff") or image.pixels.ndim != 2:
        return None, ""
    from .provenance.c2pa_manifest import verify_manifest

    try:
        chk = verify_manifest(image.path, trust=list(trust) if trust else None)
    except MedForensicsError:
        return None, ""
    source = chk.source if chk.present and chk.valid and chk.trust != "untrusted" else None
    if not isinstance(source, dict) or source.get("kind") != "dicom":
        return None, ""
    modality = str(source.get("modality") or "")
    return (modality, chk.trust) if _MODALITY_CODE.fullmatch(modality) else (None, "")


def _apply_declared_modality(image: Image, detectors: Sequence[Detector] | None) -> list[str]:
    """Give ``image`` the modality its manifest declares; the warnings to keep with the verdict."""
    trust = next((getattr(d, "trust", None) for d in detectors or () if d.name == "provenance"), None)
    modality, status = declared_modality(image, trust)
    if not modality or modality == image.modality:
        return []
    image.meta["modality_from"] = f"C2PA manifest ({status}; {image.modality} from the file alone)"
    image.meta["not_physical_units"] = DISPLAY_VALUES
    image.modality = modality
    if status == "trusted":
        return []
    return [f"{image.path}: modality {modality} is declared by the file's C2PA manifest, whose signer was not "
            "checked against a trust store (scan --trust); read from the pixels alone it would be a radiograph"]


def analyze(image: Image, detectors: Sequence[Detector] | None = None, config: FusionConfig = FusionConfig(),
            *, figures: bool = False, debug: bool = False, threads: int | None = None) -> Verdict:
    """Run the applicable detectors on one image and fuse their evidence into a verdict.

    ``figures=True`` renders the thumbnail and overlays for reports into ``verdict.figures``.
    Heatmaps stay on the evidence (callers that ship verdicts between processes drop them).

    ``threads``: a 2D image's detectors run on up to this many threads at once (default: every
    core of this machine; a scan worker gets its share, :func:`medforensics.engine.worker_threads`).
    Their heavy parts (OpenCV, numpy, torch) release the GIL, so a 2,000 px radiograph takes
    about 0.6 of the time on 2 cores. A volume's detectors run one after another: each holds
    working copies of the whole volume. The verdict is the same either way.
    """
    detectors = load_detectors() if detectors is None else detectors
    verdict = Verdict(path=str(image.path), kind=image.kind, uid=image.uid, n_instances=image.n_instances,
                      score=None, label=None, modality=image.modality)
    for problem in image.meta.get("series_problems", []):
        verdict.errors.append(f"{image.path}: {problem['message']}")

    def assess(det: Detector) -> tuple[str | None, Evidence | None, str | None, float | None]:
        """(why not assessed, evidence, error, seconds) of one detector."""
        not_units = image.meta.get("not_physical_units") if image.modality == "CT" else None
        reason = not_units if not_units and det.needs_physical_units else det.out_of_domain(image)
        if reason:
            return reason, None, None, None
        t0 = time.perf_counter()
        try:
            return None, det.detect(image), None, time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - one detector's failure must not stop the others
            if debug:
                raise
            return None, None, f"{image.path}: detector {det.name} failed: {one_line(e)[:200]}", \
                time.perf_counter() - t0

    applicable = [d for d in detectors if d.applies(image)]
    n = min(worker_threads(1) if threads is None else threads, len(applicable))
    if n > 1 and image.pixels.ndim == 2:
        # the detectors' threads share the cores: torch keeps to one thread meanwhile (its
        # OpenMP threads would spin against the others: learned_2d 0.12 -> 0.55 s)
        torch = sys.modules.get("torch")
        saved = torch.get_num_threads() if torch is not None else 0
        if torch is not None:
            torch.set_num_threads(1)
        try:
            for det in applicable:
                try:
                    det.prepare(image)
                except Exception:  # noqa: BLE001 - its detect meets the same problem and reports it
                    if debug:
                        raise
            with ThreadPoolExecutor(n, thread_name_prefix="detector") as pool:
                outcomes = list(pool.map(assess, applicable))
        finally:
            if torch is not None:
                torch.set_num_threads(saved)
    else:
        outcomes = [assess(d) for d in applicable]
    evidence: list[Evidence] = []
    for det, (reason, ev, error, seconds) in zip(applicable, outcomes):
        if reason:
            verdict.not_assessed[det.name] = reason
            continue
        verdict.timings[det.name] = seconds
        if error:
            verdict.errors.append(error)
        if ev is None:
            continue
        if ev.details.get("abstained"):
            # the detector looked and found the image outside what it can judge: not evidence either way
            verdict.not_assessed[det.name] = str(ev.details.get("reason") or ev.explanation)
        else:
            verdict.assessed.append(det.name)
            evidence.append(ev)
    verdict.evidence = sorted(evidence, key=lambda e: -e.score)
    verdict.score, verdict.label = fuse(verdict.evidence, config)
    # the provenance detector decides trust (with --trust): its word wins over another detector's
    # note of a proof it saw without anchors (the container's "c2pa-valid")
    said = sorted((e for e in verdict.evidence if e.provenance is not None), key=lambda e: e.detector != "provenance")
    verdict.provenance = said[0].provenance if said else "none"
    if figures:
        from .report.figures import render_figures
        t0 = time.perf_counter()
        verdict.figures = render_figures(image, verdict.evidence)
        verdict.timings["figures"] = time.perf_counter() - t0
    return verdict


def fingerprint(source: Source) -> str | None:
    """The content fingerprint of a source: SHA-256 over its files' bytes, in order (``None``
    when a file cannot be read). ``scan --resume`` reuses a result only for the same content.

    >>> from pydicom.data import get_testdata_file
    >>> from medforensics.io import Source
    >>> one = fingerprint(Source("dicom", [Path(get_testdata_file("CT_small.dcm"))]))
    >>> one[:7], len(one), one == fingerprint(Source("dicom", [Path(get_testdata_file("MR_small.dcm"))]))
    ('sha256:', 71, False)

    A DICOMweb series (``source.url``) has the fingerprint of its fetched instances once loaded,
    ``None`` before.
    """
    if getattr(source, "url", None) is not None:
        return source.digest
    h = hashlib.sha256()
    try:
        for f in source.files:
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
    except OSError:
        return None
    return "sha256:" + h.hexdigest()


def _warning_lines(path: str, caught: Sequence[warnings.WarningMessage], limit: int = 10) -> list[str]:
    """Each distinct warning once, as ``path: Category: message`` (at most ``limit``)."""
    lines: list[str] = []
    for w in caught:
        line = f"{path}: {w.category.__name__}: {one_line(w.message, 200)}"  # message: the Warning raised
        if line not in lines:
            lines.append(line)
    return lines[:limit]


def scan_source(source: Source, detectors: Sequence[Detector] | None = None, config: FusionConfig = FusionConfig(),
                *, figures: bool = False, keep_heatmaps: bool = False, debug: bool = False,
                threads: int | None = None, then: Callable[[Verdict, Image], None] | None = None) -> Verdict:
    """Load one source and analyse it (``threads``: see :func:`analyze`); a load error becomes a
    verdict with ``errors`` and no score. Warnings raised meanwhile (numpy, pydicom, ...) go to
    ``verdict.warnings``, not stderr. ``then(verdict, image)`` is called once the image is
    analysed, while its pixels and heatmaps are still at hand (the gateway writes its DICOM
    results there); its failure is an error of the item."""
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        # "default": each warning once per place in the code (entering catch_warnings resets what
        # was seen), so a warning raised in a loop is one entry, not millions
        warnings.simplefilter("default")
        try:
            image = load_source(source)
        except Exception as e:  # noqa: BLE001 - one unreadable input must not stop the scan
            if debug:
                raise
            error = e if isinstance(e, MedForensicsError) else MedForensicsError.wrap(
                source.path, e, f"cannot be read ({type(e).__name__})")
            verdict = Verdict(path=str(source.path), kind=Kind.SERIES if source.kind == "dicom-series" else Kind.IMAGE,
                              uid=source.uid, n_instances=len(source.files), score=None, label=None,
                              errors=[str(error)])
        else:
            t_load = time.perf_counter() - t0
            try:
                detectors = load_detectors() if detectors is None else detectors
                declared = _apply_declared_modality(image, detectors)
                verdict = analyze(image, detectors, config, figures=figures, debug=debug, threads=threads)
                verdict.warnings.extend(declared)
                if then is not None:
                    then(verdict, image)
            except Exception as e:  # noqa: BLE001 - e.g. drawing the figures: still this item's error only
                if debug:
                    raise
                verdict = Verdict(path=str(image.path), kind=image.kind, uid=image.uid, n_instances=image.n_instances,
                                  score=None, label=None, modality=image.modality,
                                  errors=[str(MedForensicsError.wrap(image.path, e, f"analysis failed ({type(e).__name__})"))])
            verdict.timings = {"load": t_load, **verdict.timings, "total": time.perf_counter() - t0}
    verdict.warnings = [*verdict.warnings, *_warning_lines(verdict.path, caught)]
    verdict.fingerprint = fingerprint(source)
    if not keep_heatmaps:
        for ev in verdict.evidence:
            ev.heatmap = None
    return verdict


# ------------------------------------------------------------------------------ worker processes

_WORKER: dict = {}


def _init_worker(names: list[str] | None, options: DetectorOptions | None, config: FusionConfig, figures: bool,
                 debug: bool, threads: int = 1) -> None:
    # each worker's learned detectors get their share of the cores: n workers x torch's default
    # threads on n cores would make every worker wait for the others. Setting it in the worker also
    # keeps a forked worker off the parent's OpenMP pool (which would hang it). (OpenCV's
    # cv2.setNumThreads must not be called here: in a forked worker it hangs.)
    import torch

    # Ctrl-C reaches the whole process group: the parent stops the scan and reports; a worker
    # would only print a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _WORKER.update(detectors=load_detectors(names, options), config=config, figures=figures, debug=debug,
                   threads=threads)


def _work(source: Source) -> Verdict:
    return scan_source(source, _WORKER["detectors"], _WORKER["config"], figures=_WORKER["figures"],
                       debug=_WORKER["debug"], threads=_WORKER["threads"])


def _dask_task(source: Source, settings: "DaskSettings") -> Verdict:
    """One task of ``scan --engine dask``, run on a Dask worker: ``source`` analysed with the
    detectors that this worker process loaded once for ``settings``; the verdict travels back
    without heatmaps, as from the local pool."""
    from .engine import worker_detectors

    return scan_source(source, worker_detectors(settings), settings.config, figures=settings.figures,
                       keep_heatmaps=False, debug=settings.debug, threads=settings.threads or 1)


def scan(paths: Iterable[str], detector_names: Sequence[str] | None = None, config: FusionConfig = FusionConfig(),
         *, workers: int = 1, figures: bool = False, debug: bool = False,
         on_start: Callable[[int, list], None] | None = None,
         detector_options: DetectorOptions | None = None,
         reuse: Callable[[Source], Verdict | None] | None = None,
         engine: "str | DaskEngine" = "local", scheduler: str | None = None,
         discover_options: dict | None = None) -> Iterator[Verdict]:
    """Scan files and folders; yield one verdict per image or series, in input order.

    ``on_start(n_sources, skipped_files)`` is called once discovery is done (for progress bars).
    With ``workers > 1`` sources are analysed in parallel processes. ``detector_options`` are
    the detectors' constructor arguments by detector name (trust anchors, the log, a key, ...),
    handed to every worker. ``reuse(source)`` may return an earlier verdict for a source, which
    is then yielded as it is instead of analysing the source again (``scan --resume``).
    Closing the generator early (an interrupted scan) cancels the work not yet started.
    ``discover_options`` go to :func:`medforensics.io.discover` (``since``, ``study``, ``token``).

    ``engine="dask"`` analyses each source as one task on Dask distributed
    (:mod:`medforensics.engine`): on the scheduler at ``scheduler`` (``tcp://HOST:8786``), or
    without one on a local cluster of ``workers`` processes started for this scan. An engine
    object (:class:`medforensics.engine.DaskEngine`) may be passed instead; it is then left
    open. The verdicts are the same as a local scan's, in the same order.
    """
    if engine not in ("local", "dask") and not hasattr(engine, "run"):
        raise ValueError(f"unknown engine {engine!r}: 'local' or 'dask'")
    sources, skipped = discover(paths, **(discover_options or {}))
    if on_start is not None:
        on_start(len(sources), skipped)
    names = list(detector_names) if detector_names is not None else None
    jobs = ((src, reuse(src) if reuse is not None else None) for src in sources)
    if engine != "local":
        from .engine import ClusterLost

        own = engine == "dask"
        dask_engine = DaskEngine(scheduler, workers) if own else engine
        try:
            yield from dask_engine.run(jobs, dask_engine.settings(names, detector_options, config, figures, debug),
                                       _dask_task)
        except ClusterLost as e:
            raise ScanAborted(str(e)) from None
        finally:
            if own:
                dask_engine.close()
        return
    if workers <= 1 or len(sources) <= 1:
        detectors = None
        for src, earlier in jobs:
            if earlier is not None:
                yield earlier
                continue
            detectors = detectors if detectors is not None else load_detectors(names, detector_options)
            yield scan_source(src, detectors, config, figures=figures, debug=debug)
        return
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                               initargs=(names, detector_options, config, figures, debug, worker_threads(workers)))
    try:
        yield from in_input_order(jobs, lambda src: pool.submit(_work, src), _result, lambda: 2 * workers,
                                  lambda pending: [f.cancel() for f in pending])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _result(source: Source, future: Future) -> Verdict:
    try:
        return future.result()
    except BrokenProcessPool:
        raise ScanAborted("a worker process died (killed by the system, perhaps for lack of memory)") from None


class ScanAborted(BaseException):
    """The scan stopped before its end: interrupted (Ctrl-C, SIGTERM) or a worker died.
    ``signum`` is the signal that stopped it, if any. Like KeyboardInterrupt it is not an
    ``Exception``, so that no per-item ``except Exception`` can swallow it."""

    def __init__(self, reason: str, signum: int | None = None):
        super().__init__(reason)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's convention: 128 + the signal, or 1."""
        return 128 + self.signum if self.signum else 1


class _Signals:
    """SIGTERM (and SIGHUP) raise :class:`ScanAborted` in the main thread while a scan runs, as
    Ctrl-C raises KeyboardInterrupt, so that both end the same way: outputs closed, a message."""

    NAMES = ("SIGTERM", "SIGHUP")

    def __enter__(self) -> "_Signals":
        import threading

        self._old: dict = {}
        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self._old[sig] = signal.signal(sig, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame) -> None:
        raise ScanAborted(f"stopped by {signal.Signals(signum).name}", signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def run_scan(paths: Sequence[str | Path], *, json_out: str | Path | None = None, report: str | Path | None = None,
             detectors: Sequence[str] | None = None, detector_options: DetectorOptions | None = None,
             workers: int = 1, config: FusionConfig = FusionConfig(), debug: bool = False, quiet: bool = False,
             title: str = "medforensics scan report", resume: bool = False, overwrite: bool = False,
             discover_options: dict | None = None, engine: "str | DaskEngine" = "local",
             scheduler: str | None = None, keep_verdicts: bool = False) -> "Tally":
    """Scan ``paths`` as ``medforensics scan`` does: a progress bar, JSON lines to ``json_out``
    (see :mod:`medforensics.report.jsonl`: written to ``json_out.partial`` as items finish and
    renamed when complete), the summary table (unless ``quiet``) and the HTML ``report`` (a new
    file, written whole or not at all). Returns the scan's :class:`~medforensics.report.summary.Tally`
    (counts per label, errors, the most suspicious items); it holds every verdict (``.verdicts``)
    only with ``keep_verdicts=True`` or a ``report``, so that a scan of millions of items keeps
    none of them in memory. ``resume=True`` reuses the results
    that ``json_out`` or its partial file already hold for unchanged sources. ``detector_options``
    are handed to the detectors' constructors (see :func:`medforensics.detectors.load_detectors`).

    An interruption (Ctrl-C, SIGTERM) or a worker's death raises :class:`ScanAborted` after
    saying how many items were done and where their results are.

    ``engine="dask"`` runs the sources on Dask distributed (see :func:`scan`); the scheduler is
    reached, or the local cluster started, before any output is opened, so that an unreachable
    scheduler is a :class:`~medforensics.core.MedForensicsError` that leaves no file behind.
    """
    if engine == "dask":
        with DaskEngine(scheduler, workers) as dask_engine:
            return run_scan(paths, json_out=json_out, report=report, detectors=detectors,
                            detector_options=detector_options, workers=workers, config=config, debug=debug,
                            quiet=quiet, title=title, resume=resume, overwrite=overwrite,
                            discover_options=discover_options, engine=dask_engine, keep_verdicts=keep_verdicts)
    from rich.console import Console

    from rich.markup import escape

    from .progress import progress_bar
    from .report.jsonl import ResultsFile
    from .report.summary import Tally, print_summary

    err = Console(stderr=True, highlight=False)
    tally = Tally(keep=keep_verdicts or report is not None)
    t0 = time.perf_counter()
    skipped_files: list = []
    total = [0]
    results = ResultsFile(json_out, resume=resume, overwrite=overwrite) if json_out else None

    reused: set[int] = set()

    def reuse(src: Source) -> Verdict | None:
        if results is None or not results.previous or src.error:
            return None
        earlier = results.reusable(str(src.path), src.uid, fingerprint(src))
        if earlier is not None:
            reused.add(id(earlier))
        return earlier

    try:
        with _Signals(), progress_bar() as progress:
            task = progress.add_task("", total=None)

            def started(n: int, skipped: list) -> None:
                skipped_files.extend(skipped)
                total[0] = n
                progress.update(task, total=n)

            for v in scan([str(p) for p in paths], detectors, config, workers=workers, figures=report is not None,
                          debug=debug, on_start=started, detector_options=detector_options,
                          reuse=reuse if resume else None, discover_options=discover_options,
                          engine=engine, scheduler=scheduler):
                tally.add(v)
                if results is not None:
                    results.write(v, reused=id(v) in reused)
                for e in v.errors:
                    progress.console.print(f"[red]error[/red] {escape(e)}", soft_wrap=True, markup=True)
                progress.advance(task)
    except (KeyboardInterrupt, ScanAborted) as e:
        if results is not None:
            results.close()
        reason = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        where = (f"; the {tally.n} finished are in {results.partial}: run the same command with --resume "
                 "to continue" if results is not None else "")
        signum = signal.SIGINT if isinstance(e, KeyboardInterrupt) else e.signum
        raise ScanAborted(f"{reason} after {tally.n} of {total[0]} item(s){where}"
                          + ("; no report was written" if report is not None else ""), signum) from None
    except BaseException:
        if results is not None:
            results.close()
        raise
    if results is not None:
        results.finish()
        if reused:
            err.print(f"{len(reused)} result(s) reused from the earlier run, {tally.n - len(reused)} scanned now")
    elapsed = time.perf_counter() - t0
    if not quiet:
        print_summary(tally, elapsed, len(skipped_files))
    if report is not None:
        from .io.dicomweb import mask
        from .report.html import write_report
        names = sorted({e.detector for v in tally.verdicts for e in v.evidence})
        write_report(tally.verdicts, report, title=title, summary={
            "elapsed_s": round(elapsed, 2), "detectors": names, "skipped_files": len(skipped_files),
            "thresholds": {"suspicious": config.suspicious, "manipulated": config.manipulated,
                           "min_evidence": config.min_evidence},
            "inputs": [mask(str(p)) for p in paths]})
        err.print(f"report written to {report}")
    if json_out:
        err.print(f"JSON lines written to {json_out}")
    return tally
