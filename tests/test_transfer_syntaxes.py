"""Every compressed transfer syntax in pydicom-data decodes through medforensics' own loader with the
default install, whose decoders are all permissively licensed, and gives the right pixels.

The GPLv3 plugin (``pylibjpeg-libjpeg``) is only the optional extra ``[gpl-jpeg]``. Where it is
installed anyway, the tests take it out of pydicom's JPEG decoders first, so that what decodes here is
GDCM (BSD), Pillow (MIT-CMU), pyjpegls (MIT), pylibjpeg-openjpeg (MIT), pylibjpeg-rle (MIT) or pydicom.

References: lossless syntaxes must equal an uncompressed twin of the same image exactly; where
pydicom-data has no twin, the SHA-256 of the stored values as decoded by the other, independent
decoder (libjpeg 2.5.0, GPL, run once when these tests were written; pydicom itself for deflate).
Lossy syntaxes are compared with their uncompressed twin: a PSNR floor, and for JPEG-LS
near-lossless the bound the codestream promises (every sample within NEAR).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("data_store") is None:  # pydicom-data's module; without it pydicom downloads
    pytest.skip("pydicom-data is not installed (pip install -e '.[test]')", allow_module_level=True)

import pydicom  # noqa: E402
from pydicom import uid as U  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402

from medforensics.io import load  # noqa: E402

#: Syntaxes whose pydicom plugin "pylibjpeg" means libjpeg (GPL); for JPEG 2000 and RLE it means the
#: MIT openjpeg and rle plugins, which stay.
LIBJPEG_SYNTAXES = (U.JPEGBaseline8Bit, U.JPEGExtended12Bit, U.JPEGLossless, U.JPEGLosslessSV1,
                    U.JPEGLSLossless, U.JPEGLSNearLossless)

#: (compressed file, uncompressed twin): the decoded pixels must be equal.
LOSSLESS_TWINS = [
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm", U.JPEGLosslessSV1),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", U.JPEGLSLossless),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm", U.JPEGLSLossless),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", U.JPEG2000Lossless),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm", U.JPEG2000Lossless),
    ("US1_J2KR.dcm", "US1_UNCR.dcm", U.JPEG2000Lossless),
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm", U.JPEG2000Lossless),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm", U.JPEG2000Lossless),
    ("MR_small_RLE.dcm", "MR_small.dcm", U.RLELossless),
    ("emri_small_RLE.dcm", "emri_small.dcm", U.RLELossless),
    ("SC_rgb_rle.dcm", "SC_rgb.dcm", U.RLELossless),
    ("SC_rgb_rle_16bit.dcm", "SC_rgb_16bit.dcm", U.RLELossless),
]

#: Files without an uncompressed twin: SHA-256 of the decoded stored values (as int64), from
#: libjpeg 2.5.0 (JPEG, JPEG-LS) or pydicom (deflate). The loader leaves these values as they are
#: (MONOCHROME2, no rescale).
REFERENCE_SHA256 = [
    ("JPEG-LL.dcm", U.JPEGLosslessSV1,  # 16-bit signed
     "29f9e84096fb3897a82912dbed2155225e6d619a65093e5767f9a7e40a0a574e"),
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", U.JPEGLosslessSV1,
     "189fab1d8a7c4f2e47d079878d31e31747603b09871cb435b7aa6e2ef5f37a87"),
    ("JPEGLSNearLossless_08.dcm", U.JPEGLSNearLossless,
     "3daabb855fa77b76d78b2d0237b70fbdd6e099064618e059e48dbc15b5ad2ca2"),
    ("JPEGLSNearLossless_16.dcm", U.JPEGLSNearLossless,
     "450fb21f882743099ec686ce3066da79f3042bfec287560fb3c98bf31321b383"),
    ("image_dfl.dcm", U.DeflatedExplicitVRLittleEndian,
     "019e5686870c4debea93a9b7f4c1c8ad6b4157d70d984bdd00834f074072941b"),
]

#: (lossy file, twin, PSNR floor in dB over the twin's range). Measured: 54, 46, 38, 38, 40, 41, 52 dB.
LOSSY_TWINS = [
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm", U.JPEGBaseline8Bit, 48.0),          # 4:4:4 YBR_FULL
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb.dcm", U.JPEGBaseline8Bit, 40.0),     # 4:2:2
    ("JPGExtended.dcm", "JPEG-LL.dcm", U.JPEGExtended12Bit, 34.0),              # 12-bit; twin: SV1 lossless
    ("JPEG-lossy.dcm", "JPEG-LL.dcm", U.JPEGExtended12Bit, 34.0),               # libjpeg refuses it; GDCM reads it
    ("US1_J2KI.dcm", "US1_UNCR.dcm", U.JPEG2000, 35.0),
    ("MR2_J2KI.dcm", "MR2_UNCR.dcm", U.JPEG2000, 36.0),
    ("RG1_J2KI.dcm", "RG1_UNCR.dcm", U.JPEG2000, 45.0),
]

#: JPEG-LS near-lossless with a twin: every sample within NEAR of the original.
NEAR_LOSSLESS_TWINS = [
    ("SC_rgb_jls_lossy_sample.dcm", "SC_rgb.dcm"),
    ("SC_rgb_jls_lossy_line.dcm", "SC_rgb.dcm"),
]

#: pydicom-data files that no decoder reads (damaged on purpose for pydicom's own tests).
BROKEN = {"JPEG2000-embedded-sequence-delimiter.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"}


@pytest.fixture(scope="module", autouse=True)
def permissive_decoders_only():
    """Take the libjpeg-backed plugin out of pydicom's JPEG decoders while these tests run (a no-op
    with the default install, where it is absent), and put it back after."""
    removed = []
    for ts in LIBJPEG_SYNTAXES:
        dec = get_decoder(ts)
        if "pylibjpeg" in dec.available_plugins:
            dec.remove_plugin("pylibjpeg")
            removed.append(dec)
    yield
    for dec in removed:
        dec.add_plugin("pylibjpeg", ("pydicom.pixels.decoders.pylibjpeg", "_decode_frame"))


def _pixels(name: str | Path) -> tuple[np.ndarray, dict]:
    path = name if isinstance(name, Path) else Path(get_testdata_file(name))
    images = load(path)
    assert len(images) == 1, f"{path.name}: {len(images)} images"
    return np.asarray(images[0].pixels, dtype=np.float64), images[0].meta


def _sha256(a: np.ndarray) -> str:
    assert np.array_equal(a, np.round(a)), "stored values should be integers"
    return hashlib.sha256(np.ascontiguousarray(a.astype(np.int64)).tobytes()).hexdigest()


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((x - ref) ** 2))
    return float("inf") if mse == 0 else 20 * np.log10(float(ref.max() - ref.min()) / np.sqrt(mse))


def _jpegls_near(path: str) -> int:
    """The NEAR parameter of the first JPEG-LS scan (SOS: Ls, Ns, Ns x (Ci, Tmi), NEAR, ILV, ...)."""
    from pydicom.encaps import generate_frames
    ds = pydicom.dcmread(path)
    frame = next(generate_frames(ds.PixelData, number_of_frames=int(getattr(ds, "NumberOfFrames", 1) or 1)))
    i = frame.index(b"\xff\xda")
    ns = frame[i + 4]
    return frame[i + 5 + 2 * ns]


def test_gpl_jpeg_plugin_is_not_a_requirement():
    reqs = importlib.metadata.requires("medforensics") or []
    unconditional = {re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower().replace("_", "-")
                     for r in reqs if "extra ==" not in r}
    assert "pylibjpeg-libjpeg" not in unconditional, "the GPL libjpeg plugin must stay an optional extra"
    assert any(r.startswith("pylibjpeg-libjpeg") and 'extra == "gpl-jpeg"' in r for r in reqs)
    for permissive in ("python-gdcm", "pyjpegls", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pillow"):
        assert permissive in unconditional, permissive


def test_every_jpeg_syntax_has_a_permissive_decoder():
    for ts in LIBJPEG_SYNTAXES + (U.JPEG2000Lossless, U.JPEG2000, U.RLELossless):
        plugins = get_decoder(ts).available_plugins
        assert "pylibjpeg" not in plugins or ts not in LIBJPEG_SYNTAXES
        if ts == U.JPEGExtended12Bit:  # 12-bit samples: GDCM directly (io.dicom._decode_jpeg12)
            assert importlib.util.find_spec("gdcm") is not None
        assert plugins, f"no permissive decoder for {ts.name}"


def test_every_compressed_syntax_in_pydicom_data_is_covered():
    import data_store
    folders = {Path(data_store.__file__).parent / "data", Path(pydicom.__file__).parent / "data" / "test_files"}
    present: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for f in sorted(p for d in folders for p in d.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                ts = ds.file_meta.TransferSyntaxUID
            except Exception:  # noqa: BLE001 - some test files are deliberately broken
                continue
            if (ts.is_compressed or ts.is_deflated) and "Rows" in ds and f.name not in BROKEN:
                present.setdefault(str(ts), f.name)
    covered = {str(c[2]) for c in LOSSLESS_TWINS + LOSSY_TWINS} | {str(c[1]) for c in REFERENCE_SHA256}
    missing = {ts: name for ts, name in present.items() if ts not in covered}
    assert not missing, f"compressed syntaxes in pydicom-data without a test here: {missing}"
    assert len(present) >= 9, present  # 4.50, 4.51, 4.70, 4.80, 4.81, 4.90, 4.91, RLE, deflate


@pytest.mark.parametrize("name,twin,ts", LOSSLESS_TWINS, ids=[c[0] for c in LOSSLESS_TWINS])
def test_lossless_equals_uncompressed_twin(name, twin, ts):
    got, meta = _pixels(name)
    assert meta["transfer_syntax"] == ts
    ref, _ = _pixels(twin)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name,ts,digest", REFERENCE_SHA256, ids=[c[0] for c in REFERENCE_SHA256])
def test_decoded_values_match_reference(name, ts, digest):
    got, meta = _pixels(name)
    assert meta["transfer_syntax"] == ts
    assert _sha256(got) == digest, f"{name}: decoded values differ from the reference decode"


def test_jpeg_lossless_process14(tmp_path):
    """No process 14 (1.2.840.10008.1.2.4.57) file in pydicom-data: an SV1 codestream is a valid
    process 14 one, so the SV1 file relabelled must decode to the same values."""
    src = get_testdata_file("JPGLosslessP14SV1_1s_1f_8b.dcm")
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = U.JPEGLossless
    out = tmp_path / "p14.dcm"
    ds.save_as(out, enforce_file_format=True)
    got, meta = _pixels(out)
    assert meta["transfer_syntax"] == U.JPEGLossless
    np.testing.assert_array_equal(got, _pixels("JPGLosslessP14SV1_1s_1f_8b.dcm")[0])


@pytest.mark.parametrize("name,twin,ts,floor", LOSSY_TWINS, ids=[c[0] for c in LOSSY_TWINS])
def test_lossy_close_to_uncompressed_twin(name, twin, ts, floor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, meta = _pixels(name)
    assert meta["transfer_syntax"] == ts
    ref, _ = _pixels(twin)
    assert got.shape == ref.shape
    assert _psnr(got, ref) >= floor


@pytest.mark.parametrize("name,twin", NEAR_LOSSLESS_TWINS, ids=[c[0] for c in NEAR_LOSSLESS_TWINS])
def test_near_lossless_within_near(name, twin):
    got, meta = _pixels(name)
    assert meta["transfer_syntax"] == U.JPEGLSNearLossless
    near = _jpegls_near(get_testdata_file(name))
    assert near >= 1
    ref, _ = _pixels(twin)
    # colour is reduced to gray with weights that add up to 1: the bound holds for the gray too
    assert np.abs(got - ref).max() <= near + 1e-3
    assert not np.array_equal(got, ref)  # it is lossy


def test_gray_jpeg_baseline_written_with_pillow(tmp_path):
    """An 8-bit grayscale JPEG baseline DICOM as the forge writes one (Pillow's encoder, then
    encapsulated) reads back close to what was written."""
    out, arr = _gray_jpeg_baseline(tmp_path / "jpeg_baseline_gray.dcm", "MR_small.dcm", quality=95)
    got, meta = _pixels(out)
    assert meta["transfer_syntax"] == U.JPEGBaseline8Bit
    assert got.shape == arr.shape and _psnr(got, arr.astype(np.float64)) >= 35.0


@pytest.mark.parametrize("ts", [U.JPEGLSLossless, U.JPEG2000Lossless, U.RLELossless],
                         ids=["jpeg-ls", "jpeg2000", "rle"])
def test_permissive_encoders_round_trip(tmp_path, ts):
    """What the forge's ``Dataset.compress`` needs: pyjpegls, pylibjpeg-openjpeg and the RLE
    encoders write these syntaxes, and the loader reads them back unchanged."""
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.compress(ts)
    out = tmp_path / "round_trip.dcm"
    ds.save_as(out, enforce_file_format=True)
    got, meta = _pixels(out)
    assert meta["transfer_syntax"] == ts
    np.testing.assert_array_equal(got, _pixels("MR_small.dcm")[0])


# ---------------------------------------------------------------------------------------------
# the forge writes back in the input's syntax (issue 18, item 8): copymove on one image of every
# syntax above, a CT injection on a small series in every syntax pydicom or GDCM can make here

#: What the forge writes lossy input in: the lossless syntax of the same family (docs/forge/edits.md).
LOSSLESS_OF_LOSSY = {U.JPEGBaseline8Bit: U.JPEGLosslessSV1, U.JPEGExtended12Bit: U.JPEGLosslessSV1,
                     U.JPEGLSNearLossless: U.JPEGLSLossless, U.JPEG2000: U.JPEG2000Lossless}

#: One grayscale file per syntax (colour DICOM is not written by the forge); None: built below.
FORGE_2D = [
    ("CT_small.dcm", U.ExplicitVRLittleEndian), ("MR_small_implicit.dcm", U.ImplicitVRLittleEndian),
    ("MR_small_bigendian.dcm", U.ExplicitVRBigEndian), ("image_dfl.dcm", U.DeflatedExplicitVRLittleEndian),
    ("MR_small_RLE.dcm", U.RLELossless), ("emri_small_RLE.dcm", U.RLELossless),
    ("MR_small_jpeg_ls_lossless.dcm", U.JPEGLSLossless), ("MR_small_jp2klossless.dcm", U.JPEG2000Lossless),
    ("JPEG-LL.dcm", U.JPEGLosslessSV1), ("JPGLosslessP14SV1_1s_1f_8b.dcm", U.JPEGLossless),
    ("JPEGLSNearLossless_16.dcm", U.JPEGLSNearLossless), ("JPGExtended.dcm", U.JPEGExtended12Bit),
    ("693_J2KI.dcm", U.JPEG2000), (None, U.JPEGBaseline8Bit),
]


def _expected_output(ts):
    return LOSSLESS_OF_LOSSY.get(ts, ts)


def _gray_jpeg_baseline(path: Path, source: str = "CT_small.dcm", quality: int = 90) -> tuple[Path, np.ndarray]:
    """An 8-bit grayscale JPEG baseline DICOM (Pillow's encoder) made from pydicom's ``source``, as
    a scanner or PACS exports one; returns the file and the 8-bit pixels that were encoded."""
    import io

    from PIL import Image as PILImage
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(get_testdata_file(source))
    stored = ds.pixel_array.astype(np.float64)
    arr = np.round((stored - stored.min()) / (stored.max() - stored.min()) * 255).astype(np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG", quality=quality)
    ds.file_meta.TransferSyntaxUID = U.JPEGBaseline8Bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    for kw in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if kw in ds:
            delattr(ds, kw)
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.save_as(path, enforce_file_format=True)
    return path, arr


def _forge_input(name, ts, folder: Path) -> Path:
    if name is None:
        return _gray_jpeg_baseline(folder / "jpeg_baseline.dcm")[0]
    src = Path(get_testdata_file(name))
    if pydicom.dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts:
        return src
    ds = pydicom.dcmread(src)  # the SV1 file relabelled as process 14 (see test_jpeg_lossless_process14)
    ds.file_meta.TransferSyntaxUID = ts
    out = folder / f"relabelled_{name}"
    ds.save_as(out, enforce_file_format=True)
    return out


def _changed(a: Path | list, b: Path | list) -> np.ndarray:
    """Where the loader's decoding of ``a`` and ``b`` differ (files, or lists of a series' files)."""
    from medforensics.io import load_series
    pa = load_series(a).pixels if isinstance(a, list) else load(a)[0].pixels
    pb = load_series(b).pixels if isinstance(b, list) else load(b)[0].pixels
    assert pa.shape == pb.shape
    return pa != pb


@pytest.mark.parametrize("name,ts", FORGE_2D, ids=[c[1].name for c in FORGE_2D])
def test_forge_copymove_keeps_the_syntax_and_the_mask_covers_every_change(tmp_path, run_cli, name, ts):
    import json

    from PIL import Image as PILImage
    src = _forge_input(name, ts, tmp_path)
    frames = int(getattr(pydicom.dcmread(src, stop_before_pixels=True), "NumberOfFrames", 1) or 1)
    out = tmp_path / "forged.dcm"
    args = ["forge", "copymove", src, "--out", out, "--seed", "1"] + (["--slice", "1"] if frames > 1 else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        written = pydicom.dcmread(out)
        assert written.file_meta.TransferSyntaxUID == _expected_output(ts)
        gt = json.loads((tmp_path / "forged.groundtruth.json").read_text())
        (choice,) = gt["transfer_syntax"]
        assert choice["input"] == ts and choice["output"] == _expected_output(ts)
        mask_file = tmp_path / ("forged.mask.npz" if frames > 1 else "forged.mask.png")
        mask = (np.load(mask_file)["mask"] if frames > 1 else np.asarray(PILImage.open(mask_file))) > 0
        changed = _changed(src, out)
    assert changed.any() and not (changed & ~mask).any()  # no changed pixel outside the ground truth
    assert gt["n_changed_by_encoding"] == 0 and gt["n_changed"] == int(mask.sum()) == gt["n_edited"]
    if ts in LOSSLESS_OF_LOSSY:  # lossy input: said so in the header, and in the output of the command
        assert written.LossyImageCompression == "01" and "written losslessly" in r.stdout
    for kw in ("SOPInstanceUID", "PatientID", "Rows", "Columns", "BitsStored", "PhotometricInterpretation"):
        assert written.get(kw) == pydicom.dcmread(src, stop_before_pixels=True).get(kw)


def _ct_series(folder: Path, ts) -> list[Path]:
    """Five CT slices (pydicom's CT_small, shifted 5 mm apart) stored in ``ts``."""
    from medforensics.io.write import _gdcm_encapsulated
    folder.mkdir()
    paths = []
    for k in range(5):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient[2] += 5 * k
        arr = np.roll(ds.pixel_array, 3 * k, axis=1)  # slices that are not copies of each other
        ds.PixelData = arr.tobytes()
        kwargs = {}
        if ts == U.ExplicitVRBigEndian:
            ds.PixelData = arr.astype(">i2").tobytes()
            ds.file_meta.TransferSyntaxUID = ts
            kwargs = {"little_endian": False, "implicit_vr": False}
        elif ts in (U.ImplicitVRLittleEndian, U.DeflatedExplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = ts
            kwargs = {"implicit_vr": ts == U.ImplicitVRLittleEndian, "little_endian": True}
        elif ts in (U.JPEGLossless, U.JPEGLosslessSV1):
            ds.PixelData = _gdcm_encapsulated(ds, arr, ts)
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = ts
        elif ts == U.JPEGLSNearLossless:
            ds.compress(ts, arr, jls_error=3)
        elif ts == U.JPEG2000:
            ds.compress(ts, arr, j2k_cr=[15])
        elif ts != U.ExplicitVRLittleEndian:
            ds.compress(ts, arr)
        path = folder / f"{k + 1:03d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=not kwargs, force_encoding=bool(kwargs), **kwargs)
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        paths.append(path)
    return paths


CT_SYNTAXES = [U.ExplicitVRLittleEndian, U.ImplicitVRLittleEndian, U.ExplicitVRBigEndian,
               U.DeflatedExplicitVRLittleEndian, U.RLELossless, U.JPEGLSLossless, U.JPEG2000Lossless,
               U.JPEGLosslessSV1, U.JPEGLossless, U.JPEGLSNearLossless, U.JPEG2000]


@pytest.mark.parametrize("ts", CT_SYNTAXES, ids=[t.name for t in CT_SYNTAXES])
def test_forge_inject_keeps_the_series_syntax(tmp_path, run_cli, ts):
    import json
    src = _ct_series(tmp_path / "series", ts)
    out = tmp_path / "forged"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = run_cli("forge", "inject", tmp_path / "series", "--out", out, "--center", "2,64,64", "--diameter", "8")
        assert r.returncode == 0, r.stderr
        written = sorted(out.glob("*.dcm"))
        assert [p.name for p in written] == [p.name for p in src]
        gt = json.loads((tmp_path / "forged.groundtruth.json").read_text())
        mask = np.load(tmp_path / "forged.mask.npz")["mask"] > 0
        changed = _changed(src, written)
    for k, (a, b) in enumerate(zip(src, written)):
        if mask[k].any():  # re-encoded slices: the expected syntax; the others are byte copies
            assert pydicom.dcmread(b, stop_before_pixels=True).file_meta.TransferSyntaxUID == _expected_output(ts)
        else:
            assert a.read_bytes() == b.read_bytes()
    assert [c["output"] for c in gt["transfer_syntax"]] == [_expected_output(ts)]
    assert changed.any() and not (changed & ~mask).any() and gt["n_changed_by_encoding"] == 0
