"""DICOM results of a checked series: a Structured Report a radiologist reads and a Segmentation of
the suspicious areas, both in the study of the images they are about (see docs/gateway-results.md).

* :func:`structured_report` -- a Comprehensive 3D SR (highdicom): the verdict in words and coded,
  each detector's evidence, every region as a rectangle on the image it lies in (and its centre in
  patient coordinates where the geometry is known), what was not assessed and why, provenance.
* :func:`segmentation` -- a BINARY Segmentation (highdicom), one segment per alarming detector, on
  the series' own instances; ``None`` when nothing is suspicious.
* :func:`write_results` -- both as new files in a folder (nothing is overwritten).

Concepts come from DCM (Finding, Algorithm Name, Image Region, Center) where the standard has them;
the others are defined once, in :data:`CODES`, under the private scheme :data:`SCHEME`, which each
object declares in its Coding Scheme Identification Sequence.

>>> from medforensics.core import Verdict
>>> from medforensics.io import load_instance
>>> from pydicom.data import get_testdata_file
>>> image = load_instance(get_testdata_file("CT_small.dcm"))
>>> sr = structured_report(Verdict(str(image.path), "image", image.uid, 1, 0.02, "authentic"), image)
>>> sr.StudyInstanceUID == image.datasets[0].StudyInstanceUID, sr.ContentSequence[0].TextValue
(True, 'authentic: no detector found signs of manipulation or synthesis (fused score 0.02).')
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .. import __version__
from ..core import Evidence, Image, Indicates, Label, MedForensicsError, Region, Verdict
from ..io.plan import write_atomically

__all__ = ["SCHEME", "CODES", "structured_report", "segmentation", "write_results"]

#: Private coding scheme designator of the concepts DICOM has no code for.
SCHEME = "99MEDFOR"
_MANUFACTURER = "medforensics"


def _c(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning)


#: Every private code, in one place (DICOM's own are taken from ``pydicom.sr.codedict.codes``).
CODES: dict[str, Code] = {
    "report": _c("MF0001", "Image forensics report"),
    "verdict": _c("MF0002", "Forensic verdict"),
    "score": _c("MF0003", "Forensic score"),
    "provenance": _c("MF0004", "Provenance status"),
    "evidence": _c("MF0005", "Detector evidence"),
    "indicates": _c("MF0006", "Evidence indicates"),
    "explanation": _c("MF0007", "Explanation"),
    "region": _c("MF0008", "Suspicious region"),
    "region_note": _c("MF0009", "Region description"),
    "not_assessed": _c("MF0010", "Not assessed"),
    "signed": _c("MF0011", "Signed and logged on ingest"),
    "error": _c("MF0012", "Analysis error"),
    "confidence": _c("MF0013", "Evidence confidence"),
    "category": _c("MF0020", "Image forensics finding"),
    "family": _c("MF0021", "Image forensics detector"),
    # values: the verdict's labels and what evidence indicates (core.Label, core.Indicates)
    Label.AUTHENTIC: _c("MF0101", "Authentic"),
    Label.SUSPICIOUS: _c("MF0102", "Suspicious"),
    Label.MANIPULATED: _c("MF0103", "Manipulated"),
    Label.SYNTHETIC: _c("MF0104", "Synthetic"),
    Indicates.MANIPULATION: _c("MF0111", "Suspected manipulation"),
    Indicates.SYNTHESIS: _c("MF0112", "Suspected synthesis"),
    Indicates.PROCESSING: _c("MF0113", "Processing trace"),
}

_WORDS = {
    Label.AUTHENTIC: "no detector found signs of manipulation or synthesis",
    Label.SUSPICIOUS: "some evidence of manipulation or synthesis, not enough to be sure; review the regions below",
    Label.MANIPULATED: "the image content was altered after acquisition",
    Label.SYNTHETIC: "the image was generated, not acquired",
}


def _checked(verdict: Verdict, image: Image) -> list[Dataset]:
    """The image's DICOM headers, or a one-line error saying why no DICOM result can be made."""
    name = verdict.path or str(image.path)
    if image.format != "dicom" or not image.datasets:
        raise MedForensicsError(name, f"DICOM results need the DICOM headers of the checked images; "
                                      f"this image was read from a {image.format} file")
    n = image.pixels.shape[0] if image.pixels.ndim == 3 else 1
    if len(image.datasets) not in (1, n):
        raise MedForensicsError(name, f"{len(image.datasets)} DICOM headers for an image of {n} slices")
    for ds in image.datasets:
        missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID")
                   if not ds.get(k)]
        if missing:
            raise MedForensicsError(name, f"a DICOM header lacks {', '.join(missing)}")
    if len({ds.StudyInstanceUID for ds in image.datasets}) > 1:
        raise MedForensicsError(name, "the checked instances belong to more than one study")
    return list(image.datasets)


def _frame(image: Image, datasets: list[Dataset], k: int) -> tuple[Dataset, list[int] | None]:
    """The instance (and frame number, for one multi-frame instance) that slice ``k`` lies in."""
    if len(datasets) == 1:
        return datasets[0], ([k + 1] if image.pixels.ndim == 3 else None)
    return datasets[k], None


