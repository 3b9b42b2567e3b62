"""The review service's API through its real application: sign-in, roles, CSRF, API tokens,
uploads scanned by the real job runner, pixels, decisions with the audit trail, and the quiz.

Security tests: every route without a session (401), a viewer on reviewer and admin routes
(403), calls without their CSRF token (403), oversized, mistyped and path-traversal uploads,
the login rate limit, and no patient data in the logs.
"""
from __future__ import annotations

import io
import json
import logging
import time

import cv2
import numpy as np
import pydicom
import pytest
from conftest import serve_session
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from medforensics.serve.app import CSRF_HEADER, PAGES, SESSION_COOKIE, create_app
from medforensics.serve.auth import hash_password
from medforensics.serve.settings import ServeSettings
from medforensics.serve.store import Store, verify_export

DETECTORS = ["dicom_header", "copy_move", "noise_residual", "ct_physics", "container"]
PASSWORDS = {"admin": "admin-password-1", "rita": "reviewer-password-1", "vic": "viewer-password-1"}
PATIENT = "Doe^Janet-Sentinel"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    data = tmp_path_factory.mktemp("review")
    with Store(data / "serve.sqlite") as store:
        for name, role in (("admin", "admin"), ("rita", "reviewer"), ("vic", "viewer")):
            store.add_user(name, role, hash_password(PASSWORDS[name]))
    settings = ServeSettings(data=data, detectors=DETECTORS, quiz_per_kind=0, max_upload_mb=3.0,
                             login_attempts=3, login_window_seconds=60).check()
    app = create_app(settings)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield app, client, data


def sign_in(app, name: str) -> TestClient:
    return serve_session(app, name, PASSWORDS[name])


def dicom_bytes(patient: str = PATIENT) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName = patient
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png_bytes(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 255, (256, 256), dtype=np.uint8), (5, 5), 0)
    return cv2.imencode(".png", img)[1].tobytes()


def wait_job(client: TestClient, job_id: int, timeout: float = 180) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.fixture(scope="module")
def uploaded(service):
    """One upload (a CT slice with a patient name, a PNG in a sub-folder), scanned for real."""
    app, _, _ = service
    rita = sign_in(app, "rita")
    files = [("files", ("study/ct.dcm", dicom_bytes(), "application/dicom")),
             ("files", ("study/png/pic.png", png_bytes(), "image/png"))]
    r = rita.post("/api/jobs", files=files)
    assert r.status_code == 201, r.text
    job = wait_job(rita, r.json()["id"])
    assert job["state"] == "done" and job["done"] == job["total"] == 2, job
    items = rita.get("/api/items", params={"job": job["id"]}).json()["items"]
    return {i["name"].rsplit("/", 1)[-1]: i for i in items}


# ------------------------------------------------------------------------------------ sign-in
def test_sign_in_sets_a_strict_http_only_cookie_and_hashes_passwords(service):
    app, client, data = service
    r = client.post("/api/session", json={"user": "vic", "password": PASSWORDS["vic"]})
    assert r.status_code == 200 and r.json()["role"] == "viewer"
    cookie = r.headers["set-cookie"]
    assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie          # served on loopback over HTTP ("auto")
    behind_tls = TestClient(app, base_url="http://127.0.0.1", headers={"X-Forwarded-Proto": "https"})
    r = behind_tls.post("/api/session", json={"user": "vic", "password": PASSWORDS["vic"]})
    assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]   # a TLS proxy in front
    with Store(data / "serve.sqlite") as store:
        assert store.user("vic").password_hash.startswith("$argon2id$")
    r = TestClient(app, base_url="http://127.0.0.1").post("/api/session", json={"user": "vic", "password": "nope"})
    assert r.status_code == 401 and "set-cookie" not in r.headers


def test_login_is_rate_limited(service):
    app, _, _ = service
    c = TestClient(app, base_url="http://127.0.0.1")
    app.state.service.limiter.clear()
    for _ in range(3):
        assert c.post("/api/session", json={"user": "admin", "password": "wrong-guess"}).status_code == 401
    r = c.post("/api/session", json={"user": "admin", "password": PASSWORDS["admin"]})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    app.state.service.limiter.clear()        # the other tests sign in as admin, from the same address


