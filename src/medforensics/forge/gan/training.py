"""A learned in-painting generator for realistic local forgeries (CT-GAN style), in 2D and 3D.

An attacker who wants to inject or remove a lung nodule cuts a cube around the spot, blanks the
region to change, paints the *coarse* content they want (a bright ball, or smooth lung) and lets
a generator add the fine texture and the scanner noise that make the result look acquired, then
pastes the cube back. :func:`render` is that generator step:

>>> out = render(cube_hu, mask, sketch, seed=3)          # doctest: +SKIP

* ``context``: float array in physical units -- HU for a CT cube ``(D, H, W)``, gray levels for a
  radiograph patch ``(H, W)``;
* ``mask``: bool, same shape, the region to generate;
* ``sketch``: same shape, physical units: what :func:`lowpass` of the final content should look
  like inside the mask (a Gaussian blur, sigma 1 voxel in-plane and 0.5 voxel across slices for
  3D, sigma 1 pixel for 2D). Values outside the mask are ignored.

The result equals ``context`` outside the mask bit for bit; inside it has texture and noise whose
low-pass follows the sketch. The network (:class:`InpaintUNet`) is a small U-Net with noise
inputs trained adversarially against a PatchGAN (:class:`PatchDiscriminator`) on cubes and patches
of real CT and radiographs (:func:`train`, :class:`TrainConfig`). Default models ship with the
package (``models/inpaint3d_ct.safetensors``, ``models/inpaint2d_xray.safetensors``) and are
loaded on first use (:func:`load_model`). See ``docs/forge/gan.md``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core import MedForensicsError
from ..datapath import card_data_root, sources_of
from ..datapath import data_root as data_root_of

__all__ = ["render", "lowpass", "load_model", "train", "TrainConfig", "InpaintUNet", "PatchDiscriminator",
           "default_model_path", "SIGMA_3D", "SIGMA_2D", "CT_RANGE"]

#: Gaussian sigmas (voxels) that define the sketch: (slices, rows, cols) for 3D, (rows, cols) for 2D.
SIGMA_3D = (0.5, 1.0, 1.0)
SIGMA_2D = (1.0, 1.0)
_TRUNCATE = 3.0
#: Fixed HU window of the CT model: values are clipped to it and scaled to about [-1, 1].
CT_RANGE = (-1200.0, 600.0)

_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
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


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------

def _torch():
    import torch
    return torch


def _strides(dim: int, levels: int) -> list[tuple[int, ...]]:
    """Down-sampling steps: in 3D the first halves rows and columns only (CT slices are thicker)."""
    if dim == 2:
        return [(2, 2)] * levels
    return [(1, 2, 2)] + [(2, 2, 2)] * (levels - 1)


def _multiple(dim: int, levels: int) -> tuple[int, ...]:
    m = [1] * dim
    for s in _strides(dim, levels):
        m = [a * b for a, b in zip(m, s)]
    return tuple(m)


def _build_nets():
    """Network classes, defined on first use so that importing this module does not import torch."""
    if "classes" in _CACHE:
        return _CACHE["classes"]
    import torch
    from torch import nn
    import torch.nn.functional as F

    class NoiseInjection(nn.Module):
        """Adds per-channel scaled Gaussian noise (StyleGAN-style): the source of stochastic texture."""

        def __init__(self, ch: int):
            super().__init__()
            self.scale = nn.Parameter(torch.full((1, ch), 0.1))

        def forward(self, x, generator=None):
            shape = (x.shape[0], 1, *x.shape[2:])
            n = torch.randn(shape, generator=generator, device="cpu" if generator is not None else x.device,
                            dtype=x.dtype).to(x.device)
            s = self.scale.reshape(1, -1, *([1] * (x.dim() - 2)))
            return x + s * n

    class Block(nn.Module):
        def __init__(self, conv, cin: int, cout: int, noise: bool):
            super().__init__()
            self.c1 = conv(cin, cout, 3, padding=1)
            self.c2 = conv(cout, cout, 3, padding=1)
            self.noise = NoiseInjection(cout) if noise else None

        def forward(self, x, generator=None):
            x = F.leaky_relu(self.c1(x), 0.2)
            if self.noise is not None:
                x = self.noise(x, generator)
            return F.leaky_relu(self.c2(x), 0.2)

    class InpaintUNet(nn.Module):
        """Conditional in-painting U-Net, 2D or 3D.

        Input channels: context with the masked region blanked, mask, sketch inside the mask, and
        a Gaussian noise map (all in normalised units). Noise is also injected in every decoder
        block, so texture is stochastic. Output: the content = (context outside, sketch inside)
        plus a learned residual; no normalisation layers, so it is fully convolutional and
        behaves the same on any input size (a multiple of :attr:`multiple`)."""

        def __init__(self, dim: int = 3, width: int = 16, levels: int = 3, in_ch: int = 4):
            super().__init__()
            if dim not in (2, 3):
                raise ValueError("dim must be 2 or 3")
            self.dim, self.width, self.levels, self.in_ch = dim, width, levels, in_ch
            conv = nn.Conv3d if dim == 3 else nn.Conv2d
            self.multiple = _multiple(dim, levels)
            chans = [width * min(2 ** i, 8) for i in range(levels + 1)]
            self.inc = Block(conv, in_ch, chans[0], noise=False)
            self.down = nn.ModuleList()
            self.enc = nn.ModuleList()
            for i, s in enumerate(_strides(dim, levels)):
                self.down.append(conv(chans[i], chans[i], kernel_size=s, stride=s))
                self.enc.append(Block(conv, chans[i], chans[i + 1], noise=(i == levels - 1)))
            self.up_conv = nn.ModuleList()
            self.dec = nn.ModuleList()
            self._up = list(reversed(_strides(dim, levels)))
            for i in reversed(range(levels)):
                self.up_conv.append(conv(chans[i + 1], chans[i], 3, padding=1))
                self.dec.append(Block(conv, 2 * chans[i], chans[i], noise=True))
            self.head = conv(chans[0] + 1, 1, 3, padding=1)   # + a last noise map, for pixel-level grain
            self.head_noise = nn.Parameter(torch.tensor(0.1))

        def forward(self, x, generator=None):
            """``x``: (B, 4, *spatial) = context blanked, mask, sketch in mask, noise."""
            base = x[:, 0:1] + x[:, 2:3]
            h = self.inc(x)
            skips = []
            for down, enc in zip(self.down, self.enc):
                skips.append(h)
                h = enc(down(h), generator)
            for s, up_conv, dec in zip(self._up, self.up_conv, self.dec):
                h = F.interpolate(h, scale_factor=s, mode="nearest")
                h = F.leaky_relu(up_conv(h), 0.2)
                h = dec(torch.cat([h, skips.pop()], 1), generator)
            shape = (x.shape[0], 1, *x.shape[2:])
            n = torch.randn(shape, generator=generator, device="cpu" if generator is not None else x.device,
                            dtype=x.dtype).to(x.device)
            return base + self.head(torch.cat([h, self.head_noise * n], 1))

    class PatchDiscriminator(nn.Module):
        """PatchGAN critic: a map of real/fake scores, one per overlapping patch, from the image,
        its high-pass (scaled up, so noise texture counts) and the mask."""

        def __init__(self, dim: int = 3, width: int = 16, in_ch: int = 3):
            super().__init__()
            conv = nn.Conv3d if dim == 3 else nn.Conv2d
            sn = nn.utils.parametrizations.spectral_norm
            st = _strides(dim, 2)
            self.dim = dim
            self.multiple = _multiple(dim, 2)
            self.net = nn.Sequential(
                sn(conv(in_ch, width, 3, padding=1)), nn.LeakyReLU(0.2),
                sn(conv(width, 2 * width, 3, stride=st[0], padding=1)), nn.LeakyReLU(0.2),
                sn(conv(2 * width, 4 * width, 3, stride=st[1], padding=1)), nn.LeakyReLU(0.2),
                sn(conv(4 * width, 4 * width, 3, padding=1)), nn.LeakyReLU(0.2),
                conv(4 * width, 1, 3, padding=1),
            )

        def forward(self, x):
            return self.net(x)

    _CACHE["classes"] = (InpaintUNet, PatchDiscriminator)
    return _CACHE["classes"]


def InpaintUNet(*args, **kw):  # noqa: N802 - a class in spirit; torch is imported lazily
    """Build the generator (see the docstring of the class returned)."""
    return _build_nets()[0](*args, **kw)


def PatchDiscriminator(*args, **kw):  # noqa: N802
    """Build the PatchGAN discriminator."""
    return _build_nets()[1](*args, **kw)


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
    from ..learn.checkpoint import load_checkpoint, load_weights

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
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


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


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """How to train a generator. Use :meth:`small` (CPU, minutes) or :meth:`gpu`."""

    modality: str = "ct"                  # ct (3D cubes) | xray (2D patches)
    preset: str = "small"
    size: tuple[int, ...] = (8, 32, 32)   # training cube (slices, rows, cols) or patch (rows, cols)
    width: int = 16
    levels: int = 3
    d_width: int = 16
    batch: int = 8
    steps: int = 2500
    lr: float = 2e-4
    time_limit_s: float = 690.0           # training stops here even if steps remain (0: no limit)
    pool: int = 1500                      # real cubes/patches cut once and re-used with flips
    w_lowpass: float = 20.0
    w_noise: float = 1.0
    w_spectrum: float = 0.5
    w_adv: float = 0.1
    device: str = "auto"                  # auto: cuda when available
    threads: int = 2
    seed: int = 0
    eval_cubes: int = 48

    @property
    def dim(self) -> int:
        return 3 if self.modality == "ct" else 2

    @classmethod
    def small(cls, modality: str = "ct", **kw: Any) -> "TrainConfig":
        """From scratch on 2 CPU cores in about 11 minutes."""
        _check_modality(modality)
        base = dict(modality=modality, preset="small",
                    size=(8, 32, 32) if modality == "ct" else (64, 64),
                    width=8 if modality == "ct" else 16, d_width=8 if modality == "ct" else 16,
                    batch=8 if modality == "ct" else 12, steps=2400 if modality == "ct" else 2000)
        base.update(kw)
        return cls(**base)

    @classmethod
    def gpu(cls, modality: str = "ct", **kw: Any) -> "TrainConfig":
        """Bigger cubes, wider networks, more steps, for a CUDA device."""
        _check_modality(modality)
        base = dict(modality=modality, preset="gpu",
                    size=(16, 64, 64) if modality == "ct" else (128, 128),
                    width=24 if modality == "ct" else 32, d_width=32, batch=16, steps=20000, time_limit_s=0.0, pool=6000, threads=4,
                    eval_cubes=128)
        base.update(kw)
        return cls(**base)

    @classmethod
    def preset_named(cls, name: str, modality: str = "ct", **kw: Any) -> "TrainConfig":
        if name == "small":
            return cls.small(modality, **kw)
        if name == "gpu":
            return cls.gpu(modality, **kw)
        raise MedForensicsError(None, f"unknown training config {name!r} (small or gpu)")


def _check_modality(modality: str) -> None:
    if modality not in ("ct", "xray"):
        raise MedForensicsError(None, f"unknown modality {modality!r} (ct or xray)")


def _ct_volumes(root: Path) -> list[tuple[str, np.ndarray, float]]:
    """(name, HU volume, sampling weight) of the real CT under ``root``."""
    from ..io import load

    vols = []
    for sub, weight in (("ct/lidc-idri", 0.6), ("ct/lidc-idri-small", 0.2)):
        d = root / sub
        if d.is_dir():
            for im in load(d):
                if im.modality == "CT" and im.pixels.ndim == 3:
                    vols.append((str(im.path.relative_to(root)), im.pixels, weight))
    nd = root / "ct/nifti"
    if nd.is_dir():
        for f in sorted(nd.glob("*.nii*")):
            for im in load(f):
                if im.modality == "CT" and im.pixels.ndim == 3:
                    vols.append((str(f.relative_to(root)), im.pixels, 0.2))
    # Spread each group's weight over its volumes.
    groups: dict[float, int] = {}
    for _, _, w in vols:
        groups[w] = groups.get(w, 0) + 1
    return [(n, v, w / groups[w]) for n, v, w in vols]


def _xray_images(root: Path) -> list[tuple[str, np.ndarray, float]]:
    from ..io import load

    files = sorted((root / "xray/mhh-covid19/images").glob("*.png")) + sorted((root / "xray/nih-cxr14").glob("*.png")) \
        + sorted((root / "xray/siim").glob("*.dcm"))
    out = []
    for f in files:
        try:
            ims = load(f)
        except MedForensicsError:
            continue
        for im in ims:
            if im.pixels.ndim == 2 and min(im.pixels.shape) >= 256:
                out.append((str(f.relative_to(root)), im.pixels, 1.0))
    return out


def _cut_pool(cfg: TrainConfig, sources, rng: np.random.Generator) -> np.ndarray:
    """Real cubes (CT, HU, mostly lung and soft tissue) or patches (radiographs, inside the body)."""
    size = np.array(cfg.size)
    weights = np.array([w for _, v, w in sources if all(np.array(v.shape) >= size)], float)
    usable = [(n, v) for n, v, w in sources if all(np.array(v.shape) >= size)]
    if not usable:
        raise MedForensicsError(None, f"no training image is at least {tuple(size)} voxels")
    weights /= weights.sum()
    pool = np.empty((cfg.pool, *size), np.float32)
    n, tries = 0, 0
    while n < cfg.pool:
        tries += 1
        if tries > 200 * cfg.pool:
            raise MedForensicsError(None, "could not find enough training regions in the data")
        name, v = usable[rng.choice(len(usable), p=weights)]
        lo = [int(rng.integers(0, s - c + 1)) for s, c in zip(v.shape, size)]
        cube = v[tuple(slice(a, a + c) for a, c in zip(lo, size))]
        centre = cube[tuple(slice(c // 2 - max(c // 8, 1), c // 2 + max(c // 8, 1)) for c in size)]
        if cfg.modality == "ct":
            med = float(np.median(centre))
            # Lung parenchyma and soft tissue; not air outside the body, not mostly bone.
            if not (-950.0 < med < 200.0):
                continue
            if med > -400 and rng.random() < 0.4:     # keep about 2/3 of the cubes in or near lung
                continue
        else:
            lo_, hi_ = np.percentile(cube, [1, 99])
            amax = float(np.max(np.abs(v))) or 1.0
            if hi_ - lo_ < 0.02 * amax or float(np.mean(cube)) < 0.05 * amax:
                continue       # flat background, labels, black borders
        pool[n] = cube
        n += 1
    return pool


def _random_masks(cfg: TrainConfig, b: int, rng: np.random.Generator) -> np.ndarray:
    """Ellipsoids/ellipses deformed into blobs, of random size, near the centre of the cube."""
    from scipy.ndimage import gaussian_filter

    size = np.array(cfg.size)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij")
    masks = np.zeros((b, *size), bool)
    for i in range(b):
        for _ in range(20):
            frac = rng.uniform(0.08, 0.33, size=len(size))
            if len(size) == 3:
                frac[1:] = frac[1] * rng.uniform(0.75, 1.33, 2)
                frac[0] = rng.uniform(0.12, 0.4)
            radii = np.maximum(frac * size, 1.0)
            centre = size / 2 + rng.uniform(-0.2, 0.2, len(size)) * size
            d = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)))
            field_ = gaussian_filter(rng.standard_normal(size), sigma=[max(s / 8, 0.5) for s in size])
            field_ /= field_.std() + 1e-6
            m = d < 1.0 + 0.25 * field_
            if 6 <= m.sum() <= 0.45 * m.size:
                break
        masks[i] = m
    return masks


def _augment(x: np.ndarray, rng: np.random.Generator, dim: int) -> np.ndarray:
    if rng.random() < 0.5:
        x = x[..., ::-1]
    if dim == 3:
        if rng.random() < 0.5:
            x = x[..., ::-1, :]
        if rng.random() < 0.5:
            x = np.swapaxes(x, -1, -2)
        if rng.random() < 0.5:
            x = x[:, ::-1]
    return np.ascontiguousarray(x)


def _pick_device(cfg: TrainConfig):
    torch = _torch()
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise MedForensicsError(None, "device cuda requested but no CUDA device is available")
    return torch.device(cfg.device)


class _Losses:
    """Generator losses on normalised tensors (B, 1, *spatial)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.sigma = _sigma(cfg.dim)

    def highpass(self, x):
        return x - _blur_t(x, self.sigma, exact=False)

    def lowpass_l1(self, comp, target, m_edge):
        lp = _blur_t(comp, self.sigma, exact=False)
        lt = _blur_t(target, self.sigma, exact=False)
        return ((lp - lt).abs() * m_edge).sum() / m_edge.sum().clamp(min=1)

    def noise(self, hp_g, hp_t, m):
        """Local noise power (log) and per-cube high-pass std, inside the mask."""
        torch = _torch()
        s = [2.0 * v for v in self.sigma]
        pg = _blur_t(hp_g ** 2, s, exact=False)
        pt = _blur_t(hp_t ** 2, s, exact=False)
        eps = 1e-6
        local = ((torch.log(pg + eps) - torch.log(pt + eps)).abs() * m).sum() / m.sum().clamp(min=1)
        red = tuple(range(1, hp_g.dim()))
        n = m.sum(red).clamp(min=1)
        sg = ((hp_g ** 2 * m).sum(red) / n + eps).log()
        stt = ((hp_t ** 2 * m).sum(red) / n + eps).log()
        return local + 0.5 * (sg - stt).abs().mean()

    def spectrum(self, hp_g, hp_t, m_soft):
        """Log power spectrum of the windowed high-pass, averaged over the batch."""
        torch = _torch()
        dims = tuple(range(2, hp_g.dim()))
        fg = torch.fft.rfftn(hp_g * m_soft, dim=dims).abs() ** 2
        ft = torch.fft.rfftn(hp_t * m_soft, dim=dims).abs() ** 2
        return (torch.log(fg.mean(0) + 1e-8) - torch.log(ft.mean(0) + 1e-8)).abs().mean()


