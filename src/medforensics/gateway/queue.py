"""The gateway's durable queue: every received instance, its state, each series' check, and who
released or rejected what. SQLite (a path or ``sqlite:///path``; WAL, ``synchronous=FULL``) or
PostgreSQL (``postgresql://...``), through :class:`medforensics.db.Database`.

An instance moves ``received -> scanned -> forwarded`` or ``received -> scanned -> quarantined
-> forwarded`` (released by a person) or ``... -> quarantined -> rejected``. Every move is one
committed transaction that also writes a row of ``gateway_transitions`` (unique on instance,
version and state, with its UTC time); a move off this graph raises. States change only
*after* the work they record is durable, so a crash at any point leaves work to redo, never
work lost:

* the instance is in the spool (fsync'd) before :meth:`Queue.add_instance` commits, and the
  sender is acknowledged after it;
* a series' check is recorded (:meth:`Queue.record_check`: decision, result, SR/SEG paths, and
  its instances ``scanned`` or ``quarantined``) in one transaction after the check's outputs
  were written; a check killed halfway leaves its instances ``received``, to be checked again;
* an instance is marked ``forwarded`` after the archive acknowledged it; one killed in between
  is sent again (at-least-once: a C-STORE of the same SOP instance twice is harmless to an archive).

Decisions that need a check are enforced here: an instance is forwarded only when its series'
latest check said ``forward``/``forward_with_result`` or a person released it; quarantining
happens by a check, rejecting by a person (:meth:`Queue.decide`, written to the append-only
``gateway_audit`` table). A part of a series that arrives while the series is held is held with it.

An instance sent again while it is still in the queue (not yet forwarded or rejected) is a
duplicate: :meth:`Queue.add_instance` returns False and changes nothing. One sent again after it
was forwarded or rejected is a new version of it: recorded again as ``received`` (``version`` +1),
checked and forwarded again; the earlier version's history stays in the transitions.

>>> import os, tempfile
>>> q = Queue(os.path.join(tempfile.mkdtemp(), "queue.sqlite"))
>>> new = dict(sop_instance_uid="1.2.3.1", series_instance_uid="1.2.3", study_instance_uid="1.2",
...            sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
...            path="spool/1.2.3.1.dcm", calling_ae="CT1", peer="10.0.0.7", size=52_000)
>>> q.add_instance(**new), q.add_instance(**new)
(True, False)
>>> q.ready_series(idle_s=30), q.ready_series(idle_s=30, expected={"1.2.3": 1})
([], ['1.2.3'])
>>> q.record_check("1.2.3", "manipulated", 0.91, "quarantine", {"detectors": 7}, instances=["1.2.3.1"]).state
'quarantined'
>>> q.decide("1.2.3", "release", who="dr.house", why="checked with the modality: a known artefact").state
'released'
>>> q.to_forward(), [i.sop_instance_uid for i in q.pending("1.2.3")]
(['1.2.3'], ['1.2.3.1'])
>>> q.set_state(["1.2.3.1"], "forwarded")
>>> [t.state for t in q.transitions("1.2.3.1")], q.series("1.2.3").state
(['received', 'scanned', 'quarantined', 'forwarded'], 'forwarded')
>>> q.close()
"""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..core import MedForensicsError
from ..db import Database, display_location

__all__ = ["ACTIONS", "DECISIONS", "SERIES_STATES", "STATES", "AuditEntry", "Instance", "Queue", "Series",
           "Transition", "utc_iso"]

#: States of an instance, and where each may go next.
STATES = ("received", "scanned", "quarantined", "forwarded", "rejected")
_NEXT = {"received": ("scanned",), "scanned": ("forwarded", "quarantined"), "quarantined": ("forwarded", "rejected"),
         "forwarded": (), "rejected": ()}
_FINISHED = ("forwarded", "rejected")
#: What a check decides for a series (:mod:`medforensics.gateway.policy`'s actions).
DECISIONS = ("forward", "forward_with_result", "quarantine")
#: States of a checked series: instances being sent, held for a person, released by one (being
#: sent), rejected by one, all sent.
SERIES_STATES = ("forwarding", "quarantined", "released", "rejected", "forwarded")
#: What a person may do with a quarantined series.
ACTIONS = ("release", "reject")

