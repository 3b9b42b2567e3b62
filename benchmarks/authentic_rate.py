"""False alarms on real, untampered images, per source: what a user elsewhere would see.

    python benchmarks/authentic_rate.py [DATA] [--workers 2] [--json OUT.jsonl]
    python benchmarks/authentic_rate.py --with-pydicom-data --loso
    python benchmarks/authentic_rate.py --sources outside --detectors learned_2d,container
    python benchmarks/authentic_rate.py --from-json OUT.jsonl --loso      # re-analyse, no scan
    python benchmarks/authentic_rate.py --single-slices                   # every CT slice alone

``DATA`` defaults to ``$MEDFORENSICS_DATA``, else ``../shared/data`` next to the repository.
Every image there is an original (see its README), so every label other than ``authentic`` is a
false alarm. docs/false_alarms.md explains the tables.

**Sources.** Each item (image or series) belongs to one source of :data:`SOURCES` (longest path
prefix under ``DATA``), which is either *fitted* (used to train or calibrate something shipped)
or *outside* (never fitted to: other hospitals, scanners, export chains, phantoms). A folder the
table does not know is a source of its own, marked *outside*. ``--with-pydicom-data`` adds every
file of ``pydicom.data`` (pydicom's test files and ``pip install pydicom-data``) that holds pixel
data, any modality, as the fitted source ``pydicom-data`` with one row per modality; the scan
groups files as it would for a user (codec variants of one image that share a SeriesInstanceUID
become one series), and a file that cannot be decoded is an error of its row.

**Per item.** A row counts items: a series is one item (its slices are judged together), a
radiograph or a lone slice one. ``--single-slices`` scans every slice of every DICOM series
alone, as a 2D image (rows marked ``(slices alone)``): false alarms *per slice*, what a user who
sends one slice would see.

**Tables.** Fitted and outside sources each get a table: items, labels, errors (no verdict),
"not authentic" (share of the scored items), the detectors behind the false alarms (those with
evidence score >= 0.5 on a falsely alarmed item, leaving out evidence that indicates ``processing``,
which fusion does not count) and how many items each detector did not assess
(``not_assessed``: outside the domain it was validated on, too small, ...).

**Demographics.** Where a source has per-image metadata (:data:`METADATA`: sex, age, view), the
same false-alarm rates by sex, age group and view, fitted and outside separately.

**Leave-one-source-out (``--loso``).** For each fitted source S and each *calibrated* detector
(evidence with ``details["raw"]`` and ``details["calibration"]``: ``learned_2d``, ``autoencoder``),
the logistic calibration is refitted with :func:`medforensics.learn.calibration.fit_logistic` on
the raw statistics of the 2D images of the *other* fitted sources of the same kind (CT or
radiograph) and size group (``details["size_group"]``: thumbnails apart); S's evidence is
rescored with it and each item re-fused with :func:`medforensics.fusion.fuse`. Reported: S's false
alarms with the shipped calibration and with the LOSO one. It reuses the scan's verdicts, and
approximates a real refit only:

* the shipped calibration is fitted on the validation-split patients' authentic images of the
  training data; LOSO fits on *all* images of the other sources (the scanned items here), so it
  measures "how would S fare had its kind of images not set the calibration", not the exact
  calibration a retraining would give;
* the model itself (weights, the autoencoder's reference statistics) is not retrained: S may
  still have shaped the network;
* like the shipped calibration, it is fitted on single images (slices, radiographs) and applied
  to series as well (a series scores as its worst tile would alone); the autoencoder's series
  raw keeps its series correction (``scale * ln n``) computed with the shipped scale;
* a pool of fewer than :data:`MIN_POOL` images is not refitted: S's items keep the shipped
  calibration and the row says so.

Rule-based detectors (``dicom_header``, ``container``, ``ct_physics``, ``noise_residual``,
``copy_move``, ...) have hand-set constants, not a fitted calibration, so LOSO does not apply to
them: their evidence enters the re-fusion unchanged.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from medforensics.core import Evidence
from medforensics.detectors.base import logistic
from medforensics.fusion import FusionConfig, fuse
from medforensics.learn.calibration import fit_logistic

REPO = Path(__file__).resolve().parents[1]
FITTED, OUTSIDE = "fitted", "outside"
#: Least number of other images a LOSO calibration is fitted on (as the tile model's own calibration).
MIN_POOL = 5
#: Evidence from this score on counts as "behind" a false alarm.
CULPRIT = 0.5


# ------------------------------------------------------------------------------------ sources

@dataclass(frozen=True)
class Source:
    """A source folder under the data root: ``prefix`` (its path, ``/``-separated, and its name),
    ``status`` (``fitted`` or ``outside``) and ``split``: ``None`` (one row), ``folder`` (one row
    per sub-folder) or ``modality`` (one row per modality)."""

    prefix: str
    status: str
    split: str | None = None
    known: bool = True

    def row(self, rest: tuple[str, ...] = (), modality: str | None = None) -> str:
        """The row of an item: the source's name, or with its sub-folder (``rest[0]``) or modality;
        a source the table does not know says so."""
        if not self.known:
            return f"{self.prefix} (not in the source table)"
        if self.split == "folder" and rest:
            return f"{self.prefix}/{rest[0]}"
        if self.split == "modality":
            return f"{self.prefix}/{modality or 'unknown'}"
        return self.prefix


#: Every known source folder of the data root (see its README), fitted or outside.
SOURCES: tuple[Source, ...] = (
    Source("ct/lidc-idri", FITTED),
    Source("ct/lidc-idri-small", FITTED),
    Source("ct/slices/dcmqi-3slice", FITTED),
    Source("ct/slices/tcia-covid19-ny-sbu", FITTED),
    Source("ct/nifti", FITTED),
    Source("ct/dcm-qa-ct", OUTSIDE, split="folder"),
    Source("ct/emp-news", OUTSIDE),
    Source("xray/mhh-covid19", FITTED),
    Source("xray/nih-cxr14", FITTED),             # the 512 px radiographs
    Source("xray/nih-cxr14/NIH1000", FITTED),     # the 64 px thumbnails
    Source("xray/siim", FITTED),
    Source("xray/ieee8023/radiopaedia", OUTSIDE),
    Source("xray/ieee8023/eurorad", OUTSIDE),
    Source("xray/ieee8023/other-cc", OUTSIDE),
)
#: pydicom's test files (``pydicom.data``, ``pydicom-data``): fitted, one row per modality.
PYDICOM = Source("pydicom-data", FITTED, split="modality")

#: Per-image metadata: (CSV under the data root, item path template from the CSV's columns,
#: sex column, age column, view column). MHH's image files are named ``<image_id>.png`` (all 243
#: of data.csv have one); its ages are redacted upstream, so they are all "unknown".
METADATA: tuple[tuple[str, str, str, str, str], ...] = (
    ("xray/mhh-covid19/data.csv", "xray/mhh-covid19/images/{image_id}.png", "sex", "age", "projection"),
    ("xray/ieee8023/metadata.csv", "xray/ieee8023/{path}", "sex", "age", "view"),
)
AGE_GROUPS = ((40, "<40"), (60, "40-59"), (80, "60-79"), (1000, "80+"))


def _parts(rel: str) -> tuple[str, ...]:
    return tuple(p for p in rel.split("/") if p)


def source_of(rel: str) -> Source:
    """The source of a path relative to the data root (``/``-separated): the table entry with the
    longest prefix (whole path components), else an unknown source named by its first folder that
    is neither a table entry nor holds one, marked ``outside``."""
    parts = _parts(rel)
    best = None
    for s in SOURCES:
        p = _parts(s.prefix)
        if parts[:len(p)] == p and (best is None or len(p) > len(_parts(best.prefix))):
            best = s
    if best is not None:
        return best
    n = 1
    while n < len(parts) and _holds_sources(parts[:n]):
        n += 1
    return Source("/".join(parts[:n]) or ".", OUTSIDE, known=False)


def _holds_sources(parts: tuple[str, ...]) -> bool:
    """Whether a folder (path components under the data root) lies above some table entry."""
    return any(_parts(s.prefix)[:len(parts)] == parts and len(_parts(s.prefix)) > len(parts) for s in SOURCES)


def row_of(rel: str, modality: str | None = None) -> tuple[Source, str]:
    """``(source, row name)`` of a path relative to the data root."""
    src = source_of(rel)
    return src, src.row(_parts(rel)[len(_parts(src.prefix)):], modality)


def source_paths(root: Path, which: str = "all") -> list[Path]:
    """What to scan under ``root`` for ``--sources which`` (``fitted``, ``outside``, ``all``): the
    folders (and loose image files) of the sources of that status; unknown ones count as outside.
    ``all`` is ``root`` itself."""
    from medforensics.io import sniff

    if which == "all":
        return [root]
    out: list[Path] = []

    def visit(folder: Path, rel: tuple[str, ...]) -> None:
        for child in sorted(folder.iterdir()):
            if child.name.startswith(".") or (child.is_file() and sniff(child) is None):
                continue
            r = rel + (child.name,)
            src = source_of("/".join(r))
            if child.is_dir() and not src.known and _holds_sources(r):
                visit(child, r)         # a folder above table entries (ct/, ct/slices/): look inside
            elif src.status == which:
                out.append(child)       # a source's folder (with any sources nested in it), or an unknown one

    visit(root, ())
    return out


def default_root() -> Path:
    """``$MEDFORENSICS_DATA``, else ``../shared/data`` next to the repository
    (:func:`medforensics.datapath.data_root`)."""
    from medforensics.datapath import data_root

    return data_root()


def check_root(root: Path) -> None:
    """Exit with one line when ``root`` is not a readable folder."""
    try:
        with os.scandir(root) as it:
            next(it, None)
    except OSError as e:
        raise SystemExit(f"{root}: cannot read the data folder ({e.strerror or e}); pass DATA or set "
                         "MEDFORENSICS_DATA (the workspace has it at ../shared/data)") from None


def pydicom_images() -> dict[str, tuple[str, str]]:
    """Every file of ``pydicom.data`` (pydicom-data included) that holds pixel data, any modality:
    ``{path: (modality from its header or 'unknown', SeriesInstanceUID or '')}``."""
    import pydicom
    from pydicom.data import get_testdata_files

    out: dict[str, tuple[str, str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in sorted(set(get_testdata_files("*"))):
            try:
                ds = pydicom.dcmread(f, defer_size="1 KB")
            except Exception:  # noqa: BLE001 - not DICOM, or not readable as such: not an image
                continue
            if any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
                out[str(Path(f).resolve())] = (str(ds.get("Modality") or "unknown"),
                                               str(ds.get("SeriesInstanceUID") or ""))
    return out


def pydicom_modality(verdict: dict, images: dict[str, tuple[str, str]]) -> str:
    """The modality of a pydicom item: the scan's, else the header's of its file, or of a file of
    its series (an unreadable series of grouped codec variants has no verdict modality)."""
    if verdict.get("modality"):
        return verdict["modality"]
    path = str(Path(verdict["path"]).resolve())
    if path in images:
        return images[path][0]
    return next((m for m, uid in images.values() if uid and uid == verdict.get("uid")), "unknown")


# ------------------------------------------------------------------------------- demographics

def sex_of(value: str) -> str:
    v = (value or "").strip().lower()
    return "M" if v in ("m", "male") else "F" if v in ("f", "w", "female") else "unknown"


def age_group(value: str) -> str:
    """``<40``, ``40-59``, ``60-79``, ``80+`` or ``unknown``."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return "unknown"
    return next(name for limit, name in AGE_GROUPS if age < limit)


