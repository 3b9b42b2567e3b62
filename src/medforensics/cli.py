"""The ``medforensics`` command line. Its options and outputs are a contract (see DESIGN.md).

Exit status of ``scan``: 0 when every input was read and analysed, 1 when any input had an
error (the others are still scanned and reported), 2 for a usage error (bad option, an output
file that already exists), 3 when ``--fail-on`` is given and an item reached that label.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .core import LABELS, SCHEMA_VERSION, MedForensicsError, Verdict
from .fusion import FusionConfig
from .progress import progress_bar  # noqa: F401 - the commands' bar (re-exported for them)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Was this medical image generated or altered, where, and why.")
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)

LABEL_STYLE = {"authentic": "green", "suspicious": "yellow", "manipulated": "red", "synthetic": "magenta"}


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


def new_output(path: Optional[Path], overwrite: bool = False) -> Optional[Path]:
    """Check that an output path is new (or may be replaced) and its folder exists."""
    if path is None:
        return None
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: already exists; choose a new name or pass --overwrite")
    if not path.parent.exists():
        raise UsageError(f"{path}: folder {path.parent} does not exist")
    return path


def _fusion_config(config: Optional[Path], suspicious: Optional[float], manipulated: Optional[float]) -> FusionConfig:
    base = FusionConfig.from_toml(config) if config else FusionConfig()
    try:
        return FusionConfig(suspicious=base.suspicious if suspicious is None else suspicious,
                            manipulated=base.manipulated if manipulated is None else manipulated,
                            min_evidence=base.min_evidence)
    except ValueError as e:
        raise UsageError(str(e)) from None


def run_scan(paths: List[Path], *, json_out: Optional[Path] = None, report: Optional[Path] = None,
             detectors: Optional[List[str]] = None, workers: int = 1, config: FusionConfig = FusionConfig(),
             debug: bool = False, quiet: bool = False, title: str = "medforensics scan report") -> list[Verdict]:
    """Scan ``paths``, stream JSON lines, print the summary, write the report; return the verdicts."""
    from .scan import scan

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
                          debug=debug, on_start=started):
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


def print_summary(verdicts: list[Verdict], elapsed: float, n_skipped: int = 0, top: int = 20) -> None:
    from .report.html import top_evidence

    counts = Counter(v.label or "error" for v in verdicts)
    n_err = sum(1 for v in verdicts if v.errors)
    table = Table(title=f"medforensics: {len(verdicts)} item(s) in {elapsed:.1f} s", show_lines=False)
    for col in ("path", "kind", "modality", "score", "label", "strongest evidence"):
        table.add_column(col, overflow="fold")
    ranked = sorted(verdicts, key=lambda v: -(v.score if v.score is not None else 2.0))
    for v in ranked[:top]:
        label = v.label or "error"
        style = LABEL_STYLE.get(label, "red")
        ev = top_evidence(v)
        strongest = f"{ev.detector} {ev.score:.2f}: {ev.explanation}" if ev else (v.errors[0] if v.errors else "")
        if ev is not None and not ev.counts:
            strongest = f"(processing, not counted) {strongest}"
        if v.not_assessed:
            strongest += f" [dim](not assessed by {', '.join(sorted(v.not_assessed))})[/dim]"
        table.add_row(_short_path(v.path), v.kind, v.modality or "", "" if v.score is None else f"{v.score:.3f}",
                      f"[{style}]{label}[/{style}]", strongest)
    out.print(table)
    if len(verdicts) > top:
        out.print(f"({len(verdicts) - top} more item(s) in the JSON lines and the report)")
    not_assessed = Counter(name for v in verdicts for name in v.not_assessed)
    if not_assessed:
        out.print("not assessed (outside the domain the detector was validated on, or too small): "
                  + ", ".join(f"{name} {n} item(s)" for name, n in sorted(not_assessed.items())))
    parts = [f"[{LABEL_STYLE[k]}]{counts.get(k, 0)} {k}[/{LABEL_STYLE[k]}]" for k in LABELS]
    parts.append(f"[red]{n_err} with errors[/red]" if n_err else "0 with errors")
    if n_skipped:
        parts.append(f"{n_skipped} non-image file(s) skipped")
    out.print(", ".join(parts))


def _short_path(p: str, width: int = 60) -> str:
    return p if len(p) <= width else "…" + p[-(width - 1):]


@app.command("scan")
def scan_cmd(
    paths: List[Path] = typer.Argument(..., help="Files and folders: DICOM, PNG, JPEG, TIFF, NIfTI."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON object per image/series here (new file)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write a self-contained HTML report here (new file)."),
    detectors: Optional[str] = typer.Option(None, "--detectors", help="Comma-separated detector names (default: all)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with a [fusion] table of thresholds."),
    suspicious: Optional[float] = typer.Option(None, "--suspicious", help="Fused score from which an item is suspicious (0.5)."),
    manipulated: Optional[float] = typer.Option(None, "--manipulated", help="Fused score from which an item is manipulated/synthetic (0.8)."),
    fail_on: Optional[str] = typer.Option(None, "--fail-on", help="Exit 3 if any item is labelled this or worse: suspicious, manipulated."),
    trust: Optional[List[Path]] = typer.Option(None, "--trust", help="CA certificate (PEM) that signers must chain to; repeatable."),
    ledger: Optional[str] = typer.Option(None, "--ledger", help="Transparency log to look images up in (file or postgresql:// URL; default $MEDFORENSICS_LEDGER)."),
    watermark_key: Optional[Path] = typer.Option(None, "--watermark-key", help="Key file of keyed watermarks."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Allow replacing existing output files."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No summary table."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Scan images and series for manipulation or synthesis; print a summary, write JSON lines and a report.

    Signatures, watermarks and the transparency log are checked by the ``provenance`` detector.
    """
    names = [n.strip() for n in detectors.split(",") if n.strip()] if detectors else None
    if names:
        from .detectors import available_detectors
        unknown = [n for n in names if n not in available_detectors()]
        if unknown:
            raise UsageError(f"unknown detector(s) {', '.join(unknown)}; run 'medforensics detectors' to list them")
    if fail_on not in (None, "suspicious", "manipulated"):
        raise UsageError("--fail-on must be 'suspicious' or 'manipulated'")
    new_output(json_out, overwrite)
    new_output(report, overwrite)
    if overwrite:
        for p in (json_out, report):
            if p is not None and p.exists():
                p.unlink()
    cfg = _fusion_config(config, suspicious, manipulated)
    _provenance_settings(trust, ledger, watermark_key)
    verdicts = run_scan(paths, json_out=json_out, report=report, detectors=names, workers=workers, config=cfg,
                        debug=debug, quiet=quiet)
    if fail_on:
        bad = {"suspicious": {"suspicious", "manipulated", "synthetic"}, "manipulated": {"manipulated", "synthetic"}}[fail_on]
        if any(v.label in bad for v in verdicts):
            raise typer.Exit(3)
    if any(v.errors for v in verdicts):
        raise typer.Exit(1)


