"""Detection through the default scan on a forge dataset's split: what share of each forgery class
is labelled other than ``authentic``, and how many authentic items are.

    python benchmarks/scan_forge_split.py MANIFEST [--split test] [--kind radiograph] [--workers 2]

Every item of the split (``forge dataset``'s manifest.csv) is scanned as a user would scan it
(default detectors, default fusion); per class it prints the count, the labels, and the share
flagged (suspicious or worse). Authentic rows give the false-alarm rate on the same split. Run it
before and after a change to see detection and false alarms side by side (issue 12).
"""
from __future__ import annotations

import argparse
import csv
import time
from collections import Counter, defaultdict
from pathlib import Path

from medforensics.scan import scan

REAL = {"authentic", "TB", "TM"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--kind", default=None, help="ct-slice or radiograph (default: both)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--detectors", default=None, help="comma-separated detector names (default: the default scan)")
    args = ap.parse_args()
    if not args.manifest.is_file():
        raise SystemExit(f"{args.manifest}: manifest not found")
    with open(args.manifest, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == args.split and (args.kind is None or r["kind"] == args.kind)]
    if not rows:
        raise SystemExit(f"{args.manifest}: no items in split {args.split!r}" + (f" of kind {args.kind}" if args.kind else ""))
    root = args.manifest.parent
    paths = [str(root / r["file"]) for r in rows]
    t0 = time.perf_counter()
    names = args.detectors.split(",") if args.detectors else None
    verdicts = {v.path: v for v in scan(paths, names, workers=args.workers)}
    per: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r, p in zip(rows, paths):
        v = verdicts.get(p)
        per[(r["kind"], r["class"])][v.label if v is not None and v.label else "error"] += 1
    print("| kind | class | items | authentic | suspicious | manipulated | synthetic | errors | flagged |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (kind, cls), c in sorted(per.items(), key=lambda kv: (kv[0][0], kv[0][1] not in REAL, kv[0][1])):
        n = sum(c.values())
        flagged = c["suspicious"] + c["manipulated"] + c["synthetic"]
        what = "false alarms" if cls in REAL else "flagged"
        print(f"| {kind} | {cls} | {n} | {c['authentic']} | {c['suspicious']} | {c['manipulated']} | {c['synthetic']} | "
              f"{c['error']} | {flagged} ({100 * flagged / max(1, n - c['error']):.0f}% {what}) |")
    print(f"\n{len(rows)} items of split {args.split} scanned in {time.perf_counter() - t0:.0f} s "
          f"with {args.workers} worker(s)")


if __name__ == "__main__":
    main()
