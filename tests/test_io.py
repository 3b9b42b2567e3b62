"""Loading: DICOM (compressed, multi-frame, MONOCHROME1, series order), rasters, NIfTI, bad input."""
from __future__ import annotations

import hashlib
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

from medforensics.core import MedForensicsError
from medforensics.io import discover, load, load_instance, load_raster, load_source

COMPRESSED = [
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),            # JPEG 2000
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90"),  # JPEG 2000 lossless
    ("JPEGLSNearLossless_08.dcm", "1.2.840.10008.1.2.4.81"),  # JPEG-LS near-lossless
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5"),           # RLE
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),   # JPEG baseline (colour)
    ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),         # JPEG extended
    ("JPEG-LL.dcm", "1.2.840.10008.1.2.4.70"),             # JPEG lossless SV1 (pydicom-data)
]


def _testfile(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available (pip install pydicom-data)")
    return path


def test_ct_in_hounsfield_units():
    im = load_instance(_testfile("CT_small.dcm"))
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert im.modality == "CT" and im.kind == "image" and im.format == "dicom"
    np.testing.assert_allclose(im.pixels, expected)
    assert im.spacing == (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    assert "PixelData" not in im.datasets[0]
    assert im.voxel_to_mm((0, 0)) == tuple(round(float(v), 2) for v in ds.ImagePositionPatient)


@pytest.mark.parametrize("name,syntax", COMPRESSED)
def test_compressed_transfer_syntaxes(name, syntax):
    im = load_instance(_testfile(name))
    assert im.meta["transfer_syntax"] == syntax
    assert im.pixels.dtype == np.float32 and im.pixels.ndim == 2 and np.ptp(im.pixels) > 0


def test_compressed_matches_uncompressed():
    a = load_instance(_testfile("MR_small.dcm")).pixels
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_array_equal(load_instance(_testfile(name)).pixels, a)


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    mono2 = load_instance(_testfile("CT_small.dcm")).pixels
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelRepresentation = 0
    arr = ds.pixel_array.astype(np.int32)
    arr = np.clip(arr - arr.min(), 0, 4095).astype(np.uint16)
    ds.PixelData = arr.tobytes()
    ds.BitsStored, ds.HighBit = 12, 11
    out = tmp_path / "mono1.dcm"
    ds.save_as(out)
    im = load_instance(out)
    np.testing.assert_array_equal(im.pixels, 4095 - arr.astype(np.float32))
    assert mono2.shape == im.pixels.shape
    assert np.corrcoef(im.pixels.ravel(), -arr.ravel().astype(float))[0, 1] > 0.99


def test_enhanced_multiframe_sorted_by_position():
    im = load_instance(_testfile("eCT_Supplemental.dcm"))
    assert im.kind == "series" and im.pixels.shape[0] == 2
    pos = im.meta["slice_positions"]
    assert pos == sorted(pos)
    assert im.spacing[0] and im.spacing[0] > 0


def test_series_sorted_by_position_not_file_name(lidc_series_dir, tmp_path):
    files = sorted(lidc_series_dir.glob("*.dcm"),
                   key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))[40:52]
    names = [f"{i:03d}.dcm" for i in range(len(files))]
    random.Random(3).shuffle(names)
    for f, n in zip(files, names):
        shutil.copy(f, tmp_path / n)
    (im,) = load(tmp_path)
    z = [float(ds.ImagePositionPatient[2]) for ds in im.datasets]
    assert im.kind == "series" and im.pixels.shape == (12, 512, 512)
    assert z == sorted(z) or z == sorted(z, reverse=True)
    assert np.allclose(np.diff(im.meta["slice_positions"]), im.spacing[0])
    assert im.meta["series_problems"] == []
    # each slice keeps its own pixels: slice k equals its file's HU
    ds = pydicom.dcmread(im.sources[5])
    np.testing.assert_allclose(im.pixels[5], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    # the affine maps slice k, row 0, col 0 to that slice's ImagePositionPatient
    assert np.allclose(im.voxel_to_mm((5, 0, 0)), [float(v) for v in ds.ImagePositionPatient], atol=0.01)


def _copy_series(src_dir: Path, dst: Path, n: int = 10) -> list[Path]:
    dst.mkdir()
    files = sorted(src_dir.glob("*.dcm"), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))[:n]
    return [Path(shutil.copy(f, dst / f.name)) for f in files]


def test_series_missing_slice_is_reported(lidc_series_dir, tmp_path):
    files = _copy_series(lidc_series_dir, tmp_path / "s")
    files[4].unlink()
    (im,) = load(tmp_path / "s")
    gaps = [p for p in im.meta["series_problems"] if p["kind"] == "gap"]
    assert len(gaps) == 1 and gaps[0]["index"] == 4 and "missing" in gaps[0]["message"]


def test_series_duplicate_position_and_mixed_size(lidc_series_dir, tmp_path):
    files = _copy_series(lidc_series_dir, tmp_path / "s")
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = 999
    ds.save_as(tmp_path / "s" / "dup.dcm")
    ds = pydicom.dcmread(files[6])
    ds.PixelData = ds.pixel_array[::2, ::2].copy().tobytes()
    ds.Rows, ds.Columns = 256, 256
    ds.save_as(files[6])
    (im,) = load(tmp_path / "s")
    kinds = {p["kind"]: p for p in im.meta["series_problems"]}
    assert "duplicate_position" in kinds and "dup.dcm" in kinds["duplicate_position"]["message"]
    assert "mixed_size" in kinds and files[6].name in kinds["mixed_size"]["message"]
    assert im.pixels.shape == (9, 512, 512)  # 10 + 1 duplicate - duplicate - odd size


@pytest.mark.parametrize("bits", [8, 16])
def test_png_and_tiff_gray(tmp_path, bits):
    rng = np.random.default_rng(0)
    dtype = np.uint8 if bits == 8 else np.uint16
    arr = rng.integers(0, 2 ** bits - 1, size=(40, 30)).astype(dtype)
    PILImage.fromarray(arr).save(tmp_path / "a.png")
    im = load_raster(tmp_path / "a.png")
    assert im.format == "png" and im.modality == "XR" and im.meta["bit_depth"] == bits
    np.testing.assert_array_equal(im.pixels, arr.astype(np.float32))
    import tifffile
    tifffile.imwrite(tmp_path / "a.tif", arr)
    im = load_raster(tmp_path / "a.tif")
    assert im.format == "tiff"
    np.testing.assert_array_equal(im.pixels, arr.astype(np.float32))


def test_colour_noted_and_reduced(tmp_path):
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[..., 0] = 200
    PILImage.fromarray(arr).save(tmp_path / "c.jpg", quality=95)
    im = load_raster(tmp_path / "c.jpg")
    assert im.format == "jpeg" and im.meta["color"] and im.meta["color_differs"] and im.pixels.ndim == 2


def test_nifti_orientation(tmp_path):
    import nibabel as nib
    data = np.zeros((6, 5, 4), np.int16) - 1000
    data[1, 2, 3] = 500
    aff = np.diag([2.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "v.nii.gz")
    (im,) = load(tmp_path / "v.nii.gz")
    assert im.pixels.shape == (4, 5, 6) and im.spacing == (4.0, 3.0, 2.0)
    assert im.pixels[3, 2, 1] == 500 and im.modality == "CT"
    # voxel (k=3, j=2, i=1) is at RAS (2, 6, 12) -> LPS (-2, -6, 12)
    assert im.voxel_to_mm((3, 2, 1)) == (-2.0, -6.0, 12.0)


def test_real_data_loads(shared_data):
    sources, skipped = discover([shared_data / "ct"])
    assert all(s.error is None for s in sources)
    assert any(p.suffix == ".xml" for p in skipped)
    images = [load_source(s) for s in sources]
    series = [im for im in images if im.kind == "series" and im.pixels.shape[0] == 133]
    assert len(series) == 1 and series[0].modality == "CT"
    inside_fov = series[0].pixels[series[0].pixels > -1500]  # -2048 pads outside the field of view
    assert -1100 < np.percentile(inside_fov, 0.1) and series[0].pixels.max() < 4000


# ----------------------------------------------------------------- bad input: clear, one line, no change

def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_bad_inputs_give_one_line_errors(tmp_path):
    ct = Path(_testfile("CT_small.dcm"))
    (tmp_path / "notes.dcm").write_text("this is not an image\n")
    data = ct.read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) - 20000])
    shutil.copy(_testfile("rtstruct.dcm"), tmp_path / "rtstruct.dcm")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}
    sources, _ = discover([tmp_path, tmp_path / "missing.dcm"])
    messages = {}
    for s in sources:
        with pytest.raises(MedForensicsError) as e:
            load_source(s)
        messages[s.path.name] = str(e.value)
    assert set(messages) == {"notes.dcm", "truncated.dcm", "rtstruct.dcm", "empty.png", "broken.png", "missing.dcm"}
    for name, msg in messages.items():
        assert name in msg and "\n" not in msg and "Traceback" not in msg
    assert "no pixel data" in messages["rtstruct.dcm"]
    assert "truncated" in messages["truncated.dcm"] or "does not match" in messages["truncated.dcm"]
    assert "no such file" in messages["missing.dcm"]
    assert before == {p.name: _digest(p) for p in tmp_path.iterdir()}


