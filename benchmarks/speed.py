"""Seconds per image, peak memory and heatmap memory of ``analyze`` with all detectors, on 2 cores.

    python benchmarks/speed.py [DATA_DIR] [--repeat 3] [--detectors autoencoder,ct_patch3d]

Cases: a 2,000x2,000 16-bit radiograph (a real chest radiograph from ../shared/data resized to
2,000x2,000, written as PNG), the real 1,955x1,841 Philips CR from pydicom-data, a 640x524 PNG
radiograph, a single 512x512 CT slice and the 133-slice 512x512 LIDC-IDRI CT series. Each case
runs in its own process so that its peak resident memory is its own; load time is reported
apart from detector time. Times are medians of ``--repeat`` runs (after one warm-up run that
loads the models); "heatmaps MB" is the memory of the evidence's heatmaps as the detectors keep
them (coarse grids with ``Evidence.heatmap_scale``). Targets (issue 17): radiograph < 0.5 s,
CT series < 3 s, memory per worker < 1.5 GB.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from medforensics.datapath import data_root
from pathlib import Path

DEFAULT = data_root()  # --data, else $MEDFORENSICS_DATA, else ../shared/data beside the repository


def one_case(path: str, repeat: int, names: list[str] | None = None) -> dict:
    from medforensics.detectors import load_detectors
    from medforensics.io import discover, load_source
    from medforensics.scan import analyze

    detectors = load_detectors(names)
    (src,), _ = discover([path])
    analyze(load_source(src), detectors)   # warm-up: models loaded, first-call costs paid
    loads, analyses, per_det = [], [], {}
    heat_mb = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        image = load_source(src)
        t1 = time.perf_counter()
        v = analyze(image, detectors)
        t2 = time.perf_counter()
        loads.append(t1 - t0)
        analyses.append(t2 - t1)
        for k, s in v.timings.items():
            per_det.setdefault(k, []).append(s)
        heat_mb = sum(e.heatmap.nbytes for e in v.evidence if e.heatmap is not None) / 2**20
        del v
    med = statistics.median
    return {"shape": list(image.pixels.shape), "load_s": med(loads), "detect_s": med(analyses),
            "total_s": med(a + b for a, b in zip(loads, analyses)), "heatmaps_mb": heat_mb,
            "per_detector_s": {k: round(med(s), 4) for k, s in per_det.items()},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def make_2000(data: Path, out: Path) -> Path:
    import numpy as np
    from PIL import Image
    src = next((data / "xray" / "nih-cxr14").glob("*.png"))
    a = np.asarray(Image.open(src).convert("L"), dtype=np.float32)
    big = np.asarray(Image.fromarray(a).resize((2000, 2000), Image.BICUBIC), dtype=np.float32)
    rng = np.random.default_rng(0)  # quantum noise so the upsampled image is not unnaturally smooth
    big16 = np.clip(big * 256 + rng.normal(0, 180, big.shape), 0, 65535).astype(np.uint16)
    p = out / "radiograph_2000x2000_16bit.png"
    Image.fromarray(big16).save(p)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--detectors", default=None, help="comma-separated detectors (default: the default scan's)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    names = args.detectors.split(",") if args.detectors else None
    if args.case:
        print(json.dumps(one_case(args.case, args.repeat, names)))
        return
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: data folder not found (it is ../shared/data in the workspace)")
    from pydicom.data import get_testdata_file
    with tempfile.TemporaryDirectory() as tmp:
        lidc = next((args.data / "ct" / "lidc-idri" / "LIDC-IDRI-0001").rglob("*.dcm")).parent
        cases = {
            "radiograph 2000x2000 PNG 16-bit": make_2000(args.data, Path(tmp)),
            "radiograph 1955x1841 DICOM CR": Path(get_testdata_file("RG1_UNCI.dcm")),
            "radiograph 640x524 PNG 8-bit": sorted((args.data / "xray" / "mhh-covid19" / "images").glob("*.png"))[0],
            "CT slice 512x512 DICOM": sorted((args.data / "ct" / "slices" / "tcia-covid19-ny-sbu").rglob("*.dcm"))[0],
            "CT series 133x512x512 DICOM": lidc,
        }
        print("| case | load s | detectors s | total s | peak RSS MB | heatmaps MB | slowest detectors |")
        print("|---|---|---|---|---|---|---|")
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        for name, path in cases.items():
            extra = ["--detectors", args.detectors] if args.detectors else []
            r = subprocess.run([sys.executable, __file__, "--case", str(path), "--repeat", str(args.repeat), *extra],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(f"| {name} | failed: {r.stderr.strip().splitlines()[-1]} |")
                continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            slow = sorted(((k, v) for k, v in res["per_detector_s"].items() if k not in ("figures",)),
                          key=lambda kv: -kv[1])[:3]
            print(f"| {name} | {res['load_s']:.3f} | {res['detect_s']:.3f} | {res['total_s']:.3f} | "
                  f"{res['peak_rss_mb']:.0f} | {res['heatmaps_mb']:.1f} | {', '.join(f'{k} {v:.3f}' for k, v in slow)} |")
    print(f"\n{os.cpu_count()} CPU(s); median of {args.repeat} runs after a warm-up; one process, workers=1.")


if __name__ == "__main__":
    main()
