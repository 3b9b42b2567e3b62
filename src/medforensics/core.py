"""Core types shared by every layer: :class:`Image`, :class:`Region`, :class:`Evidence`, :class:`Verdict`.

One image type, one evidence type, one verdict type: loaders produce an ``Image``, detectors turn
an ``Image`` into ``Evidence``, fusion turns evidence into a ``Verdict``, outputs write verdicts.

Conventions
-----------
* ``Image.pixels`` is a float32 array in physical units: Hounsfield units for CT (rescale
  slope/intercept applied), stored values with the photometric interpretation applied for
  radiographs (MONOCHROME1 inverted so that bright is dense), gray levels for PNG/JPEG/TIFF.
* Axes are ``(rows, cols)`` for a 2D image and ``(slices, rows, cols)`` for a volume; a volume's
  slices are sorted along the slice normal by patient position, never by file name.
* ``Image.affine`` (4x4, optional) maps a voxel index ``(k, i, j)`` -- slice, row, column; for a 2D
  image ``k = 0`` -- to DICOM patient coordinates (LPS, mm).
* A bounding box ``bbox_voxel`` is ``[start_0, start_1, ..., stop_0, stop_1, ...]`` with exclusive
  stops, like numpy slices, in the axis order of ``pixels``.
"""
from __future__ import annotations

import dataclasses
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from enum import StrEnum
from typing import Any, Iterator, Sequence

import numpy as np

SCHEMA_VERSION = "1.2"


class _Word(StrEnum):
    """A fixed word of the JSON contract: equal to its string, shown as its string."""

    def __repr__(self) -> str:
        return repr(self.value)


class Label(_Word):
    """The verdict on an image, from least to most alarming."""

    AUTHENTIC = "authentic"
    SUSPICIOUS = "suspicious"
    MANIPULATED = "manipulated"
    SYNTHETIC = "synthetic"


class Indicates(_Word):
    """What a piece of evidence points to; ``processing`` is reported but never counted as manipulation."""

    MANIPULATION = "manipulation"
    SYNTHESIS = "synthesis"
    PROCESSING = "processing"


class Confidence(_Word):
    """How far a piece of evidence may carry a verdict on its own (see :mod:`medforensics.fusion`)."""

    NORMAL = "normal"
    LOW = "low"


class Kind(_Word):
    """What a verdict is about: one 2D image or a series (a volume)."""

    IMAGE = "image"
    SERIES = "series"


#: The labels' values in order (members of :class:`Label` compare equal to these strings).
LABELS = tuple(m.value for m in Label)
INDICATES = tuple(m.value for m in Indicates)
CONFIDENCES = tuple(m.value for m in Confidence)


