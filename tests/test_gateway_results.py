"""The gateway's DICOM results (gateway.results): a Comprehensive 3D SR and a Segmentation in the
study of the checked images, on the real LIDC-IDRI series (authentic, and with an injected nodule)
and on pydicom's CR and CT test files (a copy-move edit). DCMTK's dsr2xml checks each SR."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from medforensics.core import MedForensicsError, Verdict
from medforensics.forge import ct
from medforensics.forge.edits import copy_move
from medforensics.gateway.results import CODES, SCHEME, segmentation, structured_report, write_results
from medforensics.io import discover, load_instance, load_raster, load_source
from medforensics.scan import analyze


@pytest.fixture(scope="module")
def lidc(lidc_series_dir):
    sources, _ = discover([lidc_series_dir])
    return load_source(sources[0])


@pytest.fixture(scope="module")
def authentic(lidc):
    return analyze(lidc), lidc


@pytest.fixture(scope="module")
def manipulated(lidc):
    forged = ct.inject(lidc, diameter_mm=14.0, seed=2)
    image = dataclasses.replace(lidc, pixels=forged.pixels)
    verdict = analyze(image)
    assert verdict.label in ("manipulated", "suspicious") and any(e.regions for e in verdict.evidence), verdict.to_dict()
    return verdict, image


@pytest.fixture(scope="module")
def radiograph():
    """The CR test file with a region copied elsewhere in it (copy_move finds both boxes)."""
    image = load_instance(get_testdata_file("RG1_UNCI.dcm"))
    edited, _ = copy_move(image.pixels, (600, 600, 800, 800), (1000, 1100))
    image = dataclasses.replace(image, pixels=edited)
    verdict = analyze(image)
    assert verdict.label == "manipulated" and any(e.regions for e in verdict.evidence), verdict.to_dict()
    return verdict, image


def _items(ds):
    """Every content item of an SR tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _name(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


def _dsr2xml(path) -> str:
    if shutil.which("dsr2xml") is None:
        pytest.skip("DCMTK's dsr2xml is not installed (Debian package dcmtk): the SR structure is not validated")
    r = subprocess.run(["dsr2xml", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "E:" not in r.stderr, r.stderr
    return r.stdout


def _check_sr(path, verdict: Verdict, image) -> list:
    """Read the SR back and check what every SR must hold; returns its content items."""
    sr = pydicom.dcmread(path)
    src = image.datasets[0]
    assert sr.SOPClassUID == Comprehensive3DSRStorage and sr.Modality == "SR"
    assert (sr.StudyInstanceUID, sr.PatientID, str(sr.PatientName)) == (src.StudyInstanceUID, src.PatientID,
                                                                         str(src.PatientName))
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == SCHEME
    listed = [i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
              for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence]
    assert sorted(listed) == sorted(ds.SOPInstanceUID for ds in image.datasets)
    items = list(_items(sr))
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert texts[0].startswith(f"{verdict.label}:")               # the finding in words, first
    assert [i.ConceptCodeSequence[0].CodeMeaning for i in items if _name(i) == "Forensic verdict"] == \
        [CODES[verdict.label].meaning]
    names = [i.TextValue for i in items if _name(i) == "Algorithm Name"]
    assert names == [e.detector for e in verdict.evidence]
    for det, why in verdict.not_assessed.items():
        assert f"{det}: {why}" in texts
    xml = _dsr2xml(path)
    assert all(f"<value>{e.detector}</value>" in xml for e in verdict.evidence)
    return items


def _check_regions(items, verdict: Verdict, image) -> None:
    """Every region is a rectangle on the instance its centre slice lies in (and, for a series, a
    3D point at its centre in mm)."""
    uids = [ds.SOPInstanceUID for ds in image.datasets]
    regions = [r for e in verdict.evidence for r in e.regions]
    scoords = [i for i in items if i.ValueType == "SCOORD"]
    assert len(scoords) == len(regions) > 0
    for region, sc in zip(regions, scoords):
        ref = sc.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID in uids
        k = region.center_voxel[0] if len(region.center_voxel) == 3 else 0
        assert ref.ReferencedSOPInstanceUID == uids[k]
        assert ref.ReferencedSOPClassUID == image.datasets[k].SOPClassUID
        xy = np.asarray(sc.GraphicData, float).reshape(-1, 2)
        r0, c0, r1, c1 = [region.bbox_voxel[a] for a in (-4, -3, -2, -1)] if len(region.center_voxel) == 2 else \
            [region.bbox_voxel[a] for a in (1, 2, 4, 5)]
        assert (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()) == (c0, r0, c1, r1)
    points = [i for i in items if i.ValueType == "SCOORD3D"]
    if image.pixels.ndim == 3:
        assert len(points) == len(regions)
        for region, p in zip(regions, points):
            assert np.allclose(p.GraphicData, region.center_mm, atol=0.01)
            assert p.ReferencedFrameOfReferenceUID == image.datasets[0].FrameOfReferenceUID
    else:
        assert points == []


def test_sr_of_an_authentic_series(authentic, tmp_path) -> None:
    verdict, image = authentic
    assert verdict.label == "authentic"
    paths = write_results(verdict, image, tmp_path, signed="Signed (gateway key) and logged to the ledger on receipt")
    assert len(paths) == 1                                          # nothing suspicious: no SEG
    items = _check_sr(paths[0], verdict, image)
    texts = {_name(i): i.TextValue for i in items if i.ValueType == "TEXT"}
    assert texts["Signed and logged on ingest"] == "Signed (gateway key) and logged to the ledger on receipt"
    assert texts["Provenance status"] == verdict.provenance
    assert not [i for i in items if i.ValueType in ("SCOORD", "SCOORD3D")]


def test_sr_of_a_manipulated_series(manipulated, tmp_path) -> None:
    verdict, image = manipulated
    sr = structured_report(verdict, image, series_number=77, instance_number=3)
    assert (sr.SeriesNumber, sr.InstanceNumber) == (77, 3)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    items = _check_sr(path, verdict, image)
    assert "Signed and logged on ingest" not in {_name(i) for i in items}
    _check_regions(items, verdict, image)


def test_sr_and_seg_of_an_edited_radiograph(radiograph, tmp_path) -> None:
    verdict, image = radiograph
    sr_path, seg_path = write_results(verdict, image, tmp_path)
    _check_regions(_check_sr(sr_path, verdict, image), verdict, image)
    seg = hd.seg.segread(seg_path)
    assert seg.SOPClassUID == SegmentationStorage and seg.StudyInstanceUID == image.datasets[0].StudyInstanceUID
    (e,) = [e for e in verdict.evidence if e.score >= 0.5 and e.regions]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [e.detector]
    mask = seg.get_pixels_by_source_instance([image.datasets[0].SOPInstanceUID], segment_numbers=[1])[0, ..., 0]
    for r in e.regions:                                             # both copies lie in the segment
        assert mask[tuple(r.center_voxel)]
        assert mask[r.bbox_voxel[0]:r.bbox_voxel[2], r.bbox_voxel[1]:r.bbox_voxel[3]].mean() > 0.5
    assert mask.mean() < 0.05


def test_seg_of_a_manipulated_series(manipulated, tmp_path) -> None:
    verdict, image = manipulated
    path = tmp_path / "seg.dcm"
    segmentation(verdict, image).save_as(path, enforce_file_format=True)
    seg = hd.seg.segread(path)
    src = image.datasets
    uids = [ds.SOPInstanceUID for ds in src]
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (src[0].StudyInstanceUID, src[0].FrameOfReferenceUID)
    assert seg.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in src}
    assert [i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence] == uids
    alarms = [e for e in verdict.evidence if e.score >= 0.5 and e.counts]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [e.detector for e in alarms]
    e = next(e for e in alarms if e.regions)
    n = [s.SegmentLabel for s in seg.SegmentSequence].index(e.detector) + 1
    box = e.regions[0].bbox_voxel
    shared = seg.SharedFunctionalGroupsSequence[0]                  # a single segment is named there
    framed = [uids.index(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
              for f in seg.PerFrameFunctionalGroupsSequence
              if (f.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence)[0]
              .ReferencedSegmentNumber == n]
    assert framed and min(framed) >= box[0] and max(framed) < box[3]      # frames only on the region's slices
    assert e.regions[0].center_voxel[0] in framed
    mask = seg.get_pixels_by_source_instance([uids[k] for k in framed], segment_numbers=[n])[..., 0]
    inside = mask[:, box[1]:box[4], box[2]:box[5]].sum()
    assert inside > 0 and inside >= 0.9 * mask.sum()                  # in plane: within the region's box


def test_no_seg_without_an_alarm(authentic) -> None:
    verdict, image = authentic
    assert segmentation(verdict, image) is None
    small = load_instance(get_testdata_file("CT_small.dcm"))
    clean = analyze(small)
    assert clean.label == "authentic" and segmentation(clean, small) is None


def test_results_need_dicom_headers(tmp_path) -> None:
    png = tmp_path / "chest.png"
    PILImage.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(png)
    image = load_raster(png)
    verdict = Verdict(str(png), "image", image.uid, 1, 0.9, "manipulated")
    for make in (structured_report, segmentation, lambda v, i: write_results(v, i, tmp_path)):
        with pytest.raises(MedForensicsError, match="DICOM results need the DICOM headers.*png file"):
            make(verdict, image)
    assert [p.name for p in tmp_path.iterdir()] == ["chest.png"]
