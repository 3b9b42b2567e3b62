"""The log itself: fingerprints of images (:class:`Fingerprint`, :func:`fingerprint`), the
append-only Merkle tree with signed tree heads (:class:`TreeHead`), inclusion and consistency
proofs, audits (:class:`Ledger`) and the third-party check of a proof bundle (:func:`check_bundle`).
Keys are loaded with :mod:`medforensics.provenance.keys`; storage is
:mod:`medforensics.provenance.ledger.store`."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from ...config import LEDGER_KEY, settings
from ...core import MedForensicsError, ignoring_warnings, one_line
from .. import keys as _keys
from ..merkle import (EMPTY_ROOT, consistency_ranges, fold, inclusion_ranges, leaf_hash, node_hash, range_nodes,
                      verify_consistency, verify_inclusion)
from .store import ENV_LOG, _DB, _display, default_log

__all__ = ["Fingerprint", "fingerprint", "HEADER_ATTRIBUTES", "KINDS", "TreeHead", "Entry", "LookupResult",
           "AuditReport", "BundleCheck", "TokenInfo", "TOKEN_PREFIX", "Ledger", "verify_inclusion",
           "verify_consistency", "verify_tree_head", "check_bundle", "generate_key", "load_private_key",
           "default_log", "ENV_LOG", "ENV_KEY", "BUNDLE_FORMAT"]

SCHEMA_VERSION = "1"
BUNDLE_FORMAT = "medforensics-ledger-proof/1"
#: Environment variable naming the PEM private key that signs tree heads; read by :mod:`medforensics.config`.
ENV_KEY = LEDGER_KEY
_STH_PREFIX = b"medforensics-sth-v1\n"
#: The kinds of image a fingerprint can be of (what :func:`fingerprint` writes).
KINDS = ("dicom", "raster", "nifti")
#: Every write token starts with this, then 43 URL-safe base64 characters (256 random bits).
TOKEN_PREFIX = "mflt_"
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

#: Identifying DICOM attributes hashed into ``header_sha256``, in this order.
HEADER_ATTRIBUTES = (
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
    "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
    "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "ContentDate", "ContentTime", "Modality", "Manufacturer", "InstitutionName", "StationName",
    "DeviceSerialNumber", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "SliceThickness", "Rows", "Columns", "BitsStored",
)


# ---------------------------------------------------------------------------------------------
# Fingerprints
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fingerprint:
    """What the log records about one image.

    ``key`` identifies the image across versions (SOP Instance UID; the pixel hash for files that
    carry no UID); ``pixel_sha256`` and ``header_sha256`` are hex SHA-256 digests; ``kind`` is
    ``dicom``, ``raster`` or ``nifti``. ``source`` (the file read) is informational only.
    """

    key: str
    pixel_sha256: str
    header_sha256: str
    kind: str = "dicom"
    source: str | None = field(default=None, compare=False)

    def leaf_bytes(self, timestamp_ms: int) -> bytes:
        """The canonical leaf: compact JSON with sorted keys, ASCII only."""
        return _canonical({"header_sha256": self.header_sha256, "key": self.key, "kind": self.kind,
                           "pixel_sha256": self.pixel_sha256, "timestamp": int(timestamp_ms), "v": 1})

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "pixel_sha256": self.pixel_sha256, "header_sha256": self.header_sha256,
                "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str | None = None) -> "Fingerprint":
        """Build from a dict (e.g. POSTed JSON); a clear error when fields are missing or malformed."""
        if not isinstance(d, dict):
            raise MedForensicsError(where, "a fingerprint must be a JSON object")
        try:
            fp = cls(key=str(d["key"]), pixel_sha256=str(d["pixel_sha256"]).lower(),
                     header_sha256=str(d["header_sha256"]).lower(), kind=str(d.get("kind", "dicom")))
        except KeyError as e:
            raise MedForensicsError(where, f"fingerprint lacks the field {e.args[0]!r}") from None
        for name in ("pixel_sha256", "header_sha256"):
            if not re.fullmatch(r"[0-9a-f]{64}", getattr(fp, name)):
                raise MedForensicsError(where, f"fingerprint field {name} is not 64 hex digits")
        if fp.kind not in KINDS:
            raise MedForensicsError(where, f"fingerprint kind {fp.kind[:40]!r} is not one of {', '.join(KINDS)}")
        if not fp.key or len(fp.key) > 256:
            raise MedForensicsError(where, "fingerprint key is empty or longer than 256 characters")
        return fp


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _pixel_digest(arr: np.ndarray) -> str:
    """SHA-256 of the stored values with their shape and dtype (little-endian, C order)."""
    arr = np.asarray(arr)
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder not in ("|",) else arr.dtype
    arr = np.ascontiguousarray(arr, dtype=dt)
    h = hashlib.sha256(b"medforensics-pixels-v1\x00")
    h.update(_canonical({"dtype": dt.str, "shape": list(arr.shape)}) + b"\x00")
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _norm_value(v: Any, vr: str | None) -> Any:
    from pydicom.multival import MultiValue
    if v is None or v == "" or (isinstance(v, (list, MultiValue)) and len(v) == 0):
        return None
    if isinstance(v, (list, tuple, MultiValue)):
        return [_norm_value(x, vr) for x in v]
    if vr in ("DS", "FL", "FD"):
        try:
            return repr(float(v))
        except (TypeError, ValueError):
            return str(v).strip()
    if vr in ("IS", "US", "SS", "UL", "SL"):
        try:
            return int(v)
        except (TypeError, ValueError):
            return str(v).strip()
    return str(v).strip()


def _header_digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(b"medforensics-header-v1\x00" + _canonical(values)).hexdigest()


def _dicom_fingerprint(ds, where: str | None) -> Fingerprint:
    values: dict[str, Any] = {}
    for kw in HEADER_ATTRIBUTES:
        elem = ds.data_element(kw) if kw in ds else None
        values[kw] = None if elem is None else _norm_value(elem.value, elem.VR)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise MedForensicsError(where, "no pixel data: the ledger logs images only")
    try:
        with ignoring_warnings():
            arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on damaged pixel data
        raise MedForensicsError(where, f"cannot decode pixel data: {one_line(e, 200)}") from None
    pixel = _pixel_digest(arr)
    key = str(getattr(ds, "SOPInstanceUID", "") or "").strip() or pixel
    return Fingerprint(key=key, pixel_sha256=pixel, header_sha256=_header_digest(values), kind="dicom",
                       source=where)


def _array_fingerprint(arr: np.ndarray, kind: str, where: str, bits: int | None = None) -> Fingerprint:
    pixel = _pixel_digest(arr)
    values: dict[str, Any] = {kw: None for kw in HEADER_ATTRIBUTES}
    values["Rows"], values["Columns"] = (int(arr.shape[0]), int(arr.shape[1])) if arr.ndim >= 2 else (None, None)
    values["BitsStored"] = bits if bits is not None else int(arr.dtype.itemsize * 8)
    return Fingerprint(key=pixel, pixel_sha256=pixel, header_sha256=_header_digest(values), kind=kind, source=where)


def fingerprint(path_or_dataset: "str | Path | Any") -> Fingerprint:
    """The fingerprint of a DICOM file or pydicom ``Dataset``, or of a PNG/JPEG/TIFF/NIfTI file.

    The pixel hash covers the decoded stored values (before rescale), their shape and dtype, so a
    lossless change of transfer syntax leaves it unchanged. Raises :class:`MedForensicsError`
    naming the file when it cannot be read.

    >>> from pydicom.data import get_testdata_file
    >>> fp = fingerprint(get_testdata_file("CT_small.dcm"))
    >>> fp.key
    '1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322'
    """
    from pydicom.dataset import Dataset
    if isinstance(path_or_dataset, Dataset):
        return _dicom_fingerprint(path_or_dataset, getattr(path_or_dataset, "filename", None) or None)
    path = Path(path_or_dataset)
    if not path.exists():
        raise MedForensicsError(path, "no such file")
    if path.is_dir():
        raise MedForensicsError(path, "is a folder, not an image file")
    from ...io import sniff
    kind = sniff(path)
    if kind == "empty":
        raise MedForensicsError(path, "empty file")
    if kind == "dicom":
        import pydicom
        from pydicom.errors import InvalidDicomError
        try:
            with open(path, "rb") as f:
                has_preamble = f.read(132)[128:132] == b"DICM"
            with ignoring_warnings():
                ds = pydicom.dcmread(path, force=not has_preamble)
        except InvalidDicomError as e:
            raise MedForensicsError(path, f"not a DICOM file ({one_line(e, 200)})") from None
        except Exception as e:  # noqa: BLE001
            raise MedForensicsError(path, f"unreadable DICOM file: {one_line(e, 200)}") from None
        return _dicom_fingerprint(ds, str(path))
    if kind == "raster":
        from PIL import Image as PILImage, UnidentifiedImageError
        try:
            with ignoring_warnings():
                with PILImage.open(path) as pil:
                    arr = np.asarray(pil)
        except UnidentifiedImageError:
            raise MedForensicsError(path, "not an image file (format not recognised)") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise MedForensicsError(path, f"damaged or truncated image file: {one_line(e, 200)}") from None
        return _array_fingerprint(arr, "raster", str(path))
    if kind == "nifti":
        try:
            import nibabel as nib
            arr = np.asarray(nib.load(str(path)).dataobj.get_unscaled())
        except Exception as e:  # noqa: BLE001
            raise MedForensicsError(path, f"unreadable NIfTI file: {one_line(e, 200)}") from None
        return _array_fingerprint(arr, "nifti", str(path))
    raise MedForensicsError(path, "not a recognised medical image (expected DICOM, PNG, JPEG, TIFF or NIfTI)")

# ---------------------------------------------------------------------------------------------
# Keys and signed tree heads
# ---------------------------------------------------------------------------------------------
def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 private key for a log (:func:`medforensics.provenance.keys.generate_key`)."""
    return _keys.generate_key("ec")


