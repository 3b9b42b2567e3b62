"""The generator zoo (forge/zoo), its dataset and realism report, and the learned_synthesis detector.

Families are trained for a couple of steps on a handful of images: these tests check the
mechanism (shapes, splits, files, manifest, checkpoints, the detector's contract), not the
quality of the fakes, which benchmarks/unseen_generators.py measures.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medforensics.forge.zoo import SPLIT_SHARES, real_images, split_of
from medforensics.forge.zoo.families import FAMILIES, Preset, fit_loop, load_zoo_model, train_family, untrained

TINY = dict(size=32, width=8, steps=2, batch=2, crop=32, invert_steps=1, max_images=4, threads=1, sample_steps=3)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("zoo-models")
    models = {}
    for name in ("gan", "diffusion", "upsample"):
        models[name] = train_family(name, Preset(name="tiny", **TINY), folder / f"{name}.safetensors",
                                    data_root=shared_data, progress=False)
    models["vae"] = untrained("vae")
    return models


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, tiny_models, shared_data):
    from medforensics.forge.zoo.dataset import ZooDatasetConfig, build_zoo_dataset

    out = tmp_path_factory.mktemp("zoo-ds") / "ds"
    cfg = ZooDatasetConfig(seed=1, samples_per_family=4, reconstructions={"train": 2, "validation": 1, "test": 2},
                           resized_per_split={"train": 2, "validation": 1, "test": 1}, max_per_split=3)
    return build_zoo_dataset(out, tiny_models, shared_data, cfg, progress=False)


def test_split_is_a_fixed_function_of_the_patient():
    patients = [f"p{i}" for i in range(3000)]
    counts = Counter(split_of(p) for p in patients)
    assert set(counts) == set(SPLIT_SHARES)
    for name, share in SPLIT_SHARES.items():
        assert abs(counts[name] / len(patients) - share) < 0.04
    assert [split_of(p) for p in patients[:50]] == [split_of(p) for p in patients[:50]]


def test_real_images_are_split_by_patient(shared_data):
    imgs = real_images(shared_data)
    by_patient: dict[str, set[str]] = {}
    for r in imgs:
        by_patient.setdefault(r.patient, set()).add(r.split)
        assert r.pixels.dtype == np.float32 and 0 <= r.pixels.min() and r.pixels.max() <= 1
        assert "ieee8023" not in str(r.path) and "dcm-qa-ct" not in str(r.path)
    assert all(len(s) == 1 for s in by_patient.values())
    assert {r.split for r in imgs} == set(SPLIT_SHARES)
    assert len(real_images(shared_data, "test", limit=2)) == 2


def test_families_sample_and_reconstruct_at_the_right_size(tiny_models, shared_data):
    real = real_images(shared_data, "test", limit=1)[0].pixels[:100, :124]   # not a multiple of 4 or 8
    for name, m in tiny_models.items():
        fam = FAMILIES[name]
        if fam.sample is not None and name != "vae":
            out = fam.sample(m, 2, seed=3)
            assert len(out) == 2 and out[0].shape == (m.preset.size, m.preset.size)
            assert out[0].dtype == np.float32 and 0 <= out[0].min() and out[0].max() <= 1
            again = fam.sample(m, 2, seed=3)
            assert np.array_equal(out[0], again[0]), name           # a seed gives the same image
        if fam.reconstruct is not None:
            rec = fam.reconstruct(m, real, 5)
            expect = (m.preset.size,) * 2 if name == "gan" else real.shape
            assert rec.shape == expect, name
            assert not np.allclose(rec, real if rec.shape == real.shape else rec + 1), name


def test_checkpoint_round_trip_and_card_without_machine_paths(tiny_models):
    m = tiny_models["upsample"]
    back = load_zoo_model(m.path)
    x = np.random.default_rng(0).random((40, 48)).astype(np.float32)
    assert np.array_equal(FAMILIES["upsample"].reconstruct(m, x, 0), FAMILIES["upsample"].reconstruct(back, x, 0))
    text = json.dumps(back.card)
    assert back.card["data"]["split"] == "train" and back.card["data"]["root"] == "."
    assert "/work" not in text and "/home" not in text and str(ROOT) not in text
    assert back.card["training"]["sr"]["steps_done"] == TINY["steps"]
    assert all(split_of(p) == "train" for p in back.card["data"]["patients"])


def test_wrong_checkpoint_is_a_one_line_error(tmp_path):
    from medforensics.core import MedForensicsError
    from medforensics.learn.checkpoint import save_checkpoint
    import torch

    bad = save_checkpoint({"w": torch.zeros(2)}, tmp_path / "x.safetensors", {"architecture": "Other"})
    with pytest.raises(MedForensicsError, match="not a generator-zoo checkpoint"):
        load_zoo_model(bad)
    with pytest.raises(MedForensicsError, match="unknown generator family"):
        train_family("stylegan9")


def test_fit_loop_honours_the_time_budget():
    calls = []

    def step(i):
        calls.append(i)
        import time
        time.sleep(0.02)
        return {"loss": 1.0 / (i + 1)}

    res = fit_loop(10_000, step, desc="t", max_minutes=0.1 / 60, progress=False)
    assert res["stopped_by"] == "max_minutes" and 1 <= res["steps_done"] < 100
    assert res["history"][0]["step"] == 1 and res["history"][0]["loss"] == 1.0


def test_zoo_dataset_is_finished_alike_and_patient_disjoint(tiny_dataset):
    from medforensics.forge.dataset import MANIFEST_COLUMNS, check_patient_disjoint
    from medforensics.learn.data import read_manifest, select_rows

    with open(tiny_dataset, newline="") as fh:
        assert csv.DictReader(fh).fieldnames == MANIFEST_COLUMNS
    rows = read_manifest(tiny_dataset)
    check_patient_disjoint(tiny_dataset)
    methods = Counter(r["method"] for r in rows)
    assert {"authentic", "resized", "gan", "diffusion", "upsample", "vae"} <= set(methods)
    for r in rows:
        assert Path(r["_path"]).is_file()
        p = json.loads(r["params"])
        assert p["mode"] in ("authentic", "resized", "sample", "reconstruct")
        assert (r["label"] == "fake") == (p["mode"] in ("sample", "reconstruct"))
        if p["mode"] == "reconstruct":   # a reconstruction keeps its authentic image's patient and split
            assert any(o["patient_id"] == r["patient_id"] and o["label"] == "real" for o in rows)
    # authentic and fake items pass through the same finishing: both classes come in several formats
    # and both have export-chained and plain items
    for label in ("real", "fake"):
        mine = [json.loads(r["params"]) for r in rows if r["label"] == label]
        assert len({m["format"] for m in mine}) >= 2, label
        assert any(m["export"] for m in mine) and any(not m["export"] for m in mine), label
    # a whole generated image is written at its generator's size, and so are some authentic ones
    resized = {tuple(json.loads(r["params"])["shape"]) for r in rows if r["method"] == "resized"}
    sampled = {tuple(json.loads(r["params"])["shape"]) for r in rows if json.loads(r["params"])["mode"] == "sample"
               and not json.loads(r["params"])["export"]}
    assert resized & sampled
    held_out = select_rows(rows, "binary", methods=["gan", "vae"])
    assert {r["method"] for r in held_out if r["label"] == "fake"} == {"gan", "vae"}
    assert sum(r["label"] == "real" for r in held_out) == sum(r["label"] == "real" for r in rows)


def test_realism_report(tiny_dataset, tmp_path):
    from medforensics.forge.zoo.realism import family_realism

    table = family_realism(tiny_dataset, "test", tmp_path / "realism.png")
    assert (tmp_path / "realism.png").stat().st_size > 5000
    info = json.loads((Path(tiny_dataset).parent / "dataset.json").read_text())
    assert info["families"]["gan"]["steps_done"] == {"gan": 2, "inversion": 1}
    assert table["authentic"]["n"] >= 1 and "noise_w1" not in table["authentic"]
    fam = next(k for k in table if k != "authentic")
    assert {"noise", "nps_freq", "sharpness", "noise_w1", "nps_freq_w1", "sharpness_w1"} <= set(table[fam])
    with pytest.raises(FileExistsError):
        family_realism(tiny_dataset, "test", tmp_path / "realism.png")


def test_learned_synthesis_detector_on_a_tiny_model(tiny_dataset, tmp_path, shared_data):
    from medforensics.detectors.learned_synthesis import LearnedSynthesisDetector
    from medforensics.io import load
    from medforensics.learn.train import TrainConfig, train
    from medforensics.scan import analyze

    cfg = TrainConfig.from_toml(ROOT / "src/medforensics/learn/configs/detector-zoo.toml")
    cfg = dataclasses.replace(cfg, epochs=1, max_steps=2, tiles_per_item=1, batch=8, min_size=32)
    ckpt = train(cfg, tiny_dataset, tmp_path / "zoo.safetensors")
    det = LearnedSynthesisDetector(ckpt)
    chest = next((shared_data / "xray/mhh-covid19/images").glob("*.png"))
    image = load(chest)[0]
    assert det.applies(image) and det.out_of_domain(image) is None
    ev = det.detect(image)
    assert ev.detector == "learned_synthesis" and ev.indicates == "synthesis" and ev.confidence == "low"
    assert ev.heatmap is not None and ev.heatmap.shape == image.pixels.shape
    assert "generator traces" in ev.explanation
    v = analyze(image, [det])
    assert v.assessed == ["learned_synthesis"]
    # a frame not shaped like a chest radiograph is not assessed, and says why
    wide = load(chest)[0]
    wide.pixels = np.tile(wide.pixels, (1, 3))
    v = analyze(wide, [det])
    assert "learned_synthesis" in v.not_assessed and "chest" in v.not_assessed["learned_synthesis"]


def test_cli_zoo(tmp_path, tiny_models, shared_data, run_cli, monkeypatch):
    monkeypatch.setenv("MEDFORENSICS_DATA", str(shared_data))

    def run(*args):
        return run_cli("forge", "zoo", *args)

    r = run("list")
    assert r.returncode == 0 and all(f in r.stdout for f in FAMILIES)
    r = run("train", "stylegan9", "--out", str(tmp_path / "x.safetensors"))
    assert r.returncode != 0 and "unknown generator family" in r.stderr and "Traceback" not in r.stderr
    r = run("train", "upsample", "--out", str(tiny_models["gan"].path))
    assert r.returncode == 2 and "already exists" in r.stderr
    r = run("dataset", "--out", str(tmp_path / "ds"), "--model", str(tiny_models["gan"].path),
            "--model", str(tiny_models["gan"].path), "--no-vae")
    assert r.returncode == 1 and "a second gan model" in r.stderr


@pytest.mark.parametrize("module", ["medforensics.forge.zoo", "medforensics.forge.zoo.nets",
                                    "medforensics.forge.zoo.realism", "medforensics.progress",
                                    "medforensics.detectors.learned_synthesis", "medforensics.forge.dataset"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_unseen_generators_metric():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import unseen_generators as ug
    finally:
        sys.path.pop(0)
    import doctest
    assert doctest.testmod(ug).failed == 0
    real = np.linspace(0, 1, 200)
    r = ug.auc_tpr(real, np.array([0.995, 0.999, 0.5]))
    # 1% of 200 authentic items may lie above the threshold: the threshold is the 3rd highest
    assert r["threshold"] == pytest.approx(real[-3]) and r["tpr_at_1pct_fpr"] == pytest.approx(2 / 3)
    assert ug.auc_tpr(real, real)["auc"] == pytest.approx(0.5)
