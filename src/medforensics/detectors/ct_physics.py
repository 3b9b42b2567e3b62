"""CT physics consistency: Hounsfield units and quantum noise where the physics says they must be.

Method (vectorised over the whole volume, one value per block of ``B x B`` pixels, B = 16 for a
512 image):

1. **Noise level.** Immerkaer's operator (a 3x3 kernel blind to edges and ramps) measures the
   quantum noise; per block, its level ``sigma = sqrt(pi/2)/6 * mean|r|`` is taken over
   *homogeneous* pixels only (gradient of the smoothed image below 60 HU/px), inside the
   patient (largest body region, lungs included, one block in from its edge, so the couch and
   the skin-air edge stay out), in two tissue classes where CT noise is well defined: lung
   parenchyma (-950..-500 HU) and soft tissue/fat (-150..150 HU).
2. **Noise texture (noise power spectrum shape).** The ratio of residual energy in the highest
   band (``I - mean3x3``) to a middle band (``mean3x3 - mean7x7``) per block: it summarises
   where the NPS peaks, which depends on the reconstruction kernel. In-painted, generated,
   smoothed or pasted regions have another NPS.
3. **Expected values.** Real CT noise varies smoothly across a slice (higher in the centre of
   the body) and from slice to slice. Each block is compared with the median of the blocks of
   its own tissue class around it (5x5 blocks in-plane, and the neighbouring slices of a
   series), in log units; deviations are turned into robust z-scores with the image's own
   spread. A slice whose overall noise level or texture departs from its neighbours is
   flagged as a whole.
4. **HU plausibility.** Air outside the body must sit near -1000 HU and values below -1050 HU
   (other than the scanner's padding outside the field of view) must be rare.

The heatmap is ``clip((|z| - 3) / 3, 0, 1)`` per block. The raw statistic is the largest
"mass" ``sum(|z| - 3.5)`` of a connected cluster of deviating blocks (plus slice- and HU-level
terms); the score is ``logistic(raw, MIDPOINT, SCALE)`` with constants set so that the real CT
in ../shared/data stays below 0.5 (``benchmarks/authentic_rate.py``; the per-image raw values are
printed by ``python -m medforensics.detectors.ct_physics DATA``).
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from ..core import Evidence, Image
from ._blocks import blocks, cluster_mass, immerkaer, local_mean
from .base import Detector, logistic, regions_from_heatmap

MIDPOINT, SCALE = 30.0, 4.0
LOG_RATIO = 0.9  # a block deviates when its noise is 2.5x above or below what its neighbours predict
Z_SLICE = 5.0
CLASSES = {"lung": (-950.0, -500.0), "soft tissue": (-150.0, 150.0)}
MAD_FLOOR = 0.08
MIN_HOMOGENEOUS = 0.5  # share of homogeneous pixels a block needs to be measured


def _block_size(shape: tuple[int, int]) -> int:
    return int(max(8, min(32, min(shape) // 32)))


def _filtered(vol: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice: high band, middle band residuals and a homogeneity mask."""
    hi = np.empty_like(vol)
    mid = np.empty_like(vol)
    homo = np.empty(vol.shape, bool)
    for k in range(vol.shape[0]):
        s = vol[k]
        m3 = cv2.blur(s, (3, 3))
        m7 = cv2.blur(s, (7, 7))
        hi[k] = immerkaer(s)
        mid[k] = m3 - m7
        gx = cv2.Sobel(m7, cv2.CV_32F, 1, 0, ksize=3) / 8
        gy = cv2.Sobel(m7, cv2.CV_32F, 0, 1, ksize=3) / 8
        homo[k] = (gx * gx + gy * gy) < 60.0 ** 2
    return hi, mid, homo


def _neighbourhood_mean(grid: np.ndarray, valid: np.ndarray, depth: int) -> np.ndarray:
    """Expected value of each cell from its valid neighbours (normalised convolution; NaN where
    fewer than three neighbours are valid).

    In a series (``depth`` 1) the neighbours are the 3x3 cells at the same place on the slices
    above and below: the anatomy there is nearly the same, so the noise should be too. In a
    single slice they are the 5x5 cells around it, the cell itself left out.
    """
    if depth:
        kernel = np.zeros((3, 3, 3))
        kernel[0] = kernel[2] = 1.0
    else:
        kernel = np.ones((1, 5, 5))
        kernel[0, 2, 2] = 0.0
    x = np.where(valid, grid, 0.0).astype(np.float64)
    n = ndimage.convolve(valid.astype(np.float64), kernel, mode="constant")
    t = ndimage.convolve(x, kernel, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 3, t / n, np.nan)


