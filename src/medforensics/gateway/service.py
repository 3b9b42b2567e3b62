"""The running gateway: a Storage SCP, a checker and a forwarder around one durable queue.

* **Receive** (:meth:`Gateway.on_store`, one pynetdicom thread per association): the instance is
  written to the spool as it arrived and fsync'd, its state ``received`` committed to the
  queue, and only then is success returned. A refusal is a DICOM failure status: 0x0124 (a
  peer not on the allow-list), 0xA700 (larger than ``max_instance_mb``), 0xA900 (the dataset
  does not match the request), 0xC210 (it cannot be parsed).
* **Check** (a thread, scans in worker processes): a series is checked once no instance came
  for ``idle_seconds``, or at once when it reached the count its headers announce
  (ImagesInAcquisition); a projection radiograph or a multi-frame instance is checked as it
  comes. The check is the scan's, exactly (:func:`medforensics.scan.scan_source`: the same
  detectors, fusion and provenance checks), and it writes a DICOM SR and, where something is
  suspicious, a SEG (:mod:`.results`). The policy (:mod:`.policy`) decides: forward, forward
  with the results, or quarantine.
* **Forward** (a thread): a C-STORE SCU to the archive sends each instance as it was received
  (the file's bytes, never transcoded), then marks it ``forwarded``; while the archive is down
  it retries with a doubling wait, and nothing is dropped. A quarantined series waits for
  ``gateway release`` or ``gateway reject`` (an audit entry each).

On start the gateway resumes from the queue: series received but not checked are checked,
checked ones not yet forwarded are forwarded. An instance is marked only after the work its new
state records is durable, so a crash at any point redoes at most the last step (an instance
sent twice reaches the archive once: it is keyed by SOPInstanceUID).
"""
from __future__ import annotations

import logging
import multiprocessing
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import MedForensicsError, Verdict, one_line
from .config import GatewayConfig
from .policy import ACTIONS, Policy, load_policy
from .spool import Spool, valid_uid

__all__ = ["Gateway", "TRANSFER_SYNTAXES"]

LOG = logging.getLogger("medforensics.gateway")

#: The transfer syntaxes the gateway accepts: those the loader decodes. Compressed ones are stored
#: and forwarded as received.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",        # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",      # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",   # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",      # Explicit VR Big Endian
    "1.2.840.10008.1.2.4.50",   # JPEG Baseline
    "1.2.840.10008.1.2.4.51",   # JPEG Extended
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",   # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",   # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",   # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",      # RLE Lossless
]

#: Modalities whose series are checked image by image as they come (one projection each).
SINGLE_IMAGE_MODALITIES = {"CR", "DX", "MG", "IO", "PX", "RG", "XA", "RF", "OT", "SC"}

#: C-STORE statuses the archive may answer for a stored instance.
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass
class _Check:
    series: str
    sops: list[str]
    future: Future


@dataclass
class Stats:
    """What the gateway did since it started (for the log and the benchmark)."""

    received: int = 0
    refused: int = 0
    checked_series: int = 0
    forwarded: int = 0
    quarantined: int = 0
    archive_failures: int = 0
    first_received: float | None = None
    last_forwarded: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, n in counts.items():
                setattr(self, k, getattr(self, k) + n)


