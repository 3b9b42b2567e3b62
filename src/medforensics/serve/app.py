"""The review service's web application: a JSON API (``/api``, described by ``/openapi.json``)
and the pages that use it, on one port (docs/serve.md).

:func:`create_app` builds the FastAPI application from :class:`~.settings.ServeSettings`; the
command line (``medforensics serve``) runs it with uvicorn. Every route but the login page, the
login call and the static files needs a session cookie or an API token (401 otherwise) and the
role the route names (403 otherwise); calls that change something with a session cookie need its
CSRF token in ``X-CSRF-Token`` (403 otherwise).
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, Field

from ..core import MedForensicsError, one_line
from . import auth
# the store's records are the API's answers as they are (FastAPI describes dataclasses too)
from .store import AlreadyAnswered, AuditEntry, Job, Score
from .settings import ServeSettings

LOG = logging.getLogger("medforensics.serve")

__all__ = ["create_app", "Service"]

SESSION_COOKIE = "mf_session"
#: Memory for images the viewer keeps loaded (the newest one is kept whatever its size).
CACHE_BYTES = 1536 * 1024 * 1024
#: The largest request body of any call but an upload (JSON of a sign-in, a decision, ...).
MAX_BODY = 64 * 1024
CSRF_HEADER = "X-CSRF-Token"
ALARM_LABELS = ("suspicious", "manipulated", "synthetic")
#: Row ids in paths and queries (SQL integers), slice indices.
Id = Annotated[int, PathParam(ge=1, le=2**53)]
SliceIndex = Annotated[int, PathParam(ge=0, le=100_000)]
LabelName = Literal["authentic", "suspicious", "manipulated", "synthetic"]
ReviewState = Literal["unreviewed", "confirmed", "dismissed", "flagged", "released", "rejected"]
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


# ------------------------------------------------------------------------------------- models
class ErrorOut(BaseModel):
    detail: str


class LoginIn(BaseModel):
    user: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class MeOut(BaseModel):
    user: str
    role: str
    csrf: Optional[str] = None


class ItemRowOut(BaseModel):
    id: int
    job_id: Optional[int] = None
    name: str
    source: str
    kind: str
    modality: Optional[str] = None
    label: Optional[str] = None
    score: Optional[float] = None
    detectors: list[str]
    n_frames: int
    created: str
    review_state: str
    reviewer: Optional[str] = None


class ItemsPage(BaseModel):
    total: int
    offset: int
    limit: int
    items: list[ItemRowOut]


class FacetsOut(BaseModel):
    labels: list[str]
    modalities: list[str]
    detectors: list[str]
    review_states: list[str]


class ItemOut(ItemRowOut):
    record: dict[str, Any]
    shape: list[int]
    window: list[float]
    overlays: list[str]
    provenance: dict[str, Any]
    decisions: list[AuditEntry]
    gateway: Optional[dict[str, Any]] = None
    actions: list[str]


class HeaderOut(BaseModel):
    rows: list[dict[str, str]]


class DecisionIn(BaseModel):
    action: Literal["confirm", "dismiss", "flag", "release", "reject"]
    note: str = Field(min_length=1, max_length=2000)


class JobsOut(BaseModel):
    jobs: list[Job]


class AuditPage(BaseModel):
    size: int
    root: str
    entries: list[AuditEntry]


class VerifyOut(BaseModel):
    ok: bool
    size: int
    root: str
    problems: list[str]


class QuizStartOut(BaseModel):
    round: list[int]


class AnswerIn(BaseModel):
    quiz_image: int = Field(ge=1, le=2**53)
    answer: Literal["real", "fake"]
    x: Optional[float] = Field(default=None, ge=-1e6, le=1e6)
    y: Optional[float] = Field(default=None, ge=-1e6, le=1e6)


class AnswerOut(BaseModel):
    correct: bool
    hit: Optional[bool] = None
    kind: str
    truth_box: Optional[list[int]] = None
    item_id: int


class ScoresOut(BaseModel):
    mine: list[Score]
    everyone: Optional[list[Score]] = None
    benchmark: float
    summary: dict[str, Any]


class UserIn(BaseModel):
    user: str = Field(pattern=r"^[A-Za-z0-9._@-]{1,64}$")
    role: Literal["viewer", "reviewer", "admin"]
    password: str = Field(min_length=auth.MIN_PASSWORD, max_length=1024)


class UserOut(BaseModel):
    user: str
    role: str
    created: str
    disabled: bool


class UsersOut(BaseModel):
    users: list[UserOut]


class UserChange(BaseModel):
    role: Optional[Literal["viewer", "reviewer", "admin"]] = None
    disabled: Optional[bool] = None


class PasswordChange(BaseModel):
    current: str = Field(min_length=1, max_length=1024)
    new: str = Field(min_length=auth.MIN_PASSWORD, max_length=1024)


class TokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=100)


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    created: str
    revoked: bool


class NewTokenOut(TokenOut):
    token: str


class TokensOut(BaseModel):
    tokens: list[TokenOut]


# ------------------------------------------------------------------------------------- service
@dataclass
class Principal:
    """Who makes a request: the user, their role, and how they proved it."""

    user: str
    role: str
    via: str                      # "session" or "token"
    csrf: str | None = None
    session_hash: str | None = None


class Service:
    """What the application holds: settings, the store, the scan jobs, the pixel cache and the
    login limiter. Created by :func:`create_app`; started and stopped with the application."""

    def __init__(self, settings: ServeSettings, *, run_jobs: bool = True):
        from .render import PixelCache
        from .store import Store

        self.settings = settings
        settings.data.mkdir(parents=True, exist_ok=True)
        for sub in ("uploads", "results"):
            (settings.data / sub).mkdir(exist_ok=True)
        self.store = Store(settings.database_location)
        self.limiter = auth.LoginLimiter(settings.login_attempts, settings.login_window_seconds)
        # loaded images by bytes too: one may take up to the decode budget (2 GiB by default)
        self.pixels = PixelCache(max_items=6, max_bytes=CACHE_BYTES)
        self.heatmaps = PixelCache(max_items=32, max_bytes=CACHE_BYTES // 4)
        self.run_jobs = run_jobs
        self.runner = None
        self._gateway_stop = threading.Event()
        self._gateway_thread: threading.Thread | None = None
        self._quiz_items: dict[int, Any] | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if not self.run_jobs:
            return
        from ..detectors.provenance import provenance_options
        from ..engine import Settings, worker_threads
        from ..fusion import FusionConfig
        from .jobs import JobRunner

        s = self.settings
        trust = list(s.trust)
        if s.demo:
            trust.append(self._demo_folder() / "keys" / "ca.pem")
            if not trust[-1].exists():
                self._make_demo_samples()
        options = provenance_options(trust, s.ledger, s.watermark_key)
        names = tuple(s.detectors) if s.detectors else None
        scan_settings = Settings(names, options or None, FusionConfig(), threads=worker_threads(s.workers))
        self.runner = JobRunner(self.store, s.data, scan_settings, s.workers)
        self.runner.start()
        self._resume_jobs()
        if s.demo and not any(j.kind == "demo" and j.state == "done" for j in self.store.jobs(limit=1000)):
            job = self.store.add_job("medforensics", "demo", message="the demo's images")
            self.submit(job.id, [self._demo_folder() / "originals", self._demo_folder() / "manipulated"])
        if s.quiz_per_kind and not self.store.quiz_images():
            self.build_quiz("medforensics", s.quiz_per_kind)
        if s.gateway_queue:
            self._gateway_thread = threading.Thread(target=self._gateway_loop, name="serve-gateway", daemon=True)
            self._gateway_thread.start()

    def stop(self) -> None:
        self._gateway_stop.set()
        if self._gateway_thread is not None:
            self._gateway_thread.join(timeout=30)
        if self.runner is not None:
            self.runner.stop()
        self.store.close()

    def public(self, message: str) -> str:
        """``message`` without where the service keeps its data (file names stay, relative to it)."""
        return message.replace(f"{self.settings.data.resolve()}/", "").replace(f"{self.settings.data}/", "")

    def submit(self, job_id: int, paths: list[Path], **kw: Any) -> None:
        """Queue a job's files for scanning (without scan workers, ``run_jobs=False``, the job
        stays queued)."""
        if self.runner is not None:
            self.runner.submit(job_id, paths, **kw)

    def _demo_folder(self) -> Path:
        return self.settings.data / "demo"

    def _make_demo_samples(self) -> None:
        from ..demo import make_samples

        folder = self._demo_folder()
        if folder.exists():
            raise MedForensicsError(folder, "exists but holds no demo signer (keys/ca.pem); move it away to remake the demo")
        make_samples(folder)

    def _resume_jobs(self) -> None:
        """Jobs that a stopped service left queued or running are marked failed: an upload is to
        be sent again; the demo, the quiz and the gateway's series are queued again below."""
        for job in self.store.jobs(limit=1000):
            if job.state in ("queued", "running"):
                again = "upload the files again" if job.kind == "upload" else "queued again at this start"
                self.store.update_job(job.id, state="failed", message=f"the service stopped before it finished; {again}")

    def build_quiz(self, who: str, per_kind: int, seed: int | None = None) -> Any:
        """Make a new set of quiz images and queue their scan; the images join the quiz as
        their scan finishes."""
        from .quiz import make_quiz_images

        seed = secrets.randbelow(2**31) if seed is None else seed
        folder = self.settings.data / "quiz" / f"set-{seed}"
        specs = make_quiz_images(folder, per_kind=per_kind, seed=seed)
        job = self.store.add_job(who, "quiz", total=len(specs), message="quiz images")
        by_file = {str(Path(s.path).resolve()): s for s in specs}

        def register(item_id: int, spec: Any) -> None:
            if spec is not None:
                box = None if spec.truth_box is None else [int(v) for v in spec.truth_box]
                self.store.add_quiz_image(spec.kind, item_id, box, seed)
                self._quiz_items = None

        self.submit(job.id, [folder], source="quiz", on_item=register, specs=by_file)
        return job

    # -- the gateway ----------------------------------------------------------------------------
    def gateway_queue(self):
        from ..gateway.queue import Queue

        return Queue(self.settings.gateway_queue)

    def _gateway_loop(self) -> None:
        """Every ``gateway_poll_seconds``: each series the gateway checked becomes an item,
        scanned by the service itself (for its overlays); a series checked again (late
        instances) is scanned again and its item's record replaced, its review state kept."""
        checked: dict[str, str] = {}
        while not self._gateway_stop.is_set():
            try:
                with self.gateway_queue() as q:
                    for series in q.list_series():
                        uid = series.series_instance_uid
                        if checked.get(uid) == series.checked_at:
                            continue
                        item = self.store.item_by_gateway_series(uid)
                        if item is not None and item.record.get("gateway_checked_at") == series.checked_at:
                            checked[uid] = series.checked_at
                            continue
                        files = [Path(i.path) for i in q.instances(uid)]
                        job = self.store.add_job("gateway", "gateway", total=1, message=f"series {uid}")
                        self.submit(job.id, files, source="gateway", gateway_series=uid,
                                    gateway_checked_at=series.checked_at, replace_item=item.id if item else None)
                        checked[uid] = series.checked_at
            except Exception as e:  # noqa: BLE001 - a gateway that is down or busy: try again later
                LOG.warning("gateway queue: %s", one_line(e, 300))
            self._gateway_stop.wait(self.settings.gateway_poll_seconds)

    # -- items -----------------------------------------------------------------------------------
    def quiz_by_item(self) -> dict[int, Any]:
        if self._quiz_items is None:
            self._quiz_items = {q.item_id: q for q in self.store.quiz_images()}
        return self._quiz_items

    def visible_item(self, item_id: int, who: Principal):
        """The item, or 404; a quiz image's item stays hidden (403) from whoever has not answered
        it yet, so that its verdict cannot give the answer away."""
        item = self.store.item(item_id)
        if item is None:
            raise HTTPException(404, f"item {item_id}: no such item")
        if item.source == "quiz" and who.role != "admin":
            quiz = self.quiz_by_item().get(item_id)
            if quiz is None or quiz.id not in self.store.answered(who.user):
                raise HTTPException(403, f"item {item_id}: a quiz image; answer it first")
        return item

    def image(self, item) -> Any:
        from .jobs import load_item_image

        return self.pixels.get(_cache_key(item), lambda: load_item_image(self.settings.data, item.record))

    def item_heatmaps(self, item) -> dict:
        from .render import load_heatmaps

        name = item.record.get("view", {}).get("heatmaps")
        if not name:
            return {}
        return self.heatmaps.get(_cache_key(item), lambda: load_heatmaps(self.settings.data / "results" / name))


