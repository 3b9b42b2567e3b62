"""The review service in a real browser (issue 16, item 7): the real server (``medforensics
review bootstrap`` then ``medforensics serve`` in a subprocess) driven by Debian's ``chromium``
through Playwright's sync API.

One server for the module, started as docs/serve.md's quick start does (``serve --demo``: the
demo's originals and manipulated copies are scanned at the first start). With the shared data's
LIDC-IDRI-0001 series (else those tests skip): the full series with a 14 mm nodule injected by
``forge.ct`` is uploaded as a folder through ``POST /api/jobs``, and six of its slices wait in a
real gateway queue as a quarantined series that the service picks up.

The flows: three clicks from the login page to a manipulated image's evidence; the work list
sorted by suspicion, filtered (in the address), paged by 100; uploads of files and a folder from
the page with the jobs panel, and a refused file; sign-out and a lost session; a CT series
scrolled by wheel, keys and slider with neighbours fetched ahead, overlays and opacity, a region
boxed over the nodule, window/level, 1:1, the header; a reviewer dismissing an alarm with a note
(history, work list, audit page) and rejecting a quarantined gateway series; a viewer without
decision buttons; an admin verifying the audit trail and making a token shown once; a quiz round
with its reveal and the results page. Every page is checked for script errors, CSP violations
and failed requests. The screenshots in docs/serve/ are taken here (docs/serve.md shows them).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import free_port

httpx = pytest.importorskip("httpx")

DOCS = Path(__file__).resolve().parents[1] / "docs" / "serve"
VIEWPORT = {"width": 1280, "height": 800}
PASSWORDS = {"admin": "admin-password-1234", "rita": "reviewer-password-1234", "viktor": "viewer-password-1234"}
JOB_TIMEOUT = 240.0


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    exe = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


class Server:
    """The running service: its address, its log, and an admin's API client."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "serve.log"
        self.proc: subprocess.Popen | None = None
        self.api: httpx.Client | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "medforensics", *args], capture_output=True, text=True,
                              timeout=120, env=self.env())

    def env(self) -> dict:
        return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def start(self, settings: str = "") -> "Server":
        pw = self.root / "admin-password"
        pw.write_text(PASSWORDS["admin"] + "\n")
        r = self.cli("review", "bootstrap", "--data", str(self.data), "--user", "admin", "--password-file", str(pw))
        assert r.returncode == 0, r.stdout + r.stderr
        config = self.root / "serve.toml"
        config.write_text("quiz_per_kind = 1\n" + settings)   # 4 fakes and 4 authentic images: enough for a round
        self.proc = subprocess.Popen([sys.executable, "-m", "medforensics", "serve", "--config", str(config),
                                      "--data", str(self.data), "--port", str(self.port), "--demo"],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=self.env())
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/login", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the service did not start: {self.tail()}")
            time.sleep(0.2)
        self.api = self.client("admin")
        return self

    def client(self, user: str) -> httpx.Client:
        """An API client signed in as ``user`` (session cookie + CSRF header)."""
        c = httpx.Client(base_url=self.url, timeout=120)
        r = c.post("/api/session", json={"user": user, "password": PASSWORDS[user]})
        assert r.status_code == 200, r.text
        c.headers["X-CSRF-Token"] = r.json()["csrf"]
        return c

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def upload(self, files: list[tuple[str, Path]]) -> dict:
        """Upload ``(relative name, path)`` pairs as one job; return the job once it is done."""
        parts = [("files", (name, p.read_bytes(), "application/octet-stream")) for name, p in files]
        r = self.api.post("/api/jobs", files=parts)
        assert r.status_code == 201, r.text
        return self.wait_job(r.json()["id"])

    def wait_job(self, job_id: int) -> dict:
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            job = self.api.get(f"/api/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                assert job["state"] == "done", f"job {job_id} failed: {job['message']} {self.tail()}"
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {JOB_TIMEOUT} s: {self.tail()}"
            time.sleep(0.3)

    def items(self, **query) -> list[dict]:
        r = self.api.get("/api/items", params={"limit": 1000, **query})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _gateway_queue(root: Path) -> tuple[Path, str] | None:
    """A real gateway queue holding one quarantined series (six LIDC-IDRI-0001 slices, spooled
    and recorded as the gateway does, then checked as manipulated): (queue file, series UID), or
    None without the shared data."""
    import pydicom

    from medforensics.datapath import data_root
    from medforensics.gateway.queue import Queue

    found = next((data_root() / "ct" / "lidc-idri" / "LIDC-IDRI-0001").rglob("*.dcm"), None) \
        if (data_root() / "ct" / "lidc-idri" / "LIDC-IDRI-0001").is_dir() else None
    if found is None:
        return None
    files = sorted(found.parent.glob("*.dcm"), key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))
    spool = root / "spool"
    spool.mkdir()
    queue_file = root / "gateway-queue.sqlite"
    sops = []
    with Queue(queue_file) as q:
        for f in files[60:66]:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            out = spool / f"{ds.SOPInstanceUID}.dcm"
            shutil.copyfile(f, out)
            assert q.add_instance(sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                                  study_instance_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID,
                                  transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, path=str(out), calling_ae="CT1",
                                  peer="10.0.0.7", size=out.stat().st_size)
            sops.append(ds.SOPInstanceUID)
        uid = str(ds.SeriesInstanceUID)
        s = q.record_check(uid, "manipulated", 0.91, "quarantine", {"label": "manipulated"}, instances=sops)
        assert s.state == "quarantined"
    return queue_file, uid


