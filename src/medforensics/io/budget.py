"""The decode budget: how much memory one image may take to load, checked before decoding.

A small file can declare a huge image (a PNG of 30,000 x 30,000 pixels in a few hundred kB, a
DICOM whose Rows, Columns and NumberOfFrames multiply to many GB, a NIfTI header with huge
dimensions) or inflate to a huge one (a deflated-syntax DICOM, a ``.nii.gz``). Each loader asks
this module, from the header alone, how much memory the image will take once decoded and
converted to the float32 pixels of :class:`~medforensics.core.Image`, and refuses above the budget
with a one-line :class:`~medforensics.core.MedForensicsError` before decoding anything:

    scan.dcm: decodes to 1.7 GiB (1 frame x 30000 x 30000 x 1 sample x 2 bytes) and needs about
    15.1 GiB to load, over the 2.0 GiB decode budget; raise it with MEDFORENSICS_DECODE_BUDGET

*Needs about* is the decoded size plus the working copies the loader really makes (the stored
array, pydicom's float64 Modality LUT output, the float32 result, ...): bytes per pixel measured
by peak RSS for each loader path (``WORK_*`` below). Compressed streams whose size the header
does not state (deflated DICOM, ``.nii.gz``) are inflated in bounded chunks and counted before the
reader sees them (:func:`check_deflated_dicom`, :func:`check_gzip`).

The budget is an argument of every loader (``budget=``: bytes, or a string like ``"512M"``); where
none is given it comes from ``MEDFORENSICS_DECODE_BUDGET`` (read by :mod:`medforensics.config`),
else :data:`DEFAULT_BUDGET`.

>>> parse_size("512M"), parse_size("2G"), parse_size("1.5 GiB"), parse_size("1000")
(536870912, 2147483648, 1610612736, 1000)
>>> format_size(2 * 1024**3)
'2.0 GiB'
"""
from __future__ import annotations

import re
import struct
import zlib
from math import prod
from pathlib import Path
from typing import Sequence

from ..core import MedForensicsError, ignoring_warnings

#: 2 GiB: a 16-bit 2D image of up to about 110 megapixels (a 10,000 x 11,000 scan; a 4,000 x 5,000
#: mammogram takes 0.4 GiB), an enhanced multi-frame CT of about 450 slices of 512 x 512, a
#: 512 x 512 x 450 int16 NIfTI volume, a 70-megapixel colour PNG or JPEG. Larger images need a
#: larger budget. (A DICOM series is checked file by file.)
DEFAULT_BUDGET = 2 * 1024**3
VARIABLE = "MEDFORENSICS_DECODE_BUDGET"

# Working bytes per decoded sample beyond the decoded array itself, by loader path: the peak RSS
# of loading large images (4096 x 4096 and larger; numpy 2.4, pydicom 3.0, Pillow 13, nibabel 5.4),
# rounded up. In brackets the measured total bytes per pixel, decoded array included.
#: DICOM, one frame: the pixel data as read, pydicom's float64 Modality LUT output, the float32
#: result (16-bit CT with rescale: 17.0 measured, 2 + 16 estimated).
WORK_DICOM = 16
#: DICOM, several frames: the pixel data as read, float32 frames, their stacked and sorted copies
#: (16-bit, 40 frames of 1024 x 1024 with rescale: 16.2 measured, 2 + 16 estimated).
WORK_DICOM_MULTIFRAME = 16
#: colour DICOM, per sample: the pixel data as read, the float32 samples, the gray result
#: (8-bit RGB: 22.0 per pixel measured, 3 x (1 + 7) estimated).
WORK_DICOM_COLOUR = 7
#: Pillow, gray modes: numpy's copy of Pillow's buffer (as many bytes again as the mode, added by
#: the loader), the float32 gray image (8-bit: 6.1 measured, 7 estimated; 16-bit: 8.1, 9; float32: 12.1, 13).
WORK_RASTER_GRAY = 5
#: Pillow, colour and palette modes (Pillow keeps 3 bands in 4 bytes): the RGB conversion of a
#: palette, numpy's copy, float32 RGB, the channel differences, the gray result (RGB: 27.0
#: measured, 4 + 28 estimated; palette: 28.0, 1 + 28).
WORK_RASTER_COLOUR = 28
#: NIfTI: nibabel's read of the data, the float32 (scaled) volume, its transposed contiguous copy
#: (int16 with scl_slope, 512 x 512 x 256, .nii.gz: 16.0 measured, 2 + 16 estimated).
WORK_NIFTI = 16

