"""Where a ledger lives: SQLite (a path or ``sqlite:///path``) or PostgreSQL (``postgresql://...``)
behind one small DB-API wrapper, :class:`_DB`, with the log's schema; SQL is written with ``?``
placeholders. The log itself (:mod:`medforensics.provenance.ledger.log`) knows no dialect."""
from __future__ import annotations

import re
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from ...config import LEDGER, settings
from ...core import MedForensicsError, one_line

__all__ = ["ENV_LOG", "default_log"]

#: Environment variable naming the default log (a path or a PostgreSQL URL); read by :mod:`medforensics.config`.
ENV_LOG = LEDGER
_PG_LOCK = 0x6D666C6564676572  # 'mfledger': the advisory lock that serialises appends in PostgreSQL


def default_log() -> str | None:
    """The log named by ``$MEDFORENSICS_LEDGER`` (None when unset), as :func:`medforensics.config.settings` reads it."""
    return settings().ledger


def _display(location: str) -> str:
    return re.sub(r"(postgres(?:ql)?://[^:/@]*):[^@]*@", r"\1:***@", location)


class _DB:
    """A connection to SQLite or PostgreSQL; SQL is written with ``?`` placeholders."""

    def __init__(self, location: str | Path, name: str, create: bool):
        loc = str(location)
        self.name = name
        if loc.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            try:
                import psycopg
            except ImportError:
                raise MedForensicsError(name, "PostgreSQL logs need psycopg 3 (pip install 'psycopg[binary]')") from None
            self._errors: tuple = (psycopg.Error,)
            try:
                self.conn = psycopg.connect(loc, autocommit=True, connect_timeout=10)
            except psycopg.Error as e:
                raise MedForensicsError(name, f"cannot connect to PostgreSQL: {one_line(e, 200)}") from None
        else:
            self.dialect = "sqlite"
            self._errors = (sqlite3.Error,)
            path = Path(loc[len("sqlite:///"):] if loc.startswith("sqlite:///") else loc)
            if create:
                if path.exists():
                    raise MedForensicsError(name, "already exists; a new log needs a new file")
                if not path.parent.exists():
                    raise MedForensicsError(name, f"folder {path.parent} does not exist")
            elif not path.exists():
                raise MedForensicsError(name, "no such log; create it with 'medforensics ledger init'")
            elif path.is_dir():
                raise MedForensicsError(name, "is a folder, not a log file")
            try:
                uri = f"file:{path.resolve()}?mode={'rwc' if create else 'rw'}"
                self.conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None,
                                            check_same_thread=False)
                self.conn.execute("PRAGMA busy_timeout = 60000")
                if create:
                    self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as e:
                raise MedForensicsError(name, f"cannot open the SQLite log: {one_line(e, 200)}") from None

    @property
    def errors(self) -> tuple:
        return self._errors

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return list(self.conn.execute(self._sql(sql), tuple(params)).fetchall())

    def stream(self, sql: str, params: Sequence = (), size: int = 10000) -> Iterator[tuple]:
        cur = self.conn.cursor()
        cur.execute(self._sql(sql), tuple(params))
        while True:
            rows = cur.fetchmany(size)
            if not rows:
                break
            yield from rows

    def execute(self, sql: str, params: Sequence = ()) -> None:
        self.conn.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        if rows:
            self.conn.cursor().executemany(self._sql(sql), rows)

    @contextmanager
    def write(self) -> Iterator[None]:
        """One serialised write transaction (BEGIN IMMEDIATE / an advisory transaction lock)."""
        if self.dialect == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        else:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
                yield

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

    def has_table(self, table: str) -> bool:
        """Whether the database holds ``table``."""
        if self.dialect == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
        return bool(self.query(sql, (table,)))

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass
