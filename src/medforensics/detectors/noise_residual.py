"""Local noise-residual inconsistency: regions whose noise does not fit the image's own noise model.

Every detector leaves noise, and the noise follows the signal: X-ray quantum noise grows with
the square root of the dose, CT noise with attenuation, and every reconstruction or display
chain shapes it. A spliced region brings another image's noise; in-painting, smoothing and
generators leave too little; rescaling changes it. Method:

1. Residual: Immerkaer's 3x3 operator (blind to edges and ramps) on the 2D image (single
   slices included; CT series are covered slice by slice by ``ct_physics``, which also compares
   neighbouring slices); per block of ``B x B`` pixels (B = 16 up to 1,024 px, larger above) the noise level
   ``sigma = TRIM_GAIN * mean`` of the lower 75 % of ``|r|`` (robust to anatomy that leaks into
   the residual), and the block mean; a block needs half its pixels homogeneous (local gradient
   below 3x its median).
2. Noise level function: the image's own expected ``log sigma`` as a function of intensity,
   the median in 16 intensity bins (quantiles of the block means), interpolated; what is left
   varies smoothly in space and is removed with a 15x15-block median (larger than any edit
   it should find).
3. Deviation ``d`` per block, averaged over 2x2 blocks; saturated or flat blocks (8-bit
   background, clipped values), blocks within 4% of the darkest or brightest level
   (collimation), burned-in graphics (piecewise-constant blocks: most residuals exactly zero; or
   blocks holding a step of ``GRAPHIC_STEP`` (30%) of the range between two adjacent pixels, a
   drawn stroke: the optics spread real edges over several pixels) and the two outermost rings of
   blocks are left out. A block deviates when ``d < -LOG_RATIO`` (noise 1.9x
   below the model) or ``d > LOG_RATIO_UP`` (3.2x above: bone texture and edge enhancement
   raise real residuals locally, so more noise must be stronger to count).
4. Raw statistic: 10 x the largest mass of excess over those thresholds in a connected cluster of
   deviating blocks; score ``logistic(raw, MIDPOINT, SCALE)``, constants set so that the real
   radiographs and CT in ../shared/data stay below 0.5 (``benchmarks/authentic_rate.py``;
   ``python -m medforensics.detectors.noise_residual DATA`` prints the raw values).

CT slices scanned alone (single instances; a series is ``ct_physics``'s): the scanner's padding
outside the field of view (:func:`medforensics.detectors.ct_physics.padding_values`) is left out of
the intensity range, so that the air clipped at about -1,024 HU counts as the darkest level, and
blocks outside the patient or within one block of the skin (:func:`outside_body`) are left out:
the air around the patient is reconstructed smoother than any tissue, and blocks straddling the
skin read as "less noise". Before, 19 of the 133 untouched slices of LIDC-IDRI-0001 scanned one
by one were flagged (up to ``manipulated`` 1.00); now none of the 221 single CT slices of the
fitted sources is (``python benchmarks/authentic_rate.py --single-slices``).

Below the alarm level (score ``ALARM``, 0.5) the explanation names no cause: a few mildly
deviating blocks are what every authentic image has.

Lossy compression (a JPEG file, a lossy DICOM transfer syntax, LossyImageCompression 01) strips
some noise from smooth regions, so on such images a deficit counts only from 3.3x below the model.

Images smaller than ``MIN_SIZE`` pixels on a side are too small for local noise statistics: the
detector abstains (score 0, ``details["abstained"]``).

Exports (``xray/ieee8023``, measured, never fitted to): the display curve of an 8-bit export
flattens toward black and white, so its darkest and brightest blocks carry crushed noise; the
noise-level function therefore splits its outer bins finer (``TAIL_QUANTILES``: 0.5%, 1%, 2%, 4%
of the blocks at each end set their own level instead of being judged against the middle bins).
Two of the three outside radiographs it flagged were dark corners above the shoulders and a
burnt-in letter on a near-black background (raw 122 and 87, scores 1.00 and 0.995; now raw 43 and
0, scores 0.12 and 0.00). On the fitted sources the change is neutral or better: 20/20 in-paintings
and 16/20 rescaled-donor splices in MHH radiographs found as before, 5/6 of the end-to-end test's
splices, and no MHH radiograph reaches 0.5 (two did: ``b343e657``, 0.84, a dark tail like the exports';
``76093afc``, 0.86, the noise-free grey plate of an "L" lead marker, now graphics by its
stroke-sharp edges: 2.5% of the inner blocks of the fitted radiographs hold such a step, the 20
in-painted patches at most 0.24 of the range).

Domain (:meth:`NoiseResidualDetector.out_of_domain`): validated on radiographs (CR, DX, raster
exports as XR) and CT slices; other modalities (ultrasound speckle, MR, nuclear medicine, OT
secondary captures) were never measured. A *posterised* image, whose central 98% of values take
fewer than ``MIN_LEVELS`` distinct grey levels (a 16-colour palette export, dithered), carries
dither and quantisation instead of noise: the third flagged export (12 levels 17 apart, raw 719)
is one. Every fitted radiograph has 65 levels or more (MHH median 159), every outside export but
those three 117 or more.
"""
from __future__ import annotations