def view_of(value: str) -> str:
    """``PA``, ``AP``, ``AP supine``, ``lateral``, another view as written, or ``unknown``."""
    v = " ".join((value or "").split()).upper()
    if not v:
        return "unknown"
    if v in ("L", "LL", "LAT", "LATERAL"):
        return "lateral"
    return "AP supine" if v == "AP SUPINE" else v


def read_demographics(root: Path) -> dict[str, dict[str, str]]:
    """``{item path relative to root: {"sex", "age", "view"}}`` from the :data:`METADATA` files
    that exist under ``root``."""
    out: dict[str, dict[str, str]] = {}
    for table, template, sex, age, view in METADATA:
        path = root / table
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out[template.format(**row)] = {"sex": sex_of(row.get(sex, "")), "age": age_group(row.get(age, "")),
                                               "view": view_of(row.get(view, ""))}
    return out


# ------------------------------------------------------------------------------------ records

def record(verdict: dict, root: Path, demographics: dict[str, dict[str, str]],
           pydicom: dict[str, tuple[str, str]] | None = None) -> dict:
    """A verdict's JSON record with ``benchmark`` added: its source, row, status and, where the
    metadata has it, demographics. ``pydicom``: :func:`pydicom_images` when they were scanned."""
    path = Path(verdict["path"]).resolve()
    try:
        rel = path.relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = None
    if rel is None and pydicom is not None:
        src, row = PYDICOM, PYDICOM.row((), pydicom_modality(verdict, pydicom))
    elif rel is None:
        src, row = Source("elsewhere", OUTSIDE, known=False), "elsewhere"
    else:
        src, row = row_of(rel, verdict.get("modality"))
    bench = {"source": src.prefix, "row": row, "status": src.status}
    if rel is not None and rel in demographics:
        bench["demographics"] = demographics[rel]
    return {**verdict, "benchmark": bench}


