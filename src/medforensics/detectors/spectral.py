"""Spectral traces of generation: the periodic pattern that up-sampling leaves in the noise residual.

Every decoder that makes a large image from a small one -- a transposed convolution of stride 2,
a nearest or bilinear up-sampling followed by convolutions, the stages of a VAE or GAN decoder --
computes the pixels of even and odd positions with different weights. The image's *fine residual*
(second differences, which cancel smooth anatomy) then has an energy that repeats with period 2
(4, 8 for stacked stages) along rows and columns: peaks at N/2, N/4 (and N/8) of the sampling
frequency in the residual's spectrum. A detector's own pixels have no such period: its noise is
(nearly) white and independent from pixel to pixel.

Method (vectorised, at native resolution; the central :data:`MAX_SIDE` x :data:`MAX_SIDE` px are read):

1. Residual along each axis: ``d = x[j-1] - 2 x[j] + x[j+1]`` (rows and columns), its magnitude
   clipped at the 95th percentile (edges are not periodic, they only add variance).
2. Phase profile: the mean of ``|d|`` over all pixels of the same phase ``j mod 8`` (eight values
   per axis; :func:`phase_profile`). Its discrete Fourier coefficients ``M(k)`` relative to
   ``M(0)`` are the *modulation depth* at ``k/8`` of the sampling frequency: ``k = 4`` is period 2,
   ``k = 2, 6`` period 4 (:func:`modulation`).
3. **JPEG.** The 8x8 DCT grid of a JPEG file also gives ``|d|`` a period of 8: its block
   boundary raises one or two phases of eight, which gives all harmonics ``k = 1..4`` alike. Up-sampling
   by 2 or 4 gives ``k = 4`` (and ``k = 2``) and not the odd ones. Only the excess of ``k = 4`` and
   ``k = 2`` over the larger odd harmonic counts (:func:`clean_depths`); period 8 (``k = 1``) is never
   counted. Measured: authentic radiographs after one JPEG save at quality 75-95 keep this excess at
   or below 0.010 along both axes (without it, their raw period-2 depth reaches 0.07).
4. Whole image: depth ``D``, the largest period-2 or period-4 depth found along *both* axes
   (:func:`isotropic_depth`; an export stretched along one axis is not a decoder). Tiles of :data:`TILE` px give the same per tile (heatmap); a tile counts as far as one
   of its 8 neighbours backs it (an up-sampled region covers several tiles).
5. Fall-off (reported, not scored): the fine residual's level after 2x2 binning over that of
   the image (0.5 for white noise, towards 1 and above where the top octave of frequencies is
   missing; :func:`falloff_ratio`). JPEG alone moves it as far as up-sampling does, so it is not
   scored.

Raw statistic: ``max(D / DEPTH_UNIT, supported tile depth / TILE_UNIT)``; score ``logistic(raw, MIDPOINT,
SCALE)``. Constants set on the Hannover radiographs (fitted source), with and without one JPEG save
at quality 75-95 (``benchmarks/generation_traces.py``), and checked on every fitted source with
``benchmarks/authentic_rate.py``; figures in ``docs/detectors/spectral.md``.

The evidence ``indicates`` synthesis with ``low`` confidence (fusion lets it alone reach
``suspicious`` only), except for a trace over the whole image of a raster export (PNG, JPEG,
TIFF): an image enlarged for display carries the same trace as a decoder's output (one outside web
export, ``radiopaedia/covid-19-pneumonia-58-day-7.jpg``, is enlarged exactly 2x), so there the
evidence ``indicates`` processing, reported and not counted. A trace confined to part of the image
(a pasted generated region) and any trace in a DICOM radiograph count as synthesis.

Domain (:meth:`SpectralDetector.out_of_domain`): radiographs (CR, DX, raster exports as XR) of at
least ``MIN_SIZE`` px, with ``MIN_LEVELS`` grey levels or more, and no JPEG coarser than quality
``MIN_QUALITY`` (when the file's quantisation table says so). Heavy JPEG rounds the fine
residual to zero in most blocks; a posterised image carries dither instead of noise.
"""
from __future__ import annotations

import sys

import numpy as np

from ..core import Evidence, Image
from .base import Detector, block_heatmap, logistic, print_raw_values, regions_from_heatmap
from ._blocks import GRID_RATIO, jpeg_grid  # noqa: F401 - jpeg_grid is part of this module's API
from .noise_residual import MIN_LEVELS, grey_levels

