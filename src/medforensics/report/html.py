"""The self-contained HTML report: summary, table of all items, one card per item.

>>> import tempfile
>>> from pathlib import Path
>>> from pydicom.data import get_testdata_file
>>> from medforensics.report import write_report
>>> from medforensics.scan import scan
>>> verdicts = list(scan([get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")],
...                      ["dicom_header", "noise_residual"], figures=True))
>>> folder = tempfile.TemporaryDirectory()
>>> out = write_report(verdicts, Path(folder.name) / "scan.html", summary={"elapsed_s": 12.3})
>>> out.name
'scan.html'
>>> html = out.read_text(encoding="utf-8")
>>> "CT_small.dcm" in html, "MR_small.dcm" in html, html.count("<img"), "<script" in html
(True, True, 2, False)
>>> folder.cleanup()

The report reads only the verdicts: pictures come from ``verdict.figures`` (made next to the
detectors by :func:`~medforensics.report.figures.render_figures`), so no image is needed here. The
file has no external resources and no scripts; all text is escaped.
"""
from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Literal

from jinja2 import Environment, PackageLoader, select_autoescape

from .. import __version__
from ..core import LABELS, SCHEMA_VERSION, Evidence, Verdict
from ..io.plan import write_atomically

#: Label colours: authentic green, suspicious amber, manipulated red, synthetic purple; errors gray.
COLOURS: dict[str | None, str] = {"authentic": "#1b8a3a", "suspicious": "#c88a00", "manipulated": "#c62828",
                                  "synthetic": "#7b1fa2", None: "#555555"}
#: With ``figures="auto"``, reports of more items than this show pictures of flagged items only.
AUTO_FIGURES_LIMIT = 500
#: Regions listed per evidence in a card (the JSON lines have all of them).
MAX_REGIONS_LISTED = 5
_SEVERITY = {"synthetic": 3, "manipulated": 3, "suspicious": 2, "authentic": 1, None: 0}

_ENV: Environment | None = None


def _env() -> Environment:
    global _ENV
    if _ENV is None:
        _ENV = Environment(loader=PackageLoader("medforensics.report", "templates"),
                           autoescape=select_autoescape(["html"], default=True), trim_blocks=True,
                           lstrip_blocks=True)
    return _ENV


def rank(verdicts: Iterable[Verdict]) -> list[Verdict]:
    """Most suspicious first: by fused score, then label, then path; items without a score last."""
    return sorted(verdicts, key=lambda v: (v.score is None, -(v.score or 0.0), -_SEVERITY.get(v.label, 0), v.path))


def top_evidence(v: Verdict) -> Evidence | None:
    """The evidence with the highest score (the first of equals) among what fusion counts, else
    among processing traces (which fusion does not count), or None."""
    counted = [e for e in v.evidence if e.counts]
    pool = counted if counted and max(e.score for e in counted) > 0 else v.evidence
    return max(pool, key=lambda e: e.score) if pool else None


