"""Checkpoints as safetensors files with a model card.

A checkpoint is one ``.safetensors`` file: the model's tensors plus, in the file's metadata, a
JSON *model card* saying what the model is (``architecture`` and its ``config``), what it was
trained on (``data``), how (``training``) and how well (``metrics``). safetensors holds no code,
so loading a checkpoint never runs anything from the file.

>>> import tempfile
>>> from pathlib import Path
>>> import torch
>>> from medforensics.learn.models import build_model
>>> folder = tempfile.TemporaryDirectory()
>>> model = build_model("fastnet", num_classes=4).eval()
>>> path = save_checkpoint(model, Path(folder.name) / "fastnet.safetensors",
...                        {"architecture": "fastnet", "config": {"num_classes": 4}})
>>> state, card = load_checkpoint(path)
>>> card["architecture"], card["config"], card["format"]
('fastnet', {'num_classes': 4}, 1)
>>> again = load_weights(build_model(card["architecture"], **card["config"]), state, path)
>>> x = torch.rand(1, 1, 64, 64)
>>> torch.equal(model(x), again(x)), again.training
(True, False)
>>> save_checkpoint(model, path, card)
Traceback (most recent call last):
    ...
FileExistsError: ...fastnet.safetensors: already exists; choose a new name
>>> folder.cleanup()
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from ..core import MedForensicsError

CARD_KEY = "medforensics.model_card"


def save_checkpoint(model_or_state: Any, path: str | Path, card: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write a module's ``state_dict()`` (or a dict of tensors) and ``card`` to a new safetensors file."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists; choose a new name")
    state = model_or_state.state_dict() if hasattr(model_or_state, "state_dict") else dict(model_or_state)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}  # any dtype; see load_checkpoint
    card = {"format": 1, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **card}
    from .. import __version__
    card.setdefault("medforensics_version", __version__)
    save_file(state, str(path), metadata={CARD_KEY: json.dumps(card, default=str)})
    return path


def load_weights(model: Any, state: dict[str, Any], path: str | Path) -> Any:
    """Load ``state`` into ``model`` (returned, in eval mode); tensors that do not fit are a one-line
    :class:`MedForensicsError` naming the checkpoint ``path``."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise MedForensicsError.wrap(path, e, "checkpoint tensors do not fit the model", limit=160) from None
    return model.eval()


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state_dict, card)`` from a checkpoint written by :func:`save_checkpoint` (tensors on CPU).

    Floating-point tensors come back as float32 whatever they were stored as, so a checkpoint may
    be shipped in float16 to halve its size.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MedForensicsError(path, "checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several kinds on damaged files
        raise MedForensicsError.wrap(path, e, "not a readable safetensors checkpoint") from None
    try:
        card = json.loads(meta.get(CARD_KEY, "{}"))
    except json.JSONDecodeError:
        raise MedForensicsError(path, "checkpoint model card is not valid JSON") from None
    return state, card