import sys
import threading
import zlib

import cv2
import numpy as np
from scipy import ndimage

from ..core import Evidence, Image
from ._blocks import blocks, cluster_mass, immerkaer, jpeg_grid, local_mean
from .ct_physics import padding_values
from .base import Detector, coarse_cover, logistic, print_raw_values, regions_from_heatmap, unvalidated_modality

MIDPOINT, SCALE = 55.0, 6.0
LOG_RATIO = 0.65     # less noise than the model: 1.9x below
LOG_RATIO_UP = 1.15  # more noise than the model: 3.2x above
LOG_RATIO_LOSSY = 1.2  # less noise after lossy compression: 3.3x below
MIN_SIZE = 128
#: from this score on the evidence names a cause (in-painting, splicing, ...); below it, none
ALARM = 0.5
#: extra bin edges of the noise-level function at both ends (quantiles of the block means)
TAIL_QUANTILES = np.array([0.0, 0.005, 0.01, 0.02, 0.04])
#: a step between adjacent pixels of this share of the image's range marks a drawn stroke
GRAPHIC_STEP = 0.3
#: fewer distinct grey levels than this in the central 98% of values: posterised (5 bits or less)
MIN_LEVELS = 32
#: sigma / mean(lower 75% of |r|) for Gaussian noise
TRIM_GAIN = 1.9404


def block_size(shape: tuple[int, int]) -> int:
    return int(max(8, min(64, round(min(shape) / 40 / 8) * 8 or 8, 16 if max(shape) <= 1024 else 64)))


#: DICOM transfer syntaxes that may be lossy (JPEG baseline/extended, JPEG-LS near-lossless,
#: JPEG 2000 irreversible, HTJ2K)
LOSSY_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
                  "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}


def is_lossy(image: Image) -> bool:
    """Whether the pixels went through lossy compression (JPEG file, lossy DICOM syntax, a DICOM
    header that says so, or a raster file whose pixels carry a JPEG 8x8 block grid: a web export
    saved as JPEG, then as PNG; :func:`medforensics.detectors._blocks.jpeg_grid` on its first
    1,024 px, which keep the grid's phase)."""
    if image.format == "jpeg":
        return True
    if image.format in ("png", "tiff") and image.pixels.ndim == 2 and min(image.pixels.shape) >= 64:
        return bool(jpeg_grid(image.pixels[:1024, :1024])[0])
    if image.format == "dicom":
        if image.meta.get("transfer_syntax") in LOSSY_SYNTAXES:
            return True
        return any(str(ds.get("LossyImageCompression", "")) == "01" for ds in image.datasets[:1])
    return False


_LEVELS_CACHE: list = []   # [(key, count)] of the last image counted
_LEVELS_LOCK = threading.Lock()


