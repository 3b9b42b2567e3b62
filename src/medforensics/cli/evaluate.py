"""``medforensics evaluate``: checkpoints on a manifest split -> metrics.json, PNG plots and a
Table-6 HTML page (see :mod:`medforensics.learn.evaluate`)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer
from rich.table import Table

from .console import UsageError, err, out
from ..progress import progress_bar


def evaluate_cmd(
    checkpoint: List[Path] = typer.Option(..., "--checkpoint", help="A model checkpoint (.safetensors); repeatable."),
    manifest: Path = typer.Option(..., "--manifest", help="manifest.csv of a forge dataset."),
    split: str = typer.Option("test", "--split", help="Split to evaluate on: train, validation or test."),
    out_dir: Path = typer.Option(..., "--out", help="New folder for metrics.json, PNG plots and report.html."),
    average: str = typer.Option("weighted", "--average", help="Averaging in the printed table: weighted or macro."),
) -> None:
    """Evaluate checkpoints like the review's Table 6: accuracy, precision, recall, F1, ROC-AUC, calibration,
    confusion matrices, score distributions, and breakdowns per patient, forge method and source."""
    from ..learn.evaluate import evaluate_checkpoints, table6_rows, TABLE6_COLUMNS

    if out_dir.exists():
        raise UsageError(f"{out_dir}: already exists; choose a new folder")
    if not out_dir.parent.exists():
        raise UsageError(f"{out_dir}: folder {out_dir.parent} does not exist")
    if average not in ("weighted", "macro"):
        raise UsageError("--average must be 'weighted' or 'macro'")
    if split not in ("train", "validation", "test"):
        raise UsageError("--split must be train, validation or test")
    with progress_bar("evaluating") as progress:
        tasks: dict[str, int] = {}

        def step(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        summary = evaluate_checkpoints(checkpoint, manifest, split=split, out_dir=out_dir, progress=step)
    table = Table(title=f"Table 6 on the {split} split of {manifest} ({average} averages)")
    for col in TABLE6_COLUMNS:
        table.add_column(col, justify="right" if col not in ("model", "task", "profile") else "left")
    for row in table6_rows(summary, average):
        table.add_row(*row)
    out.print(table)
    for name, m in summary["models"].items():
        for note in m.get("notes", []):
            err.print(f"[yellow]note[/yellow] {name}: {note}", soft_wrap=True)
    err.print(f"metrics, plots and report.html written to {out_dir}")


def register(app: typer.Typer) -> None:
    """Add evaluate to ``app``."""
    app.command("evaluate")(evaluate_cmd)
