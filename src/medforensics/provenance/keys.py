"""Signing identities: a private key, its X.509 certificate and the chain up to a root.

Every provenance tool signs with the same kind of identity: DICOM digital signatures, C2PA
manifests of exported images and the signed tree heads of the transparency log.
``medforensics keys new DIR`` makes a small private PKI for trying things out and for tests: a
root CA (``ca.pem``, ``ca-key.pem``) and a signer certificate issued by it (``cert.pem``,
``key.pem``). In production, load the hospital's own key and certificate with
:func:`load_identity` instead.

Every signer certificate made here carries a random serial-number attribute in its subject, so
two identities never share a subject even when given the same common name; without a name the
common name itself is unique too (:func:`default_signer_name`: host, date and a random part). A
signature by someone else's fresh key therefore never *looks* like ours -- though only a trust
anchor (``verify --trust``) proves who signed.

Example
-------
>>> import tempfile
>>> from pathlib import Path
>>> ident = new_identity("Radiology signer", algorithm="ec")
>>> ident.algorithm, subject(ident.cert)[:35]
('ec', 'CN=Radiology signer, O=medforensics')
>>> subject(ident.cert) != subject(new_identity("Radiology signer").cert)   # the serialNumber differs
True
>>> tmp = tempfile.TemporaryDirectory()
>>> folder = Path(tmp.name) / "keys"
>>> sorted(ident.save(folder))
['ca', 'cert', 'key']
>>> loaded = load_identity(folder / "key.pem", folder / "cert.pem")
>>> loaded.cert == ident.cert, len(load_certificates(folder / "ca.pem"))
(True, 1)
>>> tmp.cleanup()
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..core import MedForensicsError, one_line

ALGORITHMS = ("rsa", "ec")
#: id-kp-documentSigning (RFC 9336): accepted by C2PA for claim signers.
DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")


@dataclass
class Identity:
    """A private key with its certificate and the chain of issuers (leaf first, root last)."""

    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    cert: x509.Certificate
    chain: list[x509.Certificate] = field(default_factory=list)
    #: the root CA's key when the identity was made by :func:`new_identity` (to issue more certificates)
    ca_key: object | None = None

    @property
    def algorithm(self) -> str:
        """``rsa`` or ``ec`` (``ed25519`` for keys loaded from elsewhere)."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return "rsa"
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return "ec"
        return "ed25519"

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def cert_pem(self) -> bytes:
        """The signer certificate followed by its issuers (root excluded), as PEM."""
        issuers = [c for c in self.chain if not _self_issued(c)]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [self.cert, *issuers])

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``key.pem`` (mode 0600) and ``cert.pem``, plus ``ca.pem`` when a root is in the
        chain; refuses to replace existing files. Returns the paths written."""
        folder = make_folder(folder)
        files = {"key": folder / "key.pem", "cert": folder / "cert.pem"}
        roots = [c for c in self.chain if _self_issued(c)]
        if roots:
            files["ca"] = folder / "ca.pem"
        for p in files.values():
            if p.exists():
                raise MedForensicsError(p, "already exists; choose a new folder")
        written = {"key": self.key_pem(), "cert": self.cert_pem()}
        if roots:
            written["ca"] = roots[-1].public_bytes(serialization.Encoding.PEM)
        for role, data in written.items():
            try:
                _write_new(files[role], data, 0o600 if role == "key" else 0o644)
            except FileExistsError:
                raise MedForensicsError(files[role], "already exists; choose a new folder") from None
            except OSError as e:
                raise MedForensicsError(files[role], f"cannot be written ({e.strerror})") from None
        return files


def generate_key(algorithm: str = "ec", *, rsa_bits: int = 2048):
    """A new private key: ``ec`` (NIST P-256) or ``rsa`` (``rsa_bits``, default 2048)."""
    if algorithm == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise MedForensicsError(None, f"unknown key algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


def _name(common_name: str, organisation: str | None, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    if serial:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name(attrs)


def subject(cert: x509.Certificate) -> str:
    """The certificate's subject as people read it, in the certificate's order (as ``openssl x509
    -subject`` prints it): ``CN=..., O=medforensics, serialNumber=...``."""
    return ", ".join(a.rfc4514_string({NameOID.SERIAL_NUMBER: "serialNumber"}) for a in cert.subject)


def unique_token() -> str:
    """16 random hex digits: the ``serialNumber`` attribute that makes each signer's subject unique."""
    import secrets

    return secrets.token_hex(8)


def default_signer_name(token: str | None = None) -> str:
    """``medforensics signer HOST DATE #TOKEN``: the common name of a signer made without a name
    (``keys new`` without ``--name``); ``TOKEN`` is random (:func:`unique_token`), so two such
    signers never share a name."""
    import re
    import socket

    host = re.sub(r"[^A-Za-z0-9-]", "", (socket.gethostname() or "").split(".")[0])[:32] or "host"
    day = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return f"medforensics signer {host} {day} #{(token or unique_token())[:8]}"


