"""LIDC-IDRI nodule annotations: the readers' XML marks, mapped onto a loaded series.

Each LIDC-IDRI CT series comes with one XML file (namespace ``http://www.nih.gov``) holding up to
four radiologists' *unblinded reads*. A reader marks each nodule of 3 mm or more with an outline
per slice (``roi``: ``imageZposition``, ``imageSOP_UID``, ``edgeMap`` points, ``inclusion``) and
rates it (``characteristics``, ``malignancy`` 1-5); a nodule under 3 mm gets a single point and no
ratings. Readers mark the same lesion independently, so :func:`nodules_for` merges their marks
into consensus nodules.

On LIDC-IDRI data, ``nodules_for(load("LIDC-IDRI-0001/")[0])`` finds the XML beside the series
itself. Here, a six-slice series (headers only) and an XML file in which two readers outline one
nodule on slices 2-4 (squares of 12 and 16 pixels, malignancy 4 and 3):

>>> import tempfile
>>> from pathlib import Path
>>> import numpy as np
>>> from pydicom.dataset import Dataset
>>> from medforensics.core import Image
>>> headers = [Dataset() for _ in range(6)]
>>> for k, ds in enumerate(headers):
...     ds.SOPInstanceUID, ds.ImagePositionPatient = f"1.2.3.{k}", [0.0, 0.0, 2.5 * k]
>>> image = Image.from_array(np.full((6, 64, 64), -850.0), modality="CT", spacing=(2.5, 0.7, 0.7),
...                          datasets=headers)
>>> def roi(k, x, y, r):              # one slice's outline: the corners of a square, in pixels
...     edges = "".join(f"<edgeMap><xCoord>{a}</xCoord><yCoord>{b}</yCoord></edgeMap>"
...                     for a, b in [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)])
...     return f"<roi><imageZposition>{2.5 * k}</imageZposition><imageSOP_UID>1.2.3.{k}</imageSOP_UID>{edges}</roi>"
>>> def read(reader, r, malignancy):
...     return (f"<readingSession><servicingRadiologistID>{reader}</servicingRadiologistID>"
...             f"<unblindedReadNodule><noduleID>N1</noduleID><characteristics><malignancy>{malignancy}"
...             "</malignancy></characteristics>" + "".join(roi(k, 30, 40, r) for k in (2, 3, 4))
...             + "</unblindedReadNodule></readingSession>")
>>> folder = tempfile.TemporaryDirectory()
>>> xml = Path(folder.name) / "069.xml"
>>> _ = xml.write_text('<LidcReadMessage xmlns="http://www.nih.gov">' + read("A", 6, 4) + read("B", 8, 3)
...                    + "</LidcReadMessage>")
>>> [(m.reader, m.nodule_id, m.malignancy, len(m.rois)) for m in read_annotations(xml)]
[('1:A', 'N1', 4, 3), ('2:B', 'N1', 3, 3)]
>>> [(n.id, n.center_voxel, round(n.diameter_mm, 1), n.n_readers, n.malignancy, n.bbox_voxel)
...  for n in nodules_for(image, xml)]
[(1, (3, 40, 30), 13.9, 2, 3.5, (2, 32, 22, 5, 49, 39))]
>>> folder.cleanup()
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import cv2
import numpy as np

from ..core import Image, MedForensicsError

__all__ = ["ReaderMark", "Roi", "Nodule", "read_annotations", "find_annotation_files", "nodules_for",
           "marked_voxels", "MALIGNANT_FROM"]

NS = "{http://www.nih.gov}"
#: Mean malignancy rating from which a nodule counts as malignant (CT-GAN's TM/TB split).
MALIGNANT_FROM = 3.0
#: Marks of two readers whose centres are closer than this (mm), or than half the larger
#: diameter, are the same lesion.
MERGE_MM = 5.0
#: Diameter given to nodules marked with a single point (LIDC: "under 3 mm").
SMALL_NODULE_MM = 3.0


@dataclass
class Roi:
    """One reader's outline of a nodule on one slice (``x`` = column, ``y`` = row, in pixels)."""

    z: float
    sop_uid: str
    inclusion: bool
    points: np.ndarray  # (n, 2) of (x, y)


