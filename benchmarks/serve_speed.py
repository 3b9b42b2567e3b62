"""Speed of the review service (``medforensics serve``) against issue 16's two targets: the work
list of 10,000 items opens in under 1 s; a 512x512 slice with its overlay is served in under
100 ms.

    python benchmarks/serve_speed.py [DATA_DIR] [--items 10000] [--runs 5] [--repeat 20] [--slices 6]
                                     [--full-series] [--no-browser] [--quick] [--json OUT]

The real server runs as a subprocess: ``medforensics review bootstrap`` creates the admin, then
``medforensics serve --config F --data DIR --host 127.0.0.1 --port P`` with ``quiz_per_kind = 0``
(no quiz images are built). Requests are made with httpx, signed in with a session cookie, from
this process on the same machine (the client's time is included).

* **Work list**: before the server starts, ``--items`` items are added to its store through
  ``Store.add_item``, made from real scan records (pydicom's CT, MR and ultrasound test files and
  a PNG, scanned with five cheap detectors) whose name, score, label, alarming detectors,
  modality and date (spread over a year) vary; one in ten has a reviewer's decision, one in
  twenty-five is a scan error. "Opens" is what the page loads one after the other: ``GET /``,
  ``GET /api/facets`` and ``GET /api/items?sort=suspicion&limit=100``; also a filtered list
  (``label=manipulated&modality=CT``) and a deep page (``offset=9900``). *First*: the first
  request of its kind after the server started; *warm*: the median of ``--repeat``.
  With Playwright and Debian's ``chromium``: the time from ``page.goto("/")`` until the first
  row of the work list is visible (a fresh browser context first, then the median of ``--repeat``
  more in the same tab), and the page's own time from navigation start to that row.
* **Slices**: a 512x512 CT series is uploaded (``POST /api/jobs``) and scanned by the service with
  its default detectors: the 12-slice LIDC-IDRI sub-series ``ct/lidc-idri-small/LIDC-IDRI-0002``
  of the data root (DATA_DIR, else $MEDFORENSICS_DATA, else ../shared/data), or when that is
  missing pydicom's ``CT_small.dcm`` upscaled to 512x512 and written as an 8-slice series
  (``--full-series``: the 133-slice ``ct/lidc-idri/LIDC-IDRI-0001`` instead). Timed:
  ``GET .../slices/{k}.png?center=&width=`` (the viewer's request) and ``GET
  .../overlays/{detector}/{k}.png`` for ``--slices`` slices: the first request after the start
  (it loads the series and the heatmaps: reported apart), the first request of each other slice,
  and the warm median and 95th percentile of ``--repeat`` rounds.

Every server start (``--runs``, each a fresh process over the same data) gives one set of
"first" figures; the table reports the medians over the runs. ``--quick``: one run, 5 warm
requests, 3 slices. Child processes get ``OMP_NUM_THREADS=1`` unless it is set.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

from medforensics.datapath import data_root

DEFAULT = data_root()   # DATA_DIR, else $MEDFORENSICS_DATA, else ../shared/data beside the repository
LIDC_SHORT = Path("ct") / "lidc-idri-small" / "LIDC-IDRI-0002"
LIDC_FULL = Path("ct") / "lidc-idri" / "LIDC-IDRI-0001"
RECORD_DETECTORS = ["dicom_header", "copy_move", "noise_residual", "ct_physics", "container"]
PASSWORD = "benchmark-password-1234"
ROW = "#items-body tr.item-row"          # a work-list row (templates/worklist.html, static/worklist.js)
TARGET_LIST_S, TARGET_SLICE_S = 1.0, 0.100
DAY = 86400.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


# ------------------------------------------------------------------------------------ the store

def sample_records(work: Path) -> list[dict]:
    """Real scan records: pydicom's CT, MR and ultrasound test files and a PNG, scanned."""
    import cv2
    import numpy as np
    from pydicom.data import get_testdata_file

    from medforensics.scan import scan

    files = [get_testdata_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm")]
    files = [f for f in files if f]
    rng = np.random.default_rng(0)
    png = work / "radiograph.png"
    cv2.imwrite(str(png), cv2.GaussianBlur(rng.integers(0, 65535, (384, 384), dtype=np.uint16), (7, 7), 0))
    records = [v.to_dict() for v in scan([*files, str(png)], RECORD_DETECTORS)]
    if not any(r.get("evidence") for r in records):
        raise SystemExit("the sample scans produced no evidence; cannot make work-list items")
    return records


def vary(record: dict, i: int, rng) -> tuple[dict, str]:
    """A copy of ``record`` as item ``i``: its label, score, alarming detectors and modality
    drawn (consistently with each other), or a scan error; and its name."""
    r = copy.deepcopy(record)
    name = f"site-{i % 7}/patient-{(i * 7919) % 2500:04d}/{Path(record['path']).stem}-{i:05d}{Path(record['path']).suffix}"
    r["path"] = f"uploads/{name}"
    r["modality"] = str(rng.choice(["CT", "CT", "CT", "CT", "CR", "DX", "DX", "MR", "MR", "US", "MG"]))
    if i % 25 == 7:                                   # a scan that failed: no label, no score
        r.update(label=None, score=None, evidence=[], errors=[f"{name}: cannot be read (truncated file)"])
        return r, name
    label = str(rng.choice(["authentic"] * 14 + ["suspicious"] * 3 + ["manipulated"] * 2 + ["synthetic"]))
    lo, hi = {"authentic": (0.0, 0.3), "suspicious": (0.3, 0.6), "manipulated": (0.6, 1.0),
              "synthetic": (0.6, 1.0)}[label]
    score = round(float(rng.uniform(lo, hi)), 4)
    evidence = r.get("evidence", [])
    alarms = set()
    if score >= 0.5 and evidence:
        alarms = set(rng.choice(len(evidence), size=min(len(evidence), int(rng.integers(1, 3))), replace=False).tolist())
    for j, e in enumerate(evidence):
        e["score"] = round(float(rng.uniform(0.5, score) if j in alarms else rng.uniform(0.0, min(score, 0.45))), 4)
    r.update(label=label, score=score)
    return r, name


def fill(location: str, n: int, records: list[dict], seed: int = 0) -> dict:
    """Add ``n`` items (in jobs of 100, dated over the past year, one in ten decided) to the
    store at ``location``; how long it took."""
    import numpy as np

    from medforensics.serve.store import Store

    rng = np.random.default_rng(seed)
    now = time.time()
    clock = {"t": now - 365 * DAY}
    t0 = time.perf_counter()
    with Store(location, clock=lambda: clock["t"]) as store:
        job = None
        for i in range(n):
            clock["t"] = now - 365 * DAY + (i + float(rng.uniform(0, 1))) * (365 * DAY / n)
            if i % 100 == 0:
                if job is not None:
                    store.update_job(job.id, state="done", done=100, total=100, message="100 item(s)")
                job = store.add_job("admin", "upload", total=100, message="")
            record, name = vary(records[i % len(records)], i, rng)
            iid = store.add_item(job.id, path=record["path"], name=name, source="scan", record=record, n_frames=1)
            if i % 10 == 3:
                action = str(rng.choice(["confirm", "dismiss", "flag"]))
                store.decide(iid, action, "admin", "benchmark decision")
        if job is not None:
            store.update_job(job.id, state="done", done=n % 100 or 100, total=n % 100 or 100)
    return {"items": n, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------ the server

class Server:
    """``medforensics serve`` in a subprocess over ``data``."""

    def __init__(self, data: Path, config: Path, logfile: Path):
        self.data, self.config, self.logfile = data, config, logfile
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Server":
        import httpx

        with open(self.logfile, "ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "medforensics", "serve", "--config", str(self.config),
                                          "--data", str(self.data), "--host", "127.0.0.1", "--port", str(self.port)],
                                         stdout=fh, stderr=subprocess.STDOUT, env=child_env())
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.url}/login", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() - t0 > 120:
                self.stop()
                raise SystemExit(f"the service did not start; its log ends:\n{self.tail()}")
            time.sleep(0.1)
        self.start_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def tail(self) -> str:
        return self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        """An httpx client signed in as the admin (session cookie + CSRF header)."""
        import httpx

        c = httpx.Client(base_url=self.url, timeout=300)
        r = c.post("/api/session", json={"user": "admin", "password": PASSWORD})
        if r.status_code != 200:
            raise SystemExit(f"sign-in failed ({r.status_code}): {r.text[:300]}")
        c.headers["X-CSRF-Token"] = r.json()["csrf"]
        return c


