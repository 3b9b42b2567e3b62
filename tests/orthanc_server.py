"""A real Orthanc PACS with its DICOMweb plugin, started for tests (Debian ``orthanc`` and
``orthanc-dicomweb``; ``.ci/run`` installs them).

:func:`start` writes Orthanc's own JSON configuration (free HTTP and DICOM ports on 127.0.0.1,
a storage folder of its own, the plugin where Debian installs it, basic authentication with one
user, remote access off), starts ``Orthanc CONFIG.json``, waits for ``/system`` and returns an
:class:`Orthanc` whose :meth:`~Orthanc.upload` posts instances to its REST API. :func:`missing`
says why it cannot run here (no binary, no plugin), for a clear skip.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from conftest import free_port

USER, PASSWORD = "mf-test", "s3cret-test"


def plugin() -> Path | None:
    """The DICOMweb plugin's shared library, from the files the Debian package installed."""
    try:
        listed = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    libs = [Path(line) for line in listed.splitlines() if "libOrthancDicomWeb.so" in line and Path(line).is_file()]
    return min(libs, key=lambda p: len(str(p))) if libs else None


def missing() -> str | None:
    """Why Orthanc with DICOMweb cannot be started here, or ``None``."""
    if shutil.which("Orthanc") is None:
        return "the Orthanc binary is not installed (Debian package 'orthanc'; .ci/run installs it)"
    if plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb'; .ci/run installs it)"
    return None


@dataclass
class Orthanc:
    """A running Orthanc: its HTTP root (``http://127.0.0.1:PORT``) and process."""

    root: str
    process: subprocess.Popen
    log: Path
    dicom_port: int = 0
    folder: Path | None = None
    aet: str = "ORTHANC"

    @property
    def dicomweb(self) -> str:
        """The DICOMweb root as ``scan`` takes it, without credentials."""
        return "dicomweb+" + self.root + "/dicom-web"

    @property
    def dicomweb_with_user(self) -> str:
        """The DICOMweb root with the test user in it (``user:password@``)."""
        return f"dicomweb+http://{USER}:{PASSWORD}@" + self.root[len("http://"):] + "/dicom-web"

    def request(self, method: str, path: str, data: bytes | None = None) -> bytes:
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req = urllib.request.Request(self.root + path, data=data, method=method,
                                     headers={"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def json(self, path: str):
        return json.loads(self.request("GET", path))

    def sop_instance_uids(self) -> set[str]:
        """The SOPInstanceUIDs of every instance Orthanc holds."""
        return {self.json(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in self.json("/instances")}

    def instance_files(self) -> dict[str, bytes]:
        """Every stored instance's file, by SOPInstanceUID."""
        out = {}
        for i in self.json("/instances"):
            out[self.json(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]] = self.request("GET", f"/instances/{i}/file")
        return out

    def upload(self, files) -> None:
        """POST each DICOM file to ``/instances``."""
        for f in files:
            self.request("POST", "/instances", Path(f).read_bytes())

    def restarted(self, timeout: float = 60.0) -> "Orthanc":
        """Orthanc started again on the same ports and storage (after :meth:`stop`)."""
        return start(self.folder, timeout, ports=(int(self.root.rsplit(":", 1)[1]), self.dicom_port))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(folder: Path, timeout: float = 60.0, *, ports: tuple[int, int] | None = None) -> Orthanc:
    """Start Orthanc with its storage and configuration under ``folder`` (``ports``: HTTP and
    DICOM ports to reuse, to restart a stopped one on its storage); raise RuntimeError (with the
    end of its log) when it does not answer ``/system`` within ``timeout`` seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = ports or (free_port(), free_port())
    config = {
        "Name": "medforensics-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [str(plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "StableAge": 1,
    }
    cfg = folder / "orthanc.json"
    cfg.write_text(json.dumps(config, indent=2), encoding="utf-8")
    log = folder / "orthanc.log"
    with open(log, "ab") as fh:
        # TCP_NODELAY=1: DCMTK (Orthanc's DICOM stack) then turns off Nagle's algorithm; with it on,
        # Orthanc stores about 20 instances/s on loopback instead of about 200 (delayed ACKs)
        proc = subprocess.Popen(["Orthanc", str(cfg)], stdout=fh, stderr=subprocess.STDOUT, cwd=folder,
                                env={**os.environ, "TCP_NODELAY": "1"})
    server = Orthanc(f"http://127.0.0.1:{http_port}", proc, log, dicom_port, folder)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            server.request("GET", "/system")
            server.request("GET", "/dicom-web/studies")
            return server
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    server.stop()
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Orthanc did not start (exit {proc.returncode}); its log ends:\n{tail}")


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on (bound without listening while in use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
