"""Pixels for the review pages: windowed slices and heatmap overlays as PNG, a cache of loaded images.

* :func:`render_slice` -- one plane of physical-unit pixels through a window (center, width) to an
  8-bit grey PNG at full resolution; :func:`default_window` picks the window an image opens with.
* :func:`render_overlay` -- one (coarse) heatmap plane, each cell repeated over the pixels it covers
  (``Evidence.heatmap_scale``), coloured through the *inferno* colour map into an RGBA PNG whose
  alpha grows with the value and is 0 at or below a threshold; the browser lays it over the slice.
* :func:`save_heatmaps` / :func:`load_heatmaps` -- a scan's heatmaps kept next to its record (one
  compressed ``.npz`` per item, float16 cells and their integer scale), since heatmaps are not in JSON.
* :class:`PixelCache` -- an LRU of loaded images, so that scrolling a series does not reload it.
* :func:`header_rows` -- the DICOM header (or a PNG/JPEG's container metadata) as table rows.

A 2D image, its window and its slice as PNG:

>>> import cv2, numpy as np
>>> from medforensics.core import Image
>>> image = Image.from_array(np.linspace(-1000, 1000, 64 * 48).reshape(64, 48), modality="CT")
>>> default_window(image)
(40.0, 400.0)
>>> png = slice_png(image, 0)
>>> cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).shape
(64, 48)

A heatmap of 4x4-pixel cells laid over it (RGBA, transparent where the heat is 0):

>>> heat = np.zeros((16, 12), np.float32); heat[2, 3] = 0.9
>>> rgba = cv2.imdecode(np.frombuffer(render_overlay(heat, (64, 48), scale=(4, 4)), np.uint8), cv2.IMREAD_UNCHANGED)
>>> rgba.shape, int(rgba[9, 13, 3]) > 0, int(rgba[0, 0, 3])
((64, 48, 4), True, 0)
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

import cv2
import numpy as np

from ..core import Evidence, Image, MedForensicsError, Verdict, ignoring_warnings

#: Fast PNG compression: level 1 (about 3x quicker than the default for large slices).
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]
#: Heat at which an overlay's alpha reaches 255 (the browser's opacity control scales it further).
HEAT_FULL = 0.5
#: The colour table of overlays: 256 entries, BGRA (OpenCV order), the *inferno* map with an
#: alpha that ramps from 1 to 255 between heat 0 and :data:`HEAT_FULL`.
LUT = np.empty((256, 4), np.uint8)
LUT[:, :3] = cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), cv2.COLORMAP_INFERNO)[:, 0, :]
LUT[:, 3] = np.clip(np.round(np.arange(256) / 255.0 / HEAT_FULL * 255.0), 1, 255).astype(np.uint8)
#: CT's soft-tissue window (center, width) in HU, for CT without a window in its header.
CT_WINDOW = (40.0, 400.0)
#: A saved heatmap of more cells than this is max-pooled in-plane until it fits (8 MB as float16).
MAX_CELLS = 1 << 22
#: Header values are cut to this many characters.
VALUE_CHARS = 200
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}   # Pixel Data, Float and Double Float Pixel Data


# ------------------------------------------------------------------------------------ windows

def default_window(image: Image) -> tuple[float, float]:
    """The ``(center, width)`` an image opens with: the WindowCenter/WindowWidth of its first DICOM
    dataset (the first value where several are given; mapped onto the inverted scale of a
    MONOCHROME1 image), else the CT soft-tissue window ``(40, 400)`` for CT, else the 1st to 99th
    percentile of a subsample of the pixels."""
    if image.datasets:
        w = _dicom_window(image.datasets[0])
        if w is not None:
            return w
    if str(image.modality).upper() == "CT":
        return CT_WINDOW
    a = image.pixels
    if a.ndim == 3:
        a = a[np.linspace(0, a.shape[0] - 1, min(a.shape[0], 8)).round().astype(int)]
    step = max(1, max(a.shape[-2:]) // 256)
    sample = np.asarray(a[..., ::step, ::step], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.5, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, [1, 99]))
    return (lo + hi) / 2.0, max(hi - lo, 1.0)


def _first_number(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes)) and isinstance(value, Sequence):
        value = value[0] if len(value) else None
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _dicom_window(ds: Any) -> tuple[float, float] | None:
    """The header's window in the units of ``Image.pixels``, or None when absent or unusable."""
    try:
        with ignoring_warnings():
            center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
            if center is None or width is None or width <= 0:
                return None
            if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
                # the loader inverts the stored values before the rescale: v' = slope*M + 2*b - v
                slope = _first_number(ds.get("RescaleSlope"))
                inter = _first_number(ds.get("RescaleIntercept"))
                slope, inter = (1.0 if slope is None else slope), (0.0 if inter is None else inter)
                top = 0.0 if int(ds.get("PixelRepresentation", 0) or 0) == 1 else \
                    float((1 << int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)) - 1)
                center = slope * top + 2.0 * inter - center
    except (AttributeError, TypeError, ValueError, KeyError):
        return None
    return float(center), float(width)