def load_private_key(path: str | Path, password: bytes | None = None):
    """A PEM private key (Ed25519, EC P-256 or RSA) from a file
    (:func:`medforensics.provenance.keys.load_private_key`); a clear error otherwise."""
    key = _keys.load_private_key(path, password)
    _algorithm(key, Path(path))
    return key


def _algorithm(key, where=None) -> str:
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "ed25519"
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if not isinstance(key.curve, ec.SECP256R1):
            raise MedForensicsError(where, f"EC key on curve {key.curve.name}; the ledger needs P-256")
        return "ecdsa-p256-sha256"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa-pkcs1-sha256"
    raise MedForensicsError(where, f"unsupported key type {type(key).__name__} (use Ed25519, EC P-256 or RSA)")
def _public_pem(key) -> bytes:
    return _keys.public_key_pem(key)


def _load_public(public_key_pem: bytes | str, where=None):
    """The public key of a PEM public key, or of a PEM certificate (its subject's key)."""
    if isinstance(public_key_pem, str):
        public_key_pem = public_key_pem.encode("ascii", "replace")
    if b"-----BEGIN CERTIFICATE-----" in public_key_pem:
        try:
            pub = x509.load_pem_x509_certificate(public_key_pem).public_key()
        except (ValueError, TypeError) as e:
            raise MedForensicsError(where, f"not a readable PEM certificate ({one_line(e, 200)})") from None
    else:
        try:
            pub = serialization.load_pem_public_key(public_key_pem)
        except (ValueError, TypeError) as e:
            raise MedForensicsError(where, f"not a PEM public key or certificate ({one_line(e, 200)})") from None
    _algorithm(pub, where)
    return pub