@pytest.fixture(scope="module")
def server(tmp_path_factory, browser):
    """The service as the quick start of docs/serve.md runs it (``serve --demo``: the demo's
    originals and manipulated copies scanned at the first start, and a quiz set), with a
    reviewer and a viewer added through the API."""
    root = tmp_path_factory.mktemp("serve")
    srv = Server(root)
    srv.gateway = _gateway_queue(root)
    srv.start(f'gateway_queue = "{srv.gateway[0].as_posix()}"\ngateway_poll_seconds = 0.5\n' if srv.gateway else "")
    try:
        for user, role in (("rita", "reviewer"), ("viktor", "viewer")):
            r = srv.api.post("/api/users", json={"user": user, "role": role, "password": PASSWORDS[user]})
            assert r.status_code == 201, r.text
        jobs = srv.api.get("/api/jobs").json()["jobs"]
        assert {"demo", "quiz"} <= {j["kind"] for j in jobs}, jobs
        for job in jobs:
            srv.wait_job(job["id"])
        if srv.gateway:                        # the quarantined series is picked up and scanned
            deadline = time.monotonic() + JOB_TIMEOUT
            while not srv.items(source="gateway"):
                assert time.monotonic() < deadline, f"the gateway's series never reached the work list: {srv.tail()}"
                time.sleep(0.3)
            for job in srv.api.get("/api/jobs").json()["jobs"]:
                srv.wait_job(job["id"])
        srv.demo = srv.data / "demo"
        srv.truth = json.loads((srv.demo / "manipulated" / "ground_truth.json").read_text())
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def ct_item(server, lidc_series_dir, tmp_path_factory) -> dict:
    """The LIDC-IDRI-0001 series with a 14 mm nodule injected, uploaded as a folder and scanned:
    its item (the injected box is ``ct_item["truth"]``)."""
    from medforensics.forge import ct
    from medforensics.io.dicom import load_series
    from medforensics.io.write import write_like

    files = sorted(lidc_series_dir.glob("*.dcm"))
    series = load_series(files)
    forged = ct.inject(series, seed=0, diameter_mm=14.0)
    folder = tmp_path_factory.mktemp("forged-ct")
    written = write_like(series, forged.pixels, folder / "series")
    job = server.upload([(f"LIDC-forged/{Path(p).name}", Path(p)) for p in sorted(written)])
    items = server.items(job=job["id"])
    assert len(items) == 1 and items[0]["kind"] == "series", items
    item = server.api.get(f"/api/items/{items[0]['id']}").json()
    item["truth"] = list(forged.bbox_voxel)
    return item