def window8(pixels2d: np.ndarray, center: float, width: float) -> np.ndarray:
    """``pixels2d`` through the window as uint8: ``center - width/2`` and below is 0,
    ``center + width/2`` and above is 255, linear (rounded) between; NaN is 0.

    >>> window8(np.array([[-160.0, 40.0, 240.0]]), 40, 400).tolist()
    [[0, 128, 255]]
    """
    center, width = float(center), float(width)
    if not (math.isfinite(center) and math.isfinite(width)) or width <= 0:
        raise MedForensicsError("window", f"center {center:g} and width {width:g}: the width must be a positive "
                                "number and both finite")
    a = np.asarray(pixels2d, dtype=np.float32)
    out = np.subtract(a, np.float32(center - width / 2.0), dtype=np.float32)
    np.multiply(out, np.float32(255.0 / width), out=out)
    np.add(out, np.float32(0.5), out=out)
    np.fmax(out, 0.0, out=out)     # fmax/fmin: NaN becomes 0
    np.fmin(out, 255.0, out=out)
    return out.astype(np.uint8)


def _encode(a: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a), _PNG)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array of 1, 3 or 4 channels
        raise MedForensicsError("png", f"could not encode an array of shape {a.shape}")
    return buf.tobytes()


def render_slice(pixels2d: np.ndarray, center: float, width: float) -> bytes:
    """One plane of physical-unit pixels as an 8-bit PNG at full resolution, through the window
    ``(center, width)`` (:func:`window8`): grey for a 2D array, RGB for ``(rows, cols, 3)``."""
    a = np.asarray(pixels2d)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return _encode(cv2.cvtColor(window8(a[..., :3], center, width), cv2.COLOR_RGB2BGR))
    if a.ndim != 2:
        raise MedForensicsError("slice", f"a slice must be a 2D array, got shape {a.shape}")
    return _encode(window8(a, center, width))


# ------------------------------------------------------------------------------------ overlays

