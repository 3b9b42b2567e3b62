"""Localisation benchmark of the learned CT series detectors on held-out LIDC patients.

``--detector ct_patch3d`` (default): the 3D patch model; ``--detector learned_2d``: the CT slice
tile model scanned over the series' lungs (the default scan's learned CT detector).

For each held-out series (the test patient LIDC-IDRI-0003 and -- because both held-out series are
short sub-series -- the validation patient LIDC-IDRI-0002, reported apart): scan the untouched
series (false regions = regions above the threshold), inject ``--injections`` tumours (seeded,
seeds never used in training, classic and GAN, the three nodule types, 4-20 mm) and remove every
real LIDC nodule with both renderers, scan each forged series and record whether the forgery's
centre lies within one nodule diameter (in mm) of the top region and of one of the top 3.
Also: ROC-AUC of the series scores (forged vs untouched series) and of cube scores (the cube
centred on each forgery vs random lung cubes and real-nodule cubes of the untouched series), and
seconds per scan, including a full 133-slice series (LIDC-IDRI-0001, the training patient: timing
and false regions only). Cube scores are those of ``ct_patch3d`` (left out for ``learned_2d``).

    python benchmarks/ct3d_localisation.py --out ct3d-bench.json [--injections 10] [--threads 2]
    python benchmarks/ct3d_localisation.py --detector learned_2d --out tiles-bench.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _dist_mm(a, b, spacing) -> float:
    return float(np.sqrt(np.sum(((np.asarray(a, float) - np.asarray(b, float)) * np.asarray(spacing, float)) ** 2)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="../shared/data")
    ap.add_argument("--out", type=Path, required=True, help="new JSON file")
    ap.add_argument("--injections", type=int, default=10, help="tumours injected per held-out series")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--detector", choices=("ct_patch3d", "learned_2d"), default="ct_patch3d")
    args = ap.parse_args(argv)
    if args.out.exists():
        print(f"{args.out}: already exists; choose a new name", file=sys.stderr)
        return 2
    import torch
    from sklearn.metrics import roc_auc_score

    from medforensics.core import Image
    from medforensics.forge import ct
    from medforensics.datapath import data_root
    from medforensics.forge.lidc import nodules_for
    from medforensics.learn import ct3d

    torch.set_num_threads(args.threads)
    data = data_root(args.data)
    series = ct3d._series_by_patient(data)
    if not any(p in series for p in ("LIDC-IDRI-0003", "LIDC-IDRI-0002")):
        print(f"{data}: no held-out LIDC-IDRI series (0002, 0003) found; give --data ../shared/data", file=sys.stderr)
        return 2
    net, card = ct3d.load_model(args.checkpoint)
    cal = card["calibration"]
    trained_on = card["data"]["patients"]
    print(f"model trained on {trained_on['train']}, validated on {trained_on['validation']}")

    def cube_score(vol, center) -> float:
        x = ct3d.window_hu(ct3d.crop(vol, ct3d._centred_start(center, ct3d.CUBE), ct3d.CUBE))[None, None]
        with torch.no_grad():
            z = float(net(torch.from_numpy(x)).reshape(-1)[0])
        return float(1 / (1 + np.exp(-(cal["a"] * z + cal["b"]))))

    def forged_image(img, f):
        return Image(pixels=f.pixels.astype(np.float32), spacing=img.spacing, modality=img.modality, format=img.format,
                     sources=img.sources, uid=img.uid + ".forged", affine=img.affine)

    if args.detector == "learned_2d":
        from medforensics.detectors.learned2d import Learned2DDetector, checkpoint_path

        tile_detector = Learned2DDetector()
        checkpoint = str(checkpoint_path("ct"))
    else:
        checkpoint = str(args.checkpoint or ct3d.default_checkpoint())

    def run_scan(image):
        """``(score, [region centres], top centre (even below the threshold), seconds)``."""
        t0 = time.time()
        if args.detector == "learned_2d":
            e = tile_detector.detect(image)
            centres = [r.center_voxel for r in e.regions]
            if centres:
                top = centres[0]
            else:
                k, y, x = e.details["worst_tile"]
                top = (k, y + e.details["tile_px"] // 2, x + e.details["tile_px"] // 2)
            return e.score, centres, top, time.time() - t0
        fs = ct3d.scan(image, model_path=args.checkpoint)
        centres = [r.center_voxel for r in fs.regions]
        if centres:
            top = centres[0]
        else:  # the strongest cell
            cell = np.unravel_index(int(np.argmax(fs.cells)), fs.cells.shape)
            top = tuple(int(c * f_ + f_ // 2) for c, f_ in zip(cell, ct3d.FINE))
        return fs.score, centres, top, fs.seconds

    report: dict = {"detector": args.detector, "checkpoint": checkpoint, "trained_on": trained_on,
                    "threshold": 0.5, "series": {}}
    rng = np.random.default_rng(args.seed)
    for patient in [p for p in ("LIDC-IDRI-0003", "LIDC-IDRI-0002") if p in series]:
        img = series[patient]
        sp = [float(s) for s in img.spacing]
        role = "test" if patient in trained_on.get("test", []) or patient == "LIDC-IDRI-0003" else "validation"
        rec: dict = {"role": role, "shape": list(img.pixels.shape), "spacing": sp, "forgeries": []}
        a_score, a_regions, _, a_sec = run_scan(img)
        rec["authentic"] = {"score": a_score, "false_regions": len(a_regions), "seconds": round(a_sec, 2)}
        print(f"{patient} ({role}) untouched: score {a_score:.3f}, {len(a_regions)} false region(s), {a_sec:.1f} s")
        # drawn for either detector: the same rng draws keep the forgeries below identical across detectors
        neg_cubes = [cube_score(img.pixels, c) for c in ct3d._lung_points(img, rng, 40)]
        nods = nodules_for(img)
        neg_cubes += [cube_score(img.pixels, n.center_voxel) for n in nods]
        pos_cubes = []
        jobs = []
        for i in range(args.injections):
            jobs.append(("inject", dict(diameter_mm=float(rng.uniform(4, 20)), nodule_type=ct.NODULE_TYPES[i % 3],
                                        method=ct.METHODS[(i // 3) % 2], seed=args.seed * 1000 + i)))
        for n in nods:
            for m in ct.METHODS:
                jobs.append(("remove", dict(nodule=n, method=m, seed=args.seed * 1000 + 500 + n.id)))
        for kind, kw in jobs:
            try:
                f = ct.inject(img, **kw) if kind == "inject" else ct.remove(img, **kw)
            except Exception as e:  # noqa: BLE001 - a series with no room: recorded, not fatal
                rec["forgeries"].append({"kind": kind, "error": str(e)})
                continue
            diameter = float(f.params["diameter_mm"])
            f_score, centres, top, f_sec = run_scan(forged_image(img, f))
            d = [_dist_mm(c, f.center_voxel, sp) for c in centres]
            if args.detector == "ct_patch3d":
                pos_cubes.append(cube_score(f.pixels, f.center_voxel))
            # the top region (even below the threshold: the strongest cell or tile) for the top-1 criterion
            d_top = _dist_mm(top, f.center_voxel, sp)
            item = {"kind": kind, "method": f.method, "nodule_type": f.params.get("nodule_type"), "diameter_mm": round(diameter, 1),
                    "center_voxel": list(f.center_voxel), "score": round(f_score, 4), "n_regions": len(centres),
                    "top_distance_mm": round(d_top, 1), "hit_top1": bool(centres) and d_top <= diameter,
                    "top_within_diameter": d_top <= diameter, "hit_top3": any(x <= diameter for x in d[:3]),
                    "cube_score": round(pos_cubes[-1], 4) if pos_cubes else None, "seconds": round(f_sec, 2)}
            rec["forgeries"].append(item)
            print(f"  {kind:6s} {f.method:7s} {str(item['nodule_type'] or ''):12s} {diameter:5.1f} mm: score {f_score:.3f}, "
                  f"top region {d_top:5.1f} mm away, top1 {item['hit_top1']}, top3 {item['hit_top3']}, {f_sec:.1f} s")
        rec["cube_auc"] = round(float(roc_auc_score([1] * len(pos_cubes) + [0] * len(neg_cubes), pos_cubes + neg_cubes)), 4) \
            if pos_cubes and neg_cubes else None
        rec["n_negative_cubes"] = len(neg_cubes)
        report["series"][patient] = rec
    # summary over the held-out series
    ok = [(p, it) for p, r in report["series"].items() for it in r["forgeries"] if "error" not in it]
    summ: dict = {}
    for kind in ("inject", "remove"):
        items = [it for _, it in ok if it["kind"] == kind]
        if items:
            summ[kind] = {"n": len(items), "top1": round(float(np.mean([it["hit_top1"] for it in items])), 3),
                          "top_within_diameter": round(float(np.mean([it["top_within_diameter"] for it in items])), 3),
                          "flagged": round(float(np.mean([it["score"] >= 0.5 for it in items])), 3),
                          "top3": round(float(np.mean([it["hit_top3"] for it in items])), 3),
                          "median_top_distance_mm": round(float(np.median([it["top_distance_mm"] for it in items])), 1)}
    auth = [r["authentic"] for r in report["series"].values()]
    summ["false_regions_per_authentic_series"] = round(float(np.mean([a["false_regions"] for a in auth])), 2) if auth else None
    ys = [0] * len(auth) + [1] * len(ok)
    sc = [a["score"] for a in auth] + [it["score"] for _, it in ok]
    summ["series_auc"] = round(float(roc_auc_score(ys, sc)), 4) if 0 < sum(ys) < len(ys) else None
    summ["cube_auc"] = {p: r["cube_auc"] for p, r in report["series"].items()}
    summ["seconds_per_short_series"] = round(float(np.mean([it["seconds"] for _, it in ok] + [a["seconds"] for a in auth])), 2)
    full = series.get("LIDC-IDRI-0001")
    if full is not None:
        run_scan(full)  # warm-up
        s_score, s_regions, _, s_sec = run_scan(full)
        summ["full_series"] = {"patient": "LIDC-IDRI-0001 (training patient: timing and false regions only)",
                               "shape": list(full.pixels.shape), "seconds": round(s_sec, 2),
                               "false_regions": len(s_regions), "score": round(s_score, 4)}
    summ["threads"] = args.threads
    report["summary"] = summ
    with open(args.out, "x") as fh:
        json.dump(report, fh, indent=1, default=str)
    print(json.dumps(summ, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
