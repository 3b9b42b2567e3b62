"""The review service and the DICOM gateway together: the service picks up the series that the
gateway's queue holds as checked, scans them into the work list (source ``gateway``), shows each
one's gateway state, and lets a reviewer release or reject a quarantined series. The decision
reaches the gateway's queue (its state and its own audit log) and the service's audit trail.

The queue is a real SQLite gateway queue, filled as the gateway fills it (``add_instance`` for
each instance in a spool folder, then ``record_check``), without the network; the instances are
real CT slices of the LIDC-IDRI-0001 series (three series of six slices each).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pydicom
import pytest
from conftest import serve_session
from fastapi.testclient import TestClient

from medforensics.gateway.queue import Queue
from medforensics.serve.app import create_app
from medforensics.serve.auth import hash_password
from medforensics.serve.settings import ServeSettings
from medforensics.serve.store import Store

DETECTORS = ["dicom_header", "container", "noise_residual"]
PASSWORDS = {"rita": "reviewer-password-1", "vic": "viewer-password-1"}
SLICES = 6
# series: (SeriesInstanceUID suffix, the check's label, score and decision)
CHECKS = {"held": ("manipulated", 0.91, "quarantine"),
          "clean": ("authentic", 0.04, "forward"),
          "bad": ("synthetic", 0.97, "quarantine")}


def _spool_series(source: list[Path], spool: Path, series_uid: str | None, q: Queue) -> tuple[str, list[str]]:
    """Copy ``source`` slices into the spool as one series (the original one when ``series_uid``
    is None, else rewritten into a new series with new SOP instance UIDs, as a second study of a
    modality would arrive) and record each as received; the series UID and its SOP instance UIDs."""
    sops = []
    for k, path in enumerate(source):
        ds = pydicom.dcmread(path)
        if series_uid is not None:
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = f"{series_uid}.{k + 1}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = spool / f"{ds.SOPInstanceUID}.dcm"
        if series_uid is None:
            shutil.copyfile(path, out)
        else:
            ds.save_as(out, enforce_file_format=True)
        assert q.add_instance(sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                              study_instance_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID,
                              transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=str(out), calling_ae="CT1",
                              peer="10.0.0.7", size=out.stat().st_size)
        sops.append(ds.SOPInstanceUID)
    return str(ds.SeriesInstanceUID), sops


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, lidc_series_dir):
    """A gateway queue with three checked series (two quarantined, one being forwarded), and the
    review service watching it: (app, queue file, {name: series UID})."""
    root = tmp_path_factory.mktemp("gateway")
    spool = root / "spool"
    spool.mkdir()
    slices = sorted(lidc_series_dir.glob("*.dcm"),
                    key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    assert len(slices) >= 3 * SLICES
    queue_file = root / "queue.sqlite"
    uids = {}
    with Queue(queue_file) as q:
        for n, name in enumerate(CHECKS):
            base = None if n == 0 else f"2.25.{int(time.time())}{n}"
            uid, sops = _spool_series(slices[n * SLICES:(n + 1) * SLICES], spool, base, q)
            label, score, decision = CHECKS[name]
            s = q.record_check(uid, label, score, decision, {"label": label, "detectors": DETECTORS}, instances=sops)
            assert s.state == ("quarantined" if decision == "quarantine" else "forwarding")
            uids[name] = uid
    assert len(set(uids.values())) == 3

    data = root / "review"
    data.mkdir()
    with Store(data / "serve.sqlite") as store:
        for name, role in (("rita", "reviewer"), ("vic", "viewer")):
            store.add_user(name, role, hash_password(PASSWORDS[name]))
    settings = ServeSettings(data=data, gateway_queue=str(queue_file), gateway_poll_seconds=0.5, quiz_per_kind=0,
                             detectors=DETECTORS).check()
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1"):
        yield app, queue_file, uids


def sign_in(app, name: str) -> TestClient:
    return serve_session(app, name, PASSWORDS[name])


@pytest.fixture(scope="module")
def items(gateway) -> dict[str, dict]:
    """The work-list items of the three series once the service has scanned them: {name: item JSON}."""
    app, _, uids = gateway
    rita = sign_in(app, "rita")
    t0, listed = time.time(), []
    while time.time() - t0 < 150:
        listed = rita.get("/api/items", params={"source": "gateway", "limit": 1000}).json()["items"]
        if len(listed) == 3:
            break
        time.sleep(0.5)
    assert len(listed) == 3, f"the service did not pick up the gateway's three series: {listed}"
    assert all(i["source"] == "gateway" for i in listed)
    by_series = {}
    for row in listed:
        full = rita.get(f"/api/items/{row['id']}").json()
        assert full["gateway"] is not None, full
        by_series[full["gateway"]["series"]] = full
    assert set(by_series) == set(uids.values())
    return {name: by_series[uid] for name, uid in uids.items()}


def test_the_service_scans_the_gateways_checked_series(gateway, items):
    app, _, uids = gateway
    for name, item in items.items():
        label, score, decision = CHECKS[name]
        gw = item["gateway"]
        assert gw["series"] == uids[name] and gw["label"] == label and gw["decision"] == decision
        assert gw["score"] == pytest.approx(score)
        assert gw["state"] == ("quarantined" if decision == "quarantine" else "forwarding")
        # the service scanned the series itself: the whole stack, with its own verdict
        assert item["record"]["uid"] == uids[name] and item["n_frames"] == SLICES, item["record"]
        assert item["shape"][0] == SLICES and item["modality"] == "CT" and not item["record"].get("errors")
        assert item["review_state"] == "unreviewed" and item["reviewer"] is None
    # only the quarantined series offer release and reject, and only to a reviewer
    assert {"release", "reject"} <= set(items["held"]["actions"]) and {"release", "reject"} <= set(items["bad"]["actions"])
    assert not {"release", "reject"} & set(items["clean"]["actions"]) and items["clean"]["actions"]
    vic = sign_in(app, "vic")
    assert all(vic.get(f"/api/items/{i['id']}").json()["actions"] == [] for i in items.values())
    # a series is picked up once, however many times the queue is polled
    time.sleep(1.5)
    assert sign_in(app, "rita").get("/api/items", params={"source": "gateway"}).json()["total"] == 3


def test_a_viewer_cannot_release(gateway, items):
    app, queue_file, uids = gateway
    vic = sign_in(app, "vic")
    for action in ("release", "reject"):
        r = vic.post(f"/api/items/{items['held']['id']}/decisions", json={"action": action, "note": "looks fine to me"})
        assert r.status_code == 403 and "reviewer" in r.json()["detail"], r.text
    with Queue(queue_file) as q:
        assert q.series(uids["held"]).state == "quarantined" and q.audit(uids["held"]) == []


def test_a_reviewer_releases_a_quarantined_series(gateway, items):
    app, queue_file, uids = gateway
    rita = sign_in(app, "rita")
    item, uid = items["held"], uids["held"]
    note = "checked with the modality: a known reconstruction artefact"
    before = rita.get("/api/audit").json()["size"]
    r = rita.post(f"/api/items/{item['id']}/decisions", json={"action": "release", "note": note})
    assert r.status_code == 200, r.text
    entry = r.json()
    assert (entry["who"], entry["action"], entry["target"], entry["before"], entry["after"], entry["note"]) == \
        ("rita", "release", f"item:{item['id']}", "unreviewed", "released", note)
    # the gateway's queue: the series is released (to be forwarded), in its own audit log
    with Queue(queue_file) as q:
        s = q.series(uid)
        assert s.state == "released"
        assert [i.sop_instance_uid for i in q.pending(uid)] == [i.sop_instance_uid for i in q.instances(uid)]
        assert uid in q.to_forward()
        log = q.audit(uid)
        assert [(a.who, a.action, a.why, a.before, a.after) for a in log] == \
            [("rita", "release", note, "quarantined", "released")]
        assert q.audit(uids["bad"]) == [] and q.series(uids["bad"]).state == "quarantined"
    # the service's audit trail has it, and the item shows the new states
    page = rita.get("/api/audit").json()
    assert page["size"] == before + 1
    assert any(e["seq"] == entry["seq"] and e["note"] == note and e["who"] == "rita" for e in page["entries"])
    after = rita.get(f"/api/items/{item['id']}").json()
    assert after["review_state"] == "released" and after["reviewer"] == "rita"
    assert after["gateway"]["state"] == "released" and after["decisions"][-1]["seq"] == entry["seq"]
    assert not {"release", "reject"} & set(after["actions"])
    # a second release (or a reject after it) is refused, and changes nothing anywhere
    for action in ("release", "reject"):
        r = rita.post(f"/api/items/{item['id']}/decisions", json={"action": action, "note": "again"})
        assert r.status_code == 409, r.text
    with Queue(queue_file) as q:
        assert q.series(uid).state == "released" and len(q.audit(uid)) == 1
    assert rita.get("/api/audit").json()["size"] == before + 1


def test_a_reviewer_rejects_a_quarantined_series(gateway, items):
    app, queue_file, uids = gateway
    rita = sign_in(app, "rita")
    item, uid = items["bad"], uids["bad"]
    note = "synthetic slices: not from our scanner"
    r = rita.post(f"/api/items/{item['id']}/decisions", json={"action": "reject", "note": note})
    assert r.status_code == 200, r.text
    assert (r.json()["action"], r.json()["after"]) == ("reject", "rejected")
    with Queue(queue_file) as q:
        assert q.series(uid).state == "rejected"
        assert {i.state for i in q.instances(uid)} == {"rejected"} and uid not in q.to_forward()
        assert [(a.who, a.action, a.why) for a in q.audit(uid)] == [("rita", "reject", note)]
    entries = rita.get("/api/audit", params={"limit": 1000}).json()["entries"]
    assert any(e["target"] == f"item:{item['id']}" and e["action"] == "reject" and e["note"] == note for e in entries)
    assert rita.post(f"/api/items/{item['id']}/decisions", json={"action": "release", "note": "changed my mind"}) \
        .status_code == 409


def test_release_and_reject_are_refused_for_a_forwarded_series(gateway, items):
    app, queue_file, uids = gateway
    rita = sign_in(app, "rita")
    for action in ("release", "reject"):
        r = rita.post(f"/api/items/{items['clean']['id']}/decisions", json={"action": action, "note": "n/a"})
        assert r.status_code == 409 and "cannot" in r.json()["detail"], r.text
    with Queue(queue_file) as q:
        assert q.series(uids["clean"]).state == "forwarding" and q.audit(uids["clean"]) == []


def test_a_series_checked_again_is_scanned_again_into_the_same_item(gateway, items, lidc_series_dir):
    """Late instances: the gateway checks the series again; the service rescans all of it and
    replaces its item's record (the work list keeps one item per series)."""
    app, queue_file, uids = gateway
    uid = uids["clean"]
    rita = sign_in(app, "rita")
    assert rita.get(f"/api/items/{items['clean']['id']}/slices/{SLICES}.png").status_code == 404   # 6 slices, cached
    late = sorted(lidc_series_dir.glob("*.dcm"),
                  key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))[3 * SLICES]
    ds = pydicom.dcmread(late)
    ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, f"{uid}.99"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = Path(app.state.service.settings.data).parent / "spool" / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(out, enforce_file_format=True)
    with Queue(queue_file) as q:
        q.add_instance(sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=uid,
                       study_instance_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID,
                       transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=str(out), calling_ae="CT1",
                       peer="10.0.0.7", size=out.stat().st_size)
        q.record_check(uid, "suspicious", 0.6, "quarantine", {"label": "suspicious"}, instances=[ds.SOPInstanceUID])
    t0, item = time.time(), None
    while time.time() - t0 < 120:
        item = rita.get(f"/api/items/{items['clean']['id']}").json()
        if item["shape"] and item["shape"][0] == SLICES + 1:
            break
        time.sleep(0.5)
    assert item["shape"][0] == SLICES + 1, item["shape"]
    assert item["gateway"]["label"] == "suspicious"
    assert rita.get("/api/items", params={"source": "gateway"}).json()["total"] == 3
    # the cached pixels of the first scan are not served for the new one
    assert rita.get(f"/api/items/{items['clean']['id']}/slices/{SLICES}.png").status_code == 200