def _plane_scale(heat_shape: tuple[int, int], shape: tuple[int, int],
                 scale: Sequence[int] | None) -> tuple[int, int]:
    """Pixels per cell along rows and columns: the given scale's last two factors, else 1 where the
    heatmap has the plane's size, else the smallest factor that covers the plane."""
    if scale is not None:
        fy, fx = (int(f) for f in tuple(scale)[-2:])
    else:
        fy, fx = (1 if m == n else -(-n // max(m, 1)) for m, n in zip(heat_shape, shape))
    if fy < 1 or fx < 1:
        raise MedForensicsError("heatmap", f"scale ({fy}, {fx}) must hold factors >= 1")
    if heat_shape[0] * fy < shape[0] or heat_shape[1] * fx < shape[1]:
        raise MedForensicsError("heatmap", f"a heatmap plane of shape {heat_shape} at scale ({fy}, {fx}) does not "
                                f"cover a slice of shape {shape}")
    return fy, fx


def overlay_rgba(heat2d: np.ndarray, shape: tuple[int, int], *, threshold: float = 0.0,
                 scale: Sequence[int] | None = None) -> np.ndarray:
    """The BGRA array of :func:`render_overlay` (``shape + (4,)``, uint8)."""
    heat = np.asarray(heat2d)
    if heat.ndim != 2:
        raise MedForensicsError("heatmap", f"an overlay needs a 2D heatmap plane, got shape {heat.shape}")
    rows, cols = (int(n) for n in shape)
    fy, fx = _plane_scale(heat.shape, (rows, cols), scale)
    heat = np.nan_to_num(heat[:-(-rows // fy), :-(-cols // fx)].astype(np.float32))  # only the cells in view
    idx = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    cells = LUT[idx]
    cells[..., 3][heat <= threshold] = 0
    if fy > 1:
        cells = np.repeat(cells, fy, axis=0)
    if fx > 1:
        cells = np.repeat(cells, fx, axis=1)
    return cells[:rows, :cols]


def render_overlay(heat2d: np.ndarray, shape: tuple[int, int], *, threshold: float = 0.0,
                   scale: Sequence[int] | None = None) -> bytes:
    """A heatmap plane as an RGBA PNG of ``shape`` (rows, cols): each cell repeated over the pixels
    it covers -- ``scale`` (pixels per cell; its last two factors, as ``Evidence.heatmap_scale``),
    by default 1 where the plane has the slice's size, else the smallest factor that covers it --,
    coloured by the *inferno* map (:data:`LUT`); alpha grows with the value up to
    :data:`HEAT_FULL` and is 0 where the value is ``<= threshold`` (and NaN counts as 0)."""
    return _encode(overlay_rgba(heat2d, shape, threshold=threshold, scale=scale))


def _check_k(shape: Sequence[int], k: int) -> int:
    n = int(shape[0]) if len(shape) == 3 else 1
    try:
        whole = not isinstance(k, bool) and int(k) == k
    except (TypeError, ValueError):
        whole = False
    if not whole or not 0 <= int(k) < n:
        raise MedForensicsError(f"slice {k}", f"out of range: the image has {n} slice{'s' if n != 1 else ''} "
                                f"(0 to {n - 1})")
    return int(k)


def slice_png(image: Image, k: int, center: float | None = None, width: float | None = None) -> bytes:
    """Slice ``k`` of ``image`` (0 for a 2D image) as a PNG (:func:`render_slice`); the window's
    center and width default to :func:`default_window`'s. An out-of-range ``k`` is an error."""
    k = _check_k(image.pixels.shape, k)
    if center is None or width is None:
        dc, dw = default_window(image)
        center, width = (dc if center is None else center), (dw if width is None else width)
    return render_slice(image.pixels[k] if image.pixels.ndim == 3 else image.pixels, center, width)


def overlay_png(heatmaps: Mapping[str, tuple[np.ndarray, tuple[int, ...]]], detector: str,
                shape3d_or_2d: Sequence[int], k: int, *, threshold: float = 0.0) -> bytes:
    """The overlay of ``detector``'s heatmap (``heatmaps`` as :func:`load_heatmaps` returns) on
    slice ``k`` of an image of shape ``shape3d_or_2d`` (:func:`render_overlay`). The plane is
    chosen as ``Evidence.heatmap_plane`` does. An unknown detector or an out-of-range ``k`` is an error."""
    if detector not in heatmaps:
        raise MedForensicsError(detector, "no heatmap for this detector")
    heat, scale = heatmaps[detector]
    shape = tuple(int(n) for n in shape3d_or_2d)
    if len(shape) not in (2, 3):
        raise MedForensicsError(detector, f"an image shape has 2 or 3 axes, got {shape}")
    k = _check_k(shape, k)
    if heat.ndim == 3 and len(shape) == 2:
        raise MedForensicsError(detector, f"a 3D heatmap for a 2D image of shape {shape}")
    plane = Evidence(detector, 0.0, "", heatmap=heat, heatmap_scale=scale).heatmap_plane(k)
    return render_overlay(plane, shape[-2:], threshold=threshold, scale=tuple(scale)[-2:])


# ------------------------------------------------------------------------------------ saved heatmaps

def _blocks_of_two(a: np.ndarray) -> bool:
    """Whether every pair of cells ``(2i, 2i+1)`` along axis 0 holds equal values."""
    m = a.shape[0] // 2
    if m == 0:
        return False
    pairs = a[:2 * m].reshape(m, 2, *a.shape[1:])
    return bool(np.array_equal(pairs[:, 0], pairs[:, 1]))


def compact(heat: np.ndarray, scale: Sequence[int] | None) -> tuple[np.ndarray, tuple[int, ...]]:
    """A heatmap as few cells as it takes: runs of equal cells (power-of-two blocks along each axis,
    as a block detector leaves in a full-size map) become one cell with a larger scale, without any
    change to :meth:`Evidence.full_heatmap`; then, only while more than :data:`MAX_CELLS` remain,
    in-plane 2x2 blocks become their maximum (hot spots are kept, their edges coarsen).

    >>> heat = np.kron(np.eye(3, dtype=np.float32), np.ones((4, 8), np.float32))
    >>> small, scale = compact(heat, None)
    >>> small.shape, scale
    ((3, 3), (4, 8))
    """
    heat = np.nan_to_num(np.asarray(heat, dtype=np.float32))
    scale = tuple(int(f) for f in scale) if scale else (1,) * heat.ndim
    for axis in range(heat.ndim):
        a = np.moveaxis(heat, axis, 0)
        f = 1
        while _blocks_of_two(a):
            a, f = a[::2], f * 2
        if f > 1:
            heat = np.ascontiguousarray(np.moveaxis(a, 0, axis))
            scale = scale[:axis] + (scale[axis] * f,) + scale[axis + 1:]
    while heat.size > MAX_CELLS and min(heat.shape[-2:]) > 1:
        r, c = heat.shape[-2:]
        padded = np.zeros(heat.shape[:-2] + (r + r % 2, c + c % 2), np.float32)
        padded[..., :r, :c] = heat
        heat = padded.reshape(*heat.shape[:-2], (r + 1) // 2, 2, (c + 1) // 2, 2).max(axis=(-3, -1))
        scale = scale[:-2] + (scale[-2] * 2, scale[-1] * 2)
    return heat, scale


def save_heatmaps(verdict: Verdict, path: str | Path) -> Path:
    """Write the heatmaps of ``verdict``'s evidence to a new ``.npz`` file (compressed): for each
    evidence that has one, its cells as float16 in [0, 1] and its scale as integers (:func:`compact`
    first). A detector named twice is saved as ``name#2``, ``name#3``, ... (as report figures are).
    The file is written under a temporary name in the same folder and then linked to ``path``,
    so a reader never sees half a file; an existing ``path`` is never replaced (an error)."""
    path = Path(path)
    if path.exists():
        raise MedForensicsError(path, "already exists; saved heatmaps are never overwritten")
    arrays: dict[str, np.ndarray] = {}
    names: list[str] = []
    for ev in verdict.evidence:
        if ev.heatmap is None:
            continue
        name, i = ev.detector, 2
        while name in names:
            name, i = f"{ev.detector}#{i}", i + 1
        heat, scale = compact(ev.heatmap, ev.heatmap_scale)
        n = len(names)
        names.append(name)
        arrays[f"heat_{n}"] = np.clip(heat, 0.0, 1.0).astype(np.float16)
        arrays[f"scale_{n}"] = np.asarray(scale, dtype=np.int64)
    arrays["detectors"] = np.asarray(names, dtype=np.str_) if names else np.zeros(0, dtype="<U1")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise MedForensicsError(path, "already exists; saved heatmaps are never overwritten") from None
        except OSError:  # a file system without hard links: copy into a file that must be new
            try:
                with open(tmp, "rb") as src, open(path, "xb") as dst:
                    shutil.copyfileobj(src, dst)
            except FileExistsError:
                raise MedForensicsError(path, "already exists; saved heatmaps are never overwritten") from None
    finally:
        os.unlink(tmp)
    return path


def load_heatmaps(path: str | Path) -> dict[str, tuple[np.ndarray, tuple[int, ...]]]:
    """The heatmaps :func:`save_heatmaps` wrote: ``{detector: (float16 cells, scale)}``."""
    path = Path(path)
    out: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for i, name in enumerate(z["detectors"].tolist()):
                heat, scale = z[f"heat_{i}"], tuple(int(f) for f in z[f"scale_{i}"])
                if heat.ndim not in (2, 3) or len(scale) != heat.ndim or min(scale) < 1:
                    raise ValueError(f"{name}: heatmap of shape {heat.shape} with scale {scale}")
                out[str(name)] = (heat, scale)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise MedForensicsError.wrap(path, e, "not a readable heatmap file") from None
    return out


# ------------------------------------------------------------------------------------ cache

class _Pending:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


def _nbytes(value: Any) -> int:
    """The bytes an image's pixels, or a dict of (array, scale) heatmaps, hold (0 for others)."""
    if isinstance(value, Image):
        return int(value.pixels.nbytes)
    if isinstance(value, dict):
        return sum(int(getattr(v[0] if isinstance(v, tuple) else v, "nbytes", 0)) for v in value.values())
    return int(getattr(value, "nbytes", 0))


class PixelCache:
    """The last ``max_items`` loaded images, least recently used dropped first; thread-safe.

    :meth:`get` calls ``loader()`` once per key even when several threads ask for it at once
    (the others wait for that load); a load that fails is not cached (all waiting callers get
    its error; the next call tries again).

    >>> cache = PixelCache(max_items=2)
    >>> cache.get(1, lambda: "one"), cache.get(1, lambda: "again"), len(cache)
    ('one', 'one', 1)
    """

    def __init__(self, max_items: int = 4, *, max_bytes: int | None = None,
                 sizeof: Callable[[Any], int] | None = None):
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self.max_items = int(max_items)
        # with max_bytes: also drop the oldest while the values' sizes (sizeof) add up to more,
        # keeping the newest whatever its size
        self.max_bytes, self._sizeof = max_bytes, sizeof or _nbytes
        self._bytes = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._pending: dict[Hashable, _Pending] = {}
        self._lock = threading.Lock()

    def get(self, item_id: Hashable, loader: Callable[[], Any]) -> Image:
        with self._lock:
            if item_id in self._items:
                self._items.move_to_end(item_id)
                return self._items[item_id][0]
            pending = self._pending.get(item_id)
            owner = pending is None
            if owner:
                pending = self._pending[item_id] = _Pending()
        assert pending is not None
        if not owner:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error
            return pending.value
        try:
            value = loader()
        except BaseException as e:
            pending.error = e
            with self._lock:
                del self._pending[item_id]
            pending.done.set()
            raise
        size = self._sizeof(value)
        with self._lock:
            self._items[item_id] = (value, size)
            self._bytes += size
            self._items.move_to_end(item_id)
            while len(self._items) > 1 and (len(self._items) > self.max_items or
                                            (self.max_bytes is not None and self._bytes > self.max_bytes)):
                self._bytes -= self._items.popitem(last=False)[1][1]
            del self._pending[item_id]
        pending.value = value
        pending.done.set()
        return value

    def discard(self, item_id: Hashable) -> None:
        """Forget one image (e.g. after its item changed)."""
        with self._lock:
            gone = self._items.pop(item_id, None)
            if gone is not None:
                self._bytes -= gone[1]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __contains__(self, item_id: Hashable) -> bool:
        with self._lock:
            return item_id in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# ------------------------------------------------------------------------------------ header

def _short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= VALUE_CHARS else text[:VALUE_CHARS - 1] + "…"


def _value_text(elem: Any) -> str:
    value = elem.value
    if elem.VR == "SQ":
        return f"({len(value)} items)"
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).rstrip(b"\x00 ")
        if text and all(32 <= b < 127 for b in text):
            return text.decode("ascii")
        return f"{bytes(value[:32]).hex()}{'…' if len(value) > 32 else ''} ({len(value)} bytes)"
    if value is None:
        return ""
    if not isinstance(value, str) and isinstance(value, Sequence):
        return "\\".join(str(v) for v in value)
    return str(value)


def _dicom_rows(ds: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    meta = getattr(ds, "file_meta", None)
    for part in ((meta,) if meta is not None else ()) + (ds,):
        for tag in list(part.keys()):
            if int(tag) in _PIXEL_TAGS:
                continue
            try:
                elem = part[tag]
                keyword, vr, value = elem.keyword or elem.name, str(elem.VR), _value_text(elem)
            except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on malformed values
                keyword, vr, value = "", "", f"(unreadable value: {type(e).__name__})"
            rows.append({"tag": f"({tag.group:04X},{tag.element:04X})", "keyword": keyword, "vr": vr,
                         "value": _short(value)})
    return rows


def _container_rows(container: Mapping[str, Any]) -> list[dict[str, str]]:
    from PIL.ExifTags import TAGS

    rows: list[tuple[str, Any]] = []
    rows += [(f"text: {k}", v) for k, v in (container.get("text") or {}).items()]
    if container.get("xmp"):
        rows.append(("XMP", container["xmp"]))
    rows += [(f"EXIF {TAGS.get(int(k), k)}", v) for k, v in (container.get("exif") or {}).items()]
    if container.get("exif_error"):
        rows.append(("EXIF error", container["exif_error"]))
    tables = container.get("quantization")
    if tables:
        rows.append(("JPEG quantization", f"{len(tables)} table{'s' if len(tables) != 1 else ''}"))
    return [{"tag": "", "keyword": str(k), "vr": "", "value": _short(str(v))} for k, v in rows]


def header_rows(image: Image) -> list[dict[str, str]]:
    """The header of ``image`` as rows ``{"tag", "keyword", "vr", "value"}``: the top-level
    elements of its first DICOM dataset (file meta first; sequences as ``(N items)``; no pixel
    data; values on one line, cut to :data:`VALUE_CHARS` characters), then the container metadata
    of a PNG/JPEG/TIFF (``meta["container"]``) as rows with tag ``""``. Empty when there is neither.

    >>> rows = header_rows(Image.from_array(np.zeros((4, 4)), format="png",
    ...                    meta={"container": {"text": {"Software": "an editor"}}}))
    >>> rows
    [{'tag': '', 'keyword': 'text: Software', 'vr': '', 'value': 'an editor'}]
    """
    rows: list[dict[str, str]] = []
    if image.datasets:
        with ignoring_warnings():
            rows += _dicom_rows(image.datasets[0])
    container = image.meta.get("container")
    if isinstance(container, Mapping):
        rows += _container_rows(container)
    return rows
