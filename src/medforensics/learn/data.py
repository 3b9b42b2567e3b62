"""Data for the 2D classifiers: forge manifests, item loading, the review's transforms, datasets.

An item goes through three steps, kept apart as in MONAI:

1. :func:`load_item` -- the file, via :func:`medforensics.io.load`, as a float32 2D array in
   [0, 1]: a CT slice through the fixed lung window ``CT_WINDOW`` (HU -1000..400, i.e. level
   -300, width 1400), a radiograph scaled between its 0.5th and 99.5th percentiles.
2. (training only, fakes only) one of the review's eight augmentation variants
   (:data:`AUGMENTATIONS`: rotations of -10, -5, +5, +10 degrees, brightness -25, -10, +10, +25 %).
3. :func:`to_tensor` -- the evaluation transform: bilinear resize (antialiased) of the shorter
   side to ``image_size``, centre crop to ``crop`` x ``crop``, intensity normalisation
   ``(x - mean) / std`` with the mean and standard deviation of the training images; a
   ``(1, crop, crop)`` tensor.

Native-resolution tiles (``resize = "none"``): resizing blurs away the acquisition noise and the
seams that local edits leave, so the tile mode never resamples. Training sees random
``crop`` x ``crop`` tiles of the images at their own resolution (:class:`TileDataset`; a fake's
tile always covers part of its ground-truth mask, so the label is true of the tile), and
inference cuts an image into overlapping tiles (:func:`tiles`) and scores each: an image is as
fake as its most suspicious tile, and the tile scores form a heatmap.

Tasks: ``ct4`` (CT slices of the CT-GAN classes TB, TM, FB, FM; FB and FM are fakes) and
``binary`` (``real`` / ``fake``, optionally only some kinds and some forge methods).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..core import MedForensicsError, one_line

CT_WINDOW = (-1000.0, 400.0)
RADIOGRAPH_PERCENTILES = (0.5, 99.5)
KINDS = ("ct-slice", "radiograph")
TASKS = {"ct4": (["TB", "TM", "FB", "FM"], ["FB", "FM"]), "binary": (["real", "fake"], ["fake"])}
AUGMENTATIONS = ("rotate-10", "rotate-5", "rotate+5", "rotate+10",
                 "brightness-25%", "brightness-10%", "brightness+10%", "brightness+25%")
REQUIRED_COLUMNS = ("file", "split", "label", "class", "kind", "method", "patient_id")

RESIZES = ("bilinear", "none")
#: Most tiles :func:`tiles` cuts from one image (the step grows beyond ``stride`` to keep within it).
MAX_TILES = 512

__all__ = ["CT_WINDOW", "RADIOGRAPH_PERCENTILES", "TASKS", "AUGMENTATIONS", "RESIZES", "read_manifest", "load_item",
           "load_mask", "item_shape", "normalise_image", "quantise", "to_tensor", "tiles", "augment", "select_rows", "refuse_leaks",
           "ItemDataset", "TileDataset", "default_preprocess"]


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a forge ``manifest.csv`` as dicts (every value a string), in file order.

    Each row gets ``_path`` and ``_mask``: the item's file and mask resolved against the
    manifest's folder (``_mask`` is empty where the row has no mask).
    Raises MedForensicsError for a missing or malformed manifest.
    """
    path = Path(path)
    if not path.is_file():
        raise MedForensicsError(path, "manifest not found")
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise MedForensicsError(path, f"not a forge manifest: missing column(s) {', '.join(missing)}")
            rows = [dict(r) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MedForensicsError(path, f"cannot read manifest: {e}") from None
    root = path.parent
    for r in rows:
        r["_path"] = str(root / r["file"])
        r["_mask"] = str(root / r["mask"]) if r.get("mask") else ""
    return rows


def load_item(path: str | Path, kind: str) -> np.ndarray:
    """The image at ``path`` as a float32 2D array in [0, 1] (see the module doc for the scaling).

    ``kind`` is ``ct-slice`` (pixels in HU, fixed window :data:`CT_WINDOW`) or ``radiograph``
    (robust percentiles :data:`RADIOGRAPH_PERCENTILES`). A volume gives its middle slice.
    """
    from ..io import load

    if kind not in KINDS:
        raise MedForensicsError(path, f"unknown item kind {kind!r} (expected {' or '.join(KINDS)})")
    images = load(path)
    return normalise_image(images[0].slice2d(), kind)


def load_mask(row: dict[str, str], shape: tuple[int, int]) -> np.ndarray:
    """The ground-truth mask of a manifest row (from :func:`read_manifest`) as a boolean array of
    ``shape``: its mask file where the row has one, else all False for real rows and all True for
    fakes (a fake without a mask is taken as wholly fake)."""
    if row.get("_mask"):
        from PIL import Image as PILImage

        path = Path(row["_mask"])
        try:
            m = np.asarray(PILImage.open(path)) > 0
        except OSError as e:
            raise MedForensicsError(path, f"cannot read mask: {e}") from None
        if m.ndim == 3:
            m = m.any(axis=-1)
        if m.shape == tuple(shape):
            return m
        raise MedForensicsError(path, f"mask is {m.shape[0]}x{m.shape[1]} but its image is {shape[0]}x{shape[1]}")
    return np.full(shape, row.get("label") == "fake", dtype=bool)


def item_shape(path: str | Path) -> tuple[int, int]:
    """``(rows, columns)`` of an item file without decoding its pixels where the format allows
    (PNG/JPEG/TIFF headers, DICOM Rows/Columns); other files are loaded."""
    p = Path(path)
    try:
        if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            from PIL import Image as PILImage

            with PILImage.open(p) as im:
                return im.size[1], im.size[0]
        if p.suffix.lower() == ".dcm":
            import pydicom

            ds = pydicom.dcmread(p, stop_before_pixels=True)
            return int(ds.Rows), int(ds.Columns)
    except (OSError, ValueError, AttributeError) as e:
        raise MedForensicsError(p, f"cannot read the image size: {one_line(e, 200)}") from None
    return tuple(load_item(p, "radiograph").shape)  # type: ignore[return-value]


def normalise_image(pixels: np.ndarray, kind: str) -> np.ndarray:
    """In-memory pixels (an ``Image.pixels`` 2D array, or a volume: its middle slice) scaled to
    [0, 1] float32 as :func:`load_item` scales a file of that ``kind``."""
    px = np.asarray(pixels, dtype=np.float32)
    if px.ndim == 3:
        px = px[px.shape[0] // 2]
    if kind == "ct-slice":
        lo, hi = CT_WINDOW
    elif kind == "radiograph":
        lo, hi = (float(v) for v in np.percentile(px, RADIOGRAPH_PERCENTILES))
        if hi <= lo:
            lo, hi = float(px.min()), float(px.max())
            if hi <= lo:
                hi = lo + 1.0
    else:
        raise ValueError(f"unknown item kind {kind!r} (expected {' or '.join(KINDS)})")
    return np.clip((px - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def augment(array2d: np.ndarray, variant: str) -> np.ndarray:
    """One of the review's eight variants (:data:`AUGMENTATIONS`) of a [0, 1] array.

    Rotations turn about the centre (bilinear, reflected border, as ``forge dataset --augment``);
    brightness scales the intensities above the 1st percentile by ``1 + pct / 100``.
    """
    import cv2

    a = np.asarray(array2d, dtype=np.float32)
    if variant.startswith("rotate"):
        angle = float(variant[len("rotate"):])
        h, w = a.shape
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        return cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if variant.startswith("brightness"):
        pct = float(variant[len("brightness"):].rstrip("%"))
        lo = float(np.percentile(a, 1))
        return (lo + (a - lo) * (1.0 + pct / 100.0)).astype(np.float32)
    raise ValueError(f"unknown augmentation {variant!r}")


def default_preprocess(image_size: int = 224, crop: int = 224, *, mean: float = 0.0, std: float = 1.0,
                       resize: str = "bilinear", stride: int = 0, levels: int = 0) -> dict[str, Any]:
    """Everything :func:`to_tensor` and :func:`tiles` need (stored in a checkpoint's card as
    ``preprocess``). ``resize="none"`` is the native-resolution tile mode (``image_size`` unused;
    ``stride``: step between inference tiles, half a tile when 0). ``levels`` > 0: every [0, 1]
    image is rounded to that many steps (255: 8 bits, as a lung-window PNG) before anything else
    (:func:`quantise`), so that an 8-bit export and the original give the model the same input."""
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}, got {resize!r}")
    out = {"image_size": int(image_size), "resize": resize, "crop": int(crop), "mean": float(mean),
           "std": float(std), "in_channels": 1, "ct_window_hu": list(CT_WINDOW),
           "radiograph_percentiles": list(RADIOGRAPH_PERCENTILES)}
    if levels:
        out["levels"] = int(levels)
    if resize == "none":
        out["stride"] = int(stride) or max(1, int(crop) // 2)
        out["max_tiles"] = MAX_TILES
    return out


def quantise(array01: np.ndarray, preprocess: dict[str, Any]) -> np.ndarray:
    """A [0, 1] array rounded to the card's ``levels`` steps (unchanged when it has none)."""
    levels = int(preprocess.get("levels") or 0)
    a = np.asarray(array01, dtype=np.float32)
    return (np.round(a * levels) / levels).astype(np.float32) if levels else a


def _pad_to(a: np.ndarray, crop: int) -> np.ndarray:
    """Reflect-pad a 2D array (symmetric, edge pixel repeated) to at least ``crop`` on each side."""
    h, w = a.shape
    ph, pw = max(0, crop - h), max(0, crop - w)
    if ph or pw:
        a = np.pad(a, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="symmetric")
    return a


def tile_starts(n: int, crop: int, step: int) -> list[int]:
    """Starts of ``crop``-long tiles along an axis of length ``n`` (>= ``crop``), ``step`` apart,
    the last one aligned to the far edge."""
    s = list(range(0, n - crop + 1, step))
    if s[-1] != n - crop:
        s.append(n - crop)
    return s


def cut_tiles(array2d: np.ndarray | torch.Tensor, positions: Sequence[tuple[int, int]],
              preprocess: dict[str, Any]) -> torch.Tensor:
    """The tiles of a [0, 1] array at ``positions`` (top, left), normalised as the model was
    trained: ``(n, 1, crop, crop)``."""
    crop = int(preprocess["crop"])
    t = array2d if isinstance(array2d, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array2d, dtype=np.float32))
    batch = torch.stack([t[y:y + crop, x:x + crop] for y, x in positions])[:, None]
    return (batch - float(preprocess["mean"])) / float(preprocess["std"])


def tiles(array2d: np.ndarray, preprocess: dict[str, Any]) -> tuple[torch.Tensor, list[tuple[int, int]], tuple[int, int]]:
    """Native-resolution tiles of a [0, 1] array for inference: ``(batch (n, 1, crop, crop)
    normalised, [(top, left) of each tile], padded shape)``. Tiles step by ``stride`` and the last
    row and column are aligned to the far edges; an image smaller than a tile is reflect-padded to
    one. At most ``max_tiles`` (default :data:`MAX_TILES`) are cut: a large image gets a longer
    step (a 2,000 px radiograph: about 90 px for 64 px tiles), which bounds the time and keeps the
    "worst of n tiles" statistic comparable across image sizes."""
    crop, stride = int(preprocess["crop"]), int(preprocess.get("stride") or max(1, int(preprocess["crop"]) // 2))
    max_tiles = int(preprocess.get("max_tiles") or MAX_TILES)
    a = _pad_to(np.asarray(array2d, dtype=np.float32), crop)
    h, w = a.shape
    while len(tile_starts(h, crop, stride)) * len(tile_starts(w, crop, stride)) > max_tiles and stride < max(h, w):
        stride += 1
    pos = [(t, l) for t in tile_starts(h, crop, stride) for l in tile_starts(w, crop, stride)]
    return cut_tiles(a, pos, preprocess), pos, (h, w)


def _resize_crop(array2d: np.ndarray, image_size: int, crop: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array2d, dtype=np.float32))[None, None]
    h, w = t.shape[-2:]
    s = image_size / min(h, w)
    size = (max(crop, round(h * s)), max(crop, round(w * s)))
    if size != (h, w):
        t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return t[0, :, top:top + crop, left:left + crop]


def to_tensor(array2d: np.ndarray, preprocess: dict[str, Any]) -> torch.Tensor:
    """The evaluation transform: a [0, 1] array to a normalised ``(1, crop, crop)`` float tensor
    (in the native tile mode: the centre tile, no resizing)."""
    resize = preprocess.get("resize", "bilinear")
    if resize == "none":
        crop = int(preprocess["crop"])
        a = _pad_to(np.asarray(array2d, dtype=np.float32), crop)
        top, left = (a.shape[0] - crop) // 2, (a.shape[1] - crop) // 2
        t = torch.from_numpy(np.ascontiguousarray(a[top:top + crop, left:left + crop]))[None]
    elif resize == "bilinear":
        t = _resize_crop(array2d, int(preprocess["image_size"]), int(preprocess["crop"]))
    else:
        raise ValueError(f"unsupported resize {resize!r} (choose {' or '.join(RESIZES)})")
    return (t - float(preprocess["mean"])) / float(preprocess["std"])


def _norm_list(values: Iterable[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [str(v) for v in values if str(v)]


def select_rows(rows: Sequence[dict[str, str]], task: str, *, kinds: Iterable[str] | None = None,
                methods: Iterable[str] | None = None) -> list[dict[str, str]]:
    """The rows a task uses, each with ``_target`` (its class index in ``TASKS[task][0]``).

    ``ct4``: CT slices whose class is TB, TM, FB or FM. ``binary``: every row (or only the given
    ``kinds``); ``methods`` keeps real rows and only the fakes made by those forge methods (for
    cross-generator runs), named by the manifest's ``class`` (``copymove``, ``FM``, ``synthetic``)
    or its ``method`` (``classic``, ``gan``, ``learned``, ...).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    classes = TASKS[task][0]
    kinds, methods = _norm_list(kinds), _norm_list(methods)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kind(s) {', '.join(bad)}; choose from {', '.join(KINDS)}")
    out = []
    for r in rows:
        if kinds and r["kind"] not in kinds:
            continue
        if task == "ct4":
            if r["kind"] != "ct-slice" or r["class"] not in classes:
                continue
            target = classes.index(r["class"])
        else:
            if r["label"] not in classes:
                continue
            if methods and r["label"] == "fake" and r["method"] not in methods and r["class"] not in methods:
                continue
            target = classes.index(r["label"])
        out.append({**r, "_target": str(target)})
    return out


def refuse_leaks(rows: Sequence[dict[str, str]], manifest_path: str | Path) -> dict[str, set[str]]:
    """Patients per split; raises MedForensicsError naming the manifest and a patient in two splits."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        seen.setdefault(r["patient_id"], set()).add(r["split"])
    leaks = sorted(p for p, s in seen.items() if len(s) > 1)
    if leaks:
        p = leaks[0]
        raise MedForensicsError(manifest_path, f"patient {p} appears in splits {' and '.join(sorted(seen[p]))} "
                                f"({len(leaks)} patient(s) in more than one split); splits must be patient-disjoint")
    per_split: dict[str, set[str]] = {}
    for p, s in seen.items():
        per_split.setdefault(next(iter(s)), set()).add(p)
    return per_split


class ItemDataset(torch.utils.data.Dataset):
    """Manifest rows (from :func:`select_rows`) as ``(tensor, class_index)`` pairs.

    With ``augment_fakes`` every fake row is seen as itself and in the eight variants of
    :data:`AUGMENTATIONS` (real rows once), as the review trained. Rows that ``forge dataset
    --augment`` already augmented (``augmentation`` set) are used as they are. Loaded items are
    cached in memory after resizing (``cache_dtype``: float16 halves the memory of a training
    set; use float32 where outputs must match :func:`to_tensor` exactly), so later epochs read no
    files.
    """

    def __init__(self, rows: Sequence[dict[str, str]], preprocess: dict[str, Any], fake_targets: Iterable[int],
                 *, augment_fakes: bool = False, cache: bool = True, cache_dtype: Any = np.float16):
        self.rows = list(rows)
        self.preprocess = dict(preprocess)
        fake_targets = set(int(t) for t in fake_targets)
        self.items: list[tuple[int, str]] = []
        for i, r in enumerate(self.rows):
            self.items.append((i, ""))
            if augment_fakes and int(r["_target"]) in fake_targets and not r.get("augmentation"):
                self.items.extend((i, v) for v in AUGMENTATIONS)
        self.cache = cache
        self.cache_dtype = cache_dtype
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def targets(self) -> list[int]:
        return [int(self.rows[i]["_target"]) for i, _ in self.items]

    def array(self, i: int) -> np.ndarray:
        """Row ``i`` as a [0, 1] array, resized so its shorter side is ``image_size`` (cached)."""
        a = self._cache.get(i)
        if a is None:
            r = self.rows[i]
            a = quantise(load_item(r["_path"], r["kind"]), self.preprocess)
            size = int(self.preprocess["image_size"])
            h, w = a.shape
            s = size / min(h, w)
            t = torch.from_numpy(a)[None, None]
            t = torch.nn.functional.interpolate(t, size=(max(size, round(h * s)), max(size, round(w * s))),
                                                mode="bilinear", align_corners=False, antialias=True)
            a = t[0, 0].numpy()
            if self.cache:
                self._cache[i] = a.astype(self.cache_dtype)
            return a
        return a.astype(np.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i, variant = self.items[index]
        a = self.array(i)
        if variant:
            a = augment(a, variant)
        return to_tensor(a, self.preprocess), int(self.rows[i]["_target"])


class TileDataset(torch.utils.data.Dataset):
    """Manifest rows as random native-resolution tiles: ``(tensor (1, crop, crop), class_index)``.

    Each epoch every row gives ``tiles_per_item`` tiles. A real row's tile lies anywhere in the
    image; a fake row's tile contains a pixel of the row's mask (:func:`load_mask`) well inside
    it (at least a quarter tile from its edges where the image allows), so every fake tile shows
    manipulated pixels. Half the tiles of a real row with a mask (a real nodule of the CT classes
    TB and TM) are drawn the same way, so real findings are seen as real. Tiles are flipped left-right at random, real and fake alike.
    With ``export_chains`` = p, a share p of the tiles, real and fake alike, comes from the image
    after a random export chain (:func:`medforensics.learn.export.export_chain`: windowing,
    sharpening, resizing, burnt-in marks, 8 bits, JPEG once or twice), applied to a window of three
    tiles around the drawn one, so that processing carries no label. Which tile
    is drawn depends only on ``seed``, the epoch (:meth:`set_epoch`) and the index, so runs
    repeat. Images and masks are cached in memory (float16 and bool) after the first read.
    """

    def __init__(self, rows: Sequence[dict[str, str]], preprocess: dict[str, Any], fake_targets: Iterable[int],
                 *, tiles_per_item: int = 8, seed: int = 0, fixed: bool = False, export_chains: float = 0.0):
        self.rows = list(rows)
        self.preprocess = dict(preprocess)
        self.fake_targets = set(int(t) for t in fake_targets)
        self.tiles_per_item = max(1, int(tiles_per_item))
        self.export_chains = float(export_chains)
        self.seed, self.epoch, self.fixed = int(seed), 0, fixed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.rows) * self.tiles_per_item

    def set_epoch(self, epoch: int) -> None:
        """Draw other tiles in the next pass (unless ``fixed``: validation always sees the same)."""
        self.epoch = int(epoch)

    def targets(self) -> list[int]:
        return [int(r["_target"]) for r in self.rows for _ in range(self.tiles_per_item)]

    def array(self, i: int) -> np.ndarray:
        """Row ``i`` as a native-resolution [0, 1] array (padded to one tile at least)."""
        return self._load(i)[0].astype(np.float32)

    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        got = self._cache.get(i)
        if got is None:
            r = self.rows[i]
            a = quantise(load_item(r["_path"], r["kind"]), self.preprocess)
            m = load_mask(r, a.shape)
            crop = int(self.preprocess["crop"])
            got = (_pad_to(a, crop).astype(np.float16), _pad_to(m, crop))
            self._cache[i] = got
        return got

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = index // self.tiles_per_item
        a, m = self._load(i)
        crop = int(self.preprocess["crop"])
        rng = np.random.default_rng([self.seed, 0 if self.fixed else self.epoch, index])
        h, w = a.shape
        target = int(self.rows[i]["_target"])
        fake = target in self.fake_targets
        if m.any() and not m.all() and (fake or rng.random() < 0.5):
            ys, xs = np.nonzero(m)
            k = int(rng.integers(len(ys)))
            cy, cx = int(ys[k]), int(xs[k])
            q = crop // 4
            top = int(np.clip(cy - rng.integers(q, crop - q), 0, h - crop))
            left = int(np.clip(cx - rng.integers(q, crop - q), 0, w - crop))
        else:
            top, left = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        t = None
        if self.export_chains and rng.random() < self.export_chains:
            t = _exported_tile(a, m, top, left, crop, rng, need_mask=fake and m.any())
        if t is None:
            t = a[top:top + crop, left:left + crop].astype(np.float32)
        if rng.random() < 0.5:
            t = t[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(t))[None]
        return (x - float(self.preprocess["mean"])) / float(self.preprocess["std"]), target


def _exported_tile(a: np.ndarray, m: np.ndarray, top: int, left: int, crop: int, rng: np.random.Generator,
                   *, need_mask: bool) -> np.ndarray | None:
    """The ``crop`` tile centred where the tile at (``top``, ``left``) is centred, after a random
    export chain of a window of three tiles around it; None when a forged tile lost its mask
    (the caller then uses the plain tile)."""
    from .export import export_chain

    h, w = a.shape
    y0, x0 = max(0, top - crop), max(0, left - crop)
    y1, x1 = min(h, top + 2 * crop), min(w, left + 2 * crop)
    win, mwin, _ = export_chain(a[y0:y1, x0:x1].astype(np.float32), m[y0:y1, x0:x1], rng)
    sy, sx = win.shape[0] / (y1 - y0), win.shape[1] / (x1 - x0)
    win, mwin = _pad_to(win, crop), _pad_to(mwin, crop)
    cy = int(round((top + crop / 2 - y0) * sy)) + (win.shape[0] - round((y1 - y0) * sy)) // 2
    cx = int(round((left + crop / 2 - x0) * sx)) + (win.shape[1] - round((x1 - x0) * sx)) // 2
    ty = int(np.clip(cy - crop // 2, 0, win.shape[0] - crop))
    tx = int(np.clip(cx - crop // 2, 0, win.shape[1] - crop))
    if need_mask and not mwin[ty:ty + crop, tx:tx + crop].any():
        return None
    return win[ty:ty + crop, tx:tx + crop]
