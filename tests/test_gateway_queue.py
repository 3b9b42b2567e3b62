"""The gateway's durable queue, on SQLite and on a real PostgreSQL (conftest's ``postgres``): the
state machine, duplicates, readiness, threads and a second process at once, the audit log, and
a writer SIGKILLed halfway through 1,000 instances."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import new_database, raw_sql as raw
from medforensics.core import MedForensicsError
from medforensics.gateway.queue import Queue

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_url(request, tmp_path) -> str:
    """A location for a new queue: a SQLite file, or a fresh database in the session's PostgreSQL."""
    return new_database(request, tmp_path, request.param, "gateway")


def inst(sop: str, series: str = "1.2.3", study: str = "1.2", path: str | None = None, **kw) -> dict:
    """The arguments of add_instance for one instance."""
    return dict(sop_instance_uid=sop, series_instance_uid=series, study_instance_uid=study,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=path or f"spool/{sop}.dcm", calling_ae=kw.get("calling_ae", "CT1"), peer=kw.get("peer", "10.0.0.7"),
                size=kw.get("size", 1000))


def epoch(iso: str) -> float:
    t = datetime.fromisoformat(iso)
    assert t.utcoffset() is not None and t.utcoffset().total_seconds() == 0  # UTC, said so
    return t.timestamp()


def states(q: Queue, sop: str) -> list[tuple[int, str]]:
    return [(t.version, t.state) for t in q.transitions(sop)]


# ---------------------------------------------------------------------------------------------

def test_state_machine_and_illegal_transitions(queue_url):
    with Queue(queue_url) as q:
        for i in range(1, 4):
            assert q.add_instance(**inst(f"1.2.3.{i}"))
        with pytest.raises(MedForensicsError, match="cannot go from received to forwarded"):
            q.set_state(["1.2.3.1"], "forwarded")                       # skipping scanned
        with pytest.raises(MedForensicsError, match="cannot go from received to received"):
            q.set_state(["1.2.3.1"], "received")
        with pytest.raises(MedForensicsError, match="no such instance"):
            q.set_state(["9.9"], "forwarded")
        with pytest.raises(MedForensicsError, match="not an instance state"):
            q.set_state(["1.2.3.1"], "done")
        with pytest.raises(MedForensicsError, match="record_check"):
            q.set_state(["1.2.3.1"], "quarantined")
        with pytest.raises(MedForensicsError, match="record_check"):
            q.set_state(["1.2.3.1"], "scanned")                         # a check says so, with its result
        with pytest.raises(MedForensicsError, match="not an instance of series"):
            q.record_check("1.2.3", "authentic", 0.1, "forward", {}, instances=["1.2.3.1", "7.7.7"])
        with pytest.raises(MedForensicsError, match="decision"):
            q.record_check("1.2.3", "authentic", 0.1, "send", {}, instances=["1.2.3.1"])
        with pytest.raises(MedForensicsError, match="not JSON"):
            q.record_check("1.2.3", "authentic", 0.1, "forward", {"x": object()}, instances=["1.2.3.1"])
        q.record_check("1.2.3", "authentic", 0.05, "forward", {"first": True}, instances=["1.2.3.3"])
        # one transaction: 1.2.3.1 moves, 1.2.3.3 (scanned already) cannot, and nothing is half-done
        with pytest.raises(MedForensicsError, match="2.3.3: cannot go from scanned to scanned"):
            q.record_check("1.2.3", "authentic", 0.1, "forward", {}, instances=["1.2.3.1", "1.2.3.3"])
        assert q.instance("1.2.3.1").state == "received" and q.series("1.2.3").result == {"first": True}

        s = q.record_check("1.2.3", "authentic", 0.12, "forward_with_result", {"detectors": ["noise"]},
                           "results/sr.dcm", None, instances=["1.2.3.1", "1.2.3.2"])
        assert (s.state, s.decision, s.result, s.sr_path, s.seg_path) == \
            ("forwarding", "forward_with_result", {"detectors": ["noise"]}, "results/sr.dcm", None)
        assert q.to_forward() == ["1.2.3"]
        assert [i.sop_instance_uid for i in q.pending("1.2.3")] == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
        q.add_instance(**inst("1.2.3.4"))
        with pytest.raises(MedForensicsError, match="2.3.4: cannot go from received to forwarded"):
            q.set_state(["1.2.3.1", "1.2.3.4"], "forwarded")
        assert q.instance("1.2.3.1").state == "scanned" and states(q, "1.2.3.1") == [(1, "received"), (1, "scanned")]
        q.set_state(["1.2.3.1", "1.2.3.2"], "forwarded")
        assert q.series("1.2.3").state == "forwarding"                  # 1.2.3.3 still to send
        q.set_state(["1.2.3.3"], "forwarded")
        assert q.series("1.2.3").state == "forwarded" and q.to_forward() == []
        with pytest.raises(MedForensicsError, match="cannot go from forwarded to received.*finished"):
            q.set_state(["1.2.3.1"], "received")
        with pytest.raises(MedForensicsError, match="cannot go from forwarded to forwarded"):
            q.set_state(["1.2.3.1"], "forwarded")
        ts = q.transitions("1.2.3.1")
        assert [t.state for t in ts] == ["received", "scanned", "forwarded"]
        times = [epoch(t.at) for t in ts]
        assert times == sorted(times) and abs(times[0] - time.time()) < 60

        # a quarantined series: nothing leaves it until a person decides
        for i in range(1, 3):
            q.add_instance(**inst(f"5.5.{i}", series="5.5"))
        s = q.record_check("5.5", "manipulated", 0.93, "quarantine", {"label": "manipulated"}, "r/sr.dcm", "r/seg.dcm",
                           instances=["5.5.1", "5.5.2"])
        assert s.state == "quarantined" and [i.state for i in q.instances("5.5")] == ["quarantined"] * 2
        assert q.to_forward() == [] and q.pending("5.5") == []
        with pytest.raises(MedForensicsError, match="its series is quarantined"):
            q.set_state(["5.5.1"], "forwarded")
        with pytest.raises(MedForensicsError, match="rejected by decide"):
            q.set_state(["5.5.1"], "rejected")
        assert states(q, "5.5.1") == [(1, "received"), (1, "scanned"), (1, "quarantined")]

    # the transitions are append-only in the database itself
    with pytest.raises(Exception, match="append-only"):
        raw(queue_url, "UPDATE gateway_transitions SET state = 'received' WHERE sop_instance_uid = '1.2.3.1'")
    with pytest.raises(Exception, match="append-only"):
        raw(queue_url, "DELETE FROM gateway_transitions")
    # every transition once: the database refuses a second row for the same instance, version and state
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        raw(queue_url, "INSERT INTO gateway_transitions (sop_instance_uid, version, state, at) "
                       "VALUES ('1.2.3.1', 1, 'scanned', 'x')")