_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_CHUNK = 1 << 20


def parse_size(text: str | int) -> int:
    """Bytes of a size such as ``2G``, ``512M``, ``1.5GiB``, ``64k`` or ``1000`` (binary units).

    Raises ``ValueError`` with a message saying what was expected.
    """
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"decode budget must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"decode budget {text!r} is not a size such as 2G, 512M or 1000000")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ValueError(f"decode budget must be positive, got {text!r}")
    return value


def format_size(n: float) -> str:
    """``n`` bytes in words: ``'1.5 MiB'``, ``'10.8 GiB'``."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def resolve(budget: int | str | None = None) -> int:
    """The budget in bytes: ``budget`` when given, else ``MEDFORENSICS_DECODE_BUDGET``, else 2 GiB.

    A malformed value is a :class:`MedForensicsError` naming the variable.
    """
    if budget is None:
        from ..config import settings

        text = settings().decode_budget
        if text is None:
            return DEFAULT_BUDGET
        try:
            return parse_size(text)
        except ValueError as e:
            raise MedForensicsError(None, f"{VARIABLE}: {e}") from None
    try:
        return parse_size(budget)
    except ValueError as e:
        raise MedForensicsError(None, str(e)) from None


def _refuse(path: Path | str, what: str, budget: int) -> MedForensicsError:
    return MedForensicsError(path, f"{what}, over the {format_size(budget)} decode budget; "
                                   f"raise it with {VARIABLE}")


def check(path: Path | str, dims: dict[str, int], itemsize: int, work_per_pixel: int,
          budget: int | str | None = None, note: str = "") -> int:
    """Refuse an image whose decoded array (``dims`` multiplied, times ``itemsize`` bytes) plus
    ``work_per_pixel`` working bytes per pixel goes over the budget; returns the bytes needed.

    ``dims`` names each factor, e.g. ``{"frames": 1, "rows": 512, "columns": 512, "samples": 1}``;
    a dimension below zero is refused as a damaged header. ``note`` is added to the message.

    >>> check("a.png", {"height": 100, "width": 100}, 1, 4, budget="1M")
    50000
    >>> check("a.png", {"height": 30000, "width": 30000, "channels": 1}, 2, 4, budget="2G")
    Traceback (most recent call last):
    ...
    medforensics.core.MedForensicsError: a.png: decodes to 1.7 GiB (30000 x 30000 x 1 channel x 2 bytes) and needs about 5.0 GiB to load, over the 2.0 GiB decode budget; raise it with MEDFORENSICS_DECODE_BUDGET
    """
    limit = resolve(budget)
    for name, n in dims.items():
        if n < 0:
            raise MedForensicsError(path, f"damaged header: {name} is {n}")
    pixels = prod(dims.values())
    decoded = pixels * itemsize
    need = decoded + pixels * work_per_pixel
    if need > limit:
        parts = " x ".join(_factor(name, n) for name, n in dims.items())
        note = f", {note}" if note else ""
        raise _refuse(path, f"decodes to {format_size(decoded)} ({parts} x {itemsize} "
                            f"byte{'s' if itemsize > 1 else ''}{note}) and needs about "
                            f"{format_size(need)} to load", limit)
    return need


def _factor(name: str, n: int) -> str:
    """One factor of a size in words: plain for sizes along an axis, counted for the others."""
    if name in _AXES:
        return str(n)
    return f"{n} {name[:-1] if n == 1 and name.endswith('s') else name}"


_AXES = {"rows", "columns", "width", "height", *"ijklmno"}


def inflated_size(path: Path | str, offset: int, limit: int, *, raw: bool) -> int | None:
    """Bytes that the compressed stream of ``path`` from ``offset`` inflates to, counted in chunks
    of 1 MiB without keeping them; ``None`` as soon as it passes ``limit``.

    ``raw``: a bare deflate stream (DICOM's deflated syntax) rather than gzip (concatenated gzip
    members are followed, as ``gzip`` does). A damaged stream ends the count where it breaks:
    the reader reports the damage itself.
    """
    total = 0
    d = zlib.decompressobj(-zlib.MAX_WBITS if raw else 16 + zlib.MAX_WBITS)
    with open(path, "rb") as f:
        f.seek(offset)
        try:
            while True:
                data = d.unconsumed_tail or f.read(_CHUNK)
                if not data:
                    total += len(d.flush())  # what the last input left pending (at most a window)
                    break
                total += len(d.decompress(data, _CHUNK))
                if total > limit:
                    return None
                if d.eof:
                    if raw:
                        break
                    rest = d.unused_data
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    if rest:
                        total += len(d.decompress(rest, _CHUNK))
                        if total > limit:
                            return None
        except zlib.error:
            return total
    return total


def check_deflated_dicom(path: Path | str, budget: int | str | None = None) -> None:
    """Refuse a DICOM file of the deflated transfer syntax whose dataset inflates beyond the budget.

    pydicom inflates the whole dataset into memory before it parses a single element (and then
    copies the pixel data out of it), so the inflated size is counted first, twice over. Files of
    other syntaxes, and files whose file meta cannot be read (the reader reports those), pass.
    """
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with open(path, "rb") as f, ignoring_warnings():
            read_preamble(f, True)
            meta = _read_file_meta_info(f)
            offset = f.tell()
        deflated = str(meta.get("TransferSyntaxUID", "")).strip("\0 ") == pydicom.uid.DeflatedExplicitVRLittleEndian
    except Exception:  # noqa: BLE001 - not readable as DICOM: the reader says why
        return
    if not deflated:
        return
    limit = resolve(budget)
    n = inflated_size(path, offset, limit // 2, raw=True)
    if n is None:
        raise _refuse(path, f"deflated dataset of {format_size(Path(path).stat().st_size)} inflates to more than "
                            f"{format_size(limit // 2)} (held twice while parsed: over {format_size(limit)})", limit)


def check_gzip(path: Path | str, declared: int, budget: int | str | None = None, slack: int = 16 * 1024**2) -> None:
    """Refuse a gzip file that inflates to more than its header ``declared`` (plus ``slack``) or
    the budget: a decompression bomb behind a small header."""
    limit = min(resolve(budget), declared + slack)
    if inflated_size(path, 0, limit, raw=False) is None:
        raise MedForensicsError(path, f"inflates to more than {format_size(limit)}, far more than the "
                                      f"{format_size(declared)} its header declares (a decompression bomb?)")


def check_dicom(path: Path | str, ds, budget: int | str | None = None) -> int:
    """Refuse a DICOM dataset whose pixel data would decode beyond the budget (from Rows, Columns,
    NumberOfFrames, SamplesPerPixel and BitsAllocated alone); returns the bytes needed.

    Damaged values (not a number, negative) are refused as such."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError, OverflowError) as e:
        raise MedForensicsError(path, f"damaged image header: {' '.join(str(e).split())[:200]}") from None
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        bits = 64 if "DoubleFloatPixelData" in ds else 32
    itemsize = 1
    while itemsize * 8 < bits and itemsize < 8:
        itemsize *= 2
    if spp > 1:
        work = WORK_DICOM_COLOUR
    else:
        work = WORK_DICOM if frames == 1 else WORK_DICOM_MULTIFRAME
    return check(path, {"frames": frames, "rows": rows, "columns": cols, "samples": spp}, itemsize, work, budget)


