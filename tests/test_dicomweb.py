"""DICOMweb as a source (``scan``/``ledger add dicomweb+http://...``), against a real Orthanc with
its DICOMweb plugin (tests/orthanc_server.py), and the multipart reader on its own."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

import orthanc_server
from medforensics.core import MedForensicsError
from medforensics.io import dicomweb

LIDC_STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.101370605276577556143013894866"
LIDC_SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.170706757615202213033480003264"
CT_SMALL_SERIES = "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
#: fast detectors, among them the two that read the files again after loading
DETECTORS = "dicom_header,noise_residual,ct_physics,container,provenance"


@pytest.fixture(scope="module")
def lidc_files(shared_data: Path) -> list[Path]:
    """The 11 slices of one LIDC-IDRI-0003 series (StudyDate 2000-01-01)."""
    folder = shared_data / "ct" / "lidc-idri-small" / "LIDC-IDRI-0003" / LIDC_STUDY / LIDC_SERIES
    files = sorted(folder.glob("*.dcm"))
    if len(files) != 11:
        pytest.skip(f"{folder}: expected the 11 slices of LIDC-IDRI-0003's series")
    return files


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, lidc_files):
    """A running Orthanc holding the LIDC series and pydicom's CT_small.dcm (StudyDate 2004-01-19)."""
    why = orthanc_server.missing()
    if why:
        pytest.skip(why)
    server = orthanc_server.start(tmp_path_factory.mktemp("orthanc"))
    try:
        server.upload([*lidc_files, get_testdata_file("CT_small.dcm")])
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's folder for this test alone, to see what the fetch leaves behind."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _records(path: Path) -> dict[str, dict]:
    return {r["uid"]: r for r in map(json.loads, path.read_text().splitlines())}


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("path", "timings", "fingerprint")}


def test_a_dicomweb_scan_gives_the_records_of_a_local_scan(pacs, lidc_files, run_cli, tmp_path, own_tmp):
    remote, local = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    rc, _, err = run_cli("scan", pacs.dicomweb_with_user, "--json", remote, "--detectors", DETECTORS, "-q")
    assert rc == 0, err
    assert orthanc_server.PASSWORD not in err
    rc, _, err = run_cli("scan", lidc_files[0].parent, get_testdata_file("CT_small.dcm"), "--json", local,
                         "--detectors", DETECTORS, "-q")
    assert rc == 0, err
    got, want = _records(remote), _records(local)
    assert set(got) == set(want) == {LIDC_SERIES, "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"}
    for uid in want:
        assert _comparable(got[uid]) == _comparable(want[uid])
        assert got[uid]["errors"] == [] and "dicom_header" in got[uid]["assessed_by"]
    series = got[LIDC_SERIES]
    assert series["path"] == f"{pacs.dicomweb}/studies/{LIDC_STUDY}/series/{LIDC_SERIES}"
    assert series["n_instances"] == 11 and series["kind"] == "series"
    assert series["fingerprint"].startswith("sha256:")
    assert orthanc_server.PASSWORD not in remote.read_text()
    assert list(own_tmp.iterdir()) == []  # every fetched series' folder is gone


def test_study_and_since_choose_the_studies(pacs, run_cli, tmp_path):
    def uids(*args) -> set[str]:
        out = tmp_path / f"{len(list(tmp_path.iterdir()))}.jsonl"
        rc, _, err = run_cli("scan", pacs.dicomweb_with_user, "--json", out, "--detectors", "dicom_header", "-q", *args)
        assert rc == 0, err
        return set(_records(out))

    lidc, small = {LIDC_SERIES}, {"1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"}
    assert uids("--study", LIDC_STUDY) == lidc
    assert uids("--since", "2004-01-19") == small
    assert uids("--since", "2000-01-01") == lidc | small
    assert uids("--since", "2004-01-20") == set()
    assert uids("--study", LIDC_STUDY, "--since", "2001-01-01") == set()


