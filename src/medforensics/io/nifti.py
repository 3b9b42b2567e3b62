"""NIfTI volumes through nibabel, reoriented to the (slices, rows, cols) convention."""
from __future__ import annotations

import numpy as np

from pathlib import Path

from ..core import Image, MedForensicsError
from .raster import file_digest

#: RAS (NIfTI) to LPS (DICOM patient coordinates).
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def guess_modality(data: np.ndarray) -> str:
    """NIfTI carries no modality: ``SEG`` for few integer labels, ``CT`` for HU-like values, else ``MR``."""
    sample = data[:: max(1, data.shape[0] // 16)]
    if np.all(np.mod(sample, 1) == 0) and np.unique(sample).size <= 256 and sample.min() >= 0:
        return "SEG"
    lo, hi = np.percentile(sample, [1, 99])
    return "CT" if lo <= -500 and hi < 5000 else "MR"


def load_nifti(path: str | Path) -> Image:
    """Load a 3D NIfTI file; ``pixels[k, j, i] = data[i, j, k]`` and the affine maps to LPS mm.

    The modality is guessed from the values (``meta["modality_guessed"] = True``).
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        slope, inter = img.header.get_slope_inter()
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds on damaged files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MedForensicsError(path, f"unreadable NIfTI file: {msg[:200]}") from None
    if slope is not None and np.isfinite(slope) and slope not in (0, 1):
        data = data * slope + (inter or 0)
    elif inter:
        data = data + inter
    if data.ndim == 4:
        if data.shape[3] != 1:
            raise MedForensicsError(path, f"4D NIfTI with {data.shape[3]} volumes is not supported")
        data = data[..., 0]
    if data.ndim != 3:
        raise MedForensicsError(path, f"expected a 3D volume, got shape {data.shape}")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    a = img.affine
    ours = np.eye(4)
    ours[:3, 0], ours[:3, 1], ours[:3, 2], ours[:3, 3] = a[:3, 2], a[:3, 1], a[:3, 0], a[:3, 3]
    pixels = np.ascontiguousarray(data.transpose(2, 1, 0))
    meta = {"modality_guessed": True, "nifti_shape": list(data.shape), "series_problems": []}
    if pixels.shape[0] == 1:
        return Image(pixels=pixels[0], spacing=(zooms[1], zooms[0]), modality=guess_modality(pixels),
                     format="nifti", sources=[path], uid=file_digest(path), meta=meta, affine=_RAS_TO_LPS @ ours)
    return Image(pixels=pixels, spacing=(zooms[2], zooms[1], zooms[0]), modality=guess_modality(pixels),
                 format="nifti", sources=[path], uid=file_digest(path), meta=meta, affine=_RAS_TO_LPS @ ours)
