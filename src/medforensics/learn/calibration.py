"""Calibration of learned detectors on authentic images only: raw statistic to score.

A learned detector's raw statistic (a classifier's log-odds, an autoencoder's residual anomaly)
is not a probability. Both learned detectors map it through ``logistic(raw, midpoint, scale)``
fitted on held-out *authentic* images alone, so that their median scores :data:`CAL_TARGETS`
``[0]`` and a high percentile scores ``[1]``: no fake is needed, and the false-alarm rate on
images like the held-out ones is set by construction. Thumbnails below 128 px (whose noise the
downscaling removed) get their own calibration (:func:`size_group`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

#: Logistic calibration targets on held-out authentic images: (percentile, score) pairs.
CAL_TARGETS = ((50.0, 0.05), (95.0, 0.2))

__all__ = ["CAL_TARGETS", "size_group", "group_for", "fit_logistic"]


def size_group(shape: tuple[int, ...]) -> str:
    """``small`` for thumbnails below 128 px on a side, ``native`` otherwise: each has its own
    reference statistics and calibration."""
    return "small" if min(shape[-2:]) < 128 else "native"


def group_for(table: dict[str, Any], shape: tuple[int, ...]) -> str:
    """The key of ``table`` (per size group) for an image of ``shape``: its own group, or the
    table's first group when the table has none for it."""
    g = size_group(shape)
    return g if g in table else next(iter(table))


def fit_logistic(raws: Sequence[float], *, targets: tuple[tuple[float, float], tuple[float, float]] = CAL_TARGETS,
                 scale_floor: float = 1.0) -> dict[str, Any]:
    """``{"midpoint", "scale", "raw_quantiles", "rule"}`` of the logistic that maps the
    ``targets`` percentiles of ``raws`` (authentic images' raw statistics) to their scores.
    ``scale_floor``: the least scale (a few dozen images do not pin the tail)."""
    raws = np.asarray(raws, dtype=np.float64)
    (p_lo, s_lo), (p_hi, s_hi) = targets
    q_lo, q_hi = float(np.percentile(raws, p_lo)), float(np.percentile(raws, p_hi))
    l_lo, l_hi = math.log(s_lo / (1 - s_lo)), math.log(s_hi / (1 - s_hi))
    scale = max((q_hi - q_lo) / (l_hi - l_lo), scale_floor)
    midpoint = q_hi - l_hi * scale
    return {"midpoint": round(midpoint, 4), "scale": round(scale, 4),
            "raw_quantiles": {str(q): round(float(np.percentile(raws, q)), 4) for q in (5, 25, 50, 75, 95, 99)},
            "rule": f"logistic(raw, midpoint, scale) with held-out authentic median -> {s_lo}, "
                    f"{p_hi:g}th percentile -> {s_hi}"}
