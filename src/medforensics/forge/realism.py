"""``forge report``: how real do our fakes look, and which of our own detectors see through them.

For every forge method, the forged regions are compared with real tissue of the same kind:

* **CT injection** against the real nodules the LIDC readers outlined; **CT removal** against
  real lung parenchyma at random places in the same series;
* **2D edits** of radiographs against the untouched surroundings of the same image;
* **synthetic radiographs** against real radiographs as a whole.

Measures: the HU (or gray-level) histogram (mean, spread, and the Wasserstein distance to the
real reference), the **noise standard deviation** (of the high-pass residual ``x - G_1(x)``), as
a ratio to the real reference, and the **noise power spectrum** (radially averaged in-plane NPS
of the residual; its mean frequency, and the L1 distance of the normalised curves). Each forged
image is then scanned by the foundation detectors; a method whose fakes a detector flags
(score >= 0.5) most of the time is a weak fake, and the report says which.

Writes ``realism.json``, ``realism.md`` (the tables) and figures (side-by-side crops, histograms,
NPS curves) into a new folder.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

from ..core import Image, MedForensicsError
from ..noise import mad_sigma

FLAG = 0.5


# ----------------------------------------------------------------------------- measures

def residual(a: np.ndarray) -> np.ndarray:
    """High-pass residual ``a - G_1(a)``, in-plane only for a volume (slices are independent)."""
    a = np.asarray(a, np.float32)
    sigma = (0, 1.0, 1.0) if a.ndim == 3 else 1.0
    return a - ndimage.gaussian_filter(a, sigma)


def noise_std(a: np.ndarray, mask: np.ndarray) -> float:
    """Robust std (1.4826 x MAD) of the residual inside ``mask``."""
    r = residual(a)[mask > 0]
    if r.size < 20:
        return float("nan")
    return mad_sigma(r)


def nps(patch: np.ndarray, n_bins: int = 16) -> np.ndarray:
    """Radially averaged noise power spectrum of a 2D patch's residual, normalised to sum 1."""
    r = residual(patch)
    r = r - r.mean()
    h, w = r.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    p = np.abs(np.fft.fftshift(np.fft.fft2(r * win))) ** 2
    yy, xx = np.indices(p.shape)
    rad = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)  # cycles per pixel, 0..~0.7
    bins = np.linspace(0, 0.5, n_bins + 1)
    idx = np.digitize(rad.ravel(), bins) - 1
    ok = (idx >= 0) & (idx < n_bins)
    curve = np.bincount(idx[ok], weights=p.ravel()[ok], minlength=n_bins) / np.maximum(
        np.bincount(idx[ok], minlength=n_bins), 1)
    s = curve.sum()
    return curve / s if s > 0 else curve


def nps_mean_freq(curve: np.ndarray) -> float:
    """Mean frequency (cycles/pixel) of a normalised NPS curve from :func:`nps`."""
    f = (np.arange(len(curve)) + 0.5) * 0.5 / len(curve)
    return float((f * curve).sum())


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-D Wasserstein distance between two samples (in their units)."""
    from scipy.stats import wasserstein_distance
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    return float(wasserstein_distance(a, b))


def _crop2d(a: np.ndarray, center: tuple[int, int], half: int) -> np.ndarray:
    i, j = center
    i0, j0 = max(0, i - half), max(0, j - half)
    return a[i0:i0 + 2 * half, j0:j0 + 2 * half]


def _centre(crop: np.ndarray, size: int = 32) -> np.ndarray:
    """The central ``size`` x ``size`` of a crop: where a forged region's noise is measured."""
    i, j = (crop.shape[0] - size) // 2, (crop.shape[1] - size) // 2
    return crop[i:i + size, j:j + size]


def _flags(image: Image) -> dict[str, float]:
    """Each applicable foundation detector's score for ``image``."""
    from ..scan import analyze
    v = analyze(image)
    return {e.detector: round(e.score, 3) for e in v.evidence}