#: The header tags the decoded size depends on (and the float pixel data elements, by presence).
SIZE_TAGS = ("NumberOfFrames", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated")


def size_tags(ds) -> dict:
    """The tags of ``ds`` that :func:`check_dicom` reads, as a small dict that stands in for it.

    >>> from pydicom import Dataset
    >>> ds = Dataset(); ds.Rows, ds.Columns, ds.BitsAllocated = 512, 512, 16
    >>> size_tags(ds)
    {'Rows': 512, 'Columns': 512, 'BitsAllocated': 16}
    """
    tags = {k: ds.get(k) for k in SIZE_TAGS if ds.get(k) is not None}
    tags.update({k: True for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds})
    return tags


#: Bytes per voxel a series keeps while it is stacked: the decoded slices (float32) and the volume.
WORK_SERIES = 8


def check_series(folder: Path | str, headers: Sequence, paths: Sequence[Path | str],
                 budget: int | str | None = None) -> int:
    """Refuse a series whose instances together would take more than the budget to stack (each
    instance is also checked alone, as :func:`check_dicom` does); returns the bytes needed: every
    voxel's share of the stack (:data:`WORK_SERIES`) plus the largest instance's own decoding.

    >>> from pydicom import Dataset
    >>> ds = Dataset(); ds.Rows, ds.Columns = 512, 512
    >>> check_series("ct/", [ds] * 133, ["a.dcm"] * 133, budget="2G") // 2**20
    270
    >>> check_series("ct/", [ds] * 2000, ["a.dcm"] * 2000, budget="2G")
    Traceback (most recent call last):
    ...
    medforensics.core.MedForensicsError: ct/: its 2000 instances stack to 3.9 GiB (2000 x 512 x 512 voxels x 8 bytes), over the 2.0 GiB decode budget; raise it with MEDFORENSICS_DECODE_BUDGET
    """
    limit = resolve(budget)
    voxels, largest = 0, 0
    for path, ds in zip(paths, headers):
        largest = max(largest, check_dicom(path, ds, budget))
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        voxels += frames * int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("SamplesPerPixel", 1) or 1)
    stacked = voxels * WORK_SERIES
    if stacked + largest > limit:
        first = headers[0] if headers else {}
        shape = f"{len(headers)} x {int(first.get('Rows', 0) or 0)} x {int(first.get('Columns', 0) or 0)} voxels"
        raise _refuse(folder, f"its {len(headers)} instances stack to {format_size(stacked)} ({shape} x "
                              f"{WORK_SERIES} bytes)", limit)
    return stacked + largest