def _provenance_settings(trust: Optional[List[Path]], ledger: Optional[str], watermark_key: Optional[Path]) -> None:
    """Hand scan's provenance options to the ``provenance`` detector (and worker processes) through
    the environment variables it reads; check them first so a typo is a usage error, not a finding."""
    import os

    from .detectors.provenance import ENV_LEDGER, ENV_TRUST, ENV_WATERMARK_KEY
    from .provenance.watermark import read_key_file
    from .provenance.keys import load_certificates

    if trust:
        for p in trust:
            load_certificates(p)
        os.environ[ENV_TRUST] = os.pathsep.join(str(p.resolve()) for p in trust)
    if ledger:
        from .provenance.ledger import Ledger
        Ledger(ledger).close()
        os.environ[ENV_LEDGER] = ledger
    if watermark_key:
        read_key_file(watermark_key)
        os.environ[ENV_WATERMARK_KEY] = str(watermark_key.resolve())


@app.command("detectors")
def detectors_cmd() -> None:
    """List the registered detectors and what they apply to."""
    from .detectors import available_detectors
    table = Table(title="medforensics detectors")
    for col in ("name", "applies to", "what it looks for"):
        table.add_column(col, overflow="fold")
    for name, cls in available_detectors().items():
        note = "" if getattr(cls, "default", True) else " (runs only when named: scan --detectors)"
        table.add_row(name, cls.applies_to(), cls.description + note)
    out.print(table)


@app.command("demo")
def demo_cmd(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Folder for the demo files (default: a new ./medforensics-demo*)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Parallel worker processes."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Make manipulated copies of real sample images, scan originals and copies, write the report."""
    from .demo import run_demo
    run_demo(out_dir, workers=workers, debug=debug)


from .forge.cli import forge_app  # noqa: E402

app.add_typer(forge_app, name="forge")

from .provenance import cli as _provenance_cli  # noqa: E402,F401  (registers keys, sign, verify, export, ledger, watermark)
from .learn import cli as _learn_cli  # noqa: E402,F401  (registers train, evaluate)


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        out.print(f"medforensics {__version__} (JSON schema {SCHEMA_VERSION})")
        raise typer.Exit(0)


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error and abort classes: typer >= 0.2x raises those of its vendored click,
    and a separate ``click`` may be installed beside it (uvicorn brings one): catch both."""
    import importlib

    exc: list[type] = []
    aborts: list[type] = [typer.Abort]
    for mod in ("typer._click.exceptions", "click.exceptions"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        exc.append(m.ClickException)
        if hasattr(m, "Abort"):
            aborts.append(m.Abort)
    return tuple(exc), tuple(aborts)


def main() -> None:
    """Entry point: one-line errors instead of tracebacks unless ``--debug`` is given."""
    debug = "--debug" in sys.argv
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (UsageError, FileExistsError) as e:
        if debug:
            raise
        err.print(f"[red]error:[/red] {e}", soft_wrap=True)
        sys.exit(2)
    except MedForensicsError as e:
        if debug:
            raise
        err.print(f"[red]error:[/red] {e}", soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, never a traceback without --debug
        click_exc, aborts = _click_exception_types()
        if isinstance(e, click_exc):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, aborts):
            sys.exit(1)
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        err.print(f"[red]error:[/red] {type(e).__name__}: {msg} (run with --debug for details)", soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
