"""Hostile inputs: decompression bombs and a seeded mutator of real DICOM, PNG, JPEG, TIFF and NIfTI files.

    python benchmarks/fuzz.py [--count 100000] [--seed 0] [--workers 2] [--budget 64M] [--data DIR]
                              [--keep FOLDER] [--limit-gb 10]
    python benchmarks/fuzz.py --bombs [--limit-gb 10]

Derives ``--count`` hostile files from small real samples (a LIDC-IDRI CT slice and the SIIM
radiograph from ``../shared/data``, downsampled to 64 x 64; pydicom's own small test files of
several transfer syntaxes; an 8-bit PNG radiograph re-encoded as 16-bit PNG, colour and palette
PNG, JPEG and 8/16/32-bit TIFF; a TotalSegmentator NIfTI volume cut to 24 x 24 x 12) by bit
flips, truncations, huge, zero and negative dimensions, wrong value representations, broken
sequences, NaN and infinite values and deflate bombs, and scans them with ``medforensics scan
FOLDER --json`` under a memory limit (``RLIMIT_AS`` of ``--limit-gb``). Prints the outcomes (how many
files loaded, how many were refused and why, grouped by the first words of the error), the exit
status, whether stderr held a traceback, and the scan's peak resident memory. The same generator,
with 1,000 files, is ``tests/test_fuzz.py``; the bombs alone are ``tests/test_decode_budget.py``.

Everything written is derived here: no file of the data folder is changed or copied as is.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

_ZEROS = bytes(1 << 20)


# ----------------------------------------------------------------------------- deflate streams of zeros

def deflate_zeros(prefix: bytes, n_zeros: int, suffix: bytes = b"", wrap: str = "raw") -> bytes:
    """``prefix + n_zeros zero bytes + suffix`` compressed (``wrap``: ``raw`` deflate, ``zlib`` or
    ``gzip``) in about ``n_zeros / 1000`` bytes and a fraction of the time zlib would take: after a
    full flush a block of 1 MiB of zeros compresses to the same bytes every time, so it is
    compressed once and repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [c.compress(prefix), c.flush(zlib.Z_FULL_FLUSH)]
    whole, rest = divmod(n_zeros, len(_ZEROS))
    block = c.compress(_ZEROS) + c.flush(zlib.Z_FULL_FLUSH) if whole else b""
    out.append(block * whole)
    out += [c.compress(bytes(rest) + suffix), c.flush()]
    body = b"".join(out)
    if wrap == "raw":
        return body
    if wrap == "zlib":
        a = zlib.adler32(prefix)
        for _ in range(whole):
            a = zlib.adler32(_ZEROS, a)
        a = zlib.adler32(bytes(rest) + suffix, a)
        return b"\x78\xda" + body + struct.pack(">I", a)
    crc = zlib.crc32(prefix)
    for _ in range(whole):
        crc = zlib.crc32(_ZEROS, crc)
    crc = zlib.crc32(bytes(rest) + suffix, crc)
    size = (len(prefix) + n_zeros + len(suffix)) & 0xFFFFFFFF
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack("<II", crc, size)


# ----------------------------------------------------------------------------- DICOM building blocks

def _dicom_dataset(rows: int = 64, cols: int = 64, pixels: np.ndarray | None = None):
    """A small, valid MR image dataset with fresh UIDs (pixels: zeros unless given)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    arr = np.zeros((rows, cols), np.uint16) if pixels is None else pixels
    ds.PixelData = arr.astype("<u2").tobytes()
    return ds


def _dataset_bytes(ds) -> bytes:
    """The dataset (without file meta) in explicit VR little endian."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def _meta_bytes(meta) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + buf.getvalue()


def dicom_deflate_bomb(path: Path, inflate: int) -> Path:
    """A deflated-syntax DICOM image of 64 x 64 pixels whose dataset also holds a private OB
    element of ``inflate`` zero bytes: about ``inflate / 1000`` bytes on disk. Its header claims a
    small image, so only counting the inflated stream finds it."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = _dicom_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    creator = struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", 8) + b"FUZZBOMB"
    n = min(inflate, 0xFFFFFFFE) & ~1
    big = struct.pack("<HH2sHI", 0x7FE1, 0x1000, b"OB", 0, n)
    Path(path).write_bytes(_meta_bytes(ds.file_meta) + deflate_zeros(_dataset_bytes(ds) + creator + big, n, wrap="raw"))
    return Path(path)


def dicom_huge_dims(path: Path, rows: int = 30000, cols: int = 30000, frames: int = 1, spp: int = 3) -> Path:
    """A JPEG-baseline DICOM whose header claims ``frames x rows x cols x spp`` 8-bit samples and
    whose pixel data is one fragment of a few bytes."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    ds = _dicom_dataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, spp
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    if spp == 3:
        ds.PhotometricInterpretation, ds.PlanarConfiguration = "YBR_FULL_422", 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(64) + b"\xff\xd9"] * frames)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


