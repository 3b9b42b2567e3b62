"""DICOM reading: single instances, enhanced multi-frame, and series stacked by patient position.

Pixels are decoded by pydicom through permissively licensed plugins (GDCM and Pillow for JPEG
baseline/extended/lossless, pyjpegls or GDCM for JPEG-LS, pylibjpeg-openjpeg or GDCM for JPEG 2000,
pylibjpeg-rle or pydicom for RLE; 12-bit JPEG Extended, which pydicom 3.0 routes only to the
GPL libjpeg plugin, through GDCM here: :func:`_decode_jpeg12`), then put in physical units with the
Modality LUT (rescale slope and intercept, per slice). MONOCHROME1 is inverted so that bright
always means dense.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from ..core import Image, MedForensicsError, ignoring_warnings, one_line
from .budget import check_codestream, check_deflated_dicom, check_dicom, check_series, read_dicom

#: Modalities whose instances with patient geometry form volumes.
CROSS_SECTIONAL = {"CT", "MR", "PT", "NM", "ST"}


def read_header(path: Path, budget: int | str | None = None) -> Dataset:
    """Read a DICOM header without pixel data; raise :class:`MedForensicsError` if it is not DICOM
    or if it is of the deflated syntax and inflates beyond the decode ``budget`` (:mod:`.budget`)."""
    check_deflated_dicom(path, budget)
    try:
        with ignoring_warnings():
            return _converted(read_dicom(path, stop_before_pixels=True, force=_needs_force(path)))
    except InvalidDicomError as e:
        raise MedForensicsError(path, f"not a DICOM file ({e})") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on damaged files (zlib.error, struct.error, ...)
        raise MedForensicsError(path, f"unreadable DICOM header: {_why(e)}") from None


def _why(e: BaseException) -> str:
    """The first line of an exception's message (pydicom appends a whole stack trace to errors
    raised while it decodes an element), at most 300 characters."""
    first = str(e).split("\n", 1)[0]
    return one_line(Exception(first), 300) if first.strip() else type(e).__name__


def _converted(ds: Dataset) -> Dataset:
    """``ds`` with every element's value decoded now (pydicom decodes on first access): an unknown
    VR or a value that does not fit its VR raises here, inside the reader's error handling and
    warning filter, rather than later in a detector or while grouping a series."""
    ds.walk(lambda _ds, _elem: None)
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.walk(lambda _ds, _elem: None)
    return ds


def _needs_force(path: Path) -> bool:
    """True for files without the 128-byte preamble and 'DICM' marker (raw datasets)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] != b"DICM"


def looks_like_raw_dicom(path: Path) -> bool:
    """Whether a file without preamble still parses as a dataset with image or SOP attributes."""
    try:
        with ignoring_warnings():
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=[
                "SOPClassUID", "Rows", "Modality"])
        return any(k in ds for k in ("SOPClassUID", "Rows", "Modality"))
    except Exception:  # noqa: BLE001 - sniffing: any failure means "not DICOM"
        return False


