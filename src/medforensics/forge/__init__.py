"""Forgeries with ground truth: every method returns a :class:`~medforensics.forge.base.Forgery`.

``edits``: 2D manipulations (copy-move, splice, in-painting, intensity, contrast, resampling);
``ct``: 3D CT nodule injection and removal (CT-GAN style); ``lidc``: LIDC-IDRI annotations;
``gan``: the learned in-painting generator; ``synth``: whole synthetic radiographs;
``dataset``: labelled datasets; ``realism``: the realism report.

Names are imported lazily, so that ``import medforensics.forge`` (and the command line) stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "edits": ["copy_move", "splice", "rescale_region", "inpaint_region", "intensity_region", "contrast_region",
              "resample_region", "forge_copymove", "forge_splice", "forge_inpaint", "forge_intensity",
              "forge_contrast", "forge_resample"],
    "ct": ["inject", "remove"],
    "lidc": ["nodules_for"],
    "synth": ["synthesize", "write_synthetic"],
    "base": ["Forgery"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
_MODULES = {"edits", "ct", "lidc", "gan", "synth", "dataset", "realism", "base", "zoo"}

__all__ = sorted(_WHERE) + sorted(_MODULES)


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