# ----------------------------------------------------------------------------- NIfTI, PNG, TIFF bombs

def _nifti_header(shape: tuple[int, ...], dtype: str, vox_offset: int) -> bytes:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.dtype(dtype))
    hdr["vox_offset"] = vox_offset
    hdr["magic"] = b"n+1"
    return hdr.binaryblock


def nifti_dims_bomb(path: Path, shape: tuple[int, int, int] = (1024, 1024, 1024), dtype: str = "int16") -> Path:
    """A ``.nii.gz`` volume of zeros whose header and data really are ``shape``: 1,000 times
    smaller on disk than in memory."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    Path(path).write_bytes(deflate_zeros(_nifti_header(shape, dtype, 352) + bytes(4), n, wrap="gzip"))
    return Path(path)


def nifti_extension_bomb(path: Path, inflate: int) -> Path:
    """A ``.nii.gz`` of 16 x 16 x 16 voxels whose one header extension says it is ``inflate``
    bytes long and is: nibabel reads it whole before the data."""
    esize = min(inflate, 2**31 - 16) & ~15
    head = _nifti_header((16, 16, 16), "int16", 352 + 16) + b"\x01\0\0\0" + struct.pack("<ii", esize, 6)
    Path(path).write_bytes(deflate_zeros(head, esize - 8 + 16 * 16 * 16 * 2, wrap="gzip"))
    return Path(path)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(path: Path, width: int, height: int, bit_depth: int = 16, colour: bool = False) -> Path:
    """A gray (or RGB) PNG of ``width x height`` zeros at ``bit_depth`` (8 or 16): a few hundred kB."""
    row = 1 + width * bit_depth // 8 * (3 if colour else 1)
    data = deflate_zeros(b"", row * height, wrap="zlib")
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 2 if colour else 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", data)
                           + _png_chunk(b"IEND", b""))
    return Path(path)


def tiff_bomb(path: Path, width: int, height: int) -> Path:
    """A 32-bit float gray TIFF of ``width x height`` zeros in one deflate-compressed strip."""
    data = deflate_zeros(b"", width * height * 4, wrap="zlib")
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 32), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, height), (279, 4, 1, len(data)), (339, 3, 1, 3)]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        value = data_at if tag == 273 else value
        ifd += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
    Path(path).write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + ifd + b"\0\0\0\0" + data)
    return Path(path)


def write_bombs(folder: Path, scale: str = "test") -> dict[str, Path]:
    """Every kind of bomb, in ``folder``: ``scale="test"`` sizes them for a 64 MiB budget (each well
    over it, all written in about a second); ``"issue"`` to the sizes of issue 18 (GBs, for the
    default 2 GiB budget)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    big = scale == "issue"
    return {
        "dicom_deflate": dicom_deflate_bomb(folder / "deflate_bomb.dcm", (4 << 30) if big else (1 << 30)),
        "dicom_dims": dicom_huge_dims(folder / "huge_dims.dcm"),
        "nifti_dims": nifti_dims_bomb(folder / "dims_bomb.nii.gz", (1024, 1024, 1024) if big else (512, 512, 256)),
        "nifti_extension": nifti_extension_bomb(folder / "extension_bomb.nii.gz", (2 << 30) - 64 if big else 1 << 30),
        "png16": png_bomb(folder / "bomb16.png", *((12000, 12000) if big else (6000, 6000))),
        "png_rgb": png_bomb(folder / "bomb_rgb.png", *((13000, 13000) if big else (3000, 3000)), bit_depth=8, colour=True),
        "tiff": tiff_bomb(folder / "bomb.tif", *((12000, 12000) if big else (6000, 6000))),
        "png_pillow_limit": png_bomb(folder / "over_pillow_limit.png", 30000, 30000, 8),
    }


# ----------------------------------------------------------------------------- seeds: small real samples

