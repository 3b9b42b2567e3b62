"""Learned 2D classifiers (trained on forge data) with a Grad-CAM explanation of every decision.

Two shipped checkpoints, chosen by what the image is:

* ``models/learned_ct2d.safetensors`` -- CT slices (2D CT images), the review's four CT-GAN classes
  TB/TM/FB/FM; the fake probability is P(FB) + P(FM);
* ``models/learned_xray.safetensors`` -- radiographs (XR/CR/DX and plain raster files), real/fake.

Each is the fast default network trained with ``medforensics train --config fast-cpu`` on the
forge dataset of ``../shared/data`` (how to reproduce them: docs/learn/train.md). The score is the
network's fake probability (softmax; its calibration error on the validation split is in the
checkpoint's card). The heatmap is Grad-CAM (pytorch-grad-cam) of the class the network decided
for, on its last convolution, resized to the image: where the network looked. It is shown in
reports for every decision, authentic ones included. ``MEDFORENSICS_LEARNED_CT2D`` and
``MEDFORENSICS_LEARNED_XRAY`` point the detector at other checkpoints (e.g. one trained on a GPU
with the review protocol).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core import Evidence, Image
from .base import Detector

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
    description = ("Learned classifiers of CT slices (TB/TM/FB/FM) and radiographs (real/fake) trained on forge "
                   "data; Grad-CAM shows where each decision looked.")
    dims = frozenset({2})

    def applies(self, image: Image) -> bool:
        if not super().applies(image):
            return False
        which = "ct" if image.modality == "CT" else "xray" if image.modality in RADIOGRAPHS else None
        return which is not None and checkpoint_path(which).is_file()

    def detect(self, image: Image) -> Evidence:
        import cv2
        import torch

        from ..learn.data import normalise_image

        which = "ct" if image.modality == "CT" else "xray"
        clf = classifier(which)
        arr = normalise_image(image.pixels, "ct-slice" if which == "ct" else "radiograph")
        probs = clf.predict_arrays([arr])[0]
        fake = float(clf.fake_probability(probs[None])[0])
        decided = int(np.argmax(probs))
        x = clf.tensor(arr)[None]
        with torch.enable_grad():
            heat = grad_cam(clf, x, decided)
        heatmap = None
        if heat is not None:
            heatmap = cv2.resize(heat, (image.pixels.shape[1], image.pixels.shape[0]), interpolation=cv2.INTER_LINEAR)
            heatmap = np.clip(heatmap, 0.0, 1.0).astype(np.float32)
        cls = clf.classes[decided]
        arch = clf.card.get("architecture", "?")
        explanation = (f"The learned {which.upper() if which == 'ct' else 'radiograph'} classifier ({arch}) decides "
                       f"{cls} with probability {probs[decided]:.2f}; fake probability {fake:.2f} "
                       "(Grad-CAM shows where it looked).")
        details = {"grad_cam": heatmap is not None, "class": cls,
                   "probabilities": {c: round(float(p), 4) for c, p in zip(clf.classes, probs)},
                   "checkpoint": checkpoint_path(which).name, "architecture": arch,
                   "trained_on": clf.card.get("data", {}).get("manifest"), "raw": fake}
        return Evidence(self.name, fake, explanation, heatmap=heatmap, regions=[], details=details)
