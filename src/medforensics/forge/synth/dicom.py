"""DICOM headers for synthetic radiographs: a CR instance as a CR reader writes it
(:func:`_dicom_cr`) or a look-alike of a real DICOM's encoding and header style (:func:`_dicom_like`),
with new UIDs and a new patient, and no word of synthesis."""
from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import numpy as np

__all__ = ["CR_SYSTEMS"]

#: (Manufacturer, ManufacturerModelName) of common CR/DX systems, for ``dicom_style="cr"``.
CR_SYSTEMS = [("FUJIFILM Corporation", "FCR PROFECT CS"), ("Agfa", "CR 85-X"), ("Carestream Health", "DRX-Evolution"),
              ("Philips Medical Systems", "DigitalDiagnost"), ("KONICA MINOLTA", "REGIUS MODEL 190"),
              ("SIEMENS", "Ysio"), ("GE Healthcare", "Definium 8000")]


def _base_dataset(sop_class: str, ts: str, sop_uid: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _random_date(rng: np.random.Generator, lo: int = 2014, hi: int = 2024) -> dt.datetime:
    start = dt.datetime(lo, 1, 1)
    return start + dt.timedelta(seconds=int(rng.integers(0, (hi - lo) * 365 * 86400)))


def _pixel_module(ds, rows: int, cols: int, bits_alloc: int, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_alloc, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0


def _dicom_cr(arr: np.ndarray, bits: int, rng: np.random.Generator):
    """A CR Image Storage instance as a CR reader would write it (12 bits, uncompressed)."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    stored = arr.astype(np.float64) / (2 ** bits - 1) * 4095
    stored = np.clip(np.round(stored + rng.uniform(-0.5, 0.5, arr.shape) * (4095 / (2 ** bits - 1) if bits < 12 else 0)),
                     0, 4095).astype(np.uint16)
    ds = _base_dataset("1.2.840.10008.5.1.4.1.1.1", ExplicitVRLittleEndian, generate_uid())
    maker, model = CR_SYSTEMS[int(rng.integers(len(CR_SYSTEMS)))]
    when = _random_date(rng)
    born = when - dt.timedelta(days=int(rng.integers(18 * 365, 90 * 365)))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    for k in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{k}Date", when.strftime("%Y%m%d"))
        setattr(ds, f"{k}Time", (when + dt.timedelta(seconds=5 if k in ("Acquisition", "Content") else 0)).strftime("%H%M%S"))
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.AccessionNumber = str(int(rng.integers(10 ** 7, 10 ** 8)))
    ds.Modality = "CR"
    ds.Manufacturer, ds.ManufacturerModelName = maker, model
    ds.InstitutionName = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST"
    ds.SeriesDescription = "PA" if rng.random() < 0.7 else "AP"
    ds.PatientName = ""
    ds.PatientID = str(int(rng.integers(10 ** 8, 10 ** 9)))
    ds.PatientBirthDate = born.strftime("%Y%m%d")
    ds.PatientSex = "M" if rng.random() < 0.55 else "F"
    ds.PatientAge = f"{(when - born).days // 365:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = ds.SeriesDescription
    ds.KVP = str(int(rng.integers(100, 131)))
    ds.ExposureTime = str(int(rng.integers(5, 30)))
    ds.XRayTubeCurrent = str(int(rng.integers(160, 400)))
    ds.Exposure = str(int(rng.integers(1, 8)))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = str(int(rng.integers(1, 10 ** 5)))
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if ds.ViewPosition == "AP" else ["R", "F"]
    rows, cols = arr.shape
    spacing = float(rng.uniform(0.14, 0.2))
    ds.ImagerPixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.PixelSpacing = ds.ImagerPixelSpacing
    _pixel_module(ds, rows, cols, 16, 12)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    lo, hi = np.percentile(stored, [1, 99])
    ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:.0f}", f"{max(hi - lo, 1):.0f}"
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = stored.tobytes()
    return ds


def _dicom_like(arr: np.ndarray, bits: int, style: dict[str, Any], rng: np.random.Generator):
    """A look-alike of a real DICOM: same SOP class, encoding, pixel spacing and header style; new
    UIDs (under the same UID root) and a new patient."""
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid
    root = style.get("uid_root") or ""

    def uid(kind: str) -> str:
        return generate_uid(prefix=f"{root}{kind}." if root and len(root) < 40 else None)

    ts = style.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    ds = _base_dataset(style.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.1"), ts, uid("1.4"))
    bits_stored = int(style.get("BitsStored", 8 if ts == JPEGBaseline8Bit else 12))
    full_in, full_out = 2 ** bits - 1, 2 ** bits_stored - 1
    stored = arr if full_in == full_out else np.round(arr.astype(np.float64) / full_in * full_out)
    stored = np.clip(stored, 0, full_out).astype(np.uint8 if bits_stored <= 8 else np.uint16)
    for kw in ("SpecificCharacterSet",):
        if kw in style:
            setattr(ds, kw, style[kw])
    if "StudyDate" in style and str(style["StudyDate"]).startswith("1901"):
        ds.StudyDate, ds.StudyTime = style["StudyDate"], style.get("StudyTime", "000000.00")  # anonymised style
    else:
        when = _random_date(rng)
        ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = style.get("Modality", "CR")
    if "ConversionType" in style:
        ds.ConversionType = style["ConversionType"]
    for kw in ("Manufacturer", "ManufacturerModelName"):
        if kw in style:
            setattr(ds, kw, style[kw])
    ds.ReferringPhysicianName = ""
    view = "PA" if rng.random() < 0.6 else "AP"
    if "SeriesDescription" in style:
        ds.SeriesDescription = re.sub(r"\b(PA|AP)\b", view, str(style["SeriesDescription"]))
    pid = str(uuid.UUID(bytes=rng.bytes(16), version=4)) if style.get("patient_id_style") == "uuid" else \
        str(int(rng.integers(10 ** 8, 10 ** 9)))
    ds.PatientName = pid
    ds.PatientID = pid
    ds.PatientBirthDate = ""
    ds.PatientSex = "M" if rng.random() < 0.55 else "F"
    ds.PatientAge = str(int(rng.integers(18, 90)))
    ds.BodyPartExamined = style.get("BodyPartExamined", "CHEST")
    ds.ViewPosition = view
    ds.StudyInstanceUID = uid("1.2")
    ds.SeriesInstanceUID = uid("1.3")
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    _pixel_module(ds, arr.shape[0], arr.shape[1], 8 if bits_stored <= 8 else 16, bits_stored)
    if "PixelSpacing" in style:
        ds.PixelSpacing = [f"{v:.6g}" for v in style["PixelSpacing"]]
    _write_pixels(ds, stored, ts, rng, style)
    return ds


def _write_pixels(ds, stored: np.ndarray, ts: str, rng: np.random.Generator, style: dict[str, Any]) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
    if ts == JPEGBaseline8Bit:
        import io as _io
        from PIL import Image as PILImage
        buf = _io.BytesIO()
        PILImage.fromarray(stored.astype(np.uint8)).save(buf, format="JPEG", quality=int(rng.integers(90, 96)))
        ds.LossyImageCompression = style.get("LossyImageCompression", "01")
        ds.LossyImageCompressionMethod = style.get("LossyImageCompressionMethod", "ISO_10918_1")
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif ts == ExplicitVRLittleEndian or not getattr(ds.file_meta.TransferSyntaxUID, "is_compressed", False):
        ds.file_meta.TransferSyntaxUID = ts
        ds.PixelData = stored.tobytes()
    else:
        try:
            ds.PixelData = stored.tobytes()
            ds.compress(ts, stored)
        except Exception:  # noqa: BLE001 - no encoder for this syntax here: write it uncompressed
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = stored.tobytes()
