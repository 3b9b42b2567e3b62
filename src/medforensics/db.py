"""One small DB-API wrapper over SQLite (a path or ``sqlite:///path``) or PostgreSQL
(``postgresql://...``, psycopg 3), used by the provenance ledger and the gateway's queue.

SQL is written once with ``?`` placeholders (translated to ``%s`` for PostgreSQL). A
:class:`Database` is one connection guarded by one lock, so that several threads may share it:
each statement, and each :meth:`Database.write` transaction as a whole, runs under the lock.
Write transactions are serialised across processes too (SQLite ``BEGIN IMMEDIATE`` with a busy
timeout; in PostgreSQL an advisory transaction lock when the owner names one). Driver errors are
turned into one-line :class:`~medforensics.core.MedForensicsError` by :meth:`Database.guard`.

>>> import os, tempfile
>>> db = Database(os.path.join(tempfile.mkdtemp(), "x.db"), create=True)
>>> with db.guard("making a table"), db.write():
...     db.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
...     db.executemany("INSERT INTO t (k, v) VALUES (?, ?)", [("a", 1), ("b", 2)])
>>> db.query("SELECT v FROM t WHERE k = ?", ("b",))
[(2,)]
>>> with db.guard("adding a row"), db.write():
...     db.execute("INSERT INTO t (k, v) VALUES (?, ?)", ("a", 3))
Traceback (most recent call last):
medforensics.core.MedForensicsError: ...x.db: database error while adding a row (UNIQUE constraint failed: t.k)
>>> db.close()
"""
from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .core import MedForensicsError, one_line

__all__ = ["Database", "display_location", "is_postgresql", "sqlite_path"]


def is_postgresql(location: str | Path) -> bool:
    """Whether ``location`` names a PostgreSQL database (``postgresql://`` or ``postgres://``).

    >>> is_postgresql("postgresql://u@db/gateway"), is_postgresql("queue.db")
    (True, False)
    """
    return str(location).startswith(("postgresql://", "postgres://"))


def display_location(location: str | Path) -> str:
    """``location`` with any password in a PostgreSQL URL masked, for messages.

    >>> display_location("postgresql://gw:secret@db/queue")
    'postgresql://gw:***@db/queue'
    """
    return re.sub(r"(postgres(?:ql)?://[^:/@]*):[^@]*@", r"\1:***@", str(location))


def sqlite_path(location: str | Path) -> Path:
    """The file of a SQLite location: a path, or a URL as SQLAlchemy writes them (``sqlite:///q.db``
    relative, ``sqlite:////var/q.db`` absolute).

    >>> sqlite_path("sqlite:////var/q.db").as_posix(), sqlite_path("sqlite:///q.db").as_posix()
    ('/var/q.db', 'q.db')
    """
    loc = str(location)
    return Path(loc[len("sqlite:///"):] if loc.startswith("sqlite:///") else loc)


