"""The write path of a served log (issue 18): a real ``medforensics ledger serve --writable`` in a
subprocess on a free loopback port; every refused write (no token, wrong or revoked token, too
large, too many entries, over-long or unknown fields, malformed JSON) gets its status and leaves
the log exactly as it was; an authorised write records the token's name; the attack of the
issue (a tampered fingerprint under a genuine UID) fails."""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from pydicom.data import get_testdata_file

from conftest import free_port
from medforensics.core import MedForensicsError
from medforensics.provenance.ledger import (TOKEN_PREFIX, Fingerprint, Ledger, WriteLimits, fingerprint, generate_key,
                                            parse_entry)

CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
MAX_BODY, MAX_ENTRIES = 65536, 50


def _entry(i: int, **change) -> dict:
    return {**Fingerprint(f"1.2.826.0.1.3680043.10.{i}", f"{i:064x}", f"{i + 7:064x}").to_dict(), **change}


def _new_log(folder: Path) -> Path:
    """A log whose key file is recorded at creation (so ``serve --writable`` finds it), holding CT_small."""
    key = generate_key()
    keyfile = folder / "log.key.pem"
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    log = folder / "log.db"
    with Ledger.create(log, key, key_path=keyfile) as lg:
        lg.append([fingerprint(CT)])
    return log


def _serve(log: Path, *extra: str, tls: ssl.SSLContext | None = None) -> tuple[subprocess.Popen, int]:
    """Start ``medforensics ledger serve LOG EXTRA...`` on a free loopback port and wait until it
    answers (over HTTPS with ``tls``, the client context that trusts its certificate)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFORENSICS_LEDGER")}
    proc = subprocess.Popen([sys.executable, "-m", "medforensics", "ledger", "serve", str(log), "--port", str(port),
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode(errors='replace')[-2000:]}")
        try:
            c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=tls) if tls else \
                http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/tree-head")
            if c.getresponse().status == 200:
                c.close()
                return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not answer within 60 s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(port, log, token of 'pacs') of a writable log served with small limits."""
    folder = tmp_path_factory.mktemp("served")
    log = _new_log(folder)
    with Ledger(log) as lg:
        token = lg.new_token("pacs")
    proc, port = _serve(log, "--writable", "--max-body-bytes", str(MAX_BODY), "--max-entries", str(MAX_ENTRIES))
    try:
        yield port, log, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def snapshot(log: Path) -> tuple:
    """Everything a write could change: the signed head and the row count of every table."""
    with Ledger(log) as lg:
        head = lg.head().to_dict()
    c = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
    try:
        counts = tuple(c.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                       for t in ("ledger_leaves", "ledger_nodes", "ledger_heads", "ledger_writes", "ledger_tokens"))
    finally:
        c.close()
    return head, counts


def post(port: int, body: bytes | dict, token: str | None = None, auth: str | None = None) -> tuple[int, str]:
    """POST /entries; returns (status, detail)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if auth is not None:
        headers["Authorization"] = auth
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("POST", "/entries", body=data, headers=headers)
        r = c.getresponse()
        text = r.read().decode(errors="replace")
    finally:
        c.close()
    try:
        detail = json.loads(text).get("detail", text)
    except ValueError:
        detail = text
    return r.status, str(detail)


def raw_post(port: int, head: str, body: bytes = b"") -> tuple[int, str]:
    """Send a hand-written request (headers that no client library would send) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode("latin-1") + b"\r\n\r\n" + body)
        got = b""
        while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 4 + _length(got):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    status = int(got.split(b" ", 2)[1])
    return status, got.split(b"\r\n\r\n", 1)[1].decode(errors="replace")


def _length(got: bytes) -> int:
    for line in got.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


# ---------------------------------------------------------------------------------------------
# Refused writes leave the log unchanged (real server)
# ---------------------------------------------------------------------------------------------