class Pages:
    """Browser contexts signed in as a user; every page's script errors and CSP violations are
    collected and must stay empty."""

    def __init__(self, browser, server: Server):
        self.browser, self.server = browser, server
        self.contexts = []
        self.problems: list[str] = []
        self.allowed: list[str] = []     # failed responses a test provokes on purpose ("403 http://...")

    def new(self):
        ctx = self.browser.new_context(viewport=VIEWPORT, base_url=self.server.url)
        ctx.set_default_timeout(15000)
        self.contexts.append(ctx)
        page = ctx.new_page()
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("console", lambda m: self.problems.append(f"console {m.type}: {m.text}")
                if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
        page.on("response", lambda r: self.problems.append(f"{r.status} {r.request.method} {r.url}")
                if r.status >= 400 and not any(a in f"{r.status} {r.url}" for a in self.allowed) else None)
        return page

    def login(self, user: str, next_path: str = "/"):
        page = self.new()
        page.goto(f"/login?next={next_path}")
        page.fill("#login-user", user)
        page.fill("#login-password", PASSWORDS[user])
        page.click("#login-submit")
        page.wait_for_url(re.compile(re.escape(self.server.url + next_path) + r"(\?.*)?$"))
        return page

    def close(self):
        for ctx in self.contexts:
            ctx.close()


@pytest.fixture
def pages(browser, server):
    p = Pages(browser, server)
    yield p
    p.close()
    assert not p.problems, "\n".join(p.problems)


def _rows(page) -> list[dict]:
    return page.eval_on_selector_all("tr.item-row", """rows => rows.map(r => ({
        id: Number(r.dataset.id), name: r.querySelector('a.item-link').textContent,
        label: r.querySelector('.badge').dataset.label, score: r.cells[0].textContent.trim()}))""")


def _until(page, js: str, arg=None, timeout: float = 15.0):
    """Poll ``js`` (a function of ``arg``) in the page until it returns something truthy
    (``page.wait_for_function`` evaluates strings, which the service's CSP forbids)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = page.evaluate(js, arg)
        except Exception as e:        # a navigation replaced the page under the call: try again
            if "context was destroyed" not in str(e) and "navigat" not in str(e):
                raise
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {js}"
        time.sleep(0.05)


def _wait_rows(page):
    page.wait_for_selector("tr.item-row")
    _until(page, "() => document.querySelector('#page-info').dataset.total !== undefined")


def _loaded(page, selector: str) -> None:
    """Wait until the image at ``selector`` shows a decoded picture of its current src."""
    _until(page, "s => { const i = document.querySelector(s); return i && i.complete && i.naturalWidth > 0; }", selector)


# ------------------------------------------------------------------------- work list and login
def test_three_clicks_from_the_login_page_to_a_manipulated_image_and_its_evidence(pages, server):
    """Sign in (1), the top item of the work list -- one of the demo's manipulated copies -- (2):
    the viewer shows its alarming evidence, with the strongest detector's overlay on and its
    region boxed when it has them."""
    page = pages.new()
    page.goto("/")
    page.wait_for_url(re.compile(r"/login\?next="))
    page.fill("#login-user", "rita")
    page.fill("#login-password", PASSWORDS["rita"])
    page.click("#login-submit")                                       # click 1
    _wait_rows(page)
    top = _rows(page)[0]
    manipulated = {Path(t["file"]).name for t in server.truth}
    assert top["name"] in manipulated or Path(top["name"]).name in manipulated, top
    assert top["label"] in ("manipulated", "synthetic"), top
    page.click("tr.item-row >> nth=0")                                # click 2
    page.wait_for_url(re.compile(rf"/items/{top['id']}$"))
    page.wait_for_selector("#viewer[data-ready='1']")
    _loaded(page, "#slice-img")
    alarms = page.eval_on_selector_all(".evidence-item.alarm", "els => els.map(e => e.dataset.detector)")
    assert alarms, "the viewer shows the alarming evidence in words"
    item = server.api.get(f"/api/items/{top['id']}").json()
    if item["overlays"]:
        shown = page.eval_on_selector_all(".overlay-img:not(.hidden)", "els => els.map(e => e.dataset.detector)")
        assert len(shown) == 1 and shown[0] in alarms, (shown, alarms)
        _loaded(page, ".overlay-img:not(.hidden)")
        assert page.is_checked(f".overlay-toggle[data-detector='{shown[0]}']")
    if any(e["regions"] for e in item["record"]["evidence"]):
        assert page.is_visible("#region-box")


def test_work_list_sorted_by_suspicion_filtered_by_label(pages, server):
    page = pages.login("rita")
    _wait_rows(page)
    rows = _rows(page)
    api_items = server.items()
    assert len(rows) == len(api_items) and page.get_attribute("#page-info", "data-total") == str(len(api_items))
    scores = [float(r["score"]) for r in rows if r["score"] != "–"]
    assert scores == sorted(scores, reverse=True) and len(scores) >= 10
    assert [r["id"] for r in rows] == [i["id"] for i in api_items]
    labels = {r["label"] for r in rows}
    assert {"authentic", "manipulated"} <= labels, labels

    page.select_option("#f-label", "authentic")
    _until(page, "() => [...document.querySelectorAll('tr.item-row .badge')].every(b => b.dataset.label === 'authentic')")
    authentic = _rows(page)
    assert authentic and len(authentic) == len(server.items(label="authentic")) < len(rows)
    assert "label=authentic" in page.url                     # the filter is in the address, for the back button
    page.select_option("#f-label", "manipulated")
    _until(page, "() => [...document.querySelectorAll('tr.item-row .badge')].every(b => b.dataset.label === 'manipulated')")
    assert len(_rows(page)) == len(server.items(label="manipulated"))
    page.fill("#f-text", "spliced")
    _until(page, "() => document.querySelectorAll('tr.item-row').length === 1")
    assert "spliced" in _rows(page)[0]["name"]
    page.click("a.item-link")
    page.wait_for_selector("#viewer[data-ready='1']")
    page.go_back()
    _wait_rows(page)
    assert page.input_value("#f-label") == "manipulated" and page.input_value("#f-text") == "spliced"


def test_upload_files_and_a_folder_from_the_page_with_the_jobs_panel(pages, server, tmp_path):
    """The upload form sends picked files and a picked folder (``webkitdirectory``: names keep
    their relative paths) as one job; the jobs panel follows it and the list reloads itself."""
    page = pages.login("rita")
    _wait_rows(page)
    before = int(page.get_attribute("#page-info", "data-total"))
    jobs_before = {j["id"] for j in server.api.get("/api/jobs").json()["jobs"]}
    folder = tmp_path / "picked" / "study-7"
    (folder / "series-1").mkdir(parents=True)
    shutil.copy(server.demo / "originals" / "ct_slice.dcm", folder / "series-1" / "slice.dcm")
    # a file that says DICOM but holds no image: listed as an error, shown without a picture
    (folder / "broken.dcm").write_bytes(bytes(128) + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00abcd" + bytes(64))
    single = tmp_path / "mr.dcm"
    shutil.copy(server.demo / "originals" / "mr_slice.dcm", single)
    page.set_input_files("#upload-files", [str(single)])
    page.set_input_files("#upload-folder", str(folder))
    page.click("#upload-submit")
    _until(page, "() => /job #\\d+ started/.test(document.querySelector('#upload-status').textContent)")
    job_id = int(re.search(r"#(\d+)", page.text_content("#upload-status")).group(1))
    assert job_id not in jobs_before
    page.wait_for_selector(f".job[data-job='{job_id}'] .progress")
    _until(page, "id => document.querySelector(`.job[data-job='${id}']`).dataset.state === 'done'", job_id, timeout=JOB_TIMEOUT)
    _until(page, "n => document.querySelector('#page-info').dataset.total === String(n)", before + 3)
    items = server.items(job=job_id)
    names = sorted(i["name"] for i in items)
    assert len(names) == 3 and sum("study-7/series-1" in n for n in names) == 1, names
    assert server.api.get(f"/api/jobs/{job_id}").json()["who"] == "rita"
    broken = next(i for i in items if i["name"].endswith("broken.dcm"))
    assert broken["label"] is None
    page.fill("#f-text", "broken.dcm")
    _until(page, "() => document.querySelectorAll('tr.item-row').length === 1")
    assert _rows(page)[0]["label"] == "error"
    page.click("tr.item-row")
    page.wait_for_selector("#viewer[data-ready='1']")
    error = server.api.get(f"/api/items/{broken['id']}").json()["record"]["errors"][0]
    assert error in page.text_content("#no-pixels") and page.locator("#slice-img").count() == 0

    # someone else's upload shows up in an open work list by itself (the idle poll)
    page.goto("/")
    _wait_rows(page)
    now = int(page.get_attribute("#page-info", "data-total"))
    server.upload([("elsewhere/mr.dcm", single)])
    _until(page, "n => document.querySelector('#page-info').dataset.total === String(n)", now + 1, timeout=30)

    # a file that is no image is refused, and the page says why in one line
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    pages.allowed.append(f"415 {server.url}/api/jobs")
    page.set_input_files("#upload-files", [str(notes)])
    page.click("#upload-submit")
    page.wait_for_selector("#message:not(.hidden)")
    assert "notes.txt" in page.text_content("#message") and page.text_content("#upload-status") == ""
    assert len({j["id"] for j in server.api.get("/api/jobs").json()["jobs"]} - jobs_before) == 2   # this one and the API's


def test_sign_out_and_a_lost_session_lead_to_the_login_page_and_back(pages, server):
    target = server.items(label="manipulated")[0]
    page = pages.login("viktor")
    _wait_rows(page)
    page.click("#sign-out")
    page.wait_for_url(re.compile(r"/login$"))
    page.goto(f"/items/{target['id']}")
    page.wait_for_url(re.compile(rf"/login\?next=(/|%2F)items(/|%2F){target['id']}$"))
    page.fill("#login-user", "viktor")
    page.fill("#login-password", PASSWORDS["viktor"])
    page.click("#login-submit")
    page.wait_for_url(re.compile(rf"/items/{target['id']}$"))
    page.wait_for_selector("#viewer[data-ready='1']")
    # the session ends under an open page: its next request goes to the login page, and back after
    page.context.clear_cookies()
    pages.allowed.append("401 ")
    page.click("#header-panel summary")
    page.wait_for_url(re.compile(rf"/login\?next=%2Fitems%2F{target['id']}$"))
    page.fill("#login-user", "viktor")
    page.fill("#login-password", "wrong-password-123")
    page.click("#login-submit")
    page.wait_for_selector("#message:not(.hidden)")
    assert "/login" in page.url and page.text_content("#message").strip()


def test_login_never_sends_the_browser_to_another_site(pages, server):
    """``next`` is kept only when it is a page of this site, as the browser resolves it (tabs and
    newlines are dropped from URLs: "/\t/evil" would be "//evil")."""
    for bad in ("//evil.example/", "/%09/evil.example/", "/%0A/evil.example/", "/%5C/evil.example/",
                "https://evil.example/", "javascript:alert(1)", "/login"):
        page = pages.new()
        page.goto(f"/login?next={bad}")
        page.fill("#login-user", "viktor")
        page.fill("#login-password", PASSWORDS["viktor"])
        page.click("#login-submit")
        page.wait_for_url(re.compile(re.escape(server.url) + r"/$"))


# ------------------------------------------------------------------------- the viewer on a CT series
def test_ct_series_scrolls_with_wheel_and_keys_shows_overlays_and_regions(pages, server, ct_item):
    item_id = ct_item["id"]
    n = ct_item["shape"][0]
    assert n == 133 and ct_item["overlays"], ct_item["overlays"]
    page = pages.login("rita", f"/items/{item_id}")
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.wait_for_selector("#viewer[data-ready='1']")
    _loaded(page, "#slice-img")
    region = page.eval_on_selector(".region-row", "r => ({detector: r.dataset.detector, slice: Number(r.dataset.slice)})")
    truth = ct_item["truth"]                                     # (s0, r0, c0, s1, r1, c1) of the nodule
    assert truth[0] <= region["slice"] < truth[3], (region, truth)
    # opened on the strongest region's slice, its detector's overlay on, the box drawn
    assert page.text_content("#slice-label") == f"slice {region['slice'] + 1} / {n}"
    assert page.is_checked(f".overlay-toggle[data-detector='{region['detector']}']")
    _loaded(page, f".overlay-img[data-detector='{region['detector']}']")
    assert page.is_visible("#region-box")
    _screenshot(page, "viewer-ct-overlay.png")

    # the neighbouring slices (and their overlays) are fetched ahead of the scrolling
    deadline = time.monotonic() + 10
    ahead = [f"/slices/{region['slice'] + d}.png" for d in (-2, -1, 1, 2)]
    ahead += [f"/overlays/{region['detector']}/{region['slice'] + d}.png" for d in (-1, 1)]
    while not all(any(a in u for u in requested) for a in ahead):
        assert time.monotonic() < deadline, (ahead, requested)
        page.wait_for_timeout(50)

    def at() -> tuple[str, str]:
        return page.text_content("#slice-label"), page.get_attribute("#slice-img", "src")

    k = region["slice"]
    page.hover("#slice-img")
    page.mouse.wheel(0, 120)
    _until(page, "t => document.querySelector('#slice-label').textContent === t", f"slice {k + 2} / {n}")
    assert f"/slices/{k + 1}.png" in at()[1]
    _loaded(page, "#slice-img")
    page.keyboard.press("ArrowDown")
    assert at()[0] == f"slice {k + 3} / {n}" and f"/slices/{k + 2}.png" in at()[1]
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    page.mouse.wheel(0, -120)
    assert at()[0] == f"slice {k} / {n}" and f"/slices/{k - 1}.png" in at()[1]
    overlay = f".overlay-img[data-detector='{region['detector']}']"
    assert f"/overlays/{region['detector']}/{k - 1}.png" in page.get_attribute(overlay, "src")
    _loaded(page, "#slice-img")
    page.keyboard.press("PageDown")
    assert at()[0] == f"slice {k + 13} / {n}"
    page.keyboard.press("End")
    assert at()[0] == f"slice {n} / {n}"
    page.fill("#slice-range", "0")
    assert at()[0] == f"slice 1 / {n}" and "/slices/0.png" in at()[1]
    page.focus("#slice-range")                                   # keys on the slider run the same way
    page.keyboard.press("ArrowDown")
    assert at()[0] == f"slice 2 / {n}"
    page.keyboard.press("ArrowUp")
    assert at()[0] == f"slice 1 / {n}"
    _loaded(page, "#slice-img")
    assert page.is_hidden("#region-box")                      # the nodule is not on the first slice

    # a region: back to its slice, its box over the nodule, scaled to the displayed image
    page.click(".region-row >> nth=0")
    assert at()[0] == f"slice {region['slice'] + 1} / {n}"
    assert page.is_visible("#region-box")
    _loaded(page, "#slice-img")
    img = page.locator("#slice-img").bounding_box()
    box = page.locator("#region-box").bounding_box()
    rows, cols = ct_item["shape"][1:]
    cy = (box["y"] + box["height"] / 2 - img["y"]) / img["height"] * rows
    cx = (box["x"] + box["width"] / 2 - img["x"]) / img["width"] * cols
    assert truth[1] - 8 <= cy <= truth[4] + 8 and truth[2] - 8 <= cx <= truth[5] + 8, (cy, cx, truth)

    # overlays: off, on, opacity
    toggle = f".overlay-toggle[data-detector='{region['detector']}']"
    page.uncheck(toggle)
    assert page.is_hidden(overlay)
    page.check(toggle)
    assert page.is_visible(overlay)
    _loaded(page, overlay)
    assert page.eval_on_selector(overlay, "o => o.naturalWidth") == cols
    page.fill("#overlay-opacity", "25")
    assert page.eval_on_selector(overlay, "o => getComputedStyle(o).opacity") == "0.25"

    # window/level: a preset and typed values reach the rendered slice
    page.click(".wl-preset[data-preset='lung']")
    assert "center=-600&width=1500" in page.get_attribute("#slice-img", "src")
    _loaded(page, "#slice-img")
    page.fill("#wl-center", "40")
    page.fill("#wl-width", "400")
    page.press("#wl-width", "Enter")
    _until(page, "() => document.querySelector('#slice-img').src.includes('center=40&width=400')")
    assert page.eval_on_selector(".wl-preset[data-preset='soft tissue']", "b => b.classList.contains('pressed')")
    # dragging with the right button widens the window
    page.hover("#slice-img")
    page.mouse.down(button="right")
    page.mouse.move(img["x"] + img["width"] / 2 + 100, img["y"] + img["height"] / 2)
    page.mouse.up(button="right")
    assert float(page.input_value("#wl-width")) > 400
    _loaded(page, "#slice-img")

    # the 1:1 toggle shows the slice at its own size
    page.click("#zoom-toggle")
    assert page.eval_on_selector("#slice-img", "i => i.getBoundingClientRect().width") == pytest.approx(cols, abs=1)
    page.click("#zoom-toggle")

    # the file header, filtered
    page.click("#header-panel summary")
    page.wait_for_selector(".header-row")
    page.fill("#header-filter", "SliceThickness")
    visible = page.eval_on_selector_all(".header-row:not(.hidden)", "rs => rs.map(r => r.textContent)")
    assert visible and all("SliceThickness" in t for t in visible)
    assert "CT" in page.text_content("#item-meta")


# ------------------------------------------------------------------------- decisions
def test_a_reviewer_dismisses_an_alarm_with_a_note_and_it_is_audited(pages, server):
    target = next(i for i in server.items(label="manipulated") if i["review_state"] == "unreviewed")
    page = pages.login("rita", f"/items/{target['id']}")
    page.wait_for_selector("#viewer[data-ready='1']")
    assert page.text_content("button[data-action=dismiss]") == "Dismiss alarm"
    page.click("button[data-action=dismiss]")                    # no note: refused in the page
    assert "note" in page.text_content("#message")
    assert server.api.get(f"/api/items/{target['id']}").json()["review_state"] == "unreviewed"
    note = "checked against the original acquisition: the edit is the demo's own"
    page.fill("#decision-note", note)
    page.click("button[data-action=dismiss]")
    page.wait_for_selector("#decision-history li.decision[data-action=dismiss]")
    assert note in page.text_content("#decision-history")
    assert page.get_attribute("#item-review .state", "data-state") == "dismissed"
    item = server.api.get(f"/api/items/{target['id']}").json()
    assert item["review_state"] == "dismissed" and item["reviewer"] == "rita"
    assert item["decisions"][-1]["note"] == note and item["decisions"][-1]["before"] == "unreviewed"

    page.click(".topbar nav a[data-page=audit]")
    page.wait_for_selector("body[data-ready='1']")
    row = page.locator("tr.audit-row[data-action=dismiss]").first
    text = row.text_content()
    assert note in text and "rita" in text and f"item:{target['id']}" in text and "unreviewed → dismissed" in text
    size = int(page.text_content("#audit-size"))
    assert size == server.api.get("/api/audit?limit=1").json()["size"]
    assert re.fullmatch(r"[0-9a-f]{64}", page.text_content("#audit-root"))
    assert page.locator("#audit-verify").count() == 0           # verifying is for admins

    # back on the work list, the state shows
    page.goto(f"/?text={Path(target['name']).name}")
    _wait_rows(page)
    assert page.get_attribute(f"tr.item-row[data-id='{target['id']}'] .state", "data-state") == "dismissed"
    page.goto("/")
    _wait_rows(page)
    _screenshot(page, "worklist.png")


def test_a_reviewer_rejects_a_quarantined_gateway_series(pages, server):
    """A series the gateway holds: the viewer shows its gateway state and offers Release and
    Reject; a rejection with a note reaches the gateway's queue and the item's history."""
    if server.gateway is None:
        pytest.skip("LIDC-IDRI-0001 is not in the shared data: no gateway series")
    from medforensics.gateway.queue import Queue

    queue_file, uid = server.gateway
    (item,) = server.items(source="gateway")
    page = pages.login("rita", f"/items/{item['id']}")
    page.wait_for_selector("#viewer[data-ready='1']")
    assert uid in page.text_content("#provenance dd[data-key=gateway]")
    assert "quarantined" in page.text_content("#provenance dd[data-key=gateway]")
    assert {"release", "reject"} <= set(page.eval_on_selector_all("#decision-buttons button", "bs => bs.map(b => b.dataset.action)"))
    assert page.text_content("button[data-action=reject]") == "Reject"
    note = "a test series sent to the wrong archive"
    page.fill("#decision-note", note)
    page.click("button[data-action=reject]")
    page.wait_for_selector("#decision-history li.decision[data-action=reject]")
    assert note in page.text_content("#decision-history")
    assert page.get_attribute("#item-review .state", "data-state") == "rejected"
    assert page.locator("button[data-action=release]").count() == 0       # decided: nothing left to release
    assert "rejected" in page.text_content("#provenance dd[data-key=gateway]")
    with Queue(queue_file) as q:
        assert q.series(uid).state == "rejected"


def test_a_viewer_sees_evidence_but_no_decision_buttons(pages, server):
    # the demo's signed and watermarked CT slice changed after signing: both proofs say so
    target = next(i for i in server.items(label="manipulated") if i["name"].endswith("ct_signed_tampered.dcm"))
    page = pages.login("viktor", f"/items/{target['id']}")
    page.wait_for_selector("#viewer[data-ready='1']")
    assert page.locator(".evidence-item").count() > 0
    assert page.text_content("#provenance dd[data-key=signature]") == "broken"
    assert page.text_content("#provenance dd[data-key=watermark]") == "tampered"
    assert page.is_visible(".evidence-item.alarm[data-detector=provenance]")
    assert page.locator("#decision-panel").count() == 0 and page.locator("button[data-action]").count() == 0
    assert page.locator(".topbar nav a[data-page=audit]").count() == 0
    page.goto("/")
    _wait_rows(page)
    assert page.locator("#upload-form").count() == 0
    pages.allowed.append(f"403 {server.url}/audit")
    assert page.goto("/audit").status == 403


def test_admin_verifies_the_audit_trail_and_makes_a_token_shown_once(pages, server):
    page = pages.login("admin", "/audit")
    page.wait_for_selector("body[data-ready='1']")
    page.click("#audit-verify")
    page.wait_for_selector("#verify-result[data-ok]")
    assert page.get_attribute("#verify-result", "data-ok") == "true"
    page.click(".topbar nav a[data-page=admin]")
    page.wait_for_selector("body[data-ready='1']")
    assert {"admin", "rita", "viktor"} <= set(page.eval_on_selector_all("tr.user-row", "rs => rs.map(r => r.dataset.user)"))
    page.fill("#token-name", "nightly export")
    page.click("#token-create")
    page.wait_for_selector("#token-new:not(.hidden)")
    token = page.text_content("#token-value")
    r = httpx.get(f"{server.url}/api/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["user"] == "admin"
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    assert token not in page.content()                           # shown once
    page.click(".token-row:has-text('nightly export') .revoke-token")
    page.wait_for_selector(".token-row:has-text('nightly export'):has-text('revoked')")
    assert httpx.get(f"{server.url}/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_admin_changes_a_role_and_disables_an_account_and_users_change_their_password(pages, server):
    import httpx

    PASSWORDS["carla"] = "carla-password-1234"
    assert server.api.post("/api/users", json={"user": "carla", "role": "viewer",
                                               "password": PASSWORDS["carla"]}).status_code == 201
    carla = httpx.Client(base_url=server.url)
    assert carla.post("/api/session", json={"user": "carla", "password": PASSWORDS["carla"]}).status_code == 200
    csrf = carla.get("/api/me").json()["csrf"]
    token = carla.post("/api/tokens", json={"name": "carla's script"}, headers={"X-CSRF-Token": csrf}).json()["token"]
    script = {"Authorization": f"Bearer {token}"}

    def carla_now() -> dict:
        return next(u for u in server.api.get("/api/users").json()["users"] if u["user"] == "carla")

    page = pages.login("admin", "/admin")
    page.wait_for_selector("body[data-ready='1']")
    assert page.is_disabled("select.user-role[data-user=admin]")           # no admin demotes themselves
    page.select_option("select.user-role[data-user=carla]", "reviewer")
    _until(page, "() => document.querySelector('#message').textContent.includes('carla: reviewer')")
    assert carla_now()["role"] == "reviewer"
    page.click("button.user-disable[data-user=carla]")
    page.wait_for_selector("button.user-enable[data-user=carla]")
    assert carla_now()["disabled"] is True
    assert httpx.get(f"{server.url}/api/me", headers=script).status_code == 401   # tokens stop at once
    page.click("button.user-enable[data-user=carla]")
    page.wait_for_selector("button.user-disable[data-user=carla]")
    assert httpx.get(f"{server.url}/api/me", headers=script).json()["role"] == "reviewer"

    own = pages.login("carla", "/account")
    own.wait_for_selector("body[data-ready='1']")
    assert own.is_visible(".token-row:has-text(\"carla's script\")")     # her own tokens
    own.fill("#password-current", PASSWORDS["carla"])
    own.fill("#password-new", "carla-new-password-99")
    own.click("#password-change")
    own.wait_for_url(re.compile(re.escape(server.url) + r"/login\?next=/account$"))
    r = httpx.post(f"{server.url}/api/session", json={"user": "carla", "password": "carla-new-password-99"})
    assert r.status_code == 200
    PASSWORDS["carla"] = "carla-new-password-99"


# ------------------------------------------------------------------------- the quiz
def test_quiz_answer_reveal_and_results(pages, server):
    page = pages.login("rita", "/quiz")
    page.wait_for_selector("#quiz[data-ready='1']")
    answers = []
    for _ in range(3):
        _loaded(page, "#quiz-img")
        img = page.locator("#quiz-img").bounding_box()
        page.mouse.click(img["x"] + img["width"] * 0.5, img["y"] + img["height"] * 0.4)
        assert page.is_visible("#quiz-marker")
        nat = page.eval_on_selector("#quiz-img", "i => i.naturalWidth")
        x = float(page.get_attribute("#quiz-marker", "data-x"))
        assert x == pytest.approx(nat * 0.5, abs=2)                # the mark is in the image's own pixels
        page.click("#answer-fake")
        page.wait_for_selector("#quiz-reveal:not(.hidden)")
        correct = page.get_attribute("#quiz-verdict", "data-correct") == "true"
        kind = page.get_attribute("#quiz-kind", "data-kind")
        assert correct == (kind != "authentic")                   # "fake" is right exactly for a fake
        assert ("Correct" if correct else "Incorrect") in page.text_content("#quiz-verdict")
        if kind != "authentic":
            assert page.is_visible("#quiz-truth")
        page.wait_for_selector("#quiz-scan-label")                # the detectors' evidence of the item
        if page.locator(".quiz-overlay-toggle").count():
            _loaded(page, "#quiz-overlay")
            page.uncheck(".quiz-overlay-toggle >> nth=0")
            assert page.is_hidden("#quiz-overlay")
        answers.append(correct)
        page.click("#quiz-next")
    page.click("#results-link")
    page.wait_for_selector("body[data-ready='1']")
    total = page.eval_on_selector_all("#scores-mine tr.score-row", "rs => rs.reduce((s, r) => s + Number(r.cells[1].textContent), 0)")
    assert total == 3
    accuracy = sum(answers) / 3
    overall = page.get_attribute("#accuracy-chart .row.overall", "data-accuracy")
    assert float(overall) == pytest.approx(accuracy, abs=1e-3)
    assert "75 %" in page.text_content("#mine-panel") or "75 %" in page.text_content("main")
    _screenshot(page, "quiz-result.png")


def _screenshot(page, name: str) -> None:
    """Save the viewport as docs/serve/NAME, reduced to 256 colours (a fifth of the bytes)."""
    import io

    from PIL import Image

    DOCS.mkdir(parents=True, exist_ok=True)
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    assert shot.size == (VIEWPORT["width"], VIEWPORT["height"])
    shot.quantize(256, method=Image.Quantize.FASTOCTREE).save(DOCS / name, optimize=True)


# ------------------------------------------------------------------------- paging (last: it adds many items)
def test_work_list_pages_of_100_with_only_one_page_in_the_page(pages, server):
    """250 more items (copies of the demo's records, added to the service's database from here):
    the page holds 100 rows, Next and Previous move by 100 in suspicion order, the address keeps
    the offset."""
    from medforensics.serve.store import Store

    demo = [i for i in server.items() if i["score"] is not None][:5]
    with Store(server.data / "serve.sqlite") as store:
        sources = [store.item(i["id"]) for i in demo]
        job = store.add_job("admin", "upload", total=250, message="copies for paging")
        for k in range(250):
            src = sources[k % len(sources)]
            record = {**src.record, "score": round(src.record["score"] * (0.5 + k / 500), 4)}
            store.add_item(job.id, path=src.path, name=f"copies/{k:03d}-{Path(src.name).name}", source="scan",
                           record=record, n_frames=src.n_frames)
        store.update_job(job.id, state="done", done=250)
    total = len(server.items(limit=1000))
    assert total > 250
    page = pages.login("rita")
    _wait_rows(page)
    assert page.locator("tr.item-row").count() == 100
    assert page.text_content("#page-info") == f"1–100 of {total:,} items" and page.is_disabled("#page-prev")
    first = _rows(page)
    page.click("#page-next")
    _until(page, "() => document.querySelector('#page-info').textContent.startsWith('101–')")
    second = _rows(page)
    assert len(second) == 100 and not {r["id"] for r in first} & {r["id"] for r in second}
    assert float(second[0]["score"]) <= float(first[-1]["score"])
    assert [r["id"] for r in second] == [i["id"] for i in server.items(offset=100, limit=100)]
    assert "offset=100" in page.url
    page.reload()                                                # the address brings back the page
    _wait_rows(page)
    assert page.text_content("#page-info").startswith("101–")
    while not page.is_disabled("#page-next"):
        before = page.text_content("#page-info")
        page.click("#page-next")
        _until(page, "t => document.querySelector('#page-info').textContent !== t", before)
    last = page.locator("tr.item-row").count()
    assert page.text_content("#page-info") == f"{total - last + 1:,}–{total:,} of {total:,} items"
    page.click("#page-prev")
    _until(page, "n => document.querySelector('#page-info').textContent.startsWith(`${n}–`)", str(total - last - 99))
