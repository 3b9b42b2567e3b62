"""One trust decision (issue 18, item 5): ``scan --trust`` and ``verify --trust`` judge the same
files alike, for DICOM signatures and C2PA manifests; ``verify`` without trust anchors never says
OK; every ``keys new`` makes a signer with a name of its own."""
from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from medforensics.provenance.keys import load_certificates, subject
from medforensics.provenance.trust import decide, fingerprint, load_anchors, status_of

pytest.importorskip("c2pa")

CT = get_testdata_file("CT_small.dcm")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Our signer and an attacker's (both made by ``keys new``), and the files of the issue: DICOM
    signed by each, ours tampered after signing, ours tampered and re-signed by the attacker, and
    a C2PA-exported PNG from each (made by ``medforensics export``)."""
    from typer.testing import CliRunner

    from medforensics.cli.main import app

    root = tmp_path_factory.mktemp("trust")
    runner = CliRunner()

    def cli(*args):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, r.output
        return r

    cli("keys", "new", root / "ours")
    cli("keys", "new", root / "attacker")
    key = {who: ("--key", root / who / "key.pem", "--cert", root / who / "cert.pem") for who in ("ours", "attacker")}
    files = root / "files"
    for who in ("ours", "attacker"):
        cli("sign", CT, *key[who], "--out", root / f"signed-{who}")
        cli("export", CT, *key[who], "--out", root / f"png-{who}", "--format", "png")
    for name in EXPECTED:  # one folder each: versions of one instance in one folder would be one series
        (files / name.replace(".", "-")).mkdir(parents=True)
    place = {name: files / name.replace(".", "-") / name for name in EXPECTED}
    place["ours.dcm"].write_bytes((root / "signed-ours" / "CT_small.dcm").read_bytes())
    place["attacker.dcm"].write_bytes((root / "signed-attacker" / "CT_small.dcm").read_bytes())
    place["ours.png"].write_bytes((root / "png-ours" / "CT_small.png").read_bytes())
    place["attacker.png"].write_bytes((root / "png-attacker" / "CT_small.png").read_bytes())
    ds = pydicom.dcmread(place["ours.dcm"])
    px = ds.pixel_array.copy()
    px[40:60, 40:60] += 50
    ds.PixelData = px.tobytes()
    ds.save_as(place["tampered.dcm"])
    # the attack of the issue: change the pixels of the original, then sign with a fresh key
    ds = pydicom.dcmread(CT)
    px = ds.pixel_array.copy()
    px[40:60, 40:60] += 50
    ds.PixelData = px.tobytes()
    ds.save_as(root / "forged.dcm")
    cli("sign", root / "forged.dcm", *key["attacker"], "--out", root / "resigned")
    place["resigned.dcm"].write_bytes((root / "resigned" / "forged.dcm").read_bytes())
    return root, files, place


EXPECTED = {"ours.dcm": "trusted", "attacker.dcm": "untrusted", "tampered.dcm": "broken",
            "resigned.dcm": "untrusted", "ours.png": "trusted", "attacker.png": "untrusted"}


def _scan(run_cli, files: Path, out: Path, *trust) -> tuple[dict[str, str], dict[str, str]]:
    """The provenance detector's one status per file, and the signer's fingerprint, from scan's JSON."""
    r = run_cli("scan", files, "--detectors", "provenance", "--json", out, *trust)
    assert r.returncode == 0, r.stderr
    result, who = {}, {}
    for rec in map(json.loads, out.read_text().splitlines()):
        (ev,) = [e for e in rec["evidence"] if e["detector"] == "provenance"]
        status = ev["details"]["status"]
        (counts,) = [status[k] for k in ("signature", "c2pa") if k in status]
        (one,) = counts  # one signature or manifest per file
        name = Path(rec["path"]).name
        result[name] = one
        (signer,) = ev["details"]["signers"]
        assert signer["status"] == one and signer["file"] == name
        who[name] = signer["fingerprint"]
    return result, who


def _verify(run_cli, files: Path, out: Path, *trust) -> tuple[int, dict[str, str], dict[str, str]]:
    r = run_cli("verify", files, "--json", out, *trust)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    status = {Path(rec["path"]).name: rec["status"] for rec in recs}
    who = {Path(rec["path"]).name: rec["signers"][0]["fingerprint"] for rec in recs}
    return r.returncode, status, who


