"""The summary table of a scan, printed for people (the command line and the demo print it).

>>> from medforensics.core import Verdict
>>> from rich.console import Console
>>> console = Console(width=120, color_system=None)
>>> print_summary([Verdict("a.dcm", "image", "1.2", 1, 0.1, "authentic")], 0.5, console=console)  # doctest: +ELLIPSIS
                                medforensics: 1 item(s) in 0.5 s...
...
1 authentic, 0 suspicious, 0 manipulated, 0 synthetic, 0 with errors
"""
from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table

from ..core import LABELS, Verdict
from .html import top_evidence

#: The colour of each label in tables.
LABEL_STYLE = {"authentic": "green", "suspicious": "yellow", "manipulated": "red", "synthetic": "magenta"}


def print_summary(verdicts: list[Verdict], elapsed: float, n_skipped: int = 0, top: int = 20,
                  console: Console | None = None) -> None:
    """Print the ``top`` most suspicious items, what was not assessed, and the count per label."""
    console = console or Console(highlight=False)
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
    console.print(table)
    if len(verdicts) > top:
        console.print(f"({len(verdicts) - top} more item(s) in the JSON lines and the report)")
    not_assessed = Counter(name for v in verdicts for name in v.not_assessed)
    if not_assessed:
        console.print("not assessed (outside the domain the detector was validated on, or too small): "
                      + ", ".join(f"{name} {n} item(s)" for name, n in sorted(not_assessed.items())))
    parts = [f"[{LABEL_STYLE[k]}]{counts.get(k, 0)} {k}[/{LABEL_STYLE[k]}]" for k in LABELS]
    parts.append(f"[red]{n_err} with errors[/red]" if n_err else "0 with errors")
    if n_skipped:
        parts.append(f"{n_skipped} non-image file(s) skipped")
    console.print(", ".join(parts))


def _short_path(p: str, width: int = 60) -> str:
    return p if len(p) <= width else "…" + p[-(width - 1):]
