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

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from rich.console import Console
from rich.table import Table

from ..core import LABELS, Verdict
from .html import top_evidence

#: The colour of each label in tables.
LABEL_STYLE = {"authentic": "green", "suspicious": "yellow", "manipulated": "red", "synthetic": "magenta"}


@dataclass
class Tally:
    """What a scan's summary needs, gathered one verdict at a time, so that a scan of an archive
    keeps the ``top`` most suspicious verdicts (errors first), not all of them; ``verdicts``
    holds them all, in order, only when ``keep=True`` (the HTML report and the demo need them).

    >>> from medforensics.core import Verdict
    >>> t = Tally(top=1)
    >>> for i, s in enumerate((0.1, 0.9, 0.3)):
    ...     t.add(Verdict(f"{i}.dcm", "image", str(i), 1, s, "authentic" if s < 0.5 else "manipulated"))
    >>> t.n, t.labels["authentic"], [v.path for v in t.ranked()], t.verdicts
    (3, 2, ['1.dcm'], None)
    """
    top: int = 20
    keep: bool = False
    n: int = 0
    labels: Counter = field(default_factory=Counter)
    with_errors: int = 0
    not_assessed: Counter = field(default_factory=Counter)
    verdicts: list[Verdict] | None = None
    _heap: list = field(default_factory=list, repr=False)
    _seq: itertools.count = field(default_factory=itertools.count, repr=False)

    def __post_init__(self) -> None:
        if self.keep and self.verdicts is None:
            self.verdicts = []

    def add(self, v: Verdict) -> None:
        self.n += 1
        self.labels[v.label or "error"] += 1
        self.with_errors += bool(v.errors)
        self.not_assessed.update(v.not_assessed.keys())
        if self.verdicts is not None:
            self.verdicts.append(v)
        # a min-heap of the top: (score, -order) so that among equal scores the earlier item stays
        entry = (v.score if v.score is not None else 2.0, -next(self._seq), v)
        if len(self._heap) < self.top:
            heapq.heappush(self._heap, entry)
        elif entry[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, entry)

    def ranked(self) -> list[Verdict]:
        """The kept verdicts, most suspicious first (an item that could not be read first of all)."""
        return [e[2] for e in sorted(self._heap, key=lambda e: e[:2], reverse=True)]

    def any_label(self, labels: Iterable[str]) -> bool:
        return any(self.labels.get(k) for k in labels)


def print_summary(verdicts: Iterable[Verdict] | Tally, elapsed: float, n_skipped: int = 0, top: int = 20,
                  console: Console | None = None) -> None:
    """Print the ``top`` most suspicious items, what was not assessed, and the count per label
    (of verdicts, or of a :class:`Tally` gathered while scanning)."""
    console = console or Console(highlight=False)
    if not isinstance(verdicts, Tally):
        tally = Tally(top=top)
        for v in verdicts:
            tally.add(v)
    else:
        tally = verdicts
    counts, n_err = tally.labels, tally.with_errors
    table = Table(title=f"medforensics: {tally.n} item(s) in {elapsed:.1f} s", show_lines=False)
    for col in ("path", "kind", "modality", "score", "label", "strongest evidence"):
        table.add_column(col, overflow="fold")
    for v in tally.ranked()[:top]:
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
    if tally.n > top:
        console.print(f"({tally.n - top} more item(s) in the JSON lines and the report)")
    not_assessed = tally.not_assessed
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