SCHEMA_VERSION = "1"
_PG_LOCK = 0x6D6667617465710A  # the advisory lock that serialises the queue's writers in PostgreSQL
_INSTANCE_COLS = ("sop_instance_uid, series_instance_uid, study_instance_uid, sop_class_uid, transfer_syntax_uid, "
                  "path, calling_ae, peer, size, state, received_at, version")
_SERIES_COLS = ("series_instance_uid, study_instance_uid, state, label, score, decision, result, sr_path, seg_path, "
                "checked_at, updated_at")


def utc_iso(t: float | None = None) -> str:
    """``t`` (seconds since the epoch; default now) as UTC ISO 8601 with microseconds. Every time in
    the queue is written so, in one width, so that the strings sort as the times do.

    >>> utc_iso(0.25)
    '1970-01-01T00:00:00.250000+00:00'
    """
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Instance:
    """One received instance: its UIDs, spool file, sender and state (``version`` counts resends
    after it was finished)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    calling_ae: str
    peer: str
    size: int
    state: str
    received_at: str
    version: int


@dataclass(frozen=True)
class Series:
    """A checked series: its state, the latest check's label, score, decision and result (JSON),
    and the SR/SEG files the check wrote."""

    series_instance_uid: str
    study_instance_uid: str
    state: str
    label: str
    score: float | None
    decision: str
    result: dict
    sr_path: str | None
    seg_path: str | None
    checked_at: str
    updated_at: str


@dataclass(frozen=True)
class Transition:
    """An instance reached ``state`` (in its ``version``) at ``at``."""

    sop_instance_uid: str
    version: int
    state: str
    at: str


@dataclass(frozen=True)
class AuditEntry:
    """A person's decision on a quarantined series (never changed once written)."""

    id: int
    at: str
    who: str
    action: str
    series_instance_uid: str
    why: str
    before: str
    after: str


def _text(value: Any, what: str, empty: bool = False) -> str:
    """``value`` when it is a string (not blank unless ``empty``), else an error naming ``what``."""
    if not isinstance(value, str):
        raise MedForensicsError(what, f"{value!r} is not a string")
    if not empty and not value.strip():
        raise MedForensicsError(what, "is empty")
    return value


