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

**Transfer syntax.** :func:`output_syntax` is the one place that decides in which transfer syntax a
re-encoded DICOM instance is written (every forge command writes through here):

* uncompressed input (implicit or explicit VR, little or big endian, deflated) keeps its syntax;
* lossless compressed input is re-encoded losslessly in the same syntax: RLE (pydicom),
  JPEG-LS lossless (pyjpegls), JPEG 2000 lossless (pylibjpeg-openjpeg), JPEG lossless process 14
  and its selection value 1 (GDCM);
* lossy input (JPEG baseline and extended, JPEG-LS near-lossless, JPEG 2000) is written
  *losslessly*, in the lossless syntax of its family (JPEG lossless SV1, JPEG-LS lossless, JPEG
  2000 lossless): a lossy re-encoding would change every block of the image, not only the edit.
  The stored values outside the edit are exactly the input's as the loader decoded them.
  ``LossyImageCompression`` stays (or becomes) ``01``: the pixels were lossy-compressed once;
* where no encoder is installed for that syntax (or it fails, or what it wrote does not decode
  to the values given), the instance is written in :data:`FALLBACK_SYNTAX` (explicit VR little
  endian).

:func:`write_image` returns what it chose per instance (``Written.syntax``), so that the forge's
ground truth records it.

>>> from pydicom import uid
>>> output_syntax(uid.RLELossless).output == uid.RLELossless
True
>>> c = output_syntax(uid.JPEGBaseline8Bit)
>>> c.output.name, c.reason
('JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])', 'lossy input written losslessly')

``careless=True`` leaves the traces a hurried editor leaves (new SOP and series UIDs, the editing
software in SoftwareVersions and DerivationDescription): fakes for testing header forensics.

>>> careless = write_like(vol, edited, tmp / "careless_series", careless=True)
>>> ds = pydicom.dcmread(careless[1])
>>> ds.SeriesInstanceUID == pydicom.dcmread(written[1]).SeriesInstanceUID, ds.DerivationDescription
(False, 'edited with medforensics-forge (CT-GAN style in-painting, OpenCV)')
>>> folder.cleanup()
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid as _uid
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from ..core import Image, MedForensicsError, ignoring_warnings, one_line
from .plan import new_file, new_folder

__all__ = ["write_like", "write_image", "Written", "write_mask", "new_file", "physical_to_stored", "output_syntax",
           "encode_like", "SyntaxChoice", "FALLBACK_SYNTAX", "CARELESS_SOFTWARE"]

#: Where no encoder exists for the input's syntax: explicit VR little endian, uncompressed.
FALLBACK_SYNTAX = ExplicitVRLittleEndian
#: Syntaxes written without an encoder plugin (pydicom writes them itself).
NATIVE_SYNTAXES = (_uid.ImplicitVRLittleEndian, _uid.ExplicitVRLittleEndian, _uid.ExplicitVRBigEndian,
                   _uid.DeflatedExplicitVRLittleEndian)
#: Compressed syntaxes that are lossless by definition.
LOSSLESS_SYNTAXES = (_uid.RLELossless, _uid.JPEGLossless, _uid.JPEGLosslessSV1, _uid.JPEGLSLossless,
                     _uid.JPEG2000Lossless, _uid.JPEG2000MCLossless, _uid.HTJ2KLossless, _uid.HTJ2KLosslessRPCL)
#: Lossy syntaxes and the lossless syntax of the same family they are written in.
LOSSLESS_OF = {_uid.JPEGBaseline8Bit: _uid.JPEGLosslessSV1, _uid.JPEGExtended12Bit: _uid.JPEGLosslessSV1,
               _uid.JPEGLSNearLossless: _uid.JPEGLSLossless, _uid.JPEG2000: _uid.JPEG2000Lossless}
#: Syntaxes encoded through GDCM here (pydicom has no encoder for them).
GDCM_SYNTAXES = {_uid.JPEGLossless: "JPEGLosslessProcess14", _uid.JPEGLosslessSV1: "JPEGLosslessProcess14_1"}

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


@dataclass(frozen=True)
class SyntaxChoice:
    """The transfer syntax an instance is written in, and why (see the module docstring)."""

    input: UID
    output: UID
    reason: str
    encoder: str

    def to_dict(self) -> dict[str, str]:
        return {"input": str(self.input), "input_name": self.input.name, "output": str(self.output),
                "output_name": self.output.name, "reason": self.reason, "encoder": self.encoder}


def _encoder(ts: UID) -> str | None:
    """Name of an installed encoder for ``ts``, or None."""
    if ts in NATIVE_SYNTAXES:
        return "pydicom"
    if ts in GDCM_SYNTAXES:
        return "GDCM" if importlib.util.find_spec("gdcm") is not None else None
    from pydicom.pixels import get_encoder
    try:
        enc = get_encoder(ts)
    except (NotImplementedError, ValueError, KeyError):
        return None
    plugins = list(enc.available_plugins) if enc.is_available else []
    return plugins[0] if plugins else None


