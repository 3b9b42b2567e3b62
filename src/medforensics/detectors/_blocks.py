"""Block statistics shared by the noise-based detectors (vectorised over whole volumes)."""
from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from ..noise import IMMERKAER_GAIN, IMMERKAER_KERNEL

#: Immerkaer's 3x3 operator (:mod:`medforensics.noise`) in float32, for OpenCV.
IMMERKAER = IMMERKAER_KERNEL.astype(np.float32)


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


#: block-boundary steps this much above the in-block steps: a JPEG grid
GRID_RATIO = 1.04


def jpeg_grid(img: np.ndarray) -> tuple[bool, int, float]:
    """Whether the pixels carry a JPEG 8x8 block grid: ``(found, offset, ratio)``, the offset of the
    first column of a block and the ratio of the mean step across block boundaries to the mean
    step inside blocks (both axes pooled).

    >>> rng = np.random.default_rng(0)
    >>> jpeg_grid(rng.normal(100, 5, (128, 128)))[0]
    False
    """
    a = np.asarray(img, np.float32)
    sx = np.abs(np.diff(a, axis=1)).mean(axis=0)   # step between column j and j + 1
    sy = np.abs(np.diff(a, axis=0)).mean(axis=1)
    px = np.bincount(np.arange(sx.size) % 8, weights=sx, minlength=8) / np.bincount(np.arange(sx.size) % 8, minlength=8)
    py = np.bincount(np.arange(sy.size) % 8, weights=sy, minlength=8) / np.bincount(np.arange(sy.size) % 8, minlength=8)
    prof = px + py
    b = int(np.argmax(prof))                          # the step from phase b to b + 1 crosses the boundary
    others = np.delete(prof, b)
    # the boundary step must stand out from every other phase (an up-sampling period of 2 or 4
    # raises several phases alike)
    ratio = float(prof[b] / max(others.max(), 1e-9))
    return ratio >= GRID_RATIO, (b + 1) % 8, ratio
