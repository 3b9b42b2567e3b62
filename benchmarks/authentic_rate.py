"""False-alarm rate on real, untampered images: scan all of ../shared/data.

    python benchmarks/authentic_rate.py [DATA_DIR] [--workers 2] [--json OUT.jsonl]
    python benchmarks/authentic_rate.py --detectors autoencoder,learned_2d --with-pydicom-data

Every image in the folder is an original (see its README), so every label other than
``authentic`` is a false alarm. Prints the share per folder and overall, and the detectors
behind the false alarms. ``--detectors`` scans with those detectors only (default: the default
scan's); ``--with-pydicom-data`` adds the real CR, DX and CT files of pydicom's test data and of
``pip install pydicom-data`` (other hospitals' scanners, none used in training), grouped as
``pydicom-data/<modality>``.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from medforensics.scan import scan

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"


def group_of(path: str, root: Path, modality: str | None = None) -> str:
    try:
        rel = Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return f"pydicom-data/{modality or '?'}"
    return "/".join(rel.parts[:2])


def pydicom_real_images(modalities=("CR", "DX", "CT")) -> list[str]:
    """Real radiographs and CT images among pydicom's test files (pydicom-data included), one
    file each; files whose pixels cannot be decoded here are left out by the scan as errors."""
    import warnings

    import pydicom
    from pydicom.data import get_testdata_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        files = get_testdata_files("*")
        out = []
        for f in sorted(set(files)):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not DICOM
                continue
            if ds.get("Modality") in modalities and ds.get("Rows"):
                out.append(f)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the scan records here")
    ap.add_argument("--detectors", default=None, help="comma-separated detector names (default: the default scan)")
    ap.add_argument("--with-pydicom-data", action="store_true", help="add pydicom's real CR, DX and CT test files")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: data folder not found (it is ../shared/data in the workspace)")
    t0 = time.perf_counter()
    paths = [str(args.data)] + (pydicom_real_images() if args.with_pydicom_data else [])
    names = args.detectors.split(",") if args.detectors else None
    verdicts = list(scan(paths, names, workers=args.workers))
    elapsed = time.perf_counter() - t0
    per_group: dict[str, Counter] = defaultdict(Counter)
    culprits: Counter = Counter()
    for v in verdicts:
        g = group_of(v.path, args.data, v.modality)
        per_group[g][v.label or "error"] += 1
        if v.label not in (None, "authentic"):
            culprits.update(e.detector for e in v.evidence if e.score >= 0.5)
    if args.json:
        with open(args.json, "x") as f:
            for v in verdicts:
                f.write(json.dumps(v.to_dict()) + "\n")
    print(f"| folder | items | authentic | suspicious | manipulated | synthetic | errors | not authentic |")
    print("|---|---|---|---|---|---|---|---|")
    total = Counter()
    for g in sorted(per_group):
        c = per_group[g]
        total.update(c)
        n = sum(c.values())
        bad = n - c["authentic"] - c["error"]
        print(f"| {g} | {n} | {c['authentic']} | {c['suspicious']} | {c['manipulated']} | {c['synthetic']} | "
              f"{c['error']} | {100 * bad / max(1, n - c['error']):.1f}% |")
    n = sum(total.values())
    bad = n - total["authentic"] - total["error"]
    print(f"| **all** | {n} | {total['authentic']} | {total['suspicious']} | {total['manipulated']} | "
          f"{total['synthetic']} | {total['error']} | **{100 * bad / max(1, n - total['error']):.1f}%** |")
    print(f"\n{n} items scanned in {elapsed:.0f} s with {args.workers} worker(s); "
          f"detectors behind false alarms: {dict(culprits) or 'none'}")


if __name__ == "__main__":
    main()