def false_alarm(rec: dict, label: str | None = None) -> bool:
    """Whether a scored item (of authentic data) is labelled other than ``authentic``."""
    label = rec.get("label") if label is None else label
    return label not in (None, "authentic")


def culprits(rec: dict) -> set[str]:
    """The detectors behind an item's alarm: evidence from :data:`CULPRIT` on that fusion counts
    (evidence that indicates ``processing`` is reported, not counted)."""
    return {e["detector"] for e in rec.get("evidence", [])
            if e["score"] >= CULPRIT and e.get("indicates") != "processing"}


def summarise(records: Iterable[dict], key) -> dict[str, dict]:
    """Per group (``key(record)``; ``None``: left out): items, labels, errors (no verdict), false
    alarms, the detectors behind them and the detectors that did not assess items."""
    out: dict[str, dict] = defaultdict(lambda: {"items": 0, "labels": Counter(), "errors": 0, "false_alarms": 0,
                                                "culprits": Counter(), "not_assessed": Counter()})
    for r in records:
        g = key(r)
        if g is None:
            continue
        s = out[g]
        s["items"] += 1
        if r.get("label") is None:
            s["errors"] += 1
            continue
        s["labels"][r["label"]] += 1
        s["not_assessed"].update(list(r.get("not_assessed") or {}))
        if false_alarm(r):
            s["false_alarms"] += 1
            s["culprits"].update(culprits(r))
    return dict(out)