@dataclass
class ReaderMark:
    """One reader's mark of one nodule."""

    series_uid: str
    reader: str
    nodule_id: str
    rois: list[Roi]
    characteristics: dict[str, int] = field(default_factory=dict)

    @property
    def malignancy(self) -> int | None:
        return self.characteristics.get("malignancy")

    @property
    def small(self) -> bool:
        """A point mark (nodule under 3 mm, no outline and no ratings)."""
        return all(len(r.points) <= 1 for r in self.rois)


@dataclass
class Nodule:
    """A consensus nodule: the readers' marks of one lesion, on the slices of a loaded image.

    ``center_voxel`` is ``(k, i, j)`` (slice, row, column) of ``Image.pixels``; ``bbox_voxel`` the
    union of the readers' outlines (starts then exclusive stops); ``diameter_mm`` the mean of the
    readers' largest in-plane diameters (3 mm for nodules only marked with a point);
    ``malignancy`` the mean rating (None when no reader rated it).
    """

    id: int
    center_voxel: tuple[int, int, int]
    center_mm: tuple[float, float, float] | None
    diameter_mm: float
    malignancy: float | None
    n_readers: int
    bbox_voxel: tuple[int, int, int, int, int, int]
    small: bool = False
    readers: list[str] = field(default_factory=list)
    #: bool over ``bbox_voxel``: the voxels inside any reader's outline (LIDC outlines are drawn
    #: just outside the nodule); a point for nodules under 3 mm.
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def malignant(self) -> bool:
        """Mean malignancy of 3 or more (CT-GAN's "malignant" class); False when unrated."""
        return self.malignancy is not None and self.malignancy >= MALIGNANT_FROM

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "center_voxel": list(self.center_voxel),
                "center_mm": list(self.center_mm) if self.center_mm else None,
                "diameter_mm": round(self.diameter_mm, 2),
                "malignancy": None if self.malignancy is None else round(self.malignancy, 2),
                "malignant": self.malignant, "n_readers": self.n_readers, "bbox_voxel": list(self.bbox_voxel),
                "small": self.small}


def _text(el: ET.Element | None, tag: str) -> str | None:
    if el is None:
        return None
    child = el.find(NS + tag)
    return child.text.strip() if child is not None and child.text else None


def read_annotations(xml_path: str | Path) -> list[ReaderMark]:
    """Every reader's nodule marks in one LIDC-IDRI XML file (non-nodules are left out).

    Raises :class:`MedForensicsError` for a file that is not LIDC XML.
    """
    xml_path = Path(xml_path)
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise MedForensicsError(xml_path, f"not readable as XML ({e})") from None
    if root.tag != NS + "LidcReadMessage":
        raise MedForensicsError(xml_path, "not an LIDC-IDRI annotation file (no LidcReadMessage in http://www.nih.gov)")
    series_uid = _text(root.find(NS + "ResponseHeader"), "SeriesInstanceUid") or ""
    marks: list[ReaderMark] = []
    for s, session in enumerate(root.findall(NS + "readingSession")):
        reader = _text(session, "servicingRadiologistID") or f"reader{s + 1}"
        reader = f"{s + 1}:{reader}"
        for nod in session.findall(NS + "unblindedReadNodule"):
            chars: dict[str, int] = {}
            ch = nod.find(NS + "characteristics")
            if ch is not None:
                for c in ch:
                    try:
                        chars[c.tag.replace(NS, "")] = int(float(c.text))
                    except (TypeError, ValueError):
                        pass
            rois = []
            for roi in nod.findall(NS + "roi"):
                try:
                    z = float(_text(roi, "imageZposition") or "nan")
                except ValueError:
                    z = float("nan")
                pts = []
                for e in roi.findall(NS + "edgeMap"):
                    try:
                        pts.append((int(float(_text(e, "xCoord") or "")), int(float(_text(e, "yCoord") or ""))))
                    except ValueError:
                        raise MedForensicsError(xml_path, f"edgeMap with a coordinate that is not a number in "
                                                          f"{_text(nod, 'noduleID') or 'a nodule'}") from None
                if not pts:
                    continue
                rois.append(Roi(z=z, sop_uid=_text(roi, "imageSOP_UID") or "",
                                inclusion=(_text(roi, "inclusion") or "TRUE").upper() == "TRUE",
                                points=np.array(pts, dtype=float)))
            if rois:
                marks.append(ReaderMark(series_uid, reader, _text(nod, "noduleID") or "?", rois, chars))
    return marks


