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

A **CT series** is scanned with the CT tile model too: tiles of 64 px at a step of 48 px whose
centre lies in the lungs (or within about 10 mm of them: :func:`medforensics.learn.ct3d.scan_region`),
on every slice -- or every ``k``-th slice, so that at most :data:`MAX_SERIES_TILES` tiles are
scored; an unscored slice's heatmap is that of the scored slice before it. Around the (at most
eight) tiles that score 0.2 or more, a second pass steps by 12 px on their slice and the next ones,
so that a tile centred on the edit is scored too. The series is as
suspicious as its worst tile, through the same calibration as a single slice ("as suspicious as
its worst slice would be alone"); regions are connected groups of 16 px cells whose worst
covering tile scores 0.5 or more, with slice, row and column. The series' heatmap is kept on
:data:`SERIES_HEAT_PX` px cells (``Evidence.heatmap_scale`` ``(1, 4, 4)``: 8.7 MB for 133 slices of
512x512 instead of 140 MB), the deciding tile's Grad-CAM averaged over its cells.

Tiles are scored by :func:`inference_model`: the trained network with batch normalisation folded
into its convolutions, in channels-last layout, under ``torch.inference_mode`` (the same
probabilities to about 1e-6, in about two thirds of the time on a CPU).

A whole-image classifier (any checkpoint of ``medforensics train`` with ``resize = "bilinear"``,
e.g. a review-protocol network trained on a GPU) works too: its score is its fake probability and
its heatmap Grad-CAM of the class it decided.

Domain (:meth:`Learned2DDetector.out_of_domain`): both models know the chest only. A single CT
image under :data:`CT_MIN_SIDE` px is a crop and left to ``ct_patch``. A radiograph
whose header names another body part, or whose frame is not shaped like a chest radiograph, and a
DICOM object of modality OT are not assessed (``not_assessed`` in the verdict says why); see
:mod:`medforensics.detectors.anatomy`. The radiograph model's evidence is low-confidence
(:data:`RADIOGRAPH_CONFIDENCE`). ``Learned2DDetector(checkpoints={"ct": ..., "xray": ...})``, or
``MEDFORENSICS_LEARNED_CT2D`` and ``MEDFORENSICS_LEARNED_XRAY``, point the detector at other checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..core import Evidence, Image
from .base import Detector, logistic, logistic_array, regions_from_heatmap

MODELS = Path(__file__).resolve().parents[1] / "models"
#: Shipped checkpoint of each model, and its name in :data:`medforensics.config.CHECKPOINTS`.
CHECKPOINTS = {"ct": ("ct2d", "learned_ct2d.safetensors"), "xray": ("xray", "learned_xray.safetensors")}
RADIOGRAPHS = frozenset({"XR", "CR", "DX", "DR", "RG", "OT"})
#: Most tiles scored in one CT series (a slice step is chosen to keep within it).
MAX_SERIES_TILES = 3000
#: Cell of a series' heatmap grid and regions, in pixels.
CELL_PX = 16
#: Series refinement: tiles from this calibrated score on are re-scanned at a quarter of the step
#: on their slice and the next ones, for at most this many seed tiles.
REFINE_FROM, REFINE_SEEDS = 0.2, 8
_CACHE: dict[str, object] = {}
_FAST: dict[int, tuple[object, object]] = {}
#: Pixels per heatmap cell in the plane of a CT series' heatmap (``Evidence.heatmap_scale`` (1, 4, 4)):
#: the tile scores live on a 16 px grid anyway, and the deciding tile's Grad-CAM keeps 16x16 cells.
SERIES_HEAT_PX = 4
#: Tiles of a CT series scored together (several slices' worth: one call of the network, not one per slice).
SERIES_BATCH_TILES = 256
#: The radiograph model learns from one archive of chest radiographs (and forgeries of them); on
#: authentic radiographs of other hospitals its alarms are not rare enough to convict alone
#: (benchmarks/authentic_rate.py), so its evidence is low-confidence: fusion lets it make an image
#: ``suspicious``, and ``manipulated`` only with another detector's corroboration.
RADIOGRAPH_CONFIDENCE = "low"
#: A single CT image smaller than this on a side is a crop, not a slice: the CT model's calibration
#: (whole slices) does not hold for it, and ``ct_patch`` reads crops of 32-128 px.
CT_MIN_SIDE = 128


def checkpoint_path(which: str) -> Path:
    """The default checkpoint of model ``which`` (``ct`` or ``xray``): the one the environment
    names (:mod:`medforensics.config`), else the shipped one."""
    from ..config import settings

    key, name = CHECKPOINTS[which]
    return Path(settings().checkpoint(key) or MODELS / name)


def cached_classifier(path: Path):
    """The classifier of the checkpoint at ``path``, loaded once per process."""
    key = str(path)
    if key not in _CACHE:
        from ..learn.predict import load_classifier
        _CACHE[key] = load_classifier(path)
    return _CACHE[key]


def inference_model(clf):
    """The classifier's network for scoring tiles (no gradients): batch normalisation folded into
    the convolutions before it (``torch.fx`` fusion) and weights in channels-last layout, once per
    classifier. The same function as ``clf.model`` in eval mode (probabilities agree to about 1e-6)
    at about two thirds of the time on a CPU. ``clf.model`` itself stays as it is, for Grad-CAM.
    A network that ``torch.fx`` cannot trace is used as it is."""
    key = id(clf)
    if key not in _FAST or _FAST[key][0] is not clf:
        import copy

        import torch
        from torch.fx.experimental.optimization import fuse

        try:
            model = fuse(copy.deepcopy(clf.model))
        except Exception:  # noqa: BLE001 - any network fx cannot trace (or fuse) runs unfused
            model = clf.model
        try:
            model = model.to(memory_format=torch.channels_last)
        except (RuntimeError, TypeError):   # a network without 4D weights
            pass
        _FAST[key] = (clf, model.eval())
    return _FAST[key][1]


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
                   "scored for edits and synthesis (CT series: tiles of the lungs, slice by slice), with a heatmap "
                   "and Grad-CAM of every decision.")
    dims = frozenset({2, 3})
    needs_physical_units = True   # CT slices are windowed from HU (normalise_image)

    def __init__(self, checkpoints: Mapping[str, str | Path] | None = None):
        """``checkpoints``: other models by kind (``{"ct": path, "xray": path}``); a kind left out
        uses :func:`checkpoint_path` (the environment's, else the shipped model)."""
        given = dict(checkpoints or {})
        unknown = set(given) - set(CHECKPOINTS)
        if unknown:
            raise ValueError(f"learned_2d checkpoints: unknown kind(s) {', '.join(sorted(unknown))}; known: ct, xray")
        self.checkpoints = {w: Path(given[w]) if w in given else checkpoint_path(w) for w in CHECKPOINTS}

    def classifier(self, which: str):
        """The loaded classifier for ``ct`` or ``xray`` (once per process and checkpoint)."""
        return cached_classifier(self.checkpoints[which])

    def applies(self, image: Image) -> bool:
        if not super().applies(image):
            return False
        if image.pixels.ndim == 3 and image.modality != "CT":
            return False
        which = "ct" if image.modality == "CT" else "xray" if image.modality in RADIOGRAPHS else None
        return which is not None and self.checkpoints[which].is_file()

    def out_of_domain(self, image: Image) -> str | None:
        """Both models were trained and calibrated on the chest: CT slices through the lungs and
        chest radiographs (:mod:`medforensics.detectors.anatomy`). A CT whose header names a part
        without lung (head, limbs) is out; a radiograph must be a chest. A DICOM object of
        modality OT (secondary captures, test patterns) is not known to be a radiograph."""
        from .anatomy import NO_LUNG_PARTS, chest_radiograph, header_body_part

        if image.modality == "OT" and image.format == "dicom":
            return "modality OT (a secondary capture or test image), not known to be a radiograph"
        if image.modality == "CT":
            if image.pixels.ndim == 2 and min(image.pixels.shape) < CT_MIN_SIDE:
                h, w = image.pixels.shape
                return (f"a CT crop of {h}x{w} px: the CT model was calibrated on whole slices (ct_patch reads "
                        "crops)")
            part = header_body_part(image)
            return (f"the header names {part}, which holds no lung; the CT model knows the chest only"
                    if part in NO_LUNG_PARTS else None)
        chest, why = chest_radiograph(image)
        return None if chest else f"{why}; the radiograph model knows chest radiographs only"

    def prepare(self, image: Image) -> None:
        """Load the image's classifier and trace its scoring network (:func:`inference_model`,
        once per classifier) before the other detectors run beside this one: ``torch.fx``'s
        tracing patches every ``torch.nn.Module`` of the process while it runs."""
        clf = self.classifier("ct" if image.modality == "CT" else "xray")
        if clf.native:
            inference_model(clf)

    def detect(self, image: Image) -> Evidence | None:
        from ..learn.data import normalise_image

        which = "ct" if image.modality == "CT" else "xray"
        clf = self.classifier(which)
        if image.pixels.ndim == 3:
            if not clf.native:
                return Evidence(self.name, 0.0, "The CT checkpoint is a whole-image classifier of single slices; it "
                                "does not scan series.", details=self._details(clf, which, abstained=True,
                                                                                mode="whole-image"))
            return self._detect_series(image, clf)
        arr = normalise_image(image.pixels, "ct-slice" if which == "ct" else "radiograph")
        if clf.native:
            if min(arr.shape) < clf.min_size:
                return Evidence(self.name, 0.0, f"The image ({arr.shape[0]}x{arr.shape[1]} px) is smaller than the "
                                f"{clf.min_size} px the learned tile model was trained on; not scored.",
                                details=self._details(clf, which, abstained=True, mode="native-tiles"))
            return self._detect_tiles(image, clf, arr, which)
        return self._detect_whole(image, clf, arr, which)

    def _details(self, clf, which: str, **extra) -> dict:
        return {**extra, "checkpoint": self.checkpoints[which].name, "architecture": clf.card.get("architecture", "?"),
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

    def _calibration(self, clf, shape: tuple[int, ...]) -> tuple[float, float, str]:
        """``(midpoint, scale, size group)`` of the card's calibration for a plane of ``shape``."""
        from ..learn.calibration import group_for, size_group

        cals = clf.card.get("calibration") or {}
        cal = cals[group_for(cals, shape)] if cals else {"midpoint": 0.0, "scale": 1.0}
        return float(cal["midpoint"]), float(cal["scale"]), size_group(shape)

    @staticmethod
    def _tile_logits(clf, batch) -> np.ndarray:
        """Log-odds that each tile is fake: the network of :func:`inference_model` under
        ``torch.inference_mode``, channels-last batches of ``clf.batch`` tiles."""
        import torch

        if clf.num_threads:
            torch.set_num_threads(clf.num_threads)
        model = inference_model(clf)
        out = []
        with torch.inference_mode():
            for i in range(0, batch.shape[0], clf.batch):
                x = batch[i:i + clf.batch].to(clf.device).contiguous(memory_format=torch.channels_last)
                out.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
        probs = np.concatenate(out).astype(np.float32) if out else np.zeros((0, len(clf.classes)), np.float32)
        fake = np.clip(clf.fake_probability(probs), 1e-7, 1 - 1e-7)
        return np.log(fake / (1 - fake))

    def _grad_cam_into(self, clf, tile, heat: np.ndarray, y: int, x: int, score: float, cell: int = 1) -> bool:
        """Grad-CAM of the fake class for ``tile`` (1, 1, crop, crop), scaled by ``score``, written
        over the tile's square of the 2D ``heat`` (whose cells are ``cell`` px: the tile at pixel
        ``(y, x)`` covers cells ``y // cell`` on, at ``crop / cell`` cells a side; ``y``, ``x`` and
        ``crop`` are pixels, and the cells it only grazes get the mean of what covers them); False
        when the network has none."""
        import cv2
        import torch

        with torch.enable_grad():
            cam = grad_cam(clf, tile, clf.classes.index(clf.fake_classes[0]))
        if cam is None:
            return False
        crop = int(clf.preprocess["crop"])
        cam = cv2.resize(cam, (crop, crop), interpolation=cv2.INTER_LINEAR)
        cam = np.clip(score * cam, 0.0, 1.0)
        if cell == 1:
            heat[y:y + crop, x:x + crop] = cam
            return True
        # coarse cells: the cells the tile touches, at pixel size, with the tile's square replaced by
        # Grad-CAM, then each cell's mean
        c0, r0 = x // cell, y // cell
        c1, r1 = min(-(-(x + crop) // cell), heat.shape[1]), min(-(-(y + crop) // cell), heat.shape[0])
        px = np.repeat(np.repeat(heat[r0:r1, c0:c1], cell, 0), cell, 1)
        px[y - r0 * cell:y - r0 * cell + crop, x - c0 * cell:x - c0 * cell + crop] = cam
        heat[r0:r1, c0:c1] = px.reshape(r1 - r0, cell, c1 - c0, cell).mean(axis=(1, 3))
        return True

    def _detect_tiles(self, image: Image, clf, arr: np.ndarray, which: str) -> Evidence:
        """A native-resolution tile model: every tile scored; the image is as suspicious as its
        worst tile (calibrated on authentic validation images); the heatmap holds each pixel's
        worst covering tile, and Grad-CAM of the deciding tile shows where in it the network looked."""
        from ..learn.data import tiles

        batch, pos, padded = tiles(arr, clf.preprocess)
        logits = self._tile_logits(clf, batch)
        mid, sc, group = self._calibration(clf, arr.shape)
        tile_scores = logistic_array(logits, mid, sc)
        top = int(np.argmax(logits))
        raw, score = float(logits[top]), float(tile_scores[top])
        crop = int(clf.preprocess["crop"])
        heat = np.zeros(padded, np.float32)
        for (y, x), s in zip(pos, tile_scores):
            np.maximum(heat[y:y + crop, x:x + crop], s, out=heat[y:y + crop, x:x + crop])
        has_cam = self._grad_cam_into(clf, batch[top:top + 1], heat, *pos[top], score)
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
        details = self._details(clf, which, grad_cam=has_cam, mode="native-tiles", raw=round(raw, 4),
                                tiles=len(pos), tile_px=crop, tiles_flagged=int((tile_scores >= 0.5).sum()),
                                worst_tile=list(pos[top]), size_group=group,
                                calibration={"midpoint": mid, "scale": sc})
        return Evidence(self.name, score, explanation, heatmap=heat, regions=regions, details=details,
                        confidence=RADIOGRAPH_CONFIDENCE if which == "xray" else "normal")

    def _detect_series(self, image: Image, clf) -> Evidence:
        """A CT series: the CT tile model over the lungs of its slices (see the module docstring)."""
        import torch

        from ..learn.ct3d import scan_region
        from ..learn.data import cut_tiles, normalise_image, tile_starts

        vol = image.pixels
        n, h, w = vol.shape
        crop = int(clf.preprocess["crop"])
        if min(h, w) < max(clf.min_size, crop):
            return Evidence(self.name, 0.0, f"The slices ({h}x{w} px) are smaller than the {max(clf.min_size, crop)} px "
                            "the learned CT tile model was trained on; not scored.",
                            details=self._details(clf, "ct", abstained=True, mode="series-tiles"))
        region = scan_region(image)  # lungs plus ~10 mm, on a 4x coarser in-plane grid
        stride = max(1, crop * 3 // 4)
        ys, xs = tile_starts(h, crop, stride), tile_starts(w, crop, stride)
        rh, rw = region.shape[1:]
        cand = [[(y, x) for y in ys for x in xs
                 if region[k, min((y + crop // 2) // 4, rh - 1), min((x + crop // 2) // 4, rw - 1)]] for k in range(n)]
        with_tiles = [k for k in range(n) if cand[k]]
        if not with_tiles:
            return Evidence(self.name, 0.0, "No lung parenchyma found, so the learned CT tile model has nothing to scan.",
                            details=self._details(clf, "ct", abstained=True, mode="series-tiles"))
        total = sum(len(cand[k]) for k in with_tiles)
        step = max(1, -(-total // MAX_SERIES_TILES))
        scored = with_tiles[::step]
        mid, sc, group = self._calibration(clf, (h, w))
        cell = CELL_PX
        cells = np.zeros((n, -(-h // cell), -(-w // cell)), np.float32)
        seen: set[tuple[int, int, int]] = set()
        found: list[tuple[float, int, int, int]] = []  # (logit, slice, top, left) of every tile scored

        def score_tiles(jobs: list[tuple[int, list[tuple[int, int]]]]) -> None:
            """Score the tiles at ``positions`` of slice ``k`` for every ``(k, positions)`` of
            ``jobs``, in one batch (the network is called once for the lot, not once per slice)."""
            where, batches = [], []
            for k, positions in jobs:
                positions = [p for p in positions if (k, *p) not in seen]
                if not positions:
                    continue
                seen.update((k, *p) for p in positions)
                plane = normalise_image(vol[k], "ct-slice")
                batches.append(cut_tiles(plane, positions, clf.preprocess))
                where.extend((k, y, x) for y, x in positions)
            if not where:
                return
            logits = self._tile_logits(clf, torch.cat(batches) if len(batches) > 1 else batches[0])
            scores = logistic_array(logits, mid, sc)
            for (k, y, x), lg, s_ in zip(where, logits, scores):
                view = cells[k, y // cell:-(-(y + crop) // cell), x // cell:-(-(x + crop) // cell)]
                np.maximum(view, s_, out=view)
                found.append((float(lg), k, y, x))

        # the first pass in groups of slices of about SERIES_BATCH_TILES tiles
        group: list[tuple[int, list[tuple[int, int]]]] = []
        for k in scored:
            group.append((k, cand[k]))
            if sum(len(p) for _, p in group) >= SERIES_BATCH_TILES:
                score_tiles(group)
                group = []
        score_tiles(group)
        # a scored slice's cells stand for the unscored slices up to the next scored one
        for a, b in zip(scored, scored[1:] + [n]):
            cells[a + 1:b] = cells[a]
        # refinement: around the most suspicious tiles, a finer step on their slice and its neighbours
        # (a tile centred on an edit scores higher than one that only grazes it)
        refine_at = mid + sc * np.log(REFINE_FROM / (1 - REFINE_FROM))
        seeds = sorted((f for f in found if f[0] >= refine_at), reverse=True)[:REFINE_SEEDS]
        fine = max(1, stride // 4)
        offsets = range(-(stride // 2), stride // 2 + 1, fine)
        for _, k0, y0, x0 in seeds:
            score_tiles([(k, sorted({(min(max(y0 + dy, 0), h - crop), min(max(x0 + dx, 0), w - crop))
                                     for dy in offsets for dx in offsets}))
                         for k in range(max(0, k0 - step), min(n, k0 + step + 1))])
        n_tiles = len(found)
        n_flagged = int(sum(f[0] >= mid for f in found))
        best = max(found)
        raw, k_top, y_top, x_top = best
        score = logistic(raw, mid, sc)
        regions = regions_from_heatmap(image, cells, threshold=0.5, min_size=1, scale=(1, cell, cell),
                                       note="learned CT tile model: unlike authentic tiles")
        # the heatmap is kept coarse (Evidence.heatmap_scale): SERIES_HEAT_PX px cells in the plane
        f = SERIES_HEAT_PX if cell % SERIES_HEAT_PX == 0 else 1
        heat = np.repeat(np.repeat(cells, cell // f, 1), cell // f, 2)[:, :-(-h // f), :-(-w // f)]
        tile = cut_tiles(normalise_image(vol[k_top], "ct-slice"), [(y_top, x_top)], clf.preprocess)
        has_cam = self._grad_cam_into(clf, tile, heat[k_top], y_top, x_top, score, cell=f)
        where = f"slice {k_top}, rows {y_top}-{y_top + crop - 1}, columns {x_top}-{x_top + crop - 1}"
        if score >= 0.5:
            explanation = (f"The learned CT tile model finds {n_flagged} of {n_tiles} lung tiles on {len(scored)} slices "
                           f"unlike authentic ones; the worst (score {score:.2f}) is at {where}; Grad-CAM shows where "
                           "in it the network looked.")
        else:
            explanation = (f"The learned CT tile model finds all {n_tiles} lung tiles on {len(scored)} slices like "
                           f"authentic ones (worst tile score {score:.2f}, at {where}).")
        details = self._details(clf, "ct", grad_cam=has_cam, mode="series-tiles", raw=round(raw, 4), tiles=n_tiles,
                                tile_px=crop, tile_stride_px=stride, slices_scored=len(scored), slice_step=step,
                                tiles_flagged=n_flagged, worst_tile=[k_top, y_top, x_top], size_group=group,
                                calibration={"midpoint": mid, "scale": sc})
        return Evidence(self.name, score, explanation, heatmap=heat, regions=regions, details=details,
                        heatmap_scale=(1, f, f))