def test_duplicates_and_resends(queue_url, tmp_path):
    with Queue(queue_url) as q:
        assert q.add_instance(**inst("1.2.3.1")) is True
        assert q.add_instance(**inst("1.2.3.1", path="spool/1.2.3.1.2.dcm", peer="10.0.0.8")) is False
        assert q.counts() == {"received": 1, "scanned": 0, "quarantined": 0, "forwarded": 0, "rejected": 0}
        first = q.instance("1.2.3.1")
        assert (first.path, first.peer, first.version) == ("spool/1.2.3.1.dcm", "10.0.0.7", 1)
        q.record_check("1.2.3", "authentic", 0.1, "forward", {}, instances=["1.2.3.1"])
        assert q.add_instance(**inst("1.2.3.1")) is False                # scanned, waiting to be sent
        q.set_state(["1.2.3.1"], "forwarded")
        # sent again after it was forwarded: a new version, checked and sent again
        assert q.add_instance(**inst("1.2.3.1", path="spool/1.2.3.1.2.dcm", size=2000)) is True
        again = q.instance("1.2.3.1")
        assert (again.state, again.version, again.path, again.size) == ("received", 2, "spool/1.2.3.1.2.dcm", 2000)
        assert states(q, "1.2.3.1") == [(1, "received"), (1, "scanned"), (1, "forwarded"), (2, "received")]
        assert q.ready_series(0) == ["1.2.3"] and q.add_instance(**inst("1.2.3.1")) is False
        # rejected, then sent again: a new version too
        q.add_instance(**inst("4.4.1", series="4.4"))
        q.record_check("4.4", "synthetic", 0.99, "quarantine", {}, instances=["4.4.1"])
        q.decide("4.4", "reject", who="pacs.admin", why="synthetic image")
        assert q.add_instance(**inst("4.4.1", series="4.4")) is True
        assert states(q, "4.4.1") == [(1, "received"), (1, "scanned"), (1, "quarantined"), (1, "rejected"),
                                      (2, "received")]
        with pytest.raises(MedForensicsError, match="size"):
            q.add_instance(**inst("4.4.2", size=-1))
        with pytest.raises(MedForensicsError, match="SOPInstanceUID"):
            q.add_instance(**inst(""))
    assert raw(queue_url, "SELECT COUNT(*) FROM gateway_instances")[0][0] == 2


