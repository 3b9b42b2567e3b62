"""A 3D patch model for CT: a small MONAI ResNet that says whether a cube of a series was
manipulated (a tumour injected or removed), and a sliding-window scan of a whole series into a
voxel-aligned heatmap and regions.

Cubes
-----
A cube is :data:`CUBE` = 16 x 64 x 64 voxels (slices, rows, columns) on the series' **own voxel
grid** (no resampling: the traces of an edit -- noise texture, partial-volume edges -- live at the
native resolution and resampling would smear them; about 40 x 45 x 45 mm for LIDC-IDRI's 2.5 mm
slices of 0.7 mm pixels), windowed in HU: ``[-1000, 400] -> [0, 1]`` (:data:`HU_WINDOW`). Voxels
beyond the volume's edge repeat the edge (short series are padded the same way in training and
in scanning).

Labels
------
A cube is positive when the centre of an injected or removed tumour lies in its central block of
:data:`STRIDE` = 8 x 32 x 32 voxels, i.e. when the window that would cover it in the scan's coarse
pass looks at it. Positives are our own forgeries (:func:`medforensics.forge.ct.inject`, classic
and GAN, solid / part-solid / ground-glass, 4-20 mm; :func:`medforensics.forge.ct.remove` of the
readers' real nodules). Negatives are random lung cubes of the authentic series *and* cubes
around its real nodules, so that "nodule" does not mean "fake".

Scanning a LIDC-IDRI series (seconds on a CPU, after loading MONAI and the shipped model; the
heatmap has the shape of ``image.pixels``, the regions are :class:`~medforensics.core.Region`):

>>> from medforensics.io import load
>>> from medforensics.learn.ct3d import scan_series
>>> heatmap, regions = scan_series(load("LIDC-IDRI-0003/")[0])   # doctest: +SKIP

What the network sees: a cube on the series' own grid, edges repeated, windowed to [0, 1]:

>>> import numpy as np
>>> from medforensics.learn.ct3d import CUBE, crop, window_hu
>>> volume = np.arange(10 * 80 * 80, dtype=np.float32).reshape(10, 80, 80)
>>> cube = crop(volume, (-4, 8, 32), CUBE)          # 4 slices before the first, 16 columns past the last
>>> cube.shape, bool((cube[:4] == cube[4]).all()), bool((cube[:, :, 48:] == cube[:, :, 47:48]).all())
((16, 64, 64), True, True)
>>> window_hu(np.array([-1200.0, -1000.0, -300.0, 400.0, 1000.0]))
array([0. , 0. , 0.5, 1. , 1. ], dtype=float32)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core import Image, MedForensicsError, Region
from ..datapath import card_data_root, sources_of

__all__ = ["CUBE", "STRIDE", "FINE", "HU_WINDOW", "DEFAULT_SPLITS", "build_network", "window_hu", "crop",
           "CubeSet", "make_cubes", "train_ct3d", "load_model", "scan", "scan_series", "SeriesScan",
           "default_checkpoint"]

#: Cube size (slices, rows, columns) in voxels of the series' own grid.
CUBE = (16, 64, 64)
#: Step of the coarse scan, and the central block of a window whose label it carries.
STRIDE = (8, 32, 32)
#: Step of the fine scan around suspicious coarse blocks: also the heatmap's cell size.
FINE = (4, 16, 16)
#: HU window mapped to [0, 1].
HU_WINDOW = (-1000.0, 400.0)
#: Stored training crops: a cube plus one stride, so that a random crop moves the target anywhere
#: in the central block.
STORED = tuple(c + s for c, s in zip(CUBE, STRIDE))
#: Patient splits of the forge dataset built from ../shared/data (seed 0), used when no manifest says otherwise.
DEFAULT_SPLITS = {"LIDC-IDRI-0001": "train", "LIDC-IDRI-0002": "validation", "LIDC-IDRI-0003": "test"}
#: Network configuration of the shipped model (arguments of monai.networks.nets.ResNet).
NET_CONFIG: dict[str, Any] = {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 64],
                              "spatial_dims": 3, "n_input_channels": 1, "conv1_t_size": [3, 7, 7],
                              "conv1_t_stride": [1, 2, 2], "num_classes": 1}
ARCHITECTURE = "monai.networks.nets.ResNet"


def default_checkpoint() -> Path:
    """The shipped checkpoint, ``medforensics/models/ct3d.safetensors``."""
    return Path(__file__).resolve().parents[1] / "models" / "ct3d.safetensors"


def build_network(config: dict[str, Any] | None = None):
    """The patch classifier: a MONAI 3D ResNet (one basic block per stage) with one logit out."""
    from monai.networks.nets import ResNet

    cfg = dict(NET_CONFIG if config is None else config)
    for k in ("conv1_t_size", "conv1_t_stride"):
        if isinstance(cfg.get(k), list):
            cfg[k] = tuple(cfg[k])
    return ResNet(**cfg)


def window_hu(x: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] with the fixed window :data:`HU_WINDOW` (float32)."""
    lo, hi = HU_WINDOW
    return np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0)


