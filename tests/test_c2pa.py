"""C2PA exports (DICOM -> PNG/JPEG with a signed manifest) and reading/validating manifests."""
from __future__ import annotations

import datetime as dt
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
from cryptography.hazmat.primitives import serialization
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut

from medforensics.core import MedForensicsError
from medforensics.io import load, load_instance
from medforensics.provenance.c2pa_manifest import apply_window, export, read_c2pa, verify_manifest
from medforensics.provenance.keys import subject
from medforensics.provenance.trust import fingerprint
from medforensics.provenance.keys import Identity, generate_key, issue_certificate, new_identity

CT = get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def ids():
    """Two signers (EC and RSA, each with its own root CA) and a stranger's CA."""
    return {"ec": new_identity("Radiology export EC", algorithm="ec"),
            "rsa": new_identity("Radiology export RSA", algorithm="rsa"),
            "other": new_identity("Someone else", algorithm="ec")}


def ca_of(ident: Identity):
    return ident.chain[-1]


def store_json(path: Path) -> str:
    import c2pa
    with c2pa.Reader(str(path)) as r:
        return r.json()


def rewrite_idat(png: Path, out: Path, offset: int = 300) -> Path:
    """Flip one byte of the decompressed image data and re-pack the IDAT chunk with a valid CRC."""
    data = bytearray(png.read_bytes())
    i = data.find(b"IDAT")
    n = struct.unpack(">I", data[i - 4:i])[0]
    raw = bytearray(zlib.decompress(bytes(data[i + 4:i + 4 + n])))
    raw[offset] ^= 0xFF
    comp = zlib.compress(bytes(raw))
    chunk = struct.pack(">I", len(comp)) + b"IDAT" + comp + struct.pack(">I", zlib.crc32(b"IDAT" + comp) & 0xFFFFFFFF)
    out.write_bytes(bytes(data[:i - 4]) + chunk + bytes(data[i + 8 + n:]))
    return out


def damage_cabx(png: Path, out: Path, offset: int) -> Path:
    """Flip one byte inside the PNG's C2PA chunk (caBX), keeping the chunk CRC valid."""
    data = bytearray(png.read_bytes())
    j = data.find(b"caBX")
    m = struct.unpack(">I", data[j - 4:j])[0]
    data[j + 4 + offset % m] ^= 0xFF
    data[j + 4 + m:j + 8 + m] = struct.pack(">I", zlib.crc32(bytes(data[j:j + 4 + m])) & 0xFFFFFFFF)
    out.write_bytes(bytes(data))
    return out


# ------------------------------------------------------------------ export + read back

