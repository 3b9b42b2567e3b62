"""DICOM Digital Signatures (PS3.15 Annex C, PS3.3 C.12.1.1.3), interoperable with DCMTK ``dcmsign``.

A signature is one item of the Digital Signatures Sequence (FFFA,FFFA) plus one item of the MAC
Parameters Sequence (4FFE,0001). The MAC is the hash of the signed data elements encoded in
Explicit VR Little Endian (sequences and items without lengths, as PS3.15 and dcmsign do),
followed by the signature item's MAC ID Number, Digital Signature UID, Digital Signature
DateTime and Certificate Type; it is signed with the signer's RSA (PKCS #1 v1.5) or ECDSA key
and the X.509 certificate travels in the item. Any number of signatures can live in one
instance: each new one adds items and leaves the others valid.

Besides the standard signature, :func:`sign_dataset` (unless ``block_digest=False``) first adds a
*signed* private element (creator ``MEDFORENSICS 1.0``, group 0077) holding an 8-byte digest of
every signed attribute and a 16-byte SHA-256 digest of every 32x32 block of stored pixel values
per frame. Standard verifiers (dcmsign) ignore its meaning but verify it like any attribute; when
our verifier finds a broken signature it uses it to name the attributes that changed and the
pixel blocks that changed (boxes ``(frame0, row0, col0, frame1, row1, col1)``, exclusive stops).

>>> import pydicom
>>> from pydicom.data import get_testdata_file
>>> from medforensics.provenance.keys import new_identity
>>> ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))          # Explicit VR Little Endian
>>> ident = new_identity("Radiology", algorithm="ec")
>>> uid = sign_dataset(ds, ident)
>>> [(c.ok, c.signer, c.trusted) for c in verify_dataset(ds, trust=ident.chain)]
[(True, 'Radiology', True)]

A change after signing breaks the signature, and the block digests say where:

>>> pixels = ds.pixel_array.copy()
>>> pixels[40:44, 10:20] += 100
>>> ds.PixelData = pixels.tobytes()
>>> ds.PatientName = "Someone^Else"
>>> check = verify_dataset(ds, trust=ident.chain)[0]
>>> check.ok, check.changed_tags, check.changed_blocks
(False, ['PatientName (0010,0010)'], [(0, 32, 0, 1, 64, 32)])
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, write_data_element
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..core import MedForensicsError, one_line
from .keys import Identity
from .trust import decide, load_anchors

__all__ = ["sign_dataset", "sign_file", "verify_dataset", "verify_file", "SignatureCheck", "FileVerification",
           "PROFILES", "MAC_ALGORITHMS", "PRIVATE_CREATOR", "PRIVATE_GROUP", "BLOCK", "parse_tags"]

#: Signature profiles :func:`sign_dataset` accepts (see :data:`_PROFILE_HELP`).
PROFILES = ("base", "creator", "authorization", "none")
#: MAC algorithms for signing (verification also accepts RIPEMD160 and SHA1, dcmsign's older choices).
MAC_ALGORITHMS = ("SHA256", "SHA384", "SHA512")
PRIVATE_CREATOR = "MEDFORENSICS 1.0"
PRIVATE_GROUP = 0x0077
#: Side of the square pixel blocks that get one digest each.
BLOCK = 32
CERT_TYPE = "X509_1993_SIG"

_DIGITAL_SIGNATURES = 0xFFFAFFFA
_MAC_PARAMETERS = 0x4FFE0001
_PIXEL_DATA = 0x7FE00010
_NEVER_SIGNED = {_DIGITAL_SIGNATURES, _MAC_PARAMETERS, 0xFFFCFFFC}
#: Attributes of the signature item that are part of the MAC, after the signed data (as dcmsign).
_SIG_ITEM_IN_MAC = (0x04000005, 0x04000100, 0x04000105, 0x04000110, 0x04000401)
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_END = b"\xfe\xff\xdd\xe0"
_DIGEST_INFO = {  # DER DigestInfo prefixes of PKCS #1 v1.5 signatures
    "MD5": bytes.fromhex("3020300c06082a864886f70d020505000410"),
    "SHA1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "RIPEMD160": bytes.fromhex("3021300906052b2403020105000414"),
    "SHA256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "SHA384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "SHA512": bytes.fromhex("3051300d060960864801650304020305000440"),
}
_CRYPTO_HASH = {"SHA1": hashes.SHA1, "RIPEMD160": hashes.SHA1,  # ECDSA only uses the digest's length
                "SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}
_HASHLIB = {"SHA1": "sha1", "RIPEMD160": "ripemd160", "SHA256": "sha256", "SHA384": "sha384",
            "SHA512": "sha512", "MD5": "md5"}
#: Attributes the authorization profile always signs when present (PS3.15 C.3, abridged).
_AUTHORIZATION_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                       "FrameOfReferenceUID", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                       "StudyDate", "StudyTime", "AccessionNumber", "Modality", "Manufacturer",
                       "ImageType", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
                       "PixelSpacing", "SliceThickness", "SamplesPerPixel", "PhotometricInterpretation",
                       "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                       "PlanarConfiguration", "NumberOfFrames", "RescaleIntercept", "RescaleSlope",
                       "PixelData")
_MAGIC = b"MFSIG1\n"


# --------------------------------------------------------------------------------------------- results
@dataclass
class SignatureCheck:
    """The verdict on one signature of an instance.

    ``ok`` needs an intact MAC and signature, a certificate valid at the check time, a supported
    algorithm, and -- only when trust anchors were given -- a chain to one of them. ``trust`` is
    the decision of :func:`medforensics.provenance.trust.decide` (``trusted``, ``untrusted`` or
    ``not-checked`` when no anchors were given; then ``ok`` says the signature is intact, *not*
    who made it); ``trusted`` is the same as True/False/None. ``signer_subject`` and
    ``signer_fingerprint`` (SHA-256) identify the signer's certificate for a person to compare.
    ``changed_blocks`` are ``(frame0, row0, col0, frame1, row1, col1)`` boxes of stored pixel
    indices with exclusive stops.
    """

    ok: bool
    signature_uid: str | None
    signer: str | None = None
    algorithm: str | None = None
    mac_algorithm: str | None = None
    profile: str | None = None
    signed_at: _dt.datetime | None = None
    reasons: list[str] = field(default_factory=list)
    changed_tags: list[str] = field(default_factory=list)
    pixel_changed: bool = False
    changed_blocks: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    trusted: bool | None = None
    integrity: bool = False
    n_signed: int = 0
    trust: str = "not-checked"
    signer_subject: str | None = None
    signer_fingerprint: str | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["signed_at"] = self.signed_at.isoformat() if self.signed_at else None
        d["changed_blocks"] = [list(b) for b in self.changed_blocks]
        return d


@dataclass
class FileVerification:
    """All signatures of one file. ``ok`` only when the file is signed and every signature is ok;
    ``error`` is a one-line problem when the file could not be read as DICOM."""

    path: str
    ok: bool
    unsigned: bool
    signatures: list[SignatureCheck] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "ok": self.ok, "unsigned": self.unsigned, "error": self.error,
                "signatures": [s.to_dict() for s in self.signatures]}


# --------------------------------------------------------------------------------------------- encoding
def _tag_bytes(tag: int) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF)


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return _tag_bytes(tag) + vr.encode() + b"\0\0" + struct.pack("<I", length)
    return _tag_bytes(tag) + vr.encode() + struct.pack("<H", length)


def _encode(ds: Dataset, tag: int) -> bytes | None:
    """The MAC encoding (Explicit VR Little Endian, PS3.15 C.? rules) of one element, or None."""
    el = ds.get_item(tag)
    if el is None:
        return None
    if isinstance(el, RawDataElement) and not el.is_implicit_VR and el.is_little_endian \
            and el.VR not in (None, "SQ") and el.length != 0xFFFFFFFF and el.value is not None:
        value = el.value
        if len(value) % 2:
            value += b"\0"
        return _header(tag, el.VR, len(value)) + value
    elem = ds[tag]
    if elem.VR == "SQ":
        parts = [_tag_bytes(tag) + b"SQ\0\0"]
        for item in elem.value:
            parts.append(_ITEM)
            parts.extend(e for t in sorted(item.keys()) if (e := _encode(item, int(t))) is not None)
        parts.append(_SEQ_END)
        return b"".join(parts)
    if tag == _PIXEL_DATA and (elem.is_undefined_length or _is_encapsulated(ds)):
        return _encode_encapsulated(elem)
    if elem.VR and " or " in elem.VR:
        elem = correct_ambiguous_vr_element(elem, ds, True)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, getattr(ds, "_character_set", None))
    return fp.getvalue()


def _is_encapsulated(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return bool(ts is not None and ts.is_encapsulated)


def _encode_encapsulated(elem) -> bytes:
    """Encapsulated pixel data: tag, VR, no length; each item tag without its length, then its
    bytes; a sequence delimitation tag (what dcmsign feeds to the MAC)."""
    buf = bytes(elem.value)
    parts = [_tag_bytes(_PIXEL_DATA) + b"OB\0\0"]
    pos = 0
    while pos + 8 <= len(buf):
        tag, length = struct.unpack_from("<II", buf, pos)
        if tag == 0xE0DDFFFE:
            break
        if tag != 0xE000FFFE:
            raise ValueError("encapsulated pixel data has an item without an item tag")
        parts.append(_ITEM + buf[pos + 8:pos + 8 + length])
        pos += 8 + length
    parts.append(_SEQ_END)
    return b"".join(parts)


def _signable(tag: int, ds: Dataset | None = None) -> bool:
    """Whether a top-level element may be signed: not a group length, file meta, signature or
    padding element, and (as dcmsign requires) not of VR UN."""
    if (tag & 0xFFFF) == 0 or (tag >> 16) in (0x0000, 0x0002) or tag in _NEVER_SIGNED:
        return False
    return ds is None or tag not in ds or not _has_un(ds, tag)


def _vr(ds: Dataset, tag: int) -> str | None:
    el = ds.get_item(tag)
    if isinstance(el, RawDataElement) and (el.is_implicit_VR or el.VR is None):
        return ds[tag].VR
    return el.VR if el is not None else None


def _has_un(ds: Dataset, tag: int) -> bool:
    """VR UN here or anywhere inside (dcmsign refuses to sign or verify such elements)."""
    vr = _vr(ds, tag)
    if vr == "UN":
        return True
    if vr == "SQ":
        return any(_has_un(item, int(t)) for item in ds[tag].value for t in item.keys())
    return False


def _mac_syntax_ok(ts: str) -> bool:
    """MAC calculation syntaxes we can reproduce: Explicit VR Little Endian, or the instance's own
    encapsulated (compressed) syntax, whose data set encoding is the same (what dcmsign writes)."""
    try:
        uid = pydicom.uid.UID(ts)
        return ts == ExplicitVRLittleEndian or (uid.is_transfer_syntax and uid.is_encapsulated)
    except (ValueError, AttributeError):
        return False


def parse_tags(names: Iterable[str | int]) -> list[int]:
    """Keywords (``PatientName``), ``gggg,eeee`` strings or ints to tag ints; ValueError on unknowns."""
    tags = []
    for n in names:
        if isinstance(n, int):
            tags.append(n)
            continue
        s = str(n).strip().strip("()")
        t = tag_for_keyword(s)
        if t is None and "," in s:
            try:
                g, e = (int(x, 16) for x in s.split(","))
                t = (g << 16) | e
            except ValueError:
                t = None
        if t is None:
            raise ValueError(f"unknown attribute {n!r} (give a DICOM keyword or gggg,eeee)")
        tags.append(int(t))
    return tags


def _tag_name(tag: int) -> str:
    kw = keyword_for_tag(tag) or ("private" if (tag >> 16) % 2 else "unknown")
    return f"{kw} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


# --------------------------------------------------------------------------------------------- pixels
def _stored_frames(ds: Dataset) -> np.ndarray:
    """Stored pixel values as ``(frames, rows, cols[, samples])``; decoded for compressed syntaxes."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(ds, "BitsAllocated", 16))
    signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
    if not _is_encapsulated(ds) and spp == 1 and bits in (8, 16, 32, 64):
        raw = ds.get_item(_PIXEL_DATA).value
        dt = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
        n = frames * rows * cols
        if len(raw) >= n * dt.itemsize:
            return np.frombuffer(raw, dtype=dt, count=n).reshape(frames, rows, cols)
    arr = ds.pixel_array
    if frames == 1:
        arr = arr[None]
    if spp == 1 and arr.ndim == 3:
        return arr.reshape(frames, rows, cols)
    return arr.reshape(frames, rows, cols, spp)