def _cache_key(item) -> tuple:
    """What the caches know an item by: its id and its scan (a gateway series scanned again gets
    new files and a new heatmap file, so its pixels are read again)."""
    view = item.record.get("view", {})
    return item.id, view.get("heatmaps"), len(view.get("files", []))


def _service(request: Request) -> Service:
    return request.app.state.service


# ------------------------------------------------------------------------------------- auth
def _principal(request: Request) -> Principal | None:
    svc = _service(request)
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        user = svc.store.token_user(auth.secret_hash(token.strip()))
        return None if user is None or user.disabled else Principal(user.name, user.role, "token")
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    h = auth.secret_hash(cookie)
    session = svc.store.session(h)
    if session is None:
        return None
    user = svc.store.user(session.user)
    if user is None or user.disabled:
        return None
    return Principal(user.name, user.role, "session", session.csrf, h)


def need(role: str):
    """A dependency: the caller, who must be signed in (401) with at least ``role`` (403); a
    call that changes something with a session cookie must carry its CSRF token (403)."""

    def dependency(request: Request) -> Principal:
        who = _principal(request)
        if who is None:
            raise HTTPException(401, "sign in first (a session cookie or an API token)",
                                headers={"WWW-Authenticate": "Bearer"})
        if request.method not in ("GET", "HEAD", "OPTIONS") and who.via == "session":
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent or not secrets.compare_digest(sent, who.csrf or ""):
                raise HTTPException(403, f"missing or wrong CSRF token (send the session's token in {CSRF_HEADER})")
        if not auth.allowed(who.role, role):
            raise HTTPException(403, f"needs the {role} role (you are {who.role})")
        return who

    return dependency


