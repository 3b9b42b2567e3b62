"""An unsupervised detector's model: a denoising convolutional autoencoder trained on authentic images only.

The network (MONAI's :class:`monai.networks.nets.AutoEncoder`, 2D, no skip connections,
two stride-2 stages) learns to map a real patch -- with extra Gaussian noise added to its input --
back to the real patch. What it learns is what authentic anatomy plus acquisition noise looks
like at native resolution (no resizing: resampling would destroy the noise). Its residual
``r = x - AE(x)`` is then a learned noise-and-texture residual; regions that were in-painted,
smoothed, resampled, spliced from another image or synthesised leave a residual of another
level or another grain.

Statistics (:func:`block_features`): per block of ``b x b`` pixels of the residual's fine scale
(``r`` minus its 3x3 mean), ``log mean|r|`` (noise level) and the lag-1 autocorrelation (grain:
interpolation and smoothing correlate neighbouring residuals), each a z-score against held-out
authentic blocks of the same content (intensity x gradient bins). Each block is compared with
the image's own median (local term), and the image's medians with those of held-out authentic
images (global term), in units of spreads measured on held-out authentic images (the checkpoint
card's ``reference``). The raw statistic is the larger of the strongest local anomaly and the
global one; a logistic set on held-out authentic images only (``calibration``: the median maps
to 0.05, the 95th percentile to 0.2) makes it a score. No fake is seen in training or
calibration. Thumbnails below 128 px have their own reference and calibration.

Reproduce the shipped checkpoints (6 minutes each on one CPU thread)::

    medforensics train autoencoder ct   --data ../shared/data --out ae_ct.safetensors --minutes 6
    medforensics train autoencoder xray --data ../shared/data --out ae_xray.safetensors --minutes 6

or from Python, :func:`train_autoencoder` (``train_autoencoder("ct", None, "ae_ct.safetensors", max_minutes=6)``).

(``--manifest forge-ds/manifest.csv`` takes the split from a forge dataset instead of recomputing it;
for ``forge-ds``, built with seed 0, the two agree.)
"""
from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core import MedForensicsError
from ..datapath import card_data_root, sources_of
from ..noise import mad_sigma
from .calibration import CAL_TARGETS, fit_logistic, group_for, size_group
from .checkpoint import load_checkpoint, load_weights, save_checkpoint

KINDS = ("ct", "xray")
ARCHITECTURE = "monai.networks.nets.AutoEncoder"
#: CT display window (HU) mapped to [0, 1]; wide enough to keep air and bone noise unclipped.
CT_WINDOW = (-1150.0, 1350.0)
#: Radiograph percentiles mapped to [0, 1].
XR_PERCENTILES = (0.5, 99.5)
MODEL_CONFIG = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [16, 32],
                "strides": [2, 2], "num_res_units": 2, "norm": "BATCH"}
PATCH = 48
#: Content bins of the reference table: block mean (normalised) and block gradient (quantiles).
N_MEAN_BINS, N_GRAD_BINS = 8, 5
#: Standard deviation (in normalised units) of the extra noise added to training inputs: uniform in [0, this].
NOISE_MAX = 0.02
#: Least logistic scale: a few dozen held-out images do not pin the tail of the raw statistic.
SCALE_FLOOR = 1.0


# ------------------------------------------------------------------------------ model and inputs

def build_model(config: dict[str, Any] | None = None):
    """The autoencoder (MONAI ``AutoEncoder`` with :data:`MODEL_CONFIG` unless given)."""
    from monai.networks.nets import AutoEncoder

    cfg = dict(MODEL_CONFIG if config is None else config)
    cfg["channels"], cfg["strides"] = tuple(cfg["channels"]), tuple(cfg["strides"])
    return AutoEncoder(**cfg)


