"""C2PA manifests for images that leave the DICOM world, and reading those that come in.

:func:`export` renders a DICOM instance (or a PNG/JPEG/TIFF) to a new PNG or JPEG file and embeds
a C2PA manifest signed with an identity of :mod:`.keys`: which study, series and instance it came
from (UIDs, modality, SHA-256 of the source file -- never names, IDs, dates or other patient data)
and what was done (``c2pa.opened`` the source, ``c2pa.converted`` to PNG/JPEG,
``c2pa.color_adjustments`` for the window, ``c2pa.resized``). :func:`verify_manifest` reads and
validates the manifest of any PNG/JPEG with c2pa-python, optionally against trust anchors (CA
certificates), and says in one line per problem why a file fails.

>>> import tempfile
>>> from pathlib import Path
>>> from pydicom.data import get_testdata_file
>>> from medforensics.provenance.keys import load_identity, new_identity
>>> folder = tempfile.TemporaryDirectory()
>>> tmp = Path(folder.name)
>>> keys = new_identity("Radiology signer").save(tmp / "keys")    # or the hospital's own key.pem, cert.pem
>>> ident = load_identity(keys["key"], keys["cert"])
>>> info = export(get_testdata_file("CT_small.dcm"), tmp / "slice001.png", ident, window=(40, 400))
>>> info["format"], info["bits"], info["manifest"], info["actions"]
('png', 8, True, ['c2pa.opened', 'c2pa.converted', 'c2pa.color_adjustments'])
>>> chk = verify_manifest(tmp / "slice001.png", trust=[keys["ca"]])
>>> chk.ok, chk.trusted, chk.signer, chk.source["sop_instance_uid"]
(True, True, 'Radiology signer', '1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322')

Changed image bytes no longer match the manifest:

>>> data = bytearray((tmp / "slice001.png").read_bytes())
>>> data[data.find(b"IDAT") + 20] ^= 1
>>> _ = (tmp / "edited.png").write_bytes(bytes(data))
>>> chk = verify_manifest(tmp / "edited.png")
>>> chk.present, chk.ok, chk.reasons
(True, False, ['the image bytes no longer match the manifest (assertion.dataHash.mismatch)'])
>>> folder.cleanup()
"""
from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core import MedForensicsError, ignoring_warnings, one_line
from .keys import read_bytes

__all__ = ["export", "verify_manifest", "read_c2pa", "ManifestCheck", "render_dicom", "apply_window",
           "SOURCE_LABEL", "MIME"]

#: Label of our own assertion: where the exported pixels came from (UIDs and hashes only).
SOURCE_LABEL = "org.medforensics.source"
MIME = {"png": "image/png", "jpeg": "image/jpeg"}
_SUFFIX_FORMAT = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
#: validation codes that say nothing about the content (trust is judged separately)
_TRUST_CODES = ("signingcredential.untrusted", "signingcredential.trusted")
_BENIGN = ("signingcredential.untrusted", "signingcredential.ocsp", "timestamp.untrusted",
           "signingcredential.trusted", "claimsignature.validated", "timestamp.validated", "timestamp.trusted")
_REASONS = {
    "assertion.dataHash.mismatch": "the image bytes no longer match the manifest",
    "assertion.boxesHash.mismatch": "the file's contents no longer match the manifest",
    "assertion.bmffHash.mismatch": "the file's contents no longer match the manifest",
    "assertion.hashedURI.mismatch": "an assertion of the manifest was changed after signing",
    "assertion.hashedURI.missing": "an assertion the claim refers to is missing",
    "assertion.missing": "an assertion the claim refers to is missing",
    "assertion.dataHash.malformed": "the manifest's hash of the image is malformed",
    "claimSignature.mismatch": "the claim signature does not verify (the manifest was altered or signed with "
                               "another key)",
    "claimSignature.missing": "the manifest has no claim signature",
    "claimSignature.outsideValidity": "the signature was made outside the certificate's validity period",
    "signingCredential.untrusted": "the signer's certificate does not chain to a trusted CA",
    "signingCredential.expired": "the signing certificate had expired",
    "signingCredential.revoked": "the signing certificate was revoked",
    "claim.missing": "the manifest has no claim",
    "manifest.inaccessible": "the manifest cannot be reached",
}


# ============================================================================ reading