def _downsample(arr: np.ndarray, side: int = 64) -> np.ndarray:
    step = max(1, max(arr.shape[:2]) // side)
    return np.ascontiguousarray(arr[::step, ::step][:side, :side])


def seeds(data: Path | None) -> list[tuple[str, str, bytes]]:
    """``(name, suffix, bytes)`` of the seeds: pydicom's small test files of several syntaxes
    (always there), and, where the data folder holds them, a LIDC-IDRI CT slice, the SIIM
    radiograph and an MHH radiograph (PNG, 16-bit PNG, RGB and palette PNG, JPEG, 8/16/32-bit
    and two-page TIFF) at 64 x 64, and a TotalSegmentator CT volume at 24 x 24 x 12 (.nii.gz and
    .nii, int16 and float32)."""
    import pydicom
    from PIL import Image as PILImage
    from pydicom.data import get_testdata_file

    out: list[tuple[str, str, bytes]] = []
    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "emri_small_RLE.dcm", "SC_rgb_rle.dcm",
                 "MR_small_jpeg_ls_lossless.dcm", "SC_jpeg_no_color_transform.dcm", "image_dfl.dcm", "SC_rgb.dcm"):
        p = get_testdata_file(name)
        if p is not None:
            out.append((name.removesuffix(".dcm"), ".dcm", Path(p).read_bytes()))
    if data is None or not Path(data).is_dir():
        return out
    data = Path(data)
    for label, folder in (("lidc", data / "ct" / "lidc-idri"), ("siim", data / "xray" / "siim")):
        f = next(iter(sorted(folder.rglob("*.dcm"))), None) if folder.is_dir() else None
        if f is None:
            continue
        ds = pydicom.dcmread(f)
        arr = _downsample(ds.pixel_array)
        ds.Rows, ds.Columns = arr.shape
        ds.PixelData = arr.tobytes()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((label, ".dcm", buf.getvalue()))
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((label + "_deflated", ".dcm", buf.getvalue()))
    png = next(iter(sorted((data / "xray" / "mhh-covid19").rglob("*.png"))), None)
    if png is not None:
        g = _downsample(np.asarray(PILImage.open(png).convert("L")))
        variants = {"png8": (PILImage.fromarray(g), "PNG", ".png"),
                    "png16": (PILImage.fromarray(g.astype(np.uint16) * 257), "PNG", ".png"),
                    "pngrgb": (PILImage.fromarray(np.stack([g, g, g[::-1]], -1)), "PNG", ".png"),
                    "pngpal": (PILImage.fromarray(g).convert("P"), "PNG", ".png"),
                    "jpeg": (PILImage.fromarray(g), "JPEG", ".jpg"),
                    "jpegrgb": (PILImage.fromarray(np.stack([g, g[::-1], g], -1)), "JPEG", ".jpg"),
                    "tiff8": (PILImage.fromarray(g), "TIFF", ".tif"),
                    "tiff16": (PILImage.fromarray(g.astype(np.uint16) * 257), "TIFF", ".tif"),
                    "tifff": (PILImage.fromarray(g.astype(np.float32)), "TIFF", ".tif")}
        for label, (im, fmt, suffix) in variants.items():
            buf = io.BytesIO()
            im.save(buf, fmt)
            out.append((label, suffix, buf.getvalue()))
        buf = io.BytesIO()
        PILImage.fromarray(g).save(buf, "TIFF", save_all=True, append_images=[PILImage.fromarray(g[::-1])])
        out.append(("tiffpages", ".tif", buf.getvalue()))
    nii = next(iter(sorted((data / "ct" / "nifti").glob("*_sm.nii.gz"))), None)
    if nii is not None:
        import gzip

        import nibabel as nib
        v = np.asarray(nib.load(str(nii)).dataobj)
        step = [max(1, s // n) for s, n in zip(v.shape, (24, 24, 12))]
        v = np.ascontiguousarray(v[::step[0], ::step[1], ::step[2]][:24, :24, :12])
        for label, arr in (("nifti16", v.astype(np.int16)), ("niftif", v.astype(np.float32))):
            im = nib.Nifti1Image(arr, np.diag([1.5, 1.5, 3.0, 1.0]))
            raw = im.header.binaryblock + bytes(4) + arr.tobytes(order="F")
            hdr = nib.Nifti1Header.from_header(im.header)
            hdr.set_data_shape(arr.shape)
            out.append((label, ".nii", raw))
            out.append((label, ".nii.gz", gzip.compress(raw, 6)))
    return out


# ----------------------------------------------------------------------------- mutations

_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
        b"OL", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"UN", b"US", b"UT", b"ZZ"]
_HUGE = [0, 1, 2, 3, 255, 256, 32767, 32768, 65535, 2**31 - 1, 2**31, 2**32 - 1]
_BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "1e308", "-1e308", "1e-320", "0", "-0", "-1", "-2.5", "", "abc", "1\\2"]


def _bitflips(rng: random.Random, b: bytearray, n: int) -> None:
    if not b:  # truncated to nothing already: something to flip
        b.extend(rng.randbytes(rng.randrange(1, 64)))
    for _ in range(n):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)


