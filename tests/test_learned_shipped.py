"""The shipped learned_2d checkpoints: present, tile models calibrated on authentic images, in the
default scan, and quiet on real images they never saw."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medforensics.detectors import learned2d
from medforensics.detectors.base import load_detectors
from medforensics.detectors.learned2d import Learned2DDetector
from medforensics.io import load
from medforensics.learn.checkpoint import load_checkpoint

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def shipped(learned_checkpoints):
    learned_checkpoints()


@pytest.mark.parametrize("which,kind", [("ct", "ct-slice"), ("xray", "radiograph")])
def test_shipped_checkpoints_are_calibrated_tile_models(which, kind):
    path = learned2d.checkpoint_path(which)
    assert path.is_file() and path.stat().st_size < 5_000_000
    _, card = load_checkpoint(path)
    assert card["architecture"] == "fastnet" and card["preprocess"]["resize"] == "none"
    assert card["training"]["config"]["kinds"] == [kind] and card["training"]["stopped_by"] == "epochs"
    assert card["calibration"]["native"]["n_images"] >= 20
    assert all(card["data"]["patients"][s] for s in ("train", "validation", "test"))


def test_learned_2d_is_in_the_default_scan():
    assert "learned_2d" in [d.name for d in load_detectors()]


def test_real_ct_slice_of_another_scanner_is_not_flagged():
    image = load(get_testdata_file("CT_small.dcm"))[0]
    ev = Learned2DDetector().detect(image)
    assert ev.details["mode"] == "native-tiles" and ev.score < 0.5 and not ev.regions
    assert ev.heatmap.shape == image.pixels.shape


def test_real_radiographs_are_not_flagged():
    files = sorted((SHARED / "xray" / "mhh-covid19" / "images").glob("*.png"))[:12]
    if not files:
        pytest.skip(f"{SHARED}: shared data folder not found")
    det = Learned2DDetector()
    scores = [det.detect(load(f)[0]).score for f in files]
    assert max(scores) < 0.5, scores
    thumb = sorted((SHARED / "xray" / "nih-cxr14" / "NIH1000").rglob("*.png"))[0]
    ev = det.detect(load(thumb)[0])
    assert ev.details.get("abstained") and ev.score == 0.0  # 64 px: below the model's min_size


def test_real_cr_dicom_from_another_source_is_not_flagged():
    image = load(get_testdata_file("RG1_UNCR.dcm"))[0] if get_testdata_file("RG1_UNCR.dcm") else None
    if image is None:
        pytest.skip("pydicom-data's RG1_UNCR.dcm is not installed")
    ev = Learned2DDetector().detect(image)
    assert ev.score < 0.5, ev.explanation
    assert np.isfinite(ev.details["raw"])


def _lidc_small(patient: str):
    path = SHARED / "ct" / "lidc-idri-small" / patient
    if not path.is_dir():
        pytest.skip(f"{path}: shared data folder not found")
    return load(path)[0]


def test_real_ct_series_is_scanned_over_its_lungs_and_not_flagged():
    image = _lidc_small("LIDC-IDRI-0003")  # the CT model's test patient, with a real 31 mm tumour
    ev = Learned2DDetector().detect(image)
    assert ev.details["mode"] == "series-tiles" and ev.details["slices_scored"] == image.pixels.shape[0]
    assert ev.score < 0.5 and not ev.regions, ev.explanation
    assert ev.full_heatmap(image.pixels.shape).shape == image.pixels.shape
    assert ev.heatmap.nbytes * 16 == image.pixels.nbytes   # 4x4 px cells, not a full-size float32 volume


def test_injected_tumours_in_a_held_out_series_are_found_where_they_are():
    """Eight injections (seeds 0-7) into a series the model never saw; forge keeps them 5 mm from
    the patient's real tumour (issue 18), so what is found is the injection. At least 6 of 8 must
    be found (score >= 0.5) with the strongest region within 16 mm of the injected centre: on the
    shipped model 7 of 8 are (seed 3's, in the lower lung, scores 0.19)."""
    from medforensics.core import Image
    from medforensics.forge import ct

    image = _lidc_small("LIDC-IDRI-0003")
    found = {}
    for seed in range(8):
        f = ct.inject(image, diameter_mm=16.0, nodule_type="solid", method="classic", seed=seed)
        forged = Image(pixels=f.pixels.astype(np.float32), spacing=image.spacing, modality="CT", format=image.format,
                       sources=image.sources, uid=image.uid + ".forged", affine=image.affine)
        ev = Learned2DDetector().detect(forged)
        hit = ev.score >= 0.5 and bool(ev.regions) and bool(ev.details["grad_cam"])
        if hit:
            top = np.asarray(ev.regions[0].center_voxel, float)
            dist_mm = np.linalg.norm((top - np.asarray(f.center_voxel, float)) * np.asarray(image.spacing, float))
            hit = dist_mm <= 16.0
        found[seed] = (round(ev.score, 2), hit)
    assert sum(hit for _, hit in found.values()) >= 6, found