VIEWER, REVIEWER, ADMIN = Depends(need("viewer")), Depends(need("reviewer")), Depends(need("admin"))
ERRORS = {code: {"model": ErrorOut} for code in (400, 401, 403, 404, 409, 413, 415, 429)}
PNG = {200: {"content": {"image/png": {}}, "description": "a PNG image"}}


# ------------------------------------------------------------------------------------- routes
def _item_row(row) -> dict:
    d = asdict(row)
    return {k: d[k] for k in ItemRowOut.model_fields}


def _audit(entry) -> dict:
    return asdict(entry)


def _actions(item, who: Principal, gateway_state: str | None) -> list[str]:
    if not auth.allowed(who.role, "reviewer") or item.source == "quiz":
        return []
    acts = ["confirm", "dismiss"] if item.label in ALARM_LABELS else ["flag"]
    if item.source == "gateway" and gateway_state == "quarantined":
        acts += ["release", "reject"]
    return acts


def _provenance(record: dict) -> dict:
    """The item's proofs of origin: the verdict's summary (``signature:valid watermark:tampered``)
    as one field per proof, and the signers the provenance detector named.

    >>> _provenance({"provenance": "signature:broken watermark:tampered"})
    {'status': 'signature:broken watermark:tampered', 'signature': 'broken', 'watermark': 'tampered'}
    """
    status = record.get("provenance", "unknown")
    out: dict[str, Any] = {"status": status}
    for word in str(status).split():
        what, _, state = word.partition(":")
        if state:
            out[what] = state
    for ev in record.get("evidence", []):
        if ev.get("detector") == "provenance" and (ev.get("details") or {}).get("signers"):
            out["signers"] = ev["details"]["signers"]
    return out


