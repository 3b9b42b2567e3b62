"""The learned 2D detector: a trained classifier's fake probability, and Grad-CAM of its decision."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from medforensics.core import Image
from medforensics.detectors.learned2d import Learned2DDetector
from medforensics.learn.train import train
from medforensics.scan import analyze
from test_learn_train import _toy_config, _toy_dataset  # the same toy data: fakes carry 6x the noise


@pytest.fixture(scope="module")
def xray_model(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        toy = _toy_dataset(tmp_path_factory.mktemp("toy"), n_patients=12, per_patient=8)
        return train(_toy_config(epochs=6), toy, tmp_path_factory.mktemp("ckpt") / "xray.safetensors")
    finally:
        torch.set_num_threads(n)


@pytest.fixture
def use_model(xray_model, learned_checkpoints):
    learned_checkpoints(xray=xray_model)
    return xray_model


def _radiograph(noise: float, patch_noise: float | None = None, size: int = 48, seed: int = 1) -> Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 100 + 80 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.05) + 30 * xx + rng.normal(0, noise, (size, size))
    if patch_noise is not None:
        img[:size // 2, size // 2:] += rng.normal(0, patch_noise, (size // 2, size // 2))
    return Image.from_array(np.clip(img, 0, 255).astype(np.float32), modality="XR", format="png", name="toy.png")


def test_fake_probability_follows_the_trained_model(use_model):
    det = Learned2DDetector()
    clean, noisy = _radiograph(2.0), _radiograph(12.0)
    assert det.applies(clean)
    ev_clean, ev_noisy = det.detect(clean), det.detect(noisy)
    assert ev_clean.score < 0.5 < ev_noisy.score
    assert ev_noisy.details["class"] == "fake" and ev_clean.details["class"] == "real"
    assert set(ev_noisy.details["probabilities"]) == {"real", "fake"}
    assert "Grad-CAM" in ev_noisy.explanation


def test_grad_cam_heatmap_is_aligned_and_points_to_the_evidence(use_model):
    image = _radiograph(2.0, patch_noise=14.0)
    ev = Learned2DDetector().detect(image)
    assert ev.details["grad_cam"] is True
    assert ev.heatmap.shape == image.pixels.shape and ev.heatmap.dtype == np.float32
    assert 0.0 <= ev.heatmap.min() and ev.heatmap.max() <= 1.0 and ev.heatmap.max() > 0.5
    if ev.details["class"] == "fake":  # where it looked for "fake": the noisy quadrant
        inside = ev.heatmap[:24, 24:].mean()
        outside = np.concatenate([ev.heatmap[24:, :].ravel(), ev.heatmap[:24, :24].ravel()]).mean()
        assert inside > outside


def test_grad_cam_overlay_in_the_report_figures(use_model):
    verdict = analyze(_radiograph(2.0), [Learned2DDetector()], figures=True)
    assert "overlay:learned_2d" in verdict.figures, list(verdict.figures)  # shown even for an authentic decision


def test_no_checkpoint_no_opinion(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDFORENSICS_LEARNED_XRAY", str(tmp_path / "missing.safetensors"))
    monkeypatch.setenv("MEDFORENSICS_LEARNED_CT2D", str(tmp_path / "missing.safetensors"))
    det = Learned2DDetector()
    assert not det.applies(_radiograph(2.0))
    ct = Image.from_array(np.zeros((32, 32), np.float32) - 1000, modality="CT", format="dicom")
    assert not det.applies(ct)