def _decode(path: Path, budget: int | str | None = None) -> tuple[Dataset, np.ndarray, tuple[float, float]]:
    """Read one file fully; decode its pixels as (frames, rows, cols) stored values (colour reduced
    to gray) and the (min, max) of the stored values as they were in the file. Files that would
    take more memory than the decode ``budget`` are refused before decoding (:mod:`.budget`)."""
    check_deflated_dicom(path, budget)
    try:
        with ignoring_warnings():
            ds = _converted(read_dicom(path, force=_needs_force(path)))
    except InvalidDicomError as e:
        raise MedForensicsError(path, f"not a DICOM file ({e})") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on damaged files
        raise MedForensicsError(path, f"unreadable DICOM file: {_why(e)}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        with ignoring_warnings():  # a damaged UID warns again when named
            sop = getattr(ds, "SOPClassUID", None)
            name = getattr(sop, "name", None) or sop or "unknown SOP class"
        if not str(name).isprintable() or len(str(name)) > 80:  # a damaged UID: never print its bytes
            name = "a damaged SOP Class UID"
        raise MedForensicsError(path, f"no pixel data (not an image: {name})")
    for key in ("Rows", "Columns", "BitsAllocated"):
        if key not in ds:
            raise MedForensicsError(path, f"pixel data present but {key} is missing")
    check_dicom(path, ds, budget)
    check_codestream(path, ds)
    err: BaseException | None = None
    try:
        with ignoring_warnings():
            arr = ds.pixel_array
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as e:  # noqa: BLE001 - also a decoder plugin's panic (pyo3's PanicException is no Exception)
        err, arr = e, _decode_jpeg12(ds)  # 12-bit JPEG Extended: GDCM directly
    if err is not None and arr is None:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        ts_name = getattr(ts, "name", ts) or "unknown transfer syntax"
        msg = _why(err)
        if "shorter than" in msg or "truncat" in msg.lower() or "length" in msg.lower():
            raise MedForensicsError(path, f"pixel data is truncated or does not match the header ({msg})") from None
        raise MedForensicsError(path, f"cannot decode pixel data ({ts_name}): {msg}") from None
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    stored_range = _raw_range(ds, arr)
    if spp > 1:  # colour: note it, then reduce to gray (ITU-R BT.601 luma)
        arr = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[: arr.shape[-1]]
    if arr.ndim == 2:  # one frame (whatever NumberOfFrames says: pydicom reads "0" as one)
        arr = arr[None]
    return ds, arr, stored_range


def _decode_jpeg12(ds: Dataset) -> np.ndarray | None:
    """Grayscale 12-bit JPEG Extended (process 4) pixel data decoded by GDCM's 12-bit codec, or
    ``None`` where this does not apply (another syntax, colour, 8 bits, no GDCM, a GDCM failure).

    pydicom 3.0 gives this syntax to GDCM only for 8-bit samples, so without the optional GPL
    libjpeg plugin it has no decoder for 12 bits, but GDCM (BSD) decodes them: within 1 of
    libjpeg's values (rounding of the inverse DCT). GDCM first tries its 8-bit codec and prints
    "Unsupported JPEG data precision 12" on stderr before it succeeds.
    """
    from pydicom.encaps import generate_frames
    from pydicom.uid import JPEGExtended12Bit
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    bits = int(getattr(ds, "BitsStored", 0) or 0)
    if ts != JPEGExtended12Bit or not 8 < bits <= 12 or int(getattr(ds, "SamplesPerPixel", 1) or 1) != 1:
        return None
    try:
        import gdcm
    except ImportError:
        return None
    rows, cols, n = int(ds.Rows), int(ds.Columns), int(getattr(ds, "NumberOfFrames", 1) or 1)
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    frames = []
    try:
        for src in generate_frames(ds.PixelData, number_of_frames=n):
            fragment = gdcm.Fragment()
            fragment.SetByteStringValue(src)
            fragments = gdcm.SequenceOfFragments.New()
            fragments.AddFragment(fragment)
            elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
            elem.SetValue(fragments.__ref__())
            img = gdcm.Image()
            img.SetNumberOfDimensions(2)
            img.SetDimensions((cols, rows, 1))
            img.SetDataElement(elem)
            img.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(
                gdcm.PhotometricInterpretation.GetPIType(str(ds.PhotometricInterpretation))))
            img.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
            img.SetPixelFormat(gdcm.PixelFormat(1, 16, bits, bits - 1, 0))
            buf = img.GetBuffer().encode("utf-8", "surrogateescape")
            frames.append(np.frombuffer(buf, dtype="<u2", count=rows * cols).reshape(rows, cols))
    except Exception:  # noqa: BLE001 - GDCM could not decode it either: the caller reports pydicom's error
        return None
    arr = np.stack(frames) if n > 1 else frames[0]
    arr = arr & np.uint16((1 << bits) - 1)
    if signed:  # two's complement in BitsStored bits
        arr = arr.astype(np.int32)
        arr = np.where(arr >= 1 << (bits - 1), arr - (1 << bits), arr).astype(np.int16)
    return arr


def _raw_range(ds: Dataset, decoded: np.ndarray) -> tuple[float, float]:
    """(min, max) of the stored values as written in the file.

    pydicom masks decoded values to BitsStored, which hides exactly the values that break it;
    for native (uncompressed) pixel data the raw words are read instead.
    """
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    bits = int(getattr(ds, "BitsAllocated", 0) or 0)
    if ts is not None and not ts.is_compressed and bits in (8, 16, 32) and "PixelData" in ds:
        kind = "i" if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1 else "u"
        dtype = np.dtype(f"{'>' if not ts.is_little_endian else '<'}{kind}{bits // 8}")
        buf = ds.PixelData
        n = len(buf) // dtype.itemsize
        expected = int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "SamplesPerPixel", 1) or 1) * \
            int(getattr(ds, "NumberOfFrames", 1) or 1)
        if n >= expected > 0:
            raw = np.frombuffer(buf, dtype=dtype, count=expected)
            return float(raw.min()), float(raw.max())
    return (float(decoded.min()), float(decoded.max())) if decoded.size else (0.0, 0.0)


def _to_physical(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """Stored values to physical units: MONOCHROME1 inverted, Modality LUT applied.

    Where the rescale is not usable (:func:`rescale_problem`: a NaN, infinite or zero slope, or
    one that overflows float32) the Modality LUT is *not* applied: the pixels stay stored values
    (no value is invented), and :mod:`medforensics.detectors.dicom_header` reports the header."""
    arr = stored
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        bits = int(getattr(ds, "BitsStored", getattr(ds, "BitsAllocated", 16)))
        if int(getattr(ds, "PixelRepresentation", 0)) == 1:
            arr = -arr.astype(np.float32)
        else:
            arr = float((1 << bits) - 1) - arr.astype(np.float32)
    base = arr
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if rescale_problem(ds, max(abs(lo), abs(hi))) is not None:
        return np.asarray(base, dtype=np.float32)
    with np.errstate(all="ignore"):
        try:
            arr = apply_modality_lut(arr, ds)
        except Exception:  # noqa: BLE001 - a broken LUT: plain slope/intercept (checked above)
            slope = _number(ds.get("RescaleSlope"))
            inter = _number(ds.get("RescaleIntercept"))
            arr = arr * (1.0 if slope is None else slope) + (0.0 if inter is None else inter)
        out = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):  # a LUT table with non-finite entries: keep the stored values
        return np.asarray(base, dtype=np.float32)
    return out