def test_sign_out_ends_the_session(service):
    app, _, _ = service
    c = sign_in(app, "vic")
    assert c.get("/api/me").json()["user"] == "vic"
    assert c.delete("/api/session").status_code == 204
    assert c.get("/api/me").status_code == 401


# ------------------------------------------------------------------------------------ 401 / 403
def _routes(app):
    """Every route: the API's (from its schema), the pages and the schema itself."""
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            yield method.upper(), path.replace("{item_id}", "1").replace("{k}", "0") \
                .replace("{detector}", "copy_move").replace("{job_id}", "1").replace("{quiz_image}", "1") \
                .replace("{token_id}", "1")
    for path in [*PAGES, "/items/1", "/openapi.json"]:
        yield "GET", path


def test_every_route_refuses_requests_without_a_session(service):
    app, _, _ = service
    anonymous = TestClient(app, base_url="http://127.0.0.1", follow_redirects=False)
    checked = 0
    for method, path in _routes(app):
        if (method, path) == ("POST", "/api/session"):
            continue
        r = anonymous.request(method, path)
        if path.startswith("/api") or path == "/openapi.json":
            assert r.status_code == 401, (method, path, r.status_code)
        else:   # pages send the browser to the login page
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), (method, path)
        checked += 1
    assert checked >= 30
    assert anonymous.get("/login").status_code == 200
    # the login page brings the browser back to the page with its filters
    assert anonymous.get("/?label=manipulated&sort=newest").headers["location"] == \
        "/login?next=/%3Flabel%3Dmanipulated%26sort%3Dnewest"


def test_roles_are_enforced(service, uploaded):
    app, _, _ = service
    vic = sign_in(app, "vic")
    item = uploaded["ct.dcm"]["id"]
    forbidden = [("POST", f"/api/items/{item}/decisions", {"action": "flag", "note": "x"}),
                 ("GET", "/api/audit", None), ("GET", "/api/audit/verify", None), ("GET", "/api/audit/export", None),
                 ("GET", "/api/users", None), ("POST", "/api/users", {"user": "eve", "role": "admin",
                                                                     "password": "long-enough-pw"})]
    for method, path, body in forbidden:
        r = vic.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.status_code)
    assert vic.post("/api/jobs", files=[("files", ("a.png", png_bytes(), "image/png"))]).status_code == 403
    rita = sign_in(app, "rita")
    assert rita.get("/api/audit").status_code == 200
    assert rita.get("/api/users").status_code == 403 and rita.get("/admin", follow_redirects=False).status_code == 403
    # a viewer sees items but no decision buttons
    assert vic.get(f"/api/items/{item}").json()["actions"] == []
    assert rita.get(f"/api/items/{item}").json()["actions"]


def test_csrf_token_is_required_with_a_session_but_not_with_an_api_token(service, uploaded):
    app, _, _ = service
    rita = sign_in(app, "rita")
    item = uploaded["pic.png"]["id"]
    body = {"action": "flag", "note": "looks pasted"}
    csrf = rita.headers.pop(CSRF_HEADER)
    r = rita.post(f"/api/items/{item}/decisions", json=body)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = rita.post(f"/api/items/{item}/decisions", json=body, headers={CSRF_HEADER: "forged"})
    assert r.status_code == 403
    rita.headers[CSRF_HEADER] = csrf
    token = rita.post("/api/tokens", json={"name": "script"}).json()
    script = TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {token['token']}"})
    assert script.get("/api/me").json() == {"user": "rita", "role": "reviewer", "csrf": None}
    r = script.post(f"/api/items/{item}/decisions", json=body)
    assert r.status_code == 200 and r.json()["action"] == "flag"
    assert rita.delete(f"/api/tokens/{token['id']}").status_code == 204
    assert script.get("/api/me").status_code == 401
    assert TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": "Bearer nonsense"}) \
        .get("/api/items").status_code == 401


