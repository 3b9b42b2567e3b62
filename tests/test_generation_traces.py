"""spectral and radiograph_physics: what generators cannot easily fake (issue 13, item 2).

A real radiograph passes; the same radiograph up-sampled by a transposed convolution, or with a
region whose noise was replaced by smooth generated texture, is flagged (with the region in the
right place); images whose cue is gone (a small, heavily compressed export; posterised) are not
assessed.
"""
from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from medforensics.core import Image
from medforensics.detectors.base import available_detectors, load_detectors
from medforensics.learn.export import jpeg

MHH = ("xray", "mhh-covid19", "images")
NAMES = ("spectral", "radiograph_physics")


def _radiographs(shared_data: Path, n: int) -> list[np.ndarray]:
    from PIL import Image as PILImage

    folder = shared_data.joinpath(*MHH)
    files = sorted(folder.glob("*.png"))
    if len(files) < n:
        pytest.skip(f"Hannover radiographs not found in {folder}")
    step = len(files) // n
    return [np.asarray(PILImage.open(f).convert("L"), np.float32) for f in files[::step][:n]]


def _xr(a: np.ndarray, fmt: str = "png") -> Image:
    return Image.from_array(a, modality="XR", format=fmt, name=f"x.{fmt}")


def tconv2x(a: np.ndarray, seed: int = 0) -> np.ndarray:
    """A decoder's 2x stage: area-downsample, then a stride-2 transposed convolution (zeros inserted,
    a 4x4 kernel: bilinear weights perturbed at random, as a learned kernel is)."""
    rng = np.random.default_rng(seed)
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    small = cv2.resize(a[:h, :w], (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    z = np.zeros((h, w), np.float32)
    z[::2, ::2] = small
    k = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25]) * (1 + 0.3 * rng.standard_normal((4, 4)))
    out = cv2.filter2D(z, cv2.CV_32F, k.astype(np.float32), borderType=cv2.BORDER_REFLECT)
    out *= small.mean() / max(out.mean(), 1e-6)
    res = a.copy()
    res[:h, :w] = out
    return np.clip(np.round(res), 0, 255)


def _overlaps(region, box) -> bool:
    r0, c0, r1, c1 = region.bbox_voxel
    return r0 < box[2] and box[0] < r1 and c0 < box[3] and box[1] < c1


def test_registered_default_and_low_confidence():
    reg = available_detectors()
    for n in NAMES:
        assert n in reg
    assert {d.name for d in load_detectors()} >= set(NAMES)


def test_real_radiographs_pass(shared_data):
    dets = load_detectors(NAMES)
    for a in _radiographs(shared_data, 6):
        for d in dets:
            im = _xr(a)
            assert d.out_of_domain(im) is None
            ev = d.detect(im)
            assert ev.score < 0.5, (d.name, ev.details)
            assert ev.indicates == "synthesis" and ev.confidence == "low"


def test_real_radiographs_after_one_jpeg_save_pass(shared_data):
    dets = load_detectors(NAMES)
    for q, a in zip((75, 85, 95), _radiographs(shared_data, 3)):
        im = _xr(np.round(jpeg(a / 255.0, q) * 255), "png")   # a JPEG decoded and kept as PNG
        for d in dets:
            if d.out_of_domain(im) is None:
                assert d.detect(im).score < 0.5, (d.name, q)


def test_transposed_conv_upsampled_radiograph_flagged_also_after_jpeg(shared_data):
    a = _radiographs(shared_data, 1)[0]
    spectral = load_detectors(["spectral"])[0]
    fake = tconv2x(a)
    ev = spectral.detect(_xr(fake))
    assert ev.score >= 0.5 and "period 2" in ev.explanation
    ev = spectral.detect(_xr(np.round(jpeg(fake / 255.0, 90) * 255), "png"))
    assert ev.score >= 0.5, ev.details


def test_upsampled_region_flagged_in_place(shared_data):
    a = _radiographs(shared_data, 1)[0]
    phys = load_detectors(["radiograph_physics"])[0]
    box = (180, 240, 340, 400)
    fake = a.copy()
    fake[box[0]:box[2], box[1]:box[3]] = tconv2x(a, seed=1)[box[0]:box[2], box[1]:box[3]]
    ev = phys.detect(_xr(fake))
    assert ev.score >= 0.5, ev.details
    assert ev.regions and _overlaps(ev.regions[0], box)
    heat = ev.full_heatmap(a.shape)   # kept coarse (Evidence.heatmap_scale), drawn at full size here
    assert ev.heatmap.size < heat.size and heat[box[0]:box[2], box[1]:box[3]].mean() > heat.mean()


