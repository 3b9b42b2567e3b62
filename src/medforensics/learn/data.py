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

Tasks: ``ct4`` (CT slices of the CT-GAN classes TB, TM, FB, FM; FB and FM are fakes) and
``binary`` (``real`` / ``fake``, optionally only some kinds and some forge methods).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from ..core import MedForensicsError

CT_WINDOW = (-1000.0, 400.0)
RADIOGRAPH_PERCENTILES = (0.5, 99.5)
KINDS = ("ct-slice", "radiograph")
TASKS = {"ct4": (["TB", "TM", "FB", "FM"], ["FB", "FM"]), "binary": (["real", "fake"], ["fake"])}
AUGMENTATIONS = ("rotate-10", "rotate-5", "rotate+5", "rotate+10",
                 "brightness-25%", "brightness-10%", "brightness+10%", "brightness+25%")
REQUIRED_COLUMNS = ("file", "split", "label", "class", "kind", "method", "patient_id")

__all__ = ["CT_WINDOW", "RADIOGRAPH_PERCENTILES", "TASKS", "AUGMENTATIONS", "read_manifest", "load_item",
           "normalise_image", "to_tensor", "augment", "select_rows", "refuse_leaks", "ItemDataset", "default_preprocess"]


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a forge ``manifest.csv`` as dicts (every value a string), in file order.

    Each row gets ``_path``: the item's file resolved against the manifest's folder.
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


def default_preprocess(image_size: int = 224, crop: int = 224, *, mean: float = 0.0, std: float = 1.0) -> dict[str, Any]:
    """Everything :func:`to_tensor` needs (stored in a checkpoint's card as ``preprocess``)."""
    return {"image_size": int(image_size), "resize": "bilinear", "crop": int(crop), "mean": float(mean),
            "std": float(std), "in_channels": 1, "ct_window_hu": list(CT_WINDOW),
            "radiograph_percentiles": list(RADIOGRAPH_PERCENTILES)}


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
    """The evaluation transform: a [0, 1] array to a normalised ``(1, crop, crop)`` float tensor."""
    if preprocess.get("resize", "bilinear") != "bilinear":
        raise ValueError(f"unsupported resize {preprocess.get('resize')!r} (only bilinear)")
    t = _resize_crop(array2d, int(preprocess["image_size"]), int(preprocess["crop"]))
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
            a = load_item(r["_path"], r["kind"])
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