# ------------------------------------------------------------------------------------ uploads
def test_uploads_are_scanned_into_the_work_list(service, uploaded):
    app, _, data = service
    vic = sign_in(app, "vic")
    ct = vic.get(f"/api/items/{uploaded['ct.dcm']['id']}").json()
    assert ct["modality"] == "CT" and ct["label"] in ("authentic", "suspicious", "manipulated", "synthetic")
    assert ct["shape"] == [128, 128] and len(ct["window"]) == 2
    assert {"copy_move", "noise_residual"} <= set(ct["overlays"])
    assert ct["record"]["assessed_by"] and "path" in ct["record"]
    assert ct["provenance"]["status"]
    png = cv2.imdecode(np.frombuffer(vic.get(f"/api/items/{ct['id']}/slices/0.png").content, np.uint8),
                       cv2.IMREAD_UNCHANGED)
    assert png.shape == (128, 128) and png.dtype == np.uint8
    narrow = cv2.imdecode(np.frombuffer(vic.get(f"/api/items/{ct['id']}/slices/0.png",
                                                params={"center": 40, "width": 10}).content, np.uint8), 0)
    assert not np.array_equal(png, narrow)      # window/level changes the rendering
    overlay = cv2.imdecode(np.frombuffer(vic.get(f"/api/items/{ct['id']}/overlays/copy_move/0.png").content, np.uint8),
                           cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (128, 128, 4)
    assert vic.get(f"/api/items/{ct['id']}/slices/5.png").status_code == 404
    assert vic.get(f"/api/items/{ct['id']}/overlays/nope/0.png").status_code == 404
    rows = vic.get(f"/api/items/{ct['id']}/header").json()["rows"]
    keywords = {r["keyword"]: r["value"] for r in rows}
    assert keywords["Modality"] == "CT" and "PixelData" not in keywords
    # files stay inside the job's folder, with the folder structure of the upload
    assert (data / "uploads" / f"job-{ct['job_id']}" / "study" / "png" / "pic.png").is_file()
    facets = vic.get("/api/facets").json()
    assert "CT" in facets["modalities"] and "unreviewed" in facets["review_states"]
    listed = vic.get("/api/items", params={"modality": "CT"}).json()
    assert listed["total"] >= 1 and all(i["modality"] == "CT" for i in listed["items"])


def test_upload_refusals(service):
    app, _, data = service
    rita = sign_in(app, "rita")
    before = sorted(p.name for p in data.parent.iterdir())
    for name in ("../../escape.png", "/tmp/abs.png", "a/../../b.png", "..\\..\\win.png", "C:/x.png"):
        r = rita.post("/api/jobs", files=[("files", (name, png_bytes(), "image/png"))])
        assert r.status_code == 400 and "unsafe file name" in r.json()["detail"], (name, r.text)
    assert sorted(p.name for p in data.parent.iterdir()) == before
    assert not list(data.parent.rglob("escape.png")) and not list(data.rglob("abs.png"))
    r = rita.post("/api/jobs", files=[("files", ("notes.txt", b"hello, not an image" * 20, "text/plain"))])
    assert r.status_code == 415 and "notes.txt" in r.json()["detail"]
    big = np.random.default_rng(1).integers(0, 255, (2200, 2200), dtype=np.uint8)
    r = rita.post("/api/jobs", files=[("files", ("big.png", cv2.imencode(".png", big)[1].tobytes(), "image/png"))])
    assert r.status_code == 413
    r = rita.post("/api/jobs", files=[("files", ("a.png", png_bytes(), "image/png")),
                                      ("files", ("a.png", png_bytes(1), "image/png"))])
    assert r.status_code == 400 and "twice" in r.json()["detail"]
    assert rita.post("/api/jobs", data={"x": "1"}).status_code == 400
    r = rita.post("/api/jobs", files=[("files", ("a", png_bytes(), "image/png")),
                                      ("files", ("a/b.png", png_bytes(1), "image/png"))])
    assert r.status_code == 400 and "both as a file and as a folder" in r.json()["detail"]
    # an unreadable image is an item with its error, naming the file without the data folder
    r = rita.post("/api/jobs", files=[("files", ("broken/bad.dcm", dicom_bytes()[:1000], "application/dicom"))])
    assert r.status_code == 201
    wait_job(rita, r.json()["id"])
    bad = rita.get("/api/items", params={"job": r.json()["id"]}).json()["items"]
    assert len(bad) == 1 and bad[0]["label"] is None
    errors = rita.get(f"/api/items/{bad[0]['id']}").json()["record"]["errors"]
    assert errors and str(data.resolve()) not in errors[0] and "bad.dcm" in errors[0]


def test_no_patient_data_in_the_logs(service, caplog):
    app, _, _ = service
    caplog.set_level(logging.DEBUG)
    rita = sign_in(app, "rita")
    r = rita.post("/api/jobs", files=[("files", (f"{PATIENT}/scan.dcm", dicom_bytes(), "application/dicom"))])
    assert r.status_code == 201
    job = wait_job(rita, r.json()["id"])
    items = rita.get("/api/items", params={"job": job["id"], "text": "scan"}).json()["items"]
    rita.get(f"/api/items/{items[0]['id']}/header")
    assert PATIENT not in caplog.text and "Janet" not in caplog.text
    assert "/api/jobs" in caplog.text           # requests are logged, without names


# ------------------------------------------------------------------------------------ decisions
def test_decisions_go_to_a_verifiable_audit_trail(service, uploaded, tmp_path):
    app, _, _ = service
    rita, admin = sign_in(app, "rita"), sign_in(app, "admin")
    item = rita.get(f"/api/items/{uploaded['ct.dcm']['id']}").json()
    action = "dismiss" if "dismiss" in item["actions"] else "flag"
    r = rita.post(f"/api/items/{item['id']}/decisions", json={"action": action, "note": "checked the prior study"})
    assert r.status_code == 200, r.text
    entry = r.json()
    assert entry["who"] == "rita" and entry["before"] == "unreviewed" and entry["target"].endswith(str(item["id"]))
    after = rita.get(f"/api/items/{item['id']}").json()
    assert after["review_state"] in ("dismissed", "flagged") and after["reviewer"] == "rita"
    assert after["decisions"][-1]["note"] == "checked the prior study"
    assert rita.post(f"/api/items/{item['id']}/decisions", json={"action": "release", "note": "x"}).status_code == 409
    assert rita.post(f"/api/items/{item['id']}/decisions", json={"action": "flag", "note": ""}).status_code == 422
    page = rita.get("/api/audit").json()
    assert page["size"] >= 1 and any(e["seq"] == entry["seq"] for e in page["entries"])
    assert admin.get("/api/audit/verify").json()["ok"] is True
    export = tmp_path / "audit.jsonl"
    export.write_bytes(admin.get("/api/audit/export").content)
    assert verify_export(export) == []
    head = json.loads(export.read_text().splitlines()[-1])
    check = admin.get("/api/audit/verify", params={"head": f"{head['tree_size']}:{head['root']}"}).json()
    assert check["ok"] is True
    check = admin.get("/api/audit/verify", params={"head": f"{head['tree_size']}:{'0' * 64}"}).json()
    assert check["ok"] is False and "no longer hash" in check["problems"][0]
    assert admin.get("/api/audit/verify", params={"head": "1"}).status_code == 422
    lines = export.read_text().splitlines()
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([lines[0].replace("rita", "mallory") if "rita" in lines[0] else
                                 lines[0].replace('"who": "', '"who": "x')] + lines[1:]) + "\n")
    assert verify_export(edited)