@dataclass
class ManifestCheck:
    """What the C2PA manifest of a file says, and whether it holds.

    ``ok`` is true when a manifest is present, valid (signature and hashes match the file) and,
    when trust anchors were given, trusted (``trust``; ``not-checked`` without anchors: then
    ``ok`` says the manifest is intact, not who signed it). ``reasons`` holds one line per problem; ``warnings``
    things worth knowing that do not make the file fail (e.g. a parent ingredient whose own
    manifest was already invalid when it was used).
    """

    path: str
    present: bool = False
    ok: bool = False
    valid: bool = False
    trusted: bool | None = None
    #: :func:`medforensics.provenance.trust.decide`'s status: trusted, untrusted or not-checked
    trust: str = "not-checked"
    signer: str | None = None
    #: the signer certificate's full subject and SHA-256 fingerprint (for a person to compare)
    signer_subject: str | None = None
    signer_fingerprint: str | None = None
    issuer: str | None = None
    generator: str | None = None
    title: str | None = None
    format: str | None = None
    algorithm: str | None = None
    signed_at: str | None = None
    actions: list[str] = field(default_factory=list)
    ingredients: list[dict] = field(default_factory=list)
    source: dict | None = None
    digital_source_type: str | None = None
    digital_source_types: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: validation failure codes of the active manifest (c2pa's own trust codes left out)
    codes: list[str] = field(default_factory=list)
    #: the manifest store could not be parsed at all (damaged JUMBF)
    unreadable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cbor(buf: bytes, pos: int = 0, depth: int = 0) -> tuple[Any, int]:
    """Decode one CBOR (RFC 8949) item at ``pos``: (value, next position). Only what a COSE_Sign1
    header holds -- definite lengths; a tag gives its content. ValueError on anything else."""
    if depth > 16:
        raise ValueError("CBOR nested too deeply")
    if pos >= len(buf):
        raise ValueError("CBOR data ends early")
    ib = buf[pos]
    major, info = ib >> 5, ib & 31
    pos += 1
    if info < 24:
        arg = info
    elif info <= 27:
        n = 1 << (info - 24)
        if pos + n > len(buf):
            raise ValueError("CBOR data ends early")
        arg = int.from_bytes(buf[pos:pos + n], "big")
        if major == 7 and info >= 25:
            import struct
            return struct.unpack({2: ">e", 4: ">f", 8: ">d"}[n], buf[pos:pos + n])[0], pos + n
        pos += n
    else:
        raise ValueError("indefinite-length or reserved CBOR item")
    if major == 0:
        return arg, pos
    if major == 1:
        return -1 - arg, pos
    if major in (2, 3):
        if pos + arg > len(buf):
            raise ValueError("CBOR string runs past the data")
        raw = bytes(buf[pos:pos + arg])
        return (raw if major == 2 else raw.decode("utf-8", "replace")), pos + arg
    if major in (4, 5):
        if arg > len(buf) - pos:
            raise ValueError("CBOR container longer than the data")
        if major == 4:
            items = []
            for _ in range(arg):
                v, pos = _cbor(buf, pos, depth + 1)
                items.append(v)
            return items, pos
        d: dict = {}
        for _ in range(arg):
            k, pos = _cbor(buf, pos, depth + 1)
            v, pos = _cbor(buf, pos, depth + 1)
            if isinstance(k, (int, str, bytes)):
                d[k] = v
        return d, pos
    if major == 6:
        return _cbor(buf, pos, depth + 1)
    return {20: False, 21: True, 22: None, 23: None}.get(arg), pos


def _jumbf_find(buf: bytes, path: Sequence[str]) -> bytes | None:
    """The payload of the first ``cbor`` box in the JUMBF superbox reached by the labels ``path``
    (ISO 19566-5: a ``jumb`` superbox starts with its ``jumd`` description box)."""
    import struct

    def walk(start: int, end: int, labels: Sequence[str]) -> bytes | None:
        pos = start
        while pos + 8 <= end:
            size, kind = struct.unpack(">I4s", buf[pos:pos + 8])
            head = 8
            if size == 1 and pos + 16 <= end:
                size, head = struct.unpack(">Q", buf[pos + 8:pos + 16])[0], 16
            elif size == 0:
                size = end - pos
            if size < head or pos + size > end:
                return None
            body_start, box_end = pos + head, pos + size
            if not labels and kind == b"cbor":
                return bytes(buf[body_start:box_end])
            if labels and kind == b"jumb" and body_start + 8 <= box_end:
                dsize, dkind = struct.unpack(">I4s", buf[body_start:body_start + 8])
                desc = buf[body_start + 8:body_start + dsize]
                if dkind == b"jumd" and len(desc) > 17 and desc[16] & 0x02:
                    label = bytes(desc[17:]).split(b"\0", 1)[0].decode("utf-8", "replace")
                    if label == labels[0]:
                        return walk(body_start + dsize, box_end, labels[1:])
            pos = box_end
        return None

    return walk(0, len(buf), list(path))


def _signer_chain(reader, active: str) -> tuple[list, str | None]:
    """The certificates of the active manifest's claim signature (COSE_Sign1 ``x5chain``, header
    label 33; leaf first) and, when they cannot be read, why."""
    from cryptography import x509

    try:
        buf = io.BytesIO()
        reader.resource_to_stream(f"self#jumbf=/c2pa/{active}/c2pa.signature", buf)
        raw = _jumbf_find(buf.getvalue(), ["c2pa", active, "c2pa.signature"])
        if raw is None:
            return [], "the manifest has no readable claim signature box"
        cose, _ = _cbor(raw)
        if not isinstance(cose, list) or len(cose) != 4:
            return [], "the claim signature is not a COSE_Sign1 structure"
        protected = _cbor(cose[0])[0] if isinstance(cose[0], bytes) and cose[0] else {}
        unprotected = cose[1] if isinstance(cose[1], dict) else {}
        x5 = (protected.get(33) if isinstance(protected, dict) else None) or unprotected.get(33) \
            or unprotected.get("x5chain")
        ders = [x5] if isinstance(x5, bytes) else [c for c in x5 or [] if isinstance(c, bytes)]
        if not ders:
            return [], "the claim signature carries no certificate (x5chain)"
        return [x509.load_der_x509_certificate(d) for d in ders], None
    except Exception as e:  # noqa: BLE001 - a damaged signature is a reason, never a crash
        return [], f"the signer's certificate cannot be read from the manifest ({one_line(e, 160)})"


def _has_jumbf(data: bytes) -> bool:
    """Whether the bytes hold what looks like a C2PA JUMBF box (a manifest store, readable or not)."""
    return b"jumb" in data and b"c2pa" in data


def verify_manifest(path: str | Path, *, trust: Sequence[Any] | None = None) -> ManifestCheck:
    """Read and validate the C2PA manifest embedded in ``path`` (PNG, JPEG and the other formats
    c2pa-python reads).

    Parameters
    ----------
    path : path
        The file to check.
    trust : list, optional
        Trust anchors: CA certificate files (PEM/DER paths), ``cryptography`` certificates or PEM
        bytes. The signer's certificate chain (the claim signature's ``x5chain``) is judged
        against them by :func:`medforensics.provenance.trust.decide`, the same decision as for
        DICOM signatures (c2pa's own trust list is not used). Without them ``trust`` is
        ``not-checked`` and ``trusted`` None: the signature is checked, not who made it; an empty
        list trusts no one.

    Returns
    -------
    ManifestCheck
        Never raises for a damaged file or manifest (``reasons`` says what is wrong); raises
        :class:`MedForensicsError` only when the file cannot be opened or a trust file is unusable.
    """
    import c2pa

    from .trust import decide, load_anchors

    path = Path(path)
    chk = ManifestCheck(path=str(path))
    data = read_bytes(path)
    anchors = load_anchors(trust)
    if not data:
        chk.reasons.append("the file is empty")
        return chk
    chain: list = []
    chain_problem = None
    try:
        reader = c2pa.Reader(io.BytesIO(data))
        try:
            store = json.loads(reader.json())
            if store.get("active_manifest"):
                chain, chain_problem = _signer_chain(reader, str(store["active_manifest"]))
        finally:
            reader.close()
    except Exception as e:  # noqa: BLE001 - c2pa raises its own error kinds; each becomes a reason
        msg = one_line(e, 240)
        if type(e).__name__.endswith("ManifestNotFound"):
            chk.reasons.append("no C2PA manifest in the file")
        elif type(e).__name__.endswith("NotSupported"):
            chk.reasons.append(f"C2PA manifests cannot be read from this kind of file ({msg})")
        elif _has_jumbf(data):
            chk.present = True
            chk.unreadable = True
            chk.reasons.append(f"the C2PA manifest is damaged and cannot be read ({msg})")
        else:
            chk.reasons.append(f"the file cannot be parsed for a C2PA manifest ({msg})")
        return chk
    if not _fill(chk, store):
        return chk
    decision = decide(chain, anchors)
    chk.trust, chk.trusted = decision.status, decision.trusted
    chk.signer_subject, chk.signer_fingerprint = decision.subject, decision.fingerprint
    if chain_problem:
        chk.warnings.append(chain_problem)
    if decision.status == "untrusted":
        _add_reason(chk.reasons, {"code": "signingCredential.untrusted"})
    chk.ok = chk.present and chk.valid and decision.status != "untrusted"
    return chk


def _fill(chk: ManifestCheck, store: dict) -> bool:
    """Fill ``chk`` from a c2pa manifest store report (``Reader.json()``); False when the store has
    no active manifest (then there is nothing to judge)."""
    """Fill ``chk`` from a c2pa manifest store report (``Reader.json()``)."""
    chk.present = True
    manifests = store.get("manifests") or {}
    active = manifests.get(store.get("active_manifest") or "")
    if not isinstance(active, dict):
        chk.reasons.append("the manifest store has no active manifest")
        return False
    chk.title = active.get("title")
    chk.format = active.get("format")
    gen = active.get("claim_generator") or ", ".join(
        " ".join(str(g.get(k, "")) for k in ("name", "version") if g.get(k))
        for g in active.get("claim_generator_info") or [] if isinstance(g, dict))
    chk.generator = gen or None
    sig = active.get("signature_info") or {}
    chk.signer = sig.get("common_name") or sig.get("issuer")
    chk.issuer = sig.get("issuer")
    chk.algorithm = sig.get("alg")
    chk.signed_at = sig.get("time")
    for a in active.get("assertions") or []:
        label = str(a.get("label", ""))
        data = a.get("data") or {}
        if label.startswith("c2pa.actions"):
            for act in data.get("actions") or []:
                chk.actions.append(str(act.get("action", "")))
                if act.get("digitalSourceType"):
                    chk.digital_source_types.append(str(act["digitalSourceType"]))
        elif label == SOURCE_LABEL and isinstance(data, dict):
            chk.source = data
    chk.digital_source_type = chk.digital_source_types[0] if chk.digital_source_types else None
    for ing in active.get("ingredients") or []:
        chk.ingredients.append(_ingredient(ing, manifests, chk.warnings))

    results = store.get("validation_results") or {}
    failures = list((results.get("activeManifest") or {}).get("failure") or [])
    if not results:  # reports of older c2pa versions list the failures here only
        failures = list(store.get("validation_status") or [])
    # c2pa's verdict on trust (against its own list, empty here) is not ours: trust.decide judges it
    content = [f for f in failures if not str(f.get("code", "")).lower().startswith(_TRUST_CODES)]
    chk.codes = sorted({str(f.get("code", "")) for f in content if f.get("code")})
    chk.valid = not content
    for f in content:
        _add_reason(chk.reasons, f)
    return True


def _ingredient(ing: dict, manifests: dict, warnings: list[str]) -> dict:
    d = {k: ing.get(k) for k in ("title", "format", "relationship", "instance_id", "document_id") if ing.get(k)}
    label = ing.get("active_manifest")
    d["has_manifest"] = bool(label)
    if label and isinstance(manifests.get(label), dict):
        parent = manifests[label]
        sig = parent.get("signature_info") or {}
        d["signer"] = sig.get("common_name") or sig.get("issuer")
        d["generator"] = parent.get("claim_generator") or ", ".join(
            str(g.get("name", "")) for g in parent.get("claim_generator_info") or [] if isinstance(g, dict))
        src = next((a.get("data") for a in parent.get("assertions") or [] if a.get("label") == SOURCE_LABEL), None)
        if src:
            d["source"] = src
    vr = (ing.get("validation_results") or {}).get("activeManifest") or {}
    bad = sorted({str(f.get("code")) for f in vr.get("failure") or []
                  if f.get("code") and not str(f.get("code")).lower().startswith(_TRUST_CODES)})
    if bad:
        d["validation_failures"] = bad
        warnings.append(f"parent ingredient '{d.get('title', '?')}' already failed validation when it was used "
                        f"({', '.join(bad)})")
    return d


def _add_reason(reasons: list[str], status: dict) -> None:
    code = str(status.get("code", "")) or "unknown"
    words = _REASONS.get(code)
    if words is None:
        expl = " ".join(str(status.get("explanation") or "").split())
        words = expl or "validation failed"
        if code.startswith("signingCredential"):
            words = f"the signing certificate is not acceptable: {words}"
    line = f"{words} ({code})"
    if line not in reasons:
        reasons.append(line)


def read_c2pa(path: str | Path) -> dict:
    """The container detector's view of a file's C2PA manifest store: ``{"present": False}`` when
    there is none; else claim generator, actions, digital source types, signer, issuer, failure
    codes (``failures`` excludes trust codes), ``trust`` (always ``not-checked``: the container
    detector has no trust anchors; the ``provenance`` detector judges the signer with ``scan
    --trust``, through the same decision as ``verify``), the signer's subject and fingerprint, and
    the medforensics ``source`` when the manifest is ours. Never raises."""
    try:
        chk = verify_manifest(path)
    except MedForensicsError as e:
        return {"present": False, "error": e.problem}
    except Exception as e:  # noqa: BLE001 - the detector must go on whatever the file holds
        return {"present": False, "error": one_line(e, 240)}
    if not chk.present:
        out: dict = {"present": False}
        if chk.reasons and not chk.reasons[0].startswith("no C2PA manifest"):
            out["error"] = chk.reasons[0]
        return out
    if chk.unreadable:
        return {"present": True, "error": chk.reasons[0] if chk.reasons else "unreadable manifest",
                "failures": ["manifest unreadable"], "actions": [], "digital_source_types": [],
                "validation_codes": [], "trust": "not-checked"}
    failures = [c for c in chk.codes if not c.lower().startswith(_BENIGN)]
    if not chk.valid and not failures:  # e.g. no active manifest
        failures = ["manifest invalid"]
    return {"present": True, "claim_generator": chk.generator, "actions": chk.actions,
            "digital_source_types": chk.digital_source_types, "signer": chk.signer, "issuer": chk.issuer,
            "validation_codes": chk.codes, "failures": failures,
            "trust": chk.trust, "signer_subject": chk.signer_subject,
            "signer_fingerprint": chk.signer_fingerprint, "source": chk.source,
            "reasons": chk.reasons}


# ============================================================================ rendering

def apply_window(values: np.ndarray, center: float, width: float, top: int, function: str = "LINEAR") -> np.ndarray:
    """Map values through a DICOM VOI window (PS3.3 C.11.2.1.2) to integers ``0..top``.

    ``function`` is ``LINEAR`` (the default of DICOM viewers), ``LINEAR_EXACT`` or ``SIGMOID``.
    """
    x = np.asarray(values, dtype=np.float64)
    c, w = float(center), float(width)
    fn = (function or "LINEAR").upper()
    if fn == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif fn == "LINEAR_EXACT" or w <= 1.0:
        y = (x - c) / w + 0.5
    else:
        y = (x - (c - 0.5)) / (w - 1.0) + 0.5
    return np.clip(np.round(y * top), 0, top).astype(np.uint16 if top > 255 else np.uint8)


def _first(v) -> float | None:
    if v is None:
        return None
    try:
        seq = list(v) if not isinstance(v, (str, bytes, int, float)) else [v]
        return float(seq[0]) if seq else None
    except (TypeError, ValueError):
        return None


def render_dicom(path: str | Path, *, window: tuple[float, float] | None = None, bits: int = 8,
                 frame: int | None = None) -> tuple[np.ndarray, dict]:
    """Render one DICOM instance as display values (``uint8`` or ``uint16``) and say how.

    The pipeline of a DICOM viewer: Modality LUT (rescale), VOI window (``window`` = centre, width
    in modality units; else the first WindowCenter/WindowWidth of the header; else the full range
    of the values), then MONOCHROME1 inverted so that the output is always MONOCHROME2. A
    multi-frame instance gives frame ``frame`` (default 0) of its frames sorted by patient
    position. Colour instances are reduced to gray (BT.601 luma) and shown over their full range.

    Returns ``(pixels, info)``: ``info`` holds the header facts (UIDs, modality, rows, columns) and
    the window used (``center``, ``width``, ``function``, ``from``: argument, header or full range).
    """
    from ..io import load_instance

    path = Path(path)
    image = load_instance(path)
    ds = image.datasets[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "") or "").upper()
    colour = bool(image.meta.get("color"))
    n_frames = 1 if image.pixels.ndim == 2 else image.pixels.shape[0]
    if n_frames > 1:
        k = 0 if frame is None else int(frame)
        if not 0 <= k < n_frames:
            raise MedForensicsError(path, f"frame {k} does not exist (the instance has {n_frames} frames)")
        values = image.pixels[k]
    else:
        if frame not in (None, 0):
            raise MedForensicsError(path, f"frame {frame} does not exist (the instance has one frame)")
        k = None
        values = image.pixels
    if photometric == "MONOCHROME1":
        if n_frames > 1:
            raise MedForensicsError(path, "export of multi-frame MONOCHROME1 instances is not supported")
        values = _modality_values(path)  # the loader inverted them; windows apply to modality values
    top = 65535 if bits == 16 else 255
    fn = "LINEAR"
    if window is not None:
        (c, w), source = window, "argument"
    else:
        c, w = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        source = "header"
        fn = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if colour or c is None or w is None or not np.isfinite(c) or not np.isfinite(w) or w <= 0:
            if colour:
                hi = float((1 << int(getattr(ds, "BitsStored", 8) or 8)) - 1)
                lo = 0.0
            else:
                lo, hi = float(np.min(values)), float(np.max(values))
            c, w, source, fn = (lo + hi) / 2 + 0.5, hi - lo + 1.0, "full range", "LINEAR"
    if not (np.isfinite(c) and np.isfinite(w) and w > 0):
        raise MedForensicsError(path, f"window centre {c} / width {w} is not usable (width must be > 0)")
    out = apply_window(values, c, w, top, fn)
    if photometric == "MONOCHROME1":
        out = (top - out).astype(out.dtype)
    info = {
        "study_instance_uid": _s(ds, "StudyInstanceUID"), "series_instance_uid": _s(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _s(ds, "SOPInstanceUID"), "sop_class_uid": _s(ds, "SOPClassUID"),
        "modality": image.modality, "transfer_syntax_uid": image.meta.get("transfer_syntax") or None,
        "photometric_interpretation": photometric or None, "rows": int(values.shape[0]),
        "columns": int(values.shape[1]), "frames": n_frames, "colour": colour,
        "window": {"center": round(float(c), 4), "width": round(float(w), 4), "function": fn, "from": source},
    }
    if k is not None:
        info["frame"] = k
    return out, info


def _modality_values(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        with ignoring_warnings():
            ds = pydicom.dcmread(path)
            return np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - the loader read it already; this is a last guard
        raise MedForensicsError(path, f"cannot decode pixel data: {one_line(e, 240)}") from None


def _s(ds, key: str) -> str | None:
    v = getattr(ds, key, None)
    return str(v) if v not in (None, "") else None


def _render_raster(path: Path, window: tuple[float, float] | None, bits: int) -> tuple[np.ndarray, dict]:
    from ..io import load_raster

    image = load_raster(path)
    src_bits = int(image.meta.get("bit_depth", 8))
    src_bits = 16 if src_bits > 8 else 8
    top = 65535 if bits == 16 else 255
    if window is not None:
        (c, w), source = window, "argument"
    else:
        hi = float((1 << src_bits) - 1)
        c, w, source = hi / 2 + 0.5, hi + 1.0, "full range"
    out = apply_window(image.pixels, c, w, top)
    info = {"format": image.format, "bit_depth": src_bits, "rows": int(out.shape[0]), "columns": int(out.shape[1]),
            "colour": bool(image.meta.get("color")),
            "window": {"center": round(float(c), 4), "width": round(float(w), 4), "function": "LINEAR",
                       "from": source}}
    info["identity"] = window is None and src_bits == bits and not info["colour"]
    return out, info


def _resize(pixels: np.ndarray, max_size: int) -> np.ndarray:
    import cv2

    h, w = pixels.shape
    s = max_size / max(h, w)
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    out = cv2.resize(pixels.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    return np.clip(np.round(out), 0, np.iinfo(pixels.dtype).max).astype(pixels.dtype)


def _encode(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    from PIL import Image as PILImage

    buf = io.BytesIO()
    if fmt == "jpeg":
        PILImage.fromarray(pixels.astype(np.uint8)).save(buf, format="JPEG", quality=int(quality))
    else:
        PILImage.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ============================================================================ writing

def _c2pa_alg(identity) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    key = identity.key
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {256: "es256", 384: "es384", 521: "es512"}.get(key.curve.key_size, "es256")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise MedForensicsError(None, f"unsupported key type {type(key).__name__} for C2PA")


def _extra_actions(actions: Sequence[Any] | None) -> list[dict]:
    out = []
    for a in actions or []:
        d = {"action": a} if isinstance(a, str) else dict(a) if isinstance(a, dict) else None
        if not d or not isinstance(d.get("action"), str) or not d["action"].strip():
            raise MedForensicsError(None, f"extra action {a!r} is not an action label or a dict with 'action'")
        out.append(d)
    return out


def export(src: str | Path, dst: str | Path, identity=None, *, window: tuple[float, float] | None = None,
           bits: int = 8, quality: int = 95, max_size: int | None = None, frame: int | None = None,
           actions: Sequence[Any] | None = None) -> dict:
    """Render ``src`` (DICOM, or PNG/JPEG/TIFF) to the new file ``dst`` (``.png`` or ``.jpg``) with
    a C2PA manifest signed by ``identity``.

    Parameters
    ----------
    src : path
        A DICOM instance; or a raster image, whose own C2PA manifest (if any) becomes the parent
        ingredient of the new one.
    dst : path
        A new file; its suffix picks the format (``.png``, ``.jpg``/``.jpeg``). Never overwritten.
    identity : keys.Identity or None
        The signer (EC P-256 signs ES256, RSA PS256). None writes the image without a manifest.
    window : (centre, width), optional
        VOI window in modality units (HU for CT); default: the header's, else the full range.
        For a raster source: in its gray levels (default: unchanged).
    bits : 8 or 16
        Bit depth of a PNG (JPEG is always 8).
    quality : int
        JPEG quality.
    max_size : int, optional
        Downscale (area interpolation) so that the longer side is at most this many pixels.
    frame : int, optional
        Frame of a multi-frame DICOM instance (sorted by patient position; default 0).
    actions : list, optional
        Extra C2PA actions (labels or dicts with ``action``) recorded after ours.

    Returns
    -------
    dict
        ``source``, ``output``, ``format``, ``bits``, ``rows``, ``columns``, ``window``,
        ``actions``, ``manifest`` (bool), ``signer``, ``algorithm``, ``source_sha256``,
        ``output_sha256``, ``bytes``, ``seconds`` and ``dicom`` (the UIDs) for a DICOM source.
    """
    from .. import __version__
    from ..io import sniff

    t0 = time.perf_counter()
    src, dst = Path(src), Path(dst)
    fmt = _SUFFIX_FORMAT.get(dst.suffix.lower())
    if fmt is None:
        raise MedForensicsError(dst, f"unknown output suffix {dst.suffix!r}; use .png, .jpg or .jpeg")
    if bits not in (8, 16):
        raise MedForensicsError(dst, f"bit depth {bits} is not supported; use 8 or 16")
    if fmt == "jpeg" and bits != 8:
        raise MedForensicsError(dst, "JPEG holds 8 bits per pixel only; use .png for 16 bits")
    if not 1 <= int(quality) <= 100:
        raise MedForensicsError(dst, f"JPEG quality {quality} is outside 1..100")
    if window is not None:
        window = (float(window[0]), float(window[1]))
        if not (np.isfinite(window[0]) and np.isfinite(window[1]) and window[1] > 0):
            raise MedForensicsError(src, f"window {window} is not usable: centre and width must be finite, width > 0")
    if max_size is not None and int(max_size) < 1:
        raise MedForensicsError(dst, f"maximum size {max_size} must be at least 1 pixel")
    if dst.exists():
        raise MedForensicsError(dst, "already exists; export writes new files only")
    if not dst.parent.is_dir():
        raise MedForensicsError(dst, f"folder {dst.parent} does not exist")
    extra = _extra_actions(actions)
    alg = _c2pa_alg(identity) if identity is not None else None
    src_bytes = read_bytes(src)
    kind = sniff(src)
    agent = {"name": "medforensics", "version": __version__}
    if kind == "dicom":
        pixels, info = render_dicom(src, window=window, bits=bits, frame=frame)
        source = {"kind": "dicom", **{k: v for k, v in info.items() if k not in ("window",)},
                  "sha256": _sha256(src_bytes), "size_bytes": len(src_bytes)}
        ingredient = {"title": f"DICOM {info['modality']} instance", "format": "application/dicom",
                      "relationship": "parentOf", "label": "source"}
        if info["sop_instance_uid"]:
            ingredient["instance_id"] = info["sop_instance_uid"]
        src_fmt = "dicom"
        adjust = True
    elif kind == "raster":
        pixels, info = _render_raster(src, window, bits)
        source = {"kind": "raster", "format": info["format"], "bit_depth": info["bit_depth"], "rows": info["rows"],
                  "columns": info["columns"], "sha256": _sha256(src_bytes), "size_bytes": len(src_bytes)}
        ingredient = None
        src_fmt = info["format"]
        adjust = not info["identity"]
    else:
        raise MedForensicsError(src, "not a DICOM, PNG, JPEG or TIFF image")
    shape0 = pixels.shape
    if max_size is not None and max(shape0) > int(max_size):
        pixels = _resize(pixels, int(max_size))

    acts: list[dict] = [{"action": "c2pa.opened", "softwareAgent": agent, "parameters": {"ingredientIds": ["source"]}}]
    if src_fmt != fmt:
        acts.append({"action": "c2pa.converted", "softwareAgent": agent,
                     "description": f"{src_fmt.upper()} rendered to {fmt.upper()} ({bits}-bit gray"
                                    + (f", quality {quality})" if fmt == "jpeg" else ")")})
    elif fmt == "jpeg":
        acts.append({"action": "c2pa.transcoded", "softwareAgent": agent, "description": f"re-encoded as JPEG "
                                                                                          f"quality {quality}"})
    else:
        acts.append({"action": "c2pa.repackaged", "softwareAgent": agent, "description": "re-encoded as PNG"})
    w = info["window"]
    if adjust:
        what = (f"VOI window centre {w['center']:g} width {w['width']:g} ({w['function']}, from {w['from']})"
                + (", MONOCHROME1 inverted" if info.get("photometric_interpretation") == "MONOCHROME1" else "")
                + (", colour reduced to gray (BT.601 luma)" if info.get("colour") else "")
                + f", mapped to 0..{65535 if bits == 16 else 255}")
        acts.append({"action": "c2pa.color_adjustments", "softwareAgent": agent, "description": what,
                     "parameters": {"org.medforensics.window": w}})
    if pixels.shape != shape0:
        acts.append({"action": "c2pa.resized", "softwareAgent": agent,
                     "description": f"{shape0[1]}x{shape0[0]} to {pixels.shape[1]}x{pixels.shape[0]} pixels "
                                    f"(area interpolation)"})
    acts.extend(extra)
    encoded = _encode(pixels, fmt, quality)

    manifest = {"claim_generator_info": [agent], "title": dst.name, "format": MIME[fmt],
                "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": acts}},
                               {"label": SOURCE_LABEL, "data": source}]}
    if ingredient is not None:
        manifest["ingredients"] = [ingredient]
    try:
        f = open(dst, "x+b")
    except FileExistsError:
        raise MedForensicsError(dst, "already exists; export writes new files only") from None
    except OSError as e:
        raise MedForensicsError(dst, f"cannot be written ({e.strerror})") from None
    try:
        with f:
            if identity is None:
                f.write(encoded)
            else:
                parent = (src_fmt, src_bytes) if kind == "raster" else None
                _sign(manifest, identity, alg, fmt, encoded, f, parent, dst)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    out_bytes = dst.read_bytes()
    return {"source": str(src), "output": str(dst), "format": fmt, "bits": bits if fmt == "png" else 8,
            "rows": int(pixels.shape[0]), "columns": int(pixels.shape[1]), "window": w,
            "actions": [a["action"] for a in acts] if identity is not None else [],
            "manifest": identity is not None,
            "signer": _common_name(identity.cert) if identity is not None else None, "algorithm": alg,
            "source_sha256": source["sha256"], "output_sha256": _sha256(out_bytes), "bytes": len(out_bytes),
            "dicom": {k: source.get(k) for k in ("study_instance_uid", "series_instance_uid", "sop_instance_uid",
                                                  "modality")} if kind == "dicom" else None,
            "seconds": round(time.perf_counter() - t0, 4)}


def _sign(manifest: dict, identity, alg: str, fmt: str, encoded: bytes, dest, parent: tuple[str, bytes] | None,
          dst: Path) -> None:
    """Sign ``manifest`` over the encoded image into the open file ``dest``; ``parent`` = (format,
    bytes) of a raster source, added as the parent ingredient (with its own manifest, if any)."""
    import c2pa

    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg.encode(), identity.cert_pem(), identity.key_pem(),
                                                           None))
    except Exception as e:  # noqa: BLE001
        raise MedForensicsError(dst, f"the signing key or certificate is not usable for C2PA ({one_line(e, 240)})") from None
    # no thumbnail: the exported image is the content, a copy in the manifest adds ~150 kB
    ctx = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
    try:
        with signer:
            builder = c2pa.Builder(json.dumps(manifest), context=ctx)
            if parent is not None:
                pfmt, pbytes = parent
                builder.add_ingredient({"title": f"source {pfmt.upper()} image", "relationship": "parentOf",
                                        "label": "source"}, {"tiff": "image/tiff"}.get(pfmt, MIME.get(pfmt, "")),
                                       io.BytesIO(pbytes))
            builder.sign(signer, MIME[fmt], io.BytesIO(encoded), dest)
    except MedForensicsError:
        raise
    except Exception as e:  # noqa: BLE001 - c2pa's own errors: certificate profile, key mismatch, ...
        raise MedForensicsError(dst, f"C2PA signing failed ({one_line(e, 240)})") from None


def _common_name(cert) -> str | None:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.subject.rfc4514_string()
