"""DICOM digital signatures: round trips, tampering, certificates, malformed items, the CLI, and
interoperability with DCMTK's dcmsign in both directions."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medforensics.core import MedForensicsError
from medforensics.provenance.keys import generate_key, issue_certificate, new_identity, Identity
from medforensics.provenance.signature import (FileVerification, SignatureCheck, sign_dataset, sign_file,
                                               verify_dataset, verify_file)

CT = Path(get_testdata_file("CT_small.dcm"))
DCMSIGN = shutil.which("dcmsign")
needs_dcmsign = pytest.mark.skipif(DCMSIGN is None, reason="DCMTK dcmsign not installed (apt-get install dcmtk)")


@pytest.fixture(scope="module")
def ids():
    return {"rsa": new_identity("RSA signer", algorithm="rsa"), "ec": new_identity("EC signer", algorithm="ec")}


@pytest.fixture(scope="module")
def keydirs(ids, tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return {k: v.save(root / k) for k, v in ids.items()}


def _ct() -> pydicom.Dataset:
    return pydicom.dcmread(CT)


def _dcmsign_verify(path: Path, *cas: Path) -> subprocess.CompletedProcess:
    args = [DCMSIGN, "--verify", str(path)]
    for ca in cas:
        args += ["+cf", str(ca)]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("alg", ["rsa", "ec"])
def test_round_trip_in_memory_and_file(ids, alg, tmp_path):
    ident = ids[alg]
    ds = _ct()
    uid = sign_dataset(ds, ident)
    [chk] = verify_dataset(ds, trust=ident.chain)
    assert isinstance(chk, SignatureCheck)
    assert chk.ok and chk.integrity and chk.trusted is True and chk.signature_uid == uid
    assert chk.algorithm == alg and chk.mac_algorithm == "SHA256" and chk.profile == "base"
    assert chk.signer == f"{alg.upper()} signer" and chk.reasons == []
    assert abs((chk.signed_at - dt.datetime.now(dt.timezone.utc)).total_seconds()) < 60

    dst = tmp_path / "signed.dcm"
    sign_file(CT, dst, ident, mac_algorithm="SHA384")
    res = verify_file(dst)
    assert isinstance(res, FileVerification)
    assert res.ok and not res.unsigned and res.error is None
    assert res.signatures[0].trusted is None  # no anchors given: trust not judged
    assert res.signatures[0].mac_algorithm == "SHA384"
    with pytest.raises(MedForensicsError, match="already exists"):
        sign_file(CT, dst, ident)


def test_selected_tags(ids):
    ds = _ct()
    sign_dataset(ds, ids["ec"], tags=["PatientName", "0008,0018"], profile="none")
    [chk] = verify_dataset(ds)
    assert chk.ok and chk.n_signed == 2  # no pixel data selected: no block-digest element
    ds.StudyDate = "19990101"  # not signed
    assert verify_dataset(ds)[0].ok
    ds.PatientName = "Someone^Else"
    [chk] = verify_dataset(ds)
    assert not chk.ok and chk.changed_tags == [] and "cannot be named" in chk.reasons[0]
    with pytest.raises(ValueError, match="absent"):
        sign_dataset(_ct(), ids["ec"], tags=["PatientComments"])
    with pytest.raises(ValueError, match="unknown attribute"):
        sign_dataset(_ct(), ids["ec"], tags=["NoSuchKeyword"])


def test_selected_tags_with_pixels_name_the_changed_attribute(ids):
    ds = _ct()
    sign_dataset(ds, ids["rsa"], tags=["PatientID", "SOPInstanceUID", "PixelData"], profile="authorization")
    [chk] = verify_dataset(ds)
    assert chk.ok and chk.profile == "authorization"
    assert chk.n_signed > 5  # authorization adds the identifying and image attributes
    ds.Rows = 127
    [chk] = verify_dataset(ds)
    assert not chk.ok and chk.changed_tags == ["Rows (0028,0010)"]


def test_two_signatures_and_tampered_attribute(ids, tmp_path):
    ds = _ct()
    u1 = sign_dataset(ds, ids["rsa"], profile="creator")
    u2 = sign_dataset(ds, ids["ec"], tags=["PatientID", "StudyInstanceUID"])
    checks = verify_dataset(ds, trust=[ids["rsa"].chain[0], ids["ec"].chain[0]])
    assert [c.signature_uid for c in checks] == [u1, u2]
    assert all(c.ok and c.trusted for c in checks)
    assert checks[0].profile == "creator"

    p = tmp_path / "two.dcm"
    ds.save_as(p, enforce_file_format=True)
    ds = pydicom.dcmread(p)
    ds.PatientID = "X999"
    checks = verify_dataset(ds)
    assert [c.ok for c in checks] == [False, False]
    assert checks[0].changed_tags == ["PatientID (0010,0020)"]
    assert any("PatientID (0010,0020) changed" in r for r in checks[0].reasons)
    assert not checks[0].pixel_changed


def test_tampered_pixels_are_localised(ids):
    ds = _ct()
    sign_dataset(ds, ids["ec"])
    arr = ds.pixel_array.copy()
    arr[70:75, 10:20] += 50
    ds.PixelData = arr.tobytes()
    [chk] = verify_dataset(ds)
    assert not chk.ok and chk.pixel_changed and chk.changed_tags == []
    assert chk.changed_blocks == [(0, 64, 0, 1, 96, 32)]
    f0, r0, c0, f1, r1, c1 = chk.changed_blocks[0]
    assert r0 <= 70 and r1 >= 75 and c0 <= 10 and c1 >= 20
    assert any("pixel data changed" in r for r in chk.reasons)
    del ds.PixelData
    [chk] = verify_dataset(ds)
    assert chk.pixel_changed and "signed attribute PixelData (7FE0,0010) was removed" in chk.reasons


def test_compressed_pixels_are_localised_on_decoded_values(ids):
    from pydicom.uid import RLELossless
    ds = _ct()
    arr = ds.pixel_array.copy()
    ds.compress(RLELossless, arr)
    sign_dataset(ds, ids["rsa"])
    assert verify_dataset(ds)[0].ok
    arr[100:110, 100:128] -= 30
    ds.compress(RLELossless, arr)
    [chk] = verify_dataset(ds)
    assert chk.pixel_changed and chk.changed_blocks == [(0, 96, 96, 1, 128, 128)]


def test_unsigned_file(tmp_path):
    res = verify_file(CT)
    assert res.unsigned and not res.ok and res.signatures == [] and res.error is None
    bad = tmp_path / "notes.dcm"
    bad.write_text("not dicom")
    res = verify_file(bad)
    assert not res.ok and "not a DICOM file" in res.error


def test_expired_and_not_yet_valid_certificates(ids):
    base = ids["ec"]
    ca_cert, ca_key = base.chain[0], base.ca_key
    now = dt.datetime.now(dt.timezone.utc)
    for start, word in ((now - dt.timedelta(days=10), "expired"), (now + dt.timedelta(days=10), "not yet valid")):
        key = generate_key("ec")
        cert = issue_certificate(key, "Dated signer", issuer_key=ca_key, issuer_cert=ca_cert, not_before=start, days=1)
        ds = _ct()
        sign_dataset(ds, Identity(key=key, cert=cert, chain=[ca_cert]))
        [chk] = verify_dataset(ds, trust=[ca_cert])
        assert chk.integrity and not chk.ok
        assert any(word in r for r in chk.reasons), chk.reasons
        # checked at a time inside its validity period (and the CA's), it is fine
        if start > now:
            assert verify_dataset(ds, trust=[ca_cert], at=start + dt.timedelta(hours=1))[0].ok


def test_untrusted_vs_trusted_chain(ids, keydirs):
    ds = _ct()
    sign_dataset(ds, ids["rsa"])
    [chk] = verify_dataset(ds, trust=[keydirs["ec"]["ca"]])  # someone else's CA
    assert chk.integrity and chk.trusted is False and not chk.ok
    assert any("not trusted" in r for r in chk.reasons)
    [chk] = verify_dataset(ds, trust=[keydirs["rsa"]["ca"]])
    assert chk.ok and chk.trusted is True
    # a self-signed look-alike of the CA (same name, other key) is not accepted
    fake_key = generate_key("rsa")
    fake = issue_certificate(fake_key, ids["rsa"].chain[0].subject.rfc4514_string().split("=")[1].split(",")[0],
                             ca=True)
    assert verify_dataset(ds, trust=[fake])[0].trusted is False


def test_malformed_items_give_reasons_not_crashes(ids):
    def signed():
        ds = _ct()
        sign_dataset(ds, ids["ec"])
        return ds

    ds = signed()
    item = ds[0xFFFAFFFA].value[0]
    item.Signature = b"\x30\x02garbage" + bytes(20)
    [chk] = verify_dataset(ds)
    assert not chk.ok and not chk.integrity
    assert any("signature bytes or the signature item were altered" in r for r in chk.reasons)

    ds = signed()
    ds[0xFFFAFFFA].value[0].CertificateOfSigner = b"not a certificate"
    [chk] = verify_dataset(ds)
    assert not chk.ok and "not a DER X.509 certificate" in chk.reasons[0]

    ds = signed()
    del ds[0x4FFE0001]
    [chk] = verify_dataset(ds)
    assert not chk.ok and "no MAC Parameters item" in chk.reasons[0]

    ds = signed()
    ds[0x4FFE0001].value[0].MACAlgorithm = "MD5"
    [chk] = verify_dataset(ds)
    assert not chk.ok and "unsupported MAC algorithm" in chk.reasons[0]

    ds = signed()
    ds[0xFFFAFFFA].value[0].CertificateType = "PGP"
    assert "unsupported certificate type" in verify_dataset(ds)[0].reasons[0]


def test_cli_sign_and_verify_exit_codes(keydirs, tmp_path, run_cli):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(CT, src / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), src / "sub" / "mr.dcm")
    (src / "broken.dcm").write_text("no dicom here")
    k = keydirs["rsa"]
    out = tmp_path / "out"
    r = run_cli("sign", src, "--key", k["key"], "--cert", k["cert"], "--out", out)
    assert r.returncode == 1, r.stderr
    assert "broken.dcm: not a DICOM file" in r.stderr and "signed 2 of 3" in r.stderr
    assert (out / "ct.dcm").is_file() and (out / "sub" / "mr.dcm").is_file() and not (out / "broken.dcm").exists()

    js = tmp_path / "v.jsonl"
    r = run_cli("verify", out, "--trust", k["ca"], "--json", js)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(js.read_text().splitlines()) == 2
    r = run_cli("verify", out, "--trust", keydirs["ec"]["ca"])
    assert r.returncode == 1 and "not trusted" in r.stdout
    r = run_cli("verify", out / "ct.dcm", CT)
    assert r.returncode == 1 and "UNSIGNED" in r.stdout and "1 unsigned" in r.stderr
    # never overwrite: signing again into the same folder is refused before anything is written
    r = run_cli("sign", src / "ct.dcm", "--key", k["key"], "--cert", k["cert"], "--out", out)
    assert r.returncode == 2 and "ct.dcm: already exists" in r.stderr
    r = run_cli("sign", src, "--key", k["key"], "--cert", k["cert"], "--out", tmp_path / "o2", "--profile", "nope")
    assert r.returncode == 2 and "--profile" in r.stderr
    r = run_cli("verify", out, "--json", js)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_cli_verify_delegates_png_to_c2pa(tmp_path, run_cli):
    pytest.importorskip("medforensics.provenance.c2pa_manifest",
                        reason="provenance.c2pa_manifest not written yet (integrator checks this path)")
    from PIL import Image
    png = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    r = run_cli("verify", png)
    assert r.returncode == 1 and "UNSIGNED" in r.stdout


@needs_dcmsign
@pytest.mark.parametrize("alg", ["rsa", "ec"])
def test_dcmsign_verifies_ours_and_sees_tampering(ids, keydirs, alg, tmp_path):
    signed = tmp_path / "ours.dcm"
    sign_file(CT, signed, ids[alg])
    r = _dcmsign_verify(signed, keydirs[alg]["ca"])
    assert r.returncode == 0 and "Verification : OK" in r.stderr + r.stdout, r.stderr
    ds = pydicom.dcmread(signed)
    arr = ds.pixel_array.copy()
    arr[5, 5] += 1
    ds.PixelData = arr.tobytes()
    bad = tmp_path / "tampered.dcm"
    ds.save_as(bad)
    r = _dcmsign_verify(bad, keydirs[alg]["ca"])
    assert r.returncode != 0 and "signature is invalid" in r.stderr + r.stdout
    assert verify_file(bad).signatures[0].changed_blocks == [(0, 0, 0, 1, 32, 32)]


@needs_dcmsign
@pytest.mark.parametrize("alg,mac", [("rsa", []), ("ec", ["+m2"]), ("rsa", ["+m5", "-t", "PatientName",
                                                                          "-t", "7fe0,0010"])])
def test_we_verify_what_dcmsign_signs(keydirs, alg, mac, tmp_path):
    k = keydirs[alg]
    signed = tmp_path / "dcmtk.dcm"
    r = subprocess.run([DCMSIGN, "--sign", str(k["key"]), str(k["cert"]), "-pw", *mac, str(CT), str(signed)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    res = verify_file(signed, trust=[k["ca"]])
    assert res.ok, [c.reasons for c in res.signatures]
    assert res.signatures[0].mac_algorithm == {(): "RIPEMD160", ("+m2",): "SHA256"}.get(tuple(mac), "SHA512")
    ds = pydicom.dcmread(signed)
    ds.PatientName = "Changed^Name"
    [chk] = verify_dataset(ds, trust=[k["ca"]])
    assert not chk.ok and not chk.integrity


@needs_dcmsign
def test_signatures_coexist_with_dcmsign(ids, keydirs, tmp_path):
    """ours, then dcmsign's, then ours again: all three valid for both verifiers."""
    a, b, c = tmp_path / "a.dcm", tmp_path / "b.dcm", tmp_path / "c.dcm"
    sign_file(get_testdata_file("rtplan.dcm"), a, ids["rsa"])  # nested sequences
    r = subprocess.run([DCMSIGN, "--sign", str(keydirs["ec"]["key"]), str(keydirs["ec"]["cert"]), "-pw", "+m2",
                        str(a), str(b)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    sign_file(b, c, ids["ec"], mac_algorithm="SHA512")
    res = verify_file(c, trust=[keydirs["rsa"]["ca"], keydirs["ec"]["ca"]])
    assert res.ok and len(res.signatures) == 3
    r = _dcmsign_verify(c, keydirs["rsa"]["ca"], keydirs["ec"]["ca"])
    assert r.returncode == 0 and (r.stderr + r.stdout).count("Verification : OK") == 3


@needs_dcmsign
def test_dcmsign_verifies_compressed_and_lidc(ids, keydirs, tmp_path, shared_data):
    sign_file(get_testdata_file("JPEG2000.dcm"), tmp_path / "j2k.dcm", ids["ec"])
    assert _dcmsign_verify(tmp_path / "j2k.dcm", keydirs["ec"]["ca"]).returncode == 0
    lidc = next((shared_data / "ct" / "lidc-idri").rglob("*.dcm"), None)
    if lidc is None:
        pytest.skip("no LIDC slice in shared data")
    sign_file(lidc, tmp_path / "lidc.dcm", ids["rsa"])
    assert _dcmsign_verify(tmp_path / "lidc.dcm", keydirs["rsa"]["ca"]).returncode == 0
    assert verify_file(tmp_path / "lidc.dcm", trust=[keydirs["rsa"]["ca"]]).ok