def timed(client, path: str, params=None, kind: str = "") -> tuple[float, object]:
    """Seconds for ``GET path`` (the whole body received) and the response; refuses a non-200."""
    t0 = time.perf_counter()
    r = client.get(path, params=params)
    seconds = time.perf_counter() - t0
    if r.status_code != 200 or (kind and not r.headers.get("content-type", "").startswith(kind)):
        raise SystemExit(f"GET {path} {params or ''}: {r.status_code} {r.headers.get('content-type')} {r.text[:300]}")
    return seconds, r


# ------------------------------------------------------------------------------------ work list

LIST = {"sort": "suspicion", "offset": 0, "limit": 100}
FILTERED = [("label", "manipulated"), ("modality", "CT"), ("sort", "suspicion"), ("offset", 0), ("limit", 100)]


def open_list(client) -> dict:
    """The page's loads in its order: the page, the filters' facets, the first 100 items."""
    page, r = timed(client, "/", kind="text/html")
    if 'id="items-body"' not in r.text:
        raise SystemExit("GET / did not return the work list page (no #items-body)")
    facets, _ = timed(client, "/api/facets", kind="application/json")
    items, r = timed(client, "/api/items", LIST, kind="application/json")
    return {"page": page, "facets": facets, "items": items, "total": page + facets + items, "n": r.json()["total"]}