@pytest.mark.parametrize("alg", ["ec", "rsa"])
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_export_ct_and_read_back(ids, tmp_path, alg, suffix):
    ident = ids[alg]
    dst = tmp_path / f"ct{suffix}"
    summary = export(CT, dst, ident, window=(40, 400))
    ds = pydicom.dcmread(CT)
    assert summary["manifest"] and summary["signer"] == f"Radiology export {alg.upper()}"
    assert summary["algorithm"] == ("es256" if alg == "ec" else "ps256")
    assert summary["format"] == ("png" if suffix == ".png" else "jpeg")
    assert summary["dicom"]["sop_instance_uid"] == ds.SOPInstanceUID

    chk = verify_manifest(dst, trust=[ca_of(ident)])
    assert chk.present and chk.valid and chk.trusted is True and chk.ok, chk.reasons
    assert chk.reasons == []
    assert chk.signer == f"Radiology export {alg.upper()}"
    assert chk.generator.startswith("medforensics")
    assert chk.actions[:3] == ["c2pa.opened", "c2pa.converted", "c2pa.color_adjustments"]
    src = chk.source
    assert (src["study_instance_uid"], src["series_instance_uid"], src["sop_instance_uid"]) == \
        (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert src["modality"] == "CT" and src["sha256"] == summary["source_sha256"]
    assert chk.ingredients == [{"title": "DICOM CT instance", "format": "application/dicom",
                                "relationship": "parentOf", "instance_id": ds.SOPInstanceUID,
                                "has_manifest": False}]
    # no patient-identifying data anywhere in the manifest store
    text = store_json(dst)
    for value in (str(ds.PatientName), str(ds.PatientID), str(ds.get("AccessionNumber", ""))):
        if len(value) > 3:
            assert value not in text, value
    assert "patient" not in text.lower() and "date" not in json.dumps(chk.source).lower()
    # the dict form is JSON-ready
    assert json.loads(json.dumps(chk.to_dict()))["source"]["modality"] == "CT"


def test_png_pixels_are_the_windowed_image(ids, tmp_path):
    """8-bit and 16-bit PNGs hold exactly the DICOM linear VOI window of the modality values."""
    hu = load_instance(CT).pixels
    for bits, top in ((8, 255), (16, 65535)):
        dst = tmp_path / f"w{bits}.png"
        s = export(CT, dst, ids["ec"], window=(40, 400), bits=bits)
        with PILImage.open(dst) as im:
            arr = np.asarray(im)
        assert s["bits"] == bits and arr.shape == hu.shape
        expect = np.clip(np.round(((hu - 39.5) / 399 + 0.5) * top), 0, top)
        assert np.array_equal(arr.astype(np.int64), expect.astype(np.int64))
        assert arr.max() == top and arr.min() == 0  # bone above and air below the window
    chk = verify_manifest(tmp_path / "w16.png")
    assert chk.valid and chk.trusted is None and chk.ok


def test_header_window_resize_and_extra_actions(ids, tmp_path):
    mr = get_testdata_file("MR_small.dcm")  # WindowCenter 600, WindowWidth 1600 in the header
    s = export(mr, tmp_path / "mr.jpg", ids["rsa"], max_size=32, quality=80, actions=["c2pa.published"])
    assert s["window"]["from"] == "header" and (s["window"]["center"], s["window"]["width"]) == (600, 1600)
    assert (s["rows"], s["columns"]) == (32, 32)
    chk = verify_manifest(tmp_path / "mr.jpg")
    assert chk.valid and chk.actions == ["c2pa.opened", "c2pa.converted", "c2pa.color_adjustments",
                                         "c2pa.resized", "c2pa.published"]
    with PILImage.open(tmp_path / "mr.jpg") as im:
        assert im.size == (32, 32)


def test_monochrome1_radiograph_is_displayed_the_right_way_round(ids, tmp_path):
    """A real MONOCHROME1 CR (pydicom-data RG3): header window on modality values, then inverted."""
    path = get_testdata_file("RG3_UNCR.dcm")
    s = export(path, tmp_path / "cr.png", ids["ec"])
    ds = pydicom.dcmread(path)
    v = apply_modality_lut(ds.pixel_array, ds)
    expect = 255 - apply_window(v, float(ds.WindowCenter), float(ds.WindowWidth), 255).astype(np.int64)
    with PILImage.open(tmp_path / "cr.png") as im:
        arr = np.asarray(im).astype(np.int64)
    assert np.array_equal(arr, expect)
    # bright = dense, as the loader (which inverts MONOCHROME1) sees it
    assert np.corrcoef(arr.ravel()[::97], load_instance(path).pixels.ravel()[::97])[0, 1] > 0.9
    assert s["window"]["from"] == "header"
    assert verify_manifest(tmp_path / "cr.png").source["photometric_interpretation"] == "MONOCHROME1"


def test_real_radiograph_from_shared_data(ids, tmp_path, shared_data):
    files = sorted((shared_data / "xray").rglob("*.dcm"))
    if not files:
        pytest.skip("no DICOM radiograph under shared data xray/")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    export(files[0], tmp_path / "xr.jpg", ids["rsa"])
    export(files[0], tmp_path / "xr.png", ids["ec"])
    for name, ident in (("xr.jpg", ids["rsa"]), ("xr.png", ids["ec"])):
        chk = verify_manifest(tmp_path / name, trust=[ca_of(ident)])
        assert chk.ok and chk.source["sop_instance_uid"] == ds.SOPInstanceUID
        assert chk.source["modality"] == ds.Modality


# ------------------------------------------------------------------ trust

def test_trust_right_ca_wrong_ca_and_files(ids, tmp_path):
    dst = tmp_path / "ct.png"
    export(CT, dst, ids["ec"])
    paths = ids["ec"].save(tmp_path / "keys")
    assert verify_manifest(dst, trust=[paths["ca"]]).trusted is True
    wrong = verify_manifest(dst, trust=[ca_of(ids["other"])])
    assert wrong.valid and wrong.trusted is False and not wrong.ok
    assert wrong.reasons == ["the signer's certificate does not chain to a trusted CA (signingCredential.untrusted)"]
    # the RSA signer's CA does not vouch for the EC signer either
    assert verify_manifest(dst, trust=[ca_of(ids["rsa"])]).trusted is False
    # no trust list: the signature is checked, the signer is not judged -- but named
    plain = verify_manifest(dst)
    assert plain.ok and plain.trusted is None and plain.trust == "not-checked"
    assert plain.signer_subject == subject(ids["ec"].cert) and plain.signer_fingerprint == fingerprint(ids["ec"].cert)
    assert verify_manifest(dst, trust=[]).trusted is False  # an empty list trusts no one
    with pytest.raises(MedForensicsError, match="not a readable X.509 certificate"):
        verify_manifest(dst, trust=[paths["key"]])
    # the signer's own certificate as anchor pins that signer, as for DICOM signatures (one decision)
    assert verify_manifest(dst, trust=[paths["cert"]]).trust == "trusted"
    assert verify_manifest(dst, trust=[ca_of(ids["other"]), paths["ca"]]).trust == "trusted"


# ------------------------------------------------------------------ tampering and damage

def test_pixel_change_after_export_is_caught(ids, tmp_path):
    dst = tmp_path / "ct.png"
    export(CT, dst, ids["ec"])
    bad = verify_manifest(rewrite_idat(dst, tmp_path / "t.png"), trust=[ca_of(ids["ec"])])
    assert bad.present and not bad.valid and not bad.ok and bad.trusted is True
    assert "the image bytes no longer match the manifest (assertion.dataHash.mismatch)" in bad.reasons
    assert bad.source is not None  # the claim is still readable: what it said, and that it no longer holds
    # re-saving through an image library drops the manifest altogether
    PILImage.open(dst).save(tmp_path / "resaved.png")
    gone = verify_manifest(tmp_path / "resaved.png")
    assert not gone.present and not gone.ok and gone.reasons == ["no C2PA manifest in the file"]


def test_jpeg_change_after_export_is_caught(ids, tmp_path):
    dst = tmp_path / "ct.jpg"
    export(CT, dst, ids["rsa"])
    data = bytearray(dst.read_bytes())
    sos = data.rfind(b"\xff\xda")
    data[sos + 200] ^= 0x01  # entropy-coded image data
    (tmp_path / "t.jpg").write_bytes(bytes(data))
    bad = verify_manifest(tmp_path / "t.jpg")
    assert bad.present and not bad.valid and any("assertion.dataHash.mismatch" in r for r in bad.reasons)


def test_damaged_manifests_and_files_give_reasons_not_crashes(ids, tmp_path):
    dst = tmp_path / "ct.png"
    export(CT, dst, ids["ec"])
    size = struct.unpack(">I", (b := dst.read_bytes())[b.find(b"caBX") - 4:b.find(b"caBX")])[0]
    for k, off in enumerate((20, size // 3, size // 2, size - 40)):
        chk = verify_manifest(damage_cabx(dst, tmp_path / f"d{k}.png", off))
        assert chk.present and not chk.valid and not chk.ok and chk.reasons, off
        assert all("\n" not in r for r in chk.reasons)
        c2 = read_c2pa(tmp_path / f"d{k}.png")
        assert c2["present"] and c2["failures"]
    # truncated manifest chunk
    j = b.find(b"caBX")
    body = b"caBX" + b[j + 4:j + 104]
    (tmp_path / "trunc.png").write_bytes(b[:j - 4] + struct.pack(">I", 100) + body +
                                         struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF) + b[j + 8 + size:])
    chk = verify_manifest(tmp_path / "trunc.png")
    assert chk.present and not chk.ok and chk.reasons[0].startswith("the C2PA manifest is damaged")
    # a file without a manifest, garbage, an empty file, a text file
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "plain.png")
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 40)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    for name in ("plain.png", "garbage.png", "empty.jpg", "notes.txt"):
        chk = verify_manifest(tmp_path / name)
        assert not chk.present and not chk.ok and len(chk.reasons) == 1, (name, chk.reasons)
        assert read_c2pa(tmp_path / name)["present"] is False
    with pytest.raises(MedForensicsError, match="no such file"):
        verify_manifest(tmp_path / "missing.png")
    assert read_c2pa(tmp_path / "missing.png") == {"present": False, "error": "no such file"}