# ------------------------------------------------------------------ header values the loader uses

#: Plausible range (mm) of a pixel's side and of a slice's thickness or spacing: a detector pixel
#: of 1 micrometre to a 50 mm cell; slices up to 500 mm (scout images of the whole body). Outside
#: it (or zero, negative, NaN, infinite, not a number) the value is not usable.
PIXEL_MM = (1e-3, 50.0)
SLICE_MM = (1e-3, 500.0)
#: Largest |physical value| a rescale may give: float32 pixels stay finite and far below overflow.
MAX_PHYSICAL = 1e30


def _number(v) -> float | None:
    """``v`` as a float, or ``None`` where it is absent, empty or not a number (NaN and infinities
    are returned as such)."""
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _why_not_mm(v: float | None, bounds: tuple[float, float]) -> str | None:
    """Why a length in mm is not usable, or ``None`` where it is."""
    if v is None:
        return "not a number"
    if not np.isfinite(v):
        return "not finite"
    if v == 0:
        return "zero"
    if v < 0:
        return "negative"
    if v < bounds[0]:
        return f"absurdly small (under {bounds[0]:g} mm)"
    if v > bounds[1]:
        return f"absurdly large (over {bounds[1]:g} mm)"
    return None


def _shown(v) -> str:
    if isinstance(v, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(x) for x in v)
    return str(v)


def spacing_problem(ds: Dataset, key: str) -> str | None:
    """Why ``PixelSpacing`` or ``ImagerPixelSpacing`` of ``ds`` is present but not usable (two
    lengths within :data:`PIXEL_MM`), or ``None``.

    >>> ds = Dataset(); ds.PixelSpacing = ["0.7", "-0.7"]
    >>> print(spacing_problem(ds, "PixelSpacing"))
    PixelSpacing 0.7\\-0.7 is not usable: negative
    """
    v = ds.get(key)
    if v is None or v == "":
        return None
    values = list(v) if isinstance(v, (list, tuple, pydicom.multival.MultiValue)) else [v]
    if len(values) != 2:
        return f"{key} {_shown(v)} is not usable: {len(values)} value(s) instead of 2"
    for x in values:
        why = _why_not_mm(_number(x), PIXEL_MM)
        if why:
            return f"{key} {_shown(v)} is not usable: {why}"
    return None


def length_problem(ds: Dataset, key: str) -> str | None:
    """Why ``SliceThickness`` or ``SpacingBetweenSlices`` is present but not a usable length, or ``None``."""
    v = ds.get(key)
    if v is None or v == "":
        return None
    why = _why_not_mm(_number(v), SLICE_MM)
    return f"{key} {_shown(v)} is not usable: {why}" if why else None


def rescale_problem(ds: Dataset, max_stored: float | None = None) -> str | None:
    """Why ``RescaleSlope`` / ``RescaleIntercept`` cannot turn stored values into physical ones
    (present but not a number, NaN, infinite, a zero slope, or a product beyond
    :data:`MAX_PHYSICAL` for stored values up to ``max_stored``), or ``None``."""
    slope_v, inter_v = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    slope, inter = _number(slope_v), _number(inter_v)
    if slope_v not in (None, "") and slope is None:
        return f"RescaleSlope {_shown(slope_v)} is not a number"
    if inter_v not in (None, "") and inter is None:
        return f"RescaleIntercept {_shown(inter_v)} is not a number"
    if slope is not None and not np.isfinite(slope):
        return f"RescaleSlope {_shown(slope_v)} is not finite"
    if inter is not None and not np.isfinite(inter):
        return f"RescaleIntercept {_shown(inter_v)} is not finite"
    if slope == 0:
        return "RescaleSlope is zero (every pixel would take one value)"
    reach = abs(slope if slope is not None else 1.0) * (max_stored if max_stored is not None else 65535.0) + \
        abs(inter or 0.0)
    if reach > MAX_PHYSICAL:
        return (f"RescaleSlope {_shown(slope_v)} and RescaleIntercept {_shown(inter_v) if inter_v is not None else 0} "
                f"give values beyond {MAX_PHYSICAL:g} (they overflow)")
    return None


def header_value_problems(ds: Dataset, max_stored: float | None = None) -> list[dict]:
    """The header values the loader needs but cannot use, each ``{"key", "message", "effect"}``:
    pixel spacing (regions then stay in pixels, no millimetres), slice thickness and spacing
    (the slice step is taken from ImagePositionPatient where there is one), rescale (the pixels
    stay stored values).

    >>> ds = Dataset(); ds.SliceThickness = "-2.5"; ds.RescaleSlope = "0"
    >>> [p["key"] for p in header_value_problems(ds)]
    ['SliceThickness', 'RescaleSlope']
    """
    out = []
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        msg = spacing_problem(ds, key)
        if msg:
            out.append({"key": key, "message": msg, "effect": "regions are given in pixels, not millimetres"})
    for key in ("SliceThickness", "SpacingBetweenSlices"):
        msg = length_problem(ds, key)
        if msg:
            out.append({"key": key, "message": msg,
                        "effect": "the slice step is taken from ImagePositionPatient where there is one"})
    msg = rescale_problem(ds, max_stored)
    if msg:
        out.append({"key": "RescaleSlope" if "Slope" in msg.split(" ")[0] else "RescaleIntercept", "message": msg,
                    "effect": "the pixels are analysed as stored values, not physical units"})
    return out