def worklist(client, n_items: int, repeat: int) -> dict:
    first = open_list(client)
    if first["n"] < n_items:
        raise SystemExit(f"the work list holds {first['n']} items, {n_items} were added")
    f_first, r = timed(client, "/api/items", FILTERED, kind="application/json")
    n_filtered = r.json()["total"]
    deep = [("sort", "suspicion"), ("offset", n_items - 100), ("limit", 100)]
    d_first, r = timed(client, "/api/items", deep, kind="application/json")
    if len(r.json()["items"]) != 100:
        raise SystemExit(f"the deep page held {len(r.json()['items'])} items, not 100")
    warm: dict[str, list[float]] = {"page": [], "facets": [], "items": [], "total": [], "filtered": [], "deep": []}
    for _ in range(repeat):
        o = open_list(client)
        for k in ("page", "facets", "items", "total"):
            warm[k].append(o[k])
        warm["filtered"].append(timed(client, "/api/items", FILTERED)[0])
        warm["deep"].append(timed(client, "/api/items", deep)[0])
    return {"listed": first["n"], "filtered_matches": n_filtered, "deep_offset": n_items - 100,
            "first": {**{k: first[k] for k in ("page", "facets", "items", "total")}, "filtered": f_first,
                      "deep": d_first},
            "warm_median": {k: median(v) for k, v in warm.items()},
            "warm_p95": {k: p95(v) for k, v in warm.items()}}


#: Notes, in the page, when the first work-list row enters the document (ms since navigation start).
FIRST_ROW_SCRIPT = """
new MutationObserver((changes, observer) => {
  if (document.querySelector(%r)) { window.__mfFirstRow = performance.now(); observer.disconnect(); }
}).observe(document, {childList: true, subtree: true});
""" % ROW


