"""How strong each family's fakes are: their noise and sharpness against authentic images.

For every item of a zoo manifest (one split), three measures of the file as a detector reads it
(:func:`medforensics.learn.data.load_item`, radiograph scaling):

* ``noise`` -- Immerkaer's high-pass noise level (:func:`medforensics.noise.estimate_sigma`);
* ``nps_freq`` -- mean frequency of the noise power spectrum of the central 128 px
  (:func:`medforensics.forge.realism.nps`, of the residual after a Gaussian high-pass): about
  0.36 cycles/px for white noise, lower for noise blurred by a generator or a resize;
* ``sharpness`` -- the 90th percentile of the gradient magnitude (Sobel), in units of the
  image's 1-99% range: blurry fakes score low.

:func:`family_realism` gives per family the medians and the Wasserstein distance of each
measure's distribution to the authentic items' (0 = indistinguishable by that measure), and a
figure of the mean noise power spectra and the sharpness distributions.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> white = rng.normal(0.5, 0.05, (256, 256)).clip(0, 1)
>>> m = measures(white)
>>> 0.33 < m["nps_freq"] < 0.39, 0.045 < m["noise"] < 0.055
(True, True)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["measures", "family_realism"]

NPS_PATCH = 128


def measures(a: np.ndarray) -> dict[str, Any]:
    """The three realism measures of one [0, 1] image (and its NPS curve)."""
    import cv2

    from ...noise import estimate_sigma
    from ..realism import nps, nps_mean_freq

    a = np.asarray(a, np.float32)
    h, w = a.shape
    k = min(NPS_PATCH, h, w)
    patch = a[(h - k) // 2:(h - k) // 2 + k, (w - k) // 2:(w - k) // 2 + k]
    curve = nps(patch)
    gx, gy = cv2.Sobel(a, cv2.CV_32F, 1, 0), cv2.Sobel(a, cv2.CV_32F, 0, 1)
    lo, hi = np.percentile(a, (1, 99))
    sharp = float(np.percentile(np.hypot(gx, gy), 90) / max(float(hi - lo), 1e-3))
    return {"noise": estimate_sigma(a), "nps_freq": nps_mean_freq(curve), "sharpness": sharp, "nps": curve}


def family_realism(manifest: str | Path, split: str = "test", out: str | Path | None = None) -> dict[str, Any]:
    """Realism of each family's fakes in ``split`` of a zoo ``manifest`` against its authentic
    items; with ``out`` (a new .png) also the figure."""
    from ...learn.data import load_item, read_manifest
    from ..realism import wasserstein

    rows = [r for r in read_manifest(manifest) if r["split"] == split]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        key = "authentic" if r["label"] == "real" else r["method"]
        groups.setdefault(key, []).append(measures(load_item(r["_path"], "radiograph")))
    real = groups.get("authentic", [])
    table: dict[str, Any] = {}
    for key, ms in groups.items():
        entry: dict[str, Any] = {"n": len(ms)}
        for m in ("noise", "nps_freq", "sharpness"):
            vals = np.array([x[m] for x in ms])
            entry[m] = round(float(np.median(vals)), 4)
            if key != "authentic" and real:
                entry[f"{m}_w1"] = round(wasserstein(vals, np.array([x[m] for x in real])), 4)
        table[key] = entry
    if out is not None:
        _figure(groups, Path(out))
    return table


def _figure(groups: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io.write import new_file

    new_file(out)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted(groups, key=lambda k: (k != "authentic", k))
    for key in names:
        curve = np.mean([x["nps"] for x in groups[key]], axis=0)
        f = (np.arange(len(curve)) + 0.5) * 0.5 / len(curve)
        ax1.semilogy(f, curve, lw=2.5 if key == "authentic" else 1.2, label=key, color="k" if key == "authentic" else None)
    ax1.set_xlabel("frequency (cycles/pixel)")
    ax1.set_ylabel("noise power (normalised)")
    ax1.set_title("noise power spectrum (mean)")
    ax1.legend(fontsize=8)
    ax2.boxplot([[x["sharpness"] for x in groups[k]] for k in names])
    ax2.set_xticks(range(1, len(names) + 1), names)
    ax2.set_ylabel("sharpness (p90 gradient / range)")
    ax2.set_title("sharpness")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
