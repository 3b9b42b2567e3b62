"""What the chest-only models are told about each radiograph: frame shapes and the anatomy check
(:func:`medforensics.detectors.anatomy.chest_radiograph`) per source folder.

    python benchmarks/anatomy_frames.py [DATA_DIR] [--with-pydicom-data]

For every 2D radiograph of 128 px or more (modality CR, DX, XR) under the data root (and pydicom's
CR/DX test files with ``--with-pydicom-data``), prints per folder: items, the range of height over
width, how many the check passes as chest and why the others were left out.
"""
from __future__ import annotations

import argparse
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from medforensics.core import MedForensicsError
from medforensics.datapath import data_root
from medforensics.detectors.anatomy import chest_radiograph
from medforensics.io import discover, load_source

RADIOGRAPHS = {"CR", "DX", "XR"}


def folder_of(path: Path, root: Path) -> str:
    try:
        parts = path.resolve().relative_to(root.resolve()).parts
    except ValueError:
        return "pydicom-data"
    return "/".join(parts[:3] if parts[:2] == ("xray", "ieee8023") else parts[:2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=None)
    ap.add_argument("--with-pydicom-data", action="store_true")
    args = ap.parse_args()
    root = data_root(args.data)
    if not root.is_dir():
        raise SystemExit(f"{root}: data folder not found (set --data or MEDFORENSICS_DATA)")
    paths = [str(root / "xray")]
    if args.with_pydicom_data:
        from pydicom.data import get_testdata_files
        paths += sorted(set(get_testdata_files("RG*")))
    sources, _ = discover(paths)
    aspects: dict[str, list[float]] = defaultdict(list)
    passed: Counter = Counter()
    reasons: dict[str, Counter] = defaultdict(Counter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for src in sources:
            try:
                image = load_source(src)
            except MedForensicsError:
                continue
            if image.pixels.ndim != 2 or image.modality not in RADIOGRAPHS or min(image.pixels.shape) < 128:
                continue
            folder = folder_of(Path(src.path), root)
            h, w = image.pixels.shape
            aspects[folder].append(h / w)
            ok, why = chest_radiograph(image)
            passed[folder] += ok
            if not ok:
                reasons[folder][why.split(" (")[0]] += 1
    print("| folder | radiographs | height/width | passed as chest | left out, why |")
    print("|---|---|---|---|---|")
    for folder in sorted(aspects):
        a = aspects[folder]
        why = "; ".join(f"{n}: {r}" for r, n in reasons[folder].most_common(3)) or "-"
        print(f"| {folder} | {len(a)} | {min(a):.2f}-{max(a):.2f} | {passed[folder]} | {why} |")


if __name__ == "__main__":
    main()
