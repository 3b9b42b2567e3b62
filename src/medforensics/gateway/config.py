"""The gateway's settings: one TOML file for everything the command line takes.

Every key is optional; the command line's options override the file's. Paths in the file are
relative to the file's folder.

.. code-block:: toml

    ae_title = "MEDFORENSICS"        # this gateway's AE title
    host = "0.0.0.0"                 # listen on every interface (default 127.0.0.1)
    port = 11112
    spool = "/var/lib/medforensics/spool"
    queue = "postgresql://gateway@db/gateway"   # default: queue.sqlite in the spool
    allow = ["CT_SCANNER", "CR_ROOM2@10.1.2.3"] # calling AE titles (optionally @IP); empty: any
    idle_seconds = 10                # a series is checked once no instance came for this long
    max_associations = 10
    max_pdu = 65536                  # bytes; 0: unlimited
    max_instance_mb = 1024           # a larger instance is refused (out of resources)
    workers = 1                      # scan processes
    policy = "policy.toml"           # see medforensics.gateway.policy
    detectors = ["container", "ct_physics"]     # default: the scan's default detectors

    [archive]                        # where checked series go (C-STORE)
    host = "pacs.example.org"
    port = 4242
    ae_title = "ORTHANC"
    retry_seconds = 2                # first wait after a failure; doubles up to max_retry_seconds
    max_retry_seconds = 60

    [tls]                            # DICOM over TLS (PS3.15 B.1): both files, or neither
    cert = "gateway.pem"
    key = "gateway.key"
    ca = "modalities-ca.pem"         # optional: require client certificates signed by it

    [provenance]                     # the same checks as scan --trust --ledger --watermark-key
    trust = ["ca.pem"]
    ledger = "ledger.sqlite"
    watermark_key = "wm.key"
    sign_with = ["signer.key", "signer.pem"]    # sign series that pass, on the way in
    log = "ledger.sqlite"                       # and log them in this transparency log
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import build_settings, check_types, read_toml
from ..core import MedForensicsError

__all__ = ["Archive", "GatewayConfig", "load_config"]


@dataclass(frozen=True)
class Archive:
    """The archive (PACS) that receives checked series."""

    host: str
    port: int
    ae_title: str = "ANY-SCP"
    retry_seconds: float = 2.0
    max_retry_seconds: float = 60.0

    @classmethod
    def parse(cls, text: str) -> "Archive":
        """``HOST:PORT[:AE_TITLE]``.

        >>> Archive.parse("127.0.0.1:4242:ORTHANC")
        Archive(host='127.0.0.1', port=4242, ae_title='ORTHANC', retry_seconds=2.0, max_retry_seconds=60.0)
        """
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1].isdigit() or not 0 < int(parts[1]) < 65536:
            raise MedForensicsError("--archive", f"{text!r}: expected HOST:PORT or HOST:PORT:AE_TITLE (a port 1-65535)")
        return cls(parts[0], int(parts[1]), *(parts[2:] or []))


@dataclass
class GatewayConfig:
    """What the gateway does; see the module's description for each key."""

    ae_title: str = "MEDFORENSICS"
    host: str = "127.0.0.1"
    port: int = 11112
    spool: Path = Path("gateway-spool")
    queue: str | None = None
    allow: list[str] = field(default_factory=list)
    idle_seconds: float = 10.0
    max_associations: int = 10
    max_pdu: int = 65536
    max_instance_mb: float = 1024.0
    workers: int = 1
    policy: Path | None = None
    detectors: list[str] | None = None
    archive: Archive | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    trust: list[Path] = field(default_factory=list)
    ledger: str | None = None
    watermark_key: Path | None = None
    sign_with: tuple[Path, Path] | None = None
    log: str | None = None

    def __post_init__(self) -> None:
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        self.trust = [Path(p) for p in self.trust]
        if self.sign_with is not None:
            self.sign_with = (Path(self.sign_with[0]), Path(self.sign_with[1]))

    @property
    def queue_location(self) -> str:
        """The queue: the configured one, else ``queue.sqlite`` in the spool."""
        return self.queue or str(self.spool / "queue.sqlite")

    def allowed(self, calling_ae: str, address: str) -> bool:
        """Whether a calling AE title from ``address`` may send: any when the allow-list is
        empty, else an entry ``AE`` or ``AE@IP`` that matches.

        >>> GatewayConfig(allow=["CT1", "CR2@10.0.0.5"]).allowed("CR2", "10.0.0.6")
        False
        """
        if not self.allow:
            return True
        for entry in self.allow:
            ae, _, ip = entry.partition("@")
            if ae.strip() == calling_ae.strip() and (not ip or ip == address):
                return True
        return False

    def check(self) -> "GatewayConfig":
        """Refuse settings that cannot work, with the setting named."""
        check_types(self)
        if not 0 < self.port < 65536:
            raise MedForensicsError("port", f"{self.port} is not a TCP port")
        _ae_title("ae_title", self.ae_title)
        for entry in self.allow:
            ae, at, ip = entry.partition("@")
            _ae_title("allow", ae)
            if at and not ip.strip():
                raise MedForensicsError("allow", f"{entry!r}: an address is expected after '@'")
        if self.archive is not None:
            check_types(self.archive, "archive.")
            if not 0 < self.archive.port < 65536:
                raise MedForensicsError("archive.port", f"{self.archive.port} is not a TCP port")
            _ae_title("archive.ae_title", self.archive.ae_title)
            if self.archive.retry_seconds <= 0 or self.archive.max_retry_seconds < self.archive.retry_seconds:
                raise MedForensicsError("archive", "0 < retry_seconds <= max_retry_seconds is required")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise MedForensicsError("tls", "give both a certificate and its key, or neither")
        if self.idle_seconds < 0 or self.max_associations < 1 or self.workers < 1 or self.max_instance_mb <= 0:
            raise MedForensicsError("gateway", "idle_seconds >= 0, max_associations >= 1, workers >= 1 and "
                                    "max_instance_mb > 0 are required")
        if self.max_pdu < 0:
            raise MedForensicsError("max_pdu", f"{self.max_pdu}: a size in bytes, or 0 for no limit")
        if self.log and not self.sign_with:
            raise MedForensicsError("log", "logging series on the way in needs sign_with (a key and certificate)")
        return self


