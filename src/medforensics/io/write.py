"""Writing edited pixels back in the form they came in: the forger's side of ``io``.

:func:`write_like` takes an :class:`~medforensics.core.Image` as loaded and a new pixel array of
the same shape (physical units, like ``Image.pixels``) and writes files that look like the
originals: DICOM keeps every header attribute and UID (as a careful attacker would), PNG/TIFF
keep their bit depth, JPEG its quality. Only values that differ from the original are re-encoded,
so voxels outside an edit stay bit-for-bit what they were; instances with no change are copied
byte for byte. Nothing existing is ever overwritten.

A three-slice CT series (made here from pydicom's test slice) is loaded, one slice edited and
the series written back:

>>> import tempfile
>>> from pathlib import Path
>>> import pydicom
>>> from pydicom.data import get_testdata_file
>>> from pydicom.uid import generate_uid
>>> from medforensics.io import load_series
>>> folder = tempfile.TemporaryDirectory()
>>> tmp = Path(folder.name)
>>> (tmp / "series").mkdir()
>>> for k in range(3):
...     ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
...     ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
...     ds.InstanceNumber = k + 1
...     ds.ImagePositionPatient[2] += 5 * k
...     ds.save_as(tmp / "series" / f"{k + 1:06d}.dcm")
>>> vol = load_series(sorted((tmp / "series").iterdir()))
>>> vol.kind, vol.pixels.shape
('series', (3, 128, 128))
>>> edited = vol.pixels.copy(); edited[1, 40:60, 50:70] += 80
>>> written = write_like(vol, edited, tmp / "forged_series")
>>> [p.name for p in written]
['000001.dcm', '000002.dcm', '000003.dcm']
>>> changed = load_series(written).pixels != vol.pixels
>>> int(changed.sum()), bool(changed[1, 40:60, 50:70].all())
(400, True)
>>> written[0].read_bytes() == (tmp / "series" / "000001.dcm").read_bytes()   # unedited: copied
True
>>> pydicom.dcmread(written[1]).SOPInstanceUID == pydicom.dcmread(tmp / "series" / "000002.dcm").SOPInstanceUID
True

``careless=True`` leaves the traces a hurried editor leaves (new SOP and series UIDs, the editing
software in SoftwareVersions and DerivationDescription): fakes for testing header forensics.

>>> careless = write_like(vol, edited, tmp / "careless_series", careless=True)
>>> ds = pydicom.dcmread(careless[1])
>>> ds.SeriesInstanceUID == pydicom.dcmread(written[1]).SeriesInstanceUID, ds.DerivationDescription
(False, 'edited with medforensics-forge (CT-GAN style in-painting, OpenCV)')
>>> folder.cleanup()
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..core import Image, MedForensicsError
from .plan import new_file, new_folder

__all__ = ["write_like", "write_mask", "new_file", "physical_to_stored", "CARELESS_SOFTWARE"]

#: What ``careless=True`` writes into SoftwareVersions / DerivationDescription.
CARELESS_SOFTWARE = "medforensics-forge (CT-GAN style in-painting, OpenCV)"


def physical_to_stored(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """Inverse of the loader's mapping: physical values to stored integers of ``ds``, clipped to
    the range BitsStored and PixelRepresentation allow (rescale undone, MONOCHROME1 re-inverted)."""
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    stored = (np.asarray(values, dtype=np.float64) - inter) / slope
    bits = int(getattr(ds, "BitsStored", getattr(ds, "BitsAllocated", 16)))
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        stored = -stored if signed else float((1 << bits) - 1) - stored
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return np.clip(np.round(stored), lo, hi)


def _careless(ds: Dataset, series_uid: str) -> None:
    ds.SOPInstanceUID = generate_uid()
    if hasattr(ds, "file_meta"):
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    sw = getattr(ds, "SoftwareVersions", None)
    sw = list(sw) if isinstance(sw, (list, pydicom.multival.MultiValue)) else ([str(sw)] if sw else [])
    ds.SoftwareVersions = sw + [CARELESS_SOFTWARE]
    ds.DerivationDescription = f"edited with {CARELESS_SOFTWARE}"


def _write_instance(src: Path, new_stored_frames: np.ndarray, changed: np.ndarray, out: Path,
                    careless_series: str | None) -> None:
    """Re-encode one instance whose frames changed (``changed`` is per-pixel, frames first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(src)
        stored = ds.pixel_array
    frames = stored.reshape((-1,) + stored.shape[-2:]) if stored.ndim >= 2 else stored
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise MedForensicsError(src, "writing colour DICOM is not supported")
    out_frames = frames.copy()
    out_frames[changed] = new_stored_frames[changed].astype(frames.dtype)
    arr = out_frames.reshape(stored.shape)
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed:
        try:
            ds.compress(ts, arr, generate_instance_uid=False)  # same syntax, where pydicom can encode it
        except Exception:  # noqa: BLE001 - no encoder for this syntax: store it uncompressed
            ds.PixelData = arr.tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    else:
        ds.PixelData = arr.astype(frames.dtype).tobytes()
    if careless_series:
        _careless(ds, careless_series)
    ds.save_as(out, enforce_file_format=False)


def write_like(image: Image, pixels: np.ndarray, out: str | Path, *, careless: bool = False,
               jpeg_quality: int | None = None) -> list[Path]:
    """Write ``pixels`` (same shape and units as ``image.pixels``) in ``image``'s own form.

    Parameters
    ----------
    image : Image
        The image as loaded from disk (its ``sources`` are read again for the full headers).
    pixels : ndarray
        The edited pixels; where they equal ``image.pixels`` the stored values are kept.
    out : path
        A new folder for a multi-file DICOM series (files keep their names), else a new file.
        A raster is written in the format of its suffix (``.png``, ``.jpg``, ``.tif``).
    careless : bool
        Leave a hurried editor's traces in DICOM headers (new UIDs, editing software named).
    jpeg_quality : int, optional
        Quality for JPEG output (default 95, or the original's estimated quality when known).

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out)
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.shape != image.pixels.shape:
        raise ValueError(f"pixels of shape {pixels.shape} do not match the image's {image.pixels.shape}")
    if image.format == "dicom":
        return _write_dicom(image, pixels, out, careless)
    if image.format in ("png", "jpeg", "tiff"):
        return [_write_raster(image, pixels, out, jpeg_quality)]
    if image.format == "nifti":
        return [_write_nifti(image, pixels, out)]
    raise MedForensicsError(out, f"cannot write images of format {image.format!r}")


def _write_dicom(image: Image, pixels: np.ndarray, out: Path, careless: bool) -> list[Path]:
    changed = pixels != image.pixels
    series_uid = generate_uid() if careless else None
    sources = [Path(s) for s in image.sources]
    if image.pixels.ndim == 3 and len(sources) == image.pixels.shape[0] and len(sources) > 1:
        new_folder(out)
        written = []
        for k, (src, ds) in enumerate(zip(sources, image.datasets)):
            dst = new_file(out / src.name)
            if not changed[k].any() and not careless:
                shutil.copyfile(src, dst)
            else:
                stored = physical_to_stored(ds, pixels[k])[None]
                _write_instance(src, stored, changed[k][None], dst, series_uid)
            written.append(dst)
        return written
    if len(sources) != 1:
        raise MedForensicsError(out, "cannot write a volume that did not come from one file per slice")
    dst = new_file(out)
    ds = image.datasets[0]
    frames = pixels if pixels.ndim == 3 else pixels[None]
    ch = changed if changed.ndim == 3 else changed[None]
    _write_instance(sources[0], physical_to_stored(ds, frames), ch, dst, series_uid)
    return [dst]


def _write_raster(image: Image, pixels: np.ndarray, out: Path, jpeg_quality: int | None) -> Path:
    from PIL import Image as PILImage

    dst = new_file(out)
    bits = int(image.meta.get("bit_depth", 8))
    dtype, top = (np.uint16, 65535) if bits == 16 else (np.uint8, 255)
    arr = np.clip(np.round(pixels), 0, top).astype(dtype)
    suffix = dst.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        q = jpeg_quality or int((image.meta.get("jpeg") or {}).get("quality") or 95)
        PILImage.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).save(dst, quality=q)
    elif suffix in (".tif", ".tiff"):
        import tifffile
        tifffile.imwrite(dst, arr)
    elif suffix == ".png":
        if image.meta.get("color") and dtype == np.uint8:
            PILImage.fromarray(np.repeat(arr[..., None], 3, axis=2)).save(dst)
        else:
            PILImage.fromarray(arr).save(dst)
    else:
        raise MedForensicsError(dst, f"unknown raster suffix {dst.suffix!r} (use .png, .jpg or .tif)")
    return dst


def _write_nifti(image: Image, pixels: np.ndarray, out: Path) -> Path:
    import nibabel as nib

    dst = new_file(out)
    src = nib.load(str(image.sources[0]))
    data = (pixels if pixels.ndim == 3 else pixels[None]).transpose(2, 1, 0)  # back to the file's (i, j, k)
    img = nib.Nifti1Image(data.astype(np.float32), src.affine, src.header)
    img.header.set_data_dtype(np.float32)
    nib.save(img, str(dst))
    return dst


def write_mask(mask: np.ndarray, out: str | Path) -> Path:
    """Write a change mask to a new file: ``.png`` (2D, 0/255) or ``.npz`` (any shape, ``mask``)."""
    dst = new_file(Path(out))
    m = np.asarray(mask).astype(np.uint8)
    if dst.suffix.lower() == ".png":
        if m.ndim != 2:
            raise ValueError("a PNG mask must be 2D; use .npz for volumes")
        import cv2
        cv2.imwrite(str(dst), (m > 0).astype(np.uint8) * 255)
    elif dst.suffix.lower() == ".npz":
        np.savez_compressed(dst, mask=m)
    else:
        raise MedForensicsError(dst, "masks are written as .png (2D) or .npz")
    return dst