def test_smooth_generated_texture_flagged_in_place(shared_data):
    a = _radiographs(shared_data, 1)[0]
    phys = load_detectors(["radiograph_physics"])[0]
    box = (200, 150, 360, 310)
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(a, (0, 0), 1.5) + cv2.GaussianBlur(rng.normal(0, 3, a.shape).astype(np.float32), (0, 0), 1.0)
    fake = a.copy()
    fake[box[0]:box[2], box[1]:box[3]] = np.round(texture[box[0]:box[2], box[1]:box[3]])
    ev = phys.detect(_xr(fake))
    assert ev.score >= 0.5, ev.details
    assert ev.regions and _overlaps(ev.regions[0], box)


def test_downsampled_web_export_and_posterised_not_assessed(shared_data):
    a = _radiographs(shared_data, 1)[0]
    h, w = a.shape
    small = cv2.resize(a, (int(w * 0.35), int(h * 0.35)), interpolation=cv2.INTER_AREA)
    dets = load_detectors(NAMES)
    for d in dets:
        why = d.out_of_domain(_xr(np.round(small)))
        assert why and "too small" in why
    poster = np.round(a / 32) * 32
    for d in dets:
        assert "posterised" in (d.out_of_domain(_xr(poster)) or "")
    ct = Image.from_array(a, modality="CT")
    for d in dets:
        assert "modality CT" in (d.out_of_domain(ct) or "")


def test_heavy_jpeg_file_not_assessed(shared_data, tmp_path):
    from PIL import Image as PILImage

    from medforensics.io import load_source, discover

    a = _radiographs(shared_data, 1)[0]
    p = tmp_path / "export.jpg"
    PILImage.fromarray(a.astype(np.uint8)).save(p, quality=50)
    sources, _ = discover([str(p)])
    im = load_source(sources[0])
    for d in load_detectors(NAMES):
        why = d.out_of_domain(im)
        assert why and "JPEG at quality about 50" in why


def test_no_noise_left_not_assessed_by_physics():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:400, 0:400]
    smooth = 60 + 120 * np.exp(-((yy - 200) ** 2 + (xx - 200) ** 2) / 2e4) + rng.normal(0, 0.05, (400, 400))
    phys = load_detectors(["radiograph_physics"])[0]
    assert "almost no noise" in (phys.out_of_domain(_xr(np.round(smooth))) or "")


def test_detect_is_fast_enough(shared_data):
    import time

    a = _radiographs(shared_data, 1)[0]
    for d in load_detectors(NAMES):
        im = _xr(a)
        d.detect(im)
        t = time.perf_counter()
        d.detect(im)
        assert time.perf_counter() - t < 0.3, d.name


@pytest.mark.parametrize("module", ["medforensics.detectors.spectral", "medforensics.detectors.radiograph_physics"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_whole_image_trace_counts_in_dicom_but_is_processing_in_raster_exports(shared_data):
    a = _radiographs(shared_data, 1)[0]
    spectral = load_detectors(["spectral"])[0]
    fake = tconv2x(a)
    assert spectral.detect(_xr(fake)).indicates == "processing"          # an export enlarged for display
    dx = Image.from_array(fake, modality="DX", format="dicom")
    ev = spectral.detect(dx)
    assert ev.score >= 0.5 and ev.indicates == "synthesis" and ev.counts


def test_lossy_jpeg2000_dicom_not_assessed():
    pytest.importorskip("data_store", reason="pydicom-data not installed")
    from pydicom.data import get_testdata_file

    from medforensics.io import discover, load_source

    path = get_testdata_file("RG3_UNCI.dcm")      # a CR once compressed 30:1 with JPEG 2000, stored uncompressed
    if path is None:
        pytest.skip("RG3_UNCI.dcm not in pydicom-data")
    im = load_source(discover([path])[0][0])
    for d in load_detectors(NAMES):
        assert "lossy compression" in (d.out_of_domain(im) or "")
