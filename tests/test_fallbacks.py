"""No silent fallback (issue 18, item 6): a series with absurd geometry stays one series and says
which rule failed; unusable spacing, thickness and rescale are header findings, no millimetre or
pixel value is invented, and no numpy warning leaks from these paths."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medforensics.detectors import load_detectors
from medforensics.forge import ct
from medforensics.io import discover, load_series, load_source
from medforensics.io.dicom import volume_rule
from medforensics.io.write import write_like
from medforensics.scan import analyze, scan

DET = {d.name: d for d in load_detectors(["dicom_header", "noise_residual", "ct_physics"])}


def _set(path: Path, key: str, value, out: Path) -> Path:
    """A copy of ``path`` with ``key`` set to ``value`` (pydicom warns about invalid DS values when
    they are set; the file is what a hostile archive would hold)."""
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if value is None:
            del ds[key]
        else:
            ds[key].value = value
        ds.save_as(out)
    return out


def _contiguous(folder: Path, start: int, n: int) -> list[Path]:
    """``n`` adjacent slices of a series, in position order from the ``start``-th (file names of
    LIDC are not in position order)."""
    files = sorted(folder.glob("*.dcm"),
                   key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    return files[start:start + n]


def _ct(z: float, thickness="2.5", position=True) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.SliceThickness = "CT", thickness
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if position:
        ds.ImagePositionPatient = [0, 0, z]
    return ds


# ------------------------------------------------------------------------------ series assembly

@pytest.mark.parametrize("thickness", ["-2.5", "0", "nan", "1e9"])
def test_volume_rule_takes_positions_not_an_unusable_thickness(thickness):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when an invalid DS is set
        headers = [_ct(z, thickness) for z in (0.0, 2.5, 5.0, 7.5)]
    assert volume_rule(headers) == (True, None)


def test_volume_rule_sparse_picks_and_missing_geometry():
    assert volume_rule([_ct(0.0), _ct(200.0)]) == (False, None)          # far apart: single images, no rule failed
    volume, why = volume_rule([_ct(0.0), _ct(2.5, position=False), _ct(5.0, position=False)])
    assert not volume and "2 lack usable ImagePositionPatient" in why


def test_series_without_positions_says_why_each_slice_is_alone(lidc_series_dir, tmp_path):
    files = _contiguous(lidc_series_dir, 60, 3)
    for i, f in enumerate(files):
        _set(f, "ImagePositionPatient", None if i else [float(v) for v in pydicom.dcmread(f).ImagePositionPatient],
             tmp_path / f.name)
    sources, _ = discover([tmp_path])
    assert [s.kind for s in sources] == ["dicom"] * 3
    assert all("cannot be stacked into a volume: 2 lack usable ImagePositionPatient" in s.not_assembled for s in sources)
    ev = DET["dicom_header"].detect(load_source(sources[0]))
    assert any(f["check"] == "series_not_assembled" and "analysed alone" in f["message"] for f in ev.details["findings"])


def test_series_split_by_orientation_says_so(lidc_series_dir, tmp_path):
    """Two slices of a series turned to another orientation are judged apart from the rest (as
    localisers are); every item of the series says so."""
    files = _contiguous(lidc_series_dir, 60, 6)
    for i, f in enumerate(files):
        turned = [1, 0, 0, 0, 0.8, -0.6] if i in (2, 3) else None
        if turned is None:
            shutil.copy(f, tmp_path / f.name)
        else:
            _set(f, "ImageOrientationPatient", turned, tmp_path / f.name)
    sources, _ = discover([tmp_path])
    assert sorted(len(s.files) for s in sources if s.kind == "dicom-series")[-1] == 4
    assert all("the series holds instances in 2 orientations (4 with ImageOrientationPatient 1/0/0/0/1/0, 2 with"
               in s.not_assembled for s in sources)
    series = next(s for s in sources if len(s.files) == 4)
    ev = DET["dicom_header"].detect(load_source(series))
    assert any(f["check"] == "series_not_assembled" and "each orientation is analysed apart" in f["message"]
               for f in ev.details["findings"])


def test_instances_at_one_position_are_a_finding_even_when_one_slice_is_left(lidc_series_dir, tmp_path):
    """Two instances of a series at one position (another SOPInstanceUID): the loader keeps one,
    and the item, a series of one slice, says so (it was judged as a plain single image). Weak:
    a time series at one table position, or one slice in several encodings (pydicom's codec test
    files), does this too; a slice duplicated into a stack of several positions stays strong."""
    [f] = _contiguous(lidc_series_dir, 60, 1)
    shutil.copy(f, tmp_path / "a.dcm")
    _set(f, "SOPInstanceUID", pydicom.uid.generate_uid(), tmp_path / "b.dcm")
    [source] = discover([tmp_path])[0]
    image = load_source(source)
    assert image.pixels.ndim == 3 and image.pixels.shape[0] == 1
    ev = DET["dicom_header"].detect(image)
    assert [(f["check"], f["severity"]) for f in ev.details["findings"]] == [("series_one_position", "weak")]
    assert "all 2 instances of the series lie at one position" in ev.explanation


def test_negative_thickness_series_stays_one_series_and_still_finds_the_injection(lidc_series_dir, tmp_path):
    """The issue's case: SliceThickness -2.5 on every slice of a manipulated copy split the series
    into single images, so the injected slices passed as authentic. Now: one series item, the
    rule named, and the injection still found where it was made (12 adjacent LIDC slices around
    it keep it quick)."""
    src = tmp_path / "src"
    src.mkdir()
    for f in _contiguous(lidc_series_dir, 72, 12):
        shutil.copy(f, src / f.name)
    series = load_series(sorted(src.glob("*.dcm")))
    # where ct.choose_location puts a 14 mm nodule in the whole series (slice 78); the untouched
    # 12 slices score 0.07 with learned_2d, the forged copy 0.85 at the nodule
    forged = ct.inject(series, center_voxel=(6, 226, 382), diameter_mm=14.0, nodule_type="solid", seed=2)
    out = tmp_path / "forged"
    for p in write_like(series, forged.pixels, out):
        _set(p, "SliceThickness", "-2.5", p)
    [verdict] = list(scan([str(out)], ["dicom_header", "learned_2d"]))
    assert verdict.kind == "series" and verdict.n_instances == 12
    assert verdict.label in ("suspicious", "manipulated")
    header = next(e for e in verdict.evidence if e.detector == "dicom_header")
    rule = next(f for f in header.details["findings"] if f["check"] == "unusable_SliceThickness")
    assert "SliceThickness -2.5 is not usable: negative on all 12 slices" in rule["message"]
    assert "ImagePositionPatient" in rule["message"]
    k0, r0, c0, k1, r1, c1 = forged.bbox_voxel
    found = [r for e in verdict.evidence if e.detector != "dicom_header" and e.score >= 0.5 for r in e.regions
             if r.score >= 0.5 and r.bbox_voxel[0] < k1 and k0 < r.bbox_voxel[3] and r.bbox_voxel[1] < r1
             and r0 < r.bbox_voxel[4] and r.bbox_voxel[2] < c1 and c0 < r.bbox_voxel[5]]
    assert found, [(e.detector, e.score, [r.bbox_voxel for r in e.regions]) for e in verdict.evidence]
    # the slice step comes from the positions, not from the thickness
    assert series.spacing[0] == pytest.approx(load_series(sorted(out.glob("*.dcm"))).spacing[0])


# ------------------------------------------------------------------------------ header values

CT_SMALL = get_testdata_file("CT_small.dcm")

SPACING = [["0", "0"], ["-0.7", "-0.7"], ["nan", "nan"], ["inf", "inf"], ["1e9", "1e9"], ["1e-9", "1e-9"]]
RESCALE = [("RescaleSlope", "nan"), ("RescaleSlope", "inf"), ("RescaleSlope", "1e308"), ("RescaleSlope", "0"),
           ("RescaleIntercept", "nan"), ("RescaleIntercept", "-inf")]
THICKNESS = ["0", "-2.5", "nan"]


def _analyse(path: Path):
    """Discover, load and analyse one file with warnings turned into errors (none may leak)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = load_source(discover([path])[0][0])
        verdict = analyze(image, list(DET.values()))
    header = next(e for e in verdict.evidence if e.detector == "dicom_header")
    return image, verdict, header


