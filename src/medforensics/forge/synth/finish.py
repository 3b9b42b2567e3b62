"""Finishing a generator sample like a real file: upsampled to a reference's size, its histogram
matched, signal-dependent noise of the reference's level and correlation added
(:func:`synthesize`, :func:`synthesize_like`)."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ...core import MedForensicsError
from .model import ARCHITECTURE, SynthModel, load_model
from .reference import FORMATS, QUANTILE_LEVELS, Reference, _corr_ratio, noise_profile, noise_sigma, references_from

__all__ = ["SyntheticRadiograph", "synthesize", "synthesize_like"]


# ============================================================================== finishing

@dataclass
class SyntheticRadiograph:
    """One finished sample: stored pixel values (uint8/uint16, the reference's size and bit depth),
    the format it is meant to be written in, and its ground truth."""

    pixels: np.ndarray
    format: str
    bit_depth: int
    reference: Reference
    ground_truth: dict[str, Any]
    low_res: np.ndarray | None = None   # the generator's raw output in [0, 1]


def _match_histogram(img: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Map ``img`` so that its value distribution follows the reference quantile function."""
    flat = img.ravel()
    order = np.argsort(flat, kind="stable")
    ranks = np.empty(flat.size, np.float64)
    ranks[order] = (np.arange(flat.size) + 0.5) / flat.size
    return np.interp(ranks, QUANTILE_LEVELS, np.asarray(quantiles, np.float64)).reshape(img.shape)


@functools.lru_cache(maxsize=1)
def _noise_shapes() -> list[tuple[float, float, float]]:
    """(blur sigma, Immerkaer response to unit-variance noise of that blur, correlation ratio)."""
    import cv2
    rng = np.random.default_rng(12345)
    base = rng.standard_normal((384, 384))
    out = []
    for s in (0.0, 0.35, 0.5, 0.65, 0.8, 1.0, 1.3):
        n = cv2.GaussianBlur(base, (0, 0), s) if s > 0 else base.copy()
        n = n / n.std()
        out.append((s, noise_sigma(n), _corr_ratio(n)))
    return out


def _shaped_noise(rng: np.random.Generator, shape: tuple[int, int], corr_ratio: float) -> tuple[np.ndarray, float]:
    """Unit-variance Gaussian noise blurred so that its correlation ratio matches; returns (noise,
    Immerkaer response per unit std)."""
    import cv2
    shapes = _noise_shapes()
    s, resp, _ = min(shapes, key=lambda t: abs(t[2] - corr_ratio))
    n = rng.standard_normal(shape)
    if s > 0:
        n = cv2.GaussianBlur(n, (0, 0), s)
    return n / n.std(), resp


def _finish(low: np.ndarray, ref: Reference, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Upsample, histogram-match and add matched noise; returns stored values and what was done."""
    import cv2
    full = float(2 ** ref.bit_depth - 1)
    up = cv2.resize(low.astype(np.float32), (ref.cols, ref.rows), interpolation=cv2.INTER_CUBIC).astype(np.float64)
    # a few tenths of a grey level of dither breaks ties so the histogram can be matched exactly
    up += rng.standard_normal(up.shape) * 1e-4
    matched = _match_histogram(up, ref.quantiles)                       # fraction of full scale
    centres = np.array([b[0] for b in ref.noise])
    target = np.array([b[1] if b[1] is not None else np.nan for b in ref.noise], np.float64)
    if np.all(np.isnan(target)):
        target = np.full_like(centres, ref.noise_sigma)
    good = ~np.isnan(target)
    target = np.interp(centres, centres[good], target[good])
    local = cv2.GaussianBlur(matched, (0, 0), 2.0)
    noise, resp = _shaped_noise(rng, matched.shape, ref.corr_ratio)
    # signal already carries a little high-pass energy (upsampled structure, quantisation): only add
    # what is missing, then correct once by measuring the result bin by bin
    have = np.array([b[1] or 0.0 for b in noise_profile(np.round(matched * full), full)])
    add = np.sqrt(np.clip(target ** 2 - have ** 2, 0, None)) / resp
    gain = np.ones_like(add)
    for _ in range(2):
        amp = np.interp(local, centres, add * gain)
        stored = np.clip(np.round((matched + amp * noise) * full), 0, full)
        got = np.array([b[1] if b[1] is not None else np.nan for b in noise_profile(stored, full)])
        ratio = np.where(np.isfinite(got) & (got > 0), target / np.where(got > 0, got, 1), 1.0)
        gain = gain * np.clip(ratio, 0.5, 2.0)
    info = {"upsample": "bicubic", "from_size": list(low.shape), "to_size": [ref.rows, ref.cols],
            "histogram_matched_to": ref.name, "noise_target": [round(float(v), 6) for v in target],
            "noise_corr_ratio": ref.corr_ratio}
    dtype = np.uint16 if ref.bit_depth > 8 else np.uint8
    return stored.astype(dtype), info


def _pick_reference(refs: Sequence[Reference], fmt: str, rng: np.random.Generator) -> Reference:
    if fmt == "dicom":
        pool = [r for r in refs if r.format == "dicom"] or list(refs)
    elif fmt in ("png", "jpeg"):
        pool = [r for r in refs if r.format != "dicom"] or list(refs)
    else:
        pool = list(refs)
    return pool[int(rng.integers(len(pool)))]


def synthesize(n: int, seed: int = 0, *, like: str | Path | Sequence[Reference] | Sequence[str | Path] | None = None,
               fmt: str = "like", model: SynthModel | str | Path | None = None,
               temperature: float = 1.0) -> list[SyntheticRadiograph]:
    """Make ``n`` synthetic radiographs finished like real references.

    Parameters
    ----------
    n : int
        How many.
    seed : int
        Sample ``i`` depends only on ``(seed, i)`` (and the model).
    like : path, list of paths or list of Reference, optional
        Real images to take size, format, bit depth, histogram and noise from (default: the real
        images the model was trained on, as measured at training time and kept in its card).
    fmt : str
        ``like`` (the reference's own format), ``png``, ``jpeg``, ``dicom`` or ``mixed`` (each sample
        one of the three at random). For ``dicom`` a DICOM reference is used when there is one.
    model : SynthModel or path, optional
        The generator (default: the shipped checkpoint).
    temperature : float
        Spread of the latent Gaussian (1: that of the training images).
    """
    if n < 0:
        raise MedForensicsError(None, f"n must be at least 0, got {n}")
    if fmt not in (*FORMATS, "like", "mixed"):
        raise MedForensicsError(None, f"unknown format {fmt!r} (use like, png, jpeg, dicom or mixed)")
    m = model if isinstance(model, SynthModel) else load_model(model)
    refs = _resolve_references(m, like)
    return _synthesize_indices(m, seed, range(n), refs, fmt, temperature)


def _resolve_references(m: SynthModel, like) -> list[Reference]:
    if like is None:
        refs = m.references
    elif isinstance(like, (str, Path)) or (len(like) and not isinstance(like[0], Reference)):
        refs = references_from(like)
    else:
        refs = list(like)
    if not refs:
        raise MedForensicsError(m.path, "no reference images known: pass like= real images")
    return refs


def synthesize_like(path: str | Path, seed: int = 0, *, model: SynthModel | str | Path | None = None) -> np.ndarray:
    """One synthetic radiograph finished like the real image at ``path`` (its size, bit depth,
    histogram and noise), as float pixel values in that image's stored units: ready for
    :func:`medforensics.io.write.write_like` with the loaded reference."""
    return synthesize(1, seed, like=[path], model=model)[0].pixels.astype(np.float32)


def _synthesize_indices(m: SynthModel, seed: int, indices: Iterable[int], refs: Sequence[Reference], fmt: str,
                        temperature: float = 1.0) -> list[SyntheticRadiograph]:
    """Samples number ``indices`` of ``synthesize(.., seed)``; each depends only on (seed, index)."""
    idx = list(indices)
    if not idx:
        return []
    latent_dim = int(m.mean.shape[0])
    rngs = [np.random.default_rng([int(seed), i]) for i in idx]
    # one at a time: a sample must not depend on which others were decoded in the same batch
    lows = m.generate(np.stack([r.standard_normal(latent_dim) for r in rngs]), temperature=temperature, batch=1)
    out = []
    for i, rng, low in zip(idx, rngs, lows):
        f = str(rng.choice(FORMATS)) if fmt == "mixed" else fmt
        ref = _pick_reference(refs, f, rng)
        f = ref.format if f == "like" else f
        if f not in FORMATS:
            f = "png"
        pixels, info = _finish(low, ref, rng)
        gt = {"kind": "synthesize", "method": "vae-gan", "synthetic": True, "seed": int(seed), "index": i,
              "model": m.path.name, "model_created": m.card.get("created"), "architecture": ARCHITECTURE,
              "temperature": temperature, "reference": {"name": ref.name, "format": ref.format,
                                                        "size": [ref.rows, ref.cols], "bit_depth": ref.bit_depth},
              "format": f, "finishing": info}
        out.append(SyntheticRadiograph(pixels=pixels, format=f, bit_depth=ref.bit_depth, reference=ref,
                                       ground_truth=gt, low_res=low))
    return out