def test_admin_adds_users_and_passwords_are_checked(service):
    app, _, _ = service
    admin = sign_in(app, "admin")
    r = admin.post("/api/users", json={"user": "newbie", "role": "viewer", "password": "short"})
    assert r.status_code == 422
    r = admin.post("/api/users", json={"user": "newbie", "role": "viewer", "password": "newbie-password"})
    assert r.status_code == 201 and r.json()["role"] == "viewer"
    assert admin.post("/api/users", json={"user": "newbie", "role": "viewer", "password": "newbie-password"}) \
        .status_code == 409
    assert any(u["user"] == "newbie" for u in admin.get("/api/users").json()["users"])
    c = TestClient(app, base_url="http://127.0.0.1")
    assert c.post("/api/session", json={"user": "newbie", "password": "newbie-password"}).status_code == 200


def test_security_headers(service):
    app, _, _ = service
    r = sign_in(app, "vic").get("/")
    assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


# ------------------------------------------------------------------------------------ quiz
def test_quiz_hides_the_answer_until_answered_and_keeps_scores(service):
    app, _, _ = service
    svc = app.state.service
    job = svc.build_quiz("admin", per_kind=1, seed=7)
    vic = sign_in(app, "vic")
    assert wait_job(vic, job.id, timeout=300)["state"] == "done"
    ids = vic.post("/api/quiz/start").json()["round"]
    quiz = {q.id: q for q in svc.store.quiz_images()}
    assert sorted(ids) == sorted(quiz) and len(ids) >= 4
    kinds = {q.kind for q in quiz.values()}
    assert "authentic" in kinds and len(kinds) >= 3
    shapes = set()
    for qid in ids:
        r = vic.get(f"/api/quiz/images/{qid}.png")
        assert r.headers["content-type"] == "image/png"
        shapes.add(cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED).shape)
    assert len(shapes) == 1                           # one size for every answer
    # quiz images stay out of the work list, and their verdicts hidden until answered
    assert all(i["source"] != "quiz" for i in vic.get("/api/items", params={"limit": 1000}).json()["items"])
    first = quiz[ids[0]]
    assert vic.get(f"/api/items/{first.item_id}").status_code == 403
    assert vic.get(f"/api/items/{first.item_id}/slices/0.png").status_code == 403
    box = first.truth_box
    x, y = ((box[1] + box[3]) / 2, (box[0] + box[2]) / 2) if box else (10.0, 10.0)
    r = vic.post("/api/quiz/answers", json={"quiz_image": first.id, "answer": "fake", "x": x, "y": y})
    assert r.status_code == 200
    reveal = r.json()
    assert reveal["correct"] == (first.kind != "authentic") and reveal["kind"] == first.kind
    assert reveal["hit"] is (True if box else None)
    assert vic.get(f"/api/items/{reveal['item_id']}").status_code == 200
    assert vic.post("/api/quiz/answers", json={"quiz_image": first.id, "answer": "real"}).status_code == 409
    from concurrent.futures import ThreadPoolExecutor      # answers sent at once count once
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: vic.post("/api/quiz/answers", json={"quiz_image": ids[1], "answer": "real"})
                              .status_code, range(6)))
    assert sorted(codes) == [200] + [409] * 5, codes
    scores = vic.get("/api/quiz/scores").json()
    assert scores["benchmark"] == 0.75 and scores["everyone"] is None
    assert sum(s["n"] for s in scores["mine"]) == 2 and first.kind in {s["kind"] for s in scores["mine"]}
    assert sign_in(app, "admin").get("/api/quiz/scores").json()["everyone"] is not None


