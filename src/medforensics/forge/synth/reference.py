"""What a real radiograph looks like as a file: the training images, their noise and the
:class:`Reference` a synthetic sample is finished to (size, format, bit depth, histogram, noise,
DICOM header style)."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...core import MedForensicsError
from ...datapath import data_root as data_root_of
from ...noise import IMMERKAER_GAIN, estimate_sigma, immerkaer_response

__all__ = ["FORMATS", "QUANTILE_LEVELS", "NOISE_BINS", "Reference", "find_training_images", "measure_reference",
           "references_from", "noise_sigma", "noise_profile"]

FORMATS = ("png", "jpeg", "dicom")
#: Intensity levels (fractions of the full scale) at which a reference's histogram is kept.
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 129)
NOISE_BINS = 8


# ============================================================================== real data

def find_training_images(data_root: str | Path | None = None) -> list[Path]:
    """The full-size chest radiographs under ``data_root/xray``: MHH COVID-19 PNGs, the two
    512 px NIH PNGs and the SIIM DICOM. The 64 px NIH1000 thumbnails are left out: upsampled to
    128 px they would teach the model blur, which is exactly what a detector must not key on."""
    root = data_root_of(data_root)
    xray = root / "xray"
    if not xray.is_dir():
        raise MedForensicsError(root, "no xray folder with real radiographs here (set --data or MEDFORENSICS_DATA)")
    files = sorted((xray / "mhh-covid19" / "images").glob("*.png"))
    files += sorted((xray / "nih-cxr14").glob("*.png"))
    files += sorted((xray / "siim").glob("*.dcm"))
    if not files:
        raise MedForensicsError(xray, "no chest radiographs found (expected mhh-covid19/images/*.png, "
                                "nih-cxr14/*.png, siim/*.dcm)")
    return files


def _patient_ids(data_root: Path) -> dict[str, str]:
    """image_id -> patient_id from the MHH data.csv (empty when absent)."""
    csv_path = data_root / "xray" / "mhh-covid19" / "data.csv"
    out: dict[str, str] = {}
    if csv_path.is_file():
        import csv
        with open(csv_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out[row.get("image_id", "")] = row.get("patient_id", "")
    return out


def _load_real(path: Path):
    """(gray pixels as float, full-scale value, Image) of one real radiograph."""
    from ...io import load
    im = load(path)[0]
    px = im.slice2d().astype(np.float64)
    if im.format == "dicom":
        ds = im.datasets[0]
        full = float(2 ** int(getattr(ds, "BitsStored", 8)) - 1)
    else:
        full = float(2 ** int(im.meta.get("bit_depth", 8)) - 1)
    return px, full, im

# ============================================================================== noise measurement

#: High-pass noise level of an image (Immerkaer's estimator: the difference of two Laplacians
#: cancels smooth structure; exact for white Gaussian noise), in the image's own units: the
#: package's :func:`medforensics.noise.estimate_sigma`, under the name this module has always used.
noise_sigma = estimate_sigma


def noise_profile(pixels: np.ndarray, full_scale: float, bins: int = NOISE_BINS) -> list[list[float]]:
    """Noise level as a function of intensity: ``[[bin centre / full scale, sigma / full scale, share of
    pixels], ...]`` for ``bins`` equal bins of the local mean; saturated pixels (0 or full scale) and
    sharp edges (top 5 % of the Immerkaer response) are left out."""
    import cv2
    px = np.asarray(pixels, np.float64) / full_scale
    a = immerkaer_response(px)[1:-1, 1:-1]
    mean = cv2.GaussianBlur(px, (0, 0), 2.0)[1:-1, 1:-1]
    inner = px[1:-1, 1:-1]
    ok = (inner > 0.5 / full_scale) & (inner < 1 - 0.5 / full_scale)
    if ok.sum() > 100:
        ok &= a < np.quantile(a[ok], 0.95)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(mean, edges) - 1, 0, bins - 1)
    out = []
    total = max(1, int(ok.sum()))
    for b in range(bins):
        sel = ok & (idx == b)
        n = int(sel.sum())
        s = float(IMMERKAER_GAIN * a[sel].mean()) if n >= 50 else float("nan")
        out.append([round(float((edges[b] + edges[b + 1]) / 2), 4), round(s, 6) if n >= 50 else None,
                    round(n / total, 4)])
    return out


def _corr_ratio(pixels: np.ndarray) -> float:
    """How correlated the fine noise is: Immerkaer sigma after 2x2 binning over sigma before
    (0.5 for white noise, towards 1 for noise blurred by resampling or compression)."""
    px = np.asarray(pixels, np.float64)
    h, w = (px.shape[0] // 2) * 2, (px.shape[1] // 2) * 2
    binned = px[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    s = noise_sigma(px)
    return float(noise_sigma(binned) / s) if s > 0 else 1.0


# ============================================================================== references

@dataclass
class Reference:
    """What a real radiograph looks like as a file: the pattern a synthetic sample is finished to."""

    name: str
    format: str                   # png, jpeg or dicom
    rows: int
    cols: int
    bit_depth: int
    quantiles: list[float]        # intensity (fraction of full scale) at QUANTILE_LEVELS
    noise: list[list[float]]      # noise_profile()
    noise_sigma: float            # whole-image Immerkaer sigma, fraction of full scale
    corr_ratio: float             # _corr_ratio()
    color: bool = False
    modality: str = "XR"
    dicom: dict[str, Any] = field(default_factory=dict)   # encoding and style of a DICOM reference

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Reference":
        return cls(**{k: d[k] for k in (f.name for f in dataclasses.fields(cls)) if k in d})


def _dicom_style(ds) -> dict[str, Any]:
    """The encoding and header style of a real DICOM, kept to write look-alikes."""
    ts = str(ds.file_meta.TransferSyntaxUID) if hasattr(ds, "file_meta") and "TransferSyntaxUID" in ds.file_meta else ""
    keep = {}
    for kw in ("SOPClassUID", "Modality", "ConversionType", "SeriesDescription", "BodyPartExamined", "ViewPosition",
               "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
               "PixelSpacing", "LossyImageCompression", "LossyImageCompressionMethod", "SpecificCharacterSet",
               "StudyDate", "StudyTime", "Manufacturer", "ManufacturerModelName"):
        if kw in ds:
            v = ds.data_element(kw).value
            keep[kw] = [float(x) for x in v] if kw == "PixelSpacing" else (str(v) if not isinstance(v, int) else v)
    uid = str(getattr(ds, "SOPInstanceUID", ""))
    # the UID root of the writer (e.g. DCMTK's 1.2.276.0.7230010.3.) so new UIDs look the same
    m = re.match(r"^((?:\d+\.){5,7})", uid)
    keep["uid_root"] = m.group(1) if m else ""
    keep["patient_id_style"] = "uuid" if re.fullmatch(r"[0-9a-f-]{36}", str(getattr(ds, "PatientID", ""))) else "digits"
    keep["TransferSyntaxUID"] = ts
    return keep


def measure_reference(path: str | Path, _loaded=None) -> Reference:
    """Measure one real radiograph (size, format, bit depth, histogram, noise) as a :class:`Reference`."""
    path = Path(path)
    px, full, im = _loaded if _loaded is not None else _load_real(path)
    if px.ndim != 2:
        raise MedForensicsError(path, "not a 2D radiograph")
    q = np.quantile(px, QUANTILE_LEVELS) / full
    dicom = _dicom_style(im.datasets[0]) if im.format == "dicom" else {}
    return Reference(name=path.name, format=im.format, rows=int(px.shape[0]), cols=int(px.shape[1]),
                     bit_depth=int(round(math.log2(full + 1))), quantiles=[round(float(v), 6) for v in q],
                     noise=noise_profile(px, full), noise_sigma=round(noise_sigma(px) / full, 6),
                     corr_ratio=round(_corr_ratio(px), 4), color=bool(im.meta.get("color", False)),
                     modality=im.modality, dicom=dicom)


def references_from(like: str | Path | Sequence[str | Path]) -> list[Reference]:
    """References measured from real images: a file, a folder (searched recursively) or a list."""
    from ...io import sniff
    items = [like] if isinstance(like, (str, Path)) else list(like)
    files: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and sniff(f) in ("raster", "dicom"))
        elif p.is_file():
            files.append(p)
        else:
            raise MedForensicsError(p, "no such file or directory")
    if not files:
        raise MedForensicsError(str(like), "no real images found to take sizes, formats and histograms from")
    return [measure_reference(f) for f in files]
