"""The review's Table 6 on our forge CT dataset: train the six zoo networks and the default, evaluate.

    python benchmarks/table6.py [MANIFEST] [--config fast-cpu|review|FILE.toml] [--models resnet50,fastnet]
                                [--max-minutes 10] [--epochs N] [--device auto|cpu|cuda] [--out DIR]
                                [--max-per-class N] [--image-size PX]

On a GPU (the review's full protocol, all seven networks; under 8 minutes on one H100 is the aim):

    python benchmarks/table6.py forge-ds/manifest.csv --config review --out t6-review/
    python benchmarks/table6.py forge-patches/manifest.csv --config review --out t6-patches/   # CT patches

``--config review`` holds every training and validation tensor on the device once (``preload``)
and trains under bf16 autocast on CUDA (``amp``; full precision on a CPU); the test split is
evaluated on the same device. ``--max-per-class N`` trains and tests on at most N items per split
and class (a subset manifest written into DIR) and ``--image-size PX`` overrides the resize and
crop: with ``--epochs 1`` the pair makes the CPU check of the same command
(tests/test_table6_gpu_path.py). A patch manifest (``forge dataset --patches 64``) works as a
slice manifest does: its items are CT crops of the same four classes.

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
import csv
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

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


def subset_manifest(manifest: Path, per_class: int, out: Path) -> Path:
    """At most ``per_class`` CT rows of each (split, class), evenly spaced, as a new manifest ``out``
    whose ``file`` and ``mask`` are resolved against ``manifest``'s folder."""
    with open(manifest, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("kind") == "ct-slice" and r["class"] in ("TB", "TM", "FB", "FM") and not r.get("augmentation"):
            groups[(r["split"], r["class"])].append(r)
    keep = []
    for _, g in sorted(groups.items()):
        idx = np.unique(np.linspace(0, len(g) - 1, num=min(per_class, len(g))).round().astype(int))
        keep += [g[i] for i in idx]
    root = manifest.resolve().parent
    with open(out, "x", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in keep:
            w.writerow({**r, "file": str(root / r["file"]), "mask": str(root / r["mask"]) if r.get("mask") else ""})
    return out


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
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                    help="train and evaluate here (default: the config's, auto = cuda if available)")
    ap.add_argument("--max-per-class", type=int, default=0, help="at most N items per split and class (a quick check)")
    ap.add_argument("--image-size", type=int, default=None, help="override the config's resize and crop (pixels)")
    args = ap.parse_args()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise SystemExit(f"unknown model(s) {', '.join(bad)}; choose from {', '.join(MODELS)}")
    out = args.out or Path(f"table6-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists():
        raise SystemExit(f"{out}: already exists; choose a new folder")
    t_start = time.perf_counter()
    manifest = ensure_manifest(args.manifest, args.data)
    base = TrainConfig.from_toml(config_path(args.config))
    changes = {"task": "ct4", "kinds": ["ct-slice"]}
    if args.device is not None:
        changes["device"] = args.device
    if args.image_size is not None:
        changes["image_size"] = changes["crop"] = args.image_size
    if args.max_minutes is not None:
        changes["max_minutes"] = args.max_minutes
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.seed is not None:
        changes["seed"] = args.seed
    (out / "models").mkdir(parents=True)
    if args.max_per_class:
        manifest = subset_manifest(manifest, args.max_per_class, out / "subset-manifest.csv")
    from medforensics.progress import progress_bar
    from medforensics.learn.train import _device

    checkpoints, times = [], {}
    device = None
    with progress_bar("table 6") as bar:
        task = bar.add_task("", total=None)
        for name in models:
            cfg = with_fields(base, model=name, **changes)
            device = _device(cfg.device)
            print(f"training {name} ({args.config}, {cfg.epochs} epoch(s), {cfg.image_size} px, on {device}, "
                  f"max {getattr(cfg, 'max_minutes', None)} min) ...", flush=True)
            t0 = time.perf_counter()

            def tick(step: int, total: int, text: str, name: str = name) -> None:
                bar.update(task, completed=step, total=total, description=f"{name}: {text}")

            checkpoints.append(Path(train(cfg, manifest, out / "models" / f"{name}.safetensors", progress=tick)))
            times[name] = time.perf_counter() - t0
            print(f"  {name}: {times[name]:.0f} s", flush=True)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"evaluating {name}")

        summary = evaluate_checkpoints(checkpoints, manifest, split="test", out_dir=out / "eval", progress=progress,
                                       device=str(device or "cpu"))
    md = table6_markdown(summary)
    kind = "CT slices"
    card = manifest.parent / "dataset.json"
    if card.is_file() and json.loads(card.read_text()).get("kind") == "ct-patches":
        kind = "CT patches"
    training = next(iter(summary["models"].values())).get("training") or {}
    total_s = time.perf_counter() - t_start
    lines = [f"Table 6 on {manifest.parent.name}/{manifest.name} ({kind}, patient-disjoint splits, test split, task "
             f"ct4, config {args.config}, device {training.get('device', '?')}, mixed precision "
             f"{training.get('amp', 'none')}, data held on the device: {training.get('preload', False)}); "
             f"{total_s:.0f} s in all; training time per model: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()), "", md, ""]
    (out / "table6.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"HTML page: {out / 'eval' / 'report.html'}")


if __name__ == "__main__":
    main()