def _xml_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUid of an LIDC XML file, read from its header only."""
    try:
        for _, el in ET.iterparse(path, events=("end",)):
            if el.tag == NS + "SeriesInstanceUid":
                return (el.text or "").strip()
            if el.tag == NS + "ResponseHeader":
                return None
    except (ET.ParseError, OSError):
        return None
    return None


def find_annotation_files(image: Image, search: Iterable[str | Path] = ()) -> list[Path]:
    """The LIDC XML files whose SeriesInstanceUid is ``image.uid``.

    Looked for in ``search`` (folders), then in the series folder and its parents up to the
    patient folder (named like the PatientID, else three levels up), then -- where the patient
    folder is known -- in the same patient's folder of sibling collections (``.../lidc-idri-small/LIDC-IDRI-0002`` also looks in
    ``.../lidc-idri/LIDC-IDRI-0002``).
    """
    if not image.sources:
        return []
    series_dir = Path(image.sources[0]).resolve().parent
    patient_id = str(getattr(image.datasets[0], "PatientID", "") or "") if image.datasets else ""
    chain = [series_dir, *series_dir.parents][:4]
    patient = next((d for d in chain if patient_id and d.name == patient_id), None)
    folders: list[tuple[Path, bool]] = [(Path(p), True) for p in search]
    for d in chain:
        folders.append((d, False))
        if d == patient:
            break
    if patient is not None and patient.parent.parent != patient.parent:
        collections = patient.parent.parent
        try:
            siblings = sorted(d for d in collections.iterdir() if d.is_dir() and d != patient.parent)
        except OSError:
            siblings = []
        folders.extend((d / patient.name, True) for d in siblings if (d / patient.name).is_dir())
    found: list[Path] = []
    seen: set[Path] = set()
    for folder, deep in folders:
        if not folder.is_dir():
            continue
        files = sorted(folder.rglob("*.xml")) if deep else sorted(folder.glob("*.xml"))
        for f in files:
            if f not in seen:
                seen.add(f)
                if _xml_series_uid(f) == image.uid:
                    found.append(f)
        if found:
            break
    return found


def _slice_index(image: Image) -> tuple[dict[str, int], np.ndarray]:
    sops = {str(getattr(ds, "SOPInstanceUID", "")): k for k, ds in enumerate(image.datasets)}
    zs = []
    for k, ds in enumerate(image.datasets):
        ipp = getattr(ds, "ImagePositionPatient", None)
        zs.append(float(ipp[2]) if ipp is not None else float(image.meta.get("slice_positions", [np.nan] * (k + 1))[k]))
    return sops, np.array(zs, dtype=float)


def _mark_geometry(mark: ReaderMark, image: Image, sops: dict[str, int], zs: np.ndarray):
    """(centre (k,i,j) float, diameter mm or None, bbox, all slices present?, outlines) of one
    mark; ``outlines`` lists ``(k, points (x, y), inclusion)`` for the slices present."""
    sp_r, sp_c = float(image.spacing[1] or 1.0), float(image.spacing[2] or 1.0)
    tol = 0.5 * float(image.spacing[0] or 1.0)
    ks, weights, centres, diam = [], [], [], 0.0
    present = True
    rows, cols = [], []
    outlines = []
    for roi in mark.rois:
        k = sops.get(roi.sop_uid)
        if k is None and np.isfinite(roi.z) and len(zs):
            near = int(np.argmin(np.abs(zs - roi.z)))
            k = near if abs(zs[near] - roi.z) <= tol else None
        if k is None:
            present = False
            continue
        outlines.append((k, roi.points, roi.inclusion))
        if not roi.inclusion:
            continue
        pts = roi.points
        if len(pts) >= 3:
            area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
            d = np.sqrt(((pts[:, None, 0] - pts[None, :, 0]) * sp_c) ** 2 + ((pts[:, None, 1] - pts[None, :, 1]) * sp_r) ** 2)
            diam = max(diam, float(d.max()))
        else:
            area = 0.0
        ks.append(k)
        weights.append(max(area, 1.0))
        centres.append(pts.mean(axis=0))
        rows.extend(pts[:, 1])
        cols.extend(pts[:, 0])
    if not ks:
        return None, None, None, present, outlines
    w = np.array(weights)
    c = np.array(centres)
    center = (float(np.dot(w, ks) / w.sum()), float(np.dot(w, c[:, 1]) / w.sum()), float(np.dot(w, c[:, 0]) / w.sum()))
    bbox = (min(ks), int(min(rows)), int(min(cols)), max(ks) + 1, int(max(rows)) + 1, int(max(cols)) + 1)
    return center, (diam if not mark.small and diam > 0 else None), bbox, present, outlines


def _outline_mask(outlines: list, bbox: tuple[int, ...]) -> np.ndarray:
    """The voxels one reader marked, over ``bbox``: filled outlines less the excluded ones."""
    shape = tuple(b - a for a, b in zip(bbox[:3], bbox[3:]))
    mask = np.zeros(shape, np.uint8)
    for inclusion in (True, False):
        for k, pts, inc in outlines:
            if inc != inclusion or not (bbox[0] <= k < bbox[3]):
                continue
            xy = np.round(pts - [bbox[2], bbox[1]]).astype(np.int32).reshape(-1, 1, 2)
            sl = np.ascontiguousarray(mask[k - bbox[0]])
            if len(pts) >= 3:
                cv2.fillPoly(sl, [xy], 1 if inclusion else 0)
            if inclusion:
                cv2.polylines(sl, [xy], True, 1, 1)
            mask[k - bbox[0]] = sl
    return mask.astype(bool)


def nodules_for(image: Image, xml_path: str | Path | None = None, *, search: Iterable[str | Path] = ()) -> list[Nodule]:
    """Consensus LIDC nodules on the slices of ``image``, largest first (ids 1, 2, ...).

    The XML is found by :func:`find_annotation_files` unless ``xml_path`` is given. Readers' marks
    of one lesion (centres closer than :data:`MERGE_MM` or than half the larger diameter) are
    merged; nodules with any marked slice missing from ``image`` (a partial series) are left out.
    Returns an empty list when the series has no annotation file.
    """
    if image.pixels.ndim != 3:
        raise MedForensicsError(image.path, "LIDC nodules need a CT series (a 3D volume)")
    files = [Path(xml_path)] if xml_path is not None else find_annotation_files(image, search)
    marks = [m for f in files for m in read_annotations(f) if not m.series_uid or m.series_uid == image.uid]
    if not marks:
        return []
    sops, zs = _slice_index(image)
    sp = np.array([float(s or 1.0) for s in image.spacing])
    geo = [_mark_geometry(m, image, sops, zs) for m in marks]
    # Cluster in mm (slice axis from the XML z so that marks on absent slices still join their lesion).
    pos = []
    for m, _geometry in zip(marks, geo):
        z = np.mean([r.z for r in m.rois if r.inclusion] or [r.z for r in m.rois])
        pts = np.concatenate([r.points for r in m.rois if r.inclusion] or [r.points for r in m.rois])
        pos.append(np.array([z, pts[:, 1].mean() * sp[1], pts[:, 0].mean() * sp[2]]))
    parent = list(range(len(marks)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in range(len(marks)):
        for b in range(a + 1, len(marks)):
            if marks[a].reader == marks[b].reader:
                continue
            reach = max(MERGE_MM, 0.5 * max(geo[a][1] or 0.0, geo[b][1] or 0.0))
            if np.linalg.norm(pos[a] - pos[b]) < reach:
                parent[find(b)] = find(a)
    groups: dict[int, list[int]] = {}
    for a in range(len(marks)):
        groups.setdefault(find(a), []).append(a)
    found = []
    for members in groups.values():
        if not all(geo[a][3] for a in members) or any(geo[a][0] is None for a in members):
            continue
        centres = np.array([geo[a][0] for a in members])
        center = tuple(int(round(v)) for v in centres.mean(axis=0))
        diams = [geo[a][1] for a in members if geo[a][1] is not None]
        small = not diams
        mal = [marks[a].malignancy for a in members if marks[a].malignancy is not None]
        boxes = np.array([geo[a][2] for a in members])
        bbox = tuple(int(v) for v in (*boxes[:, :3].min(axis=0), *boxes[:, 3:].max(axis=0)))
        outline = np.zeros(tuple(b - a for a, b in zip(bbox[:3], bbox[3:])), bool)
        for a in members:  # the union of the readers' outlines: everything any reader called nodule
            outline |= _outline_mask(geo[a][4], bbox)
        found.append(Nodule(id=0, center_voxel=center, center_mm=image.voxel_to_mm(center),
                            diameter_mm=float(np.mean(diams)) if diams else SMALL_NODULE_MM,
                            malignancy=float(np.mean(mal)) if mal else None,
                            n_readers=len({marks[a].reader for a in members}), bbox_voxel=bbox, small=small,
                            readers=sorted({marks[a].reader for a in members}), mask=outline))
    found.sort(key=lambda n: (-n.diameter_mm, -n.n_readers, n.center_voxel))
    for i, n in enumerate(found, 1):
        n.id = i
    return found


def marked_voxels(image: Image, xml_path: str | Path | None = None, *, search: Iterable[str | Path] = ()) -> np.ndarray:
    """Every voxel ``(k, i, j)`` of ``image`` that any reader marked as nodule: inside any outline
    (filled, less excluded regions) or a point mark of a nodule under 3 mm, on the slices
    ``image`` holds. Unlike :func:`nodules_for`, marks of nodules partly outside the series count
    too (their slices inside it): what an injection must keep away from. An ``(n, 3)`` int array,
    empty when the series has no annotation file."""
    if image.pixels.ndim != 3:
        raise MedForensicsError(image.path, "LIDC nodules need a CT series (a 3D volume)")
    files = [Path(xml_path)] if xml_path is not None else find_annotation_files(image, search)
    marks = [m for f in files for m in read_annotations(f) if not m.series_uid or m.series_uid == image.uid]
    if not marks:
        return np.zeros((0, 3), int)
    sops, zs = _slice_index(image)
    shape = image.pixels.shape
    found = []
    for m in marks:
        _, _, _, _, outlines = _mark_geometry(m, image, sops, zs)
        inc = [(k, pts) for k, pts, inclusion in outlines if inclusion]
        if not inc:
            continue
        rows = np.concatenate([pts[:, 1] for _, pts in inc])
        cols = np.concatenate([pts[:, 0] for _, pts in inc])
        bbox = (min(k for k, _ in inc), int(np.floor(rows.min())), int(np.floor(cols.min())),
                max(k for k, _ in inc) + 1, int(np.ceil(rows.max())) + 1, int(np.ceil(cols.max())) + 1)
        idx = np.argwhere(_outline_mask(outlines, bbox)) + np.array(bbox[:3])
        inside = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
        found.append(idx[inside])
    return np.unique(np.concatenate(found), axis=0) if found else np.zeros((0, 3), int)
