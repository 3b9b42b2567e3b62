"""The transparency log: fingerprints of real DICOM, SQLite and a real PostgreSQL (conftest starts it),
signed heads, proofs, audit, proof bundles, the CLI and the HTTP API."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydicom.data import get_testdata_file

from conftest import new_database, raw_sql as raw_execute
from medforensics.core import MedForensicsError
from medforensics.provenance.ledger import (BUNDLE_FORMAT, Fingerprint, Ledger, WriteLimits, check_bundle, fingerprint,
                                            generate_key, verify_consistency, verify_inclusion, verify_tree_head)

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))


def _fps(n: int, start: int = 0) -> list[Fingerprint]:
    return [Fingerprint(f"1.2.3.{i}", f"{i:064x}", f"{i + 7:064x}") for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------
# A real PostgreSQL (the session's ``postgres`` fixture, in conftest.py)
# ---------------------------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def log_url(request, tmp_path) -> str:
    """A location for a new log: a SQLite file, or a fresh database in the session's PostgreSQL."""
    return new_database(request, tmp_path, request.param, "ledger")


# ---------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------

def test_fingerprint_of_dicom_and_what_changes_it(tmp_path):
    fp = fingerprint(CT)
    ds = pydicom.dcmread(CT)
    assert fp.key == ds.SOPInstanceUID and fp.kind == "dicom"
    assert fingerprint(ds) == fp  # a Dataset gives the same fingerprint as its file
    # a lossless transfer-syntax change (RLE) keeps pixel and header hashes
    rle = pydicom.dcmread(CT)
    rle.compress(pydicom.uid.RLELossless, generate_instance_uid=False)
    rle.save_as(tmp_path / "rle.dcm")
    assert pydicom.dcmread(tmp_path / "rle.dcm").file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert fingerprint(tmp_path / "rle.dcm") == fp
    # one pixel changed: pixel hash only
    px = pydicom.dcmread(CT)
    arr = px.pixel_array.copy()
    arr[10, 10] += 1
    px.PixelData = arr.tobytes()
    assert fingerprint(px).pixel_sha256 != fp.pixel_sha256 and fingerprint(px).header_sha256 == fp.header_sha256
    # a header attribute changed: header hash only; a non-identifying attribute: nothing
    hd = pydicom.dcmread(CT)
    hd.PatientName = "Doe^Jane"
    assert fingerprint(hd).header_sha256 != fp.header_sha256 and fingerprint(hd).pixel_sha256 == fp.pixel_sha256
    other = pydicom.dcmread(CT)
    other.ImageComments = "not identifying"
    assert fingerprint(other) == fp
    assert fingerprint(MR).key != fp.key


def test_fingerprint_of_raster_uses_pixel_hash_as_key(tmp_path):
    from PIL import Image as PILImage
    arr = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    PILImage.fromarray(arr).save(tmp_path / "a.png")
    PILImage.fromarray(arr).save(tmp_path / "a.tif")
    a, b = fingerprint(tmp_path / "a.png"), fingerprint(tmp_path / "a.tif")
    assert a.key == a.pixel_sha256 and a == b and a.kind == "raster"
    arr[0, 0] ^= 1
    PILImage.fromarray(arr).save(tmp_path / "b.png")
    assert fingerprint(tmp_path / "b.png").key != a.key