def test_scan_and_verify_agree_with_and_without_trust(world, run_cli, tmp_path, monkeypatch):
    root, files, _ = world
    monkeypatch.delenv("MEDFORENSICS_TRUST", raising=False)
    trust = ("--trust", root / "ours" / "ca.pem")
    scanned, scan_who = _scan(run_cli, files, tmp_path / "scan.jsonl", *trust)
    code, verified, verify_who = _verify(run_cli, files, tmp_path / "verify.jsonl", *trust)
    assert scanned == verified == EXPECTED
    assert code == 1  # broken and untrusted files fail
    # both name the same signer certificate, and the attacker's is not ours
    ours = fingerprint(load_certificates(root / "ours" / "cert.pem")[0])
    assert scan_who == verify_who
    assert {n for n, fp in verify_who.items() if fp == ours} == {"ours.dcm", "tampered.dcm", "ours.png"}

    # no trust anchors: intact signatures are "not-checked" for both, the tampered one still broken
    scanned, _ = _scan(run_cli, files, tmp_path / "scan2.jsonl")
    code, verified, _ = _verify(run_cli, files, tmp_path / "verify2.jsonl")
    unchecked = {n: ("broken" if s == "broken" else "not-checked") for n, s in EXPECTED.items()}
    assert scanned == verified == unchecked and code == 1


def test_verify_without_trust_never_says_ok(world, run_cli, tmp_path, monkeypatch):
    root, _, files = world
    monkeypatch.delenv("MEDFORENSICS_TRUST", raising=False)
    # the attack of the issue: a tampered file re-signed with a fresh key used to verify with exit 0
    r = run_cli("verify", files["resigned.dcm"])
    assert r.returncode == 3, r.stdout + r.stderr
    attacker = load_certificates(root / "attacker" / "cert.pem")[0]
    ours = load_certificates(root / "ours" / "cert.pem")[0]
    assert "NOT checked against any trust store" in r.stderr
    assert subject(attacker) in r.stderr and fingerprint(attacker) in r.stderr
    assert fingerprint(ours) not in r.stderr and "OK" not in r.stdout
    # our own intact PNG and DICOM without anchors: the same distinct status
    r = run_cli("verify", files["ours.dcm"], files["ours.png"])
    assert r.returncode == 3 and fingerprint(ours) in r.stderr
    # with the anchor (as an option, or from MEDFORENSICS_TRUST): exit 0; the attacker's: exit 1
    assert run_cli("verify", files["ours.dcm"], files["ours.png"], "--trust", root / "ours" / "ca.pem").returncode == 0
    monkeypatch.setenv("MEDFORENSICS_TRUST", str(root / "ours" / "ca.pem"))
    assert run_cli("verify", files["ours.dcm"], files["ours.png"]).returncode == 0
    r = run_cli("verify", files["resigned.dcm"])
    assert r.returncode == 1 and "not trusted" in r.stdout


def test_keys_new_gives_each_signer_its_own_name(world, run_cli, tmp_path):
    root, _, _ = world
    ours, attacker = (load_certificates(root / who / "cert.pem") for who in ("ours", "attacker"))
    assert subject(ours[0]) != subject(attacker[0])
    assert ours[0].subject.rfc4514_string() != attacker[0].subject.rfc4514_string()
    # the same --name twice: the subjects still differ (a random serialNumber attribute)
    for d in ("a", "b"):
        r = run_cli("keys", "new", tmp_path / d, "--name", "Radiology")
        assert r.returncode == 0, r.stderr
        assert "SHA-256" in r.stderr
    a, b = (load_certificates(tmp_path / d / "cert.pem")[0] for d in ("a", "b"))
    assert subject(a).startswith("CN=Radiology, O=medforensics, serialNumber=")
    assert subject(a) != subject(b)
    # each still chains to its own CA, and only to it
    ca_a, ca_b = (load_anchors(tmp_path / d / "ca.pem") for d in ("a", "b"))
    assert decide([a], ca_a).status == "trusted" and decide([a], ca_b).status == "untrusted"
    assert decide([a], None).status == "not-checked"


def test_status_of_names_every_case(world):
    from medforensics.provenance.c2pa_manifest import verify_manifest
    from medforensics.provenance.signature import verify_file

    root, _, files = world
    ca = root / "ours" / "ca.pem"
    assert [status_of(c) for c in verify_file(files["ours.dcm"], trust=[ca]).signatures] == ["trusted"]
    assert [status_of(c) for c in verify_file(files["tampered.dcm"], trust=[ca]).signatures] == ["broken"]
    assert [status_of(c) for c in verify_file(files["ours.dcm"], trust=[]).signatures] == ["untrusted"]
    assert status_of(verify_manifest(files["attacker.png"], trust=[ca])) == "untrusted"
    assert status_of(verify_manifest(files["ours.png"])) == "not-checked"