def _declare_scheme(ds: Dataset) -> None:
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = "medforensics image forensics concepts"
    item.CodingSchemeResponsibleOrganization = "medforensics project"
    ds.CodingSchemeIdentificationSequence = [item]


def _text(name: Code, value: str, rel: str = "CONTAINS") -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value or "-", relationship_type=rel)


def _num(name: Code, value: float, rel: str = "CONTAINS") -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=round(float(value), 4), unit=codes.UCUM.NoUnits, relationship_type=rel)


def _container(name: Code, items: Sequence[Dataset], rel: str | None = "CONTAINS") -> hd.sr.ContainerContentItem:
    box = hd.sr.ContainerContentItem(name=name, relationship_type=rel)
    box.ContentSequence = hd.sr.ContentSequence(list(items))
    return box


def _region_items(image: Image, datasets: list[Dataset], region: Region) -> list[Dataset]:
    """A region as SR content: its rectangle on the slice through its centre (SCOORD POLYLINE in
    pixel coordinates, corners of the box), its centre in patient mm (SCOORD3D POINT) where the
    geometry is known, and the box in words."""
    nd = len(region.center_voxel)
    box = [int(v) for v in region.bbox_voxel]
    r0, c0, r1, c1 = box[nd - 2], box[nd - 1], box[2 * nd - 2], box[2 * nd - 1]
    k = int(region.center_voxel[0]) if nd == 3 else 0
    ds, frames = _frame(image, datasets, k)
    rect = np.array([[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]], dtype=float)
    source = hd.sr.SourceImageForRegion(ds.SOPClassUID, ds.SOPInstanceUID, referenced_frame_numbers=frames)
    words = f"rows {r0}-{r1 - 1}, columns {c0}-{c1 - 1}"
    if nd == 3:
        words = f"slices {box[0]}-{box[3] - 1}, {words}; drawn on slice {k} (instance {ds.SOPInstanceUID})"
    if region.center_mm is not None:
        words += f"; centre at {', '.join(f'{v:.1f}' for v in region.center_mm)} mm (patient LPS)"
    items: list[Dataset] = [_num(CODES["score"], region.score), _text(CODES["region_note"], f"{region.note}; {words}"
                                                                    if region.note else words),
                            hd.sr.ImageRegion(graphic_type="POLYLINE", graphic_data=rect, source_image=source)]
    frame_of_reference = ds.get("FrameOfReferenceUID")
    if region.center_mm is not None and image.affine is not None and frame_of_reference:
        items.append(hd.sr.Scoord3DContentItem(name=codes.DCM.Center, graphic_type="POINT",
                                               graphic_data=np.array([region.center_mm], dtype=float),
                                               frame_of_reference_uid=frame_of_reference, relationship_type="CONTAINS"))
    return items


def _evidence_items(image: Image, datasets: list[Dataset], e: Evidence) -> hd.sr.ContainerContentItem:
    items: list[Dataset] = [
        _text(codes.DCM.AlgorithmName, e.detector),
        _num(CODES["score"], e.score),
        hd.sr.CodeContentItem(name=CODES["indicates"], value=CODES[e.indicates], relationship_type="CONTAINS"),
        _text(CODES["confidence"], str(e.confidence)),
        _text(CODES["explanation"], e.explanation),
    ]
    items += [_container(CODES["region"], _region_items(image, datasets, r)) for r in e.regions]
    return _container(CODES["evidence"], items)


def structured_report(verdict: Verdict, image: Image, *, signed: str | None = None, series_number: int = 9901,
                      instance_number: int = 1) -> Dataset:
    """The verdict on ``image`` as a DICOM Structured Report in the images' study, in a new series.

    Why Comprehensive 3D SR: a region's centre is also given in patient coordinates (SCOORD3D), which
    Enhanced and Comprehensive SR cannot hold; the rectangle every viewer overlays is a 2D SCOORD on
    the instance (or frame) the region's centre slice lies in. The document (root title
    ``99MEDFOR MF0001 Image forensics report``) holds, in order: the finding in words (DCM
    Finding), the verdict (coded) and fused score, the provenance status, the ingest signature
    text when ``signed`` is given, one container per piece of evidence (detector as DCM Algorithm
    Name, score, what it indicates, confidence, explanation, one container per region), what was
    not assessed and why, and analysis errors. Patient and study attributes are copied from the
    headers; every checked instance is listed as evidence. Raises :class:`MedForensicsError` for an
    image without DICOM headers.
    """
    datasets = _checked(verdict, image)
    if verdict.label is None:
        finding = "no verdict: the analysis did not complete"
    else:
        finding = f"{verdict.label}: {_WORDS[verdict.label]} (fused score {verdict.score:.2f})."
    items: list[Dataset] = [_text(codes.DCM.Finding, finding)]
    if verdict.label is not None:
        items += [hd.sr.CodeContentItem(name=CODES["verdict"], value=CODES[verdict.label], relationship_type="CONTAINS"),
                  _num(CODES["score"], verdict.score)]
    items.append(_text(CODES["provenance"], verdict.provenance))
    if signed:
        items.append(_text(CODES["signed"], signed))
    items += [_evidence_items(image, datasets, e) for e in verdict.evidence]
    items += [_text(CODES["not_assessed"], f"{det}: {why}") for det, why in verdict.not_assessed.items()]
    items += [_text(CODES["error"], err) for err in verdict.errors]
    root = _container(CODES["report"], items, rel=None)
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=datasets, content=root, series_instance_uid=hd.UID(), series_number=series_number,
            sop_instance_uid=hd.UID(), instance_number=instance_number, manufacturer=_MANUFACTURER,
            is_complete=True, series_description="medforensics check")
    except (ValueError, TypeError, AttributeError) as e:
        raise MedForensicsError.wrap(verdict.path, e, "cannot build the structured report") from None
    sr.SoftwareVersions = __version__
    _declare_scheme(sr)
    return sr


