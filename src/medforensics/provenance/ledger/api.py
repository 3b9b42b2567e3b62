"""The ledger's HTTP API: a FastAPI app serving tree heads, the public key, inclusion and
consistency proofs, lookups and (when writable) appends (:func:`create_app`)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ...core import MedForensicsError
from .log import SCHEMA_VERSION, Fingerprint, Ledger

__all__ = ["create_app"]


def create_app(location: str | Path, *, writable: bool = False, key_path: str | Path | None = None):
    """A FastAPI app serving the log: ``GET /tree-head``, ``/public-key``, ``/proof/inclusion``,
    ``/proof/consistency``, ``/lookup`` and, only when ``writable``, ``POST /entries``."""
    from fastapi import Body, FastAPI, HTTPException, Query
    from fastapi.responses import PlainTextResponse

    Ledger(location).close()  # fail now, with a clear error, if the log is unusable
    if writable:
        with Ledger(location, key_path=key_path) as lg:
            lg._signer()
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

    @app.post("/entries")
    def post_entries(body: Any = Body(...)) -> dict:
        if not writable:
            raise HTTPException(403, "this log is served read-only (start it with --writable to accept entries)")
        items = body.get("entries") if isinstance(body, dict) else body
        if not isinstance(items, list) or not items:
            raise HTTPException(400, "expected {\"entries\": [fingerprint, ...]} with at least one fingerprint")
        try:
            fps = [Fingerprint.from_dict(d, f"entry {i}") for i, d in enumerate(items)]
        except MedForensicsError as e:
            raise HTTPException(400, str(e)) from None
        with opened() as lg:
            idx = lg.append(fps)
            return {"indexes": idx, "tree_head": lg.head().to_dict()}

    return app
