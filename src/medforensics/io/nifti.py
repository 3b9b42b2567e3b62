"""NIfTI volumes through nibabel, reoriented to the (slices, rows, cols) convention."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..core import Image, MedForensicsError, ignoring_warnings
from .budget import WORK_NIFTI, check, check_gzip
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


@contextmanager
def _quiet():
    """nibabel's header checks log their fixes ("sizeof_hdr should be 348; set sizeof_hdr to 348",
    "data code 9999 not recognized") to stderr; while a file is read they are silenced, along with
    warnings: what matters reaches the user as the file's error."""
    import nibabel as nib

    logger = nib.imageglobals.logger
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with ignoring_warnings():
            yield
    finally:
        logger.setLevel(level)


def _check_budget(path: Path, budget: int | str | None) -> None:
    """Refuse, from the header alone, a NIfTI file that would take more than the decode budget
    to load (its dimensions x its data type, plus the float32 copies the loader makes), and a
    ``.nii.gz`` that inflates to far more than its header declares (nibabel reads header
    extensions of any size the file gives). A header too damaged to read is left to nibabel,
    which says what is wrong with it."""
    import gzip

    import nibabel as nib

    gz = path.name.lower().endswith(".gz")
    try:
        with _quiet():
            with gzip.open(path, "rb") if gz else open(path, "rb") as f:
                raw = f.read(540)
            sizeof = int(np.frombuffer(raw[:4], "<i4")[0]) if len(raw) >= 4 else 0
            klass = nib.Nifti2Header if sizeof in (540, 0x1C020000) else nib.Nifti1Header
            hdr = klass(raw[:klass.template_dtype.itemsize], check=False)
            shape = [int(n) for n in hdr["dim"][1:1 + int(hdr["dim"][0])]] if 0 < int(hdr["dim"][0]) <= 7 else None
            itemsize = hdr.get_data_dtype().itemsize
    except Exception:  # noqa: BLE001 - unreadable header: nibabel reports it
        return
    offset = float(hdr["vox_offset"])
    offset = int(offset) if np.isfinite(offset) and 0 <= offset < 2**62 else klass.template_dtype.itemsize + 4
    if shape is None:
        return
    dims = dict(zip("ijklmno", shape))
    check(path, dims, itemsize, WORK_NIFTI, budget, note=f"{hdr.get_data_dtype()}")
    if gz:
        n = 1
        for d in shape:
            n *= d
        check_gzip(path, offset + n * itemsize, budget)


def load_nifti(path: str | Path, budget: int | str | None = None) -> Image:
    """Load a 3D NIfTI file; ``pixels[k, j, i] = data[i, j, k]`` and the affine maps to LPS mm.

    The modality is guessed from the values (``meta["modality_guessed"] = True``).
    ``budget``: the most memory loading may take (bytes or ``"512M"``; default
    ``MEDFORENSICS_DECODE_BUDGET``, else 2 GiB); a larger volume, from the header's dimensions,
    is refused before any data is read (:mod:`.budget`).
    """
    import nibabel as nib

    path = Path(path)
    _check_budget(path, budget)
    try:  # nibabel logs header fixes ("sizeof_hdr should be 348; ...") to stderr: quiet while reading
        with _quiet():
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
            slope, inter = img.header.get_slope_inter()
    except MemoryError:
        raise
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
    if data.size == 0:
        raise MedForensicsError(path, f"no voxels: the header's dimensions are {' x '.join(map(str, data.shape))}")
    problems: list[dict] = []
    bad = ~np.isfinite(data)
    if bad.any():  # NaN or infinite voxels (or a scaling that overflows): reported, set to the lowest finite value
        n = int(bad.sum())
        finite = data[~bad]
        fill = float(finite.min()) if finite.size else 0.0
        data[bad] = fill
        problems.append({"kind": "nonfinite_voxels", "files": [str(path)], "index": None,
                         "message": f"{n} of {data.size} voxels are NaN or infinite after scaling; "
                                    f"analysed as {fill:g} (the lowest finite value)"})
    with _quiet():
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        a = img.affine
    affine = None
    if a is not None and np.all(np.isfinite(a)):
        ours = np.eye(4)
        ours[:3, 0], ours[:3, 1], ours[:3, 2], ours[:3, 3] = a[:3, 2], a[:3, 1], a[:3, 0], a[:3, 3]
        affine = _RAS_TO_LPS @ ours
    else:
        problems.append({"kind": "unusable_affine", "files": [str(path)], "index": None,
                         "message": "the header's voxel-to-world transform is not finite; positions are given in voxels"})
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        problems.append({"kind": "unusable_spacing", "files": [str(path)], "index": None,
                         "message": f"voxel sizes {', '.join(f'{z:g}' for z in zooms)} are not all positive and "
                                    f"finite; those axes are measured in voxels"})
    zooms = [z if np.isfinite(z) and z > 0 else None for z in zooms]
    pixels = np.ascontiguousarray(data.transpose(2, 1, 0))
    meta = {"modality_guessed": True, "nifti_shape": list(data.shape), "series_problems": problems}
    if pixels.shape[0] == 1:
        return Image(pixels=pixels[0], spacing=(zooms[1], zooms[0]), modality=guess_modality(pixels),
                     format="nifti", sources=[path], uid=file_digest(path), meta=meta, affine=affine)
    return Image(pixels=pixels, spacing=(zooms[2], zooms[1], zooms[0]), modality=guess_modality(pixels),
                 format="nifti", sources=[path], uid=file_digest(path), meta=meta, affine=affine)
