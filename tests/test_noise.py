"""medforensics.noise: the shared noise and robust-statistics primitives."""
from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from medforensics import noise
from medforensics.noise import estimate_sigma, immerkaer_response, mad_sigma, robust_z


@pytest.mark.parametrize("sigma", [0.5, 3.0, 40.0])
def test_estimate_sigma_recovers_gaussian_noise(sigma):
    rng = np.random.default_rng(int(sigma * 10))
    img = 500.0 + sigma * rng.standard_normal((300, 300))
    assert estimate_sigma(img) == pytest.approx(sigma, rel=0.03)


def test_estimate_sigma_ignores_smooth_structure():
    rng = np.random.default_rng(2)
    rows, cols = np.mgrid[:200, :200].astype(np.float64)
    smooth = 3.0 * rows + 0.5 * cols + 40 * np.sin(rows / 40.0)   # ramps and a slow wave
    assert estimate_sigma(smooth) < 0.05
    assert estimate_sigma(smooth + 2.0 * rng.standard_normal(smooth.shape)) == pytest.approx(2.0, rel=0.04)


def test_exclude_edges_removes_sharp_edges():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    img = 1000.0 * ((yy - 128) ** 2 + (xx - 128) ** 2 < 80 ** 2) + 5.0 * rng.standard_normal((256, 256))
    assert estimate_sigma(img) > 8.0                       # the disc's rim dominates
    assert estimate_sigma(img, exclude_edges=0.02) == pytest.approx(5.0, rel=0.05)
    # leaving out more of the noise's own tail biases the estimate low, monotonically
    s = [estimate_sigma(img, exclude_edges=q) for q in (0.02, 0.05, 0.2)]
    assert s[0] > s[1] > s[2]
    assert estimate_sigma(np.full((10, 10), 3.0), exclude_edges=0.1) == 0.0
    with pytest.raises(ValueError):
        estimate_sigma(img, exclude_edges=1.0)


def test_exclude_edges_convention():
    """Strictly below the (1 - q) quantile of the interior responses, as forge.synth.noise_profile does."""
    rng = np.random.default_rng(4)
    img = rng.integers(0, 4096, (64, 48)).astype(np.uint16)
    a = immerkaer_response(img)[1:-1, 1:-1]
    expect = math.sqrt(math.pi / 2) / 6 * a[a < np.quantile(a, 0.95)].mean()
    assert estimate_sigma(img, exclude_edges=0.05) == expect


def _synth_noise_sigma(pixels):
    """forge.synth.noise_sigma as it was before it moved here (frozen, to pin the numbers)."""
    import cv2
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    a = np.abs(cv2.filter2D(np.asarray(pixels, np.float64), -1, kernel, borderType=cv2.BORDER_REFLECT))[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) / 6 * a.mean())


def test_estimate_sigma_matches_the_former_forge_synth_noise_sigma():
    rng = np.random.default_rng(5)
    for img in (rng.standard_normal((64, 80)), rng.integers(0, 255, (90, 100)).astype(np.uint8),
                (rng.random((50, 50)) * 4000).astype(np.float32), rng.integers(0, 65535, (33, 47)).astype(np.uint16)):
        assert estimate_sigma(img) == _synth_noise_sigma(img)


def test_immerkaer_response_shape_dtype():
    img = np.arange(30, dtype=np.uint8).reshape(5, 6)
    r = immerkaer_response(img)
    assert r.shape == img.shape and r.dtype == np.float64 and (r >= 0).all()


def test_mad_sigma_normal_sample():
    x = np.random.default_rng(6).standard_normal(200_000)
    assert mad_sigma(x) == pytest.approx(1.0, abs=0.01)
    assert mad_sigma(3 * x + 7) == pytest.approx(3.0, abs=0.03)
    assert isinstance(mad_sigma(x), float)


def test_mad_sigma_matches_the_formula_and_keeps_dtype():
    x = np.random.default_rng(7).random((40, 30)).astype(np.float32)
    assert mad_sigma(x) == float(1.4826 * np.median(np.abs(x - np.median(x))))
    got = mad_sigma(x, axis=1)
    want = 1.4826 * np.median(np.abs(x - np.median(x, axis=1)[:, None]), axis=1)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_mad_sigma_nan_policy():
    x = np.array([[1.0, 2.0, 4.0, np.nan], [0.0, 1.0, 1.0, 9.0]])
    omit = mad_sigma(x, axis=1, nan_policy="omit")
    assert omit == pytest.approx([1.4826, 0.7413])
    assert np.isnan(mad_sigma(x, axis=1)[0])
    with pytest.raises(ValueError):
        mad_sigma(x, nan_policy="raise")


def test_robust_z():
    v = np.array([1.0, 2.0, 3.0, np.nan, 4.0, 100.0])
    z = robust_z(v)
    assert z[2] == 0.0 and np.isnan(z[3]) and z[-1] > 50
    assert np.array_equal(robust_z(np.ones(5)), np.zeros(5))
    # a floor larger than the spread: no score
    assert np.array_equal(robust_z(v, floor=1e9), np.zeros_like(v))


def test_noise_doctests_run():
    res = doctest.testmod(noise, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.attempted >= 10 and res.failed == 0
