"""``medforensics serve`` and ``medforensics review ...`` on the command line: the bootstrap of
the first admin, accounts, the audit trail's export and check, one-line errors; and the service
on PostgreSQL through a URL."""
from __future__ import annotations

import io
import socket
import time

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from medforensics.serve.app import CSRF_HEADER, create_app
from medforensics.serve.auth import verify_password
from medforensics.serve.settings import ServeSettings, load_settings
from medforensics.serve.store import Store


def test_bootstrap_creates_the_first_admin_once(run_cli, tmp_path):
    data = tmp_path / "review"
    r = run_cli("review", "bootstrap", "--data", str(data), "--user", "boss")
    assert r.returncode == 0, r.stderr
    password = r.stdout.split("password (shown once):")[1].split()[0]
    with Store(data / "serve.sqlite") as store:
        boss = store.user("boss")
        assert boss.role == "admin" and verify_password(boss.password_hash, password)
        assert password not in boss.password_hash
        assert [e.action for e in store.audit()] == ["bootstrap"]
    again = run_cli("review", "bootstrap", "--data", str(data), "--user", "other")
    assert again.returncode == 2 and "has accounts already" in again.stderr and "Traceback" not in again.stderr


def test_accounts_and_password_files(run_cli, tmp_path):
    data = tmp_path / "review"
    short = tmp_path / "short.txt"
    short.write_text("abc\n")
    r = run_cli("review", "bootstrap", "--data", str(data), "--password-file", str(short))
    assert r.returncode == 1 and "at least 10 characters" in r.stderr
    good = tmp_path / "pw.txt"
    good.write_text("a-long-enough-password\n")
    assert run_cli("review", "bootstrap", "--data", str(data), "--password-file", str(good)).returncode == 0
    r = run_cli("review", "add-user", "rita", "--role", "reviewer", "--data", str(data))
    assert r.returncode == 0 and "password (shown once)" in r.stdout
    assert run_cli("review", "add-user", "rita", "--data", str(data)).returncode == 2
    assert run_cli("review", "add-user", "x", "--role", "god", "--data", str(data)).returncode == 2
    r = run_cli("review", "set-password", "rita", "--data", str(data))
    assert r.returncode == 0 and "sessions have ended" in r.stdout
    new = r.stdout.split("password (shown once):")[1].split()[0]
    with Store(data / "serve.sqlite") as store:
        assert verify_password(store.user("rita").password_hash, new)
        assert store.audit()[-1].action == "set-password"
    assert run_cli("review", "set-password", "nobody", "--data", str(data)).returncode == 2
    listed = run_cli("review", "users", "--data", str(data)).stdout
    assert "admin" in listed and "rita" in listed and "reviewer" in listed


def test_audit_export_and_verify(run_cli, tmp_path):
    data = tmp_path / "review"
    assert run_cli("review", "bootstrap", "--data", str(data)).returncode == 0
    assert run_cli("review", "add-user", "vic", "--data", str(data)).returncode == 0
    out = tmp_path / "audit.jsonl"
    r = run_cli("review", "audit-export", str(out), "--data", str(data))
    assert r.returncode == 0 and "2 entries" in r.stdout
    assert run_cli("review", "audit-export", str(out), "--data", str(data)).returncode == 2   # never overwritten
    assert run_cli("review", "audit-verify", str(out)).returncode == 0
    assert run_cli("review", "audit-verify", "--data", str(data)).returncode == 0
    lines = out.read_text().splitlines()
    lines[1] = lines[1].replace('user:vic', 'user:eve')
    (tmp_path / "edited.jsonl").write_text("\n".join(lines) + "\n")
    r = run_cli("review", "audit-verify", str(tmp_path / "edited.jsonl"))
    assert r.returncode == 1 and "problem" in r.stderr