def rate(s: dict) -> float:
    """Share (%) of the scored items that are false alarms."""
    return 100.0 * s["false_alarms"] / max(1, s["items"] - s["errors"])


def _counts(c: Counter) -> str:
    return ", ".join(f"{k} {n}" for k, n in c.most_common()) or "-"


def print_sources(title: str, stats: dict[str, dict]) -> None:
    """One markdown table of :func:`summarise` rows, with a total."""
    print(f"\n**{title}**\n")
    print("| source | items | authentic | suspicious | manipulated | synthetic | errors | not authentic | "
          "behind the false alarms | not assessed by |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    total = {"items": 0, "labels": Counter(), "errors": 0, "false_alarms": 0, "culprits": Counter(),
             "not_assessed": Counter()}
    for g in sorted(stats):
        s = stats[g]
        for k in total:
            total[k] += s[k]
        print(_table_row(g, s))
    print(_table_row("**all**", total))


def _table_row(name: str, s: dict) -> str:
    c = s["labels"]
    return (f"| {name} | {s['items']} | {c['authentic']} | {c['suspicious']} | {c['manipulated']} | "
            f"{c['synthetic']} | {s['errors']} | {s['false_alarms']} ({rate(s):.1f}%) | {_counts(s['culprits'])} | "
            f"{_counts(s['not_assessed'])} |")