def _attempt(svc: Service, request: Request, user: str) -> tuple[str, str]:
    """Count a password attempt for ``user`` from the caller's address (429 when either is at
    the limit); the limiter's keys, to take the attempt back when it succeeds."""
    address = request.client.host if request.client else "-"
    keys = (f"user:{user.strip().lower()}", f"ip:{address}")
    wait = svc.limiter.attempt(*keys)
    if wait:
        raise HTTPException(429, f"too many failed attempts; try again in {wait} s", headers={"Retry-After": str(wait)})
    return keys


def api_router() -> APIRouter:
    r = APIRouter(prefix="/api", responses=ERRORS)

    # -- sessions ---------------------------------------------------------------------------------
    @r.post("/session", response_model=MeOut, tags=["session"])
    def login(body: LoginIn, request: Request, response: Response) -> dict:
        svc = _service(request)
        keys = _attempt(svc, request, body.user)
        user = svc.store.user(body.user)
        if not auth.verify_password(user.password_hash if user else None, body.password) or user.disabled:
            LOG.info("failed sign-in from %s", keys[1][3:])
            raise HTTPException(401, "wrong user name or password")
        svc.limiter.succeeded(*keys)
        token, h = auth.new_secret()
        csrf = secrets.token_urlsafe(24)
        hours = svc.settings.session_hours
        svc.store.add_session(h, user.name, csrf, time.time() + hours * 3600)
        # Secure as configured, and whenever the browser came over HTTPS (directly, or through a
        # TLS proxy in front of a service on loopback that says so); a cookie may always be Secure
        https = request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"
        secure = svc.settings.cookie_secure == "true" or (svc.settings.cookie_secure == "auto" and
                                                          (svc.settings.secure_cookies() or https))
        response.set_cookie(SESSION_COOKIE, token, max_age=int(hours * 3600), httponly=True, samesite="strict",
                            secure=secure, path="/")
        return {"user": user.name, "role": user.role, "csrf": csrf}

    @r.delete("/session", status_code=204, tags=["session"])
    def logout(request: Request, who: Principal = VIEWER) -> Response:
        if who.session_hash:
            _service(request).store.drop_session(who.session_hash)
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @r.get("/me", response_model=MeOut, tags=["session"])
    def me(who: Principal = VIEWER) -> dict:
        return {"user": who.user, "role": who.role, "csrf": who.csrf}

    # -- work list ----------------------------------------------------------------------------------
    @r.get("/items", response_model=ItemsPage, tags=["items"])
    def items(request: Request, who: Principal = VIEWER,
              label: list[LabelName] = Query(default=[]),
              modality: list[str] = Query(default=[], max_length=20),
              review: list[ReviewState] = Query(default=[]),
              detector: Optional[str] = Query(default=None, pattern=r"^[A-Za-z0-9_.#-]{1,100}$"),
              since: Optional[date] = None, until: Optional[date] = None,
              text: Optional[str] = Query(default=None, max_length=200),
              source: Optional[Literal["scan", "gateway"]] = None, job: Optional[int] = Query(default=None, ge=1, le=2**53),
              sort: Literal["suspicion", "newest", "oldest", "name"] = "suspicion",
              offset: int = Query(default=0, ge=0, le=10**9), limit: int = Query(default=100, ge=1, le=1000)) -> dict:
        total, rows = _service(request).store.list_items(
            label=label or None, modality=modality or None, review=review or None, detector=detector,
            since=since.isoformat() if since else None, until=until.isoformat() if until else None, text=text, source=source, job=job, sort=sort, offset=offset, limit=limit)
        return {"total": total, "offset": offset, "limit": limit, "items": [_item_row(x) for x in rows]}

    @r.get("/facets", response_model=FacetsOut, tags=["items"])
    def facets(request: Request, who: Principal = VIEWER) -> dict:
        f = _service(request).store.facets()
        return {k: list(f.get(k, [])) for k in FacetsOut.model_fields}

    @r.get("/items/{item_id}", response_model=ItemOut, tags=["items"])
    def item(item_id: Id, request: Request, who: Principal = VIEWER) -> dict:
        svc = _service(request)
        it = svc.visible_item(item_id, who)
        view = it.record.get("view", {})
        gateway = None
        if it.gateway_series and svc.settings.gateway_queue:
            try:
                with svc.gateway_queue() as q:
                    s = q.series(it.gateway_series)
                gateway = None if s is None else {"series": s.series_instance_uid, "state": s.state, "label": s.label,
                                                  "score": s.score, "decision": s.decision, "checked_at": s.checked_at}
            except MedForensicsError as e:
                gateway = {"series": it.gateway_series, "state": "unknown", "error": str(e)}
        heat = svc.item_heatmaps(it)
        overlays = [e["detector"] for e in it.record.get("evidence", []) if e["detector"] in heat]
        return {**_item_row(it), "record": {k: v for k, v in it.record.items() if k != "view"},
                "shape": [int(v) for v in view.get("shape", [])],
                "window": [float(v) for v in view.get("window", [0.0, 1.0])], "overlays": overlays,
                "provenance": _provenance(it.record), "decisions": [_audit(e) for e in svc.store.decisions(item_id)],
                "gateway": gateway, "actions": _actions(it, who, gateway["state"] if gateway else None)}

    @r.get("/items/{item_id}/header", response_model=HeaderOut, tags=["items"])
    def header(item_id: Id, request: Request, who: Principal = VIEWER) -> dict:
        from .render import header_rows

        svc = _service(request)
        it = svc.visible_item(item_id, who)
        return {"rows": [{k: str(v) for k, v in row.items()} for row in header_rows(_image_or_error(svc, it))]}

    @r.get("/items/{item_id}/slices/{k}.png", response_class=Response, responses=PNG, tags=["pixels"])
    def slice_png(item_id: Id, k: SliceIndex, request: Request, who: Principal = VIEWER,
                  center: Optional[float] = Query(default=None, ge=-1e7, le=1e7),
                  width: Optional[float] = Query(default=None, gt=0, le=1e7)) -> Response:
        from .render import slice_png as render

        svc = _service(request)
        it = svc.visible_item(item_id, who)
        image = _image_or_error(svc, it)
        window = it.record.get("view", {}).get("window") or [None, None]
        try:
            png = render(image, k, center if center is not None else window[0], width if width is not None else window[1])
        except MedForensicsError as e:
            raise HTTPException(404, svc.public(str(e))) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @r.get("/items/{item_id}/overlays/{detector}/{k}.png", response_class=Response, responses=PNG, tags=["pixels"])
    def overlay_png(item_id: Id, detector: str, k: SliceIndex, request: Request, who: Principal = VIEWER) -> Response:
        from .render import overlay_png as render

        svc = _service(request)
        it = svc.visible_item(item_id, who)
        heat = svc.item_heatmaps(it)
        if detector not in heat:
            raise HTTPException(404, f"item {item_id}: no heatmap of {detector!r}")
        shape = it.record.get("view", {}).get("shape")
        try:
            png = render(heat, detector, tuple(shape), k)
        except MedForensicsError as e:
            raise HTTPException(404, svc.public(str(e))) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    # -- decisions ----------------------------------------------------------------------------------
    @r.post("/items/{item_id}/decisions", response_model=AuditEntry, tags=["decisions"])
    def decide(item_id: Id, body: DecisionIn, request: Request, who: Principal = REVIEWER) -> dict:
        svc = _service(request)
        it = svc.visible_item(item_id, who)
        gateway_state = None
        if it.gateway_series and svc.settings.gateway_queue:
            try:
                with svc.gateway_queue() as q:
                    s = q.series(it.gateway_series)
                    gateway_state = s.state if s else None
            except MedForensicsError as e:
                raise HTTPException(409, f"the gateway's queue cannot be read now: {one_line(e, 200)}") from None
        if body.action not in _actions(it, who, gateway_state):
            raise HTTPException(409, f"item {item_id}: cannot {body.action} it (allowed: "
                                     f"{', '.join(_actions(it, who, gateway_state)) or 'nothing'})")
        if body.action in ("release", "reject"):
            # the gateway's own action first; the service's trail records it once it happened
            try:
                with svc.gateway_queue() as q:
                    q.decide(it.gateway_series, body.action, who.user, body.note)
            except MedForensicsError as e:     # another reviewer was quicker
                raise HTTPException(409, one_line(e, 300)) from None
        return _audit(svc.store.decide(item_id, body.action, who.user, body.note))

    # -- jobs ----------------------------------------------------------------------------------------
    @r.get("/jobs", response_model=JobsOut, tags=["jobs"])
    def jobs(request: Request, who: Principal = VIEWER) -> dict:
        return {"jobs": [asdict(j) for j in _service(request).store.jobs(limit=50)]}

    @r.get("/jobs/{job_id}", response_model=Job, tags=["jobs"])
    def job(job_id: Id, request: Request, who: Principal = VIEWER) -> dict:
        j = _service(request).store.job(job_id)
        if j is None:
            raise HTTPException(404, f"job {job_id}: no such job")
        return asdict(j)

    @r.post("/jobs", response_model=Job, status_code=201, tags=["jobs"],
            openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["files"],
                "properties": {"files": {"type": "array", "minItems": 1,
                                         "items": {"type": "string", "format": "binary"}}}}}}}})
    async def upload(request: Request, who: Principal = REVIEWER) -> dict:
        from .uploads import receive_upload

        svc = _service(request)
        job = await receive_upload(request, svc, who.user)
        return asdict(job)

    # -- audit ----------------------------------------------------------------------------------------
    @r.get("/audit", response_model=AuditPage, tags=["audit"])
    def audit(request: Request, who: Principal = REVIEWER, offset: int = Query(default=0, ge=0, le=10**9),
              limit: int = Query(default=100, ge=1, le=1000)) -> dict:
        store = _service(request).store
        size, root = store.audit_head()
        return {"size": size, "root": root, "entries": [_audit(e) for e in store.audit(offset=offset, limit=limit)]}

    @r.get("/audit/verify", response_model=VerifyOut, tags=["audit"])
    def audit_verify(request: Request, who: Principal = ADMIN,
                     head: Optional[str] = Query(default=None, pattern=r"^[0-9]{1,15}:[0-9a-fA-F]{64}$",
                                                 description="an earlier tree head, SIZE:ROOT")) -> dict:
        """The trail's hashes, and with ``head`` that it still holds that earlier tree head."""
        store = _service(request).store
        if head is None:
            problems = store.audit_verify()
        else:
            size, _, root = head.partition(":")
            problems = store.audit_verify_against(int(size), root)
        size, root = store.audit_head()
        return {"ok": not problems, "size": size, "root": root, "problems": problems}

    @r.get("/audit/export", response_class=Response, tags=["audit"],
           responses={200: {"content": {"application/x-ndjson": {}}, "description": "the audit trail as JSON lines"}})
    def audit_export(request: Request, who: Principal = ADMIN) -> Response:
        import tempfile

        store = _service(request).store
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "audit.jsonl"
            store.audit_export(out)
            body = out.read_bytes()
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="medforensics-audit.jsonl"'})

    # -- quiz -----------------------------------------------------------------------------------------
    @r.post("/quiz/start", response_model=QuizStartOut, tags=["quiz"])
    def quiz_start(request: Request, who: Principal = VIEWER) -> dict:
        from .quiz import quiz_round

        store = _service(request).store
        seed = zlib.crc32(who.user.encode()) ^ int(time.time() // 86400)
        return {"round": list(quiz_round(store.quiz_images(), store.answered(who.user), seed=seed))}

    @r.get("/quiz/images/{quiz_image}.png", response_class=Response, responses=PNG, tags=["quiz"])
    def quiz_image(quiz_image: Id, request: Request, who: Principal = VIEWER) -> Response:
        from .render import slice_png as render

        svc = _service(request)
        q = next((q for q in svc.store.quiz_images() if q.id == quiz_image), None)
        if q is None:
            raise HTTPException(404, f"quiz image {quiz_image}: no such image")
        it = svc.store.item(q.item_id)
        if it is None:
            raise HTTPException(404, f"quiz image {quiz_image}: its image is gone")
        window = it.record.get("view", {}).get("window") or [None, None]
        return Response(render(_image_or_error(svc, it), 0, *window), media_type="image/png",
                        headers={"Cache-Control": "private, no-store"})

    @r.post("/quiz/answers", response_model=AnswerOut, tags=["quiz"])
    def quiz_answer(body: AnswerIn, request: Request, who: Principal = VIEWER) -> dict:
        svc = _service(request)
        q = next((q for q in svc.store.quiz_images() if q.id == body.quiz_image), None)
        if q is None:
            raise HTTPException(404, f"quiz image {body.quiz_image}: no such image")
        try:
            a = svc.store.add_answer(who.user, q.id, body.answer, body.x, body.y, once=True)
        except AlreadyAnswered as e:
            raise HTTPException(409, str(e)) from None
        return {"correct": a.correct, "hit": a.hit, "kind": q.kind,
                "truth_box": None if q.truth_box is None else [int(v) for v in q.truth_box], "item_id": q.item_id}

    @r.get("/quiz/scores", response_model=ScoresOut, tags=["quiz"])
    def quiz_scores(request: Request, who: Principal = VIEWER) -> dict:
        from .quiz import STUDY_ACCURACY, summarise

        store = _service(request).store
        mine = store.scores(who.user)
        everyone = store.scores() if who.role == "admin" else None
        return {"mine": [asdict(s) for s in mine], "everyone": None if everyone is None else [asdict(s) for s in everyone],
                "benchmark": STUDY_ACCURACY, "summary": _jsonable(summarise(everyone if everyone is not None else mine))}

    # -- users and tokens ---------------------------------------------------------------------------
    @r.get("/users", response_model=UsersOut, tags=["users"])
    def users(request: Request, who: Principal = ADMIN) -> dict:
        return {"users": [{"user": u.name, "role": u.role, "created": u.created, "disabled": u.disabled}
                          for u in _service(request).store.users()]}

    @r.post("/users", response_model=UserOut, status_code=201, tags=["users"])
    def add_user(body: UserIn, request: Request, who: Principal = ADMIN) -> dict:
        store = _service(request).store
        if store.user(body.user) is not None:
            raise HTTPException(409, f"user {body.user!r} exists")
        try:
            auth.check_password(body.password, body.user)
        except MedForensicsError as e:
            raise HTTPException(400, str(e)) from None
        u = store.add_user(body.user, body.role, auth.hash_password(body.password))
        store.audit_append(who.user, "add-user", f"user:{u.name}", "", u.role)
        return {"user": u.name, "role": u.role, "created": u.created, "disabled": u.disabled}

    @r.put("/users/{name}", response_model=UserOut, tags=["users"])
    def change_user(name: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9._@-]{1,64}$")], body: UserChange,
                    request: Request, who: Principal = ADMIN) -> dict:
        store = _service(request).store
        u = store.user(name)
        if u is None:
            raise HTTPException(404, f"user {name!r}: no such user")
        if name == who.user and (body.disabled or (body.role and body.role != "admin")):
            raise HTTPException(409, "an admin cannot disable or demote themselves (ask another admin)")
        if body.role is not None and body.role != u.role:
            store.set_role(name, body.role)
            store.audit_append(who.user, "set-role", f"user:{name}", u.role, body.role)
        if body.disabled is not None and body.disabled != u.disabled:
            store.set_disabled(name, body.disabled)   # a disabled user's sessions end, their tokens stop
            store.audit_append(who.user, "disable-user" if body.disabled else "enable-user", f"user:{name}",
                               "disabled" if u.disabled else "active", "disabled" if body.disabled else "active")
        u = store.user(name)
        return {"user": u.name, "role": u.role, "created": u.created, "disabled": u.disabled}

    @r.post("/me/password", status_code=204, tags=["session"])
    def change_password(body: PasswordChange, request: Request, who: Principal = VIEWER) -> Response:
        svc = _service(request)
        keys = _attempt(svc, request, who.user)
        user = svc.store.user(who.user)
        if not auth.verify_password(user.password_hash, body.current):
            raise HTTPException(403, "the current password is wrong")
        svc.limiter.succeeded(*keys)
        try:
            auth.check_password(body.new, who.user)
        except MedForensicsError as e:
            raise HTTPException(400, str(e)) from None
        svc.store.set_password_hash(who.user, auth.hash_password(body.new))
        svc.store.drop_sessions(who.user)            # every session signs in again, this one too
        svc.store.audit_append(who.user, "change-password", f"user:{who.user}", "", "")
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @r.get("/tokens", response_model=TokensOut, tags=["users"])
    def tokens(request: Request, who: Principal = VIEWER) -> dict:
        store = _service(request).store
        return {"tokens": [asdict(t) for t in store.tokens(None if who.role == "admin" else who.user)]}

    @r.post("/tokens", response_model=NewTokenOut, status_code=201, tags=["users"])
    def new_token(body: TokenIn, request: Request, who: Principal = VIEWER) -> dict:
        store = _service(request).store
        token, h = auth.new_secret()
        t = store.add_token(who.user, body.name, h)
        store.audit_append(who.user, "add-token", f"token:{t.id}", "", body.name)
        return {**asdict(t), "token": token}

    @r.delete("/tokens/{token_id}", status_code=204, tags=["users"])
    def revoke_token(token_id: Id, request: Request, who: Principal = VIEWER) -> Response:
        store = _service(request).store
        t = next((t for t in store.tokens(None) if t.id == token_id), None)
        if t is None or (t.user != who.user and who.role != "admin"):
            raise HTTPException(404, f"token {token_id}: no such token")
        if not t.revoked:
            store.revoke_token(token_id)
            store.audit_append(who.user, "revoke-token", f"token:{t.id}", "active", "revoked")
        return Response(status_code=204)

    return r