RADIOGRAPHS = frozenset({"CR", "DX", "XR"})
#: containers of exports, where a whole-image up-sampling trace may be an enlargement for display
RASTER_EXPORTS = frozenset({"png", "jpeg", "tiff"})
MIN_SIZE = 256
MAX_SIDE = 1024
TILE = 64
MIN_QUALITY = 70
#: whole-image depth that counts as one unit of evidence; tile depth of one unit
DEPTH_UNIT, TILE_UNIT = 0.02, 0.1
#: depth of a fixed (signed) pattern that counts as one unit (:func:`mean_pattern`)
MEAN_UNIT = 0.03
MIDPOINT, SCALE = 2.0, 0.25


def second_differences(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Second differences along columns (``dx``, shape ``(h, w - 2)``, value at column ``j + 1``)
    and rows (``dy``, ``(h - 2, w)``).

    >>> x = np.add.outer(np.arange(4.0), np.arange(5.0) ** 2)
    >>> dx, dy = second_differences(x)
    >>> dx[0].tolist(), float(abs(dy).max())
    ([2.0, 2.0, 2.0], 0.0)
    """
    a = np.asarray(img, np.float32)
    return a[:, :-2] - 2 * a[:, 1:-1] + a[:, 2:], a[:-2] - 2 * a[1:-1] + a[2:]


def phase_profile(mag: np.ndarray, axis: int, start: int = 1, period: int = 8) -> np.ndarray:
    """Mean of ``mag`` over all positions of each phase ``(start + index) mod period`` along
    ``axis`` (``start``: the image position of index 0; 1 for :func:`second_differences`).

    >>> m = np.tile([3.0, 1.0], (4, 8))          # columns alternate 3, 1, 3, 1, ...
    >>> phase_profile(m, axis=1, start=0).tolist()
    [3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0]
    """
    col = np.asarray(mag, np.float64).mean(axis=1 - axis)
    idx = (np.arange(col.size) + start) % period
    s = np.bincount(idx, weights=col, minlength=period)
    n = np.bincount(idx, minlength=period)
    return s / np.maximum(n, 1)


def harmonics(profile: np.ndarray) -> np.ndarray:
    """Modulation depth ``|M(k)| / M(0)`` of an 8-phase profile for ``k = 1..4`` (``k/8`` of the
    sampling frequency; k = 4: period 2, k = 2: period 4, k = 1, 3: period 8).

    >>> harmonics(np.array([3.0, 1.0] * 4)).round(3).tolist()
    [0.0, 0.0, 0.0, 0.5]
    """
    f = np.fft.rfft(np.asarray(profile, np.float64))
    return np.abs(f[1:]) / max(abs(f[0].real), 1e-12)


def clean_depths(h: np.ndarray) -> tuple[float, float]:
    """Period-2 and period-4 depths of :func:`harmonics` ``h`` beyond what a JPEG grid explains.

    An 8x8 grid raises the profile at one or two phases of eight (the block boundary), which gives
    all harmonics k = 1..4 alike; up-sampling by 2 or 4 gives k = 4 (and 2) but not the odd ones.
    So only the excess of k = 4 and k = 2 over the larger odd harmonic is counted.

    >>> clean_depths(np.array([0.0, 0.0, 0.0, 0.5]))          # period 2, no grid
    (0.5, 0.0)
    >>> clean_depths(np.array([0.1, 0.1, 0.1, 0.1]))          # a block-boundary spike
    (0.0, 0.0)
    """
    odd = max(float(h[0]), float(h[2]))
    return max(0.0, float(h[3]) - odd), max(0.0, float(h[1]) - odd)


def falloff_ratio(img: np.ndarray) -> float:
    """Fine residual level of a 2x2-binned copy over that of the image: 0.5 for white noise,
    towards 1 and above when the highest frequencies are missing (up-sampled, smoothed).

    >>> rng = np.random.default_rng(1)
    >>> round(falloff_ratio(rng.normal(0, 1, (256, 256))), 1)
    0.5
    """
    from ._blocks import immerkaer

    a = np.asarray(img, np.float32)
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    binned = a[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    s1 = float(np.median(np.abs(immerkaer(a))))
    s2 = float(np.median(np.abs(immerkaer(binned))))
    return s2 / s1 if s1 > 0 else 1.0


def mean_pattern(img: np.ndarray) -> tuple[float, float]:
    """Period-2 and period-4 depth of a *fixed* pattern in the residual: the mean of the signed
    Immerkaer residual per phase ``(row mod 8, column mod 8)``, its 2D Fourier components at
    period 2 (``(1/2, 0)``, ``(0, 1/2)``, ``(1/2, 1/2)``) and period 4, in units of ``mean |r|``, less
    the largest period-8 component (a JPEG grid's). A transposed convolution whose sub-kernels sum
    to different values paints a checkerboard of this kind; its ``|d|`` is alike at every phase.

    >>> rng = np.random.default_rng(0)
    >>> noise = rng.normal(100, 4, (256, 256))
    >>> checker = noise + 3.0 * (-1.0) ** np.add.outer(np.arange(256), np.arange(256))
    >>> round(mean_pattern(noise)[0], 1), mean_pattern(checker)[0] > 0.5
    (0.0, True)
    """
    from ._blocks import immerkaer

    r = immerkaer(np.asarray(img, np.float32))[1:-1, 1:-1]
    h, w = r.shape[0] // 8 * 8, r.shape[1] // 8 * 8
    scale = float(np.abs(r).mean())
    if h == 0 or w == 0 or scale <= 0:
        return 0.0, 0.0
    # phases relative to image position 1 (the residual starts at pixel 1)
    t = r[:h, :w].reshape(h // 8, 8, w // 8, 8).mean(axis=(0, 2))
    f = np.abs(np.fft.fft2(t)) / 64 / scale
    p2 = max(f[4, 0], f[0, 4], f[4, 4])
    p4 = max(f[2, 0], f[0, 2], f[2, 2], f[2, 6], f[2, 4], f[4, 2])
    odd = max(f[1, 0], f[0, 1], f[3, 0], f[0, 3], f[1, 1], f[3, 3])
    return max(0.0, float(p2 - odd)), max(0.0, float(p4 - odd))


def isotropic_depth(depths: dict[str, float]) -> float:
    """The largest depth found along *both* axes (the smaller of x and y per difference and
    period): a decoder up-samples rows and columns alike; an export stretched along one axis (an
    aspect-ratio change) does not count.

    >>> isotropic_depth({"d1_p2_x": 0.3, "d1_p2_y": 0.2, "d2_p4_x": 0.5, "d2_p4_y": 0.0})
    0.2
    """
    keys = {k[:-2] for k in depths}
    return max((min(depths[k + "_x"], depths[k + "_y"]) for k in keys), default=0.0)


def axis_depths(img: np.ndarray) -> dict[str, float]:
    """Period-2 and period-4 depths (:func:`clean_depths`) of the first (``d1``) and second
    (``d2``) differences along columns (x) and rows (y).

    >>> a = np.repeat(np.random.default_rng(0).normal(100, 5, (128, 64)), 2, axis=1)  # nearest 2x
    >>> axis_depths(a)["d1_p2_x"] > 0.5
    True
    """
    a = np.asarray(img, np.float32)
    dx, dy = second_differences(a)
    fx, fy = np.diff(a, axis=1), np.diff(a, axis=0)
    out = {}
    for kind, d, axis, start in (("d1", fx, 1, 0), ("d1", fy, 0, 0), ("d2", dx, 1, 1), ("d2", dy, 0, 1)):
        name = "x" if axis == 1 else "y"
        mag = np.abs(d)
        cap = np.percentile(mag[::3, ::3], 95)
        if cap <= 0:
            out[f"{kind}_p2_{name}"] = out[f"{kind}_p4_{name}"] = 0.0
            continue
        p2, p4 = clean_depths(harmonics(phase_profile(np.minimum(mag, cap), axis, start=start)))
        out[f"{kind}_p2_{name}"], out[f"{kind}_p4_{name}"] = p2, p4
    return out


class SpectralDetector(Detector):
    name = "spectral"
    dims = frozenset({2})
    modalities = RADIOGRAPHS
    description = ("Periodic traces of up-sampling and decoders (period 2 and 4 in the fine residual), "
                   "robust to one JPEG save.")

    def out_of_domain(self, image: Image) -> str | None:
        """Radiographs of ``MIN_SIZE`` px and more, ``MIN_LEVELS`` grey levels and more, and no
        JPEG coarser than ``MIN_QUALITY`` (:func:`trace_domain`)."""
        return trace_domain(self.name, image, "the period of the fine residual", "the fine residual")

    def detect(self, image: Image) -> Evidence:
        a = _centre(image.pixels.astype(np.float32, copy=False), MAX_SIDE)
        found, _, ratio = jpeg_grid(a)
        deps = axis_depths(a)
        m2, m4 = mean_pattern(a)
        depth = isotropic_depth(deps)
        mean_depth = max(m2, m4)
        tile = _supported(self._tiles(a))
        raw = max(depth / DEPTH_UNIT, mean_depth / MEAN_UNIT, float(tile.max(initial=0.0)) / TILE_UNIT)
        score = logistic(raw, MIDPOINT, SCALE)
        heat, scale = block_heatmap(np.clip(tile / (2 * MIDPOINT * TILE_UNIT), 0, 1), TILE,   # 0.5 at the midpoint
                                    image.pixels.shape, _centre_offset(image.pixels.shape, MAX_SIDE))
        regions = []
        if score >= 0.5 and tile.max(initial=0.0) >= TILE_UNIT:
            regions = regions_from_heatmap(image, heat, threshold=0.5, min_size=(TILE // scale[0]) ** 2, scale=scale,
                                           note="periodic up-sampling trace in the fine residual")
        whole = max(depth / DEPTH_UNIT, mean_depth / MEAN_UNIT) >= MIDPOINT
        local = float(tile.max(initial=0.0)) / TILE_UNIT >= MIDPOINT
        # an image enlarged for display (a raster export) carries the whole-image trace as a decoder's
        # output does: there it is reported as processing, as fusion reports a JPEG saved twice
        indicates = "processing" if whole and not local and image.format in RASTER_EXPORTS else "synthesis"
        if score < 0.5:
            expl = "No periodic up-sampling trace in the pixel differences."
        else:
            which = max(deps, key=deps.get)
            period = 2 if "_p2_" in which else 4
            if mean_depth / MEAN_UNIT > depth / DEPTH_UNIT:
                period, depth = (2 if m2 >= m4 else 4), mean_depth
            where = "over the whole image" if whole else "in part of the image"
            expl = (f"The pixel differences repeat with period {period} px {where} (depth {depth:.3f}): the trace "
                    "of up-sampling by a decoder or an interpolation, which a detector's own pixels do not have"
                    + (" (the JPEG grid's period 8 discounted)" if found else "") + ".")
            if indicates == "processing":
                expl += (" In a raster export this is also what enlarging the image for display does, so it is "
                         "reported as processing, not counted as synthesis.")
        return Evidence(self.name, score, expl, heatmap=heat, heatmap_scale=scale, regions=regions,
                        indicates=indicates, confidence="low",
                        details={"raw": round(raw, 3), "depth": round(depth, 4),
                                 "depths": {k: round(v, 4) for k, v in deps.items()},
                                 "mean_pattern": [round(m2, 4), round(m4, 4)],
                                 "max_tile_depth": round(float(tile.max(initial=0.0)), 4),
                                 "whole_image": bool(whole), "local": bool(local),
                                 "jpeg_grid": bool(found), "grid_ratio": round(ratio, 3),
                                 "falloff_ratio": round(falloff_ratio(a), 3)})

    @staticmethod
    def _tiles(a: np.ndarray) -> np.ndarray:
        """Clean period-2/4 depth of the first differences per ``TILE`` px tile (the smaller of the
        two axes)."""
        gh, gw = a.shape[0] // TILE, a.shape[1] // TILE
        out = np.full((gh, gw), np.inf, np.float32)
        if gh == 0 or gw == 0:
            return np.zeros((gh, gw), np.float32)
        for axis in (1, 0):
            m = np.abs(np.diff(a, axis=axis))
            m = np.minimum(m, np.percentile(m[::3, ::3], 95))
            full = np.zeros(a.shape, np.float32)
            if axis == 1:
                full[:, :-1] = m
            else:
                full[:-1, :] = m
            t = full[:gh * TILE, :gw * TILE].reshape(gh, TILE, gw, TILE)
            if axis == 1:
                prof = t.mean(axis=1).reshape(gh, gw, TILE // 8, 8).mean(axis=2)   # (gh, gw, 8)
            else:
                prof = t.mean(axis=3).reshape(gh, TILE // 8, 8, gw).mean(axis=1).transpose(0, 2, 1)
            f = np.abs(np.fft.rfft(prof, axis=-1))
            m0 = np.maximum(f[..., 0], 1e-9)
            h = f[..., 1:] / m0[..., None]
            odd = np.maximum(h[..., 0], h[..., 2])
            d = np.maximum(np.maximum(h[..., 3] - odd, h[..., 1] - odd), 0.0)
            # tiles with little residual (flat background, noise-free parts) say nothing
            live = m0 > 0.5 * np.median(m0)
            out = np.minimum(out, np.where(live, d, 0.0))   # both axes, as for the whole image
        return out


def _supported(grid: np.ndarray) -> np.ndarray:
    """Each cell's value, bounded by the largest of its 8 neighbours (a lone cell does not count)."""
    from scipy import ndimage

    fp = np.ones((3, 3), bool)
    fp[1, 1] = False
    return np.minimum(grid, ndimage.maximum_filter(grid, footprint=fp, mode="constant", cval=0.0))


def _centre_offset(shape: tuple[int, int], side: int) -> tuple[int, int]:
    """Offsets (multiples of 8, so a JPEG grid keeps its phase) of the central ``side`` px."""
    return tuple(max(0, (n - side) // 2) // 8 * 8 for n in shape)


def _centre(a: np.ndarray, side: int) -> np.ndarray:
    oy, ox = _centre_offset(a.shape, side)
    return a[oy:oy + side, ox:ox + side]


def trace_domain(name: str, image: Image, needs: str, cue: str) -> str | None:
    """Why a radiograph is outside the domain of a detector that reads its fine residual
    (``spectral``, ``radiograph_physics``), or ``None``: not a 2D radiograph, under ``MIN_SIZE`` px
    (too small for ``needs``), posterised, lossy DICOM, or JPEG coarser than ``MIN_QUALITY`` (which
    has removed ``cue``)."""
    if image.modality not in RADIOGRAPHS:
        return f"modality {image.modality}: {name} was validated on radiographs (CR, DX, XR) only"
    if image.pixels.ndim != 2:
        return "not a 2D image"
    if min(image.pixels.shape) < MIN_SIZE:
        return (f"too small ({image.pixels.shape[0]}x{image.pixels.shape[1]} px) for {needs} "
                f"(needs {MIN_SIZE} px)")
    n = grey_levels(image.pixels)
    if 0 < n < MIN_LEVELS:
        return f"posterised to {n} grey levels: dither and quantisation, not {cue}"
    lossy = lossy_dicom(image)
    if lossy:
        return lossy
    q = jpeg_quality(image)
    if q is not None and q < MIN_QUALITY:
        return f"JPEG at quality about {q}: the compression has removed {cue}"
    return None


def lossy_dicom(image: Image) -> str | None:
    """Why a DICOM image's lossy compression rules out reading its fine residual (``None``: not a
    DICOM, or not lossy). JPEG 2000's wavelet is dyadic: its quantisation leaves period-2 traces as
    a decoder does (pydicom-data's ``RG1_UNCI``, ``RG3_UNCI``: 10:1 and 30:1, measured)."""
    from .noise_residual import is_lossy

    if image.format != "dicom" or not is_lossy(image):
        return None
    method = next((str(ds.get("LossyImageCompressionMethod", "")) for ds in image.datasets[:1]), "")
    syntax = image.meta.get("transfer_syntax", "")
    return (f"lossy compression ({method or syntax or 'LossyImageCompression 01'}): a wavelet codec's "
            "quantisation leaves dyadic traces like a decoder's, and any lossy codec rounds away the fine residual")


def jpeg_quality(image: Image) -> int | None:
    """The IJG quality of a JPEG file's luminance table (``None``: not a JPEG file, or unreadable)."""
    if image.format != "jpeg" or not image.sources:
        return image.meta.get("jpeg_quality")
    cached = image.meta.get("jpeg_quality")
    if cached is not None:
        return cached
    try:
        from PIL import Image as PILImage

        from .container import estimate_quality

        with PILImage.open(image.sources[0]) as pil:
            q = (getattr(pil, "quantization", None) or {}).get(0)
        if q is None or len(q) != 64:
            return None
        quality = int(estimate_quality(np.array(q, float).reshape(8, 8))[0])
    except Exception:  # noqa: BLE001 - an unreadable table only means "unknown"
        return None
    image.meta["jpeg_quality"] = quality
    return quality


if __name__ == "__main__":  # pragma: no cover - calibration helper: raw values on real images
    print_raw_values(SpectralDetector(), sys.argv[1:])
