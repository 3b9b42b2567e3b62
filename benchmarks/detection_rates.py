"""Detection and localisation rates on manipulated copies of real images, through the full scan.

    python benchmarks/detection_rates.py [DATA_DIR] [--n 20] [--seed 0]

For each kind of manipulation, ``n`` random cases are made from the real images in
../shared/data with ``medforensics.forge.edits`` (random image, place, size, angle); each is
analysed with all detectors and fusion. *Detected*: labelled other than ``authentic``.
*Localised*: detected, and a region of evidence scoring at least 0.5 overlaps the change. The
untouched originals are scanned too, for the false-alarm column.
"""
from __future__ import annotations

import argparse
import copy
import io
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage

from medforensics.core import Image
from medforensics.detectors import load_detectors
from medforensics.forge.edits import copy_move, inpaint_region, rescale_region, splice
from medforensics.io import load
from medforensics.scan import analyze
from medforensics.datapath import data_root

DEFAULT = data_root()  # --data, else $MEDFORENSICS_DATA, else ../shared/data beside the repository


def overlaps(region, box, k=None) -> bool:
    b = list(region.bbox_voxel)
    if len(b) == 6:
        if k is not None and not (b[0] <= k < b[3]):
            return False
        b = b[1:3] + b[4:6]
    return not (b[2] <= box[0] or box[2] <= b[0] or b[3] <= box[1] or box[3] <= b[1])


def outcome(verdict, box, k=None) -> tuple[bool, bool]:
    detected = verdict.label != "authentic"
    local = detected and any(overlaps(r, box, k) for e in verdict.evidence if e.score >= 0.5 for r in e.regions)
    return detected, local


def box_of(mask) -> tuple[int, int, int, int]:
    r, c = np.nonzero(mask)
    return int(r.min()), int(c.min()), int(r.max()) + 1, int(c.max()) + 1


_SCRATCH: list[Path] = []


def _scratch() -> Path:
    """This run's own temporary folder (removed at exit): runs side by side never share files."""
    if not _SCRATCH:
        import atexit
        import shutil
        import tempfile

        _SCRATCH.append(Path(tempfile.mkdtemp(prefix="mf_detection_rates_")))
        atexit.register(shutil.rmtree, _SCRATCH[0], True)
    return _SCRATCH[0]


def as_png(arr: np.ndarray, name: str, fmt: str = "PNG", **save) -> Image:
    """Write through a real container (8-bit PNG or JPEG in memory) and read back as the scan would."""
    buf = io.BytesIO()
    PILImage.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8)).save(buf, format=fmt, **save)
    buf.seek(0)
    path = _scratch() / f"{name}.{fmt.lower()}"
    path.write_bytes(buf.getvalue())
    return load(path)[0]


def radiograph_cases(data: Path, n: int, rng, detectors) -> dict[str, list]:
    files = sorted((data / "xray" / "mhh-covid19" / "images").glob("*.png"))
    res: dict[str, list] = {k: [] for k in ("original", "copy-move", "in-painting", "splice (donor rescaled)",
                                            "splice (donor + noise, same scale)", "rescale x1.3")}
    for _ in range(n):
        f, d = files[rng.integers(len(files))], files[rng.integers(len(files))]
        a = np.asarray(PILImage.open(f).convert("L"), dtype=np.float32)
        h, w = a.shape
        s = int(rng.integers(56, 97))
        r, c = int(rng.integers(int(h * 0.25), int(h * 0.55))), int(rng.integers(int(w * 0.15), int(w * 0.3)))
        res["original"].append((analyze(as_png(a, "o"), detectors).label != "authentic", False))
        dst = (min(h - s - 1, r + int(rng.integers(40, 120))), int(rng.integers(int(w * 0.55), int(w * 0.75) - s)))
        e, m = copy_move(a, (r, c, r + s, c + s), dst, angle=float(rng.uniform(0, 30)),
                         scale=float(rng.uniform(0.9, 1.2)))
        res["copy-move"].append(outcome(analyze(as_png(e, "cm"), detectors), box_of(m)))
        e, m = inpaint_region(a, (r, c, r + s, c + s))
        res["in-painting"].append(outcome(analyze(as_png(e, "ip"), detectors), box_of(m)))
        donor_img = PILImage.open(d).convert("L")
        donor_img = donor_img.resize((int(donor_img.width * 1.6), int(donor_img.height * 1.6)), PILImage.BICUBIC)
        donor = np.asarray(donor_img, dtype=np.float32)
        e, m = splice(a, donor, (int(h * 0.45), int(w * 0.3), int(h * 0.45) + s, int(w * 0.3) + s), dst)
        res["splice (donor rescaled)"].append(outcome(analyze(as_png(e, "sp"), detectors), box_of(m)))
        donor = np.asarray(PILImage.open(d).convert("L").resize((w, h)), dtype=np.float32) + rng.normal(0, 4, (h, w))
        e, m = splice(a, donor, (r, c, r + s, c + s), dst)
        res["splice (donor + noise, same scale)"].append(outcome(analyze(as_png(e, "sn"), detectors), box_of(m)))
        e, m = rescale_region(a, (r, c, r + s, c + s), 1.3)
        res["rescale x1.3"].append(outcome(analyze(as_png(e, "rs"), detectors), box_of(m)))
    return res


