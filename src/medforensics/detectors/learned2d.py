"""Learned 2D classifiers (trained on forge data) with a heatmap and Grad-CAM of every decision.

Two checkpoints, chosen by what the image is:

* ``models/learned_ct2d.safetensors`` -- CT slices (2D CT images);
* ``models/learned_xray.safetensors`` -- radiographs (XR/CR/DX and plain raster files).

The shipped ones are ``fastnet`` native-resolution **tile models** (``medforensics train --config
detector-ct`` / ``detector-xray``; docs/learn/train.md): the image, never resized, is cut into
overlapping tiles, each tile gets a fake probability, and the image is as suspicious as its worst
tile. That log-odds goes through a logistic fitted on the validation patients' *authentic*
images only (the card's ``calibration``, per size group), so authentic images like those score
0.05 at the median and 0.2 at the 95th percentile. The heatmap holds, per pixel, the calibrated
score of its worst covering tile; inside the deciding tile it is Grad-CAM (pytorch-grad-cam) of
the fake class on the last convolution: where in that tile the network looked. Images smaller
than the model's training ``min_size`` are not scored (abstained).

A whole-image classifier (any checkpoint of ``medforensics train`` with ``resize = "bilinear"``,
e.g. a review-protocol network trained on a GPU) works too: its score is its fake probability and
its heatmap Grad-CAM of the class it decided. ``MEDFORENSICS_LEARNED_CT2D`` and
``MEDFORENSICS_LEARNED_XRAY`` point the detector at other checkpoints.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core import Evidence, Image
from .base import Detector, regions_from_heatmap

MODELS = Path(__file__).resolve().parents[1] / "models"
CHECKPOINTS = {"ct": ("MEDFORENSICS_LEARNED_CT2D", "learned_ct2d.safetensors"),
               "xray": ("MEDFORENSICS_LEARNED_XRAY", "learned_xray.safetensors")}
RADIOGRAPHS = frozenset({"XR", "CR", "DX", "DR", "RG", "OT"})
_CACHE: dict[str, object] = {}


def checkpoint_path(which: str) -> Path:
    env, name = CHECKPOINTS[which]
    return Path(os.environ.get(env) or MODELS / name)


def classifier(which: str):
    """The loaded classifier for ``ct`` or ``xray`` (once per process)."""
    path = checkpoint_path(which)
    key = f"{which}:{path}"
    if key not in _CACHE:
        from ..learn.predict import load_classifier
        _CACHE[key] = load_classifier(path)
    return _CACHE[key]


def _last_conv(model):
    import torch.nn as nn
    last = None
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            last = m
    return last


def grad_cam(clf, x, target: int) -> np.ndarray | None:
    """Grad-CAM of class ``target`` for the input tensor ``x`` (1, C, H, W), in [0, 1], or None
    when the network has no convolution to explain."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = _last_conv(clf.model)
    if layer is None:
        return None
    with GradCAM(model=clf.model, target_layers=[layer]) as cam:
        heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target))])[0]
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    top = float(heat.max())
    return heat / top if top > 0 else heat