def _hash_for(key) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def issue_certificate(subject_key, common_name: str, *, issuer_key=None, issuer_cert: x509.Certificate | None = None,
                      ca: bool = False, days: int = 825, organisation: str | None = "medforensics",
                      not_before: _dt.datetime | None = None, serial: str | None = None) -> x509.Certificate:
    """Issue an X.509 v3 certificate for ``subject_key``: self-signed when no issuer is given.
    ``serial`` adds a ``serialNumber`` attribute to the subject (a unique name for the signer).

    A CA certificate may sign certificates; a leaf certificate may sign documents (digital
    signature and non-repudiation key usage; e-mail protection and document signing extended
    key usage, which C2PA requires of claim signers).
    """
    now = not_before or (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5))
    subject = _name(common_name, organisation, serial)
    issuer_key = issuer_key or subject_key
    issuer_name = issuer_cert.subject if issuer_cert is not None else subject
    pub = subject_key.public_key()
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(pub)
         .serial_number(x509.random_serial_number()).not_valid_before(now)
         .not_valid_after(now + _dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False))
    if issuer_cert is not None:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False)
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                          crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION, DOCUMENT_SIGNING]),
                            critical=False)
    return b.sign(issuer_key, _hash_for(issuer_key))


def new_identity(common_name: str | None = None, *, algorithm: str = "ec", days: int = 825,
                 organisation: str | None = "medforensics", ca_name: str | None = None) -> Identity:
    """A root CA and a signer certificate issued by it (the root travels in ``chain``).

    The signer's subject holds ``common_name`` (default: :func:`default_signer_name`, unique) and a
    random ``serialNumber`` attribute, so no two identities share a subject; the CA's has the
    same serial number (``"<common name> root CA"`` unless ``ca_name`` is given)."""
    token = unique_token()
    common_name = common_name or default_signer_name(token)
    ca_key = generate_key(algorithm)
    ca_cert = issue_certificate(ca_key, ca_name or f"{common_name} root CA", ca=True, days=days + 365,
                                organisation=organisation, serial=token)
    key = generate_key(algorithm)
    cert = issue_certificate(key, common_name, issuer_key=ca_key, issuer_cert=ca_cert, days=days,
                             organisation=organisation, serial=token)
    return Identity(key=key, cert=cert, chain=[ca_cert], ca_key=ca_key)


def load_identity(key_path: str | Path, cert_path: str | Path, password: bytes | None = None) -> Identity:
    """Load a PEM private key and a PEM certificate file (signer first, then its issuers).

    Raises :class:`MedForensicsError` naming the file when it is missing, not PEM, or when the
    key does not belong to the certificate.
    """
    key_path, cert_path = Path(key_path), Path(cert_path)
    try:
        key = serialization.load_pem_private_key(read_bytes(key_path), password=password)
    except (ValueError, TypeError) as e:
        raise MedForensicsError(key_path, f"not a usable PEM private key ({one_line(e, 160)})") from None
    certs = load_certificates(cert_path)
    ident = Identity(key=key, cert=certs[0], chain=certs[1:])
    if _public_der(certs[0].public_key()) != _public_der(key.public_key()):
        raise MedForensicsError(cert_path, f"the certificate does not belong to the key in {key_path}")
    return ident


def load_private_key(path: str | Path, password: bytes | None = None):
    """A PEM private key from a file (any algorithm; callers check the one they need); a one-line
    :class:`MedForensicsError` naming the file when it is missing, unreadable or not a PEM key."""
    path = Path(path)
    try:
        return serialization.load_pem_private_key(read_bytes(path), password=password)
    except (ValueError, TypeError) as e:
        raise MedForensicsError(path, f"not a usable PEM private key ({one_line(e, 160)})") from None


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """All certificates in a PEM (or single DER) file, in file order; a clear error otherwise."""
    path = Path(path)
    data = read_bytes(path)
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise MedForensicsError(path, f"not a readable X.509 certificate ({one_line(e, 160)})") from None
    if not certs:
        raise MedForensicsError(path, "contains no certificate")
    return certs


def public_key_pem(key) -> bytes:
    """The PEM SubjectPublicKeyInfo of a private or public key."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_der(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a file, or a one-line :class:`MedForensicsError` naming it (missing, a folder,
    unreadable). Shared by the provenance tools."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MedForensicsError(path, "no such file") from None
    except IsADirectoryError:
        raise MedForensicsError(path, "is a folder, not a file") from None
    except OSError as e:
        raise MedForensicsError(path, f"cannot be read ({e.strerror})") from None


def make_folder(path: str | Path) -> Path:
    """Create the folder ``path`` and its parents (an existing folder is fine) or raise a one-line
    :class:`MedForensicsError` naming it and the problem: a file in the way, no permission, ...
    Shared by the provenance tools."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MedForensicsError(path, "exists and is not a folder") from None
    except NotADirectoryError:
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        raise MedForensicsError(path, f"cannot create the folder: {blocker or 'a part of the path'} is a "
                                      "file, not a folder") from None
    except OSError as e:
        raise MedForensicsError(path, f"cannot create the folder ({e.strerror or one_line(e, 120)})") from None
    return path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write a new file (``FileExistsError`` when something is there) with permission ``mode``."""
    import os
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