@dataclasses.dataclass
class MethodStats:
    """What one method's forgeries measured (lists: one value per forgery)."""

    name: str
    values: list[np.ndarray] = dataclasses.field(default_factory=list)
    noise_ratio: list[float] = dataclasses.field(default_factory=list)
    nps_curves: list[np.ndarray] = dataclasses.field(default_factory=list)
    scores: list[dict[str, float]] = dataclasses.field(default_factory=list)
    crops: list[np.ndarray] = dataclasses.field(default_factory=list)
    seconds: list[float] = dataclasses.field(default_factory=list)

    def summary(self, ref_values: np.ndarray, ref_nps: np.ndarray) -> dict[str, Any]:
        vals = np.concatenate(self.values) if self.values else np.zeros(0)
        curve = np.mean(self.nps_curves, axis=0) if self.nps_curves else np.zeros_like(ref_nps)
        dets = sorted({d for s in self.scores for d in s})
        return {
            "method": self.name, "n": len(self.scores),
            "mean": round(float(vals.mean()), 1) if vals.size else None,
            "std": round(float(vals.std()), 1) if vals.size else None,
            "wasserstein_to_real": round(wasserstein(vals, ref_values), 1),
            "noise_ratio_median": round(float(np.nanmedian(self.noise_ratio)), 2) if self.noise_ratio else None,
            "nps_mean_freq": round(nps_mean_freq(curve), 4),
            "nps_l1_to_real": round(float(np.abs(curve - ref_nps).sum()), 3),
            "flagged": {d: round(float(np.mean([s.get(d, 0.0) >= FLAG for s in self.scores])), 2) for d in dets},
            "seconds_each": round(float(np.mean(self.seconds)), 2) if self.seconds else None,
        }


# ----------------------------------------------------------------------------- CT

