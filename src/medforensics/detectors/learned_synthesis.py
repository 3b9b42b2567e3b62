"""A learned detector of generated radiographs, trained on the whole generator zoo.

The checkpoint ``models/learned_zoo.safetensors`` is a native-resolution tile model (the
``learned_2d`` machinery: :class:`medforensics.detectors.learned2d.Learned2DDetector`) trained
with ``medforensics train --config detector-zoo`` on the zoo dataset
(:mod:`medforensics.forge.zoo.dataset`): authentic radiographs against whole images and
reconstructions of every family (GAN, diffusion, super-resolution decoder, VAE), with the
export-chain augmentation on both classes, and its score calibrated on the validation patients'
authentic images only (three chained copies of each too). The image scores as its worst tile;
the heatmap shows every tile's calibrated score and Grad-CAM inside the worst.

**Off by default** (:attr:`LearnedSynthesisDetector.default`): trained on generators small
enough for 2 CPU cores, it does not carry over to a family it did not see, and it raised one
false alarm on the outside radiographs. Its evidence ``indicates`` synthesis and is
**low-confidence**: trained on one archive's chest
radiographs and on generators trained here, it may make an image ``suspicious`` alone, never
``synthetic`` without another detector's corroboration (:mod:`medforensics.fusion`). It knows
chest radiographs only (the same domain rule as ``learned_2d``), and images under the model's
``min_size`` are not scored. ``benchmarks/unseen_generators.py`` measures how it does on a family
it never saw.

>>> det = LearnedSynthesisDetector()
>>> det.name, det.dims
('learned_synthesis', frozenset({2}))
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..core import Evidence, Image
from .learned2d import MODELS, RADIOGRAPHS, Learned2DDetector, cached_classifier

__all__ = ["LearnedSynthesisDetector", "CHECKPOINT", "CONFIDENCE"]

CHECKPOINT = "learned_zoo.safetensors"
#: See the module doc: one archive, home-trained generators.
CONFIDENCE = "low"


class LearnedSynthesisDetector(Learned2DDetector):
    name = "learned_synthesis"
    #: Off by default (``--detectors learned_synthesis`` runs it): held out of its training, no zoo
    #: family was caught better than at AUC 0.83 (the VAE at 0.33), and on by default it made one
    #: of 121 outside radiographs suspicious alone (README, "Unseen generators").
    default = False
    description = ("A native-resolution tile model trained on the generator zoo (GAN, diffusion, super-resolution, "
                   "VAE; whole images and reconstructions of authentic ones): traces that generators leave.")
    dims = frozenset({2})

    def __init__(self, checkpoint: str | Path | None = None):
        """``checkpoint``: another tile model (default: ``$MEDFORENSICS_LEARNED_ZOO`` through
        :mod:`medforensics.config`, else the shipped one)."""
        from ..config import settings

        self.checkpoint = Path(checkpoint or settings().checkpoint("zoo") or MODELS / CHECKPOINT)

    def applies(self, image: Image) -> bool:
        return (image.pixels.ndim == 2 and image.modality in RADIOGRAPHS and self.checkpoint.is_file())

    def out_of_domain(self, image: Image) -> str | None:
        from .anatomy import chest_radiograph

        if image.modality == "OT" and image.format == "dicom":
            return "modality OT (a secondary capture or test image), not known to be a radiograph"
        chest, why = chest_radiograph(image)
        return None if chest else f"{why}; the zoo model knows chest radiographs only"

    def _details(self, clf, which: str, **extra) -> dict:
        return {**extra, "checkpoint": self.checkpoint.name, "architecture": clf.card.get("architecture", "?"),
                "trained_on": clf.card.get("data", {}).get("manifest")}

    def detect(self, image: Image) -> Evidence:
        from ..learn.data import normalise_image

        clf = cached_classifier(self.checkpoint)
        arr = normalise_image(image.pixels, "radiograph")
        if not clf.native:
            ev = self._detect_whole(image, clf, arr, "xray")
        elif min(arr.shape) < clf.min_size:
            return Evidence(self.name, 0.0, f"The image ({arr.shape[0]}x{arr.shape[1]} px) is smaller than the "
                            f"{clf.min_size} px the zoo tile model was trained on; not scored.",
                            details=self._details(clf, "zoo", abstained=True, mode="native-tiles"),
                            indicates="synthesis", confidence=CONFIDENCE)
        else:
            ev = self._detect_tiles(image, clf, arr, "xray")
        text = ev.explanation.replace("learned radiograph tile model", "zoo-trained tile model (generator traces)")
        return dataclasses.replace(ev, detector=self.name, explanation=text, indicates="synthesis",
                                   confidence=CONFIDENCE)
