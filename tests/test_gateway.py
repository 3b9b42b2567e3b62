"""The DICOM gateway end to end, with real peers (issue 15): DCMTK's ``storescu`` is the modality,
a real Orthanc (started here on free ports) the archive, and ``medforensics gateway run`` a
separate process that is stopped, killed and restarted as a hospital's would be.

What must hold: an authentic series arrives bit-identical with its SR; a manipulated one never
reaches the archive under the default policy; every instance acknowledged with success ends
forwarded or quarantined exactly once (by SOPInstanceUID), through a SIGKILL, an archive down
for 30 s and eight senders at once; people's release and reject decisions are audited.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

import orthanc_server
from conftest import free_port

pytestmark = pytest.mark.skipif(orthanc_server.missing() is not None, reason=str(orthanc_server.missing()))

AET = "MFGATEWAY"


def _dcmtk_storescu() -> str | None:
    """DCMTK's storescu (pynetdicom installs a storescu of its own on the venv's PATH)."""
    for cand in ("/usr/bin/storescu", shutil.which("storescu")):
        if cand and Path(cand).exists():
            out = subprocess.run([cand, "--version"], capture_output=True, text=True).stdout
            if "dcmtk" in out.lower():
                return cand
    return None


STORESCU = _dcmtk_storescu()
needs_dcmtk = pytest.mark.skipif(STORESCU is None, reason="DCMTK's storescu is not installed (Debian package dcmtk)")


def wait_until(predicate, timeout: float, what: str, every: float = 0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


_RUNNING: list["GatewayProcess"] = []


@pytest.fixture(autouse=True)
def _no_gateway_left_running():
    """A test that fails half-way must not leave its gateway running."""
    yield
    while _RUNNING:
        gw = _RUNNING.pop()
        if gw.proc is not None and gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait()


class GatewayProcess:
    """``medforensics gateway run`` in its own process, on a free port."""

    def __init__(self, folder: Path, archive: orthanc_server.Orthanc | None, *, idle: float = 1.0,
                 settings: str = "", policy: str | None = None):
        self.folder = folder
        self.spool = folder / "spool"
        self.port = free_port()
        self.config = folder / "gateway.toml"
        lines = [f'ae_title = "{AET}"', f"port = {self.port}", f'spool = "{self.spool}"', f"idle_seconds = {idle}",
                 settings]
        if policy is not None:
            (folder / "policy.toml").write_text(policy)
            lines.append('policy = "policy.toml"')
        if archive is not None:
            lines += ["[archive]", 'host = "127.0.0.1"', f"port = {archive.dicom_port}", f'ae_title = "{archive.aet}"',
                      "retry_seconds = 1", "max_retry_seconds = 4"]
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = folder / "gateway.log"

    def start(self) -> "GatewayProcess":
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "medforensics", "gateway", "run", "-c", str(self.config),
                                          "-v"], stdout=fh, stderr=subprocess.STDOUT, env=env)
        _RUNNING.append(self)
        wait_until(self.echo, 60, f"the gateway answers C-ECHO (log: {self.tail()})", every=0.3)
        return self

    def echo(self) -> bool:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}: {self.tail()}")
        ae = AE(ae_title="PROBE")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 2
        assoc = ae.associate("127.0.0.1", self.port, ae_title=AET)
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and status.Status == 0

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc = None

    def queue(self):
        from medforensics.gateway.queue import Queue

        return Queue(self.spool / "queue.sqlite")

    def counts(self) -> dict[str, int]:
        q = self.queue()
        try:
            return q.counts()
        finally:
            q.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "medforensics", "gateway", *args, "-c", str(self.config)],
                              capture_output=True, text=True, timeout=120)


def send(files, port: int, *, aet: str = "MODALITY", check: bool = True) -> subprocess.CompletedProcess:
    """DCMTK storescu sending ``files`` over one association (Nagle off, as a modality tuned for speed)."""
    r = subprocess.run([STORESCU, "-aet", aet, "-aec", AET, "127.0.0.1", str(port), *map(str, files)],
                       capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-2000:]
    return r


def relabel(files, dest: Path, tag: str = "") -> list[Path]:
    """A copy of a series as a new study: new Study/Series/SOP/FrameOfReference UIDs, same pixels."""
    dest.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        if "FrameOfReferenceUID" in ds:
            ds.FrameOfReferenceUID = frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if tag:
            ds.SeriesDescription = tag
        p = dest / Path(f).name
        ds.save_as(p)
        out.append(p)
    return out


def contiguous(files, n: int, start: int = 60) -> list[Path]:
    """``n`` adjacent slices of a series (by position), so that they stack as one volume."""
    z = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    return z[start:start + n]


@pytest.fixture(scope="module")
def lidc_files(lidc_series_dir) -> list[Path]:
    return sorted(lidc_series_dir.glob("*.dcm"))


@pytest.fixture(scope="module")
def forged_series(lidc_files, tmp_path_factory) -> list[Path]:
    """The LIDC series with a 14 mm nodule injected (the default scan calls it manipulated), as
    a new study, as a forger would send it."""
    from medforensics.forge import ct
    from medforensics.io.dicom import load_series
    from medforensics.io.write import write_like

    series = load_series(lidc_files)
    forged = ct.inject(series, seed=0, diameter_mm=14.0)
    folder = tmp_path_factory.mktemp("forged")
    written = write_like(series, forged.pixels, folder / "same-uids")
    return relabel(sorted(written), folder / "sent", "forged")


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = orthanc_server.start(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


def _orthanc_instances(server: orthanc_server.Orthanc) -> dict[str, dict]:
    return {t["SOPInstanceUID"]: {**t, "id": i} for i in server.json("/instances")
            for t in [server.json(f"/instances/{i}/simplified-tags")]}


def _finished(gw: GatewayProcess, total: int) -> bool:
    c = gw.counts()
    return c["forwarded"] + c["quarantined"] + c["rejected"] >= total and c["received"] == c["scanned"] == 0


@needs_dcmtk
def test_authentic_arrives_bit_identical_with_its_sr_and_a_forgery_stays_in_quarantine(
        orthanc, lidc_files, forged_series, tmp_path):
    gw = GatewayProcess(tmp_path, orthanc).start()
    try:
        send(lidc_files, gw.port)
        send(forged_series, gw.port, aet="INTRUDER")
        wait_until(lambda: _finished(gw, 2 * len(lidc_files)), 300, f"both series settled ({gw.tail()})")
    finally:
        gw.stop()
    held = orthanc.json("/instances")
    stored = _orthanc_instances(orthanc)
    authentic = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: f for f in lidc_files}
    forged = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in forged_series}
    assert set(authentic) <= set(stored), "every authentic instance reached the archive"
    assert not forged & set(stored), "no instance of the manipulated series reached the archive"
    assert len(held) == len(stored)   # one instance per SOPInstanceUID
    # bit-identical: the archive's copy of each instance holds the same data set, pixel data byte for byte
    for sop, f in list(authentic.items())[::11]:
        mine, theirs = pydicom.dcmread(f), pydicom.dcmread(pydicom.filebase.DicomBytesIO(
            orthanc.request("GET", f"/instances/{stored[sop]['id']}/file")))
        assert theirs.PixelData == mine.PixelData
        assert theirs.file_meta.TransferSyntaxUID == mine.file_meta.TransferSyntaxUID
        assert [e.tag for e in theirs] == [e.tag for e in mine] and theirs == mine
    # the results: an SR in the authentic study, in the archive; the forgery's SR and SEG kept in the spool
    study = pydicom.dcmread(lidc_files[0], stop_before_pixels=True).StudyInstanceUID
    srs = [t for t in stored.values() if t.get("Modality") == "SR"]
    assert len(srs) == 1 and srs[0]["StudyInstanceUID"] == study
    q = gw.queue()
    try:
        series = {s.label: s for s in q.list_series()}
        assert set(series) == {"authentic", "manipulated"}, series
        bad = series["manipulated"]
        assert bad.state == "quarantined" and bad.decision == "quarantine"
        assert bad.sr_path and bad.seg_path and Path(bad.seg_path).exists()
        assert {i.state for i in q.instances(bad.series_instance_uid)} == {"quarantined"}
        assert series["authentic"].state == "forwarded"
        assert {i.calling_ae for i in q.instances(bad.series_instance_uid)} == {"INTRUDER"}
    finally:
        q.close()
    listed = gw.cli("list", "--state", "quarantined", "--json")
    assert listed.returncode == 0 and bad.series_instance_uid in listed.stdout


@needs_dcmtk
def test_sigkill_mid_series_loses_nothing_and_forwards_each_instance_once(lidc_files, tmp_path):
    """Killed while a 133-instance series comes in, restarted, the modality sends the series
    again (as it would after a failed association): every instance acknowledged before or after
    ends forwarded exactly once, and the archive holds the series once."""
    server = orthanc_server.start(tmp_path / "orthanc")
    try:
        gw = GatewayProcess(tmp_path, server, idle=2, settings='detectors = ["dicom_header"]',
                            policy='[labels]\nsuspicious = "forward"\n').start()
        sender = subprocess.Popen([STORESCU, "-aet", "MODALITY", "-aec", AET, "127.0.0.1", str(gw.port),
                                   *map(str, lidc_files)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ})   # Nagle on: slow enough to be caught mid-series
        wait_until(lambda: gw.counts()["received"] >= 40, 120, "40 instances received")
        gw.stop(signal.SIGKILL)
        sender.wait(timeout=60)
        acked_before = {i.sop_instance_uid for i in _instances(gw)}
        assert 40 <= len(acked_before) < len(lidc_files), len(acked_before)
        gw.start()
        send(lidc_files, gw.port)
        wait_until(lambda: gw.counts()["forwarded"] == len(lidc_files), 240, f"all forwarded ({gw.tail()})")
        gw.stop()
        rows = _instances(gw)
        assert acked_before <= {r.sop_instance_uid for r in rows}
        assert len(rows) == len(lidc_files) and {r.state for r in rows} == {"forwarded"}
        q = gw.queue()
        try:
            for r in rows:
                states = [t.state for t in q.transitions(r.sop_instance_uid)]
                assert r.version == 1 and states.count("forwarded") == 1 and states.count("received") == 1, states
        finally:
            q.close()
        stored = _orthanc_instances(server)
        sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in lidc_files}
        assert sops <= set(stored) and len(server.json("/instances")) == len(stored)
    finally:
        server.stop()


def _instances(gw: GatewayProcess) -> list:
    """Every instance the gateway's queue holds, in all series."""
    import sqlite3

    with sqlite3.connect(gw.spool / "queue.sqlite") as db:
        series = [r[0] for r in db.execute("SELECT DISTINCT series_instance_uid FROM gateway_instances")]
    q = gw.queue()
    try:
        return [i for uid in series for i in q.instances(uid)]
    finally:
        q.close()