def train(config: TrainConfig, out: str | Path, data_root: str | Path | None = None, progress: bool = True) -> Path:
    """Train an in-painting generator on real images under ``data_root`` and write it to ``out``
    (a new safetensors file with a model card: data used, config, final losses, time, and the
    noise ratio measured on held-out regions). Returns ``out``."""
    torch = _torch()
    import torch.nn.functional as F
    from ..learn.checkpoint import save_checkpoint

    cfg = config
    _check_modality(cfg.modality)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new name")
    if not out.parent.is_dir():
        raise MedForensicsError(out, "folder of the output file does not exist")
    if len(cfg.size) != cfg.dim:
        raise MedForensicsError(None, f"size {cfg.size} does not fit modality {cfg.modality}")
    mult = _multiple(cfg.dim, cfg.levels)
    if any(s % m for s, m in zip(cfg.size, mult)):
        raise MedForensicsError(None, f"training size {tuple(cfg.size)} must be a multiple of {mult}")
    root = data_root_of(data_root)
    if not root.is_dir():
        raise MedForensicsError(root, "data folder not found")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = _pick_device(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()

    sources = _ct_volumes(root) if cfg.modality == "ct" else _xray_images(root)
    if not sources:
        raise MedForensicsError(root, f"no {cfg.modality} training images found "
                                      f"({'ct/lidc-idri, ct/lidc-idri-small, ct/nifti' if cfg.modality == 'ct' else 'xray/...'})")
    pool = _cut_pool(cfg, sources, rng)
    setup_s = time.time() - t0
    eval_pool = _cut_pool(dataclasses.replace(cfg, pool=cfg.eval_cubes), sources, np.random.default_rng(cfg.seed + 999))
    used = sorted({n for n, _, _ in sources if all(np.array(_shape_of(sources, n)) >= np.array(cfg.size))})
    kind = "ct_hu" if cfg.modality == "ct" else "robust"

    def normalise_batch(cubes: np.ndarray, masks: np.ndarray) -> np.ndarray:
        outb = np.empty_like(cubes)
        for i in range(len(cubes)):
            c, h = _norm_params(kind, cubes[i], masks[i])
            outb[i] = _normalise(kind, cubes[i], c, h)
        return outb

    # channels-last memory is 2-3x faster for 3D convolutions on CPU and no slower on CUDA.
    fmt = torch.channels_last_3d if cfg.dim == 3 else torch.contiguous_format
    G = InpaintUNet(dim=cfg.dim, width=cfg.width, levels=cfg.levels).to(device, memory_format=fmt)
    D = PatchDiscriminator(dim=cfg.dim, width=cfg.d_width).to(device, memory_format=fmt)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(0.5, 0.999))
    L = _Losses(cfg)
    hp_gain = 8.0
    pool_dims = tuple(range(2, 2 + cfg.dim))

    def make_batch(cubes_np: np.ndarray, masks_np: np.ndarray):
        x = torch.from_numpy(normalise_batch(cubes_np, masks_np))[:, None].to(device).contiguous(memory_format=fmt)
        m = torch.from_numpy(masks_np.astype(np.float32))[:, None].to(device)
        sketch = _blur_t(x, L.sigma)
        noise = torch.randn_like(x)
        inp = torch.cat([x * (1 - m), m, sketch * m, noise], 1)
        return x, m, inp

    def d_input(img, m):
        return torch.cat([img, hp_gain * L.highpass(img), m], 1)

    def patch_weight(m, like):
        w = F.adaptive_max_pool3d(m, like.shape[2:]) if cfg.dim == 3 else F.adaptive_max_pool2d(m, like.shape[2:])
        return w

    history: list[dict[str, float]] = []
    ema: dict[str, float] = {}
    steps_done = 0
    stopped = "steps"
    prog = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        prog = Progress(TextColumn("[bold]train-gan {task.fields[mod]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        prog.start()
        task = prog.add_task("train", total=cfg.steps, mod=cfg.modality, info="")
    try:
        G.train()
        D.train()
        for step in range(cfg.steps):
            if cfg.time_limit_s and time.time() - t0 > cfg.time_limit_s:
                stopped = "time limit"
                break
            idx = rng.integers(0, len(pool), cfg.batch)
            cubes = np.stack([_augment(pool[i], rng, cfg.dim) for i in idx])
            masks = _random_masks(cfg, cfg.batch, rng)
            x, m, inp = make_batch(cubes, masks)
            y = G(inp)
            comp = x * (1 - m) + y * m

            # Discriminator (least squares): real cubes real everywhere, fakes fake where the mask touches.
            opt_d.zero_grad(set_to_none=True)
            dr = D(d_input(x, m))
            df = D(d_input(comp.detach(), m))
            w = patch_weight(m, df)
            loss_d = ((dr - 1) ** 2).mean() + (((df - 1) ** 2) * (1 - w) + (df ** 2) * w).mean()
            loss_d.backward()
            opt_d.step()

            # Generator.
            opt_g.zero_grad(set_to_none=True)
            m_edge = (_blur_t(m, [2 * s for s in L.sigma], exact=False) > 0.05).float()
            l_lp = L.lowpass_l1(comp, x, m_edge)
            hp_g, hp_t = L.highpass(comp), L.highpass(x)
            l_noise = L.noise(hp_g, hp_t, m)
            m_soft = _blur_t(m, L.sigma, exact=False)
            l_spec = L.spectrum(hp_g, hp_t, m_soft)
            dg = D(d_input(comp, m))
            wg = patch_weight(m, dg)
            l_adv = (((dg - 1) ** 2) * wg).sum() / wg.sum().clamp(min=1)
            loss_g = cfg.w_lowpass * l_lp + cfg.w_noise * l_noise + cfg.w_spectrum * l_spec + cfg.w_adv * l_adv
            loss_g.backward()
            opt_g.step()
            steps_done = step + 1

            vals = {"g": loss_g.item(), "d": loss_d.item(), "lowpass": l_lp.item(), "noise": l_noise.item(),
                    "spectrum": l_spec.item(), "adv": l_adv.item()}
            for k, v in vals.items():
                ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
            if step == 0 or (step + 1) % 25 == 0 or step + 1 == cfg.steps:
                history.append({"step": step + 1, "t": round(time.time() - t0, 1), **{k: round(v, 5) for k, v in ema.items()}})
            if prog is not None:
                prog.update(task, advance=1, info=f"G {ema['g']:.3f} lowpass {ema['lowpass']:.4f} noise {ema['noise']:.3f} D {ema['d']:.3f}")
    finally:
        if prog is not None:
            prog.stop()
    train_s = time.time() - t0
    if history and history[-1]["step"] != steps_done:
        history.append({"step": steps_done, "t": round(train_s, 1), **{k: round(v, 5) for k, v in ema.items()}})

    # Held-out check: noise level and low-pass error of rendered regions on real cubes.
    G.eval()
    G_cpu = G.to("cpu", memory_format=torch.contiguous_format)
    G_cpu.norm = kind
    erng = np.random.default_rng(cfg.seed + 12345)
    ratios, lp_err, contrast = [], [], []
    for i in range(len(eval_pool)):
        cube = eval_pool[i].astype(np.float32)
        mk = _random_masks(cfg, 1, erng)[0]
        sk = lowpass(cube)
        res = _render(cube, mk, sk, seed=i, model=G_cpu, match_noise=False, project=False)
        g, r = _highpass_ratio(res, mk)
        if r > 0:
            ratios.append(g / r)
        lp_err.append(float(np.mean(np.abs(lowpass(res)[mk] - sk[mk]))))
        contrast.append(float(np.std(sk[mk])) + 1e-6)
    metrics = {
        "heldout_regions": len(eval_pool),
        "noise_ratio_median": round(float(np.median(ratios)), 3) if ratios else None,
        "noise_ratio_p10_p90": [round(float(v), 3) for v in np.percentile(ratios, [10, 90])] if ratios else None,
        "lowpass_mae_raw_network": round(float(np.mean(lp_err)), 4),
        "sketch_std_in_mask": round(float(np.mean(contrast)), 4),
        "units": "HU" if cfg.modality == "ct" else "gray levels",
        "note": "raw network output (no noise guard, no low-pass projection), regions cut with another seed",
    }
    final = history[-1] if history else {}
    card = {
        "architecture": "InpaintUNet",
        "task": f"conditional in-painting of {'CT cubes (3D, HU)' if cfg.dim == 3 else 'radiograph patches (2D)'}",
        "config": {"dim": cfg.dim, "width": cfg.width, "levels": cfg.levels, "in_ch": 4},
        "normalization": {"kind": kind, **({"clip_hu": list(CT_RANGE)} if kind == "ct_hu" else
                                           {"method": "centre and half-range of the context's 1st-99th percentiles"})},
        "sketch_lowpass_sigma": list(_sigma(cfg.dim)),
        "data": {"root": card_data_root(), "sources": sources_of(used), "files": used, "n_sources": len(used), "regions_in_pool": int(cfg.pool),
                 "note": "all real images of the modality were used (the generator is the attacker's tool); "
                         "forge datasets must not assume patient-disjointness from this model"},
        "training": {"train_config": dataclasses.asdict(cfg), "steps_done": steps_done, "stopped_by": stopped,
                     "wall_time_s": round(train_s, 1), "data_setup_s": round(setup_s, 1), "device": str(device),
                     "threads": torch.get_num_threads(), "final_losses_ema": final,
                     "loss_history": history[:: max(1, len(history) // 40)]},
        "metrics": metrics,
    }
    save_checkpoint(G_cpu, out, card)
    return out


def _shape_of(sources, name):
    for n, v, _ in sources:
        if n == name:
            return v.shape
    return ()