class Queue:
    """The gateway's queue at ``location`` (opened, or created with its schema when missing); safe
    for the threads of one process (they share one connection under one lock) and for other
    processes meanwhile (each write is one serialised transaction). ``busy_timeout_s``: how long a
    SQLite writer waits for another process; ``clock``: the time (seconds since the epoch) stamped on
    what happens. Use as a context manager or call :meth:`close`."""

    def __init__(self, location: str | Path, *, busy_timeout_s: float = 60.0, clock: Callable[[], float] = time.time):
        self.location = str(location)
        self._clock = clock
        self.name = display_location(self.location)
        self._db = Database(self.location, self.name, create=True, synchronous="FULL", lock_id=_PG_LOCK,
                            busy_timeout_s=busy_timeout_s)
        try:
            self._open_schema()
        except BaseException:
            self._db.close()
            raise

    # -- schema ----------------------------------------------------------------------------------
    def _schema(self) -> list[str]:
        states = ", ".join(f"'{s}'" for s in STATES)
        sstates = ", ".join(f"'{s}'" for s in SERIES_STATES)
        stmts = [
            "CREATE TABLE gateway_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE gateway_instances (sop_instance_uid TEXT PRIMARY KEY, series_instance_uid TEXT NOT NULL, "
            "study_instance_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, transfer_syntax_uid TEXT NOT NULL, "
            "path TEXT NOT NULL, calling_ae TEXT NOT NULL, peer TEXT NOT NULL, size BIGINT NOT NULL, "
            f"state TEXT NOT NULL CHECK (state IN ({states})), received_at TEXT NOT NULL, "
            "version INTEGER NOT NULL, seq BIGINT NOT NULL UNIQUE)",
            "CREATE INDEX gateway_instances_series ON gateway_instances (series_instance_uid, state)",
            "CREATE INDEX gateway_instances_state ON gateway_instances (state, seq)",
            "CREATE TABLE gateway_transitions (sop_instance_uid TEXT NOT NULL, version INTEGER NOT NULL, "
            f"state TEXT NOT NULL CHECK (state IN ({states})), at TEXT NOT NULL, "
            "PRIMARY KEY (sop_instance_uid, version, state))",
            "CREATE TABLE gateway_series (series_instance_uid TEXT PRIMARY KEY, study_instance_uid TEXT NOT NULL, "
            f"state TEXT NOT NULL CHECK (state IN ({sstates})), label TEXT NOT NULL, score DOUBLE PRECISION, "
            "decision TEXT NOT NULL, result TEXT NOT NULL, sr_path TEXT, seg_path TEXT, checked_at TEXT NOT NULL, "
            "updated_at TEXT NOT NULL)",
            "CREATE INDEX gateway_series_state ON gateway_series (state, checked_at)",
            "CREATE TABLE gateway_audit (id BIGINT PRIMARY KEY, at TEXT NOT NULL, who TEXT NOT NULL, "
            "action TEXT NOT NULL, series_instance_uid TEXT NOT NULL, why TEXT NOT NULL, "
            "before_state TEXT NOT NULL, after_state TEXT NOT NULL)",
            "CREATE INDEX gateway_audit_series ON gateway_audit (series_instance_uid, id)",
        ]
        # the audit log and the transitions are append-only in the database itself, not only here
        stmts += self._db.append_only(("gateway_audit", "gateway_transitions"), "gateway_append_only")
        return stmts

    def _open_schema(self) -> None:
        self._db.open_schema("gateway_meta", SCHEMA_VERSION, self._schema, what="gateway queue", created=self._now())

    def _now(self) -> str:
        return utc_iso(self._clock())

    @contextmanager
    def _tx(self, what: str) -> Iterator[None]:
        with self._db.guard(what), self._db.write():
            yield

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- instances -------------------------------------------------------------------------------
    def add_instance(self, *, sop_instance_uid: str, series_instance_uid: str, study_instance_uid: str,
                     sop_class_uid: str, transfer_syntax_uid: str, path: str | Path, calling_ae: str, peer: str,
                     size: int) -> bool:
        """Record a received instance as ``received`` in one committed transaction (call it after
        the spool file is durable, and acknowledge the sender after it returns). False, and nothing
        changed, when this SOPInstanceUID is already in the queue and not finished (a duplicate);
        an instance finished earlier (forwarded, rejected) comes back as its next version."""
        row = [_text(sop_instance_uid, "SOPInstanceUID"), _text(series_instance_uid, "SeriesInstanceUID"),
               _text(study_instance_uid, "StudyInstanceUID"), _text(sop_class_uid, "SOPClassUID"),
               _text(transfer_syntax_uid, "TransferSyntaxUID"), _text(str(path), "path"),
               _text(calling_ae, "calling AE title", empty=True), _text(peer, "peer address", empty=True)]
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise MedForensicsError(sop_instance_uid, f"size {size!r} is not a byte count")
        db = self._db
        with self._tx("recording a received instance"):
            known = db.query("SELECT state, version FROM gateway_instances WHERE sop_instance_uid = ?",
                             (sop_instance_uid,))
            if known and known[0][0] not in _FINISHED:
                return False
            version = known[0][1] + 1 if known else 1
            seq = db.query("SELECT COALESCE(MAX(seq), 0) + 1 FROM gateway_instances")[0][0]
            at = self._now()
            if known:
                db.execute("UPDATE gateway_instances SET series_instance_uid = ?, study_instance_uid = ?, "
                           "sop_class_uid = ?, transfer_syntax_uid = ?, path = ?, calling_ae = ?, peer = ?, size = ?, "
                           "state = 'received', received_at = ?, version = ?, seq = ? WHERE sop_instance_uid = ?",
                           (*row[1:], size, at, version, seq, sop_instance_uid))
            else:
                db.execute(f"INSERT INTO gateway_instances ({_INSTANCE_COLS}, seq) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'received', ?, ?, ?)", (*row, size, at, version, seq))
            db.execute("INSERT INTO gateway_transitions (sop_instance_uid, version, state, at) "
                       "VALUES (?, ?, 'received', ?)", (sop_instance_uid, version, at))
        return True

    def instance(self, sop_uid: str) -> Instance | None:
        """The instance with this SOPInstanceUID (None when the queue never had it)."""
        with self._db.guard("reading an instance"):
            rows = self._db.query(f"SELECT {_INSTANCE_COLS} FROM gateway_instances WHERE sop_instance_uid = ?",
                                  (sop_uid,))
        return Instance(*rows[0]) if rows else None

    def instances(self, series_uid: str, state: str | None = None) -> list[Instance]:
        """The instances of a series (those in ``state`` when given), in the order they arrived."""
        where, params = "series_instance_uid = ?", [series_uid]
        if state is not None:
            where += " AND state = ?"
            params.append(self._state(state))
        with self._db.guard("reading instances"):
            rows = self._db.query(f"SELECT {_INSTANCE_COLS} FROM gateway_instances WHERE {where} ORDER BY seq", params)
        return [Instance(*r) for r in rows]

    def transitions(self, sop_uid: str) -> list[Transition]:
        """Every state an instance reached, with its time, oldest first (all versions)."""
        with self._db.guard("reading transitions"):
            rows = self._db.query("SELECT sop_instance_uid, version, state, at FROM gateway_transitions "
                                  "WHERE sop_instance_uid = ? ORDER BY version, at", (sop_uid,))
        order = {s: i for i, s in enumerate(STATES)}
        return sorted((Transition(*r) for r in rows), key=lambda t: (t.version, t.at, order[t.state]))

    def counts(self) -> dict[str, int]:
        """How many instances are in each state.

        Zero counts are included, so that ``counts()["received"]`` always works."""
        with self._db.guard("counting instances"):
            rows = self._db.query("SELECT state, COUNT(*) FROM gateway_instances GROUP BY state")
        return {s: 0 for s in STATES} | {s: int(n) for s, n in rows}

    def ready_series(self, idle_s: float, now: float | None = None,
                     expected: Mapping[str, int] | None = None) -> list[str]:
        """The series with instances ``received`` whose newest instance arrived at least ``idle_s``
        seconds before ``now`` (default: the queue's clock), or which hold at least ``expected[series]``
        instances, oldest first (by their first waiting instance)."""
        if not isinstance(idle_s, (int, float)) or not math.isfinite(idle_s) or idle_s < 0:
            raise MedForensicsError("idle_s", f"{idle_s!r} is not a number of seconds")
        cutoff = utc_iso((self._clock() if now is None else now) - idle_s)
        expected = expected or {}
        return [uid for uid, newest, total in self._waiting()
                if newest <= cutoff or (uid in expected and total >= expected[uid])]

    def _waiting(self) -> list[tuple[str, str, int]]:
        """(series, newest arrival, instances in all) of each series with instances ``received``,
        oldest first (by their first waiting instance)."""
        with self._db.guard("finding series waiting for a check"):
            rows = self._db.query(
                "SELECT i.series_instance_uid, MAX(i.received_at), (SELECT COUNT(*) FROM gateway_instances a "
                "WHERE a.series_instance_uid = i.series_instance_uid) FROM gateway_instances i WHERE i.state = 'received' "
                "GROUP BY i.series_instance_uid ORDER BY MIN(i.seq)")
        return [(uid, newest, int(total)) for uid, newest, total in rows]

    def set_state(self, sop_uids: Iterable[str], state: str) -> None:
        """Move instances to ``state`` in one transaction, each move recorded with its time. Raises
        (and changes nothing) for an unknown instance or a move off the graph (see the module's
        description), for ``forwarded`` unless the series' check said forward or a person released
        it, and for the states that record a decision (``scanned``/``quarantined``: a check, by
        :meth:`record_check`; ``rejected``: a person, by :meth:`decide`)."""
        state = self._state(state)
        uids = list(dict.fromkeys(sop_uids))
        if state in ("scanned", "quarantined", "rejected"):
            raise MedForensicsError(f"set_state({state!r})", "instances are scanned or quarantined by record_check, "
                                    "rejected by decide")
        with self._tx(f"marking instances {state}"):
            at = self._now()
            touched = self._move(uids, state, at)
            for series_uid in touched:
                self._settle(series_uid, at)

    def _state(self, state: str) -> str:
        if state not in STATES:
            raise MedForensicsError(repr(state), f"not an instance state; one of {', '.join(STATES)}")
        return state

    def _move(self, uids: Sequence[str], state: str, at: str) -> list[str]:
        """Move each instance to ``state`` (inside a write transaction); the series touched."""
        db, touched = self._db, {}
        for uid in uids:
            rows = db.query("SELECT state, version, series_instance_uid FROM gateway_instances WHERE sop_instance_uid = ?",
                            (uid,))
            if not rows:
                raise MedForensicsError(uid, "no such instance in the queue")
            before, version, series_uid = rows[0]
            if state not in _NEXT[before]:
                raise MedForensicsError(uid, f"cannot go from {before} to {state}"
                                        + (f" (next: {', '.join(_NEXT[before])})" if _NEXT[before] else " (finished)"))
            if state == "forwarded":
                series = db.query("SELECT state FROM gateway_series WHERE series_instance_uid = ?", (series_uid,))
                allowed = "forwarding" if before == "scanned" else "released"
                if not series or series[0][0] != allowed:
                    why = "was not checked" if not series else f"is {series[0][0]}"
                    raise MedForensicsError(uid, f"cannot be forwarded from {before}: its series {why}")
            db.execute("UPDATE gateway_instances SET state = ? WHERE sop_instance_uid = ?", (state, uid))
            db.execute("INSERT INTO gateway_transitions (sop_instance_uid, version, state, at) VALUES (?, ?, ?, ?)",
                       (uid, version, state, at))
            touched[series_uid] = None
        return list(touched)

    def _settle(self, series_uid: str, at: str) -> None:
        """A series being sent whose instances are all sent is ``forwarded``."""
        rows = self._db.query("SELECT state FROM gateway_series WHERE series_instance_uid = ?", (series_uid,))
        if rows and rows[0][0] in ("forwarding", "released") and not self._pending(series_uid, rows[0][0]):
            self._db.execute("UPDATE gateway_series SET state = 'forwarded', updated_at = ? WHERE series_instance_uid = ?",
                             (at, series_uid))

    # -- series ----------------------------------------------------------------------------------
    def record_check(self, series_uid: str, label: str, score: float | None, decision: str, result: dict,
                     sr_path: str | Path | None = None, seg_path: str | Path | None = None, *,
                     instances: Sequence[str]) -> Series:
        """Record a series' check (after its SR/SEG files are durable), in one transaction with its
        ``instances`` (the SOPInstanceUIDs checked, each ``received``) moving to ``scanned``, and
        on to ``quarantined`` when ``decision`` is ``quarantine`` or the series is already held.
        A later check of the same series (a part that came late) replaces the label, score and result."""
        if decision not in DECISIONS:
            raise MedForensicsError(series_uid, f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
        _text(label, f"{series_uid}: label")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise MedForensicsError(series_uid, f"score {score!r} is not a number")
        if not isinstance(result, dict):
            raise MedForensicsError(series_uid, "the check's result is not a dict")
        try:
            blob = json.dumps(result, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise MedForensicsError.wrap(series_uid, e, "the check's result is not JSON") from None
        uids = list(dict.fromkeys(instances))
        if not uids:
            raise MedForensicsError(series_uid, "a check names the instances it checked")
        db = self._db
        with self._tx("recording a check"):
            members = {uid: (series, study) for uid, series, study in db.query(
                "SELECT sop_instance_uid, series_instance_uid, study_instance_uid FROM gateway_instances "
                f"WHERE sop_instance_uid IN ({', '.join('?' * len(uids))})", uids)}
            for uid in uids:
                if uid not in members or members[uid][0] != series_uid:
                    raise MedForensicsError(uid, f"is not an instance of series {series_uid} in the queue")
            old = db.query("SELECT state FROM gateway_series WHERE series_instance_uid = ?", (series_uid,))
            held = decision == "quarantine" or (bool(old) and old[0][0] in ("quarantined", "released"))
            at = self._now()
            self._move(uids, "scanned", at)
            if held:
                # (a release covered the instances a person saw: with new ones, the whole series waits again)
                self._move(uids, "quarantined", at)
            state = "quarantined" if held else "forwarding"
            values = (members[uids[0]][1], state, label, None if score is None else float(score), decision, blob,
                      None if sr_path is None else str(sr_path), None if seg_path is None else str(seg_path), at, at)
            if old:
                db.execute("UPDATE gateway_series SET study_instance_uid = ?, state = ?, label = ?, score = ?, decision = ?, "
                           "result = ?, sr_path = ?, seg_path = ?, checked_at = ?, updated_at = ? "
                           "WHERE series_instance_uid = ?", (*values, series_uid))
            else:
                db.execute(f"INSERT INTO gateway_series ({_SERIES_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (series_uid, *values))
        return self._series_or_error(series_uid)

    def series(self, series_uid: str) -> Series | None:
        """A checked series (None when it was never checked)."""
        with self._db.guard("reading a series"):
            rows = self._db.query(f"SELECT {_SERIES_COLS} FROM gateway_series WHERE series_instance_uid = ?",
                                  (series_uid,))
        return self._series_row(rows[0]) if rows else None

    def _series_or_error(self, series_uid: str) -> Series:
        s = self.series(series_uid)
        if s is None:
            raise MedForensicsError(series_uid, "no checked series with this SeriesInstanceUID in the queue")
        return s

    @staticmethod
    def _series_row(row: tuple) -> Series:
        values = list(row)
        values[6] = json.loads(values[6])
        return Series(*values)

    def list_series(self, state: str | None = None) -> list[Series]:
        """The checked series (those in ``state`` when given), oldest check first."""
        if state is not None and state not in SERIES_STATES:
            raise MedForensicsError(repr(state), f"not a series state; one of {', '.join(SERIES_STATES)}")
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        with self._db.guard("listing series"):
            rows = self._db.query(f"SELECT {_SERIES_COLS} FROM gateway_series {where} "
                                  "ORDER BY checked_at, series_instance_uid", params)
        return [self._series_row(r) for r in rows]

    def _pending(self, series_uid: str, series_state: str) -> list[tuple]:
        wanted = {"forwarding": "scanned", "released": "quarantined"}.get(series_state)
        if wanted is None:
            return []
        return self._db.query(f"SELECT {_INSTANCE_COLS} FROM gateway_instances WHERE series_instance_uid = ? "
                              "AND state = ? ORDER BY seq", (series_uid, wanted))

    def to_forward(self) -> list[str]:
        """The series with instances to send to the archive (their check said forward, or a person
        released them), oldest check first; :meth:`pending` lists the instances."""
        with self._db.guard("finding series to forward"):
            rows = self._db.query(
                "SELECT s.series_instance_uid FROM gateway_series s WHERE EXISTS (SELECT 1 FROM gateway_instances i "
                "WHERE i.series_instance_uid = s.series_instance_uid AND ((s.state = 'forwarding' AND i.state = 'scanned') "
                "OR (s.state = 'released' AND i.state = 'quarantined'))) ORDER BY s.checked_at, s.series_instance_uid")
        return [r[0] for r in rows]

    def pending(self, series_uid: str) -> list[Instance]:
        """The instances of a series that the forwarder must send now, in arrival order; mark each
        ``forwarded`` (:meth:`set_state`) once the archive acknowledged it."""
        with self._db.guard("reading instances to forward"):
            rows = self._db.query("SELECT state FROM gateway_series WHERE series_instance_uid = ?", (series_uid,))
            return [Instance(*r) for r in self._pending(series_uid, rows[0][0])] if rows else []

    # -- people ----------------------------------------------------------------------------------
    def decide(self, series_uid: str, action: str, who: str, why: str) -> Series:
        """A person releases (to be forwarded) or rejects a quarantined series; written to the
        audit log with the time, who, why and the series' state before and after, in the same
        transaction. Only a ``quarantined`` series can be decided."""
        if action not in ACTIONS:
            raise MedForensicsError(series_uid, f"action {action!r} is not one of {', '.join(ACTIONS)}")
        _text(who, "who")
        _text(why, "why")
        db = self._db
        with self._tx(f"recording a {action}"):
            rows = db.query("SELECT state FROM gateway_series WHERE series_instance_uid = ?", (series_uid,))
            if not rows:
                raise MedForensicsError(series_uid, "no checked series with this SeriesInstanceUID in the queue")
            before = rows[0][0]
            if before != "quarantined":
                raise MedForensicsError(series_uid, f"is {before}, not quarantined: there is nothing to {action}")
            at = self._now()
            after = "released" if action == "release" else "rejected"
            if action == "reject":
                held = [r[0] for r in db.query("SELECT sop_instance_uid FROM gateway_instances "
                                               "WHERE series_instance_uid = ? AND state = 'quarantined'", (series_uid,))]
                self._move(held, "rejected", at)
            db.execute("UPDATE gateway_series SET state = ?, updated_at = ? WHERE series_instance_uid = ?",
                       (after, at, series_uid))
            next_id = db.query("SELECT COALESCE(MAX(id), 0) + 1 FROM gateway_audit")[0][0]
            db.execute("INSERT INTO gateway_audit (id, at, who, action, series_instance_uid, why, before_state, "
                       "after_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (next_id, at, who, action, series_uid, why,
                                                                        before, after))
        return self._series_or_error(series_uid)

    def audit(self, series_uid: str | None = None) -> list[AuditEntry]:
        """The audit log (of one series when given), oldest first."""
        where, params = ("WHERE series_instance_uid = ?", (series_uid,)) if series_uid is not None else ("", ())
        with self._db.guard("reading the audit log"):
            rows = self._db.query("SELECT id, at, who, action, series_instance_uid, why, before_state, after_state "
                                  f"FROM gateway_audit {where} ORDER BY id", params)
        return [AuditEntry(*r) for r in rows]

    # -- restart ---------------------------------------------------------------------------------
    def recover(self) -> dict[str, Any]:
        """What a gateway starting after a crash must redo, and whether the queue is sound:
        ``to_check`` (series with instances still ``received``: checked again whatever their idle
        time; a check killed halfway left them so), ``to_forward`` (:meth:`to_forward`; an instance
        killed between the archive's acknowledgement and its mark is sent again), ``quarantined``
        (series waiting for a person), ``missing`` (unfinished instances whose spool file is gone:
        they can be neither checked nor sent), ``inconsistent`` (instances whose state has no
        transition: none unless the database was changed behind the queue's back) and ``counts``.
        Nothing is changed: states move only after their work is durable, so there is no
        half-done state to undo."""
        db = self._db
        with db.guard("recovering the queue"):
            unfinished = db.query("SELECT sop_instance_uid, path FROM gateway_instances "
                                  "WHERE state NOT IN ('forwarded', 'rejected') ORDER BY seq")
            inconsistent = db.query("SELECT i.sop_instance_uid FROM gateway_instances i WHERE NOT EXISTS (SELECT 1 FROM "
                                    "gateway_transitions t WHERE t.sop_instance_uid = i.sop_instance_uid AND "
                                    "t.version = i.version AND t.state = i.state) ORDER BY i.seq")
        return {"to_check": [uid for uid, _, _ in self._waiting()],
                "to_forward": self.to_forward(),
                "quarantined": [s.series_instance_uid for s in self.list_series("quarantined")],
                "missing": [uid for uid, path in unfinished if not Path(path).is_file()],
                "inconsistent": [r[0] for r in inconsistent],
                "counts": self.counts()}