@needs_dcmtk
def test_an_archive_down_for_30_seconds_gets_everything_afterwards(lidc_files, tmp_path):
    server = orthanc_server.start(tmp_path / "orthanc")
    try:
        gw = GatewayProcess(tmp_path, server, settings='detectors = ["dicom_header"]').start()
        send(lidc_files, gw.port)   # all received: the archive goes down before the check lets them through
        server.stop()
        down = time.monotonic()
        time.sleep(30)
        left = gw.counts()
        assert left["forwarded"] == 0 and left["scanned"] == len(lidc_files), left   # checked, waiting, nothing dropped
        server = server.restarted()
        wait_until(lambda: gw.counts()["forwarded"] == len(lidc_files), 240, f"all forwarded ({gw.tail()})")
        assert time.monotonic() - down >= 30
        gw.stop()
        stored = _orthanc_instances(server)
        sops = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in lidc_files}
        assert sops <= set(stored) and len(server.json("/instances")) == len(stored)
        assert "archive unavailable" in gw.log.read_text()   # said, and retried
    finally:
        server.stop()


@needs_dcmtk
def test_eight_senders_at_once(orthanc, lidc_files, tmp_path):
    part = contiguous(lidc_files, 12)
    studies = [relabel(part, tmp_path / f"s{k}", f"sender {k}") for k in range(8)]
    total = sum(map(len, studies))
    before = set(_orthanc_instances(orthanc))
    (tmp_path / "gw").mkdir()
    gw = GatewayProcess(tmp_path / "gw", orthanc, settings='detectors = ["dicom_header"]').start()
    try:
        senders = [subprocess.Popen([STORESCU, "-aet", f"CT{k}", "-aec", AET, "127.0.0.1", str(gw.port),
                                     *map(str, files)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env={**os.environ, "TCP_NODELAY": "1"}) for k, files in enumerate(studies)]
        for s in senders:
            assert s.wait(timeout=300) == 0, s.stderr.read()[-1000:]
        wait_until(lambda: gw.counts()["forwarded"] == total, 300, f"all {total} forwarded ({gw.tail()})")
    finally:
        gw.stop()
    stored = _orthanc_instances(orthanc)
    new = set(stored) - before
    sent = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for files in studies for f in files}
    assert sent <= new
    assert sum(1 for s in new if stored[s].get("Modality") == "SR") == 8     # one SR per series
    rows = _instances(gw)
    assert len(rows) == total and {i.calling_ae for i in rows} == {f"CT{k}" for k in range(8)}


