"""Inference with a trained 2D classifier checkpoint.

The shipped CT-slice model (a native-resolution tile model) on pydicom's test slice, and on a
copy with a region smoothed over:

>>> from pathlib import Path
>>> from pydicom.data import get_testdata_file
>>> from scipy.ndimage import gaussian_filter
>>> import medforensics
>>> from medforensics.learn.data import load_item
>>> clf = load_classifier(Path(medforensics.__file__).parent / "models" / "learned_ct2d.safetensors")
>>> clf.classes, clf.fake_classes, clf.native
(['real', 'fake'], ['fake'], True)
>>> ct = get_testdata_file("CT_small.dcm")
>>> probs = clf.predict_files([ct], ["ct-slice"])
>>> probs.shape, bool(abs(probs.sum() - 1) < 1e-5)
((1, 2), True)
>>> real = load_item(ct, "ct-slice")                       # windowed HU scaled to [0, 1]
>>> smoothed = real.copy()
>>> smoothed[32:96, 32:96] = gaussian_filter(real, 2)[32:96, 32:96]
>>> (clf.fake_probability(clf.predict_arrays([real, smoothed])) > 0.5).tolist()
[False, True]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..core import MedForensicsError, one_line
from .checkpoint import load_checkpoint, load_weights
from .data import load_item, tiles, to_tensor
from .models import MODELS, build_model

__all__ = ["Classifier", "load_classifier", "card_min_size"]

_CARD_KEYS = ("architecture", "config", "classes", "fake_classes", "preprocess")


class Classifier:
    """A trained classifier in eval mode with the preprocessing it was trained with.

    Attributes: ``model`` (torch module, eval mode), ``classes``, ``fake_classes``, ``card`` (the
    checkpoint's model card), ``preprocess``, ``batch`` (inference batch size), ``device``,
    ``native`` (a native-resolution tile model: an image's probabilities are those of its most
    suspicious tile; :meth:`tile_probabilities` gives them all).
    """

    def __init__(self, model: torch.nn.Module, card: dict[str, Any], *, batch: int = 32,
                 num_threads: int | None = None, device: str | torch.device = "cpu"):
        self.card = card
        self.classes: list[str] = list(card["classes"])
        self.fake_classes: list[str] = list(card["fake_classes"])
        self.preprocess: dict[str, Any] = dict(card["preprocess"])
        self.batch = int(batch)
        self.num_threads = num_threads
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self._fake_idx = [self.classes.index(c) for c in self.fake_classes]
        self.native = self.preprocess.get("resize") == "none"

    @property
    def min_size(self) -> int:
        """The least image side the model was trained on (see :func:`card_min_size`)."""
        return card_min_size(self.card)

    def predict_tensors(self, x: torch.Tensor) -> np.ndarray:
        """Softmax probabilities ``(n, n_classes)`` of model inputs ``(n, 1, H, W)``, in chunks of ``batch``."""
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        out = []
        with torch.no_grad():
            for i in range(0, x.shape[0], self.batch):
                out.append(torch.softmax(self.model(x[i:i + self.batch].to(self.device)).float(), dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def tile_probabilities(self, array2d: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]], tuple[int, int]]:
        """Native tile model: ``(class probabilities per tile (n, n_classes), [(top, left)], padded
        shape)`` of a [0, 1] array (see :func:`medforensics.learn.data.tiles`)."""
        x, pos, shape = tiles(array2d, self.preprocess)
        return self.predict_tensors(x), pos, shape

    def image_statistic(self, array2d: np.ndarray) -> float:
        """Native tile model: the log-odds that the most suspicious tile is fake (the raw statistic
        that the card's ``calibration`` turns into a score)."""
        p, _, _ = self.tile_probabilities(array2d)
        top = float(np.clip(self.fake_probability(p).max(), 1e-7, 1 - 1e-7))
        return float(np.log(top / (1 - top)))
    def tensor(self, array2d: np.ndarray) -> torch.Tensor:
        """The model input ``(1, crop, crop)`` for a [0, 1] array (the training-time eval transform)."""
        return to_tensor(np.asarray(array2d, dtype=np.float32), self.preprocess)

    def predict_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` (float32) for 2D arrays already scaled to [0, 1]
        (as :func:`medforensics.learn.data.load_item` gives them)."""
        if self.native:
            out = []
            for a in arrays:
                p, _, _ = self.tile_probabilities(a)
                out.append(p[int(np.argmax(self.fake_probability(p)))][None])
        else:
            out = [self.predict_tensors(torch.stack([self.tensor(a) for a in arrays[i:i + self.batch]]))
                   for i in range(0, len(arrays), self.batch)]
        if not out:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict_files(self, paths: Sequence[str | Path], kinds: Sequence[str]) -> np.ndarray:
        """Class probabilities ``(n, n_classes)`` for image files; ``kinds[i]`` is ``ct-slice`` or
        ``radiograph`` (how the file is scaled to [0, 1]). Files are read one batch at a time."""
        if len(paths) != len(kinds):
            raise ValueError(f"{len(paths)} paths but {len(kinds)} kinds")
        out = [self.predict_arrays([load_item(p, k) for p, k in zip(paths[i:i + self.batch], kinds[i:i + self.batch])])
               for i in range(0, len(paths), self.batch)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def fake_probability(self, probs: np.ndarray) -> np.ndarray:
        """Probability that each item is fake: the sum over the fake classes, shape ``(n,)``."""
        return np.asarray(probs, dtype=np.float32)[:, self._fake_idx].sum(axis=1)


def card_min_size(card: dict[str, Any]) -> int:
    """The least image side a model card's training used (its config's ``min_size``; 0: any)."""
    return int(card.get("training", {}).get("config", {}).get("min_size", 0) or 0)


def load_classifier(path: str | Path, *, batch: int = 32, num_threads: int | None = None,
                    device: str = "cpu") -> Classifier:
    """A :class:`Classifier` from a checkpoint written by :func:`medforensics.learn.train.train`.

    Raises MedForensicsError naming the file when it is not such a checkpoint.
    """
    state, card = load_checkpoint(path)
    missing = [k for k in _CARD_KEYS if k not in card]
    if missing:
        raise MedForensicsError(path, f"not a 2D classifier checkpoint: model card lacks {', '.join(missing)}")
    if card["architecture"] not in MODELS:
        raise MedForensicsError(path, f"unknown architecture {card['architecture']!r} (known: {', '.join(MODELS)})")
    try:
        model = build_model(card["architecture"], **card["config"], image_size=int(card["preprocess"]["crop"]))
    except (TypeError, ValueError, KeyError) as e:
        raise MedForensicsError(path, f"model card does not describe a {card['architecture']}: {one_line(e, 200)}") from None
    return Classifier(load_weights(model, state, path), card, batch=batch, num_threads=num_threads, device=device)
