"""Proof of origin as evidence: DICOM digital signatures, the reversible fragile watermark and the
transparency log, next to the passive detectors.

For every DICOM file of an image or series the detector

* verifies its digital signatures (:mod:`medforensics.provenance.signature`): a signature whose
  signed data changed is near-certain evidence of manipulation and, through the signed block
  digests, points to the changed pixel blocks; an intact signature by an untrusted or expired
  certificate is weaker evidence (anyone can sign a forgery with a key of their own); an intact
  signature whose signer was not checked (no trust anchors) is no evidence either way and says
  so, naming the signer's subject and certificate fingerprint;
* checks the reversible fragile watermark (:mod:`medforensics.provenance.watermark`) of files
  whose header declares one: tampered blocks are regions; a declared watermark that no longer
  verifies anywhere is evidence too;
* looks the instance up in the transparency log named by ``$MEDFORENSICS_LEDGER``
  (:mod:`medforensics.provenance.ledger`): logged with other pixels or another identifying header
  is evidence; unknown is not.

PNG and JPEG files carrying a C2PA manifest (:mod:`medforensics.provenance.c2pa_manifest`) get
the same judgement: a manifest that no longer matches the file is broken, its signer trusted,
untrusted or not checked. Whether a signer is trusted is decided by
:func:`medforensics.provenance.trust.decide` -- the very function ``medforensics verify`` uses --
so ``scan --trust`` and ``verify --trust`` always agree (statuses in ``details["status"]``:
``signature`` and ``c2pa`` each count ``trusted``, ``not-checked``, ``untrusted``, ``broken``,
``expired``, ``unsupported``; ``details["signers"]`` names each signer's subject and SHA-256
certificate fingerprint). The ``container`` detector still reads the manifest's claims
(generator, edits); it has no trust anchors and says nothing about trust. PNG/JPEG/TIFF files are
looked up in the log too. Its settings are constructor arguments -- ``trust`` (CA certificate files),
``ledger`` (a log location) and ``watermark_key`` (key bytes) -- which ``medforensics scan
--trust --ledger --watermark-key`` pass through ``load_detectors(names, options)``; one not given
falls back to :mod:`medforensics.config` (``MEDFORENSICS_TRUST``, ``MEDFORENSICS_LEDGER``,
``MEDFORENSICS_WATERMARK_KEY``).

An image with no signature, no watermark and no log entry gets no evidence from this detector
(``None``): absence of proof is not proof of forgery, because hardly any DICOM is signed today.
Scores are fixed by what each finding proves, not fitted: broken integrity 0.99, a changed log
entry 0.97 (pixels) or 0.7 (header only), a declared watermark that verifies nowhere 0.9 with the
key given and 0.5 without one, an untrusted signer 0.6 (trust anchors given), an expired
certificate 0.2, an unsupported signature 0.1; proofs that hold give 0, and so does an intact
signature whose signer was not checked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import settings
from ..core import Evidence, Image, MedForensicsError
from ..provenance.trust import status_of
from .base import Detector, regions_from_heatmap

BROKEN, LOG_PIXELS, LOG_HEADER = 0.99, 0.97, 0.7
#: raster formats whose C2PA manifest is judged here (those ``verify`` takes)
C2PA_FORMATS = frozenset({"png", "jpeg"})
WM_VANISHED_KEYED, WM_VANISHED = 0.9, 0.5
UNTRUSTED, EXPIRED, UNSUPPORTED = 0.6, 0.2, 0.1


@dataclass
class _Findings:
    """What the checks of all files of one image found; ``score`` is the strongest finding."""

    score: float = 0.0
    messages: list[tuple[float, str]] = field(default_factory=list)
    boxes: list[tuple[int, ...]] = field(default_factory=list)   # in image voxel indices
    status: dict[str, dict[str, int]] = field(default_factory=lambda: {"signature": {}, "c2pa": {}, "watermark": {},
                                                                       "ledger": {}})
    errors: list[str] = field(default_factory=list)
    #: who signed what: file, kind (signature/c2pa), status, subject, SHA-256 fingerprint
    signers: list[dict] = field(default_factory=list)

    def add(self, score: float, message: str) -> None:
        self.score = max(self.score, score)
        self.messages.append((score, message))

    def count(self, what: str, status: str) -> None:
        self.status[what][status] = self.status[what].get(status, 0) + 1

    @property
    def anything(self) -> bool:
        return any(self.status[w] for w in self.status)


class ProvenanceDetector(Detector):
    name = "provenance"
    description = ("Proof of origin: DICOM digital signatures and C2PA manifests (trust judged as by verify), "
                   "the reversible fragile watermark, and the transparency log ($MEDFORENSICS_LEDGER); broken "
                   "proofs point to the changed blocks.")

    def __init__(self, trust: list[str | Path] | None = None, ledger: str | None = None,
                 watermark_key: bytes | None = None):
        """``trust``: CA certificate files signers must chain to; ``ledger``: the transparency
        log to look images up in; ``watermark_key``: the key of keyed watermarks. Each falls back
        to :func:`medforensics.config.settings` when not given."""
        env = settings()
        self.trust = [str(p) for p in trust] if trust is not None else list(env.trust)
        self.ledger_location = str(ledger) if ledger is not None else env.ledger
        if watermark_key is None and env.watermark_key:
            from ..provenance.watermark import read_key_file
            watermark_key = read_key_file(env.watermark_key)
        self.watermark_key = watermark_key
        self._ledger = None

    # ------------------------------------------------------------------------------------ detect
    def detect(self, image: Image) -> Evidence | None:
        f = _Findings()
        multi_file = image.pixels.ndim == 3 and len(image.sources) > 1
        for k, src in enumerate(image.sources):
            src = Path(src)
            offset = k if multi_file else None
            if image.format == "dicom":
                self._signatures(src, offset, image, f)
                header = image.datasets[k] if k < len(image.datasets) else None
                self._watermark(src, offset, image, f, header)
            elif image.format in C2PA_FORMATS:
                self._c2pa(src, f)
            if self.ledger_location:
                self._log(src, f)
        if not f.anything and not f.errors:
            return None
        heatmap = None
        regions = []
        if f.boxes:
            heatmap = np.zeros(image.pixels.shape, dtype=np.float32)
            for b in f.boxes:
                n = len(b) // 2
                heatmap[tuple(slice(b[i], b[i + n]) for i in range(n))] = 1.0
            regions = regions_from_heatmap(image, heatmap, threshold=0.5, max_regions=10, min_size=1,
                                           note="changed since signed or watermarked")
        messages = [m for s, m in sorted(f.messages, key=lambda t: -t[0])]
        if f.score >= 0.5:
            explanation = messages[0]
        else:
            proofs = [f"{w} {', '.join(f'{n} {s}' for s, n in sorted(c.items()))}" for w, c in f.status.items() if c]
            explanation = "provenance holds: " + "; ".join(proofs) if not messages else messages[0]
        details = {"status": {w: c for w, c in f.status.items() if c}, "findings": messages[:20],
                   "trust_anchors": len(self.trust),
                   "ledger": bool(self.ledger_location), "watermark_key": self.watermark_key is not None}
        if f.signers:
            details["signers"] = f.signers[:50]
        if f.errors:
            details["errors"] = f.errors[:10]
        return Evidence(self.name, f.score, explanation, heatmap=heatmap, regions=regions, details=details,
                        provenance=_summary(f))

    # ----------------------------------------------------------------------------- signatures
    def _signatures(self, path: Path, offset: int | None, image: Image, f: _Findings) -> None:
        from ..provenance.signature import verify_file

        res = verify_file(path, trust=self.trust or None)  # trust judged by provenance.trust.decide
        if res.error:
            f.errors.append(res.error)
            return
        if res.unsigned:
            return
        for sig in res.signatures:
            status = status_of(sig)
            f.count("signature", status)
            f.signers.append({"file": path.name, "kind": "signature", "status": status,
                              "subject": sig.signer_subject, "fingerprint": sig.signer_fingerprint})
            reasons = "; ".join(sig.reasons[:2])
            if status == "not-checked":
                f.add(0.0, f"{path.name}: intact DICOM signature by {sig.signer_subject}, but the signer was "
                           f"not checked against any trust anchor (give --trust; certificate fingerprint in "
                           f"details.signers)")
            elif status == "broken":
                what = []
                if sig.pixel_changed:
                    what.append("pixel data")
                what += list(sig.changed_tags)[:5]
                f.add(BROKEN, f"{path.name}: the DICOM signature by {sig.signer or 'an unknown signer'} no longer matches "
                              f"({', '.join(what) or 'signed data'} changed)")
                for b in sig.changed_blocks:
                    f.boxes.append(_to_image_box(b, offset, image))
            elif status == "untrusted":
                f.add(UNTRUSTED, f"{path.name}: signed by {sig.signer}, whom no trust anchor vouches for ({reasons})")
            elif status == "expired":
                f.add(EXPIRED, f"{path.name}: intact signature, but {reasons}")
            elif status == "unsupported":
                f.add(UNSUPPORTED, f"{path.name}: signature cannot be checked ({reasons})")

    # ----------------------------------------------------------------------------------- C2PA
    def _c2pa(self, path: Path, f: _Findings) -> None:
        """The C2PA manifest of a PNG/JPEG file, judged as ``verify`` judges it."""
        try:
            from ..provenance.c2pa_manifest import verify_manifest
        except ImportError:  # c2pa-python missing: the container detector says so
            return
        try:
            chk = verify_manifest(path, trust=self.trust or None)
        except MedForensicsError as e:
            f.errors.append(str(e))
            return
        if not chk.present:
            return
        status = status_of(chk)
        f.count("c2pa", status)
        f.signers.append({"file": path.name, "kind": "c2pa", "status": status, "subject": chk.signer_subject,
                          "fingerprint": chk.signer_fingerprint})
        who = chk.signer_subject or chk.signer or "an unknown signer"
        if status == "broken":
            f.add(BROKEN, f"{path.name}: the C2PA manifest signed by {who} no longer matches the file "
                          f"({'; '.join(chk.reasons[:2]) or 'invalid'})")
        elif status == "expired":
            f.add(EXPIRED, f"{path.name}: intact C2PA manifest, but {'; '.join(chk.reasons[:2])}")
        elif status == "untrusted":
            f.add(UNTRUSTED, f"{path.name}: C2PA manifest signed by {who}, whom no trust anchor vouches for")
        elif status == "not-checked":
            f.add(0.0, f"{path.name}: intact C2PA manifest signed by {who}, but the signer was not checked against "
                       f"any trust anchor (give --trust; certificate fingerprint in details.signers)")

    # ------------------------------------------------------------------------------ watermark
    def _watermark(self, path: Path, offset: int | None, image: Image, f: _Findings, header=None) -> None:
        from ..provenance.watermark import check_file, declared

        if header is not None and not declared(header):
            # Finding a watermark from the pixels alone costs ~40 ms per 512x512 slice (5 s per
            # series) even where there is none; scan checks the files whose header declares one.
            # `medforensics watermark check` looks at the pixels of any file.
            return
        try:
            res = check_file(path, key=self.watermark_key)
        except MedForensicsError:
            return  # lossy or colour pixel data cannot carry the watermark: nothing to say
        if res.intact:
            f.count("watermark", "intact")
        elif res.present:
            f.count("watermark", "tampered")
            f.add(BROKEN, f"{path.name}: the fragile watermark is broken in {len(res.tampered_blocks)} of "
                          f"{res.n_blocks} block(s)")
            for b in res.tampered_blocks:
                f.boxes.append(_to_image_box(b, offset, image))
        elif res.header_declared:
            f.count("watermark", "vanished")
            keyed = self.watermark_key is not None
            f.add(WM_VANISHED_KEYED if keyed else WM_VANISHED,
                  f"{path.name}: the header declares a watermark but none verifies"
                  + ("" if keyed else " (a keyed watermark needs --watermark-key)"))

    # ---------------------------------------------------------------------------------- ledger
    def _log(self, path: Path, f: _Findings) -> None:
        from ..provenance.ledger import Ledger, fingerprint

        try:
            if self._ledger is None:
                self._ledger = Ledger(self.ledger_location)
            res = self._ledger.lookup(fingerprint(path))
        except MedForensicsError as e:
            f.errors.append(str(e))
            return
        f.count("ledger", res.status)
        if res.status == "changed":
            pixels = "pixels" in res.changed
            f.add(LOG_PIXELS if pixels else LOG_HEADER,
                  f"{path.name}: logged at leaf {res.leaf_index} with other {' and '.join(res.changed)}")


def _to_image_box(box: tuple[int, ...], offset: int | None, image: Image) -> tuple[int, ...]:
    """A box of a file's stored pixels -- ``(r0, c0, r1, c1)`` or ``(f0, r0, c0, f1, r1, c1)`` -- in
    the voxel indices of ``image`` (slice ``offset`` of a series of single-frame files)."""
    box = tuple(int(v) for v in box)
    if len(box) == 4:
        box = (0, box[0], box[1], 1, box[2], box[3])
    if image.pixels.ndim == 2:
        return (box[1], box[2], box[4], box[5])
    if offset is not None:
        return (offset, box[1], box[2], offset + 1, box[4], box[5])
    return box


def _summary(f: _Findings) -> str:
    """One word per proof for ``Verdict.provenance``: e.g. ``signature:valid watermark:tampered``."""
    parts = []
    for what, counts in f.status.items():
        if counts:
            worst = max(counts, key=lambda s: (s not in ("trusted", "intact", "unchanged", "unknown"), counts[s]))
            parts.append(f"{what}:{worst}")
    return " ".join(parts) or "none"


def provenance_options(trust: Sequence[str | Path] | None, ledger: str | None,
                       watermark_key: str | Path | None) -> dict[str, dict[str, Any]]:
    """The ``provenance`` detector's options (:func:`~medforensics.detectors.load_detectors`)
    from trust anchors, a ledger and a watermark key (scan's ``--trust --ledger --watermark-key``,
    the gateway's ``[provenance]``), each checked first so that a typo is an error, not a finding."""
    from ..provenance.keys import load_certificates
    from ..provenance.watermark import read_key_file

    options: dict[str, Any] = {}
    if trust:
        for p in trust:
            load_certificates(p)
        options["trust"] = [str(Path(p).resolve()) for p in trust]
    if ledger:
        from ..provenance.ledger import Ledger
        Ledger(ledger).close()
        options["ledger"] = ledger
    if watermark_key:
        options["watermark_key"] = read_key_file(Path(watermark_key))
    return {"provenance": options} if options else {}