def test_container_detector_still_flags_a_tampered_export(ids, tmp_path):
    from medforensics.detectors import load_detectors
    det = {d.name: d for d in load_detectors()}["container"]
    dst = tmp_path / "ct.png"
    export(CT, dst, ids["ec"])
    ev = det.detect(load(dst)[0])
    assert ev.provenance.startswith("c2pa-valid") and ev.details["c2pa"]["signer"] == "Radiology export EC"
    ev = det.detect(load(rewrite_idat(dst, tmp_path / "t.png"))[0])
    assert ev.score > 0.8 and ev.provenance == "c2pa-invalid"
    assert "assertion.dataHash.mismatch" in ev.details["c2pa"]["failures"]


# ------------------------------------------------------------------ raster sources: parent ingredients

def test_png_source_manifest_becomes_the_parent_ingredient(ids, tmp_path):
    first = tmp_path / "ct.png"
    export(CT, first, ids["ec"], window=(40, 400))
    second = tmp_path / "ct.jpg"
    s = export(first, second, ids["rsa"], quality=90)
    assert s["dicom"] is None and s["actions"] == ["c2pa.opened", "c2pa.converted"]  # gray levels unchanged
    chk = verify_manifest(second, trust=[ca_of(ids["rsa"])])
    assert chk.ok and chk.signer == "Radiology export RSA" and chk.source["kind"] == "raster"
    (ing,) = chk.ingredients
    assert ing["relationship"] == "parentOf" and ing["has_manifest"] and ing["signer"] == "Radiology export EC"
    assert ing["source"]["sop_instance_uid"] == pydicom.dcmread(CT).SOPInstanceUID
    # the pixels went through unchanged (up to JPEG loss)
    a = np.asarray(PILImage.open(first), float)
    b = np.asarray(PILImage.open(second), float)
    assert np.abs(a - b).mean() < 3
    # a source without a manifest is still recorded, as an ingredient without provenance
    PILImage.fromarray((np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)).save(tmp_path / "plain.png")
    export(tmp_path / "plain.png", tmp_path / "plain_out.png", ids["ec"])
    chk = verify_manifest(tmp_path / "plain_out.png")
    assert chk.ok and chk.actions == ["c2pa.opened", "c2pa.repackaged"] and not chk.ingredients[0]["has_manifest"]
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "plain.png")),
                          np.asarray(PILImage.open(tmp_path / "plain_out.png")))
    # a parent whose manifest no longer matched when it was used: a warning, not a failure of the child
    export(rewrite_idat(first, tmp_path / "bad_parent.png"), tmp_path / "child.png", ids["ec"])
    chk = verify_manifest(tmp_path / "child.png")
    assert chk.valid and chk.ingredients[0].get("validation_failures") == ["assertion.dataHash.mismatch"]
    assert chk.warnings and "already failed validation" in chk.warnings[0]