def test_identical_copies_analysed_once(tmp_path):
    ct = Path(_testfile("CT_small.dcm"))
    shutil.copy(ct, tmp_path / "a.dcm")
    shutil.copy(ct, tmp_path / "b.dcm")
    sources, _ = discover([tmp_path])
    assert len(sources) == 1 and "byte-identical" in sources[0].notes[0]


# ------------------------------------------------------------------ slice spacing and gaps

def _headers(n: int, **per_slice) -> list[pydicom.Dataset]:
    """``n`` bare headers; keyword lists give a value per slice (e.g. SliceThickness=[...])."""
    out = []
    for i in range(n):
        ds = pydicom.Dataset()
        for key, values in per_slice.items():
            setattr(ds, key, values[i])
        out.append(ds)
    return out


def _analyse(positions, **per_slice):
    from medforensics.io.dicom import analyse_spacing
    return analyse_spacing(np.asarray(positions, float), _headers(len(positions), **per_slice))


def test_spacing_one_double_interval_in_a_regular_series_is_a_likely_gap():
    pos = [2.5 * i for i in range(20) if i != 9]                       # slice 9 removed
    sp = _analyse(pos)
    (g,) = sp["gaps"]
    assert g["index"] == 9 and g["missing"] == 1 and g["ratio"] == 2.0
    assert g["likelihood"] >= 0.9
    # three slices removed together: still a whole multiple of the spacing
    (g,) = _analyse([2.5 * i for i in range(20) if i not in (9, 10, 11)])["gaps"]
    assert g["missing"] == 3 and g["likelihood"] >= 0.9
    # two separate removals: each still likely (> 0.6)
    sp = _analyse([2.5 * i for i in range(30) if i not in (9, 20)])
    assert len(sp["gaps"]) == 2 and min(g["likelihood"] for g in sp["gaps"]) > 0.6