def _mask(e: Evidence, shape: tuple[int, ...], threshold: float) -> np.ndarray | None:
    """Where ``e`` is suspicious at full size, as booleans: its heatmap at or above ``threshold``
    (thresholded on the heatmap's own grid, then expanded: never a float volume of the image's
    size), or else its region boxes; ``None`` when that is empty."""
    mask = None
    if e.heatmap is not None:
        mask = dataclasses.replace(e, heatmap=e.heatmap >= threshold, regions=[]).full_heatmap(shape)
    if (mask is None or not mask.any()) and e.regions:
        mask = np.zeros(shape, bool)
        for r in e.regions:
            nd = len(r.bbox_voxel) // 2
            mask[tuple(slice(max(0, r.bbox_voxel[a]), r.bbox_voxel[a + nd]) for a in range(nd))] = True
    return mask if mask is not None and mask.any() else None


def segmentation(verdict: Verdict, image: Image, *, series_number: int = 9902, threshold: float = 0.5) -> Dataset | None:
    """The suspicious areas of ``image`` as a BINARY DICOM Segmentation on its instances, or ``None``.

    One segment per detector whose evidence counts (not a mere processing trace) with score
    >= 0.5: where its heatmap is at or above ``threshold``, or else its region boxes. Frames are
    one per source slice (empty ones omitted); segments are labelled with the detector's name and
    typed ``Suspected manipulation`` or ``Suspected synthesis`` (:data:`CODES`). Memory: one
    boolean volume per segment (a 133-slice 512x512 series: 35 MB each).
    """
    datasets = _checked(verdict, image)
    shape = tuple(image.pixels.shape)
    masks, segments = [], []
    for e in verdict.evidence:
        if not e.counts or e.score < 0.5:
            continue
        mask = _mask(e, shape, threshold)
        if mask is None:
            continue
        masks.append(mask)
        segments.append(hd.seg.SegmentDescription(
            segment_number=len(segments) + 1, segment_label=e.detector[:64],
            segmented_property_category=CODES["category"], segmented_property_type=CODES[e.indicates],
            algorithm_type="AUTOMATIC",
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=e.detector[:64], family=CODES["family"], version=__version__)))
    if not segments:
        return None
    if not datasets[0].get("FrameOfReferenceUID") and "SliceThickness" not in datasets[0]:
        # A projection radiograph has no patient space for the SEG to carry; highdicom (0.28) would
        # copy its PixelSpacing into a Pixel Measures item without SliceThickness, which its own
        # reader (segread) then rejects: the SEG is built from a copy of the header without it.
        datasets = [ds.copy() for ds in datasets]
        for ds in datasets:
            ds.pop("PixelSpacing", None)
    pixels = np.stack(masks, axis=-1)
    del masks
    if pixels.ndim == 3:                                   # a 2D image: one frame
        pixels = pixels[None]
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets, pixel_array=pixels, segmentation_type="BINARY", segment_descriptions=segments,
            series_instance_uid=hd.UID(), series_number=series_number, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer=_MANUFACTURER, manufacturer_model_name="medforensics", software_versions=__version__,
            device_serial_number="0", content_label="FORENSICS",
            content_description="Areas medforensics found suspicious", series_description="medforensics suspicious areas")
    except (ValueError, TypeError, AttributeError) as e:
        raise MedForensicsError.wrap(verdict.path, e, "cannot build the segmentation") from None
    _declare_scheme(seg)
    return seg


def write_results(verdict: Verdict, image: Image, folder: str | Path, **kw: Any) -> list[Path]:
    """Write the SR and (when anything is suspicious) the SEG of ``verdict`` into ``folder`` as new
    files named after their SOPInstanceUIDs, whole or not at all, never over an existing file;
    ``kw`` goes to :func:`structured_report` (``signed``, ``series_number``, ``instance_number``).
    Returns their paths."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MedForensicsError(folder, "not a folder")
    out = []
    for ds in (structured_report(verdict, image, **kw), segmentation(verdict, image)):
        if ds is None:
            continue
        buf = io.BytesIO()
        try:
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        except (ValueError, TypeError, OSError) as e:
            raise MedForensicsError.wrap(verdict.path, e, f"cannot encode the {ds.Modality} object") from None
        out.append(write_atomically(folder / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm", buf.getvalue()))
    return out