@needs_dcmtk
def test_people_release_and_reject_quarantined_series_with_an_audit_trail(orthanc, lidc_files, tmp_path):
    part = contiguous(lidc_files, 12, start=30)
    keep, drop = relabel(part, tmp_path / "keep", "keep"), relabel(part, tmp_path / "drop", "drop")
    gw = GatewayProcess(tmp_path, orthanc, settings='detectors = ["dicom_header"]',
                        policy='[labels]\nauthentic = "quarantine"\n').start()
    try:
        send(keep, gw.port)
        send(drop, gw.port)
        wait_until(lambda: gw.counts()["quarantined"] == 24, 180, f"both held ({gw.tail()})")
        uid = {name: pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
               for name, files in (("keep", keep), ("drop", drop))}
        stored = set(_orthanc_instances(orthanc))
        assert not {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in keep + drop} & stored
        r = gw.cli("release", uid["keep"], "--who", "dr.smith", "--why", "read with the modality's log: genuine")
        assert r.returncode == 0, r.stderr
        r = gw.cli("reject", uid["drop"], "--who", "security", "--why", "sent from an unknown workstation")
        assert r.returncode == 0, r.stderr
        again = gw.cli("release", uid["drop"], "--who", "x", "--why", "y")
        assert again.returncode == 1 and "Traceback" not in again.stderr and "rejected" in again.stderr
        wait_until(lambda: gw.counts()["forwarded"] == 12, 120, f"the released series forwarded ({gw.tail()})")
    finally:
        gw.stop()
    stored = _orthanc_instances(orthanc)
    assert {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in keep} <= set(stored)
    assert not {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in drop} & set(stored)
    assert any(t.get("Modality") == "SR" and t["SeriesInstanceUID"] != uid["keep"]
               and t["StudyInstanceUID"] == pydicom.dcmread(keep[0], stop_before_pixels=True).StudyInstanceUID
               for t in stored.values()), "the released series' SR went with it"
    export = tmp_path / "audit.jsonl"
    r = gw.cli("audit", "--export", str(export))
    assert r.returncode == 0, r.stderr
    entries = [json.loads(line) for line in export.read_text().splitlines()]
    assert [(e["who"], e["action"], e["series_instance_uid"], e["before"], e["after"]) for e in entries] == [
        ("dr.smith", "release", uid["keep"], "quarantined", "released"),
        ("security", "reject", uid["drop"], "quarantined", "rejected")]
    assert all(e["at"] and e["why"] for e in entries)
    assert gw.cli("audit", "--export", str(export)).returncode != 0   # never over an existing file


