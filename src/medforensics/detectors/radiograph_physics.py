"""Radiograph physics: one noise-level function over the whole image, and white noise.

A radiograph's noise comes from the detector: quantum noise (Poisson, variance growing with the
signal) and electronic noise (constant), shaped by one display curve for the whole image. So the
noise level is one function of the signal, the *noise-level function* (NLF), everywhere in the
image; and the detector's pixels are read independently, so its noise is nearly *white* (the
noise at one pixel says little about the next). Generators and up-samplers break both: a decoder
or interpolator makes neighbouring pixels from the same few numbers (correlated noise, or none at
all), and a pasted or generated area follows its own function.

Method (blocks of ``B x B`` px, B = 16; the central :data:`MAX_SIDE` x :data:`MAX_SIDE` px are
read):

1. Per block: mean ``mu``, fine noise ``s1`` (Immerkaer's residual, trimmed mean of ``|r|`` as
   :mod:`~medforensics.detectors.noise_residual` measures it) and coarse noise ``s2`` (the same
   operator with its taps 2 px apart, :func:`dilated_residual`). For white noise ``s1 = s2``; noise
   correlated over 2 px and more (up-sampled, decoded, smoothed) has ``s1`` well below ``s2``.
   *Whiteness* ``w = log(s1 / s2)`` (0 for white noise; :func:`whiteness`).
   Blocks that are flat, saturated, near black or white, burned-in graphics, or off the image's
   homogeneous part are left out as noise_residual leaves them out.
2. NLF: ``s1^2 = a + b mu`` fitted to the lower half of the blocks of each intensity bin (anatomy
   only adds to the residual) by least squares (:func:`fit_nlf`). Reported: ``a`` (electronic),
   ``b`` (quantum) and the fit's spread.
3. Consistency (regions): each block's ``log s1`` against the image's binned level by intensity
   (:func:`binned_level`: the non-parametric NLF, its darkest and brightest bins split finer, where
   a display curve crushes the noise of exports) and its ``w`` against the
   image's other blocks, each as a robust z over the blocks, averaged over 2x2 blocks. A block
   deviates by ``hypot(max(-zl, 0), |zw|)``: less noise than the function predicts and/or noise
   correlated unlike the rest (either way: a decoder's checkerboard makes it finer, up-sampling
   coarser). The raw local term is the largest cluster mass of the excess over ``LOCAL_Z``
   (:func:`~medforensics.detectors._blocks.cluster_mass`), divided by ``LOCAL_UNIT``; the heatmap
   is ``deviation / (2 LOCAL_Z)`` per block. In a JPEG file, or where JPEG traces are found (the pixels' 8x8 grid,
   :func:`~medforensics.detectors.spectral.jpeg_grid`, or its quantisation comb, :func:`jpeg_comb`)
   only finer-than-the-rest noise counts: the compression itself strips the noise of smooth parts
   more than of textured ones.
4. Plausibility (whole image): the median whiteness ``W``. A detector's noise lies in
   ``W_LOW..W_HIGH`` (the fitted radiographs: -0.23 to -0.06); an up-sampled image lies far below
   (nearest or bilinear 2x: -1.0 to -1.5), a transposed-convolution decoder's checkerboard above
   (4x: up to +1.2). Global term ``max(W - W_HIGH, W_LOW - W) / W_UNIT``; the lower side only without
   JPEG traces and not in a JPEG file (one JPEG save at quality 75-95 takes authentic images to -1.6).

Raw statistic ``max(global, local)``; score ``logistic(raw, MIDPOINT, SCALE)``. Constants set on
the authentic radiographs of the fitted sources with and without one JPEG save
(``benchmarks/generation_traces.py``; figures in docs/detectors/radiograph_physics.md). Evidence
``indicates`` synthesis with ``low`` confidence, except a whole-image deviation in a raster export
(PNG, JPEG, TIFF): enlarging an image for display correlates its noise as up-sampling does (two
outside web exports measured so), and sharpening makes it finer, so there it ``indicates``
processing, reported and not counted. A regional deviation, and any in DICOM, counts.

Domain (:meth:`RadiographPhysicsDetector.out_of_domain`): radiographs (CR, DX, XR) of ``MIN_SIZE`` px
and more, ``MIN_LEVELS`` grey levels and more, JPEG no coarser than quality ``MIN_QUALITY``, and a
measurable noise: median noise at 1 or 2 px at least ``MIN_NOISE`` grey levels of an 8-bit scale
(below that the image was denoised or downsampled so far that quantisation is all that is left).
"""
from __future__ import annotations

