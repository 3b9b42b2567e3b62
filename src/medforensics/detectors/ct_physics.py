"""CT physics consistency: Hounsfield units and quantum noise where the physics says they must be.

A CT image is a measurement: air reads about -1000 HU, fat about -100, soft tissue 0 to 80, and
every pixel carries quantum noise whose level changes *smoothly* across a slice (higher in the
middle of the body, lower near its edge) and from slice to slice, and whose texture (the noise
power spectrum, NPS) is set by the reconstruction kernel of the series. Edits break this:
smoothing, in-painting and content painted in leave too little noise, a patch or a slice from
another scan brings that scan's noise level and texture, added noise stands out. The detector
measures the noise per block and asks whether each block fits what its surroundings predict.

Method (vectorised: a few OpenCV filters over stacks of slices, everything else on a grid of
``B x B``-pixel blocks, ``B = 8`` for images of 256 px and more, 4 below):

1. **Padding, body and classes.** The scanner's padding outside the circular field of view (an
   exact value found in the image corners: -3024, -2048, -2000, -1024 or 0) is left out with a
   3 px margin. The patient is the largest region above -500 HU of each slice (with regions at
   least a quarter its size), lungs filled in, one block in from the skin. Its blocks are classed
   by mean HU as *lung* (-980..-600), *fat* (-200..-40) or *soft tissue* (-40..150) when their 8
   neighbours agree (no skin, pleura or partial volume) and no bone (> 300 HU) or gas (< -400 HU
   in soft tissue) is next to them: streaks and edges raise the residual there.
2. **Noise level.** Immerkaer's 3x3 operator ``r`` (blind to edges and ramps) on homogeneous
   pixels only (gradient of the 7x7-smoothed image below ``GRADIENT_HU`` HU/px);
   ``L = log sigma`` with ``sigma = sqrt(pi/2) * mean|r|`` per block — the high-pass noise,
   below the pixel standard deviation where CT noise is correlated.
3. **Noise texture (NPS shape).** ``T = log(sigma_high / sigma_mid)``, the residual in the highest
   band (``r``) over a middle band (3x3 mean minus 7x7 mean): where the NPS peaks, which the
   reconstruction kernel sets.
4. **Noise-free pixels.** The share of homogeneous pixels whose residual is below a tenth of the
   slice's typical noise, over 8x8 windows at a stride of half a block: 10-30% for real noise,
   80-100% where content was smoothed, in-painted or painted in without noise (a synthetic
   nodule).
5. **Expected values.** Each block's ``L`` and ``T`` is compared with the mean of the blocks of
   its class in a ring around it (3 to 7 blocks away, so an edit of up to ~50 px does not
   predict itself) and, in a series, in the 3x3 blocks at the same place on the slices above and
   below. The expectation is taken twice, the second time without the blocks far off the first
   (so that an edited patch does not drag its neighbours' expectation along). The deviation is
   the median over 3x3 blocks (an edit is coherent, a stray block is not), divided by the
   image's robust spread of such medians, bounded to ``SPREAD_RANGE``: ``zL``, ``zT``. The
   noise-free share gives ``zF = (share - bar) / FLAT_STEP`` with ``bar`` at least
   ``FLAT_SHARE`` and 0.3 above the image's own 90th percentile (resampled NIfTI volumes have
   more flat pixels everywhere). *More* noise than expected is judged against
   ``sqrt(expected^2 + STRUCTURE_HU^2)``: the residual also holds unresolved structure of about
   one HU (the step CT numbers are stored in), which matters only where the high-pass noise itself
   is about 1 HU (smooth head kernels, thick slices; the fitted sources have 2.9 to 33 HU).
6. **Support.** A block's evidence counts as far as a neighbour backs it (``min(e, max e`` of its 8
   in-plane neighbours and the same place on the slices above and below)): an edit covers several
   blocks; a lone block (a bubble or seam of a phantom, a calcification) does not make an edit.
7. **Slices.** In a series, each block's ``L`` and ``T`` is compared with the same place on the
   slices just above and below where that place is of the same group (soft tissue, fat, lung, air
   outside the patient); the slice's median difference, in units of the series' robust spread of
   such medians combined with its standard error, is its z per group. A slice from another scan,
   with added noise or re-processed changes the noise in all its tissues and in the air: the
   slice's z is that of its *second* most deviant group (its only one where one group is
   measured). Comparing like with like, and asking two groups, keeps anatomy that begins or ends
   (the vertex of a head) and a patient mask that follows a phantom's outline on some slices
   only from passing for a change of noise.
8. **HU plausibility.** Air well outside the patient (in slices where the patient is inside the
   image) must read -1000 +- ``AIR_TOLERANCE`` HU; a clear fat peak must sit between -170 and
   -40 HU; values below -1100 HU (other than padding) must stay under 2%.

Evidence per block is ``e = max(|zL|, W_TEXTURE * |zT|, zF)``, then supported (step 6); the heatmap is
``clip((e - E_LOW) / (E_HIGH - E_LOW), 0, 1)`` (0.5 at ``MIDPOINT``; a slice out of line lights up
as a whole), stored as the block grid itself (``Evidence.heatmap_scale`` ``(1, b, b)``, or ``(b, b)``
for a single slice) rather than a full-size volume. The raw statistic is ``max(largest e, slice z) + HU term`` and the score is
``logistic(raw, MIDPOINT, SCALE)``.

Calibration: on all authentic CT of the fitted sources in ../shared/data (the 133-, 12-, 11- and
3-slice DICOM series, 62 single slices in three orientations, three NIfTI volumes) and pydicom's
``CT_small.dcm`` (70 images) the raw statistic stays at or below 6.01 (median 3.1, 90th
percentile 4.9; 6.24, 3.5 and 5.2 before steps 5-7 took their present form). ``MIDPOINT = 7.0``
keeps all of them below 0.5 and ``SCALE = 0.4`` makes raw 7.9 score above 0.9 (smoothed,
in-painted or noise-free patches reach 10 to 40). No fitted image has a lone block at 7 or more
(the largest 6.15; support lowers the local evidence by a median 0.14). Outside sources, measured
only: the GE head CT of ct/dcm-qa-ct (tilt, 4 and 7 mm slices) scores 0.27 (raw 6.60; it scored
0.99 from a vertex slice whose soft-tissue texture alone was out of line, z 9.0, and a patch of
skull-base streaks 2.2x the 0.8 HU noise), the Philips head phantom 0.001 (0.998 from one lone
block at 9.5 and a slice z of 8.1 from air blocks that change with the patient mask), the
emp-news phantom 0.000. ``python -m medforensics.detectors.ct_physics PATH...`` prints the raw values.

What it cannot see: an edit that keeps the noise — a region shifted in HU, or rescaled by a
factor near 1 (x1.3 changes the noise by 0.26 in log units, less than the natural spread of
noise between 40-px regions of real CT) — and a patch from a scan with similar noise.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np
from scipy import ndimage

from ..core import Evidence, Image, ignoring_warnings
from ..noise import IMMERKAER_GAIN, IMMERKAER_KERNEL, mad_sigma
from .base import Detector, coarse_cover, logistic, print_raw_values, regions_from_heatmap

# --------------------------------------------------------------------------- constants
MIDPOINT, SCALE = 7.0, 0.4
BONE_HU = 300.0             # bone (and contrast); streaks and edge leakage raise the noise next to it
BONE_MARGIN = 1             # blocks next to bone (within this many blocks) are not measured
GAS_HU = -400.0             # gas pockets in soft tissue (bowel) raise the noise around them, as bone does
GRADIENT_HU = 30.0          # HU per pixel on the 7x7-smoothed image: above it a pixel is an edge
MIN_HOMOGENEOUS = 0.5       # share of homogeneous pixels a block needs to be measured
CLASSES = {"lung": (-980.0, -600.0), "fat": (-200.0, -40.0), "soft tissue": (-40.0, 150.0)}
#: range of block means the 8 neighbours of a block of each class must lie in
CLASS_NEIGHBOURHOOD = ((-1010.0, -350.0), (-350.0, 300.0), (-350.0, 300.0))
AIR = (-1100.0, -950.0)
AIR_TOLERANCE = 80.0        # HU that air outside the patient may depart from -1000
RING = (3, 7)               # ring of reference blocks, inner and outer radius in blocks
#: bounds of the robust spread of 3x3-median deviations an image may claim for itself: a very
#: regular image must not turn sampling noise into evidence, a very irregular one must not hide
#: a pasted patch
SPREAD_RANGE = {"L": (0.10, 0.20), "T": (0.15, 0.35)}
W_TEXTURE = 0.8
MIN_REFERENCE = 12          # reference blocks (weighted) a block needs to be judged
#: noise-free share of an 8x8 window above which it is evidence, (share - bar) / FLAT_STEP, with
#: bar = max(FLAT_SHARE, 90th percentile of the image + FLAT_MARGIN); real CT stays below 0.45 (DICOM)
#: and 0.62 (resampled NIfTI), noise-free edits reach 0.77 to 1
FLAT_SHARE, FLAT_MARGIN, FLAT_STEP = 0.45, 0.3, 0.025
FLAT_FRACTION = 0.1         # a residual below this share of the slice's noise counts as noise-free
E_LOW, E_HIGH = MIDPOINT - 2.0, MIDPOINT + 2.0   # heatmap 0..1 over this range of evidence (0.5 at MIDPOINT)
SLICE_FLOOR = 0.04          # lowest spread of slice-to-slice differences of median log noise
SLICE_NEIGHBOURS = (-1, 1)  # slices each block is compared with, at the same place
MIN_SIDE = 32               # smaller images: too few blocks for statistics, the detector abstains
#: high-pass residual (HU) that unresolved structure adds to the noise, in quadrature: one HU, the
#: step in which CT numbers are stored, the finest contrast the image holds. "More noise" is judged
#: against sqrt(expected^2 + STRUCTURE_HU^2): no change where the noise is 3 HU or more (all fitted
#: sources: 2.9 to 33 HU in soft tissue), a 2x excess is no longer evidence where it is 1 HU
STRUCTURE_HU = 1.0
#: Immerkaer's operator scaled so that ``mean|r| * sqrt(pi/2)`` is sigma for white noise.
_IMMERKAER = (IMMERKAER_KERNEL * IMMERKAER_GAIN).astype(np.float32)
_SQRT_HALF_PI = float(np.sqrt(np.pi / 2))


def block_size(shape: tuple[int, int]) -> int:
    """Pixels per block side: 8 for images of 256 px and more, 4 for smaller ones."""
    return 8 if min(shape) >= 256 else 4


# --------------------------------------------------------------------------- pixel level
def padding_values(vol: np.ndarray) -> list[float]:
    """The scanner's padding values: exact values at the image corners, at most -1000 HU or
    exactly 0, covering more than 0.5% of the volume (judged on a sample)."""
    corners = np.unique(np.concatenate([vol[:, 0, 0], vol[:, 0, -1], vol[:, -1, 0], vol[:, -1, -1]]))
    sample = vol[:: max(1, vol.shape[0] // 16), ::4, ::4]
    return [float(v) for v in corners if (v <= -1000 or v == 0) and np.mean(sample == v) > 0.005]


def _area(a: np.ndarray, b: int) -> np.ndarray:
    """Block means of a tall 2D array whose sides are multiples of ``b`` (exact for integer factors)."""
    return cv2.resize(a, (a.shape[1] // b, a.shape[0] // b), interpolation=cv2.INTER_AREA)


#: slices filtered together: each chunk is one tall 2D image small enough to stay in cache
_CHUNK_PIXELS = 1 << 20
_FEATURES = ("hfrac", "hi", "mid", "mu", "pad", "bone", "gas", "flat")


def block_features(vol: np.ndarray, b: int) -> dict:
    """Per-block statistics of a ``(z, H, W)`` volume (ragged edges dropped).

    A few slices at a time are stacked into one tall 2D image so that each filter is one OpenCV
    call; the rows where a 7x7 filter straddles two slices are the image's own border rows,
    which are not measured (see :func:`analyse`).
    """
    z, h, w = vol.shape
    gh, gw = h // b, w // b
    pads = padding_values(vol)
    out = {k: np.empty((z, gh, gw), np.float32) for k in _FEATURES}
    step = max(1, _CHUNK_PIXELS // (gh * b * gw * b))
    for k0 in range(0, z, step):
        k1 = min(z, k0 + step)
        v = np.ascontiguousarray(vol[k0:k1, : gh * b, : gw * b], dtype=np.float32).reshape(-1, gw * b)
        part = _chunk_features(v, b, pads, k1 - k0)
        for key in _FEATURES:
            out[key][k0:k1] = part[key].reshape(k1 - k0, gh, gw)
    out["n_homog"] = out["hfrac"] * (b * b)
    out["pad_values"] = pads
    return out


def _chunk_features(v: np.ndarray, b: int, pads: list[float], nz: int) -> dict[str, np.ndarray]:
    r = cv2.filter2D(v, cv2.CV_32F, _IMMERKAER)
    np.abs(r, out=r)
    m7 = cv2.blur(v, (7, 7))
    mid = cv2.absdiff(cv2.blur(v, (3, 3)), m7)
    gx = cv2.Sobel(m7, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(m7, cv2.CV_32F, 0, 1, ksize=3)
    homo = cv2.magnitude(gx, gy) < 8.0 * GRADIENT_HU          # Sobel gain is 8
    if pads:
        pad = np.isin(v, pads).view(np.uint8)
        pad = cv2.dilate(pad, np.ones((7, 7), np.uint8))   # the edge of the field of view too
        homo &= pad == 0
        padfrac = _area(pad.astype(np.float32), b)
    else:
        padfrac = np.zeros((v.shape[0] // b, v.shape[1] // b), np.float32)
    hf = homo.view(np.uint8).astype(np.float32)
    hfrac = _area(hf, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        hi = _area(r * hf, b) / hfrac * _SQRT_HALF_PI
        md = _area(mid * hf, b) / hfrac * _SQRT_HALF_PI
    mu = _area(v, b)
    bone = _area((v > BONE_HU).view(np.uint8).astype(np.float32), b)
    gas = _area((v < GAS_HU).view(np.uint8).astype(np.float32), b)
    # noise-free pixels: a residual below FLAT_FRACTION of the slice's typical noise in tissue;
    # air, gas and saturated values can be flat by themselves and are not counted
    gh = hi.shape[0] // nz
    tissue = (hfrac >= MIN_HOMOGENEOUS) & (mu > -950) & (mu < 150) & (padfrac == 0) & np.isfinite(hi)
    typical = np.ones(nz, np.float32)
    for k in range(nz):
        t = hi[k * gh: (k + 1) * gh][tissue[k * gh: (k + 1) * gh]]
        if t.size:
            typical[k] = np.median(t)
    thr = np.repeat(FLAT_FRACTION * typical / _SQRT_HALF_PI, gh * b)[:, None]
    flat = (r < thr) & homo & (v > -990) & (v < 2000)
    # counted over 8x8 windows at a stride of half a block (a small painted-in blob need not line
    # up with the block grid), the highest share of the windows overlapping each block
    hb = b // 2
    fs = _area(flat.view(np.uint8).astype(np.float32), hb)
    hs = _area(hf, hb)
    fw = fs[:-1, :-1] + fs[1:, :-1] + fs[:-1, 1:] + fs[1:, 1:]
    hw = hs[:-1, :-1] + hs[1:, :-1] + hs[:-1, 1:] + hs[1:, 1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(hw >= 2.0, fw / hw, 0.0).astype(np.float32)   # half the window homogeneous
    share = cv2.dilate(np.pad(share, ((1, 1), (1, 1))), np.ones((3, 3), np.uint8))
    flat_block = share[1::2, 1::2][: hi.shape[0], : hi.shape[1]]
    return {"hfrac": hfrac, "hi": hi, "mid": md, "mu": mu, "pad": padfrac, "bone": bone, "gas": gas,
            "flat": flat_block}


# --------------------------------------------------------------------------- block level
def body_mask(mu: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """Blocks inside the patient, slice by slice: regions above -500 HU at least a quarter the
    size of the slice's largest (arms count, the couch rarely does), holes (lungs) filled, one
    block eroded so that skin and air edges stay out."""
    fg = (mu > -500) & (pad < 0.5)
    st = np.zeros((3, 3, 3), bool)
    st[1] = ndimage.generate_binary_structure(2, 1)
    lab, n = ndimage.label(fg, structure=st)
    if n == 0:
        return fg
    sizes = np.bincount(lab.ravel())[1:]
    first = np.array([s[0].start for s in ndimage.find_objects(lab)])
    largest = np.zeros(mu.shape[0])
    np.maximum.at(largest, first, sizes)
    keep = np.concatenate([[False], sizes >= 0.25 * largest[first]])
    body = ndimage.binary_fill_holes(keep[lab], structure=st)
    return ndimage.binary_erosion(body, structure=st, iterations=1)


def _planes(x: np.ndarray, r: int) -> np.ndarray:
    """Planes of a ``(z, h, w)`` grid stacked into one tall 2D float32 image with ``r`` zero rows
    after each, so that a 2D filter of radius ``r`` does not reach from one slice into the next."""
    z, h, w = x.shape
    t = np.zeros((z, h + r, w), np.float32)
    t[:, :h] = x
    return t.reshape(z * (h + r), w)


def _unplanes(t: np.ndarray, shape: tuple[int, int, int], r: int) -> np.ndarray:
    z, h, w = shape
    return t.reshape(z, h + r, w)[:, :h]


def _plane_filter(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate each plane of a ``(z, h, w)`` grid with a 2D kernel, zero outside."""
    r = kernel.shape[0] // 2
    t = cv2.filter2D(_planes(x, r), cv2.CV_32F, kernel, borderType=cv2.BORDER_CONSTANT)
    return _unplanes(t, x.shape, r)


