"""A client of a log served over HTTP (``medforensics ledger serve --writable``):
:class:`RemoteLog` looks fingerprints up (``GET /lookup``) and appends them (``POST /entries``
with ``Authorization: Bearer TOKEN``). Standard library only (:mod:`urllib.request`)."""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterable

from ...core import MedForensicsError, one_line
from .log import Fingerprint

__all__ = ["RemoteLog", "is_remote"]


def is_remote(location: str | None) -> bool:
    """Whether ``location`` names a served log (an ``http://`` or ``https://`` URL) rather than a database."""
    return bool(location) and str(location).lower().startswith(("http://", "https://"))


def _sendable(source: str | None) -> bool:
    """A source path is sent when the server's default limits accept it (printable, at most 1,024
    characters); an odd file name is simply not recorded rather than failing the batch."""
    return bool(source) and len(source) <= 1024 and source.isprintable()


class RemoteLog:
    """The log served at ``url``; ``token`` (a write token from ``ledger token new``) is sent as
    ``Authorization: Bearer`` with appends only. Errors are :class:`MedForensicsError` naming the
    URL and giving the server's reason (``HTTP 401: unknown or revoked write token``)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0):
        if not is_remote(url):
            raise MedForensicsError(url, "not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.name = self.url
        self._token = token
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Any = None, *, auth: bool = False,
                 missing_ok: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth:
            if not self._token:
                raise MedForensicsError(self.url, "writing to a served log needs a write token "
                                        "(--token-file, or MEDFORENSICS_LEDGER_TOKEN)")
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - http(s) only, checked above
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            if missing_ok and e.code == 404:
                return None
            try:
                detail = json.loads(e.read().decode("utf-8")).get("detail", "")
            except Exception:  # noqa: BLE001 - any unreadable error body
                detail = e.reason
            raise MedForensicsError(self.url, f"HTTP {e.code}: {one_line(detail, 300)}") from None
        except urllib.error.URLError as e:
            raise MedForensicsError(self.url, f"cannot reach the log ({one_line(e.reason, 200)})") from None
        except (OSError, ValueError) as e:
            raise MedForensicsError(self.url, f"bad answer from the log ({one_line(e, 200)})") from None

    def write_access(self) -> dict[str, Any]:
        """``{"written_by", "max_entries", "max_body_bytes"}`` when the token may write; the
        server's refusal (HTTP 401 or 403) as :class:`MedForensicsError` otherwise."""
        return self._request("GET", "/write-access", auth=True)

    def head(self) -> dict[str, Any]:
        """The latest signed tree head, as the server sends it (JSON)."""
        return self._request("GET", "/tree-head")

    def lookup(self, fp: Fingerprint) -> str:
        """``unchanged``, ``changed`` or ``unknown``: ``fp`` against the latest entry of its key."""
        got = self._request("GET", "/lookup?" + urllib.parse.urlencode({"key": fp.key}), missing_ok=True)
        if not got or not got.get("entries"):
            return "unknown"
        logged = got["entries"][-1].get("fingerprint", {})
        same = (logged.get("pixel_sha256"), logged.get("header_sha256")) == (fp.pixel_sha256, fp.header_sha256)
        return "unchanged" if same else "changed"

    def append(self, fingerprints: Iterable[Fingerprint]) -> list[int]:
        """POST the fingerprints in one request (one transaction, one signed head on the server);
        returns their leaf indexes."""
        entries = [{**fp.to_dict(), **({"source": fp.source} if _sendable(fp.source) else {})} for fp in fingerprints]
        if not entries:
            return []
        got = self._request("POST", "/entries", {"entries": entries}, auth=True)
        try:
            return [int(i) for i in got["indexes"]]
        except (KeyError, TypeError, ValueError):
            raise MedForensicsError(self.url, "bad answer from the log (no leaf indexes)") from None

    def close(self) -> None:
        pass

    def __enter__(self) -> "RemoteLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
