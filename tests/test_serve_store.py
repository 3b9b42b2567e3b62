"""The review service's store (medforensics.serve.store), on SQLite and on a real PostgreSQL
(conftest's ``postgres``): users, sessions, tokens, jobs, the work list's filters and sorts,
decisions, the append-only Merkle audit log and its export, and the quiz."""
from __future__ import annotations

import json
import sqlite3

import pytest

from conftest import new_database, raw_sql as raw
from medforensics.core import MedForensicsError
from medforensics.provenance import merkle
from medforensics.serve.store import ACTIONS, ALARM, Store, leaf_data, verify_export


class Clock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, t: float = 1_780_000_000.0):  # 2026-05-28
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """A location for a new store: a SQLite file, or a fresh database in the session's PostgreSQL."""
    return new_database(request, tmp_path, request.param, "serve")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(url, clock):
    with Store(url, clock=clock) as s:
        yield s


def record(score=0.9, label="manipulated", modality="CT", kind="image", evidence=()) -> dict:
    """A scan record as Verdict.to_dict() writes it (the fields the store reads)."""
    d = {"schema": "1.1", "path": "x.dcm", "kind": kind, "uid": None, "n_instances": 1, "modality": modality,
         "provenance": "none", "evidence": [{"detector": e[0], "score": e[1], "indicates": e[2] if len(e) > 2 else
                                             "manipulation", "confidence": "normal", "explanation": "", "regions": [],
                                             "details": {}} for e in evidence], "errors": []}
    if score is not None:
        d["score"], d["label"] = score, label
    return d


def drop_triggers(url: str) -> None:
    """Remove the append-only triggers of the audit log, as someone with the database's password could."""
    if url.startswith("postgresql://"):
        raw(url, "DROP TRIGGER serve_audit_append_only ON serve_audit")
    else:
        raw(url, "DROP TRIGGER serve_audit_update")


# -- users, sessions, tokens, jobs -----------------------------------------------------------------

def test_users_and_roles(store):
    assert store.count_users() == 0 and store.users() == [] and store.user("ann") is None
    ann = store.add_user("ann", "admin", "h1")
    assert (ann.name, ann.role, ann.password_hash, ann.disabled) == ("ann", "admin", "h1", False)
    assert ann.created == "2026-05-28T20:26:40Z"
    store.add_user("bob.smith@x-ray_1", "viewer", "h2")
    assert [u.name for u in store.users()] == ["ann", "bob.smith@x-ray_1"] and store.count_users() == 2
    with pytest.raises(MedForensicsError, match="user ann: already exists"):
        store.add_user("ann", "viewer", "h3")
    for bad in ("", "a b", "x" * 65, "ann\n", "émile", "a/b", 7):
        with pytest.raises(MedForensicsError, match="a user name is 1-64"):
            store.add_user(bad, "viewer", "h")
    with pytest.raises(MedForensicsError, match="not a role; one of viewer, reviewer, admin"):
        store.add_user("carl", "root", "h")
    with pytest.raises(MedForensicsError, match="password hash: is empty"):
        store.add_user("carl", "viewer", "  ")
    assert store.count_users() == 2

    store.set_role("bob.smith@x-ray_1", "reviewer")
    store.set_password_hash("bob.smith@x-ray_1", "h9")
    bob = store.user("bob.smith@x-ray_1")
    assert (bob.role, bob.password_hash) == ("reviewer", "h9")
    with pytest.raises(MedForensicsError, match="not a role"):
        store.set_role("ann", "superuser")
    for change in (lambda: store.set_role("zed", "viewer"), lambda: store.set_password_hash("zed", "h"),
                   lambda: store.set_disabled("zed", True)):
        with pytest.raises(MedForensicsError, match="user zed: no such user"):
            change()
    store.set_disabled("ann", True)
    assert store.user("ann").disabled
    store.set_disabled("ann", False)
    assert not store.user("ann").disabled


