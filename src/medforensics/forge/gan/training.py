"""Training the in-painting generator adversarially on real CT cubes or radiograph patches
(:class:`TrainConfig`, :func:`train`), in the package's one loop, :func:`medforensics.learn.loop.fit`."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core import MedForensicsError
from ...datapath import card_data_root, sources_of
from ...datapath import data_root as data_root_of
from .rendering import (CT_RANGE, _blur_t, _highpass_ratio, _norm_params, _normalise, _render, _sigma, _torch,
                        lowpass)

__all__ = ["TrainConfig", "train"]


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
    from ...io import load

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
    from ...io import load

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
    noise ratio measured on held-out regions). Returns ``out``. Runs on ``config.threads`` torch
    CPU threads (0: torch's setting), restored afterwards."""
    from ...learn.loop import torch_threads

    with torch_threads(config.threads if config.threads > 0 else None):
        return _train(config, out, data_root, progress)


def _train(config: TrainConfig, out: str | Path, data_root: str | Path | None, progress: bool) -> Path:
    torch = _torch()
    import torch.nn.functional as F
    from ...learn.checkpoint import save_checkpoint
    from ...learn.loop import fit, pick_device, seed_everything
    from .nets import InpaintUNet, PatchDiscriminator, _multiple

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
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
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

    def train_step(step: int) -> dict[str, float]:
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

        vals = {"g": loss_g.item(), "d": loss_d.item(), "lowpass": l_lp.item(), "noise": l_noise.item(),
                "spectrum": l_spec.item(), "adv": l_adv.item()}
        for k, v in vals.items():
            ema[k] = v if k not in ema else 0.95 * ema[k] + 0.05 * v
        if step == 0 or (step + 1) % 25 == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "t": round(time.time() - t0, 1), **{k: round(v, 5) for k, v in ema.items()}})
        return {k: ema[k] for k in ("g", "lowpass", "noise", "d")}

    G.train()
    D.train()
    # the time limit counts from the start, data setup included
    run = fit(train_step, steps=cfg.steps, max_minutes=cfg.time_limit_s / 60.0 if cfg.time_limit_s else 0.0,
              start=t0, desc=f"train-gan {cfg.modality}", progress=progress, log_every=25)
    steps_done = run.steps_done
    stopped = "time limit" if run.stopped_by == "max_minutes" else "steps"
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