def _body(smooth: np.ndarray) -> np.ndarray:
    """Blocks inside the patient: per slice the largest connected region above -500 HU with its
    holes (the lungs) filled, shrunk by one block so that skin, couch and air edges stay out."""
    out = np.zeros(smooth.shape, bool)
    for k in range(smooth.shape[0]):
        lab, n = ndimage.label(smooth[k] > -500)
        if n == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(lab), lab, np.arange(1, n + 1))
        body = ndimage.binary_fill_holes(lab == 1 + int(np.argmax(sizes)))
        out[k] = ndimage.binary_erosion(body, iterations=1)
    return out


def _robust_z(d: np.ndarray) -> np.ndarray:
    v = d[np.isfinite(d)]
    if v.size < 8:
        return np.zeros_like(d)
    med = np.median(v)
    mad = 1.4826 * np.median(np.abs(v - med))
    mad = max(mad, MAD_FLOOR)  # sampling error of a block estimate bounds how small the spread can be
    return (d - med) / mad


class CTPhysicsDetector(Detector):
    name = "ct_physics"
    description = ("CT physics: HU of air, lung, fat, soft tissue and bone; noise level and noise power spectrum "
                   "consistent across regions and slices.")
    modalities = frozenset({"CT"})

    def detect(self, image: Image) -> Evidence:
        vol = image.pixels if image.pixels.ndim == 3 else image.pixels[None]
        vol = vol.astype(np.float32, copy=False)
        b = _block_size(vol.shape[1:])
        hi, mid, homo = _filtered(vol)
        smooth = blocks(vol, b).mean(axis=(2, 4))
        hom_share = blocks(homo.astype(np.float32), b).mean(axis=(2, 4))
        w = blocks(homo.astype(np.float32), b)
        n_h = w.sum(axis=(2, 4))
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma = 1.2533 * (np.abs(blocks(hi, b)) * w).sum(axis=(2, 4)) / n_h
            sig_mid = 1.2533 * (np.abs(blocks(mid, b)) * w).sum(axis=(2, 4)) / n_h
            # floors: a noise-free (in-painted, generated, smoothed) block must stay measurable
            log_sigma = np.log(np.maximum(sigma, 0.05))
            texture = np.log(np.maximum(sigma, 0.05) / np.maximum(sig_mid, 0.05))
        valid = (hom_share >= MIN_HOMOGENEOUS) & np.isfinite(log_sigma) & np.isfinite(texture) & _body(smooth)
        depth = 1 if vol.shape[0] >= 3 else 0
        z_noise = np.zeros_like(log_sigma)
        z_tex = np.zeros_like(log_sigma)
        classes = np.full(log_sigma.shape, -1, np.int8)
        for ci, (lo, hi_) in enumerate(CLASSES.values()):
            cls = valid & (smooth >= lo) & (smooth < hi_)
            classes[cls] = ci
            for src, dst in ((log_sigma, z_noise), (texture, z_tex)):
                d = src - _neighbourhood_mean(np.nan_to_num(src), cls, depth)
                ok = cls & np.isfinite(d)
                dst[cls] = np.abs(local_mean(np.nan_to_num(d), ok)[cls])
        # z: log-ratio of the block's noise (or NPS shape) to what its neighbours predict
        z = np.maximum(z_noise, 0.7 * z_tex)
        z[classes < 0] = 0.0
        if depth and z.shape[0] > 2:
            # the first and last slice have a neighbour on one side only: too noisy a reference
            z[0] = z[-1] = 0.0

        # clusters of deviating blocks
        mass, n_dev = cluster_mass(z - LOG_RATIO)
        cluster = 10.0 * mass

        # slice-level consistency in a series
        slice_terms, odd_slices = self._slice_level(log_sigma, texture, classes)
        hu_terms, hu_notes = self._hu_checks(vol)
        raw = cluster + slice_terms + hu_terms
        score = logistic(raw, MIDPOINT, SCALE)

        heat_grid = np.clip((z - 0.5 * LOG_RATIO) / LOG_RATIO, 0, 1).astype(np.float32)
        for k in odd_slices:
            heat_grid[k] = np.maximum(heat_grid[k], 0.6 * (classes[k] >= 0))
        scale = (1, b, b)
        heat = np.kron(heat_grid, np.ones((1, b, b), np.float32))
        full = np.zeros(vol.shape, np.float32)
        full[:, : heat.shape[1], : heat.shape[2]] = heat
        if image.pixels.ndim == 2:
            full, heat_grid, scale = full[0], heat_grid[0], (b, b)
        regions = regions_from_heatmap(image, heat_grid, threshold=0.34, min_size=1, scale=scale,
                                       note="noise level or texture unlike its surroundings")
        if raw < MIDPOINT * 0.6:
            expl = "HU and noise are consistent with CT physics across the image."
        elif hu_notes and hu_terms >= cluster:
            expl = hu_notes[0]
        elif odd_slices and slice_terms >= cluster:
            expl = (f"Slice(s) {', '.join(map(str, odd_slices[:5]))} have a noise level or texture unlike their "
                    "neighbours, as if re-processed or taken from another scan.")
        else:
            expl = (f"{n_dev} block(s) have a noise level or noise texture unlike the surrounding tissue, as left by "
                    "pasting, in-painting, smoothing or rescaling.")
        details = {
            "raw": round(raw, 3), "cluster_mass": round(cluster, 3), "slice_term": round(slice_terms, 3),
            "hu_term": round(hu_terms, 3), "block_px": b, "deviating_blocks": n_dev,
            "measured_blocks": int((classes >= 0).sum()),
            "noise_sigma_hu_median": {name: _median_or_none(np.exp(log_sigma[classes == ci]))
                                      for ci, name in enumerate(CLASSES)},
            "nps_high_mid_ratio_median": _median_or_none(np.exp(texture[classes >= 0])),
            "odd_slices": odd_slices, "hu_notes": hu_notes,
        }
        return Evidence(self.name, score, expl, heatmap=full, regions=regions, details=details)

    @staticmethod
    def _slice_level(log_sigma: np.ndarray, texture: np.ndarray, classes: np.ndarray) -> tuple[float, list[int]]:
        nz = log_sigma.shape[0]
        if nz < 5:
            return 0.0, []
        per = []
        for arr in (log_sigma, texture):
            m = np.where(classes == 1, arr, np.nan).reshape(nz, -1)
            with np.errstate(all="ignore"):
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    med = np.nanmedian(m, axis=1)
            pad = np.pad(med, 2, mode="edge")
            win = sliding_window_view(pad, 5).copy()
            win[:, 2] = np.nan
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                nb = np.nanmedian(win, axis=1)
            d = med - nb
            z = _robust_z(np.where(np.isfinite(d), d, np.nan))
            per.append(np.nan_to_num(np.abs(z)))
        zz = np.maximum(*per)
        odd = [int(k) for k in np.nonzero(zz > Z_SLICE)[0]]
        return float(np.sum(np.clip(zz - Z_SLICE, 0, None)) * 3.0), odd

    @staticmethod
    def _hu_checks(vol: np.ndarray) -> tuple[float, list[str]]:
        sample = vol[:: max(1, vol.shape[0] // 12), ::2, ::2]
        inside = sample[sample > -1500]  # scanners pad outside the field of view with -2000/-3024
        notes, term = [], 0.0
        if inside.size == 0:
            return 0.0, []
        air = inside[inside < -950]  # below lung: air outside the body and in the airways
        if air.size > 0.02 * inside.size:
            hist, edges = np.histogram(air, bins=70, range=(-1300, -950))
            peak = float(edges[np.argmax(hist)] + 2.5)
            if abs(peak + 1000) > 60:
                term += min(abs(peak + 1000) - 60, 120) / 2
                notes.append(f"Air sits at {peak:.0f} HU instead of about -1000 HU.")
        below = float(np.mean(inside < -1080))
        if below > 0.01:
            term += min(below * 400, 60)
            notes.append(f"{100 * below:.1f}% of the pixels lie below -1080 HU, which no tissue or air produces.")
        return term, notes


def _median_or_none(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return round(float(np.median(v)), 3) if v.size else None


if __name__ == "__main__":  # pragma: no cover - calibration helper: raw values on real CT
    from ..io import discover, load_source
    det = CTPhysicsDetector()
    srcs, _ = discover(sys.argv[1:])
    for s in srcs:
        try:
            im = load_source(s)
        except Exception:  # noqa: BLE001
            continue
        if det.applies(im):
            ev = det.detect(im)
            print(f"{ev.details['raw']:8.2f} {ev.score:.3f} {im.pixels.shape} {s.path}")
