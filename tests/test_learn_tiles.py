"""Native-resolution tile models: tiling, mask-guided tile sampling, training with calibration on
authentic images, prediction, and the ``learned_2d`` detector's tile heatmap and Grad-CAM.

The toy data: 96x96 radiograph-like PNGs; a fake carries a 24x24 square of 6x stronger noise at a
random place, given by its mask (a local edit), so only tiles that cover the square show it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from sklearn.metrics import roc_auc_score

from medforensics.core import Image, MedForensicsError
from medforensics.detectors.learned2d import Learned2DDetector
from medforensics.learn.calibration import fit_logistic, size_group
from medforensics.learn.checkpoint import load_checkpoint
from medforensics.learn.data import (TileDataset, default_preprocess, load_item, load_mask, read_manifest,
                                     select_rows, tiles, to_tensor)
from medforensics.learn.predict import load_classifier
from medforensics.learn.train import TrainConfig, train
from test_learn_train import _write_manifest

SIZE, SQUARE = 96, 24


def _image(rng: np.random.Generator, fake: bool) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    cx, cy = rng.uniform(0.2, 0.8, 2)
    img = 100 + 80 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05) + 30 * xx + rng.normal(0, 2.0, (SIZE, SIZE))
    mask = np.zeros((SIZE, SIZE), bool)
    if fake:
        y, x = rng.integers(0, SIZE - SQUARE, 2)
        mask[y:y + SQUARE, x:x + SQUARE] = True
        img[mask] += rng.normal(0, 12.0, int(mask.sum()))
    return np.clip(img, 0, 255).astype(np.uint8), mask


def _edits_dataset(root: Path, n_patients: int = 12, per_patient: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        split = "train" if p < n_patients * 2 // 3 else "validation" if p < n_patients * 5 // 6 else "test"
        for k in range(per_patient):
            fake = k % 2 == 1
            cls = "splice" if fake else "authentic"
            img, mask = _image(rng, fake)
            rel, mrel = f"{split}/{cls}/{p:02d}{k}.png", f"{split}/{cls}/{p:02d}{k}.mask.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            PILImage.fromarray(img).save(root / rel)
            PILImage.fromarray(mask.astype(np.uint8) * 255).save(root / mrel)
            rows.append({"id": f"{p:02d}{k}", "file": rel, "mask": mrel, "split": split,
                         "label": "fake" if fake else "real", "class": cls, "modality": "XR", "kind": "radiograph",
                         "method": "classic" if fake else "none", "patient_id": f"P{p}", "source_dataset": "toy",
                         "params": "{}"})
    return _write_manifest(root, rows)


def _tile_config(**kw) -> TrainConfig:
    base = dict(model="fastnet", task="binary", resize="none", crop=32, tiles_per_item=6, batch=32, epochs=6,
                lr=0.01, augment_fakes=False, seed=0, num_threads=1, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def edits(tmp_path_factory) -> Path:
    return _edits_dataset(tmp_path_factory.mktemp("edits"))


@pytest.fixture(scope="module")
def tile_model(edits, tmp_path_factory) -> Path:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(_tile_config(), edits, tmp_path_factory.mktemp("ckpt") / "tiles.safetensors")
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------- tiling and sampling

def test_tiles_cover_every_pixel_and_pad_small_images():
    pre = default_preprocess(crop=32, resize="none", mean=0.5, std=0.25)
    assert pre["stride"] == 16
    a = np.random.default_rng(0).random((70, 100), dtype=np.float32)
    batch, pos, shape = tiles(a, pre)
    assert shape == (70, 100) and batch.shape == (len(pos), 1, 32, 32)
    cover = np.zeros(shape, int)
    for y, x in pos:
        cover[y:y + 32, x:x + 32] += 1
    assert cover.min() >= 1 and (70 - 32, 100 - 32) in pos  # far edges aligned
    y, x = pos[5]
    assert torch.allclose(batch[5, 0], (torch.from_numpy(a[y:y + 32, x:x + 32]) - 0.5) / 0.25)
    big, pos_b, _ = tiles(np.zeros((700, 900), np.float32), {**pre, "max_tiles": 100})
    assert len(pos_b) <= 100 and (700 - 32, 900 - 32) in pos_b and (0, 0) in pos_b
    assert len(pos_b) > 60  # the step grew only as far as needed
    small, pos_s, shape_s = tiles(np.ones((20, 40), np.float32), pre)
    assert shape_s == (32, 40) and all(t.shape == (1, 32, 32) for t in small)
    assert to_tensor(a, pre).shape == (1, 32, 32)  # the centre tile, not resized


def test_tile_sampling_covers_the_mask_and_repeats(edits):
    rows = select_rows(read_manifest(edits), "binary")
    pre = default_preprocess(crop=32, resize="none")
    ds = TileDataset(rows, pre, [1], tiles_per_item=4, seed=3)
    assert len(ds) == 4 * len(rows) and ds.targets()[:4] == [int(rows[0]["_target"])] * 4
    fake_i = next(i for i, r in enumerate(rows) if r["label"] == "fake")
    mask = load_mask(rows[fake_i], (SIZE, SIZE))
    assert mask.sum() == SQUARE * SQUARE
    img = load_item(rows[fake_i]["_path"], "radiograph")
    for k in range(4):  # each fake tile is a crop (maybe mirrored) that holds manipulated pixels
        x, y = ds[fake_i * 4 + k]
        assert y == 1 and x.shape == (1, 32, 32)
        t = x[0].numpy()
        found = [(top, left) for top in range(SIZE - 31) for left in range(SIZE - 31)
                 if np.allclose(img[top:top + 32, left:left + 32], t, atol=2e-3)
                 or np.allclose(img[top:top + 32, left:left + 32][:, ::-1], t, atol=2e-3)]
        assert found and any(mask[a:a + 32, b:b + 32].any() for a, b in found)
    again = TileDataset(rows, pre, [1], tiles_per_item=4, seed=3)
    assert torch.equal(ds[7][0], again[7][0])
    again.set_epoch(1)
    assert not torch.equal(ds[7][0], again[7][0])
    fixed = TileDataset(rows, pre, [1], tiles_per_item=4, seed=3, fixed=True)
    first = fixed[7][0]
    fixed.set_epoch(5)
    assert torch.equal(first, fixed[7][0])


def test_mask_of_another_size_is_a_one_line_error(edits, tmp_path):
    row = {"_mask": str(next(edits.parent.rglob("*.mask.png"))), "label": "fake"}
    with pytest.raises(MedForensicsError, match="mask is 96x96 but its image is 50x50"):
        load_mask(row, (50, 50))
    assert load_mask({"_mask": "", "label": "fake"}, (4, 5)).all()
    assert not load_mask({"_mask": "", "label": "real"}, (4, 5)).any()
    with pytest.raises(MedForensicsError, match="cannot read mask"):
        load_mask({"_mask": str(tmp_path / "absent.png"), "label": "fake"}, (4, 5))


def test_fit_logistic_hits_its_targets():
    raws = np.random.default_rng(0).normal(2.0, 3.0, 2000)
    cal = fit_logistic(raws, scale_floor=0.1)
    score = lambda v: 1 / (1 + np.exp(-(v - cal["midpoint"]) / cal["scale"]))  # noqa: E731
    assert score(np.median(raws)) == pytest.approx(0.05, abs=1e-3)
    assert score(np.percentile(raws, 95)) == pytest.approx(0.2, abs=1e-3)
    assert size_group((64, 64)) == "small" and size_group((3, 300, 200)) == "native"


# ----------------------------------------------------------------------------- training and prediction

def test_tile_model_learns_local_edits_and_is_calibrated_on_authentic(tile_model, edits):
    state, card = load_checkpoint(tile_model)
    assert card["preprocess"]["resize"] == "none" and card["preprocess"]["crop"] == 32
    cal = card["calibration"]["small"]  # 96 px images: the thumbnail group
    assert cal["n_images"] == 6 and cal["scale"] >= 1.0 and "authentic" in cal["rule"]
    clf = load_classifier(tile_model)
    assert clf.native
    rows = [r for r in read_manifest(edits) if r["split"] == "test"]
    arrays = [load_item(r["_path"], "radiograph") for r in rows]
    y = [r["label"] == "fake" for r in rows]
    p = clf.fake_probability(clf.predict_arrays(arrays))
    stats = [clf.image_statistic(a) for a in arrays]
    assert roc_auc_score(y, p) > 0.9 and roc_auc_score(y, stats) > 0.9
    probs, pos, shape = clf.tile_probabilities(arrays[1])
    assert probs.shape == (len(pos), 2) and shape == (SIZE, SIZE)


def test_tile_config_validation():
    with pytest.raises(ValueError, match="resize must be one of"):
        _tile_config(resize="nearest")
    with pytest.raises(ValueError, match="tiles_per_item"):
        _tile_config(stride=64)
    assert _tile_config(crop=300).crop == 300  # image_size does not bound a native tile


# ----------------------------------------------------------------------------- detector

@pytest.fixture
def use_tiles(tile_model, learned_checkpoints):
    learned_checkpoints(xray=tile_model)
    return tile_model


def test_detector_localises_the_edit_with_tile_heatmap_and_grad_cam(use_tiles):
    rng = np.random.default_rng(11)
    det = Learned2DDetector()
    found = 0
    for _ in range(4):
        img, mask = _image(rng, fake=True)
        ev = det.detect(Image.from_array(img.astype(np.float32), modality="XR", format="png", name="edit.png"))
        assert ev.details["mode"] == "native-tiles" and ev.details["grad_cam"] is True
        assert ev.heatmap.shape == (SIZE, SIZE) and 0 <= ev.heatmap.min() and ev.heatmap.max() <= 1
        y, x = ev.details["worst_tile"]
        if ev.score >= 0.5 and mask[y:y + 32, x:x + 32].any() and ev.regions:
            r = ev.regions[0]
            found += bool(mask[r.bbox_voxel[0]:r.bbox_voxel[2], r.bbox_voxel[1]:r.bbox_voxel[3]].any())
    assert found >= 3
    clean, _ = _image(np.random.default_rng(12), fake=False)
    ev = det.detect(Image.from_array(clean.astype(np.float32), modality="XR", format="png", name="clean.png"))
    assert ev.score < 0.5 and not ev.regions and "like authentic" in ev.explanation


def test_detector_abstains_below_the_training_min_size(edits, tmp_path, learned_checkpoints):
    learned_checkpoints(xray=train(_tile_config(min_size=90, epochs=1), edits, tmp_path / "min90.safetensors"))
    ev = Learned2DDetector().detect(Image.from_array(np.full((64, 64), 100.0, np.float32), modality="XR",
                                                     format="png", name="thumb.png"))
    assert ev.score == 0.0 and ev.details["abstained"] and "smaller than the 90 px" in ev.explanation


def test_shipped_tile_configs():
    from medforensics.learn.train import shipped_config

    for name, kind in (("detector-ct", "ct-slice"), ("detector-xray", "radiograph")):
        cfg = TrainConfig.from_toml(shipped_config(name))
        assert (cfg.model, cfg.task, cfg.kinds, cfg.resize) == ("fastnet", "binary", [kind], "none")
        assert not cfg.augment_fakes and cfg.max_minutes == 0  # deterministic: no time budget


def _phantom_series(rng: np.random.Generator, n: int = 6, size: int = 160, patch: tuple[int, int, int] | None = None,
                    noise_hu: float = 20.0) -> np.ndarray:
    """A chest-like CT volume in HU: air around a soft-tissue body with two lungs, edges blurred; ``patch``
    (slice, row, column) adds 6x stronger noise on a 24 px square there (the toy models' "edit")."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.46) ** 2 < 1
    lungs = (((yy - 0.5) / 0.3) ** 2 + ((xx - 0.3) / 0.13) ** 2 < 1) | (((yy - 0.5) / 0.3) ** 2 + ((xx - 0.7) / 0.13) ** 2 < 1)
    from scipy.ndimage import gaussian_filter

    # soft edges: the toy models saw smooth fields only, so a sharp edge would be news to them
    base = gaussian_filter(np.where(body, np.where(lungs, -850.0, 40.0), -1000.0), 4.0)
    vol = np.stack([base + rng.normal(0, noise_hu, base.shape) for _ in range(n)]).astype(np.float32)
    if patch is not None:
        k, y, x = patch
        vol[k, y:y + SQUARE, x:x + SQUARE] += rng.normal(0, 6 * noise_hu, (SQUARE, SQUARE)).astype(np.float32)
    return vol


def test_detector_scans_a_ct_series_over_its_lungs_and_finds_the_edit(tile_model, learned_checkpoints):
    learned_checkpoints(ct=tile_model)
    det = Learned2DDetector()
    rng = np.random.default_rng(5)
    clean = Image.from_array(_phantom_series(rng), modality="CT", format="dicom", name="series",
                             spacing=(2.5, 1.0, 1.0))
    assert det.applies(clean)
    ev = det.detect(clean)
    assert ev.details["mode"] == "series-tiles" and ev.details["slices_scored"] == 6
    assert ev.full_heatmap(clean.pixels.shape).shape == clean.pixels.shape and ev.score < 0.5 and not ev.regions
    assert ev.heatmap_scale == (1, 4, 4) and ev.heatmap.shape == (6, 40, 40)   # kept coarse: 4 px cells
    k0, y0, x0 = 3, 68, 36  # inside the left lung
    forged = Image.from_array(_phantom_series(np.random.default_rng(5), patch=(k0, y0, x0)), modality="CT",
                              format="dicom", name="series", spacing=(2.5, 1.0, 1.0))
    ev = det.detect(forged)
    assert ev.score >= 0.5 and ev.details["grad_cam"] and ev.regions, ev.explanation
    k, y, x = ev.details["worst_tile"]
    assert k == k0 and y < y0 + SQUARE and y0 < y + 32 and x < x0 + SQUARE and x0 < x + 32
    top = ev.regions[0].center_voxel
    assert top[0] == k0 and abs(top[1] - (y0 + SQUARE // 2)) <= 24 and abs(top[2] - (x0 + SQUARE // 2)) <= 24
    assert ev.heatmap[k0].max() >= 0.5 and ev.heatmap[k0 + 2].max() < 0.5  # the other slices stay quiet
    full = ev.full_heatmap(forged.pixels.shape)   # cells back at pixel size: the edit is hot where it is
    # back at pixel size, the cells cover the same pixels: the hottest lies in the worst tile or a region's box
    hot = np.unravel_index(int(np.argmax(full)), full.shape)
    assert full.max() == ev.heatmap.max() and hot[0] == k0
    assert (y <= hot[1] < y + 64 and x <= hot[2] < x + 64) or any(
        b[0] <= hot[0] < b[3] and b[1] <= hot[1] < b[4] and b[2] <= hot[2] < b[5] for b in (r.bbox_voxel for r in ev.regions))
    no_lungs = Image.from_array(np.full((4, 96, 96), 40.0, np.float32), modality="CT", format="dicom", name="s")
    ev = det.detect(no_lungs)
    assert ev.score == 0.0 and ev.details["abstained"] and "No lung" in ev.explanation
    mr = Image.from_array(_phantom_series(rng), modality="MR", format="dicom", name="mr")
    assert not det.applies(mr)
