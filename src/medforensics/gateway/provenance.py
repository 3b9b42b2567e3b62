"""Provenance at the door: series that pass are signed and logged on their way into the archive.

With ``sign_with = [KEY, CERT]`` the gateway signs every instance of a series that the policy
forwards (the project's PS3.15 signatures, :func:`medforensics.provenance.signature.sign_file`:
a MAC over the header and the pixel data, with block digests that locate a later change) and,
with ``log = LEDGER``, appends their fingerprints to the transparency log in one batch. The
archive then receives the signed copies; any later change inside the archive is provable with
``medforensics verify`` or ``medforensics scan --trust CA``. The received files stay in the
spool unchanged; signed copies are written beside them (``<SOPInstanceUID>.signed.dcm``).
"""
from __future__ import annotations

from pathlib import Path

from ..core import MedForensicsError, one_line

__all__ = ["Signer"]


class Signer:
    """Signs spooled instances with one identity and logs them (see the module's description)."""

    def __init__(self, key: str | Path, cert: str | Path, log: str | None = None):
        from ..provenance.keys import load_identity

        self.key, self.cert, self.log = Path(key), Path(cert), log
        self.identity = load_identity(key, cert)
        self.subject = self.identity.cert.subject.rfc4514_string()
        if log is not None:
            from ..provenance.ledger import Ledger

            Ledger(log).close()   # refuse a log that cannot be opened now, not at the first series

    def sign(self, files: list[str]) -> dict[str, str]:
        """Signed copies of ``files`` (spool paths), as ``{original: signed copy}``; a copy made
        before a restart is kept, not made again. The new copies' fingerprints are logged."""
        from ..provenance.signature import sign_file

        done: dict[str, str] = {}
        new: list[Path] = []
        for f in files:
            dst = Path(f).with_name(Path(f).stem + ".signed.dcm")
            if not dst.exists():
                tmp = dst.with_name(dst.name + ".part")
                tmp.unlink(missing_ok=True)
                sign_file(f, tmp, self.identity)
                tmp.rename(dst)
                new.append(dst)
            done[f] = str(dst)
        if new and self.log is not None:
            self._append(new)
        return done

    def _append(self, files: list[Path]) -> None:
        from ..provenance.ledger import Ledger, fingerprint

        try:
            ledger = Ledger(self.log)
            try:
                ledger.append([fingerprint(p) for p in files])
            finally:
                ledger.close()
        except MedForensicsError:
            raise
        except Exception as e:  # noqa: BLE001 - the log is another system: one line naming it
            raise MedForensicsError(self.log, f"cannot log the signed series: {one_line(e, 200)}") from None

    def note(self) -> str:
        """What the SR says of a signed series."""
        where = " and its fingerprints appended to the gateway's transparency log" if self.log else ""
        return (f"On its way into the archive every instance of this series was signed (DICOM PS3.15 digital "
                f"signature, signer {self.subject}){where}: any later change is provable.")