def _log_id(pub) -> bytes:
    return hashlib.sha256(pub.public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


def _sign(key, data: bytes) -> bytes:
    alg = _algorithm(key)
    if alg == "ed25519":
        return key.sign(data)
    if alg == "ecdsa-p256-sha256":
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    return key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _verify_sig(pub, data: bytes, sig: bytes) -> bool:
    try:
        alg = _algorithm(pub)
        if alg == "ed25519":
            pub.verify(sig, data)
        elif alg == "ecdsa-p256-sha256":
            pub.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        else:
            pub.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError, MedForensicsError):
        return False


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head: the log's commitment to its first ``tree_size`` leaves.

    The signature covers ``b"medforensics-sth-v1\\n" || log_id (32) || uint64 tree_size ||
    uint64 timestamp (ms since 1970, UTC) || root_hash (32)``, big-endian; ``log_id`` is the
    SHA-256 of the log's public key (DER SubjectPublicKeyInfo), as in Certificate Transparency.
    """

    tree_size: int
    root_hash: bytes
    timestamp: int
    log_id: bytes
    algorithm: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return _sth_bytes(self.log_id, self.tree_size, self.timestamp, self.root_hash)

    def to_dict(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root_hash": self.root_hash.hex(), "timestamp": self.timestamp,
                "log_id": self.log_id.hex(), "algorithm": self.algorithm,
                "signature": base64.b64encode(self.signature).decode("ascii")}

    @classmethod
    def from_dict(cls, d: Any, where: str | None = None) -> "TreeHead":
        """Parse a tree head; MedForensicsError naming ``where`` when a field is missing or malformed."""
        if not isinstance(d, dict):
            raise MedForensicsError(where, "tree head is not a JSON object")
        try:
            th = cls(tree_size=int(d["tree_size"]), root_hash=bytes.fromhex(d["root_hash"]),
                     timestamp=int(d["timestamp"]), log_id=bytes.fromhex(d["log_id"]), algorithm=str(d["algorithm"]),
                     signature=base64.b64decode(d["signature"], validate=True))
        except KeyError as e:
            raise MedForensicsError(where, f"tree head lacks the field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise MedForensicsError(where, f"malformed tree head ({one_line(e, 200)})") from None
        if len(th.root_hash) != 32 or len(th.log_id) != 32 or th.tree_size < 0:
            raise MedForensicsError(where, "malformed tree head (hashes must be 32 bytes, size >= 0)")
        return th


def _sth_bytes(log_id: bytes, size: int, ts: int, root: bytes) -> bytes:
    return _STH_PREFIX + log_id + struct.pack(">QQ", size, ts) + root


def _sign_head(key, size: int, root: bytes, ts: int | None = None) -> TreeHead:
    ts = int(time.time() * 1000) if ts is None else int(ts)
    lid = _log_id(key.public_key())
    return TreeHead(size, root, ts, lid, _algorithm(key), _sign(key, _sth_bytes(lid, size, ts, root)))


def verify_tree_head(sth: "TreeHead | dict", public_key_pem: bytes | str) -> bool:
    """Whether ``sth`` was signed by the log whose public key is ``public_key_pem``.

    False for a wrong key, a bad signature or a malformed head; raises only when the public key
    itself is unusable."""
    pub = _load_public(public_key_pem)
    try:
        th = sth if isinstance(sth, TreeHead) else TreeHead.from_dict(sth)
    except MedForensicsError:
        return False
    if th.log_id != _log_id(pub) or th.algorithm != _algorithm(pub):
        return False
    return _verify_sig(pub, th.signed_bytes(), th.signature)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One logged leaf: its index, hash, fingerprint, timestamp (ms) and the file it was read from."""

    index: int
    leaf_hash: bytes
    fingerprint: Fingerprint
    timestamp: int
    leaf_data: bytes
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "leaf_hash": self.leaf_hash.hex(), "fingerprint": self.fingerprint.to_dict(),
                "timestamp": self.timestamp, "source": self.source}


@dataclass(frozen=True)
class LookupResult:
    """Outcome of :meth:`Ledger.lookup`.

    ``status`` is ``unchanged`` (the latest entry for the key has the same pixel and header
    hashes), ``changed`` (``changed`` names ``pixels`` and/or ``header``) or ``unknown``. For a
    known key, ``entry`` is that latest entry and ``proof`` its audit path in ``tree_head``.
    """

    status: str
    key: str
    changed: tuple[str, ...] = ()
    entry: Entry | None = None
    tree_head: TreeHead | None = None
    proof: tuple[bytes, ...] = ()

    @property
    def leaf_index(self) -> int | None:
        return None if self.entry is None else self.entry.index

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "key": self.key, "changed": list(self.changed), "leaf_index": self.leaf_index,
                "entry": self.entry.to_dict() if self.entry else None,
                "tree_head": self.tree_head.to_dict() if self.tree_head else None,
                "audit_path": [p.hex() for p in self.proof]}


@dataclass
class AuditReport:
    """Outcome of :meth:`Ledger.audit`: ``ok`` when the leaves, every stored node and every signed
    head agree; ``problems`` lists what does not (at most 50)."""

    log: str
    ok: bool
    tree_size: int
    leaves: int
    nodes: int
    heads: int
    root_hash: bytes
    problems: list[str]