def _ae_title(setting: str, value: str) -> None:
    if not 0 < len(value.strip()) <= 16 or "\\" in value or any(ord(c) < 32 for c in value):
        raise MedForensicsError(setting, f"{value!r}: an AE title has 1 to 16 characters, no backslash or control "
                                "character")


_PATHS = {"spool", "policy", "tls_cert", "tls_key", "tls_ca", "watermark_key"}


def load_config(path: str | Path | None, **overrides: Any) -> GatewayConfig:
    """The settings of the TOML file ``path`` (none: the defaults), with ``overrides`` (the
    command line's options; ``None`` leaves the file's value)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        values = _flatten(read_toml(path), path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_settings(GatewayConfig, values, path, "gateway")


def _known_keys(path: Path, section: str, value: Any, known: set[str]) -> None:
    if not isinstance(value, dict):
        raise MedForensicsError(path, f"[{section}] must be a table")
    unknown = sorted(set(value) - known)
    if unknown:
        raise MedForensicsError(path, f"unknown setting(s) in [{section}]: {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(known))})")


def _flatten(raw: dict, path: Path) -> dict[str, Any]:
    base = path.parent
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "archive":
            if not isinstance(value, dict) or "host" not in value or "port" not in value:
                raise MedForensicsError(path, "[archive] needs host and port")
            try:
                out["archive"] = Archive(**value)
            except TypeError as e:
                raise MedForensicsError(path, f"[archive]: {e}") from None
        elif key == "tls":
            _known_keys(path, "tls", value, {"cert", "key", "ca"})
            for k in ("cert", "key", "ca"):
                if k in value:
                    out[f"tls_{k}"] = base / value[k]
        elif key == "provenance":
            _known_keys(path, "provenance", value, {"trust", "ledger", "log", "watermark_key", "sign_with"})
            if "trust" in value:
                out["trust"] = [base / p for p in value["trust"]]
            for k in ("ledger", "log"):
                if k in value:
                    out[k] = value[k] if "://" in value[k] else str(base / value[k])
            if "watermark_key" in value:
                out["watermark_key"] = base / value["watermark_key"]
            if "sign_with" in value:
                key_file, cert = value["sign_with"]
                out["sign_with"] = (base / key_file, base / cert)
        elif key in _PATHS:
            out[key] = base / value
        elif key == "queue" and "://" not in str(value):
            out[key] = str(base / value)
        else:
            out[key] = value
    return out
