"""DICOMweb as a source: series of a PACS listed with QIDO-RS and fetched with WADO-RS.

A source is written ``dicomweb+http://HOST:PORT/ROOT`` (or ``dicomweb+https://``), the server's
DICOMweb root (Orthanc: ``.../dicom-web``). :func:`list_series` asks QIDO-RS for the studies
(``/studies``, filtered by StudyInstanceUID and ``StudyDate`` on or after a date) and their series
(``/studies/{study}/series``), one :class:`~medforensics.io.Source` per series whose path is the
series' URL. :func:`fetch_series` fetches a series' instances with WADO-RS
(``/studies/{study}/series/{series}``, a ``multipart/related; type="application/dicom"``
stream, each instance in the syntax the server stores it in) and writes each instance to a file
of a temporary folder as it arrives: the response is read in chunks of :data:`CHUNK` bytes and
never held whole in memory (:class:`MultipartWriter`).

Authentication: a bearer token, or HTTP basic from ``user:password@`` in the URL or from the
settings (:mod:`medforensics.config`). Credentials never appear in a message or a record
(:func:`mask`). A server that cannot be reached, refuses the credentials or answers with a
malformed body gives a one-line :class:`~medforensics.core.MedForensicsError` naming the URL.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from email.message import Message
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from ..core import MedForensicsError

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
#: bytes read from a WADO-RS response at a time
CHUNK = 1 << 16
#: QIDO-RS results asked for per request (``limit``/``offset`` paging)
PAGE = 1000
TIMEOUT = 60.0
_ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_USERINFO = re.compile(r"(dicomweb\+https?://|https?://)[^/@\s]*@", re.IGNORECASE)


def is_dicomweb(location: str | Path) -> bool:
    """Whether ``location`` names a DICOMweb server (``dicomweb+http(s)://``)."""
    return isinstance(location, str) and location.lower().startswith(SCHEMES)


def mask(text: str) -> str:
    """``text`` with any ``user:password@`` of a URL replaced by ``***@``.

    >>> mask("dicomweb+http://alice:pw@pacs:8042/dicom-web is down")
    'dicomweb+http://***@pacs:8042/dicom-web is down'
    """
    return _USERINFO.sub(lambda m: m.group(1) + "***@", text)


@dataclass(frozen=True)
class Server:
    """A DICOMweb root: ``http`` is the URL requests go to, ``name`` the ``dicomweb+`` URL shown
    and recorded (both without credentials); ``headers`` carry the authentication."""

    http: str
    name: str
    headers: dict = field(default_factory=dict, repr=False, compare=False)


def server(url: str, token: str | None = None, user: str | None = None, password: str | None = None) -> Server:
    """The server of a ``dicomweb+http(s)://`` URL. Authentication, first found: ``token`` (a bearer
    token), ``user:password@`` in the URL, ``user``/``password``; else the settings'
    ``MEDFORENSICS_DICOMWEB_TOKEN``, then ``MEDFORENSICS_DICOMWEB_USER``/``_PASSWORD``.

    >>> s = server("dicomweb+http://alice:pw@127.0.0.1:8042/dicom-web/")
    >>> s.http, s.name, s.headers["Authorization"][:6]
    ('http://127.0.0.1:8042/dicom-web', 'dicomweb+http://127.0.0.1:8042/dicom-web', 'Basic ')
    """
    if not is_dicomweb(url):
        raise MedForensicsError(mask(url), "not a DICOMweb URL (dicomweb+http://HOST/ROOT or dicomweb+https://...)")
    parts = urlsplit(url[len("dicomweb+"):])
    if not parts.hostname:
        raise MedForensicsError(mask(url), "no host in the DICOMweb URL")
    if parts.query or parts.fragment:
        raise MedForensicsError(mask(url), "a DICOMweb root has no query (?...) or fragment (#...); "
                                "use --study and --since to choose studies")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    try:
        netloc = host + (f":{parts.port}" if parts.port else "")
    except ValueError:
        raise MedForensicsError(mask(url), "the port is not a number") from None
    http = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    if token is None and parts.username is None and user is None:
        from ..config import settings
        s = settings()
        token, user, password = s.dicomweb_token, s.dicomweb_user, s.dicomweb_password
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    else:
        if parts.username is not None:
            from urllib.parse import unquote
            user, password = unquote(parts.username), unquote(parts.password or "")
        if user:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()
    return Server(http, "dicomweb+" + http, headers)


def _open(srv: Server, path: str, accept: str, params: dict | None = None):
    url = srv.http + path + ("?" + urlencode(params) if params else "")
    shown = srv.name + path
    req = urllib.request.Request(url, headers={**srv.headers, "Accept": accept})
    try:
        return urllib.request.urlopen(req, timeout=TIMEOUT, context=ssl.create_default_context()
                                      if url.startswith("https") else None)
    except urllib.error.HTTPError as e:
        why = {401: "the server refused the credentials (401 Unauthorized)",
               403: "access forbidden (403)", 404: "not found on the server (404)"}.get(
                   e.code, f"the server answered {e.code} {e.reason}")
        if e.code == 401 and not srv.headers:
            why += "; give a token (--dicomweb-token-file) or user:password@ in the URL"
        raise MedForensicsError(shown, why) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise MedForensicsError(shown, f"cannot reach the DICOMweb server ({mask(str(reason))[:200]})") from None


def _qido(srv: Server, path: str, params: dict) -> list[dict]:
    """All results of a QIDO-RS query, page by page."""
    results: list[dict] = []
    while True:
        with _open(srv, path, "application/dicom+json", {**params, "limit": PAGE, "offset": len(results)}) as r:
            body = r.read()
        if not body.strip():
            return results  # 204 No Content: nothing matches
        try:
            page = json.loads(body)
        except ValueError:
            raise MedForensicsError(srv.name + path, "the QIDO-RS answer is not JSON") from None
        if not isinstance(page, list):
            raise MedForensicsError(srv.name + path, "the QIDO-RS answer is not a JSON list")
        results.extend(page)
        if len(page) < PAGE:
            return results


def _value(item: dict, tag: str) -> str | None:
    try:
        return str(item[tag]["Value"][0])
    except (KeyError, IndexError, TypeError):
        return None


@dataclass(frozen=True)
class Series:
    """A series on a DICOMweb server: its URL (without credentials), SeriesInstanceUID and the
    headers that authenticate a request for it."""

    url: str
    uid: str
    headers: dict = field(default_factory=dict, repr=False, compare=False)


def list_series(url: str, study: str | None = None, since: date | None = None,
                token: str | None = None) -> list[Series]:
    """The series of the studies that match: StudyInstanceUID ``study``, StudyDate on or after
    ``since`` (studies without a date are left out when ``since`` is given)."""
    srv = server(url, token)
    params: dict = {"includefield": "StudyDate"}
    if study:
        params["StudyInstanceUID"] = study
    if since:
        params["StudyDate"] = since.strftime("%Y%m%d") + "-"
    found = []
    for st in _qido(srv, "/studies", params):
        study_uid = _value(st, "0020000D")
        if not study_uid:
            continue
        for se in _qido(srv, f"/studies/{quote(study_uid)}/series", {}):
            series_uid = _value(se, "0020000E")
            if series_uid:
                found.append(Series(f"{srv.name}/studies/{study_uid}/series/{series_uid}", series_uid, dict(srv.headers)))
    return found


class MultipartWriter:
    """Split a ``multipart/related`` body into files as it streams in.

    :meth:`feed` takes the body chunk by chunk; each part's content goes to a new file of
    ``folder`` as soon as it is known not to be part of a boundary, so the buffer holds at most
    one chunk plus a boundary or a part's headers (``max_buffer`` records the most it held).
    """

    def __init__(self, boundary: str, folder: Path, where: str):
        self.delimiter = b"\r\n--" + boundary.encode("latin-1")
        self.folder, self.where = folder, where
        self.buffer = bytearray(b"\r\n")  # the first boundary may open the body
        self.state = "preamble"
        self.out: BinaryIO | None = None
        self.files: list[Path] = []
        self.max_buffer = 0

    def _bad(self, why: str) -> MedForensicsError:
        return MedForensicsError(self.where, f"malformed multipart answer: {why}")

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        self.max_buffer = max(self.max_buffer, len(self.buffer))
        while True:
            if self.state == "preamble":
                i = self.buffer.find(self.delimiter)
                if i < 0:
                    if len(self.buffer) > CHUNK + len(self.delimiter):
                        raise self._bad("no boundary where the body starts")
                    return
                del self.buffer[:i + len(self.delimiter)]
                self.state = "after-boundary"
            elif self.state == "after-boundary":
                if len(self.buffer) < 2:
                    return
                if self.buffer[:2] == b"--":
                    self.state = "done"
                    self.buffer.clear()
                    return
                if self.buffer[:2] != b"\r\n":
                    raise self._bad("a boundary is not followed by a line break")
                del self.buffer[:2]
                self.state = "headers"
            elif self.state == "headers":
                i = self.buffer.find(b"\r\n\r\n")
                if i < 0 and self.buffer.startswith(b"\r\n"):
                    i = -2  # a part without headers
                if i == -1:
                    if len(self.buffer) > CHUNK:
                        raise self._bad("a part's headers never end")
                    return
                headers = bytes(self.buffer[:max(i, 0)]).decode("latin-1").lower()
                if "content-type" in headers and "application/dicom" not in headers:
                    raise self._bad("a part is not application/dicom")
                del self.buffer[:i + 4]
                path = self.folder / f"{len(self.files):06d}.dcm"
                self.out = open(path, "xb")
                self.files.append(path)
                self.state = "body"
            elif self.state == "body":
                assert self.out is not None
                i = self.buffer.find(self.delimiter)
                if i < 0:
                    keep = len(self.delimiter) - 1
                    if len(self.buffer) > keep:
                        self.out.write(self.buffer[:len(self.buffer) - keep])
                        del self.buffer[:len(self.buffer) - keep]
                    return
                self.out.write(self.buffer[:i])
                self.out.close()
                self.out = None
                del self.buffer[:i + len(self.delimiter)]
                self.state = "after-boundary"
            else:  # done: an epilogue is ignored
                self.buffer.clear()
                return

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        if self.state != "done":
            raise self._bad("the stream ended before its closing boundary")


def fetch_series(source: Series, folder: Path) -> tuple[list[Path], int]:
    """Fetch the instances of a series (a :class:`Series` or a ``dicomweb-series`` source) into ``folder`` (one file each, in the
    order the server sends them); return the files and the most bytes the reader buffered."""
    http_url = source.url[len("dicomweb+"):]
    srv = Server(http_url, source.url, dict(source.headers or {}))
    with _open(srv, "", _ACCEPT_DICOM) as r:
        msg = Message()
        msg["content-type"] = r.headers.get("Content-Type", "")
        boundary = msg.get_param("boundary")
        if msg.get_content_type() != "multipart/related" or not boundary:
            raise MedForensicsError(source.url, f"malformed multipart answer: Content-Type is "
                                    f"{r.headers.get('Content-Type')!r}, not multipart/related with a boundary")
        writer = MultipartWriter(str(boundary), folder, source.url)
        try:
            while chunk := r.read(CHUNK):
                writer.feed(chunk)
        except OSError as e:
            raise MedForensicsError(source.url, f"the transfer broke off ({type(e).__name__})") from None
        finally:
            if writer.out is not None:
                writer.out.close()
                writer.out = None
        writer.close()
    if not writer.files:
        raise MedForensicsError(source.url, "the series holds no instance")
    return writer.files, writer.max_buffer


@contextmanager
def fetched(source) -> Iterator[list[Path]]:
    """The instance files of a ``dicomweb-series`` source, in a temporary folder removed on exit."""
    folder = Path(tempfile.mkdtemp(prefix="medforensics-dicomweb-"))
    try:
        files, _ = fetch_series(source, folder)
        yield files
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def digest(files: Iterable[Path]) -> str:
    """SHA-256 over the files' SHA-256 digests in order (as :func:`medforensics.scan.fingerprint`)."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return "sha256:" + h.hexdigest()