def test_openapi_schema_is_served_to_signed_in_users(service):
    app, _, _ = service
    schema = sign_in(app, "vic").get("/openapi.json").json()
    assert "/api/items" in schema["paths"] and "/api/items/{item_id}/slices/{k}.png" in schema["paths"]
    assert schema["components"]["schemas"]["ItemRowOut"]["required"]


def test_admins_change_roles_and_disable_accounts(service):
    app, _, _ = service
    admin = sign_in(app, "admin")
    assert admin.post("/api/users", json={"user": "temp", "role": "viewer", "password": "temp-password-1"}).status_code == 201
    PASSWORDS["temp"] = "temp-password-1"
    temp = sign_in(app, "temp")
    token = temp.post("/api/tokens", json={"name": "t"}).json()["token"]
    script = TestClient(app, base_url="http://127.0.0.1", headers={"Authorization": f"Bearer {token}"})
    assert temp.get("/api/audit").status_code == 403
    r = admin.put("/api/users/temp", json={"role": "reviewer"})
    assert r.status_code == 200 and r.json()["role"] == "reviewer"
    assert temp.get("/api/audit").status_code == 200                # the new role holds at once
    r = admin.put("/api/users/temp", json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert temp.get("/api/me").status_code == 401 and script.get("/api/me").status_code == 401
    assert TestClient(app, base_url="http://127.0.0.1").post(
        "/api/session", json={"user": "temp", "password": "temp-password-1"}).status_code == 401
    assert admin.put("/api/users/temp", json={"disabled": False}).json()["disabled"] is False
    assert script.get("/api/me").status_code == 200
    # no admin locks themselves out; unknown users; only admins
    assert admin.put("/api/users/admin", json={"role": "viewer"}).status_code == 409
    assert admin.put("/api/users/admin", json={"disabled": True}).status_code == 409
    assert admin.put("/api/users/nobody", json={"role": "viewer"}).status_code == 404
    assert sign_in(app, "rita").put("/api/users/temp", json={"role": "admin"}).status_code == 403
    actions = [e["action"] for e in admin.get("/api/audit", params={"limit": 1000}).json()["entries"]
               if e["target"] == "user:temp"]
    assert actions == ["add-user", "set-role", "disable-user", "enable-user"]


def test_users_change_their_own_password(service):
    app, _, _ = service
    admin = sign_in(app, "admin")
    admin.post("/api/users", json={"user": "pat", "role": "viewer", "password": "pat-password-1"})
    PASSWORDS["pat"] = "pat-password-1"
    pat, other = sign_in(app, "pat"), sign_in(app, "pat")
    assert pat.post("/api/me/password", json={"current": "wrong-one", "new": "pat-password-2"}).status_code == 403
    assert pat.post("/api/me/password", json={"current": "pat-password-1", "new": "short"}).status_code == 422
    r = pat.post("/api/me/password", json={"current": "pat-password-1", "new": "pat-password-2"})
    assert r.status_code == 204
    assert pat.get("/api/me").status_code == 401 and other.get("/api/me").status_code == 401   # every session ends
    c = TestClient(app, base_url="http://127.0.0.1")
    app.state.service.limiter.clear()     # the tests share one address
    assert c.post("/api/session", json={"user": "pat", "password": "pat-password-1"}).status_code == 401
    assert c.post("/api/session", json={"user": "pat", "password": "pat-password-2"}).status_code == 200
    app.state.service.limiter.clear()


def test_sign_in_attempts_are_counted_before_they_are_checked(service):
    """A burst of parallel wrong passwords: no more than the limit get to be checked."""
    from concurrent.futures import ThreadPoolExecutor

    app, _, _ = service
    app.state.service.limiter.clear()
    c = TestClient(app, base_url="http://127.0.0.1")
    with ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: c.post("/api/session", json={"user": "admin", "password": "guess-guess"})
                              .status_code, range(12)))
    assert codes.count(401) == 3 and codes.count(429) == 9, codes
    app.state.service.limiter.clear()


def test_bodies_are_bounded_and_never_echoed(service):
    app, _, _ = service
    anonymous = TestClient(app, base_url="http://127.0.0.1")
    r = anonymous.post("/api/users", content=b'{"user": "' + b"x" * 200_000 + b'"}',
                       headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and len(r.content) < 200
    chunks = (b"y" * 10_000 for _ in range(20))        # no Content-Length: counted as it streams
    assert anonymous.post("/api/session", content=chunks, headers={"Content-Type": "application/json"}).status_code == 413
    admin = sign_in(app, "admin")
    r = admin.post("/api/me/password", json={"current": "admin-password-1", "new": "s3cret"})
    assert r.status_code == 422 and "s3cret" not in r.text and r.json()["detail"][0]["loc"] == ["body", "new"]
    page = admin.get("/")
    assert page.headers["cache-control"] == "no-store"          # pages hold the CSRF token
