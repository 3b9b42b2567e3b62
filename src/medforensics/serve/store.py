"""The review service's state: people, sessions, API tokens, jobs, the items of the work list,
review decisions, the append-only audit log and the quiz. SQLite (a path or ``sqlite:///path``;
WAL, ``synchronous=FULL``) or PostgreSQL (``postgresql://...``), through
:class:`medforensics.db.Database`. Every table is named ``serve_*``, so that a PostgreSQL
database may also hold the gateway's queue.

The audit log is a Merkle log (RFC 6962): each entry's canonical JSON (sorted keys, compact, of
``seq, at, who, action, target, before, after, note``) is hashed with
:func:`medforensics.provenance.merkle.leaf_hash`, and each entry stores the root over all leaf
hashes up to and including its own. The hashes of the complete subtrees are kept in
``serve_audit_nodes``, so an append reads and writes ``O(log n)`` hashes. The log and its nodes
are append-only in the database itself (triggers refuse UPDATE and DELETE), and
:meth:`Store.audit_verify` / :func:`verify_export` recompute every hash from the stored fields.

>>> import os, tempfile
>>> s = Store(os.path.join(tempfile.mkdtemp(), "serve.sqlite"))
>>> s.add_user("dr.house", "reviewer", "$argon2id$...").role
'reviewer'
>>> job = s.add_job("dr.house", "upload", total=1)
>>> record = {"path": "a.dcm", "kind": "image", "modality": "CT", "score": 0.91, "label": "manipulated",
...           "evidence": [{"detector": "copy_move", "score": 0.91, "indicates": "manipulation"}]}
>>> item = s.add_item(job.id, path="a.dcm", name="a.dcm", source="scan", record=record, n_frames=1)
>>> total, rows = s.list_items(detector="copy_move")
>>> total, rows[0].label, rows[0].detectors
(1, 'manipulated', ['copy_move'])
>>> e = s.decide(item, "confirm", "dr.house", "two regions match")
>>> (e.seq, e.before, e.after), s.item(item).review_state, s.audit_verify()
((1, 'unreviewed', 'confirmed'), 'confirmed', [])
>>> s.close()
"""
from __future__ import annotations

import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..core import LABELS, MedForensicsError, one_line
from ..db import Database, display_location
from ..provenance import merkle

__all__ = ["ACTIONS", "ALARM", "JOB_KINDS", "JOB_STATES", "REVIEW_STATES", "ROLES", "SOURCES", "Answer",
           "AuditEntry", "Item", "ItemRow", "Job", "QuizImage", "Score", "Session", "Store", "Token", "User",
           "utc_z", "verify_export"]

#: Roles, from least to most power.
ROLES = ("viewer", "reviewer", "admin")
#: Where an item is in review.
REVIEW_STATES = ("unreviewed", "confirmed", "dismissed", "flagged", "released", "rejected")
#: What a reviewer may do with an item, and the review state it leads to.
ACTIONS = {"confirm": "confirmed", "dismiss": "dismissed", "flag": "flagged", "release": "released",
           "reject": "rejected"}
#: An evidence score at or over which a detector alarms.
ALARM = 0.5
JOB_KINDS = ("upload", "folder", "gateway", "quiz", "demo")
JOB_STATES = ("queued", "running", "done", "failed")
#: Where an item came from; ``quiz`` items stay out of the work list unless asked for.
SOURCES = ("scan", "gateway", "quiz")
SORTS = ("suspicion", "newest", "oldest", "name")

SCHEMA_VERSION = "1"
_PG_LOCK = 0x6D667365727665  # the advisory lock that serialises the store's writers in PostgreSQL
_USER_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_QUIZ_KIND = re.compile(r"[a-z0-9_-]{1,64}")
_ROW_COLS = ("id, job_id, name, source, kind, modality, label, score, detectors, n_frames, created, review_state, "
             "reviewer")
_AUDIT_COLS = "seq, at, who, action, target, before_state, after_state, note, leaf_hash, root"
_MAX_PROBLEMS = 50


def utc_z(t: float | None = None) -> str:
    """``t`` (seconds since the epoch; default now) as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), the form of
    every time in the store (such strings sort as the times do).

    >>> utc_z(86399.9)
    '1970-01-01T23:59:59Z'
    """
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class User:
    """A person who may log in."""

    name: str
    role: str
    password_hash: str
    created: str
    disabled: bool


@dataclass(frozen=True)
class Session:
    """A login: whose, its CSRF token, and when it expires (seconds since the epoch)."""

    user: str
    csrf: str
    expires: float


@dataclass(frozen=True)
class Token:
    """An API token of ``user`` (only its hash is stored)."""

    id: int
    user: str
    name: str
    created: str
    revoked: bool


@dataclass(frozen=True)
class Job:
    """Work started by someone: ``total`` things to do, ``done`` of them done."""

    id: int
    who: str
    kind: str
    state: str
    total: int
    done: int
    message: str
    created: str
    updated: str


@dataclass(frozen=True)
class ItemRow:
    """One line of the work list: an image or series checked, and where it is in review."""

    id: int
    job_id: int | None
    name: str
    source: str
    kind: str
    modality: str | None
    label: str | None
    score: float | None
    detectors: list[str]
    n_frames: int
    created: str
    review_state: str
    reviewer: str | None


@dataclass(frozen=True)
class Item(ItemRow):
    """An item with its file, its scan record and the gateway series it stands for."""

    path: str = ""
    record: dict = None  # type: ignore[assignment]
    gateway_series: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the audit log (never changed once written); ``leaf_hash`` and ``root`` in hex."""

    seq: int
    at: str
    who: str
    action: str
    target: str
    before: str | None
    after: str | None
    note: str
    leaf_hash: str
    root: str

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON (the line of an export)."""
        return {"seq": self.seq, "at": self.at, "who": self.who, "action": self.action, "target": self.target,
                "before": self.before, "after": self.after, "note": self.note, "leaf_hash": self.leaf_hash,
                "root": self.root}


class AlreadyAnswered(MedForensicsError):
    """A quiz image that the user answered already (:meth:`Store.add_answer` with ``once``)."""


@dataclass(frozen=True)
class QuizImage:
    """An image of the quiz: ``authentic`` or a forgery kind, and the forged box (row0, col0, row1,
    col1; stops exclusive) when there is one."""

    id: int
    kind: str
    item_id: int
    truth_box: list[int] | None


@dataclass(frozen=True)
class Answer:
    """Someone's answer about a quiz image: right or wrong, and whether the click hit the forged box."""

    id: int
    user: str
    quiz_image_id: int
    kind: str
    answer: str
    correct: bool
    hit: bool | None
    at: str


@dataclass(frozen=True)
class Score:
    """How someone did on the quiz images of one kind: answers, right answers, clicks in the box."""

    user: str
    kind: str
    n: int
    correct: int
    hits: int