def print_reasons(records: list[dict]) -> None:
    """Each detector's most common reasons for not assessing an item."""
    reasons: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        for det, why in (r.get("not_assessed") or {}).items():
            reasons[det][" ".join(str(why).split())[:110]] += 1
    if reasons:
        print("\nWhy items were not assessed (most common reasons):")
        for det in sorted(reasons):
            for why, n in reasons[det].most_common(3):
                print(f"- `{det}` ({n}): {why}")


def _group_order(group: str) -> tuple[int, str]:
    """Age groups young to old, ``unknown`` last, others alphabetically."""
    ages = [name for _, name in AGE_GROUPS]
    return (ages.index(group) if group in ages else len(ages) + (group == "unknown"), group)


def print_demographics(records: list[dict]) -> None:
    """False alarms by sex, age group and view, for fitted and outside sources separately."""
    for status in (FITTED, OUTSIDE):
        rs = [r for r in records if r["benchmark"]["status"] == status and "demographics" in r["benchmark"]]
        if not rs:
            continue
        names = sorted({r["benchmark"]["source"] for r in rs})
        print(f"\n**{status.capitalize()} sources by patient group** ({', '.join(names)})\n")
        print("| group | items | errors | not authentic | behind the false alarms |")
        print("|---|---|---|---|---|")
        for attr in ("sex", "age", "view"):
            stats = summarise(rs, lambda r: r["benchmark"]["demographics"][attr])
            for g in sorted(stats, key=_group_order):
                s = stats[g]
                print(f"| {attr} {g} | {s['items']} | {s['errors']} | {s['false_alarms']} ({rate(s):.1f}%) | "
                      f"{_counts(s['culprits'])} |")


# ---------------------------------------------------------------------------- leave-one-source-out

def is_calibrated(ev: dict) -> bool:
    """Whether a piece of evidence carries a fitted calibration (``raw`` and ``calibration``)."""
    d = ev.get("details") or {}
    cal = d.get("calibration")
    return d.get("raw") is not None and isinstance(cal, dict) and {"midpoint", "scale"} <= set(cal)


def pool_key(rec: dict, ev: dict) -> tuple[str, str, str]:
    """``(detector, kind, size group)`` whose images share a calibration: CT or radiograph, and
    thumbnails apart (``details["size_group"]``)."""
    kind = "ct" if rec.get("modality") == "CT" else "radiograph"
    return ev["detector"], kind, str((ev.get("details") or {}).get("size_group") or "native")


def refit(records: Iterable[dict], leave_out: str) -> dict[tuple[str, str, str], dict]:
    """LOSO calibrations without source ``leave_out``: per :func:`pool_key`, ``fit_logistic`` of the
    raw statistics of the other fitted sources' scored 2D images (pools under :data:`MIN_POOL`
    images are left out); each with ``n_images``."""
    pools: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in records:
        b = r["benchmark"]
        if b["status"] != FITTED or b["source"] == leave_out or r.get("label") is None or r.get("kind") != "image":
            continue
        for ev in r.get("evidence", []):
            if is_calibrated(ev):
                pools[pool_key(r, ev)].append(float(ev["details"]["raw"]))
    return {k: {**fit_logistic(v), "n_images": len(v)} for k, v in sorted(pools.items()) if len(v) >= MIN_POOL}


def evidence_of(rec: dict, calibrations: dict | None = None) -> tuple[list[Evidence], bool]:
    """The record's evidence as :class:`Evidence` (details, indicates and confidence kept),
    calibrated evidence rescored with ``calibrations`` (by :func:`pool_key`) where one is given;
    also whether any calibrated evidence had no calibration there (it keeps its shipped score)."""
    out, kept = [], False
    for ev in rec.get("evidence", []):
        score = ev["score"]
        if calibrations is not None and is_calibrated(ev):
            cal = calibrations.get(pool_key(rec, ev))
            if cal is None:
                kept = True
            else:
                score = logistic(float(ev["details"]["raw"]), float(cal["midpoint"]), float(cal["scale"]))
        out.append(Evidence(ev["detector"], score, ev.get("explanation", ""), details=dict(ev.get("details") or {}),
                            indicates=ev.get("indicates", "manipulation"), confidence=ev.get("confidence", "normal")))
    return out, kept