def test_sessions_expire_and_end(store, clock):
    store.add_user("ann", "reviewer", "h")
    store.add_user("bob", "viewer", "h")
    store.add_session("t1", "ann", "csrf1", clock.t + 3600)
    store.add_session("t2", "ann", "csrf2", clock.t + 60)
    store.add_session("t3", "bob", "csrf3", clock.t + 3600)
    s = store.session("t1")
    assert (s.user, s.csrf, s.expires) == ("ann", "csrf1", clock.t + 3600)
    assert store.session("nope") is None
    with pytest.raises(MedForensicsError, match="user zed: no such user"):
        store.add_session("t4", "zed", "c", clock.t + 60)
    with pytest.raises(MedForensicsError, match="database error while recording a session"):
        store.add_session("t1", "bob", "c", clock.t + 60)  # a token hash is one session
    clock.t += 61
    assert store.session("t2") is None and store.session("t1") is not None  # expired at its time
    clock.t += 3600
    assert store.session("t1") is None
    store.add_session("t5", "ann", "c5", clock.t + 10)  # drops the expired ones meanwhile
    assert {r[0] for r in raw(store.location, "SELECT token_hash FROM serve_sessions")} == {"t5"}
    store.add_session("t6", "bob", "c6", clock.t + 10)
    store.drop_session("t5")
    store.drop_session("t5")  # again: nothing
    assert store.session("t5") is None and store.session("t6") is not None
    store.add_session("t7", "bob", "c7", clock.t + 10)
    store.drop_sessions("bob")
    assert store.session("t6") is None and store.session("t7") is None
    # a disabled user's sessions end and cannot come back
    store.add_session("t8", "ann", "c8", clock.t + 10)
    store.set_disabled("ann", True)
    assert store.session("t8") is None


def test_tokens_revoke_and_disabled_users(store):
    store.add_user("ann", "admin", "h")
    store.add_user("bob", "viewer", "h")
    t1 = store.add_token("ann", "backup script", "hash1")
    t2 = store.add_token("bob", "notebook", "hash2")
    assert (t1.user, t1.name, t1.revoked) == ("ann", "backup script", False) and t2.id == t1.id + 1
    assert store.token_user("hash1").name == "ann" and store.token_user("hash2").role == "viewer"
    assert store.token_user("unknown") is None
    assert [t.id for t in store.tokens()] == [t1.id, t2.id] and [t.id for t in store.tokens("bob")] == [t2.id]
    with pytest.raises(MedForensicsError, match="already recorded"):
        store.add_token("bob", "again", "hash1")
    with pytest.raises(MedForensicsError, match="user zed: no such user"):
        store.add_token("zed", "x", "hash3")
    store.revoke_token(t1.id)
    assert store.token_user("hash1") is None and store.tokens("ann")[0].revoked
    with pytest.raises(MedForensicsError, match="token 99: no such token"):
        store.revoke_token(99)
    store.set_disabled("bob", True)
    assert store.token_user("hash2") is None
    store.set_disabled("bob", False)
    assert store.token_user("hash2").name == "bob"


def test_jobs(store, clock):
    a = store.add_job("ann", "upload", total=3, message="3 files")
    assert (a.who, a.kind, a.state, a.total, a.done, a.message) == ("ann", "upload", "queued", 3, 0, "3 files")
    clock.t += 5
    b = store.add_job("bob", "gateway")
    assert [j.id for j in store.jobs()] == [b.id, a.id] and [j.id for j in store.jobs(limit=1)] == [b.id]
    a2 = store.update_job(a.id, state="running", done=1)
    assert (a2.state, a2.done, a2.total, a2.message, a2.created) == ("running", 1, 3, "3 files", a.created)
    assert a2.updated > a.updated
    a3 = store.update_job(a.id, state="done", done=3, message="3 items")
    assert store.job(a.id) == a3 and (a3.state, a3.done, a3.message) == ("done", 3, "3 items")
    assert store.job(999) is None
    with pytest.raises(MedForensicsError, match="not a job kind"):
        store.add_job("ann", "batch")
    with pytest.raises(MedForensicsError, match="state 'finished' is not one of queued, running, done, failed"):
        store.update_job(a.id, state="finished")
    with pytest.raises(MedForensicsError, match="is not a count"):
        store.update_job(a.id, done=-1)
    with pytest.raises(MedForensicsError, match="job 999: no such job"):
        store.update_job(999, state="failed")