def output_syntax(ts: str | UID | None) -> SyntaxChoice:
    """The transfer syntax in which an instance stored in ``ts`` is written back after an edit:
    the same one where it is lossless and can be encoded here, the lossless one of its family for
    lossy input, else :data:`FALLBACK_SYNTAX` (the reason says which rule applied)."""
    ts = UID(str(ts or ExplicitVRLittleEndian))
    if not ts.is_transfer_syntax:
        return SyntaxChoice(ts, FALLBACK_SYNTAX, "unknown transfer syntax: written uncompressed", "pydicom")
    if ts in NATIVE_SYNTAXES or ts in LOSSLESS_SYNTAXES:
        enc = _encoder(ts)
        if enc is not None:
            return SyntaxChoice(ts, ts, "same syntax", enc)
        return SyntaxChoice(ts, FALLBACK_SYNTAX, f"no encoder for {ts.name} installed: written uncompressed", "pydicom")
    target = LOSSLESS_OF.get(ts)
    enc = _encoder(target) if target is not None else None
    if target is not None and enc is not None:
        return SyntaxChoice(ts, target, "lossy input written losslessly", enc)
    return SyntaxChoice(ts, FALLBACK_SYNTAX, "lossy input written uncompressed (no lossless encoder of its family)",
                        "pydicom")


def _native_bytes(ds: Dataset, arr: np.ndarray, ts: UID) -> bytes:
    """Stored values as native pixel data of ``ts`` (bit-packed for 1-bit, byte order of ``ts``)."""
    if int(getattr(ds, "BitsAllocated", 16)) == 1:
        from pydicom.pixels import pack_bits
        data = pack_bits(arr)
    else:
        data = arr.astype(arr.dtype.newbyteorder("<" if ts.is_little_endian else ">")).tobytes()
    return data + b"\0" if len(data) % 2 else data


def _gdcm_encapsulated(ds: Dataset, arr: np.ndarray, ts: UID) -> bytes:
    """Encapsulated pixel data of ``arr`` in ``ts`` (JPEG lossless), encoded by GDCM: a minimal
    uncompressed instance goes through GDCM's ImageChangeTransferSyntax in a temporary folder."""
    import gdcm

    with tempfile.TemporaryDirectory(prefix="medforensics-gdcm-") as tmp:
        a, b = str(Path(tmp) / "in.dcm"), str(Path(tmp) / "out.dcm")
        d = Dataset()
        d.file_meta = pydicom.dataset.FileMetaDataset()
        d.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        d.SOPClassUID = d.file_meta.MediaStorageSOPClassUID = getattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
        d.SOPInstanceUID = d.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for kw in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                   "SamplesPerPixel", "PhotometricInterpretation", "NumberOfFrames"):
            if kw in ds:
                setattr(d, kw, ds[kw].value)
        d.PixelData = _native_bytes(ds, arr, ExplicitVRLittleEndian)
        d["PixelData"].VR = "OB" if int(ds.BitsAllocated) <= 8 else "OW"
        d.save_as(a, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(a)
        if not reader.Read():
            raise ValueError("GDCM could not read the instance to encode")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, GDCM_SYNTAXES[ts])))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise ValueError(f"GDCM could not encode {ts.name}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(b)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise ValueError("GDCM could not write the encoded instance")
        return pydicom.dcmread(b).PixelData


def _drop_encapsulation(ds: Dataset) -> None:
    for tag in (0x7FE00001, 0x7FE00002):  # extended offset table (and its lengths) of encapsulated data
        if tag in ds:
            del ds[tag]


def _encode(ds: Dataset, arr: np.ndarray, choice: SyntaxChoice) -> SyntaxChoice:
    """Put ``arr`` (stored values, shape of ``ds.pixel_array``) into ``ds`` in ``choice.output``;
    a failing encoder, or one whose output does not decode to ``arr``, gives the fallback."""
    ts = choice.output
    if ts.is_encapsulated:
        try:
            with ignoring_warnings():
                if ts in GDCM_SYNTAXES:
                    _drop_encapsulation(ds)
                    ds.PixelData = _gdcm_encapsulated(ds, arr, ts)
                    ds["PixelData"].VR = "OB"
                    ds["PixelData"].is_undefined_length = True
                    ds.file_meta.TransferSyntaxUID = ts
                else:
                    ds.compress(ts, arr, generate_instance_uid=False)
                back = ds.pixel_array
            if back.shape != arr.shape or not np.array_equal(back, arr):
                raise ValueError("the encoded pixels do not decode to the values written")
            return choice
        except Exception as e:  # noqa: BLE001 - any encoder failure: fall back to uncompressed
            choice = SyntaxChoice(choice.input, FALLBACK_SYNTAX,
                                  f"{choice.encoder} could not encode {ts.name} ({one_line(e, 120)}): written uncompressed",
                                  "pydicom")
            ts = FALLBACK_SYNTAX
    _drop_encapsulation(ds)
    ds.PixelData = _native_bytes(ds, arr, ts)
    ds["PixelData"].VR = "OB" if int(getattr(ds, "BitsAllocated", 16)) <= 8 else "OW"
    ds["PixelData"].is_undefined_length = False
    ds.file_meta.TransferSyntaxUID = ts
    return choice


def encode_like(ds: Dataset, stored: np.ndarray) -> SyntaxChoice:
    """Put ``stored`` (stored values shaped like ``ds.pixel_array``; Rows, Columns and
    NumberOfFrames already describe it) into ``ds`` in the syntax :func:`output_syntax` chooses for
    ``ds``'s own, and return the choice. Lossy input written losslessly keeps (or gets)
    ``LossyImageCompression`` ``01``: its values were lossy-compressed before."""
    choice = _encode(ds, np.asarray(stored), output_syntax(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)))
    if choice.input not in NATIVE_SYNTAXES and choice.input not in LOSSLESS_SYNTAXES and choice.input.is_transfer_syntax \
            and "LossyImageCompression" not in ds:
        ds.LossyImageCompression = "01"
    return choice


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
                    careless_series: str | None) -> SyntaxChoice:
    """Re-encode one instance whose frames changed (``changed`` is per-pixel, frames first), in
    the syntax :func:`output_syntax` chooses; return that choice."""
    from .dicom import _decode  # the loader's own decoding: the same decoder read the input

    ds, frames, _ = _decode(src)
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        raise MedForensicsError(src, "writing colour DICOM is not supported")
    out_frames = frames.copy()
    out_frames[changed] = new_stored_frames[changed].astype(frames.dtype)
    arr = out_frames[0] if int(getattr(ds, "NumberOfFrames", 1) or 1) == 1 else out_frames
    choice = encode_like(ds, arr)
    if careless_series:
        _careless(ds, careless_series)
    ds.save_as(out, enforce_file_format=False)
    return choice