def test_ready_series_idle_and_expected_counts(queue_url):
    clock = [1_800_000_000.0]
    with Queue(queue_url, clock=lambda: clock[0]) as q:
        q.add_instance(**inst("1.1.1", series="1.1"))
        clock[0] += 5
        q.add_instance(**inst("2.2.1", series="2.2"))
        clock[0] += 5
        q.add_instance(**inst("1.1.2", series="1.1"))                      # 1.1's newest came last
        t0 = clock[0]
        assert q.instance("1.1.2").received_at == "2027-01-15T08:00:10.000000+00:00"
        assert q.ready_series(30) == [] and q.ready_series(30, now=t0) == []
        assert q.ready_series(30, now=t0 + 25) == ["2.2"]
        assert q.ready_series(30, now=t0 + 29.999) == ["2.2"]
        assert q.ready_series(30, now=t0 + 30) == ["1.1", "2.2"]           # oldest first
        clock[0] = t0 + 3600
        assert q.ready_series(30) == ["1.1", "2.2"]                        # the queue's clock
        # a series that reached its expected count is ready at once
        assert q.ready_series(30, now=t0, expected={"1.1": 2}) == ["1.1"]
        assert q.ready_series(30, now=t0, expected={"1.1": 3, "2.2": 1}) == ["2.2"]
        q.record_check("1.1", "authentic", 0.1, "forward", {}, instances=["1.1.1", "1.1.2"])
        assert q.ready_series(0) == ["2.2"]
        q.add_instance(**inst("1.1.3", series="1.1"))                      # a late part: checked on its own
        assert q.ready_series(30, expected={"1.1": 3}) == ["2.2", "1.1"]
        assert q.ready_series(30) == ["2.2"] and q.ready_series(0) == ["2.2", "1.1"]
        assert epoch(q.transitions("1.1.1")[1].at) == t0 + 3600
        with pytest.raises(MedForensicsError, match="idle_s"):
            q.ready_series(-1)


def test_eight_threads_add_at_once(queue_url):
    with Queue(queue_url) as q:
        start = threading.Barrier(8)
        results: dict[int, list[bool]] = {}
        errors: list[BaseException] = []

        def add(t: int) -> None:
            try:
                start.wait()
                out = []
                for i in range(50):
                    out.append(q.add_instance(**inst(f"1.{t}.{i}", series=f"1.{t}")))
                    if i % 10 == 0:   # the same instances from every thread: one copy each
                        out.append(q.add_instance(**inst(f"9.{i}", series="9")))
                results[t] = out
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=add, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert sum(sum(r) for r in results.values()) == 8 * 50 + 5
        assert sum(len(r) - sum(r) for r in results.values()) == 7 * 5          # the shared ones, refused
        for t in range(8):
            assert [i.sop_instance_uid for i in q.instances(f"1.{t}")] == [f"1.{t}.{i}" for i in range(50)]
        assert len(q.instances("9")) == 5
        assert q.counts()["received"] == 405
    assert raw(queue_url, "SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM gateway_instances")[0] == (405, 405)
    assert raw(queue_url, "SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid) FROM gateway_transitions")[0] == (405, 405)
    seqs = [r[0] for r in raw(queue_url, "SELECT seq FROM gateway_instances ORDER BY seq")]
    assert seqs == list(range(1, 406))