@pytest.mark.parametrize("value", SPACING, ids=lambda v: v[0])
def test_unusable_pixel_spacing_is_a_finding_and_regions_stay_in_pixels(value, tmp_path):
    image, verdict, header = _analyse(_set(CT_SMALL, "PixelSpacing", value, tmp_path / "a.dcm"))
    assert image.spacing == (None, None) and image.affine is None  # no spacing invented
    [f] = [f for f in header.details["findings"] if f["check"] == "unusable_PixelSpacing"]
    assert "is not usable" in f["message"] and "regions are given in pixels, not millimetres" in f["message"]
    assert f["severity"] == ("weak" if value[0] == "0" else "moderate")
    if value[0] != "0":
        assert header.score >= 0.5 and verdict.label != "authentic"
        assert header.regions  # the finding's region: in pixels, without millimetres
    assert all(r.center_mm is None for e in verdict.evidence for r in e.regions)
    assert all("center_mm" not in r.to_dict() for e in verdict.evidence for r in e.regions)


@pytest.mark.parametrize("key,value", RESCALE)
def test_unusable_rescale_is_a_finding_and_pixels_stay_finite(key, value, tmp_path):
    image, verdict, header = _analyse(_set(CT_SMALL, key, value, tmp_path / "a.dcm"))
    assert np.isfinite(image.pixels).all()
    stored = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.float32)
    assert np.array_equal(image.pixels, stored)  # stored values, not a guessed rescale
    [f] = [f for f in header.details["findings"] if f["check"].startswith("unusable_Rescale")]
    assert "stored values, not physical units" in f["message"] and f["severity"] == "moderate"
    assert image.meta["not_physical_units"].startswith("the pixels are stored values, not physical units (Rescale")
    # the detectors that read Hounsfield units say they did not assess it, and why
    assert verdict.not_assessed["ct_physics"] == verdict.not_assessed["noise_residual"] == image.meta["not_physical_units"]
    assert header.score >= 0.5 and verdict.label != "authentic"


