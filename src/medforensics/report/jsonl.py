"""The scan's JSON-lines file, written so that no run leaves it half-written and any run can resume.

While a scan runs, its records go to ``OUT.partial`` beside ``OUT``, one line per item, flushed
as each item finishes, and, in input order with the reused ones, to a hidden temporary file
beside it (nothing is held in memory: a scan may have millions of items). When the scan
completes, that file is renamed to ``OUT`` (one atomic step), and ``OUT.partial`` is removed: ``OUT``
exists only complete. A scan that is interrupted (Ctrl-C, SIGTERM, a worker killed for memory,
a power cut) leaves ``OUT.partial`` with every finished item; ``scan --resume`` reads it (and
``OUT``, when a complete earlier run should be extended) and analyses only what is missing.

A record is reused when its ``path``, ``uid`` and content ``fingerprint`` match a source of the
new run; records of files that changed or are no longer given are dropped.

>>> import tempfile
>>> from pathlib import Path
>>> from medforensics.core import Verdict
>>> out = Path(tempfile.mkdtemp()) / "scan.jsonl"
>>> results = ResultsFile(out)
>>> results.write(Verdict("a.png", "image", None, 1, 0.1, "authentic", fingerprint="sha256:aa"))
>>> results.partial.name, out.exists()
('scan.jsonl.partial', False)
>>> results.finish()
>>> out.exists(), results.partial.exists()
(True, False)
>>> resumed = ResultsFile(out, resume=True)
>>> resumed.reusable("a.png", None, "sha256:aa").label, resumed.reusable("a.png", None, "sha256:bb")
('authentic', None)
>>> resumed.close()
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from ..core import MedForensicsError, Verdict
from ..io.plan import publish

#: Suffix of the file that holds the records of a scan still running or interrupted.
PARTIAL_SUFFIX = ".partial"


def partial_path(out: str | Path) -> Path:
    """Where the records of a running or interrupted scan to ``out`` are kept."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL_SUFFIX)


def read_records(path: Path) -> list[dict]:
    """The complete records of a JSON-lines file: a last line cut short by a crash is left out,
    and so is any line that is not a scan record."""
    records = []
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and "path" in record and "kind" in record:
                records.append(record)
    return records


def _key(path: str, uid: str | None) -> tuple[str, str]:
    return str(path), uid or ""


class ResultsFile:
    """The JSON-lines output of one scan (see the module's description).

    ``resume=True`` keeps the records of ``out`` and ``out.partial`` (a partial record wins over
    a complete one of the same item) for :meth:`reusable`; without it, an existing
    ``out.partial`` is refused (``overwrite=True`` removes it first), so that the results of an
    interrupted scan are never lost by accident.
    """

    def __init__(self, out: str | Path, *, resume: bool = False, overwrite: bool = False):
        self.out = Path(out)
        self.partial = partial_path(self.out)
        self.resume = resume
        self._previous: dict[tuple[str, str], dict] = {}
        self._count = 0
        # this run's records in input order; one left by a killed run is stale (its partial file
        # holds what it had finished)
        self._ordered_path = self.out.with_name(f".{self.out.name}.ordered")
        self._ordered: IO[str] | None = None
        if self.partial.exists() and not resume:
            if not overwrite:
                raise FileExistsError(f"{self.partial}: holds the results of an interrupted scan; pass --resume "
                                      "to continue it, or --overwrite to start again")
            self.partial.unlink()
        if resume:
            for source in (self.out, self.partial):
                if source.exists():
                    try:
                        for record in read_records(source):
                            self._previous[_key(record["path"], record.get("uid"))] = record
                    except OSError as e:
                        raise MedForensicsError.wrap(source, e, "cannot be read to resume") from None
        self._by_path: dict[str, list[dict]] = {}
        for (path, _), record in self._previous.items():
            self._by_path.setdefault(path, []).append(record)
        self._file: IO[str] | None = None
        self._ordered_path.unlink(missing_ok=True)
        # records already in the partial file are kept there; a line cut short by a crash is cut off
        if self.partial.exists():
            self._truncate_incomplete_line()
        try:
            self._file = open(self.partial, "a", encoding="utf-8")
        except OSError as e:
            raise MedForensicsError.wrap(self.partial, e, "cannot be written") from None

    def _truncate_incomplete_line(self) -> None:
        data = self.partial.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(self.partial, "r+b") as f:
                f.truncate(end)

    @property
    def previous(self) -> int:
        """How many records the resumed run found."""
        return len(self._previous)

    def reusable(self, path: str | Path, uid: str | None, fingerprint: str | None) -> Verdict | None:
        """The earlier result for this source, if there is one for the same content (and the same
        UID, where the source's UID is known before reading it: DICOM)."""
        matches = [r for r in self._by_path.get(str(path), []) if uid is None or r.get("uid") == uid]
        if len(matches) != 1 or fingerprint is None or matches[0].get("fingerprint") != fingerprint:
            return None
        return Verdict.from_dict(matches[0])

    def write(self, verdict: Verdict, *, reused: bool = False) -> None:
        """Record one item's result, in input order. A reused result is not written to the partial
        file again: it is already in ``out`` or the partial file, which stay until :meth:`finish`."""
        line = json.dumps(verdict.to_dict()) + "\n"
        if not reused:
            assert self._file is not None, "the results file is closed"
            self._file.write(line)
            self._file.flush()
        if self._ordered is None:
            try:
                self._ordered = open(self._ordered_path, "x", encoding="utf-8")
            except OSError as e:
                raise MedForensicsError.wrap(self._ordered_path, e, "cannot be written") from None
        self._ordered.write(line)
        self._count += 1

    def finish(self) -> None:
        """The scan is complete: the records of this run, in the order they came, become ``out``
        (replacing it only when resuming), and the partial file is removed."""
        self.close(keep_ordered=True)
        if self._ordered is None:   # no item at all: an empty file
            self._ordered = open(self._ordered_path, "x", encoding="utf-8")
        self._ordered.flush()
        os.fsync(self._ordered.fileno())
        self._ordered.close()
        self._ordered = None
        try:
            publish(self._ordered_path, self.out, replace=self.resume)
        except FileExistsError:
            raise MedForensicsError(self.out, f"appeared while the scan ran; the results are in {self.partial}") from None
        self.partial.unlink(missing_ok=True)

    def close(self, *, keep_ordered: bool = False) -> None:
        """Close the partial file (it keeps every record written so far); the ordered copy of an
        unfinished run is removed."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if not keep_ordered and self._ordered is not None:
            self._ordered.close()
            self._ordered = None
            self._ordered_path.unlink(missing_ok=True)

    @property
    def written(self) -> int:
        """Records of this run (reused ones included)."""
        return self._count