def _block_digests(arr: np.ndarray) -> bytes:
    arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
    frames, rows, cols = arr.shape[:3]
    out = []
    sha = hashlib.sha256
    for f in range(frames):
        fr = arr[f]
        for r in range(0, rows, BLOCK):
            band = fr[r:r + BLOCK]
            for c in range(0, cols, BLOCK):
                out.append(sha(np.ascontiguousarray(band[:, c:c + BLOCK])).digest()[:16])
    return b"".join(out)


def _changed_boxes(old: bytes, new: bytes, frames: int, rows: int, cols: int) -> list[tuple[int, ...]]:
    """Boxes around connected groups of changed blocks, per frame."""
    from scipy import ndimage
    nby, nbx = -(-rows // BLOCK), -(-cols // BLOCK)
    a = np.frombuffer(old, dtype=np.uint8).reshape(frames, nby, nbx, 16)
    b = np.frombuffer(new, dtype=np.uint8).reshape(frames, nby, nbx, 16)
    diff = (a != b).any(axis=-1)
    boxes = []
    for f in range(frames):
        lab, n = ndimage.label(diff[f])
        for sl in ndimage.find_objects(lab):
            r0, c0 = sl[0].start * BLOCK, sl[1].start * BLOCK
            r1, c1 = min(sl[0].stop * BLOCK, rows), min(sl[1].stop * BLOCK, cols)
            boxes.append((f, r0, c0, f + 1, r1, c1))
    return boxes


# --------------------------------------------------------------------------------------------- signing
def _next_mac_id(ds: Dataset) -> int:
    used = set()
    for t in (_MAC_PARAMETERS, _DIGITAL_SIGNATURES):
        if t in ds:
            used.update(int(it.get("MACIDNumber", 0)) for it in ds[t].value)
    return max(used) + 1 if used else 0


def _profile_tags(ds: Dataset, tags: list[int] | None, profile: str) -> list[int] | None:
    if profile == "creator":
        if tags is not None:
            raise ValueError("the creator profile signs every attribute; leave out the tag selection")
        return None
    if profile == "authorization" and tags is not None:
        extra = [t for kw in _AUTHORIZATION_TAGS if (t := tag_for_keyword(kw)) is not None and t in ds]
        return sorted(set(tags) | set(extra))
    return tags


def sign_dataset(ds: Dataset, identity: Identity, *, tags: Sequence[str | int] | None = None,
                 profile: str = "base", mac_algorithm: str = "SHA256", block_digest: bool = True) -> str:
    """Add a DICOM digital signature to ``ds`` in place and return its Digital Signature UID.

    ``tags``: keywords or tag ints of top-level attributes to sign (default: all of them).
    ``profile``: ``base`` (RSA or EC key, SHA-2 MAC), ``creator`` (base, every attribute),
    ``authorization`` (base, plus the identifying, geometry and pixel attributes of PS3.15 C.3
    when present) or ``none`` (no constraint). ``block_digest``: add the signed private element
    with per-attribute and per-block digests (localises later changes). The signature is over
    the Explicit VR Little Endian encoding; save the dataset in that syntax (``sign_file`` does).
    Raises ValueError for an unknown profile, algorithm or attribute, or an absent attribute.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    mac_algorithm = mac_algorithm.upper().replace("-", "")
    if mac_algorithm not in MAC_ALGORITHMS:
        raise ValueError(f"unsupported MAC algorithm {mac_algorithm!r}; choose one of {', '.join(MAC_ALGORITHMS)}")
    key = identity.key
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError("DICOM signatures need an RSA or EC key")
    sel = None if tags is None else parse_tags(tags)
    if sel is not None:
        missing = [t for t in sel if t not in ds]
        if missing:
            raise ValueError(f"cannot sign absent attribute(s): {', '.join(_tag_name(t) for t in missing)}")
        bad = [t for t in sel if not _signable(t, ds)]
        if bad:
            raise ValueError(f"cannot sign {', '.join(_tag_name(t) for t in bad)} (group length, signature, "
                         "padding or VR UN elements are not signable)")
    sel = _profile_tags(ds, sel, profile)

    uid = generate_uid()
    mac_id = _next_mac_id(ds)
    signed = sorted(int(t) for t in ds.keys() if _signable(int(t), ds)) if sel is None else sorted(set(sel))
    enc = {t: _encode(ds, t) for t in signed}

    if block_digest and _PIXEL_DATA in signed and "Rows" in ds:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        creator_tag = (PRIVATE_GROUP << 16) | (block.block_start >> 8)
        off = next((o for o in range(0x10, 0x100) if block.get_tag(o) not in ds), None)
        if off is None:
            raise ValueError("no free private element left for another block digest")
        priv_tag = int(block.get_tag(off))
        if creator_tag not in enc:
            enc[creator_tag] = _encode(ds, creator_tag)
        arr = _stored_frames(ds)
        frames, rows, cols = arr.shape[:3]
        head = {"uid": uid, "profile": profile, "block": BLOCK, "frames": frames, "rows": rows, "cols": cols,
                "tags": sorted(enc)}
        value = (_MAGIC + json.dumps(head, separators=(",", ":")).encode() + b"\n"
                 + b"".join(hashlib.sha256(enc[t]).digest()[:8] for t in head["tags"]) + _block_digests(arr))
        block.add_new(off, "OB", value)
        enc[priv_tag] = _encode(ds, priv_tag)
        signed = sorted(enc)

    now = _dt.datetime.now(_dt.timezone.utc)
    item = Dataset()
    item.MACIDNumber = mac_id
    item.DigitalSignatureUID = uid
    item.DigitalSignatureDateTime = now.strftime("%Y%m%d%H%M%S.%f+0000")
    item.CertificateType = CERT_TYPE
    h = hashlib.new(_HASHLIB[mac_algorithm])
    for t in signed:
        h.update(enc[t])
    for t in _SIG_ITEM_IN_MAC:
        if t in item:
            h.update(_encode(item, t))
    digest = h.digest()
    algo = _CRYPTO_HASH[mac_algorithm]()
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(digest, padding.PKCS1v15(), Prehashed(algo))
    else:
        sig = key.sign(digest, ec.ECDSA(Prehashed(algo)))
    item.CertificateOfSigner = identity.cert.public_bytes(serialization.Encoding.DER)
    item.Signature = sig

    params = Dataset()
    params.MACIDNumber = mac_id
    params.MACCalculationTransferSyntaxUID = ds.file_meta.TransferSyntaxUID if _is_encapsulated(ds) \
        else ExplicitVRLittleEndian
    params.MACAlgorithm = mac_algorithm
    params.add_new(0x04000020, "AT", list(signed))
    for t, it in ((_MAC_PARAMETERS, params), (_DIGITAL_SIGNATURES, item)):
        if t in ds:
            ds[t].value.append(it)
        else:
            ds.add_new(t, "SQ", DicomSequence([it]))
    return uid


def _read_dicom(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        raise MedForensicsError(path, "no such file") from None
    except IsADirectoryError:
        raise MedForensicsError(path, "is a folder, not a file") from None
    except InvalidDicomError:
        raise MedForensicsError(path, "not a DICOM file (no DICM prefix)") from None
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for broken files
        raise MedForensicsError(path, f"not a readable DICOM file ({one_line(e, 160)})") from None


def sign_file(src: str | Path, dst: str | Path, identity: Identity, **kw) -> str:
    """Sign the DICOM file ``src`` and write the signed copy to the new file ``dst`` (Explicit VR
    Little Endian when ``src`` was not already in a little-endian explicit or compressed syntax).
    Keyword arguments go to :func:`sign_dataset`. Returns the Digital Signature UID."""
    src, dst = Path(src), Path(dst)
    if dst.exists():
        raise MedForensicsError(dst, "already exists; signed copies are written to new files only")
    if not dst.parent.is_dir():
        raise MedForensicsError(dst, f"folder {dst.parent} does not exist")
    ds = _read_dicom(src)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        ds.file_meta = meta = meta or FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ts = meta.TransferSyntaxUID
    if not ts.is_little_endian:
        raise MedForensicsError(src, "Explicit VR Big Endian (retired) is not supported; convert it to little "
                                     "endian first (e.g. dcmconv +te)")
    for m, d in (("MediaStorageSOPClassUID", "SOPClassUID"), ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):
        if not meta.get(m) and ds.get(d):
            setattr(meta, m, ds.get(d))
    if not ts.is_encapsulated and (ts.is_implicit_VR or not ts.is_little_endian):
        for t in list(ds.keys()):  # convert raw elements now, decoded with the source's encoding
            ds[t]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        uid = sign_dataset(ds, identity, **kw)
    except ValueError as e:
        raise MedForensicsError(src, str(e)) from None
    with open(dst, "xb") as f:
        ds.save_as(f, enforce_file_format=bool(meta.get("MediaStorageSOPClassUID")), implicit_vr=False,
                   little_endian=True)
    return uid


# --------------------------------------------------------------------------------------------- verifying
def _trim_der(b: bytes) -> bytes:
    """A DER object without the padding byte DICOM adds to odd-length values."""
    if len(b) >= 2 and b[0] == 0x30:
        n = b[1]
        if n < 0x80:
            return b[:2 + n]
        k = n & 0x7F
        if 0 < k <= 4 and len(b) >= 2 + k:
            return b[:2 + k + int.from_bytes(b[2:2 + k], "big")]
    return b


def _parse_dt(s) -> _dt.datetime | None:
    s = str(s or "").strip()
    for fmt in ("%Y%m%d%H%M%S.%f%z", "%Y%m%d%H%M%S%z", "%Y%m%d%H%M%S.%f", "%Y%m%d%H%M%S"):
        try:
            d = _dt.datetime.strptime(s, fmt)
            return d if d.tzinfo else d.replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            continue
    return None


def _our_digests(ds: Dataset, signed: set[int], uid: str) -> tuple[dict, bytes, bytes] | None:
    """The header, tag digests and block digests this signature stored, if it signed them."""
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except (KeyError, ValueError):
        return None
    for off in range(0x10, 0x100):
        t = int(block.get_tag(off))
        if t not in signed or t not in ds:
            continue
        v = ds[t].value
        if not isinstance(v, (bytes, bytearray)) or not v.startswith(_MAGIC):
            continue
        try:
            end = v.index(b"\n", len(_MAGIC))
            head = json.loads(v[len(_MAGIC):end])
            if head.get("uid") != uid:
                continue
            n = len(head["tags"]) * 8
            return head, bytes(v[end + 1:end + 1 + n]), bytes(v[end + 1 + n:])
        except (ValueError, KeyError, TypeError):
            return None
    return None


def _check_one(ds: Dataset, item: Dataset, params: dict[int, Dataset], anchors: list[x509.Certificate] | None,
               at: _dt.datetime) -> SignatureCheck:
    uid = str(item.get("DigitalSignatureUID", "") or "") or None
    chk = SignatureCheck(ok=False, signature_uid=uid)
    r = chk.reasons
    chk.signed_at = _parse_dt(item.get("DigitalSignatureDateTime"))
    mac_id = item.get("MACIDNumber")
    if mac_id is None or int(mac_id) not in params:
        r.append("malformed signature item: no MAC Parameters item with its MAC ID Number")
        return chk
    p = params[int(mac_id)]
    mac = str(p.get("MACAlgorithm", "") or "").strip().upper()
    chk.mac_algorithm = mac or None
    ts = str(p.get("MACCalculationTransferSyntaxUID", "") or "")
    raw_signed = p.get("DataElementsSigned")
    if raw_signed is None:
        r.append("malformed signature item: no Data Elements Signed")
        return chk
    if isinstance(raw_signed, int):
        raw_signed = [raw_signed]
    signed = sorted({int(t) for t in raw_signed})
    chk.n_signed = len(signed)
    if str(item.get("CertificateType", "") or "").strip() != CERT_TYPE:
        r.append(f"unsupported certificate type {str(item.get('CertificateType', '') or '')!r}")
        return chk
    try:
        cert = x509.load_der_x509_certificate(_trim_der(bytes(item.CertificateOfSigner)))
    except (AttributeError, ValueError, TypeError) as e:
        r.append(f"malformed signature item: the certificate of signer is not a DER X.509 certificate ({one_line(e, 160)})")
        return chk
    decision = decide([cert], anchors, at=at)
    chk.signer = decision.signer
    chk.signer_subject, chk.signer_fingerprint = decision.subject, decision.fingerprint
    pub = cert.public_key()
    chk.algorithm = "rsa" if isinstance(pub, rsa.RSAPublicKey) else "ec" if isinstance(pub, ec.EllipticCurvePublicKey) \
        else type(pub).__name__
    if not _mac_syntax_ok(ts):
        r.append(f"unsupported MAC calculation transfer syntax {ts!r}")
    if mac not in _HASHLIB or mac == "MD5" or (chk.algorithm == "ec" and mac not in _CRYPTO_HASH):
        r.append(f"unsupported MAC algorithm {mac!r}")
    if chk.algorithm not in ("rsa", "ec"):
        r.append(f"unsupported signature algorithm {chk.algorithm}")
    if r:
        return chk

    enc, missing = {}, []
    for t in signed:
        e = _encode(ds, t)
        if e is None:
            missing.append(t)
        else:
            enc[t] = e
    h = hashlib.new(_HASHLIB[mac])
    for t in signed:
        if t in enc:
            h.update(enc[t])
    for t in _SIG_ITEM_IN_MAC:
        if t in item:
            h.update(_encode(item, t))
    digest = h.digest()
    sig = bytes(item.get("Signature", b"") or b"")
    good = False
    try:
        if chk.algorithm == "rsa":
            good = pub.recover_data_from_signature(sig, padding.PKCS1v15(), None) == _DIGEST_INFO[mac] + digest
        else:
            pub.verify(_trim_der(sig), digest, ec.ECDSA(Prehashed(_CRYPTO_HASH[mac]())))
            good = True
    except (InvalidSignature, ValueError, TypeError):
        good = False
    chk.integrity = good

    ours = _our_digests(ds, set(signed), uid or "")
    chk.profile = ours[0].get("profile") if ours else None
    if not good:
        for t in missing:
            if t == _PIXEL_DATA:
                chk.pixel_changed = True
            chk.changed_tags.append(_tag_name(t))
            r.append(f"signed attribute {_tag_name(t)} was removed")
        if ours is not None:
            head, tag_d, block_d = ours
            for i, t in enumerate(head["tags"]):
                if t in enc and hashlib.sha256(enc[t]).digest()[:8] != tag_d[i * 8:i * 8 + 8]:
                    if t == _PIXEL_DATA:
                        chk.pixel_changed = True
                    else:
                        chk.changed_tags.append(_tag_name(t))
                        r.append(f"signed attribute {_tag_name(t)} changed")
            if chk.pixel_changed:
                chk.changed_blocks = _pixel_boxes(ds, head, block_d)
                where = f" in {len(chk.changed_blocks)} region(s)" if chk.changed_blocks else ""
                r.append(f"pixel data changed{where}")
            if not chk.changed_tags and not chk.pixel_changed and not missing:
                r.append("signature does not match although every signed attribute is unchanged: "
                         "the signature bytes or the signature item were altered")
        elif not missing:
            r.append("signed data changed or signature corrupt (the signer stored no per-attribute "
                     "digests, so the changed attribute cannot be named)")

    if at < cert.not_valid_before_utc:
        r.append(f"certificate not yet valid (valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)")
    elif at > cert.not_valid_after_utc:
        r.append(f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    chk.trust, chk.trusted = decision.status, decision.trusted
    if decision.status == "untrusted":
        r.append(decision.reason)
    chk.ok = good and not r
    return chk


def _pixel_boxes(ds: Dataset, head: dict, old: bytes) -> list[tuple[int, ...]]:
    frames, rows, cols = int(head["frames"]), int(head["rows"]), int(head["cols"])
    try:
        arr = _stored_frames(ds)
    except Exception:  # noqa: BLE001 - undecodable pixels: the whole image is suspect
        return [(0, 0, 0, frames, rows, cols)]
    if arr.shape[:3] != (frames, rows, cols) or int(head.get("block", BLOCK)) != BLOCK:
        return [(0, 0, 0, frames, rows, cols)]
    new = _block_digests(arr)
    old = old[:len(new)]  # an odd-length OB value carries one padding byte
    if len(new) != len(old):
        return [(0, 0, 0, frames, rows, cols)]
    return _changed_boxes(old, new, frames, rows, cols)


def verify_dataset(ds: Dataset, *, trust=None, at: _dt.datetime | None = None) -> list[SignatureCheck]:
    """Check every signature in the Digital Signatures Sequence of ``ds`` (top level only).

    ``trust``: CA certificates (paths to PEM/DER files or ``x509.Certificate`` objects) that
    anchor the signer's chain (:func:`medforensics.provenance.trust.decide`); without it (None)
    ``trust`` is ``not-checked`` and does not affect ``ok``; an empty list trusts no one.
    ``at``: when certificates must be valid (default: now, as dcmsign). Never raises for a
    malformed signature: its problems are in ``reasons``. Returns [] when unsigned.
    """
    anchors = load_anchors(trust)
    at = at or _dt.datetime.now(_dt.timezone.utc)
    if at.tzinfo is None:
        at = at.replace(tzinfo=_dt.timezone.utc)
    if _DIGITAL_SIGNATURES not in ds:
        return []
    try:
        items = list(ds[_DIGITAL_SIGNATURES].value)
    except Exception as e:  # noqa: BLE001
        return [SignatureCheck(ok=False, signature_uid=None,
                               reasons=[f"malformed Digital Signatures Sequence ({one_line(e, 160)})"])]
    params: dict[int, Dataset] = {}
    try:
        for p in (ds[_MAC_PARAMETERS].value if _MAC_PARAMETERS in ds else []):
            if "MACIDNumber" in p:
                params[int(p.MACIDNumber)] = p
    except Exception:  # noqa: BLE001
        params = {}
    out = []
    for item in items:
        try:
            out.append(_check_one(ds, item, params, anchors, at))
        except Exception as e:  # noqa: BLE001 - a malformed item is a result, never a crash
            uid = None
            try:
                uid = str(item.get("DigitalSignatureUID", "")) or None
            except Exception:  # noqa: BLE001
                pass
            out.append(SignatureCheck(ok=False, signature_uid=uid, reasons=[f"malformed signature item ({one_line(e, 160)})"]))
    return out


def verify_file(path: str | Path, *, trust=None, at: _dt.datetime | None = None) -> FileVerification:
    """Read a DICOM file and verify its signatures; problems reading it go to ``error``."""
    path = Path(path)
    anchors = load_anchors(trust)
    try:
        ds = _read_dicom(path)
    except MedForensicsError as e:
        return FileVerification(path=str(path), ok=False, unsigned=True, error=e.problem)
    checks = verify_dataset(ds, trust=anchors, at=at)
    return FileVerification(path=str(path), ok=bool(checks) and all(c.ok for c in checks), unsigned=not checks,
                            signatures=checks)
