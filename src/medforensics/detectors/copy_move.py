"""Copy-move detection: a region of the image copied elsewhere in it, possibly rotated and scaled.

Keypoint method of Amerini et al. (IEEE TIFS 2011), with OpenCV's SIFT:

1. The image is windowed to 8 bits (0.5th-99.5th percentile) and scaled so that its longer side
   is at most ``WORK_PX`` pixels (SIFT finds the same structures at that size; the heatmap is
   mapped back to full resolution).
2. SIFT keypoints and descriptors; each descriptor is matched to its nearest neighbours in the
   same image, and the generalised 2NN test keeps neighbour ``i`` while ``d_i / d_{i+1} <
   G2NN``: a copied region's keypoints find their twins, ordinary texture does not.
3. Pairs closer than ``MIN_SHIFT`` pixels are dropped (a keypoint's own neighbourhood).
4. A similarity transform (rotation, scale, translation; never a reflection, so the mirror
   symmetry of the chest does not count) is fitted to the pairs by RANSAC; its inliers are one
   cloned region. Up to two clones are sought.
5. Raw statistic: the number of inliers of the best transform; score ``logistic(n, MIDPOINT,
   SCALE)``, set so that the real radiographs and CT slices in ../shared/data stay below 0.5.

Heatmap: the convex hulls of the inlier keypoints at source and target (dilated by their scale), on
cells of about the working scale's pixels (``Evidence.heatmap_scale``: 2 px for a 2,000 px radiograph).
Images smaller than ``MIN_SIZE`` pixels on a side hold too few keypoints: the detector abstains.

CT: the circular field of view is rotationally symmetric, so its edge matches itself under any
rotation about the centre (pydicom's ``693_J2KI.dcm``: 10 keypoints on the rim, 90 degrees apart).
Keypoints on the scanner's padding outside it (exact corner values, or below -1500 HU, as in
:mod:`~medforensics.detectors.ct_physics`) and within ``FOV_MARGIN`` px of it are not used.

Domain (:meth:`CopyMoveDetector.out_of_domain`): validated on radiographs (CR, DX and raster
exports, which the loader calls XR) and CT slices, where nothing repeats by itself. Outside it,
the scan records the detector as not assessed, with the reason:

* other modalities; ultrasound above all, whose screens repeat by design (dual and split views,
  calipers, scale bars, the same frame twice): 12 of the 21 ultrasound test files of pydicom and
  pydicom-data scored 0.34-1.0 (raw 8-54 inliers), 8 of them labelled suspicious or manipulated;
  MR, NM and the rest were never measured;
* secondary captures of modality OT (screens, exports and test images: 43 in pydicom's test
  files). A secondary capture that names a radiograph or CT stays in domain: the header cannot
  tell a screen capture from a converted radiograph (the SIIM chest radiograph of the fitted
  sources is a secondary capture, ConversionType WSD, of modality CR);
* drawn or generated test patterns: at least ``PATTERN_SHARE`` of the pixels with no noise at all
  (Immerkaer residual exactly 0); at most 0.17 on the 245 fitted radiographs (median 0.015),
  0.95 on pydicom's LUT test patterns ``vlut_04``, ``mlut_18`` and ``image_dfl`` (raw 39-62).
"""
from __future__ import annotations

import sys

import cv2
import numpy as np

from ..core import Evidence, Image, Region
from ._blocks import immerkaer
from .base import Detector, logistic, print_raw_values, regions_from_heatmap, unvalidated_modality

WORK_PX = 1024
MIN_SIZE = 128
#: share of noise-free pixels (zero 3x3 noise residual) from which an image is a drawn test pattern
PATTERN_SHARE = 0.9
#: keypoints within this many pixels (at the working scale) of a CT's padding are not used
FOV_MARGIN = 12
G2NN = 0.5
MIN_SHIFT = 24.0
MIDPOINT, SCALE = 9.0, 1.5
MIN_INLIERS = 6


