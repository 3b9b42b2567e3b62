"""Pictures for people: a windowed thumbnail and one heatmap/region overlay per piece of evidence.

All figures are small PNGs, base64-encoded, so that a report can embed them and a verdict can
carry them between processes (worker processes ship these, not the full-size heatmaps).

A CT volume and one piece of evidence with a heatmap and a region on slice 12 (in a scan, the
evidence comes from the detectors: ``render_figures(image, verdict.evidence)``):

>>> import base64
>>> import numpy as np
>>> from medforensics.core import Evidence, Image, Region
>>> image = Image.from_array(np.random.default_rng(0).normal(40, 15, (20, 96, 96)), modality="CT",
...                          spacing=(2.5, 0.7, 0.7))
>>> heat = np.zeros(image.pixels.shape, np.float32)
>>> heat[12, 30:50, 40:60] = 0.9
>>> ev = Evidence("copy_move", 0.93, "two regions match", heatmap=heat,
...               regions=[Region(center_voxel=(12, 40, 50), bbox_voxel=(12, 30, 40, 13, 50, 60), score=0.93)])
>>> figs = render_figures(image, [ev])
>>> sorted(figs)
['overlay:copy_move', 'slice', 'slice:copy_move', 'thumbnail']
>>> figs["slice"], figs["slice:copy_move"], base64.b64decode(figs["overlay:copy_move"])[1:4]
('12', '12', b'PNG')

Keys of the returned dict:

``thumbnail``
    The image, windowed for display: a 2D image itself; for a volume, the *representative slice*
    (where the strongest evidence with something to show lies, else the middle slice).
``slice``
    The index of that slice as a string (``""`` for a 2D image) -- the one entry that is not a PNG.
``overlay:<detector>``
    The heatmap of that evidence as a semi-transparent colour map over the gray image, with its
    regions boxed (strongest in red, others in yellow), for evidence that has something to show.
``slice:<detector>``
    For a volume, the slice that overlay shows: where that evidence's strongest region lies.
"""
from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np

from ..core import Evidence, Image

#: Box colours (BGR): the strongest region of an evidence, the others, and their dark outline.
RED, YELLOW, OUTLINE = (40, 40, 230), (0, 215, 255), (20, 20, 20)
#: Heat at which the colour map reaches full opacity, and that opacity.
HEAT_FULL, HEAT_ALPHA = 0.5, 0.6
#: PNG compression set explicitly: OpenCV's default (level 1 with run-length strategy) makes
#: colour figures about 1.5x larger for the same time.
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]


# ------------------------------------------------------------------------------------ choices

def worth_showing(image: Image, ev: Evidence) -> bool:
    """True if ``ev`` has something a picture can show: a heatmap or regions, and either a score
    of at least 0.2 or a hot heatmap. A single box around the whole image (or slice) shows nothing."""
    if ev.heatmap is None and not ev.regions:
        return False
    if ev.heatmap is None and all(_whole_plane(r.bbox_voxel, image.pixels.shape) for r in ev.regions):
        return False
    if ev.score >= 0.2:
        return True
    return ev.heatmap is not None and float(np.max(ev.heatmap)) >= 0.5


def evidence_slice(image: Image, ev: Evidence) -> int | None:
    """For a volume: the slice of ``ev``'s strongest region, else its hottest heatmap slice, else None."""
    if image.pixels.ndim != 3:
        return None
    n = image.pixels.shape[0]
    in_volume = [r for r in ev.regions if len(r.center_voxel) == 3]
    if in_volume:
        best = max(in_volume, key=lambda r: r.score)  # stable: the first of equal scores
        return int(np.clip(best.center_voxel[0], 0, n - 1))
    heat = ev.heatmap
    if heat is not None and heat.ndim == 3 and heat.shape[0] > 0:
        per_slice = heat.reshape(heat.shape[0], -1).max(axis=1)
        if float(per_slice.max()) > 0:   # a coarse heatmap's cell k starts at slice k * factor
            return int(np.clip(int(np.argmax(per_slice)) * (ev.heatmap_scale or (1,))[0], 0, n - 1))
    return None


def representative_slice(image: Image, evidence: list[Evidence]) -> int:
    """The slice a volume is shown at: that of the strongest evidence worth showing, else the middle.

    0 for a 2D image.
    """
    if image.pixels.ndim == 2:
        return 0
    for ev in sorted(evidence, key=lambda e: -e.score):
        if worth_showing(image, ev):
            k = evidence_slice(image, ev)
            if k is not None:
                return k
    return image.pixels.shape[0] // 2