def _ct_part(root: Path, n: int, seed: int, tick: Callable[[str], None]) -> dict[str, Any]:
    from ..io import load_series
    from . import ct, lidc

    files = sorted((root / "ct" / "lidc-idri" / "LIDC-IDRI-0001").rglob("*.dcm"))
    if not files:
        raise MedForensicsError(root, "the LIDC-IDRI-0001 series is needed for the CT part of the report")
    vol = load_series(files)
    rng = np.random.default_rng(seed)
    nodules = [nd for nd in lidc.nodules_for(vol) if nd.diameter_mm >= 4]
    lung = ct.lung_mask(vol.pixels)
    half = 32  # crops of 64 px (45 mm at 0.7 mm): a whole nodule and its surroundings

    # real references: voxels of real nodules, real parenchyma, and their noise
    real_nod_vals, real_nod_crops = [], []
    for nd in nodules:
        if nd.mask is not None:  # the readers' outlines
            box = tuple(slice(a, b) for a, b in zip(nd.bbox_voxel[:3], nd.bbox_voxel[3:]))
            real_nod_vals.append(vol.pixels[box][nd.mask])
        else:
            real_nod_vals.append(vol.pixels[_ball(vol, nd.center_voxel, nd.diameter_mm / 2)])
        real_nod_crops.append(_crop2d(vol.pixels[nd.center_voxel[0]], nd.center_voxel[1:], half))
    lung_pts = np.argwhere(lung)
    pick = lung_pts[rng.choice(len(lung_pts), size=min(4 * n, len(lung_pts)), replace=False)]
    real_lung_vals, real_lung_noise, real_lung_nps, real_lung_crops = [], [], [], []
    for p in pick:
        m = _ball(vol, tuple(int(v) for v in p), 5.0) & lung
        if m.sum() < 50:
            continue
        real_lung_vals.append(vol.pixels[m])
        real_lung_noise.append(noise_std(vol.pixels, m))
        crop = _crop2d(vol.pixels[p[0]], tuple(p[1:]), half)
        if crop.shape == (2 * half, 2 * half):
            real_lung_nps.append(nps(_centre(crop)))
            real_lung_crops.append(crop)
    ref = {"nodule": np.concatenate(real_nod_vals) if real_nod_vals else np.zeros(0),
           "lung": np.concatenate(real_lung_vals)}
    ref_nps = np.mean(real_lung_nps, axis=0)
    nod_nps = [nps(_centre(c)) for c in real_nod_crops if c.shape == (2 * half, 2 * half)]
    ref_nps_nodule = np.mean(nod_nps, axis=0) if nod_nps else ref_nps
    lung_noise = float(np.nanmedian(real_lung_noise))

    stats: dict[str, MethodStats] = {}
    for method in ("classic", "gan"):
        for op in ("inject", "remove"):
            name = f"{op} ({method})"
            st = stats[name] = MethodStats(name)
            for j in range(n if op == "inject" else max(1, min(n, 2 * len(nodules)))):
                s = int(rng.integers(2**31))
                t0 = time.perf_counter()
                try:
                    if op == "inject":
                        f = ct.inject(vol, diameter_mm=float(rng.uniform(6, 20)),
                                      nodule_type=str(rng.choice(["solid", "part-solid", "ground-glass"])),
                                      method=method, seed=s)
                    else:
                        if not nodules:
                            break
                        f = ct.remove(vol, nodule=nodules[j % len(nodules)], method=method, seed=s)
                except MedForensicsError as e:
                    tick(f"{name}: {e}")
                    break
                st.seconds.append(time.perf_counter() - t0)
                c = tuple(int(v) for v in f.center_voxel)
                core = _ball(vol, c, float(f.params.get("diameter_mm", 10)) / 2) & (f.mask > 0)
                st.values.append(f.pixels[core])
                # noise of the forged region against real lung noise (both in lung-like voxels)
                lungish = (f.mask > 0) & (f.pixels < -500)
                if lungish.sum() >= 50:
                    st.noise_ratio.append(noise_std(f.pixels, lungish) / lung_noise)
                crop = _crop2d(f.pixels[c[0]], c[1:], half)
                if crop.shape == (2 * half, 2 * half):
                    st.nps_curves.append(nps(_centre(crop)))
                    st.crops.append(crop)
                st.scores.append(_flags(dataclasses.replace(vol, pixels=f.pixels)))
                tick(name)
    authentic = _flags(vol)
    table = [st.summary(ref["nodule"], ref_nps_nodule) if name.startswith("inject") else st.summary(ref["lung"], ref_nps)
             for name, st in stats.items()]
    return {"table": table, "authentic_scores": authentic, "stats": stats, "ref": ref, "ref_nps": ref_nps,
            "ref_nps_nodule": ref_nps_nodule,
            "real_crops": {"nodule": real_nod_crops, "lung": real_lung_crops},
            "reference": {"real_nodule_mean": round(float(ref["nodule"].mean()), 1) if ref["nodule"].size else None,
                          "real_lung_mean": round(float(ref["lung"].mean()), 1),
                          "real_lung_noise_std": round(lung_noise, 1), "n_real_nodules": len(nodules),
                          "nps_mean_freq": round(nps_mean_freq(ref_nps), 4),
                          "nodule_nps_mean_freq": round(nps_mean_freq(ref_nps_nodule), 4)}}


def _ball(vol: Image, center: tuple[int, ...], radius_mm: float) -> np.ndarray:
    """Boolean ball of ``radius_mm`` around a voxel, honouring the (anisotropic) spacing."""
    sp = np.array([s or 1.0 for s in vol.spacing], float)
    r = np.ceil(radius_mm / sp).astype(int)
    lo = np.maximum(np.array(center) - r, 0)
    hi = np.minimum(np.array(center) + r + 1, vol.pixels.shape)
    out = np.zeros(vol.pixels.shape, bool)
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, sp))
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = d2 <= radius_mm ** 2
    return out


# ----------------------------------------------------------------------------- radiographs

