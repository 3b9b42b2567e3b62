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

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .core import Evidence, Image, Kind, MedForensicsError, Verdict, one_line
from .detectors.base import Detector, DetectorOptions, load_detectors
from .fusion import FusionConfig, fuse
from .io import Source, discover, load_source


def analyze(image: Image, detectors: Sequence[Detector] | None = None, config: FusionConfig = FusionConfig(),
            *, figures: bool = False, debug: bool = False) -> Verdict:
    """Run the applicable detectors on one image and fuse their evidence into a verdict.

    ``figures=True`` renders the thumbnail and overlays for reports into ``verdict.figures``.
    Heatmaps stay on the evidence (callers that ship verdicts between processes drop them).
    """
    detectors = load_detectors() if detectors is None else detectors
    verdict = Verdict(path=str(image.path), kind=image.kind, uid=image.uid, n_instances=image.n_instances,
                      score=None, label=None, modality=image.modality)
    for problem in image.meta.get("series_problems", []):
        verdict.errors.append(f"{image.path}: {problem['message']}")
    evidence: list[Evidence] = []
    for det in detectors:
        if not det.applies(image):
            continue
        reason = det.out_of_domain(image)
        if reason:
            verdict.not_assessed[det.name] = reason
            continue
        t0 = time.perf_counter()
        try:
            ev = det.detect(image)
        except Exception as e:  # noqa: BLE001 - one detector's failure must not stop the others
            if debug:
                raise
            verdict.errors.append(f"{image.path}: detector {det.name} failed: {one_line(e)[:200]}")
            continue
        finally:
            verdict.timings[det.name] = time.perf_counter() - t0
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
    verdict.provenance = next((e.provenance for e in verdict.evidence if e.provenance is not None), "none")
    if figures:
        from .report.figures import render_figures
        t0 = time.perf_counter()
        verdict.figures = render_figures(image, verdict.evidence)
        verdict.timings["figures"] = time.perf_counter() - t0
    return verdict


def scan_source(source: Source, detectors: Sequence[Detector] | None = None, config: FusionConfig = FusionConfig(),
                *, figures: bool = False, keep_heatmaps: bool = False, debug: bool = False) -> Verdict:
    """Load one source and analyse it; a load error becomes a verdict with ``errors`` and no score."""
    t0 = time.perf_counter()
    try:
        image = load_source(source)
    except Exception as e:  # noqa: BLE001 - one unreadable input must not stop the scan
        if debug:
            raise
        error = e if isinstance(e, MedForensicsError) else MedForensicsError.wrap(
            source.path, e, f"cannot be read ({type(e).__name__})")
        return Verdict(path=str(source.path), kind=Kind.SERIES if source.kind == "dicom-series" else Kind.IMAGE,
                       uid=source.uid, n_instances=len(source.files), score=None, label=None, errors=[str(error)])
    t_load = time.perf_counter() - t0
    verdict = analyze(image, detectors, config, figures=figures, debug=debug)
    verdict.timings = {"load": t_load, **verdict.timings, "total": time.perf_counter() - t0}
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

    torch.set_num_threads(threads)
    _WORKER.update(detectors=load_detectors(names, options), config=config, figures=figures, debug=debug)


def _work(source: Source) -> Verdict:
    return scan_source(source, _WORKER["detectors"], _WORKER["config"], figures=_WORKER["figures"],
                       debug=_WORKER["debug"])


def scan(paths: Iterable[str], detector_names: Sequence[str] | None = None, config: FusionConfig = FusionConfig(),
         *, workers: int = 1, figures: bool = False, debug: bool = False,
         on_start: Callable[[int, list], None] | None = None,
         detector_options: DetectorOptions | None = None) -> Iterator[Verdict]:
    """Scan files and folders; yield one verdict per image or series, in input order.

    ``on_start(n_sources, skipped_files)`` is called once discovery is done (for progress bars).
    With ``workers > 1`` sources are analysed in parallel processes. ``detector_options`` are
    the detectors' constructor arguments by detector name (trust anchors, the log, a key, ...),
    handed to every worker.
    """
    sources, skipped = discover(paths)
    if on_start is not None:
        on_start(len(sources), skipped)
    names = list(detector_names) if detector_names is not None else None
    if workers <= 1 or len(sources) <= 1:
        detectors = load_detectors(names, detector_options)
        for src in sources:
            yield scan_source(src, detectors, config, figures=figures, debug=debug)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                             initargs=(names, detector_options, config, figures, debug, threads)) as pool:
        yield from pool.map(_work, sources, chunksize=1)


def run_scan(paths: Sequence[str | Path], *, json_out: str | Path | None = None, report: str | Path | None = None,
             detectors: Sequence[str] | None = None, detector_options: DetectorOptions | None = None,
             workers: int = 1, config: FusionConfig = FusionConfig(), debug: bool = False, quiet: bool = False,
             title: str = "medforensics scan report") -> list[Verdict]:
    """Scan ``paths`` as ``medforensics scan`` does: a progress bar, JSON lines streamed to
    ``json_out`` (a new file), the summary table (unless ``quiet``) and the HTML ``report``
    (a new file); return the verdicts. ``detector_options`` are handed to the detectors'
    constructors (see :func:`medforensics.detectors.load_detectors`)."""
    from rich.console import Console

    from .progress import progress_bar
    from .report.summary import print_summary

    err = Console(stderr=True, highlight=False)
    verdicts: list[Verdict] = []
    t0 = time.perf_counter()
    skipped_files: list = []
    jf = open(json_out, "x", encoding="utf-8") if json_out else None
    try:
        with progress_bar() as progress:
            task = progress.add_task("", total=None)

            def started(n: int, skipped: list) -> None:
                skipped_files.extend(skipped)
                progress.update(task, total=n)

            for v in scan([str(p) for p in paths], detectors, config, workers=workers, figures=report is not None,
                          debug=debug, on_start=started, detector_options=detector_options):
                verdicts.append(v)
                if jf:
                    jf.write(json.dumps(v.to_dict()) + "\n")
                    jf.flush()
                for e in v.errors:
                    progress.console.print(f"[red]error[/red] {e}", soft_wrap=True, markup=True)
                progress.advance(task)
    finally:
        if jf:
            jf.close()
    elapsed = time.perf_counter() - t0
    if not quiet:
        print_summary(verdicts, elapsed, len(skipped_files))
    if report is not None:
        from .report.html import write_report
        names = sorted({e.detector for v in verdicts for e in v.evidence})
        write_report(verdicts, report, title=title, summary={
            "elapsed_s": round(elapsed, 2), "detectors": names, "skipped_files": len(skipped_files),
            "thresholds": {"suspicious": config.suspicious, "manipulated": config.manipulated,
                           "min_evidence": config.min_evidence},
            "inputs": [str(p) for p in paths]})
        err.print(f"report written to {report}")
    if json_out:
        err.print(f"JSON lines written to {json_out}")
    return verdicts