def _bytes_ops(rng: random.Random, b: bytearray) -> str:
    """Format-blind damage: bit flips, truncation, a cut or repeated chunk, random bytes."""
    op = rng.choice(["flip", "flip", "truncate", "cut", "repeat", "random_tail"])
    if len(b) < 8:
        op = "flip"
    if op == "flip":
        _bitflips(rng, b, rng.choice([1, 2, 8, 64]))
    elif op == "truncate":
        del b[rng.randrange(len(b)):]
    elif op == "cut":
        i = rng.randrange(len(b))
        del b[i:i + rng.randrange(1, 512)]
    elif op == "repeat":
        i = rng.randrange(len(b))
        b[i:i] = b[i:i + rng.randrange(1, 4096)] * rng.randrange(1, 4)
    else:
        i = rng.randrange(len(b))
        b[i:] = rng.randbytes(rng.randrange(1, 2048))
    return op


def _dicom_tamper(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    """A change of the dataset that pydicom still writes: absurd or non-finite values, missing
    or mismatched image attributes, a broken transfer syntax, NaN float pixels, a sequence."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    except Exception:  # noqa: BLE001 - already damaged beyond pydicom: damage the bytes instead
        b = bytearray(raw)
        return bytes(b), _bytes_ops(rng, b)
    op = rng.choice(["us", "number", "delete", "syntax", "float_pixels", "sequence", "photometric", "frames",
                     "pixel_length"])
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        return _tamper(rng, ds, op, raw)
    except Exception:  # noqa: BLE001 - pydicom will not hold or write it (already damaged): damage the bytes
        b = bytearray(raw)
        return bytes(b), op + "(unset) " + _bytes_ops(rng, b)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


def _tamper(rng: random.Random, ds, op: str, raw: bytes) -> tuple[bytes, str]:
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    if op == "us":
        key = rng.choice(["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                          "SamplesPerPixel", "PlanarConfiguration"])
        setattr(ds, key, rng.choice(_HUGE[:9]))
        op += ":" + key
    elif op == "number":
        key = rng.choice(["RescaleSlope", "RescaleIntercept", "SliceThickness", "WindowCenter", "WindowWidth",
                          "PixelSpacing", "ImagerPixelSpacing", "ImagePositionPatient", "ImageOrientationPatient",
                          "SpacingBetweenSlices"])
        n = {"PixelSpacing": 2, "ImagerPixelSpacing": 2, "ImagePositionPatient": 3, "ImageOrientationPatient": 6}.get(key, 1)
        vals = [rng.choice(_BAD_NUMBERS) for _ in range(rng.choice([n, n, max(1, n - 1)]))]
        ds.add_new(key, "LO", "\\".join(vals))  # written as text whatever the VR: some values are no DS
        op += ":" + key
    elif op == "delete":
        key = rng.choice(["PixelData", "Rows", "Columns", "BitsAllocated", "PhotometricInterpretation",
                          "SamplesPerPixel", "SOPClassUID", "Modality"])
        if key in ds:
            del ds[key]
        op += ":" + key
    elif op == "syntax":  # the dataset stays explicit VR little endian, whatever the meta says
        meta = ds.file_meta
        del ds.file_meta
        body = _dataset_bytes(ds)
        meta.TransferSyntaxUID = rng.choice([
            pydicom.uid.JPEGBaseline8Bit, pydicom.uid.RLELossless, pydicom.uid.JPEG2000,
            pydicom.uid.ImplicitVRLittleEndian, pydicom.uid.ExplicitVRBigEndian, "1.2.3.4", "",
            pydicom.uid.JPEGExtended12Bit, pydicom.uid.JPEGLSLossless, pydicom.uid.DeflatedExplicitVRLittleEndian])
        return _meta_bytes(meta) + body, op
    elif op == "float_pixels":
        rows, cols = int(ds.get("Rows", 8) or 8), int(ds.get("Columns", 8) or 8)
        vals = np.array([np.nan, np.inf, -np.inf, 1e38, -1e38, 0.0], np.float32)
        arr = rng.choice(vals.tolist()) * np.ones(rows * cols, np.float32)
        arr[:: max(1, rng.randrange(1, 7))] = np.nan
        if "PixelData" in ds:
            del ds["PixelData"]
        ds.BitsAllocated, ds.SamplesPerPixel = 32, 1
        ds.add_new("FloatPixelData", "OF", arr.astype("<f4").tobytes())
    elif op == "sequence":
        inner = Dataset()
        inner.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
        inner.PixelSpacing = ["nan", "1"]
        seq = Sequence([inner] * rng.randrange(1, 4))
        key = rng.choice(["ReferencedImageSequence", "PerFrameFunctionalGroupsSequence",
                          "SharedFunctionalGroupsSequence", "ModalityLUTSequence"])
        ds.add_new(key, "SQ", seq)
        op += ":" + key
    elif op == "photometric":
        ds.PhotometricInterpretation = rng.choice(["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "XYZ", ""])
    elif op == "frames":
        ds.add_new("NumberOfFrames", rng.choice(["IS", "LO"]), rng.choice(["0", "-1", "-5", "2", "1000", "2147483647", "abc", "1.5"])
                   if rng.random() < 0.8 else "1")
    elif op == "pixel_length" and "PixelData" in ds:
        pd = bytes(ds.PixelData)
        ds.PixelData = pd[: rng.randrange(len(pd) + 1)] if rng.random() < 0.6 else pd + pd[:rng.randrange(1, 99)]
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom refused to write it: keep the bytes of the seed
        return raw, op + "(unwritten)"
    return buf.getvalue(), op


def _dicom_bytes_ops(rng: random.Random, b: bytearray) -> str:
    """Damage at the byte level that knows DICOM: a wrong VR, a wild length, a broken item."""
    op = rng.choice(["vr", "length", "item", "delimiter"])
    if op == "vr":
        hits = [i for i in range(132, max(132, len(b) - 4), 2) if bytes(b[i + 4:i + 6]) in _VRS][:400]
        if hits:
            i = rng.choice(hits)
            b[i + 4:i + 6] = rng.choice(_VRS)
    elif op == "length":
        hits = [i for i in range(132, max(132, len(b) - 8), 2) if bytes(b[i + 4:i + 6]) in _VRS][:400]
        if hits:
            i = rng.choice(hits)
            if bytes(b[i + 4:i + 6]) in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"OD", b"OL"):
                b[i + 8:i + 12] = struct.pack("<I", rng.choice([0, 1, 0xFFFFFFFF, 0xFFFFFFF0, 2**31, rng.randrange(2**32)]))
            else:
                b[i + 6:i + 8] = struct.pack("<H", rng.choice([0, 1, 0xFFFF, rng.randrange(2**16)]))
    elif op == "item":
        hits = [i for i in range(len(b) - 8) if b[i:i + 4] == b"\xfe\xff\x00\xe0"][:200]
        if hits:
            i = rng.choice(hits)
            b[i + 4:i + 8] = struct.pack("<I", rng.choice([0, 1, 7, 0xFFFFFFF0, 0x7FFFFFFF, rng.randrange(2**32)]))
    else:
        hits = [i for i in range(len(b) - 8) if b[i:i + 4] in (b"\xfe\xff\xdd\xe0", b"\xfe\xff\x0d\xe0")][:200]
        if hits:
            i = rng.choice(hits)
            del b[i:i + 8]
    return op


def _png_ops(rng: random.Random, b: bytearray) -> str:
    """PNG: absurd IHDR fields (with a valid CRC), damaged chunks with their CRC fixed, junk chunks."""
    op = rng.choice(["ihdr", "ihdr", "chunk", "text"])
    if len(b) < 33 or b[12:16] != b"IHDR":
        return _bytes_ops(rng, b)
    if op == "ihdr":
        field = rng.choice(["w", "h", "depth", "colour", "interlace"])
        if field in "wh":
            b[16 + (field == "h") * 4:20 + (field == "h") * 4] = struct.pack(">I", rng.choice(_HUGE))
        else:
            b[{"depth": 24, "colour": 25, "interlace": 28}[field]] = rng.choice([0, 1, 2, 3, 4, 6, 7, 8, 16, 255])
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
        op += ":" + field
    elif op == "chunk":
        i = 8
        chunks = []
        while i + 8 <= len(b):
            n = struct.unpack(">I", b[i:i + 4])[0]
            chunks.append((i, n))
            i += 12 + n
        i, n = rng.choice(chunks)
        if n:
            body = bytearray(b[i + 8:i + 8 + n])
            _bitflips(rng, body, rng.choice([1, 4, 32]))
            b[i + 8:i + 8 + n] = body
            b[i + 8 + n:i + 12 + n] = struct.pack(">I", zlib.crc32(bytes(b[i + 4:i + 8 + n])))
    else:
        chunk = rng.choice([_png_chunk(b"zTXt", b"k\0\0" + deflate_zeros(b"", 1 << 24, wrap="zlib")),
                            _png_chunk(b"iCCP", b"p\0\0" + deflate_zeros(b"", 1 << 24, wrap="zlib")),
                            _png_chunk(b"tEXt", b"Software\0" + rng.randbytes(64)),
                            _png_chunk(b"IDAT", deflate_zeros(b"", 1 << 24, wrap="zlib"))])
        b[33:33] = chunk
    return op


def _jpeg_ops(rng: random.Random, b: bytearray) -> str:
    """JPEG: absurd frame header (height, width, components, precision), damaged segments."""
    sof = next((i for i in range(2, len(b) - 10) if b[i] == 0xFF and b[i + 1] in (0xC0, 0xC1, 0xC2)), None)
    if sof is None or rng.random() < 0.3:
        return _bytes_ops(rng, b)
    field = rng.choice(["h", "w", "precision", "components"])
    if field == "h":
        b[sof + 5:sof + 7] = struct.pack(">H", rng.choice([0, 1, 65535, 40000]))
    elif field == "w":
        b[sof + 7:sof + 9] = struct.pack(">H", rng.choice([0, 1, 65535, 40000]))
    elif field == "precision":
        b[sof + 4] = rng.choice([0, 1, 12, 16, 255])
    else:
        b[sof + 9] = rng.choice([0, 2, 4, 255])
    return "sof:" + field


def _tiff_ops(rng: random.Random, b: bytearray) -> str:
    """TIFF: absurd IFD entries (sizes, bits, strips, compression), IFD loops."""
    if len(b) < 16 or b[:4] != b"II*\x00":
        return _bytes_ops(rng, b)
    ifd = struct.unpack("<I", b[4:8])[0]
    if ifd + 2 > len(b):
        return _bytes_ops(rng, b)
    n = struct.unpack("<H", b[ifd:ifd + 2])[0]
    entries = [ifd + 2 + 12 * k for k in range(n) if ifd + 14 + 12 * k <= len(b)]
    if not entries or rng.random() < 0.15:
        b[4:8] = struct.pack("<I", rng.choice([0, 8, len(b) - 2, 2**31]))
        return "ifd_offset"
    e = rng.choice(entries)
    tag = struct.unpack("<H", b[e:e + 2])[0]
    b[e + 4:e + 8] = struct.pack("<I", rng.choice([0, 1, 2, 65535, 2**31]))  if rng.random() < 0.3 else b[e + 4:e + 8]
    b[e + 8:e + 12] = struct.pack("<I", rng.choice(_HUGE + [len(b), len(b) - 1]))
    return f"tag:{tag}"


def _nifti_ops(rng: random.Random, b: bytearray) -> str:
    """NIfTI-1: absurd dim, datatype, bitpix, vox_offset, scaling and spacing; NaN and inf data."""
    if len(b) < 352:
        return _bytes_ops(rng, b)
    field = rng.choice(["dim", "dim", "dim0", "datatype", "vox_offset", "scl", "pixdim", "nan_data", "sform"])
    if field == "dim":
        k = rng.randrange(1, 8)
        b[40 + 2 * k:42 + 2 * k] = struct.pack("<h", rng.choice([0, -1, -32768, 32767, 4096, 2]))
    elif field == "dim0":
        b[40:42] = struct.pack("<h", rng.choice([0, -1, 4, 7, 8, 100]))
    elif field == "datatype":
        b[70:72] = struct.pack("<h", rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1536, 2304, 9999]))
        if rng.random() < 0.5:
            b[72:74] = struct.pack("<h", rng.choice([0, 1, 8, 16, 64, 128]))
    elif field == "vox_offset":
        b[108:112] = struct.pack("<f", rng.choice([0.0, -352.0, 1e30, float("nan"), float("inf"), 353.0, 2.0**31]))
    elif field == "scl":
        b[112:116] = struct.pack("<f", rng.choice([0.0, float("nan"), float("inf"), -1e38, 1e38]))
        b[116:120] = struct.pack("<f", rng.choice([0.0, float("nan"), float("-inf"), 1e38]))
    elif field == "pixdim":
        k = rng.randrange(1, 4)
        b[76 + 4 * k:80 + 4 * k] = struct.pack("<f", rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e-38]))
    elif field == "sform":
        b[254:256] = struct.pack("<h", rng.choice([0, 1, 2, 4, 99]))
        k = rng.randrange(12)
        b[280 + 4 * k:284 + 4 * k] = struct.pack("<f", rng.choice([float("nan"), float("inf"), 0.0, 1e38]))
    else:
        dtype = struct.unpack("<h", b[70:72])[0]
        if dtype == 16 and len(b) > 356:  # float32: put NaN and inf in the data
            data = np.frombuffer(bytes(b[352:352 + (len(b) - 352) // 4 * 4]), "<f4").copy()
            data[rng.randrange(len(data))::rng.randrange(1, 9)] = rng.choice([np.nan, np.inf, -np.inf, 3e38])
            b[352:352 + data.nbytes] = data.tobytes()
        else:
            b[112:116] = struct.pack("<f", float("nan"))
    return "nifti:" + field


def mutate(rng: random.Random, name: str, suffix: str, raw: bytes) -> tuple[str, bytes, list[str]]:
    """One hostile file from a seed: one to three mutations; returns ``(suffix, bytes, ops)``."""
    import gzip

    ops: list[str] = []
    gz = suffix == ".nii.gz"
    data = gzip.decompress(raw) if gz else raw
    if suffix == ".dcm":  # an instance of its own: one file, one item of the scan
        data = _new_uids(data)
    for _ in range(rng.choice([1, 1, 2, 3])):
        b = bytearray(data)
        r = rng.random()
        if suffix == ".dcm":
            if r < 0.45:
                data, op = _dicom_tamper(rng, bytes(b))
                ops.append(op)
                continue
            op = _dicom_bytes_ops(rng, b) if r < 0.75 else _bytes_ops(rng, b)
        elif suffix == ".png":
            op = _png_ops(rng, b) if r < 0.6 else _bytes_ops(rng, b)
        elif suffix == ".jpg":
            op = _jpeg_ops(rng, b) if r < 0.6 else _bytes_ops(rng, b)
        elif suffix == ".tif":
            op = _tiff_ops(rng, b) if r < 0.6 else _bytes_ops(rng, b)
        else:
            op = _nifti_ops(rng, b) if r < 0.7 else _bytes_ops(rng, b)
        ops.append(op)
        data = bytes(b)
    if gz:
        data = gzip.compress(data, 1) if rng.random() < 0.9 else _bytes_damaged_gzip(rng, data)
    return suffix, data, ops


def _new_uids(raw: bytes) -> bytes:
    """The seed with fresh Series and SOP Instance UIDs, so that no two files form one series."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _bytes_damaged_gzip(rng: random.Random, data: bytes) -> bytes:
    import gzip

    b = bytearray(gzip.compress(data, 1))
    _bytes_ops(rng, b)
    return bytes(b)


def generate(folder: Path, count: int, seed: int = 0, data: Path | None = None, bomb_every: int = 50) -> dict[str, str]:
    """Write ``count`` hostile files into ``folder`` (which must be empty or absent); returns
    ``{file name: what was done}``. One file in ``bomb_every`` is a decompression bomb (deflated
    DICOM, ``.nii.gz`` of huge dimensions or a huge extension, 16-bit PNG, float TIFF) sized
    for a budget of 64 MiB; the others are seeds mutated by :func:`mutate`."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _generate(Path(folder), count, seed, data, bomb_every)


def _generate(folder: Path, count: int, seed: int, data: Path | None, bomb_every: int) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = seeds(data)
    bombs = [("deflate", ".dcm", lambda p: dicom_deflate_bomb(p, rng.choice([256, 512]) << 20)),
             ("dims", ".dcm", lambda p: dicom_huge_dims(p, rng.choice([20000, 65535]), rng.choice([20000, 65535]),
                                                      rng.choice([1, 1000]), rng.choice([1, 3]))),
             ("niftidims", ".nii.gz", lambda p: nifti_dims_bomb(p, (512, 512, rng.choice([128, 256])))),
             ("niftiext", ".nii.gz", lambda p: nifti_extension_bomb(p, 256 << 20)),
             ("png16", ".png", lambda p: png_bomb(p, 6000, rng.choice([3000, 6000]))),
             ("tiff", ".tif", lambda p: tiff_bomb(p, 4000, 4000))]
    done: dict[str, str] = {}
    for i in range(count):
        if bomb_every and i % bomb_every == bomb_every - 1:
            label, suffix, make = bombs[(i // bomb_every) % len(bombs)]
            fname = f"{i:06d}_bomb_{label}{suffix}"
            make(folder / fname)
            done[fname] = "bomb " + label
            continue
        name, suffix, raw = pool[i % len(pool)]
        suffix, out, ops = mutate(rng, name, suffix, raw)
        fname = f"{i:06d}_{name}{suffix}"
        (folder / fname).write_bytes(out)
        done[fname] = " ".join(ops)
    return done


# ----------------------------------------------------------------------------- running a scan and the command line

def scan_limited(paths: list[Path], json_out: Path, args: list[str], budget: str, limit_bytes: int) -> dict:
    """``medforensics scan PATHS --json JSON_OUT ARGS`` in a process with ``RLIMIT_AS`` of
    ``limit_bytes`` and ``MEDFORENSICS_DECODE_BUDGET=budget``: exit status, wall seconds, peak RSS
    of the process tree (``wait4``), stderr."""
    from medforensics.config import DECODE_BUDGET

    env = {**os.environ, DECODE_BUDGET: budget, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    err_path = json_out.with_name(json_out.name + ".stderr")
    t0 = time.perf_counter()
    with open(err_path, "w") as err, open(os.devnull, "w") as devnull:
        p = subprocess.Popen([sys.executable, "-m", "medforensics", "scan", *map(str, paths), "--json", str(json_out),
                              *args], stdout=devnull, stderr=err, env=env,
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes)))
        _, status, usage = os.wait4(p.pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status), "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": usage.ru_maxrss // 1024, "stderr": err_path.read_text()}


def _bombs_report(work: Path, budget: str, limit: int) -> None:
    files = write_bombs(work / "bombs", "issue")
    print(f"bombs at the sizes of issue 18, each scanned alone; RLIMIT_AS {limit / 2**30:.0f} GiB, budget {budget}")
    for name, path in files.items():
        r = scan_limited([path], work / f"{name}.jsonl", ["-q"], budget, limit)
        errors = [ln for ln in r["stderr"].splitlines() if ln.startswith("error")]
        print(f"{name:18s} {path.stat().st_size / 1e6:6.2f} MB  exit {r['exit']}  {r['wall_s']:5.1f} s  "
              f"peak RSS {r['peak_rss_mb']:6d} MB  traceback {'Traceback' in r['stderr']}  "
              f"{(errors[0] if errors else '(no error)')[:160]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000, help="hostile files to derive (default 100,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="scan --workers")
    ap.add_argument("--budget", default=None, help="MEDFORENSICS_DECODE_BUDGET for the scan (default 64M; with --bombs 2G)")
    ap.add_argument("--limit-gb", type=float, default=10.0,
                    help="RLIMIT_AS of each scan process, GiB (default 10: torch takes 4.5, and discovery keeps every "
                         "DICOM header, about 40 kB each, which forked workers inherit)")
    ap.add_argument("--data", type=Path, default=None, help="the data folder (default: the project's data root)")
    ap.add_argument("--keep", type=Path, default=None, help="write the files and results here (a new folder) and keep them")
    ap.add_argument("--bombs", action="store_true", help="instead: scan each bomb at the sizes of issue 18 alone")
    a = ap.parse_args(argv)
    if a.data is None:
        from medforensics.datapath import data_root
        a.data = data_root()
    limit = int(a.limit_gb * 1024**3)
    a.budget = a.budget or ("2G" if a.bombs else "64M")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if a.keep is None else a.keep
        if a.keep is not None:
            work.mkdir(parents=True, exist_ok=False)
        if a.bombs:
            _bombs_report(work, a.budget, limit)
            return 0
        t0 = time.perf_counter()
        done = generate(work / "files", a.count, a.seed, a.data)
        t_gen = time.perf_counter() - t0
        out = work / "scan.jsonl"
        r = scan_limited([work / "files"], out, ["--workers", str(a.workers), "-q"], a.budget, limit)
        records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        per_file = Counter(Path(rec["path"]).name for rec in records)
        outcome: Counter = Counter()
        for rec in records:
            if not rec["errors"]:
                outcome["scored"] += 1
            elif rec.get("label") is not None:
                for e in rec["errors"]:
                    what = e.split(": ", 1)[-1]
                    what = what.split(":")[0] if what.startswith("detector ") else " ".join(what.split()[:4])
                    outcome["scored, with: " + re.sub(r"[0-9][0-9.]*", "N", what)] += 1
            else:
                words = rec["errors"][0].split(": ", 1)[-1].split()[:4]
                outcome["refused: " + " ".join(re.sub(r"[0-9][0-9.]*", "N", w) for w in words)] += 1
        multi_line = sum("\n" in e for rec in records for e in rec["errors"])
        print(f"{len(done)} files derived in {t_gen:.1f} s; scanned in {r['wall_s']} s with {a.workers} workers "
              f"(exit {r['exit']}, peak RSS {r['peak_rss_mb']} MB, RLIMIT_AS {a.limit_gb:g} GiB, budget {a.budget})")
        print(f"JSON lines: {len(records)}; files without a line: {len(set(done) - set(per_file))}; "
              f"files with several: {sum(v > 1 for v in per_file.values())}; multi-line errors: {multi_line}; "
              f"traceback in stderr: {'Traceback' in r['stderr']}")
        for what, n in outcome.most_common(40):
            print(f"{n:7d}  {what}")
        ok = (r["exit"] in (0, 1) and "Traceback" not in r["stderr"] and len(records) == len(done)
              and set(per_file) == set(done) and not multi_line)
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
