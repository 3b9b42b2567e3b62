"""Where received instances wait: one file per instance, durable before it is acknowledged.

An instance's data set is written as it arrived (the sender's transfer syntax and bytes, never
decoded or transcoded; the file meta header, which does not cross the network, is the
receiver's) to a temporary name, flushed to disk (``fsync``), renamed into place and its
folder flushed too, so that after a power cut it is either wholly there or not at all:
``instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. UIDs are checked
before they become file names. The gateway's results (SR, SEG) go to ``results/``.

>>> import tempfile
>>> spool = Spool(tempfile.mkdtemp())
>>> spool.write(b"DICM-bytes", "1.2.3", "1.2.3.4", "1.2.3.4.5").name
'1.2.3.4.5.dcm'
>>> spool.write(b"x", "1.2", "../etc", "1.2.3")
Traceback (most recent call last):
...
medforensics.core.MedForensicsError: SeriesInstanceUID: '../etc' is not a DICOM UID
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from ..core import MedForensicsError

__all__ = ["Spool", "valid_uid"]

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def valid_uid(uid: str, what: str) -> str:
    """``uid`` when it is a DICOM UID (digits and dots, at most 64 characters), else an error
    naming ``what``."""
    uid = str(uid).strip().rstrip("\0")
    if len(uid) > 64 or not _UID.fullmatch(uid):
        raise MedForensicsError(what, f"{uid[:80]!r} is not a DICOM UID")
    return uid


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The gateway's folder: received instances and the results it wrote."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self.instances = self.root / "instances"
        self.results = self.root / "results"
        try:
            for folder in (self.instances, self.results, self.root / "tmp"):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MedForensicsError.wrap(self.root, e, "cannot be used as the spool") from None

    def path(self, study: str, series: str, sop: str) -> Path:
        return (self.instances / valid_uid(study, "StudyInstanceUID") / valid_uid(series, "SeriesInstanceUID")
                / f"{valid_uid(sop, 'SOPInstanceUID')}.dcm")

    def write(self, data: bytes, study: str, series: str, sop: str) -> Path:
        """Write one instance durably (see the module's description) and return its path. An
        instance sent again never replaces the earlier copy (which may be held as evidence): it
        is kept beside it as ``<SOPInstanceUID>.2.dcm``, ``.3.dcm``, ..."""
        first = self.path(study, series, sop)
        first.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.part"
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        n, dest = 1, first
        while True:
            try:
                os.link(tmp, dest)           # never replaces an existing file
                break
            except FileExistsError:
                n += 1
                dest = first.with_name(f"{first.stem}.{n}.dcm")
        os.unlink(tmp)
        _fsync_dir(dest.parent)
        return dest

    def results_folder(self, series: str) -> Path:
        """A new folder for one check's results of ``series``."""
        folder = self.results / valid_uid(series, "SeriesInstanceUID") / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder
