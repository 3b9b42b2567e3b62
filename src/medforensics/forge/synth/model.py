"""The generator of whole synthetic chest radiographs: a convolutional VAE with a patch
discriminator (:class:`TrainConfig`, :func:`train`), its checkpoint and sampling
(:class:`SynthModel`, :func:`load_model`). Training runs in the package's one loop,
:func:`medforensics.learn.loop.fit`."""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...core import MedForensicsError
from ...datapath import card_data_root, sources_of
from ...datapath import data_root as data_root_of
from .reference import Reference, _load_real, _patient_ids, find_training_images, measure_reference

__all__ = ["TrainConfig", "SynthModel", "train", "load_model", "SHIPPED_CHECKPOINT", "ARCHITECTURE"]

#: The checkpoint shipped with the package (trained with ``TrainConfig.small()``).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "synth_xray.safetensors"
ARCHITECTURE = "SynthXrayVAE"


# ============================================================================== configuration

@dataclass
class TrainConfig:
    """How the generator is built and trained. ``small()``: CPU, under 15 minutes; ``gpu()``: bigger.

    ``max_minutes`` stops training early (a finished checkpoint is still written) so a preset keeps
    its time budget on a slower or busier machine.
    """

    name: str = "small"
    image_size: int = 128
    latent_dim: int = 128
    base_channels: int = 8           # decoder channels at full resolution; doubled per halving, capped
    max_channels: int = 128
    disc_channels: int = 32
    batch_size: int = 16
    steps: int = 2400
    lr: float = 1.5e-3
    disc_lr: float = 2e-4
    kl_weight: float = 0.02          # per-pixel scale: KL (nats) / (H * W) times this
    grad_weight: float = 0.5         # L1 on image gradients, keeps edges (ribs, clavicles)
    adv_weight: float = 0.02
    adv_start: float = 0.75          # fraction of training (steps or time) before the adversarial term
    ema: float = 0.995
    threads: int = 2
    device: str = "cpu"
    max_minutes: float = 13.5
    seed: int = 0

    @classmethod
    def small(cls, **kw: Any) -> "TrainConfig":
        """128 px on 2 CPU threads, about 13 minutes."""
        return cls(**kw)

    @classmethod
    def gpu(cls, **kw: Any) -> "TrainConfig":
        """256 px, wider, longer; on CUDA when available (else CPU, slowly)."""
        import torch
        base = dict(name="gpu", image_size=256, latent_dim=256, base_channels=16, max_channels=384, disc_channels=64,
                    batch_size=32, steps=20000, lr=5e-4, adv_weight=0.05, adv_start=0.35, threads=8, max_minutes=120.0,
                    device="cuda" if torch.cuda.is_available() else "cpu")
        base.update(kw)
        return cls(**base)

    @classmethod
    def preset(cls, name: str, **kw: Any) -> "TrainConfig":
        if name == "small":
            return cls.small(**kw)
        if name == "gpu":
            return cls.gpu(**kw)
        raise MedForensicsError(None, f"unknown training preset {name!r} (use small or gpu)")


# ============================================================================== networks

def _channels(cfg_size: int, base: int, cap: int) -> list[int]:
    """Channels per resolution from 4 px up to ``cfg_size`` (``log2(size/4) + 1`` entries)."""
    n = int(round(math.log2(cfg_size / 4)))
    if 4 * 2 ** n != cfg_size:
        raise MedForensicsError(None, f"image_size must be 4 times a power of two, got {cfg_size}")
    return [min(cap, base * 2 ** (n - k)) for k in range(n + 1)]