# -- items ------------------------------------------------------------------------------------------

@pytest.fixture
def work(store, clock):
    """A small work list: ids by name, across three days, two modalities, errors and quiz items."""
    job1 = store.add_job("ann", "upload").id
    job2 = store.add_job("ann", "folder").id
    specs = [  # name, day offset, score, label, modality, evidence, source, job
        ("chest_ct.dcm", 0, 0.95, "manipulated", "CT", [("copy_move", 0.95), ("noise", 0.7)], "scan", job1),
        ("Hand_XRay.png", 0, 0.40, "suspicious", "CR", [("noise", 0.6), ("jpeg_double", 0.99, "processing")], "scan", job1),
        ("head_mr.dcm", 1, 0.10, "authentic", "MR", [("noise", ALARM - 0.01)], "scan", job1),
        ("broken.dcm", 1, None, None, None, [], "scan", job2),
        ("knee_ct.dcm", 2, 0.80, "synthetic", "CT", [("gan_trace", 0.8)], "gateway", job2),
        ("100%_ct.dcm", 2, 0.40, "suspicious", "CT", [("copy_move", ALARM)], "scan", job2),
        ("quiz_1.png", 2, 0.99, "manipulated", "CR", [("copy_move", 0.99)], "quiz", None),
    ]
    ids = {}
    start = clock.t
    for name, day, score, label, modality, evidence, source, job in specs:
        clock.t = start + day * 86400 + len(ids)
        ids[name] = store.add_item(job, path=f"items/{name}", name=name, source=source, n_frames=1,
                                   record=record(score, label, modality, evidence=evidence),
                                   gateway_series="1.2.3" if source == "gateway" else None)
    return ids


def names(result) -> list[str]:
    return [r.name for r in result[1]]


def test_item_fields(store, work):
    it = store.item(work["Hand_XRay.png"])
    assert (it.name, it.source, it.kind, it.modality, it.label, it.score, it.n_frames, it.review_state, it.reviewer) \
        == ("Hand_XRay.png", "scan", "image", "CR", "suspicious", 0.4, 1, "unreviewed", None)
    assert it.detectors == ["noise"]  # processing evidence and scores under ALARM do not alarm
    assert it.path == "items/Hand_XRay.png" and it.record["evidence"][1]["detector"] == "jpeg_double"
    assert it.created == "2026-05-28T20:26:41Z" and it.gateway_series is None
    assert store.item(work["head_mr.dcm"]).detectors == [] and store.item(work["100%_ct.dcm"]).detectors == ["copy_move"]
    broken = store.item(work["broken.dcm"])
    assert (broken.label, broken.score, broken.modality) == (None, None, None)
    assert store.item(12345) is None
    gw = store.item_by_gateway_series("1.2.3")
    assert gw.id == work["knee_ct.dcm"] and gw.gateway_series == "1.2.3" and store.item_by_gateway_series("9.9") is None
    with pytest.raises(MedForensicsError, match="series 1.2.3: already has an item"):
        store.add_item(None, path="p", name="again", source="gateway", record=record(), n_frames=1, gateway_series="1.2.3")
    with pytest.raises(MedForensicsError, match="source 'upload' is not one of scan, gateway, quiz"):
        store.add_item(None, path="p", name="x", source="upload", record=record(), n_frames=1)
    with pytest.raises(MedForensicsError, match="job 77: no such job"):
        store.add_item(77, path="p", name="x", source="scan", record=record(), n_frames=1)
    with pytest.raises(MedForensicsError, match="record label 'fake' is not one of"):
        store.add_item(None, path="p", name="x", source="scan", record=record(label="fake"), n_frames=1)
    with pytest.raises(MedForensicsError, match="x: the scan record is not JSON"):
        store.add_item(None, path="p", name="x", source="scan", record={**record(), "bad": object()}, n_frames=1)
    # a gateway re-check replaces the record: label, score and detectors follow, the review stays
    store.decide(gw.id, "flag", "ann", "")
    store.replace_record(gw.id, record(0.2, "authentic", "CT", "series", [("noise", 0.55)]))
    gw2 = store.item(gw.id)
    assert (gw2.label, gw2.score, gw2.kind, gw2.detectors, gw2.review_state) == ("authentic", 0.2, "series", ["noise"],
                                                                                 "flagged")
    assert store.list_items(detector="gan_trace")[0] == 0 and gw.id in [r.id for r in store.list_items(detector="noise")[1]]
    with pytest.raises(MedForensicsError, match="item 4242: no such item"):
        store.replace_record(4242, record())


