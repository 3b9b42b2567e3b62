"""Writing synthetic radiographs as PNG, JPEG or DICOM files that look like real ones, each with
its ground truth in a JSON file beside it (:func:`write_synthetic`, :func:`write_samples`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ...core import MedForensicsError, ignoring_warnings
from ...io.write import new_file
from .dicom import _dicom_cr, _dicom_like
from .finish import _resolve_references, _synthesize_indices
from .model import SynthModel, load_model
from .reference import FORMATS, Reference

__all__ = ["write_synthetic", "write_samples"]


def write_synthetic(pixels: np.ndarray, out_path: str | Path, fmt: str = "png", *, bit_depth: int | None = None,
                    jpeg_quality: int | None = None, reference: Reference | None = None,
                    dicom_style: str = "like", seed: int = 0, ground_truth: dict[str, Any] | None = None) -> Path:
    """Write stored pixel values as a PNG, JPEG or DICOM file that looks like a real radiograph.

    Parameters
    ----------
    pixels : ndarray
        2D uint8 or uint16 stored values (as :func:`synthesize` returns them).
    out_path : path
        A new file; nothing is overwritten.
    fmt : str
        ``png`` (8- or 16-bit gray, like the real PNGs), ``jpeg`` (8-bit gray, quality 85-95 drawn from
        ``seed`` unless ``jpeg_quality`` is given) or ``dicom``.
    bit_depth : int, optional
        Bits of ``pixels`` (default: 8 for uint8, 16 for uint16).
    reference : Reference, optional
        For DICOM with ``dicom_style="like"``: a DICOM reference whose encoding (SOP class, bits,
        transfer syntax, pixel spacing, UID root, header style) is copied, with new UIDs and patient.
    dicom_style : str
        ``like`` (copy the reference's style when it is a DICOM, else ``cr``) or ``cr``: CR Image
        Storage, 12 bits stored, MONOCHROME2, uncompressed, a common CR/DX maker and model, pixel
        spacing of 0.14-0.2 mm (as the real SIIM file keeps 0.168 mm at 1024 px).
    ground_truth : dict, optional
        Written as JSON beside the image (``<file>.json``), with the file's own facts added. No field
        inside the image says that it is synthetic.
    """
    out_path = Path(out_path)
    fmt = {"jpg": "jpeg"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise MedForensicsError(out_path, f"unknown format {fmt!r} (use png, jpeg or dicom)")
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise MedForensicsError(out_path, f"pixels must be a 2D uint8 or uint16 array, got {arr.dtype} {arr.shape}")
    bits = bit_depth or (8 if arr.dtype == np.uint8 else 16)
    sidecar = out_path.with_name(out_path.name + ".json")
    new_file(out_path)
    if ground_truth is not None:
        new_file(sidecar)
    rng = np.random.default_rng([int(seed), 7])
    facts: dict[str, Any] = {"file": out_path.name, "format": fmt, "rows": int(arr.shape[0]), "cols": int(arr.shape[1])}
    from PIL import Image as PILImage
    if fmt == "png":
        img = PILImage.fromarray(arr) if arr.dtype == np.uint8 else PILImage.fromarray(arr.astype(np.uint16))
        if reference is not None and reference.color and arr.dtype == np.uint8:
            img = PILImage.fromarray(np.repeat(arr[..., None], 3, axis=2))
        img.save(out_path, format="PNG")
        facts["bit_depth"] = bits
    elif fmt == "jpeg":
        a8 = arr if arr.dtype == np.uint8 else np.round(arr.astype(np.float64) / (2 ** bits - 1) * 255).astype(np.uint8)
        q = int(jpeg_quality) if jpeg_quality else int(rng.integers(85, 96))
        if not 1 <= q <= 100:
            raise MedForensicsError(out_path, f"JPEG quality must be 1-100, got {q}")
        PILImage.fromarray(a8).save(out_path, format="JPEG", quality=q)
        facts.update(bit_depth=8, jpeg_quality=q)
    else:
        style = dicom_style
        if style == "like" and not (reference is not None and reference.format == "dicom" and reference.dicom):
            style = "cr"
        if style not in ("like", "cr"):
            raise MedForensicsError(out_path, f"unknown DICOM style {dicom_style!r} (use like or cr)")
        with ignoring_warnings(UserWarning):
            # a look-alike copies the real file's style, non-standard values included (SIIM: PatientAge '62')
            ds = _dicom_like(arr, bits, reference.dicom, rng) if style == "like" else _dicom_cr(arr, bits, rng)
            ds.save_as(out_path, enforce_file_format=True)
        facts.update(dicom_style=style, sop_class=str(ds.SOPClassUID), bits_stored=int(ds.BitsStored),
                     transfer_syntax=str(ds.file_meta.TransferSyntaxUID), sop_instance_uid=str(ds.SOPInstanceUID),
                     patient_id=str(ds.PatientID))
    if ground_truth is not None:
        with open(sidecar, "x", encoding="utf-8") as f:
            json.dump({**ground_truth, "file": facts}, f, indent=2, default=str)
    return out_path


_EXT = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


def write_samples(out_dir: str | Path, n: int, seed: int = 0, fmt: str = "like", *,
                  model: SynthModel | str | Path | None = None, like=None, dicom_style: str = "like",
                  on_written=None) -> list[Path]:
    """Synthesize ``n`` radiographs into a new (or empty) folder, each with a ground-truth JSON beside
    it; ``on_written(path)`` is called after each file (for progress)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; choose a new one")
    if fmt not in (*FORMATS, "like", "mixed"):
        raise MedForensicsError(None, f"unknown format {fmt!r} (use like, png, jpeg, dicom or mixed)")
    m = model if isinstance(model, SynthModel) else load_model(model)
    refs = _resolve_references(m, like)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, n, 16):   # in chunks, to keep memory low at full size
        for s in _synthesize_indices(m, seed, range(start, min(n, start + 16)), refs, fmt):
            name = f"synth_{seed:04d}_{s.ground_truth['index']:05d}{_EXT[s.format]}"
            p = write_synthetic(s.pixels, out / name, s.format, bit_depth=s.bit_depth, reference=s.reference,
                                dicom_style=dicom_style, seed=seed * 100003 + s.ground_truth["index"],
                                ground_truth=s.ground_truth)
            written.append(p)
            if on_written:
                on_written(p)
    return written
