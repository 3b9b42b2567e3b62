"""What every forge method returns: the edited pixels and the ground truth of what changed; and
:func:`write_forgery`, which every forge command uses to write it (the ground truth then covers
every pixel that decodes differently from the input, including any the encoding changed)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core import Image, MedForensicsError, _jsonable


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


@dataclass
class WrittenForgery:
    """What :func:`write_forgery` wrote and measured.

    ``files`` the files written; ``mask`` (uint8, the image's shape) every pixel whose value,
    decoded from the written files by the loader, differs from the input's as the loader decoded
    it, together with the edit's own mask; ``record`` the ground-truth fields: ``transfer_syntax``
    (per distinct choice, see :func:`medforensics.io.write.output_syntax`), ``n_edited`` (the
    edit's mask), ``n_changed_by_encoding`` (pixels outside the edit's mask that the encoding
    changed: 0 for every DICOM syntax, since DICOM is always written losslessly; non-zero for a
    JPEG raster, which is re-encoded lossily) and ``mask_from``.
    """

    files: list[Path]
    mask: np.ndarray
    record: dict[str, Any]


def _differs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    return (a != b) & ~(np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a != b


def _decoded_after_writing(image: Image, files: Sequence[Path], rewritten: Sequence[int]) -> np.ndarray:
    """The input's pixels where a file was copied, the written files' decoded pixels elsewhere."""
    from ..io import load, load_instance

    pixels = np.array(image.pixels, copy=True)
    if image.format == "dicom" and image.pixels.ndim == 3 and len(files) == image.pixels.shape[0] > 1:
        for k in rewritten:  # one file per slice; the others are byte copies
            back = load_instance(files[k]).pixels
            pixels[k] = back[0] if back.ndim == 3 else back
        return pixels
    back = load(files[0])
    if len(back) != 1 or back[0].pixels.shape != image.pixels.shape:
        raise MedForensicsError(files[0], "the written file does not read back as the image it was written from")
    return back[0].pixels


def write_forgery(image: Image, forgery: Forgery, out: str | Path, *, careless: bool = False) -> WrittenForgery:
    """Write ``forgery.pixels`` like ``image`` (:func:`medforensics.io.write.write_image`: same
    form, same transfer syntax where it can be re-encoded losslessly, lossy DICOM written
    losslessly), read the written files back with the loader and measure what changed.

    The returned mask is the union of the edit's mask and of every pixel that decodes differently
    from the input (the decoded difference): the ground truth covers every changed pixel, whatever
    the encoding did. The input is decoded by the loader (the same decoder for both)."""
    from ..io.write import write_image

    written = write_image(image, forgery.pixels, out, careless=careless)
    decoded = _decoded_after_writing(image, written.files, written.rewritten)
    changed = _differs(decoded, image.pixels)
    edit = np.asarray(forgery.mask) > 0
    record = {"transfer_syntax": written.syntax or None, "n_edited": int(edit.sum()),
              "n_changed_by_encoding": int((changed & ~edit).sum()),
              "mask_from": "the edit's mask and every pixel whose decoded value differs from the input's"}
    return WrittenForgery(written.files, (edit | changed).astype(np.uint8), record)
