"""``medforensics scan``, ``detectors`` and ``demo``."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..fusion import FusionConfig
from .console import UsageError, err, new_output, out


def _fusion_config(config: Optional[Path], suspicious: Optional[float], manipulated: Optional[float]) -> FusionConfig:
    base = FusionConfig.from_toml(config) if config else FusionConfig()
    try:
        return FusionConfig(suspicious=base.suspicious if suspicious is None else suspicious,
                            manipulated=base.manipulated if manipulated is None else manipulated,
                            min_evidence=base.min_evidence)
    except ValueError as e:
        raise UsageError(str(e)) from None


def scan_cmd(
    paths: List[str] = typer.Argument(..., help="Files and folders (DICOM, PNG, JPEG, TIFF, NIfTI), or a DICOMweb "
                                      "server: dicomweb+http(s)://HOST/ROOT (docs/dicomweb.md)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON object per image/series here (new file)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a self-contained HTML report here (new file)."),
    detectors: Optional[str] = typer.Option(None, "--detectors", help="Comma-separated detector names (default: all)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes (with --engine dask and no "
                                "--scheduler: the local cluster's workers)."),
    engine: str = typer.Option("local", "--engine", help="local (a process pool on this machine) or dask "
                               "(Dask distributed: one task per series; see docs/scale.md)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a Dask scheduler (tcp://HOST:8786) "
                                            "for --engine dask; without it a local cluster of --workers processes."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with a [fusion] table of thresholds."),
    suspicious: Optional[float] = typer.Option(None, "--suspicious", help="Fused score from which an item is suspicious (0.5)."),
    manipulated: Optional[float] = typer.Option(None, "--manipulated", help="Fused score from which an item is manipulated/synthetic (0.8)."),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", help="Exit 3 if any item is labelled this or worse: suspicious, manipulated."),
    trust: Optional[List[Path]] = typer.Option(None, "--trust", help="CA certificate (PEM) that signers must chain to; repeatable."),
    ledger: Optional[str] = typer.Option(None, "--ledger", help="Transparency log to look images up in (file or postgresql:// URL; default $MEDFORENSICS_LEDGER)."),
    watermark_key: Optional[Path] = typer.Option(None, "--watermark-key", help="Key file of keyed watermarks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow replacing existing output files."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted scan (or extend a finished one): "
                                "reuse the results the --json file already holds for unchanged inputs, scan the rest."),
    since: Optional[str] = typer.Option(None, "--since", help="YYYY-MM-DD: only files modified on or after that day; "
                                        "on a DICOMweb server, only studies with a StudyDate on or after it."),
    study: Optional[str] = typer.Option(None, "--study", help="DICOMweb: only the study with this StudyInstanceUID."),
    dicomweb_token_file: Optional[Path] = typer.Option(None, "--dicomweb-token-file", help="DICOMweb: file whose first "
                                                       "line is a bearer token (default: $MEDFORENSICS_DICOMWEB_TOKEN)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary table."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Scan images and series for manipulation or synthesis; print a summary, write JSON lines and a report.

    Signatures, watermarks and the transparency log are checked by the ``provenance`` detector.
    """
    names = [n.strip() for n in detectors.split(",") if n.strip()] if detectors else None
    if names:
        from ..detectors import available_detectors
        unknown = [n for n in names if n not in available_detectors()]
        if unknown:
            raise UsageError(f"unknown detector(s) {', '.join(unknown)}; run 'medforensics detectors' to list them")
    if fail_on not in (None, "suspicious", "manipulated"):
        raise UsageError("--fail-on must be 'suspicious' or 'manipulated'")
    if engine not in ("local", "dask"):
        raise UsageError(f"--engine must be 'local' or 'dask', not {engine!r}")
    if scheduler is not None and engine != "dask":
        raise UsageError("--scheduler needs --engine dask")
    from .ledger import dicomweb_options
    found = dicomweb_options(paths, since, study, dicomweb_token_file)  # before any output is touched
    if resume and json_out is None:
        raise UsageError("--resume needs --json: the file whose results to reuse")
    if json_out is not None and not resume:
        new_output(json_out, overwrite)
    new_output(report, overwrite)
    if overwrite:
        if report is not None and report.exists():
            report.unlink()
        if json_out is not None and json_out.exists() and not resume:
            json_out.unlink()
    from ..scan import ScanAborted, run_scan

    cfg = _fusion_config(config, suspicious, manipulated)
    from ..detectors.provenance import provenance_options

    options = provenance_options(trust, ledger, watermark_key)
    try:
        tally = run_scan(paths, json_out=json_out, report=report, detectors=names, detector_options=options,
                            workers=workers, config=cfg, debug=debug, quiet=quiet, resume=resume,
                            overwrite=overwrite, discover_options=found, engine=engine, scheduler=scheduler)
    except ScanAborted as e:
        err.print(f"[red]scan stopped:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(e.exit_status) from None
    if fail_on:
        bad = {"suspicious": {"suspicious", "manipulated", "synthetic"}, "manipulated": {"manipulated", "synthetic"}}[fail_on]
        if tally.any_label(bad):
            raise typer.Exit(3)
    if tally.with_errors:
        raise typer.Exit(1)


def detectors_cmd() -> None:
    """List the registered detectors and what they apply to."""
    from ..detectors import available_detectors
    table = Table(title="medforensics detectors")
    for col in ("name", "applies to", "what it looks for"):
        table.add_column(col, overflow="fold")
    for name, cls in available_detectors().items():
        note = "" if getattr(cls, "default", True) else " (runs only when named: scan --detectors)"
        table.add_row(name, cls.applies_to(), cls.description + note)
    out.print(table)


def demo_cmd(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for the demo files (default: a new ./medforensics-demo*)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Make manipulated copies of real sample images, scan originals and copies, write the report."""
    from ..demo import run_demo
    run_demo(out_dir, workers=workers, debug=debug)


def register(app: typer.Typer) -> None:
    """Add ``scan``, ``detectors`` and ``demo`` to ``app``."""
    app.command("scan")(scan_cmd)
    app.command("detectors")(detectors_cmd)
    app.command("demo")(demo_cmd)