def normalise(plane: np.ndarray, kind: str) -> np.ndarray:
    """A 2D plane in physical units to the network's [0, 1] scale (CT: fixed HU window; X-ray:
    robust percentiles). Values are not clipped beyond a margin, so noise stays intact."""
    p = np.asarray(plane, dtype=np.float32)
    if kind == "ct":
        lo, hi = CT_WINDOW
    else:
        lo, hi = (float(v) for v in np.percentile(p[::2, ::2] if p.size > 4096 else p, XR_PERCENTILES))
        if hi - lo < 1e-6:
            hi = lo + 1.0
    return np.clip((p - lo) / (hi - lo), -0.05, 1.05).astype(np.float32)


def block_size(shape: tuple[int, ...]) -> int:
    """Side of the statistics blocks: 8 px below 128 px, 16 up to 1,024 px, 32 above."""
    m = min(shape[-2:])
    return 8 if m < 128 else (16 if m <= 1024 else 32)


def residual(model, x: np.ndarray) -> np.ndarray:
    """``x - AE(x)`` for a normalised 2D plane (padded by reflection to a multiple of 8)."""
    import torch

    h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    xp = np.pad(x, ((0, ph), (0, pw)), mode="reflect") if (ph or pw) else x
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(xp))[None, None]).numpy()[0, 0]
    return (xp - y)[:h, :w]


def block_features(x: np.ndarray, r: np.ndarray, b: int) -> dict[str, np.ndarray]:
    """Per ``b x b`` block of the residual's fine scale (``r`` minus its 3x3 mean): ``energy``
    (``log mean|r|``), ``corr`` (lag-1 autocorrelation),
    the content it is conditioned on (``mean`` of ``x``, ``grad``: log mean gradient of ``x``
    smoothed 3x3), and ``valid``: not flat or saturated (at most a quarter of its pixels at the
    ends of the normalised range, and some residual at all).
    """
    import cv2

    gh, gw = x.shape[0] // b, x.shape[1] // b
    xs = x[:gh * b, :gw * b]
    r = np.asarray(r, dtype=np.float32)
    r = r - cv2.blur(r, (3, 3))  # the fine scale: noise and grain, not the decoder's coarse error
    rs = r[:gh * b, :gw * b].astype(np.float64)

    def blk(a: np.ndarray) -> np.ndarray:
        return a.reshape(gh, b, gw, b).sum(axis=(1, 3))

    n = float(b * b)
    energy = blk(np.abs(rs)) / n
    r2 = blk(rs * rs) + 1e-12
    ch = np.pad(rs[:, 1:] * rs[:, :-1], ((0, 0), (0, 1)))
    cv = np.pad(rs[1:, :] * rs[:-1, :], ((0, 1), (0, 0)))
    corr = 0.5 * (blk(ch) + blk(cv)) / r2
    sm = cv2.blur(np.ascontiguousarray(xs, dtype=np.float32), (3, 3))
    g = np.abs(cv2.Sobel(sm, cv2.CV_32F, 1, 0, ksize=3)) + np.abs(cv2.Sobel(sm, cv2.CV_32F, 0, 1, ksize=3))
    sat = blk(((xs <= 0.002) | (xs >= 0.998)).astype(np.float64)) / n
    valid = (sat <= 0.25) & (energy > 1e-5)
    return {"energy": np.log(energy + 1e-6).astype(np.float32), "corr": corr.astype(np.float32),
            "mean": (blk(xs.astype(np.float64)) / n).astype(np.float32),
            "grad": np.log(blk(g.astype(np.float64)) / n + 1e-4).astype(np.float32), "valid": valid, "block": b}


def body_mask(plane: np.ndarray) -> np.ndarray:
    """CT: the patient's body (the largest connected region above -500 HU, holes -- the lungs --
    filled), so that the table, the air around and the reconstruction circle are left out."""
    from scipy import ndimage

    m = np.asarray(plane) > -500
    lab, n = ndimage.label(m)
    if n == 0:
        return np.ones(m.shape, bool)
    sizes = ndimage.sum_labels(m, lab, np.arange(1, n + 1))
    return ndimage.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))