REFUSED = {
    # name: (how to send it, expected status, words of the reason)
    "no token": (lambda port, tok: post(port, {"entries": [_entry(1)]}), 401, "Bearer"),
    "wrong token": (lambda port, tok: post(port, {"entries": [_entry(1)]}, TOKEN_PREFIX + secrets.token_urlsafe(32)),
                    401, "unknown or revoked"),
    "token of another scheme": (lambda port, tok: post(port, {"entries": [_entry(1)]}, auth=f"Basic {tok}"), 401,
                                "Bearer"),
    "token with a character changed": (lambda port, tok: post(port, {"entries": [_entry(1)]},
                                                              tok[:-1] + ("A" if tok[-1] != "A" else "B")),
                                       401, "unknown or revoked"),
    "Content-Length over the limit (no body sent)": (
        lambda port, tok: raw_post(port, f"POST /entries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                                         f"Content-Type: application/json\r\nContent-Length: {200 * 1024 * 1024}"),
        413, "over the limit"),
    "chunked body over the limit": (
        lambda port, tok: raw_post(port, f"POST /entries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                                         "Content-Type: application/json\r\nTransfer-Encoding: chunked",
                                   b"".join(b"2000\r\n" + b" " * 0x2000 + b"\r\n" for _ in range(MAX_BODY // 0x2000 + 1))),
        413, "over the limit"),
    "too many entries": (lambda port, tok: post(port, {"entries": [_entry(i) for i in range(MAX_ENTRIES + 1)]}, tok),
                         413, f"limit is {MAX_ENTRIES}"),
    "UID of 65 characters": (lambda port, tok: post(port, {"entries": [_entry(1, key="1." + "2" * 63)]}, tok), 422,
                             "DICOM UID"),
    "key that is not a UID": (lambda port, tok: post(port, {"entries": [_entry(1, key="<script>")]}, tok), 422,
                              "DICOM UID"),
    "long kind string": (lambda port, tok: post(port, {"entries": [_entry(1, kind="k" * 50000)]}, tok), 422,
                         "is not one of"),
    "unknown kind": (lambda port, tok: post(port, {"entries": [_entry(1, kind="evil")]}, tok), 422, "is not one of"),
    "short hash": (lambda port, tok: post(port, {"entries": [_entry(1, pixel_sha256="ab" * 31)]}, tok), 422,
                   "64 lowercase hex"),
    "long source": (lambda port, tok: post(port, {"entries": [_entry(1, source="s" * 1025)]}, tok), 422,
                    "source is longer"),
    "unknown field": (lambda port, tok: post(port, {"entries": [_entry(1, comment="x")]}, tok), 422, "unknown field"),
    "number as key": (lambda port, tok: post(port, {"entries": [_entry(1, key=123)]}, tok), 422, "must be a string"),
    "one bad entry among good ones": (lambda port, tok: post(port, {"entries": [_entry(1), _entry(2, kind="x")]}, tok),
                                      422, "entry 1"),
    "no entries": (lambda port, tok: post(port, {"entries": []}, tok), 422, "at least one"),
    "a bare list": (lambda port, tok: post(port, [_entry(1)], tok), 422, "expected"),
    "malformed JSON": (lambda port, tok: post(port, b'{"entries": [', tok), 400, "not JSON"),
    "not UTF-8": (lambda port, tok: post(port, b'{"entries": ["\xff\xfe"]}', tok), 400, "not JSON"),
    "nested too deeply": (lambda port, tok: post(port, b"[" * 30000 + b"]" * 30000, tok), 400, "not JSON"),
    "Content-Length not a number": (
        lambda port, tok: raw_post(port, f"POST /entries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                                         "Content-Length: 12abc"), 400, ""),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_write_leaves_the_log_unchanged(served, case):
    port, log, token = served
    send, status, words = REFUSED[case]
    before = snapshot(log)
    got, detail = send(port, token)
    assert got == status, (case, got, detail)
    assert words in detail
    assert snapshot(log) == before


def test_authorised_write_records_the_token_name(served, run_cli, tmp_path, monkeypatch):
    port, log, token = served
    before = snapshot(log)
    status, _ = post(port, {"entries": [_entry(900), _entry(901, source="ingest/ct 901.dcm")]}, token)
    assert status == 200
    with Ledger(log) as lg:
        n = before[0]["tree_size"]
        assert lg.size == n + 2 and lg.audit().ok
        assert lg.writer(n) == lg.writer(n + 1) == "pacs" and lg.writer(0) is None  # entry 0 was a local append
        assert lg.entry(n + 1).source == "ingest/ct 901.dcm"
        assert [t.name for t in lg.tokens() if t.entries >= 2] == ["pacs"]
    # the command line posts through the same door: ledger add --log URL --token-file FILE
    monkeypatch.delenv("MEDFORENSICS_LEDGER_TOKEN", raising=False)
    tok = tmp_path / "pacs.token"
    tok.write_text(token + "\n")
    url = f"http://127.0.0.1:{port}"
    rc, out, err = run_cli("ledger", "add", MR, "--log", url, "--token-file", tok)
    assert rc == 0 and "1 added" in out, err
    rc, out, _ = run_cli("ledger", "add", MR, "--log", url, "--token-file", tok)
    assert rc == 0 and "0 added, 1 already logged" in out
    monkeypatch.setenv("MEDFORENSICS_LEDGER_TOKEN", token)  # or from the environment
    assert run_cli("ledger", "add", MR, CT, "--log", url)[0] == 0
    with Ledger(log) as lg:
        e = lg.lookup(fingerprint(MR)).entry
        assert lg.writer(e.index) == "pacs"
    monkeypatch.delenv("MEDFORENSICS_LEDGER_TOKEN")
    rc, _, err = run_cli("ledger", "add", MR, "--log", url)
    assert rc == 2 and "--token-file" in err
    (tmp_path / "wrong.token").write_text(TOKEN_PREFIX + "x" * 43)
    before = snapshot(log)
    rc, _, err = run_cli("ledger", "add", CT, "--log", url, "--token-file", tmp_path / "wrong.token")
    assert rc == 1 and "HTTP 401" in err and "\n" not in err.strip()
    assert snapshot(log) == before


def test_revoked_token_is_refused_at_once(served):
    port, log, _ = served
    with Ledger(log) as lg:
        temp = lg.new_token("temporary")
    assert post(port, {"entries": [_entry(700)]}, temp)[0] == 200
    with Ledger(log) as lg:
        lg.revoke_token("temporary")
    before = snapshot(log)
    status, detail = post(port, {"entries": [_entry(701)]}, temp)
    assert status == 401 and "revoked" in detail
    assert snapshot(log) == before
    with Ledger(log) as lg:  # the audit trail keeps its past write
        assert {t.name: (t.active, t.writes) for t in lg.tokens()}["temporary"] == (False, 1)


def test_the_attack_of_the_issue_fails(served, run_cli, tmp_path):
    """A tampered copy's fingerprint posted under the genuine UID, without a token or with a wrong
    one: refused, and verify still calls the genuine file unchanged and the copy changed."""
    port, log, _ = served
    tampered = pydicom.dcmread(CT)
    arr = tampered.pixel_array.copy()
    arr[40:60, 40:60] += 100
    tampered.PixelData = arr.tobytes()
    tampered.save_as(tmp_path / "tampered.dcm")
    fp = fingerprint(tmp_path / "tampered.dcm")
    assert fp.key == fingerprint(CT).key
    before = snapshot(log)
    for token in (None, TOKEN_PREFIX + secrets.token_urlsafe(32), ""):
        status, _ = post(port, {"entries": [fp.to_dict()]}, token)
        assert status == 401
    assert snapshot(log) == before
    genuine = tmp_path / "genuine.dcm"
    genuine.write_bytes(CT.read_bytes())
    rc, out, _ = run_cli("ledger", "verify", genuine, tmp_path / "tampered.dcm", "--log", log)
    assert rc == 3 and "changed (pixels)" in out and "1 unchanged" in out
    rows = {Path(r["path"]).name: r["status"] for r in _verify_json(run_cli, log, tmp_path, genuine,
                                                                      tmp_path / "tampered.dcm")}
    assert rows == {"genuine.dcm": "unchanged", "tampered.dcm": "changed"}


def _verify_json(run_cli, log, tmp_path, *paths):
    out = tmp_path / f"verify-{secrets.token_hex(4)}.jsonl"
    run_cli("ledger", "verify", *paths, "--log", log, "--json", out)
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_read_only_server_refuses_writes_even_with_a_token(tmp_path):
    log = _new_log(tmp_path)
    with Ledger(log) as lg:
        token = lg.new_token("pacs")
    proc, port = _serve(log)
    try:
        before = snapshot(log)
        assert post(port, {"entries": [_entry(1)]}, token)[0] == 403
        assert snapshot(log) == before
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_writes_over_https(tmp_path):
    """serve --tls-cert/--tls-key serves HTTPS; ledger add posts over it (the client trusts the
    certificate through OpenSSL's SSL_CERT_FILE, as it would a private CA's)."""
    import datetime
    import ipaddress
    key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "tls-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "tls-key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    log = _new_log(tmp_path)
    with Ledger(log) as lg:
        (tmp_path / "w.token").write_text(lg.new_token("tls-writer") + "\n")
    tls = ssl.create_default_context(cafile=str(tmp_path / "tls-cert.pem"))
    proc, port = _serve(log, "--writable", "--tls-cert", str(tmp_path / "tls-cert.pem"), "--tls-key",
                        str(tmp_path / "tls-key.pem"), tls=tls)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFORENSICS_LEDGER")}
        env["SSL_CERT_FILE"] = str(tmp_path / "tls-cert.pem")
        r = subprocess.run([sys.executable, "-m", "medforensics", "ledger", "add", str(MR), "--log",
                            f"https://127.0.0.1:{port}", "--token-file", str(tmp_path / "w.token")],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0 and "1 added" in r.stdout, r.stderr
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):  # TLS only: plain HTTP gets no answer
            c.request("GET", "/tree-head")
            c.getresponse()
        c.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    with Ledger(log) as lg:
        e = lg.lookup(fingerprint(MR)).entry
        assert e is not None and lg.writer(e.index) == "tls-writer"


# ---------------------------------------------------------------------------------------------
# Starting the server
# ---------------------------------------------------------------------------------------------

def test_writable_server_refuses_to_start_without_a_token(tmp_path):
    log = _new_log(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFORENSICS_LEDGER")}
    r = subprocess.run([sys.executable, "-m", "medforensics", "ledger", "serve", str(log), "--writable", "--port",
                        str(free_port())], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1
    assert "no active write token" in r.stderr and "ledger token new" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    with Ledger(log) as lg:  # a revoked token is no token
        lg.new_token("old")
        lg.revoke_token("old")
    r = subprocess.run([sys.executable, "-m", "medforensics", "ledger", "serve", str(log), "--writable", "--port",
                        str(free_port())], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 1 and "no active write token" in r.stderr


def test_startup_warnings_beyond_loopback(tmp_path, run_cli, monkeypatch):
    """The warnings are printed before uvicorn starts; uvicorn.run is replaced so that nothing
    listens beyond loopback during the test."""
    import uvicorn
    started: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.append(kw))
    log = _new_log(tmp_path)
    with Ledger(log) as lg:
        lg.new_token("pacs")
    for host in ("127.0.0.1", "::1", "localhost"):
        rc, _, err = run_cli("ledger", "serve", log, "--writable", "--host", host)
        assert rc == 0 and "warning" not in err and started[-1]["host"] == host
    rc, _, err = run_cli("ledger", "serve", log, "--host", "0.0.0.0")
    assert rc == 0 and "beyond loopback" in err and "in clear" not in err
    rc, _, err = run_cli("ledger", "serve", log, "--writable", "--host", "0.0.0.0")
    assert rc == 0 and "beyond loopback" in err and "tokens travel in clear" in err
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("placeholder")
    key.write_text("placeholder")
    rc, _, err = run_cli("ledger", "serve", log, "--writable", "--host", "10.0.0.5", "--tls-cert", cert,
                         "--tls-key", key)
    assert rc == 0 and "beyond loopback" in err and "in clear" not in err
    assert started[-1]["ssl_certfile"] == str(cert) and started[-1]["ssl_keyfile"] == str(key)
    assert run_cli("ledger", "serve", log, "--tls-cert", cert)[0] == 2
    assert len(started) == 6


# ---------------------------------------------------------------------------------------------
# Tokens and entry rules (library)
# ---------------------------------------------------------------------------------------------

def test_tokens_are_stored_hashed_and_checked(tmp_path, run_cli):
    log = _new_log(tmp_path)
    with Ledger(log) as lg:
        token = lg.new_token("pacs-ingest")
        assert token.startswith(TOKEN_PREFIX) and len(token) == len(TOKEN_PREFIX) + 43
        assert lg.authenticate(token) == "pacs-ingest"
        for bad in (None, "", token + "x", token[:-1], "x" * 10_000):
            assert lg.authenticate(bad) is None
        for name in ("", "a b", "-x", "x" * 65, "ü"):
            with pytest.raises(MedForensicsError, match="token name"):
                lg.new_token(name)
        with pytest.raises(MedForensicsError, match="exists already"):
            lg.new_token("pacs-ingest")
        with pytest.raises(MedForensicsError, match="no token named"):
            lg.revoke_token("nobody")
    raw = sqlite3.connect(log).execute("SELECT name, sha256 FROM ledger_tokens").fetchall()
    assert raw == [("pacs-ingest", hashlib.sha256(token.encode()).hexdigest())]
    assert token not in log.read_bytes().decode("latin-1")
    # the command line: new prints the token once (or writes it 0600), list never shows it
    rc, out, _ = run_cli("ledger", "token", "new", log, "--name", "b")
    assert rc == 0 and out.strip().startswith(TOKEN_PREFIX)
    with Ledger(log) as lg:
        assert lg.authenticate(out.strip()) == "b"
    assert run_cli("ledger", "token", "new", log, "--name", "c", "--out", tmp_path / "c.token")[0] == 0
    assert (tmp_path / "c.token").stat().st_mode & 0o777 == 0o600
    assert run_cli("ledger", "token", "new", log, "--name", "d", "--out", tmp_path / "c.token")[0] == 2
    assert run_cli("ledger", "token", "revoke", log, "--name", "b")[0] == 0
    assert run_cli("ledger", "token", "revoke", log, "--name", "b")[0] == 1
    rc, out, _ = run_cli("ledger", "token", "list", log)
    assert rc == 0 and "pacs-ingest" in out and "revoked" in out and "2 active, 1 revoked" in out
    assert TOKEN_PREFIX not in out


def test_entry_rules():
    lim = WriteLimits()
    ok = parse_entry(_entry(3), "e")
    assert ok.kind == "dicom" and ok.key == "1.2.826.0.1.3680043.10.3"
    pixel = "ab" * 32
    assert parse_entry({"key": pixel, "pixel_sha256": pixel, "header_sha256": "cd" * 32, "kind": "raster"}, "e").key \
        == pixel
    for fp in (fingerprint(CT), fingerprint(MR)):  # what fingerprint() writes always passes
        assert parse_entry(fp.to_dict(), "e") == fp
    for bad, words in (({"key": "1.2", "pixel_sha256": pixel, "header_sha256": pixel, "kind": "raster"}, "pixel_sha256"),
                       (_entry(1, key="1..2"), "UID"), (_entry(1, key="1.2."), "UID"),
                       (_entry(1, pixel_sha256=pixel.upper()), "lowercase"), (_entry(1, source="a\nb"), "control"),
                       ({"key": "1.2"}, "missing"), ("text", "JSON object")):
        with pytest.raises(MedForensicsError, match=words):
            parse_entry(bad, "e", lim)
    assert parse_entry(_entry(1, key="1." + "2" * 70), "e", WriteLimits(max_uid_length=80)).key.startswith("1.22")
    with pytest.raises(MedForensicsError, match="positive"):
        WriteLimits(max_entries=0)