def test_list_items_filters_sorts_and_pages(store, work):
    scored = ["chest_ct.dcm", "knee_ct.dcm", "Hand_XRay.png", "100%_ct.dcm", "head_mr.dcm"]
    # suspicion: highest score first, equal scores by id, errors after the scored; quiz items left out
    assert store.list_items() == (6, store.list_items(limit=100)[1])
    assert names(store.list_items()) == scored + ["broken.dcm"]
    assert names(store.list_items(sort="newest")) == ["100%_ct.dcm", "knee_ct.dcm", "broken.dcm", "head_mr.dcm",
                                                      "Hand_XRay.png", "chest_ct.dcm"]
    assert names(store.list_items(sort="oldest")) == ["chest_ct.dcm", "Hand_XRay.png", "head_mr.dcm", "broken.dcm",
                                                      "knee_ct.dcm", "100%_ct.dcm"]
    assert names(store.list_items(sort="name")) == ["100%_ct.dcm", "broken.dcm", "chest_ct.dcm", "Hand_XRay.png",
                                                    "head_mr.dcm", "knee_ct.dcm"]  # in any case
    # each filter
    assert names(store.list_items(label="suspicious")) == ["Hand_XRay.png", "100%_ct.dcm"]
    assert names(store.list_items(label=["synthetic", "authentic"])) == ["knee_ct.dcm", "head_mr.dcm"]
    assert names(store.list_items(detector="copy_move")) == ["chest_ct.dcm", "100%_ct.dcm"]  # not the quiz item
    assert names(store.list_items(detector="jpeg_double")) == []  # processing never alarms
    assert names(store.list_items(modality="CT")) == ["chest_ct.dcm", "knee_ct.dcm", "100%_ct.dcm"]
    assert names(store.list_items(modality=["MR", "CR"])) == ["Hand_XRay.png", "head_mr.dcm"]
    assert names(store.list_items(since="2026-05-29")) == ["knee_ct.dcm", "100%_ct.dcm", "head_mr.dcm", "broken.dcm"]
    assert names(store.list_items(until="2026-05-29")) == ["chest_ct.dcm", "Hand_XRay.png", "head_mr.dcm", "broken.dcm"]
    assert names(store.list_items(since="2026-05-29", until="2026-05-29")) == ["head_mr.dcm", "broken.dcm"]
    assert names(store.list_items(since="2026-05-28T20:26:41Z", until="2026-05-29T20:26:42+00:00")) == \
        ["Hand_XRay.png", "head_mr.dcm"]
    assert names(store.list_items(source="gateway")) == ["knee_ct.dcm"]
    assert names(store.list_items(source="quiz")) == ["quiz_1.png"]
    job2 = store.item(work["broken.dcm"]).job_id
    assert names(store.list_items(job=job2)) == ["knee_ct.dcm", "100%_ct.dcm", "broken.dcm"]
    assert names(store.list_items(text="ct.DCM")) == ["chest_ct.dcm", "knee_ct.dcm", "100%_ct.dcm"]  # any case
    assert names(store.list_items(text="100%")) == ["100%_ct.dcm"] and store.list_items(text="%")[0] == 1
    assert store.list_items(text="ct_dcm")[0] == 0 and names(store.list_items(text="d_x")) == ["Hand_XRay.png"]
    store.decide(work["chest_ct.dcm"], "confirm", "ann", "")
    store.decide(work["head_mr.dcm"], "dismiss", "ann", "")
    assert names(store.list_items(review="confirmed")) == ["chest_ct.dcm"]
    assert names(store.list_items(review=["confirmed", "dismissed"])) == ["chest_ct.dcm", "head_mr.dcm"]
    assert store.list_items(review="unreviewed")[0] == 4
    # filters combine with AND
    assert names(store.list_items(modality="CT", label=["suspicious", "manipulated"], review="unreviewed")) == \
        ["100%_ct.dcm"]
    assert names(store.list_items(detector="noise", modality=["CT", "CR"], since="2026-05-28", until="2026-05-28",
                                  text="x", sort="name")) == ["Hand_XRay.png"]
    assert store.list_items(detector="noise", label="authentic") == (0, [])
    # pages: the total is of every match, the rows of the page
    assert store.list_items(limit=2) == (6, store.list_items()[1][:2])
    total, rows = store.list_items(offset=2, limit=3)
    assert total == 6 and [r.name for r in rows] == names(store.list_items())[2:5]
    assert store.list_items(offset=6) == (6, []) and store.list_items(limit=0) == (6, [])
    # refused
    for kw, msg in ((dict(sort="score"), "sort 'score': not one of suspicion, newest, oldest, name"),
                    (dict(label="fake"), "label 'fake': not one of"), (dict(review="done"), "review state 'done'"),
                    (dict(source="upload"), "source 'upload'"), (dict(since="yesterday"), "since: 'yesterday' is not a date"),
                    (dict(until="2026-13-01"), "until: '2026-13-01' is not a date"), (dict(limit=-1), "limit: -1"),
                    (dict(offset="3"), "offset: '3'"), (dict(label=[]), "is not a label or a list")):
        with pytest.raises(MedForensicsError, match=msg):
            store.list_items(**kw)