def check_batch(files: list[str], results_dir: str, settings: Any, policy: Policy,
                signer: tuple[str, str, str | None] | None = None) -> list[dict]:
    """In a worker process: scan ``files`` (one batch of a series) as ``scan`` does, decide each
    item by ``policy``, sign and log the instances of an item that passes (``signer``: key,
    certificate, log) and write its DICOM results (which then say so). One
    ``{"verdict", "action", "why", "results": [paths], "signed": {spool path: signed copy}}`` per item."""
    from ..engine import worker_detectors
    from ..io import discover
    from ..scan import scan_source
    from .results import write_results

    detectors = worker_detectors(settings)
    signing = _signer(signer) if signer else None
    sources, _ = discover(files)
    items = []
    for n, src in enumerate(sources):
        item: dict = {"results": [], "signed": {}}

        def then(verdict: Verdict, image, n=n, item=item) -> None:
            item["action"], item["why"] = policy.decide(verdict)
            note = None
            if signing is not None and item["action"] != "quarantine":
                item["signed"] = signing.sign([str(p) for p in image.sources])
                note = signing.note()
            folder = Path(results_dir) / f"item{n}"
            folder.mkdir(exist_ok=True)
            item["results"] = [str(p) for p in write_results(verdict, image, folder, signed=note)]

        verdict = scan_source(src, detectors, settings.config, threads=settings.threads, then=then)
        if "action" not in item or verdict.score is None:   # unreadable, or the analysis failed
            item["action"], item["why"] = policy.decide(verdict)
            item["signed"] = {}
        item["verdict"] = verdict.to_dict()
        items.append(item)
    return items


_SIGNERS: dict = {}


def _signer(args: tuple[str, str, str | None]):
    """The worker's signer for ``args`` (loaded once per process)."""
    from .provenance import Signer

    if args not in _SIGNERS:
        _SIGNERS[args] = Signer(*args)
    return _SIGNERS[args]


def _decide(items: list[dict]) -> tuple[str, str, dict]:
    """The batch's action (the most cautious of its items'), why, and a summary to record."""
    if not items:
        return "forward", "no image in the batch (nothing for the detectors to check)", {"items": []}
    rows = [(it["action"], it["why"], Verdict.from_dict(it["verdict"])) for it in items]
    action, why, _ = max(rows, key=lambda r: (ACTIONS.index(r[0]), r[2].score or 0.0))
    summary = {"items": [{"path": v.path, "label": v.label, "score": v.score, "provenance": v.provenance,
                          "errors": v.errors[:5], "action": a, "why": w} for a, w, v in rows],
               "signed": {k: v for it in items for k, v in it["signed"].items()}}
    return action, why, summary


def _results_by_kind(paths: list[str]) -> tuple[str | None, str | None]:
    """The first Structured Report and the first Segmentation among ``paths`` (by SOP class)."""
    from pydicom import dcmread

    sr = seg = None
    for p in paths:
        cls = str(dcmread(p, stop_before_pixels=True).SOPClassUID)
        if cls.startswith("1.2.840.10008.5.1.4.1.1.88.") and sr is None:
            sr = p
        elif cls == "1.2.840.10008.5.1.4.1.1.66.4" and seg is None:
            seg = p
    return sr, seg