def refuse(rec: dict, calibrations: dict | None = None, config: FusionConfig = FusionConfig()) -> tuple[float, str]:
    """The record re-fused with :func:`fuse` (``calibrations``: see :func:`evidence_of`)."""
    return fuse(evidence_of(rec, calibrations)[0], config)


def loso(records: list[dict], config: FusionConfig = FusionConfig()) -> list[dict]:
    """Per fitted source S: its scored items, false alarms with the shipped calibration (re-fused
    as stored) and with the LOSO one (:func:`refit` without S), the items with calibrated
    evidence, those left on the shipped calibration, and the fits used."""
    out = []
    for src in sorted({r["benchmark"]["source"] for r in records if r["benchmark"]["status"] == FITTED}):
        mine = [r for r in records if r["benchmark"]["source"] == src and r.get("label") is not None]
        cals = refit(records, src)
        res = {"source": src, "items": len(mine), "shipped": 0, "loso": 0, "calibrated_items": 0, "kept_shipped": 0,
               "fits": {}}
        for r in mine:
            res["shipped"] += false_alarm(r, refuse(r, None, config)[1])
            evs, kept = evidence_of(r, cals)
            res["loso"] += false_alarm(r, fuse(evs, config)[1])
            if any(is_calibrated(e) for e in r.get("evidence", [])):
                res["calibrated_items"] += 1
                res["kept_shipped"] += kept
                for e in r["evidence"]:
                    k = pool_key(r, e)
                    if is_calibrated(e) and k in cals:
                        res["fits"][k] = (cals[k], e["details"]["calibration"])
        out.append(res)
    return out


def print_loso(results: list[dict]) -> None:
    print("\n**Leave-one-source-out calibration** (fitted sources; calibrated detectors refitted on the other "
          "fitted sources' 2D images, then re-fused)\n")
    print("| left-out source | scored | with calibrated evidence | not authentic, shipped calibration | "
          "not authentic, LOSO calibration | LOSO fits: detector/kind/size group: images, midpoint, scale "
          "(shipped) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        n = max(1, r["items"])
        fits = "; ".join(f"{d}/{k}/{g}: {c['n_images']}, {c['midpoint']:.2f}, {c['scale']:.2f} "
                         f"({s['midpoint']:.2f}, {s['scale']:.2f})" for (d, k, g), (c, s) in sorted(r["fits"].items()))
        if r["calibrated_items"] == 0:
            lo = "= shipped (no calibrated evidence)"
        else:
            lo = f"{r['loso']} ({100 * r['loso'] / n:.1f}%)"
            if r["kept_shipped"]:
                lo += f"; {r['kept_shipped']} item(s) kept the shipped calibration (fewer than {MIN_POOL} other images)"
        print(f"| {r['source']} | {r['items']} | {r['calibrated_items']} | "
              f"{r['shipped']} ({100 * r['shipped'] / n:.1f}%) | {lo} | {fits or '-'} |")


# ---------------------------------------------------------------------------------------- main

def single_slice_sources(paths: Iterable[str]) -> list:
    """The sources a scan of ``paths`` finds, with every DICOM series split into its instances,
    each a single image (a slice sent alone, without the series around it)."""
    from medforensics.io import Source as Item, discover

    out = []
    for src in discover(paths)[0]:
        if src.kind == "dicom-series":
            out.extend(Item("dicom", [f], notes=["a slice of a series, scanned alone"]) for f in src.files)
        else:
            out.append(src)
    return out


def scan_single_slices(paths: list[str], names: list[str] | None, workers: int):
    """Verdicts of :func:`single_slice_sources`, as :func:`medforensics.scan.scan` would give them."""
    from concurrent.futures import ProcessPoolExecutor

    from medforensics import scan as pipeline
    from medforensics.detectors.base import load_detectors
    from medforensics.fusion import FusionConfig

    sources = single_slice_sources(paths)
    if workers <= 1:
        detectors = load_detectors(names)
        yield from (pipeline.scan_source(s, detectors) for s in sources)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers, initializer=pipeline._init_worker,
                             initargs=(names, None, FusionConfig(), False, False, threads)) as pool:
        yield from pool.map(pipeline._work, sources, chunksize=4)


