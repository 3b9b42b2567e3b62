"""Where a ledger lives: SQLite (a path or ``sqlite:///path``) or PostgreSQL (``postgresql://...``)
through :class:`medforensics.db.Database` (SQL with ``?`` placeholders); :class:`_DB` adds the
log's checks on opening and its schema. The log itself (:mod:`medforensics.provenance.ledger.log`)
knows no dialect."""
from __future__ import annotations

from pathlib import Path

from ...config import LEDGER, settings
from ...core import MedForensicsError
from ...db import Database, display_location, is_postgresql, sqlite_path

__all__ = ["ENV_LOG", "default_log"]

#: Environment variable naming the default log (a path or a PostgreSQL URL); read by :mod:`medforensics.config`.
ENV_LOG = LEDGER
_PG_LOCK = 0x6D666C6564676572  # 'mfledger': the advisory lock that serialises appends in PostgreSQL
_display = display_location


def default_log() -> str | None:
    """The log named by ``$MEDFORENSICS_LEDGER`` (None when unset), as :func:`medforensics.config.settings` reads it."""
    return settings().ledger


class _DB(Database):
    """The connection to a log: a new one (``create``) must not exist yet, an old one must."""

    def __init__(self, location: str | Path, name: str, create: bool):
        if not is_postgresql(location):
            path = sqlite_path(location)
            if create and path.exists():
                raise MedForensicsError(name, "already exists; a new log needs a new file")
            if not create and not path.exists():
                raise MedForensicsError(name, "no such log; create it with 'medforensics ledger init'")
            if path.is_dir():
                raise MedForensicsError(name, "is a folder, not a log file")
        super().__init__(location, name, create=create, synchronous="NORMAL", lock_id=_PG_LOCK)

    def schema(self) -> list[str]:
        blob = "BLOB" if self.dialect == "sqlite" else "BYTEA"
        big = "INTEGER" if self.dialect == "sqlite" else "BIGINT"
        without_rowid = " WITHOUT ROWID" if self.dialect == "sqlite" else ""
        return [
            "CREATE TABLE ledger_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE ledger_leaves (idx {big} PRIMARY KEY, leaf_hash {blob} NOT NULL, fp_key TEXT NOT NULL, "
            f"pixel_sha256 TEXT NOT NULL, header_sha256 TEXT NOT NULL, kind TEXT NOT NULL, timestamp BIGINT NOT NULL, "
            f"leaf_data {blob} NOT NULL, source TEXT)",
            "CREATE INDEX ledger_leaves_key ON ledger_leaves (fp_key, idx)",
            "CREATE INDEX ledger_leaves_hash ON ledger_leaves (leaf_hash)",
            f"CREATE TABLE ledger_nodes (level INTEGER NOT NULL, idx BIGINT NOT NULL, hash {blob} NOT NULL, "
            f"PRIMARY KEY (level, idx)){without_rowid}",
            f"CREATE TABLE ledger_heads (tree_size {big} PRIMARY KEY, root_hash {blob} NOT NULL, "
            f"timestamp BIGINT NOT NULL, algorithm TEXT NOT NULL, signature {blob} NOT NULL)",
            *self.auth_schema(),
        ]

    def auth_schema(self) -> list[str]:
        """The tables of the write path of a served log (``CREATE TABLE IF NOT EXISTS``, so that a
        log made before they existed gains them on its first token): ``ledger_tokens`` (name,
        SHA-256 of the bearer token, creation and revocation times in ms) and ``ledger_writes``
        (one row per accepted HTTP write: its first leaf index, entry count, token name, time)."""
        return [
            "CREATE TABLE IF NOT EXISTS ledger_tokens (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, "
            "created BIGINT NOT NULL, revoked BIGINT)",
            "CREATE TABLE IF NOT EXISTS ledger_writes (first_idx BIGINT PRIMARY KEY, count BIGINT NOT NULL, "
            "token_name TEXT NOT NULL, timestamp BIGINT NOT NULL)",
        ]
