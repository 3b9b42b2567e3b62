"""Pictures for people: a windowed thumbnail and one heatmap/region overlay per piece of evidence.

All figures are small PNGs, base64-encoded, so that a report can embed them and a verdict can
carry them between processes.
"""
from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np

from ..core import Evidence, Image

RED, YELLOW = (40, 40, 230), (0, 215, 255)  # BGR


def representative_slice(image: Image, evidence: list[Evidence]) -> int:
    """For a volume: the slice of the strongest region (or hottest heatmap slice), else the middle."""
    if image.pixels.ndim == 2:
        return 0
    for ev in sorted(evidence, key=lambda e: -e.score):
        if ev.regions:
            return int(np.clip(ev.regions[0].center_voxel[0], 0, image.pixels.shape[0] - 1))
        if ev.heatmap is not None and ev.heatmap.ndim == 3 and ev.heatmap.max() > 0:
            return int(np.argmax(ev.heatmap.reshape(ev.heatmap.shape[0], -1).max(axis=1)))
    return image.pixels.shape[0] // 2


def window(img: np.ndarray, modality: str) -> np.ndarray:
    """8-bit display: CT in a lung (W1500/L-600) or soft-tissue (W400/L40) window chosen by
    content; anything else between its 0.5th and 99.5th percentiles."""
    a = img.astype(np.float32)
    if modality == "CT":
        lungish = np.mean((a > -950) & (a < -500))
        lo, hi = (-1350.0, 150.0) if lungish > 0.05 else (-160.0, 240.0)
    else:
        lo, hi = np.percentile(a[:: max(1, a.shape[0] // 256), :: max(1, a.shape[1] // 256)], [0.5, 99.5])
    return np.clip((a - lo) / max(float(hi - lo), 1e-6) * 255, 0, 255).astype(np.uint8)


def _display_size(shape: tuple[int, int], spacing: tuple, max_px: int) -> tuple[int, int]:
    h, w = shape
    sy, sx = spacing[-2], spacing[-1]
    if sy and sx and sy > 0 and sx > 0:
        h = h * sy / sx  # square display pixels
    s = max_px / max(h, w)
    return max(1, int(round(w * s))), max(1, int(round(h * s)))


def _encode(img: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", img)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 image
        raise RuntimeError("PNG encoding failed")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _overlay(base_gray: np.ndarray, ev: Evidence, k: int, image: Image, size: tuple[int, int]) -> np.ndarray:
    rgb = cv2.cvtColor(base_gray, cv2.COLOR_GRAY2BGR)
    if ev.heatmap is not None:
        heat = ev.heatmap[k] if ev.heatmap.ndim == 3 else ev.heatmap
        heat = cv2.resize(np.clip(heat.astype(np.float32), 0, 1), size, interpolation=cv2.INTER_AREA)
        colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
        alpha = (0.6 * np.clip(heat / 0.5, 0, 1))[..., None]
        rgb = (rgb * (1 - alpha) + colour * alpha).astype(np.uint8)
    h, w = image.pixels.shape[-2:]
    fy, fx = size[1] / h, size[0] / w
    for i, r in enumerate(ev.regions):
        b = list(r.bbox_voxel)
        if len(b) == 6:
            if not (b[0] <= k < b[3]):
                continue
            b = b[1:3] + b[4:6]
        p0 = (int(b[1] * fx), int(b[0] * fy))
        p1 = (max(p0[0] + 2, int(b[3] * fx) - 1), max(p0[1] + 2, int(b[2] * fy) - 1))
        cv2.rectangle(rgb, p0, p1, RED if i == 0 else YELLOW, 2 if i == 0 else 1)
    return rgb


def render_figures(image: Image, evidence: list[Evidence], max_px: int = 384) -> dict[str, str]:
    """``{"thumbnail": png64, "slice": "k", "overlay:<detector>": png64, ...}``.

    Overlays are made for evidence with a heatmap or regions, on the representative slice.
    """
    k = representative_slice(image, evidence)
    img = image.pixels[k] if image.pixels.ndim == 3 else image.pixels
    size = _display_size(img.shape, image.spacing, max_px)
    gray = cv2.resize(window(img, image.modality), size, interpolation=cv2.INTER_AREA)
    figs = {"thumbnail": _encode(gray), "slice": str(k) if image.pixels.ndim == 3 else ""}
    for ev in evidence:
        if ev.heatmap is None and not ev.regions:
            continue
        if ev.score < 0.2 and (ev.heatmap is None or float(ev.heatmap.max()) < 0.5):
            continue  # nothing worth a picture
        if len(ev.regions) == 1 and ev.heatmap is None and _whole_image(ev.regions[0].bbox_voxel, image.pixels.shape):
            continue  # a box around everything says nothing a picture can show
        figs[f"overlay:{ev.detector}"] = _encode(_overlay(gray, ev, k, image, size))
    return figs


def _whole_image(bbox, shape) -> bool:
    n = len(bbox) // 2
    return all(bbox[i] == 0 for i in range(n - 2, n)) and tuple(bbox[-2:]) == tuple(shape[-2:])


def overlay_png(image: Image, evidence: Evidence, path: str | Path, max_px: int = 768) -> Path:
    """Write one overlay as a PNG file; refuses to replace an existing file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: already exists")
    figs = render_figures(image, [evidence], max_px=max_px)
    data = base64.b64decode(figs.get(f"overlay:{evidence.detector}", figs["thumbnail"]))
    with open(path, "xb") as f:
        f.write(data)
    return path