def _norm_conv(x: np.ndarray, valid: np.ndarray, ring: np.ndarray, across: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``x`` over the valid blocks in a ring on the same slice and, when ``across``, the
    3x3 blocks at the same place on the slices above and below (weight 2 each); and the
    (weighted) number of blocks it is taken over."""
    xv = np.where(valid, x, 0.0).astype(np.float32)
    vf = valid.astype(np.float32)
    n = _plane_filter(vf, ring)
    t = _plane_filter(xv, ring)
    if across and x.shape[0] >= 3:
        box = np.ones((3, 3), np.float32) * 2.0
        nb, tb = _plane_filter(vf, box), _plane_filter(xv, box)
        n[1:] += nb[:-1]
        n[:-1] += nb[1:]
        t[1:] += tb[:-1]
        t[:-1] += tb[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return t / n, n


def _local_median(d: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median over the 3x3 blocks around each block (blocks not measured count as 0, "as
    expected") and the number measured: an edit is coherent over several blocks, a stray block
    (a vessel, a streak) is not."""
    med = cv2.medianBlur(_planes(np.where(valid, d, 0.0).astype(np.float32), 1), 3)
    n = _plane_filter(valid.astype(np.float32), np.ones((3, 3), np.float32))
    return _unplanes(med, d.shape, 1), n


def _robust_spread(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    if v.size < 8:
        return float("nan")
    return mad_sigma(v)


def analyse(vol: np.ndarray) -> dict:
    """All block maps of a ``(z, H, W)`` HU volume: features, classes, deviations and evidence."""
    vol = vol.astype(np.float32, copy=False)
    b = block_size(vol.shape[1:])
    f = block_features(vol, b)
    body = body_mask(f["mu"], f["pad"])
    with np.errstate(invalid="ignore", divide="ignore"):
        L = np.log(np.maximum(f["hi"], 0.2))
        T = np.log(np.maximum(f["hi"], 0.2) / np.maximum(f["mid"], 0.2))
    measured = (f["hfrac"] >= MIN_HOMOGENEOUS) & (f["pad"] == 0) & np.isfinite(f["hi"]) & np.isfinite(f["mid"])
    near_bone = ndimage.maximum_filter(f["bone"] > 0.05, size=(1, 2 * BONE_MARGIN + 1, 2 * BONE_MARGIN + 1))
    measured &= ~near_bone
    # the outermost blocks: filters there reach past the image (or into the next slice of the stack)
    measured[:, [0, -1], :] = False
    measured[:, :, [0, -1]] = False
    classes = np.full(L.shape, -1, np.int8)
    for ci, (lo, hi) in enumerate(CLASSES.values()):
        # a block and its 8 neighbours must all be near the class: boundaries (skin, pleura,
        # partial volume) raise the residual
        wlo, whi = CLASS_NEIGHBOURHOOD[ci]
        inside = ndimage.minimum_filter(((f["mu"] >= wlo) & (f["mu"] < whi)).view(np.uint8), size=(1, 3, 3)) > 0
        member = measured & body & inside & (f["mu"] >= lo) & (f["mu"] < hi)
        if ci >= 1:
            member &= ~ndimage.maximum_filter(f["gas"] > 0.02, size=(1, 3, 3))
        classes[member] = ci
    air = measured & ~body & (f["mu"] >= AIR[0]) & (f["mu"] < AIR[1])

    rin, rout = RING
    yy, xx = np.mgrid[-rout: rout + 1, -rout: rout + 1]
    ring = ((np.hypot(yy, xx) > rin) & (np.hypot(yy, xx) <= rout)).astype(np.float32)
    z = {}
    spreads = {}
    expected_L = np.zeros(L.shape, np.float32)
    for name, X in (("L", L), ("T", T)):
        dev = np.zeros(L.shape, np.float32)
        good = np.zeros(L.shape, bool)
        interior = np.zeros(L.shape, bool)
        for ci in range(len(CLASSES)):
            cls = classes == ci
            if cls.sum() < 16:
                continue
            E, n = _norm_conv(X, cls, ring, across=True)
            # second pass without the blocks far off the first expectation: an edited patch must
            # not drag the expectation of the blocks around it (and so the image's spread) along
            d0 = np.where(cls & (n >= MIN_REFERENCE), X - E, 0.0)
            s0 = _robust_spread(d0[cls & (n >= MIN_REFERENCE)])
            if np.isfinite(s0) and s0 > 0:
                inlier = cls & (np.abs(d0) <= 3.0 * max(s0, SPREAD_RANGE[name][0]))
                E, n = _norm_conv(X, inlier, ring, across=True)
            ok = cls & (n >= MIN_REFERENCE)
            if name == "L":
                expected_L[ok] = E[ok]
            A, na = _local_median(X - E, ok)
            dev[ok] = A[ok]
            good |= ok & (na >= 5)
            interior |= ok & (na >= 8.5)
        # one spread for all classes of the image: a pasted patch must not widen it for itself
        s = _robust_spread(dev[interior])
        s = float(np.clip(s if np.isfinite(s) else SPREAD_RANGE[name][1], *SPREAD_RANGE[name]))
        spreads[name] = round(s, 4)
        z[name] = np.where(good, dev / s, 0.0).astype(np.float32)
    # more noise than expected must be more than unresolved structure could add: the residual of a
    # block is sqrt(noise^2 + STRUCTURE_HU^2), which matters only where the noise itself is low
    # (smooth kernels, thick slices: 0.5-1 HU of high-pass noise, where fine anatomy and partial
    # volume next to bone reach 1-2 HU); less noise than expected is judged against the noise alone
    lift = 0.5 * np.log1p(STRUCTURE_HU ** 2 * np.exp(-2.0 * expected_L)) / spreads["L"]
    z["L"] = np.where(z["L"] > 0, np.maximum(z["L"] - lift, 0.0), z["L"]).astype(np.float32)
    # noise-free pixels: real noise leaves about 8% of the residuals below a tenth of the typical
    # noise (up to about 30% where the noise is locally low); content smoothed, in-painted or painted
    # in without noise leaves most of them there. Resampled volumes (NIfTI) hold more flat pixels
    # everywhere, so the bar is also set above the image's own 90th percentile.
    tissue = measured & body
    share = np.nan_to_num(f["flat"])
    bar = FLAT_SHARE
    if tissue.sum() >= 20:
        bar = max(FLAT_SHARE, float(np.percentile(share[tissue], 90)) + FLAT_MARGIN)
    zF = np.where(tissue, np.clip((share - bar) / FLAT_STEP, 0.0, None), 0.0)
    evidence = np.maximum(np.maximum(np.abs(z["L"]), W_TEXTURE * np.abs(z["T"])), zF).astype(np.float32)
    return {"b": b, "f": f, "body": body, "classes": classes, "air": air, "L": L, "T": T,
            "zL": z["L"], "zT": z["T"], "zF": zF, "evidence": evidence, "spreads": spreads, "flat_bar": bar}


def supported(evidence: np.ndarray) -> np.ndarray:
    """Evidence of each block as far as a neighbour backs it: ``min(e, max e of its 8 in-plane
    neighbours and the blocks at the same place on the slices above and below)``. An edit covers
    several blocks, so their evidence stands; a lone block (a calcification, a streak, a bubble or
    a seam in a phantom) drops to the level of its neighbours."""
    fp = np.zeros((3, 3, 3), bool)
    fp[1] = True
    fp[0, 1, 1] = fp[2, 1, 1] = True
    fp[1, 1, 1] = False
    if evidence.shape[0] == 1:
        fp = fp[1:2]
    nb = ndimage.maximum_filter(evidence, footprint=fp, mode="constant", cval=0.0)
    return np.minimum(evidence, nb).astype(np.float32)


def slice_consistency(a: dict) -> tuple[np.ndarray, dict]:
    """Per slice: robust z-score of its noise level and texture against its neighbours (block by block
    at the same place), corroborated by a second group of blocks (tissue classes, air)."""
    L, T, classes, air = a["L"], a["T"], a["classes"], a["air"]
    nz = L.shape[0]
    groups = {"soft tissue": classes == 2, "fat": classes == 1, "lung": classes == 0, "air": air}
    per_slice: dict[str, np.ndarray] = {}
    zs = np.zeros(nz)
    if nz < 5:
        return zs, per_slice
    by_group: dict[str, np.ndarray] = {}
    with ignoring_warnings(RuntimeWarning):
        for gname, m in groups.items():
            count = m.reshape(nz, -1).sum(axis=1)
            for fname, X in (("L", L), ("T", T)):
                vals = np.where(m, X, np.nan)
                med = np.nanmedian(vals.reshape(nz, -1), axis=1)
                med[count < 8] = np.nan
                per_slice[f"{gname}:{fname}"] = med
                if np.isfinite(med).sum() < 5:
                    continue
                # like with like: each block against the same place on the (up to) four nearest
                # slices where that place is of the same group, so that a group whose blocks move
                # from slice to slice (the air around a phantom whose outline the patient mask
                # follows on some slices only, lungs that begin) does not pass for a change of noise
                pad = np.pad(vals, ((2, 2), (0, 0), (0, 0)), mode="constant", constant_values=np.nan)
                ref = nanmedian_first_axis(np.stack([pad[2 + o: 2 + o + nz] for o in SLICE_NEIGHBOURS]))
                diff = (vals - ref).reshape(nz, -1)
                pairs = np.isfinite(diff).sum(axis=1)
                d = np.nanmedian(diff, axis=1)
                d[pairs < 8] = np.nan
                # standard error of each slice's median: few blocks, a less certain median
                mad = mad_sigma(diff, axis=1, nan_policy="omit")
                se = 1.2533 * mad / np.sqrt(np.maximum(pairs, 1))
                s = max(_robust_spread(d), SLICE_FLOOR)
                zz = np.abs(d) / np.sqrt(s * s + se * se)
                zz[~np.isfinite(zz)] = np.nan
                by_group[gname] = np.fmax(by_group.get(gname, np.full(nz, np.nan)), zz)
    if by_group:
        # a slice re-processed, with added noise or from another scan changes the noise in all its
        # tissues and in the air around the patient: the slice is out of line as far as its
        # second most deviant group says (its most deviant one alone where only one is measured).
        # One group alone (soft tissue at the vertex, air whose blocks move where the patient
        # mask changes, a few blocks of one class in a phantom) follows the anatomy, not the slice.
        g = np.sort(np.nan_to_num(np.stack(list(by_group.values())), nan=-np.inf), axis=0)[::-1]
        measured = np.isfinite(g).sum(axis=0)
        second = g[1] if g.shape[0] > 1 else g[0]
        zs = np.where(measured >= 2, second, np.where(measured == 1, g[0], 0.0))
        zs = np.nan_to_num(zs, nan=0.0, neginf=0.0, posinf=0.0)
        per_slice["groups_behind_z"] = measured
    return zs, per_slice


def hu_plausibility(vol: np.ndarray, a: dict) -> tuple[float, list[str], dict]:
    """Global HU checks: air outside the patient near -1000 HU, a fat peak (where there is one)
    near -100 HU, almost nothing below -1100 HU other than padding."""
    f = a["f"]
    pad_values = f["pad_values"]
    step = max(1, vol.shape[0] // 16)
    sample = vol[::step, ::2, ::2].ravel()
    if pad_values:
        sample = sample[~np.isin(sample, pad_values)]
    sample = sample[sample > -1500]   # below: padding of other values, or nothing physical at all
    notes: list[str] = []
    stats: dict = {}
    term = 0.0
    if sample.size == 0:
        return 0.0, notes, stats
    below = float(np.mean(sample < -1100))
    stats["share_below_-1100"] = round(below, 4)
    if below > 0.02:
        term += min((below - 0.02) * 200, 10.0)
        notes.append(f"{100 * below:.1f}% of the pixels lie below -1100 HU, which no tissue or air produces.")
    # air: blocks well outside the patient (not next to the skin, not padding)
    body = a["body"]
    touches = (body[:, 1, :].any(axis=1) | body[:, -2, :].any(axis=1)
               | body[:, :, 1].any(axis=1) | body[:, :, -2].any(axis=1))
    outside = ~ndimage.binary_dilation(body, structure=np.ones((1, 5, 5), bool))
    # a patient cut by the image edge (its lungs would pass for outside air), or no patient at all
    outside[touches | ~body.reshape(body.shape[0], -1).any(axis=1)] = False
    # the edge of the field of view (reconstruction ramps) and blankets read above -1000 HU:
    # keep two blocks away from padding and take the lower quartile
    far_from_pad = ndimage.maximum_filter(f["pad"], size=(1, 5, 5)) == 0
    air = f["mu"][outside & far_from_pad & (f["mu"] < -800) & (f["hfrac"] > 0.9)]
    if air.size >= max(20, 0.02 * f["mu"].size):
        level = float(np.percentile(air, 25))
        stats["air_hu"] = round(level, 1)
        if abs(level + 1000) > AIR_TOLERANCE:
            term += min((abs(level + 1000) - AIR_TOLERANCE) / 10, 10.0)
            notes.append(f"Air outside the patient reads {level:.0f} HU instead of about -1000 HU.")
    # fat: a clear histogram peak between -250 and -20 HU must sit near -100 HU
    hist, edges = np.histogram(sample, bins=80, range=(-300, 100))
    hist = np.convolve(hist, np.ones(5) / 5, mode="same")
    centres = 0.5 * (edges[:-1] + edges[1:])
    inner = (centres > -250) & (centres < -20)
    i = int(np.argmax(np.where(inner, hist, -1)))
    is_peak = hist[i] > 1.3 * max(hist[np.searchsorted(centres, -250)], hist[np.searchsorted(centres, -20)])
    if is_peak and hist[inner].sum() > 0.03 * sample.size:
        peak = float(centres[i])
        stats["fat_peak_hu"] = round(peak, 1)
        if not -170 <= peak <= -40:
            term += min(min(abs(peak + 170), abs(peak + 40)) / 10, 10.0)
            notes.append(f"Fat peaks at {peak:.0f} HU instead of about -100 HU.")
    return term, notes, stats


def _median_or_none(v: np.ndarray) -> float | None:
    v = v[np.isfinite(v)]
    return round(float(np.median(v)), 3) if v.size else None


class CTPhysicsDetector(Detector):
    """HU plausibility and consistency of CT quantum noise (level and NPS texture) across each
    slice and from slice to slice; see the module docstring for the method and its calibration.

    >>> from medforensics.core import Image
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> body = rng.normal(40, 12, (256, 256)).astype(np.float32)
    >>> ev = CTPhysicsDetector().detect(Image.from_array(body, modality="CT", spacing=(0.7, 0.7)))
    >>> ev.score < 0.5
    True
    """

    name = "ct_physics"
    description = ("CT physics: HU of air, fat and tissue; quantum-noise level and noise power spectrum consistent "
                   "across regions and slices.")
    modalities = frozenset({"CT"})
    needs_physical_units = True   # reads HU: air, tissue, the scanner's noise in HU

    def detect(self, image: Image) -> Evidence:
        vol = image.pixels if image.pixels.ndim == 3 else image.pixels[None]
        if min(vol.shape[1:]) < MIN_SIDE:
            return Evidence(self.name, 0.0, f"The image is too small ({vol.shape[1]}x{vol.shape[2]} px) for local "
                            "noise statistics.", details={"abstained": True})
        a = analyse(vol)
        b, classes = a["b"], a["classes"]
        lone = float(a["evidence"].max()) if a["evidence"].size else 0.0
        a["evidence"] = evidence = supported(a["evidence"])
        local = float(evidence.max()) if evidence.size else 0.0
        zs, per_slice = slice_consistency(a)
        odd = [int(k) for k in np.nonzero(zs > MIDPOINT)[0]]
        slice_term = float(zs.max()) if zs.size else 0.0
        hu_term, hu_notes, hu_stats = hu_plausibility(vol, a)
        raw = max(local, slice_term) + hu_term
        score = logistic(raw, MIDPOINT, SCALE)

        heat_grid = np.clip((evidence - E_LOW) / (E_HIGH - E_LOW), 0, 1).astype(np.float32)
        for k in odd:   # a whole slice out of line: all its measured blocks
            heat_grid[k] = np.maximum(heat_grid[k], np.clip((zs[k] - E_LOW) / (E_HIGH - E_LOW), 0, 1)
                                      * (classes[k] >= 0))
        # the heatmap is the block grid itself (Evidence.heatmap_scale), padded to cover the image
        heat_grid = coarse_cover(heat_grid, (1, b, b), vol.shape)
        if image.pixels.ndim == 2:
            heat_grid, scale = heat_grid[0], (b, b)
        else:
            scale = (1, b, b)
        # below the alarm level a region is a mild deviation, and says so (wording follows the score)
        regions = regions_from_heatmap(image, heat_grid, threshold=0.5, min_size=1, scale=scale,
                                       note="noise level or texture unlike its surroundings" if score >= 0.5 else
                                       "a mild noise deviation, below the detector's alarm level")
        n_dev = int((evidence >= MIDPOINT).sum())
        expl = self._explain(score, local, slice_term, hu_term, hu_notes, odd, n_dev, a)
        f = a["f"]
        sig = np.exp(a["L"])
        details = {
            "raw": round(raw, 3), "local_evidence": round(local, 3), "largest_lone_block": round(lone, 3),
            "slice_term": round(slice_term, 3),
            "hu_term": round(hu_term, 3), "block_px": b, "measured_blocks": int((classes >= 0).sum()),
            "inconsistent_blocks": n_dev, "padding_values": f["pad_values"],
            "highpass_noise_sigma_hu": {name: _median_or_none(sig[classes == ci]) for ci, name in enumerate(CLASSES)},
            "nps_high_mid_ratio": {name: _median_or_none(np.exp(a["T"][classes == ci]))
                                   for ci, name in enumerate(CLASSES)},
            "hu_class_median": {name: _median_or_none(f["mu"][classes == ci]) for ci, name in enumerate(CLASSES)},
            "deviation_spread": a["spreads"], "noise_free_bar": round(a["flat_bar"], 3),
            "hu_checks": hu_stats, "hu_notes": hu_notes, "odd_slices": odd[:20],
        }
        if vol.shape[0] > 1:
            for key, name in (("soft tissue:L", "highpass_noise_sigma_per_slice"),
                              ("soft tissue:T", "nps_ratio_per_slice")):
                v = per_slice.get(key)
                if v is not None and np.isfinite(v).any():
                    v = np.exp(v[np.isfinite(v)])
                    details[name] = {"min": round(float(v.min()), 3), "median": round(float(np.median(v)), 3),
                                     "max": round(float(v.max()), 3)}
            details["slice_z_max"] = round(slice_term, 2)
        return Evidence(self.name, score, expl, heatmap=heat_grid, regions=regions, details=details,
                        heatmap_scale=scale)

    @staticmethod
    def _explain(score, local, slice_term, hu_term, hu_notes, odd, n_dev, a) -> str:
        if score < 0.5:
            return "HU values and noise are consistent with CT physics across the image."
        if hu_notes and hu_term >= max(local, slice_term):
            return hu_notes[0]
        if odd and slice_term >= local:
            return (f"Slice(s) {', '.join(map(str, odd[:5]))} have a noise level or texture unlike their "
                    "neighbours, as if re-processed or taken from another scan.")
        k = np.unravel_index(int(np.argmax(a["evidence"])), a["evidence"].shape)
        if a["zF"][k] >= max(abs(a["zL"][k]), W_TEXTURE * abs(a["zT"][k])) or (
                abs(a["zL"][k]) >= W_TEXTURE * abs(a["zT"][k]) and a["zL"][k] < 0):
            what, how = "less noise than", "smoothing, in-painting or content painted in without noise"
        elif abs(a["zL"][k]) >= W_TEXTURE * abs(a["zT"][k]):
            what, how = "more noise than", "a patch from a noisier scan, added noise or rescaled intensities"
        else:
            what, how = "another noise texture than", "a patch from another scan or reconstruction kernel"
        return f"{max(n_dev, 1)} block(s) show {what} the surrounding tissue, as left by {how}."


def nanmedian_first_axis(x: np.ndarray) -> np.ndarray:
    """``np.nanmedian(x, axis=0)`` for a short first axis (the neighbouring slices), by one sort:
    NaN where every value is NaN, without numpy's warning per such place (half a million of them
    on a 133-slice series, which took longer than the rest of the detector).

    >>> nanmedian_first_axis(np.array([[1.0, np.nan, 4.0], [3.0, np.nan, np.nan], [2.0, np.nan, 8.0]]))
    array([ 2., nan,  6.])
    """
    s = np.sort(x, axis=0)   # NaN sorts last
    n = np.count_nonzero(~np.isnan(x), axis=0)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(s, np.maximum(n // 2, 0)[None], axis=0)[0]
    med = np.where(n % 2 == 1, lo, (lo + hi) / 2)
    med[n == 0] = np.nan
    return med


if __name__ == "__main__":  # pragma: no cover - calibration helper: raw values on real CT
    print_raw_values(CTPhysicsDetector(), sys.argv[1:])