import sys

import cv2
import numpy as np

from ..core import Evidence, Image
from ..noise import IMMERKAER_GAIN, IMMERKAER_KERNEL, mad_sigma, robust_z
from ._blocks import blocks, cluster_mass, immerkaer, local_mean
from .base import Detector, block_heatmap, logistic, print_raw_values, regions_from_heatmap
from .noise_residual import TRIM_GAIN, block_size
from .spectral import (RADIOGRAPHS, RASTER_EXPORTS, _centre, _centre_offset, jpeg_grid,
                       trace_domain)

MAX_SIDE = 1024
#: median fine noise (8-bit grey levels) below which nothing of the detector's noise is left
MIN_NOISE = 0.8
#: whiteness band of a detector's noise, and the step that counts as one unit of evidence
W_LOW, W_HIGH, W_UNIT = -0.7, 0.1, 0.1
LOCAL_Z, LOCAL_UNIT = 4.0, 40.0
#: JPEG quantisation comb (:func:`jpeg_comb`) from which a JPEG save is assumed
COMB_LIMIT = 0.6
MIDPOINT, SCALE = 2.0, 0.25


def dilated_residual(img: np.ndarray, step: int = 2) -> np.ndarray:
    """Immerkaer's residual with its taps ``step`` px apart (the same noise scale as
    :func:`~medforensics.detectors._blocks.immerkaer` for white noise).

    >>> rng = np.random.default_rng(0)
    >>> n = rng.normal(0, 2.0, (256, 256)).astype(np.float32)
    >>> round(float(np.abs(dilated_residual(n)).mean() * 1.2533), 1)
    2.0
    """
    k = np.zeros((2 * step + 1, 2 * step + 1), np.float32)
    k[::step, ::step] = IMMERKAER_KERNEL
    return cv2.filter2D(np.asarray(img, np.float32), cv2.CV_32F, k) * (IMMERKAER_GAIN / 1.2533)


def trimmed_sigma(res_blocks: np.ndarray) -> np.ndarray:
    """Noise sigma per block from the lower 75% of ``|r|`` (anatomy that leaks into the residual is
    mostly in the top quarter); ``res_blocks`` is ``(gh, b, gw, b)``.

    >>> r = np.random.default_rng(1).normal(0, 3.0, (2, 64, 2, 64))
    >>> trimmed_sigma(r * 1.2533 / 1.2533).round(0).tolist()
    [[3.0, 3.0], [3.0, 3.0]]
    """
    a = np.abs(res_blocks)
    gh, b, gw, _ = a.shape
    flat = a.transpose(0, 2, 1, 3).reshape(gh, gw, -1)
    cut = int(0.75 * flat.shape[-1])
    return TRIM_GAIN * np.partition(flat, cut, axis=-1)[..., :cut].mean(axis=-1)