class Gateway:
    """One gateway: ``start()`` opens the SCP and the threads, ``stop()`` closes them."""

    def __init__(self, config: GatewayConfig):
        from .queue import Queue

        self.config = config
        # everything that can be refused is checked before anything is created on disk
        self.policy = load_policy(config.policy)
        self._settings = self._scan_settings()
        if config.sign_with:   # an unusable key, certificate or log now, not at the first series
            from .provenance import Signer

            Signer(*config.sign_with, log=config.log)
        self.spool = Spool(config.spool)
        self.queue = Queue(config.queue_location)
        self.stats = Stats()
        self._stop = threading.Event()
        self._expected: dict[str, int] = {}
        self._single: set[str] = set()
        self._checks: dict[str, _Check] = {}
        self._threads: list[threading.Thread] = []
        self._server = None
        self._pool: ProcessPoolExecutor | None = None
        self._backoff: float | None = None

    # ------------------------------------------------------------------ set-up
    def _scan_settings(self):
        from ..detectors.provenance import provenance_options
        from ..engine import Settings, worker_threads
        from ..fusion import FusionConfig

        options = provenance_options(self.config.trust, self.config.ledger, self.config.watermark_key)
        names = tuple(self.config.detectors) if self.config.detectors else None
        return Settings(names, options or None, FusionConfig(), threads=worker_threads(self.config.workers))

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.config.tls_cert, self.config.tls_key)
            if self.config.tls_ca is not None:
                ctx.load_verify_locations(self.config.tls_ca)
                ctx.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as e:
            raise MedForensicsError(self.config.tls_cert, f"TLS: {one_line(e, 200)}") from None
        return ctx

    def start(self) -> None:
        """Resume from the queue, open the worker processes and threads, listen."""
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        from pynetdicom import _config

        # the forwarder sends each file's data set as stored (never decoded or transcoded): the
        # accepted context must then match the file's own transfer syntax, which it requests. (A
        # pynetdicom setting of the whole process: the gateway's process sends nothing else.)
        _config.STORE_SEND_CHUNKED_DATASET = True
        recovered = self.queue.recover()
        if recovered["to_check"] or recovered["to_forward"] or recovered["quarantined"]:
            LOG.warning("resuming: %d series to check, %d to forward, %d held in quarantine",
                        len(recovered["to_check"]), len(recovered["to_forward"]), len(recovered["quarantined"]))
        if recovered["missing"]:
            LOG.error("%d unfinished instance(s) have lost their spool file and can be neither checked nor sent: %s",
                      len(recovered["missing"]), ", ".join(map(str, recovered["missing"][:5])))
        self._pool = ProcessPoolExecutor(self.config.workers, mp_context=multiprocessing.get_context("spawn"))
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.maximum_pdu_size = self.config.max_pdu
        ae.require_calling_aet = [a.partition("@")[0] for a in self.config.allow]
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, self.on_echo), (evt.EVT_CONN_OPEN, _no_delay)]
        try:
            self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers,
                                           ssl_context=self._ssl_context())
        except OSError as e:
            raise MedForensicsError(f"{self.config.host}:{self.config.port}", f"cannot listen: {one_line(e)}") from None
        for name, target in (("checker", self._check_loop), ("forwarder", self._forward_loop)):
            t = threading.Thread(target=target, name=f"gateway-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        """Stop listening, let the threads finish their step, close the queue."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        for t in self._threads:
            t.join(timeout=30)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.queue.close()

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe in a signal handler); then call :meth:`stop`."""
        self._stop.set()

    def wait(self) -> None:
        """Block until :meth:`request_stop` or :meth:`stop` is called."""
        while not self._stop.wait(0.5):
            pass

    # ------------------------------------------------------------------ receive
    def _peer_allowed(self, event) -> bool:
        req = event.assoc.requestor
        return self.config.allowed(str(req.ae_title), str(req.address))

    def on_echo(self, event) -> int:
        return 0x0000 if self._peer_allowed(event) else 0x0124

    def on_store(self, event) -> int:
        """Spool, record, then acknowledge (see the module's description)."""
        req = event.assoc.requestor
        if not self._peer_allowed(event):
            self.stats.add(refused=1)
            LOG.warning("refused an instance from %s@%s: not on the allow-list", req.ae_title, req.address)
            return 0x0124
        try:
            data = event.encoded_dataset(include_meta=True)
        except Exception as e:  # noqa: BLE001 - the peer's bytes: any decoding problem is a refusal
            LOG.warning("refused an instance from %s: %s", req.ae_title, one_line(e, 200))
            self.stats.add(refused=1)
            return 0xC210
        if len(data) > self.config.max_instance_mb * 2**20:
            self.stats.add(refused=1)
            LOG.warning("refused an instance of %.0f MB from %s (max_instance_mb %s)", len(data) / 2**20,
                        req.ae_title, self.config.max_instance_mb)
            return 0xA700
        try:
            ds = event.dataset
            sop = valid_uid(ds.SOPInstanceUID, "SOPInstanceUID")
            series = valid_uid(ds.SeriesInstanceUID, "SeriesInstanceUID")
            study = valid_uid(ds.StudyInstanceUID, "StudyInstanceUID")
            sop_class = str(ds.SOPClassUID)
            modality = str(ds.get("Modality", "") or "")
            expected = int(ds.get("ImagesInAcquisition", 0) or 0)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        except Exception as e:  # noqa: BLE001 - a malformed dataset is the sender's failure, not ours
            self.stats.add(refused=1)
            LOG.warning("refused an instance from %s: cannot be parsed (%s)", req.ae_title, one_line(e, 200))
            return 0xC210
        if sop != str(event.request.AffectedSOPInstanceUID) or sop_class != str(event.request.AffectedSOPClassUID):
            self.stats.add(refused=1)
            return 0xA900
        try:
            path = self.spool.write(data, study, series, sop)
            new = self.queue.add_instance(sop_instance_uid=sop, series_instance_uid=series, study_instance_uid=study,
                                          sop_class_uid=sop_class,
                                          transfer_syntax_uid=str(event.context.transfer_syntax), path=str(path),
                                          calling_ae=str(req.ae_title).strip(), peer=str(req.address),
                                          size=len(data))
        except Exception as e:  # noqa: BLE001 - a full disk or a failing queue: refuse, never acknowledge
            self.stats.add(refused=1)
            LOG.error("could not keep an instance from %s: %s", req.ae_title, one_line(e, 300))
            return 0xA700
        if not new:
            # sent again while the first copy is still in the queue: that copy is checked and sent;
            # an identical resend is dropped, a different one kept beside it as evidence
            first = self.queue.instance(sop)
            if first is not None and Path(first.path).read_bytes() == data:
                path.unlink()
            else:
                LOG.warning("instance %s came again with different content while the first is in the queue: "
                            "kept as %s, not forwarded", sop, path)
            return 0x0000
        if modality in SINGLE_IMAGE_MODALITIES or frames > 1:
            self._single.add(series)
        elif expected > 0:
            self._expected[series] = expected
        with self.stats.lock:
            self.stats.received += 1
            if self.stats.first_received is None:
                self.stats.first_received = time.monotonic()
        return 0x0000

    # ------------------------------------------------------------------ check
    def _check_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._check_step()
            except Exception as e:  # noqa: BLE001 - the loop must outlive one bad step; it is logged
                LOG.error("checker: %s", one_line(e, 300))
            self._stop.wait(0.2)

    def _check_step(self) -> None:
        expected = {s: 1 for s in self._single}
        expected.update(self._expected)
        for series in self.queue.ready_series(self.config.idle_seconds, expected=expected):
            if series in self._checks:
                continue
            rows = self.queue.instances(series, state="received")
            if not rows:
                continue
            folder = self.spool.results_folder(series)
            signer = (*map(str, self.config.sign_with), self.config.log) if self.config.sign_with else None
            fut = self._pool.submit(check_batch, [r.path for r in rows], str(folder), self._settings, self.policy,
                                    signer)
            self._checks[series] = _Check(series, [r.sop_instance_uid for r in rows], fut)
        for series, chk in list(self._checks.items()):
            if not chk.future.done():
                continue
            del self._checks[series]
            try:
                items = chk.future.result()
            except Exception as e:  # noqa: BLE001 - a worker that died: the batch is held, never passed
                failed = Verdict(path=series, kind="series", uid=series, n_instances=len(chk.sops), score=None,
                                 label=None, errors=[f"{series}: the check failed ({one_line(e, 200)})"])
                items = [{"verdict": failed.to_dict(), "results": [], "signed": {},
                          **dict(zip(("action", "why"), self.policy.decide(failed)))}]
            self._record(series, chk.sops, items)

    def _record(self, series: str, sops: list[str], items: list[dict]) -> None:
        """Record a finished check: its instances ``scanned``, then forwarded or held (the queue
        holds a part of a series that is already held, whatever its own check said)."""
        action, why, summary = _decide(items)
        summary["results"] = [p for item in items for p in item["results"]]
        sr, seg = _results_by_kind(summary["results"])
        worst = max(summary["items"], key=lambda i: (i["score"] or 0.0), default={})
        summary["why"] = why
        rec = self.queue.record_check(series, label=worst.get("label") or "error", score=worst.get("score"),
                                      decision=action, result=summary, sr_path=sr, seg_path=seg, instances=sops)
        self.stats.add(checked_series=1)
        if rec.state == "quarantined":
            self.stats.add(quarantined=len(sops))
        LOG.info("series %s: %s (%s)", series, rec.state, why)

    # ------------------------------------------------------------------ forward
    def _forward_loop(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                pending = self.queue.to_forward()
            except Exception as e:  # noqa: BLE001 - e.g. PostgreSQL restarting: try again
                LOG.error("forwarder: %s", one_line(e, 300))
                wait = 1.0
                continue
            if not pending:
                wait = 0.2
                continue
            if self.config.archive is None:
                wait = 1.0
                continue
            try:
                for series in pending:
                    if self._stop.is_set():
                        break
                    self._forward(series)
                wait = 0.0
                self._backoff = None
            except ArchiveUnavailable as e:
                self.stats.add(archive_failures=1)
                back = self._backoff or self.config.archive.retry_seconds
                LOG.warning("archive unavailable (%s); retrying in %.0f s", e, back)
                wait = back
                self._backoff = min(back * 2, self.config.archive.max_retry_seconds)

    def _forward(self, series: str) -> None:
        from pydicom import dcmread
        from pynetdicom import AE

        record = self.queue.series(series)
        rows = self.queue.pending(series)
        if record is None or not rows:
            return
        signed = (record.result or {}).get("signed", {})
        files = []
        for r in rows:
            path, ts = signed.get(r.path, r.path), r.transfer_syntax_uid
            if path != r.path:   # a signed copy may be in another syntax (implicit VR becomes explicit)
                ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            files.append((r.sop_instance_uid, path, r.sop_class_uid, ts))
        extra = []
        if record.decision == "forward_with_result" or record.state == "released":
            for p in (record.result or {}).get("results") or (record.sr_path, record.seg_path):
                if p and Path(p).exists():
                    ds = dcmread(p, stop_before_pixels=True)
                    extra.append((None, p, str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for cx in sorted({(c, t) for _, _, c, t in files + extra}):
            ae.add_requested_context(*cx)
        arch = self.config.archive
        assoc = ae.associate(arch.host, arch.port, ae_title=arch.ae_title)
        if not assoc.is_established:
            raise ArchiveUnavailable(f"{arch.ae_title} at {arch.host}:{arch.port} did not accept an association")
        _no_delay(assoc)
        try:
            for sop, path, _, _ in extra + files:
                try:
                    status = assoc.send_c_store(Path(path))
                except (ValueError, RuntimeError) as e:   # no accepted context, or the association broke
                    raise ArchiveUnavailable(one_line(e, 200)) from None
                code = int(getattr(status, "Status", -1)) if status else -1
                if code not in STORED:
                    raise ArchiveUnavailable(f"C-STORE of {Path(path).name} answered 0x{code & 0xFFFF:04X}"
                                             if code >= 0 else "no answer to a C-STORE")
                if sop is not None:
                    self.queue.set_state([sop], "forwarded")
                    with self.stats.lock:
                        self.stats.forwarded += 1
                        self.stats.last_forwarded = time.monotonic()
        finally:
            if assoc.is_established:
                assoc.release()


def _no_delay(event_or_assoc) -> None:
    """Turn off Nagle's algorithm on an association's socket: with it on, each C-STORE waits for
    the peer's delayed acknowledgement (about 20 instances/s on a fast network instead of hundreds)."""
    assoc = getattr(event_or_assoc, "assoc", event_or_assoc)
    sock = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:   # not TCP (a test double), or already closed
            pass


class ArchiveUnavailable(Exception):
    """The archive refused or broke off; the forwarder waits and tries again."""
