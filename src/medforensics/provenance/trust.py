"""The one trust decision of every provenance check: does a signer chain to a trust anchor?

DICOM digital signatures (:mod:`.signature`) and C2PA manifests (:mod:`.c2pa_manifest`) both end
here, and so do the two places that judge them -- the ``verify`` command and the ``provenance``
detector of ``scan`` -- so that a file can never be "trusted" for one and "untrusted" for the
other. :func:`decide` takes the signer's certificate with the issuers the file carries (leaf
first) and the trust anchors, and gives one of three statuses:

* ``trusted`` -- a chain of valid signatures leads from the signer's certificate to an anchor
  (or the signer's certificate is itself an anchor); each issuer on the way is valid at the
  check time and is a CA;
* ``untrusted`` -- anchors were given and no such chain exists;
* ``not-checked`` -- no anchors were given (``None``): the signature may be intact, but anyone
  can make a key and sign with it, so *who* signed is unknown. The decision still names the
  signer's subject and the SHA-256 fingerprint of its certificate, for a person to compare.

An empty list of anchors trusts no one (``untrusted``). Whether the signed data are intact and
whether the signer's own certificate is within its validity period are the callers' checks.

>>> from medforensics.provenance.keys import new_identity
>>> ours, theirs = new_identity("Radiology"), new_identity("Radiology")
>>> decide([ours.cert], ours.chain).status, decide([ours.cert], theirs.chain).status
('trusted', 'untrusted')
>>> d = decide([theirs.cert], None)
>>> d.status, d.subject.startswith("CN=Radiology, O=medforensics, serialNumber="), len(d.fingerprint)
('not-checked', True, 95)
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization

from ..core import MedForensicsError, one_line

__all__ = ["TrustDecision", "decide", "load_anchors", "fingerprint", "subject_of", "status_of", "STATUSES",
           "CHECK_STATUSES", "FAILED"]

#: The statuses of :class:`TrustDecision`.
STATUSES = ("trusted", "untrusted", "not-checked")
#: The statuses of one signature or manifest (:func:`status_of`), best first.
CHECK_STATUSES = ("trusted", "not-checked", "expired", "unsupported", "untrusted", "broken")
#: Those that fail ``verify`` (exit 1); ``not-checked`` gives exit 3, ``trusted`` exit 0.
FAILED = frozenset({"expired", "unsupported", "untrusted", "broken"})
_MAX_DEPTH = 8


@dataclass
class TrustDecision:
    """Whether the signer chains to a trust anchor (``status``, one of :data:`STATUSES`), who the
    signer is (``signer``: common name; ``subject``: the full subject, RFC 4514; ``fingerprint``:
    SHA-256 of the certificate, colon-separated hex as ``openssl x509 -fingerprint -sha256``
    prints it), the anchor reached (``anchor``, when trusted) and why not (``reason``)."""

    status: str
    signer: str | None = None
    subject: str | None = None
    fingerprint: str | None = None
    anchor: str | None = None
    reason: str | None = None

    @property
    def trusted(self) -> bool | None:
        """True, False, or None when not checked (the older three-valued form)."""
        return {"trusted": True, "untrusted": False}.get(self.status)

    def to_dict(self) -> dict:
        return asdict(self)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as ``AB:CD:...`` (95 characters)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def subject_of(cert: x509.Certificate) -> tuple[str, str]:
    """(common name or, without one, the whole subject; the whole subject, :func:`.keys.subject`)."""
    from .keys import subject

    full = subject(cert)
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return (str(cn[0].value) if cn else full), full


def load_anchors(trust) -> list[x509.Certificate] | None:
    """Trust anchors from CA certificate files (PEM with any number of certificates, or one DER),
    ``cryptography`` certificates or PEM bytes -- one or a list. ``None`` stays ``None`` (trust
    not checked); a file that cannot be read is a one-line :class:`MedForensicsError` naming it."""
    from .keys import load_certificates

    if trust is None:
        return None
    if isinstance(trust, (str, Path, x509.Certificate, bytes, bytearray)):
        trust = [trust]
    certs: list[x509.Certificate] = []
    for t in trust:
        if isinstance(t, x509.Certificate):
            certs.append(t)
        elif isinstance(t, (bytes, bytearray)):
            try:
                certs.extend(x509.load_pem_x509_certificates(bytes(t)))
            except ValueError as e:
                raise MedForensicsError(None, f"trust anchor is not a PEM certificate ({one_line(e, 240)})") from None
        else:
            certs.extend(load_certificates(t))
    return certs


def status_of(check) -> str:
    """The one status of a DICOM signature (a :class:`~.signature.SignatureCheck`) or of a present
    C2PA manifest (a :class:`~.c2pa_manifest.ManifestCheck`), as both ``verify`` and the
    ``provenance`` detector report it (:data:`CHECK_STATUSES`):

    ``broken`` -- the signed data or the file changed, or the signature/manifest cannot be read;
    ``expired`` -- intact, but the signer's certificate was outside its validity period;
    ``unsupported`` -- an algorithm or encoding that cannot be checked;
    ``untrusted`` -- intact, but no chain to the trust anchors given;
    ``not-checked`` -- intact, no trust anchors given; ``trusted`` -- intact and chained to one.
    """
    if hasattr(check, "present"):  # a C2PA manifest
        if check.unreadable:
            return "broken"
        if not check.valid:
            timing = ("signingcredential.expired", "claimsignature.outsidevalidity")
            if check.codes and all(c.lower().startswith(timing) for c in check.codes):
                return "expired"
            return "broken"
        return check.trust
    if check.ok:
        return check.trust
    if check.reasons and all(r.startswith("unsupported") for r in check.reasons):
        return "unsupported"  # an algorithm, syntax or certificate type that cannot be checked
    if not check.integrity:
        return "broken"
    if check.trust == "untrusted":
        return "untrusted"
    if any("expired" in r or "not yet valid" in r for r in check.reasons):
        return "expired"
    return "unsupported"


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.issuer == cert.subject  # a v1 self-signed root


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if issuer.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def decide(chain: Sequence[x509.Certificate], anchors: Iterable[x509.Certificate] | None, *,
           at: _dt.datetime | None = None) -> TrustDecision:
    """The trust decision for a signer whose certificate is ``chain[0]``, followed by the issuers
    the signed file carries (they help build the path but are never trusted themselves).

    ``anchors``: trusted certificates (:func:`load_anchors`), ``None`` for "not checked".
    ``at``: when issuers must be valid (default: now). Never raises.
    """
    if not chain:
        return TrustDecision("not-checked" if anchors is None else "untrusted",
                             reason="the signature carries no signer certificate")
    leaf = chain[0]
    signer, subject = subject_of(leaf)
    d = TrustDecision("not-checked", signer=signer, subject=subject, fingerprint=fingerprint(leaf))
    if anchors is None:
        d.reason = "no trust anchors given: the signer was not checked"
        return d
    at = at or _dt.datetime.now(_dt.timezone.utc)
    if at.tzinfo is None:
        at = at.replace(tzinfo=_dt.timezone.utc)
    anchors = list(anchors)
    anchor_der = {_der(a): a for a in anchors}
    carried = list(chain[1:])
    cur, seen = leaf, set()
    for _ in range(_MAX_DEPTH):
        if _der(cur) in anchor_der:
            d.status, d.anchor = "trusted", subject_of(cur)[1]
            return d
        seen.add(_der(cur))
        nxt = None
        for cand in [*anchors, *carried]:  # anchors first: a path ends at the first anchor it reaches
            if _der(cand) in seen or not _is_ca(cand) or not _issued_by(cur, cand):
                continue
            if cand.not_valid_before_utc <= at <= cand.not_valid_after_utc:
                nxt = cand
                break
        if nxt is None:
            break
        cur = nxt
    d.status = "untrusted"
    d.reason = f"signer {signer!r} is not trusted: no valid chain to the given trust anchors"
    return d