def _build_networks(image_size: int, latent_dim: int, base: int, cap: int, disc: int):
    import torch
    from torch import nn
    from torch.nn.utils.parametrizations import spectral_norm

    ch = _channels(image_size, base, cap)   # ch[0] at 4 px ... ch[-1] at full size

    def block(ci, co, res):
        """Two convolutions where the anatomy lives (up to 32 px), one above (cheap on a CPU)."""
        layers = [nn.Conv2d(ci, co, 3, padding=1), nn.GroupNorm(min(8, max(1, co // 4)), co), nn.SiLU()]
        if res <= 32:
            layers += [nn.Conv2d(co, co, 3, padding=1), nn.GroupNorm(min(8, max(1, co // 4)), co), nn.SiLU()]
        return nn.Sequential(*layers)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            layers: list[nn.Module] = [nn.Conv2d(1, ch[-1], 3, padding=1), nn.SiLU()]
            for k in range(len(ch) - 1, 0, -1):
                co = ch[k - 1]
                layers += [nn.Conv2d(ch[k], co, 4, stride=2, padding=1), nn.GroupNorm(min(8, co // 4), co), nn.SiLU()]
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(ch[0] * 16, 2 * latent_dim)

        def forward(self, x):
            h = self.head(self.features(x).flatten(1))
            mu, logvar = h.chunk(2, dim=1)
            return mu, logvar.clamp(-12, 6)

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(latent_dim, ch[0] * 16)
            self.start = block(ch[0], ch[0], 4)
            self.ups = nn.ModuleList(block(ch[k - 1], ch[k], 4 * 2 ** k) for k in range(1, len(ch)))
            self.out = nn.Conv2d(ch[-1], 1, 3, padding=1)

        def forward(self, z):
            h = self.start(self.fc(z).view(z.shape[0], ch[0], 4, 4))
            for up in self.ups:
                h = up(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
            return torch.tanh(self.out(h))

    class PatchDisc(nn.Module):
        """Spectral-norm patch discriminator: real/fake per ~30 px patch of the 128 px image."""

        def __init__(self):
            super().__init__()
            c = disc
            self.net = nn.Sequential(
                spectral_norm(nn.Conv2d(1, c, 4, 2, 1)), nn.LeakyReLU(0.2),
                spectral_norm(nn.Conv2d(c, 2 * c, 4, 2, 1)), nn.LeakyReLU(0.2),
                spectral_norm(nn.Conv2d(2 * c, 4 * c, 4, 2, 1)), nn.LeakyReLU(0.2),
                spectral_norm(nn.Conv2d(4 * c, 4 * c, 3, 1, 1)), nn.LeakyReLU(0.2),
                spectral_norm(nn.Conv2d(4 * c, 1, 3, 1, 1)))

        def forward(self, x):
            return self.net(x)

    return Encoder(), Decoder(), PatchDisc()


# ============================================================================== training

def _load_training_set(files: Sequence[Path], size: int):
    """(float tensor (N, 1, size, size) in [-1, 1], references): each radiograph squeezed to a square
    (its aspect ratio is restored when a sample is finished to a reference of that shape)."""
    import cv2
    import torch
    arrs, refs = [], []
    for f in files:
        loaded = _load_real(f)
        px, full, _ = loaded
        refs.append(measure_reference(f, loaded))
        arrs.append(cv2.resize((px / full).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA))
    x = torch.from_numpy(np.stack(arrs)[:, None])
    return x * 2 - 1, refs


def _augment(x, gen):
    """Small shifts, scales, rotations and brightness/contrast/gamma changes; never flips (the heart
    is on the left)."""
    import torch
    n = x.shape[0]
    dev = x.device

    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(n, generator=gen, device="cpu").to(dev)

    s, r = u(0.93, 1.07), u(-4, 4) * math.pi / 180
    tx, ty = u(-0.05, 0.05), u(-0.05, 0.05)
    theta = torch.stack([torch.stack([torch.cos(r) / s, -torch.sin(r) / s, tx], 1),
                         torch.stack([torch.sin(r) / s, torch.cos(r) / s, ty], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    y = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y01 = ((y + 1) / 2).clamp(0, 1)
    y01 = y01 ** u(0.85, 1.15).view(n, 1, 1, 1)
    y01 = (y01 - 0.5) * u(0.9, 1.1).view(n, 1, 1, 1) + 0.5 + u(-0.06, 0.06).view(n, 1, 1, 1)
    return (y01.clamp(0, 1) * 2 - 1)


def _grad_l1(a, b):
    dx = lambda t: t[..., :, 1:] - t[..., :, :-1]  # noqa: E731
    dy = lambda t: t[..., 1:, :] - t[..., :-1, :]  # noqa: E731
    return (dx(a) - dx(b)).abs().mean() + (dy(a) - dy(b)).abs().mean()


def train(config: TrainConfig | str = "small", out: str | Path = "synth_xray.safetensors",
          data_root: str | Path | None = None, progress: bool = True) -> Path:
    """Train the generator on the real radiographs and write a checkpoint with a model card.

    Parameters
    ----------
    config : TrainConfig or str
        A configuration or a preset name (``small``, ``gpu``).
    out : path
        A new ``.safetensors`` file (never overwritten).
    data_root : path, optional
        Root of the real data (default ``$MEDFORENSICS_DATA`` or ``../shared/data``).
    progress : bool
        Show a progress bar with the current losses.

    Returns
    -------
    Path
        The checkpoint written. Its card holds the data (files, patients), the configuration, the
        loss history, the wall time and the references that samples are finished to.
    """
    import torch
    from ...learn.checkpoint import save_checkpoint
    from ...learn.loop import pick_device, torch_threads

    cfg = TrainConfig.preset(config) if isinstance(config, str) else config
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new name")
    if not out.parent.exists():
        raise MedForensicsError(out, f"folder {out.parent} does not exist")
    dev = pick_device(cfg.device)
    root = data_root_of(data_root)
    files = find_training_images(root)
    t0 = time.time()
    with torch_threads(max(1, min(cfg.threads, os.cpu_count() or 1))):
        data, refs = _load_training_set(files, cfg.image_size)
        data = data.to(dev)
        ema, mean, chol, history, steps_done, stopped_early = _fit(cfg, data, progress, t0)
        wall = time.time() - t0
        pids = _patient_ids(root)
        card = {
            "architecture": ARCHITECTURE,
            "config": dataclasses.asdict(cfg),
            "task": "generate whole chest radiographs (synthetic fakes for training and testing detectors)",
            "data": {"root": card_data_root(), "sources": sources_of(files, root), "n_images": len(files),
                     "files": [str(f.relative_to(root)) for f in files],
                     "patients": sorted({pids.get(f.stem, f.stem) for f in files}),
                     "left_out": "xray/nih-cxr14/NIH1000 (64 px thumbnails: too small for 128 px training)"},
            "training": {"steps_done": steps_done, "stopped_early": stopped_early, "wall_time_s": round(wall, 1),
                         "device": str(dev), "threads": torch.get_num_threads(), "history": history,
                         "torch": torch.__version__},
            "metrics": {"final": history[-1] if history else {}},
            "references": [r.to_dict() for r in refs],
        }
        state = {f"decoder.{k}": v.float() for k, v in ema.state_dict().items()}
        state["latent.mean"] = mean.float()
        state["latent.chol"] = chol.float()
        save_checkpoint(state, out, card)
    return out


def _fit(cfg: TrainConfig, data, progress: bool, t0: float):
    """The training step on a prepared tensor (N, 1, S, S) in [-1, 1] on the target device, run by
    :func:`medforensics.learn.loop.fit` for ``cfg.steps`` steps or until ``cfg.max_minutes`` (counted
    from ``t0``: the budget includes loading the data).

    Returns (EMA decoder, latent mean, latent Cholesky factor, loss history, steps done, stopped early).
    """
    import torch
    from ...learn.loop import fit, seed_everything
    seed_everything(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dev = data.device
    enc, dec, disc = _build_networks(cfg.image_size, cfg.latent_dim, cfg.base_channels, cfg.max_channels,
                                     cfg.disc_channels)
    enc, dec, disc = enc.to(dev), dec.to(dev), disc.to(dev)
    ema = _build_networks(cfg.image_size, cfg.latent_dim, cfg.base_channels, cfg.max_channels,
                          cfg.disc_channels)[1].to(dev)
    ema.load_state_dict(dec.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=cfg.lr, betas=(0.9, 0.99))
    dopt = torch.optim.Adam(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
    budget_s = cfg.max_minutes * 60
    warmup = max(1, min(100, cfg.steps // 10))
    hw = cfg.image_size ** 2
    history: list[dict[str, float]] = []
    acc: dict[str, list[float]] = {}
    adv_from = -1
    log_every = max(1, cfg.steps // 60)

    def step_fn(step: int) -> dict[str, float]:
        nonlocal adv_from, acc
        # progress: by steps, or by time when the time budget runs out first; the schedules
        # (KL warm-up, adversarial start, learning-rate decay) follow it
        frac = min(1.0, max(step / cfg.steps, (time.time() - t0) / budget_s))
        lr_f = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_f
        idx = torch.randint(0, data.shape[0], (cfg.batch_size,), generator=gen).to(dev)
        x = _augment(data[idx], gen)
        mu, logvar = enc(x)
        z = mu + torch.randn(mu.shape, generator=gen).to(dev) * (0.5 * logvar).exp()
        rec = dec(z)
        l_rec = (rec - x).abs().mean()
        l_grad = _grad_l1(rec, x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        kl_w = cfg.kl_weight * min(1.0, frac / 0.2)
        loss = l_rec + cfg.grad_weight * l_grad + kl_w * kl / hw
        adv_on = frac >= cfg.adv_start and cfg.adv_weight > 0
        l_adv = torch.zeros((), device=dev)
        prior = None
        if adv_on:
            prior = dec(torch.randn((cfg.batch_size // 2, cfg.latent_dim), generator=gen).to(dev))
            fake = torch.cat([rec, prior])
            l_adv = -disc(fake).mean()
            adv_from = adv_from if adv_from >= 0 else step
            ramp = min(1.0, (step - adv_from + 1) / max(1, 0.1 * cfg.steps))
            loss = loss + cfg.adv_weight * ramp * l_adv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        l_d = torch.zeros((), device=dev)
        if adv_on:
            fake = torch.cat([rec.detach(), prior.detach()])
            l_d = torch.relu(1 - disc(x)).mean() + torch.relu(1 + disc(fake)).mean()
            dopt.zero_grad(set_to_none=True)
            l_d.backward()
            dopt.step()
        with torch.no_grad():
            for pe, pd in zip(ema.parameters(), dec.parameters()):
                pe.lerp_(pd, 1 - cfg.ema)
            for be, bd in zip(ema.buffers(), dec.buffers()):
                be.copy_(bd)
        vals = {k: float(v.detach()) for k, v in (("recon_l1", l_rec), ("grad_l1", l_grad), ("kl", kl),
                                                   ("adv_g", l_adv), ("disc", l_d))}
        for k, v in vals.items():
            acc.setdefault(k, []).append(v)
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "time_s": round(time.time() - t0, 1),
                            **{k: round(float(np.mean(v)), 5) for k, v in acc.items()}})
            acc = {}
        return {"recon": vals["recon_l1"], "kl": vals["kl"], "adv": vals["adv_g"]}

    run = fit(step_fn, steps=cfg.steps, max_minutes=cfg.max_minutes, start=t0, desc="train-synth",
              progress=progress, log_every=log_every)
    steps_done, stopped_early = run.steps_done, run.stopped_by == "max_minutes"
    if acc:
        history.append({"step": steps_done, "time_s": round(time.time() - t0, 1),
                        **{k: round(float(np.mean(v)), 5) for k, v in acc.items()}})
    # latent distribution of the training images: samples come from this Gaussian
    enc.eval()
    with torch.no_grad():
        mus = torch.cat([enc(data[i:i + 32])[0] for i in range(0, data.shape[0], 32)]).double().cpu()
    mean = mus.mean(0)
    cov = torch.cov(mus.T) if mus.shape[0] > 1 else torch.eye(cfg.latent_dim, dtype=torch.float64)
    cov = 0.9 * cov + 0.1 * torch.diag(torch.diag(cov)) + 1e-4 * torch.eye(cfg.latent_dim, dtype=torch.float64)
    chol = torch.linalg.cholesky(cov)
    return ema, mean, chol, history, steps_done, stopped_early


# ============================================================================== loading and sampling

@dataclass
class SynthModel:
    """A loaded generator: decoder, latent Gaussian, model card and the references from training."""

    decoder: Any
    mean: Any
    chol: Any
    card: dict[str, Any]
    path: Path

    @property
    def config(self) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.card.get("config", {}).items() if k in fields})

    @property
    def references(self) -> list[Reference]:
        return [Reference.from_dict(d) for d in self.card.get("references", [])]

    def generate(self, latents: np.ndarray, temperature: float = 1.0, batch: int = 16) -> np.ndarray:
        """Decode standard-normal ``latents`` (n, latent_dim) to images in [0, 1] at the model's size."""
        import torch
        out = []
        with torch.no_grad():
            for i in range(0, len(latents), batch):
                eps = torch.from_numpy(np.asarray(latents[i:i + batch], np.float32))
                z = self.mean + temperature * eps @ self.chol.T
                out.append(((self.decoder(z)[:, 0] + 1) / 2).clamp(0, 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)


def load_model(path: str | Path | None = None) -> SynthModel:
    """Load a generator checkpoint (default: the shipped one); cached per path."""
    p = Path(path) if path is not None else SHIPPED_CHECKPOINT
    if path is None and not p.is_file():
        raise MedForensicsError(p, "the shipped synthesis checkpoint is missing; train one with "
                                "`medforensics forge train-synth` and pass --model")
    p = p.resolve() if p.exists() else p
    st = p.stat() if p.exists() else None
    return _load_model_cached(str(p), st.st_mtime_ns if st else 0)


@functools.lru_cache(maxsize=4)
def _load_model_cached(path: str, _mtime: int) -> SynthModel:
    from ...learn.checkpoint import load_checkpoint
    state, card = load_checkpoint(path)
    if card.get("architecture") != ARCHITECTURE:
        raise MedForensicsError(path, f"not a synthesis checkpoint (architecture {card.get('architecture')!r}, "
                                f"expected {ARCHITECTURE})")
    c = card.get("config", {})
    try:
        _, dec, _ = _build_networks(int(c["image_size"]), int(c["latent_dim"]), int(c["base_channels"]),
                                    int(c["max_channels"]), int(c["disc_channels"]))
        dec.load_state_dict({k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")})
        mean, chol = state["latent.mean"], state["latent.chol"]
    except (KeyError, RuntimeError, ValueError) as e:
        raise MedForensicsError.wrap(path, e, "checkpoint does not match its model card", limit=160) from None
    dec.eval()
    return SynthModel(decoder=dec, mean=mean, chol=chol, card=card, path=Path(path))