def test_keys_new_and_sign_output_errors_are_one_line(run_cli, tmp_path):
    (tmp_path / "file").write_text("x")
    r = run_cli("keys", "new", tmp_path / "file" / "sub")
    assert r.returncode == 1 and "cannot create the folder" in r.stderr and "is a file, not a folder" in r.stderr
    assert "Errno" not in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("keys", "new", tmp_path / "file")
    assert r.returncode == 2 and "exists and is not a folder" in r.stderr and "Errno" not in r.stderr
    assert run_cli("keys", "new", tmp_path / "k").returncode == 0
    r = run_cli("sign", CT, "--key", tmp_path / "k" / "key.pem", "--cert", tmp_path / "k" / "cert.pem",
                "--out", tmp_path / "file" / "signed")
    assert r.returncode == 1 and "file/signed: cannot create the folder" in r.stderr and "Errno" not in r.stderr


def test_a_lookalike_ca_is_not_our_ca(tmp_path):
    """An attacker who copies our CA's and signer's names exactly still gets ``untrusted``: the
    chain is checked by signature, not by name -- for DICOM and C2PA alike (one function)."""
    from medforensics.provenance.keys import Identity, generate_key, new_identity

    ours = new_identity("Radiology")
    ca_key = generate_key()
    ca_cert = ours.chain[0]
    fake_ca = _same_name_certificate(ca_key, ca_cert, ca=True)
    leaf_key = generate_key()
    leaf = _same_name_certificate(leaf_key, ours.cert, issuer_key=ca_key, issuer=fake_ca)
    assert leaf.subject == ours.cert.subject and fake_ca.subject == ca_cert.subject
    assert decide([leaf], [ca_cert]).status == "untrusted"
    assert decide([leaf, fake_ca], [ca_cert]).status == "untrusted"  # a carried look-alike issuer is no help
    assert decide([ours.cert], [ca_cert]).status == "trusted"
    # the same through a real C2PA export signed by the look-alike
    from medforensics.provenance.c2pa_manifest import export, verify_manifest

    export(CT, tmp_path / "fake.png", Identity(key=leaf_key, cert=leaf, chain=[fake_ca]))
    chk = verify_manifest(tmp_path / "fake.png", trust=[ca_cert])
    assert chk.valid and chk.trust == "untrusted" and status_of(chk) == "untrusted"
    assert chk.signer_subject == subject(ours.cert) and chk.signer_fingerprint != fingerprint(ours.cert)


def _same_name_certificate(key, like, *, ca=False, issuer_key=None, issuer=None):
    """A certificate for ``key`` with exactly the subject of ``like`` (issued by ``issuer``)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from medforensics.provenance.keys import DOCUMENT_SIGNING

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    b = (x509.CertificateBuilder().subject_name(like.subject)
         .issuer_name(issuer.subject if issuer is not None else like.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if not ca:
        b = (b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                           crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]),
                            critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False))
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def test_fingerprints_print_verbatim(world, run_cli, tmp_path, monkeypatch):
    """Colon-separated hex holds rich's emoji codes (":AB:", ":OK:", ":CL:"): the fingerprint a
    person compares must reach the terminal exactly as openssl prints it."""
    import medforensics.provenance.trust as trust

    _, _, files = world
    monkeypatch.delenv("MEDFORENSICS_TRUST", raising=False)
    fixed = "92:AB:D2:OK:CL:ID:VS:" + ":".join(["00"] * 25)
    monkeypatch.setattr(trust, "fingerprint", lambda cert: fixed)
    r = run_cli("verify", files["ours.dcm"], files["ours.png"])
    assert r.returncode == 3 and r.stderr.count(fixed) == 2, r.stderr
    r = run_cli("keys", "new", tmp_path / "k")
    assert r.returncode == 0 and f"SHA-256 {fixed}" in r.stderr, r.stderr


def test_the_verdict_reports_the_trust_decision_not_another_detectors_note(world, run_cli, tmp_path):
    """The container detector also sees a C2PA manifest (without anchors: "c2pa-valid"); the
    verdict's provenance is the provenance detector's trust decision."""
    root, _, files = world
    out = tmp_path / "v.jsonl"
    r = run_cli("scan", files["ours.png"], files["attacker.png"], "--detectors", "container,provenance",
                "--json", out, "--trust", root / "ours" / "ca.pem")
    assert r.returncode == 0, r.stderr
    said = {Path(rec["path"]).name: rec["provenance"] for rec in map(json.loads, out.read_text().splitlines())}
    assert "trusted" in said["ours.png"] and "untrusted" not in said["ours.png"]
    assert "untrusted" in said["attacker.png"]