class Learned2DDetector(Detector):
    name = "learned_2d"
    description = ("Learned classifiers of CT slices and radiographs trained on forge data: native-resolution tiles "
                   "scored for edits and synthesis, with a heatmap and Grad-CAM of every decision.")
    dims = frozenset({2})

    def applies(self, image: Image) -> bool:
        if not super().applies(image):
            return False
        which = "ct" if image.modality == "CT" else "xray" if image.modality in RADIOGRAPHS else None
        return which is not None and checkpoint_path(which).is_file()

    def detect(self, image: Image) -> Evidence:
        from ..learn.data import normalise_image

        which = "ct" if image.modality == "CT" else "xray"
        clf = classifier(which)
        arr = normalise_image(image.pixels, "ct-slice" if which == "ct" else "radiograph")
        if clf.native:
            if min(arr.shape) < clf.min_size:
                return Evidence(self.name, 0.0, f"The image ({arr.shape[0]}x{arr.shape[1]} px) is smaller than the "
                                f"{clf.min_size} px the learned tile model was trained on; not scored.",
                                details=self._details(clf, which, abstained=True, mode="native-tiles"))
            return self._detect_tiles(image, clf, arr, which)
        return self._detect_whole(image, clf, arr, which)

    def _details(self, clf, which: str, **extra) -> dict:
        return {**extra, "checkpoint": checkpoint_path(which).name, "architecture": clf.card.get("architecture", "?"),
                "trained_on": clf.card.get("data", {}).get("manifest")}

    def _detect_whole(self, image: Image, clf, arr: np.ndarray, which: str) -> Evidence:
        """A whole-image classifier (resized input): its fake probability and Grad-CAM."""
        import cv2
        import torch

        probs = clf.predict_arrays([arr])[0]
        fake = float(clf.fake_probability(probs[None])[0])
        decided = int(np.argmax(probs))
        with torch.enable_grad():
            heat = grad_cam(clf, clf.tensor(arr)[None], decided)
        heatmap = None
        if heat is not None:
            heatmap = cv2.resize(heat, (image.pixels.shape[1], image.pixels.shape[0]), interpolation=cv2.INTER_LINEAR)
            heatmap = np.clip(heatmap, 0.0, 1.0).astype(np.float32)
        cls = clf.classes[decided]
        explanation = (f"The learned {'CT' if which == 'ct' else 'radiograph'} classifier "
                       f"({clf.card.get('architecture', '?')}) decides {cls} with probability {probs[decided]:.2f}; "
                       f"fake probability {fake:.2f} (Grad-CAM shows where it looked).")
        details = self._details(clf, which, grad_cam=heatmap is not None, mode="whole-image", **{"class": cls},
                                probabilities={c: round(float(p), 4) for c, p in zip(clf.classes, probs)}, raw=fake)
        return Evidence(self.name, fake, explanation, heatmap=heatmap, regions=[], details=details)

    def _detect_tiles(self, image: Image, clf, arr: np.ndarray, which: str) -> Evidence:
        """A native-resolution tile model: every tile scored; the image is as suspicious as its
        worst tile (calibrated on authentic validation images); the heatmap holds each pixel's
        worst covering tile, and Grad-CAM of the deciding tile shows where in it the network looked."""
        import torch

        from ..learn.calibration import group_for, size_group
        from ..learn.data import tiles

        batch, pos, padded = tiles(arr, clf.preprocess)
        fake = np.clip(clf.fake_probability(clf.predict_tensors(batch)), 1e-7, 1 - 1e-7)
        logits = np.log(fake / (1 - fake))
        cals = clf.card.get("calibration") or {}
        cal = cals[group_for(cals, arr.shape)] if cals else {"midpoint": 0.0, "scale": 1.0}
        group = size_group(arr.shape)
        mid, sc = float(cal["midpoint"]), float(cal["scale"])
        tile_scores = 1.0 / (1.0 + np.exp(-np.clip((logits - mid) / sc, -40, 40)))
        top = int(np.argmax(logits))
        raw, score = float(logits[top]), float(tile_scores[top])
        crop = int(clf.preprocess["crop"])
        heat = np.zeros(padded, np.float32)
        for (y, x), s in zip(pos, tile_scores):
            np.maximum(heat[y:y + crop, x:x + crop], s, out=heat[y:y + crop, x:x + crop])
        with torch.enable_grad():
            cam = grad_cam(clf, batch[top:top + 1], clf.classes.index(clf.fake_classes[0]))
        if cam is not None:
            import cv2
            y, x = pos[top]
            cam = cv2.resize(cam, (crop, crop), interpolation=cv2.INTER_LINEAR)
            heat[y:y + crop, x:x + crop] = np.clip(score * cam, 0.0, 1.0)
        oy, ox = (padded[0] - arr.shape[0]) // 2, (padded[1] - arr.shape[1]) // 2
        heat = heat[oy:oy + arr.shape[0], ox:ox + arr.shape[1]]
        regions = regions_from_heatmap(image, heat, threshold=0.5, note="learned tile model: unlike authentic tiles")
        kind = "CT" if which == "ct" else "radiograph"
        if score >= 0.5:
            explanation = (f"The learned {kind} tile model finds {int((tile_scores >= 0.5).sum())} of {len(pos)} "
                           f"native-resolution tiles unlike authentic ones (worst tile score {score:.2f}); "
                           "Grad-CAM shows where in the worst tile it looked.")
        else:
            explanation = (f"The learned {kind} tile model finds all {len(pos)} native-resolution tiles like "
                           f"authentic ones (worst tile score {score:.2f}).")
        details = self._details(clf, which, grad_cam=cam is not None, mode="native-tiles", raw=round(raw, 4),
                                tiles=len(pos), tile_px=crop, tiles_flagged=int((tile_scores >= 0.5).sum()),
                                worst_tile=list(pos[top]), size_group=group,
                                calibration={"midpoint": mid, "scale": sc})
        return Evidence(self.name, score, explanation, heatmap=heat, regions=regions, details=details)