def test_spacing_that_varies_throughout_is_at_most_weak():
    rng = np.random.default_rng(0)
    pos = np.cumsum(rng.uniform(1.0, 4.0, 20))                          # irregular everywhere
    pos = np.append(pos, pos[-1] + 9.0)
    sp = _analyse(pos)
    assert sp["gaps"] and max(g["likelihood"] for g in sp["gaps"]) < 0.3
    # a repeating pattern (two slices, then a table step of twice the spacing): none is a removal
    pattern = np.cumsum([0] + [2.5, 2.5, 5.0] * 7)
    sp = _analyse(pattern)
    assert len(sp["gaps"]) == 7 and max(g["likelihood"] for g in sp["gaps"]) < 0.35
    # a 2x interval that is not a whole multiple (2.4x) is weaker than one that is
    assert _analyse([0, 2.5, 5, 7.5, 10, 16, 18.5, 21, 23.5, 26])["gaps"][0]["likelihood"] < 0.5


def test_spacing_too_short_a_run_or_a_jump_longer_than_the_series_is_weak():
    # pydicom's dicomdirtests CT2: 4 instances, 1.25 mm apart but one jump of 202.5 mm
    (g,) = _analyse([-99.48, 103.02, 104.27, 105.52])["gaps"]
    assert g["missing"] == 161 and g["likelihood"] < 0.3


def test_spacing_changes_explained_by_the_header_are_not_gaps():
    # variable-thickness acquisition: 4 mm slices every 4 mm, then 7 mm slices every 7 mm
    pos = [4.0 * i for i in range(14)] + [53.08 + 7.0 * i for i in range(14)]
    sp = _analyse(pos, SliceThickness=["4.0"] * 14 + ["7.0"] * 14)
    assert sp["gaps"] == []
    assert [e["index"] for e in sp["explained"]] == [14] and "SliceThickness" in sp["explained"][0]["because"]
    assert [p["spacing_mm"] for p in sp["parts"]] == [4.0, 7.0]
    # without the header's word the same positions read as 13 gaps
    assert len(_analyse(pos)["gaps"]) == 13
    # between two acquisitions (blocks of slices) a whole multiple counts half
    pos = [2.5 * i for i in range(10)] + [30.0 + 2.5 * i for i in range(10)]
    (g,) = _analyse(pos, AcquisitionNumber=[1] * 10 + [2] * 10)["gaps"]
    assert g["between_acquisitions"] and 0.4 <= g["likelihood"] <= 0.5


def test_spacing_one_odd_thickness_slice_is_not_a_part():
    """A single slice with another SliceThickness does not make a part: a gap beside it is still judged."""
    pos = [2.5 * i for i in range(20) if i != 9]
    th = ["2.5"] * 19
    th[9] = "5.0"
    (g,) = _analyse(pos, SliceThickness=th)["gaps"]
    assert g["likelihood"] >= 0.9


def test_gantry_tilt_and_variable_thickness_series_loads_without_problems(shared_data):
    """dcm-qa-ct's GE head CT: 18.5 deg gantry tilt, 14 slices of 4 mm then 14 of 7 mm (1.08 mm between)."""
    d = shared_data / "ct" / "dcm-qa-ct" / "GE_HiSpeedDual_human_head"
    if not d.is_dir():
        pytest.skip("dcm-qa-ct GE head series not found")
    (im,) = load(d)
    assert im.kind == "series" and im.pixels.shape[0] == 28
    assert im.meta["series_problems"] == []
    sp = im.meta["spacing"]
    assert sp["gaps"] == [] and len(sp["explained"]) == 1
    assert sp["tilt_deg"] == pytest.approx(18.5, abs=0.1) and sp["header_tilt_deg"] == pytest.approx(18.5)


def test_removed_slice_is_reported_with_its_likelihood(lidc_series_dir, tmp_path):
    files = _copy_series(lidc_series_dir, tmp_path / "s", n=20)
    files[9].unlink()
    (im,) = load(tmp_path / "s")
    (gap,) = [p for p in im.meta["series_problems"] if p["kind"] == "gap"]
    assert gap["index"] == 9 and gap["likelihood"] >= 0.9 and "2.0x" in gap["message"]