def grey_levels(img: np.ndarray) -> int:
    """Distinct values within the central 98% of a 2D image (a 1,024 px view is enough); 0 for
    anything else.

    Three detectors' domains ask it of the same image (``noise_residual``, ``spectral``,
    ``radiograph_physics``): the last image's count is kept, keyed by the array's identity, shape
    and a CRC-32 of its bytes (a seventh of the count's time on a 2,000 px radiograph), so an
    array changed in place is counted again."""
    a = np.asarray(img)
    if a.ndim != 2 or a.size == 0:
        return 0
    if not a.flags.c_contiguous:
        return _grey_levels(a)
    key = (id(img), a.shape, a.dtype.str, a.ctypes.data, zlib.crc32(memoryview(a).cast("B")))
    with _LEVELS_LOCK:   # detectors asking at once (in analyze's threads) wait for one count
        if _LEVELS_CACHE and _LEVELS_CACHE[0][0] == key:
            return _LEVELS_CACHE[0][1]
        n = _grey_levels(a)
        _LEVELS_CACHE[:] = [(key, n)]
    return n


def _grey_levels(a: np.ndarray) -> int:
    step = max(1, max(a.shape) // 1024)
    a = a[::step, ::step]
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0
    lo, hi = np.percentile(a, [1, 99])
    inside = a[(a >= lo) & (a <= hi)]
    if inside.size and hi - lo < 1 << 20 and np.array_equal(inside, np.round(inside)):
        # integer values (stored values, gray levels, most HU): a count per value instead of a sort
        return int(np.count_nonzero(np.bincount((inside - lo).astype(np.int64))))
    return int(np.unique(inside).size)


#: CT: pixels above this (HU) are the patient (or the table); the air around them is not
BODY_HU = -500.0


def outside_body(vol: np.ndarray, b: int) -> np.ndarray:
    """Per block of a CT ``(z, H, W)`` volume in HU: whether any pixel lies outside the patient,
    or within ``b`` pixels of it.

    The air around the patient is reconstructed smoother than any tissue (about 6 HU against
    20-40 in lung and soft tissue in LIDC-IDRI-0001), and the blocks that straddle the skin mix
    the two: judged by intensity alone they read as "less noise" (19 of 133 untouched LIDC
    slices scanned alone were flagged so). The body is everything above ``BODY_HU`` with its
    holes (lungs, airways) filled.
    """
    out = np.zeros((vol.shape[0], vol.shape[1] // b, vol.shape[2] // b), bool)
    for k in range(vol.shape[0]):
        body = ndimage.binary_fill_holes(vol[k] > BODY_HU).astype(np.uint8)
        # eroded by a disc of radius b px; the image's edge counts as outside
        disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * b + 1, 2 * b + 1))
        core = cv2.erode(body, disc, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        away = core == 0
        out[k] = blocks(away[None], b)[0].any(axis=(1, 3))
    return out


class NoiseResidualDetector(Detector):
    name = "noise_residual"
    dims = frozenset({2})
    needs_physical_units = True   # a CT slice's patient is found in HU
    description = ("Local noise inconsistent with the image's own noise-level function (splicing, in-painting, "
                   "smoothing, local rescaling).")

    def out_of_domain(self, image: Image) -> str | None:
        """Radiographs and CT slices with more than ``MIN_LEVELS`` grey levels."""
        outside = unvalidated_modality(self.name, image)
        if outside:
            return outside
        n = grey_levels(image.pixels)
        if 0 < n < MIN_LEVELS:
            return (f"posterised to {n} grey levels: its pixels carry dither and quantisation, not the acquisition's "
                    "noise")
        return None

    def detect(self, image: Image) -> Evidence:
        if min(image.pixels.shape[-2:]) < MIN_SIZE:
            return Evidence(self.name, 0.0, f"The image is too small ({image.pixels.shape[-2]}x"
                            f"{image.pixels.shape[-1]} px) for local noise statistics.",
                            details={"abstained": True})
        vol = image.pixels if image.pixels.ndim == 3 else image.pixels[None]
        b = block_size(vol.shape[1:])
        ct = image.modality == "CT"
        pads = padding_values(vol) if ct else []
        d, valid, stats = self._deviation(vol.astype(np.float32, copy=False), b, pads, ct)
        signed = local_mean(d, valid, 2)
        signed[~valid] = 0.0
        # excess over the threshold: more noise must be stronger to count than less noise, as
        # bone texture and edge enhancement raise the residual of real radiographs locally
        lossy = is_lossy(image)
        # lossy compression strips some noise from smooth regions: a deficit must then be larger
        low = LOG_RATIO_LOSSY if lossy else LOG_RATIO
        excess = np.maximum(-signed - low, signed - LOG_RATIO_UP)
        mass, n_dev = cluster_mass(excess)
        z = np.clip(excess + LOG_RATIO, 0, None)
        raw = 10.0 * mass
        score = logistic(raw, MIDPOINT, SCALE)
        heat_grid = np.clip((z - 0.5 * LOG_RATIO) / LOG_RATIO, 0, 1).astype(np.float32)
        scale = (1, b, b)
        if image.pixels.ndim == 2:
            heat_grid, scale = heat_grid[0], (b, b)
        heat_grid = coarse_cover(heat_grid, scale, image.pixels.shape)   # the heatmap is the block grid
        alarm = score >= ALARM
        regions = regions_from_heatmap(image, heat_grid, threshold=0.5, min_size=1, scale=scale,
                                       note="noise unlike the image's own noise model" if alarm else
                                       "a noise deviation below the detector's alarm level")
        if raw < 0.6 * MIDPOINT:
            expl = "The noise is consistent with the image's own noise model everywhere."
        elif not alarm:
            # the wording follows the score: below the alarm level nothing points to an edit
            expl = (f"No sign of an edit in the noise: {n_dev} block(s) depart from the image's noise model, "
                    f"too little to indicate one (raw {raw:.0f}, below the alarm level {MIDPOINT:.0f}).")
        else:
            sign = float(np.sign(np.sum(signed[excess > 0])))
            kind = "less noise than" if sign < 0 else "more noise than"
            expl = (f"{n_dev} block(s) carry {kind} the image's noise model predicts, as left by "
                    f"{'in-painting, smoothing or synthesis' if sign < 0 else 'splicing or local rescaling'}.")
        return Evidence(self.name, score, expl, heatmap=heat_grid, heatmap_scale=scale, regions=regions,
                        details={"raw": round(raw, 3), "block_px": b, "deviating_blocks": n_dev,
                                 "lossy_compression": lossy, **stats})

    @staticmethod
    def _deviation(vol: np.ndarray, b: int, pads: list[float] = (), ct: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, dict]:
        res = np.empty_like(vol)
        homo = np.empty(vol.shape, bool)
        for k in range(vol.shape[0]):
            s = vol[k]
            res[k] = immerkaer(s)
            m5 = cv2.blur(s, (5, 5))
            g = np.abs(cv2.Sobel(m5, cv2.CV_32F, 1, 0, ksize=1)) + np.abs(cv2.Sobel(m5, cv2.CV_32F, 0, 1, ksize=1))
            homo[k] = g <= 3.0 * max(float(np.median(g)), 1e-3)
        w = blocks(homo.astype(np.float32), b)
        n_h = w.sum(axis=(2, 4))
        pb = blocks(vol, b)
        mean = pb.mean(axis=(2, 4))
        sample = vol[:, ::3, ::3]
        if len(pads):
            # the scanner's padding outside the field of view is no intensity of the image: with it
            # in the range, the clipped air outside the patient would not count as the darkest level
            kept = sample[~np.isin(sample, pads)]
            sample = kept if kept.size else sample
        lo, hi = (float(v) for v in np.percentile(sample, [0.2, 99.8]))
        span = max(hi - lo, 1e-6)
        quant = span / 2000.0  # below this the noise is quantisation, not signal
        # a trimmed mean of |r| (the lower 75%) ignores most of the anatomy that leaks into the
        # residual (trabecular bone, vessels, edge enhancement) and stays smooth on 8-bit data;
        # large blocks are subsampled on a 2x2 lattice for speed
        step = 2 if b >= 32 else 1
        rb = np.abs(blocks(res, b)[:, :, ::step, :, ::step])
        z_, gh, _, gw, _ = rb.shape
        flat_r = rb.transpose(0, 1, 3, 2, 4).reshape(z_, gh, gw, -1)
        cut = int(0.75 * flat_r.shape[-1])
        part = np.partition(flat_r, cut, axis=-1)[..., :cut]
        sigma = TRIM_GAIN * part.mean(axis=-1)
        log_sigma = np.log(np.maximum(sigma, quant))
        sat = ((pb <= lo) | (pb >= hi)).mean(axis=(2, 4))
        value_range = pb.max(axis=(2, 4)) - pb.min(axis=(2, 4))   # once: it is a pass over the image
        flat = value_range <= quant
        # near-black and near-white blocks (collimation, direct exposure, burned-in text) carry
        # clipped, quantised noise; the outermost ring of blocks holds borders and labels
        extreme = (mean < lo + 0.04 * span) | (mean > hi - 0.04 * span)
        inner = np.zeros_like(flat)
        inner[:, 2:-2, 2:-2] = True
        # burned-in graphics (labels, markers) are piecewise constant with sharp strokes: most
        # residuals exactly 0 and a large value range (an in-painted patch is smooth, not stroked)
        graphics = ((blocks(res, b) == 0).mean(axis=(2, 4)) > 0.6) & \
            (value_range > 0.25 * span)
        # ... or hold a step between two adjacent pixels of GRAPHIC_STEP of the range or more: the
        # optics and detector of a radiograph spread every edge over several pixels, a drawn stroke
        # (a lead marker's plate, a letter, an arrow) does not (in-painted patches stay under 0.25)
        step = np.zeros_like(vol)
        step[:, :, :-1] = np.abs(np.diff(vol, axis=2))
        np.maximum(step[:, :-1, :], np.abs(np.diff(vol, axis=1)), out=step[:, :-1, :])
        graphics |= blocks(step, b).max(axis=(2, 4)) >= GRAPHIC_STEP * span
        valid = (n_h >= 0.5 * b * b) & np.isfinite(log_sigma) & (sat < 0.3) & ~flat & ~extreme & inner & ~graphics
        if ct:
            valid &= ~outside_body(vol, b)
        d = np.zeros_like(log_sigma)
        stats: dict = {"measured_blocks": int(valid.sum()), "graphics_blocks": int(graphics.sum())}
        if valid.sum() < 16:
            return d, np.zeros_like(valid), {**stats, "note": "too few measurable blocks"}
        # noise level function: median log sigma per intensity bin
        m, ls = mean[valid], log_sigma[valid]
        # 16 equal-count bins, the outer ones split finer: a display curve flattens toward black and
        # white (its toe and shoulder), where the noise of an 8-bit export is crushed; the few blocks
        # there must set their own level rather than be judged against the bins' middle
        edges = np.unique(np.quantile(m, np.concatenate([TAIL_QUANTILES, np.linspace(0, 1, 17)[1:-1],
                                                          1 - TAIL_QUANTILES])))
        centres, levels = [], []
        for a, c in zip(edges[:-1], edges[1:]):
            sel = (m >= a) & (m <= c)
            if sel.sum() >= 3:
                centres.append(float(np.median(m[sel])))
                levels.append(float(np.median(ls[sel])))
        nlf = np.interp(mean, centres, levels) if centres else np.full_like(mean, np.median(ls))
        resid = np.where(valid, log_sigma - nlf, np.nan)
        # smooth spatial trend, per slice
        trend = np.zeros_like(resid)
        for k in range(resid.shape[0]):
            r = resid[k]
            filled = np.where(np.isfinite(r), r, np.nanmedian(r) if np.isfinite(r).any() else 0.0)
            trend[k] = ndimage.median_filter(filled, size=15, mode="nearest")
        d = np.where(valid, resid - trend, 0.0)
        stats["noise_level_function"] = {"intensity": [round(c, 2) for c in centres],
                                         "sigma": [round(float(np.exp(v)), 3) for v in levels]}
        return d, valid, stats


if __name__ == "__main__":  # pragma: no cover - calibration helper: raw values on real images
    print_raw_values(NoiseResidualDetector(), sys.argv[1:])