class Database:
    """A connection to SQLite or PostgreSQL, shared safely by the threads of one process.

    ``location``: a SQLite file (path or ``sqlite:///path``) or a ``postgresql://`` URL; ``name``
    is how messages name it (default: the location with its password masked). ``create``: a
    missing SQLite file may be created (and the file is switched to WAL); otherwise it must exist.
    ``synchronous``: SQLite's ``PRAGMA synchronous`` (``FULL`` makes each commit survive a power
    cut, not only a crash of the process). ``lock_id``: the PostgreSQL advisory lock taken by every
    :meth:`write` transaction, so that writers of one application serialise like SQLite's.
    ``busy_timeout_s``: how long a SQLite writer waits for another connection's lock.
    """

    def __init__(self, location: str | Path, name: str | None = None, *, create: bool = False,
                 synchronous: str = "NORMAL", lock_id: int | None = None, busy_timeout_s: float = 60.0):
        loc = str(location)
        self.name = name or display_location(loc)
        self.lock_id = lock_id
        self._lock = threading.RLock()
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise MedForensicsError(self.name, f"unknown SQLite synchronous mode {synchronous!r}")
        if is_postgresql(loc):
            self.dialect = "postgresql"
            try:
                import psycopg
            except ImportError:
                raise MedForensicsError(self.name, "PostgreSQL needs psycopg 3 (pip install 'psycopg[binary]')") from None
            self.errors: tuple[type[BaseException], ...] = (psycopg.Error,)
            try:
                self.conn = psycopg.connect(loc, autocommit=True, connect_timeout=10)
            except psycopg.Error as e:
                raise MedForensicsError(self.name, f"cannot connect to PostgreSQL: {one_line(e, 200)}") from None
        else:
            self.dialect = "sqlite"
            self.errors = (sqlite3.Error,)
            path = sqlite_path(loc)
            if path.is_dir():
                raise MedForensicsError(self.name, "is a folder, not a database file")
            if not path.exists():
                if not create:
                    raise MedForensicsError(self.name, "no such database file")
                if not path.parent.is_dir():
                    raise MedForensicsError(self.name, f"folder {path.parent} does not exist")
            try:
                uri = f"file:{path.resolve()}?mode={'rwc' if create else 'rw'}"
                self.conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None,
                                            check_same_thread=False)
                self.conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
                if create:
                    self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            except sqlite3.Error as e:
                raise MedForensicsError(self.name, f"cannot open the SQLite database: {one_line(e, 200)}") from None

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    # -- statements ------------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """The rows ``sql`` selects."""
        with self._lock:
            return list(self.conn.execute(self._sql(sql), tuple(params)).fetchall())

    def stream(self, sql: str, params: Sequence = (), size: int = 10000) -> Iterator[tuple]:
        """The rows ``sql`` selects, ``size`` at a time (for results too large to hold)."""
        with self._lock:
            cur = self.conn.cursor()
            cur.execute(self._sql(sql), tuple(params))
        while True:
            with self._lock:
                rows = cur.fetchmany(size)
            if not rows:
                break
            yield from rows

    def execute(self, sql: str, params: Sequence = ()) -> None:
        """Run one statement."""
        with self._lock:
            self.conn.execute(self._sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        """Run one statement once per row of parameters."""
        if rows:
            with self._lock:
                self.conn.cursor().executemany(self._sql(sql), rows)

    # -- transactions and errors ---------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction, committed at the end of the block and rolled back on an error.
        It holds this connection's lock throughout and is serialised against other writers
        (SQLite ``BEGIN IMMEDIATE``; PostgreSQL: the advisory lock ``lock_id`` when given)."""
        with self._lock:
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
                    if self.lock_id is not None:
                        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.lock_id,))
                    yield

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Turn a driver error raised in the block into ``MedForensicsError(name, "database error
        while WHAT (...)")``; other exceptions pass unchanged."""
        try:
            yield
        except self.errors as e:
            self.rollback()
            raise MedForensicsError(self.name, f"database error while {what} ({one_line(e, 200)})") from None

    def rollback(self) -> None:
        """End a PostgreSQL transaction left open by a failed statement (nothing to do in SQLite,
        where :meth:`write` rolls back itself)."""
        if self.dialect == "postgresql":
            with self._lock:
                try:
                    self.conn.rollback()
                except Exception:  # noqa: BLE001 - the connection may be gone; the caller reports the first error
                    pass

    def has_table(self, table: str) -> bool:
        """Whether the database holds ``table``."""
        if self.dialect == "sqlite":
            sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            sql = "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
        return bool(self.query(sql, (table,)))

    # -- schemas ---------------------------------------------------------------------------------
    def append_only(self, tables: Sequence[str], function: str) -> list[str]:
        """Statements that make ``tables`` refuse UPDATE and DELETE in the database itself, not
        only in the code (SQLite triggers; in PostgreSQL triggers calling the plpgsql
        ``function``, created by the first statement)."""
        if self.dialect == "sqlite":
            return [f"CREATE TRIGGER {t}_{op.lower()} BEFORE {op} ON {t} "
                    f"BEGIN SELECT RAISE(ABORT, '{t} is append-only'); END"
                    for t in tables for op in ("UPDATE", "DELETE")]
        return [f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
                "$f$ BEGIN RAISE EXCEPTION 'the table is append-only'; END $f$",
                *(f"CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
                  f"FOR EACH ROW EXECUTE FUNCTION {function}()" for t in tables)]

    def open_schema(self, meta: str, version: str, statements: Callable[[], list[str]], *, what: str,
                    created: str, create: bool = True) -> None:
        """Check that this database holds the tables of ``what`` (an application: "gateway
        queue", "review store") at schema ``version``, read from its table ``meta`` (name,
        value); in a database without them run ``statements()`` and record the version and the
        ``created`` time, unless ``create`` is false. A SQLite file holding other tables is
        refused: each application keeps its own file (PostgreSQL databases may be shared)."""
        with self.guard(f"opening the {what}"), self.write():
            if not self.has_table(meta):
                if not create:
                    raise MedForensicsError(self.name, f"holds no {what}")
                if self.dialect == "sqlite" and self.query("SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1"):
                    raise MedForensicsError(self.name, f"holds other tables and no {what}; give the {what} its own file")
                for stmt in statements():
                    self.execute(stmt)
                self.executemany(f"INSERT INTO {meta} (name, value) VALUES (?, ?)",
                                 [("schema_version", version), ("created", created)])
            found = self.query(f"SELECT value FROM {meta} WHERE name = 'schema_version'")
        if not found or found[0][0] != version:
            raise MedForensicsError(self.name, f"unsupported {what} schema version "
                                    f"{found[0][0] if found else None!r} (this medforensics reads {version})")

    def close(self) -> None:
        """Close the connection (again: nothing)."""
        with self._lock:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection has nothing left to report
                pass

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