def plane_stats(model, plane: np.ndarray, kind: str) -> dict[str, Any]:
    """Block features (:func:`block_features`) of one 2D plane in physical units; for CT only
    blocks at least half inside the body (:func:`body_mask`) are valid."""
    x = normalise(plane, kind)
    st = block_features(x, residual(model, x), block_size(x.shape))
    if kind == "ct":
        _restrict_to_body(st, np.asarray(plane))
    return st


def _restrict_to_body(st: dict[str, Any], plane: np.ndarray) -> None:
    b = st["block"]
    gh, gw = st["valid"].shape
    body = body_mask(plane)[:gh * b, :gw * b].reshape(gh, b, gw, b).mean(axis=(1, 3))
    st["valid"] &= body >= 0.5


def _bins(st: dict[str, Any], ref: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    mb = np.clip(((st["mean"] + 0.05) / 1.1 * N_MEAN_BINS).astype(int), 0, N_MEAN_BINS - 1)
    gb = np.searchsorted(np.asarray(ref["grad_edges"]), st["grad"])
    return mb, gb


def conditional_deviation(st: dict[str, Any], ref: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Each block's residual level and grain as z-scores against held-out authentic blocks of the
    same content (intensity bin x gradient bin: the card's ``reference`` table); 0 where invalid."""
    mb, gb = _bins(st, ref)
    de = (st["energy"] - np.asarray(ref["energy_med"])[mb, gb]) / np.asarray(ref["energy_sd"])[mb, gb]
    dc = (st["corr"] - np.asarray(ref["corr_med"])[mb, gb]) / np.asarray(ref["corr_sd"])[mb, gb]
    de[~st["valid"]], dc[~st["valid"]] = 0.0, 0.0
    return de.astype(np.float32), dc.astype(np.float32)


def _offsets(de: np.ndarray, dc: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    if valid.sum() < 4:
        return float("nan"), float("nan")
    return float(np.median(de[valid])), float(np.median(dc[valid]))


def _smooth(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over 2x2 blocks of the valid ones (an edit covers several blocks)."""
    if min(a.shape) < 2:
        return a
    w = valid.astype(np.float32)
    ap, wp = np.pad(a * w, ((0, 1), (0, 1)), mode="edge"), np.pad(w, ((0, 1), (0, 1)), mode="edge")
    num = ap[:-1, :-1] + ap[1:, :-1] + ap[:-1, 1:] + ap[1:, 1:]
    den = wp[:-1, :-1] + wp[1:, :-1] + wp[:-1, 1:] + wp[1:, 1:]
    return np.where(den > 0, num / np.maximum(den, 1e-6), 0.0).astype(np.float32)


def _local(st: dict[str, Any], ref: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, float, float]:
    de, dc = conditional_deviation(st, ref)
    oe, oc = _offsets(de, dc, st["valid"])
    if not np.isfinite(oe):
        z = np.zeros_like(de)
        return z, z, oe, oc
    se, sc = _smooth(de - oe, st["valid"]), _smooth(dc - oc, st["valid"])
    se[~st["valid"]], sc[~st["valid"]] = 0.0, 0.0
    return se, sc, oe, oc


def score_plane(st: dict[str, Any], ref: dict[str, Any]) -> tuple[np.ndarray, float, float]:
    """``(anomaly map, energy offset, grain offset)`` of one plane.

    The map is the local anomaly per block: the deviation from the image's own offset, smoothed
    over 2x2 blocks, in units of its spread on held-out authentic images. The offsets are the
    image's median deviation (a dose or scanner shift; compared by :func:`global_z`).
    """
    se, sc, oe, oc = _local(st, ref)
    z = np.hypot(se / ref["local_sd_energy"], sc / ref["local_sd_corr"]).astype(np.float32)
    ring = 2 if min(z.shape) >= 12 else (1 if min(z.shape) >= 6 else 0)
    if ring:  # the outermost rings: collimation edges, labels, padding
        z[:ring, :] = z[-ring:, :] = z[:, :ring] = z[:, -ring:] = 0.0
    return z, oe, oc


def global_z(oe: float, oc: float, ref: dict[str, Any]) -> float:
    """How far an image's median residual level and grain lie from held-out authentic images."""
    if not (np.isfinite(oe) and np.isfinite(oc)):
        return 0.0
    return float(math.hypot((oe - ref["global_med_energy"]) / ref["global_sd_energy"],
                            (oc - ref["global_med_corr"]) / ref["global_sd_corr"]))


def local_peak(z: np.ndarray) -> float:
    """Strongest local anomaly: the largest smoothed block value."""
    return float(z.max()) if z.size else 0.0


def raw_statistic(local_peak: float, gz: float) -> float:
    """The raw image statistic: the stronger of the local and the global anomaly."""
    return float(max(local_peak, gz))


# ------------------------------------------------------------------------------ data

def _read_manifest_splits(manifest: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(manifest, newline="") as fh:
            for row in csv.DictReader(fh):
                out[row["patient_id"]] = row["split"]
    except (OSError, KeyError, csv.Error) as e:
        raise MedForensicsError(manifest, f"cannot read the patient split from the manifest ({e})") from None
    if not out:
        raise MedForensicsError(manifest, "manifest has no rows")
    return out


def authentic_sources(kind: str, data_root: str | Path, manifest: str | Path | None = None, seed: int = 0):
    """The real inputs of ``kind`` under ``data_root`` with their forge split (patient-disjoint).

    The split comes from ``manifest`` (a forge dataset's ``manifest.csv``) when given, else from
    :func:`medforensics.forge.dataset.assign_splits` with the forge dataset's defaults and
    ``seed``: the same patient -> split assignment as ``forge dataset --seed SEED``. Returns
    ``(sources, split_of_patient, how)``. Patients unknown to the manifest are left out.
    """
    from ..forge.dataset import DatasetConfig, assign_splits, inventory

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    srcs = inventory(data_root)
    if manifest is not None:
        splits = _read_manifest_splits(Path(manifest))
        how = f"manifest {manifest}"
    else:
        splits = assign_splits(srcs, DatasetConfig().fractions, seed)
        how = f"forge assign_splits(seed={seed}, fractions={DatasetConfig().fractions})"
    keep = []
    for s in srcs:
        is_ct = s.dataset in ("lidc-idri", "dcmqi", "tcia-covid19-ny-sbu")
        if (kind == "ct") == is_ct and s.patient_id in splits:
            keep.append(s)
    return keep, splits, how


def _planes(src, kind: str, stride: int = 1) -> Iterator[np.ndarray]:
    from ..io import load_instance, load_raster, load_series

    if src.kind == "ct-series":
        vol = load_series(src.files).pixels
        for k in range(0, vol.shape[0], stride):
            yield vol[k]
        return
    f = src.files[0]
    img = load_instance(f) if f.suffix.lower() == ".dcm" else load_raster(f)
    yield img.slice2d()


def _load_planes(sources, kind: str, stride: int = 1) -> list[np.ndarray]:
    out = []
    for s in sources:
        try:
            out.extend(normalise(p, kind) for p in _planes(s, kind, stride))
        except MedForensicsError as e:
            print(f"skipped: {e}", file=sys.stderr)
    return out


def _patch_sampler(planes: list[np.ndarray], rng: np.random.Generator, patch: int):
    """Random native-resolution patches, not flat or saturated, weighted by plane area."""
    usable = [p for p in planes if min(p.shape) >= patch]
    if not usable:
        raise MedForensicsError(None, f"no authentic image is at least {patch} px on a side")
    w = np.array([math.sqrt(p.size) for p in usable])
    w /= w.sum()

    def sample(n: int) -> np.ndarray:
        out = np.empty((n, 1, patch, patch), np.float32)
        i = 0
        while i < n:
            p = usable[rng.choice(len(usable), p=w)]
            r0 = rng.integers(0, p.shape[0] - patch + 1)
            c0 = rng.integers(0, p.shape[1] - patch + 1)
            q = p[r0:r0 + patch, c0:c0 + patch]
            if np.mean((q <= 0.002) | (q >= 0.998)) > 0.25 or q.std() < 1e-4:
                continue
            if rng.random() < 0.5:
                q = q[:, ::-1]
            out[i, 0] = q
            i += 1
        return out

    return sample


# ------------------------------------------------------------------------------ training

def _rsd(a: np.ndarray, floor: float = 1e-3) -> float:
    return float(max(mad_sigma(np.asarray(a, dtype=np.float64)), floor))


def reference_for(card: dict[str, Any], shape: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(reference, calibration)`` of a card for an image of ``shape`` (the other size group's
    when the card has none for this one)."""
    g = group_for(card["reference"], shape)
    return card["reference"][g], card["calibration"][g]


def reference_statistics(model, planes: list[np.ndarray], kind: str) -> dict[str, Any]:
    """Reference statistics and calibration per size group (:func:`size_group`) of held-out
    authentic planes: ``{"reference": {group: ...}, "calibration": {group: ...}}``."""
    groups: dict[str, list[np.ndarray]] = {}
    for x in planes:
        groups.setdefault(size_group(x.shape), []).append(x)
    out: dict[str, Any] = {"reference": {}, "calibration": {}}
    for g, xs in sorted(groups.items()):
        if len(xs) < 3:
            continue
        r = _reference_group(model, xs, kind)
        out["reference"][g], out["calibration"][g] = r["reference"], r["calibration"]
    if not out["reference"]:
        raise MedForensicsError(None, f"too few held-out authentic {kind} images ({len(planes)}) for reference statistics")
    return out


def _reference_group(model, planes: list[np.ndarray], kind: str) -> dict[str, Any]:
    """The card's ``reference`` (block statistics of held-out authentic planes, normalised already:
    a table of medians and spreads per intensity x gradient bin, local and global spreads) and
    ``calibration`` (logistic set on the same planes' raw statistics)."""
    model.eval()
    sts = []
    for x in planes:
        st = block_features(x, residual(model, x), block_size(x.shape))
        if kind == "ct":
            _restrict_to_body(st, x * (CT_WINDOW[1] - CT_WINDOW[0]) + CT_WINDOW[0])
        if st["valid"].sum() >= 4:
            sts.append(st)
    if len(sts) < 3:
        raise MedForensicsError(None, f"too few held-out authentic {kind} images ({len(sts)}) for reference statistics")
    cat = {k: np.concatenate([st[k][st["valid"]] for st in sts]) for k in ("energy", "corr", "mean", "grad")}
    ref: dict[str, Any] = {"grad_edges": [round(float(v), 4) for v in
                                          np.percentile(cat["grad"], np.linspace(0, 100, N_GRAD_BINS + 1)[1:-1])]}
    mb, gb = _bins(cat, ref)
    for key in ("energy", "corr"):
        med = np.full((N_MEAN_BINS, N_GRAD_BINS), float(np.median(cat[key])))
        sd = np.full((N_MEAN_BINS, N_GRAD_BINS), _rsd(cat[key]))
        for i in range(N_MEAN_BINS):
            for j in range(N_GRAD_BINS):
                sel = cat[key][(mb == i) & (gb == j)]
                if sel.size >= 30:
                    med[i, j], sd[i, j] = float(np.median(sel)), _rsd(sel, 0.02)
        ref[f"{key}_med"] = np.round(med, 4).tolist()
        ref[f"{key}_sd"] = np.round(sd, 4).tolist()
    ref["local_sd_energy"] = ref["local_sd_corr"] = 1.0
    locs = [_local(st, ref) for st in sts]
    ref["local_sd_energy"] = _rsd(np.concatenate([l[0][st["valid"]] for l, st in zip(locs, sts)]), 0.05)
    ref["local_sd_corr"] = _rsd(np.concatenate([l[1][st["valid"]] for l, st in zip(locs, sts)]), 0.05)
    oes, ocs = np.array([l[2] for l in locs]), np.array([l[3] for l in locs])
    ref.update({"global_med_energy": float(np.median(oes)), "global_sd_energy": _rsd(oes, 0.05),
                "global_med_corr": float(np.median(ocs)), "global_sd_corr": _rsd(ocs, 0.05)})
    raws = []
    for st in sts:
        z, oe, oc = score_plane(st, ref)
        raws.append(raw_statistic(local_peak(z), global_z(oe, oc, ref)))
    ref["n_images"] = len(sts)
    ref["n_blocks"] = int(cat["energy"].size)
    cal = fit_logistic(raws, targets=CAL_TARGETS, scale_floor=SCALE_FLOOR)
    return {"reference": {k: (round(v, 5) if isinstance(v, float) else v) for k, v in ref.items()},
            "calibration": cal}


def train_autoencoder(kind: str, data_root: str | Path | None, out: str | Path, *, max_minutes: float = 8.0,
                      seed: int = 0, manifest: str | Path | None = None, batch: int = 32, patch: int = PATCH,
                      max_steps: int | None = None, model_config: dict[str, Any] | None = None,
                      half: bool = True, max_images: int | None = None, log=None) -> Path:
    """Train the denoising autoencoder for ``kind`` (``ct`` or ``xray``) on authentic images of the
    forge dataset's *train* patients only; set its reference statistics and calibration on the
    *validation* patients; write a new safetensors checkpoint ``out`` (float16 if ``half``).

    ``data_root`` None is ``$MEDFORENSICS_DATA`` or ../shared/data. Runs on one CPU thread for at
    most ``max_minutes`` (or ``max_steps``) in :func:`medforensics.learn.loop.fit`; ``max_images``
    draws at most that many sources per split (for quick runs); ``log(text)`` gets the progress
    lines (default: stderr). Returns ``out``. The command line runs it as
    ``medforensics train autoencoder``.
    """

    from ..datapath import data_root as data_root_of
    from .loop import torch_threads

    data_root = data_root_of(data_root)
    out = Path(out)
    if out.exists():
        raise MedForensicsError(out, "already exists; choose a new name")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    with torch_threads(1):
        return _train_autoencoder(kind, data_root, out, max_minutes=max_minutes, seed=seed, manifest=manifest,
                                  batch=batch, patch=patch, max_steps=max_steps, model_config=model_config, half=half,
                                  max_images=max_images, log=log)


def _train_autoencoder(kind: str, data_root: Path, out: Path, *, max_minutes: float, seed: int,
                       manifest: str | Path | None, batch: int, patch: int, max_steps: int | None,
                       model_config: dict[str, Any] | None, half: bool, max_images: int | None, log) -> Path:
    import torch

    from .loop import fit, seed_everything

    say = log or (lambda m: print(m, file=sys.stderr))
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    t0 = time.time()
    sources, splits, how = authentic_sources(kind, data_root, manifest, seed)
    train_src = [s for s in sources if splits[s.patient_id] == "train"]
    val_src = [s for s in sources if splits[s.patient_id] == "validation"]
    if not train_src or not val_src:
        raise MedForensicsError(data_root, f"no authentic {kind} images of train and validation patients found")
    if max_images:
        train_src = [train_src[i] for i in sorted(rng.permutation(len(train_src))[:max_images])]
        val_src = [val_src[i] for i in sorted(rng.permutation(len(val_src))[:max_images])]
    train_planes = _load_planes(train_src, kind)
    val_planes = _load_planes(val_src, kind, stride=2)
    patch = min(patch, min(min(p.shape) for p in train_planes if min(p.shape) >= 16))
    patch -= patch % 8
    sample = _patch_sampler(train_planes, rng, patch)
    val_sample = _patch_sampler(val_planes, np.random.default_rng(seed + 1), patch)
    val_batch = val_sample(256)
    say(f"{kind}: {len(train_planes)} train planes from {len({s.patient_id for s in train_src})} patients, "
        f"{len(val_planes)} validation planes; loading took {time.time() - t0:.0f} s")

    model = build_model(model_config)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            xb = torch.from_numpy(val_batch)
            return float(torch.mean((model(xb) - xb) ** 2))

    loss0 = val_loss()
    model.train()
    t1, losses = time.time(), []
    deadline = t1 + 60.0 * max_minutes

    def train_step(i: int) -> dict[str, float]:
        xb = torch.from_numpy(sample(batch))
        sig = torch.rand(batch, 1, 1, 1) * NOISE_MAX
        pred = model(xb + sig * torch.randn_like(xb))
        loss = torch.mean((pred - xb) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        steps = i + 1
        late = (max_steps is not None and steps >= 0.8 * max_steps) or time.time() > t1 + 0.8 * (deadline - t1)
        if late and opt.param_groups[0]["lr"] > 3e-4:
            for g in opt.param_groups:
                g["lr"] = 3e-4
        if steps % 500 == 0:
            say(f"  step {steps}: train loss {np.mean(losses[-500:]):.3g}")
        return {"mse": losses[-1]}

    # a step budget (max_steps) and a time budget (max_minutes); no time at all: no steps
    steps = fit(train_step, steps=0 if max_minutes <= 0 else max_steps, max_minutes=max(max_minutes, 0.0),
                start=t1, progress=False, desc=f"autoencoder {kind}").steps_done
    model.eval()
    loss1 = val_loss()
    say(f"{kind}: {steps} steps in {time.time() - t1:.0f} s; held-out reconstruction MSE {loss0:.3g} -> {loss1:.3g}")
    stats = reference_statistics(model, val_planes, kind)
    card = {
        "architecture": ARCHITECTURE,
        "config": dict(MODEL_CONFIG if model_config is None else model_config),
        "task": "unsupervised: denoising autoencoder; reconstruction residual of authentic images",
        "kind": kind,
        "normalisation": ({"ct_window_hu": list(CT_WINDOW)} if kind == "ct" else {"percentiles": list(XR_PERCENTILES)}),
        "data": {
            "authentic_only": True,
            "data_root": card_data_root(),
            "sources": sources_of([f for s in (*train_src, *val_src) for f in s.files], data_root),
            "split_from": how,
            "train_patients": sorted({s.patient_id for s in train_src}),
            "reference_patients": sorted({s.patient_id for s in val_src}),
            "train_planes": len(train_planes),
            "reference_planes": len(val_planes),
            "datasets": sorted({s.dataset for s in train_src}),
            "note": "only real images of the forge dataset's train patients were used for training; its validation "
                    "patients for the reference statistics and calibration; no test patient and no fake was seen",
        },
        "training": {"steps": steps, "batch": batch, "patch": patch, "optimizer": "Adam", "lr": [1e-3, 3e-4],
                     "loss": "MSE to the clean patch", "input_noise_sd_max": NOISE_MAX, "seed": seed,
                     "threads": 1, "minutes": round((time.time() - t1) / 60, 2)},
        "metrics": {"heldout_mse_before": loss0, "heldout_mse_after": loss1,
                    "train_loss_first100": float(np.mean(losses[:100])) if losses else None,
                    "train_loss_last100": float(np.mean(losses[-100:])) if losses else None},
        **stats,
    }
    state = model.state_dict()
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    save_checkpoint(state, out, card)
    return out


def load_autoencoder(path: str | Path):
    """``(model, card)`` from a checkpoint written by :func:`train_autoencoder`; the model in eval mode.

    Raises :class:`MedForensicsError` naming the file when it is damaged or not such a checkpoint.
    """
    state, card = load_checkpoint(path)
    if card.get("architecture") != ARCHITECTURE or card.get("kind") not in KINDS:
        raise MedForensicsError(path, "not an autoencoder checkpoint (its model card names another model)")
    for key in ("reference", "calibration"):
        if key not in card:
            raise MedForensicsError(path, f"autoencoder checkpoint has no {key} statistics in its model card")
    return load_weights(build_model(card.get("config")), state, path), card
