"""The ledger's HTTP API: a FastAPI app serving tree heads, the public key, inclusion and
consistency proofs, lookups and (when writable) authenticated, bounded appends (:func:`create_app`).

Writes (``POST /entries``) need ``Authorization: Bearer TOKEN`` with a token made by
``medforensics ledger token new`` (:meth:`Ledger.new_token`; the log stores only its SHA-256)
and are refused, before anything is written, when the body, the number of entries or a field is
over :class:`WriteLimits` or malformed:

====== =====================================================================================
status meaning
====== =====================================================================================
200    appended: ``{"indexes", "tree_head", "written_by"}`` (``GET /write-access``: the token's
       name and the limits, ``{"written_by", "max_entries", "max_body_bytes"}``)
400    the body is not JSON (or not UTF-8, or nested too deeply), or Content-Length is not a number
401    no ``Authorization: Bearer`` header, or a token that is unknown or revoked
403    the log is served read-only (no ``--writable``)
413    the body is over ``max_body_bytes``, or it holds more than ``max_entries`` entries
422    JSON of the wrong shape: not ``{"entries": [...]}``, no entries, a field missing, unknown,
       too long or malformed (UID syntax, 64 hex digits, ``kind`` not in :data:`KINDS`)
====== =====================================================================================
"""
# No ``from __future__ import annotations`` here: FastAPI reads the handlers' annotations
# (``Request``, imported inside :func:`create_app`) when the routes are declared.
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ...core import MedForensicsError
from .log import KINDS, SCHEMA_VERSION, Fingerprint, Ledger

__all__ = ["create_app", "WriteLimits", "parse_entry"]

#: A DICOM UID (PS3.5 9.1): digits in dot-separated components, at most 64 characters. Leading
#: zeros inside a component, which the standard forbids, are tolerated: real archives hold them.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"key", "pixel_sha256", "header_sha256", "kind", "source"}


@dataclass(frozen=True)
class WriteLimits:
    """Bounds on one ``POST /entries``: the body in bytes (checked on Content-Length and on the
    bytes actually received, before parsing), the entries in it, a DICOM key (UID) and the
    informational ``source`` path of an entry, in characters."""

    max_body_bytes: int = 2 * 1024 * 1024
    max_entries: int = 1000
    max_uid_length: int = 64
    max_source_length: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_entries", "max_uid_length", "max_source_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise MedForensicsError(None, f"write limit {name} must be a positive whole number")


def parse_entry(d: Any, where: str, limits: WriteLimits = WriteLimits()) -> Fingerprint:
    """A fingerprint from one POSTed entry, held to the rules of what :func:`fingerprint` writes:
    only the fields ``key``, ``pixel_sha256``, ``header_sha256``, ``kind`` (one of :data:`KINDS`)
    and optionally ``source``, all strings; hashes are 64 lowercase hex digits; the key of a
    DICOM entry is a UID of at most ``max_uid_length`` characters (or, for an instance without
    one, its pixel hash) and the key of a raster or NIfTI entry is its pixel hash; ``source`` is
    at most ``max_source_length`` printable characters. :class:`MedForensicsError` naming
    ``where`` otherwise."""
    if not isinstance(d, dict):
        raise MedForensicsError(where, "an entry must be a JSON object")
    unknown = sorted(str(k)[:40] for k in d if k not in _FIELDS)
    if unknown:
        raise MedForensicsError(where, f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; an entry has "
                                f"{', '.join(sorted(_FIELDS))}")
    for name in ("key", "pixel_sha256", "header_sha256", "kind"):
        if name not in d:
            raise MedForensicsError(where, f"the field {name!r} is missing")
    for name in _FIELDS & set(d):
        if not isinstance(d[name], str):
            raise MedForensicsError(where, f"the field {name!r} must be a string")
    kind = d["kind"]
    if kind not in KINDS:
        raise MedForensicsError(where, f"kind {kind[:40]!r} is not one of {', '.join(KINDS)}")
    for name in ("pixel_sha256", "header_sha256"):
        if not _HEX64.fullmatch(d[name]):
            raise MedForensicsError(where, f"{name} is not 64 lowercase hex digits")
    key, pixel = d["key"], d["pixel_sha256"]
    if kind == "dicom":
        if key != pixel and not (len(key) <= limits.max_uid_length and _UID.fullmatch(key)):
            raise MedForensicsError(where, f"key {key[:80]!r} is not a DICOM UID of at most {limits.max_uid_length} "
                                    "characters (digits and dots) nor the pixel hash")
    elif key != pixel:
        raise MedForensicsError(where, f"the key of a {kind} entry must be its pixel_sha256")
    source = d.get("source")
    if source is not None and (len(source) > limits.max_source_length or not source.isprintable()):
        raise MedForensicsError(where, f"source is longer than {limits.max_source_length} characters or holds "
                                "control characters")
    return Fingerprint(key=key, pixel_sha256=pixel, header_sha256=d["header_sha256"], kind=kind, source=source)


