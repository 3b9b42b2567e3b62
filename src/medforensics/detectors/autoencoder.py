"""Unsupervised detector: the reconstruction residual of an autoencoder trained on authentic images only.

A denoising convolutional autoencoder (MONAI ``AutoEncoder``; see
:mod:`medforensics.learn.autoencoder`) learnt, from real CT slices and real radiographs at native
resolution, to rebuild real anatomy from a noisier copy. Its residual ``x - AE(x)`` is a learned
noise-and-texture residual. Per block of pixels the detector measures the residual's level and
grain (lag-1 autocorrelation), compares each block with the image's own median (an edited region)
and the image's medians with held-out authentic images (a synthetic or wholly resampled image),
both in units of spreads measured on held-out authentic images and stored in the checkpoint card.
No fake was seen in training or calibration, so the detector does not depend on any generator.

* Score: ``logistic(raw, midpoint, scale)`` from the card, set so that held-out authentic images
  score 0.05 at their median and 0.2 at their 95th percentile.
* Heatmap: per-block score, aligned to ``Image.pixels``; regions where it reaches 0.5.
* CT series: every ``stride``-th slice (at most :data:`MAX_SLICES` slices are scored); a scored
  slice's map stands for the slices up to the next scored one. The calibration is per slice, so
  the series' strongest local peak is lowered by ``scale * ln(slices scored)``. For CT only
  blocks inside the body count (the table and the air around are left out).

Print raw values: ``python -m medforensics.detectors.autoencoder DATA...``.
"""
from __future__ import annotations

import math
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..core import Evidence, Image, MedForensicsError
from .base import Detector, logistic, logistic_array, print_raw_values, regions_from_heatmap

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
CHECKPOINTS = {"ct": MODELS_DIR / "ae_ct.safetensors", "xray": MODELS_DIR / "ae_xray.safetensors"}
XR_MODALITIES = frozenset({"XR", "CR", "DX"})
#: Most slices of a CT volume that are scored (a stride is chosen to keep within it).
MAX_SLICES = 70
MIN_SIZE = 32

_cache: dict[str, tuple[Any, dict]] = {}
_lock = threading.Lock()


def load_model(kind: str, path: str | Path | None = None) -> tuple[Any, dict]:
    """``(model, card)`` for ``ct`` or ``xray``: the shipped checkpoint unless ``path`` is given;
    loaded once per process."""
    from ..learn.autoencoder import load_autoencoder

    p = Path(path) if path is not None else CHECKPOINTS[kind]
    key = str(p.resolve())
    with _lock:
        if key not in _cache:
            model, card = load_autoencoder(p)
            if card.get("kind") != kind:
                raise MedForensicsError(p, f"checkpoint is for {card.get('kind')!r} images, not {kind!r}")
            _cache[key] = (model, card)
        return _cache[key]


