"""io.write: edited pixels written back like the original, untouched values bit-exact, never overwriting."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

from medforensics.core import MedForensicsError
from medforensics.io import load, load_instance, load_raster, load_series
from medforensics.io.write import CARELESS_SOFTWARE, physical_to_stored, write_like, write_mask


def _edit(px, delta=7.0):
    e = px.copy()
    sl = (slice(2, 12), slice(3, 13)) if e.ndim == 2 else (e.shape[0] // 2, slice(2, 12), slice(3, 13))
    e[sl] += delta
    return e


@pytest.mark.parametrize("name", ["CT_small.dcm", "RG1_UNCR.dcm", "MR_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_dicom_instance_roundtrip(tmp_path, name):
    src = get_testdata_file(name)
    if src is None:
        pytest.skip(f"{name} not in pydicom-data")
    im = load(src)[0]
    edited = _edit(im.pixels)
    (out,) = write_like(im, edited, tmp_path / "x.dcm")
    back = load(out)[0]
    assert np.array_equal(back.pixels, edited)  # the edit is stored exactly, everything else untouched
    a, b = pydicom.dcmread(src), pydicom.dcmread(out)
    assert b.SOPInstanceUID == a.SOPInstanceUID and b.SeriesInstanceUID == a.SeriesInstanceUID
    assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID  # these syntaxes can be re-encoded
    assert b.PatientID == a.PatientID and "SoftwareVersions" not in b or CARELESS_SOFTWARE not in str(b.SoftwareVersions)


def test_careless_traces_and_no_overwrite(tmp_path):
    src = get_testdata_file("CT_small.dcm")
    im = load_instance(src)
    (out,) = write_like(im, _edit(im.pixels), tmp_path / "c.dcm", careless=True)
    a, b = pydicom.dcmread(src), pydicom.dcmread(out)
    assert b.SOPInstanceUID != a.SOPInstanceUID and b.SeriesInstanceUID != a.SeriesInstanceUID
    assert CARELESS_SOFTWARE in str(b.SoftwareVersions) and "edited" in b.DerivationDescription
    before = out.read_bytes()
    with pytest.raises(FileExistsError):
        write_like(im, im.pixels, out)
    assert out.read_bytes() == before
    with pytest.raises(ValueError):
        write_like(im, im.pixels[:-1], tmp_path / "bad.dcm")


def test_series_untouched_slices_are_byte_copies(lidc_series_dir, tmp_path):
    files = sorted(lidc_series_dir.glob("*.dcm"))[40:52]
    vol = load_series(files)
    edited = _edit(vol.pixels, 120)
    written = write_like(vol, edited, tmp_path / "series")
    assert sorted(p.name for p in written) == sorted(f.name for f in files)
    back = load_series(written)
    assert np.array_equal(back.pixels, edited) and back.uid == vol.uid
    changed = {vol.sources[vol.pixels.shape[0] // 2].name}
    for f in files:
        same = (tmp_path / "series" / f.name).read_bytes() == f.read_bytes()
        assert same == (f.name not in changed)
    with pytest.raises(FileExistsError):
        write_like(vol, edited, tmp_path / "series")


def test_stored_value_mapping_clips_and_inverts():
    ds = pydicom.Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.RescaleSlope, ds.RescaleIntercept = 12, 0, 1, -1024
    ds.PhotometricInterpretation = "MONOCHROME2"
    assert list(physical_to_stored(ds, np.array([-1024.0, 0.0, 5000.0]))) == [0, 1024, 4095]
    ds.PhotometricInterpretation, ds.RescaleIntercept = "MONOCHROME1", 0
    assert list(physical_to_stored(ds, np.array([0.0, 4095.0]))) == [4095, 0]


def test_rasters_keep_depth_and_format(tmp_path):
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    a16 = rng.integers(0, 65536, (40, 50), dtype=np.uint16)
    PILImage.fromarray(a8).save(tmp_path / "a8.png")
    PILImage.fromarray(a16).save(tmp_path / "a16.png")
    for name, arr in (("a8.png", a8), ("a16.png", a16)):
        im = load_raster(tmp_path / name)
        e = np.clip(_edit(im.pixels, 3), 0, np.iinfo(arr.dtype).max)
        (out,) = write_like(im, e, tmp_path / f"out_{name}")
        back = load_raster(out)
        assert back.meta["bit_depth"] == im.meta["bit_depth"] and np.array_equal(back.pixels, e)
    im = load_raster(tmp_path / "a8.png")
    (jpg,) = write_like(im, im.pixels, tmp_path / "o.jpg", jpeg_quality=90)
    assert load_raster(jpg).format == "jpeg"
    (tif,) = write_like(im, im.pixels, tmp_path / "o.tif")
    assert np.array_equal(load_raster(tif).pixels, im.pixels)
    with pytest.raises(MedForensicsError, match="suffix"):
        write_like(im, im.pixels, tmp_path / "o.bmp")


def test_nifti_roundtrip(tmp_path):
    import nibabel as nib
    data = np.random.default_rng(1).normal(0, 50, (20, 16, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), str(tmp_path / "v.nii.gz"))
    im = load(tmp_path / "v.nii.gz")[0]
    e = _edit(im.pixels, 100)
    (out,) = write_like(im, e, tmp_path / "w.nii.gz")
    back = load(out)[0]
    assert np.allclose(back.pixels, e) and np.allclose(back.affine, im.affine)


def test_masks(tmp_path):
    m = np.zeros((10, 12), np.uint8)
    m[2:4, 5:9] = 1
    p = write_mask(m, tmp_path / "m.png")
    assert np.array_equal(load_raster(p).pixels > 0, m > 0)
    v = write_mask(np.ones((3, 4, 5)), tmp_path / "m.npz")
    assert np.load(v)["mask"].shape == (3, 4, 5)
    with pytest.raises(ValueError):
        write_mask(np.ones((3, 4, 5)), tmp_path / "v.png")


def test_output_syntax_rules():
    from pydicom import uid as U

    from medforensics.io.write import FALLBACK_SYNTAX, output_syntax
    for ts in (U.ExplicitVRLittleEndian, U.ImplicitVRLittleEndian, U.ExplicitVRBigEndian,
               U.DeflatedExplicitVRLittleEndian, U.RLELossless, U.JPEGLSLossless, U.JPEG2000Lossless,
               U.JPEGLossless, U.JPEGLosslessSV1):
        c = output_syntax(ts)
        assert c.output == ts and c.reason == "same syntax", (ts.name, c)
    assert output_syntax(U.JPEGBaseline8Bit).output == U.JPEGLosslessSV1
    assert output_syntax(U.JPEG2000).output == U.JPEG2000Lossless
    assert output_syntax(U.JPEGLSNearLossless).output == U.JPEGLSLossless
    for ts in (U.HTJ2K, "1.2.840.10008.1.2.4.100", "1.2.3.4"):  # lossy or unknown with no lossless encoder here
        c = output_syntax(ts)
        assert c.output == FALLBACK_SYNTAX and "uncompressed" in c.reason, c


def test_no_encoder_falls_back_and_says_so(tmp_path, monkeypatch):
    from pydicom import uid as U

    from medforensics.io import write as w
    im = load(get_testdata_file("MR_small_RLE.dcm"))[0]
    edited = _edit(im.pixels)
    monkeypatch.setattr(w, "_encoder", lambda ts: None if ts == U.RLELossless else "pydicom")
    written = w.write_image(im, edited, tmp_path / "none.dcm")
    (choice,) = written.syntax
    assert choice["output"] == U.ExplicitVRLittleEndian and "no encoder for RLE Lossless" in choice["reason"]
    assert pydicom.dcmread(written.files[0]).file_meta.TransferSyntaxUID == U.ExplicitVRLittleEndian
    assert np.array_equal(load(written.files[0])[0].pixels, edited)
    monkeypatch.undo()

    def broken(self, *a, **k):
        raise RuntimeError("encoder crashed")
    monkeypatch.setattr(pydicom.dataset.Dataset, "compress", broken)
    written = w.write_image(im, edited, tmp_path / "broken.dcm")
    (choice,) = written.syntax
    assert choice["output"] == U.ExplicitVRLittleEndian and "encoder crashed" in choice["reason"]
    assert np.array_equal(load(written.files[0])[0].pixels, edited)


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm"])
def test_ct_patch_crops_keep_the_source_syntax(tmp_path, name):
    """forge dataset --patches writes its DICOM crops through io.write.encode_like too."""
    from medforensics.forge.patches import write_dicom_crop
    src = get_testdata_file(name)
    im = load(src)[0]
    out = write_dicom_crop(src, im.pixels[10:42, 5:37], 10, 5, tmp_path / "crop.dcm", "seed")
    assert pydicom.dcmread(out).file_meta.TransferSyntaxUID == pydicom.dcmread(src).file_meta.TransferSyntaxUID
    back = load(out)[0]
    assert back.pixels.shape == (32, 32) and np.array_equal(back.pixels, im.pixels[10:42, 5:37])
