"""Local 2D manipulations of radiographs and CT slices, each with a mask of what changed.

Two levels:

* **Array functions** (``copy_move``, ``splice``, ``rescale_region``, ``intensity_region``,
  ``contrast_region``, ``resample_region``, ``inpaint_region``) take a 2D array in physical units
  and a box and return ``(edited, mask)``: an edited copy (same dtype) and a uint8 mask that is 1
  wherever a value may have changed. They never modify their input.
* **Image functions** (``forge_copymove``, ``forge_splice``, ``forge_inpaint``,
  ``forge_intensity``, ``forge_contrast``, ``forge_resample``) take an
  :class:`~medforensics.core.Image` (a radiograph, a CT slice, or one slice ``k`` of a volume)
  and return a :class:`~medforensics.forge.base.Forgery`. Whatever is not given is chosen with
  the seed: a plausible place inside the body (not the black border, not the burned-in text
  near the edges), sizes relative to the image, angles, scales, feathering. Every choice is in
  ``Forgery.params``; passing those values back reproduces the forgery exactly.

Boxes are ``(row0, col0, row1, col1)`` with exclusive stops, as in ``bbox_voxel``.

>>> import numpy as np
>>> a = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
>>> b, mask = rescale_region(a, (10, 10, 30, 30), 1.3)
>>> int(mask.sum()), bool(np.allclose(a[mask == 0], b[mask == 0]))
(400, True)
>>> from medforensics.core import Image
>>> f = forge_copymove(Image.from_array(a * 10 + 100), seed=3)
>>> f.kind, sorted(f.params)[:3]
('copymove', ['angle', 'box', 'feather'])
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..core import Image, MedForensicsError
from ..noise import mad_sigma
from .base import Forgery

Box = tuple[int, int, int, int]

__all__ = ["copy_move", "splice", "rescale_region", "intensity_region", "contrast_region", "resample_region",
           "inpaint_region", "placement_mask", "noise_sigma", "forge_copymove", "forge_splice", "forge_inpaint",
           "forge_intensity", "forge_contrast", "forge_resample", "INPAINT_METHODS"]

#: In-painting methods: ``classic`` (biharmonic, multi-scale), ``telea`` (OpenCV's Telea),
#: ``learned`` (the in-painting network of :mod:`medforensics.forge.gan`).
INPAINT_METHODS = ("classic", "telea", "learned")

#: Automatic box sizes, as a fraction of the image width.
SIZE_RANGE = (0.05, 0.15)


# ---------------------------------------------------------------------------------------- helpers

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
    if len(box) != 4:
        raise ValueError(f"box {tuple(box)} must be four numbers row0, col0, row1, col1")
    r0, c0, r1, c1 = (int(v) for v in box)
    if not (0 <= r0 < r1 <= arr.shape[0] and 0 <= c0 < c1 <= arr.shape[1]):
        raise ValueError(f"box {tuple(int(v) for v in box)} does not fit an image of shape {arr.shape}")
    return r0, c0, r1, c1


def _box_mask(shape: tuple[int, ...], box: Box) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    r0, c0, r1, c1 = box
    mask[r0:r1, c0:c1] = 1
    return mask


def _paste(dst: np.ndarray, patch: np.ndarray, weight: np.ndarray, at: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    out = dst.astype(np.float32).copy()
    r, c = (int(v) for v in at)
    h, w = patch.shape
    if not (0 <= r and 0 <= c and r + h <= dst.shape[0] and c + w <= dst.shape[1]):
        raise ValueError(f"a {h}x{w} patch at {(r, c)} does not fit an image of shape {dst.shape}")
    weight = np.where(weight > 0.01, weight, 0).astype(np.float32)  # the mask covers every change
    region = out[r:r + h, c:c + w]
    out[r:r + h, c:c + w] = weight * patch + (1 - weight) * region
    mask = np.zeros(dst.shape, np.uint8)
    mask[r:r + h, c:c + w] = (weight > 0).astype(np.uint8)
    return out.astype(dst.dtype, copy=False), mask


def _blend_box(arr: np.ndarray, box: Box, new: np.ndarray, feather: int) -> tuple[np.ndarray, np.ndarray]:
    """``new`` (the box's edited content) blended into the box with feathered edges."""
    r0, c0, r1, c1 = box
    return _paste(arr, new, _feather(new.shape, feather), (r0, c0))


def _transform_patch(src: np.ndarray, box: Box, angle: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The box content rotated by ``angle`` degrees and scaled, with its valid-pixel weight."""
    r0, c0, r1, c1 = box
    patch = src[r0:r1, c0:c1].astype(np.float32)
    if angle == 0 and scale == 1:
        return patch, np.ones(patch.shape, np.float32)
    h, w = patch.shape
    oh, ow = _scaled_size((h, w), scale)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += (ow - w) / 2
    m[1, 2] += (oh - h) / 2
    out = cv2.warpAffine(patch, m, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    valid = cv2.warpAffine(np.ones_like(patch), m, (ow, oh), flags=cv2.INTER_LINEAR, borderValue=0)
    return out, valid


def _scaled_size(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(2, int(round(shape[0] * scale))), max(2, int(round(shape[1] * scale)))


def _highpass(x: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x - cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _mad_sigma(values: np.ndarray) -> float:
    """:func:`medforensics.noise.mad_sigma` in float64, 0 for an empty selection."""
    v = np.asarray(values, np.float64).ravel()
    return mad_sigma(v) if v.size else 0.0


def noise_sigma(arr: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Robust noise level of ``arr`` (where ``mask`` is set): MAD standard deviation of the
    high-pass residual ``arr - GaussianBlur(arr, 1 px)``. Edges of anatomy barely move a median."""
    hp = _highpass(arr)
    return _mad_sigma(hp if mask is None else hp[np.asarray(mask) > 0])


def _rng(seed: int | np.random.Generator | None) -> tuple[np.random.Generator, int | None]:
    if isinstance(seed, np.random.Generator):
        return seed, None
    seed = 0 if seed is None else int(seed)
    return np.random.default_rng(seed), seed


def _noise_rng(rng: np.random.Generator, seed: int | None) -> np.random.Generator:
    """A second stream for noise and networks, independent of how many draws placement took (so
    that passing the recorded boxes back with the same seed gives the same pixels)."""
    if seed is None:
        return np.random.default_rng(int(rng.integers(2**63)))
    return np.random.default_rng([seed, 0x5EED])


# ------------------------------------------------------------------------------- noise matching

def _window(shape: tuple[int, int], box: Box, margin: int) -> Box:
    r0, c0, r1, c1 = box
    return max(0, r0 - margin), max(0, c0 - margin), min(shape[0], r1 + margin), min(shape[1], c1 + margin)


def _noise_kernel(residual: np.ndarray, valid: np.ndarray, size: int) -> np.ndarray | None:
    """A zero-phase filter whose output has the mean power spectrum of ``residual`` patches that
    lie wholly where ``valid`` is set (so synthetic noise gets the real noise's grain)."""
    h, w = residual.shape
    if h < size or w < size:
        return None
    step = max(4, size // 2)
    hann = np.outer(np.hanning(size), np.hanning(size))
    psd = np.zeros((size, size))
    n = 0
    for r in range(0, h - size + 1, step):
        for c in range(0, w - size + 1, step):
            if not valid[r:r + size, c:c + size].all():
                continue
            p = residual[r:r + size, c:c + size].astype(np.float64)
            psd += np.abs(np.fft.fft2((p - p.mean()) * hann)) ** 2
            n += 1
            if n >= 96:
                break
        if n >= 96:
            break
    if n < 2:
        return None
    k = np.fft.fftshift(np.real(np.fft.ifft2(np.sqrt(psd / n))))
    return (k / max(np.sqrt((k ** 2).sum()), 1e-12)).astype(np.float32)


def _top_up_noise(arr: np.ndarray, changed: np.ndarray, rng: np.random.Generator, *, reference: np.ndarray | None = None,
                  reduce: bool = False) -> tuple[np.ndarray, dict[str, float]]:
    """Bring the noise where ``changed`` is set to the level of the surroundings (or of
    ``reference``, a mask of where to measure it): add noise with the surroundings' own spectrum
    when there is too little, and (``reduce=True``) smooth the high frequencies when there is too
    much. Returns the new array and ``{"target": .., "before": .., "added": ..}`` noise levels."""
    changed = np.asarray(changed) > 0
    rows, cols = np.nonzero(changed)
    box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    size = max(box[2] - box[0], box[3] - box[1])
    win = _window(arr.shape, box, max(24, size // 2 + 8))
    wr0, wc0, wr1, wc1 = win
    ctx = arr[wr0:wr1, wc0:wc1].astype(np.float32)
    inside = changed[wr0:wr1, wc0:wc1]
    ring = ~cv2.dilate(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if reference is not None:
        ring &= np.asarray(reference)[wr0:wr1, wc0:wc1] > 0
    hp = _highpass(ctx)
    target, before = _mad_sigma(hp[ring]), _mad_sigma(hp[inside])
    info = {"target": round(target, 4), "before": round(before, 4), "added": 0.0}
    out = arr.astype(np.float32).copy()
    if ring.sum() < 64 or target <= 0:
        return out.astype(arr.dtype, copy=False), info
    if before > 1.15 * target and reduce:
        # too noisy: shrink the high-pass part towards the target level
        blur = cv2.GaussianBlur(ctx, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
        shrunk = blur + (ctx - blur) * (target / before)
        ctx = np.where(inside, shrunk, ctx)
        before = _mad_sigma(_highpass(ctx)[inside])
    if before < 0.95 * target:
        need = float(np.sqrt(target ** 2 - before ** 2))
        kernel = _noise_kernel(ctx - cv2.GaussianBlur(ctx, (0, 0), 3.0), ring, 16 if size < 48 else 32)
        white = rng.standard_normal(ctx.shape).astype(np.float32)
        grain = white if kernel is None else cv2.filter2D(white, -1, kernel, borderType=cv2.BORDER_REFLECT)
        level = _mad_sigma(_highpass(grain)[inside])
        grain *= need / max(level, 1e-12)
        ctx = np.where(inside, ctx + grain, ctx)
        info["added"] = round(need, 4)
    out[wr0:wr1, wc0:wc1] = ctx
    return out.astype(arr.dtype, copy=False), info


# ------------------------------------------------------------------------------ array functions

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
           match_std: bool = False, feather: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Paste ``src_box`` of another image (``donor``) at ``dst``; optionally match the local mean
    (and standard deviation) of the target region."""
    box = _check_box(donor, src_box)
    r0, c0, r1, c1 = box
    patch = donor[r0:r1, c0:c1].astype(np.float32)
    h, w = patch.shape
    target = arr[dst[0]:dst[0] + h, dst[1]:dst[1] + w].astype(np.float32)
    if match_std and target.shape == patch.shape:
        patch = (patch - patch.mean()) * (target.std() / max(float(patch.std()), 1e-6)) + patch.mean()
    if match_mean and target.shape == patch.shape:
        patch = patch - patch.mean() + target.mean()
    return _paste(arr, patch, _feather(patch.shape, feather), dst)


def rescale_region(arr: np.ndarray, box: Box, factor: float, *, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Scale the values inside ``box`` about their mean by ``factor`` and add ``offset`` (hard edges;
    see :func:`contrast_region` and :func:`intensity_region` for the smooth-edged edits)."""
    r0, c0, r1, c1 = _check_box(arr, box)
    out = arr.astype(np.float32).copy()
    region = out[r0:r1, c0:c1]
    out[r0:r1, c0:c1] = (region - region.mean()) * factor + region.mean() + offset
    mask = np.zeros(arr.shape, np.uint8)
    mask[r0:r1, c0:c1] = 1
    return out.astype(arr.dtype, copy=False), mask


def intensity_region(arr: np.ndarray, box: Box, offset: float, *, feather: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Add ``offset`` (image units, e.g. HU) inside ``box``, fading to nothing over ``feather``
    pixels at its edges, as a brush with a soft edge does."""
    box = _check_box(arr, box)
    r0, c0, r1, c1 = box
    region = arr[r0:r1, c0:c1].astype(np.float32)
    return _blend_box(arr, box, region + np.float32(offset), feather)


def contrast_region(arr: np.ndarray, box: Box, factor: float, *, feather: int = 6,
                    center: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Multiply the contrast inside ``box`` by ``factor`` about ``center`` (default: the region's
    mean), blended in over ``feather`` pixels at the edges."""
    box = _check_box(arr, box)
    r0, c0, r1, c1 = box
    region = arr[r0:r1, c0:c1].astype(np.float32)
    mid = np.float32(region.mean() if center is None else center)
    return _blend_box(arr, box, (region - mid) * np.float32(factor) + mid, feather)


def resample_region(arr: np.ndarray, box: Box, *, scale: float = 1.0, angle: float = 0.0, feather: int = 4,
                    interpolation: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """Resample the content of ``box`` in place: zoom it by ``scale`` and rotate it by ``angle``
    degrees about the box centre (with ``interpolation`` ``nearest``, ``linear`` or ``cubic``),
    blended in over ``feather`` pixels. Leaves the interpolation traces a resampling detector
    looks for; a finding inside grows, shrinks or turns."""
    box = _check_box(arr, box)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if scale == 1 and angle == 0:
        raise ValueError("resampling needs a scale other than 1 or a non-zero angle")
    flags = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
    if interpolation not in flags:
        raise ValueError(f"interpolation must be one of {', '.join(flags)}")
    r0, c0, r1, c1 = box
    margin = int(np.ceil(max(r1 - r0, c1 - c0) * 0.75)) + 2
    wr0, wc0, wr1, wc1 = _window(arr.shape, box, margin)
    ctx = arr[wr0:wr1, wc0:wc1].astype(np.float32)
    m = cv2.getRotationMatrix2D(((c0 + c1 - 1) / 2 - wc0, (r0 + r1 - 1) / 2 - wr0), angle, scale)
    warped = cv2.warpAffine(ctx, m, (ctx.shape[1], ctx.shape[0]), flags=flags[interpolation],
                            borderMode=cv2.BORDER_REFLECT)
    return _blend_box(arr, box, warped[r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0], feather)


def inpaint_region(arr: np.ndarray, box: Box, *, radius: int = 5, method: str = "classic", noise: bool = False,
                   seed: int | np.random.Generator = 0, model: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Remove the content of ``box`` by filling it from its surroundings (removal of a finding).

    ``method``: ``classic`` (a smooth biharmonic surface continuing the surroundings; solved at a
    reduced scale for large boxes), ``telea`` (OpenCV's Telea, ``radius`` px), or ``learned``: the in-painting network :func:`medforensics.forge.gan.render` fills a context
    patch around the box, guided by a sketch (the re-noised classical fill, smoothed by 1 px); ``model``
    is passed on to it. Classical fills are smooth, hence noise-free: ``noise=True`` adds noise
    with the level and grain of the surroundings (and tops up a learned fill that lacks it), as
    a careful forger does; the default keeps the plain fill. ``seed`` drives the noise and the
    network.
    """
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown in-painting method {method!r}; use one of {', '.join(INPAINT_METHODS)}")
    box = _check_box(arr, box)
    rng, _ = _rng(seed)
    r0, c0, r1, c1 = box
    mask = _box_mask(arr.shape, box)
    size = max(r1 - r0, c1 - c0)
    wr0, wc0, wr1, wc1 = _window(arr.shape, box, max(radius + 4, size // 2 + 4))
    ctx = arr[wr0:wr1, wc0:wc1].astype(np.float32)
    m = mask[wr0:wr1, wc0:wc1]
    if method == "learned":
        filled = _learned_fill(arr, box, rng, model, radius)[wr0:wr1, wc0:wc1]
    else:
        filled = _classic_fill(ctx, m, radius, method=method)
    out = arr.astype(np.float32).copy()
    region = out[wr0:wr1, wc0:wc1]
    region[m == 1] = filled[m == 1]
    if noise:
        out, _ = _top_up_noise(out, mask, rng)
    return out.astype(arr.dtype, copy=False), mask


def _classic_fill(ctx: np.ndarray, m: np.ndarray, radius: int, *, method: str = "classic") -> np.ndarray:
    """``ctx`` with the pixels where ``m`` is set filled: ``telea`` (OpenCV, full resolution) or
    ``classic`` (biharmonic, solved at a scale where the hole is at most 64 px and upsampled: a
    smooth surface that continues the surroundings, without Telea's streaks on large holes)."""
    ctx = np.ascontiguousarray(ctx, np.float32)
    if method == "telea":
        return cv2.inpaint(ctx, m.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    from skimage.restoration import inpaint_biharmonic
    rows, cols = np.nonzero(m)
    size = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    f = min(1.0, 64.0 / size)
    lo, span = float(ctx.min()), max(float(np.ptp(ctx)), 1e-6)
    norm = (ctx - lo) / span
    if f < 1:
        h, w = max(4, int(round(ctx.shape[0] * f))), max(4, int(round(ctx.shape[1] * f)))
        small = cv2.resize(norm, (w, h), interpolation=cv2.INTER_AREA)
        ms = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0
        filled = cv2.resize(inpaint_biharmonic(small, ms).astype(np.float32), (ctx.shape[1], ctx.shape[0]),
                            interpolation=cv2.INTER_CUBIC)
        # the coarse surface misses the surroundings' finer shading at the hole's edge: carry the
        # difference (a blur of the known pixels only, so nothing of the removed content leaks in)
        # a short way into the hole, fading out, so that the fill joins without a seam
        known = (m == 0).astype(np.float32)
        s = 0.5 / f
        local = cv2.GaussianBlur(norm * known, (0, 0), s) / np.maximum(cv2.GaussianBlur(known, (0, 0), s), 1e-3)
        detail = np.where(m > 0, 0, local - filled).astype(np.float32)
        carried = cv2.GaussianBlur(detail, (0, 0), s) / np.maximum(cv2.GaussianBlur(known, (0, 0), s), 1e-3)
        dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
        filled = filled + carried * np.clip(1 - dist / (2 * s + 1), 0, 1)
    else:
        filled = inpaint_biharmonic(norm, m.astype(bool)).astype(np.float32)
    out = ctx.copy()
    out[m > 0] = filled[m > 0] * span + lo
    return out


def _learned_fill(arr: np.ndarray, box: Box, rng: np.random.Generator, model: Any, radius: int) -> np.ndarray:
    """The whole image with ``box`` filled by the in-painting network (context patch around it)."""
    try:
        from . import gan
    except ImportError as e:
        raise MedForensicsError(None, "learned in-painting needs the in-painting model: medforensics.forge.gan "
                                      f"cannot be imported ({e}); use --method classic") from None
    r0, c0, r1, c1 = box
    size = max(r1 - r0, c1 - c0)
    side = max(2 * size, size + 32)
    H, W = arr.shape
    wr0 = int(np.clip((r0 + r1) // 2 - side // 2, 0, max(0, H - side)))
    wc0 = int(np.clip((c0 + c1) // 2 - side // 2, 0, max(0, W - side)))
    wr1, wc1 = min(H, wr0 + side), min(W, wc0 + side)
    context = arr[wr0:wr1, wc0:wc1].astype(np.float32)
    m = np.zeros(context.shape, bool)
    m[r0 - wr0:r1 - wr0, c0 - wc0:c1 - wc0] = True
    smooth = _classic_fill(context, m.astype(np.uint8), radius)
    # The sketch is the low-pass of the re-noised classical fill: it carries the surroundings'
    # grain at low frequencies (a smooth sketch left the network to invent all texture, and it
    # made a regular, visibly periodic grain); the network renders the fine texture.
    textured, _ = _top_up_noise(smooth, m, rng)
    lowpass = getattr(gan, "lowpass", None)  # the network's own definition of a sketch (Gaussian, 1 px)
    sketch = np.asarray(lowpass(textured), np.float32) if lowpass else \
        cv2.GaussianBlur(textured, (0, 0), 1.0, borderType=cv2.BORDER_REFLECT)
    try:
        patch = gan.render(context, m, sketch, seed=int(rng.integers(2**31)), model=model)
    except FileNotFoundError as e:
        raise MedForensicsError(None, f"learned in-painting needs the in-painting model: {e}") from None
    except MedForensicsError as e:
        if "checkpoint" in e.problem or "model" in e.problem:
            where = f"{e.path}: " if e.path else ""
            raise MedForensicsError(None, f"learned in-painting needs the in-painting model: {where}{e.problem}") from None
        raise
    patch = np.asarray(patch, np.float32)
    if patch.shape != context.shape or not np.isfinite(patch[m]).all():
        raise MedForensicsError(None, f"the in-painting model returned a patch of shape {patch.shape} "
                                      f"(expected {context.shape}) or non-finite values")
    out = arr.astype(np.float32).copy()
    out[wr0:wr1, wc0:wc1][m] = patch[m]
    return out


# ------------------------------------------------------------------------------------ placement

def _looks_ct(image_or_modality: Any, arr: np.ndarray) -> bool:
    modality = getattr(image_or_modality, "modality", image_or_modality)
    return str(modality).upper() == "CT" or float(np.min(arr)) <= -900


def placement_mask(arr: np.ndarray, modality: str | None = None) -> np.ndarray:
    """Where an edit looks plausible: a boolean mask of the body (CT: inside the patient outline,
    lungs included; radiographs: the exposed anatomy, without the black border, saturated
    burned-in text or collimator shadows, and a 5 % margin at each edge)."""
    arr = np.asarray(arr, np.float32)
    H, W = arr.shape
    f = min(1.0, 384.0 / max(H, W))
    small = cv2.resize(arr, (max(8, int(round(W * f))), max(8, int(round(H * f)))), interpolation=cv2.INTER_AREA) \
        if f < 1 else arr.copy()
    h, w = small.shape
    g = cv2.GaussianBlur(small, (0, 0), 1.5)
    if _looks_ct(modality, arr):
        from scipy import ndimage as ndi
        body = ndi.binary_opening(g > -500, iterations=2)
        lab, n = ndi.label(body)
        if n:
            sizes = ndi.sum(body, lab, range(1, n + 1))
            body = lab == (1 + int(np.argmax(sizes)))
        cand = ndi.binary_fill_holes(body)
        cand = ndi.binary_erosion(cand, iterations=max(1, int(0.02 * max(h, w))))
    else:
        hp = np.abs(_highpass(arr, 0.7))
        flat_small = cv2.resize(cv2.blur(hp, (5, 5)), (w, h), interpolation=cv2.INTER_AREA)
        cand = _radiograph_mask(small, g, flat_small)
    mr, mc = max(1, int(0.05 * h)), max(1, int(0.05 * w))
    edge = np.zeros((h, w), bool)
    edge[mr:h - mr, mc:w - mc] = True
    cand = cand & edge
    if cand.sum() < 0.02 * h * w:  # nothing recognisable: the central part of the image
        cand = np.zeros((h, w), bool)
        cand[h // 5:h - h // 5, w // 5:w - w // 5] = True
    return cv2.resize(cand.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)


def _radiograph_mask(small: np.ndarray, g: np.ndarray, flat_small: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi
    h, w = small.shape
    core = g[h // 4:h - h // 4, w // 4:w - w // 4]
    lo, hi = np.percentile(core, [2, 98])
    span = max(float(hi - lo), 1e-6)
    cand = (g > lo - 0.05 * span) & (g < hi + 0.02 * span)
    # flat areas (padding, collimator shadow, black border, direct exposure) have no anatomy in them
    mean = cv2.blur(g, (9, 9))
    std = np.sqrt(np.maximum(cv2.blur(g * g, (9, 9)) - mean * mean, 0))
    cand &= std > 0.25 * float(np.median(std[h // 4:h - h // 4, w // 4:w - w // 4]))
    # burned-in text and markers: noise-free (drawn, not exposed) blobs, with a safety ring
    flat = flat_small < 0.2 * float(np.median(flat_small[h // 4:h - h // 4, w // 4:w - w // 4]))
    flat = ndi.binary_opening(flat, iterations=1)
    if flat.mean() < 0.2:
        cand &= ~ndi.binary_dilation(flat, iterations=max(2, int(0.02 * max(h, w))))
    cand = ndi.binary_opening(cand, iterations=2)
    lab, n = ndi.label(cand)
    if n:
        sizes = ndi.sum(cand, lab, range(1, n + 1))
        keep = 1 + np.nonzero(sizes >= 0.1 * sizes.max())[0]
        cand = np.isin(lab, keep)
    return cand


def _valid_corners(cand: np.ndarray, h: int, w: int, min_frac: float) -> np.ndarray:
    """Top-left corners at which an ``h x w`` box lies (``min_frac`` of it) inside ``cand``."""
    H, W = cand.shape
    if h > H or w > W:
        return np.zeros((0, 0), bool)
    ii = cv2.integral(cand.astype(np.uint8), sdepth=cv2.CV_32S).astype(np.int64)
    s = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
    return s >= min_frac * h * w


def _pick_corner(rng: np.random.Generator, cand: np.ndarray, h: int, w: int,
                 avoid: Box | None = None, gap: int = 0) -> tuple[int, int]:
    """A random top-left corner for an ``h x w`` box inside ``cand`` (relaxing the fit when
    needed), whose box keeps ``gap`` pixels away from ``avoid``."""
    H, W = cand.shape
    if h > H or w > W:
        raise ValueError(f"a {h}x{w} box does not fit an image of shape {cand.shape}")
    for frac in (0.98, 0.9, 0.75, 0.5, 0.0):
        ok = _valid_corners(cand, h, w, frac) if frac > 0 else np.ones((H - h + 1, W - w + 1), bool)
        if avoid is not None:
            ar0, ac0, ar1, ac1 = avoid
            ok = ok.copy()
            ok[max(0, ar0 - h - gap + 1):max(0, ar1 + gap), max(0, ac0 - w - gap + 1):max(0, ac1 + gap)] = False
        idx = np.flatnonzero(ok)
        if idx.size:
            r, c = np.unravel_index(int(idx[rng.integers(idx.size)]), ok.shape)
            return int(r), int(c)
    raise ValueError(f"no room for a {h}x{w} box away from {avoid} in an image of shape {cand.shape}")


def _random_size(rng: np.random.Generator, shape: tuple[int, int], size: float | None = None) -> tuple[int, int]:
    H, W = shape
    frac = rng.uniform(*SIZE_RANGE) if size is None else float(size)
    w = int(round(frac * W))
    h = int(round(w * rng.uniform(0.8, 1.25)))
    return int(np.clip(h, 8, max(8, H // 3))), int(np.clip(w, 8, max(8, W // 3)))


# ------------------------------------------------------------------------------ image functions

def _plane(image: Image, k: int | None) -> tuple[np.ndarray, int | None]:
    if image.pixels.ndim == 2:
        if k not in (None, 0):
            raise ValueError(f"slice {k} given for a 2D image")
        return image.pixels, None
    n = image.pixels.shape[0]
    k = n // 2 if k is None else int(k)
    if not 0 <= k < n:
        raise ValueError(f"slice {k} is outside the volume's {n} slices")
    return image.pixels[k], k


def _forgery(image: Image, k: int | None, edited: np.ndarray, mask2d: np.ndarray, kind: str, method: str,
             params: dict[str, Any]) -> Forgery:
    if k is None:
        pixels, mask = edited.astype(image.pixels.dtype, copy=False), mask2d
    else:
        pixels = image.pixels.copy()
        pixels[k] = edited
        mask = np.zeros(image.pixels.shape, np.uint8)
        mask[k] = mask2d
        params = {"slice": k, **params}
    params = {"image_shape": list(image.pixels.shape), **params}
    return Forgery.from_mask(image, pixels, mask, kind, method, **params)


def _auto_box(rng: np.random.Generator, arr: np.ndarray, image: Image, box: Box | None,
              size: float | None = None) -> Box:
    if box is not None:
        return _check_box(arr, box)
    h, w = _random_size(rng, arr.shape, size)
    r, c = _pick_corner(rng, placement_mask(arr, image.modality), h, w)
    return r, c, r + h, c + w


def forge_copymove(image: Image, *, seed: int | np.random.Generator = 0, box: Box | None = None,
                   to: tuple[int, int] | None = None, angle: float | None = None, scale: float | None = None,
                   feather: int | None = None, k: int | None = None) -> Forgery:
    """Copy a region of the image (``box``, the source) to another place (top-left ``to``),
    rotated by ``angle`` degrees, scaled by ``scale``, its edges blended over ``feather`` px.

    Unset values are drawn with ``seed``: a source 5-15 % of the image width inside the body, a
    target in the body that does not overlap it, angle 0-30 deg (either sense), scale 0.9-1.2,
    feather 2-8 px. The mask marks the pasted target; ``params`` hold ``source_box``, ``to``,
    ``box`` (the target box), ``angle``, ``scale``, ``feather`` and ``seed``.
    """
    arr, k = _plane(image, k)
    rng, s = _rng(seed)
    angle = round(float(rng.uniform(0, 30) * rng.choice([-1, 1])), 3) if angle is None else float(angle)
    scale = round(float(rng.uniform(0.9, 1.2)), 4) if scale is None else float(scale)
    feather = int(rng.integers(2, 9)) if feather is None else int(feather)
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    cand = placement_mask(arr, image.modality) if box is None or to is None else None
    if box is None:
        h, w = _random_size(rng, arr.shape)
        th, tw = _scaled_size((h, w), scale)
        if th > arr.shape[0] or tw > arr.shape[1]:
            h, w = int(h / scale), int(w / scale)
        r, c = _pick_corner(rng, cand, h, w)
        box = (r, c, r + h, c + w)
    src = _check_box(arr, box)
    th, tw = _scaled_size((src[2] - src[0], src[3] - src[1]), scale) if (angle or scale != 1) else \
        (src[2] - src[0], src[3] - src[1])
    if to is None:
        to = _pick_corner(rng, cand, th, tw, avoid=src, gap=2)
    to = (int(to[0]), int(to[1]))
    target = (to[0], to[1], to[0] + th, to[1] + tw)
    if not (0 <= to[0] and 0 <= to[1] and target[2] <= arr.shape[0] and target[3] <= arr.shape[1]):
        raise ValueError(f"the {th}x{tw} copy at {to} does not fit an image of shape {arr.shape}")
    edited, mask = copy_move(arr, src, to, angle=angle, scale=scale, feather=feather)
    return _forgery(image, k, edited, mask, "copymove", "classic",
                    {"seed": s, "source_box": list(src), "to": list(to), "box": list(target),
                     "angle": angle, "scale": scale, "feather": feather})


def _image_scale(image: Image, donor: Image) -> tuple[float, str]:
    """Factor that brings donor pixels to the target's pixel size: from the pixel spacings when
    both are known, else from the image widths (the same field of view assumed)."""
    sp_t = [v for v in image.spacing[-2:] if v]
    sp_d = [v for v in donor.spacing[-2:] if v]
    if len(sp_t) == 2 and len(sp_d) == 2:
        return float(np.mean(sp_d) / np.mean(sp_t)), "pixel spacing"
    return float(image.pixels.shape[-1] / donor.pixels.shape[-1]), "image width"


def forge_splice(image: Image, donor: Image, *, seed: int | np.random.Generator = 0, box: Box | None = None,
                 to: tuple[int, int] | None = None, scale: float | None = None, feather: int | None = None,
                 match: bool = True, noise: bool = True, k: int | None = None,
                 donor_k: int | None = None) -> Forgery:
    """Paste a region of another image (``donor``, source ``box`` in donor pixels) at top-left
    ``to`` of ``image``.

    The donor region is resized by ``scale`` (default: donor pixel spacing over target pixel
    spacing, or the ratio of the image widths when spacing is unknown), then ``match`` sets its
    mean and standard deviation to those of the target region it replaces, and ``noise`` brings
    its noise to the target's local level (adding noise with the target's grain, or smoothing
    the excess). Unset boxes are drawn with ``seed`` inside both bodies; the pasted size is 5-15 %
    of the target width. ``params`` name the donor file and hold everything else.
    """
    arr, k = _plane(image, k)
    darr, donor_k = _plane(donor, donor_k)
    rng, s = _rng(seed)
    if scale is None:
        scale, scale_from = _image_scale(image, donor)
        scale = round(scale, 6)
    else:
        scale, scale_from = float(scale), "given"
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    feather = int(rng.integers(2, 9)) if feather is None else int(feather)
    if box is None:
        th, tw = _random_size(rng, arr.shape)
        h = int(np.clip(round(th / scale), 4, darr.shape[0]))
        w = int(np.clip(round(tw / scale), 4, darr.shape[1]))
        r, c = _pick_corner(rng, placement_mask(darr, donor.modality), h, w)
        box = (r, c, r + h, c + w)
    src = _check_box(darr, box)
    patch = darr[src[0]:src[2], src[1]:src[3]].astype(np.float32)
    th, tw = _scaled_size(patch.shape, scale)
    if th > arr.shape[0] or tw > arr.shape[1]:
        raise ValueError(f"the donor region scaled by {scale:.3g} ({th}x{tw}) does not fit an image of shape {arr.shape}")
    if (th, tw) != patch.shape:
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        patch = cv2.resize(patch, (tw, th), interpolation=interp)
    if to is None:
        to = _pick_corner(rng, placement_mask(arr, image.modality), th, tw)
    to = (int(to[0]), int(to[1]))
    target_box = (to[0], to[1], to[0] + th, to[1] + tw)
    if not (0 <= to[0] and 0 <= to[1] and target_box[2] <= arr.shape[0] and target_box[3] <= arr.shape[1]):
        raise ValueError(f"the {th}x{tw} donor region at {to} does not fit an image of shape {arr.shape}")
    target = arr[to[0]:to[0] + th, to[1]:to[1] + tw].astype(np.float32)
    stats = {"donor_mean": float(patch.mean()), "donor_std": float(patch.std()),
             "target_mean": float(target.mean()), "target_std": float(target.std())}
    if match:
        patch = (patch - patch.mean()) * (target.std() / max(float(patch.std()), 1e-6)) + target.mean()
    edited, mask = _paste(arr, patch, _feather(patch.shape, feather), to)
    noise_info = None
    if noise:
        edited, noise_info = _top_up_noise(edited, mask, _noise_rng(rng, s), reference=1 - mask, reduce=True)
    return _forgery(image, k, edited, mask, "splice", "classic",
                    {"seed": s, "donor": str(donor.path), "donor_slice": donor_k, "donor_box": list(src),
                     "to": list(to), "box": list(target_box), "scale": scale, "scale_from": scale_from,
                     "feather": feather, "match": "mean and std" if match else "none", "noise_match": noise,
                     "noise": noise_info, "intensity": {a: round(b, 4) for a, b in stats.items()}})


def forge_inpaint(image: Image, *, box: Box | None = None, method: str = "classic", seed: int | np.random.Generator = 0,
                  noise: bool = True, radius: int = 5, model: Any = None, k: int | None = None) -> Forgery:
    """Remove what is in ``box`` (a finding) by in-painting from the surroundings.

    ``method`` is ``classic`` (biharmonic), ``telea`` or ``learned`` (see :func:`inpaint_region`);
    ``noise`` (default on) gives the fill the local noise level and grain, so that it is not
    the noise-free patch any noise detector finds at once. Without ``box`` a region 5-15 % of
    the image width inside the body is drawn with ``seed``.
    """
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown in-painting method {method!r}; use one of {', '.join(INPAINT_METHODS)}")
    arr, k = _plane(image, k)
    rng, s = _rng(seed)
    box = _auto_box(rng, arr, image, box)
    nrng = _noise_rng(rng, s)
    edited, mask = inpaint_region(arr, box, radius=radius, method=method, noise=False, seed=nrng, model=model)
    noise_info = None
    if noise:
        edited, noise_info = _top_up_noise(edited, mask, nrng)
    return _forgery(image, k, edited, mask, "inpaint", method,
                    {"seed": s, "box": list(box), "radius": radius, "noise_match": noise,
                     "noise": noise_info})


def forge_intensity(image: Image, *, box: Box | None = None, offset: float | None = None, feather: int | None = None,
                    seed: int | np.random.Generator = 0, k: int | None = None) -> Forgery:
    """Brighten or darken a region by ``offset`` (image units) with soft edges. Unset: a box
    5-15 % of the width in the body, offset +-(0.3-1.0) x the region's standard deviation (at
    least 20 HU on CT), feather 3-10 px."""
    arr, k = _plane(image, k)
    rng, s = _rng(seed)
    box = _auto_box(rng, arr, image, box)
    feather = int(rng.integers(3, 11)) if feather is None else int(feather)
    if offset is None:
        r0, c0, r1, c1 = box
        spread = float(arr[r0:r1, c0:c1].std())
        if _looks_ct(image, arr):
            spread = max(spread, 20.0 / 0.3)
        offset = round(float(rng.choice([-1, 1]) * rng.uniform(0.3, 1.0) * max(spread, 1e-3)), 4)
    edited, mask = intensity_region(arr, box, float(offset), feather=feather)
    return _forgery(image, k, edited, mask, "intensity", "classic",
                    {"seed": s, "box": list(box), "offset": float(offset), "feather": feather})


def _below_or_above(rng: np.random.Generator, below: tuple[float, float], above: tuple[float, float]) -> float:
    """A factor drawn from ``below`` or ``above`` (1), each half the time: a visible change either way."""
    return float(rng.uniform(*below) if rng.random() < 0.5 else rng.uniform(*above))


def forge_contrast(image: Image, *, box: Box | None = None, factor: float | None = None, feather: int | None = None,
                   seed: int | np.random.Generator = 0, k: int | None = None) -> Forgery:
    """Raise or cut the contrast of a region by ``factor`` about its mean, with soft edges. Unset:
    a box 5-15 % of the width in the body, factor 0.5-0.8 or 1.25-1.6, feather 3-10 px."""
    arr, k = _plane(image, k)
    rng, s = _rng(seed)
    box = _auto_box(rng, arr, image, box)
    feather = int(rng.integers(3, 11)) if feather is None else int(feather)
    if factor is None:
        factor = round(_below_or_above(rng, (0.5, 0.8), (1.25, 1.6)), 4)
    if factor < 0:
        raise ValueError(f"contrast factor must not be negative, got {factor}")
    edited, mask = contrast_region(arr, box, float(factor), feather=feather)
    return _forgery(image, k, edited, mask, "contrast", "classic",
                    {"seed": s, "box": list(box), "factor": float(factor), "feather": feather})


def forge_resample(image: Image, *, box: Box | None = None, scale: float | None = None, angle: float | None = None,
                   feather: int | None = None, interpolation: str = "linear", seed: int | np.random.Generator = 0,
                   k: int | None = None) -> Forgery:
    """Resample a region in place (zoom by ``scale``, rotate by ``angle`` deg). Unset: a box 5-15 %
    of the width in the body, scale 0.8-0.95 or 1.05-1.25, angle -15 to 15 deg, feather 2-8 px."""
    arr, k = _plane(image, k)
    rng, s = _rng(seed)
    box = _auto_box(rng, arr, image, box)
    feather = int(rng.integers(2, 9)) if feather is None else int(feather)
    if scale is None:
        scale = round(_below_or_above(rng, (0.8, 0.95), (1.05, 1.25)), 4)
    if angle is None:
        angle = round(float(rng.uniform(-15, 15)), 3)
    edited, mask = resample_region(arr, box, scale=float(scale), angle=float(angle), feather=feather,
                                   interpolation=interpolation)
    return _forgery(image, k, edited, mask, "resample", interpolation,
                    {"seed": s, "box": list(box), "scale": float(scale), "angle": float(angle),
                     "feather": feather, "interpolation": interpolation})