# ------------------------------------------------------------------ refusals

def test_export_refuses_bad_requests_and_never_overwrites(ids, tmp_path):
    dst = tmp_path / "ct.png"
    dst.write_bytes(b"precious")
    with pytest.raises(MedForensicsError, match="already exists"):
        export(CT, dst, ids["ec"])
    assert dst.read_bytes() == b"precious"
    with pytest.raises(MedForensicsError, match="unknown output suffix"):
        export(CT, tmp_path / "ct.tif", ids["ec"])
    with pytest.raises(MedForensicsError, match="8 bits"):
        export(CT, tmp_path / "ct16.jpg", ids["ec"], bits=16)
    with pytest.raises(MedForensicsError, match="width > 0"):
        export(CT, tmp_path / "w.png", ids["ec"], window=(40, 0))
    with pytest.raises(MedForensicsError, match="no pixel data"):
        export(get_testdata_file("rtplan.dcm"), tmp_path / "plan.png", ids["ec"])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MedForensicsError, match="not a DICOM, PNG, JPEG or TIFF"):
        export(tmp_path / "notes.txt", tmp_path / "notes.png", ids["ec"])
    with pytest.raises(MedForensicsError, match="does not exist"):
        export(CT, tmp_path / "no" / "ct.png", ids["ec"])
    # a certificate C2PA will not sign with (expired): a one-line error, no file left behind
    ca = ids["ec"]
    key = generate_key("ec")
    old = issue_certificate(key, "expired signer", issuer_key=ca.ca_key, issuer_cert=ca.chain[0], days=1,
                            not_before=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    with pytest.raises(MedForensicsError, match="C2PA signing failed .*not valid at time of signing"):
        export(CT, tmp_path / "expired.png", Identity(key=key, cert=old, chain=ca.chain))
    assert not (tmp_path / "expired.png").exists()
    # a key that does not belong to the certificate
    with pytest.raises(MedForensicsError, match="C2PA signing failed"):
        export(CT, tmp_path / "mismatch.png", Identity(key=generate_key("ec"), cert=ca.cert, chain=ca.chain))
    assert not (tmp_path / "mismatch.png").exists()
    # no identity: a plain image, no manifest
    s = export(CT, tmp_path / "plain.png", None)
    assert not s["manifest"] and not verify_manifest(tmp_path / "plain.png").present


# ------------------------------------------------------------------ command line

def test_cli_export(ids, tmp_path, capsys, monkeypatch, run_cli):
    keys = ids["rsa"].save(tmp_path / "keys")
    study = tmp_path / "study"
    (study / "series1").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (study / "series1" / name).write_bytes(Path(get_testdata_file(name)).read_bytes())
    (study / "series1" / "1.2.3.4").write_bytes(Path(CT).read_bytes())  # a UID-named file without suffix
    (study / "README.txt").write_text("not an image")
    out = tmp_path / "out"
    sign = ["--key", keys["key"], "--cert", keys["cert"]]

    r = run_cli("export", study, "--out", out, "--format", "png", "--window", "-600,1500", *sign)
    assert r.returncode == 0, r.stderr
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    # the folder's layout below --out, without the folder's own name (io.plan's one layout)
    assert made == ["series1/1.2.3.4.png", "series1/CT_small.png", "series1/MR_small.png"]
    assert "exported 3 of 3" in r.stderr and "Radiology export RSA" in r.stderr
    assert f"to {out / 'series1'}," in r.stderr  # the folder the files really went to (issue 18)
    assert "skipped 1 file(s) that export does not take" in r.stderr  # README.txt
    chk = verify_manifest(out / "series1/CT_small.png", trust=[keys["ca"]])
    assert chk.ok and "c2pa.color_adjustments" in chk.actions

    # never overwrite: exit 2, nothing touched
    before = (out / "series1/CT_small.png").read_bytes()
    r = run_cli("export", study, "--out", out, *sign)
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (out / "series1/CT_small.png").read_bytes() == before

    # usage errors: no key, contradictory options, bad window, 16-bit JPEG
    assert run_cli("export", CT, "--out", tmp_path / "o2").returncode == 2
    assert run_cli("export", CT, "--out", tmp_path / "o2", "--no-manifest", *sign).returncode == 2
    r = run_cli("export", CT, "--out", tmp_path / "o2", "--window", "40", *sign)
    assert r.returncode == 2 and "CENTRE,WIDTH" in r.stderr
    assert run_cli("export", CT, "--out", tmp_path / "o2", "--format", "jpeg", "--bits", "16",
                *sign).returncode == 2
    # a wrong key file: one line, exit 1
    r = run_cli("export", CT, "--out", tmp_path / "o2", "--key", keys["cert"], "--cert", keys["cert"])
    assert r.returncode == 1 and "not a usable PEM private key" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o2").exists()

    # an input that is not an image: reported, the others are exported, exit 1
    r = run_cli("export", CT, get_testdata_file("rtplan.dcm"), "--out", tmp_path / "o3",
             "--format", "jpeg", *sign)
    assert r.returncode == 1 and "no pixel data" in r.stderr and "exported 1 of 2" in r.stderr
    assert verify_manifest(tmp_path / "o3" / "CT_small.jpg").valid

    # a file where the output folder should be: one line naming it, no raw OS error
    (tmp_path / "file").write_text("x")
    r = run_cli("export", CT, "--out", tmp_path / "file" / "o", *sign)
    assert r.returncode == 1 and "cannot create the folder" in r.stderr and "Errno" not in r.stderr

    # --no-manifest writes plain images
    r = run_cli("export", CT, "--out", tmp_path / "o4", "--no-manifest")
    assert r.returncode == 0 and not verify_manifest(tmp_path / "o4" / "CT_small.png").present


# ------------------------------------------------------------------ the declared modality

def _repaint_keeping_manifest(png: Path, out: Path) -> Path:
    """The PNG with some pixels changed and its original C2PA chunk (caBX) carried over."""
    import io as _io

    data = png.read_bytes()
    j = data.find(b"caBX")
    m = struct.unpack(">I", data[j - 4:j])[0]
    cabx = data[j - 4:j + 8 + m]
    px = np.array(PILImage.open(png))
    px[100:140, 100:140] = 0
    buf = _io.BytesIO()
    PILImage.fromarray(px).save(buf, format="PNG")
    new = buf.getvalue()
    k = new.find(b"IEND") - 4
    out.write_bytes(new[:k] + cabx + new[k:])
    return out


def test_a_ct_exported_to_png_is_scanned_as_ct_display_values(ids, tmp_path, shared_data, run_cli):
    """Issue 18: a CT slice exported to PNG with a manifest that says CT was scanned as a
    radiograph (the radiograph model ran on it). An intact manifest's modality now holds; the
    detectors that read Hounsfield units do not assess display values; a broken manifest, none,
    or one whose signer fails the trust anchors given declares nothing."""
    from medforensics.scan import DISPLAY_VALUES, scan

    slice_ = sorted((shared_data / "ct" / "lidc-idri" / "LIDC-IDRI-0001").rglob("*.dcm"))[60]
    d = tmp_path / "in"
    d.mkdir()
    export(slice_, d / "signed.png", ids["ec"])
    export(slice_, d / "plain.png")
    _repaint_keeping_manifest(d / "signed.png", d / "broken.png")
    got = {Path(v.path).name: v for v in scan([str(d)])}
    signed, plain, broken = got["signed.png"], got["plain.png"], got["broken.png"]
    assert signed.modality == "CT" and not signed.errors
    for name in ("ct_physics", "noise_residual", "learned_2d"):
        assert signed.not_assessed[name] == DISPLAY_VALUES
    assert not {"radiograph_physics", "spectral"} & set(signed.assessed)
    assert "copy_move" in signed.assessed and signed.label == "authentic"
    assert any("not checked against a trust store" in w for w in signed.warnings)
    assert plain.modality == broken.modality == "XR"

    def modality_with(anchor: Identity) -> tuple[str, list[str]]:
        (ca := tmp_path / f"{id(anchor)}.pem").write_bytes(ca_of(anchor).public_bytes(serialization.Encoding.PEM))
        out = tmp_path / f"{id(anchor)}.jsonl"
        assert run_cli("scan", d / "signed.png", "--json", out, "--trust", ca, "-q").code == 0
        rec = json.loads(out.read_text())
        return rec["modality"], rec["warnings"]

    assert modality_with(ids["ec"]) == ("CT", [])            # our signer: declared, nothing to warn of
    assert modality_with(ids["other"])[0] == "XR"            # a signer outside the anchors declares nothing
