"""Block statistics shared by the noise-based detectors (vectorised over whole volumes)."""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

#: Immerkaer's 3x3 operator: blind to edges and ramps, it sees the noise.
IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
#: sigma = IMMERKAER_GAIN * mean(|IMMERKAER * I|) for white Gaussian noise.
IMMERKAER_GAIN = float(np.sqrt(np.pi / 2) / 6)


def immerkaer(img: np.ndarray) -> np.ndarray:
    """Per-pixel noise residual of a 2D image, scaled so that ``mean(|r|) * 1.2533`` is sigma."""
    return cv2.filter2D(img.astype(np.float32, copy=False), cv2.CV_32F, IMMERKAER) * (IMMERKAER_GAIN / 1.2533)


def blocks(a: np.ndarray, b: int) -> np.ndarray:
    """View a ``(z, h, w)`` array as ``(z, h//b, b, w//b, b)`` blocks (the ragged edge is dropped)."""
    z, h, w = a.shape
    return a[:, : h // b * b, : w // b * b].reshape(z, h // b, b, w // b, b)


def local_mean(d: np.ndarray, ok: np.ndarray, s: int = 2) -> np.ndarray:
    """Values averaged over ``s x s`` cells of a ``(z, gh, gw)`` grid, valid cells only (0 where
    fewer than half are valid): an edit is coherent over several blocks, noise is not."""
    k = np.ones((1, s, s))
    n = ndimage.convolve(ok.astype(np.float64), k, mode="constant")
    t = ndimage.convolve(np.where(ok, d, 0.0), k, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= s * s // 2 + 1, t / n, 0.0)


def cluster_mass(excess: np.ndarray) -> tuple[float, int]:
    """Largest sum of positive ``excess`` over a connected cluster of cells, and the number of
    cells with positive excess."""
    labels, n = ndimage.label(excess > 0)
    if n == 0:
        return 0.0, 0
    masses = ndimage.sum_labels(excess, labels, np.arange(1, n + 1))
    return float(masses.max()), int((excess > 0).sum())