def create_app(location: str | Path, *, writable: bool = False, key_path: str | Path | None = None,
               limits: WriteLimits | None = None):
    """A FastAPI app serving the log: ``GET /tree-head``, ``/public-key``, ``/proof/inclusion``,
    ``/proof/consistency``, ``/lookup`` and, only when ``writable``, ``POST /entries`` with a
    bearer token (see the module's table of statuses). A writable app needs the log's private key
    and at least one active write token: :class:`MedForensicsError` otherwise."""
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import PlainTextResponse
    from starlette.concurrency import run_in_threadpool

    limits = limits or WriteLimits()
    Ledger(location).close()  # fail now, with a clear error, if the log is unusable
    if writable:
        with Ledger(location, key_path=key_path) as lg:
            lg._signer()
            if not any(t.active for t in lg.tokens()):
                raise MedForensicsError(lg.name, "no active write token, so nobody could write: create one with "
                                        "'medforensics ledger token new LOG --name NAME'")
    app = FastAPI(title="medforensics transparency log", version=SCHEMA_VERSION)

    @contextmanager
    def opened() -> Iterator[Ledger]:
        try:
            lg = Ledger(location, key_path=key_path)
        except MedForensicsError as e:
            raise HTTPException(503, str(e)) from None
        try:
            yield lg
        except MedForensicsError as e:
            raise HTTPException(500 if "corrupted" in e.problem or "database" in e.problem else 400, str(e)) from None
        finally:
            lg.close()

    @app.get("/tree-head")
    def tree_head() -> dict:
        with opened() as lg:
            return lg.head().to_dict()

    @app.get("/public-key", response_class=PlainTextResponse)
    def public_key() -> str:
        with opened() as lg:
            return lg.public_key_pem().decode("ascii")

    @app.get("/proof/inclusion")
    def proof_inclusion(leaf_hash: str = Query(..., description="hex SHA-256 leaf hash"),
                        tree_size: int | None = Query(None, ge=1)) -> dict:
        try:
            lh = bytes.fromhex(leaf_hash)
            assert len(lh) == 32
        except (ValueError, AssertionError):
            raise HTTPException(400, "leaf_hash must be 64 hex digits") from None
        with opened() as lg:
            e = lg.find_leaf(lh)
            n = lg.size if tree_size is None else tree_size
            if e is None or e.index >= n:
                raise HTTPException(404, f"no leaf with this hash in the tree of size {n}")
            return {"leaf_index": e.index, "tree_size": n, "audit_path": [p.hex() for p in lg.inclusion_proof(e.index, n)]}

    @app.get("/proof/consistency")
    def proof_consistency(first: int = Query(..., ge=0), second: int = Query(..., ge=0)) -> dict:
        with opened() as lg:
            return {"first": first, "second": second, "consistency": [p.hex() for p in lg.consistency_proof(first, second)]}

    @app.get("/lookup")
    def lookup(key: str = Query(..., min_length=1)) -> dict:
        with opened() as lg:
            entries = lg.entries_for_key(key)
            if not entries:
                raise HTTPException(404, f"key {key} is not in the log")
            head = lg.head()
            latest = entries[-1]
            return {"key": key, "entries": [e.to_dict() for e in entries], "leaf_index": latest.index,
                    "tree_head": head.to_dict(), "audit_path": [p.hex() for p in lg._proved(latest, head)]}

    def authorised(request: Request) -> str:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "writes need 'Authorization: Bearer TOKEN' (a token from "
                                "'medforensics ledger token new')", headers={"WWW-Authenticate": "Bearer"})
        with opened() as lg:
            name = lg.authenticate(token.strip())
        if name is None:
            raise HTTPException(401, "unknown or revoked write token",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return name

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise HTTPException(400, "Content-Length is not a number")
            if int(declared) > limits.max_body_bytes:
                raise HTTPException(413, f"the body ({int(declared)} bytes) is over the limit of "
                                    f"{limits.max_body_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise HTTPException(413, f"the body is over the limit of {limits.max_body_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def entries_of(body: bytes) -> list[Fingerprint]:
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise HTTPException(400, f"the body is not JSON ({str(e)[:200]})") from None
        items = data.get("entries") if isinstance(data, dict) and set(data) == {"entries"} else None
        if not isinstance(items, list) or not items:
            raise HTTPException(422, "expected {\"entries\": [fingerprint, ...]} with at least one fingerprint")
        if len(items) > limits.max_entries:
            raise HTTPException(413, f"{len(items)} entries in one request; the limit is {limits.max_entries}")
        try:
            return [parse_entry(d, f"entry {i}", limits) for i, d in enumerate(items)]
        except MedForensicsError as e:
            raise HTTPException(422, str(e)) from None

    def append(fps: list[Fingerprint], writer: str) -> dict:
        with opened() as lg:
            try:
                idx = lg.append(fps, writer=writer)
            except MedForensicsError as e:
                if "revoked" in e.problem:
                    raise HTTPException(401, "unknown or revoked write token",
                                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
                raise
            return {"indexes": idx, "tree_head": lg.head().to_dict(), "written_by": writer}

    @app.get("/write-access")
    def write_access(request: Request) -> dict:
        """Whether the request's bearer token may write (401 otherwise, 403 on a read-only log),
        under which name, and the write limits: what a client checks before reading its images."""
        if not writable:
            raise HTTPException(403, "this log is served read-only (start it with --writable to accept entries)")
        return {"written_by": authorised(request), "max_entries": limits.max_entries,
                "max_body_bytes": limits.max_body_bytes}

    @app.post("/entries")
    async def post_entries(request: Request) -> dict:
        """Append fingerprints: ``{"entries": [{"key", "pixel_sha256", "header_sha256", "kind"
        [, "source"]}, ...]}`` with ``Authorization: Bearer TOKEN``. The token is checked before
        the body is read; the body is bounded before it is parsed."""
        if not writable:
            raise HTTPException(403, "this log is served read-only (start it with --writable to accept entries)")
        writer = await run_in_threadpool(authorised, request)
        fps = entries_of(await body_of(request))
        return await run_in_threadpool(append, fps, writer)

    return app
