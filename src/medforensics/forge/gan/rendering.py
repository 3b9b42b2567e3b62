"""Rendering with the in-painting generator: the low-pass that defines a sketch
(:func:`lowpass`), loading the shipped or a trained model (:func:`load_model`) and :func:`render`,
which runs the network on a region of any size and keeps its noise level and low-pass in check."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...core import MedForensicsError
from ...noise import mad_sigma

__all__ = ["render", "lowpass", "load_model", "default_model_path", "SIGMA_3D", "SIGMA_2D", "CT_RANGE"]

#: Gaussian sigmas (voxels) that define the sketch: (slices, rows, cols) for 3D, (rows, cols) for 2D.
SIGMA_3D = (0.5, 1.0, 1.0)
SIGMA_2D = (1.0, 1.0)
_TRUNCATE = 3.0
#: Fixed HU window of the CT model: values are clipped to it and scaled to about [-1, 1].
CT_RANGE = (-1200.0, 600.0)
_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
_DEFAULT_FILES = {3: "inpaint3d_ct.safetensors", 2: "inpaint2d_xray.safetensors"}
_CACHE: dict[Any, Any] = {}

#: Largest region (voxels) the network processes in one piece; bigger regions are tiled.
_MAX_TILE_VOXELS = 2 ** 21
#: Noise-level guard: the generated high-pass std is kept within this factor range of the ring's.
_GUARD = (0.87, 1.15)

# --------------------------------------------------------------------------------------------
# The low-pass that defines a sketch
# --------------------------------------------------------------------------------------------

def _sigma(ndim: int) -> tuple[float, ...]:
    return SIGMA_3D if ndim == 3 else SIGMA_2D


def lowpass(x: np.ndarray) -> np.ndarray:
    """The low-pass that defines a sketch: a Gaussian blur with sigma 1 voxel in-plane and 0.5
    across slices (3D) or 1 pixel (2D), edges extended (``mode='nearest'``), float32.

    Build a sketch as ``lowpass(desired_content)``; :func:`render` makes content whose
    ``lowpass`` follows it inside the mask."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise MedForensicsError(None, f"lowpass needs a 2D or 3D array, got shape {x.shape}")
    return gaussian_filter(x, sigma=_sigma(x.ndim), mode="nearest", truncate=_TRUNCATE).astype(np.float32)


