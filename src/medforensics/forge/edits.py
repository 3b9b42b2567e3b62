"""Local 2D edits of a pixel array, each returning the edited copy and a mask of what changed.

These are the manipulations a forger makes by hand (copy-move, splicing, in-painting, local
intensity edits); they work on any 2D array in physical units and never modify their input.
Boxes are ``(row0, col0, row1, col1)`` with exclusive stops, as in ``bbox_voxel``.

>>> import numpy as np
>>> a = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
>>> b, mask = rescale_region(a, (10, 10, 30, 30), 1.3)
>>> int(mask.sum()), bool(np.allclose(a[mask == 0], b[mask == 0]))
(400, True)
"""
from __future__ import annotations

import cv2
import numpy as np

Box = tuple[int, int, int, int]


def _feather(shape: tuple[int, int], width: int) -> np.ndarray:
    """A weight patch that is 1 inside and falls to 0 over ``width`` pixels at the edges."""
    h, w = shape
    if width <= 0:
        return np.ones(shape, np.float32)
    yy = np.minimum(np.arange(h), np.arange(h)[::-1]) + 1
    xx = np.minimum(np.arange(w), np.arange(w)[::-1]) + 1
    wy = np.clip(yy / width, 0, 1)
    wx = np.clip(xx / width, 0, 1)
    return np.outer(wy, wx).astype(np.float32)


def _check_box(arr: np.ndarray, box: Box) -> Box:
    r0, c0, r1, c1 = (int(v) for v in box)
    if not (0 <= r0 < r1 <= arr.shape[0] and 0 <= c0 < c1 <= arr.shape[1]):
        raise ValueError(f"box {box} does not fit an image of shape {arr.shape}")
    return r0, c0, r1, c1


def _paste(dst: np.ndarray, patch: np.ndarray, weight: np.ndarray, at: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    out = dst.astype(np.float32).copy()
    r, c = at
    h, w = patch.shape
    if not (0 <= r and 0 <= c and r + h <= dst.shape[0] and c + w <= dst.shape[1]):
        raise ValueError(f"a {h}x{w} patch at {at} does not fit an image of shape {dst.shape}")
    region = out[r:r + h, c:c + w]
    out[r:r + h, c:c + w] = weight * patch + (1 - weight) * region
    mask = np.zeros(dst.shape, np.uint8)
    mask[r:r + h, c:c + w] = (weight > 0.01).astype(np.uint8)
    return out.astype(dst.dtype, copy=False), mask


def _transform_patch(src: np.ndarray, box: Box, angle: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The box content rotated by ``angle`` degrees and scaled, with its valid-pixel weight."""
    r0, c0, r1, c1 = box
    patch = src[r0:r1, c0:c1].astype(np.float32)
    if angle == 0 and scale == 1:
        return patch, np.ones(patch.shape, np.float32)
    h, w = patch.shape
    oh, ow = max(2, int(round(h * scale))), max(2, int(round(w * scale)))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += (ow - w) / 2
    m[1, 2] += (oh - h) / 2
    out = cv2.warpAffine(patch, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    valid = cv2.warpAffine(np.ones_like(patch), m, (ow, oh), flags=cv2.INTER_LINEAR, borderValue=0)
    return out, valid


def copy_move(arr: np.ndarray, src_box: Box, dst: tuple[int, int], *, angle: float = 0.0, scale: float = 1.0,
              feather: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Copy the content of ``src_box`` to top-left corner ``dst`` of the same image.

    ``angle`` (degrees) and ``scale`` transform the patch; ``feather`` blends its edges over that
    many pixels. Returns ``(edited, mask)``; the mask marks the pasted target only.
    """
    box = _check_box(arr, src_box)
    patch, valid = _transform_patch(arr, box, angle, scale)
    return _paste(arr, patch, valid * _feather(patch.shape, feather), dst)


def splice(arr: np.ndarray, donor: np.ndarray, src_box: Box, dst: tuple[int, int], *, match_mean: bool = True,
           feather: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``src_box`` of another image (``donor``) at ``dst``; optionally match the local mean."""
    box = _check_box(donor, src_box)
    r0, c0, r1, c1 = box
    patch = donor[r0:r1, c0:c1].astype(np.float32)
    if match_mean:
        h, w = patch.shape
        target = arr[dst[0]:dst[0] + h, dst[1]:dst[1] + w].astype(np.float32)
        patch = patch - patch.mean() + target.mean()
    return _paste(arr, patch, _feather(patch.shape, feather), dst)


def rescale_region(arr: np.ndarray, box: Box, factor: float, *, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Scale the values inside ``box`` about their mean by ``factor`` and add ``offset``."""
    r0, c0, r1, c1 = _check_box(arr, box)
    out = arr.astype(np.float32).copy()
    region = out[r0:r1, c0:c1]
    out[r0:r1, c0:c1] = (region - region.mean()) * factor + region.mean() + offset
    mask = np.zeros(arr.shape, np.uint8)
    mask[r0:r1, c0:c1] = 1
    return out.astype(arr.dtype, copy=False), mask


def inpaint_region(arr: np.ndarray, box: Box, *, radius: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Remove the content of ``box`` by Telea in-painting from its surroundings (removal of a finding)."""
    r0, c0, r1, c1 = _check_box(arr, box)
    lo, hi = float(arr.min()), float(arr.max())
    span = max(hi - lo, 1e-6)
    img16 = np.round((arr.astype(np.float64) - lo) / span * 65535).astype(np.uint16)
    # cv2.inpaint takes 8-bit or 32-bit float single-channel input
    src = img16.astype(np.float32)
    mask = np.zeros(arr.shape, np.uint8)
    mask[r0:r1, c0:c1] = 1
    filled = cv2.inpaint(src, mask, radius, cv2.INPAINT_TELEA)
    out = arr.astype(np.float32).copy()
    out[mask == 1] = filled[mask == 1] / 65535.0 * span + lo
    return out.astype(arr.dtype, copy=False), mask