def window_limits(img: np.ndarray, modality: str) -> tuple[float, float]:
    """Display range: CT in a lung (W1500/L-600) or soft-tissue (W400/L40) window chosen by how
    much of the slice is lung-like (-950..-500 HU); anything else between its 0.5th and 99.5th
    percentiles."""
    a = np.asarray(img, dtype=np.float32)
    step = max(1, max(a.shape) // 256)
    sample = a[::step, ::step]
    if modality == "CT":
        lungish = float(np.mean((sample > -950) & (sample < -500)))
        return (-1350.0, 150.0) if lungish > 0.05 else (-160.0, 240.0)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return float(lo), float(hi)


def window(img: np.ndarray, modality: str, limits: tuple[float, float] | None = None) -> np.ndarray:
    """8-bit display of ``img`` between ``limits`` (default: :func:`window_limits`)."""
    a = np.asarray(img, dtype=np.float32)
    lo, hi = window_limits(a, modality) if limits is None else limits
    out = (a - lo) * (255.0 / max(hi - lo, 1e-6))
    return np.clip(np.nan_to_num(out, nan=0.0), 0, 255).astype(np.uint8)


def display_size(shape: tuple[int, int], spacing: tuple, max_px: int) -> tuple[int, int]:
    """``(width, height)`` of the picture: longest side ``max_px``, square display pixels where
    the in-plane spacing is known (rows and columns may have different spacing)."""
    h, w = float(shape[0]), float(shape[1])
    sy, sx = (spacing[-2], spacing[-1]) if len(spacing) >= 2 else (None, None)
    if sy and sx and sy > 0 and sx > 0:
        h = h * sy / sx
    s = max_px / max(h, w)
    return max(1, int(round(w * s))), max(1, int(round(h * s)))


# ------------------------------------------------------------------------------------ drawing

def _plane(a: np.ndarray, k: int) -> np.ndarray:
    return a[int(np.clip(k, 0, a.shape[0] - 1))] if a.ndim == 3 else a


def _gray(image: Image, k: int, size: tuple[int, int]) -> np.ndarray:
    """The windowed slice at display size (resized first: windowing 384 px is cheaper than 3000)."""
    plane = np.nan_to_num(_plane(image.pixels, k).astype(np.float32, copy=False), nan=0.0)
    small = cv2.resize(plane, size, interpolation=cv2.INTER_AREA)
    return window(small, image.modality)


def _draw_heat(bgr: np.ndarray, heat2d: np.ndarray) -> np.ndarray:
    """Blend the colour-mapped heat over ``bgr`` (in place), only where the heat is above zero."""
    heat = cv2.resize(np.nan_to_num(heat2d.astype(np.float32, copy=False)), (bgr.shape[1], bgr.shape[0]),
                      interpolation=cv2.INTER_AREA)
    hot = heat > 1.0 / 255
    rows, cols = np.flatnonzero(hot.any(axis=1)), np.flatnonzero(hot.any(axis=0))
    if rows.size == 0:
        return bgr
    roi = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    h = np.clip(heat[roi], 0.0, 1.0)
    alpha = (HEAT_ALPHA * np.clip(h / HEAT_FULL, 0.0, 1.0))[..., None]
    colour = cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET)
    bgr[roi] = (bgr[roi] * (1.0 - alpha) + colour * alpha).astype(np.uint8)
    return bgr


def _plane_box(bbox: tuple[int, ...], k: int | None) -> tuple[int, int, int, int] | None:
    """In-plane ``(r0, c0, r1, c1)`` of a box, or None when a volume box does not cross slice ``k``."""
    b = [int(v) for v in bbox]
    if len(b) == 6:
        if k is not None and not (b[0] <= k < b[3]):
            return None
        return b[1], b[2], b[4], b[5]
    if len(b) == 4:
        return b[0], b[1], b[2], b[3]
    return None


def _draw_boxes(bgr: np.ndarray, ev: Evidence, k: int | None, shape: tuple[int, int]) -> None:
    h, w = shape
    fy, fx = bgr.shape[0] / h, bgr.shape[1] / w
    ranked = sorted(ev.regions, key=lambda r: -r.score)
    for i, r in reversed(list(enumerate(ranked))):  # strongest drawn last, on top
        box = _plane_box(r.bbox_voxel, k)
        if box is None:
            continue
        r0, c0, r1, c1 = box
        p0 = (int(c0 * fx), int(r0 * fy))
        p1 = (max(p0[0] + 3, int(round(c1 * fx)) - 1), max(p0[1] + 3, int(round(r1 * fy)) - 1))
        strongest = i == 0
        cv2.rectangle(bgr, (p0[0] - 1, p0[1] - 1), (p1[0] + 1, p1[1] + 1), OUTLINE, 4 if strongest else 3)
        cv2.rectangle(bgr, p0, p1, RED if strongest else YELLOW, 2 if strongest else 1)


