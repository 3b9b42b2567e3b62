"""Time ``forge dataset`` on all of ../shared/data with the default configuration.

    python benchmarks/forge_dataset.py [DATA_DIR] [--out DIR] [--seed 0]

The forge issue asks for at least 2,000 labelled images in under 15 minutes on 2 cores, with no
patient in two splits. Prints items per split and class, patients per split, and the time.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from medforensics.forge.dataset import DatasetConfig, build_dataset, check_patient_disjoint
from medforensics.datapath import data_root

DEFAULT = data_root()  # --data, else $MEDFORENSICS_DATA, else ../shared/data beside the repository


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--out", type=Path, default=None, help="new folder for the dataset (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: data folder not found (it is ../shared/data in the workspace)")
    out = args.out or Path(tempfile.mkdtemp(prefix="forge-dataset-")) / "ds"
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int, what: str) -> None:
        now = time.perf_counter() - t0
        if now - last[0] > 30 or done == total:
            last[0] = now
            print(f"  {done}/{total} sources, {now:.0f} s ({what})", flush=True)

    manifest = build_dataset(args.data, out, DatasetConfig(seed=args.seed), progress=progress)
    elapsed = time.perf_counter() - t0
    card = json.loads((manifest.parent / "dataset.json").read_text())
    per_split = check_patient_disjoint(manifest)
    print(f"\n{card['n_items']} items in {elapsed:.0f} s ({elapsed / 60:.1f} min) -> {manifest}")
    classes = sorted({c for counts in card["counts"].values() for c in counts})
    print("| split | patients | " + " | ".join(classes) + " | total |")
    print("|---|---|" + "---|" * (len(classes) + 1))
    for split, counts in card["counts"].items():
        print(f"| {split} | {len(per_split.get(split, ()))} | " + " | ".join(str(counts.get(c, 0)) for c in classes)
              + f" | {sum(counts.values())} |")
    print("no patient in two splits (checked on the manifest)")
    for p in card["problems"][:10]:
        print("note:", p)


if __name__ == "__main__":
    main()
