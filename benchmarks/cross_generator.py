"""Cross-generator evaluation: train a real/fake model on some forge methods, test on the others.

    python benchmarks/cross_generator.py [MANIFEST] [--train copymove,splice,inpaint]
        [--test intensity,contrast,resample,synthetic] [--config fast-cpu] [--model fastnet]
        [--max-minutes 5] [--out DIR]

The review doubts that detectors generalise to new generators; this measures it. A binary model
(radiographs by default) is trained on real items and the fakes of ``--train`` only (validation
too), then tested on the test split: real + fakes of the held-in methods, and real + fakes of the
held-out ``--test`` methods. Prints both, the drop (held-in minus held-out) in ROC-AUC and
accuracy, and the AUC per method; writes ``DIR/cross_generator.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from medforensics.learn.evaluate import cross_generator
from medforensics.learn.train import TrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table6 import DEFAULT_MANIFEST, config_path, with_fields  # noqa: E402


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", nargs="?", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--train", default="copymove,splice,inpaint", help="forge methods (classes) trained on")
    ap.add_argument("--test", default="intensity,contrast,resample,synthetic", help="forge methods held out")
    ap.add_argument("--config", default="fast-cpu")
    ap.add_argument("--model", default=None, help="network (default: the config's)")
    ap.add_argument("--kinds", default="radiograph", help="item kinds: radiograph, ct-slice or both")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="new folder (default: ./cross-generator-<time>)")
    args = ap.parse_args()
    if not args.manifest.is_file():
        raise SystemExit(f"{args.manifest}: manifest not found (build one with 'medforensics forge dataset')")
    out = args.out or Path(f"cross-generator-{time.strftime('%Y%m%d-%H%M%S')}")
    changes = {"kinds": [k.strip() for k in args.kinds.split(",") if k.strip()]}
    for key in ("model", "max_minutes", "epochs", "seed"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    cfg = with_fields(TrainConfig.from_toml(config_path(args.config)), **changes)
    train_m = [m.strip() for m in args.train.split(",") if m.strip()]
    test_m = [m.strip() for m in args.test.split(",") if m.strip()]
    t0 = time.perf_counter()
    res = cross_generator(args.manifest, train_m, test_m, cfg, out)
    hi, ho = res["held_in"], res["held_out"]
    print(f"model {cfg.model}, config {args.config}, kinds {','.join(changes['kinds'])}, "
          f"{time.perf_counter() - t0:.0f} s; test split: {res['n_real']} real items")
    print("| set | methods | fakes | ROC-AUC | accuracy % |\n|---|---|---|---|---|")
    for key, ms, m in (("held-in", train_m, hi), ("held-out", test_m, ho)):
        acc = "n/a" if m.get("accuracy") is None else f"{100 * m['accuracy']:.1f}"
        print(f"| {key} | {', '.join(ms)} | {m.get('n_fake')} | {_fmt(m.get('roc_auc'))} | {acc} |")
    d = res["drop"]
    acc_drop = "n/a" if d["accuracy"] is None else f"{100 * d['accuracy']:.1f} points"
    print(f"drop (held-in minus held-out): ROC-AUC {_fmt(d['roc_auc'])}, accuracy {acc_drop}")
    print("per method: " + ", ".join(f"{k} ({v['held']}) AUC {_fmt(v['roc_auc'])}" for k, v in res["per_method"].items()))
    print(f"details: {out / 'cross_generator.json'}")
    json.dumps(res, default=str)


if __name__ == "__main__":
    main()