@pytest.mark.parametrize("value", THICKNESS)
def test_unusable_slice_thickness_is_a_finding(value, tmp_path):
    image, verdict, header = _analyse(_set(CT_SMALL, "SliceThickness", value, tmp_path / "a.dcm"))
    [f] = [f for f in header.details["findings"] if f["check"] == "unusable_SliceThickness"]
    assert f"SliceThickness {value} is not usable" in f["message"]
    assert image.spacing == (0.661468, 0.661468)  # the pixel spacing is unaffected


def test_authentic_values_give_no_such_finding():
    image, verdict, header = _analyse(Path(CT_SMALL))
    assert not [f for f in header.details["findings"] if f["check"].startswith("unusable_")]
    assert image.affine is not None and image.meta["unusable_values"] == [] and "not_physical_units" not in image.meta


# ------------------------------------------------------------------------------ per-slice benchmark

def test_authentic_rate_single_slices_scans_each_slice_alone(lidc_series_dir, tmp_path):
    """``benchmarks/authentic_rate.py --single-slices``: every slice of a series is its own item,
    in a row marked ``(slices alone)`` (false alarms per slice, not per series)."""
    import importlib.util
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "authentic_rate.py"
    spec = importlib.util.spec_from_file_location("authentic_rate_single", script)
    ar = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ar  # dataclasses look their module up
    try:
        spec.loader.exec_module(ar)
        series = tmp_path / "ct" / "lidc-idri" / "LIDC-IDRI-0001"
        series.mkdir(parents=True)
        for f in _contiguous(lidc_series_dir, 60, 3):
            shutil.copy(f, series / f.name)
        assert [s.kind for s in discover([series])[0]] == ["dicom-series"]
        sources = ar.single_slice_sources([str(series)])
        assert [(s.kind, len(s.files)) for s in sources] == [("dicom", 1)] * 3
        records = ar.scan_records(tmp_path, "all", ["dicom_header"], 1, False, single_slices=True)
        assert [(r["kind"], r["benchmark"]["row"]) for r in records] == [("image", "ct/lidc-idri (slices alone)")] * 3
        per_series = ar.scan_records(tmp_path, "all", ["dicom_header"], 1, False)
        assert [(r["kind"], r["benchmark"]["row"]) for r in per_series] == [("series", "ct/lidc-idri")]
    finally:
        sys.modules.pop(spec.name, None)


def test_non_finite_float_pixel_data_is_a_finding_and_made_finite(tmp_path):
    """Float pixel data (a parametric map) with NaN and infinite values: reported, set to the
    lowest finite value, no warning on the way."""
    ds = pydicom.dcmread(CT_SMALL)
    arr = ds.pixel_array.astype(np.float32)
    arr[10:20, 10:20] = np.nan
    arr[0, 0] = np.inf
    del ds.PixelData
    for key in ("BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept"):
        del ds[key]
    ds.BitsAllocated = 32
    ds.FloatPixelData = arr.tobytes()
    ds.save_as(tmp_path / "float.dcm")
    image, verdict, header = _analyse(tmp_path / "float.dcm")
    assert np.isfinite(image.pixels).all()
    assert float(image.pixels[15, 15]) == float(np.nanmin(arr[np.isfinite(arr)]))
    [f] = [f for f in header.details["findings"] if f["check"] == "unusable_PixelData"]
    assert f["message"].startswith("101 of 16384 pixel values are NaN or infinite") and f["severity"] == "moderate"
