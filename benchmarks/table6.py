"""The review's Table 6 on our forge CT dataset: train the six zoo networks and the default, evaluate.

    python benchmarks/table6.py [MANIFEST] [--config fast-cpu|review|FILE.toml] [--models resnet50,fastnet]
                                [--max-minutes 10] [--epochs N] [--out DIR]

Trains each model on the CT slices of the forge dataset (task ``ct4``: TB, TM, FB, FM, as CT-GAN
and the review), then runs :func:`medforensics.learn.evaluate.evaluate_checkpoints` on the test
split and prints a markdown Table 6 (also written to ``DIR/table6.md``; the HTML page, plots and
metrics are in ``DIR/eval``). ``--config fast-cpu`` (default) is the fast CPU profile; ``--config
review`` is the review's full protocol (50 epochs, batch 64, 224x224; for a GPU). MANIFEST defaults
to forge-ds/manifest.csv (in the current folder); when it is missing the dataset is built there first with ``forge
dataset`` (from ``--data``, default ../shared/data).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from medforensics.learn.evaluate import evaluate_checkpoints, table6_markdown
from medforensics.learn.models import MODELS
from medforensics.learn.train import TrainConfig, train
from medforensics.datapath import data_root

DEFAULT_MANIFEST = Path("forge-ds/manifest.csv")
DEFAULT_DATA = data_root()
CONFIGS = Path(__file__).resolve().parents[1] / "src" / "medforensics" / "learn" / "configs"


def config_path(name: str) -> Path:
    """A shipped config by name (``fast-cpu``, ``review``) or a TOML file."""
    p = Path(name)
    if p.suffix == ".toml" and p.is_file():
        return p
    shipped = CONFIGS / f"{name}.toml"
    if not shipped.is_file():
        raise SystemExit(f"{name}: neither a TOML file nor a shipped config in {CONFIGS}")
    return shipped


def with_fields(cfg, **changes):
    """``cfg`` with the given fields changed (those the config has; others are ignored with a note)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    for k in [k for k in changes if k not in names]:
        print(f"note: config has no field {k!r}; left out", file=sys.stderr)
        changes.pop(k)
    return dataclasses.replace(cfg, **changes)


def ensure_manifest(manifest: Path, data: Path) -> Path:
    if manifest.is_file():
        return manifest
    from medforensics.forge.dataset import DatasetConfig, build_dataset
    if manifest.parent.exists():
        raise SystemExit(f"{manifest}: not found, and its folder exists (will not build a dataset into it)")
    print(f"{manifest} missing: building the forge dataset from {data} (takes minutes)", flush=True)
    return Path(build_dataset(data, manifest.parent, DatasetConfig(seed=0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", nargs="?", type=Path, default=DEFAULT_MANIFEST)
    ap.add_argument("--config", default="fast-cpu", help="fast-cpu (default), review, or a TOML file")
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {','.join(MODELS)}")
    ap.add_argument("--max-minutes", type=float, default=None, help="training time limit per model")
    ap.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="new folder (default: ./table6-<time>)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real data to build a missing dataset from")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise SystemExit(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    out = args.out or Path(f"table6-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists():
        raise SystemExit(f"{out}: already exists; choose a new folder")
    manifest = ensure_manifest(args.manifest, args.data)
    base = TrainConfig.from_toml(config_path(args.config))
    changes = {"task": "ct4", "kinds": ["ct-slice"]}
    if args.max_minutes is not None:
        changes["max_minutes"] = args.max_minutes
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.seed is not None:
        changes["seed"] = args.seed
    (out / "models").mkdir(parents=True)
    checkpoints, times = [], {}
    for name in models:
        cfg = with_fields(base, model=name, **changes)
        print(f"training {name} ({args.config}, {cfg.epochs} epoch(s), "
              f"max {getattr(cfg, 'max_minutes', None)} min) ...", flush=True)
        t0 = time.perf_counter()
        checkpoints.append(Path(train(cfg, manifest, out / "models" / f"{name}.safetensors")))
        times[name] = time.perf_counter() - t0
        print(f"  {name}: {times[name]:.0f} s", flush=True)

    def progress(name: str, done: int, total: int) -> None:
        if done == total:
            print(f"  evaluated {name}: {total} test slices", flush=True)

    summary = evaluate_checkpoints(checkpoints, manifest, split="test", out_dir=out / "eval", progress=progress)
    md = table6_markdown(summary)
    lines = [f"Table 6 on {manifest} (test split, task ct4, config {args.config}); "
             f"training time per model: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()), "", md, ""]
    (out / "table6.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"HTML page: {out / 'eval' / 'report.html'}")


if __name__ == "__main__":
    main()
