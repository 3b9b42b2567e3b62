"""The unsupervised autoencoder detector: training, shipped checkpoints, scores, heatmaps, errors."""
from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from medforensics.core import Image, MedForensicsError
from medforensics.detectors.base import regions_from_heatmap
from medforensics.detectors.autoencoder import CHECKPOINTS, AutoencoderDetector, load_model
from medforensics.learn.autoencoder import authentic_sources, load_autoencoder, train_autoencoder
from medforensics.learn.checkpoint import save_checkpoint

TINY = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2, 2],
        "num_res_units": 0, "norm": "BATCH"}


def _test_split_image(shared_data, kind: str, dataset: str) -> Image:
    """An authentic image of a test patient (never seen in training nor calibration)."""
    from medforensics.io import load_instance, load_raster

    srcs, splits, _ = authentic_sources(kind, shared_data)
    src = next(s for s in srcs if splits[s.patient_id] == "test" and s.dataset == dataset and s.kind == "image")
    f = src.files[0]
    return load_instance(f) if f.suffix == ".dcm" else load_raster(f)


def _smoothed(image: Image, box: tuple[int, int, int, int]) -> Image:
    """A copy of ``image`` with ``box`` heavily smoothed (a crude in-painting)."""
    r0, c0, r1, c1 = box
    px = image.pixels.copy()
    px[r0:r1, c0:c1] = cv2.GaussianBlur(px, (0, 0), 6)[r0:r1, c0:c1]
    return Image.from_array(px, modality=image.modality, format=image.format, name="smoothed")


def _overlaps(region, box) -> bool:
    a = region.bbox_voxel
    return a[0] < box[2] and box[0] < a[2] and a[1] < box[3] and box[1] < a[3]


def test_training_on_real_patches_reduces_loss(shared_data, tmp_path):
    out = train_autoencoder("xray", shared_data, tmp_path / "ae.safetensors", max_steps=200, model_config=TINY,
                            batch=16, patch=32, max_images=80)
    model, card = load_autoencoder(out)
    m = card["metrics"]
    assert m["heldout_mse_after"] < 0.7 * m["heldout_mse_before"]
    assert card["training"]["steps"] == 200
    assert card["data"]["authentic_only"] is True
    assert not set(card["data"]["train_patients"]) & set(card["data"]["reference_patients"])
    assert card["data"]["data_root"] == "." and set(card["data"]["sources"]) <= {"xray/mhh-covid19", "xray/nih-cxr14",
                                                                                 "xray/siim"}
    assert set(card["calibration"]) == set(card["reference"]) and set(card["reference"]) <= {"native", "small"}
    assert all(c["scale"] > 0 for c in card["calibration"].values())
    assert all(r["n_images"] >= 3 for r in card["reference"].values())
    with pytest.raises(MedForensicsError, match="already exists"):
        train_autoencoder("xray", shared_data, out, max_steps=1, model_config=TINY)


@pytest.mark.parametrize("kind", ["ct", "xray"])
def test_shipped_checkpoints_say_what_they_were_trained_on(kind, shared_data):
    from medforensics.forge.dataset import DatasetConfig, assign_splits, inventory

    model, card = load_model(kind)
    assert card["kind"] == kind and card["data"]["authentic_only"] is True
    train, ref = set(card["data"]["train_patients"]), set(card["data"]["reference_patients"])
    assert train and ref and not train & ref
    splits = assign_splits(inventory(shared_data), DatasetConfig().fractions, 0)
    assert {splits[p] for p in train} == {"train"}
    assert {splits[p] for p in ref} == {"validation"}
    assert CHECKPOINTS[kind].stat().st_size < 4_000_000


def test_real_radiograph_scores_low_and_smoothed_patch_is_found(shared_data):
    img = _test_split_image(shared_data, "xray", "mhh-covid19")
    det = AutoencoderDetector()
    assert det.applies(img)
    ev = det.detect(img)
    assert ev.heatmap is not None and ev.heatmap.shape == img.pixels.shape
    assert 0 <= ev.heatmap.min() and ev.heatmap.max() <= 1
    assert ev.score < 0.5, ev.details
    h, w = img.pixels.shape
    box = (h // 3, w // 3, h // 3 + 96, w // 3 + 96)
    fake = det.detect(_smoothed(img, box))
    assert fake.score > ev.score + 0.2, (ev.details, fake.details)
    peak = np.unravel_index(np.argmax(fake.heatmap), fake.heatmap.shape)
    assert box[0] <= peak[0] < box[2] and box[1] <= peak[1] < box[3]
    strongest = regions_from_heatmap(img, fake.heatmap, threshold=0.5 * float(fake.heatmap.max()))
    assert strongest and _overlaps(strongest[0], box)


def test_ct_slice_with_smoothed_patch_and_series_heatmap(lidc_series_dir):
    from medforensics.io import load_series

    files = sorted(lidc_series_dir.glob("*.dcm"))
    vol = load_series(files[60:72])
    det = AutoencoderDetector()
    ev = det.detect(vol)
    assert ev.heatmap.shape == vol.pixels.shape and ev.details["slices_scored"] == 12
    assert ev.score < 0.5, ev.details  # an authentic series
    sl = Image.from_array(vol.pixels[6], modality="CT", format="dicom", name="slice")
    real = det.detect(sl)
    box = (200, 300, 264, 364)  # lung parenchyma and vessels of the right lung
    px = sl.pixels.copy()
    px[200:264, 300:364] += np.random.default_rng(0).normal(0, 60, (64, 64)).astype(np.float32)
    fake = det.detect(Image.from_array(px, modality="CT", format="dicom", name="pasted"))
    # a patch pasted from a noisier acquisition raises the heat where it is (on CT, not above the
    # strongest authentic block of the slice; see docs/learn/unsupervised.md, limits)
    inside = (slice(box[0], box[2]), slice(box[1], box[3]))
    assert fake.heatmap[inside].max() > 5 * real.heatmap[inside].max()


def test_damaged_or_foreign_checkpoint_gives_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(CHECKPOINTS["xray"].read_bytes()[:5000])
    with pytest.raises(MedForensicsError, match="bad.safetensors: not a readable safetensors"):
        load_autoencoder(bad)
    other = tmp_path / "other.safetensors"
    import torch
    save_checkpoint({"w": torch.zeros(2)}, other, {"architecture": "resnet50"})
    with pytest.raises(MedForensicsError, match="not an autoencoder checkpoint"):
        load_autoencoder(other)
    det = AutoencoderDetector(checkpoints={"xray": bad})
    with pytest.raises(MedForensicsError, match="bad.safetensors"):
        det.detect(Image.from_array(np.random.default_rng(0).normal(100, 5, (64, 64)), modality="XR"))
    copy = tmp_path / "ct.safetensors"
    shutil.copy(CHECKPOINTS["ct"], copy)
    with pytest.raises(MedForensicsError, match="not 'xray'"):
        load_model("xray", copy)
