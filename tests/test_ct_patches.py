"""CT patches as the CT-GAN dataset ships them (issue 13, item 3): ``forge dataset --patches``
and the ``ct_patch`` detector that scans 32-128 px CT crops."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage

from medforensics.core import Image
from medforensics.io import load, load_instance

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def patches(shared_data, tmp_path_factory) -> Path:
    """64 px patches of the two short LIDC series (0002, 0003) and their readers' XML."""
    from medforensics.forge.dataset import DatasetConfig
    from medforensics.forge.patches import build_patches

    small = shared_data / "ct" / "lidc-idri-small"
    if not small.is_dir():
        pytest.skip("ct/lidc-idri-small not in the shared data")
    root = tmp_path_factory.mktemp("data")
    (root / "ct" / "lidc-idri").mkdir(parents=True)
    (root / "ct" / "lidc-idri-small").symlink_to(small)
    for case in ("LIDC-IDRI-0002", "LIDC-IDRI-0003"):  # the readers' XML of the short series
        (root / "ct" / "lidc-idri" / case).symlink_to(shared_data / "ct" / "lidc-idri" / case)
    tcia = shared_data / "ct" / "slices" / "tcia-covid19-ny-sbu" / "A002304"
    if tcia.is_dir():  # single CT slices of another patient and scanner give TB crops too
        (root / "ct" / "slices" / "tcia-covid19-ny-sbu").mkdir(parents=True)
        (root / "ct" / "slices" / "tcia-covid19-ny-sbu" / "A002304").symlink_to(tcia)
    cfg = DatasetConfig(seed=0, min_injections=4, removals_per_nodule=2, ct_methods=("classic",))
    return build_patches(root, tmp_path_factory.mktemp("out") / "patches", cfg, size=64)


def _rows(manifest: Path) -> list[dict]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def test_patches_have_the_four_classes_centred_and_written_twice(patches):
    from medforensics.forge.dataset import MANIFEST_COLUMNS, check_patient_disjoint
    from medforensics.forge.patches import lung_window_png

    with open(patches, newline="") as fh:
        assert csv.DictReader(fh).fieldnames == MANIFEST_COLUMNS
    rows = _rows(patches)
    classes = {r["class"] for r in rows}
    assert classes == {"TB", "TM", "FB", "FM"}
    check_patient_disjoint(patches)
    root = patches.parent
    sops = set()
    for r in rows:
        dcm = load_instance(root / r["file"])
        assert dcm.pixels.shape == (64, 64) and dcm.modality == "CT" and r["kind"] == "ct-slice"
        png = np.asarray(PILImage.open(root / json.loads(r["params"])["png"]))
        assert png.dtype == np.uint8 and png.shape == (64, 64)
        assert np.array_equal(png, lung_window_png(dcm.pixels))  # the PNG is the DICOM through the lung window
        mask = np.asarray(PILImage.open(root / r["mask"])) > 0
        assert mask.any() == (r["label"] == "fake")
        cy, cx = json.loads(r["center_voxel"])
        if r["class"] in ("FM", "FB", "TM"):  # centred on the nodule (or as near as the slice's edge allows)
            top, left = json.loads(r["params"])["crop_top_left"]
            assert (cy, cx) == (32, 32) or top in (0, 512 - 64) or left in (0, 512 - 64)
        if r["label"] == "fake":
            assert mask[cy, cx] or mask[max(0, cy - 8):cy + 8, max(0, cx - 8):cx + 8].any()
        ds = pydicom.dcmread(root / r["file"])
        assert ds.SOPInstanceUID not in sops
        sops.add(ds.SOPInstanceUID)
    tm = [r for r in rows if r["class"] == "TM"]
    assert tm and all(json.loads(r["params"])["malignancy"] >= 3 for r in tm)
    methods = {r["method"] for r in rows if r["class"] == "TB"}
    assert {"random-lung", "dense-lung"} <= methods
    for r in rows:
        if r["method"] == "dense-lung":  # centred on real dense tissue in the lung
            hu = load_instance(root / r["file"]).pixels
            cy, cx = json.loads(r["center_voxel"])
            assert hu[max(0, cy - 3):cy + 4, max(0, cx - 3):cx + 4].max() > -500
    single = [r for r in rows if r["source_dataset"] == "tcia-covid19-ny-sbu"]
    if single:
        assert {r["class"] for r in single} == {"TB"} and all(r["slice"] == "" for r in single)