def test_since_keeps_local_files_modified_on_or_after_the_day(run_cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    old, new = folder / "old.dcm", folder / "new.dcm"
    shutil.copy(get_testdata_file("CT_small.dcm"), old)
    shutil.copy(get_testdata_file("MR_small.dcm"), new)
    a_while_ago = time.mktime((2020, 6, 1, 12, 0, 0, 0, 0, -1))
    os.utime(old, (a_while_ago, a_while_ago))
    out = tmp_path / "a.jsonl"
    rc, _, err = run_cli("scan", folder, "--json", out, "--detectors", "dicom_header", "-q", "--since", "2021-01-01")
    assert rc == 0, err
    assert [Path(r["path"]).name for r in map(json.loads, out.read_text().splitlines())] == ["new.dcm"]
    rc, _, err = run_cli("scan", folder, "--detectors", "dicom_header", "-q", "--since", "1.1.2021",
                         "--json", out, "--overwrite")
    assert rc == 2 and "not a date written YYYY-MM-DD" in err
    assert out.exists()  # refused before any output was touched
    log = tmp_path / "log.db"
    assert run_cli("ledger", "init", log).code == 0
    rc, text, err = run_cli("ledger", "add", folder, "--log", log, "--since", "2021-01-01")
    assert rc == 0 and text.strip().startswith("1 added"), text + err
    rc, text, _ = run_cli("ledger", "verify", new, "--log", log)
    assert rc == 0 and "1 unchanged" in text


def test_wrong_credentials_and_a_dead_server_are_one_line_errors(pacs, run_cli, tmp_path):
    wrong = pacs.dicomweb_with_user.replace(orthanc_server.PASSWORD, "not-the-password")
    rc, out, err = run_cli("scan", wrong, "-q")
    assert rc == 1
    lines = [line for line in err.splitlines() if "refused the credentials" in line]
    assert len(lines) == 1 and "Traceback" not in err + out
    assert "not-the-password" not in err + out and "***@" in lines[0]
    token = tmp_path / "token"
    token.write_text("not-a-token\n")
    rc, out, err = run_cli("scan", pacs.dicomweb, "--dicomweb-token-file", token, "-q")
    assert rc == 1 and "401 Unauthorized" in err and "not-a-token" not in err + out
    with orthanc_server.closed_port() as port:
        rc, out, err = run_cli("scan", f"dicomweb+http://127.0.0.1:{port}/dicom-web", "-q")
    assert rc == 1 and "cannot reach the DICOMweb server" in err and "Traceback" not in err
    rc, _, err = run_cli("scan", pacs.dicomweb, "--study", "1.2.3", "-q")  # no user: 401, and a hint
    assert rc == 1 and "--dicomweb-token-file" in err
    rc, _, err = run_cli("scan", tmp_path, "--study", "1.2.3")
    assert rc == 2 and "DICOMweb" in err


def test_ledger_add_from_dicomweb_then_verify_the_local_files(pacs, lidc_files, run_cli, tmp_path, own_tmp):
    log = tmp_path / "log.db"
    assert run_cli("ledger", "init", log).code == 0
    rc, out, err = run_cli("ledger", "add", pacs.dicomweb_with_user, "--log", log)
    assert rc == 0, err
    assert out.strip().startswith("12 added, 0 already logged, 0 error(s)")
    assert orthanc_server.PASSWORD not in out + err
    assert list(own_tmp.iterdir()) == []
    rc, out, err = run_cli("ledger", "verify", *lidc_files, get_testdata_file("CT_small.dcm"), "--log", log)
    assert rc == 0, out + err
    assert "12 unchanged, 0 changed, 0 unknown, 0 error" in out
    rc, out, _ = run_cli("ledger", "add", pacs.dicomweb_with_user, "--log", log, "--study", LIDC_STUDY)
    assert rc == 0 and out.strip().startswith("0 added, 11 already logged")
    # scanned from the server, each instance is found in the log: the provenance detector reads the
    # fetched files while the series is analysed
    scanned = tmp_path / "scan.jsonl"
    rc, _, err = run_cli("scan", pacs.dicomweb_with_user, "--ledger", log, "--detectors", "provenance", "--json", scanned, "-q")
    assert rc == 0, err
    for record in _records(scanned).values():
        assert record["errors"] == [] and record["provenance"] == "ledger:unchanged", record
    assert list(own_tmp.iterdir()) == []


def test_a_series_is_fetched_in_chunks_with_a_bounded_buffer(pacs, lidc_files, tmp_path, monkeypatch):
    monkeypatch.setattr(dicomweb, "CHUNK", 4096)
    series = next(s for s in dicomweb.list_series(pacs.dicomweb_with_user) if s.uid == LIDC_SERIES)
    files, most = dicomweb.fetch_series(series, tmp_path)
    total = sum(f.stat().st_size for f in files)
    assert total > 5_000_000 and len(files) == 11
    assert most <= 4096 + 200  # one chunk and a boundary, never the series
    assert sorted(f.read_bytes() for f in files) == sorted(f.read_bytes() for f in lidc_files)


def _multipart(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_the_multipart_reader_splits_parts_in_any_chunking(tmp_path, chunk):
    parts = [b"DICM" * 1000, b"\r\n--b0undar", b""]  # the second part looks like a boundary cut short
    body = _multipart(parts)
    writer = dicomweb.MultipartWriter("b0undary", tmp_path, "here")
    for i in range(0, len(body), chunk):
        writer.feed(body[i:i + chunk])
    writer.close()
    assert [f.read_bytes() for f in writer.files] == parts
    assert writer.max_buffer <= chunk + 64  # a chunk and a boundary or a part's headers


@pytest.mark.parametrize("body, why", [
    (_multipart([b"x" * 100])[:-20], "ended before its closing boundary"),
    (b"--other\r\n\r\nx\r\n--other--", "ended before its closing boundary"),
    (_multipart([b"x"]).replace(b"application/dicom", b"text/html"), "not application/dicom"),
    (b"--b0undaryXX", "not followed by a line break"),
])
def test_a_malformed_multipart_answer_is_a_one_line_error(tmp_path, body, why):
    writer = dicomweb.MultipartWriter("b0undary", tmp_path, "dicomweb+http://pacs/dicom-web/studies/1/series/2")
    with pytest.raises(MedForensicsError, match=why) as e:
        writer.feed(body)
        writer.close()
    assert str(e.value).startswith("dicomweb+http://pacs/") and "\n" not in str(e.value)


def test_credentials_are_masked_and_never_recorded():
    srv = dicomweb.server("dicomweb+https://a%40b:p%3Ass@pacs.example:8443/dicom-web/")
    assert srv.name == "dicomweb+https://pacs.example:8443/dicom-web"
    assert srv.headers["Authorization"] == "Basic YUBiOnA6c3M="  # a@b:p:ss
    assert "p:ss" not in repr(srv)
    assert dicomweb.server("dicomweb+http://h/r", token="T").headers == {"Authorization": "Bearer T"}
    with pytest.raises(MedForensicsError, match=r"^dicomweb\+http://\*\*\*@h/r\?x=1: a DICOMweb root has no query"):
        dicomweb.server("dicomweb+http://u:secret@h/r?x=1")


class _FakePacs(http.server.BaseHTTPRequestHandler):
    """A DICOMweb server of one study and one series (CT_small.dcm) that wants a bearer token;
    ``server.cut`` bytes are cut off the end of its WADO-RS answer."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - the handler's name
        if self.headers.get("Authorization") != "Bearer good-token":
            self.send_response(401)
            self.end_headers()
            return
        path = self.path.split("?")[0]
        if path in ("/dicom-web/studies", "/dicom-web/studies/1.2.3/series"):
            tag = "0020000D" if path.endswith("studies") else "0020000E"
            body, kind = json.dumps([{tag: {"vr": "UI", "Value": ["1.2.3" if tag == "0020000D" else "1.2.3.4"]}}]).encode(), \
                "application/dicom+json"
        elif path == "/dicom-web/studies/1.2.3/series/1.2.3.4":
            body = _multipart([Path(get_testdata_file("CT_small.dcm")).read_bytes()])
            body = body[:len(body) - self.server.cut]
            kind = 'multipart/related; type="application/dicom"; boundary=b0undary'
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def fake_pacs():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakePacs)
    server.cut = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_bearer_token_and_a_malformed_answer_from_a_server(fake_pacs, run_cli, tmp_path, own_tmp, monkeypatch):
    url = f"dicomweb+http://127.0.0.1:{fake_pacs.server_port}/dicom-web"
    token = tmp_path / "token"
    token.write_text("good-token\n")
    out = tmp_path / "a.jsonl"
    rc, _, err = run_cli("scan", url, "--dicomweb-token-file", token, "--detectors", "dicom_header", "--json", out, "-q")
    assert rc == 0, err
    (record,) = map(json.loads, out.read_text().splitlines())
    assert record["path"] == url + "/studies/1.2.3/series/1.2.3.4" and record["errors"] == []
    assert record["uid"] == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    monkeypatch.setenv("MEDFORENSICS_DICOMWEB_TOKEN", "good-token")  # the setting instead of the file
    fake_pacs.cut = 30  # the closing boundary and the end of the instance are lost
    rc, out_text, err = run_cli("scan", url, "--detectors", "dicom_header", "-q")
    assert rc == 1 and "Traceback" not in err + out_text
    (line,) = [x for x in err.splitlines() if "malformed" in x]
    assert "/series/1.2.3.4: malformed multipart answer: the stream ended before its closing boundary" in line
    assert list(own_tmp.iterdir()) == []