def _overlay(gray: np.ndarray, ev: Evidence, k: int | None, image: Image) -> np.ndarray:
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if ev.heatmap is not None:
        heat = ev.heatmap_plane(int(np.clip(k or 0, 0, image.pixels.shape[0] - 1)) if ev.heatmap.ndim == 3 else 0)
        if heat.ndim == 2 and heat.size and float(heat.max()) > 0:
            bgr = _draw_heat(bgr, _full_plane(heat, ev.heatmap_scale, image.pixels.shape[-2:]))
    _draw_boxes(bgr, ev, k, image.pixels.shape[-2:])
    return bgr


def _full_plane(heat2d: np.ndarray, scale: tuple[int, ...] | None, shape: tuple[int, int]) -> np.ndarray:
    """One heatmap plane at the pixel size of the image's plane: a coarse heatmap's cells
    (``Evidence.heatmap_scale``, last two factors) repeated over the pixels they cover, so that the
    overlay is the same as that of the full-size heatmap (only this plane is ever made full size)."""
    fy, fx = (scale or (1, 1))[-2:]
    if fy > 1:
        heat2d = np.repeat(heat2d, fy, axis=0)
    if fx > 1:
        heat2d = np.repeat(heat2d, fx, axis=1)
    return heat2d[:shape[0], :shape[1]]


def _encode(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", img, _PNG)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _key(figs: dict[str, str], detector: str) -> str:
    key, i = f"overlay:{detector}", 2
    while key in figs:
        key, i = f"overlay:{detector}#{i}", i + 1
    return key


# ------------------------------------------------------------------------------------ public

def render_figures(image: Image, evidence: list[Evidence], max_px: int = 384) -> dict[str, str]:
    """Thumbnail and overlays of ``image`` as base64 PNGs (see the module docstring for the keys).

    Overlays are made for the evidence that has something to show (:func:`worth_showing`); for a
    volume each one is drawn on the slice where that evidence's strongest region lies.
    """
    volume = image.pixels.ndim == 3
    shown = [(ev, evidence_slice(image, ev) if volume else None) for ev in evidence if worth_showing(image, ev)]
    if volume:  # the thumbnail shows the slice of the strongest evidence that has one
        located = [(ev.score, ke) for ev, ke in shown if ke is not None]
        k = max(located, key=lambda t: t[0])[1] if located else image.pixels.shape[0] // 2
    else:
        k = 0
    size = display_size(image.pixels.shape[-2:], image.spacing, max_px)
    grays = {k: _gray(image, k, size)}
    figs = {"thumbnail": _encode(grays[k]), "slice": str(k) if volume else ""}
    for ev, ke in shown:
        if volume:
            ke = k if ke is None else ke
            if ke not in grays:
                grays[ke] = _gray(image, ke, size)
        key = _key(figs, ev.detector)
        figs[key] = _encode(_overlay(grays[ke if volume else k], ev, ke, image))
        if volume:
            figs["slice:" + key[len("overlay:"):]] = str(ke)
    return figs


def overlay_png(image: Image, evidence: Evidence, path: str | Path, max_px: int = 768) -> Path:
    """Write the overlay of one piece of evidence to a new PNG file and return its path.

    Drawn even when the evidence would not get a picture in a report (then it is the windowed
    image, with whatever boxes the evidence has). For a volume, the slice is the one where the
    evidence's strongest region lies (else its hottest heatmap slice, else the middle). Refuses
    to replace an existing file.
    """
    path = Path(path)
    k = evidence_slice(image, evidence) if image.pixels.ndim == 3 else None
    if image.pixels.ndim == 3 and k is None:
        k = image.pixels.shape[0] // 2
    size = display_size(image.pixels.shape[-2:], image.spacing, max_px)
    bgr = _overlay(_gray(image, k or 0, size), evidence, k, image)
    ok, buf = cv2.imencode(".png", bgr, _PNG)
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    with open(path, "xb") as f:  # "x": never overwrite
        f.write(buf.tobytes())
    return path


def _whole_plane(bbox: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """True when a box covers the whole image plane (a statement about the file, not a place)."""
    box = _plane_box(bbox, None)
    if box is None:
        return False
    r0, c0, r1, c1 = box
    return r0 <= 0 and c0 <= 0 and r1 >= shape[-2] and c1 >= shape[-1]
