"""False-alarm rate on real, untampered images: scan all of ../shared/data.

    python benchmarks/authentic_rate.py [DATA_DIR] [--workers 2] [--json OUT.jsonl]

Every image in the folder is an original (see its README), so every label other than
``authentic`` is a false alarm. Prints the share per folder and overall, and the detectors
behind the false alarms.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

from medforensics.scan import scan

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data"


def group_of(path: str, root: Path) -> str:
    rel = Path(path).resolve().relative_to(root.resolve())
    return "/".join(rel.parts[:2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the scan records here")
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: data folder not found (it is ../shared/data in the workspace)")
    t0 = time.perf_counter()
    verdicts = list(scan([str(args.data)], workers=args.workers))
    elapsed = time.perf_counter() - t0
    per_group: dict[str, Counter] = defaultdict(Counter)
    culprits: Counter = Counter()
    for v in verdicts:
        g = group_of(v.path, args.data)
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
