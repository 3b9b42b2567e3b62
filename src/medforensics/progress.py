"""The progress bar of every long piece of work (library and command line alike).

It draws on stderr and hides itself when stderr is not a terminal, unless
``MEDFORENSICS_PROGRESS=1``; a task's description is shown after the bar. The library uses it
for long work (training, building datasets) so that it never needs the command line.

>>> with progress_bar("counting", show=False) as bar:
...     task = bar.add_task("", total=3)
...     for _ in range(3):
...         bar.advance(task)
>>> int(bar.tasks[0].completed)
3
"""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["progress_bar"]

_ERR = Console(stderr=True, highlight=False)


def progress_bar(label: str = "scanning", show: bool | None = None) -> Progress:
    """A rich progress bar labelled ``label``; ``show`` forces it on or off (default: on a
    terminal, or where ``MEDFORENSICS_PROGRESS=1``)."""
    if show is None:
        from .config import settings

        show = _ERR.is_terminal or settings().progress
    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.description}"), console=_ERR,
                    transient=False, disable=not show)