def _xray_part(root: Path, n: int, seed: int, tick: Callable[[str], None]) -> dict[str, Any]:
    from ..io import load_raster
    from . import edits

    files = sorted((root / "xray" / "mhh-covid19" / "images").glob("*.png"))
    if len(files) < 2:
        raise MedForensicsError(root, "the MHH radiographs are needed for the radiograph part of the report")
    rng = np.random.default_rng(seed + 1)
    chosen = [files[i] for i in rng.choice(len(files), size=min(n, len(files)), replace=False)]
    methods = ["copymove", "splice", "inpaint (classic)", "inpaint (learned)", "intensity", "contrast", "resample"]
    stats = {m: MethodStats(m) for m in methods}
    ref_nps, ref_vals, authentic = [], [], []
    for i, f in enumerate(chosen):
        img = load_raster(f)
        authentic.append(_flags(img))
        for m in methods:
            s = int(rng.integers(2**31))
            t0 = time.perf_counter()
            try:
                if m == "splice":
                    donor = load_raster(chosen[(i + 1) % len(chosen)])
                    fg = edits.forge_splice(img, donor, seed=s)
                elif m.startswith("inpaint"):
                    fg = edits.forge_inpaint(img, method="learned" if "learned" in m else "classic", seed=s)
                else:
                    fg = getattr(edits, f"forge_{m}")(img, seed=s)
            except MedForensicsError as e:
                tick(f"{m}: {e}")
                continue
            st = stats[m]
            st.seconds.append(time.perf_counter() - t0)
            inside = fg.mask > 0
            ring = ndimage.binary_dilation(inside, iterations=12) & ~inside
            st.values.append(fg.pixels[inside])
            ref_vals.append(img.pixels[ring])
            n_in, n_ring = noise_std(fg.pixels, inside), noise_std(img.pixels, ring)
            if np.isfinite(n_in) and n_ring > 0:
                st.noise_ratio.append(n_in / n_ring)
            c = tuple(int(v) for v in fg.center_voxel)
            crop = _crop2d(fg.pixels, c, 32)
            if crop.shape == (64, 64):
                st.nps_curves.append(nps(crop))
                st.crops.append(crop)
                ref_nps.append(nps(_crop2d(img.pixels, c, 32)))
            st.scores.append(_flags(dataclasses.replace(img, pixels=fg.pixels)))
        tick(f"radiograph {i + 1}")
    rn = np.mean(ref_nps, axis=0) if ref_nps else np.zeros(16)
    rv = np.concatenate(ref_vals) if ref_vals else np.zeros(0)
    table = [st.summary(rv, rn) for st in stats.values() if st.scores]
    synth = _synthetic_part(files, n, seed, tick)
    return {"table": table, "authentic_scores": authentic, "stats": stats, "synthetic": synth}