def read_dicom(path: Path | str, **kwargs):
    """``pydicom.dcmread(path, **kwargs)`` through a read-only memory map of the file.

    An element of a damaged file can claim up to 4 GiB; read from a file object, pydicom asks for
    that many bytes and Python allocates them before finding that the file holds fewer. Read from
    a memory map, a read returns what the file holds, so memory stays bounded by the file's size.
    """
    import mmap

    import pydicom

    path = Path(path)
    if path.stat().st_size == 0:
        return pydicom.dcmread(path, **kwargs)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        ds = pydicom.dcmread(mm, **kwargs)
        ds.filename = str(path)
        ds.buffer = None  # values are read now, never deferred: drop the map (and a deflated file's inflated copy)
        return ds
    finally:
        mm.close()


def check_codestream(path: Path | str, ds) -> None:
    """Refuse compressed DICOM pixel data whose own JPEG, JPEG-LS or JPEG 2000 header disagrees
    with Rows, Columns or SamplesPerPixel.

    Decoders size their output from one and fill it from the other: GDCM, which pydicom tries
    first, aborts the whole process (an uncaught C++ exception) on a JPEG-LS stream of 64 x 64
    pixels in a dataset that says 32,768 x 64. Only the first fragment is parsed; a stream whose
    header cannot be parsed is left to the decoders, which report it.
    """
    import pydicom.uid as U
    from pydicom.encaps import generate_fragments
    from pydicom.pixels.utils import _get_jpg_parameters

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    jpeg = {U.JPEGBaseline8Bit, U.JPEGExtended12Bit, U.JPEGLossless, U.JPEGLosslessSV1, U.JPEGLSLossless,
            U.JPEGLSNearLossless}
    j2k = {U.JPEG2000Lossless, U.JPEG2000, getattr(U, "HTJ2KLossless", None), getattr(U, "HTJ2KLosslessRPCL", None),
           getattr(U, "HTJ2K", None)} - {None}
    if ts not in jpeg | j2k or "PixelData" not in ds:
        return
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        allocated, stored = int(ds.get("BitsAllocated", 0) or 0), int(ds.get("BitsStored", 0) or 0)
        high = ds.get("HighBit")
        high = None if high is None or high == "" else int(high)
    except Exception:  # noqa: BLE001 - damaged values: the decoders report them
        return
    # GDCM asserts these (an abort, not an exception): checked before it can see the file
    if stored == 1 and allocated != 1 or allocated == 1 and stored not in (0, 1):
        raise MedForensicsError(path, f"BitsStored {stored} with BitsAllocated {allocated} in compressed pixel data: "
                                      f"damaged or altered header")
    if high is not None and stored and high != stored - 1:
        raise MedForensicsError(path, f"HighBit {high} with BitsStored {stored} (DICOM requires BitsStored - 1): "
                                      f"damaged or altered header")
    try:
        height = width = comps = precision = None
        for k, fragment in enumerate(generate_fragments(ds.PixelData)):  # the first that parses (after the offset table)
            height, width, comps, precision = _stream_size(fragment, ts in jpeg, _get_jpg_parameters)
            if height or k >= 2:
                break
    except Exception:  # noqa: BLE001 - damaged encapsulation: the decoders report it
        return
    # GDCM crashes (a segmentation fault) on a JPEG frame header of 40-bit samples
    allowed = {U.JPEGBaseline8Bit: (8,), U.JPEGExtended12Bit: (8, 12)}.get(ts, range(2, 17))
    if ts in jpeg and precision is not None and (precision not in allowed or precision > max(allocated, 8)):
        raise MedForensicsError(path, f"the {getattr(ts, 'name', ts)} stream has {precision}-bit samples, which that "
                                      f"syntax cannot hold in BitsAllocated {allocated}: damaged or altered")
    if not height or not width or height > 65535 or width > 65535:  # none, or not a size a DICOM frame can have:
        return  # the stream's header is unreadable (pydicom's JPEG2000-embedded-sequence-delimiter.dcm decodes all the same)
    if (height, width) != (rows, cols) or (comps and comps != spp):
        raise MedForensicsError(path, f"the {getattr(ts, 'name', ts)} stream holds {width} x {height} pixels of {comps} "
                                      f"component(s) but Columns x Rows say {cols} x {rows} of {spp} sample(s): "
                                      f"damaged or altered header")



def _stream_size(data: bytes, jpeg: bool, jpg_parameters) -> tuple[int | None, int | None, int | None, int | None]:
    """(height, width, components, bits per sample) from a JPEG/JPEG-LS frame header or a JPEG 2000
    SIZ marker (bits only for JPEG)."""
    if jpeg:
        p = jpg_parameters(data)
        return p.get("height"), p.get("width"), p.get("components"), p.get("precision")
    at = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz Csiz
    if at < 0 or len(data) < at + 42:
        return None, None, None, None
    at += 2
    x, y, xo, yo = struct.unpack(">IIII", data[at + 6:at + 22])
    return y - yo, x - xo, struct.unpack(">H", data[at + 38:at + 40])[0], None
