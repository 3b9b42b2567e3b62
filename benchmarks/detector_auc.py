"""AUC of a detector (default: the unsupervised autoencoder) on a forge dataset's TEST split, per method and kind.

The autoencoder was trained on authentic images of the train patients only and calibrated on
authentic images of the validation patients: none of the forge methods below was seen. The
learned tile model (``--detector learned_2d``) was trained on the train patients' fakes and
calibrated on the validation patients' authentic images.

    python benchmarks/detector_auc.py forge-ds/manifest.csv --out autoencoder_auc.json
    python benchmarks/detector_auc.py forge-ds/manifest.csv --detector learned_2d --min-size 128

Prints, per kind (``ct-slice``, ``radiograph``) and per forged class (CT: FM, FB; 2D: copymove,
splice, inpaint, intensity, contrast, resample, synthetic), the ROC-AUC of the raw statistic
between that class and the authentic items of the same kind, the detection rate at the default
threshold (score >= 0.5), and the share of fakes whose strongest region overlaps the forged box;
then the false-alarm rate on authentic test items at 0.5 and at 0.2. ``--limit N`` scores at most N
items per (kind, class), drawn with a fixed seed; ``--min-size N`` leaves out images smaller than
N px on a side (the 64 px NIH thumbnails).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from medforensics.core import MedForensicsError
from medforensics.io import load_instance, load_raster
from medforensics.detectors.base import load_detectors

REAL_CLASSES = {"TB", "TM", "authentic"}


def _overlap(bbox: list[int], box: list[int]) -> bool:
    n = len(box) // 2
    b = bbox[-4:-2] + bbox[-2:] if len(bbox) == 6 else bbox
    return all(b[i] < box[i + n] and box[i] < b[i + 2] for i in range(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--split", default="test")
    ap.add_argument("--out", type=Path, default=None, help="new JSON file for the results")
    ap.add_argument("--limit", type=int, default=0, help="at most N items per (kind, class); 0: all")
    ap.add_argument("--detector", default="autoencoder", help="a registered detector's name")
    ap.add_argument("--min-size", type=int, default=0, help="leave out images smaller than this on a side")
    a = ap.parse_args(argv)
    if a.out is not None and a.out.exists():
        print(f"{a.out}: already exists; choose a new name", file=sys.stderr)
        return 2
    rows = [r for r in csv.DictReader(open(a.manifest, newline="")) if r["split"] == a.split
            and not r.get("augmentation")]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["kind"], r["class"])].append(r)
    rng = np.random.default_rng(0)
    if a.limit:
        for g, rs in groups.items():
            if len(rs) > a.limit:
                groups[g] = [rs[i] for i in sorted(rng.choice(len(rs), a.limit, replace=False))]
    det = load_detectors([a.detector])[0]
    res: dict[tuple[str, str], list[tuple[float, float, bool | None, str]]] = defaultdict(list)
    t0, n = time.time(), 0
    for (kind, cls), rs in sorted(groups.items()):
        for r in rs:
            f = a.manifest.parent / r["file"]
            try:
                img = load_instance(f) if f.suffix.lower() == ".dcm" else load_raster(f)
            except MedForensicsError as e:
                print(f"skipped {e}", file=sys.stderr)
                continue
            if not det.applies(img) or min(img.pixels.shape[-2:]) < a.min_size:
                continue
            ev = det.detect(img)
            hit = None
            if cls not in REAL_CLASSES and r.get("bbox_voxel") and cls != "synthetic":
                box = json.loads(r["bbox_voxel"])
                hit = bool(ev.regions) and _overlap(list(ev.regions[0].bbox_voxel), box)
            res[(kind, cls)].append((ev.details.get("raw", 0.0), ev.score, hit, r["method"]))
            n += 1
        print(f"  {kind}/{cls}: {len(res[(kind, cls)])} items ({time.time() - t0:.0f} s)", file=sys.stderr)
    secs = time.time() - t0
    out: dict = {"manifest": str(a.manifest), "split": a.split, "detector": a.detector, "min_size": a.min_size,
                 "items": n, "seconds": round(secs, 1),
                 "kinds": {}}
    print(f"{'kind':<11} {'class':<10} {'n':>5} {'AUC':>6} {'det@0.5':>8} {'top-region hit':>15}")
    for kind in sorted({k for k, _ in res}):
        real = [x for c in REAL_CLASSES for x in res.get((kind, c), [])]
        if not real:
            continue
        rr = np.array([x[0] for x in real])
        rs = np.array([x[1] for x in real])
        kd = {"authentic": {"n": len(real), "false_alarm_at_0.5": float(np.mean(rs >= 0.5)),
                            "false_alarm_at_0.2": float(np.mean(rs >= 0.2)), "median_score": float(np.median(rs))},
              "fakes": {}}
        fakes_all = []
        for (k, cls), xs in sorted(res.items()):
            if k != kind or cls in REAL_CLASSES or not xs:
                continue
            fakes_all += xs
            fr = np.array([x[0] for x in xs])
            auc = roc_auc_score(np.r_[np.zeros(len(rr)), np.ones(len(fr))], np.r_[rr, fr])
            hits = [x[2] for x in xs if x[2] is not None]
            by_method = {}
            for m in sorted({x[3] for x in xs}):
                mr = np.array([x[0] for x in xs if x[3] == m])
                by_method[m] = {"n": int(mr.size), "auc": round(float(roc_auc_score(
                    np.r_[np.zeros(len(rr)), np.ones(len(mr))], np.r_[rr, mr])), 4)}
            kd["fakes"][cls] = {"n": len(xs), "auc": round(float(auc), 4),
                                "detected_at_0.5": round(float(np.mean([x[1] >= 0.5 for x in xs])), 4),
                                "top_region_hit": round(float(np.mean(hits)), 4) if hits else None,
                                "by_method": by_method}
            hit_s = f"{np.mean(hits):.2f}" if hits else "-"
            print(f"{kind:<11} {cls:<10} {len(xs):>5} {auc:6.3f} {np.mean([x[1] >= 0.5 for x in xs]):8.2f} {hit_s:>15}")
        if fakes_all:
            fr = np.array([x[0] for x in fakes_all])
            kd["auc_all_fakes"] = round(float(roc_auc_score(np.r_[np.zeros(len(rr)), np.ones(len(fr))],
                                                            np.r_[rr, fr])), 4)
            print(f"{kind:<11} {'ALL':<10} {len(fr):>5} {kd['auc_all_fakes']:6.3f}")
        print(f"{kind:<11} authentic  {len(real):>5}  false alarms: {kd['authentic']['false_alarm_at_0.5']:.3f} "
              f"at 0.5, {kd['authentic']['false_alarm_at_0.2']:.3f} at 0.2")
        out["kinds"][kind] = kd
    print(f"{n} items in {secs:.0f} s")
    if a.out is not None:
        a.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