def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_a_second_process_decides_while_the_gateway_holds_the_queue(queue_url):
    with Queue(queue_url) as q:
        for series in ("3.1", "3.2", "3.3"):
            uids = [f"{series}.{i}" for i in range(3)]
            for u in uids:
                q.add_instance(**inst(u, series=series))
            q.record_check(series, "manipulated", 0.9, "quarantine" if series != "3.3" else "forward", {},
                           instances=uids)
        # the gateway keeps receiving meanwhile
        stop = threading.Event()
        added: list[str] = []

        def receive() -> None:
            n = 0
            while not stop.is_set():
                q.add_instance(**inst(f"8.{n}", series="8"))
                added.append(f"8.{n}")
                n += 1

        th = threading.Thread(target=receive)
        th.start()
        try:
            p = _python("""
                import json, sys
                from medforensics.core import MedForensicsError
                from medforensics.gateway.queue import Queue
                out = {}
                with Queue(sys.argv[1]) as q:
                    out["release"] = q.decide("3.1", "release", who="dr.grey", why="artefact of the scanner").state
                    out["reject"] = q.decide("3.2", "reject", who="dr.grey", why="a pasted nodule").state
                    for series, action in (("3.1", "reject"), ("3.3", "release"), ("7.7", "release")):
                        try:
                            q.decide(series, action, who="dr.grey", why="again")
                        except MedForensicsError as e:
                            out[series] = str(e)
                    try:
                        q.decide("3.1", "release", who=" ", why="x")
                    except MedForensicsError as e:
                        out["nobody"] = str(e)
                print(json.dumps(out))
                """, queue_url)
            out, err = p.communicate(timeout=120)
        finally:
            stop.set()
            th.join()
        assert p.returncode == 0, err
        got = json.loads(out)
        assert got["release"] == "released" and got["reject"] == "rejected"
        assert "is released, not quarantined" in got["3.1"] and "is forwarding, not quarantined" in got["3.3"]
        assert "no checked series" in got["7.7"] and "who" in got["nobody"]

        assert q.series("3.1").state == "released" and q.series("3.2").state == "rejected"
        assert [i.state for i in q.instances("3.2")] == ["rejected"] * 3
        assert q.to_forward() == ["3.1", "3.3"]
        assert [i.state for i in q.pending("3.1")] == ["quarantined"] * 3
        q.set_state([i.sop_instance_uid for i in q.pending("3.1")], "forwarded")
        assert q.series("3.1").state == "forwarded" and q.to_forward() == ["3.3"]
        assert states(q, "3.1.0") == [(1, "received"), (1, "scanned"), (1, "quarantined"), (1, "forwarded")]

        entries = q.audit()
        assert [(e.who, e.action, e.series_instance_uid, e.why, e.before, e.after) for e in entries] == [
            ("dr.grey", "release", "3.1", "artefact of the scanner", "quarantined", "released"),
            ("dr.grey", "reject", "3.2", "a pasted nodule", "quarantined", "rejected")]
        assert [e.id for e in entries] == [1, 2] and all(abs(epoch(e.at) - time.time()) < 120 for e in entries)
        assert q.audit("3.2") == entries[1:] and q.audit("3.3") == []
        assert [s.series_instance_uid for s in q.list_series("quarantined")] == []
        assert {s.series_instance_uid: s.state for s in q.list_series()} == \
            {"3.1": "forwarded", "3.2": "rejected", "3.3": "forwarding"}
        # nothing the gateway received meanwhile was lost or doubled
        assert added and [i.sop_instance_uid for i in q.instances("8")] == added
    with pytest.raises(Exception, match="append-only"):
        raw(queue_url, "UPDATE gateway_audit SET who = 'someone else'")
    with pytest.raises(Exception, match="append-only"):
        raw(queue_url, "DELETE FROM gateway_audit")


def test_a_late_part_of_a_held_series_is_held_with_it(queue_url):
    with Queue(queue_url) as q:
        q.add_instance(**inst("6.1", series="6"))
        q.record_check("6", "manipulated", 0.8, "quarantine", {}, instances=["6.1"])
        q.decide("6", "release", who="dr.a", why="fine")
        q.add_instance(**inst("6.2", series="6"))
        s = q.record_check("6", "authentic", 0.1, "forward", {"late": True}, instances=["6.2"])
        assert (s.state, s.decision, s.result) == ("quarantined", "forward", {"late": True})
        assert [i.state for i in q.instances("6")] == ["quarantined", "quarantined"] and q.to_forward() == []
        q.decide("6", "release", who="dr.a", why="both parts seen")
        assert [i.sop_instance_uid for i in q.pending("6")] == ["6.1", "6.2"]
        assert [e.after for e in q.audit("6")] == ["released", "released"]