def write_report(verdicts: list[Verdict], out: str | Path, *, title: str = "medforensics scan report",
                 summary: dict[str, Any] | None = None,
                 figures: Literal["auto", "all", "flagged", "none"] = "auto") -> Path:
    """Write one self-contained HTML file for ``verdicts`` to ``out``, which must not exist yet.

    Parameters
    ----------
    verdicts : list of Verdict
        In any order; the report lists them most suspicious first, unreadable items last.
    out : path
        The new HTML file.
    title : str
        Heading and window title.
    summary : dict, optional
        What the scan knows about itself, shown at the top. Known keys: ``elapsed_s``,
        ``detectors`` (names), ``thresholds`` (``suspicious``, ``manipulated``, ``min_evidence``),
        ``inputs`` (paths), ``skipped_files`` (count); other keys are listed as they are.
    figures : {"auto", "all", "flagged", "none"}
        Which items show their pictures (``verdict.figures``): all; only flagged ones (not
        authentic); none. ``auto`` is ``all`` up to :data:`AUTO_FIGURES_LIMIT` items and ``flagged``
        beyond, which keeps reports of whole archives to a size a browser opens quickly.
    """
    if figures not in ("auto", "all", "flagged", "none"):
        raise ValueError(f"figures must be 'auto', 'all', 'flagged' or 'none', got {figures!r}")
    out = Path(out)
    summary = dict(summary or {})
    ranked = rank(verdicts)
    policy = figures if figures != "auto" else ("all" if len(ranked) <= AUTO_FIGURES_LIMIT else "flagged")
    thresholds = dict(summary.pop("thresholds", None) or {})
    counts = Counter(v.label for v in ranked if v.label)
    detectors = summary.pop("detectors", None) or sorted({e.detector for v in ranked for e in v.evidence})
    known = {k: summary.pop(k) for k in ("elapsed_s", "inputs", "skipped_files") if k in summary}
    items = [_item(i, v, policy, thresholds) for i, v in enumerate(ranked, 1)]
    html = _env().get_template("report.html").render(
        title=title, items=items, n_items=len(ranked),
        counts=[(lab, counts.get(lab, 0), COLOURS[lab]) for lab in LABELS],
        n_unread=sum(1 for v in ranked if v.score is None), n_errors=sum(1 for v in ranked if v.errors),
        n_error_lines=sum(len(v.errors) for v in ranked), detectors=detectors, thresholds=thresholds,
        elapsed_s=known.get("elapsed_s"), inputs=known.get("inputs") or [], skipped=known.get("skipped_files"),
        extra=sorted((str(k), v) for k, v in summary.items()), policy=policy, colours=COLOURS,
        version=__version__, schema=SCHEMA_VERSION, created=dt.datetime.now().isoformat(timespec="seconds"))
    return write_atomically(out, html)  # whole or not at all, never over an existing file


def _bar_colour(score: float, thresholds: dict[str, Any]) -> str:
    if score >= float(thresholds.get("manipulated", 0.8)):
        return COLOURS["manipulated"]
    if score >= float(thresholds.get("suspicious", 0.5)):
        return COLOURS["suspicious"]
    return COLOURS["authentic"]


def _item(index: int, v: Verdict, policy: str, thresholds: dict[str, Any]) -> dict[str, Any]:
    """What the template needs about one verdict (plain values, computed once)."""
    figs = v.figures or {}
    show = policy == "all" or (policy == "flagged" and v.label not in ("authentic",))
    pictures: list[dict[str, str]] = []
    if show and figs.get("thumbnail"):
        k = figs.get("slice", "")
        pictures.append({"png": figs["thumbnail"], "alt": "image",
                         "caption": f"image, slice {k}" if k else "image"})
        for key, png in figs.items():
            if not key.startswith("overlay:") or not png:
                continue
            name = key[len("overlay:"):]
            ks = figs.get(f"slice:{name}", "")
            pictures.append({"png": png, "alt": key,
                             "caption": f"{name.split('#')[0]}{f', slice {ks}' if ks else ''}: heatmap and regions"})
    top = top_evidence(v)
    evidence = []
    for e in sorted(v.evidence, key=lambda e: -e.score):
        regions = [r.to_dict() for r in sorted(e.regions, key=lambda r: -r.score)]
        evidence.append({"detector": e.detector, "score": e.score, "indicates": e.indicates, "confidence": e.confidence,
                         "explanation": e.explanation, "width": round(100 * e.score, 1),
                         "colour": _bar_colour(e.score, thresholds), "regions": regions[:MAX_REGIONS_LISTED],
                         "more_regions": max(0, len(regions) - MAX_REGIONS_LISTED)})
    total = v.timings.get("total")
    return {"index": index, "v": v, "label": v.label or "unreadable", "colour": COLOURS.get(v.label, COLOURS[None]),
            "cls": v.label or "unreadable", "top": top, "pictures": pictures, "evidence": evidence,
            "hidden_pictures": bool(figs.get("thumbnail")) and not show, "total_s": total}