def ct_cases(data: Path, n: int, rng, detectors) -> dict[str, list]:
    series_dir = next((data / "ct" / "lidc-idri" / "LIDC-IDRI-0001").rglob("*.dcm")).parent
    full = load(series_dir)[0]
    res: dict[str, list] = {k: [] for k in ("CT series original (20 slices)", "CT blur 30 px", "CT in-painting 30 px",
                                            "CT contrast cut to 15% (64 px)", "CT rescale x1.3 (64 px)",
                                            "CT slice + noise 15 HU")}
    for _ in range(n):
        z0 = int(rng.integers(0, full.pixels.shape[0] - 20))
        sub = copy.copy(full)
        sub.pixels = full.pixels[z0:z0 + 20].copy()
        sub.datasets = full.datasets[z0:z0 + 20]
        sub.affine = full.affine.copy()
        sub.affine[:3, 3] = full.affine[:3, 3] + z0 * full.affine[:3, 0]
        res["CT series original (20 slices)"].append((analyze(sub, detectors).label != "authentic", False))
        k = 10
        img = sub.pixels[k]
        while True:  # a place inside the lungs or soft tissue
            r, c = int(rng.integers(150, 330)), int(rng.integers(100, 380))
            if -900 < float(img[r:r + 64, c:c + 64].mean()) < 100:
                break
        cases = {
            "CT blur 30 px": ((r, c, r + 30, c + 30), lambda x: _blur(x, (r, c, r + 30, c + 30))),
            "CT in-painting 30 px": ((r, c, r + 30, c + 30), lambda x: inpaint_region(x, (r, c, r + 30, c + 30))[0]),
            "CT contrast cut to 15% (64 px)": ((r, c, r + 64, c + 64),
                                               lambda x: rescale_region(x, (r, c, r + 64, c + 64), 0.15)[0]),
            "CT rescale x1.3 (64 px)": ((r, c, r + 64, c + 64),
                                        lambda x: rescale_region(x, (r, c, r + 64, c + 64), 1.3)[0]),
        }
        for name, (box, edit) in cases.items():
            im = copy.copy(sub)
            im.pixels = sub.pixels.copy()
            im.pixels[k] = edit(img)
            res[name].append(outcome(analyze(im, detectors), box, k))
        im = copy.copy(sub)
        im.pixels = sub.pixels.copy()
        im.pixels[k] = img + rng.normal(0, 15, img.shape).astype(np.float32)
        res["CT slice + noise 15 HU"].append(outcome(analyze(im, detectors), (0, 0) + img.shape, k))
    return res


def _blur(x: np.ndarray, box) -> np.ndarray:
    r0, c0, r1, c1 = box
    out = x.copy()
    out[r0:r1, c0:c1] = cv2.GaussianBlur(x, (0, 0), 2)[r0:r1, c0:c1]
    return out


def jpeg_cases(data: Path, n: int, rng, detectors) -> dict[str, list]:
    files = sorted((data / "xray" / "mhh-covid19" / "images").glob("*.png"))
    res: dict[str, list] = {"JPEG once (q 60-95)": [], "JPEG twice (q 50-95, then 60-95)": []}
    for _ in range(n):
        a = np.asarray(PILImage.open(files[rng.integers(len(files))]).convert("L"), dtype=np.float32)
        q1 = int(rng.integers(60, 96))
        q0 = int(rng.integers(50, 96))
        while abs(q0 - q1) < 8:
            q0 = int(rng.integers(50, 96))
        res["JPEG once (q 60-95)"].append((analyze(as_png(a, "j1", "JPEG", quality=q1), detectors).label != "authentic",
                                           False))
        once = np.asarray(as_png(a, "j0", "JPEG", quality=q0).pixels)
        res["JPEG twice (q 50-95, then 60-95)"].append(
            (analyze(as_png(once, "j2", "JPEG", quality=q1), detectors).label != "authentic", False))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: data folder not found (it is ../shared/data in the workspace)")
    rng = np.random.default_rng(args.seed)
    detectors = load_detectors()
    t0 = time.perf_counter()
    results = {**radiograph_cases(args.data, args.n, rng, detectors), **ct_cases(args.data, max(5, args.n // 2), rng, detectors),
               **jpeg_cases(args.data, args.n * 2, rng, detectors)}
    print("| case | n | labelled not authentic | of which localised |")
    print("|---|---|---|---|")
    for name, outs in results.items():
        det = sum(d for d, _ in outs)
        loc = sum(lc for _, lc in outs)
        localisable = not name.startswith(("JPEG", "CT series original")) and name != "original"
        print(f"| {name} | {len(outs)} | {det} ({100 * det / len(outs):.0f}%) | "
              f"{f'{loc} ({100 * loc / len(outs):.0f}%)' if localisable else '-'} |")
    print(f"\nseed {args.seed}; {time.perf_counter() - t0:.0f} s. 'original' rows are false alarms on the untouched images.")


if __name__ == "__main__":
    main()
