"""Loading medical images: one entry point, one image type.

>>> from medforensics.io import load
>>> images = load("study/")            # doctest: +SKIP
>>> [(im.kind, im.modality, im.pixels.shape) for im in images]   # doctest: +SKIP
[('series', 'CT', (133, 512, 512)), ('image', 'CR', (1024, 1024))]

:mod:`.plan` is the input planner every command shares (which files a command takes, where
its copies go, never overwriting); :func:`discover` finds what is in a set of paths and groups DICOM instances into series
(:class:`Source`); :func:`load_source` turns one source into an :class:`~medforensics.core.Image`.
A ``dicomweb+http(s)://`` path is a DICOMweb server: each of its series is a source, fetched
when it is loaded (:mod:`.dicomweb`).
Errors about a file are :class:`~medforensics.core.MedForensicsError` with a one-line message that
names the file. An image that would take more memory to load than the decode budget is refused
from its header, before decoding (:mod:`.budget`). Nothing is ever written, but for the temporary
folder a DICOMweb series is fetched into while it is analysed.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import weakref
from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from pathlib import Path
from typing import Iterable

from ..core import Image, MedForensicsError
from .budget import size_tags
from . import dicomweb
from .dicom import load_instance, load_series, read_header, volume_rule
from .nifti import load_nifti
from .plan import KINDS, Input, OutputCollision, Plan, kind_of, new_file, new_folder, plan, sniff, walk
from .raster import file_digest, load_raster

__all__ = ["Source", "discover", "load_source", "load", "load_instance", "load_series", "load_raster",
           "load_nifti", "sniff", "kind_of", "plan", "walk", "Plan", "Input", "KINDS", "OutputCollision",
           "new_folder", "new_file", "parse_since", "FetchedImage"]

@dataclass
class Source:
    """One thing to analyse: a DICOM series (several files), or a single file.

    ``kind`` is ``dicom-series``, ``dicom``, ``raster``, ``nifti`` or ``unknown``; ``error`` is set
    when the source is already known to be unreadable; ``not_assembled`` says why an instance of
    a series that looks like a volume is analysed alone (:func:`.dicom.volume_rule`).
    """

    kind: str
    files: list[Path]
    uid: str | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    #: for an instance of a series that could not be stacked into a volume: the rule that failed
    not_assembled: str | None = None
    #: for a series: the size tags of each file's header (:data:`.budget.SIZE_TAGS`), so that its
    #: decode budget is checked without reading the headers again
    sizes: list[dict] = field(default_factory=list, repr=False)
    #: a ``dicomweb-series``: the series' URL (without credentials), the authentication headers
    #: to fetch it with, and once loaded the fingerprint of its fetched instances
    url: str | None = None
    headers: dict = field(default_factory=dict, repr=False)
    digest: str | None = None

    @property
    def path(self) -> Path | str:
        if self.url is not None:
            return self.url
        return self.files[0].parent if len(self.files) > 1 else self.files[0]


def _walk(paths: Iterable[str | Path]) -> tuple[list[tuple[Path, bool]], list[str]]:
    """Files under the paths, each with whether the user named it explicitly (:func:`.plan.walk`)."""
    w = walk(paths)
    return [(f, named) for f, _, named in w.files], [str(m) for m in w.missing]


def discover(paths: Iterable[str | Path], budget: int | str | None = None, *, since: date | str | None = None,
             study: str | None = None, token: str | None = None) -> tuple[list[Source], list[Path]]:
    """Find images under ``paths`` and group DICOM instances by SeriesInstanceUID.

    Instances are grouped by SeriesInstanceUID within one folder and one orientation: a copy of
    a series in another folder (an export, an edited version) is its own item. A group becomes one
    volume by :func:`.dicom.volume_rule` (positions from ImagePositionPatient; a SliceThickness
    that is negative, zero or not a number does not split it); where a series cannot be stacked,
    each instance is its own item and says which rule failed (``Source.not_assembled``, then
    ``meta["not_assembled"]`` of the loaded image, which ``dicom_header`` reports); so does each
    item of a series split by orientation.

    Files are found by the input planner (:func:`.plan.plan` with the ``scan`` rule: DICOM, PNG,
    JPEG, TIFF, NIfTI; names starting with ``.`` skipped). Returns ``(sources, skipped)``:
    ``skipped`` lists files met while walking folders that are not images (text, XML, CSV, ...).
    A file named explicitly that is not an image, a missing path, an empty file or an unreadable
    DICOM header becomes a source with ``error`` set, so callers can report it and go on; so does
    a deflated-syntax DICOM file that inflates beyond the decode ``budget`` (:mod:`.budget`).

    A path ``dicomweb+http(s)://HOST/ROOT`` is a DICOMweb server: each series of its studies
    becomes a ``dicomweb-series`` source (:func:`.dicomweb.list_series`; ``study`` keeps one
    StudyInstanceUID, ``token`` is a bearer token); a server that cannot be listed is a source
    with ``error`` set. ``since`` (a date or ``YYYY-MM-DD``) keeps files modified on or after
    that day (local time) and studies whose StudyDate is on or after it.
    """
    since = parse_since(since)
    paths = list(paths)
    sources: list[Source] = []
    for p in paths:
        if dicomweb.is_dicomweb(p):
            try:
                sources.extend(Source("dicomweb-series", [], uid=se.uid, url=se.url, headers=se.headers)
                               for se in dicomweb.list_series(str(p), study, since, token))
            except MedForensicsError as e:
                sources.append(Source("unknown", [], url=dicomweb.mask(str(p)), error=e.problem if e.path else str(e)))
    found = plan([p for p in paths if not dicomweb.is_dicomweb(p)], "scan")
    series: dict[tuple, list] = defaultdict(list)
    oldest = datetime.combine(since, datetime.min.time()).timestamp() if since else None
    for inp in found.inputs:
        path = inp.path
        if oldest is not None and inp.problem is None and path.stat().st_mtime < oldest:
            continue
        if inp.problem is not None:
            sources.append(Source("unknown", [path], error=inp.problem))
            continue
        if inp.kind != "dicom":
            sources.append(Source("nifti" if inp.kind == "nifti" else "raster", [path]))
            continue
        try:
            hdr = _slim(read_header(path, budget))
        except MedForensicsError as e:
            sources.append(Source("dicom", [path], error=e.problem))
            continue
        uid = str(getattr(hdr, "SeriesInstanceUID", "") or f"no-series-uid:{path}")
        series[(uid, path.parent, _orientation_key(hdr))].append((path, hdr))
    stacks: dict[tuple, list] = defaultdict(list)   # the orientations of each series in each folder
    for (uid, folder, orient), members in series.items():
        stacks[(uid, folder)].append((orient, len(members)))
    for (uid, folder, _), members in series.items():
        members, notes = _drop_identical_copies(members)
        headers = [h for _, h in members]
        volume, failed = volume_rule(headers)
        split = _orientation_split(stacks[(uid, folder)])
        if volume:
            sources.append(Source("dicom-series", [p for p, _ in members], uid=uid, notes=notes, not_assembled=split,
                                  sizes=[size_tags(h) for _, h in members]))
        else:
            why = "; ".join(w for w in (failed, split) if w) or None
            sources.extend(Source("dicom", [p], uid=str(getattr(h, "SOPInstanceUID", "") or "") or None,
                                  notes=[n for n in notes if str(p) in n], not_assembled=why) for p, h in members)
    return sources, found.skipped


def parse_since(since: date | str | None) -> date | None:
    """``since`` as a date; a string must be ``YYYY-MM-DD`` (:class:`MedForensicsError` otherwise).

    >>> parse_since("2024-03-01")
    datetime.date(2024, 3, 1)
    """
    if since is None or isinstance(since, date):
        return since
    text = str(since).strip()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise MedForensicsError(None, f"--since {since!r}: not a date written YYYY-MM-DD") from None


def _slim(hdr):
    """The header without its large binary values (private blobs, icons, overlays): discovery keeps
    the header of every DICOM file until all are grouped, and only needs identifiers and geometry."""
    for elem in list(hdr.iterall()):
        if isinstance(elem.value, (bytes, bytearray)) and len(elem.value) > 1024:
            elem.value = b""
    return hdr


def _orientation_key(hdr) -> tuple:
    """Instances of one series in another orientation (e.g. localisers) form their own stack."""
    try:
        iop = [float(v) for v in hdr.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return ()
    return tuple(round(v, 1) + 0.0 for v in iop)


def _orientation_split(stacks: list[tuple[tuple, int]]) -> str | None:
    """Where one series in one folder holds instances in several orientations (localisers, or
    slices turned to be judged apart from the rest): how many in each, in words; else ``None``."""
    if len(stacks) < 2:
        return None
    parts = ", ".join(f"{n} with ImageOrientationPatient {'/'.join(f'{v:g}' for v in o) if o else '(absent)'}"
                      for o, n in sorted(stacks, key=lambda t: -t[1]))
    return f"the series holds instances in {len(stacks)} orientations ({parts}); each orientation is analysed apart"


def _drop_identical_copies(members: list) -> tuple[list, list[str]]:
    """Drop byte-identical copies of one instance (same SOPInstanceUID, same bytes).

    Copies of one file under two names are common in shared data sets and are no evidence of
    anything; instances that share a UID but differ are kept, for the header detector to judge.
    """
    sops = [str(getattr(hdr, "SOPInstanceUID", "") or "") for _, hdr in members]
    repeated = {u for u in sops if u and sops.count(u) > 1}
    seen: dict[tuple[str, str], Path] = {}
    kept, notes = [], []
    for (path, hdr), sop in zip(members, sops):
        if sop in repeated:
            key = (sop, file_digest(path))
            if key in seen:
                notes.append(f"{path} is a byte-identical copy of {seen[key]}; analysed once")
                continue
            seen[key] = path
        kept.append((path, hdr))
    return kept, notes


def load_source(source: Source, budget: int | str | None = None) -> Image:
    """Load one :class:`Source`; raises :class:`MedForensicsError` for unreadable input and for an
    image that would take more memory to load than the decode ``budget`` (bytes or ``"512M"``;
    default ``MEDFORENSICS_DECODE_BUDGET``, else 2 GiB; see :mod:`.budget`). A series is checked
    file by file and as a whole (the stacked volume), before any pixel is decoded."""
    if source.error:
        raise MedForensicsError(source.path, source.error)
    if source.kind == "dicomweb-series":
        return _load_dicomweb(source, budget)
    if source.kind == "dicom-series":
        image = load_series(source.files, budget, sizes=source.sizes or None)
        if source.not_assembled:  # e.g. the series' other orientations are other items
            image.meta["not_assembled"] = source.not_assembled
        return image
    if source.kind == "dicom":
        image = load_instance(source.files[0], budget)
        if source.not_assembled:  # why it is not part of a volume (a dicom_header finding of the item)
            image.meta["not_assembled"] = source.not_assembled
        return image
    if source.kind == "raster":
        return load_raster(source.files[0], budget)
    if source.kind == "nifti":
        return load_nifti(source.files[0], budget)
    raise MedForensicsError(source.path, f"cannot load a source of kind {source.kind!r}")


def _load_dicomweb(source: Source, budget: int | str | None) -> Image:
    """Fetch a DICOMweb series into a temporary folder and load it as a local series would be
    (:func:`discover` then :func:`load_source`); set ``source.digest``. The image's ``path`` is the
    series' URL. The folder stays while the image is in use (detectors may read its files again:
    signatures, containers) and is removed when the image is released, or at exit at the latest;
    on an error it is removed at once."""
    folder = Path(tempfile.mkdtemp(prefix="medforensics-dicomweb-"))
    try:
        files, _ = dicomweb.fetch_series(source, folder)
        source.digest = dicomweb.digest(files)
        try:
            local, _ = discover([folder], budget)
            if len(local) != 1:
                kinds = ", ".join(sorted({s.kind for s in local}))
                raise MedForensicsError(source.url, f"the series is not one volume or image ({len(local)} items: "
                                        f"{kinds}); fetch it and scan its files to see each")
            image = load_source(local[0], budget)
        except MedForensicsError as e:
            # name the series, not the temporary file
            problem = e.problem.replace(str(folder), source.url or "") if e.path else str(e)
            raise MedForensicsError(source.url, problem) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    fetched = FetchedImage(**{f.name: getattr(image, f.name) for f in fields(image)}, url=source.url or "")
    weakref.finalize(fetched, shutil.rmtree, str(folder), True)
    return fetched


@dataclass
class FetchedImage(Image):
    """An image loaded from a DICOMweb series: its ``path`` is the series' URL."""

    url: str = ""

    @property
    def path(self) -> str:  # type: ignore[override]
        return self.url


def load(path: str | Path) -> list[Image]:
    """Load every image under ``path`` (a file or a folder); DICOM series become volumes.

    Raises :class:`MedForensicsError` on the first unreadable input; use :func:`discover` and
    :func:`load_source` to go on past errors.
    """
    sources, _ = discover([path])
    if not sources:
        raise MedForensicsError(path, "no medical images found")
    return [load_source(s) for s in sources]