def test_unreadable_files_are_errors_naming_them(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    for path in (bad, tmp_path / "missing.dcm", Path(get_testdata_file("rtplan.dcm"))):
        with pytest.raises(MedForensicsError) as e:
            fingerprint(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# The store, on SQLite and PostgreSQL alike
# ---------------------------------------------------------------------------------------------

def test_round_trip_lookup_and_proofs(log_url, tmp_path):
    key = generate_key()
    with Ledger.create(log_url, key) as lg:
        assert lg.size == 0 and verify_tree_head(lg.head(), lg.public_key_pem())
        assert lg.append([fingerprint(CT), fingerprint(MR)]) == [0, 1]
        assert lg.append(_fps(300)) == list(range(2, 302))
        first = lg.head()
        assert lg.append(_fps(37, 1000)) == list(range(302, 339))
        pem = lg.public_key_pem()
    with Ledger(log_url) as lg:  # reopened without the private key: reading needs none
        head = lg.head()
        assert head.tree_size == 339 and verify_tree_head(head, pem)
        res = lg.lookup(fingerprint(CT))
        assert res.status == "unchanged" and res.leaf_index == 0 and res.changed == ()
        assert verify_inclusion(res.entry.leaf_hash, 0, head.tree_size, list(res.proof), head.root_hash)
        # one pixel changed -> changed (pixels); PatientName changed -> changed (header)
        px = pydicom.dcmread(CT)
        arr = px.pixel_array.copy()
        arr[64, 64] = arr[64, 64] + 5
        px.PixelData = arr.tobytes()
        assert lg.lookup(fingerprint(px)).status == "changed" and lg.lookup(fingerprint(px)).changed == ("pixels",)
        hd = pydicom.dcmread(CT)
        hd.PatientName = "Someone^Else"
        assert lg.lookup(fingerprint(hd)).changed == ("header",)
        both = px.copy()
        both.PatientName = "Someone^Else"
        assert lg.lookup(fingerprint(both)).changed == ("pixels", "header")
        new = pydicom.dcmread(CT)
        new.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        assert lg.lookup(fingerprint(new)).status == "unknown"
        # every leaf's proof in every size, and consistency between the signed heads
        e = lg.entry(150)
        for n in (151, 302, 339):
            assert verify_inclusion(e.leaf_hash, 150, n, lg.inclusion_proof(150, n), lg.root(n))
        assert lg.root(302) == first.root_hash
        assert verify_consistency(302, 339, first.root_hash, head.root_hash, lg.consistency_proof(302, 339))
        assert not verify_consistency(301, 339, first.root_hash, head.root_hash, lg.consistency_proof(301, 339))
        assert [h.tree_size for h in lg.heads()] == [0, 2, 302, 339]
        assert lg.audit().ok
        with pytest.raises(MedForensicsError, match="outside"):
            lg.inclusion_proof(5, 400)
        with pytest.raises(MedForensicsError, match="no private key"):
            os.environ.pop("MEDFORENSICS_LEDGER_KEY", None)
            lg.append(_fps(1))
    with Ledger(log_url, private_key=generate_key()) as lg:
        with pytest.raises(MedForensicsError, match="not this log's key"):
            lg.append(_fps(1))
    with pytest.raises(MedForensicsError, match="already"):
        Ledger.create(log_url, key)


def test_audit_detects_edited_node_and_missing_row(log_url):
    with Ledger.create(log_url, generate_key()) as lg:
        lg.append(_fps(100))
        root = lg.head().root_hash
    raw_execute(log_url, "UPDATE ledger_nodes SET hash = ? WHERE level = 2 AND idx = 5", (b"\x11" * 32,))
    with Ledger(log_url, private_key=None) as lg:
        rep = lg.audit()
        assert not rep.ok and any("level 2, index 5" in p and "altered" in p for p in rep.problems)
        with pytest.raises(MedForensicsError, match="corrupted"):  # a proof through the edited node
            lg.lookup(_fps(1, 17)[0])
        assert lg.lookup(_fps(1, 70)[0]).status == "unchanged"  # proofs elsewhere still verify
        assert lg.head().root_hash == root
    raw_execute(log_url, "DELETE FROM ledger_leaves WHERE idx = 42")
    with Ledger(log_url) as lg:
        assert any("missing" in p and "42" in p for p in lg.audit().problems)


def test_tampered_tree_head_and_wrong_schema_are_clear_errors(log_url, tmp_path):
    with Ledger.create(log_url, generate_key()) as lg:
        lg.append(_fps(10))
    raw_execute(log_url, "UPDATE ledger_heads SET root_hash = ? WHERE tree_size = 10", (b"\x22" * 32,))
    with Ledger(log_url) as lg:
        with pytest.raises(MedForensicsError, match="does not verify"):
            lg.head()
        assert any("signature does not verify" in p for p in lg.audit().problems)
    raw_execute(log_url, "UPDATE ledger_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(MedForensicsError, match="schema version"):
        Ledger(log_url)
    raw_execute(log_url, "DROP TABLE ledger_meta")
    with pytest.raises(MedForensicsError, match="not a medforensics ledger"):
        Ledger(log_url)


def test_write_tokens_and_write_records(log_url):
    """Tokens live in the log's own database (SQLite or PostgreSQL): stored as SHA-256, revocable,
    and every write made with one records its name in the same transaction."""
    with Ledger.create(log_url, generate_key()) as lg:
        assert lg.tokens() == [] and lg.authenticate("anything") is None
        a, b = lg.new_token("pacs"), lg.new_token("modality-7")
        assert a != b and lg.authenticate(a) == "pacs" and lg.authenticate(b) == "modality-7"
        lg.append(_fps(3))  # a local append has no writer
        assert lg.append(_fps(2, 10), writer="pacs") == [3, 4]
        assert [lg.writer(i) for i in range(5)] == [None, None, None, "pacs", "pacs"]
        lg.revoke_token("pacs")
        assert lg.authenticate(a) is None and lg.authenticate(b) == "modality-7"
        with pytest.raises(MedForensicsError, match="revoked"):
            lg.append(_fps(1, 20), writer="pacs")
        with pytest.raises(MedForensicsError, match="revoked"):
            lg.append(_fps(1, 20), writer="nobody")
        assert lg.size == 5 and lg.audit().ok
        with pytest.raises(MedForensicsError, match="exists already"):
            lg.new_token("pacs")
        with pytest.raises(MedForensicsError, match="revoked already"):
            lg.revoke_token("pacs")
        info = {t.name: t for t in lg.tokens()}
        assert (info["pacs"].active, info["pacs"].writes, info["pacs"].entries) == (False, 1, 2)
        assert info["modality-7"].active and info["modality-7"].writes == 0


def test_a_log_made_before_tokens_gains_them(tmp_path):
    key = generate_key()
    with Ledger.create(tmp_path / "old.db", key) as lg:
        lg.append(_fps(2))
    raw_execute(str(tmp_path / "old.db"), "DROP TABLE ledger_tokens")
    raw_execute(str(tmp_path / "old.db"), "DROP TABLE ledger_writes")
    with Ledger(tmp_path / "old.db", private_key=key) as lg:
        assert lg.tokens() == [] and lg.authenticate("x") is None and lg.writer(0) is None
        token = lg.new_token("pacs")
        assert lg.authenticate(token) == "pacs"
        assert lg.append(_fps(1, 9), writer="pacs") == [2] and lg.writer(2) == "pacs" and lg.audit().ok


def test_concurrent_writers_are_serialised(log_url):
    key = generate_key()
    Ledger.create(log_url, key).close()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            with Ledger(log_url, private_key=key) as lg:
                for b in range(8):
                    lg.append(_fps(25, 10_000 * w + 100 * b))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with Ledger(log_url) as lg:
        rep = lg.audit()
        assert rep.ok and rep.tree_size == 800 and rep.heads == 33


# ---------------------------------------------------------------------------------------------
# Signed heads and proof bundles: a third party with the public key alone
# ---------------------------------------------------------------------------------------------

def test_signed_heads_verify_only_with_the_right_key(tmp_path):
    for key in (generate_key(), ed25519.Ed25519PrivateKey.generate()):
        with Ledger.create(tmp_path / f"{type(key).__name__}.db", key) as lg:
            lg.append(_fps(5))
            head, pem = lg.head(), lg.public_key_pem()
        assert serialization.load_pem_public_key(pem) is not None
        assert verify_tree_head(head, pem) and verify_tree_head(head.to_dict(), pem.decode())
        wrong = generate_key().public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
        assert not verify_tree_head(head, wrong)
        d = head.to_dict()
        d["tree_size"] += 1
        assert not verify_tree_head(d, pem)
        d = head.to_dict()
        d["timestamp"] += 1
        assert not verify_tree_head(d, pem)
        assert not verify_tree_head({"tree_size": 1}, pem)


def test_proof_bundle_checks_and_tampering(tmp_path):
    with Ledger.create(tmp_path / "l.db", generate_key()) as lg:
        lg.append(_fps(20))
        lg.append([fingerprint(CT)])
        lg.append(_fps(11, 500))
        bundle = lg.prove(CT)
        pem = lg.public_key_pem()
        with pytest.raises(MedForensicsError, match="not in the log"):
            lg.prove(MR)
    assert bundle["format"] == BUNDLE_FORMAT and bundle["leaf"]["index"] == 20
    res = check_bundle(json.loads(json.dumps(bundle)), pem, image=CT)
    assert res.ok and res.problems == [] and res.tree_size == 32 and res.fingerprint.key == fingerprint(CT).key
    assert not check_bundle(bundle, pem, image=MR).ok
    wrong = Ledger.create(tmp_path / "other.db", generate_key())
    assert not check_bundle(bundle, wrong.public_key_pem()).ok
    wrong.close()
    tampered = json.loads(json.dumps(bundle))
    tampered["fingerprint"]["pixel_sha256"] = "0" * 64
    assert "does not record" in " ".join(check_bundle(tampered, pem).problems)
    tampered = json.loads(json.dumps(bundle))
    tampered["inclusion"]["audit_path"][1] = "ab" * 32
    assert "inclusion proof" in " ".join(check_bundle(tampered, pem).problems)
    tampered = json.loads(json.dumps(bundle))
    tampered["leaf"]["index"] = 19
    assert not check_bundle(tampered, pem).ok
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(bundle))
    assert check_bundle(path, pem).ok
    for broken, msg in (('{"format": "medforensics-ledger-proof/1"}', "missing"), ("[1, 2", "not JSON"),
                        ('{"format": "other"}', "not a ledger proof bundle")):
        with pytest.raises(MedForensicsError, match=msg):
            check_bundle(broken, pem)
    bad = json.loads(json.dumps(bundle))
    bad["inclusion"]["audit_path"] = ["zz"]
    with pytest.raises(MedForensicsError, match="malformed"):
        check_bundle(bad, pem)


def test_open_errors_name_the_log(tmp_path):
    with pytest.raises(MedForensicsError, match="no such log"):
        Ledger(tmp_path / "none.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(MedForensicsError) as e:
        Ledger(junk)
    assert str(junk) in str(e.value)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(MedForensicsError, match="not a medforensics ledger"):
        Ledger(other)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

def test_cli_workflow_and_exit_codes(tmp_path, monkeypatch, capsys, run_cli):
    monkeypatch.delenv("MEDFORENSICS_LEDGER", raising=False)
    monkeypatch.delenv("MEDFORENSICS_LEDGER_KEY", raising=False)
    log = str(tmp_path / "l.db")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    shutil.copy(CT, imgs / "ct.dcm")
    shutil.copy(MR, imgs / "mr.dcm")
    (imgs / "notes.txt").write_text("skipped in folders")
    assert run_cli("ledger", "init", log)[0] == 0
    assert (tmp_path / "l.db.key.pem").stat().st_mode & 0o777 == 0o600
    rc, _, err = run_cli("ledger", "init", log)  # refuses an existing log, and suggests no option it lacks
    assert rc == 2 and "already exists" in err and "new" in err and "--overwrite" not in err
    rc, out, _ = run_cli("ledger", "add", str(imgs), str(tmp_path / "missing.dcm"), "--log", log)
    assert rc == 1 and "2 added" in out and "1 error" in out
    rc, out, _ = run_cli("ledger", "add", str(imgs), "--log", log)
    assert rc == 0 and "0 added, 2 already logged" in out
    assert run_cli("ledger", "verify", str(imgs), "--log", log)[0] == 0
    # change PatientName of the copy: verify says changed (header), exit 3
    ds = pydicom.dcmread(imgs / "ct.dcm")
    ds.PatientName = "Changed^Name"
    ds.save_as(tmp_path / "changed.dcm")
    monkeypatch.setenv("MEDFORENSICS_LEDGER", log)  # the default log
    rc, out, _ = run_cli("ledger", "verify", str(tmp_path / "changed.dcm"), str(imgs / "ct.dcm"))
    assert rc == 3 and "changed (header)" in out and "1 unchanged" in out
    proof, pub = tmp_path / "proof.json", tmp_path / "pub.pem"
    assert run_cli("ledger", "prove", str(imgs / "ct.dcm"), "--out", str(proof))[0] == 0
    assert run_cli("ledger", "prove", str(imgs / "ct.dcm"), "--out", str(proof))[0] == 2
    assert run_cli("ledger", "prove", str(tmp_path / "changed.dcm"), "--out",
                   str(tmp_path / "p2.json"))[0] == 1
    assert run_cli("ledger", "key", "--out", str(pub))[0] == 0
    rc, out, _ = run_cli("ledger", "check", str(proof), "--public-key", str(pub))
    assert rc == 0 and "valid" in out
    # the signing time is ISO 8601 UTC, the head's own timestamp
    signed = json.loads(proof.read_text())["tree_head"]["timestamp"]
    iso = datetime.fromtimestamp(signed / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{signed % 1000:03d}Z"
    assert f"signed at {iso}" in out and " ms" not in out
    # a PEM certificate of the log's key is accepted as --public-key (its key is taken); one of another key is not
    cert = tmp_path / "log-cert.pem"
    cert.write_bytes(_self_signed(load_pem_private_key((tmp_path / "l.db.key.pem").read_bytes(), None)))
    rc, out, _ = run_cli("ledger", "check", str(proof), "--public-key", str(cert))
    assert rc == 0 and "valid" in out
    (tmp_path / "other-cert.pem").write_bytes(_self_signed(generate_key()))
    assert run_cli("ledger", "check", str(proof), "--public-key", str(tmp_path / "other-cert.pem"))[0] == 3
    (tmp_path / "broken-cert.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    rc, _, err = run_cli("ledger", "check", str(proof), "--public-key", str(tmp_path / "broken-cert.pem"))
    assert rc == 1 and "certificate" in err
    assert run_cli("ledger", "check", str(proof), "--public-key", str(pub), "--image",
                   str(tmp_path / "changed.dcm"))[0] == 3
    other = tmp_path / "other.pem"
    other.write_bytes(generate_key().public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    assert run_cli("ledger", "check", str(proof), "--public-key", str(other))[0] == 3
    (tmp_path / "junk.json").write_text("{}")
    rc, _, err = run_cli("ledger", "check", str(tmp_path / "junk.json"), "--public-key", str(pub))
    assert rc == 1 and "junk.json" in err
    rc, out, _ = run_cli("ledger", "head")
    assert rc == 0 and json.loads(out)["tree_size"] == 2
    assert run_cli("ledger", "audit")[0] == 0
    raw_execute(log, "UPDATE ledger_nodes SET hash = ? WHERE level = 0 AND idx = 1", (b"\x00" * 32,))
    rc, out, _ = run_cli("ledger", "audit")
    assert rc == 3 and "altered" in out
    rc, _, err = run_cli("ledger", "verify", str(imgs), "--log", "http://127.0.0.1:1")
    assert rc == 2 and "only 'ledger add'" in err  # a served log is for appends; reading needs the log itself
    monkeypatch.delenv("MEDFORENSICS_LEDGER")
    assert run_cli("ledger", "head")[0] == 2  # no log given


def _self_signed(key) -> bytes:
    """A self-signed PEM certificate of ``key`` (as a CA would issue for a log's key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "transparency log")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_check_bundle_takes_a_certificate_as_the_public_key(tmp_path):
    key = generate_key()
    with Ledger.create(tmp_path / "l.db", key) as lg:
        lg.append([fingerprint(CT)])
        bundle = lg.prove(CT)
    assert check_bundle(bundle, _self_signed(key)).ok
    assert verify_tree_head(bundle["tree_head"], _self_signed(key))
    assert not check_bundle(bundle, _self_signed(generate_key())).ok


# ---------------------------------------------------------------------------------------------
# HTTP API
# ---------------------------------------------------------------------------------------------

def test_http_api(tmp_path):
    from fastapi.testclient import TestClient

    from medforensics.provenance.ledger import create_app
    log = tmp_path / "l.db"
    key = generate_key()
    keyfile = tmp_path / "key.pem"
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    with Ledger.create(log, key, key_path=keyfile) as lg:
        lg.append(_fps(9))
        lg.append([fingerprint(CT)])
        ct_hash = lg.lookup(fingerprint(CT)).entry.leaf_hash
        pem = lg.public_key_pem()
    ro = TestClient(create_app(str(log)))
    head = ro.get("/tree-head").json()
    assert head["tree_size"] == 10 and verify_tree_head(head, pem)
    assert ro.get("/public-key").text.encode() == pem
    r = ro.get("/proof/inclusion", params={"leaf_hash": ct_hash.hex()}).json()
    assert r["leaf_index"] == 9 and verify_inclusion(ct_hash, 9, 10, [bytes.fromhex(p) for p in r["audit_path"]],
                                                     bytes.fromhex(head["root_hash"]))
    assert ro.get("/proof/inclusion", params={"leaf_hash": "00" * 32}).status_code == 404
    assert ro.get("/proof/inclusion", params={"leaf_hash": "xyz"}).status_code == 400
    assert ro.get("/lookup", params={"key": fingerprint(CT).key}).json()["leaf_index"] == 9
    assert ro.get("/lookup", params={"key": "nope"}).status_code == 404
    entry = _fps(1, 77)[0].to_dict()
    assert ro.post("/entries", json={"entries": [entry]}).status_code == 403
    with pytest.raises(MedForensicsError, match="ledger token new"):  # writable needs a write token
        create_app(str(log), writable=True)
    with Ledger(log) as lg:
        token = lg.new_token("tests")
    auth = {"Authorization": f"Bearer {token}"}
    rw = TestClient(create_app(str(log), writable=True))
    assert rw.post("/entries", json={"entries": [entry]}).status_code == 401
    assert rw.get("/write-access", headers=auth).json() == {"written_by": "tests", "max_entries": 1000,
                                                             "max_body_bytes": 2 * 1024 * 1024}
    r = rw.post("/entries", json={"entries": [entry, _fps(1, 78)[0].to_dict()]}, headers=auth)
    assert r.status_code == 200 and r.json()["indexes"] == [10, 11] and r.json()["written_by"] == "tests"
    assert rw.post("/entries", json={"entries": [{"key": "k", "pixel_sha256": "zz"}]}, headers=auth).status_code == 422
    small = TestClient(create_app(str(log), writable=True, limits=WriteLimits(max_body_bytes=2000, max_entries=3)))
    assert small.post("/entries", json={"entries": [_fps(1, 80 + i)[0].to_dict() for i in range(4)]},
                      headers=auth).status_code == 413
    assert small.post("/entries", content=b"[" * 1500, headers=auth).status_code == 400
    assert small.post("/entries", content=b" " * 2001, headers=auth).status_code == 413
    with Ledger(log) as lg:
        assert lg.size == 12
    c = ro.get("/proof/consistency", params={"first": 10, "second": 12}).json()
    new = ro.get("/tree-head").json()
    assert verify_consistency(10, 12, bytes.fromhex(head["root_hash"]), bytes.fromhex(new["root_hash"]),
                              [bytes.fromhex(p) for p in c["consistency"]])
    assert ro.get("/proof/consistency", params={"first": 5, "second": 99}).status_code == 400