def crop(volume: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``volume[start:start+size]`` per axis, voxels beyond the edge repeating the edge."""
    src, pad = [], []
    for s, n, dim in zip(start, size, volume.shape):
        lo, hi = max(0, s), min(dim, s + n)
        if hi <= lo:  # entirely outside: the nearest edge slab
            lo, hi = (0, 1) if s + n <= 0 else (dim - 1, dim)
            src.append(slice(lo, hi))
            pad.append((0, n - 1) if s + n <= 0 else (n - 1, 0))
            continue
        src.append(slice(lo, hi))
        pad.append((lo - s, s + n - hi))
    out = volume[tuple(src)]
    if any(p != (0, 0) for p in pad):
        out = np.pad(out, pad, mode="edge")
    return out


def _centred_start(center: Sequence[int], size: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(c) - n // 2 for c, n in zip(center, size))


# ------------------------------------------------------------------------------------------ data

@dataclass
class CubeSet:
    """Stored crops (:data:`STORED`, windowed, float16) with their labels and what they are."""

    crops: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)  # inject/remove/random/real-nodule
    info: list[dict[str, Any]] = field(default_factory=list)

    def add(self, volume: np.ndarray, center: Sequence[int], label: int, kind: str, **info: Any) -> None:
        self.crops.append(window_hu(crop(volume, _centred_start(center, STORED), STORED)).astype(np.float16))
        self.labels.append(int(label))
        self.kinds.append(kind)
        self.info.append(info)

    def extend(self, other: "CubeSet") -> None:
        self.crops += other.crops
        self.labels += other.labels
        self.kinds += other.kinds
        self.info += other.info

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.kinds:
            out[k] = out.get(k, 0) + 1
        return out


def scan_region(image: Image) -> np.ndarray:
    """What a scan covers: the lung mask on a 4x coarser in-plane grid, dilated by ~10 mm (so the
    pleura, chest wall, mediastinum and diaphragm next to the lung are scanned too)."""
    from scipy import ndimage as ndi

    from ..forge.ct import lung_mask

    sp = [float(s) if s else 1.0 for s in image.spacing]
    lung = lung_mask(image.pixels[:, ::4, ::4], spacing=(sp[0], sp[1] * 4, sp[2] * 4))
    if lung.any():
        it = (max(1, int(round(10.0 / sp[0]))), max(1, int(round(10.0 / (sp[1] * 4)))))
        lung = ndi.maximum_filter(lung.astype(np.uint8), size=(2 * it[0] + 1, 2 * it[1] + 1, 2 * it[1] + 1)) > 0
    return lung


def _lung_points(image: Image, rng: np.random.Generator, n: int) -> list[tuple[int, int, int]]:
    """``n`` random voxels of the region a scan covers (:func:`scan_region`)."""
    pts = np.argwhere(scan_region(image))
    if len(pts) == 0:
        return []
    pick = pts[rng.integers(len(pts), size=n)]
    return [(int(k), int(min(i * 4 + 2, image.pixels.shape[1] - 1)), int(min(j * 4 + 2, image.pixels.shape[2] - 1)))
            for k, i, j in pick]


def make_cubes(image: Image, *, n_injections: int, n_random: int, seed: int, removal_repeats: int = 2,
               nodule_views: int = 12, progress=None) -> CubeSet:
    """Training or validation cubes from one authentic CT series.

    Positives: ``n_injections`` tumours injected (diameter 4-20 mm, the three nodule types and the
    two renderers in turn, seeded), and every real LIDC nodule removed ``removal_repeats`` times per
    renderer. Negatives: ``n_random`` random cubes of the untouched series' scanned region (lung
    and 10 mm around it) and ``nodule_views`` slightly shifted cubes around each real nodule.
    """
    from ..forge import ct
    from ..forge.lidc import nodules_for

    rng = np.random.default_rng(seed)
    out = CubeSet()
    vol = image.pixels
    for i in range(n_injections):
        diameter = float(rng.uniform(4.0, 20.0))
        ntype = ct.NODULE_TYPES[i % 3]
        method = ct.METHODS[(i // 3) % 2]
        s = int(seed) * 100_000 + i
        try:
            f = ct.inject(image, diameter_mm=diameter, nodule_type=ntype, method=method, seed=s)
        except MedForensicsError:
            continue
        out.add(f.pixels, f.center_voxel, 1, "inject", method=method, nodule_type=ntype, diameter_mm=round(diameter, 1),
                seed=s, center_voxel=list(f.center_voxel))
        if progress:
            progress()
    nodules = nodules_for(image)
    for n in nodules:
        for r in range(removal_repeats):
            for method in ct.METHODS:
                s = int(seed) * 100_000 + 50_000 + n.id * 100 + r * 10 + ct.METHODS.index(method)
                try:
                    f = ct.remove(image, nodule=n, method=method, seed=s)
                except MedForensicsError:
                    continue
                out.add(f.pixels, f.center_voxel, 1, "remove", method=method, diameter_mm=round(n.diameter_mm, 1),
                        seed=s, center_voxel=list(f.center_voxel))
        for v in range(nodule_views):
            shift = rng.integers(-4, 5, size=3) * np.array([1, 4, 4]) if v else np.zeros(3, int)
            c = np.clip(np.array(n.center_voxel) + shift, 0, np.array(vol.shape) - 1)
            out.add(vol, c, 0, "real-nodule", diameter_mm=round(n.diameter_mm, 1), center_voxel=[int(x) for x in c])
    for c in _lung_points(image, rng, n_random):
        out.add(vol, c, 0, "random", center_voxel=list(c))
    return out


def _series_by_patient(data_root: Path) -> dict[str, Image]:
    """The CT series of LIDC-IDRI patients under ``data_root`` (the longest one per patient)."""
    from ..io import load

    found: dict[str, Image] = {}
    for coll in ("lidc-idri", "lidc-idri-small"):
        base = data_root / "ct" / coll
        if not base.is_dir():
            continue
        for pdir in sorted(base.iterdir()):
            if not pdir.is_dir() or not any(pdir.rglob("*.dcm")):
                continue
            for img in load(pdir):
                if img.pixels.ndim == 3 and img.modality == "CT" and img.pixels.shape[0] >= 3:
                    if pdir.name not in found or img.pixels.shape[0] > found[pdir.name].pixels.shape[0]:
                        found[pdir.name] = img
    return found


def patient_splits(manifest: str | Path | None = None) -> dict[str, str]:
    """Patient -> split of LIDC patients: from a forge-dataset ``manifest.csv`` where given
    (checked to be patient-disjoint), else :data:`DEFAULT_SPLITS`."""
    if manifest is None:
        return dict(DEFAULT_SPLITS)
    from ..forge.dataset import check_patient_disjoint

    try:
        per_split = check_patient_disjoint(manifest)
    except ValueError as e:
        raise MedForensicsError(manifest, str(e)) from None
    except OSError as e:
        raise MedForensicsError(manifest, f"cannot read the manifest ({e.strerror})") from None
    return {p: s for s, ps in per_split.items() for p in ps if p.startswith("LIDC-IDRI")}


# ------------------------------------------------------------------------------------- training

def _augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random crop of :data:`CUBE` from each stored crop, flips on every axis, a quarter of the
    cubes cut as near the end of a series (1-7 edge slices repeated, as the scan pads short
    series), a small gain and offset: the same for real and fake cubes."""
    out = np.empty((len(batch), 1, *CUBE), np.float32)
    for b, x in enumerate(batch):
        o = [int(rng.integers(0, s + 1)) for s in STRIDE]
        c = x[o[0]:o[0] + CUBE[0], o[1]:o[1] + CUBE[1], o[2]:o[2] + CUBE[2]].astype(np.float32)
        for ax in range(3):
            if rng.random() < 0.5:
                c = np.flip(c, ax)
        if rng.random() < 0.25:  # as near the first or last slice of a (short) series: edge slices repeated
            t = int(rng.integers(1, CUBE[0] // 2))
            c = np.ascontiguousarray(c)
            c[:t] = c[t]
        out[b, 0] = c * (1.0 + rng.uniform(-0.03, 0.03)) + rng.uniform(-0.02, 0.02)
    return out


def _centre_crops(crops: list[np.ndarray], seed: int) -> np.ndarray:
    """Evaluation cubes: a seeded crop per stored crop (the target anywhere in the central block)."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(crops), 1, *CUBE), np.float32)
    for b, x in enumerate(crops):
        o = [int(rng.integers(0, s + 1)) for s in STRIDE]
        out[b, 0] = x[o[0]:o[0] + CUBE[0], o[1]:o[1] + CUBE[1], o[2]:o[2] + CUBE[2]]
    return out


def _logits(net, cubes: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    net.eval()
    res = []
    with torch.no_grad():
        for i in range(0, len(cubes), batch):
            res.append(net(torch.from_numpy(np.ascontiguousarray(cubes[i:i + batch]))).reshape(-1).numpy())
    return np.concatenate(res) if res else np.zeros(0)


def train_ct3d(data_root: str | Path | None, out: str | Path, *, max_minutes: float = 10.0, seed: int = 0,
               n_injections: int = 90, n_random: int = 240, val_injections: int = 30, val_random: int = 120,
               batch_size: int = 24, lr: float = 1e-3, weight_decay: float = 1e-4, removal_repeats: int = 2,
               manifest: str | Path | None = None,
               threads: int | None = 1, log=print) -> Path:
    """Train the CT patch model on forgeries of the train patient's series and write a checkpoint.

    ``data_root`` is ../shared/data (LIDC-IDRI series; None: ``$MEDFORENSICS_DATA`` or
    ../shared/data); patients are split by ``manifest`` (a forge dataset's manifest.csv) or
    :data:`DEFAULT_SPLITS`. Cubes of the train patient(s) train the network (Adam, balanced
    batches, augmented); cubes of the validation patient(s) choose the best step, give the
    validation AUC and fit the Platt calibration of the logit. The training loop
    (:func:`medforensics.learn.loop.fit`) stops after ``max_minutes``; ``threads`` torch CPU
    threads are used meanwhile; ``log(text)`` gets the progress lines. Returns ``out``, a new
    float16 safetensors checkpoint with its card. The command line runs it as
    ``medforensics train ct3d``.
    """
    from ..datapath import data_root as data_root_of
    from .loop import torch_threads

    data_root, out = data_root_of(data_root), Path(out)
    if out.exists():
        raise MedForensicsError(out, "already exists; choose a new name")
    with torch_threads(threads):
        return _train_ct3d(data_root, out, max_minutes=max_minutes, seed=seed, n_injections=n_injections,
                           n_random=n_random, val_injections=val_injections, val_random=val_random,
                           batch_size=batch_size, lr=lr, weight_decay=weight_decay, removal_repeats=removal_repeats,
                           manifest=manifest, threads=threads, log=log)


def _train_ct3d(data_root: Path, out: Path, *, max_minutes: float, seed: int, n_injections: int, n_random: int,
                val_injections: int, val_random: int, batch_size: int, lr: float, weight_decay: float,
                removal_repeats: int, manifest: str | Path | None, threads: int | None, log) -> Path:
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from .checkpoint import save_checkpoint
    from .loop import fit, seed_everything

    seed_everything(seed)
    t0 = time.time()
    splits = patient_splits(manifest)
    series = _series_by_patient(data_root)
    if not series:
        raise MedForensicsError(data_root, "no LIDC-IDRI CT series found under ct/lidc-idri*")
    by_split: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for p in sorted(series):
        if p in splits:
            by_split[splits[p]].append(p)
    if not by_split["train"] or not by_split["validation"]:
        raise MedForensicsError(data_root, f"need a train and a validation patient; found {by_split}")
    train, val = CubeSet(), CubeSet()
    for i, p in enumerate(by_split["train"]):
        train.extend(make_cubes(series[p], n_injections=n_injections, n_random=n_random, seed=seed * 10 + i,
                                 removal_repeats=removal_repeats))
    for i, p in enumerate(by_split["validation"]):
        val.extend(make_cubes(series[p], n_injections=val_injections, n_random=val_random, seed=seed * 10 + 5 + i,
                              removal_repeats=min(1, removal_repeats)))
    t_data = time.time() - t0
    log(f"cubes: train {train.counts()}, validation {val.counts()} ({t_data:.0f} s)")
    val_x = _centre_crops(val.crops, seed + 1)
    val_y = np.array(val.labels)
    y = np.array(train.labels)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    net = build_network()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    best = (-1.0, None, 0)
    losses, history = [], []
    t_train = time.time()

    def train_step(i: int) -> dict[str, float]:
        nonlocal best
        net.train()
        idx = np.concatenate([rng.choice(pos, batch_size // 2), rng.choice(neg, batch_size - batch_size // 2)])
        xb = torch.from_numpy(_augment([train.crops[i] for i in idx], rng))
        yb = torch.from_numpy(y[idx].astype(np.float32))
        loss = loss_fn(net(xb).reshape(-1), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step = i + 1
        if step % 100 == 0:
            auc = float(roc_auc_score(val_y, _logits(net, val_x)))
            history.append({"step": step, "loss": round(float(np.mean(losses[-100:])), 4), "val_auc": round(auc, 4)})
            log(f"step {step}: loss {np.mean(losses[-100:]):.3f}, validation AUC {auc:.3f}")
            if auc > best[0]:
                best = (auc, {k: v.detach().clone() for k, v in net.state_dict().items()}, step)
        return {"loss": losses[-1]}

    # no steps without a time budget; otherwise steps until it is spent
    step = fit(train_step, steps=0 if max_minutes <= 0 else None, max_minutes=max(max_minutes, 0.0),
               start=t_train, progress=False, desc="ct3d").steps_done
    if best[1] is not None:
        net.load_state_dict(best[1])
    logit = _logits(net, val_x)
    cal = LogisticRegression(C=1e4).fit(logit[:, None], val_y)
    a, b = float(cal.coef_[0, 0]), float(cal.intercept_[0])
    prob = 1.0 / (1.0 + np.exp(-(a * logit + b)))
    metrics = {"validation_auc": round(float(roc_auc_score(val_y, logit)), 4),
               "validation_accuracy_at_0.5": round(float(np.mean((prob >= 0.5) == val_y)), 4),
               "validation_auc_by_kind": {}, "best_step": best[2], "n_validation": int(len(val_y))}
    kinds = np.array(val.kinds)
    for k in ("inject", "remove"):
        m = (kinds == k) | (val_y == 0)
        if (kinds == k).any():
            metrics["validation_auc_by_kind"][k] = round(float(roc_auc_score(val_y[m], logit[m])), 4)
    card = {
        "architecture": ARCHITECTURE, "config": NET_CONFIG,
        "task": "CT patch (16x64x64 voxels) manipulated (tumour injected/removed) vs authentic",
        "input": {"cube": list(CUBE), "stride": list(STRIDE), "fine": list(FINE), "hu_window": list(HU_WINDOW),
                  "grid": "the series' own voxel grid, edge-padded"},
        "calibration": {"kind": "platt", "a": a, "b": b, "fitted_on": "validation cubes"},
        "data": {"data_root": card_data_root(),
                 "sources": sources_of([f for p in series for f in series[p].sources], data_root), "patients": by_split, "split_source": str(manifest or "DEFAULT_SPLITS"),
                 "series": {p: {"uid": series[p].uid, "shape": list(series[p].pixels.shape),
                                "spacing": [float(s) for s in series[p].spacing]} for p in series},
                 "train_cubes": train.counts(), "validation_cubes": val.counts(),
                 "forgeries": "medforensics.forge.ct.inject (classic and gan; solid, part-solid, ground-glass; 4-20 mm) "
                              "and remove (every LIDC nodule, classic and gan); negatives: random cubes of the scanned "
                              "region (lung dilated 10 mm) and cubes around real nodules of the untouched series"},
        "training": {"seed": seed, "optimizer": "Adam", "lr": lr, "weight_decay": weight_decay,
                     "batch_size": batch_size, "balanced_batches": True, "removal_repeats": removal_repeats,
                     "validation_injections": val_injections, "n_random": n_random, "loss": "BCEWithLogits",
                     "augmentation": "random crop (target anywhere in the central 8x32x32 block), flips on 3 axes, "
                                     "25% with 1-7 edge slices repeated (as at a series' end), gain +-3%, "
                                     "offset +-0.02, same for real and fake",
                     "steps": step, "max_minutes": max_minutes, "data_seconds": round(t_data, 1),
                     "train_seconds": round(time.time() - t_train, 1), "threads": threads, "history": history,
                     "command": f"medforensics train ct3d --data {data_root} --out {out.name} "
                                f"--minutes {max_minutes:g} --seed {seed} --injections {n_injections}"},
        "metrics": metrics,
    }
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    save_checkpoint(state, out, card)
    log(f"wrote {out}: validation AUC {metrics['validation_auc']} ({time.time() - t0:.0f} s in all)")
    return out


# ------------------------------------------------------------------------------------- scanning

_MODELS: dict[str, tuple[Any, dict[str, Any]]] = {}


def load_model(path: str | Path | None = None):
    """``(network in eval mode, card)`` from a checkpoint (default: the shipped one), once per process."""
    from .checkpoint import load_checkpoint, load_weights

    path = Path(path) if path is not None else default_checkpoint()
    key = str(path.resolve())
    if key not in _MODELS:
        state, card = load_checkpoint(path)
        if card.get("architecture") != ARCHITECTURE:
            raise MedForensicsError(path, f"not a CT patch model checkpoint (architecture {card.get('architecture')!r})")
        _MODELS[key] = (load_weights(build_network(card.get("config")), state, path), card)
    return _MODELS[key]


@dataclass
class SeriesScan:
    """A scan's result: probabilities per heatmap cell (:data:`FINE` voxels), regions and counts."""

    cells: np.ndarray
    regions: list[Region]
    score: float
    n_windows: int
    n_refined: int
    seconds: float
    lung_found: bool

    def heatmap(self, shape: Sequence[int]) -> np.ndarray:
        """The cell probabilities on the voxel grid of ``shape`` (float32)."""
        h = self.cells
        for ax, f in enumerate(FINE):
            h = np.repeat(h, f, axis=ax)
        return np.ascontiguousarray(h[: shape[0], : shape[1], : shape[2]], dtype=np.float32)


def _scan_lung_cells(image: Image, grid: tuple[int, int, int]) -> np.ndarray:
    """Heatmap cells that touch the region a scan covers (:func:`scan_region`)."""
    lung = scan_region(image)
    cells = np.zeros(grid, bool)
    f1, f2 = FINE[1] // 4, FINE[2] // 4
    idx = np.argwhere(lung)
    cells[idx[:, 0] // FINE[0], idx[:, 1] // f1, idx[:, 2] // f2] = True
    return cells


def scan(image: Image, *, model_path: str | Path | None = None, threshold: float = 0.5, refine_from: float = 0.2,
         max_refine: int = 8, batch: int = 32, model: tuple[Any, dict[str, Any]] | None = None) -> SeriesScan:
    """Scan a CT series: a coarse pass of windows at :data:`STRIDE` over the (dilated) lung, then a
    fine pass at :data:`FINE` around the ``max_refine`` most suspicious coarse blocks with a
    probability of ``refine_from`` or more. Each window's calibrated probability goes to its
    central block; regions are the connected cells at ``threshold`` or more. ``model`` is a
    ``(network, card)`` pair to use instead of the checkpoint at ``model_path``.
    """
    import torch

    from ..detectors.base import regions_from_heatmap

    if image.pixels.ndim != 3:
        raise MedForensicsError(image.path, "the CT patch model needs a 3D series")
    t0 = time.time()
    net, card = model if model is not None else load_model(model_path)
    cal = card.get("calibration", {"a": 1.0, "b": 0.0})
    vol = image.pixels
    shape = vol.shape
    grid = tuple(int(math.ceil(n / f)) for n, f in zip(shape, FINE))
    lung_cells = _scan_lung_cells(image, grid)
    cells = np.zeros(grid, np.float32)
    ratio = tuple(s // f for s, f in zip(STRIDE, FINE))  # fine cells per coarse block (2, 2, 2)

    def run(starts: list[tuple[int, ...]]) -> np.ndarray:
        res = []
        with torch.no_grad():
            for i in range(0, len(starts), batch):
                x = np.stack([window_hu(crop(vol, s, CUBE)) for s in starts[i:i + batch]])[:, None]
                res.append(net(torch.from_numpy(x)).reshape(-1).numpy())
        logit = np.concatenate(res) if res else np.zeros(0)
        return 1.0 / (1.0 + np.exp(-(cal["a"] * logit + cal["b"])))

    # coarse pass: block (a, b, c) covers fine cells ratio*(a, b, c) ... +ratio
    cgrid = tuple(int(math.ceil(g / r)) for g, r in zip(grid, ratio))
    blocks = []
    for a in range(cgrid[0]):
        for b in range(cgrid[1]):
            for c in range(cgrid[2]):
                if lung_cells[a * ratio[0]:(a + 1) * ratio[0], b * ratio[1]:(b + 1) * ratio[1], c * ratio[2]:(c + 1) * ratio[2]].any():
                    blocks.append((a, b, c))
    starts = [tuple(i * s - (n - s) // 2 for i, s, n in zip(blk, STRIDE, CUBE)) for blk in blocks]
    probs = run(starts)
    for (a, b, c), p in zip(blocks, probs):
        cells[a * ratio[0]:(a + 1) * ratio[0], b * ratio[1]:(b + 1) * ratio[1], c * ratio[2]:(c + 1) * ratio[2]] = p
    # fine pass around the most suspicious blocks: every fine cell of the block and a ring of one cell
    order = [i for i in np.argsort(-probs) if probs[i] >= refine_from][:max_refine]
    fine = set()
    for i in order:
        a, b, c = blocks[i]
        for p in range(a * ratio[0] - 1, (a + 1) * ratio[0] + 1):
            for q in range(b * ratio[1] - 1, (b + 1) * ratio[1] + 1):
                for r in range(c * ratio[2] - 1, (c + 1) * ratio[2] + 1):
                    if 0 <= p < grid[0] and 0 <= q < grid[1] and 0 <= r < grid[2]:
                        fine.add((p, q, r))
    fine_cells = sorted(fine)
    if fine_cells:
        fstarts = [tuple(i * f - (n - f) // 2 for i, f, n in zip(cell, FINE, CUBE)) for cell in fine_cells]
        fprobs = run(fstarts)
        for cell, p in zip(fine_cells, fprobs):
            cells[cell] = p
    regions = regions_from_heatmap(image, cells, threshold=threshold, scale=FINE, min_size=1,
                                   note="ct_patch3d: cube looks manipulated")
    return SeriesScan(cells=cells, regions=regions, score=float(cells.max()) if cells.size else 0.0,
                      n_windows=len(starts) + len(fine_cells), n_refined=len(fine_cells),
                      seconds=time.time() - t0, lung_found=bool(lung_cells.any()))


def scan_series(image: Image, *, model_path: str | Path | None = None, threshold: float = 0.5) -> tuple[np.ndarray, list[Region]]:
    """``(heatmap, regions)`` of a CT series: calibrated probabilities on the voxel grid of
    ``image.pixels`` (float32, same shape) and the regions at ``threshold`` or more, strongest first."""
    s = scan(image, model_path=model_path, threshold=threshold)
    return s.heatmap(image.pixels.shape), s.regions