def test_facets(store, work):
    f = store.facets()
    assert f == {"labels": ["authentic", "suspicious", "manipulated", "synthetic"], "modalities": ["CR", "CT", "MR"],
                 "detectors": ["copy_move", "gan_trace", "noise"], "review_states": ["unreviewed"]}
    store.decide(work["head_mr.dcm"], "dismiss", "ann", "")
    assert store.facets()["review_states"] == ["unreviewed", "dismissed"]


def test_facets_leave_out_quiz_items(store):
    store.add_item(None, path="q", name="q", source="quiz", record=record(0.9, "synthetic", "XA", evidence=[("gan", 0.9)]),
                   n_frames=1)
    assert store.facets() == {"labels": [], "modalities": [], "detectors": [], "review_states": []}


# -- decisions and the audit log -----------------------------------------------------------------

def test_decide_changes_state_and_appends_in_one_transaction(store, work, clock):
    item = work["chest_ct.dcm"]
    e = store.decide(item, "flag", "ann", "ask the radiologist")
    assert (e.seq, e.who, e.action, e.target, e.before, e.after, e.note) == \
        (1, "ann", "flag", f"item:{item}", "unreviewed", "flagged", "ask the radiologist")
    it = store.item(item)
    assert (it.review_state, it.reviewer) == ("flagged", "ann")
    clock.t += 10
    e2 = store.decide(item, "confirm", "bob", "")
    assert (e2.seq, e2.before, e2.after) == (2, "flagged", "confirmed") and e2.at > e.at
    store.audit_append("ann", "user.created", "user:carl", None, "viewer")
    assert store.decisions(item) == [e, e2] and store.decisions(work["head_mr.dcm"]) == []
    for action, state in ACTIONS.items():
        assert store.decide(item, action, "bob", "").after == state == store.item(item).review_state
    with pytest.raises(MedForensicsError, match="action 'approve' is not one of confirm, dismiss, flag, release, reject"):
        store.decide(item, "approve", "bob", "")
    with pytest.raises(MedForensicsError, match="item 999: no such item"):
        store.decide(999, "confirm", "bob", "")
    size = store.audit_size()
    # the audit entry cannot be written (its leaf's slot is taken behind the store's back): the
    # state does not change either
    raw(store.location, "INSERT INTO serve_audit_nodes (level, idx, hash) VALUES (0, ?, 'x')", (size,))
    with pytest.raises(MedForensicsError, match="database error while recording a dismiss"):
        store.decide(work["head_mr.dcm"], "dismiss", "ann", "")
    assert store.item(work["head_mr.dcm"]).review_state == "unreviewed" and store.audit_size() == size
    assert store.decisions(work["head_mr.dcm"]) == []