def _gauss_kernel1d(sigma: float):
    import torch

    radius = int(_TRUNCATE * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur_t(x, sigma: Sequence[float], exact: bool = True):
    """Separable Gaussian blur of a (B, C, *spatial) tensor. ``exact``: edges replicated, as
    :func:`lowpass`; else zero-padded (faster; for losses that compare two blurs alike)."""
    import torch.nn.functional as F

    nd = x.dim() - 2
    b, c = x.shape[:2]
    y = x.contiguous().reshape(b * c, 1, *x.shape[2:])
    conv = F.conv3d if nd == 3 else F.conv2d
    for ax, s in enumerate(sigma):
        if s <= 0:
            continue
        k = _gauss_kernel1d(s).to(x.device, x.dtype)
        r = (k.numel() - 1) // 2
        shape = [1, 1] + [1] * nd
        shape[2 + ax] = k.numel()
        if exact:
            pad = [0, 0] * nd
            # F.pad takes pads from the last axis backwards.
            pad[2 * (nd - 1 - ax)] = r
            pad[2 * (nd - 1 - ax) + 1] = r
            y = conv(F.pad(y, pad, mode="replicate"), k.reshape(shape))
        else:
            padding = [0] * nd
            padding[ax] = r
            y = conv(y, k.reshape(shape), padding=tuple(padding))
    return y.reshape(b, c, *x.shape[2:])


def _torch():
    import torch
    return torch


# --------------------------------------------------------------------------------------------
# Normalisation: fixed HU window for CT, robust statistics of the context for radiographs
# --------------------------------------------------------------------------------------------

def _norm_params(kind: str, context: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(centre, half_range)``: normalised = (x - centre) / half_range."""
    if kind == "ct_hu":
        lo, hi = CT_RANGE
        return (lo + hi) / 2.0, (hi - lo) / 2.0
    vals = context[~mask] if (~mask).any() else context.ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(vals, [1.0, 99.0])
    amax = float(np.max(np.abs(vals)))
    half = max((hi - lo) / 2.0, 1e-3 * amax, 1e-6)
    return float((lo + hi) / 2.0), float(half)


def _normalise(kind: str, x: np.ndarray, centre: float, half: float) -> np.ndarray:
    if kind == "ct_hu":
        x = np.clip(x, *CT_RANGE)
    return ((x - centre) / half).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Loading models
# --------------------------------------------------------------------------------------------

def default_model_path(dim: int) -> Path:
    """Where the shipped checkpoint for ``dim`` (3: CT cubes, 2: radiograph patches) lives."""
    if dim not in _DEFAULT_FILES:
        raise MedForensicsError(None, f"no in-painting model for {dim}D arrays (2D and 3D only)")
    return _MODELS_DIR / _DEFAULT_FILES[dim]


def load_model(dim: int, path: str | Path | None = None):
    """The in-painting generator for ``dim``-D arrays, in eval mode, on CPU, with its model card
    as ``model.card``. ``path=None`` loads the shipped checkpoint; models are cached."""
    from ...learn.checkpoint import load_checkpoint, load_weights
    from .nets import InpaintUNet

    if dim not in (2, 3):
        raise MedForensicsError(None, f"no in-painting model for {dim}D arrays (2D and 3D only)")
    p = Path(path) if path is not None else default_model_path(dim)
    if not p.is_file():
        hint = "" if path is not None else "; train one with: medforensics forge train-gan"
        raise MedForensicsError(p, f"in-painting model not found{hint}")
    key = (dim, str(p.resolve()), p.stat().st_mtime_ns)
    if key in _CACHE:
        return _CACHE[key]
    state, card = load_checkpoint(p)
    if card.get("architecture") != "InpaintUNet":
        raise MedForensicsError(p, f"not an in-painting generator checkpoint (architecture {card.get('architecture')!r})")
    cfg = dict(card.get("config") or {})
    if int(cfg.get("dim", -1)) != dim:
        raise MedForensicsError(p, f"checkpoint holds a {cfg.get('dim')}D model, a {dim}D one is needed")
    model = InpaintUNet(dim=dim, width=int(cfg["width"]), levels=int(cfg["levels"]))
    load_weights(model, state, p)
    model.card = card
    model.norm = card.get("normalization", {"kind": "ct_hu" if dim == 3 else "robust"}).get("kind")
    _CACHE[key] = model
    return model


# --------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------

def _validate(context, mask, sketch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    context = np.asarray(context)
    mask = np.asarray(mask)
    sketch = np.asarray(sketch)
    if context.ndim not in (2, 3):
        raise MedForensicsError(None, f"render needs a 2D patch or a 3D cube, got an array of shape {context.shape}")
    if mask.shape != context.shape or sketch.shape != context.shape:
        raise MedForensicsError(None, f"context {context.shape}, mask {mask.shape} and sketch {sketch.shape} "
                                      "must have the same shape")
    if mask.dtype != bool:
        if not np.isin(np.unique(mask), (0, 1)).all():
            raise MedForensicsError(None, "mask must be boolean (or 0/1)")
        mask = mask.astype(bool)
    if not np.issubdtype(context.dtype, np.number) or not np.issubdtype(sketch.dtype, np.number):
        raise MedForensicsError(None, "context and sketch must be numeric arrays")
    if min(context.shape) < 2:
        raise MedForensicsError(None, f"array of shape {context.shape} is too small to in-paint")
    if not np.isfinite(context).all():
        raise MedForensicsError(None, "context has NaN or infinite values")
    if mask.any() and not np.isfinite(sketch[mask]).all():
        raise MedForensicsError(None, "sketch has NaN or infinite values inside the mask")
    return context, mask, sketch


def _bbox(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - np.array(margin), 0)
    hi = np.minimum(idx.max(0) + 1 + np.array(margin), mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _run_network(model, inp: np.ndarray, seed: int) -> np.ndarray:
    """Run the generator on a (C, *spatial) array of any size: pad to the network's multiple
    (edge values), tile regions larger than :data:`_MAX_TILE_VOXELS` with overlapping margins."""
    torch = _torch()
    spatial = inp.shape[1:]
    mult = np.array(model.multiple)
    # Tiles: along each axis, cores of at most `core` voxels with `halo` voxels of context each side.
    dim = len(spatial)
    halo = np.array([4, 16, 16] if dim == 3 else [32, 32])
    n_vox = int(np.prod(spatial))
    if n_vox <= _MAX_TILE_VOXELS:
        cores = [tuple(slice(0, s) for s in spatial)]
    else:
        core = np.array([32, 128, 128] if dim == 3 else [1024, 1024])
        ranges = [[slice(a, min(a + c, s)) for a in range(0, s, c)] for s, c in zip(spatial, core)]
        import itertools
        cores = list(itertools.product(*ranges))
    out = np.empty(spatial, np.float32)
    seed = int(seed) % (2 ** 63)
    gen = torch.Generator().manual_seed(seed)
    # One noise map for the whole region, so tiles agree where they overlap.
    rng = np.random.default_rng(seed)
    inp = inp.copy()
    inp[3] = rng.standard_normal(spatial).astype(np.float32)
    device = next(model.parameters()).device
    for core in cores:
        lo = np.array([max(c.start - (h if len(cores) > 1 else 0), 0) for c, h in zip(core, halo)])
        hi = np.array([min(c.stop + (h if len(cores) > 1 else 0), s) for c, h, s in zip(core, halo, spatial)])
        tile = inp[(slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))]
        size = hi - lo
        padded = ((size + mult - 1) // mult) * mult
        pad = [(0, 0)] + [(0, int(p - s)) for p, s in zip(padded, size)]
        tile = np.pad(tile, pad, mode="edge")
        with torch.no_grad():
            y = model(torch.from_numpy(np.ascontiguousarray(tile))[None].to(device), generator=gen)
        y = y[0, 0].cpu().numpy()
        crop = tuple(slice(c.start - a, c.stop - a) for c, a in zip(core, lo))
        out[core] = y[crop]
    return out


def _robust_std(x: np.ndarray) -> float:
    if x.size == 0:
        return 0.0
    return mad_sigma(x)


def _highpass_ratio(result: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Robust std of the high-pass inside the mask and in a ring around it."""
    from scipy.ndimage import binary_dilation, binary_erosion

    hp = result.astype(np.float32) - lowpass(result)
    ring_w = (1, 3, 3) if mask.ndim == 3 else (3, 3)
    st = np.ones(tuple(2 * w + 1 for w in ring_w), bool)
    ring = binary_dilation(mask, st) & ~mask
    inner = binary_erosion(mask, np.ones((1, 3, 3) if mask.ndim == 3 else (3, 3), bool))
    if inner.sum() < 8:
        inner = mask
    return _robust_std(hp[inner]), _robust_std(hp[ring])


def _render(context, mask, sketch, *, seed: int = 0, model=None, match_noise: bool = True,
            project: bool = True) -> np.ndarray:
    """:func:`render` with the two post-steps switchable (for tests and measurements)."""
    context, mask, sketch = _validate(context, mask, sketch)
    out = np.array(context, copy=True)
    if not mask.any():
        return out
    dim = context.ndim
    if model is None:
        model = load_model(dim)
    elif isinstance(model, (str, Path)):
        model = load_model(dim, model)
    if getattr(model, "dim", dim) != dim:
        raise MedForensicsError(None, f"a {model.dim}D model cannot render a {dim}D array")
    kind = getattr(model, "norm", "ct_hu" if dim == 3 else "robust")

    margin = (4, 16, 16) if dim == 3 else (24, 24)
    box = _bbox(mask, margin)
    ctx = context[box].astype(np.float64)
    m = mask[box]
    sk = np.where(m, sketch[box], 0.0).astype(np.float64)
    centre, half = _norm_params(kind, ctx, m)
    ctx_n = _normalise(kind, ctx, centre, half)
    sk_n = _normalise(kind, sk, centre, half)
    mf = m.astype(np.float32)
    inp = np.stack([ctx_n * (1 - mf), mf, sk_n * mf, np.zeros_like(mf)])
    y = _run_network(model, inp, seed).astype(np.float64) * half + centre

    comp = np.where(m, y, ctx)
    if match_noise:
        # Guard on the noise level: keep the generated high-pass within GUARD of the ring around.
        g, r = _highpass_ratio(comp, m)
        if g > 0 and r > 0:
            ratio = g / r
            target = min(max(ratio, _GUARD[0]), _GUARD[1])
            if abs(target - ratio) > 1e-6:
                low = lowpass(comp)
                comp = np.where(m, low + (comp - low) * (target / ratio), ctx)
    if project:
        # Low-pass projection: nudge the content so that its blur follows the sketch (Richardson steps).
        for _ in range(4):
            err = sk - lowpass(comp)
            comp = np.where(m, comp + err, ctx)
    res = out[box]
    res[m] = comp[m].astype(out.dtype) if np.issubdtype(out.dtype, np.floating) else \
        np.clip(np.rint(comp[m]), np.iinfo(out.dtype).min, np.iinfo(out.dtype).max).astype(out.dtype)
    out[box] = res
    return out


def render(context: np.ndarray, mask: np.ndarray, sketch: np.ndarray, *, seed: int = 0, model=None) -> np.ndarray:
    """Generate realistic content inside ``mask`` whose low-pass follows ``sketch``.

    Parameters
    ----------
    context : ndarray
        A CT cube ``(D, H, W)`` in HU or a radiograph patch ``(H, W)`` in gray levels.
    mask : ndarray of bool
        Same shape; True where content is generated.
    sketch : ndarray
        Same shape, physical units: the desired :func:`lowpass` of the result inside the mask.
    seed : int
        Seed of the generator's noise; the same seed gives the same result.
    model : module or path, optional
        A generator from :func:`load_model` or a checkpoint path; default: the shipped model for
        ``context.ndim`` (3: CT, 2: radiographs).

    Returns
    -------
    ndarray
        Same shape and dtype as ``context``; equal to it outside the mask.

    Any size works: the region around the mask is cropped, padded to the network's multiple and,
    when large, tiled. After the network, the generated high-pass is kept within 0.87-1.15x of
    the noise in a ring around the mask, and the content is nudged so its low-pass follows the
    sketch.
    """
    return _render(context, mask, sketch, seed=seed, model=model)