def _image_or_error(svc: Service, item) -> Any:
    try:
        return svc.image(item)
    except MedForensicsError as e:
        raise HTTPException(404, svc.public(one_line(e, 300))) from None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))


# ------------------------------------------------------------------------------------- pages
PAGES = {"/": ("worklist.html", "viewer"), "/quiz": ("quiz.html", "viewer"), "/account": ("account.html", "viewer"),
         "/quiz/results": ("quiz_results.html", "viewer"), "/audit": ("audit.html", "reviewer"),
         "/admin": ("admin.html", "admin")}


def _login_url(request: Request) -> str:
    """The login page, asked to come back to this page with its query (filters) afterwards."""
    from urllib.parse import quote

    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/login?next={quote(here, safe='/')}"


def _templates() -> Environment:
    return Environment(loader=PackageLoader("medforensics.serve", "templates"), autoescape=select_autoescape(["html"]))


def pages_router() -> APIRouter:
    r = APIRouter(include_in_schema=False)
    env = _templates()

    def render(name: str, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context))

    def page(template: str, role: str):
        def view(request: Request) -> Response:
            who = _principal(request)
            if who is None:
                return RedirectResponse(_login_url(request), status_code=303)
            if not auth.allowed(who.role, role):
                return HTMLResponse(f'<p>This page needs the {role} role. <a href="/">Back to the work list</a></p>',
                                    status_code=403)
            return render(template, user=who.user, role=who.role, csrf=who.csrf or "", page=template[:-5])

        return view

    for path, (template, role) in PAGES.items():
        r.add_api_route(path, page(template, role), methods=["GET"], response_class=HTMLResponse)

    @r.get("/items/{item_id}", response_class=HTMLResponse)
    def viewer(item_id: Id, request: Request) -> Response:
        who = _principal(request)
        if who is None:
            return RedirectResponse(_login_url(request), status_code=303)
        return render("viewer.html", user=who.user, role=who.role, csrf=who.csrf or "", page="viewer", item_id=item_id)

    @r.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> Response:
        return render("login.html", page="login")

    return r