def test_dicom_crop_keeps_the_series_headers_and_moves_its_position(patches, shared_data):
    r = next(r for r in _rows(patches) if r["class"] == "FM")
    crop = pydicom.dcmread(patches.parent / r["file"])
    src_path = next((shared_data / "ct" / "lidc-idri-small").rglob(r["source_file"]))
    src = pydicom.dcmread(src_path)
    for tag in ("PatientID", "StudyInstanceUID", "Manufacturer", "RescaleIntercept", "PixelSpacing", "SliceThickness",
                "ImageOrientationPatient", "KVP"):
        assert crop.get(tag) == src.get(tag), tag
    assert (crop.Rows, crop.Columns) == (64, 64)
    assert crop.SOPInstanceUID != src.SOPInstanceUID and crop.SeriesInstanceUID != src.SeriesInstanceUID
    top, left = json.loads(r["params"])["crop_top_left"]
    a, b = load_instance(patches.parent / r["file"]), load_instance(src_path)
    assert np.allclose(a.voxel_to_mm((0, 0)), b.voxel_to_mm((top, left)), atol=1e-3)
    # the crop's HU are the forged slice's: the real slice there differs only inside the mask
    mask = np.asarray(PILImage.open(patches.parent / r["mask"])) > 0
    real = b.pixels[top:top + 64, left:left + 64]
    assert np.array_equal(a.pixels[~mask], real[~mask]) and not np.array_equal(a.pixels[mask], real[mask])


def test_patches_refuse_an_existing_folder_and_bad_sizes(patches, tmp_path, run_cli):
    from medforensics.forge.patches import build_patches

    with pytest.raises(FileExistsError):
        build_patches(patches.parent.parent, patches.parent)
    with pytest.raises(ValueError, match="patch size"):
        build_patches(patches.parent.parent, tmp_path / "new", size=50)
    res = run_cli("forge", "dataset", "--patches", "50", "--out", tmp_path / "p")
    assert res.returncode == 2 and "--patches takes one of" in res.stderr + res.stdout
    res = run_cli("forge", "dataset", "--patches", "64", "--data", tmp_path / "missing", "--out", tmp_path / "q")
    assert res.returncode == 1 and str(tmp_path / "missing") in res.stderr + res.stdout
    assert len((res.stderr + res.stdout).strip().splitlines()) == 1


# ------------------------------------------------------------------------------------ detector

@pytest.fixture(scope="module")
def detector():
    from medforensics.detectors.ct_patch import CTPatchDetector, checkpoint_path

    if not checkpoint_path().is_file():
        pytest.skip("no ct_patch checkpoint")
    return CTPatchDetector()


def test_ct_patch_is_registered_and_in_the_default_scan():
    from medforensics.detectors.base import available_detectors, load_detectors

    assert "ct_patch" in available_detectors()
    assert "ct_patch" in [d.name for d in load_detectors()]


def test_dicom_and_png_of_a_patch_get_the_same_low_confidence_score(patches, detector):
    rows = _rows(patches)
    for cls in ("TB", "FM"):
        r = next(r for r in rows if r["class"] == cls)
        dcm = load(patches.parent / r["file"])[0]
        png = load(patches.parent / json.loads(r["params"])["png"])[0]
        for img in (dcm, png):
            assert detector.applies(img) and detector.out_of_domain(img) is None
        a, b = detector.detect(dcm), detector.detect(png)
        assert a.score == pytest.approx(b.score, abs=1e-6) and a.details["raw"] == pytest.approx(b.details["raw"])
        assert a.indicates == "manipulation" and a.confidence == "low"
        assert a.heatmap.shape == (64, 64) and 0.0 <= a.score <= 1.0