class AutoencoderDetector(Detector):
    """Reconstruction residual of a denoising autoencoder trained on authentic images only."""

    name = "autoencoder"
    description = ("Residual of an autoencoder trained on authentic images only: noise level and grain unlike "
                   "real acquisitions (edits, in-painting, resampling, synthesis by any generator).")
    modalities = frozenset({"CT"}) | XR_MODALITIES
    dims = frozenset({2, 3})
    formats = frozenset({"dicom", "nifti", "png", "jpeg", "tiff"})
    # Not in the default scan yet: real radiographs from sources outside its training data (the
    # pydicom-data CR files of the demo: 10-15-bit, ~1800 px) score 0.74-0.79, i.e. "unlike the
    # authentic images it knows" is also true of other hospitals' real images (docs/learn/unsupervised.md).
    default = False

    def __init__(self, checkpoints: dict[str, str | Path] | None = None):
        self.checkpoints = dict(checkpoints or {})

    def applies(self, image: Image) -> bool:
        if not super().applies(image):
            return False
        return image.modality == "CT" or image.pixels.ndim == 2

    def detect(self, image: Image) -> Evidence:
        from ..learn.autoencoder import (global_z, local_peak, plane_stats, raw_statistic, reference_for,
                                         score_plane, size_group)

        kind = "ct" if image.modality == "CT" else "xray"
        if min(image.pixels.shape[-2:]) < MIN_SIZE:
            return Evidence(self.name, 0.0, f"The image is too small ({image.pixels.shape[-2]}x"
                            f"{image.pixels.shape[-1]} px) for the autoencoder's block statistics.",
                            details={"abstained": True})
        model, card = load_model(kind, self.checkpoints.get(kind))
        ref, cal = reference_for(card, image.pixels.shape)
        vol = image.pixels if image.pixels.ndim == 3 else image.pixels[None]
        stride = max(1, math.ceil(vol.shape[0] / MAX_SLICES))
        ks = list(range(0, vol.shape[0], stride))
        zs, mes, mcs, b = [], [], [], 8
        for k in ks:
            st = plane_stats(model, vol[k], kind)
            b = st["block"]
            z_k, me, mc = score_plane(st, ref)
            zs.append(z_k)
            mes.append(me)
            mcs.append(mc)
        z = np.stack(zs)
        finite = [i for i, v in enumerate(mes) if np.isfinite(v)]
        if not finite:
            return Evidence(self.name, 0.0, "The image has too few textured blocks for the autoencoder's statistics.",
                            details={"abstained": True})
        me, mc = float(np.median([mes[i] for i in finite])), float(np.median([mcs[i] for i in finite]))
        gz = global_z(me, mc, ref)
        lp = local_peak(z)
        mid, sc = float(cal["midpoint"]), float(cal["scale"])
        # the calibration is per plane; the largest of n planes' peaks is lowered by scale * ln n
        # (the shift of the maximum of n logistic tails), so that a series is not flagged for its size
        correction = sc * math.log(len(ks))
        raw = raw_statistic(lp - correction, gz)
        score = logistic(raw, mid, sc)
        heat_grid = logistic_array(z, mid, sc)
        heat = np.zeros(vol.shape, np.float32)
        up = np.repeat(np.repeat(np.repeat(heat_grid, stride, 0), b, 1), b, 2)[:vol.shape[0]]
        heat[:up.shape[0], :up.shape[1], :up.shape[2]] = up
        # wording follows the score: below the alarm level a region names no departure
        note = "residual unlike authentic images" if score >= 0.5 else "a mild residual deviation, below the alarm level"
        if image.pixels.ndim == 2:
            heat, heat_grid, scale = heat[0], heat_grid[0], (b, b)
        else:
            scale = (stride, b, b)
        regions = regions_from_heatmap(image, heat_grid, threshold=0.5, min_size=1, scale=scale, note=note)
        where = f" in slice {ks[int(np.argmax(z.reshape(len(ks), -1).max(axis=1)))]}" if image.pixels.ndim == 3 else ""
        if score < 0.5:
            expl = "The autoencoder's residual (noise level and grain) is like that of authentic images."
        elif gz >= lp - correction:
            expl = (f"The residual's noise level and grain over the whole image lie {gz:.1f} reference spreads from "
                    f"held-out authentic images, as in synthetic or wholly resampled images.")
        else:
            expl = (f"{len(regions) or 'A'} region(s){where} have a residual {lp:.1f} reference spreads unlike the rest "
                    f"of the image, as left by in-painting, smoothing, splicing or local synthesis.")
        return Evidence(self.name, score, expl, heatmap=heat, regions=regions,
                        indicates="synthesis" if gz >= lp - correction and score >= 0.5 else "manipulation",
                        details={"raw": round(raw, 4), "local_peak": round(lp, 4), "global_z": round(gz, 4),
                                 "energy_offset": round(me, 4), "grain_offset": round(mc, 4),
                                 "block_px": b, "slices_scored": len(ks), "series_correction": round(correction, 4), "slice_stride": stride,
                                 "model": kind, "size_group": size_group(image.pixels.shape), "calibration": {"midpoint": mid, "scale": sc}})


if __name__ == "__main__":  # pragma: no cover - calibration helper
    print_raw_values(AutoencoderDetector(), sys.argv[1:])