def window_limits(img: np.ndarray) -> tuple[float, float]:
    """The 0.5th and 99.5th percentiles of ``img`` (on a view of about 512 px a side)."""
    sub = img[:: max(1, img.shape[0] // 512), :: max(1, img.shape[1] // 512)]
    lo, hi = np.percentile(sub, [0.5, 99.5])
    return float(lo), float(hi)


def to_8bit(img: np.ndarray, limits: tuple[float, float] | None = None) -> np.ndarray:
    """Percentile window (0.5-99.5, or ``limits``) to 8 bits."""
    lo, hi = window_limits(img) if limits is None else limits
    a = np.asarray(img, dtype=np.float32)
    return np.clip((a - lo) * np.float32(255 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)


def work_image(img: np.ndarray, f: float) -> np.ndarray:
    """The 8-bit image SIFT reads: windowed by the full image's percentiles, scaled by ``f``
    (area averaging). The float image is clipped to the window, scaled, and only then mapped to
    8 bits, so that a 2,000 px radiograph is mapped at 1,024 px (a quarter of the work); the
    8-bit values differ from windowing first by at most one gray level (rounding before or after
    averaging)."""
    limits = window_limits(img)
    if f < 1.0:
        a = np.clip(np.asarray(img, dtype=np.float32), limits[0], limits[1])
        small = cv2.resize(a, (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
        return to_8bit(small, limits)
    return to_8bit(img, limits)


def noise_free_share(img: np.ndarray) -> float:
    """Share of pixels whose 3x3 noise residual (Immerkaer) is exactly 0: about 0.02 on acquired
    images, up to 0.17 on 8-bit radiograph exports, 0.95 on drawn or generated test patterns."""
    a = np.asarray(img, dtype=np.float32)
    if a.ndim != 2 or min(a.shape) < 3:
        return 0.0
    step = max(1, max(a.shape) // 1024)   # a 1,024 px view is plenty for a share
    if step > 1:
        a = a[::step, ::step]
    r = immerkaer(a)[1:-1, 1:-1]
    return float(np.mean(r == 0)) if r.size else 0.0


class CopyMoveDetector(Detector):
    name = "copy_move"
    description = "Regions copied within the image, robust to rotation and scale (SIFT, g2NN, RANSAC)."
    dims = frozenset({2})

    def __init__(self) -> None:
        self._sift = cv2.SIFT_create(nfeatures=3000, contrastThreshold=0.02)

    def out_of_domain(self, image: Image) -> str | None:
        """Radiographs and CT slices only (by modality), and never a drawn test pattern."""
        if image.modality == "US":
            return ("ultrasound: screen layouts, dual views and calipers repeat by design; copy_move was "
                    "validated on radiographs and CT")
        outside = unvalidated_modality(self.name, image)
        if outside:
            return outside
        share = noise_free_share(image.pixels)
        if share >= PATTERN_SHARE:
            return (f"a drawn or generated test pattern: {100 * share:.0f}% of the pixels carry no noise at all, "
                    "and patterns repeat by design")
        return None

    def detect(self, image: Image) -> Evidence:
        img = image.pixels
        if min(img.shape) < MIN_SIZE:
            return Evidence(self.name, 0.0, f"The image is too small ({img.shape[0]}x{img.shape[1]} px) for "
                            "copy-move analysis.", details={"abstained": True})
        f = min(1.0, WORK_PX / max(img.shape))
        work = work_image(img, f)
        mask = self._fov_mask(image, work.shape)
        kps, desc = self._sift.detectAndCompute(work, mask)
        clones: list[dict] = []
        if desc is not None and len(kps) >= 2 * MIN_INLIERS:
            pts = np.array([k.pt for k in kps], np.float32)
            sizes = np.array([k.size for k in kps], np.float32)
            src, dst = self._g2nn_pairs(desc, pts)
            for _ in range(2):
                if len(src) < MIN_INLIERS:
                    break
                clone = self._fit(pts, src, dst)
                if clone is None:
                    break
                clones.append(clone)
                keep = ~clone["mask"]
                src, dst = src[keep], dst[keep]
        n = max((c["n"] for c in clones), default=0)
        score = logistic(n, MIDPOINT, SCALE)
        # the heatmap's cells are about the working scale's pixels (2 px of a 2,000 px radiograph)
        cell = max(1, round(1 / f))
        heat = np.zeros((-(-img.shape[0] // cell), -(-img.shape[1] // cell)), np.float32)
        if score >= 0.5:
            to_cells = 1.0 / (f * cell)
            for c in clones:
                for idx in (c["src"], c["dst"]):
                    hull = cv2.convexHull(pts[idx] * np.float32(to_cells)).astype(np.int32)
                    cv2.fillConvexPoly(heat, hull, 1.0)
                    for i in idx:
                        cv2.circle(heat, tuple(int(v * to_cells) for v in pts[i]), int(max(3, sizes[i] * to_cells)),
                                   1.0, -1)
        regions: list[Region] = regions_from_heatmap(image, heat, threshold=0.5, scale=(cell, cell),
                                                     note="copied region") if score >= 0.5 else []
        if clones and score >= 0.5:
            c = clones[0]
            expl = (f"{c['n']} keypoints of one region reappear elsewhere under one transform (shift "
                    f"{c['shift'] / f:.0f} px, rotation {c['angle']:.0f} deg, scale {c['scale']:.2f}): a copied region.")
        else:
            expl = "No region of the image reappears elsewhere in it."
        details = {"raw": n, "keypoints": len(kps) if desc is not None else 0, "work_scale": round(f, 4),
                   "clones": [{k: (round(float(v), 3) if k != "src" and k != "dst" and k != "mask" else None)
                               for k, v in c.items() if k not in ("src", "dst", "mask")} for c in clones]}
        return Evidence(self.name, score, expl, heatmap=heat, heatmap_scale=(cell, cell), regions=regions,
                        details=details)

    @staticmethod
    def _fov_mask(image: Image, shape: tuple[int, int]) -> np.ndarray | None:
        """Where keypoints may lie in a CT slice: away from the padding outside the field of view."""
        if image.modality != "CT" or image.pixels.ndim != 2:
            return None
        from .ct_physics import padding_values

        px = image.pixels
        pad = px < -1500
        values = padding_values(px[None])
        if values:
            pad |= np.isin(px, values)
        if not pad.any():
            return None
        small = cv2.resize(pad.view(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        near = cv2.dilate(small, np.ones((2 * FOV_MARGIN + 1, 2 * FOV_MARGIN + 1), np.uint8))
        return np.where(near > 0, 0, 255).astype(np.uint8)

    @staticmethod
    def _g2nn_pairs(desc: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = min(8, len(desc))
        matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc, desc, k=k)
        src, dst = [], []
        for i, ms in enumerate(matches):
            ms = [m for m in ms if m.trainIdx != i]
            for a, b in zip(ms, ms[1:]):
                if a.distance >= G2NN * max(b.distance, 1e-6):
                    break
                j = a.trainIdx
                if np.hypot(*(pts[i] - pts[j])) >= MIN_SHIFT and i < j:
                    src.append(i)
                    dst.append(j)
        return np.array(src, int), np.array(dst, int)

    @staticmethod
    def _fit(pts: np.ndarray, src: np.ndarray, dst: np.ndarray) -> dict | None:
        best = None
        # a pair may point either way: try both orientations of the unordered pairs
        for a, b in ((src, dst), (dst, src)):
            m, inl = cv2.estimateAffinePartial2D(pts[a], pts[b], method=cv2.RANSAC, ransacReprojThreshold=4.0,
                                                 maxIters=2000, confidence=0.99)
            if m is None or inl is None:
                continue
            mask = inl.ravel().astype(bool)
            n = int(mask.sum())
            if best is None or n > best["n"]:
                scale = float(np.hypot(m[0, 0], m[1, 0]))
                best = {"n": n, "mask": mask, "src": a[mask], "dst": b[mask], "scale": scale,
                        "angle": float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))),
                        "shift": float(np.median(np.hypot(*(pts[b[mask]] - pts[a[mask]]).T))) if n else 0.0}
        if best is None or best["n"] < MIN_INLIERS or not (0.5 < best["scale"] < 2.0) or best["shift"] < MIN_SHIFT:
            return None
        return best


if __name__ == "__main__":  # pragma: no cover - calibration helper: raw values on real images
    print_raw_values(CopyMoveDetector(), sys.argv[1:])