def test_ct_patch_reads_32_px_crops_and_only_small_crops(patches, detector, lidc_series_dir):
    r = next(r for r in _rows(patches) if r["class"] == "FM")
    dcm = load(patches.parent / r["file"])[0]
    small = Image(pixels=dcm.pixels[16:48, 16:48].copy(), spacing=dcm.spacing, modality="CT", format="dicom",
                  sources=dcm.sources, uid="x", datasets=dcm.datasets)
    assert detector.out_of_domain(small) is None
    ev = detector.detect(small)
    assert ev.heatmap.shape == (32, 32) and ev.details["tiles"] == 1
    tiny = Image(pixels=dcm.pixels[:24, :24].copy(), spacing=dcm.spacing, modality="CT", format="dicom",
                 sources=dcm.sources, uid="y", datasets=dcm.datasets)
    assert "not a crop of 32-128 px" in detector.out_of_domain(tiny)
    full = load_instance(sorted(lidc_series_dir.glob("*.dcm"))[60])
    assert "not a crop" in detector.out_of_domain(full)
    series = load(lidc_series_dir)[0]
    assert not detector.applies(series)  # series are learned_2d's and ct_physics'


def test_ct_patch_leaves_radiograph_thumbnails_and_other_rasters_alone(shared_data, detector, tmp_path):
    nih = sorted((shared_data / "xray" / "nih-cxr14" / "NIH1000").rglob("*.png"))[:40]
    if not nih:
        pytest.skip("NIH 64 px radiographs not in the shared data")
    reasons = [detector.out_of_domain(load(f)[0]) for f in nih]
    assert all(reasons), [f.name for f, why in zip(nih, reasons) if not why]
    assert "middle band" in reasons[0]
    g = (np.random.default_rng(0).random((64, 64)) * 60).astype(np.uint8)
    PILImage.fromarray(g).save(tmp_path / "a.jpg", quality=95)
    assert "JPEG" in detector.out_of_domain(load(tmp_path / "a.jpg")[0])
    PILImage.fromarray(g.astype(np.uint16) * 256).save(tmp_path / "b.png")
    assert "16-bit" in detector.out_of_domain(load(tmp_path / "b.png")[0])


def test_scan_assesses_a_patch_and_leaves_full_slices_as_they_were(patches, detector, lidc_series_dir):
    from medforensics.scan import analyze

    r = next(r for r in _rows(patches) if r["class"] == "FM")
    v = analyze(load(patches.parent / json.loads(r["params"])["png"])[0])
    assert "ct_patch" in [e.detector for e in v.evidence]
    assert v.label in ("authentic", "suspicious")  # low confidence alone never convicts
    full = analyze(load_instance(sorted(lidc_series_dir.glob("*.dcm"))[60]))
    assert "ct_patch" not in [e.detector for e in full.evidence]
    assert "ct_patch" in full.not_assessed


def test_levels_round_the_models_input_to_8_bits():
    from medforensics.learn.data import default_preprocess, quantise
    from medforensics.learn.train import TrainConfig

    pre = default_preprocess(64, 64, resize="none", levels=255)
    assert pre["levels"] == 255 and "levels" not in default_preprocess(64, 64)
    a = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    q = quantise(a, pre)
    assert np.allclose(q * 255, np.round(q * 255), atol=1e-4) and np.abs(q - a).max() <= 0.5 / 255 + 1e-6
    assert quantise(a, default_preprocess(64, 64)) is not None and np.array_equal(quantise(a, {}), a)
    with pytest.raises(ValueError, match="levels"):
        TrainConfig(levels=-1)


def test_learned_2d_leaves_ct_crops_to_ct_patch():
    """A CT crop is not scored twice: learned_2d (calibrated on whole slices) does not assess it."""
    import numpy as np

    from medforensics.core import Image
    from medforensics.detectors.learned2d import CT_MIN_SIDE, Learned2DDetector

    det = Learned2DDetector()
    crop = Image(pixels=np.full((64, 64), -700.0, np.float32), spacing=(0.7, 0.7), modality="CT", format="dicom",
                 sources=[], uid="1.2.3")
    why = det.out_of_domain(crop)
    assert why and "64x64" in why and "ct_patch" in why
    whole = Image(pixels=np.full((CT_MIN_SIDE, 256), -700.0, np.float32), spacing=(0.7, 0.7), modality="CT",
                  format="dicom", sources=[], uid="1.2.4")
    assert det.out_of_domain(whole) is None
