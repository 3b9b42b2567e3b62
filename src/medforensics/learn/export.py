"""Export chains: what happens to an authentic radiograph between the detector and the viewer.

Radiographs that reach a forensic scanner have rarely come straight from the modality. A web or
journal export, a teaching file, a PACS screenshot is windowed, sharpened, resized, reduced to 8
bits, annotated with arrows and text, saved as (RGB) JPEG, often twice. None of that is
manipulation, and a detector that learns "processed" as "fake" raises false alarms on every
image from outside its training archive. :func:`export_chain` applies a random chain of these
steps to a [0, 1] image *and* its forgery mask; training applies it at random to authentic and
forged images alike (``export_chains`` in a training config), so the chain carries no label, and
the calibration of the tile models also sees chained copies of its authentic images.

Steps, each drawn independently (probabilities in :data:`STEP_PROBABILITY`):

``window``      a display window and gamma (lo 0-0.1, hi 0.9-1, gamma 0.7-1.4)
``sharpen``     unsharp masking (sigma 1-3 px, amount 0.3-1), as CR post-processing and viewers do
``resize``      a scale of 0.4-2.0 (area, bilinear, bicubic or Lanczos interpolation)
``annotate``    1-3 burnt-in marks: text, arrows, circles or boxes, black, white or grey
``jpeg``        JPEG at quality 50-95, luminance only or RGB with 4:2:0 chroma subsampling
``jpeg2``       (after ``jpeg``) a second JPEG at another quality, the grid shifted by 0-7 px
                half of the time (a crop between the two saves)

The image always ends as 8-bit values (``round(255 x) / 255``), as exports are.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> img = rng.random((128, 160)).astype(np.float32)
>>> out, mask, steps = export_chain(img, np.zeros(img.shape, bool), rng)
>>> out.dtype, float(out.min()) >= 0.0, float(out.max()) <= 1.0, mask.shape == out.shape
(dtype('float32'), True, True, True)
"""
from __future__ import annotations

import io
from typing import Sequence

import cv2
import numpy as np

__all__ = ["STEPS", "STEP_PROBABILITY", "export_chain", "jpeg"]

STEPS = ("window", "sharpen", "resize", "annotate", "jpeg", "jpeg2")
STEP_PROBABILITY = {"window": 0.5, "sharpen": 0.2, "resize": 0.6, "annotate": 0.35, "jpeg": 0.65, "jpeg2": 0.4}
SCALE_RANGE = (0.4, 2.0)
QUALITY_RANGE = (50, 95)
_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)
_TEXT = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ LRPA:/.-"


def jpeg(a: np.ndarray, quality: int, *, rgb: bool = False) -> np.ndarray:
    """``a`` ([0, 1] 2D) saved as JPEG at ``quality`` and read back (as the loader reads it:
    an RGB file to luminance), in [0, 1]."""
    from PIL import Image as PILImage

    u8 = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    pil = PILImage.fromarray(u8)
    if rgb:
        pil = pil.convert("RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(quality), subsampling=2 if rgb else 0)
    buf.seek(0)
    with PILImage.open(buf) as back:
        out = np.asarray(back.convert("L") if rgb else back, dtype=np.float32)
    return out / 255.0


def _annotate(a: np.ndarray, rng: np.random.Generator) -> None:
    """Burn 1-3 marks into the 8-bit image ``a`` in place (text, arrows, circles, boxes)."""
    h, w = a.shape
    for _ in range(int(rng.integers(1, 4))):
        value = int(rng.choice([0, 255, int(rng.integers(80, 230))]))
        thick = int(rng.integers(1, 4))
        line = cv2.LINE_AA if rng.random() < 0.7 else cv2.LINE_8
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        kind = rng.choice(["text", "arrow", "circle", "box"], p=[0.45, 0.3, 0.1, 0.15])
        if kind == "text":
            text = "".join(rng.choice(list(_TEXT), size=int(rng.integers(1, 10))))
            cv2.putText(a, text, (x, y), int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN,
                                                           cv2.FONT_HERSHEY_DUPLEX])),
                        float(rng.uniform(0.4, 2.0)), value, thick, line)
        elif kind == "arrow":
            length = float(rng.uniform(15, 80))
            ang = float(rng.uniform(0, 2 * np.pi))
            end = (int(x + length * np.cos(ang)), int(y + length * np.sin(ang)))
            cv2.arrowedLine(a, (x, y), end, value, thick, line, tipLength=float(rng.uniform(0.2, 0.5)))
        elif kind == "circle":
            cv2.circle(a, (x, y), int(rng.integers(6, 40)), value, thick, line)
        else:
            cv2.rectangle(a, (x, y), (x + int(rng.integers(10, 80)), y + int(rng.integers(10, 80))), value, thick, line)


def export_chain(array2d: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator,
                 steps: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A random export chain applied to a [0, 1] 2D image and its boolean forgery mask.

    Returns ``(image, mask, steps applied)``; the image is float32 in [0, 1] on the 8-bit grid,
    the mask is resized with the image (nearest neighbour). ``steps`` forces which steps run (in
    the order of :data:`STEPS`) instead of drawing them.
    """
    a = np.clip(np.asarray(array2d, dtype=np.float32), 0.0, 1.0).copy()
    m = np.zeros(a.shape, bool) if mask is None else np.asarray(mask, bool)
    chosen = [s for s in STEPS if (s in steps if steps is not None else rng.random() < STEP_PROBABILITY[s])]
    if "jpeg2" in chosen and "jpeg" not in chosen:
        chosen.remove("jpeg2")
    if "window" in chosen:
        lo, hi, gamma = rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0), np.exp(rng.uniform(np.log(0.7), np.log(1.4)))
        a = np.clip((a - lo) / (hi - lo), 0.0, 1.0) ** gamma
    if "sharpen" in chosen:
        blur = cv2.GaussianBlur(a, (0, 0), float(rng.uniform(1.0, 3.0)))
        a = np.clip(a + float(rng.uniform(0.3, 1.0)) * (a - blur), 0.0, 1.0)
    if "resize" in chosen:
        s = float(np.exp(rng.uniform(*np.log(SCALE_RANGE))))
        h, w = a.shape
        size = (max(8, round(w * s)), max(8, round(h * s)))
        interp = int(rng.choice(_INTERPOLATIONS))
        if interp == cv2.INTER_AREA and s > 1:
            interp = cv2.INTER_LINEAR
        a = np.clip(cv2.resize(a, size, interpolation=interp), 0.0, 1.0)
        m = cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    u8 = np.ascontiguousarray(np.rint(np.clip(a, 0.0, 1.0) * 255.0), dtype=np.uint8)
    if "annotate" in chosen:
        _annotate(u8, rng)
    a = u8.astype(np.float32) / 255.0
    if "jpeg" in chosen:
        q1 = int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))
        a = jpeg(a, q1, rgb=bool(rng.random() < 0.4))
        if "jpeg2" in chosen:
            dy, dx = (int(v) for v in (rng.integers(0, 8, size=2) if rng.random() < 0.5 else (0, 0)))
            if min(a.shape[0] - dy, a.shape[1] - dx) >= 16:
                a, m = a[dy:, dx:], m[dy:, dx:]
            q2 = int(rng.integers(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1))
            a = jpeg(a, q2, rgb=bool(rng.random() < 0.4))
    return np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(m), chosen
