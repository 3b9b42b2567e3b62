"""Whole synthetic radiographs: files that look like the real ones (size, bit depth, format,
histogram, noise), plausible DICOM, determinism, training, and the CLI's refusals.

Most tests use a tiny generator trained here in seconds on six real images (anatomy is not the
point of these tests; what the finishing does to size, format and noise is). One test checks the
shipped checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medforensics.core import MedForensicsError
from medforensics.forge.synth import (SHIPPED_CHECKPOINT, TrainConfig, _corr_ratio, load_model, noise_sigma,
                                      synthesize, train, write_samples, write_synthetic)
from medforensics.io import load


@pytest.fixture(scope="module")
def tiny_root(shared_data, tmp_path_factory) -> Path:
    """A data root with four MHH PNGs, one NIH PNG and the SIIM DICOM (symbolic links)."""
    src = shared_data / "xray"
    picks = {"mhh-covid19/images": sorted((src / "mhh-covid19" / "images").glob("*.png"))[:4],
             "nih-cxr14": sorted((src / "nih-cxr14").glob("*.png"))[:1],
             "siim": sorted((src / "siim").glob("*.dcm"))[:1]}
    if not all(picks.values()):
        pytest.skip("the MHH, NIH and SIIM chest radiographs are not all in the shared data")
    root = tmp_path_factory.mktemp("xray_root")
    for sub, files in picks.items():
        d = root / "xray" / sub
        d.mkdir(parents=True)
        for f in files:
            (d / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def tiny_model(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    cfg = TrainConfig.small(image_size=32, latent_dim=16, base_channels=8, max_channels=32, disc_channels=8,
                            batch_size=6, steps=40, adv_start=0.5, lr=5e-3, max_minutes=5, threads=1)
    train(cfg, out, data_root=tiny_root, progress=False)
    return load_model(out)


def _real(tiny_root: Path, name: str) -> Path:
    return next((tiny_root / "xray").rglob(name))


# ------------------------------------------------------------------------------ training

def test_tiny_training_lowers_loss_and_writes_a_checkpoint_with_a_card(tiny_model):
    card = tiny_model.card
    assert card["architecture"] == "SynthXrayVAE"
    assert card["data"]["n_images"] == 6 and len(card["references"]) == 6
    assert {r["format"] for r in card["references"]} == {"png", "dicom"}
    hist = card["training"]["history"]
    assert card["training"]["steps_done"] == 40 and card["training"]["wall_time_s"] > 0
    first = np.mean([h["recon_l1"] for h in hist[:4]])
    last = np.mean([h["recon_l1"] for h in hist[-4:]])
    assert last < 0.85 * first, (first, last)
    assert any(h["disc"] > 0 for h in hist)          # the adversarial term ran
    assert tiny_model.generate(np.zeros((2, 16))).shape == (2, 32, 32)


def test_gpu_preset_code_path_runs_on_cpu_with_a_tiny_step_count(tiny_root, tmp_path):
    cfg = TrainConfig.gpu(device="cpu", image_size=32, base_channels=4, max_channels=16, disc_channels=8,
                          latent_dim=16, batch_size=4, steps=3, adv_start=0.0, threads=1)
    assert cfg.name == "gpu" and cfg.adv_weight > 0
    p = train(cfg, tmp_path / "gpu.safetensors", data_root=tiny_root, progress=False)
    m = load_model(p)
    assert m.config.name == "gpu" and m.card["training"]["steps_done"] == 3


def test_training_refuses_to_overwrite_and_bad_presets(tiny_root, tmp_path):
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError):
        train("small", existing, data_root=tiny_root, progress=False)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(MedForensicsError, match="unknown training preset"):
        TrainConfig.preset("huge")
    with pytest.raises(MedForensicsError, match="no xray folder"):
        train("small", tmp_path / "new.safetensors", data_root=tmp_path, progress=False)


# ------------------------------------------------------------------------------ realistic output

def test_samples_have_the_size_bit_depth_histogram_and_noise_of_their_real_reference(tiny_model, tiny_root):
    samples = synthesize(6, seed=3, model=tiny_model, fmt="like")
    for s in samples:
        ref = s.reference
        assert s.pixels.shape == (ref.rows, ref.cols) and s.pixels.dtype == np.uint8 and s.bit_depth == 8
        real = load(_real(tiny_root, ref.name))[0].pixels
        assert real.shape == s.pixels.shape
        # histogram matched: percentiles within 3 % of full scale
        q = np.linspace(1, 99, 25)
        assert np.abs(np.percentile(s.pixels, q) - np.percentile(real, q)).mean() < 0.03 * 255
        # noise level (high-pass) within a factor 1.5 of the real reference, correlation alike
        ratio = noise_sigma(s.pixels) / noise_sigma(real)
        assert 1 / 1.5 < ratio < 1.5, (ref.name, ratio)
        # noise grain alike (ratio of fine-scale energy after 2x2 binning; 0.5 for white noise), for
        # lossless references (a JPEG-compressed one is matched again by the JPEG written for it)
        if ref.format == "png":
            assert abs(_corr_ratio(s.pixels) - _corr_ratio(real)) < 0.35, ref.name
        # and far from the smooth upsampled generator output it would be without finishing
        import cv2
        smooth = cv2.resize(s.low_res, (ref.cols, ref.rows), interpolation=cv2.INTER_CUBIC) * 255
        assert noise_sigma(smooth) < 0.5 * noise_sigma(real)
    gt = samples[0].ground_truth
    assert gt["synthetic"] and gt["seed"] == 3 and gt["reference"]["name"] == samples[0].reference.name


def test_written_files_load_with_the_real_formats_and_bit_depths(tiny_model, tmp_path):
    paths = write_samples(tmp_path / "out", 6, seed=1, fmt="mixed", model=tiny_model)
    assert len(paths) == 6 and len({p.suffix for p in paths}) >= 2
    for p in paths:
        gt = json.loads(p.with_name(p.name + ".json").read_text())
        assert gt["synthetic"] is True and gt["file"]["file"] == p.name
        im = load(p)[0]
        assert im.pixels.shape == tuple(gt["reference"]["size"])
        if p.suffix == ".png":
            assert im.format == "png" and im.meta["bit_depth"] == 8
        elif p.suffix == ".jpg":
            assert im.format == "jpeg" and 85 <= gt["file"]["jpeg_quality"] <= 95
        else:
            assert im.format == "dicom" and im.modality == "CR"
    with pytest.raises(FileExistsError):
        write_samples(tmp_path / "out", 1, model=tiny_model)


def test_dicom_like_the_real_one_and_cr_style_have_plausible_headers(tiny_model, tmp_path):
    s = synthesize(2, seed=0, model=tiny_model, fmt="dicom")
    a = write_synthetic(s[0].pixels, tmp_path / "a.dcm", "dicom", reference=s[0].reference, seed=1)
    b = write_synthetic(s[1].pixels, tmp_path / "b.dcm", "dicom", reference=s[1].reference, seed=2)
    c = write_synthetic(s[0].pixels, tmp_path / "c.dcm", "dicom", reference=s[0].reference, dicom_style="cr", seed=3)
    da, db, dc = (pydicom.dcmread(p) for p in (a, b, c))
    # like the real SIIM file: its SOP class, 8 bits, JPEG baseline, its pixel spacing and UID root
    assert s[0].reference.format == "dicom" and s[0].pixels.shape == (1024, 1024)
    assert da.Modality == "CR" and da.BitsStored == 8 and da.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert [float(v) for v in da.PixelSpacing] == pytest.approx([0.168, 0.168])
    assert str(da.SOPInstanceUID).startswith("1.2.276.0.7230010.3.")
    assert da.SOPInstanceUID != db.SOPInstanceUID and da.StudyInstanceUID != db.StudyInstanceUID
    assert da.PatientID != db.PatientID and len(da.PatientID) == 36
    assert np.abs(da.pixel_array.astype(int) - s[0].pixels).mean() < 3      # lossy, but close
    # CR style: CR Image Storage, 12 bits, MONOCHROME2, a maker and model, spacing 0.14-0.2 mm
    assert dc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1" and dc.Modality == "CR"
    assert dc.BitsStored == 12 and dc.BitsAllocated == 16 and dc.PhotometricInterpretation == "MONOCHROME2"
    assert dc.Manufacturer and dc.ManufacturerModelName and dc.PatientID and dc.StudyDate
    assert all(0.14 <= float(v) <= 0.2 for v in dc.PixelSpacing)
    assert int(dc.pixel_array.max()) <= 4095 and int(dc.pixel_array.max()) > 255
    for ds in (da, dc):
        im = load(a if ds is da else c)[0]
        assert im.modality == "CR" and im.pixels.shape == (1024, 1024)
        text = " ".join(str(el.value) for el in ds.iterall() if el.VR not in ("OB", "OW", "UN")).lower()
        assert "synth" not in text and "medforensics" not in text and "fake" not in text


def test_deterministic_per_seed(tiny_model):
    a = synthesize(3, seed=7, model=tiny_model, fmt="png")
    b = synthesize(3, seed=7, model=tiny_model, fmt="png")
    c = synthesize(3, seed=8, model=tiny_model, fmt="png")
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    assert not all(x.pixels.shape == y.pixels.shape and np.array_equal(x.pixels, y.pixels) for x, y in zip(a, c))
    # sample i depends only on (seed, i)
    assert np.array_equal(synthesize(1, seed=7, model=tiny_model, fmt="png")[0].pixels, a[0].pixels)


def test_bad_input_gives_one_line_errors(tiny_model, tmp_path):
    with pytest.raises(MedForensicsError, match="unknown format"):
        synthesize(1, model=tiny_model, fmt="gif")
    with pytest.raises(MedForensicsError, match="2D uint8 or uint16"):
        write_synthetic(np.zeros((4, 4, 3), np.uint8), tmp_path / "x.png")
    with pytest.raises(MedForensicsError, match="not a readable safetensors"):
        (tmp_path / "bad.safetensors").write_bytes(b"nope")
        load_model(tmp_path / "bad.safetensors")
    existing = tmp_path / "y.png"
    existing.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        write_synthetic(np.zeros((4, 4), np.uint8), existing)
    assert existing.read_bytes() == b"keep"


# ------------------------------------------------------------------------------ shipped model and CLI

def test_shipped_checkpoint_loads_and_samples_like_the_real_data():
    if not SHIPPED_CHECKPOINT.is_file():
        pytest.fail(f"shipped checkpoint {SHIPPED_CHECKPOINT} is missing")
    assert SHIPPED_CHECKPOINT.stat().st_size <= 20e6  # float16 storage of the gpu preset
    m = load_model()
    assert m.card["data"]["n_images"] >= 240 and m.card["config"]["image_size"] >= 128
    sizes = {(r.rows, r.cols) for r in m.references}
    s = synthesize(2, seed=0, fmt="like")
    assert all((x.pixels.shape in sizes) for x in s)
    assert s[0].low_res.shape == (m.config.image_size,) * 2 and 0.05 < s[0].low_res.std() < 0.5


def test_cli_synthesizes_and_refuses_to_overwrite(tiny_model, tmp_path, run_cli):
    out = tmp_path / "fakes"
    r = run_cli("forge", "synthesize", "--n", "2", "--out", str(out), "--format", "jpeg", "--model", str(tiny_model.path))
    assert r.returncode == 0, r.stderr
    assert "wrote 2 synthetic radiographs" in r.stdout
    assert len(list(out.glob("*.jpg"))) == 2 and len(list(out.glob("*.jpg.json"))) == 2
    before = sorted(p.name for p in out.iterdir())
    r = run_cli("forge", "synthesize", "--n", "1", "--out", str(out), "--model", str(tiny_model.path))
    assert r.returncode == 2 and "not an empty folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == before
    ck = tmp_path / "exists.safetensors"
    ck.write_bytes(b"x")
    r = run_cli("forge", "train-synth", "--config", "small", "--out", str(ck))
    assert r.returncode == 2 and "already exists" in r.stderr and ck.read_bytes() == b"x"
    r = run_cli("forge", "synthesize", "--n", "1", "--out", str(tmp_path / "new"), "--format", "gif", "--model",
             str(tiny_model.path))
    assert r.returncode == 1 and "unknown --format" in r.stderr
