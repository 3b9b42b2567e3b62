"""Small CT crops as the CT-GAN dataset ships them: a learned patch classifier.

CT-GAN's tampered scans circulate as 64 x 64 crops around the nodule, as lung-window PNGs or
as DICOM in HU. Those are too small for every slice detector (copy-move, noise statistics, the
slice tile model's calibration), so this detector reads them with a model trained on exactly
such crops: ``models/learned_ctpatch.safetensors``, a ``fastnet`` tile model
(``medforensics train --config detector-ctpatch`` on ``forge dataset --patches 64``;
docs/detectors/ct_patch.md).

Input:

* a **CT DICOM** crop (modality CT, 2D, 32 to :data:`MAX_PX` px a side): HU through the fixed
  lung window (:data:`medforensics.learn.data.CT_WINDOW`, HU -1000..400), rounded to 8 bits;
* an **8-bit grayscale PNG or TIFF** crop of that size, read as that lung window already
  (value / 255): a lung-window PNG holds no HU, and the model never needs them, since it was
  trained on the same 8-bit lung-window values (``levels = 255`` in its card), so a PNG and the
  DICOM it was written from get the same score. Whether a raster really is a lung-window CT
  crop is checked on its values (:func:`lung_window_crop`): lung and soft tissue leave the
  window's middle band (HU -440..-160) almost empty, which a radiograph thumbnail fills.

The crop is cut into 48 px tiles (16 px apart; a 32 px crop is reflect-padded to one tile); the
crop is as suspicious as its worst tile, through a logistic fitted on the validation patient's
authentic patches only (TB; the card's ``calibration``). The heatmap holds each pixel's worst
covering tile. Evidence indicates ``manipulation`` and is of ``low`` confidence: every forgery and
real tumour it learned from comes from one LIDC patient, so alone it can make a crop
``suspicious``, never ``manipulated`` (:mod:`medforensics.fusion`).

Everything else -- full CT slices and series, radiographs, crops larger than :data:`MAX_PX`,
colour, 16-bit or JPEG rasters -- is out of its domain (``not_assessed``, with the reason), so
the detector changes no verdict on the images the other detectors read.
``CTPatchDetector(checkpoint=...)`` (``scan``: ``load_detectors(names, {"ct_patch": {"checkpoint": ...}})``) or
``MEDFORENSICS_LEARNED_CTPATCH`` points it at another checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import Evidence, Image
from .base import Detector, logistic_array, regions_from_heatmap

MODELS = Path(__file__).resolve().parents[1] / "models"
CHECKPOINT_NAME = "learned_ctpatch.safetensors"
#: Crop sides the detector reads (pixels): CT-GAN's 64 px patches, and crops from 32 to 128 px.
MIN_PX, MAX_PX = 32, 128
#: A lung-window raster leaves this band of the window (HU -440..-160: between lung and soft
#: tissue, partial volume only) almost empty: at most this share of its pixels lies in it.
#: Measured: 621 of the 650 forge patches (seed 0) pass (the others: COVID-19 lungs, whose ground-glass
#: fills the band) and 1 of the 1,000 NIH radiograph thumbnails of 64 px (docs/detectors/ct_patch.md).
GAP_BAND, MAX_GAP_SHARE = (0.4, 0.6), 0.10
RASTERS = frozenset({"png", "tiff"})
#: Its forgeries and real tumour come from one LIDC patient: alone it makes a crop suspicious, never manipulated.
CONFIDENCE = "low"
def checkpoint_path() -> Path:
    """The default checkpoint: the one the environment names (:mod:`medforensics.config`), else
    the shipped one."""
    from ..config import settings

    return Path(settings().checkpoint("ctpatch") or MODELS / CHECKPOINT_NAME)


def gap_share(array01: np.ndarray) -> float:
    """Share of the pixels of a [0, 1] lung-window array inside :data:`GAP_BAND`."""
    a = np.asarray(array01, dtype=np.float32)
    lo, hi = GAP_BAND
    return float(((a > lo) & (a < hi)).mean())


def lung_window_crop(array01: np.ndarray) -> bool:
    """Whether a raster's [0, 1] values look like a CT crop through the lung window (see the
    module doc): few pixels in the window's middle band."""
    return gap_share(array01) <= MAX_GAP_SHARE


def patch_array(image: Image) -> np.ndarray:
    """The crop as the model's [0, 1] input before quantisation: HU through the lung window for
    CT DICOM, value / 255 for an 8-bit raster."""
    from ..learn.data import normalise_image

    if image.format == "dicom":
        return normalise_image(image.pixels, "ct-slice")
    return np.clip(np.asarray(image.pixels, np.float32) / 255.0, 0.0, 1.0)