def test_audit_is_append_only(store, url):
    store.audit_append("ann", "user.created", "user:bob", None, "viewer")
    store.audit_append("ann", "role.changed", "user:bob", "viewer", "reviewer", "promoted")
    for sql in ("UPDATE serve_audit SET note = 'x'", "DELETE FROM serve_audit WHERE seq = 2",
                "UPDATE serve_audit_nodes SET hash = 'x'", "DELETE FROM serve_audit_nodes"):
        with pytest.raises(Exception, match="append-only"):
            raw(url, sql)
    assert [e.note for e in store.audit()] == ["", "promoted"] and store.audit_verify() == []


def test_audit_roots_at_every_size(store, clock):
    assert store.audit_head() == (0, merkle.EMPTY_ROOT.hex()) and store.audit_size() == 0
    leaves = []
    for i in range(70):
        clock.t += 1
        e = store.audit_append(f"user{i % 3}", "job.started", f"job:{i % 5}", None if i % 2 else "a", "b",
                               f"note {i} é")
        assert e.seq == i + 1
        assert e.leaf_hash == merkle.leaf_hash(leaf_data(e.seq, e.at, e.who, e.action, e.target, e.before, e.after,
                                                         e.note)).hex()
        leaves.append(bytes.fromhex(e.leaf_hash))
        assert e.root == merkle.root_from_leaf_hashes(leaves).hex()
        assert store.audit_head() == (i + 1, e.root)
    entries = store.audit(limit=None)
    assert [bytes.fromhex(x.leaf_hash) for x in entries] == leaves
    assert all(x.root == merkle.root_from_leaf_hashes(leaves[:x.seq]).hex() for x in entries)
    assert [x.seq for x in store.audit(offset=10, limit=5)] == [11, 12, 13, 14, 15]
    assert [x.seq for x in store.audit(limit=None, offset=68)] == [69, 70] and len(store.audit()) == 70
    assert [x.seq for x in store.audit(target="job:2", limit=3)] == [3, 8, 13]
    assert store.audit_size() == 70 and store.audit_verify() == []
    # a store opened again (another process) goes on from the stored subtrees
    with Store(store.location, clock=clock) as again:
        e = again.audit_append("dan", "x", "y", None, None)
    leaves.append(bytes.fromhex(e.leaf_hash))
    assert e.seq == 71 and e.root == merkle.root_from_leaf_hashes(leaves).hex() == store.audit_head()[1]