@dataclass
class Written:
    """What :func:`write_image` wrote: ``files``; ``rewritten``, the indices of the files whose
    pixel data was re-encoded (the others are byte copies of the input's); ``syntax``, the
    transfer-syntax choices of the re-encoded DICOM instances (one entry per distinct choice)."""

    files: list[Path]
    rewritten: list[int] = field(default_factory=list)
    syntax: list[dict[str, Any]] = field(default_factory=list)

    def _note(self, choice: SyntaxChoice) -> None:
        d = choice.to_dict()
        if d not in self.syntax:
            self.syntax.append(d)


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
        The files written (:func:`write_image` also says which were re-encoded and in which
        transfer syntax).
    """
    return write_image(image, pixels, out, careless=careless, jpeg_quality=jpeg_quality).files


def write_image(image: Image, pixels: np.ndarray, out: str | Path, *, careless: bool = False,
                jpeg_quality: int | None = None) -> Written:
    """:func:`write_like`, returning a :class:`Written` record (files, re-encoded files, transfer
    syntax choices) instead of the bare list of files."""
    out = Path(out)
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.shape != image.pixels.shape:
        raise ValueError(f"pixels of shape {pixels.shape} do not match the image's {image.pixels.shape}")
    if image.format == "dicom":
        return _write_dicom(image, pixels, out, careless)
    if image.format in ("png", "jpeg", "tiff"):
        return Written([_write_raster(image, pixels, out, jpeg_quality)], [0])
    if image.format == "nifti":
        return Written([_write_nifti(image, pixels, out)], [0])
    raise MedForensicsError(out, f"cannot write images of format {image.format!r}")


def _write_dicom(image: Image, pixels: np.ndarray, out: Path, careless: bool) -> Written:
    changed = pixels != image.pixels
    series_uid = generate_uid() if careless else None
    sources = [Path(s) for s in image.sources]
    if image.pixels.ndim == 3 and len(sources) == image.pixels.shape[0] and len(sources) > 1:
        new_folder(out)
        written = Written([])
        for k, (src, ds) in enumerate(zip(sources, image.datasets)):
            dst = new_file(out / src.name)
            if not changed[k].any() and not careless:
                shutil.copyfile(src, dst)
            else:
                stored = physical_to_stored(ds, pixels[k])[None]
                written._note(_write_instance(src, stored, changed[k][None], dst, series_uid))
                written.rewritten.append(k)
            written.files.append(dst)
        return written
    if len(sources) != 1:
        raise MedForensicsError(out, "cannot write a volume that did not come from one file per slice")
    dst = new_file(out)
    ds = image.datasets[0]
    frames = pixels if pixels.ndim == 3 else pixels[None]
    ch = changed if changed.ndim == 3 else changed[None]
    written = Written([dst], [0])
    written._note(_write_instance(sources[0], physical_to_stored(ds, frames), ch, dst, series_uid))
    return written


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

