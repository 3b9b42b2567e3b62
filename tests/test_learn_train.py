"""2D classifiers: model zoo, data pipeline, training, checkpoints, prediction and ``medforensics train``.

Training runs use a tiny synthetic dataset written to tmp_path (48x48 PNGs whose fakes carry
stronger sensor-like noise: easy for a noise-residual network, impossible to solve by content).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from medforensics.core import MedForensicsError
from medforensics.forge.dataset import write_manifest
from medforensics.learn.checkpoint import load_checkpoint
from medforensics.learn.data import (AUGMENTATIONS, ItemDataset, augment, default_preprocess, load_item,
                                     read_manifest, refuse_leaks, select_rows, to_tensor)
from medforensics.learn.models import MODELS, ZOO, build_model
from medforensics.learn.predict import load_classifier
from medforensics.learn.train import TrainConfig, shipped_config, train

CARD_KEYS = {"architecture", "config", "classes", "fake_classes", "task", "preprocess", "training", "data", "metrics"}
COLUMNS = ["id", "file", "mask", "split", "label", "class", "modality", "kind", "method", "patient_id",
           "source_dataset", "source_file", "slice", "center_voxel", "bbox_voxel", "center_mm", "seed",
           "augmentation", "parent_id", "params"]


def _toy_dataset(root: Path, *, n_patients: int = 12, per_patient: int = 6, size: int = 48, ct4: bool = False,
                 seed: int = 0) -> Path:
    """Synthetic manifest + PNGs: smooth anatomy-like fields; fakes have 6x stronger pixel noise."""
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for p in range(n_patients):
        split = "train" if p < n_patients * 2 // 3 else "validation" if p < n_patients * 5 // 6 else "test"
        for k in range(per_patient):
            fake = k % 2 == 1
            cls = (["FB", "FM"] if fake else ["TB", "TM"])[(k // 2) % 2] if ct4 else ("copymove" if fake else "authentic")
            cx, cy = rng.uniform(0.2, 0.8, 2)
            base = 100 + 80 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05) + 30 * xx
            img = base + rng.normal(0, 12.0 if fake else 2.0, base.shape)
            rel = f"{split}/{cls}/{p:02d}{k}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / rel)
            rows.append({"id": f"{p:02d}{k}", "file": rel, "mask": "", "split": split, "label": "fake" if fake else "real",
                         "class": cls, "modality": "CT" if ct4 else "XR", "kind": "ct-slice" if ct4 else "radiograph",
                         "method": ("classic" if ct4 else "copymove") if fake else "none", "patient_id": f"P{p}",
                         "source_dataset": "toy", "source_file": "", "slice": "", "center_voxel": "",
                         "bbox_voxel": "", "center_mm": "", "seed": "", "augmentation": "", "parent_id": "", "params": "{}"})
    return _write_manifest(root, rows)


def _write_manifest(root: Path, rows: list[dict]) -> Path:
    """``root/manifest.csv`` with the forge columns (missing values empty)."""
    return write_manifest(root, rows)


def _toy_config(**kw) -> TrainConfig:
    base = dict(model="fastnet", task="binary", image_size=48, crop=48, batch=16, epochs=4, lr=0.01,
                augment_fakes=False, seed=0, num_threads=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: small models on a shared CPU run several times faster than with two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return _toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def trained(toy, tmp_path_factory) -> Path:
    return train(_toy_config(), toy, tmp_path_factory.mktemp("ckpt") / "fastnet.safetensors")


# ----------------------------------------------------------------------------- models

def _head(net: torch.nn.Module, name: str) -> torch.nn.Module:
    """The replaced classification head of a zoo network (Dropout then Linear)."""
    net = net.net
    return {"resnet50": lambda: net.fc, "efficientnet_b0": lambda: net.classifier, "densenet121": lambda: net.classifier,
            "vgg16": lambda: net.classifier[5:], "inception_v3": lambda: torch.nn.Sequential(net.dropout, net.fc),
            "vit_b_16": lambda: net.heads}[name]()


@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_and_classifies_224(name):
    torch.manual_seed(0)
    net = build_model(name, 4, dropout=0.3).eval()
    if name in ZOO:  # the head is Dropout(p) then Linear(num_classes)
        head = _head(net, name)
        assert isinstance(head[0], torch.nn.Dropout) and head[0].p == 0.3
        assert isinstance(head[-1], torch.nn.Linear) and head[-1].out_features == 4
    if name == "inception_v3":
        assert net.net.AuxLogits is None
    with torch.no_grad():
        y = net(torch.rand(1, 1, 224, 224))
    assert y.shape == (1, 4) and torch.isfinite(y).all()


def test_model_names():
    assert set(ZOO) < set(MODELS) and "fastnet" in MODELS and len(ZOO) == 6
    with pytest.raises(ValueError, match="unknown model"):
        build_model("alexnet", 2)


def test_fastnet_front_end_is_fixed_high_pass():
    net = build_model("fastnet", 2)
    assert "residual_kernels" not in dict(net.named_parameters())
    k = net.residual_kernels
    assert torch.allclose(k.sum(dim=(1, 2, 3)), torch.zeros(3), atol=1e-6)  # a constant image has no residual
    with torch.no_grad():
        flat = torch.nn.functional.conv2d(torch.full((1, 1, 32, 32), 0.7), k)
    assert flat.abs().max() < 1e-5


# ----------------------------------------------------------------------------- data

def test_load_item_scales_and_to_tensor_shapes(toy):
    rows = read_manifest(toy)
    a = load_item(rows[0]["_path"], "radiograph")
    assert a.dtype == np.float32 and a.ndim == 2 and a.min() >= 0 and a.max() <= 1 and a.max() > 0.9
    t = to_tensor(np.zeros((100, 150), np.float32), default_preprocess(64, 56, mean=0.5, std=0.25))
    assert t.shape == (1, 56, 56) and torch.allclose(t, torch.full_like(t, -2.0))
    with pytest.raises(MedForensicsError, match="unknown item kind"):
        load_item(rows[0]["_path"], "mri")


def test_augmentation_only_for_fakes_eight_variants(toy):
    rows = select_rows(read_manifest(toy), "binary")
    train_rows = [r for r in rows if r["split"] == "train"]
    ds = ItemDataset(train_rows, default_preprocess(48, 48), [1], augment_fakes=True)
    n_fake = sum(r["label"] == "fake" for r in train_rows)
    assert len(ds) == len(train_rows) + 8 * n_fake
    variants = [v for i, v in ds.items if v]
    assert all(train_rows[i]["label"] == "fake" for i, v in ds.items if v) and set(variants) == set(AUGMENTATIONS)
    a = np.linspace(0, 1, 48 * 48, dtype=np.float32).reshape(48, 48)
    assert not np.allclose(augment(a, "rotate+5"), a) and augment(a, "brightness+25%").max() > 1.2


def test_select_rows_tasks_and_methods():
    base = {"split": "train", "patient_id": "P", "file": "x", "augmentation": ""}
    rows = [dict(base, kind="ct-slice", label="real", **{"class": "TB"}, method="none"),
            dict(base, kind="ct-slice", label="fake", **{"class": "FM"}, method="gan"),
            dict(base, kind="ct-slice", label="fake", **{"class": "copymove"}, method="copymove"),
            dict(base, kind="radiograph", label="fake", **{"class": "splice"}, method="splice"),
            dict(base, kind="radiograph", label="real", **{"class": "authentic"}, method="none")]
    ct4 = select_rows(rows, "ct4")
    assert [r["class"] for r in ct4] == ["TB", "FM"] and [r["_target"] for r in ct4] == ["0", "3"]
    b = select_rows(rows, "binary", kinds=["radiograph"], methods=["copymove"])
    assert [r["class"] for r in b] == ["authentic"]
    assert len(select_rows(rows, "binary", methods=["splice", "gan"])) == 4
    # the forge manifest's method column says how (classic, learned, ...); its class says what
    real_manifest_like = [dict(base, kind="radiograph", label="fake", **{"class": "inpaint"}, method="learned"),
                          dict(base, kind="radiograph", label="fake", **{"class": "copymove"}, method="classic"),
                          dict(base, kind="radiograph", label="real", **{"class": "authentic"}, method="none")]
    assert [r["class"] for r in select_rows(real_manifest_like, "binary", methods=["inpaint"])] == ["inpaint", "authentic"]
    assert [r["class"] for r in select_rows(real_manifest_like, "binary", methods=["classic"])] == ["copymove", "authentic"]


def test_patient_leak_refused_in_one_line(toy, tmp_path):
    rows = list(csv.DictReader(open(toy)))
    rows[-1]["patient_id"] = rows[0]["patient_id"]  # a test item of a training patient
    bad = tmp_path / "leaky.csv"
    with open(bad, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(MedForensicsError) as e:
        refuse_leaks(read_manifest(bad), bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and rows[0]["patient_id"] in msg and "test" in msg
    with pytest.raises(MedForensicsError, match="P0"):
        train(_toy_config(max_steps=1), bad, tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()


# ----------------------------------------------------------------------------- training

def test_fastnet_learns_separable_toy(trained):
    _, card = load_checkpoint(trained)
    hist = card["metrics"]["validation"]
    assert card["metrics"]["best"]["accuracy"] >= 0.9  # chance is 0.5
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert card["training"]["stopped_by"] == "epochs" and card["training"]["epochs_done"] == 4


def test_card_keys_and_predict_reproduces_validation(trained, toy):
    state, card = load_checkpoint(trained)
    assert CARD_KEYS <= set(card)
    assert card["architecture"] == "fastnet" and card["task"] == "binary"
    assert card["config"] == {"num_classes": 2, "dropout": 0.5, "in_channels": 1}
    assert card["classes"] == ["real", "fake"] and card["fake_classes"] == ["fake"]
    assert card["data"]["counts"]["train"] == {"real": 24, "fake": 24}
    assert set(card["data"]["patients"]) == {"train", "validation", "test"} and len(card["data"]["sha256"]) == 64
    assert card["training"]["config"]["lr"] == 0.01 and card["training"]["device"] == "cpu"
    clf = load_classifier(trained)
    assert not clf.model.training
    val = [r for r in select_rows(read_manifest(toy), "binary") if r["split"] == "validation"]
    probs = clf.predict_files([r["_path"] for r in val], [r["kind"] for r in val])
    assert probs.shape == (len(val), 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    y = np.array([int(r["_target"]) for r in val])
    best = card["metrics"]["best"]
    assert (probs.argmax(1) == y).mean() == pytest.approx(best["accuracy"])
    loss = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()
    assert loss == pytest.approx(best["loss"], rel=1e-4, abs=1e-5)
    pf = clf.fake_probability(probs)
    assert np.allclose(pf, probs[:, 1])
    arrays = [load_item(r["_path"], r["kind"]) for r in val[:3]]
    assert np.allclose(clf.predict_arrays(arrays), probs[:3], atol=1e-6)


def test_best_epoch_selection_criteria(toy, tmp_path):
    for select in ("balanced_accuracy", "auc"):
        ckpt = train(_toy_config(epochs=3, select=select), toy, tmp_path / f"{select}.safetensors")
        _, card = load_checkpoint(ckpt)
        hist, best = card["metrics"]["validation"], card["metrics"]["best"]
        assert card["metrics"]["selected_by"] == select
        assert best[select] == max(h[select] for h in hist)
        assert all(0.0 <= h["balanced_accuracy"] <= 1.0 and 0.0 <= h["auc"] <= 1.0 for h in hist)
    with pytest.raises(ValueError, match="select must be one of"):
        _toy_config(select="f1")


def test_same_seed_same_weights(toy, tmp_path):
    cfg = _toy_config(max_steps=3, epochs=1, augment_fakes=True)
    a = load_checkpoint(train(cfg, toy, tmp_path / "a.safetensors"))[0]
    b = load_checkpoint(train(cfg, toy, tmp_path / "b.safetensors"))[0]
    c = load_checkpoint(train(_toy_config(max_steps=3, epochs=1, augment_fakes=True, seed=1), toy,
                              tmp_path / "c.safetensors"))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    _, card = load_checkpoint(tmp_path / "a.safetensors")
    assert card["training"]["stopped_by"] == "max_steps" and card["training"]["steps"] == 3


def test_time_budget_stops_cleanly(toy, tmp_path):
    out = train(_toy_config(max_minutes=1e-6, epochs=50), toy, tmp_path / "t.safetensors")
    _, card = load_checkpoint(out)
    assert card["training"]["stopped_by"] == "max_minutes" and card["training"]["steps"] == 1
    assert len(card["metrics"]["validation"]) == 1


def test_refuses_existing_output(toy, tmp_path):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"user data")
    with pytest.raises(FileExistsError):
        train(_toy_config(max_steps=1), toy, out)
    assert out.read_bytes() == b"user data"


# ----------------------------------------------------------------------------- configs

def test_shipped_configs():
    review = TrainConfig.from_toml(shipped_config("review"))
    assert (review.model, review.task, review.image_size, review.crop, review.resize) == ("resnet50", "ct4", 224, 224, "bilinear")
    assert (review.optimizer, review.lr, review.batch, review.epochs, review.weight_decay, review.dropout) == \
        ("adam", 0.001, 64, 50, 0.0001, 0.5)
    assert review.loss == "weighted-ce" and review.augment_fakes and review.max_minutes == 0
    fast = TrainConfig.from_toml(shipped_config("fast-cpu"), model="densenet121")
    assert fast.model == "densenet121" and fast.max_minutes > 0


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nmodel = "fastnet"\nlearning_rate = 0.1\n')
    with pytest.raises(MedForensicsError, match=r"bad\.toml: unknown \[train\] key\(s\): learning_rate"):
        TrainConfig.from_toml(bad)
    bad.write_text('[train]\nepochs = "ten"\n')
    with pytest.raises(MedForensicsError, match="epochs must be a int"):
        TrainConfig.from_toml(bad)
    bad.write_text('[train]\nmodel = "alexnet"\n')
    with pytest.raises(MedForensicsError, match="model must be one of"):
        TrainConfig.from_toml(bad)


# ----------------------------------------------------------------------------- command line

def test_cli_train_exit_codes(toy, tmp_path, run_cli):
    cfg = tmp_path / "toy.toml"
    cfg.write_text('[train]\nmodel = "fastnet"\ntask = "binary"\nimage_size = 48\ncrop = 48\nbatch = 16\n'
                   'epochs = 1\nmax_steps = 2\naugment_fakes = false\nnum_threads = 1\ndevice = "cpu"\n')
    out = tmp_path / "cli.safetensors"
    r = run_cli("train", "--config", cfg, "--manifest", toy, "--out", out, "--seed", 3)
    assert r.code == 0, r.err
    assert "best validation" in r.out and str(out) in r.out
    assert load_checkpoint(out)[1]["training"]["seed"] == 3
    r = run_cli("train", "--config", cfg, "--manifest", toy, "--out", out)
    assert r.code == 2 and "already exists" in r.err
    assert run_cli("train", "--config", cfg, "--manifest", toy, "--out", tmp_path / "m.st", "--model", "alexnet").code == 2
    assert run_cli("train", "--config", "no-such", "--manifest", toy).code == 2
    assert run_cli("train", "--config", cfg, "--manifest", tmp_path / "none.csv", "--out", tmp_path / "n.st").code == 1
    assert run_cli("train").code == 2  # neither --config nor a subcommand
    cfg.write_text('[train]\nmodel = "fastnet"\nbatchsize = 3\n')
    r = run_cli("train", "--config", cfg, "--manifest", toy, "--out", tmp_path / "k.st")
    assert r.code == 1 and "batchsize" in r.err and "Traceback" not in r.err


def test_cli_train_ct3d_and_autoencoder_refuse_bad_input(tmp_path, run_cli):
    """The former private command lines of learn.ct3d and learn.autoencoder, now under ``train``."""
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep")
    for args in (("ct3d", "--out", taken), ("autoencoder", "ct", "--out", taken)):
        r = run_cli("train", *args)
        assert r.code == 2 and "already exists" in r.err and taken.read_bytes() == b"keep", r.err
    r = run_cli("train", "autoencoder", "mr", "--out", tmp_path / "a.safetensors")
    assert r.code == 2 and "kind must be one of" in r.err
    for args in (("ct3d",), ("autoencoder", "ct")):
        r = run_cli("train", *args, "--out", tmp_path / "n.safetensors", "--data", tmp_path / "nowhere", "--minutes", "0.01")
        assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, r.err
        assert not (tmp_path / "n.safetensors").exists()


def test_load_item_real_ct_slice_uses_lung_window(lidc_series_dir):
    from medforensics.io import load

    path = sorted(lidc_series_dir.glob("*.dcm"))[60]
    hu = load(path)[0].pixels
    a = load_item(path, "ct-slice")
    assert a.shape == hu.shape and a.dtype == np.float32
    assert np.allclose(a, np.clip((hu + 1000.0) / 1400.0, 0, 1), atol=1e-6)
    assert (a == 0).mean() > 0.05 and (a == 1).mean() > 0.001  # air outside the body, bone above 400 HU