def _strip(ds: Dataset) -> Dataset:
    for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if key in ds:
            del ds[key]
    return ds


def _spacing_2d(ds: Dataset) -> tuple[float | None, float | None]:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; ``(None, None)``
    where neither is present, or where the one present is not usable (:func:`spacing_problem`):
    no spacing is invented, regions then stay in pixels."""
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        v = ds.get(key)
        if v is None or v == "":
            continue
        if spacing_problem(ds, key) is not None:
            return None, None
        return float(v[0]), float(v[1])
    return None, None


def _geometry(ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(position, row cosine, column cosine) of a single-frame instance, if present and sane."""
    try:
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    except (AttributeError, TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,) or not np.all(np.isfinite(ipp)) or not np.all(np.isfinite(iop)):
        return None
    r, c = iop[:3], iop[3:]
    if abs(np.linalg.norm(r) - 1) > 0.05 or abs(np.linalg.norm(c) - 1) > 0.05:
        return None
    return ipp, r, c


def _affine(origin: np.ndarray, slice_step: np.ndarray, r: np.ndarray, c: np.ndarray,
            spacing_rc: tuple[float | None, float | None]) -> np.ndarray | None:
    """Voxel index to patient mm; ``None`` where the pixel spacing is unknown (no mm are invented)."""
    dr, dc = spacing_rc
    if dr is None or dc is None:
        return None
    a = np.eye(4)
    a[:3, 0] = slice_step
    a[:3, 1] = c * dr  # moving down one row follows the column cosine
    a[:3, 2] = r * dc  # moving right one column follows the row cosine
    a[:3, 3] = origin
    return a


def _uid(ds: Dataset, key: str, fallback: str) -> str:
    return str(getattr(ds, key, "") or fallback)


def _finite(pixels: np.ndarray, meta: dict) -> np.ndarray:
    """``pixels`` with NaN and infinite values (float pixel data can hold them) set to the lowest
    finite value, reported in ``meta["unusable_values"]`` (the detectors need finite values)."""
    bad = ~np.isfinite(pixels)
    if not bad.any():
        return pixels
    finite = pixels[~bad]
    fill = float(finite.min()) if finite.size else 0.0
    pixels = np.where(bad, np.float32(fill), pixels).astype(np.float32)
    slices = sorted({int(k) for k in np.nonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0]}) \
        if pixels.ndim == 3 else [0]
    meta.setdefault("unusable_values", []).append(
        {"key": "PixelData", "message": f"{int(bad.sum())} of {bad.size} pixel values are NaN or infinite",
         "effect": f"they are analysed as {fill:g} (the lowest finite value)", "slices": slices})
    return pixels


def _units(meta: dict) -> dict:
    """``meta`` with ``not_physical_units`` set (the first reason) where some pixels could not be
    put in physical units (an unusable rescale): detectors that read Hounsfield units
    (``Detector.needs_physical_units``) do not assess them."""
    why = next((p["message"] for p in meta.get("unusable_values", []) if p["key"].startswith("Rescale")), None)
    if why:
        meta["not_physical_units"] = f"the pixels are stored values, not physical units ({why})"
    return meta


def _unusable(datasets: Sequence[Dataset], ranges: Sequence[tuple[float, float]]) -> list[dict]:
    """:func:`header_value_problems` of each instance, merged: one entry per message with the
    slices (indices into ``datasets``) that carry it."""
    merged: dict[str, dict] = {}
    for k, (ds, (lo, hi)) in enumerate(zip(datasets, ranges)):
        for p in header_value_problems(ds, max(abs(lo), abs(hi))):
            merged.setdefault(p["message"], {**p, "slices": []})["slices"].append(k)
    return list(merged.values())


def load_instance(path: str | Path, budget: int | str | None = None) -> Image:
    """Load one DICOM file: a 2D image, or a volume for an enhanced multi-frame instance.

    ``budget``: the most memory loading may take (bytes or ``"512M"``; default
    ``MEDFORENSICS_DECODE_BUDGET``, else 2 GiB); larger images are refused before decoding.

    >>> from pydicom.data import get_testdata_file
    >>> im = load_instance(get_testdata_file("CT_small.dcm"))
    >>> im.modality, im.pixels.shape, im.kind
    ('CT', (128, 128), 'image')
    """
    path = Path(path)
    ds, stored, rng = _decode(path, budget)
    modality = str(getattr(ds, "Modality", "") or "OT")
    n = stored.shape[0]
    stored_range = [rng]
    meta = {"stored_range": stored_range, "series_problems": [],
            "transfer_syntax": str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")),
            "color": int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1,
            "photometric": str(getattr(ds, "PhotometricInterpretation", ""))}
    meta["unusable_values"] = _unusable([ds], [rng])
    if n == 1:
        pixels = _finite(_to_physical(ds, stored[0]), meta)
        spacing = _spacing_2d(ds)
        geo = _geometry(ds)
        affine = None
        if geo is not None:
            ipp, r, c = geo
            affine = _affine(ipp, np.cross(r, c), r, c, spacing)
        return Image(pixels=pixels, spacing=spacing, modality=modality, format="dicom", sources=[path],
                     uid=_uid(ds, "SOPInstanceUID", path.name), datasets=[_strip(ds)], meta=_units(meta),
                     affine=affine)
    return _multiframe(path, ds, stored, modality, meta)


