"""CT patches as the CT-GAN dataset ships them: build them, score a split with ``ct_patch``, print AUCs.

    python benchmarks/ct_patches.py [PATCHES/manifest.csv] [--split test] [--out results.json]
    python benchmarks/ct_patches.py --build forge-patches --size 64      # build first (forge dataset --patches 64)

Scores every patch of the split twice with the ``ct_patch`` detector -- its HU DICOM and its
lung-window PNG (the manifest's ``params.png``) -- and prints, for each, the ROC-AUC of the
detector's raw statistic for FM against TM (the issue's target: >= 0.95), FB against TM, FM
against all real patches (TB + TM), all fakes against all real patches, the share of each class
at score >= 0.5, and how many items the detector did not assess (and why). Then how many of the
1,000 NIH radiograph thumbnails of 64 px the detector claims as lung-window crops (its domain
check on rasters; 0 wanted). ``--checkpoint`` scores another patch checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from sklearn.metrics import roc_auc_score

REAL = ("TB", "TM")


def auc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    return float(roc_auc_score([1] * len(pos) + [0] * len(neg), list(pos) + list(neg)))


def score_split(manifest: Path, split: str, progress: bool = True, checkpoint: Path | None = None) -> dict:
    from medforensics.progress import progress_bar
    from medforensics.detectors.ct_patch import CTPatchDetector

    det = CTPatchDetector(checkpoint)
    with open(manifest, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    if not rows:
        raise SystemExit(f"{manifest}: no items in split {split!r}")

    out: dict[str, dict] = {}
    with progress_bar("scoring") as bar:
        task = bar.add_task("", total=2 * len(rows))
        for form in ("dicom", "png"):
            out[form] = _score_form(det, rows, manifest, form, lambda: bar.advance(task) if progress else None)
    return out


def _score_form(det, rows: list[dict], manifest: Path, form: str, tick) -> dict:
    """Scores of the DICOM (``form`` dicom) or PNG crops of ``rows``; ``tick()`` after each."""
    from medforensics.io import load

    raws: dict[str, list[float]] = defaultdict(list)
    flagged: Counter = Counter()
    skipped: Counter = Counter()
    t0 = time.perf_counter()
    for r in rows:
        path = manifest.parent / (r["file"] if form == "dicom" else json.loads(r["params"])["png"])
        image = load(path)[0]
        why = None if det.applies(image) else "does not apply"
        why = why or det.out_of_domain(image)
        tick()
        if why:
            skipped[why] += 1
            continue
        ev = det.detect(image)
        raws[r["class"]].append(float(ev.details["raw"]))
        flagged[r["class"]] += ev.score >= 0.5
    real = raws["TB"] + raws["TM"]
    return {
        "n": {c: len(v) for c, v in sorted(raws.items())},
        "auc_FM_vs_TM": auc(raws["FM"], raws["TM"]), "auc_FB_vs_TM": auc(raws["FB"], raws["TM"]),
        "auc_FM_vs_real": auc(raws["FM"], real), "auc_fake_vs_real": auc(raws["FM"] + raws["FB"], real),
        "flagged_at_0.5": {c: f"{flagged[c]}/{len(v)}" for c, v in sorted(raws.items())},
        "not_assessed": dict(skipped), "seconds": round(time.perf_counter() - t0, 1),
        "raw": {c: [round(x, 3) for x in v] for c, v in sorted(raws.items())}}


def nih_thumbnails(data: Path, checkpoint: Path | None = None) -> dict | None:
    from medforensics.detectors.ct_patch import CTPatchDetector
    from medforensics.io import load

    files = sorted((data / "xray" / "nih-cxr14" / "NIH1000").rglob("*.png"))
    if not files:
        return None
    det = CTPatchDetector(checkpoint)
    claimed, flagged = 0, 0
    for f in files:
        image = load(f)[0]
        if det.applies(image) and det.out_of_domain(image) is None:
            claimed += 1
            flagged += det.detect(image).score >= 0.5
    return {"n": len(files), "claimed_as_ct_crops": claimed, "flagged_at_0.5": flagged}


def main(argv: list[str] | None = None) -> int:
    from medforensics.datapath import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", nargs="?", type=Path, default=None)
    ap.add_argument("--build", type=Path, default=None, help="new folder: build the patches there first")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test")
    ap.add_argument("--checkpoint", type=Path, default=None, help="another ct_patch checkpoint")
    ap.add_argument("--data", type=Path, default=None, help="real data (default: $MEDFORENSICS_DATA or ../shared/data)")
    ap.add_argument("--out", type=Path, default=None, help="new JSON file for the results")
    a = ap.parse_args(argv)
    if a.out is not None and a.out.exists():
        print(f"{a.out}: already exists; choose a new name", file=sys.stderr)
        return 2
    data = data_root(a.data)
    t0 = time.perf_counter()
    if a.build is not None:
        from medforensics.forge.dataset import DatasetConfig
        from medforensics.forge.patches import build_patches
        print(f"building {a.size} px patches from {data} into {a.build} ...", file=sys.stderr, flush=True)
        manifest = build_patches(data, a.build, DatasetConfig(seed=a.seed), size=a.size)
        print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    elif a.manifest is not None:
        manifest = a.manifest
    else:
        ap.error("give a patch manifest or --build FOLDER")
    if not manifest.is_file():
        print(f"{manifest}: manifest not found", file=sys.stderr)
        return 1
    res = {"manifest": f"{manifest.parent.name}/{manifest.name}", "split": a.split,
           "scores": score_split(manifest, a.split, checkpoint=a.checkpoint),
           "nih_64px": nih_thumbnails(data, a.checkpoint)}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    for form, r in res["scores"].items():
        f = {k: (None if v is None else round(v, 3)) for k, v in r.items() if k.startswith("auc")}
        print(f"{form:>5}: n {r['n']}  AUC FM vs TM {f['auc_FM_vs_TM']}, FB vs TM {f['auc_FB_vs_TM']}, "
              f"FM vs TB+TM {f['auc_FM_vs_real']}, fakes vs real {f['auc_fake_vs_real']}; "
              f"score >= 0.5: {r['flagged_at_0.5']}; not assessed: {r['not_assessed'] or 0}")
    if res["nih_64px"]:
        n = res["nih_64px"]
        print(f"NIH 64 px radiographs: {n['claimed_as_ct_crops']} of {n['n']} read as CT crops, "
              f"{n['flagged_at_0.5']} scored >= 0.5")
    print(f"{res['seconds']:.0f} s in all")
    if a.out is not None:
        with open(a.out, "x") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