def leaf_data(seq: int, at: str, who: str, action: str, target: str, before: str | None, after: str | None,
              note: str) -> bytes:
    """The canonical JSON of an audit entry's fields (sorted keys, compact, UTF-8): what its leaf
    hash is the hash of.

    >>> leaf_data(1, "2026-01-01T00:00:00Z", "ann", "confirm", "item:3", "unreviewed", "confirmed", "")
    b'{"action":"confirm","after":"confirmed","at":"2026-01-01T00:00:00Z","before":"unreviewed","note":"","seq":1,"target":"item:3","who":"ann"}'
    """
    return json.dumps({"seq": seq, "at": at, "who": who, "action": action, "target": target, "before": before,
                       "after": after, "note": note}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def _push(stack: list[tuple[int, bytes]], index: int, leaf: bytes) -> list[tuple[int, int, bytes]]:
    """Add leaf ``index`` to ``stack`` (the complete subtrees ``(level, hash)`` of the leaves before
    it, left to right); the nodes ``(level, index, hash)`` this completes, the leaf first."""
    made = [(0, index, leaf)]
    level, idx, h = 0, index, leaf
    while idx & 1:
        _, left = stack.pop()
        h = merkle.node_hash(left, h)
        level, idx = level + 1, idx >> 1
        made.append((level, idx, h))
    stack.append((level, h))
    return made


def _root(stack: Sequence[tuple[int, bytes]]) -> bytes:
    return merkle.fold([h for _, h in stack])


class _Problems(list):
    """A list of problems that stops growing at ``_MAX_PROBLEMS`` (and says how many more)."""

    def __init__(self) -> None:
        super().__init__()
        self.more = 0

    def add(self, problem: str) -> None:
        if len(self) < _MAX_PROBLEMS:
            self.append(problem)
        else:
            self.more += 1

    def done(self) -> list[str]:
        return list(self) + ([f"... and {self.more} more problems"] if self.more else [])


class _Checker:
    """Recompute an audit log entry by entry: leaf hashes from the fields, roots from the stored
    leaf hashes (so that one edited entry is one problem, not one per later entry)."""

    def __init__(self) -> None:
        self.problems = _Problems()
        self.stack: list[tuple[int, bytes]] = []
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.size = self.seq = 0
        self.root = merkle.EMPTY_ROOT

    def entry(self, where: str, seq: Any, fields: Sequence[Any], leaf_hex: Any, root_hex: Any) -> None:
        if seq != self.seq + 1:
            self.problems.add(f"{where}: seq {seq!r} where {self.seq + 1} was expected (entries missing or reordered)")
        self.seq = seq if isinstance(seq, int) else self.seq + 1  # one gap is one problem
        try:
            leaf = bytes.fromhex(leaf_hex)
            if len(leaf) != 32:
                raise ValueError
        except (TypeError, ValueError):
            self.problems.add(f"{where}: leaf hash {leaf_hex!r} is not 64 hex digits")
            leaf = None
        try:
            want = merkle.leaf_hash(leaf_data(seq, *fields))
        except (TypeError, ValueError) as e:
            self.problems.add(f"{where}: fields cannot be hashed ({one_line(e, 100)})")
            want = None
        if leaf is None:
            leaf = want or merkle.EMPTY_ROOT
        elif want is not None and want != leaf:
            self.problems.add(f"{where}: leaf hash does not match the entry's fields (the entry was changed)")
        for level, idx, h in _push(self.stack, self.size, leaf):
            self.nodes[(level, idx)] = h
        self.size += 1
        self.root = _root(self.stack)
        if root_hex != self.root.hex():
            self.problems.add(f"{where}: root does not match the Merkle root of the {self.size} leaf hashes up to it")


class Store:
    """The review service's database at ``location`` (opened, or created with its schema when
    missing and ``create``); safe for the threads of one process (one connection under one lock)
    and for other processes meanwhile (each write is one serialised transaction). ``clock``: the
    time (seconds since the epoch) stamped on what happens and against which sessions expire.
    Use as a context manager or call :meth:`close`."""

    def __init__(self, location: str | Path, *, create: bool = True, busy_timeout_s: float = 60.0,
                 clock: Callable[[], float] = time.time):
        self.location = str(location)
        self.name = display_location(self.location)
        self._clock = clock
        self._db = Database(self.location, self.name, create=create, synchronous="FULL", lock_id=_PG_LOCK,
                            busy_timeout_s=busy_timeout_s)
        try:
            self._open_schema(create)
        except BaseException:
            self._db.close()
            raise

    # -- schema ----------------------------------------------------------------------------------
    def _schema(self) -> list[str]:
        pg = self._db.dialect == "postgresql"
        key = "BIGINT PRIMARY KEY" if pg else "INTEGER PRIMARY KEY"
        real = "DOUBLE PRECISION"

        def among(col: str, values: Iterable[str]) -> str:
            return f"CHECK ({col} IN ({', '.join(repr(v) for v in values)}))"
        stmts = [
            "CREATE TABLE serve_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            f"CREATE TABLE serve_users (name TEXT PRIMARY KEY, role TEXT NOT NULL {among('role', ROLES)}, "
            "password_hash TEXT NOT NULL, created TEXT NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)",
            f"CREATE TABLE serve_sessions (token_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, csrf TEXT NOT NULL, "
            f"expires {real} NOT NULL)",
            "CREATE INDEX serve_sessions_user ON serve_sessions (user_name)",
            f"CREATE TABLE serve_tokens (id {key}, user_name TEXT NOT NULL, name TEXT NOT NULL, "
            "token_hash TEXT NOT NULL UNIQUE, created TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)",
            f"CREATE TABLE serve_jobs (id {key}, who TEXT NOT NULL, kind TEXT NOT NULL {among('kind', JOB_KINDS)}, "
            f"state TEXT NOT NULL {among('state', JOB_STATES)}, total BIGINT NOT NULL, done BIGINT NOT NULL, "
            "message TEXT NOT NULL, created TEXT NOT NULL, updated TEXT NOT NULL)",
            f"CREATE TABLE serve_items (id {key}, job_id BIGINT, name TEXT NOT NULL, "
            f"source TEXT NOT NULL {among('source', SOURCES)}, kind TEXT NOT NULL, modality TEXT, label TEXT, "
            f"score {real}, suspicion {real} NOT NULL, detectors TEXT NOT NULL, n_frames BIGINT NOT NULL, "
            f"created TEXT NOT NULL, review_state TEXT NOT NULL {among('review_state', REVIEW_STATES)}, "
            "reviewer TEXT, path TEXT NOT NULL, record TEXT NOT NULL, gateway_series TEXT UNIQUE)",
            # the work list: quiz items are left out by every query unless asked for, so the
            # indexes of the sorts start with the source; the filters' columns have their own
            "CREATE INDEX serve_items_suspicion ON serve_items (source, suspicion DESC, id)",
            "CREATE INDEX serve_items_created ON serve_items (source, created, id)",
            "CREATE INDEX serve_items_label ON serve_items (label, suspicion DESC, id)",
            "CREATE INDEX serve_items_review ON serve_items (review_state, suspicion DESC, id)",
            "CREATE INDEX serve_items_modality ON serve_items (modality)",
            # the work list's filter menus (facets): distinct values of work-list items, from the index alone
            "CREATE INDEX serve_items_label_source ON serve_items (label, source)",
            "CREATE INDEX serve_items_modality_source ON serve_items (modality, source)",
            "CREATE INDEX serve_items_review_source ON serve_items (review_state, source)",
            "CREATE INDEX serve_items_job ON serve_items (job_id)",
            "CREATE TABLE serve_item_detectors (detector TEXT NOT NULL, item_id BIGINT NOT NULL, "
            "PRIMARY KEY (detector, item_id))",
            "CREATE INDEX serve_item_detectors_item ON serve_item_detectors (item_id)",
            "CREATE TABLE serve_audit (seq BIGINT PRIMARY KEY, at TEXT NOT NULL, who TEXT NOT NULL, "
            "action TEXT NOT NULL, target TEXT NOT NULL, before_state TEXT, after_state TEXT, note TEXT NOT NULL, "
            "leaf_hash TEXT NOT NULL, root TEXT NOT NULL)",
            "CREATE INDEX serve_audit_target ON serve_audit (target, seq)",
            "CREATE TABLE serve_audit_nodes (level INTEGER NOT NULL, idx BIGINT NOT NULL, hash TEXT NOT NULL, "
            "PRIMARY KEY (level, idx))",
            f"CREATE TABLE serve_quiz_images (id {key}, kind TEXT NOT NULL, item_id BIGINT NOT NULL, "
            "truth_box TEXT, seed BIGINT NOT NULL)",
            f"CREATE TABLE serve_quiz_answers (id {key}, user_name TEXT NOT NULL, quiz_image_id BIGINT NOT NULL, "
            "kind TEXT NOT NULL, answer TEXT NOT NULL, correct INTEGER NOT NULL, hit INTEGER, at TEXT NOT NULL)",
            "CREATE INDEX serve_quiz_answers_user ON serve_quiz_answers (user_name, kind)",
        ]
        stmts += self._db.append_only(("serve_audit", "serve_audit_nodes"), "serve_append_only")
        return stmts

    def _open_schema(self, create: bool) -> None:
        self._db.open_schema("serve_meta", SCHEMA_VERSION, self._schema, what="review store", created=self._now(),
                             create=create)

    def _now(self) -> str:
        return utc_z(self._clock())

    @contextmanager
    def _tx(self, what: str) -> Iterator[None]:
        with self._db.guard(what), self._db.write():
            yield

    def _read(self, what: str, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._db.guard(what):
            return self._db.query(sql, params)

    def _next_id(self, table: str, col: str = "id") -> int:
        return int(self._db.query(f"SELECT COALESCE(MAX({col}), 0) + 1 FROM {table}")[0][0])

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._db.dialect

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- users -----------------------------------------------------------------------------------
    @staticmethod
    def _role(role: Any) -> str:
        if role not in ROLES:
            raise MedForensicsError(f"role {role!r}", f"not a role; one of {', '.join(ROLES)}")
        return role

    @staticmethod
    def _user_row(row: tuple) -> User:
        return User(row[0], row[1], row[2], row[3], bool(row[4]))

    def add_user(self, name: str, role: str, password_hash: str) -> User:
        """A new user (``name``: 1-64 of letters, digits and ``._@-``); an existing name is refused."""
        if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
            raise MedForensicsError(f"user {name!r}", "a user name is 1-64 letters, digits or . _ @ -")
        self._role(role)
        _text(password_hash, f"user {name}: password hash")
        with self._tx("adding a user"):
            if self._db.query("SELECT 1 FROM serve_users WHERE name = ?", (name,)):
                raise MedForensicsError(f"user {name}", "already exists")
            self._db.execute("INSERT INTO serve_users (name, role, password_hash, created, disabled) "
                             "VALUES (?, ?, ?, ?, 0)", (name, role, password_hash, self._now()))
        return self._user_or_error(name)

    def user(self, name: str) -> User | None:
        """The user called ``name`` (None when there is none)."""
        rows = self._read("reading a user", "SELECT name, role, password_hash, created, disabled FROM serve_users "
                          "WHERE name = ?", (name,))
        return self._user_row(rows[0]) if rows else None

    def _user_or_error(self, name: str) -> User:
        u = self.user(name)
        if u is None:
            raise MedForensicsError(f"user {name}", "no such user")
        return u

    def users(self) -> list[User]:
        """Every user, by name."""
        return [self._user_row(r) for r in self._read("listing users", "SELECT name, role, password_hash, created, "
                                                      "disabled FROM serve_users ORDER BY name")]

    def count_users(self) -> int:
        """How many users there are (0: the service has not been set up)."""
        return int(self._read("counting users", "SELECT COUNT(*) FROM serve_users")[0][0])

    def _set_user(self, name: str, what: str, sql: str, params: tuple) -> None:
        with self._tx(what):
            if not self._db.query("SELECT 1 FROM serve_users WHERE name = ?", (name,)):
                raise MedForensicsError(f"user {name}", "no such user")
            self._db.execute(sql, params)
            if what == "disabling a user":
                self._db.execute("DELETE FROM serve_sessions WHERE user_name = ?", (name,))

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash."""
        _text(password_hash, f"user {name}: password hash")
        self._set_user(name, "changing a password", "UPDATE serve_users SET password_hash = ? WHERE name = ?",
                       (password_hash, name))

    def set_role(self, name: str, role: str) -> None:
        """Change a user's role."""
        self._role(role)
        self._set_user(name, "changing a role", "UPDATE serve_users SET role = ? WHERE name = ?", (role, name))

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable a user (their sessions end, their tokens stop working) or enable them again."""
        self._set_user(name, "disabling a user" if disabled else "enabling a user",
                       "UPDATE serve_users SET disabled = ? WHERE name = ?", (1 if disabled else 0, name))

    # -- sessions --------------------------------------------------------------------------------
    def add_session(self, token_hash: str, user: str, csrf: str, expires: float) -> None:
        """Record a login (the hash of its cookie's token) until ``expires``; expired sessions are
        dropped meanwhile."""
        _text(token_hash, "session token hash")
        _text(csrf, "session CSRF token")
        if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
            raise MedForensicsError("session", f"expiry {expires!r} is not a time")
        with self._tx("recording a session"):
            if not self._db.query("SELECT 1 FROM serve_users WHERE name = ?", (user,)):
                raise MedForensicsError(f"user {user}", "no such user")
            self._db.execute("DELETE FROM serve_sessions WHERE expires <= ?", (float(self._clock()),))
            self._db.execute("INSERT INTO serve_sessions (token_hash, user_name, csrf, expires) VALUES (?, ?, ?, ?)",
                             (token_hash, user, csrf, float(expires)))

    def session(self, token_hash: str) -> Session | None:
        """The session of this token hash; None when there is none, it expired or its user is
        disabled or gone."""
        rows = self._read("reading a session", "SELECT s.user_name, s.csrf, s.expires FROM serve_sessions s "
                          "JOIN serve_users u ON u.name = s.user_name WHERE s.token_hash = ? AND u.disabled = 0",
                          (token_hash,))
        if not rows or rows[0][2] <= self._clock():
            return None
        return Session(rows[0][0], rows[0][1], float(rows[0][2]))

    def drop_session(self, token_hash: str) -> None:
        """End a session (logging out); nothing when there is none."""
        with self._tx("ending a session"):
            self._db.execute("DELETE FROM serve_sessions WHERE token_hash = ?", (token_hash,))

    def drop_sessions(self, user: str) -> None:
        """End every session of ``user``."""
        with self._tx("ending sessions"):
            self._db.execute("DELETE FROM serve_sessions WHERE user_name = ?", (user,))

    # -- API tokens ------------------------------------------------------------------------------
    _TOKEN_COLS = "id, user_name, name, created, revoked"

    @staticmethod
    def _token_row(row: tuple) -> Token:
        return Token(int(row[0]), row[1], row[2], row[3], bool(row[4]))

    def add_token(self, user: str, name: str, token_hash: str) -> Token:
        """Record an API token of ``user`` (by the hash of its secret), called ``name``."""
        _text(name, "token name")
        _text(token_hash, "token hash")
        with self._tx("adding a token"):
            if not self._db.query("SELECT 1 FROM serve_users WHERE name = ?", (user,)):
                raise MedForensicsError(f"user {user}", "no such user")
            if self._db.query("SELECT 1 FROM serve_tokens WHERE token_hash = ?", (token_hash,)):
                raise MedForensicsError(f"token {name}", "this token is already recorded")
            tid = self._next_id("serve_tokens")
            self._db.execute(f"INSERT INTO serve_tokens ({self._TOKEN_COLS}, token_hash) VALUES (?, ?, ?, ?, 0, ?)",
                             (tid, user, name, self._now(), token_hash))
        return self._token_row(self._read("reading a token", f"SELECT {self._TOKEN_COLS} FROM serve_tokens "
                                          "WHERE id = ?", (tid,))[0])

    def token_user(self, token_hash: str) -> User | None:
        """The user an API token stands for; None when it is unknown, revoked or its user disabled."""
        rows = self._read("reading a token", "SELECT u.name, u.role, u.password_hash, u.created, u.disabled "
                          "FROM serve_tokens t JOIN serve_users u ON u.name = t.user_name "
                          "WHERE t.token_hash = ? AND t.revoked = 0 AND u.disabled = 0", (token_hash,))
        return self._user_row(rows[0]) if rows else None

    def tokens(self, user: str | None = None) -> list[Token]:
        """The API tokens (of ``user`` when given), oldest first, revoked ones included."""
        where, params = ("WHERE user_name = ?", (user,)) if user is not None else ("", ())
        return [self._token_row(r) for r in self._read("listing tokens", f"SELECT {self._TOKEN_COLS} FROM serve_tokens "
                                                       f"{where} ORDER BY id", params)]

    def revoke_token(self, id: int) -> None:
        """Revoke an API token for good (it stays listed, as revoked)."""
        with self._tx("revoking a token"):
            if not self._db.query("SELECT 1 FROM serve_tokens WHERE id = ?", (_int(id, "token id"),)):
                raise MedForensicsError(f"token {id}", "no such token")
            self._db.execute("UPDATE serve_tokens SET revoked = 1 WHERE id = ?", (id,))

    # -- jobs ------------------------------------------------------------------------------------
    _JOB_COLS = "id, who, kind, state, total, done, message, created, updated"

    def add_job(self, who: str, kind: str, total: int = 0, message: str = "") -> Job:
        """A new ``queued`` job of ``kind`` (one of :data:`JOB_KINDS`) started by ``who``."""
        _text(who, "job: who")
        if kind not in JOB_KINDS:
            raise MedForensicsError(f"job kind {kind!r}", f"not a job kind; one of {', '.join(JOB_KINDS)}")
        total = _int(total, "job total")
        _text(message, "job message", empty=True)
        with self._tx("adding a job"):
            jid = self._next_id("serve_jobs")
            now = self._now()
            self._db.execute(f"INSERT INTO serve_jobs ({self._JOB_COLS}) VALUES (?, ?, ?, 'queued', ?, 0, ?, ?, ?)",
                             (jid, who, kind, total, message, now, now))
        return self._job_or_error(jid)

    def update_job(self, id: int, *, state: str | None = None, done: int | None = None, total: int | None = None,
                   message: str | None = None) -> Job:
        """Change what is given of a job's state, progress and message."""
        sets, params = [], []
        if state is not None:
            if state not in JOB_STATES:
                raise MedForensicsError(f"job {id}", f"state {state!r} is not one of {', '.join(JOB_STATES)}")
            sets.append("state = ?")
            params.append(state)
        for col, value in (("done", done), ("total", total)):
            if value is not None:
                sets.append(f"{col} = ?")
                params.append(_int(value, f"job {id}: {col}"))
        if message is not None:
            sets.append("message = ?")
            params.append(_text(message, f"job {id}: message", empty=True))
        with self._tx("updating a job"):
            if not self._db.query("SELECT 1 FROM serve_jobs WHERE id = ?", (_int(id, "job id"),)):
                raise MedForensicsError(f"job {id}", "no such job")
            self._db.execute(f"UPDATE serve_jobs SET {', '.join(sets + ['updated = ?'])} WHERE id = ?",
                             (*params, self._now(), id))
        return self._job_or_error(id)

    def job(self, id: int) -> Job | None:
        """The job ``id`` (None when there is none)."""
        rows = self._read("reading a job", f"SELECT {self._JOB_COLS} FROM serve_jobs WHERE id = ?", (id,))
        return Job(*rows[0]) if rows else None

    def _job_or_error(self, id: int) -> Job:
        j = self.job(id)
        if j is None:
            raise MedForensicsError(f"job {id}", "no such job")
        return j

    def jobs(self, limit: int = 50) -> list[Job]:
        """The latest ``limit`` jobs, newest first."""
        return [Job(*r) for r in self._read("listing jobs", f"SELECT {self._JOB_COLS} FROM serve_jobs "
                                            "ORDER BY id DESC LIMIT ?", (_int(limit, "limit"),))]

    # -- items -----------------------------------------------------------------------------------
    @staticmethod
    def _from_record(record: Any, where: str) -> tuple:
        """(kind, modality, label, score, suspicion, detectors, record JSON) of a scan record."""
        if not isinstance(record, dict):
            raise MedForensicsError(where, "the scan record is not a dict")
        kind = record.get("kind")
        _text(kind, f"{where}: record kind")
        modality = record.get("modality")
        if modality is not None:
            _text(modality, f"{where}: record modality")
        label, score = record.get("label"), record.get("score")
        if label is not None and label not in LABELS:
            raise MedForensicsError(where, f"record label {label!r} is not one of {', '.join(LABELS)}")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                  or not math.isfinite(score)):
            raise MedForensicsError(where, f"record score {score!r} is not a number")
        evidence = record.get("evidence", [])
        if not isinstance(evidence, list) or not all(isinstance(e, dict) and isinstance(e.get("detector"), str)
                                                     for e in evidence):
            raise MedForensicsError(where, "record evidence is not a list of detectors' findings")
        detectors = list(dict.fromkeys(
            e["detector"] for e in evidence
            if isinstance(e.get("score"), (int, float)) and e["score"] >= ALARM and e.get("indicates") != "processing"))
        try:
            blob = json.dumps(record, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise MedForensicsError.wrap(where, e, "the scan record is not JSON") from None
        score = None if score is None else float(score)
        suspicion = -1.0 if score is None else score  # errors after every scored item
        return kind, modality, label, score, suspicion, detectors, blob

    def add_item(self, job_id: int | None, *, path: str, name: str, source: str, record: dict, n_frames: int,
                 gateway_series: str | None = None) -> int:
        """Add a checked image or series to the work list (``unreviewed``); its id. Label, score,
        modality and kind come from ``record`` (a scan record, ``Verdict.to_dict()``), its
        detectors are those whose evidence alarms (score >= :data:`ALARM`, not ``processing``)."""
        _text(str(path), "item path")
        _text(name, "item name")
        if source not in SOURCES:
            raise MedForensicsError(name, f"source {source!r} is not one of {', '.join(SOURCES)}")
        n_frames = _int(n_frames, f"{name}: frame count")
        if gateway_series is not None:
            _text(gateway_series, f"{name}: gateway series")
        kind, modality, label, score, suspicion, detectors, blob = self._from_record(record, name)
        with self._tx("adding an item"):
            if job_id is not None and not self._db.query("SELECT 1 FROM serve_jobs WHERE id = ?",
                                                         (_int(job_id, "job id"),)):
                raise MedForensicsError(f"job {job_id}", "no such job")
            if gateway_series is not None and self._db.query("SELECT 1 FROM serve_items WHERE gateway_series = ?",
                                                             (gateway_series,)):
                raise MedForensicsError(f"series {gateway_series}", "already has an item (replace its record instead)")
            iid = self._next_id("serve_items")
            self._db.execute(
                "INSERT INTO serve_items (id, job_id, name, source, kind, modality, label, score, suspicion, detectors, "
                "n_frames, created, review_state, reviewer, path, record, gateway_series) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'unreviewed', NULL, ?, ?, ?)",
                (iid, job_id, name, source, kind, modality, label, score, suspicion, json.dumps(detectors), n_frames,
                 self._now(), str(path), blob, gateway_series))
            self._db.executemany("INSERT INTO serve_item_detectors (detector, item_id) VALUES (?, ?)",
                                 [(d, iid) for d in detectors])
        return iid

    @staticmethod
    def _row(r: Sequence) -> ItemRow:
        return ItemRow(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), int(r[9]), r[10],
                       r[11], r[12])

    def _item_where(self, where: str, params: tuple, what: str) -> Item | None:
        rows = self._read(what, f"SELECT {_ROW_COLS}, path, record, gateway_series FROM serve_items WHERE {where}",
                          params)
        if not rows:
            return None
        r = rows[0]
        return Item(*self._row(r[:13]).__dict__.values(), path=r[13], record=json.loads(r[14]), gateway_series=r[15])

    def item(self, id: int) -> Item | None:
        """The item ``id`` with its record (None when there is none)."""
        return self._item_where("id = ?", (id,), "reading an item")

    def item_by_gateway_series(self, uid: str) -> Item | None:
        """The item that stands for the gateway's series ``uid`` (None when there is none)."""
        return self._item_where("gateway_series = ?", (uid,), "reading an item")

    def replace_record(self, id: int, record: dict) -> None:
        """Give an item a new scan record (the gateway checked its series again): label, score,
        modality, kind and detectors follow it; the review state stays."""
        kind, modality, label, score, suspicion, detectors, blob = self._from_record(record, f"item {id}")
        with self._tx("replacing an item's record"):
            if not self._db.query("SELECT 1 FROM serve_items WHERE id = ?", (_int(id, "item id"),)):
                raise MedForensicsError(f"item {id}", "no such item")
            self._db.execute("UPDATE serve_items SET kind = ?, modality = ?, label = ?, score = ?, suspicion = ?, "
                             "detectors = ?, record = ? WHERE id = ?",
                             (kind, modality, label, score, suspicion, json.dumps(detectors), blob, id))
            self._db.execute("DELETE FROM serve_item_detectors WHERE item_id = ?", (id,))
            self._db.executemany("INSERT INTO serve_item_detectors (detector, item_id) VALUES (?, ?)",
                                 [(d, id) for d in detectors])

    def list_items(self, *, label: str | Sequence[str] | None = None, detector: str | None = None,
                   modality: str | Sequence[str] | None = None, since: str | None = None, until: str | None = None,
                   review: str | Sequence[str] | None = None, source: str | None = None, job: int | None = None,
                   text: str | None = None, sort: str = "suspicion", offset: int = 0,
                   limit: int = 100) -> tuple[int, list[ItemRow]]:
        """(how many items match, the page ``offset:offset+limit`` of them). Filters combine with
        AND; ``label``, ``modality`` and ``review`` may be lists (any of them); ``detector``: one of
        the item's alarming detectors; ``since``/``until``: the day (``YYYY-MM-DD``, ``until``
        includes it) or time (ISO 8601) it was added; ``text``: a part of its name (any case);
        ``source``: quiz items are left out unless ``source="quiz"``. ``sort``: ``suspicion``
        (highest score first, items without a score after the scored, then by id), ``newest``,
        ``oldest`` or ``name`` (in any case)."""
        where, params = [], []

        def any_of(col: str, values: str | Sequence[str] | None, allowed: Sequence[str] | None, what: str) -> None:
            if values is None:
                return
            vals = [values] if isinstance(values, str) else list(values)
            if not vals or not all(isinstance(v, str) for v in vals):
                raise MedForensicsError(what, f"{values!r} is not a {what} or a list of them")
            for v in vals:
                if allowed is not None and v not in allowed:
                    raise MedForensicsError(f"{what} {v!r}", f"not one of {', '.join(allowed)}")
            where.append(f"{col} IN ({', '.join('?' * len(vals))})")
            params.extend(vals)

        if source is None:
            where.append("source <> 'quiz'")
        else:
            if source not in SOURCES:
                raise MedForensicsError(f"source {source!r}", f"not one of {', '.join(SOURCES)}")
            where.append("source = ?")
            params.append(source)
        any_of("label", label, LABELS, "label")
        any_of("modality", modality, None, "modality")
        any_of("review_state", review, REVIEW_STATES, "review state")
        if detector is not None:
            where.append("id IN (SELECT item_id FROM serve_item_detectors WHERE detector = ?)")
            params.append(_text(detector, "detector"))
        if since is not None:
            where.append("created >= ?")
            params.append(_moment(since, "since", end_of_day=False))
        if until is not None:
            where.append("created <= ?")
            params.append(_moment(until, "until", end_of_day=True))
        if job is not None:
            where.append("job_id = ?")
            params.append(_int(job, "job"))
        if text:
            pattern = _text(text, "text", empty=True).lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.append("LOWER(name) LIKE ? ESCAPE '\\'")
            params.append(f"%{pattern}%")
        # names sort in any case, by code point in both databases (whatever PostgreSQL's collation)
        by_name = "LOWER(name) COLLATE \"C\", id" if self._db.dialect == "postgresql" else "LOWER(name), id"
        order = {"suspicion": "suspicion DESC, id", "newest": "created DESC, id DESC", "oldest": "created, id",
                 "name": by_name}.get(sort)
        if order is None:
            raise MedForensicsError(f"sort {sort!r}", f"not one of {', '.join(SORTS)}")
        offset, limit = _int(offset, "offset"), _int(limit, "limit")
        clause = " AND ".join(where)
        with self._db.guard("listing items"):
            total = int(self._db.query(f"SELECT COUNT(*) FROM serve_items WHERE {clause}", params)[0][0])
            rows = self._db.query(f"SELECT {_ROW_COLS} FROM serve_items WHERE {clause} ORDER BY {order} "
                                  "LIMIT ? OFFSET ?", (*params, limit, offset)) if limit and offset < total else []
        return total, [self._row(r) for r in rows]

    def facets(self) -> dict[str, list[str]]:
        """What the work list's filters may choose from: the labels, modalities, alarming detectors
        and review states of the items (quiz items left out), each in its usual order."""
        with self._db.guard("reading the filters"):
            labels = {r[0] for r in self._db.query("SELECT DISTINCT label FROM serve_items "
                                                   "WHERE source <> 'quiz' AND label IS NOT NULL")}
            modalities = [r[0] for r in self._db.query("SELECT DISTINCT modality FROM serve_items "
                                                       "WHERE source <> 'quiz' AND modality IS NOT NULL")]
            detectors = [r[0] for r in self._db.query(
                "SELECT DISTINCT d.detector FROM serve_item_detectors d JOIN serve_items i ON i.id = d.item_id "
                "WHERE i.source <> 'quiz'")]
            reviews = {r[0] for r in self._db.query("SELECT DISTINCT review_state FROM serve_items "
                                                    "WHERE source <> 'quiz'")}
        return {"labels": [v for v in LABELS if v in labels], "modalities": sorted(modalities),
                "detectors": sorted(detectors), "review_states": [v for v in REVIEW_STATES if v in reviews]}

    # -- decisions -------------------------------------------------------------------------------
    def decide(self, item_id: int, action: str, who: str, note: str) -> AuditEntry:
        """A reviewer's decision on an item: its review state and reviewer change and an audit
        entry (target ``item:ID``, before and after the state) is appended, in one transaction."""
        if action not in ACTIONS:
            raise MedForensicsError(f"item {item_id}", f"action {action!r} is not one of {', '.join(ACTIONS)}")
        _text(who, "who")
        _text(note, "note", empty=True)
        after = ACTIONS[action]
        with self._tx(f"recording a {action}"):
            rows = self._db.query("SELECT review_state FROM serve_items WHERE id = ?", (_int(item_id, "item id"),))
            if not rows:
                raise MedForensicsError(f"item {item_id}", "no such item")
            self._db.execute("UPDATE serve_items SET review_state = ?, reviewer = ? WHERE id = ?", (after, who, item_id))
            entry = self._append(who, action, f"item:{item_id}", rows[0][0], after, note)
        return entry

    def decisions(self, item_id: int) -> list[AuditEntry]:
        """The decisions on an item, oldest first."""
        return self.audit(limit=None, target=f"item:{item_id}")

    # -- audit -----------------------------------------------------------------------------------
    def _append(self, who: str, action: str, target: str, before: str | None, after: str | None,
                note: str) -> AuditEntry:
        """Append an entry inside the open write transaction: reads the complete subtrees of the
        tree so far (``O(log n)``), writes the leaf, the subtrees it completes and the new root."""
        db = self._db
        size = int(db.query("SELECT COALESCE(MAX(seq), 0) FROM serve_audit")[0][0])
        wanted = merkle.range_nodes(0, size)
        stack: list[tuple[int, bytes]] = []
        if wanted:
            found = {(int(lv), int(ix)): h for lv, ix, h in db.query(
                "SELECT level, idx, hash FROM serve_audit_nodes WHERE "
                + " OR ".join("(level = ? AND idx = ?)" for _ in wanted), [v for node in wanted for v in node])}
            missing = [n for n in wanted if n not in found]
            if missing:
                raise MedForensicsError(self.name, f"the audit log's subtree {missing[0]} is missing (run audit verify)")
            stack = [(lv, bytes.fromhex(found[(lv, ix)])) for lv, ix in wanted]
        seq, at = size + 1, self._now()
        leaf = merkle.leaf_hash(leaf_data(seq, at, who, action, target, before, after, note))
        made = _push(stack, size, leaf)
        root = _root(stack)
        db.executemany("INSERT INTO serve_audit_nodes (level, idx, hash) VALUES (?, ?, ?)",
                       [(lv, ix, h.hex()) for lv, ix, h in made])
        db.execute(f"INSERT INTO serve_audit ({_AUDIT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (seq, at, who, action, target, before, after, note, leaf.hex(), root.hex()))
        return AuditEntry(seq, at, who, action, target, before, after, note, leaf.hex(), root.hex())

    def audit_append(self, who: str, action: str, target: str, before: str | None, after: str | None,
                     note: str = "") -> AuditEntry:
        """Append an entry to the audit log (a user or role changed, a token created, a job
        started, a gateway release, ...); ``before``/``after``: the state changed, or None."""
        _text(who, "audit: who")
        _text(action, "audit: action")
        _text(target, "audit: target")
        for v, what in ((before, "before"), (after, "after")):
            if v is not None:
                _text(v, f"audit: {what}", empty=True)
        _text(note, "audit: note", empty=True)
        with self._tx("appending to the audit log"):
            return self._append(who, action, target, before, after, note)

    def audit(self, offset: int = 0, limit: int | None = 100, target: str | None = None) -> list[AuditEntry]:
        """Entries of the audit log (about ``target`` when given), oldest first (by ``seq``)."""
        where, params = ("WHERE target = ?", [target]) if target is not None else ("", [])
        page = ""
        if limit is not None:
            page = " LIMIT ? OFFSET ?"
            params += [_int(limit, "limit"), _int(offset, "offset")]
        elif offset:
            page = " LIMIT -1 OFFSET ?" if self._db.dialect == "sqlite" else " OFFSET ?"
            params.append(_int(offset, "offset"))
        rows = self._read("reading the audit log", f"SELECT {_AUDIT_COLS} FROM serve_audit {where} ORDER BY seq{page}",
                          params)
        return [AuditEntry(int(r[0]), *r[1:]) for r in rows]

    def audit_size(self) -> int:
        """How many entries the audit log holds."""
        return int(self._read("reading the audit log", "SELECT COUNT(*) FROM serve_audit")[0][0])

    def audit_head(self) -> tuple[int, str]:
        """(size, root in hex) of the audit log: the latest entry's root (the empty tree's hash when
        there is none)."""
        rows = self._read("reading the audit log", "SELECT seq, root FROM serve_audit ORDER BY seq DESC LIMIT 1")
        return (int(rows[0][0]), rows[0][1]) if rows else (0, merkle.EMPTY_ROOT.hex())

    def audit_verify(self) -> list[str]:
        """Recompute every leaf hash and root of the audit log from the stored fields, and the
        stored subtree hashes; the problems found (an empty list: the log is intact)."""
        check = _Checker()
        with self._db.guard("verifying the audit log"):
            for r in self._db.stream(f"SELECT {_AUDIT_COLS} FROM serve_audit ORDER BY seq"):
                check.entry(f"audit entry {r[0]}", int(r[0]), r[1:8], r[8], r[9])
            stored = {(int(lv), int(ix)): h for lv, ix, h in self._db.stream("SELECT level, idx, hash FROM serve_audit_nodes")}
        for node, h in sorted(check.nodes.items()):
            if node not in stored:
                check.problems.add(f"audit subtree {node}: missing")
            elif stored[node] != h.hex():
                check.problems.add(f"audit subtree {node}: hash does not match the leaf hashes it covers")
        for node in sorted(set(stored) - set(check.nodes)):
            check.problems.add(f"audit subtree {node}: covers entries that do not exist")
        return check.problems.done()

    def audit_verify_against(self, size: int, root: str) -> list[str]:
        """:meth:`audit_verify`, and that the log still holds the tree head (``size``, ``root``)
        kept from earlier (a printed head, an older export): its first ``size`` entries hash to
        ``root``. This catches what the stored hashes alone cannot: entries cut from the end, or
        the last ones rewritten with their hashes recomputed by someone who can write the database."""
        problems = self.audit_verify()
        if problems:
            return problems
        have, _ = self.audit_head()
        if size > have:
            return [f"the audit log holds {have} entries, fewer than the {size} of the earlier tree head: "
                    "entries were removed"]
        if size < 1:
            return [] if size == 0 else [f"tree size {size} is not a size"]
        rows = self._read("checking an earlier tree head", "SELECT root FROM serve_audit WHERE seq = ?", (int(size),))
        if not rows or rows[0][0] != str(root).lower():
            return [f"the audit log's first {size} entries no longer hash to the earlier root {root}: "
                    "entries up to there were changed"]
        return []

    def audit_export(self, out: str | Path) -> tuple[int, str]:
        """Write the audit log to the NEW file ``out`` as JSON lines (one entry a line with its leaf
        hash and root, then ``{"tree_size": n, "root": hex}``); (size, root). An existing file is
        refused; :func:`verify_export` checks the file without the database."""
        out = Path(out)
        size, root = self.audit_head()
        try:
            f = open(out, "x", encoding="utf-8")
        except FileExistsError:
            raise MedForensicsError(out, "already exists; the audit log is exported to a new file") from None
        except OSError as e:
            raise MedForensicsError.wrap(out, e, "cannot create the export") from None
        try:
            with f, self._db.guard("exporting the audit log"):
                for r in self._db.stream(f"SELECT {_AUDIT_COLS} FROM serve_audit WHERE seq <= ? ORDER BY seq", (size,)):
                    f.write(json.dumps(AuditEntry(int(r[0]), *r[1:]).to_dict(), sort_keys=True, ensure_ascii=False) + "\n")
                f.write(json.dumps({"tree_size": size, "root": root}, sort_keys=True) + "\n")
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        return size, root

    # -- quiz ------------------------------------------------------------------------------------
    def add_quiz_image(self, kind: str, item_id: int, truth_box: Sequence[int] | None, seed: int) -> int:
        """Add an image to the quiz: ``kind`` ``authentic`` or a forgery kind, the item that shows
        it, the forged box (row0, col0, row1, col1; stops exclusive) and the forge's seed; its id."""
        if not isinstance(kind, str) or not _QUIZ_KIND.fullmatch(kind):
            raise MedForensicsError(f"quiz kind {kind!r}", "is not authentic or a forgery kind (lower-case word)")
        box = None
        if truth_box is not None:
            box = [_int(v, "truth box") for v in truth_box] if isinstance(truth_box, (list, tuple)) else None
            if box is None or len(box) != 4 or box[0] >= box[2] or box[1] >= box[3]:
                raise MedForensicsError(f"quiz image of item {item_id}",
                                        f"truth box {truth_box!r} is not [row0, col0, row1, col1] with row0 < row1, col0 < col1")
        seed = _int(seed, "seed", negative=True)
        with self._tx("adding a quiz image"):
            if not self._db.query("SELECT 1 FROM serve_items WHERE id = ?", (_int(item_id, "item id"),)):
                raise MedForensicsError(f"item {item_id}", "no such item")
            qid = self._next_id("serve_quiz_images")
            self._db.execute("INSERT INTO serve_quiz_images (id, kind, item_id, truth_box, seed) VALUES (?, ?, ?, ?, ?)",
                             (qid, kind, item_id, None if box is None else json.dumps(box), seed))
        return qid

    def quiz_images(self) -> list[QuizImage]:
        """Every quiz image, by id."""
        rows = self._read("reading the quiz", "SELECT id, kind, item_id, truth_box FROM serve_quiz_images ORDER BY id")
        return [QuizImage(int(i), k, int(item), None if box is None else json.loads(box)) for i, k, item, box in rows]

    def add_answer(self, user: str, quiz_image_id: int, answer: str, x: float | None, y: float | None, *,
                   once: bool = False) -> Answer:
        """Record ``user``'s answer (``real`` or ``fake``) about a quiz image, with where they
        clicked (``x`` column, ``y`` row, in image pixels) if they did: correct when ``fake`` is
        said of a forgery or ``real`` of an authentic image; ``hit`` when the click lies in the
        forged box (None without a box or a click). Answering an image again adds an answer, or
        with ``once`` raises :class:`AlreadyAnswered` (checked in the same transaction)."""
        if answer not in ("real", "fake"):
            raise MedForensicsError(f"quiz image {quiz_image_id}", f"answer {answer!r} is not real or fake")
        click = None
        if x is not None or y is not None:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (x, y)):
                raise MedForensicsError(f"quiz image {quiz_image_id}", f"click ({x!r}, {y!r}) is not two numbers")
            click = (float(x), float(y))
        with self._tx("recording an answer"):
            if not self._db.query("SELECT 1 FROM serve_users WHERE name = ?", (user,)):
                raise MedForensicsError(f"user {user}", "no such user")
            rows = self._db.query("SELECT kind, truth_box FROM serve_quiz_images WHERE id = ?",
                                  (_int(quiz_image_id, "quiz image id"),))
            if not rows:
                raise MedForensicsError(f"quiz image {quiz_image_id}", "no such quiz image")
            kind, box = rows[0][0], None if rows[0][1] is None else json.loads(rows[0][1])
            if once and self._db.query("SELECT 1 FROM serve_quiz_answers WHERE user_name = ? AND quiz_image_id = ?",
                                       (user, quiz_image_id)):
                raise AlreadyAnswered(f"quiz image {quiz_image_id}", "already answered")
            correct = (answer == "fake") == (kind != "authentic")
            hit = None if box is None or click is None else (box[0] <= click[1] < box[2] and box[1] <= click[0] < box[3])
            aid, at = self._next_id("serve_quiz_answers"), self._now()
            self._db.execute("INSERT INTO serve_quiz_answers (id, user_name, quiz_image_id, kind, answer, correct, hit, at) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (aid, user, quiz_image_id, kind, answer, int(correct), None if hit is None else int(hit), at))
        return Answer(aid, user, quiz_image_id, kind, answer, correct, hit, at)

    def answered(self, user: str) -> set[int]:
        """The quiz images ``user`` has answered."""
        return {int(r[0]) for r in self._read("reading answers", "SELECT DISTINCT quiz_image_id FROM serve_quiz_answers "
                                              "WHERE user_name = ?", (user,))}

    def scores(self, user: str | None = None) -> list[Score]:
        """Per user and kind of image: answers, right answers and clicks in the forged box (of
        ``user`` when given, else everyone's), by user then kind."""
        where, params = ("WHERE user_name = ?", (user,)) if user is not None else ("", ())
        rows = self._read("reading scores", "SELECT user_name, kind, COUNT(*), SUM(correct), "
                          f"SUM(CASE WHEN hit = 1 THEN 1 ELSE 0 END) FROM serve_quiz_answers {where} "
                          "GROUP BY user_name, kind ORDER BY user_name, kind", params)
        return [Score(u, k, int(n), int(c), int(h)) for u, k, n, c, h in rows]


# -- helpers -------------------------------------------------------------------------------------

def _text(value: Any, what: str, empty: bool = False) -> str:
    """``value`` when it is a string (not blank unless ``empty``), else an error naming ``what``."""
    if not isinstance(value, str):
        raise MedForensicsError(what, f"{value!r} is not a string")
    if not empty and not value.strip():
        raise MedForensicsError(what, "is empty")
    return value


def _int(value: Any, what: str, negative: bool = False) -> int:
    """``value`` when it is an int (not below 0 unless ``negative``), else an error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or (value < 0 and not negative):
        raise MedForensicsError(what, f"{value!r} is not a {'whole number' if negative else 'count'}")
    return value


def _moment(value: Any, what: str, *, end_of_day: bool) -> str:
    """A day (``YYYY-MM-DD``: its start, or its last second when ``end_of_day``) or an ISO 8601
    time (UTC when it names no offset) as the store writes times.

    >>> _moment("2026-03-01", "until", end_of_day=True), _moment("2026-03-01T10:00:00+01:00", "since", end_of_day=False)
    ('2026-03-01T23:59:59Z', '2026-03-01T09:00:00Z')
    """
    if not isinstance(value, str):
        raise MedForensicsError(what, f"{value!r} is not a date")
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            t = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            if end_of_day:
                t += timedelta(days=1, seconds=-1)
        else:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            t = t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
    except ValueError:
        raise MedForensicsError(what, f"{value!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def export_head(path: str | Path) -> tuple[int, str]:
    """The tree head (size, root) on the last line of an intact export (:func:`verify_export`)."""
    problems = verify_export(path)
    if problems:
        raise MedForensicsError(path, f"not an intact audit export ({problems[0]})")
    head = json.loads(Path(path).read_text(encoding="utf-8").splitlines()[-1])
    return int(head["tree_size"]), str(head["root"])


def verify_export(path: str | Path) -> list[str]:
    """Re-check an exported audit log (:meth:`Store.audit_export`) without the database: every
    line's leaf hash from its fields, every root from the leaf hashes, and the last line's tree
    size and root; the problems found (an empty list: the file is intact)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MedForensicsError.wrap(path, e, "cannot read the export") from None
    check = _Checker()
    head = None
    fields = ("at", "who", "action", "target", "before", "after", "note")
    for n, line in enumerate(lines, 1):
        where = f"{path.name} line {n}"
        try:
            d = json.loads(line)
        except ValueError:
            check.problems.add(f"{where}: not JSON")
            continue
        if not isinstance(d, dict):
            check.problems.add(f"{where}: not a JSON object")
        elif "tree_size" in d:
            if head is not None:
                check.problems.add(f"{where}: a second tree head")
            elif n != len(lines):
                check.problems.add(f"{where}: the tree head is not the last line")
            head = d
        elif set(d) != {"seq", *fields, "leaf_hash", "root"}:
            check.problems.add(f"{where}: not an audit entry (fields {', '.join(sorted(d))})")
        else:
            check.entry(where, d["seq"], [d[k] for k in fields], d["leaf_hash"], d["root"])
    if head is None:
        check.problems.add(f"{path.name}: no tree head line ({{\"tree_size\": n, \"root\": hex}}): the file is cut short")
    else:
        if head.get("tree_size") != check.size:
            check.problems.add(f"{path.name}: tree head says {head.get('tree_size')!r} entries, the file holds {check.size}")
        if head.get("root") != check.root.hex():
            check.problems.add(f"{path.name}: tree head root does not match the Merkle root of the entries")
    return check.problems.done()
