"""The review's Table 6 on a GPU: data held on the device, mixed precision, one command.

No GPU here: the same code path runs on the CPU. Held (preloaded) data must give the very
batches, and so the very weights, of the DataLoader; mixed precision is for CUDA only; and
``benchmarks/table6.py --config review`` runs end to end for one epoch on a tiny subset.
"""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medforensics.forge.dataset import write_manifest
from medforensics.learn.checkpoint import load_checkpoint
from medforensics.learn.data import ItemDataset, default_preprocess, read_manifest, select_rows
from medforensics.learn.models import MODELS
from medforensics.learn.train import TrainConfig, _amp, _HeldBatches, shipped_config, train

ROOT = Path(__file__).resolve().parents[1]


def _ct4_toy(root: Path, per_class: int = 2, size: int = 40) -> Path:
    """PNG "slices" of the four CT-GAN classes, two patients per split (fakes noisier)."""
    rng = np.random.default_rng(0)
    rows = []
    for split, patients in (("train", ("A", "B")), ("validation", ("C", "D")), ("test", ("E", "F"))):
        for p in patients:
            for cls in ("TB", "TM", "FB", "FM"):
                for k in range(per_class):
                    img = 120 + rng.normal(0, 14.0 if cls in ("FB", "FM") else 3.0, (size, size))
                    rel = f"{split}/{cls}/{p}{k}.png"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    PILImage.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / rel)
                    rows.append({"id": f"{p}{cls}{k}", "file": rel, "split": split, "class": cls, "kind": "ct-slice",
                                 "label": "fake" if cls in ("FB", "FM") else "real", "modality": "CT",
                                 "method": "classic" if cls in ("FB", "FM") else "none", "patient_id": p,
                                 "source_dataset": "toy", "params": "{}"})
    return write_manifest(root, rows)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_held_data_give_the_dataloaders_batches(tmp_path):
    manifest = _ct4_toy(tmp_path)
    rows = [r for r in select_rows(read_manifest(manifest), "ct4") if r["split"] == "train"]
    ds = ItemDataset(rows, default_preprocess(32, 32), [2, 3], augment_fakes=True, cache_dtype=np.float32)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5))
    held = _HeldBatches(ds, 8, torch.device("cpu"), torch.Generator().manual_seed(5))
    assert len(held) == len(loader) and held.x.shape == (len(ds), 1, 32, 32)
    for _ in range(3):  # three epochs: the same shuffled batches, the same tensors
        got = list(held)
        want = list(loader)
        assert len(got) == len(want)
        for (xa, ya), (xb, yb) in zip(want, got):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_training_on_held_data(tmp_path):
    manifest = _ct4_toy(tmp_path)
    cfg = TrainConfig(model="fastnet", task="ct4", image_size=32, crop=32, batch=8, epochs=2, augment_fakes=True,
                      seed=3, num_threads=1, device="cpu", preload=True)
    a = train(cfg, manifest, tmp_path / "a.safetensors")
    b = train(cfg, manifest, tmp_path / "b.safetensors")
    sa, ca = load_checkpoint(a)
    sb, _ = load_checkpoint(b)
    assert ca["training"]["preload"] is True and ca["training"]["amp"] == "none"  # full precision on a CPU
    assert ca["training"]["train_items_seen_per_epoch"] == 4 * 2 + 4 * 2 * 9  # fakes in their eight variants
    assert ca["training"]["steps"] == 2 * 10 and len(ca["metrics"]["validation"]) == 2
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # a rerun gives the same weights


def test_mixed_precision_is_for_cuda_only():
    cpu = torch.device("cpu")
    assert _amp("auto", cpu) is None and _amp("none", cpu) is None
    with pytest.raises(ValueError, match="CUDA"):
        _amp("bf16", cpu)
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(amp="fp8")
    review = TrainConfig.from_toml(shipped_config("review"))
    assert review.preload and review.amp == "auto"
    assert (review.epochs, review.batch, review.lr, review.weight_decay, review.dropout, review.loss) == \
        (50, 64, 0.001, 0.0001, 0.5, "weighted-ce")
    if torch.cuda.is_available():
        assert _amp("auto", torch.device("cuda")) in (torch.bfloat16, torch.float16)


def test_table6_review_command_runs_on_cpu_for_one_epoch(tmp_path):
    manifest = _ct4_toy(tmp_path / "ds")
    out = tmp_path / "t6"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "table6.py"), str(manifest), "--config", "review",
           "--epochs", "1", "--max-per-class", "1", "--image-size", "80", "--device", "cpu", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={"PATH": "", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stderr[-2000:]
    table = (out / "table6.md").read_text()
    assert "config review" in table and "data held on the device: True" in table and "device cpu" in table
    for name in MODELS:
        assert f"| {name} |" in table or name in table
        _, card = load_checkpoint(out / "models" / f"{name}.safetensors")
        assert card["training"]["preload"] is True and card["training"]["epochs_done"] == 1.0
        assert card["training"]["config"]["epochs"] == 1 and card["training"]["config"]["batch"] == 64
    assert (out / "eval" / "report.html").is_file() and (out / "subset-manifest.csv").is_file()
    with open(out / "subset-manifest.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 3 * 4  # one item per split and class
