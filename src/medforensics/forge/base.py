"""What every forge method returns: the edited pixels and the ground truth of what changed."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import Image, _jsonable


@dataclass
class Forgery:
    """One manipulation with its ground truth.

    Parameters
    ----------
    pixels : ndarray
        The edited pixels, same shape and units as the input ``Image.pixels``.
    mask : ndarray
        uint8, same shape: 1 where a value was changed (or may have been), 0 where it is untouched.
    kind : str
        What was done: ``inject``, ``remove``, ``copymove``, ``splice``, ``inpaint``, ``intensity``,
        ``contrast``, ``resample``, ``synthesize``.
    method : str
        How: ``classic``, ``gan``, ``learned``, ...
    center_voxel, bbox_voxel : tuple of int
        Centre and box (starts then exclusive stops) of the change, in ``pixels`` axis order.
    center_mm : tuple of float, optional
        Patient coordinates (LPS, mm) of the centre, where the image's geometry is known.
    params : dict
        Everything needed to reproduce it (seed, sizes, angles, donor file, ...).
    """

    pixels: np.ndarray
    mask: np.ndarray
    kind: str
    method: str
    center_voxel: tuple[int, ...]
    bbox_voxel: tuple[int, ...]
    center_mm: tuple[float, float, float] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mask(cls, image: Image, pixels: np.ndarray, mask: np.ndarray, kind: str, method: str,
                  **params: Any) -> "Forgery":
        """Centre and box taken from the mask's extent (the whole image if the mask is empty)."""
        mask = np.asarray(mask).astype(np.uint8)
        idx = np.argwhere(mask > 0)
        if idx.size == 0:
            lo, hi = np.zeros(mask.ndim, int), np.array(mask.shape)
        else:
            lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        center = tuple(int(v) for v in (lo + hi - 1) // 2)
        return cls(pixels=pixels, mask=mask, kind=kind, method=method, center_voxel=center,
                   bbox_voxel=tuple(int(v) for v in [*lo, *hi]), center_mm=image.voxel_to_mm(center), params=params)

    def ground_truth(self) -> dict[str, Any]:
        """A JSON-able record of what changed where (no arrays)."""
        return _jsonable({"kind": self.kind, "method": self.method, "center_voxel": self.center_voxel,
                          "bbox_voxel": self.bbox_voxel, "center_mm": self.center_mm,
                          "n_changed": int(self.mask.sum()), "params": self.params})

    def write_ground_truth(self, path: str | Path, **extra: Any) -> Path:
        """Write :meth:`ground_truth` (plus ``extra``) as JSON to a new file."""
        path = Path(path)
        with open(path, "x", encoding="utf-8") as f:
            json.dump({**self.ground_truth(), **_jsonable(extra)}, f, indent=2)
        return path
