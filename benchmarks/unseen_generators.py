"""Leave one generator family out: does the scan catch fakes of a generator it never trained on?

    python benchmarks/unseen_generators.py [--out DIR] [--preset small|gpu] [--models DIR]
        [--manifest ZOO/manifest.csv] [--families gan,diffusion,upsample,vae] [--epochs N]
        [--max-minutes M] [--data DIR] [--before-only] [--reconstructions 30,8,25] [--samples 60]

1. **Zoo.** Each family of :mod:`medforensics.forge.zoo` is trained with ``--preset`` on the
   ``train`` patients' real chest radiographs (or loaded from ``--models DIR/<family>-<preset>.safetensors``).
2. **Dataset.** :func:`medforensics.forge.zoo.dataset.build_zoo_dataset` writes authentic images,
   whole generated images and reconstructions of authentic images by every family, all finished
   alike (export chains, formats), patient-disjoint (or ``--manifest`` reuses one).
3. **Realism** of each family (noise, noise power spectrum, sharpness against authentic;
   ``DIR/realism.png``).
4. **Detectors that never train on the zoo** (every default detector but ``learned_synthesis``)
   scan the test split once.
5. **Leave one family out.** For each family F, the ``learned_synthesis`` tile model is trained
   (config ``detector-zoo``) on the other families only and scores the test split's authentic
   items and F's fakes.
6. **Figures** per held-out family, on the test split (patients no generator and no model was
   trained on): ROC-AUC, and TPR at the threshold that gives 1% false alarms on the authentic test
   items (with fewer than 100 authentic items that threshold is the highest authentic score, so
   TPR is the share of fakes above every authentic image). Rows: ``before`` (the fused scan of
   the detectors that existed before issue 13), ``after`` (the fused default scan now),
   ``after + learned_synthesis`` (with the held-out model added), and each detector alone. Abstentions and detectors that do not apply
   score 0.

Prints markdown tables; writes ``DIR/unseen_generators.json`` (with every item's score per row). Data: ``--data`` (default
../shared/data), chest radiographs that may be trained on (MHH COVID-19, NIH, SIIM); no outside
source is used.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table6 import config_path, with_fields  # noqa: E402

#: The default detectors before issue 13 (the "before" row).
BEFORE = ("dicom_header", "container", "ct_physics", "copy_move", "noise_residual", "provenance", "learned_2d",
          "ct_patch3d", "autoencoder")
LEARNED = "learned_synthesis"
AFTER_LEARNED = f"after + {LEARNED}"


def auc_tpr(real: np.ndarray, fake: np.ndarray, fpr: float = 0.01) -> dict:
    """ROC-AUC and the TPR at the threshold giving at most ``fpr`` false alarms on ``real``.

    >>> r = auc_tpr(np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.9]))
    >>> round(r["auc"], 3), r["tpr_at_1pct_fpr"]
    (0.833, 0.5)
    """
    from sklearn.metrics import roc_auc_score

    real, fake = np.asarray(real, float), np.asarray(fake, float)
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    auc = float(roc_auc_score(y, np.r_[real, fake])) if len(real) and len(fake) else float("nan")
    k = int(np.floor(fpr * len(real)))            # authentic items allowed above the threshold
    thr = float(np.sort(real)[::-1][k]) if len(real) else float("nan")
    return {"auc": auc, "tpr_at_1pct_fpr": float(np.mean(fake > thr)) if len(fake) else float("nan"),
            "threshold": thr, "n_real": len(real), "n_fake": len(fake)}


def _models(args, out: Path) -> dict:
    from medforensics.forge.zoo.families import FAMILIES, load_zoo_model, train_family, untrained

    models = {}
    (out / "models").mkdir(parents=True, exist_ok=True)
    for name in args.families:
        if FAMILIES[name].fit.__name__ == "_no_fit":
            models[name] = untrained(name)
            continue
        given = args.models / f"{name}-{args.preset}.safetensors" if args.models else None
        if given is not None and given.is_file():
            models[name] = load_zoo_model(given)
        else:
            print(f"training {name} ({args.preset})", flush=True)
            models[name] = train_family(name, args.preset, out / "models" / f"{name}-{args.preset}.safetensors",
                                        data_root=args.data)
        print(f"  {name}: {models[name].card['training']}"[:300], flush=True)
    return models


def _scan_fixed(rows, names: list[str]) -> dict[str, dict]:
    """Evidence of every non-learned-zoo default detector for each test row (by id)."""
    from medforensics.detectors.base import load_detectors
    from medforensics.io import load
    from medforensics.progress import progress_bar
    from medforensics.scan import analyze

    dets = load_detectors(names)
    out = {}
    with progress_bar("scanning test split", show=True) as bar:
        task = bar.add_task("", total=len(rows))
        for r in rows:
            image = load(r["_path"])[0]
            v = analyze(image, dets)
            out[r["id"]] = {e.detector: e for e in v.evidence}
            bar.advance(task)
    return out


def _learned(rows, checkpoint: Path) -> dict[str, object]:
    from medforensics.detectors.learned_synthesis import LearnedSynthesisDetector
    from medforensics.io import load

    det = LearnedSynthesisDetector(checkpoint)
    out = {}
    for r in rows:
        image = load(r["_path"])[0]
        if not det.applies(image) or det.out_of_domain(image):
            continue
        ev = det.detect(image)
        if not ev.details.get("abstained"):
            out[r["id"]] = ev
    return out


def _fused(evs) -> float:
    from medforensics.fusion import fuse
    return fuse(list(evs))[0] if evs else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="new folder (default ./unseen-generators-<time>)")
    ap.add_argument("--preset", default="small", choices=("small", "gpu"))
    ap.add_argument("--models", type=Path, default=None, help="folder of <family>-<preset>.safetensors to reuse")
    ap.add_argument("--manifest", type=Path, default=None, help="an existing zoo manifest.csv to reuse")
    ap.add_argument("--families", default="gan,diffusion,upsample,vae")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of each held-out model (default: the config's)")
    ap.add_argument("--max-minutes", type=float, default=None, help="time budget of each held-out model")
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--before-only", action="store_true", help="skip the held-out training (before row only)")
    ap.add_argument("--reconstructions", default="30,8,25",
                    help="authentic images reconstructed per family in train,validation,test (0 = all)")
    ap.add_argument("--samples", type=int, default=60, help="whole generated images per family (all splits)")
    args = ap.parse_args()
    from medforensics.datapath import data_root
    from medforensics.detectors.base import available_detectors
    from medforensics.forge.zoo.families import FAMILIES
    from medforensics.learn.data import read_manifest
    from medforensics.learn.train import TrainConfig, train

    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in args.families if f not in FAMILIES]
    if bad:
        raise SystemExit(f"unknown family {bad[0]!r}; choose from {', '.join(FAMILIES)}")
    args.data = data_root(args.data)
    out = args.out or Path(f"unseen-generators-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: exists and is not empty; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result: dict = {"data": "chest radiographs of ../shared/data that may be trained on (MHH, NIH, SIIM)",
                    "preset": args.preset, "families": args.families}
    manifest = args.manifest
    if manifest is None:
        from medforensics.forge.zoo.dataset import ZooDatasetConfig, build_zoo_dataset
        models = _models(args, out)
        result["zoo"] = {n: {"steps": m.card.get("training", {}), "preset": m.preset.name} for n, m in models.items()}
        counts = [int(v) for v in args.reconstructions.split(",")]
        cfg = ZooDatasetConfig(samples_per_family=args.samples,
                               reconstructions=dict(zip(("train", "validation", "test"), counts)))
        result["dataset_config"] = dataclasses.asdict(cfg)
        manifest = build_zoo_dataset(out / "dataset", models, args.data, cfg)
    print(f"dataset: {manifest} ({time.time() - t0:.0f} s)", flush=True)

    from medforensics.forge.zoo.realism import family_realism
    result["realism"] = family_realism(manifest, "test", out / "realism.png")
    print("\n| family | items | noise | NPS mean freq | sharpness | W1 noise | W1 NPS | W1 sharpness |\n|---|---|---|---|---|---|---|---|")
    for k, e in result["realism"].items():
        print(f"| {k} | {e['n']} | {e['noise']:.4f} | {e['nps_freq']:.3f} | {e['sharpness']:.3f} | "
              f"{e.get('noise_w1', 0):.4f} | {e.get('nps_freq_w1', 0):.3f} | {e.get('sharpness_w1', 0):.3f} |", flush=True)

    rows = [r for r in read_manifest(manifest) if r["split"] == "test"]
    real_ids = [r["id"] for r in rows if r["label"] == "real"]
    fixed_names = [n for n, c in available_detectors().items() if getattr(c, "default", True) and n != LEARNED]
    fixed = _scan_fixed(rows, fixed_names)
    new = [n for n in fixed_names if n not in BEFORE]
    result["detectors"] = {"before": [n for n in BEFORE if n in fixed_names], "new_fixed": new, "learned": LEARNED}

    table: dict = {}
    for fam in args.families:
        fake_ids = [r["id"] for r in rows if r["label"] == "fake" and r["method"] == fam]
        lofo = None
        if not args.before_only:
            others = [f for f in args.families if f != fam]
            changes = {"methods": others}
            for key in ("epochs", "max_minutes"):
                if getattr(args, key) is not None:
                    changes[key] = getattr(args, key)
            cfg = with_fields(TrainConfig.from_toml(config_path("detector-zoo")), **changes)
            ckpt = out / f"learned-without-{fam}.safetensors"
            print(f"training {LEARNED} without {fam} ({', '.join(others)})", flush=True)
            train(cfg, manifest, ckpt)
            lofo = _learned([r for r in rows if r["id"] in set(real_ids) | set(fake_ids)], ckpt)

        def score(ids, which):
            vals = []
            for i in ids:
                evs = fixed[i]
                if which == "before":
                    vals.append(_fused([e for n, e in evs.items() if n in BEFORE]))
                elif which == "after":
                    vals.append(_fused(list(evs.values())))
                elif which == AFTER_LEARNED:
                    vals.append(_fused(list(evs.values()) + ([lofo[i]] if lofo and i in lofo else [])))
                elif which == LEARNED:
                    vals.append(lofo[i].score if lofo and i in lofo else 0.0)
                else:
                    vals.append(evs[which].score if which in evs else 0.0)
            return np.array(vals)

        rows_out = {}
        for which in ["before", "after", AFTER_LEARNED, *fixed_names, LEARNED]:
            if which in (AFTER_LEARNED, LEARNED) and lofo is None:
                continue
            rows_out[which] = auc_tpr(score(real_ids, which), score(fake_ids, which))
        table[fam] = rows_out
        result.setdefault("scores", {})[fam] = {which: {"authentic": score(real_ids, which).round(4).tolist(),
                                                        "fake": score(fake_ids, which).round(4).tolist()}
                                                for which in rows_out}
        print(f"\nheld out: {fam} ({len(fake_ids)} fakes, {len(real_ids)} authentic)\n"
              "| scored by | ROC-AUC | TPR at 1% FPR |\n|---|---|---|", flush=True)
        for which, m in rows_out.items():
            print(f"| {which} | {m['auc']:.3f} | {100 * m['tpr_at_1pct_fpr']:.0f}% |", flush=True)
    result["held_out"] = table
    result["seconds"] = round(time.time() - t0, 1)
    with open(out / "unseen_generators.json", "x") as fh:
        json.dump(result, fh, indent=2, default=float)
    print(f"\n## summary (ROC-AUC / TPR at 1% FPR, test split)\n| held-out family | before | after | {AFTER_LEARNED} |"
          "\n|---|---|---|---|")
    for fam, r in table.items():
        cells = [f"{r[k]['auc']:.2f} / {100 * r[k]['tpr_at_1pct_fpr']:.0f}%" if k in r else "n/a"
                 for k in ("before", "after", AFTER_LEARNED)]
        print(f"| {fam} | " + " | ".join(cells) + " |")
    print(f"\nwrote {out / 'unseen_generators.json'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":  # progress bars in a log file: MEDFORENSICS_PROGRESS=1
    main()