def scan_records(root: Path, which: str, names: list[str] | None, workers: int, with_pydicom: bool,
                 single_slices: bool = False) -> list[dict]:
    """Scan the sources of status ``which`` (and pydicom's images) and return their records.

    ``single_slices``: every slice of a DICOM series is scanned alone, as a 2D image (its record's
    row gets `` (slices alone)``), the way a user who sends one slice would see it."""
    from medforensics.scan import scan

    # pydicom's test files are malformed on purpose; its warnings about them would drown the tables
    warnings.filterwarnings("ignore", module="pydicom")
    paths = [str(p) for p in source_paths(root, which)]
    images = pydicom_images() if with_pydicom and which in ("all", FITTED) else None
    paths += sorted(images or {})
    demo = read_demographics(root)
    verdicts = scan_single_slices(paths, names, workers) if single_slices else scan(paths, names, workers=workers)
    records = []
    for v in verdicts:
        rec = record(v.to_dict(), root, demo, images)
        if single_slices and v.kind == "image" and v.modality in ("CT", "MR", "PT", "NM") and v.path.endswith(".dcm"):
            rec["benchmark"]["row"] += " (slices alone)"
        records.append(rec)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=None,
                    help="data root (default: $MEDFORENSICS_DATA, else ../shared/data next to the repository)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the scan records here (a new file)")
    ap.add_argument("--detectors", default=None, help="comma-separated detector names (default: the default scan)")
    ap.add_argument("--with-pydicom-data", action="store_true",
                    help="add every image of pydicom's test files and pydicom-data (fitted, one row per modality)")
    ap.add_argument("--sources", choices=("all", FITTED, OUTSIDE), default="all", help="what to scan (default: all)")
    ap.add_argument("--loso", action="store_true", help="leave-one-source-out calibration of the fitted sources")
    ap.add_argument("--single-slices", action="store_true",
                    help="scan every slice of a DICOM series alone, as a 2D image (false alarms per slice)")
    ap.add_argument("--from-json", type=Path, default=None,
                    help="analyse the records of an earlier --json run instead of scanning")
    args = ap.parse_args()
    if args.loso and args.sources == OUTSIDE:
        raise SystemExit("--loso needs the fitted sources: use --sources fitted or all")
    t0 = time.perf_counter()
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        how = f"{len(records)} records read from {args.from_json}"
    else:
        root = args.data if args.data is not None else default_root()
        check_root(root)
        names = args.detectors.split(",") if args.detectors else None
        records = scan_records(root, args.sources, names, args.workers, args.with_pydicom_data, args.single_slices)
        how = f"{len(records)} items scanned in {time.perf_counter() - t0:.0f} s with {args.workers} worker(s)"
        if args.json:
            with open(args.json, "x", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")
    for status, title in ((FITTED, "Fitted sources (used to train or calibrate something shipped)"),
                          (OUTSIDE, "Outside sources (never fitted to)")):
        stats = summarise(records, lambda r, s=status: r["benchmark"]["row"] if r["benchmark"]["status"] == s else None)
        if stats:
            print_sources(title, stats)
    print_reasons(records)
    print_demographics(records)
    if args.loso:
        print_loso(loso(records))
    same = sum(refuse(r)[1] == r["label"] for r in records if r.get("label") is not None)
    print(f"\n{how}; re-fusing the stored evidence reproduces {same} of "
          f"{sum(r.get('label') is not None for r in records)} labels.")


if __name__ == "__main__":
    main()