def test_audit_verify_finds_tampering(store, url):
    for i in range(9):
        store.audit_append("ann", "token.created", f"user:u{i}", None, None, f"n{i}")
    assert store.audit_verify() == []
    drop_triggers(url)
    raw(url, "UPDATE serve_audit SET who = 'mallory' WHERE seq = 4")
    assert store.audit_verify() == ["audit entry 4: leaf hash does not match the entry's fields (the entry was changed)"]
    # an entry whose leaf hash was recomputed too breaks its root (and each later root)
    raw(url, "UPDATE serve_audit SET leaf_hash = ? WHERE seq = 4",
        (merkle.leaf_hash(leaf_data(*raw(url, "SELECT seq, at, who, action, target, before_state, after_state, note "
                                           "FROM serve_audit WHERE seq = 4")[0])).hex(),))
    assert store.audit_verify() == \
        [f"audit entry {n}: root does not match the Merkle root of the {n} leaf hashes up to it" for n in range(4, 10)] + \
        [f"audit subtree {node}: hash does not match the leaf hashes it covers" for node in ((0, 3), (1, 1), (2, 0), (3, 0))]


def test_audit_verify_finds_a_missing_entry(store, url):
    for _ in range(4):
        store.audit_append("ann", "a", "t", None, None)
    if url.startswith("postgresql://"):
        raw(url, "ALTER TABLE serve_audit DISABLE TRIGGER serve_audit_append_only")
    else:
        raw(url, "DROP TRIGGER serve_audit_delete")
    raw(url, "DELETE FROM serve_audit WHERE seq = 2")
    assert any("seq 3 where 2 was expected" in p for p in store.audit_verify())


def test_export_and_verify_export(store, url, tmp_path):
    empty = tmp_path / "empty.jsonl"
    assert store.audit_export(empty) == (0, merkle.EMPTY_ROOT.hex()) and verify_export(empty) == []
    for i in range(13):
        store.audit_append("ann", "job.started", f"job:{i}", None, "queued", "ünïcode" if i == 5 else "")
    out = tmp_path / "audit.jsonl"
    size, root = store.audit_export(out)
    assert (size, root) == store.audit_head() == (13, store.audit()[-1].root)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 14 and json.loads(lines[-1]) == {"tree_size": 13, "root": root}
    assert [json.loads(x) for x in lines[:-1]] == [e.to_dict() for e in store.audit()]
    with pytest.raises(MedForensicsError, match="audit.jsonl: already exists"):
        store.audit_export(out)
    assert out.read_text(encoding="utf-8").splitlines() == lines  # not touched
    store.close()  # checked without the database
    assert verify_export(out) == []

    def variant(name: str, new_lines: list[str]) -> list[str]:
        p = tmp_path / name
        p.write_text("\n".join(new_lines) + "\n", encoding="utf-8")
        return verify_export(p)

    edited = json.loads(lines[5])
    edited["note"] = "unicode"
    assert variant("edited.jsonl", lines[:5] + [json.dumps(edited)] + lines[6:]) == \
        ["edited.jsonl line 6: leaf hash does not match the entry's fields (the entry was changed)"]
    assert variant("cut.jsonl", lines[:-1]) == ["cut.jsonl: no tree head line ({\"tree_size\": n, \"root\": hex}): "
                                                "the file is cut short"]
    dropped = variant("dropped.jsonl", lines[:3] + lines[4:])
    assert dropped[0] == "dropped.jsonl line 4: seq 5 where 4 was expected (entries missing or reordered)"
    assert sum("where" in p for p in dropped) == 1  # one gap, one problem (and roots that no longer match)
    assert "dropped.jsonl line 4: root does not match the Merkle root of the 4 leaf hashes up to it" in dropped
    assert any("tree head says 13 entries, the file holds 12" in p for p in dropped)
    head = json.loads(lines[-1])
    assert variant("head.jsonl", lines[:-1] + [json.dumps({**head, "root": "00" * 32})]) == \
        ["head.jsonl: tree head root does not match the Merkle root of the entries"]
    assert variant("junk.jsonl", lines[:2] + ["{oops"] + lines[2:])[0] == "junk.jsonl line 3: not JSON"
    with pytest.raises(MedForensicsError, match="missing.jsonl: cannot read the export"):
        verify_export(tmp_path / "missing.jsonl")