def whiteness(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """``log(s1 / s2)``: 0 for white noise, negative for noise correlated over 2 px or more.

    >>> whiteness(np.array([2.0, 1.0]), np.array([2.0, 2.0])).round(3).tolist()
    [0.0, -0.693]
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(s1, float) / np.asarray(s2, float))


def fit_nlf(mu: np.ndarray, var: np.ndarray, bins: int = 12) -> tuple[float, float, float]:
    """Noise-level function ``var = a + b mu`` through the lower half of each intensity bin;
    returns ``(a, b, spread)`` with ``spread`` the robust spread of ``log var`` around the fit.

    >>> mu = np.linspace(10, 200, 400)
    >>> a, b, spread = fit_nlf(mu, 4.0 + 0.05 * mu)
    >>> round(a, 2), round(b, 3), round(spread, 3)
    (4.0, 0.05, 0.0)
    """
    mu, var = np.asarray(mu, float), np.asarray(var, float)
    edges = np.unique(np.quantile(mu, np.linspace(0, 1, bins + 1)))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (mu >= lo) & (mu <= hi)
        if sel.sum() >= 4:
            v = var[sel]
            low = v <= np.median(v)
            xs.append(float(np.median(mu[sel][low])))
            ys.append(float(np.median(v[low])))
    if len(xs) < 2:
        return float(np.median(var)), 0.0, 0.0
    b, a = np.polyfit(xs, ys, 1)
    pred = np.maximum(a + b * mu, 1e-6)
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.log(np.maximum(var, 1e-9) / pred)
    return float(a), float(b), mad_sigma(dev)


class RadiographPhysicsDetector(Detector):
    name = "radiograph_physics"
    dims = frozenset({2})
    modalities = RADIOGRAPHS
    description = ("Noise-level function of a radiograph's detector (quantum and electronic noise) and white "
                   "noise, checked over the whole image and region by region.")

    def out_of_domain(self, image: Image) -> str | None:
        """Radiographs of ``MIN_SIZE`` px and more with ``MIN_LEVELS`` grey levels, JPEG no
        coarser than ``MIN_QUALITY``, and noise above ``MIN_NOISE`` grey levels (8-bit scale)."""
        reason = trace_domain(self.name, image, "a noise-level function", "the detector's noise")
        if reason:
            return reason
        noise = _noise_8bit(image.pixels)
        if noise < MIN_NOISE:
            return (f"almost no noise left ({noise:.2f} grey levels of 8 bits at 1 and 2 px): denoised, or "
                    "downsampled so far that the detector's noise is averaged away")
        return None

    def detect(self, image: Image) -> Evidence:
        a = _centre(image.pixels.astype(np.float32, copy=False), MAX_SIDE)
        b = block_size(a.shape)
        st = block_stats(a, b)
        valid = st["valid"]
        details: dict = {"block_px": b, "measured_blocks": int(valid.sum())}
        if valid.sum() < 24:
            return Evidence(self.name, 0.0, "Too few homogeneous blocks to fit a noise-level function.",
                            details={**details, "abstained": True, "raw": 0.0}, indicates="synthesis",
                            confidence="low")
        mu, s1, s2 = st["mu"], st["s1"], st["s2"]
        w = whiteness(s1, s2)
        W = float(np.median(w[valid]))
        nlf_a, nlf_b, spread = fit_nlf(mu[valid], s1[valid] ** 2)
        # JPEG strips the finest noise first, which lowers the whiteness of authentic images as
        # far as up-sampling does: correlated noise counts only without traces of a JPEG grid
        grid, _, _ = jpeg_grid(a)
        comb = jpeg_comb(a)
        # a JPEG file counts whatever its pixels show: a save at quality 93-95 leaves neither grid nor
        # comb that can be seen, and still strips the noise of smooth parts (2 of 120 MHH radiographs)
        jpeg_seen = grid or comb >= COMB_LIMIT or image.format == "jpeg"
        glob_hi = (W - W_HIGH) / W_UNIT
        glob_lo = -np.inf if jpeg_seen else (W_LOW - W) / W_UNIT
        glob = float(max(glob_hi, glob_lo))
        # a region whose noise disagrees with the image's fit: below the noise-level function and/or
        # correlated unlike the rest (either way), each in robust z over the blocks, over 2x2 blocks
        # the level a block is judged against: the binned median of log s1 by intensity, its outer
        # bins split finer (noise_residual's TAIL_QUANTILES), as a display curve crushes the noise of
        # the darkest and brightest blocks of an export (a line would call them noise-free)
        log_pred = binned_level(mu[valid], np.log(np.maximum(s1[valid], 1e-6)), mu)
        zl = np.zeros_like(w)
        zl[valid] = robust_z(np.log(np.maximum(s1[valid], 1e-6)) - log_pred[valid])
        zw = np.zeros_like(w)
        zw[valid] = robust_z(w[valid])
        zl = local_mean(zl[None], valid[None], 2)[0]
        zw = local_mean(zw[None], valid[None], 2)[0]
        # with JPEG only a finer (checkerboard) noise counts: the compression itself makes the
        # smooth parts' noise coarser and weaker than the textured parts'
        zw_dev = np.maximum(zw, 0.0) if jpeg_seen else np.abs(zw)
        zl_dev = np.zeros_like(zl) if jpeg_seen else np.maximum(-zl, 0.0)
        dev = np.hypot(zw_dev, zl_dev)
        dev[~valid] = 0.0
        excess = np.clip(dev - LOCAL_Z, 0, None)
        mass, n_dev = cluster_mass(excess)
        local = mass / LOCAL_UNIT
        raw = max(glob, local)
        score = logistic(raw, MIDPOINT, SCALE)
        heat_grid = np.clip(dev / (2 * LOCAL_Z), 0, 1).astype(np.float32)
        heat, scale = block_heatmap(heat_grid, b, image.pixels.shape, _centre_offset(image.pixels.shape, MAX_SIDE))
        regions = []
        if local >= MIDPOINT:
            regions = regions_from_heatmap(image, heat, threshold=0.5, min_size=1, scale=scale,
                                           note="noise unlike the image's noise-level function or correlated")
        details.update({"raw": round(float(raw), 3), "whiteness": round(W, 3), "global": round(glob, 3),
                        "local": round(float(local), 3), "deviating_blocks": n_dev, "jpeg_grid": bool(grid),
                        "jpeg_comb": round(comb, 3),
                        "nlf": {"electronic": round(nlf_a, 4), "quantum": round(nlf_b, 5), "spread": round(spread, 3)}})
        if score < 0.5:
            expl = "The noise is white, as a detector's noise is, and alike over the whole image."
        elif glob >= local:
            kind = ("finer than white (a checkerboard of a transposed convolution)" if glob_hi >= glob_lo
                    else "correlated between neighbouring pixels")
            expl = (f"The noise over the whole image is {kind} (whiteness {W:.2f}; a detector's lies within "
                    f"{W_LOW} to {W_HIGH}): up-sampled, decoded or generated pixels.")
        else:
            expl = (f"{n_dev} block(s) carry less noise than the image's noise-level function predicts, or noise "
                    "correlated unlike the rest of the image: generated or up-sampled content in part of it.")
        # noise correlated over the whole image is also what enlarging a raster export for display
        # does (and finer noise what sharpening does): reported as processing there, not counted
        indicates = "processing" if glob >= local and image.format in RASTER_EXPORTS else "synthesis"
        if score >= 0.5 and indicates == "processing":
            expl += (" In a raster export this is also what enlarging or sharpening the image for display does, "
                     "so it is reported as processing, not counted as synthesis.")
        return Evidence(self.name, score, expl, heatmap=heat, heatmap_scale=scale, regions=regions, details=details,
                        indicates=indicates, confidence="low")


def binned_level(m: np.ndarray, v: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Median of ``v`` in 16 equal-count bins of ``m`` (the outer bins split at 0.5, 1, 2, 4% of
    the blocks), interpolated at ``at``.

    >>> m = np.linspace(0, 100, 500)
    >>> binned_level(m, 2 * m, np.array([50.0])).round(0).tolist()
    [100.0]
    """
    from .noise_residual import TAIL_QUANTILES

    q = np.concatenate([TAIL_QUANTILES, np.linspace(0, 1, 17)[1:-1], 1 - TAIL_QUANTILES])
    edges = np.unique(np.quantile(m, q))
    centres, levels = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (m >= lo) & (m <= hi)
        if sel.sum() >= 3:
            centres.append(float(np.median(m[sel])))
            levels.append(float(np.median(v[sel])))
    if not centres:
        return np.full(np.shape(at), float(np.median(v)))
    return np.interp(at, centres, levels)


def block_stats(a: np.ndarray, b: int) -> dict[str, np.ndarray]:
    """Per ``b x b`` block of a 2D image: mean ``mu``, fine noise ``s1``, coarse noise ``s2`` and
    ``valid`` (homogeneous, not flat, not saturated, not graphics, not the outer ring)."""
    r1 = immerkaer(a)
    r2 = dilated_residual(a)
    m5 = cv2.blur(a, (5, 5))
    g = np.abs(cv2.Sobel(m5, cv2.CV_32F, 1, 0, ksize=1)) + np.abs(cv2.Sobel(m5, cv2.CV_32F, 0, 1, ksize=1))
    homo = g <= 3.0 * max(float(np.median(g)), 1e-3)
    pb = blocks(a[None], b)[0]
    mu = pb.mean(axis=(1, 3))
    n_h = blocks(homo[None].astype(np.float32), b)[0].sum(axis=(1, 3))
    s1 = trimmed_sigma(blocks(r1[None], b)[0])
    s2 = trimmed_sigma(blocks(r2[None], b)[0])
    lo, hi = (float(v) for v in np.percentile(a[::3, ::3], [0.2, 99.8]))
    span = max(hi - lo, 1e-6)
    quant = span / 2000.0
    rng_ = pb.max(axis=(1, 3)) - pb.min(axis=(1, 3))
    extreme = (mu < lo + 0.04 * span) | (mu > hi - 0.04 * span)
    sat = ((pb <= lo) | (pb >= hi)).mean(axis=(1, 3))
    graphics = (blocks(r1[None], b)[0] == 0).mean(axis=(1, 3)) > 0.6
    inner = np.zeros_like(extreme)
    inner[1:-1, 1:-1] = True
    valid = (n_h >= 0.5 * b * b) & (rng_ > quant) & ~extreme & (sat < 0.3) & ~graphics & inner & (s1 > quant) & (s2 > quant)
    return {"mu": mu, "s1": s1, "s2": s2, "valid": valid}


_DCT = np.array([[np.sqrt((1 if k == 0 else 2) / 8) * np.cos((2 * n + 1) * k * np.pi / 16) for n in range(8)]
                 for k in range(8)])


def jpeg_comb(img: np.ndarray) -> float:
    """How strongly the low-frequency DCT coefficients of the 8x8 blocks (grid at 0, as a JPEG file
    without a crop has it) cluster on multiples of one step, as JPEG quantisation leaves them:
    0 for none, 1 for all exactly on a multiple. Authentic radiographs stay below 0.55; after one
    JPEG save at quality 93 and below it is 0.53 and more (quality 95 and above leave steps of 1,
    which nothing can see).

    >>> rng = np.random.default_rng(0)
    >>> jpeg_comb(rng.normal(128, 6, (64, 64))) < 0.3
    True
    """
    a = np.asarray(img, np.float32)
    h, w = a.shape[0] // 8 * 8, a.shape[1] // 8 * 8
    bl = a[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    bl = bl[bl.std(axis=(1, 2)) > 1.0]
    if len(bl) < 16:
        return 0.0
    if len(bl) > 4000:
        bl = bl[:: len(bl) // 4000]
    c = np.einsum("ij,njk,lk->nil", _DCT, bl, _DCT)
    best = 0.0
    for u, v in ((0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (1, 2), (2, 1)):
        x = c[:, u, v]
        x = x[np.abs(x) < 80]
        if x.size < 16:
            continue
        steps = np.arange(2, 20)[:, None]
        r = np.abs(x[None] / steps - np.round(x[None] / steps)).mean(axis=1)
        best = max(best, float(((0.25 - r) / 0.25).max()))
    return best


def _noise_8bit(px: np.ndarray) -> float:
    """Median noise of a 2D image at the finer of two scales (Immerkaer, taps 1 and 2 px apart,
    trimmed, over 16 px blocks), in grey levels of an 8-bit scale spanning the image's 0.2-99.8%
    range. An up-sampled image keeps its noise at 2 px; an export downsampled until its noise is
    averaged away has none at either scale.

    >>> rng = np.random.default_rng(0)
    >>> round(_noise_8bit(rng.normal(128, 4, (256, 256))), 1) > 0.8
    True
    """
    a = _centre(np.asarray(px, np.float32), 1024)
    lo, hi = (float(v) for v in np.percentile(a[::3, ::3], [0.2, 99.8]))
    span = max(hi - lo, 1e-6)
    mu = blocks(a[None], 16)[0].mean(axis=(1, 3))
    inside = (mu > lo + 0.04 * span) & (mu < hi - 0.04 * span)
    if not inside.any():
        return 0.0
    s = max(float(np.median(trimmed_sigma(blocks(r[None], 16)[0])[inside])) for r in (immerkaer(a), dilated_residual(a)))
    return s * 255.0 / span


if __name__ == "__main__":  # pragma: no cover - calibration helper: raw values on real images
    print_raw_values(RadiographPhysicsDetector(), sys.argv[1:])