def _vector(value, n: int) -> np.ndarray | None:
    """``n`` finite numbers from a multi-valued attribute, or ``None`` (absent, wrong count, not
    numbers, NaN or infinite): a position or orientation is used only when it is sane."""
    try:
        v = np.array([float(x) for x in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return v if v.shape == (n,) and np.all(np.isfinite(v)) else None


def _multiframe(path: Path, ds: Dataset, stored: np.ndarray, modality: str, meta: dict) -> Image:
    """Enhanced multi-frame: per-frame position and rescale from the functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])

    def group(i: int, name: str):
        if i < len(per_frame) and name in per_frame[i]:
            return per_frame[i][name][0]
        if name in shared:
            return shared[name][0]
        return None

    frames = []
    positions = []
    orient = None
    spacing = _spacing_2d(ds)
    for i in range(stored.shape[0]):
        px = group(i, "PixelMeasuresSequence")
        if px is not None and "PixelSpacing" in px:
            spacing = _spacing_2d(px)
            for p in header_value_problems(px)[:1] if spacing == (None, None) else []:
                meta["unusable_values"].append({**p, "slices": [i]})
        po = group(i, "PlaneOrientationSequence")
        if po is not None and "ImageOrientationPatient" in po:
            o = _vector(po.ImageOrientationPatient, 6)
            orient = o if o is not None and abs(np.linalg.norm(o[:3]) - 1) <= 0.05 and \
                abs(np.linalg.norm(o[3:]) - 1) <= 0.05 else orient
        pp = group(i, "PlanePositionSequence")
        positions.append(_vector(pp.ImagePositionPatient, 3) if pp is not None and "ImagePositionPatient" in pp
                         else None)
        tr = group(i, "PixelValueTransformationSequence")
        src = tr if tr is not None else ds
        frame = stored[i].astype(np.float32)
        why = rescale_problem(src, float(np.abs(frame).max()) if frame.size else 0.0)
        if why is None:
            slope, inter = _number(src.get("RescaleSlope")), _number(src.get("RescaleIntercept"))
            slope, inter = (1.0 if slope is None else slope), (0.0 if inter is None else inter)
        else:  # not usable: the frame stays stored values (reported, never replaced by a guess)
            slope, inter = 1.0, 0.0
            if tr is not None:
                meta["unusable_values"].append({"key": "RescaleSlope", "message": why, "slices": [i],
                                                "effect": "the pixels are analysed as stored values, not physical units"})
        if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            frame = float((1 << int(getattr(ds, "BitsStored", 16))) - 1) - frame
        frames.append(frame * slope + inter)
    affine = None
    slice_spacing: float | None = None
    order = list(range(len(frames)))
    if orient is not None and all(p is not None for p in positions) and len(positions) > 1:
        r, c = orient[:3], orient[3:]
        normal = np.cross(r, c)
        s = np.array([float(p @ normal) for p in positions])
        order = list(np.argsort(s, kind="stable"))
        diffs = np.diff(s[order])
        slice_spacing = float(np.median(diffs)) if len(diffs) else None
        step = (positions[order[-1]] - positions[order[0]]) / max(1, len(order) - 1)
        affine = _affine(positions[order[0]], step, r, c, spacing)
        meta["slice_positions"] = [float(v) for v in s[order]]
    with np.errstate(all="ignore"):
        pixels = _finite(np.stack([frames[i] for i in order]).astype(np.float32), meta)
    if slice_spacing is None:
        for key in ("SpacingBetweenSlices", "SliceThickness"):
            if ds.get(key) not in (None, "") and length_problem(ds, key) is None:
                slice_spacing = float(ds.get(key))
                break
    return Image(pixels=pixels, spacing=(slice_spacing, spacing[0], spacing[1]), modality=modality, format="dicom",
                 sources=[path], uid=_uid(ds, "SeriesInstanceUID", path.name), datasets=[_strip(ds)],
                 meta=_units(meta), affine=affine)


def volume_rule(headers: Sequence[Dataset]) -> tuple[bool, str | None]:
    """Whether the instances of one series should be stacked into a volume, and, where they are
    not although they look like one, the rule that failed (one line, for the items).

    A volume: two or more single-frame cross-sectional instances, at least two with patient
    geometry (:func:`load_series` leaves out and reports the others), two of which are adjacent:
    their interval along the slice normal is at most 1.9x the SliceThickness. Where the thickness
    is not usable (absent, or zero, negative, NaN: :func:`length_problem`, which ``dicom_header``
    reports) nothing says the slices are far apart, and they are stacked (before, a negative
    thickness split a series into single images). Sparse picks of far-apart slices stay separate
    2D images (no rule failed: ``(False, None)``). Duplicated positions count as a volume (the
    loader reports them).

    >>> def ct(z, t="2.5"):
    ...     ds = Dataset(); ds.Modality = "CT"; ds.SliceThickness = t
    ...     ds.ImagePositionPatient = [0, 0, z]; ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ...     return ds
    >>> volume_rule([ct(0, "-2.5"), ct(2.5, "-2.5"), ct(5, "-2.5")])
    (True, None)
    >>> volume_rule([ct(0), ct(200)])
    (False, None)
    """
    n = len(headers)
    if n < 2:
        return False, None
    if any(str(getattr(h, "Modality", "")) not in CROSS_SECTIONAL for h in headers):
        return False, None
    if any((_number(getattr(h, "NumberOfFrames", 1)) or 1) > 1 for h in headers):
        return False, None
    geos = [g for g in (_geometry(h) for h in headers) if g is not None]
    if len(geos) < 2:
        return False, (f"the {n} instances of the series cannot be stacked into a volume: "
                       f"{n - len(geos)} lack usable ImagePositionPatient/ImageOrientationPatient")
    normal = np.cross(geos[0][1], geos[0][2])
    s = np.sort([float(g[0] @ normal) for g in geos])
    diffs = np.diff(s)
    if np.any(diffs == 0):
        return True, None
    thickness = _number(headers[0].get("SliceThickness"))
    if thickness is None or length_problem(headers[0], "SliceThickness") is not None:
        return True, None   # no usable thickness to call them far apart: stacked, as without one
    return bool(np.any(diffs <= 1.9 * thickness)), None


def is_volume_candidate(headers: Sequence[Dataset]) -> bool:
    """Whether the instances of one series should be stacked into a volume (:func:`volume_rule`)."""
    return volume_rule(headers)[0]


#: Relative tolerance within which two slice intervals count as equal (reconstructed positions are
#: exact to about 0.001 mm: every authentic series of the fitted sources has intervals equal to
#: 0.0001 mm within each part).
SPACING_TOLERANCE = 0.05
#: Gaps with at least this likelihood of a missing slice are reported as ``series_problems``.
GAP_REPORTED = 0.5
#: each further candidate gap in one part multiplies the support by this (a pattern, not removals)
REPEAT_FACTOR = 0.7
#: Runs of at least this many consecutive slices with one slice thickness / spacing / acquisition
#: are separate parts of a multi-part acquisition (sequential or helical with other settings).
MIN_PART = 3
_PART_KEYS = ("SliceThickness", "SpacingBetweenSlices")


def _header_value(ds: Dataset, key: str) -> str:
    v = ds.get(key)
    if v is None or v == "":
        return ""
    try:
        return f"{float(v):.3f}"
    except (TypeError, ValueError):
        return str(v).strip()


def value_runs(values: Sequence) -> list[list[int]]:
    """Indices of ``values`` grouped into runs of consecutive equal values, in order.

    >>> value_runs(["a", "a", "b", "a"])
    [[0, 1], [2], [3]]
    """
    runs: list[list[int]] = []
    for i, v in enumerate(values):
        if runs and values[runs[-1][0]] == v:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def _parts(headers: Sequence[Dataset], key) -> list[int]:
    """Part label per slice (in position order): runs of ``MIN_PART`` or more consecutive slices
    with the same ``key(ds)``; shorter runs belong to the part before them (or after, at the start)."""
    values = [key(ds) for ds in headers]
    runs = value_runs(values)
    labels = [-1] * len(values)
    part = -1
    for run in runs:
        if len(run) >= MIN_PART:
            part += 1
            for i in run:
                labels[i] = part
    if part < 0:
        return [0] * len(values)
    first = next(lb for lb in labels if lb >= 0)
    last = first
    for i, lb in enumerate(labels):
        if lb < 0:
            labels[i] = last
        last = labels[i]
    return labels


def analyse_spacing(positions: np.ndarray, headers: Sequence[Dataset], origins: Sequence[np.ndarray] | None = None,
                    normal: np.ndarray | None = None) -> dict:
    """Slice intervals of a series sorted by position, and how likely each large one hides missing slices.

    The series is cut into *parts* where the header says the protocol changed: runs of at least
    ``MIN_PART`` slices with one SliceThickness and SpacingBetweenSlices (an interval between two
    parts is explained by the header and is never a gap: variable-thickness acquisitions). Within a part,
    an interval ``d`` more than 1.5x the part's median interval ``s`` is a *candidate gap*, scored
    with a likelihood that slices were removed there::

        likelihood = fit * support * extent
        fit     = clip(1 - |d/s - k| / 0.25, 0, 1)       (k = round(d/s): a removal leaves a whole multiple)
        support = q**2 * min(1, agreeing / 4) * 0.7**(candidates - 1)
        extent  = 1, or 0.5 where the missing run is longer than the slices present (two separate pieces)
        x 0.5 where the interval lies between two acquisitions (AcquisitionNumber runs of MIN_PART or
              more slices: the table may have moved further on purpose)

    where ``agreeing`` counts the part's intervals other than the candidates within
    ``SPACING_TOLERANCE`` of ``s`` and ``q`` is their share of those intervals: one interval of about
    k x a spacing that all others repeat is strong evidence of removed slices; spacing that varies
    throughout, a regular run too short to establish it, or many candidates in one part (a pattern
    of the acquisition more likely than as many removals) is weak evidence.

    Returns ``{"intervals_mm": {min, median, max}, "parts": [...], "gaps": [...], "explained": [...],
    "tilt_deg": ..., "header_tilt_deg": ...}``; each gap has ``index`` (the slice after it),
    ``interval_mm``, ``expected_mm``, ``ratio``, ``missing``, ``agreeing``, ``likelihood``.
    """
    n = len(positions)
    out: dict = {"gaps": [], "explained": [], "parts": []}
    if n < 2:
        return out
    diffs = np.diff(np.asarray(positions, dtype=float))
    out["intervals_mm"] = {"min": round(float(diffs.min()), 3), "median": round(float(np.median(diffs)), 3),
                           "max": round(float(diffs.max()), 3)}
    # the slice step against the slice normal: gantry tilt shifts the positions in-plane
    if origins is not None and normal is not None and n >= 2:
        step = np.asarray(origins[-1], float) - np.asarray(origins[0], float)
        norm = float(np.linalg.norm(step))
        if norm > 0:
            cos = abs(float(step @ normal)) / norm
            out["tilt_deg"] = round(float(np.degrees(np.arccos(min(1.0, cos)))), 2)
    try:
        tilt = float(headers[0].get("GantryDetectorTilt", 0) or 0)
        if tilt:
            out["header_tilt_deg"] = tilt
    except (TypeError, ValueError):
        pass
    by_protocol = _parts(headers, lambda ds: tuple(_header_value(ds, k) for k in _PART_KEYS))
    by_acquisition = _parts(headers, lambda ds: _header_value(ds, "AcquisitionNumber"))
    part = by_protocol
    within = np.array([part[i] == part[i + 1] for i in range(n - 1)])
    for i in np.nonzero(~within)[0]:
        what = [k for k in _PART_KEYS if _header_value(headers[i], k) != _header_value(headers[i + 1], k)]
        out["explained"].append({"index": int(i + 1), "interval_mm": round(float(diffs[i]), 3),
                                 "because": ", ".join(f"{k} {_header_value(headers[i], k) or '(absent)'} -> "
                                                      f"{_header_value(headers[i + 1], k) or '(absent)'}" for k in what)})
    all_within = diffs[within] if within.any() else diffs
    for p in sorted(set(part)):
        idx = [i for i in range(n - 1) if within[i] and part[i] == p]
        d = diffs[idx] if len(idx) >= 2 else all_within
        s = float(np.median(d)) if len(d) else 0.0
        out["parts"].append({"slices": [int(min(i for i in range(n) if part[i] == p)),
                                        int(max(i for i in range(n) if part[i] == p))], "spacing_mm": round(s, 3)})
        if s <= 0:
            continue
        tol = SPACING_TOLERANCE * s
        cand = [i for i in idx if diffs[i] > 1.5 * s]
        others = [i for i in idx if i not in cand]
        agreeing = sum(abs(diffs[i] - s) <= tol for i in others)
        for i in cand:
            ratio = float(diffs[i] / s)
            k = int(round(ratio))
            fit = float(np.clip(1 - abs(ratio - k) / 0.25, 0, 1))
            q = agreeing / max(1, len(others))
            support = q * q * min(1.0, agreeing / 4) * REPEAT_FACTOR ** (len(cand) - 1)
            extent = 1.0 if k - 1 <= n - 1 else 0.5
            # between two acquisitions (blocks of MIN_PART or more slices): the table may have moved
            # by more than one slice on purpose
            acquisitions = 0.5 if by_acquisition[i] != by_acquisition[i + 1] else 1.0
            out["gaps"].append({"index": int(i + 1), "interval_mm": round(float(diffs[i]), 3),
                                "expected_mm": round(s, 3), "ratio": round(ratio, 2), "missing": max(1, k - 1),
                                "agreeing": int(agreeing), "fit": round(fit, 3), "support": round(support, 3),
                                "extent": extent, "between_acquisitions": acquisitions < 1,
                                "likelihood": round(fit * support * extent * acquisitions, 3)})
    return out


def load_series(paths: Sequence[str | Path], budget: int | str | None = None,
                sizes: Sequence | None = None) -> Image:
    """Stack single-frame instances of one series into a volume sorted by patient position.

    Slices are ordered along the slice normal (row cosine x column cosine) by
    ImagePositionPatient, never by file name or InstanceNumber. Problems that do not stop
    loading are recorded in ``meta["series_problems"]`` (each with ``kind``, ``files``,
    ``message``): a gap (missing slice), duplicated positions (the later instance by
    InstanceNumber is dropped), mixed sizes (the odd instances are dropped) and orientation
    changes. Each slice gets its own rescale slope and intercept.

    ``budget``: the most memory stacking may take (see :mod:`.budget`); the series is refused
    from its headers, before any pixel is decoded, when its instances together go over it.
    ``sizes``: each file's size tags (:func:`.budget.size_tags`), when the caller has read the
    headers already (discovery has); otherwise the headers are read here.
    """
    paths = [Path(p) for p in paths]
    check_series(paths[0].parent, list(sizes) if sizes is not None else [read_header(p, budget) for p in paths],
                 paths, budget)
    decoded = [_decode(p, budget) for p in paths]
    ranges = {p: rng for p, (_, _, rng) in zip(paths, decoded)}
    problems: list[dict] = []

    sizes = Counter(arr.shape[1:] for _, arr, _ in decoded)
    main_size = sizes.most_common(1)[0][0]
    odd = [p for p, (_, arr, _) in zip(paths, decoded) if arr.shape[1:] != main_size]
    if odd:
        problems.append({"kind": "mixed_size", "files": [str(p) for p in odd], "index": None,
                         "message": f"{len(odd)} instance(s) of the series have a size other than "
                                    f"{main_size[0]}x{main_size[1]} and were left out: {', '.join(p.name for p in odd[:5])}"})
    items = [(p, ds, arr) for p, (ds, arr, _) in zip(paths, decoded) if arr.shape[1:] == main_size]

    geos = [_geometry(ds) for _, ds, _ in items]
    missing = [str(p) for (p, _, _), g in zip(items, geos) if g is None]
    if missing:
        problems.append({"kind": "missing_position", "files": missing, "index": None,
                         "message": f"{len(missing)} instance(s) lack ImagePositionPatient/ImageOrientationPatient "
                                    f"and were left out: {', '.join(Path(m).name for m in missing[:5])}"})
    keep = [(it, g) for it, g in zip(items, geos) if g is not None]
    if not keep:
        raise MedForensicsError(paths[0].parent, "no instance of the series has usable patient geometry")
    r0, c0 = keep[0][1][1], keep[0][1][2]
    normal = np.cross(r0, c0)
    tilted = [str(it[0]) for it, g in keep if abs(float(np.dot(np.cross(g[1], g[2]), normal))) < 0.99]
    if tilted:
        problems.append({"kind": "inconsistent_orientation", "files": tilted, "index": None,
                         "message": f"{len(tilted)} instance(s) have another orientation than the rest of the series"})

    def inst_no(ds: Dataset) -> int:
        try:
            return int(getattr(ds, "InstanceNumber", 0) or 0)
        except (TypeError, ValueError):
            return 0

    ranked = sorted(keep, key=lambda t: (round(float(t[1][0] @ normal), 3), inst_no(t[0][1])))
    slices: list[tuple[Path, Dataset, np.ndarray, float, np.ndarray]] = []
    for (p, ds, arr), g in ranked:
        pos = float(g[0] @ normal)
        if slices and abs(pos - slices[-1][3]) < 1e-3:
            problems.append({"kind": "duplicate_position", "files": [str(slices[-1][0]), str(p)], "index": len(slices) - 1,
                             "message": f"{p.name} repeats the position {pos:.2f} mm of {slices[-1][0].name}; "
                                        f"{p.name} was left out"})
            continue
        slices.append((p, ds, arr, pos, g[0]))

    positions = np.array([s[3] for s in slices])
    diffs = np.diff(positions)
    step_mm = float(np.median(diffs)) if len(diffs) else None
    spacing = analyse_spacing(positions, [s[1] for s in slices], [s[4] for s in slices], normal)
    for g in spacing["gaps"]:
        if g["likelihood"] >= GAP_REPORTED:
            k = g["index"]
            problems.append({"kind": "gap", "files": [str(slices[k - 1][0]), str(slices[k][0])], "index": k,
                             "likelihood": g["likelihood"],
                             "message": f"gap of {g['interval_mm']:.2f} mm ({g['ratio']:.1f}x the regular "
                                        f"{g['expected_mm']:.2f} mm of {g['agreeing']} other intervals) between "
                                        f"{slices[k - 1][0].name} and {slices[k][0].name}: about {g['missing']} "
                                        f"slice(s) missing"})
    pixels = np.stack([_to_physical(ds, arr[0]) for _, ds, arr, _, _ in slices]).astype(np.float32)
    unusable = _unusable([s[1] for s in slices], [ranges[s[0]] for s in slices])
    first = slices[0][1]
    rc = _spacing_2d(first)
    if len(slices) > 1:
        step = (slices[-1][4] - slices[0][4]) / (len(slices) - 1)
    else:  # one slice left: its thickness, where usable, else no slice spacing
        t = _number(first.get("SliceThickness")) if length_problem(first, "SliceThickness") is None else None
        step_mm = t
        step = normal * (t or 1.0)
    meta = {
        "stored_range": [ranges[p] for p, _, _, _, _ in slices],
        "series_problems": problems,
        "slice_positions": [float(v) for v in positions],
        "spacing": spacing,
        "transfer_syntax": str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "")),
        "unusable_values": unusable,
        "excluded_files": sorted({f for pr in problems if pr["kind"] != "gap" for f in pr["files"][-1:]}
                                 | {f for pr in problems if pr["kind"] in ("mixed_size", "missing_position") for f in pr["files"]}),
    }
    pixels = _finite(pixels, _units(meta))
    return Image(pixels=pixels, spacing=(step_mm if len(slices) == 1 else step_mm or float(np.linalg.norm(step)),
                                         rc[0], rc[1]),
                 modality=str(getattr(first, "Modality", "") or "OT"), format="dicom",
                 sources=[s[0] for s in slices], uid=_uid(first, "SeriesInstanceUID", slices[0][0].parent.name),
                 datasets=[_strip(s[1]) for s in slices], meta=meta,
                 affine=_affine(slices[0][4], step, r0, c0, rc))