def browser_times(server: Server, client, repeat: int) -> dict:
    """From ``page.goto("/")`` until the first work-list row is visible, as Playwright sees it
    (wall) and in the page (navigation start until the row is in the document): in a fresh
    browser context (nothing cached), then the median of ``repeat`` more in the same tab."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    cookie = client.cookies.get("mf_session")
    wall, in_page = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(FIRST_ROW_SCRIPT)
            context.add_cookies([{"name": "mf_session", "value": cookie, "url": server.url}])
            page = context.new_page()
            for _ in range(repeat + 1):
                try:
                    t0 = time.perf_counter()
                    page.goto(f"{server.url}/")
                    page.wait_for_selector(ROW, state="visible", timeout=30000)
                    wall.append(time.perf_counter() - t0)
                except PlaywrightError as e:
                    return {"left_out": f"no work-list row ({ROW}) became visible: {str(e).splitlines()[0]}"}
                in_page.append(page.evaluate("window.__mfFirstRow") / 1000)
            context.close()
        finally:
            browser.close()
    return {"first": wall[0], "first_in_page": in_page[0], "warm_median": median(wall[1:]),
            "warm_in_page_median": median(in_page[1:])}


def browser_missing() -> str | None:
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


# ------------------------------------------------------------------------------------ slices

def ct_series(data: Path, full: bool = False) -> tuple[list[tuple[str, bytes]], str]:
    """The upload: (file name, bytes) of a 512x512 CT series (short, or with ``full`` the
    133-slice LIDC-IDRI-0001), and what it is."""
    folder = data / (LIDC_FULL if full else LIDC_SHORT)
    files = sorted(folder.glob("*/*/*.dcm"))
    if files:
        return ([(f"{folder.name}/{i:03d}.dcm", f.read_bytes()) for i, f in enumerate(files)],
                f"{(LIDC_FULL if full else LIDC_SHORT).as_posix()} ({len(files)} slices, real LIDC-IDRI CT)")
    if full:
        raise SystemExit(f"{folder}: the LIDC-IDRI-0001 series was not found (DATA_DIR, $MEDFORENSICS_DATA)")
    import cv2
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    big = cv2.resize(src.pixel_array.astype(np.float32), (512, 512), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for i in range(8):
        ds = copy.deepcopy(src)
        px = np.clip(big + rng.normal(0, 8, big.shape), -32768, 32767).astype(src.pixel_array.dtype)
        ds.Rows, ds.Columns = 512, 512
        ds.PixelSpacing = [float(v) / 4 for v in src.PixelSpacing]
        ds.PixelData = px.tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        pos = [float(v) for v in src.ImagePositionPatient]
        ds.ImagePositionPatient = [pos[0], pos[1], pos[2] + 2.5 * i]
        ds.SliceLocation = pos[2] + 2.5 * i
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((f"ct-small-512/{i:03d}.dcm", buf.getvalue()))
    return out, f"pydicom CT_small.dcm upscaled to 512x512, 8 slices (the data root has no {LIDC_SHORT.as_posix()})"


def upload(client, files: list[tuple[str, bytes]], timeout: float) -> dict:
    """Upload ``files`` as one job, wait until it is done; the item it made (with its view)."""
    r = client.post("/api/jobs", files=[("files", (name, data, "application/dicom")) for name, data in files])
    if r.status_code != 201:
        raise SystemExit(f"POST /api/jobs: {r.status_code} {r.text[:300]}")
    job_id, t0 = r.json()["id"], time.monotonic()
    while True:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] == "done":
            break
        if job["state"] == "failed" or time.monotonic() - t0 > timeout:
            raise SystemExit(f"the upload's job ended {job['state']}: {job['message']}")
        time.sleep(0.5)
    items = client.get("/api/items", params={"job": job_id}).json()["items"]
    if len(items) != 1:
        raise SystemExit(f"the upload made {len(items)} items, expected one series")
    return {"id": items[0]["id"], "scan_s": time.monotonic() - t0}


def slice_ks(n_frames: int, count: int) -> list[int]:
    count = max(2, min(count, n_frames))
    return sorted({round(j * (n_frames - 1) / (count - 1)) for j in range(count)})


def slices(client, item_id: int, repeat: int, count: int, overlay: str | None) -> dict:
    """Slice and overlay PNG times of the item: the first requests after the start, the first
    of each other slice, then ``repeat`` warm rounds."""
    import cv2
    import numpy as np

    info = client.get(f"/api/items/{item_id}").json()
    shape, (center, width) = info["shape"], info["window"]
    if not info["overlays"]:
        raise SystemExit(f"item {item_id} has no overlays (no detector kept a heatmap)")
    detector = overlay or info["overlays"][0]
    if detector not in info["overlays"]:
        raise SystemExit(f"--overlay {detector}: the item's overlays are {', '.join(info['overlays'])}")
    n_frames = shape[0] if len(shape) == 3 else 1
    ks = slice_ks(n_frames, count)
    win = {"center": center, "width": width}

    def pair(k: int) -> tuple[float, float, bytes, bytes]:
        ts, r = timed(client, f"/api/items/{item_id}/slices/{k}.png", win, kind="image/png")
        to, o = timed(client, f"/api/items/{item_id}/overlays/{detector}/{k}.png", kind="image/png")
        return ts, to, r.content, o.content

    first = []
    for j, k in enumerate(ks):
        ts, to, png, ovl = pair(k)
        first.append((ts, to))
        if j == 0:
            a = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
            b = cv2.imdecode(np.frombuffer(ovl, np.uint8), cv2.IMREAD_UNCHANGED)
            if a is None or b is None or a.shape[:2] != tuple(shape[-2:]) or b.shape[:2] != tuple(shape[-2:]) \
                    or b.ndim != 3 or b.shape[2] != 4:
                raise SystemExit(f"unexpected PNGs: slice {None if a is None else a.shape}, "
                                 f"overlay {None if b is None else b.shape}, image {shape}")
    warm_s, warm_o, warm_pair = [], [], []
    for _ in range(repeat):
        for k in ks:
            ts, to, _, _ = pair(k)
            warm_s.append(ts)
            warm_o.append(to)
            warm_pair.append(ts + to)
    return {"shape": shape, "detector": detector, "overlays": info["overlays"], "slices": ks,
            "first_after_start": {"slice": first[0][0], "overlay": first[0][1], "pair": sum(first[0])},
            "first_per_slice": {"slice": median([t[0] for t in first[1:]]), "overlay": median([t[1] for t in first[1:]]),
                                "pair": median([sum(t) for t in first[1:]]), "pair_max": max(sum(t) for t in first[1:])},
            "warm": {"slice_median": median(warm_s), "overlay_median": median(warm_o), "pair_median": median(warm_pair),
                     "pair_p95": p95(warm_pair), "requests": len(warm_pair)}}


# ------------------------------------------------------------------------------------ report

def ms(s: float | None) -> str:
    return "–" if s is None else f"{s * 1000:.1f} ms" if s < 1 else f"{s:.2f} s"


def verdict(value: float | None, target: float) -> str:
    return "–" if value is None else ("met" if value < target else "**not met**")


def over_runs(runs: list[dict], *keys: str) -> float:
    """The median over the runs of ``run[k1][k2]...``."""
    vals = []
    for r in runs:
        for k in keys:
            r = r[k]
        vals.append(r)
    return median(vals)


def report(res: dict) -> None:
    runs, n = res["runs"], res["items"]
    W, S = [r["worklist"] for r in runs], [r["slices"] for r in runs]
    nr, rep = len(runs), res["repeat"]
    print(f"### Review service speed ({n:,} work-list items; real server, SQLite; median over {nr} server "
          f"start(s), warm = median of {rep} requests each)\n")
    print("| measurement | value | target | |")
    print("|---|---|---|---|")
    wl = [("work list opens, first after start (GET / + /api/facets + /api/items, 100 rows)", ("first", "total")),
          ("work list opens, warm", ("warm_median", "total"))]
    for what, keys in wl:
        v = over_runs(W, *keys)
        print(f"| {what} | {ms(v)} | < 1 s | {verdict(v, TARGET_LIST_S)} |")
    print(f"| ... of which (warm) page / facets / items | {ms(over_runs(W, 'warm_median', 'page'))} / "
          f"{ms(over_runs(W, 'warm_median', 'facets'))} / {ms(over_runs(W, 'warm_median', 'items'))} | | |")
    print(f"| filtered list (label=manipulated & modality=CT, {W[0]['filtered_matches']:,} match): first / warm | "
          f"{ms(over_runs(W, 'first', 'filtered'))} / {ms(over_runs(W, 'warm_median', 'filtered'))} | | |")
    print(f"| deep page (offset={W[0]['deep_offset']:,}): first / warm | {ms(over_runs(W, 'first', 'deep'))} / "
          f"{ms(over_runs(W, 'warm_median', 'deep'))} | | |")
    b = [r["browser"] for r in runs if r.get("browser") and "left_out" not in r["browser"]]
    if b:
        for what, wall, page in (("fresh browser context, nothing cached", "first", "first_in_page"),
                                 (f"again in the same tab, median of {rep}", "warm_median", "warm_in_page_median")):
            v = median([x[wall] for x in b])
            print(f"| chromium: goto(\"/\") until the first row is visible, {what}; in the page "
                  f"{ms(median([x[page] for x in b]))} | {ms(v)} | < 1 s | {verdict(v, TARGET_LIST_S)} |")
    s0 = S[0]
    shape = "x".join(map(str, s0["shape"]))
    v = over_runs(S, "first_after_start", "pair")
    print(f"| first slice + overlay after start (loads the series and its heatmaps) | {ms(v)} "
          f"(slice {ms(over_runs(S, 'first_after_start', 'slice'))}, overlay "
          f"{ms(over_runs(S, 'first_after_start', 'overlay'))}) | (not a target) | |")
    v = over_runs(S, "first_per_slice", "pair")
    print(f"| slice + overlay, first request of each other slice (median; worst {ms(over_runs(S, 'first_per_slice', 'pair_max'))}) "
          f"| {ms(v)} | < 100 ms | {verdict(v, TARGET_SLICE_S)} |")
    v = over_runs(S, "warm", "pair_median")
    print(f"| slice + overlay, warm, median (slice {ms(over_runs(S, 'warm', 'slice_median'))}, overlay "
          f"{ms(over_runs(S, 'warm', 'overlay_median'))}) | {ms(v)} | < 100 ms | {verdict(v, TARGET_SLICE_S)} |")
    v = over_runs(S, "warm", "pair_p95")
    print(f"| slice + overlay, warm, 95th percentile | {ms(v)} | < 100 ms | {verdict(v, TARGET_SLICE_S)} |")
    print(f"\nSeries: {res['series']}, {shape}, scanned by the service in {res['scan_s']:.1f} s (the job, with its worker's start); overlay "
          f"{s0['detector']!r} (of {', '.join(s0['overlays'])}); slices {s0['slices']} at the item's default window. "
          f"The store was filled in {res['fill']['seconds']:.1f} s ({n:,} x Store.add_item, 1 in 10 decided).")
    left = [r["browser"]["left_out"] for r in runs if r.get("browser") and "left_out" in r["browser"]]
    if res.get("browser_left_out") or left:
        print(f"Browser figure left out: {res.get('browser_left_out') or left[0]}")
    print(f"\nmachine: {res['cpus']} CPU(s) ({res['cpu']}); load average at the start {res['load_start']}, at the end "
          f"{res['load_end']}; Python {res['python']}; OMP_NUM_THREADS={res['omp']}; client and server on the "
          f"same machine (the client's time included).")
    print("\nper run (first / warm work list; first-per-slice / warm pair): " + "; ".join(
        f"{ms(w['first']['total'])} / {ms(w['warm_median']['total'])}; {ms(s['first_per_slice']['pair'])} / "
        f"{ms(s['warm']['pair_median'])}" for w, s in zip(W, S)))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT, help="the data root (for the LIDC sub-series)")
    ap.add_argument("--items", type=int, default=10000, help="work-list items added before the server starts")
    ap.add_argument("--runs", type=int, default=5, help="server starts (each gives the 'first' figures; medians)")
    ap.add_argument("--repeat", type=int, default=20, help="warm requests per figure and run")
    ap.add_argument("--slices", type=int, default=6, help="slices timed (spread over the series)")
    ap.add_argument("--full-series", action="store_true", help="upload the 133-slice LIDC-IDRI-0001 series instead")
    ap.add_argument("--overlay", default=None, help="the overlay's detector (default: the item's first)")
    ap.add_argument("--no-browser", action="store_true", help="leave out the chromium figure")
    ap.add_argument("--quick", action="store_true", help="one run, 5 warm requests, 3 slices")
    ap.add_argument("--keep", type=Path, default=None, help="build the service's folder here (a new folder) and keep it")
    ap.add_argument("--json", type=Path, default=None, help="write the measurements here (a new file)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.repeat, args.slices = 1, 5, 3
    if args.json is not None and args.json.exists():
        raise SystemExit(f"{args.json}: already exists; choose a new name")
    if args.keep is not None and args.keep.exists():
        raise SystemExit(f"{args.keep}: already exists; choose a new folder")
    if args.items < 100 or args.runs < 1 or args.repeat < 1 or args.slices < 2:
        raise SystemExit("--items must be at least 100, --runs and --repeat at least 1, --slices at least 2")
    why_no_browser = "--no-browser" if args.no_browser else browser_missing()
    res: dict = {"items": args.items, "repeat": args.repeat, "cpus": os.cpu_count(), "cpu": cpu_name(),
                 "python": sys.version.split()[0], "load_start": load_avg(),
                 "omp": os.environ.get("OMP_NUM_THREADS") or "1 (set by the benchmark for its child processes)",
                 "browser_left_out": why_no_browser, "runs": []}
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="mf-serve-speed-")
    root = args.keep or Path(tmp.name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        data, logfile = root / "review", root / "serve.log"
        pw, config = root / "admin-password", root / "serve.toml"
        pw.write_text(PASSWORD + "\n", encoding="utf-8")
        config.write_text("quiz_per_kind = 0\n", encoding="utf-8")
        r = subprocess.run([sys.executable, "-m", "medforensics", "review", "bootstrap", "--config", str(config),
                            "--data", str(data), "--user", "admin", "--password-file", str(pw)],
                           capture_output=True, text=True, env=child_env(), timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"review bootstrap failed ({r.returncode}): {(r.stdout + r.stderr).strip()[-1000:]}")
        log("scanning the sample records ...")
        records = sample_records(root)
        log(f"filling the store with {args.items:,} items ...")
        res["fill"] = fill(str(data / "serve.sqlite"), args.items, records)
        log(f"  {res['fill']['seconds']:.1f} s")
        files, res["series"] = ct_series(args.data, args.full_series)
        log(f"uploading {res['series']} ...")
        with Server(data, config, logfile) as server, closing(server.client()) as client:
            item = upload(client, files, timeout=900)
        res["item"], res["scan_s"] = item["id"], item["scan_s"]
        for run in range(args.runs):
            log(f"run {run + 1}/{args.runs}: starting the server ...")
            with Server(data, config, logfile) as server, closing(server.client()) as client:
                out = {"start_s": server.start_s}
                out["worklist"] = worklist(client, args.items, args.repeat)
                log(f"  work list: first {ms(out['worklist']['first']['total'])}, warm "
                    f"{ms(out['worklist']['warm_median']['total'])}")
                out["slices"] = slices(client, item["id"], args.repeat, args.slices, args.overlay)
                log(f"  slices: first after start {ms(out['slices']['first_after_start']['pair'])}, first per slice "
                    f"{ms(out['slices']['first_per_slice']['pair'])}, warm {ms(out['slices']['warm']['pair_median'])}")
                if why_no_browser is None:
                    out["browser"] = browser_times(server, client, args.repeat)
                    log(f"  browser: {out['browser']}")
            res["runs"].append(out)
        res["load_end"] = load_avg()
    finally:
        if tmp is not None:
            tmp.cleanup()
    report(res)
    if args.json is not None:
        with open(args.json, "x", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
