"""3D CT tumour injection and removal, CT-GAN style, on real series.

The attack of Mirsky et al. (CT-GAN, USENIX Security 2019), step by step:

1. **locate** the target: a voxel given by the caller, chosen in the lung parenchyma by
   :func:`choose_location`, or an existing nodule (:func:`medforensics.forge.lidc.nodules_for`);
   an injection's cube keeps :data:`AVOID_MARGIN_MM` from every voxel the LIDC readers marked
   (:func:`medforensics.forge.lidc.marked_voxels`), so that it never lands on a real finding;
2. **cut** a cube around it (:func:`cube_around`: its size in voxels follows the spacing, so a
   cube is about as deep in mm as it is wide, e.g. 13 x 41 x 41 voxels for 2.5 mm slices of
   0.7 mm pixels);
3. make a **sketch**: the low-frequency content the cube should have afterwards, in HU. For an
   injection, the local background plus a nodule (lobulated shape from smooth noise, spicules,
   solid core, ground-glass halo, partial volume across the slice thickness, scanner blur); for
   a removal, the background in-painted from the surrounding lung;
4. **render** the sketch with texture and noise (``method="classic"``: noise synthesised with
   the noise level and noise power spectrum measured around the target, :func:`noise_model`;
   ``method="gan"``: :func:`medforensics.forge.gan.render`);
5. **paste** it back: the change fades out with the nodule's own partial-volume edge (the
   removal's soft edge), values are rounded to the stored grid and kept within each slice's
   stored range, and every changed voxel lies inside the reported cube.

**The sketch**, exactly: for an injection, ``sketch = G(context + delta)`` and for a removal
``sketch = (1 - w) * G(context) + w * fill``, where ``G`` is a Gaussian blur of sigma
:data:`SKETCH_SIGMA` voxels (0.5 across slices, 1 in-plane; truncated at 3 sigma, edges
extended: ``medforensics.forge.gan.lowpass``), ``delta`` the nodule's HU change
before any noise, ``w`` the removal weight and ``fill`` the smooth lung in-painted from the
surroundings. In words: *what a Gaussian blur (sigma 1 voxel in-plane, 0.5 across slices) of
the final content should look like*. A renderer (the classical one here, or a GAN trained on
``(G(real cube), real cube)`` pairs) must return content whose blur matches the sketch inside
the mask, with the texture and noise of real tissue.

A real series comes from :func:`medforensics.io.load` (``load("LIDC-IDRI-0001/")[0]``); here a
small chest phantom in HU (air, body, two lungs, 15 HU of noise; 2.5 mm slices of 0.7 mm pixels)
stands in for it:

>>> import numpy as np
>>> from medforensics.core import Image
>>> from medforensics.forge import ct
>>> rng = np.random.default_rng(0)
>>> vol = np.full((24, 160, 160), -1000.0)                      # air
>>> vol[:, 10:150, 8:152] = 40.0                                # body
>>> vol[:, 30:126, 22:74] = vol[:, 30:126, 86:138] = -860.0     # lungs
>>> image = Image.from_array(np.round(vol + rng.normal(0, 15, vol.shape)), modality="CT", spacing=(2.5, 0.7, 0.7))
>>> fake = ct.inject(image, diameter_mm=12, nodule_type="part-solid", seed=3)
>>> fake.center_voxel, fake.bbox_voxel, int(fake.mask.sum())
((15, 54, 38), (8, 31, 15, 23, 78, 62), 1497)
>>> float(image.pixels[fake.center_voxel]) < -700 < float(fake.pixels[fake.center_voxel])   # lung -> nodule
True
>>> k0, i0, j0, k1, i1, j1 = fake.bbox_voxel
>>> changed = fake.pixels != image.pixels
>>> int(changed.sum()) == int(changed[k0:k1, i0:i1, j0:j1].sum())      # every change inside the cube
True
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve

from ..core import Image, MedForensicsError
from .base import Forgery

__all__ = ["NODULE_TYPES", "METHODS", "SKETCH_SIGMA", "AVOID_MARGIN_MM", "sketch_lowpass", "NoiseModel", "lung_mask",
           "choose_location", "cube_around", "cube_distance_mm", "noise_model", "nodule_sketch", "removal_sketch",
           "render_classic", "inject", "remove"]

NODULE_TYPES = ("solid", "part-solid", "ground-glass")
METHODS = ("classic", "gan")
#: Blur (slices, rows, cols; in voxels) that defines the sketch: see the module docstring.
SKETCH_SIGMA = (0.5, 1.0, 1.0)
#: HU ranges of the nodule's tissue (drawn uniformly per nodule).
SOLID_HU = (0.0, 100.0)
GGO_HU = (-700.0, -400.0)
#: Tissue bands (HU, after a light blur) whose patches measure noise for each kind of content.
TISSUE_BANDS = {"soft": (-150.0, 180.0), "lung": (-950.0, -650.0)}
#: Largest range (HU) of the blurred values inside one patch: no tissue boundary in a patch.
MAX_SPREAD = {"soft": 60.0, "lung": 150.0}
#: Gaussian sigma (pixels) of the high-pass that measures the noise level (robust to anatomy).
LEVEL_SIGMA = 1.5
#: Amplitude (HU) of a solid nodule's fine texture (smooth noise of 1 voxel): on LIDC-IDRI-0001 the
#: high-pass spread inside the real tumour is about 16 HU against 12 HU in muscle; with this
#: texture an injected nodule's lies between the two.
FINE_TEXTURE_HU = 14.0
#: In-plane scanner blur (Gaussian sigma, mm) applied to the nodule before it is rendered.
PSF_SIGMA_MM = 0.45
#: Least distance (mm) between an injection's cube (which holds every voxel it may change) and any
#: voxel that a reader marked as nodule (LIDC outlines and point marks): an injected nodule never
#: touches nor lies next to a real finding, so the ground truth and the real finding never overlap.
AVOID_MARGIN_MM = 5.0


# --------------------------------------------------------------------------------------------
# checks and geometry



def sketch_lowpass(x: np.ndarray) -> np.ndarray:
    """The blur that defines a sketch (:data:`SKETCH_SIGMA`, truncated at 3 sigma, edges extended):
    the same as :func:`medforensics.forge.gan.lowpass` for a volume."""
    return ndi.gaussian_filter(np.asarray(x, np.float32), SKETCH_SIGMA, mode="nearest", truncate=3.0)

def _check_ct(image: Image) -> None:
    if image.pixels.ndim != 3 or image.pixels.shape[0] < 3:
        raise MedForensicsError(image.path, "tumour injection and removal need a CT series (a 3D volume of 3 or more slices)")
    if image.modality not in ("CT", "OT"):
        raise MedForensicsError(image.path, f"tumour injection and removal need CT in Hounsfield units, not {image.modality}")
    if any(s is None or not s > 0 for s in image.spacing):
        raise MedForensicsError(image.path, "the series has no usable voxel spacing")


def _spacing(image: Image) -> np.ndarray:
    return np.array([float(s) for s in image.spacing])


def _resolve_center(image: Image, center_voxel: Sequence[float] | None, center_mm: Sequence[float] | None) -> tuple[int, int, int]:
    if center_voxel is not None and center_mm is not None:
        raise ValueError("give center_voxel or center_mm, not both")
    if center_mm is not None:
        if image.affine is None:
            raise MedForensicsError(image.path, "the series has no patient geometry; give the centre in voxels")
        xyz = np.append(np.asarray(center_mm, dtype=float), 1.0)
        if xyz.shape != (4,):
            raise ValueError("center_mm must be (x, y, z)")
        center_voxel = (np.linalg.inv(image.affine) @ xyz)[:3]
    c = tuple(int(round(float(v))) for v in center_voxel)
    if len(c) != 3:
        raise ValueError("center_voxel must be (k, i, j)")
    if not all(0 <= v < n for v, n in zip(c, image.pixels.shape)):
        raise MedForensicsError(image.path, f"centre {c} (voxels) lies outside the volume of shape {image.pixels.shape}")
    return c


def _half_extent(spacing: np.ndarray, diameter_mm: float) -> np.ndarray:
    """Half size of the cube in voxels per axis: the nodule, its spicules and a blend margin."""
    half_mm = 0.8 * diameter_mm + 6.0
    return np.maximum(np.ceil(half_mm / spacing).astype(int), 2)


def cube_around(image: Image, center_voxel: Sequence[int], diameter_mm: float) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """The cube cut around ``center_voxel`` for a nodule of ``diameter_mm``: numpy slices and
    ``bbox_voxel`` (starts, then exclusive stops), clipped to the volume."""
    half = _half_extent(_spacing(image), diameter_mm)
    c = np.asarray(center_voxel, dtype=int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, image.pixels.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)), tuple(int(v) for v in (*lo, *hi))


def cube_distance_mm(bbox: Sequence[int], voxels: np.ndarray, spacing: Sequence[float]) -> float:
    """Smallest distance (mm) between the voxels of the box ``bbox`` (starts, then exclusive stops)
    and ``voxels`` (``(n, 3)`` of ``(k, i, j)``), centre to centre; ``inf`` when there are none."""
    pts = np.asarray(voxels, dtype=float).reshape(-1, 3)
    if not len(pts):
        return math.inf
    lo, hi = np.asarray(bbox[:3], float), np.asarray(bbox[3:], float) - 1
    gap = np.maximum(np.maximum(lo - pts, pts - hi), 0.0) * np.asarray(spacing, float)
    return float(np.sqrt((gap ** 2).sum(axis=1)).min())


def _annotated(image: Image, avoid: Any) -> np.ndarray:
    """The voxels an injection keeps away from: ``avoid`` as given, or (None) every voxel the LIDC
    readers marked on this series (:func:`medforensics.forge.lidc.marked_voxels`)."""
    if avoid is None:
        from .lidc import marked_voxels  # noqa: PLC0415 - only needed here
        return marked_voxels(image)
    pts = np.asarray(avoid, dtype=int).reshape(-1, 3)
    return pts


# --------------------------------------------------------------------------------------------
# lung parenchyma and locations


def _disk(radius_px: int) -> np.ndarray:
    r = max(1, int(radius_px))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def lung_mask(volume_hu: np.ndarray, *, spacing: Sequence[float] | None = None, threshold: float = -400.0,
              closing_mm: float = 4.0) -> np.ndarray:
    """Lung parenchyma of a chest CT volume ``(slices, rows, cols)`` in HU, as a bool array.

    Air below ``threshold`` HU, less the air connected to the in-plane border (outside the body,
    the scanner's padding), less small pockets (bowel gas, noise): the largest component and any
    other at least 5% of its size. Vessels and nodules inside are filled by a per-slice closing
    of ``closing_mm`` and hole filling. ``spacing`` (mm per axis) sets the closing in pixels
    (default 0.7 mm pixels).
    """
    vol = np.asarray(volume_hu)
    if vol.ndim != 3:
        raise ValueError("lung_mask needs a 3D volume")
    air = vol < threshold
    lab, n = ndi.label(air)
    if n == 0:
        return np.zeros(vol.shape, bool)
    border = np.unique(np.concatenate([lab[:, 0, :].ravel(), lab[:, -1, :].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    sizes[border] = 0
    if sizes.max() == 0:
        return np.zeros(vol.shape, bool)
    keep = np.flatnonzero(sizes >= 0.05 * sizes.max())
    mask = np.isin(lab, keep)
    px = float(spacing[1]) if spacing is not None and spacing[1] else 0.7
    kernel = _disk(round(closing_mm / px))
    out = np.empty_like(mask)
    for k in range(mask.shape[0]):
        sl = mask[k].astype(np.uint8)
        if sl.any():
            sl = cv2.morphologyEx(sl, cv2.MORPH_CLOSE, kernel)
            out[k] = ndi.binary_fill_holes(sl)
        else:
            out[k] = False
    return out


_LUNG_MAPS: list[tuple[Any, tuple]] = []  # (weak reference to the pixels, lung map): the last few volumes


def _lung_map(image: Image) -> tuple:
    """Lung mask and distance to its edge (mm) on a ~2.5 mm in-plane grid, computed once per
    pixel array (many nodules are often placed in one series)."""
    for ref, found in _LUNG_MAPS:
        if ref() is image.pixels:
            return found
    sp = _spacing(image)
    step = max(1, int(round(2.5 / sp[1])))
    vol = image.pixels[:, ::step, ::step]
    sp_d = np.array([sp[0], sp[1] * step, sp[2] * step])
    lung = lung_mask(vol, spacing=sp_d)
    dist = ndi.distance_transform_edt(lung, sampling=sp_d) if lung.any() else np.zeros(lung.shape)
    found = (step, vol, sp_d, lung, dist)
    try:
        _LUNG_MAPS.insert(0, (weakref.ref(image.pixels), found))
        del _LUNG_MAPS[2:]
    except TypeError:  # an array type without weak references: no caching
        pass
    return found


def choose_location(image: Image, diameter_mm: float = 10.0, rng: np.random.Generator | int | None = None, *,
                    avoid: Any = None, margin_mm: float = AVOID_MARGIN_MM) -> tuple[int, int, int]:
    """A voxel ``(k, i, j)`` in the lung parenchyma where a nodule of ``diameter_mm`` fits.

    ``avoid`` (``(n, 3)`` voxels, e.g. :func:`medforensics.forge.lidc.marked_voxels`; None: this
    series' LIDC marks) are kept at least ``margin_mm`` from the whole cube the injection may
    change (:func:`cube_around`), whatever the tier below.

    Candidates lie inside the lung mask, at least the nodule's radius plus 5 mm from the lung's
    edge (pleura, mediastinum, diaphragm), with no vessel within the nodule's reach (local
    maximum below -500 HU, local mean -930 to -650 HU) and far enough from the first and last
    slices and the borders for the whole cube to fit. One is drawn with ``rng``; the conditions
    are relaxed step by step (smaller margins, small vessels allowed) while fewer than 200 places
    (on a 2.5 mm grid) qualify, so that locations vary. Raises :class:`MedForensicsError` when the
    series has no room at all.
    """
    _check_ct(image)
    rng = np.random.default_rng(rng)
    sp = _spacing(image)
    step, vol, sp_d, lung, dist = _lung_map(image)
    if not lung.any():
        raise MedForensicsError(image.path, "no lung parenchyma found (is this a chest CT?)")
    r = diameter_mm / 2.0
    reach = np.maximum(np.ceil((r + 2.0) / sp_d).astype(int), 1)
    size = tuple(int(2 * v + 1) for v in reach)
    local_max = ndi.maximum_filter(vol, size=size, mode="nearest")
    local_mean = ndi.uniform_filter(vol.astype(np.float32), size=size, mode="nearest")
    half = _half_extent(sp, diameter_mm)
    fits = np.zeros(vol.shape, bool)
    n, h, w = image.pixels.shape
    ks = np.arange(vol.shape[0])
    ii = np.arange(vol.shape[1]) * step
    jj = np.arange(vol.shape[2]) * step
    fits[np.ix_((ks >= half[0]) & (ks < n - half[0]), (ii >= half[1]) & (ii < h - half[1]),
                (jj >= half[2]) & (jj < w - half[2]))] = True
    if not fits.any():
        fits[np.ix_((ks >= 1) & (ks < n - 1), np.ones(len(ii), bool), np.ones(len(jj), bool))] = True
    marks = _annotated(image, avoid)
    if len(marks):
        # conservative on the coarse grid (one cell of slack), exact below
        grid = np.zeros(vol.shape, bool)
        grid[marks[:, 0], np.minimum(marks[:, 1] // step, vol.shape[1] - 1), np.minimum(marks[:, 2] // step, vol.shape[2] - 1)] = True
        reach = np.ceil((half * sp + margin_mm) / sp_d).astype(int) + 1
        fits &= ~ndi.maximum_filter(grid, size=tuple(int(2 * v + 1) for v in reach), mode="constant")
    tiers = [(r + 5.0, -500.0, (-930.0, -650.0)), (r + 4.0, -300.0, (-940.0, -600.0)),
             (r + 3.0, -100.0, (-950.0, -550.0)), (r + 1.0, 100.0, (-980.0, -400.0)), (r * 0.5, np.inf, (-1000.0, -300.0))]
    for t, (margin, vmax, (mlo, mhi)) in enumerate(tiers):
        ok = fits & lung & (dist >= margin) & (local_max < vmax) & (local_mean > mlo) & (local_mean < mhi)
        cand = np.argwhere(ok)
        # a handful of candidates would put every nodule of this size in the same spot: relax first
        if len(cand) >= (200 if t < len(tiers) - 1 else 1):
            for _ in range(20):
                k, i, j = cand[rng.integers(len(cand))]
                c = (int(k), int(min(i * step + step // 2, h - 1)), int(min(j * step + step // 2, w - 1)))
                if cube_distance_mm(cube_around(image, c, diameter_mm)[1], marks, sp) >= margin_mm:
                    return c
    if len(marks):
        raise MedForensicsError(image.path, f"no place in the lung parenchyma has room for a {diameter_mm:g} mm nodule "
                                            f"{margin_mm:g} mm or more from the annotated nodules")
    raise MedForensicsError(image.path, f"no place in the lung parenchyma has room for a {diameter_mm:g} mm nodule")


# --------------------------------------------------------------------------------------------
# noise: level and power spectrum around the target


@dataclass
class NoiseModel:
    """Noise measured in homogeneous patches of one tissue around a target.

    ``sigma`` is the noise std (HU) per slice of the cube; ``kernel`` a 2D filter with unit
    energy (white noise filtered by it has unit variance and the measured NPS shape); ``rho``
    the correlation of the high-pass texture between adjacent slices (overlapping slices,
    tissue continuity); ``n_patches`` how many patches it rests on.
    """

    sigma: np.ndarray
    kernel: np.ndarray
    n_patches: int
    tissue: str
    rho: float = 0.0

    def synthesize(self, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
        """Noise of ``shape`` (slices, rows, cols) with the measured NPS in-plane, level per slice and
        correlation ``rho`` between adjacent slices (an AR(1) process along the slices)."""
        p = self.kernel.shape[0]
        out = np.empty(shape, np.float32)
        prev = None
        for k in range(shape[0]):
            white = rng.standard_normal((shape[1] + p - 1, shape[2] + p - 1))
            field = fftconvolve(white, self.kernel, mode="valid")
            if prev is not None and self.rho > 0:
                field = self.rho * prev + math.sqrt(1.0 - self.rho ** 2) * field
            prev = field
            out[k] = self.sigma[min(k, len(self.sigma) - 1)] * field
        return out

    @property
    def radial_nps(self) -> np.ndarray:
        """Mean NPS per radial frequency bin (cycles/pixel, 8 bins up to 0.5) of the kernel."""
        return radial_nps(self.kernel[None])


def radial_nps(noise: np.ndarray, bins: int = 8) -> np.ndarray:
    """Normalised radial noise power spectrum (sums to 1) of 2D noise patches ``(n, p, p)``."""
    noise = np.asarray(noise, dtype=float)
    if noise.ndim == 2:
        noise = noise[None]
    p0, p1 = noise.shape[1:]
    ps = np.mean(np.abs(np.fft.fft2(noise - noise.mean(axis=(1, 2), keepdims=True))) ** 2, axis=0)
    fy = np.fft.fftfreq(p0)[:, None]
    fx = np.fft.fftfreq(p1)[None, :]
    fr = np.sqrt(fy ** 2 + fx ** 2)
    edges = np.linspace(0, 0.5, bins + 1)
    out = np.array([ps[(fr >= a) & (fr < b)].mean() if ((fr >= a) & (fr < b)).any() else 0.0
                    for a, b in zip(edges[:-1], edges[1:])])
    return out / max(out.sum(), 1e-12)


def _detrend(patch: np.ndarray, design: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, patch.ravel(), rcond=None)
    return patch - (design @ coef).reshape(patch.shape)


def noise_model(volume_hu: np.ndarray, slices: range | Sequence[int], center_ij: Sequence[int], *, tissue: str = "soft",
                patch: int | None = None, window: int = 160, max_patches: int = 48) -> NoiseModel:
    """Measure noise level and NPS in homogeneous ``tissue`` (``soft`` or ``lung``) patches
    near ``center_ij`` on the given slices (one level per slice, one NPS shape for all).

    Patches (``patch`` pixels square, 24 for soft tissue, 12 for lung) are taken on a half-patch
    grid within ``window`` pixels of the centre (the whole slice when too few), kept when their
    lightly blurred values all lie in the tissue's band (:data:`TISSUE_BANDS`) and their spread
    shows no edge; each is detrended by a plane and tapered (Hann) before its power spectrum is
    taken. The level of a slice is the median over the patches of 5 neighbouring slices of their
    high-pass std (Gaussian of :data:`LEVEL_SIGMA` pixels: anatomy lives at low frequencies),
    scaled to the full band with the share of the NPS that high-pass keeps.
    """
    if tissue not in TISSUE_BANDS:
        raise ValueError(f"tissue must be one of {', '.join(TISSUE_BANDS)}")
    lo, hi = TISSUE_BANDS[tissue]
    p = int(patch or (24 if tissue == "soft" else 12))
    slices = list(slices)
    n, h, w = volume_hu.shape
    yy, xx = np.mgrid[0:p, 0:p].astype(float)
    design = np.stack([np.ones(p * p), yy.ravel(), xx.ravel()], axis=1)
    ci, cj = int(center_ij[0]), int(center_ij[1])
    per_slice: list[list[np.ndarray]] = []
    for k in slices:
        sl = volume_hu[k].astype(np.float32)
        found: list[tuple[float, np.ndarray]] = []
        for win in (window, max(h, w)):
            i0, i1 = max(0, ci - win), min(h, ci + win)
            j0, j1 = max(0, cj - win), min(w, cj + win)
            sub = sl[i0:i1, j0:j1]
            if sub.shape[0] < p or sub.shape[1] < p:
                continue
            blur = cv2.blur(sub, (5, 5))
            band = ((blur > lo) & (blur < hi)).astype(np.float32)
            inside = cv2.blur(band, (p, p), borderType=cv2.BORDER_CONSTANT)  # share of the patch in the band
            kern = np.ones((p, p), np.uint8)
            spread = cv2.dilate(blur, kern) - cv2.erode(blur, kern)  # no tissue boundary inside a patch
            inside[spread > MAX_SPREAD[tissue]] = 0.0
            found = []
            half = p // 2
            for a in range(half, sub.shape[0] - half + 1, max(2, p // 2)):
                for b in range(half, sub.shape[1] - half + 1, max(2, p // 2)):
                    if inside[min(a, sub.shape[0] - 1), min(b, sub.shape[1] - 1)] < 0.999:
                        continue
                    pt = sub[a - half:a - half + p, b - half:b - half + p]
                    if pt.shape != (p, p):
                        continue
                    d = _detrend(pt.astype(float), design)
                    found.append((float(np.hypot(i0 + a - ci, j0 + b - cj)), d))
            if len(found) >= 6:
                break
        found.sort(key=lambda t: t[0])
        # Reject patches with structure (edges, vessels): spread well above the slice's median.
        if found:
            sds = np.array([d.std() for _, d in found])
            med = np.median(sds)
            found = [f for f, s in zip(found, sds) if s <= 1.6 * med]
        per_slice.append([d for _, d in found[:max_patches]])
    all_patches = [d for lst in per_slice for d in lst]
    if len(all_patches) < 3:
        if p // 2 >= 6:  # small or coarse volumes: try smaller patches before giving up
            return noise_model(volume_hu, slices, center_ij, tissue=tissue, patch=p // 2, window=window,
                               max_patches=max_patches)
        raise MedForensicsError(None, f"too little homogeneous {tissue} tissue near the target to measure the noise")
    # Median of the patches' std: robust to the few patches a vessel or an edge still crosses.
    win = np.outer(np.hanning(p + 2)[1:-1], np.hanning(p + 2)[1:-1])
    win /= np.sqrt((win ** 2).mean())  # a taper against leakage, power kept
    ps = np.mean([np.abs(np.fft.fft2(d * win)) ** 2 for d in all_patches], axis=0)
    ps[0, 0] = 0.25 * (ps[0, 1] + ps[1, 0] + ps[0, -1] + ps[-1, 0])  # detrending removed the mean: no hole at DC
    kernel = np.fft.fftshift(np.real(np.fft.ifft2(np.sqrt(ps))))
    kernel /= np.sqrt((kernel ** 2).sum())
    # The level comes from the high-pass part of each patch (anatomy lives at low frequencies), by
    # the median over patches (robust to a patch a vessel still crosses), scaled back to the full
    # band with the share of the kernel's power that the same high-pass keeps.
    def hp_std(x: np.ndarray) -> float:
        return float((x - ndi.gaussian_filter(x, LEVEL_SIGMA, mode="reflect")).std())

    probe = fftconvolve(np.random.default_rng(0).standard_normal((160, 160)), kernel, mode="valid")
    share = hp_std(probe) / float(probe.std())
    levels = [[hp_std(d) for d in lst] for lst in per_slice]
    pooled = float(np.median([v for lst in levels for v in lst])) / share
    sigma = []
    for k in range(len(levels)):  # noise changes slowly along the body: pool 5 neighbouring slices
        near = [v for lst in levels[max(0, k - 2):k + 3] for v in lst]
        sigma.append(float(np.median(near)) / share if len(near) >= 8 else pooled)
    sigma = np.array(sigma)
    rho = _slice_correlation(volume_hu, slices, (ci, cj), tissue, window)
    return NoiseModel(sigma=sigma.astype(np.float32), kernel=kernel.astype(np.float32), n_patches=len(all_patches),
                      tissue=tissue, rho=rho)


def _slice_correlation(volume_hu: np.ndarray, slices: Sequence[int], center_ij: tuple[int, int], tissue: str,
                       window: int) -> float:
    """Median correlation of the high-pass texture of adjacent slices over homogeneous ``tissue``
    near the centre (0 when it cannot be measured), clipped to [0, 0.9]."""
    lo, hi = TISSUE_BANDS[tissue]
    n, h, w = volume_hu.shape
    ci, cj = center_ij
    i0, i1, j0, j1 = max(0, ci - window), min(h, ci + window), max(0, cj - window), min(w, cj + window)
    kern = np.ones((9, 9), np.uint8)
    found = []
    for k in slices:
        if k + 1 >= n or k + 1 not in slices:
            continue
        a = volume_hu[k, i0:i1, j0:j1].astype(np.float32)
        b = volume_hu[k + 1, i0:i1, j0:j1].astype(np.float32)
        ok = np.ones(a.shape, bool)
        for x in (a, b):
            blur = cv2.blur(x, (5, 5))
            ok &= (blur > lo) & (blur < hi) & (cv2.dilate(blur, kern) - cv2.erode(blur, kern) < MAX_SPREAD[tissue])
        ok = cv2.erode(ok.astype(np.uint8), kern).astype(bool)
        if ok.sum() < 400:
            continue
        ra = (a - cv2.GaussianBlur(a, (0, 0), LEVEL_SIGMA))[ok]
        rb = (b - cv2.GaussianBlur(b, (0, 0), LEVEL_SIGMA))[ok]
        if ra.std() > 0 and rb.std() > 0:
            found.append(float(np.corrcoef(ra, rb)[0, 1]))
    return float(np.clip(np.median(found), 0.0, 0.9)) if found else 0.0


# --------------------------------------------------------------------------------------------
# sketches


def _sphere_field(directions: np.ndarray, rng: np.random.Generator, n_waves: int, freq: tuple[float, float]) -> np.ndarray:
    """A smooth random function on the unit sphere (zero mean, ~unit std), evaluated at ``directions``."""
    w = rng.normal(size=(n_waves, 3))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    w *= rng.uniform(*freq, size=(n_waves, 1))
    phase = rng.uniform(0, 2 * np.pi, size=n_waves)
    amp = rng.uniform(0.5, 1.0, size=n_waves)
    val = np.tensordot(directions, w.T, axes=([directions.ndim - 1], [0])) + phase
    return (np.cos(val) * amp).sum(axis=-1) / math.sqrt(0.5 * float((amp ** 2).sum()))


def _smooth_noise(shape: tuple[int, ...], sigma_vox: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="reflect")
    return (f - f.mean()) / max(f.std(), 1e-6)


def nodule_sketch(context: np.ndarray, spacing: Sequence[float], center: Sequence[float], diameter_mm: float,
                  nodule_type: str = "solid", rng: np.random.Generator | int | None = None, *,
                  slice_thickness: float | None = None) -> dict[str, Any]:
    """The nodule to inject into ``context`` (an HU cube) at ``center`` (voxel, in the cube).

    Returns a dict: ``delta`` (the HU change of the smooth content ``G(context)``, scanner blur
    and partial volume included; the texture is the renderer's business), ``replace`` (0..1: how much of the original texture the nodule replaces: 1 in a
    solid core, about half in ground glass), ``sketch`` (``G(context + delta)``, see the module
    docstring), ``mask`` (bool: voxels the nodule touches) and ``params`` (the drawn HU levels,
    lobulation and spicules).

    The shape is a sphere whose radius is modulated by smooth noise on the sphere (lobulation)
    with a rougher surface term, plus thin tapering spicules for solid nodules. Occupancy is
    averaged over the slice thickness (partial volume). Solid: core of +0..+100 HU with mild
    heterogeneity; ground-glass: -700..-400 HU with a fuzzy margin and vessels showing through;
    part-solid: a ground-glass halo with a solid core of 35-55% of its radius. The nodule only
    raises density (a vessel inside stays visible).
    """
    if nodule_type not in NODULE_TYPES:
        raise ValueError(f"nodule_type must be one of {', '.join(NODULE_TYPES)}")
    rng = np.random.default_rng(rng)
    sp = np.asarray(spacing, dtype=float)
    thick = float(slice_thickness or sp[0])
    ctx = np.asarray(context, dtype=np.float32)
    shape = ctx.shape
    R0 = diameter_mm / 2.0
    # z sub-samples across the slice thickness (slice sensitivity profile ~ a box of the thickness)
    n_sub = 5
    offs = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    kk = (np.arange(shape[0])[:, None] - center[0]) * sp[0] + offs[None, :] * thick  # (K, n_sub) mm
    yy = (np.arange(shape[1]) - center[1]) * sp[1]
    xx = (np.arange(shape[2]) - center[2]) * sp[2]
    Z = kk[:, :, None, None]
    Y = yy[None, None, :, None]
    X = xx[None, None, None, :]
    r = np.sqrt(Z ** 2 + Y ** 2 + X ** 2)
    rs = np.maximum(r, 1e-6)
    dirs = np.stack(np.broadcast_arrays(Z / rs, Y / rs, X / rs), axis=-1)

    lob_amp = {"solid": rng.uniform(0.12, 0.22), "part-solid": rng.uniform(0.10, 0.18), "ground-glass": rng.uniform(0.06, 0.12)}[nodule_type]
    lobes = _sphere_field(dirs, rng, 6, (1.5, 3.0))
    rough = _sphere_field(dirs, rng, 16, (4.0, 8.0))
    radius = R0 * (1.0 + lob_amp * lobes + 0.04 * rough)

    def occupancy(rad: np.ndarray, edge_mm: float) -> np.ndarray:
        return np.clip((rad - r) / edge_mm + 0.5, 0.0, 1.0)

    params: dict[str, Any] = {"lobulation": round(float(lob_amp), 3)}
    layers: list[tuple[np.ndarray, np.ndarray, float]] = []  # (occupancy per voxel, HU field, texture replaced)
    het = _smooth_noise(shape, (0.6, 2.5, 2.5), rng)  # density varies across the lesion
    fine = _smooth_noise(shape, (0.5, 1.0, 1.0), rng)  # and has its own fine texture (real nodules do)
    if nodule_type in ("ground-glass", "part-solid"):
        t_ggo = float(rng.uniform(*GGO_HU))
        edge = max(0.8, 0.15 * R0)
        occ = occupancy(radius, edge).mean(axis=1)
        layers.append((occ, t_ggo + 45.0 * het + 15.0 * fine, 0.5))
        params["ggo_hu"] = round(t_ggo, 1)
    if nodule_type in ("solid", "part-solid"):
        t_solid = float(rng.uniform(*SOLID_HU))
        if nodule_type == "solid":
            core_rad = radius
        else:
            frac = float(rng.uniform(0.35, 0.55))
            core_rad = R0 * frac * (1.0 + 0.2 * _sphere_field(dirs, rng, 5, (1.5, 3.0)))
            params["core_fraction"] = round(frac, 3)
        occ = occupancy(core_rad, 0.7)
        n_spic = int(rng.integers(3, 10)) if nodule_type == "solid" else int(rng.integers(0, 3))
        for _ in range(n_spic):
            u = rng.normal(size=3)
            u[0] *= 0.5  # spicules run mostly in-plane (they are seen on axial slices)
            u /= np.linalg.norm(u)
            length = float(rng.uniform(0.5, 1.2) * R0 + 3.0)
            width = float(rng.uniform(0.7, 1.3))
            base = float(np.clip(R0 * (1.0 + lob_amp) * 0.8, 0.5, None)) if nodule_type == "solid" else R0 * 0.4
            along = Z * u[0] + Y * u[1] + X * u[2]
            perp = np.sqrt(np.maximum(r ** 2 - along ** 2, 0.0))
            t = (along - base) / length
            w_here = width * (1.0 - np.clip(t, 0.0, 1.0))
            spic = np.where((t >= -0.5) & (t <= 1.0), np.clip((w_here - perp) / 0.3 + 0.5, 0.0, 1.0), 0.0)
            occ = np.maximum(occ, spic)
        layers.append((occ.mean(axis=1), t_solid + 20.0 * het + FINE_TEXTURE_HU * fine, 1.0))
        params["solid_hu"] = round(t_solid, 1)
        params["spicules"] = n_spic

    # Built on the blurred context: the original texture is handled by the renderer (``replace``).
    low = sketch_lowpass(ctx)
    content = low.copy()
    replace = np.zeros(shape, np.float32)
    for occ, hu, rep in layers:
        content = content + occ * np.maximum(hu - content, 0.0)
        replace = np.maximum(replace, rep * occ)
    delta = (content - low).astype(np.float32)
    # scanner blur in-plane (the slice direction is handled by the thickness average)
    psf = (0.0, PSF_SIGMA_MM / sp[1], PSF_SIGMA_MM / sp[2])
    delta = ndi.gaussian_filter(delta, psf, mode="constant")
    replace = ndi.gaussian_filter(replace, psf, mode="constant")
    delta[np.abs(delta) < 0.5] = 0.0
    replace[replace < 0.01] = 0.0
    mask = (delta != 0) | (replace > 0)
    sketch = sketch_lowpass(ctx + delta)
    return {"delta": delta, "replace": replace.astype(np.float32), "sketch": sketch.astype(np.float32),
            "mask": mask, "params": params}


def removal_sketch(context: np.ndarray, spacing: Sequence[float], center: Sequence[float], diameter_mm: float,
                   *, region: np.ndarray | None = None, margin_mm: float = 2.5) -> dict[str, Any]:
    """The lung to paint over a nodule of ``diameter_mm`` at ``center`` (voxel, in the cube).

    The nodule is ``region`` (bool, the cube's shape: e.g. the LIDC readers' outlines) or else a
    sphere of ``diameter_mm``; what is painted over is the nodule plus ``margin_mm`` (in mm, so
    about one slice across 2.5 mm slices), with a soft 2 mm edge (``w``). The content is
    in-painted from the ring around it by normalised convolution of the blurred context, using
    only lung-like voxels of the ring (below -600 HU after the blur; the whole ring where there
    are too few): smooth parenchyma, no vessels; the chest wall next to a juxtapleural nodule
    stays where the outline says it is. Returns ``w`` (0..1), ``fill``, ``sketch`` (``(1 - w) G(context) + w
    fill``), ``delta`` (``sketch - G(context)``), ``replace`` (= ``w``) and ``mask``.
    """
    sp = np.asarray(spacing, dtype=float)
    ctx = np.asarray(context, dtype=np.float32)
    shape = ctx.shape
    if region is not None and np.any(region):
        dist = ndi.distance_transform_edt(~np.asarray(region, bool), sampling=sp)  # mm from the nodule
    else:
        grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center, sp)], indexing="ij")
        dist = np.maximum(np.sqrt(sum(g ** 2 for g in grids)) - diameter_mm / 2.0, 0.0)
    R = diameter_mm / 2.0 + margin_mm
    w = np.clip((margin_mm + 1.0 - dist) / 2.0, 0.0, 1.0).astype(np.float32)
    low = sketch_lowpass(ctx)
    ring = (dist > margin_mm + 1.0) & (dist < margin_mm + 1.0 + max(4.0, 0.5 * diameter_mm))
    src = ring & (low < -600.0)
    if src.sum() < 0.1 * ring.sum():
        src = ring
    sig = np.maximum(0.5 * R / sp, 0.5)
    num = ndi.gaussian_filter(np.where(src, low, 0.0).astype(np.float32), sig, mode="constant")
    den = ndi.gaussian_filter(src.astype(np.float32), sig, mode="constant")
    far = den < 1e-4
    fill = np.where(far, float(np.median(low[src])) if src.any() else float(np.median(low)), num / np.maximum(den, 1e-4))
    sketch = ((1.0 - w) * low + w * fill).astype(np.float32)
    return {"w": w, "fill": fill.astype(np.float32), "sketch": sketch, "delta": (sketch - low).astype(np.float32),
            "replace": w, "mask": w > 0}


# --------------------------------------------------------------------------------------------
# rendering and pasting


def render_classic(context: np.ndarray, delta: np.ndarray, replace: np.ndarray, noise: NoiseModel,
                   rng: np.random.Generator, *, lowpass: np.ndarray | None = None) -> np.ndarray:
    """Classical renderer: ``context + delta`` with the texture of replaced regions swapped for
    synthetic noise of the measured level and NPS.

    With ``R = context - G(context)`` the original high-pass texture and ``N`` the synthesised
    noise, the result is ``G(context) + delta + sqrt(1 - replace) R + sqrt(replace) N``: the noise
    variance is kept through the transition, and nothing changes where ``delta`` and ``replace``
    are 0.
    """
    ctx = np.asarray(context, dtype=np.float32)
    low = sketch_lowpass(ctx) if lowpass is None else lowpass
    resid = ctx - low
    N = noise.synthesize(ctx.shape, rng)
    rep = np.clip(replace, 0.0, 1.0)
    out = low + delta + np.sqrt(1.0 - rep) * resid + np.sqrt(rep) * N
    untouched = (delta == 0) & (rep == 0)
    out[untouched] = ctx[untouched]
    return out.astype(np.float32)


def _render_gan(context: np.ndarray, mask: np.ndarray, sketch: np.ndarray, seed: int) -> np.ndarray:
    try:
        from . import gan  # noqa: PLC0415 - optional, written separately
    except ImportError as e:
        raise MedForensicsError(None, f"method 'gan' is not available: the GAN renderer (medforensics.forge.gan) "
                                      f"cannot be imported ({e}); use --method classic") from None
    if not hasattr(gan, "render"):
        raise MedForensicsError(None, "method 'gan' is not available: medforensics.forge.gan has no render(); use --method classic")
    try:
        out = gan.render(context, mask, sketch, seed=seed)
    except MedForensicsError:
        raise
    except (FileNotFoundError, OSError) as e:
        raise MedForensicsError(None, f"method 'gan' is not available: no trained checkpoint ({e}); use --method classic") from None
    out = np.asarray(out, dtype=np.float32)
    if out.shape != context.shape:
        raise MedForensicsError(None, f"the GAN renderer returned a cube of shape {out.shape}, expected {context.shape}")
    return np.where(mask, out, context).astype(np.float32)


def _paste(image: Image, cube: tuple[slice, ...], rendered: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Round ``rendered`` to the stored grid, keep it in each slice's value range and no darker
    than the cube's darkest voxel, change only ``allowed`` voxels; return the full edited volume
    and the change mask."""
    orig = image.pixels[cube]
    # nothing painted is darker than the darkest voxel already there (a renderer may overshoot)
    vals = np.maximum(rendered.astype(np.float64), float(orig.min()))
    k0 = cube[0].start
    for dk in range(vals.shape[0]):
        k = k0 + dk
        ds = image.datasets[k] if len(image.datasets) == image.pixels.shape[0] else None
        slope = float(getattr(ds, "RescaleSlope", 1) or 1) if ds is not None else 1.0
        inter = float(getattr(ds, "RescaleIntercept", 0) or 0) if ds is not None else 0.0
        if ds is not None or np.all(orig[dk] == np.round(orig[dk])):
            vals[dk] = np.round((vals[dk] - inter) / slope) * slope + inter
        full = image.pixels[k]
        vals[dk] = np.clip(vals[dk], float(full.min()), float(full.max()))
    vals = vals.astype(np.float32)
    new_cube = np.where(allowed, vals, orig)
    pixels = image.pixels.copy()
    pixels[cube] = new_cube
    mask = np.zeros(image.pixels.shape, np.uint8)
    mask[cube] = (new_cube != orig).astype(np.uint8)
    return pixels, mask


def _local_center(center: Sequence[int], cube: tuple[slice, ...]) -> tuple[float, float, float]:
    return tuple(float(c - s.start) for c, s in zip(center, cube))  # type: ignore[return-value]


def _thickness(image: Image) -> float | None:
    if image.datasets:
        try:
            return float(getattr(image.datasets[0], "SliceThickness", 0) or 0) or None
        except (TypeError, ValueError):
            return None
    return None


def _finish(image: Image, kind: str, method: str, center: tuple[int, int, int], cube, bbox, context, parts,
            tissue: str, seed: int, params: dict[str, Any]) -> Forgery:
    rng = np.random.default_rng([seed, 1])
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    # the classic rendering; for method "gan" it is also the sketch the GAN re-renders (below)
    ks = range(cube[0].start, cube[0].stop)
    try:
        nm = noise_model(image.pixels, ks, center[1:], tissue=tissue)
    except MedForensicsError as e:
        other = "soft" if tissue == "lung" else "lung"  # noise is noise: the other tissue will do
        try:
            nm = noise_model(image.pixels, ks, center[1:], tissue=other)
        except MedForensicsError:
            raise MedForensicsError(image.path, e.problem) from None
    rendered = render_classic(context, parts["delta"], parts["replace"], nm, rng)
    params["noise"] = {"tissue": nm.tissue, "sigma_hu": [round(float(s), 2) for s in nm.sigma],
                       "slice_correlation": round(nm.rho, 3), "n_patches": nm.n_patches}
    if method == "gan":
        # The GAN re-renders the classic result: its sketch is the low-pass of the classic
        # rendering, which carries the measured noise texture at low frequencies (a smooth sketch
        # gave flat, too-white fills over large removals); the GAN makes the fine texture.
        gen_mask = ndi.binary_dilation(parts["mask"], iterations=1)
        sketch = np.where(gen_mask, sketch_lowpass(rendered), parts["sketch"]).astype(np.float32)
        rendered = _render_gan(context, gen_mask, sketch, seed)
        params["gan_sketch"] = "low-pass of the classic rendering"
    # only the cube is pasted back: every change lies inside the reported cube
    pixels, mask = _paste(image, cube, rendered, np.ones(context.shape, bool))
    params.update({"method": method, "seed": seed, "cube_shape": [s.stop - s.start for s in cube],
                   "spacing_mm": [round(float(s), 4) for s in image.spacing]})
    return Forgery(pixels=pixels, mask=mask, kind=kind, method=method, center_voxel=center, bbox_voxel=bbox,
                   center_mm=image.voxel_to_mm(center), params=params)


def inject(image: Image, *, center_voxel: Sequence[int] | None = None, center_mm: Sequence[float] | None = None,
           diameter_mm: float = 10.0, nodule_type: str = "solid", method: str = "classic", seed: int = 0,
           avoid: Any = None, margin_mm: float = AVOID_MARGIN_MM) -> Forgery:
    """Inject a lung nodule into a CT series.

    Parameters
    ----------
    image : Image
        A CT volume in HU (``io.load`` / ``io.load_series``).
    center_voxel, center_mm : sequence, optional
        Where: ``(k, i, j)`` in ``image.pixels`` or ``(x, y, z)`` patient mm (LPS). Neither: a
        place in the lung parenchyma drawn by :func:`choose_location` with ``seed``.
    diameter_mm : float
        Nodule diameter (3 to 40 mm).
    nodule_type : str
        ``solid`` (+0..+100 HU, lobulated, spiculated), ``part-solid`` (ground-glass halo with
        a solid core) or ``ground-glass`` (-700..-400 HU, fuzzy margin).
    method : str
        Renderer: ``classic`` (synthesised noise of the measured level and NPS) or ``gan``
        (:func:`medforensics.forge.gan.render`).
    seed : int
        Seeds the location, shape, HU levels and noise: the same seed gives the same forgery.
    avoid : array of (k, i, j), optional
        Voxels of real findings to keep away from; default (None): every voxel the LIDC readers
        marked on this series, where its annotation XML is found
        (:func:`medforensics.forge.lidc.marked_voxels`); ``()`` for none.
    margin_mm : float
        Least distance (mm) between those voxels and the cube the injection may change
        (:data:`AVOID_MARGIN_MM`). A chosen location keeps it; a given centre that does not
        raises :class:`MedForensicsError`, as does a series with no such place.

    Returns
    -------
    Forgery
        ``pixels`` the full edited volume; ``mask`` the changed voxels, all inside
        ``bbox_voxel`` (the cube); ``params`` the drawn shape and HU levels and the noise model.
    """
    _check_ct(image)
    if nodule_type not in NODULE_TYPES:
        raise ValueError(f"nodule_type must be one of {', '.join(NODULE_TYPES)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    if not (3.0 <= float(diameter_mm) <= 40.0):
        raise ValueError("diameter_mm must be between 3 and 40")
    if not margin_mm >= 0:
        raise ValueError("margin_mm must be zero or more")
    rng = np.random.default_rng(seed)
    marks = _annotated(image, avoid)
    if center_voxel is None and center_mm is None:
        center = choose_location(image, diameter_mm, rng, avoid=marks, margin_mm=margin_mm)
        chosen = True
    else:
        center = _resolve_center(image, center_voxel, center_mm)
        chosen = False
    cube, bbox = cube_around(image, center, diameter_mm)
    gap = cube_distance_mm(bbox, marks, _spacing(image))
    if gap < margin_mm:
        near = marks[np.argmin((((marks - np.asarray(center)) * _spacing(image)) ** 2).sum(axis=1))]
        raise MedForensicsError(image.path, f"an injection at {center} would change voxels {gap:.1f} mm from an annotated "
                                            f"nodule (marked at voxel {tuple(int(v) for v in near)}); injections keep "
                                            f"{margin_mm:g} mm away from real findings")
    context = image.pixels[cube].astype(np.float32)
    parts = nodule_sketch(context, _spacing(image), _local_center(center, cube), float(diameter_mm), nodule_type,
                          np.random.default_rng([seed, 2]), slice_thickness=_thickness(image))
    params = {"diameter_mm": float(diameter_mm), "nodule_type": nodule_type, "location": "chosen" if chosen else "given",
              "annotated": {"n_voxels": int(len(marks)), "margin_mm": float(margin_mm),
                            "distance_mm": None if not len(marks) else round(gap, 2)},
              **parts["params"]}
    return _finish(image, "inject", method, center, cube, bbox, context, parts, "soft", seed, params)


def _nodule_region(nodule: Any, cube: tuple[slice, ...]) -> np.ndarray | None:
    """The nodule's own outline (``nodule.mask`` over ``nodule.bbox_voxel``) in cube coordinates,
    when it has one worth using (not a point mark)."""
    m = getattr(nodule, "mask", None)
    b = getattr(nodule, "bbox_voxel", None)
    if m is None or b is None or getattr(nodule, "small", False) or not np.any(m):
        return None
    m = np.asarray(m, bool)
    if m.shape != tuple(b[d + 3] - b[d] for d in range(3)):
        return None
    region = np.zeros(tuple(s.stop - s.start for s in cube), bool)
    src, dst = [], []
    for d, s in enumerate(cube):
        lo, hi = max(b[d], s.start), min(b[d + 3], s.stop)
        if hi <= lo:
            return None
        src.append(slice(lo - b[d], hi - b[d]))
        dst.append(slice(lo - s.start, hi - s.start))
    region[tuple(dst)] = m[tuple(src)]
    return region if region.any() else None


def remove(image: Image, *, center_voxel: Sequence[int] | None = None, center_mm: Sequence[float] | None = None,
           diameter_mm: float | None = None, nodule: Any = None, method: str = "classic", seed: int = 0) -> Forgery:
    """Remove a nodule from a CT series by painting lung over it.

    Give the nodule (a :class:`medforensics.forge.lidc.Nodule`, or anything with
    ``center_voxel`` and ``diameter_mm``) or its centre and diameter. The region painted over is
    the nodule's outline (an LIDC nodule's ``mask``: the readers' outlines) or else a sphere of
    its diameter, plus 2.5 mm; its content is in-painted from the surrounding
    lung (:func:`removal_sketch`) and rendered with lung texture and noise measured nearby
    (``classic``) or by the GAN (``gan``). Returns a :class:`Forgery` like :func:`inject`.
    """
    _check_ct(image)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}")
    if nodule is not None:
        if center_voxel is not None or center_mm is not None:
            raise ValueError("give a nodule or a centre, not both")
        center_voxel = tuple(nodule.center_voxel)
        if diameter_mm is None:
            diameter_mm = float(nodule.diameter_mm)
    if center_voxel is None and center_mm is None:
        raise ValueError("remove needs a nodule or its centre (center_voxel or center_mm)")
    if diameter_mm is None:
        raise ValueError("remove needs the nodule's diameter (diameter_mm)")
    if not (1.0 <= float(diameter_mm) <= 100.0):
        raise ValueError("diameter_mm must be between 1 and 100")
    center = _resolve_center(image, center_voxel, center_mm)
    cube, bbox = cube_around(image, center, float(diameter_mm))
    context = image.pixels[cube].astype(np.float32)
    region = _nodule_region(nodule, cube) if nodule is not None else None
    parts = removal_sketch(context, _spacing(image), _local_center(center, cube), float(diameter_mm), region=region)
    params: dict[str, Any] = {"diameter_mm": float(diameter_mm), "region": "outline" if region is not None else "sphere"}
    if nodule is not None and hasattr(nodule, "to_dict"):
        params["nodule"] = nodule.to_dict()
    return _finish(image, "remove", method, center, cube, bbox, context, parts, "lung", seed, params)