def _synthetic_part(real_files: list[Path], n: int, seed: int, tick: Callable[[str], None]) -> dict[str, Any] | None:
    """Whole synthetic radiographs against real ones: histogram, noise, NPS, detector scores."""
    from ..io import load_raster
    try:
        from . import synth
        model = synth.load_model()
    except (ImportError, MedForensicsError) as e:
        tick(f"synthetic: {e}")
        return None
    rng = np.random.default_rng(seed + 2)
    st = MethodStats("synthetic radiograph")
    real_vals, real_noise, real_nps, real_crops = [], [], [], []
    for f in [real_files[i] for i in rng.choice(len(real_files), size=min(n, len(real_files)), replace=False)]:
        ref = load_raster(f)
        full = np.ones(ref.pixels.shape, bool)
        real_vals.append(ref.pixels.ravel()[::7])
        real_noise.append(noise_std(ref.pixels, full))
        c = (ref.pixels.shape[0] // 2, ref.pixels.shape[1] // 3)
        real_nps.append(nps(_crop2d(ref.pixels, c, 32)))
        real_crops.append(ref.pixels)
        t0 = time.perf_counter()
        px = synth.synthesize_like(f, seed=int(rng.integers(2**31)), model=model)
        st.seconds.append(time.perf_counter() - t0)
        st.values.append(px.ravel()[::7])
        st.noise_ratio.append(noise_std(px, full) / max(real_noise[-1], 1e-6))
        st.nps_curves.append(nps(_crop2d(px, c, 32)))
        st.crops.append(px)
        st.scores.append(_flags(dataclasses.replace(ref, pixels=px.astype(np.float32))))
        tick("synthetic")
    return {"table": st.summary(np.concatenate(real_vals), np.mean(real_nps, axis=0)), "stats": st,
            "real_crops": real_crops}


# ----------------------------------------------------------------------------- output

def _montage(rows: list[tuple[str, list[np.ndarray]]], window: tuple[float, float] | None, path: Path,
             tile: int = 128, per_row: int = 4) -> Path:
    """Rows of labelled crops (first ``per_row`` of each), windowed, written as one PNG."""
    import cv2
    lines = []
    for label, crops in rows:
        tiles = []
        for c in crops[:per_row]:
            lo, hi = window if window else np.percentile(c, [1, 99])
            t = np.clip((c - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
            tiles.append(cv2.resize(t, (tile, tile), interpolation=cv2.INTER_NEAREST if window else cv2.INTER_AREA))
        tiles += [np.zeros((tile, tile), np.uint8)] * (per_row - len(tiles))
        head = np.full((tile, 190), 255, np.uint8)
        cv2.putText(head, label, (6, tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1, cv2.LINE_AA)
        lines.append(np.hstack([head] + [np.pad(t, 2, constant_values=255) [2:-2, 2:-2] for t in tiles]))
    img = np.vstack(lines)
    with open(path, "xb") as fh:
        fh.write(cv2.imencode(".png", img)[1].tobytes())
    return path


def _plots(ct: dict | None, xr: dict | None, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if ct:
        fig, ax = plt.subplots(1, 2, figsize=(11, 4))
        bins = np.linspace(-1000, 300, 66)
        ax[0].hist(ct["ref"]["nodule"], bins, density=True, histtype="step", lw=2.5, color="k", label="real nodules")
        ax[0].hist(ct["ref"]["lung"], bins, density=True, histtype="step", lw=2.5, color="gray", label="real lung")
        for name, st in ct["stats"].items():
            if st.values:
                ax[0].hist(np.concatenate(st.values), bins, density=True, histtype="step", label=name)
        ax[0].set(xlabel="HU", ylabel="density", title="HU inside forged regions vs real tissue")
        ax[0].legend(fontsize=8)
        f = (np.arange(len(ct["ref_nps"])) + 0.5) * 0.5 / len(ct["ref_nps"])
        ax[1].plot(f, ct["ref_nps"], "gray", lw=2.5, label="real lung")
        ax[1].plot(f, ct["ref_nps_nodule"], "k", lw=2.5, label="real nodules")
        for name, st in ct["stats"].items():
            if st.nps_curves:
                ax[1].plot(f, np.mean(st.nps_curves, axis=0), label=name)
        ax[1].set(xlabel="cycles / pixel", ylabel="normalised NPS", title="Noise power spectrum (in-plane)")
        ax[1].legend(fontsize=8)
        fig.tight_layout()
        p = out / "ct_hu_nps.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p)
    if xr:
        fig, ax = plt.subplots(figsize=(6, 4))
        curves = [(name, np.mean(st.nps_curves, axis=0)) for name, st in xr["stats"].items() if st.nps_curves]
        if xr.get("synthetic") and xr["synthetic"]["stats"].nps_curves:
            curves.append(("synthetic", np.mean(xr["synthetic"]["stats"].nps_curves, axis=0)))
        for name, c in curves:
            ax.plot((np.arange(len(c)) + 0.5) * 0.5 / len(c), c, label=name)
        ax.set(xlabel="cycles / pixel", ylabel="normalised NPS", title="Radiographs: NPS of forged regions")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "xray_nps.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        written.append(p)
    return written


def _md_table(rows: list[dict[str, Any]], unit: str) -> list[str]:
    dets = sorted({d for r in rows for d in r["flagged"]})
    head = ["method", "n", f"mean {unit}", f"sd {unit}", f"W1 to real ({unit})", "noise / real", "NPS mean f",
            "NPS L1 to real", "s each"] + [f"flagged by {d}" for d in dets]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], r["n"], r["mean"], r["std"], r["wasserstein_to_real"], r["noise_ratio_median"],
                 r["nps_mean_freq"], r["nps_l1_to_real"], r["seconds_each"]] + \
                [f"{100 * r['flagged'].get(d, 0):.0f}%" for d in dets]
        out.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    return out


def realism_report(data_root: str | Path, out: str | Path, *, n: int = 12, seed: int = 0,
                   progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Measure every forge method against real tissue; write JSON, markdown and figures to ``out``."""
    from ..io.plan import new_folder

    root, out = Path(data_root), new_folder(out)
    done = [0]
    total = 4 * n + 3 * n

    def tick(what: str) -> None:
        done[0] += 1
        if progress:
            progress(min(done[0], total), total, what)

    t0 = time.perf_counter()
    ct = _ct_part(root, n, seed, tick)
    xr = _xray_part(root, n, seed, tick)
    figs = _plots(ct, xr, out)
    win = (-1350.0, 150.0)
    figs.append(_montage([("real nodules", ct["real_crops"]["nodule"])] +
                         [(name, st.crops) for name, st in ct["stats"].items() if name.startswith("inject")] +
                         [("real lung", ct["real_crops"]["lung"])] +
                         [(name, st.crops) for name, st in ct["stats"].items() if name.startswith("remove")],
                         win, out / "ct_side_by_side.png"))
    rows = [(name, st.crops) for name, st in xr["stats"].items() if st.crops]
    if xr.get("synthetic"):
        rows += [("real radiographs", xr["synthetic"]["real_crops"]), ("synthetic", xr["synthetic"]["stats"].crops)]
    figs.append(_montage(rows, None, out / "xray_side_by_side.png"))

    result = {"seed": seed, "n": n, "seconds": round(time.perf_counter() - t0, 1), "ct": {
        "reference": ct["reference"], "methods": ct["table"], "authentic_series_scores": ct["authentic_scores"]},
        "radiographs": {"methods": xr["table"] + ([xr["synthetic"]["table"]] if xr.get("synthetic") else []),
                        "authentic_flagged": {d: round(float(np.mean([s.get(d, 0) >= FLAG for s in xr["authentic_scores"]])), 2)
                                              for d in sorted({d for s in xr["authentic_scores"] for d in s})}},
        "figures": [p.name for p in figs]}
    with open(out / "realism.json", "x") as fh:
        json.dump(result, fh, indent=2)
    ref = ct["reference"]
    md = [f"# Realism of forged regions (seed {seed}, {n} forgeries per method)", "",
          f"CT: LIDC-IDRI-0001; real nodules ({ref['n_real_nodules']} of >= 4 mm) mean {ref['real_nodule_mean']} HU; "
          f"real lung mean {ref['real_lung_mean']} HU, residual noise sd {ref['real_lung_noise_std']} HU, "
          f"NPS mean frequency {ref['nps_mean_freq']} cycles/pixel (real nodule: {ref['nodule_nps_mean_freq']}). Injections are compared with the real nodules (values and NPS), "
          f"removals with real lung. The authentic series scores {ct['authentic_scores']}.", ""]
    md += _md_table(ct["table"], "HU") + [""]
    md += ["Radiographs (MHH): each forged region against the untouched ring around it; synthetic images against "
           f"real radiographs. Authentic radiographs flagged: {result['radiographs']['authentic_flagged']}.", ""]
    md += _md_table(result["radiographs"]["methods"], "gray") + [""]
    weak = [f"{r['method']} ({', '.join(d for d, v in r['flagged'].items() if v >= 0.5)})"
            for r in ct["table"] + result["radiographs"]["methods"] if any(v >= 0.5 for v in r["flagged"].values())]
    md += ["Weak fakes (flagged by a foundation detector in at least half the cases): "
           + ("; ".join(weak) if weak else "none") + ".", "",
           "Figures: " + ", ".join(p.name for p in figs) + f". Took {result['seconds']} s.", ""]
    path = out / "realism.md"
    with open(path, "x") as fh:
        fh.write("\n".join(md))
    return path