@dataclass(frozen=True)
class TokenInfo:
    """A write token of a served log, as :meth:`Ledger.tokens` lists it (never the token itself:
    only its SHA-256 is stored). Times in ms since 1970 UTC; ``writes`` accepted HTTP writes
    carried ``entries`` entries in all."""

    name: str
    created: int
    revoked: int | None
    writes: int = 0
    entries: int = 0

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "created": self.created, "revoked": self.revoked, "writes": self.writes,
                "entries": self.entries}


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class BundleCheck:
    """Outcome of :func:`check_bundle`: ``ok`` and, when not, the ``problems`` found."""

    ok: bool
    problems: list[str]
    leaf_index: int | None = None
    tree_size: int | None = None
    fingerprint: Fingerprint | None = None
    tree_head: TreeHead | None = None


# ---------------------------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------------------------

class Ledger:
    """An append-only Merkle-tree log in SQLite or PostgreSQL.

    Open an existing log with ``Ledger(location)``; make a new one with :meth:`create`. Reading
    (lookups, proofs, audit) needs no private key; :meth:`append` signs a new tree head with the
    key given here, else the one in ``$MEDFORENSICS_LEDGER_KEY``, else the key file recorded at
    ``init``. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, location: str | Path, *, private_key=None, key_path: str | Path | None = None,
                 _create: bool = False):
        self.location = str(location)
        self.name = _display(self.location)
        self._key = private_key
        self._key_path = Path(key_path) if key_path else None
        self._db = _DB(self.location, self.name, _create)
        if not _create:
            self._check_schema()

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def create(cls, location: str | Path, private_key, *, key_path: str | Path | None = None) -> "Ledger":
        """Make a new, empty log signed by ``private_key`` (its public key is stored in the log;
        ``key_path``, where the private key is kept, is recorded as a hint for later appends).
        Refuses an existing SQLite file or a PostgreSQL database that already holds a log."""
        name = _display(str(location))
        alg = _algorithm(private_key, name)
        self = cls(location, private_key=private_key, key_path=key_path, _create=True)
        try:
            if self._db.dialect == "postgresql" and self._db.query(
                    "SELECT 1 FROM information_schema.tables WHERE table_name = 'ledger_meta'"):
                raise MedForensicsError(name, "already holds a ledger; a new log needs a new database")
            head = _sign_head(private_key, 0, EMPTY_ROOT)
            with self._guard("creating the log"), self._db.write():
                for stmt in self._db.schema():
                    self._db.execute(stmt)
                meta = {"schema_version": SCHEMA_VERSION, "public_key_pem": _public_pem(private_key).decode("ascii"),
                        "algorithm": alg, "log_id": head.log_id.hex(), "created": str(head.timestamp),
                        "key_path": str(Path(key_path).resolve()) if key_path else ""}
                self._db.executemany("INSERT INTO ledger_meta (name, value) VALUES (?, ?)", list(meta.items()))
                self._insert_head(head)
        except BaseException:
            self.close()
            raise
        self._meta = meta
        return self

    def _check_schema(self) -> None:
        try:
            rows = self._db.query("SELECT name, value FROM ledger_meta")
        except self._db.errors as e:
            self._rollback_pg()
            raise MedForensicsError(self.name, f"not a medforensics ledger ({one_line(e, 200)})") from None
        meta = dict(rows)
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise MedForensicsError(self.name, f"unsupported ledger schema version {meta.get('schema_version')!r} "
                                    f"(this medforensics reads version {SCHEMA_VERSION})")
        for k in ("public_key_pem", "log_id", "algorithm"):
            if not meta.get(k):
                raise MedForensicsError(self.name, f"corrupted log: metadata {k!r} is missing")
        try:
            pub = _load_public(meta["public_key_pem"], self.name)
        except MedForensicsError:
            raise MedForensicsError(self.name, "corrupted log: the stored public key is unreadable") from None
        if _log_id(pub).hex() != meta["log_id"]:
            raise MedForensicsError(self.name, "corrupted log: the log id does not match the stored public key")
        try:
            for table in ("ledger_leaves", "ledger_nodes", "ledger_heads"):
                self._db.query(f"SELECT COUNT(*) FROM (SELECT 1 FROM {table} LIMIT 1) t")
        except self._db.errors as e:
            raise MedForensicsError(self.name, f"wrong schema: {one_line(e, 200)}") from None
        self._meta = meta

    def _rollback_pg(self) -> None:
        if self._db.dialect == "postgresql":
            try:
                self._db.conn.rollback()
            except Exception:  # noqa: BLE001
                pass

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- keys ----------------------------------------------------------------------------------
    def public_key_pem(self) -> bytes:
        """The log's public key (PEM SubjectPublicKeyInfo)."""
        return self._meta["public_key_pem"].encode("ascii")

    @property
    def log_id(self) -> bytes:
        return bytes.fromhex(self._meta["log_id"])

    def _signer(self):
        key = self._key
        if key is None:
            env_key = settings().ledger_key
            path = self._key_path or (Path(env_key) if env_key else None) \
                or (Path(self._meta["key_path"]) if self._meta.get("key_path") else None)
            if path is None:
                raise MedForensicsError(self.name, f"no private key to sign tree heads: pass --key or set {ENV_KEY}")
            key = load_private_key(path)
        if _public_pem(key) != self.public_key_pem():
            raise MedForensicsError(self.name, "the private key given is not this log's key")
        self._key = key
        return key

    # -- reading -------------------------------------------------------------------------------
    def _guard(self, what: str):
        """Translate driver errors into one-line errors naming the log."""
        db = self._db
        name = self.name
        rollback = self._rollback_pg

        class _G:
            def __enter__(self_inner):
                return None

            def __exit__(self_inner, et, e, tb):
                if et is not None and issubclass(et, db.errors):
                    rollback()
                    raise MedForensicsError(name, f"database error while {what}: {one_line(e, 200)}") from None
                return False
        return _G()

    def head(self) -> TreeHead:
        """The latest signed tree head (its signature is checked; a bad one is an error)."""
        with self._guard("reading the tree head"):
            rows = self._db.query("SELECT tree_size, root_hash, timestamp, algorithm, signature FROM ledger_heads "
                                  "ORDER BY tree_size DESC LIMIT 1")
        if not rows:
            raise MedForensicsError(self.name, "corrupted log: no signed tree head")
        th = self._head_from_row(rows[0])
        if not verify_tree_head(th, self.public_key_pem()):
            raise MedForensicsError(self.name, f"corrupted log: the tree head of size {th.tree_size} does not verify "
                                    "with the log's public key")
        return th

    def heads(self) -> list[TreeHead]:
        """Every signed tree head, oldest first (signatures not checked; see :meth:`audit`)."""
        with self._guard("reading tree heads"):
            rows = self._db.query("SELECT tree_size, root_hash, timestamp, algorithm, signature FROM ledger_heads "
                                  "ORDER BY tree_size")
        return [self._head_from_row(r) for r in rows]

    def _head_from_row(self, r) -> TreeHead:
        return TreeHead(int(r[0]), bytes(r[1]), int(r[2]), self.log_id, str(r[3]), bytes(r[4]))

    @property
    def size(self) -> int:
        """Number of leaves under the latest signed tree head."""
        return self.head().tree_size

    def _nodes(self, coords: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        want = sorted(set(coords))
        got: dict[tuple[int, int], bytes] = {}
        with self._guard("reading tree nodes"):
            for i in range(0, len(want), 100):
                chunk = want[i:i + 100]
                where = " OR ".join(["(level = ? AND idx = ?)"] * len(chunk))
                params = [x for c in chunk for x in c]
                for level, idx, h in self._db.query(f"SELECT level, idx, hash FROM ledger_nodes WHERE {where}", params):
                    got[(int(level), int(idx))] = bytes(h)
        missing = [c for c in want if c not in got]
        if missing:
            raise MedForensicsError(self.name, f"corrupted log: tree node (level {missing[0][0]}, index "
                                    f"{missing[0][1]}) is missing; run 'medforensics ledger audit'")
        bad = [c for c, h in got.items() if len(h) != 32]
        if bad:
            raise MedForensicsError(self.name, f"corrupted log: tree node {bad[0]} is not a 32-byte hash")
        return got

    def _range_hashes(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        per = [range_nodes(lo, hi) for lo, hi in ranges]
        nodes = self._nodes(c for p in per for c in p)
        return [fold([nodes[c] for c in p]) for p in per]

    def root(self, tree_size: int | None = None) -> bytes:
        """The tree hash of the first ``tree_size`` leaves (default: the latest head's), from stored nodes."""
        n = self.size if tree_size is None else int(tree_size)
        self._check_size(n)
        return self._range_hashes([(0, n)])[0] if n else EMPTY_ROOT

    def _check_size(self, n: int, head: TreeHead | None = None) -> None:
        size = (head or self.head()).tree_size
        if not 0 <= n <= size:
            raise MedForensicsError(self.name, f"tree size {n} is outside 0..{size}")

    def inclusion_proof(self, index: int, tree_size: int | None = None, *, _head: TreeHead | None = None) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of ``tree_size`` leaves (default: latest)."""
        head = _head or self.head()
        n = head.tree_size if tree_size is None else int(tree_size)
        self._check_size(n, head)
        if not 0 <= index < n:
            raise MedForensicsError(self.name, f"leaf index {index} is outside a tree of size {n}")
        return self._range_hashes(inclusion_ranges(index, n))

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """Proof that the tree of ``first`` leaves is a prefix of the tree of ``second`` leaves."""
        second = self.size if second is None else int(second)
        self._check_size(second)
        if not 0 <= first <= second:
            raise MedForensicsError(self.name, f"no consistency proof from size {first} to size {second}")
        return self._range_hashes(consistency_ranges(first, second))

    def _entry_from_row(self, r) -> Entry:
        idx, lh, key, pix, hdr, kind, ts, data, source = r
        data, lh = bytes(data), bytes(lh)
        fp = Fingerprint(str(key), str(pix), str(hdr), str(kind), source)
        if leaf_hash(data) != lh or fp.leaf_bytes(int(ts)) != data:
            raise MedForensicsError(self.name, f"corrupted log: entry {idx} does not match its leaf hash or leaf "
                                    "data; run 'medforensics ledger audit'")
        return Entry(int(idx), lh, fp, int(ts), data, source)

    _ENTRY_COLS = "idx, leaf_hash, fp_key, pixel_sha256, header_sha256, kind, timestamp, leaf_data, source"

    def entry(self, index: int) -> Entry:
        """The leaf at ``index``."""
        with self._guard("reading an entry"):
            rows = self._db.query(f"SELECT {self._ENTRY_COLS} FROM ledger_leaves WHERE idx = ?", (int(index),))
        if not rows:
            raise MedForensicsError(self.name, f"no entry {index} in the log")
        return self._entry_from_row(rows[0])

    def entries_for_key(self, key: str) -> list[Entry]:
        """Every entry logged under ``key``, oldest first."""
        with self._guard("looking up a key"):
            rows = self._db.query(f"SELECT {self._ENTRY_COLS} FROM ledger_leaves WHERE fp_key = ? ORDER BY idx", (key,))
        return [self._entry_from_row(r) for r in rows]

    def find_leaf(self, leaf_hash_: bytes) -> Entry | None:
        """The first entry with this leaf hash, or None."""
        with self._guard("looking up a leaf hash"):
            rows = self._db.query(f"SELECT {self._ENTRY_COLS} FROM ledger_leaves WHERE leaf_hash = ? ORDER BY idx "
                                  "LIMIT 1", (bytes(leaf_hash_),))
        return self._entry_from_row(rows[0]) if rows else None

    def _proved(self, entry: Entry, head: TreeHead) -> tuple[bytes, ...]:
        proof = self.inclusion_proof(entry.index, head.tree_size, _head=head)
        if not verify_inclusion(entry.leaf_hash, entry.index, head.tree_size, proof, head.root_hash):
            raise MedForensicsError(self.name, f"corrupted log: the inclusion proof of entry {entry.index} does not "
                                    f"match the signed tree head of size {head.tree_size}; run 'medforensics ledger audit'")
        return tuple(proof)

    def lookup(self, fp: Fingerprint) -> LookupResult:
        """Compare ``fp`` with the latest entry logged under its key (one indexed query plus an
        ``O(log n)`` proof, checked against the signed head before it is returned)."""
        head = self.head()
        with self._guard("looking up a fingerprint"):
            rows = self._db.query(f"SELECT {self._ENTRY_COLS} FROM ledger_leaves WHERE fp_key = ? AND idx < ? "
                                  "ORDER BY idx DESC LIMIT 1", (fp.key, head.tree_size))
        if not rows:
            return LookupResult("unknown", fp.key, tree_head=head)
        e = self._entry_from_row(rows[0])
        changed = tuple(w for w, a, b in (("pixels", fp.pixel_sha256, e.fingerprint.pixel_sha256),
                                          ("header", fp.header_sha256, e.fingerprint.header_sha256)) if a != b)
        return LookupResult("changed" if changed else "unchanged", fp.key, changed, e, head, self._proved(e, head))

    # -- writing -------------------------------------------------------------------------------
    def _insert_head(self, th: TreeHead) -> None:
        self._db.execute("INSERT INTO ledger_heads (tree_size, root_hash, timestamp, algorithm, signature) "
                         "VALUES (?, ?, ?, ?, ?)", (th.tree_size, th.root_hash, th.timestamp, th.algorithm, th.signature))

    def append(self, fingerprints: Iterable[Fingerprint], *, timestamp_ms: int | None = None,
               writer: str | None = None) -> list[int]:
        """Append fingerprints in one transaction and sign the new tree head; returns their leaf
        indexes. Concurrent appenders are serialised; the log's current root is checked against
        its signed head first, so nothing is appended to a corrupted log.

        ``writer`` is the name of the write token that sent them (HTTP writes, see
        :meth:`authenticate`): it is recorded in ``ledger_writes`` in the same transaction, and
        the append is refused if the token was revoked in the meantime."""
        fps = list(fingerprints)
        key = self._signer()
        ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
        with self._guard("appending"):
            with self._db.write():
                if writer is not None:
                    rows = self._db.query("SELECT revoked FROM ledger_tokens WHERE name = ?", (writer,)) \
                        if self._db.has_table("ledger_tokens") else []
                    if not rows or rows[0][0] is not None:
                        raise MedForensicsError(self.name, f"write token {writer!r} does not exist or was revoked")
                head = self.head()
                n = head.tree_size
                top = self._db.query("SELECT MAX(idx) FROM ledger_leaves")[0][0]
                if (top if top is not None else -1) != n - 1:
                    raise MedForensicsError(self.name, f"corrupted log: the leaves table ends at {top}, the signed "
                                            f"head has {n} leaves; run 'medforensics ledger audit'")
                frontier = range_nodes(0, n) if n else []
                nodes = self._nodes(frontier) if n else {}
                stack = [(lvl, nodes[(lvl, idx)]) for lvl, idx in frontier]
                if fold([h for _, h in stack]) != head.root_hash:
                    raise MedForensicsError(self.name, "corrupted log: the stored tree does not match its signed head; "
                                            "run 'medforensics ledger audit'")
                if not fps:
                    return []
                leaf_rows, node_rows = [], []
                for i, fp in enumerate(fps, start=n):
                    data = fp.leaf_bytes(ts)
                    h = leaf_hash(data)
                    leaf_rows.append((i, h, fp.key, fp.pixel_sha256, fp.header_sha256, fp.kind, ts, data, fp.source))
                    node_rows.append((0, i, h))
                    level, idx = 0, i
                    while idx & 1:
                        _, left = stack.pop()
                        h = node_hash(left, h)
                        level, idx = level + 1, idx >> 1
                        node_rows.append((level, idx, h))
                    stack.append((level, h))
                self._db.executemany(f"INSERT INTO ledger_leaves ({self._ENTRY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                     leaf_rows)
                self._db.executemany("INSERT INTO ledger_nodes (level, idx, hash) VALUES (?, ?, ?)", node_rows)
                if writer is not None:
                    self._db.execute("INSERT INTO ledger_writes (first_idx, count, token_name, timestamp) "
                                     "VALUES (?, ?, ?, ?)", (n, len(fps), writer, ts))
                new = n + len(fps)
                self._insert_head(_sign_head(key, new, fold([h for _, h in stack]), max(ts, head.timestamp)))
        return list(range(n, n + len(fps)))

    # -- write tokens of a served log -------------------------------------------------------------
    def new_token(self, name: str) -> str:
        """Create a write token called ``name`` and return it; only its SHA-256 is stored, so this
        is the one time it can be read. Names are letters, digits and ``._@-`` (at most 64,
        starting with a letter or digit) and are never reused, revoked or not, so that the write
        records (:meth:`writer`) stay unambiguous."""
        if not isinstance(name, str) or not _TOKEN_NAME.fullmatch(name):
            raise MedForensicsError(self.name, f"token name {str(name)[:80]!r} is not 1-64 letters, digits or ._@- "
                                    "(starting with a letter or digit)")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._guard("creating a token"), self._db.write():
            for stmt in self._db.auth_schema():
                self._db.execute(stmt)
            if self._db.query("SELECT 1 FROM ledger_tokens WHERE name = ?", (name,)):
                raise MedForensicsError(self.name, f"a token named {name!r} exists already (names are never reused, "
                                        "even after 'ledger token revoke')")
            self._db.execute("INSERT INTO ledger_tokens (name, sha256, created, revoked) VALUES (?, ?, ?, NULL)",
                             (name, _token_digest(token), int(time.time() * 1000)))
        return token

    def revoke_token(self, name: str) -> None:
        """Revoke the token called ``name``: from now on it writes nothing (its row and the
        records of its past writes stay)."""
        with self._guard("revoking a token"), self._db.write():
            rows = self._db.query("SELECT revoked FROM ledger_tokens WHERE name = ?", (name,)) \
                if self._db.has_table("ledger_tokens") else []
            if not rows:
                raise MedForensicsError(self.name, f"no token named {str(name)[:80]!r} ('ledger token list' shows them)")
            if rows[0][0] is not None:
                raise MedForensicsError(self.name, f"token {name!r} is revoked already")
            self._db.execute("UPDATE ledger_tokens SET revoked = ? WHERE name = ?", (int(time.time() * 1000), name))

    def tokens(self) -> list[TokenInfo]:
        """Every write token (active and revoked), oldest first, with the writes each made."""
        with self._guard("listing tokens"):
            if not self._db.has_table("ledger_tokens"):
                return []
            rows = self._db.query("SELECT t.name, t.created, t.revoked, COUNT(w.first_idx), COALESCE(SUM(w.count), 0) "
                                  "FROM ledger_tokens t LEFT JOIN ledger_writes w ON w.token_name = t.name "
                                  "GROUP BY t.name, t.created, t.revoked ORDER BY t.created, t.name")
        return [TokenInfo(str(n), int(c), None if r is None else int(r), int(w), int(e)) for n, c, r, w, e in rows]

    def authenticate(self, token: str | None) -> str | None:
        """The name of the active write token ``token`` is, or None. Its SHA-256 is compared with
        every active token's stored hash in constant time (:func:`hmac.compare_digest`)."""
        with self._guard("checking a token"):
            rows = self._db.query("SELECT name, sha256 FROM ledger_tokens WHERE revoked IS NULL") \
                if self._db.has_table("ledger_tokens") else []
        if not token or len(token) > 256:
            return None
        digest = _token_digest(token)
        found = None
        for name, stored in rows:
            if hmac.compare_digest(str(stored), digest) and found is None:
                found = str(name)
        return found

    def writer(self, index: int) -> str | None:
        """The name of the token whose HTTP write added leaf ``index`` (None for a local append)."""
        with self._guard("reading the write records"):
            if not self._db.has_table("ledger_writes"):
                return None
            rows = self._db.query("SELECT token_name FROM ledger_writes WHERE first_idx <= ? AND first_idx + count > ? "
                                  "ORDER BY first_idx DESC LIMIT 1", (int(index), int(index)))
        return str(rows[0][0]) if rows else None

    # -- proofs for third parties ----------------------------------------------------------------
    def prove(self, target: "Fingerprint | str | Path") -> dict[str, Any]:
        """A self-contained JSON-able proof bundle that ``target`` (a fingerprint or an image file) is
        logged unchanged: the leaf, its audit path, the signed tree head and the public key."""
        fp = target if isinstance(target, Fingerprint) else fingerprint(target)
        res = self.lookup(fp)
        where = fp.source or self.name
        if res.status == "unknown":
            raise MedForensicsError(where, f"not in the log {self.name} (key {fp.key})")
        if res.status == "changed":
            raise MedForensicsError(where, f"differs from its logged entry {res.leaf_index} ({' and '.join(res.changed)} "
                                    "changed); no proof for a changed image")
        assert res.entry is not None and res.tree_head is not None
        return {"format": BUNDLE_FORMAT,
                "log": {"log_id": self.log_id.hex(), "public_key_pem": self.public_key_pem().decode("ascii")},
                "fingerprint": fp.to_dict(),
                "leaf": {"index": res.entry.index, "data": base64.b64encode(res.entry.leaf_data).decode("ascii"),
                         "hash": res.entry.leaf_hash.hex()},
                "inclusion": {"tree_size": res.tree_head.tree_size, "audit_path": [p.hex() for p in res.proof]},
                "tree_head": res.tree_head.to_dict()}

    # -- audit ---------------------------------------------------------------------------------
    def audit(self) -> AuditReport:
        """Recompute every leaf hash, every stored node and the root of every signed head from the
        leaf data, and check every head's signature. Reads the whole log (``O(n)``)."""
        problems: list[str] = []

        def problem(msg: str) -> None:
            if len(problems) < 50:
                problems.append(msg)

        pem = self.public_key_pem()
        heads = self.heads()
        with self._guard("auditing"):
            level: list[bytes] = []
            expect = 0
            for r in self._db.stream(f"SELECT {self._ENTRY_COLS} FROM ledger_leaves ORDER BY idx"):
                idx = int(r[0])
                if idx != expect:
                    problem(f"leaf rows {expect}..{idx - 1} are missing" if idx > expect else f"leaf row {idx} repeated")
                    expect = idx
                data = bytes(r[7])
                h = leaf_hash(data)
                if h != bytes(r[1]):
                    problem(f"entry {idx}: stored leaf hash does not match its leaf data")
                fp = Fingerprint(str(r[2]), str(r[3]), str(r[4]), str(r[5]))
                if fp.leaf_bytes(int(r[6])) != data:
                    problem(f"entry {idx}: indexed columns (key, hashes, timestamp) differ from the leaf data")
                level.append(h)
                expect += 1
            n_leaves = len(level)
            levels = [level]
            n_nodes = 0
            lvl = 0
            while True:
                cur = levels[lvl]
                stored = {}
                for i, h in self._db.stream("SELECT idx, hash FROM ledger_nodes WHERE level = ? ORDER BY idx", (lvl,)):
                    stored[int(i)] = bytes(h)
                n_nodes += len(stored)
                for i, h in enumerate(cur):
                    s = stored.pop(i, None)
                    if s is None:
                        problem(f"node (level {lvl}, index {i}) is missing")
                    elif s != h:
                        problem(f"node (level {lvl}, index {i}) was altered: stored hash differs from the recomputed one")
                for i in list(stored)[:5]:
                    problem(f"node (level {lvl}, index {i}) has no leaves under it")
                if len(cur) < 2:
                    break
                levels.append([node_hash(cur[i], cur[i + 1]) for i in range(0, len(cur) - 1, 2)])
                lvl += 1
            extra = self._db.query("SELECT COUNT(*) FROM ledger_nodes WHERE level > ?", (lvl,))[0][0]
            if extra:
                problem(f"{extra} node row(s) above the top level {lvl}")

        def root_at(m: int) -> bytes:
            return fold([levels[lv][ix] for lv, ix in range_nodes(0, m)]) if m else EMPTY_ROOT

        if not heads:
            problem("no signed tree head")
        for th in heads:
            if not verify_tree_head(th, pem):
                problem(f"tree head of size {th.tree_size}: signature does not verify with the log's public key")
            if th.tree_size > n_leaves:
                problem(f"tree head of size {th.tree_size} covers more leaves than the log holds ({n_leaves})")
            elif root_at(th.tree_size) != th.root_hash:
                problem(f"tree head of size {th.tree_size}: root hash differs from the one recomputed from the leaves")
        size = heads[-1].tree_size if heads else 0
        if heads and size != n_leaves:
            problem(f"the latest signed head has {size} leaves, the log holds {n_leaves}")
        return AuditReport(self.name, not problems, size, n_leaves, n_nodes, len(heads),
                           root_at(min(size, n_leaves)), problems)


# ---------------------------------------------------------------------------------------------
# Third-party checks
# ---------------------------------------------------------------------------------------------

def check_bundle(bundle: "dict | str | bytes | Path", public_key_pem: bytes | str, *,
                 image: "str | Path | None" = None) -> BundleCheck:
    """Check a proof bundle from :meth:`Ledger.prove` with the log's public key alone.

    ``bundle`` is the parsed JSON, JSON text, or a path to the file. Verifies the tree head's
    signature, the leaf hash, that the leaf carries the bundle's fingerprint, and the inclusion
    proof; with ``image``, also that the file's fingerprint is the logged one. A malformed
    bundle raises :class:`MedForensicsError` naming it; a bundle that does not verify gives
    ``ok=False`` with the reasons.
    """
    where = "proof bundle"
    if isinstance(bundle, Path) or (isinstance(bundle, str) and not bundle.lstrip().startswith(("{", "["))):
        where = str(bundle)
        try:
            bundle = Path(bundle).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise MedForensicsError(where, "no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise MedForensicsError(where, f"cannot be read ({one_line(e, 200)})") from None
    if isinstance(bundle, (str, bytes)):
        try:
            bundle = json.loads(bundle)
        except ValueError as e:
            raise MedForensicsError(where, f"not JSON ({one_line(e, 200)})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        raise MedForensicsError(where, f"not a ledger proof bundle (expected format {BUNDLE_FORMAT!r})")
    pub = _load_public(public_key_pem, "public key")
    try:
        fp = Fingerprint.from_dict(bundle["fingerprint"], where)
        leaf, inc = bundle["leaf"], bundle["inclusion"]
        index, data, stated = int(leaf["index"]), base64.b64decode(leaf["data"], validate=True), bytes.fromhex(leaf["hash"])
        size, path = int(inc["tree_size"]), [bytes.fromhex(p) for p in inc["audit_path"]]
        th = TreeHead.from_dict(bundle["tree_head"], where)
    except MedForensicsError:
        raise
    except KeyError as e:
        raise MedForensicsError(where, f"malformed proof bundle: field {e.args[0]!r} is missing") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise MedForensicsError(where, f"malformed proof bundle ({one_line(e, 200)})") from None
    problems: list[str] = []
    if th.log_id != _log_id(pub):
        problems.append("the tree head is from another log (its log id is not the given public key's)")
    elif not verify_tree_head(th, public_key_pem):
        problems.append("the tree head's signature does not verify with the given public key")
    if leaf_hash(data) != stated:
        problems.append("the leaf hash does not match the leaf data")
    try:
        logged = json.loads(data)
        same = isinstance(logged, dict) and fp.leaf_bytes(int(logged.get("timestamp", -1))) == data
    except (ValueError, TypeError):
        same = False
    if not same:
        problems.append("the leaf data does not record the bundle's fingerprint")
    if size != th.tree_size:
        problems.append(f"the proof is for tree size {size}, the tree head has {th.tree_size}")
    if not verify_inclusion(leaf_hash(data), index, th.tree_size, path, th.root_hash):
        problems.append(f"the inclusion proof of leaf {index} does not lead to the signed root")
    if image is not None:
        got = fingerprint(image)
        diffs = [w for w, a, b in (("key", got.key, fp.key), ("pixels", got.pixel_sha256, fp.pixel_sha256),
                                   ("header", got.header_sha256, fp.header_sha256)) if a != b]
        if diffs:
            problems.append(f"{image}: differs from the logged fingerprint ({', '.join(diffs)})")
    return BundleCheck(not problems, problems, index, th.tree_size, fp, th)