# -- quiz ----------------------------------------------------------------------------------------

def test_quiz_answers_and_scores(store, clock):
    store.add_user("ann", "viewer", "h")
    store.add_user("bob", "viewer", "h")
    items = [store.add_item(None, path=f"q{i}", name=f"q{i}", source="quiz", record=record(), n_frames=1)
             for i in range(3)]
    real = store.add_quiz_image("authentic", items[0], None, 1)
    fake = store.add_quiz_image("copymove", items[1], [10, 20, 30, 60], 2)
    boxless = store.add_quiz_image("synthesize", items[2], None, 3)
    assert [(q.id, q.kind, q.item_id, q.truth_box) for q in store.quiz_images()] == \
        [(real, "authentic", items[0], None), (fake, "copymove", items[1], [10, 20, 30, 60]),
         (boxless, "synthesize", items[2], None)]
    with pytest.raises(MedForensicsError, match="is not \\[row0, col0, row1, col1\\]"):
        store.add_quiz_image("splice", items[1], [10, 20, 5, 60], 4)
    with pytest.raises(MedForensicsError, match="item 99: no such item"):
        store.add_quiz_image("splice", 99, None, 4)
    with pytest.raises(MedForensicsError, match="quiz kind 'Copy Move'"):
        store.add_quiz_image("Copy Move", items[1], None, 4)

    a = store.add_answer("ann", real, "real", None, None)
    assert (a.user, a.quiz_image_id, a.kind, a.answer, a.correct, a.hit) == ("ann", real, "authentic", "real", True, None)
    assert store.add_answer("ann", real, "fake", 5.0, 5.0).correct is False  # no box: hit is None
    # hit: column x in [col0, col1), row y in [row0, row1)
    hits = [store.add_answer("ann", fake, "fake", x, y).hit for x, y in
            ((20, 10), (59.9, 29.9), (60, 15), (40, 30), (19.5, 15), (40, 9.99))]
    assert hits == [True, True, False, False, False, False]
    b = store.add_answer("bob", fake, "real", 25, 15)
    assert (b.correct, b.hit) == (False, True)  # a wrong answer may still point at the box
    assert store.add_answer("bob", fake, "fake", None, None).hit is None
    assert store.add_answer("bob", boxless, "fake", 1, 1).hit is None
    for args, msg in ((("ann", fake, "maybe", None, None), "answer 'maybe' is not real or fake"),
                      (("ann", fake, "fake", 1.0, None), "click \\(1.0, None\\) is not two numbers"),
                      (("zed", fake, "fake", None, None), "user zed: no such user"),
                      (("ann", 999, "fake", None, None), "quiz image 999: no such quiz image")):
        with pytest.raises(MedForensicsError, match=msg):
            store.add_answer(*args)
    assert store.answered("ann") == {real, fake} and store.answered("bob") == {fake, boxless}
    assert store.answered("carl") == set()
    mine = [(s.user, s.kind, s.n, s.correct, s.hits) for s in store.scores("ann")]
    assert mine == [("ann", "authentic", 2, 1, 0), ("ann", "copymove", 6, 6, 2)]
    assert [(s.user, s.kind, s.n, s.correct, s.hits) for s in store.scores()] == mine + \
        [("bob", "copymove", 2, 1, 1), ("bob", "synthesize", 1, 1, 0)]


# -- opening -------------------------------------------------------------------------------------

def test_opening(url, tmp_path):
    with Store(url) as s:
        s.add_user("ann", "admin", "h")
    with Store(url, create=False) as s:  # opened again: the same data
        assert s.user("ann").role == "admin"
    raw(url, "UPDATE serve_meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(MedForensicsError, match="unsupported review store schema version '99'"):
        Store(url)
    if url.startswith("postgresql://"):
        return
    with pytest.raises(MedForensicsError, match="no such database file"):
        Store(tmp_path / "missing.sqlite", create=False)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(MedForensicsError, match="holds other tables and no review store"):
        Store(other)