# ------------------------------------------------------------------------------------- the app
class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` (by its Content-Length, or counted as
    it streams) is answered 413 before any route reads it, except on the ``exempt`` paths
    (uploads, which have their own limit). FastAPI reads a body before a route's dependencies
    run, so without this a caller with no session could make the service hold any body."""

    def __init__(self, app, max_bytes: int, exempt: tuple[str, ...] = ()):
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send)
        received = 0
        too_large = False

        async def counted():
            nonlocal received, too_large
            if too_large:                   # the body was cut short: nothing more comes
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True        # the route sees an end; its answer is replaced below
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        refused = False

        async def answer(message):
            nonlocal refused
            if not too_large:
                return await send(message)
            if not refused:
                refused = True
                await self._refuse(send)

        await self.app(scope, counted, answer)

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes // 1024} KB"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *((k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: ServeSettings, *, run_jobs: bool = True) -> FastAPI:
    """The review service's application for ``settings`` (``run_jobs=False``: no scan workers,
    for tests of the API alone)."""
    service = Service(settings, run_jobs=run_jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(title="medforensics review service", version=_version(), lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None,
                  description="Work lists, a viewer, decisions with an audit trail and a quiz over medforensics scans.")
    app.state.service = service

    @app.exception_handler(MedForensicsError)
    async def _medforensics_error(request: Request, exc: MedForensicsError) -> JSONResponse:
        return JSONResponse({"detail": service.public(one_line(exc, 400))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's answer without the "input" it echoes: a password, or a whole oversized body
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.middleware("http")
    async def _headers(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if "cache-control" not in response.headers and (
                request.url.path.startswith("/api") or response.headers.get("content-type", "").startswith("text/html")):
            response.headers["Cache-Control"] = "no-store"      # answers and pages (they hold the CSRF token)
        # no query strings, names or bodies in the log: they may carry patient data
        LOG.info("%s %s %d %.0f ms", request.method, request.url.path, response.status_code,
                 (time.perf_counter() - t0) * 1000)
        return response

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY, exempt=("/api/jobs",))
    app.include_router(api_router())
    app.include_router(pages_router())

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(who: Principal = VIEWER) -> JSONResponse:
        return JSONResponse(app.openapi())

    static = Path(__file__).parent / "static"
    app.mount("/static", StaticFiles(directory=static), name="static")
    return app


def _version() -> str:
    from .. import __version__

    return __version__