class CTPatchDetector(Detector):
    name = "ct_patch"
    description = ("Small CT crops (32-128 px, HU DICOM or lung-window PNG, as the CT-GAN dataset ships them): a learned "
                   "patch model trained on injected and removed nodules against real ones.")
    modalities = frozenset({"CT", "XR"})  # XR: a plain raster file, which may hold a lung-window crop
    needs_physical_units = True   # CT crops are read in HU
    dims = frozenset({2})
    formats = frozenset({"dicom", "png", "tiff", "jpeg"})

    def __init__(self, checkpoint: str | Path | None = None):
        """``checkpoint``: another patch model (default: :func:`checkpoint_path`)."""
        self.checkpoint = Path(checkpoint) if checkpoint is not None else checkpoint_path()

    def applies(self, image: Image) -> bool:
        if not super().applies(image):
            return False
        if image.format == "dicom":
            return image.modality == "CT" and self.checkpoint.is_file()
        return image.format in RASTERS | {"jpeg"} and self.checkpoint.is_file()

    def out_of_domain(self, image: Image) -> str | None:
        from .anatomy import NO_LUNG_PARTS, header_body_part

        h, w = image.pixels.shape[-2:]
        if not (MIN_PX <= min(h, w) and max(h, w) <= MAX_PX):
            return (f"{h}x{w} px is not a crop of {MIN_PX}-{MAX_PX} px; the CT patch model reads small crops only "
                    "(whole slices are learned_2d's)")
        if image.format == "dicom":
            part = header_body_part(image)
            return (f"the header names {part}, which holds no lung; the CT patch model knows lung crops only"
                    if part in NO_LUNG_PARTS else None)
        if image.format == "jpeg":
            return "a JPEG crop: lossy compression replaces the texture the CT patch model reads"
        if image.meta.get("color_differs"):
            return "a colour raster, not a lung-window CT crop"
        if int(image.meta.get("bit_depth", 8)) != 8:
            return f"a {image.meta.get('bit_depth')}-bit raster: its mapping to HU is unknown (8-bit lung window expected)"
        share = gap_share(patch_array(image))
        if share > MAX_GAP_SHARE:
            return (f"{100 * share:.0f}% of its pixels lie in the lung window's middle band (HU -440..-160), which a "
                    "lung-window CT crop leaves almost empty: not read as a CT crop")
        return None

    def detect(self, image: Image) -> Evidence:
        from ..learn.calibration import group_for
        from ..learn.data import quantise, tiles

        from .learned2d import cached_classifier

        clf = cached_classifier(self.checkpoint)
        arr = quantise(patch_array(image), clf.preprocess)
        batch, pos, padded = tiles(arr, clf.preprocess)
        fake = np.clip(clf.fake_probability(clf.predict_tensors(batch)), 1e-7, 1 - 1e-7)
        logits = np.log(fake / (1 - fake))
        cals = clf.card.get("calibration") or {}
        cal = cals[group_for(cals, arr.shape)] if cals else {"midpoint": 0.0, "scale": 1.0}
        mid, sc = float(cal["midpoint"]), float(cal["scale"])
        tile_scores = logistic_array(logits, mid, sc)
        top = int(np.argmax(logits))
        score = float(tile_scores[top])
        crop = int(clf.preprocess["crop"])
        heat = np.zeros(padded, np.float32)
        for (y, x), s in zip(pos, tile_scores):
            np.maximum(heat[y:y + crop, x:x + crop], s, out=heat[y:y + crop, x:x + crop])
        oy, ox = (padded[0] - arr.shape[0]) // 2, (padded[1] - arr.shape[1]) // 2
        heat = heat[oy:oy + arr.shape[0], ox:ox + arr.shape[1]]
        regions = regions_from_heatmap(image, heat, threshold=0.5, note="CT patch model: unlike authentic crops")
        source = "HU through the lung window" if image.format == "dicom" else "8-bit values read as the lung window"
        if score >= 0.5:
            explanation = (f"The CT patch model finds this {arr.shape[0]}x{arr.shape[1]} px crop unlike authentic lung "
                           f"crops (score {score:.2f}, worst of {len(pos)} tiles): an injected or removed nodule "
                           "would look like this. Its forgeries came from one patient: low confidence.")
        else:
            explanation = (f"The CT patch model finds this {arr.shape[0]}x{arr.shape[1]} px crop like authentic lung "
                           f"crops (score {score:.2f}, worst of {len(pos)} tiles).")
        details = {"raw": round(float(logits[top]), 4), "tiles": len(pos), "tile_px": crop, "worst_tile": list(pos[top]),
                   "input": source, "calibration": {"midpoint": mid, "scale": sc}, "checkpoint": self.checkpoint.name,
                   "architecture": clf.card.get("architecture", "?"), "trained_on": clf.card.get("data", {}).get("manifest"),
                   "train_patients": clf.card.get("data", {}).get("patients", {}).get("train", [])}
        return Evidence(self.name, score, explanation, heatmap=heat, regions=regions, details=details,
                        indicates="manipulation", confidence=CONFIDENCE)