def test_sigkill_while_adding_1000_instances(queue_url, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    p = _python("""
        import os, sys
        from pathlib import Path
        from medforensics.gateway.queue import Queue
        spool = Path(sys.argv[2])
        with Queue(sys.argv[1]) as q:
            print("open", flush=True)
            for i in range(1000):
                f = spool / f"1.9.{i}.dcm"
                with open(f, "wb") as fh:
                    fh.write(b"DICM" * 10)
                    fh.flush()
                    os.fsync(fh.fileno())
                q.add_instance(sop_instance_uid=f"1.9.{i}", series_instance_uid="1.9", study_instance_uid="1",
                               sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                               path=str(f), calling_ae="CT1", peer="10.0.0.7", size=40)
                print(f"1.9.{i}", flush=True)   # acknowledged: committed
        """, queue_url, str(spool))
    acked: list[str] = []
    assert p.stdout.readline().strip() == "open", p.stderr.read()
    while len(acked) < 300:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        acked.append(line.strip())
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL

    with Queue(queue_url) as q:
        rows = q.instances("1.9")
        uids = [r.sop_instance_uid for r in rows]
        assert uids[:len(acked)] == acked and len(uids) < 1000             # every acknowledged one, in order
        assert uids == [f"1.9.{i}" for i in range(len(uids))]              # and nothing torn or out of order
        assert all(r.state == "received" and r.version == 1 and r.size == 40 for r in rows)
        tr = raw(queue_url, "SELECT sop_instance_uid, version, state FROM gateway_transitions ORDER BY sop_instance_uid")
        assert sorted(tr) == sorted((u, 1, "received") for u in uids)
        report = q.recover()
        assert report["to_check"] == ["1.9"] and report["to_forward"] == [] and report["quarantined"] == []
        assert report["missing"] == [] and report["inconsistent"] == [] and report["counts"]["received"] == len(uids)
        # the queue goes on where it stopped: the rest of the series, then its check
        for i in range(len(uids), 1000):
            assert q.add_instance(**inst(f"1.9.{i}", series="1.9", path=str(spool / f"1.9.{i}.dcm")))
        assert q.add_instance(**inst("1.9.0", series="1.9")) is False
        assert len(q.instances("1.9")) == 1000


def test_recover_reports_checks_to_redo_sends_and_missing_files(queue_url, tmp_path):
    files = {}
    for sop in ("2.1", "2.2", "3.1", "4.1"):
        files[sop] = tmp_path / f"{sop}.dcm"
        files[sop].write_bytes(b"DICM")
    with Queue(queue_url) as q:
        for sop in files:
            q.add_instance(**inst(sop, series=sop.split(".")[0], path=str(files[sop])))
        q.record_check("3", "authentic", 0.1, "forward", {}, instances=["3.1"])
        q.record_check("4", "synthetic", 0.9, "quarantine", {}, instances=["4.1"])
    files["2.2"].unlink()
    # a check of series 2 was killed before it recorded anything: its instances are still received
    with Queue(queue_url) as q:
        report = q.recover()
        assert report["to_check"] == ["2"] and report["to_forward"] == ["3"] and report["quarantined"] == ["4"]
        assert report["missing"] == ["2.2"] and report["inconsistent"] == []
        assert report["counts"] == {"received": 2, "scanned": 1, "quarantined": 1, "forwarded": 0, "rejected": 0}
    # a state with no transition (changed behind the queue's back) is reported
    raw(queue_url, "UPDATE gateway_instances SET state = 'scanned' WHERE sop_instance_uid = '2.1'")
    with Queue(queue_url) as q:
        assert q.recover()["inconsistent"] == ["2.1"]


def test_sqlite_settings_urls_and_open_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Queue("sqlite:///q.sqlite") as q:                                 # relative, as SQLAlchemy writes it
        q.add_instance(**inst("1.1"))
        assert q._db.query("PRAGMA synchronous")[0][0] == 2                 # FULL
        assert q._db.query("PRAGMA busy_timeout")[0][0] >= 1000
    assert raw(str(tmp_path / "q.sqlite"), "PRAGMA journal_mode")[0][0] == "wal"
    with Queue(tmp_path / "q.sqlite") as q:                               # reopened, same rows
        assert [i.sop_instance_uid for i in q.instances("1.2.3")] == ["1.1"]

    with pytest.raises(MedForensicsError, match="is a folder"):
        Queue(tmp_path)
    with pytest.raises(MedForensicsError, match="does not exist"):
        Queue(tmp_path / "nowhere" / "q.sqlite")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(MedForensicsError, match="junk.sqlite"):
        Queue(junk)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(MedForensicsError, match="other tables"):
        Queue(other)
    raw(str(tmp_path / "q.sqlite"), "UPDATE gateway_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(MedForensicsError, match="schema version '99'"):
        Queue(tmp_path / "q.sqlite")


def test_postgresql_open_errors_hide_the_password(postgres):
    base, port = postgres
    with pytest.raises(MedForensicsError, match="cannot connect to PostgreSQL") as e:
        Queue(f"postgresql://postgres:secret@/nosuchdb?host={base}&port={port}")
    assert "secret" not in str(e.value) and "***" in str(e.value)
