"""Detector interface, registry and the helpers every detector shares.

A detector is a class with a ``name``, a declaration of what it applies to, and a ``detect``
method that turns an :class:`~medforensics.core.Image` into :class:`~medforensics.core.Evidence`.
Detectors are discovered through the ``medforensics.detectors`` entry-point group, so a third
party adds one by declaring, in its own ``pyproject.toml``::

    [project.entry-points."medforensics.detectors"]
    my_detector = "my_package.module:MyDetector"
"""
from __future__ import annotations

import math
import warnings
from importlib.metadata import entry_points
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np
from scipy import ndimage

from ..core import Evidence, Image, Region

ENTRY_POINT_GROUP = "medforensics.detectors"


class Detector:
    """Base class. Subclasses set the class attributes and implement :meth:`detect`.

    Attributes
    ----------
    name : str
        Short identifier used on the command line and in JSON output.
    description : str
        One line saying what the detector looks for.
    modalities : frozenset of str or None
        DICOM modality codes it applies to (``None``: any). ``XR`` stands for a radiograph read
        from PNG/JPEG/TIFF; ``OT`` for an image of unknown modality.
    dims : frozenset of int
        2 for 2D images, 3 for volumes.
    formats : frozenset of str or None
        Containers it applies to (``dicom``, ``png``, ``jpeg``, ``tiff``, ``nifti``); ``None``: any.
    needs_physical_units : bool
        Whether it reads CT pixels as Hounsfield units. A CT image whose pixels are not
        (``Image.meta["not_physical_units"]`` gives the reason: a DICOM rescale that could not be
        used, or a PNG that a C2PA manifest declares to be a rendered CT image) is not assessed
        by such detectors: ``scan`` lists them under ``not_assessed`` with that reason.
    default : bool
        Whether ``scan`` runs it when no detectors are named. A detector whose false-alarm rate on
        authentic data (``benchmarks/authentic_rate.py``) is not yet acceptable sets ``False``: it
        runs only when named (``scan --detectors ...``) and says so in ``medforensics detectors``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    modalities: ClassVar[frozenset[str] | None] = None
    dims: ClassVar[frozenset[int]] = frozenset({2, 3})
    formats: ClassVar[frozenset[str] | None] = None
    needs_physical_units: ClassVar[bool] = False
    default: ClassVar[bool] = True

    def applies(self, image: Image) -> bool:
        """True if this detector has something to say about ``image`` (its modality, dimension and
        format are the kind it reads). Whether the image also lies inside the domain the detector
        was *validated* on is :meth:`out_of_domain`."""
        if self.modalities is not None and image.modality not in self.modalities:
            return False
        if image.pixels.ndim not in self.dims:
            return False
        if self.formats is not None and image.format not in self.formats:
            return False
        return True

    def out_of_domain(self, image: Image) -> str | None:
        """Why ``image`` lies outside the domain this detector was validated on, in a few words
        (``None``: inside it). ``scan`` then does not run the detector and records that it did not
        assess the image, with this reason, so that "nothing looked" is never read as "authentic".
        Subclasses declare their domain here (modality, anatomy, size, bit depth, colour, ...)."""
        return None

    def prepare(self, image: Image) -> None:
        """Set-up for ``image`` that must not run beside other detectors: :func:`~medforensics.scan.analyze`
        calls it for each applicable detector, one after another, before their :meth:`detect`
        run side by side in threads. Tracing a network belongs here (``torch.fx`` patches
        ``torch.nn.Module`` for the whole process while it traces, so another detector's network
        called meanwhile fails). Default: nothing."""

    def detect(self, image: Image) -> Evidence | None:  # pragma: no cover - interface
        """What the detector finds in ``image``: :class:`~medforensics.core.Evidence` (a score in
        [0, 1], an explanation, optionally a heatmap and regions), or ``None`` when it has nothing
        to report either way (e.g. no signature to check: absence of proof is not evidence). To
        say it looked and cannot judge this image, return evidence with ``details["abstained"]``
        and a ``reason``; ``scan`` lists it under ``not_assessed``."""
        raise NotImplementedError

    @classmethod
    def applies_to(cls) -> str:
        """Human-readable summary of what the detector applies to."""
        mods = "any modality" if cls.modalities is None else ", ".join(sorted(cls.modalities))
        dims = "/".join(f"{d}D" for d in sorted(cls.dims))
        fmts = "any format" if cls.formats is None else ", ".join(sorted(cls.formats))
        return f"{mods}; {dims}; {fmts}"


#: Modalities the pixel detectors were validated on: radiographs (CR, DX, and raster exports, which
#: the loader calls XR) and CT.
RADIOGRAPHS_AND_CT = frozenset({"CR", "DX", "XR", "CT"})


def unvalidated_modality(name: str, image: Image, validated: frozenset[str] = RADIOGRAPHS_AND_CT) -> str | None:
    """The ``out_of_domain`` reason of detector ``name`` for an image whose modality it was not
    validated on (``None`` when it was)."""
    if image.modality in validated:
        return None
    return f"modality {image.modality}: {name} was validated on {', '.join(sorted(validated))} only"


def available_detectors() -> dict[str, type[Detector]]:
    """All detector classes registered under the entry-point group, by name.

    A registered detector that cannot be imported is left out with a warning, so one broken
    plug-in does not stop the others.
    """
    found: dict[str, type[Detector]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # noqa: BLE001 - third-party plug-ins may fail in any way
            warnings.warn(f"detector {ep.name!r} ({ep.value}) could not be loaded: {e}", stacklevel=2)
            continue
        found[getattr(cls, "name", "") or ep.name] = cls
    return dict(sorted(found.items()))


#: Constructor arguments of detectors by detector name, e.g.
#: ``{"provenance": {"trust": ["ca.pem"], "ledger": "log.db"}}``.
DetectorOptions = Mapping[str, Mapping[str, Any]]


def load_detectors(names: Iterable[str] | None = None, options: DetectorOptions | None = None) -> list[Detector]:
    """Instantiate the named detectors (when ``names`` is None: every registered one whose
    ``default`` is true), each with its keyword arguments from ``options`` (by detector name).
    Settings not given here come from :mod:`medforensics.config` inside each detector.

    >>> [d.name for d in load_detectors(["copy_move", "provenance"], {"provenance": {"ledger": "log.db"}})]
    ['copy_move', 'provenance']
    >>> load_detectors(["provenance"], {"provenance": {"ledger": "log.db"}})[0].ledger_location
    'log.db'
    """
    registry = available_detectors()
    options = dict(options or {})
    unknown = [n for n in options if n not in registry]
    if unknown:
        raise KeyError(f"options for unknown detector(s) {', '.join(map(repr, unknown))}; known: {', '.join(registry)}")
    if names is None:
        names = [name for name, cls in registry.items() if getattr(cls, "default", True)]
    chosen = []
    for n in names:
        if n not in registry:
            raise KeyError(f"unknown detector {n!r}; known: {', '.join(registry)}")
        chosen.append(registry[n](**dict(options.get(n, {}))))
    return chosen


# --------------------------------------------------------------------------- shared helpers

def logistic(x: float, midpoint: float, scale: float) -> float:
    """Calibration curve: maps a raw statistic to a probability, 0.5 at ``midpoint``.

    Each detector documents how its ``midpoint`` and ``scale`` were set (on authentic data in
    ../shared/data and on manipulated copies; see ``benchmarks/authentic_rate.py``).
    """
    z = (x - midpoint) / scale
    if z > 40:
        return 1.0
    if z < -40:
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


def logistic_array(x: np.ndarray, midpoint: float, scale: float) -> np.ndarray:
    """:func:`logistic` of every element of ``x`` (float32), for heatmaps and tile scores."""
    z = np.clip((np.asarray(x, dtype=np.float64) - midpoint) / scale, -40, 40)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def regions_from_heatmap(image: Image, heatmap: np.ndarray, threshold: float = 0.5,
                         max_regions: int = 5, min_size: int = 4, note: str = "",
                         scale: tuple[int, ...] | None = None) -> list[Region]:
    """Connected components of ``heatmap >= threshold`` as regions, strongest first.

    The score of a region is the maximum of the heatmap inside it; centres are the
    heatmap-weighted centroid, rounded to voxel indices; ``center_mm`` is filled where the image
    has geometry. ``scale`` gives, per axis, how many pixels one heatmap cell covers when the
    heatmap is a coarser grid (e.g. one value per 16x16 block); boxes and centres are then
    returned in pixel indices, clipped to the image.
    """
    scale = tuple(scale) if scale is not None else (1,) * heatmap.ndim
    shape = image.pixels.shape
    mask = heatmap >= threshold
    if not mask.any():
        return []
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(heatmap, dtype=np.float32), labels, idx)
    peaks = ndimage.maximum(heatmap, labels, idx)
    objects = ndimage.find_objects(labels)
    order = np.argsort(-(np.asarray(peaks) * 1e6 + np.asarray(sizes)))
    regions: list[Region] = []
    for o in order:
        if sizes[o] < min_size:
            continue
        sl = objects[o]
        sub = np.where(labels[sl] == o + 1, heatmap[sl], 0.0)
        com = ndimage.center_of_mass(sub)
        center = tuple(min(int(round((c + s.start) * f + (f - 1) / 2)), n - 1) for c, s, f, n in zip(com, sl, scale, shape))
        bbox = tuple(s.start * f for s, f in zip(sl, scale)) + tuple(min(s.stop * f, n) for s, f, n in zip(sl, scale, shape))
        regions.append(Region(center_voxel=center, bbox_voxel=bbox, score=float(peaks[o]),
                              center_mm=image.voxel_to_mm(center), note=note))
        if len(regions) >= max_regions:
            break
    return regions


def coarse_cover(grid: np.ndarray, scale: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A block grid (one value per ``scale`` pixels, blocks from the image's start) padded with
    zero cells so that it covers an image of ``shape``: ``ceil(n / f)`` cells per axis, as
    ``Evidence.heatmap_scale`` expects (a detector that leaves the last partial block unmeasured
    has one cell fewer there). A grid already that size is returned as it is (float32).

    >>> coarse_cover(np.ones((2, 3), np.float32), (16, 16), (40, 48)).shape
    (3, 3)
    """
    grid = np.asarray(grid, dtype=np.float32)
    need = tuple(-(-int(n) // int(f)) for n, f in zip(shape, scale))
    if grid.shape == need:
        return grid
    out = np.zeros(need, np.float32)
    out[tuple(slice(0, min(g, n)) for g, n in zip(grid.shape, need))] = \
        grid[tuple(slice(0, min(g, n)) for g, n in zip(grid.shape, need))]
    return out


def block_heatmap(grid: np.ndarray, block: int, shape: tuple[int, int], offset: tuple[int, int] = (0, 0)
                  ) -> tuple[np.ndarray, tuple[int, int]]:
    """A 2D grid of one value per ``block`` px square, its first block at pixel ``offset``, as a
    coarse heatmap of an image of ``shape`` with its ``Evidence.heatmap_scale``: cells of
    ``gcd(block, *offset)`` px, zero where the grid does not reach (instead of a full-size
    float32 map: 16 MB for a 2,000 px radiograph).

    >>> heat, scale = block_heatmap(np.ones((2, 2), np.float32), 32, (100, 100), offset=(8, 16))
    >>> heat.shape, scale, int(heat.sum()) * scale[0] ** 2 == 4 * 32 * 32
    ((13, 13), (8, 8), True)
    """
    g = math.gcd(int(block), *(int(o) for o in offset))
    k = int(block) // g
    heat = np.zeros(tuple(-(-int(n) // g) for n in shape), np.float32)
    up = np.repeat(np.repeat(np.asarray(grid, np.float32), k, 0), k, 1)
    oy, ox = offset[0] // g, offset[1] // g
    h, w = max(0, min(up.shape[0], heat.shape[0] - oy)), max(0, min(up.shape[1], heat.shape[1] - ox))
    heat[oy:oy + h, ox:ox + w] = up[:h, :w]
    return heat, (g, g)


def region_from_box(image: Image, bbox: tuple[int, ...], score: float = 1.0, note: str = "") -> Region:
    """A region for a known box (``[starts..., stops...]``), centred in the box."""
    n = len(bbox) // 2
    center = tuple(int((bbox[i] + bbox[i + n] - 1) // 2) for i in range(n))
    return Region(center_voxel=center, bbox_voxel=tuple(int(b) for b in bbox), score=score,
                  center_mm=image.voxel_to_mm(center), note=note)


def print_raw_values(detector: Detector, paths: list[str]) -> None:
    """Calibration helper: print each applicable image's raw statistic and score.

    Detectors call it from ``python -m medforensics.detectors.<name> DATA...`` to show the
    distribution their calibration constants were set on.
    """
    from ..core import MedForensicsError
    from ..io import discover, load_source

    sources, _ = discover(paths)
    for src in sources:
        try:
            image = load_source(src)
        except MedForensicsError:
            continue
        if detector.applies(image):
            ev = detector.detect(image)
            print(f"{ev.details.get('raw', 0):8.2f} {ev.score:.3f} {image.pixels.shape} {src.path}")
