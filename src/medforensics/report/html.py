"""The self-contained HTML report: summary, table of all items, one card per item."""
from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from .. import __version__
from ..core import LABELS, SCHEMA_VERSION, Verdict

COLOURS = {"authentic": "#1b8a3a", "suspicious": "#c88a00", "manipulated": "#c62828", "synthetic": "#7b1fa2",
           None: "#555"}


def write_report(verdicts: list[Verdict], out: str | Path, *, title: str = "medforensics scan report",
                 summary: dict | None = None) -> Path:
    """Write one HTML file (no external resources) for ``verdicts``; the file must be new."""
    out = Path(out)
    env = Environment(loader=PackageLoader("medforensics.report", "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
    ranked = sorted(verdicts, key=lambda v: (v.score is not None, v.score or 0.0), reverse=True)
    counts = Counter(v.label for v in verdicts if v.label)
    html = env.get_template("report.html").render(
        title=title, verdicts=ranked, counts=[(lab, counts.get(lab, 0), COLOURS[lab]) for lab in LABELS],
        n_errors=sum(1 for v in verdicts if v.errors), n_items=len(verdicts), summary=summary or {},
        colours=COLOURS, version=__version__, schema=SCHEMA_VERSION,
        created=dt.datetime.now().isoformat(timespec="seconds"))
    with open(out, "x", encoding="utf-8") as f:
        f.write(html)
    return out
