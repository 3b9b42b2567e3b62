"""The review service's settings: one TOML file for everything ``medforensics serve`` takes.

Every key is optional; the command line's options override the file's. Paths in the file are
relative to the file's folder.

.. code-block:: toml

    data = "/var/lib/medforensics/review"   # the service's folder: uploads, results, database
    database = "postgresql://review@db/review"   # default: serve.sqlite in the data folder
    host = "127.0.0.1"               # listen address (put a TLS proxy in front for the network)
    port = 8600
    max_upload_mb = 1024             # one request's uploads together
    max_upload_files = 5000
    cookie_secure = "auto"           # "auto": Secure cookies unless served over plain HTTP on loopback
    session_hours = 12
    login_attempts = 5               # failed logins per user and per address ...
    login_window_seconds = 300       # ... within this time, then 429 until it passes
    workers = 1                      # scan processes of upload jobs
    detectors = ["container", "copy_move"]   # default: the scan's default detectors
    gateway_queue = "gateway-spool/queue.sqlite"   # show the gateway's checked series (optional)
    gateway_poll_seconds = 5
    quiz_per_kind = 2                # quiz images made at the first start, per forgery kind (0: none)
    demo = false                     # scan the demo's images at the first start (medforensics demo)

    [provenance]                     # the same checks as scan --trust --ledger --watermark-key
    trust = ["ca.pem"]
    ledger = "ledger.sqlite"
    watermark_key = "wm.key"
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import build_settings, check_types, read_toml
from ..core import MedForensicsError

__all__ = ["ServeSettings", "load_settings"]

#: File types an upload may hold, by their first bytes (never by their name).
UPLOAD_TYPES = ("DICOM", "PNG", "JPEG", "TIFF", "NIfTI")


@dataclass
class ServeSettings:
    """What the review service does; see the module's description for each key."""

    data: Path = Path("medforensics-review")
    database: str | None = None
    host: str = "127.0.0.1"
    port: int = 8600
    max_upload_mb: float = 1024.0
    max_upload_files: int = 5000
    cookie_secure: str = "auto"
    session_hours: float = 12.0
    login_attempts: int = 5
    login_window_seconds: float = 300.0
    workers: int = 1
    detectors: list[str] | None = None
    gateway_queue: str | None = None
    gateway_poll_seconds: float = 5.0
    quiz_per_kind: int = 2
    demo: bool = False
    trust: list[Path] = field(default_factory=list)
    ledger: str | None = None
    watermark_key: Path | None = None

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        if self.watermark_key is not None:
            self.watermark_key = Path(self.watermark_key)
        self.trust = [Path(p) for p in self.trust]

    @property
    def database_location(self) -> str:
        """The database: the configured one, else ``serve.sqlite`` in the data folder."""
        return self.database or str(self.data / "serve.sqlite")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def secure_cookies(self) -> bool:
        """Whether session cookies carry ``Secure``: always, never, or (``auto``) unless the
        service listens on a loopback address, where browsers reach it over plain HTTP.

        >>> ServeSettings(host="127.0.0.1").secure_cookies(), ServeSettings(host="0.0.0.0").secure_cookies()
        (False, True)
        """
        if self.cookie_secure in ("true", "false"):
            return self.cookie_secure == "true"
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"

    def check(self) -> "ServeSettings":
        """Refuse settings that cannot work, with the setting named."""
        check_types(self)
        if not 0 <= self.port < 65536:
            raise MedForensicsError("port", f"{self.port} is not a TCP port")
        if self.cookie_secure not in ("auto", "true", "false"):
            raise MedForensicsError("cookie_secure", f"{self.cookie_secure!r}: expected auto, true or false")
        for name in ("max_upload_mb", "session_hours", "login_window_seconds", "gateway_poll_seconds"):
            if getattr(self, name) <= 0:
                raise MedForensicsError(name, f"{getattr(self, name)} must be above 0")
        if self.quiz_per_kind < 0:
            raise MedForensicsError("quiz_per_kind", f"{self.quiz_per_kind} must be 0 or more")
        for name in ("max_upload_files", "login_attempts", "workers"):
            if getattr(self, name) < 1:
                raise MedForensicsError(name, f"{getattr(self, name)} must be at least 1")
        if self.data.exists() and not self.data.is_dir():
            raise MedForensicsError(self.data, "is a file, not a folder (data: the service's folder)")
        return self


def load_settings(path: str | Path | None, **overrides: Any) -> ServeSettings:
    """The settings of the TOML file ``path`` (none: the defaults), with ``overrides`` (the
    command line's options; ``None`` leaves the file's value).

    >>> load_settings(None, port=8700).port
    8700
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        values = _flatten(read_toml(path), path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if isinstance(values.get("cookie_secure"), bool):
        values["cookie_secure"] = str(values["cookie_secure"]).lower()
    return build_settings(ServeSettings, values, path, "serve")


def _flatten(raw: dict, path: Path) -> dict[str, Any]:
    base = path.parent
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "provenance":
            if not isinstance(value, dict):
                raise MedForensicsError(path, "[provenance] must be a table")
            unknown = sorted(set(value) - {"trust", "ledger", "watermark_key"})
            if unknown:
                raise MedForensicsError(path, f"unknown setting(s) in [provenance]: {', '.join(unknown)}")
            if "trust" in value:
                out["trust"] = [base / p for p in value["trust"]]
            if "ledger" in value:
                out["ledger"] = value["ledger"] if "://" in value["ledger"] else str(base / value["ledger"])
            if "watermark_key" in value:
                out["watermark_key"] = base / value["watermark_key"]
        elif key == "data" and isinstance(value, str):
            out[key] = base / value
        elif key in ("database", "gateway_queue") and isinstance(value, str) and "://" not in value:
            out[key] = str(base / value)
        else:
            out[key] = value
    return out