def test_serve_refuses_to_start_without_accounts_or_with_bad_settings(run_cli, tmp_path):
    r = run_cli("serve", "--data", str(tmp_path / "empty"), "--port", "1")
    assert r.returncode == 2 and "review bootstrap" in r.stderr and "Traceback" not in r.stderr
    assert run_cli("review", "bootstrap", "--data", str(tmp_path / "ok")).returncode == 0
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        r = run_cli("serve", "--data", str(tmp_path / "ok"), "--port", str(busy.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen there" in r.stderr
    bad = tmp_path / "serve.toml"
    bad.write_text('port = "eighty"\n')
    r = run_cli("serve", "--config", str(bad))
    assert r.returncode == 1 and "port" in r.stderr and "serve.toml" in r.stderr
    bad.write_text("colour = 'red'\n")
    assert "unknown setting" in run_cli("serve", "--config", str(bad)).stderr
    bad.write_text("port = [\n")
    assert "not valid TOML" in run_cli("serve", "--config", str(bad)).stderr


def test_settings_file_paths_are_relative_to_it(tmp_path):
    cfg = tmp_path / "etc" / "serve.toml"
    cfg.parent.mkdir()
    cfg.write_text('data = "review"\ngateway_queue = "spool/queue.sqlite"\nport = 9000\ncookie_secure = true\n'
                   '[provenance]\ntrust = ["ca.pem"]\n')
    s = load_settings(cfg, port=9100)
    assert s.data == tmp_path / "etc" / "review" and s.port == 9100 and s.secure_cookies() is True
    assert s.gateway_queue == str(tmp_path / "etc" / "spool" / "queue.sqlite") and s.trust == [tmp_path / "etc" / "ca.pem"]
    assert s.database_location == str(tmp_path / "etc" / "review" / "serve.sqlite")


def test_the_service_keeps_its_state_in_postgresql(postgres, tmp_path):
    base, port = postgres
    url = f"postgresql://postgres@/postgres?host={base}&port={port}"
    from medforensics.serve.auth import hash_password

    with Store(url) as store:
        if store.user("pgadmin") is None:
            store.add_user("pgadmin", "admin", hash_password("pg-admin-password"))
    settings = ServeSettings(data=tmp_path / "review", database=url, quiz_per_kind=0,
                             detectors=["dicom_header", "copy_move"]).check()
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        r = client.post("/api/session", json={"user": "pgadmin", "password": "pg-admin-password"})
        assert r.status_code == 200
        client.headers[CSRF_HEADER] = r.json()["csrf"]
        buf = io.BytesIO()
        pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(buf, enforce_file_format=True)
        job = client.post("/api/jobs", files=[("files", ("ct.dcm", buf.getvalue(), "application/dicom"))]).json()
        t0 = time.time()
        while client.get(f"/api/jobs/{job['id']}").json()["state"] not in ("done", "failed") and time.time() - t0 < 120:
            time.sleep(0.5)
        items = client.get("/api/items", params={"job": job["id"]}).json()["items"]
        assert len(items) == 1 and items[0]["modality"] == "CT"
        assert client.post(f"/api/items/{items[0]['id']}/decisions",
                           json={"action": "flag", "note": "second opinion"}).status_code == 200
    with Store(url) as store:
        assert store.item(items[0]["id"]).review_state == "flagged"
        assert store.audit_verify() == []
    assert not (tmp_path / "review" / "serve.sqlite").exists()


@pytest.mark.parametrize("host,expected", [("127.0.0.1", False), ("::1", False), ("localhost", False),
                                           ("10.1.2.3", True), ("review.example.org", True)])
def test_cookies_are_secure_off_loopback(host, expected):
    assert ServeSettings(host=host).secure_cookies() is expected


def test_an_earlier_export_catches_entries_cut_from_the_end(run_cli, tmp_path):
    """Someone who can write the database drops the triggers and deletes the newest entries (and
    their subtree hashes): the stored hashes still agree, an earlier export's tree head does not."""
    from conftest import raw_sql

    data = tmp_path / "review"
    assert run_cli("review", "bootstrap", "--data", str(data)).returncode == 0
    for name in ("u1", "u2", "u3"):
        assert run_cli("review", "add-user", name, "--data", str(data)).returncode == 0
    kept = tmp_path / "kept.jsonl"
    assert run_cli("review", "audit-export", str(kept), "--data", str(data)).returncode == 0     # 4 entries
    assert run_cli("review", "add-user", "u4", "--data", str(data)).returncode == 0
    r = run_cli("review", "audit-verify", "--against", str(kept), "--data", str(data))
    assert r.returncode == 0 and "intact" in r.stdout
    db = str(data / "serve.sqlite")
    for name, in raw_sql(db, "SELECT name FROM sqlite_master WHERE type = 'trigger'"):
        raw_sql(db, f"DROP TRIGGER {name}")
    raw_sql(db, "DELETE FROM serve_audit WHERE seq >= 4")
    raw_sql(db, "DELETE FROM serve_audit_nodes WHERE idx * (1 << level) + (1 << level) > 3")
    assert run_cli("review", "audit-verify", "--data", str(data)).returncode == 0      # what hashes alone miss
    r = run_cli("review", "audit-verify", "--against", str(kept), "--data", str(data))
    assert r.returncode == 1 and "entries were removed" in r.stderr
    assert run_cli("review", "audit-verify", str(kept), "--against", str(kept), "--data", str(data)).returncode == 2