@needs_dcmtk
def test_series_that_pass_are_signed_and_logged_on_the_way_in(orthanc, lidc_files, tmp_path):
    """``sign_with`` and ``log``: the archive receives signed copies that verify against the
    signer's CA, their fingerprints are in the transparency log, and the SR says so."""
    from medforensics.provenance.keys import new_identity
    from medforensics.provenance.ledger import Ledger, fingerprint
    from medforensics.provenance.signature import verify_file

    keys = new_identity("gateway door signer").save(tmp_path / "keys")
    log = tmp_path / "ledger.sqlite"
    r = subprocess.run([sys.executable, "-m", "medforensics", "ledger", "init", str(log)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    part = relabel(contiguous(lidc_files, 12, start=90), tmp_path / "sent", "signed at the door")
    gw = GatewayProcess(tmp_path, orthanc, settings='detectors = ["dicom_header"]\n[provenance]\n'
                        f'sign_with = ["{keys["key"]}", "{keys["cert"]}"]\nlog = "{log}"').start()
    try:
        send(part, gw.port)
        wait_until(lambda: gw.counts()["forwarded"] == len(part), 180, f"all forwarded ({gw.tail()})")
    finally:
        gw.stop()
    stored = _orthanc_instances(orthanc)
    sops = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in part]
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    with Ledger(log) as ledger:
        for sop in sops:
            f = arrived / f"{sop}.dcm"
            f.write_bytes(orthanc.request("GET", f"/instances/{stored[sop]['id']}/file"))
            check = verify_file(f, trust=[keys["ca"]])
            assert check.ok and check.signatures[0].trust == "trusted", check.to_dict()
            assert ledger.lookup(fingerprint(f)).status == "unchanged", f"{sop} is not in the log as it arrived"
            # the pixels are the modality's: only the signature was added
            assert pydicom.dcmread(f).PixelData == pydicom.dcmread(part[sops.index(sop)]).PixelData
    study = pydicom.dcmread(part[0], stop_before_pixels=True).StudyInstanceUID
    sr = next(t for t in stored.values() if t.get("Modality") == "SR" and t["StudyInstanceUID"] == study)
    text = orthanc.request("GET", f"/instances/{sr['id']}/file").decode("latin-1")
    assert "signed" in text and "transparency log" in text