class MedForensicsError(Exception):
    """An error about one input that the user can act on; its message is one line."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = str(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path is not None else problem)

    @classmethod
    def wrap(cls, path: str | Path | None, e: BaseException, what: str = "", limit: int = 200) -> "MedForensicsError":
        """The one-line error about ``path`` that exception ``e`` amounts to: ``what`` (the
        problem in words) followed by the exception's own message flattened to one line.

        >>> str(MedForensicsError.wrap("a.dcm", ValueError("bad  header"), "not a readable DICOM file"))
        'a.dcm: not a readable DICOM file (bad header)'
        >>> str(MedForensicsError.wrap(None, KeyError("x")))
        "'x'"
        """
        msg = one_line(e, limit)
        return cls(path, f"{what} ({msg})" if what else msg)


def one_line(e: BaseException, limit: int | None = None) -> str:
    """The message of ``e`` on one line (its type name where it has none), cut to ``limit`` characters.

    >>> one_line(OSError("disk  full"))
    'disk full'
    >>> one_line(RuntimeError())
    'RuntimeError'
    """
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if limit is None or len(msg) <= limit else msg[:limit - 1] + "…"


_WARNINGS_LOCK = threading.RLock()


@contextmanager
def ignoring_warnings(category: type[Warning] = Warning) -> Iterator[None]:
    """Silence warnings of ``category`` inside the block (``warnings.catch_warnings`` with
    ``simplefilter("ignore")``), one thread at a time: ``analyze`` runs a 2D image's detectors
    in threads, and two ``catch_warnings`` blocks that overlap in different threads restore each
    other's filters in the wrong order. (A warning that another thread raises meanwhile is not
    recorded.)

    >>> import warnings
    >>> with ignoring_warnings(RuntimeWarning):
    ...     warnings.warn("dropped", RuntimeWarning)
    """
    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        yield


@dataclass
class Image:
    """Pixels in physical units plus everything known about where they came from.

    Parameters
    ----------
    pixels : ndarray
        2D ``(rows, cols)`` or 3D ``(slices, rows, cols)`` float32 array in physical units.
    spacing : tuple of float
        Millimetres per axis in the order of ``pixels``; ``None`` where unknown (e.g. a PNG).
    modality : str
        DICOM modality code (``CT``, ``MR``, ``CR``, ``DX``, ...). ``XR`` for a radiograph
        from a plain raster file, ``OT`` when unknown.
    format : str
        Container the pixels came from: ``dicom``, ``png``, ``jpeg``, ``tiff`` or ``nifti``.
    sources : list of Path
        File(s) the image was read from; for a DICOM series one per slice, in slice order.
    uid : str
        SeriesInstanceUID for a DICOM series, SOPInstanceUID for a single DICOM instance, a
        content hash otherwise.
    datasets : list of pydicom Dataset
        DICOM headers (pixel data removed) in slice order; empty for other formats.
    meta : dict
        Container metadata and loader notes (text chunks, EXIF, XMP, JPEG tables, colour,
        bit depth, per-instance stored-value ranges, series problems, ...).
    affine : ndarray, optional
        4x4 voxel-index to patient-mm (LPS) matrix, where geometry is known.
    """

    pixels: np.ndarray
    spacing: tuple[float | None, ...]
    modality: str
    format: str
    sources: list[Path]
    uid: str
    datasets: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    affine: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.pixels.ndim not in (2, 3):
            raise ValueError(f"pixels must be 2D or 3D, got shape {self.pixels.shape}")
        if len(self.spacing) != self.pixels.ndim:
            raise ValueError(f"spacing {self.spacing} does not match pixels of shape {self.pixels.shape}")
        if self.affine is not None and np.shape(self.affine) != (4, 4):
            raise ValueError("affine must be a 4x4 matrix")

    @property
    def kind(self) -> Kind:
        """``series`` for a volume, ``image`` for a 2D image."""
        return Kind.SERIES if self.pixels.ndim == 3 else Kind.IMAGE

    @property
    def n_instances(self) -> int:
        """Number of files (DICOM instances) behind the image."""
        return max(1, len(self.sources))

    @property
    def path(self) -> Path:
        """A path that names the image: its folder for a multi-file series, else its file."""
        if len(self.sources) > 1:
            return Path(self.sources[0]).parent
        return Path(self.sources[0])

    def voxel_to_mm(self, index: Sequence[float]) -> tuple[float, float, float] | None:
        """Patient coordinates (LPS, mm) of a voxel index in ``pixels`` order, if geometry is known."""
        if self.affine is None:
            return None
        idx = [float(v) for v in index]
        if len(idx) == 2:
            idx = [0.0] + idx
        xyz = self.affine @ np.array(idx + [1.0])
        return (round(float(xyz[0]), 2), round(float(xyz[1]), 2), round(float(xyz[2]), 2))

    def slice2d(self, k: int | None = None) -> np.ndarray:
        """A 2D view: the image itself, or slice ``k`` (default: the middle one) of a volume."""
        if self.pixels.ndim == 2:
            return self.pixels
        return self.pixels[self.pixels.shape[0] // 2 if k is None else k]

    @classmethod
    def from_array(cls, pixels: np.ndarray, *, modality: str = "OT", spacing=None, name: str = "array",
                   **kw: Any) -> "Image":
        """An in-memory image, for tests and for callers that already hold pixels."""
        pixels = np.asarray(pixels, dtype=np.float32)
        if spacing is None:
            spacing = (None,) * pixels.ndim
        return cls(pixels=pixels, spacing=tuple(spacing), modality=modality, format=kw.pop("format", "array"),
                   sources=[Path(name)], uid=kw.pop("uid", name), **kw)


@dataclass
class Region:
    """Where evidence points: centre and box in voxel indices, centre in patient mm when known."""

    center_voxel: tuple[int, ...]
    bbox_voxel: tuple[int, ...]
    score: float = 1.0
    center_mm: tuple[float, float, float] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "center_voxel": [int(v) for v in self.center_voxel],
            "bbox_voxel": [int(v) for v in self.bbox_voxel],
            "score": round(float(self.score), 4),
        }
        if self.center_mm is not None:
            d["center_mm"] = [round(float(v), 2) for v in self.center_mm]
        if self.note:
            d["note"] = self.note
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Region":
        """The region of a JSON record (inverse of :meth:`to_dict`)."""
        mm = d.get("center_mm")
        return cls(tuple(d["center_voxel"]), tuple(d["bbox_voxel"]), float(d.get("score", 1.0)),
                   None if mm is None else tuple(mm), d.get("note", ""))


@dataclass
class Evidence:
    """What one detector found about one image.

    ``score`` is the calibrated probability (in [0, 1]) that the image was manipulated or
    synthesised, as far as this detector can tell. ``indicates`` says which of the two the
    evidence points to, or ``processing`` for a trace that ordinary handling also leaves (a JPEG
    saved twice, a resize): reported, never counted as manipulation by fusion. ``confidence`` is
    ``low`` for evidence that alone must not make an image ``manipulated`` or ``synthetic`` (a
    rule whose false-alarm rate outside its fitted sources is not low enough; see
    :mod:`medforensics.fusion`). ``heatmap``, when present, holds values in [0, 1] (1 = most
    suspicious) on a grid that may be coarser than ``Image.pixels``: ``heatmap_scale`` says, per
    axis of ``pixels``, how many pixels one heatmap cell covers (``None``: 1 on every axis, the
    heatmap has the shape of ``pixels``). Cell ``c`` covers pixels ``c * f`` to ``(c + 1) * f - 1``
    along an axis of factor ``f``; the last cell may reach past the image (``ceil(n / f)`` cells).
    Block-level detectors store their block grid this way instead of a full-size float32 volume
    (a 133-slice 512x512 series: 140 MB per detector); :meth:`full_heatmap` gives the pixel-sized
    map. ``regions`` are always in full-resolution voxel indices. ``provenance`` is set by detectors that check proofs
    of origin: one word per proof, e.g. ``signature:valid watermark:tampered`` or ``c2pa-valid``
    (it becomes :attr:`Verdict.provenance`; in JSON it is written under ``details``, as
    since schema 1.1).

    >>> e = Evidence("copy_move", 0.93, "two regions match", indicates="manipulation")
    >>> e.indicates is Indicates.MANIPULATION, e.counts
    (True, True)
    >>> coarse = Evidence("noise_residual", 0.7, "", heatmap=np.ones((2, 3), np.float32), heatmap_scale=(4, 4))
    >>> coarse.full_heatmap((7, 10)).shape
    (7, 10)
    >>> Evidence("x", 0.5, "", indicates="forgery")
    Traceback (most recent call last):
    ...
    ValueError: x: indicates must be one of manipulation, synthesis, processing, got 'forgery'
    """

    detector: str
    score: float
    explanation: str
    heatmap: np.ndarray | None = None
    regions: list[Region] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    indicates: Indicates = Indicates.MANIPULATION
    confidence: Confidence = Confidence.NORMAL
    provenance: str | None = None
    #: Pixels per heatmap cell along each axis of ``Image.pixels`` (``None``: the heatmap is full size).
    heatmap_scale: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.score):
            raise ValueError(f"{self.detector}: score is not finite")
        if self.heatmap_scale is not None:
            self.heatmap_scale = tuple(int(f) for f in self.heatmap_scale)
            if any(f < 1 for f in self.heatmap_scale) or (
                    self.heatmap is not None and len(self.heatmap_scale) != self.heatmap.ndim):
                raise ValueError(f"{self.detector}: heatmap_scale {self.heatmap_scale} must hold one factor >= 1 "
                                 "per heatmap axis")
        if self.indicates not in INDICATES:
            raise ValueError(f"{self.detector}: indicates must be one of {', '.join(INDICATES)}, got {self.indicates!r}")
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"{self.detector}: confidence must be one of {', '.join(CONFIDENCES)}, got {self.confidence!r}")
        self.indicates, self.confidence = Indicates(self.indicates), Confidence(self.confidence)
        self.score = float(min(1.0, max(0.0, self.score)))

    def full_heatmap(self, shape: Sequence[int]) -> np.ndarray | None:
        """The heatmap at full resolution, ``shape`` being that of ``Image.pixels``: each cell
        repeated over the pixels it covers (``heatmap_scale``), cut to ``shape``; the heatmap itself
        when it is already full size; ``None`` when there is none."""
        if self.heatmap is None:
            return None
        shape = tuple(int(n) for n in shape)
        scale = self.heatmap_scale or (1,) * self.heatmap.ndim
        if len(shape) != self.heatmap.ndim:
            raise ValueError(f"{self.detector}: a heatmap of {self.heatmap.ndim} axes for an image of shape {shape}")
        if all(f == 1 for f in scale) and self.heatmap.shape == shape:
            return self.heatmap
        out = self.heatmap
        for axis, f in enumerate(scale):
            if f > 1:
                out = np.repeat(out, f, axis=axis)
        out = out[tuple(slice(0, n) for n in shape)]
        if out.shape != shape:
            raise ValueError(f"{self.detector}: a heatmap of shape {self.heatmap.shape} at scale {scale} does not "
                             f"cover an image of shape {shape}")
        return out

    def heatmap_plane(self, k: int) -> np.ndarray | None:
        """The heatmap cells of slice ``k`` (full-resolution slice index) of a volume's heatmap, or
        the 2D heatmap itself; still at the heatmap's in-plane scale."""
        if self.heatmap is None or self.heatmap.ndim == 2:
            return self.heatmap
        f = (self.heatmap_scale or (1,))[0]
        return self.heatmap[min(int(k) // f, self.heatmap.shape[0] - 1)]

    @property
    def counts(self) -> bool:
        """Whether fusion counts this evidence (``processing`` traces are reported only)."""
        return self.indicates != Indicates.PROCESSING

    def to_dict(self) -> dict[str, Any]:
        details = dict(self.details)
        if self.provenance is not None:
            details["provenance"] = self.provenance
        return {
            "detector": self.detector,
            "score": round(self.score, 4),
            "indicates": self.indicates.value,
            "confidence": self.confidence.value,
            "explanation": self.explanation,
            "regions": [r.to_dict() for r in self.regions],
            "details": _jsonable(details),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Evidence":
        """The evidence of a JSON record (inverse of :meth:`to_dict`, without the heatmap)."""
        details = dict(d.get("details") or {})
        provenance = details.pop("provenance", None)
        return cls(d["detector"], float(d["score"]), d.get("explanation", ""),
                   regions=[Region.from_dict(r) for r in d.get("regions", [])], details=details,
                   indicates=d.get("indicates", "manipulation"), confidence=d.get("confidence", "normal"),
                   provenance=provenance)


@dataclass
class Verdict:
    """The fused answer for one image or series, plus everything needed to explain it."""

    path: str
    kind: Kind
    uid: str | None
    n_instances: int
    score: float | None
    label: Label | None
    evidence: list[Evidence] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: One word per proof of origin found (see :attr:`Evidence.provenance`), ``none`` when none.
    provenance: str = "unknown"
    timings: dict[str, float] = field(default_factory=dict)
    modality: str | None = None
    #: Detectors that assessed the image (their evidence is in ``evidence``), in run order.
    assessed: list[str] = field(default_factory=list)
    #: Detectors that apply to this kind of image but did not assess it, each with its reason (the
    #: image lies outside the domain it was validated on, or is too small, ...).
    not_assessed: dict[str, str] = field(default_factory=dict)
    #: Content fingerprint of the source's files (``sha256:`` + hex), which ``scan --resume``
    #: compares to decide whether a result still holds.
    fingerprint: str | None = None
    #: Warnings raised while the item was read and analysed (one line each), kept with the item
    #: instead of printed.
    warnings: list[str] = field(default_factory=list)
    #: PNG figures for reports (name -> base64 PNG), made next to the detectors; not in JSON.
    figures: dict[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.kind = Kind(self.kind)
        if self.label is not None:
            self.label = Label(self.label)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-lines record of docs/design.md (schema version :data:`SCHEMA_VERSION`)."""
        d: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "path": self.path,
            "kind": str(self.kind),
            "uid": self.uid,
            "n_instances": self.n_instances,
            "modality": self.modality,
        }
        if self.score is not None:
            d["score"] = round(self.score, 4)
            d["label"] = None if self.label is None else str(self.label)
        d["provenance"] = self.provenance
        d["evidence"] = [e.to_dict() for e in self.evidence]
        d["assessed_by"] = list(self.assessed)
        d["not_assessed"] = dict(self.not_assessed)
        d["errors"] = list(self.errors)
        d["warnings"] = list(self.warnings)
        d["fingerprint"] = self.fingerprint
        d["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        """The verdict of a JSON-lines record (inverse of :meth:`to_dict`; heatmaps and figures
        are not in JSON). Records of schema 1.0 and 1.1 read as well.

        >>> v = Verdict("a.dcm", "image", "1.2.3", 1, 0.91, "manipulated",
        ...             [Evidence("copy_move", 0.91, "two regions match", regions=[Region((4, 5), (0, 0, 9, 9))])])
        >>> Verdict.from_dict(v.to_dict()) == v
        True
        """
        return cls(path=d["path"], kind=d["kind"], uid=d.get("uid"), n_instances=int(d.get("n_instances", 1)),
                   score=d.get("score"), label=d.get("label"),
                   evidence=[Evidence.from_dict(e) for e in d.get("evidence", [])],
                   errors=list(d.get("errors", [])), provenance=d.get("provenance", "unknown"),
                   timings=dict(d.get("timings", {})), modality=d.get("modality"),
                   assessed=list(d.get("assessed_by", [])), not_assessed=dict(d.get("not_assessed", {})),
                   fingerprint=d.get("fingerprint"), warnings=list(d.get("warnings", [])))


def _jsonable(obj: Any) -> Any:
    """Turn numpy scalars/arrays, paths and tuples into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist()) if obj.size <= 64 else f"<array {obj.shape}>"
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return round(v, 6) if np.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bytes):
        return obj.hex()[:64]
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)
