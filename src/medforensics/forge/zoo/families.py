"""The generator families of the zoo: how each is trained, sampled and used to reconstruct.

A family is a :class:`Family`: ``train(preset)`` fits its networks on the real radiographs of the
``train`` patients (:func:`medforensics.forge.zoo.real_images`) and returns a
:class:`ZooModel` (networks + card); ``sample(model, n, seed)`` draws whole images;
``reconstruct(model, image, seed)`` passes an authentic image through the family's generator so
that fake and authentic share their anatomy and differ only in the generator's traces (DRCT,
ICML 2024). All images are float32 in [0, 1].

==============  =====================================  ==========================================
family          whole images (``sample``)              reconstructions (``reconstruct``)
==============  =====================================  ==========================================
``gan``         DCGAN, transposed convolutions,        resized to the GAN's size, inverted by an
                256 px (``small``) / 512 px (``gpu``)  encoder, regenerated (the GAN's size)
``diffusion``   DDPM-trained UNet (diffusers), DDIM    SDEdit: noised to 25-40% of the schedule
                sampling, 128 / 256 px                 and denoised, at native resolution
``upsample``    --                                     4x down, then the pixel-shuffle
                                                       super-resolution decoder, native size
``vae``         the shipped VAE synthesiser            --
                (:mod:`medforensics.forge.synth`)
==============  =====================================  ==========================================
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...core import MedForensicsError

__all__ = ["Preset", "ZooModel", "Family", "FAMILIES", "family", "train_family", "load_zoo_model",
           "fit_loop"]


@dataclass
class Preset:
    """How big a family's networks are and how long they train. ``small`` runs on 2 CPU cores in
    minutes (its fakes are crude); ``gpu`` is the protocol for a lent GPU."""

    name: str = "small"
    size: int = 256            # whole-image size (gan, diffusion)
    width: int = 16            # base channels
    steps: int = 600
    batch: int = 16
    lr: float = 2e-4
    crop: int = 128            # native-resolution crops (diffusion, upsample)
    invert_steps: int = 300    # gan: encoder steps
    max_minutes: float = 0.0   # 0 = no budget (each stage: a GAN and its encoder have one each)
    max_images: int = 0        # train on at most this many real images (0 = all of the train split)
    sample_steps: int = 20     # diffusion: DDIM steps of the whole schedule (sampling and reconstruction)
    threads: int = 2
    device: str = "cpu"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ZooModel:
    """A trained family member: its networks (torch modules, eval mode) and model card."""

    family: str
    nets: dict[str, Any]
    card: dict[str, Any]
    path: Path | None = None

    @property
    def preset(self) -> Preset:
        names = {f.name for f in dataclasses.fields(Preset)}
        return Preset(**{k: v for k, v in self.card.get("config", {}).items() if k in names})


@dataclass
class Family:
    name: str
    summary: str
    presets: dict[str, Preset]
    build: Callable[[Preset], dict[str, Any]]
    fit: Callable[[dict[str, Any], Preset, list[np.ndarray], Callable], dict[str, Any]]
    sample: Callable[[ZooModel, int, int], list[np.ndarray]] | None = None
    reconstruct: Callable[[ZooModel, np.ndarray, int], np.ndarray] | None = None
    modes: tuple[str, ...] = field(default=())


# ============================================================================== the training loop

def fit_loop(steps: int, step: Callable[[int], dict[str, float]], *, desc: str, max_minutes: float = 0.0,
             progress: bool = True) -> dict[str, Any]:
    """Run ``step(i)`` for ``steps`` steps (or until ``max_minutes``) with the package's one training
    loop (:func:`medforensics.learn.loop.fit`); returns the history (every 10% of the run) and how
    the run ended, as a model card keeps them."""
    from ...learn.loop import fit
    return fit(step, steps=steps, max_minutes=max_minutes, desc=desc, progress=progress,
               log_every=max(1, steps // 10)).to_dict()


# ============================================================================== batches

def _to_tensor(batch: list[np.ndarray]):
    import torch
    return torch.from_numpy(np.stack(batch)[:, None].astype(np.float32) * 2.0 - 1.0)


def _whole(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Every training image squashed to ``size`` x ``size`` (area interpolation)."""
    import cv2
    return [cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA) for a in images]


def _crops(images: list[np.ndarray], crop: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        a = images[int(rng.integers(len(images)))]
        if min(a.shape) < crop:
            a = np.pad(a, [(0, max(0, crop - a.shape[0])), (0, max(0, crop - a.shape[1]))], mode="reflect")
        y, x = int(rng.integers(a.shape[0] - crop + 1)), int(rng.integers(a.shape[1] - crop + 1))
        out.append(a[y:y + crop, x:x + crop])
    return out


def _pad_to_multiple(a: np.ndarray, k: int) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = a.shape
    ph, pw = (-h) % k, (-w) % k
    return (np.pad(a, [(0, ph), (0, pw)], mode="reflect") if ph or pw else a), (h, w)


# ============================================================================== gan

def _gan_build(p: Preset) -> dict[str, Any]:
    from .nets import dcgan_discriminator, dcgan_encoder, dcgan_generator
    return {"generator": dcgan_generator(p.size, 128, p.width // 2, 256),
            "discriminator": dcgan_discriminator(p.size, p.width // 2, 256),
            "encoder": dcgan_encoder(p.size, 128, p.width // 2, 256)}


def _gan_fit(nets, p: Preset, images, run) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    g, d, e = nets["generator"], nets["discriminator"], nets["encoder"]
    data = _whole(images, p.size)
    rng = np.random.default_rng(p.seed)
    opt_g = torch.optim.Adam(g.parameters(), lr=p.lr, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), lr=p.lr, betas=(0.5, 0.99))

    def gan_step(i: int) -> dict[str, float]:
        real = _to_tensor([data[j] for j in rng.integers(len(data), size=p.batch)])
        z = torch.randn(p.batch, 128)
        fake = g(z)
        loss_d = F.relu(1 - d(real)).mean() + F.relu(1 + d(fake.detach())).mean()
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        loss_g = -d(fake).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        return {"d": loss_d.item(), "g": loss_g.item()}

    g.train(), d.train()
    first = run(p.steps, gan_step, "gan")
    g.eval()
    for prm in g.parameters():
        prm.requires_grad_(False)
    opt_e = torch.optim.Adam(e.parameters(), lr=p.lr * 2)

    def invert_step(i: int) -> dict[str, float]:
        real = _to_tensor([data[j] for j in rng.integers(len(data), size=p.batch)])
        z = e(real)
        loss = (g(z) - real).abs().mean() + 1e-3 * z.pow(2).mean()
        opt_e.zero_grad()
        loss.backward()
        opt_e.step()
        return {"l1": loss.item()}

    e.train()
    second = run(p.invert_steps, invert_step, "gan inversion")
    return {"gan": first, "inversion": second}


def _gan_sample(m: ZooModel, n: int, seed: int) -> list[np.ndarray]:
    import torch
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        z = torch.randn(n, 128, generator=gen)
        x = m.nets["generator"](z)[:, 0]
    return [((a.numpy() + 1) / 2).clip(0, 1).astype(np.float32) for a in x]


def _gan_reconstruct(m: ZooModel, image: np.ndarray, seed: int) -> np.ndarray:
    import torch
    size = m.preset.size
    x = _to_tensor(_whole([image], size))
    with torch.no_grad():
        y = m.nets["generator"](m.nets["encoder"](x))[0, 0].numpy()
    return ((y + 1) / 2).clip(0, 1).astype(np.float32)


# ============================================================================== diffusion

#: Share of the diffusion schedule an authentic image is noised to before it is denoised
#: (SDEdit / DRCT): low enough to keep the anatomy, high enough to replace the noise texture.
RECONSTRUCT_STRENGTH = (0.25, 0.4)
TRAIN_TIMESTEPS = 1000


def _diffusion_build(p: Preset) -> dict[str, Any]:
    from .nets import diffusion_unet
    return {"unet": diffusion_unet(width=p.width, levels=3)}


def _scheduler(kind: str = "ddim"):
    from diffusers import DDIMScheduler, DDPMScheduler
    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    return cls(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="squaredcos_cap_v2", clip_sample=True)


def _diffusion_fit(nets, p: Preset, images, run) -> dict[str, Any]:
    """DDPM's noise-prediction loss on a mix of whole images (at ``size``, for sampling) and
    native-resolution crops (for reconstructions at native resolution)."""
    import torch

    unet = nets["unet"]
    sched = _scheduler("ddpm")
    whole = _whole(images, p.size)
    rng = np.random.default_rng(p.seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=p.lr * 5, weight_decay=1e-4)

    def step(i: int) -> dict[str, float]:
        if i % 2 == 0:
            batch = [whole[j] for j in rng.integers(len(whole), size=p.batch)]
        else:
            batch = _crops(images, min(p.crop, p.size), p.batch, rng)
        x = _to_tensor(batch)
        noise = torch.randn_like(x)
        t = torch.randint(0, TRAIN_TIMESTEPS, (x.shape[0],))
        pred = unet(sched.add_noise(x, noise, t), t).sample
        loss = (pred - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"mse": loss.item()}

    unet.train()
    return {"ddpm": run(p.steps, step, "diffusion")}


def _denoise(unet, x, sched, timesteps, gen) -> Any:
    import torch
    with torch.no_grad():
        for t in timesteps:
            eps = unet(x, t).sample
            x = sched.step(eps, t, x, generator=gen).prev_sample
    return x


def _diffusion_sample(m: ZooModel, n: int, seed: int) -> list[np.ndarray]:
    import torch
    size = m.preset.size
    sched = _scheduler()
    sched.set_timesteps(m.preset.sample_steps)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(n):
        x = torch.randn(1, 1, size, size, generator=gen)
        y = _denoise(m.nets["unet"], x, sched, sched.timesteps, gen)[0, 0].numpy()
        out.append(((y + 1) / 2).clip(0, 1).astype(np.float32))
    return out


def _diffusion_reconstruct(m: ZooModel, image: np.ndarray, seed: int) -> np.ndarray:
    import torch
    steps = m.preset.sample_steps
    rng = np.random.default_rng(seed)
    strength = float(rng.uniform(*RECONSTRUCT_STRENGTH))
    sched = _scheduler()
    sched.set_timesteps(steps)
    ts = sched.timesteps[min(steps - 1, int(round(steps * (1 - strength)))):]
    padded, (h, w) = _pad_to_multiple(np.asarray(image, np.float32), 4)
    x = _to_tensor([padded])
    gen = torch.Generator().manual_seed(int(seed))
    noisy = sched.add_noise(x, torch.randn(x.shape, generator=gen), ts[:1])
    y = _denoise(m.nets["unet"], noisy, sched, ts, gen)[0, 0].numpy()[:h, :w]
    return ((y + 1) / 2).clip(0, 1).astype(np.float32)


# ============================================================================== upsample

UPSAMPLE_SCALE = 4


def _upsample_build(p: Preset) -> dict[str, Any]:
    from .nets import upsampler
    return {"upsampler": upsampler(UPSAMPLE_SCALE, width=p.width * 2, blocks=3)}


def _downscale(a: np.ndarray, k: int) -> np.ndarray:
    import cv2
    h, w = a.shape
    return cv2.resize(a, (max(1, w // k), max(1, h // k)), interpolation=cv2.INTER_AREA)


def _upsample_fit(nets, p: Preset, images, run) -> dict[str, Any]:
    import torch

    net = nets["upsampler"]
    rng = np.random.default_rng(p.seed)
    opt = torch.optim.Adam(net.parameters(), lr=p.lr * 5)
    crop = p.crop - p.crop % UPSAMPLE_SCALE

    def step(i: int) -> dict[str, float]:
        high = _crops(images, crop, p.batch, rng)
        low = _to_tensor([_downscale(a, UPSAMPLE_SCALE) for a in high])
        loss = (net(low) - _to_tensor(high)).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"l1": loss.item()}

    net.train()
    return {"sr": run(p.steps, step, "upsample")}


def _upsample_reconstruct(m: ZooModel, image: np.ndarray, seed: int) -> np.ndarray:
    import torch
    k = UPSAMPLE_SCALE
    padded, (h, w) = _pad_to_multiple(np.asarray(image, np.float32), k)
    with torch.no_grad():
        y = m.nets["upsampler"](_to_tensor([_downscale(padded, k)]))[0, 0].numpy()[:h, :w]
    return ((y + 1) / 2).clip(0, 1).astype(np.float32)


# ============================================================================== vae (the shipped synthesiser)

def _vae_sample(m: ZooModel, n: int, seed: int) -> list[np.ndarray]:
    """Raw decoder outputs of the shipped VAE synthesiser (at its size; the zoo writes every
    family's samples the same way, so the synthesiser's own finishing is not used here)."""
    from ..synth import load_model
    synth = load_model(m.card.get("checkpoint") or None)
    latents = np.random.default_rng(seed).standard_normal((n, synth.mean.shape[0])).astype(np.float32)
    return [a.astype(np.float32) for a in synth.generate(latents)]


def _no_build(p: Preset) -> dict[str, Any]:
    return {}


def _no_fit(nets, p, images, run) -> dict[str, Any]:
    return {"note": "pretrained: the shipped forge synthesiser (models/synth_xray.safetensors)"}


def _presets(**small_and_gpu: dict[str, Any]) -> dict[str, Preset]:
    return {name: Preset(name=name, **kw) for name, kw in small_and_gpu.items()}


FAMILIES: dict[str, Family] = {
    "gan": Family("gan", "whole-image DCGAN (transposed convolutions); reconstructions by GAN inversion",
                  _presets(small=dict(size=256, width=16, steps=300, batch=8, invert_steps=150, max_minutes=8),
                           gpu=dict(size=512, width=32, steps=40000, batch=32, invert_steps=5000, device="cuda")),
                  _gan_build, _gan_fit, _gan_sample, _gan_reconstruct, ("sample", "reconstruct")),
    "diffusion": Family("diffusion", "DDPM-trained UNet (diffusers), DDIM sampling; SDEdit reconstructions "
                        "at native resolution",
                        _presets(small=dict(size=128, width=16, steps=400, batch=8, max_minutes=8, sample_steps=10),
                                 gpu=dict(size=256, width=64, steps=60000, batch=32, crop=256, device="cuda")),
                        _diffusion_build, _diffusion_fit, _diffusion_sample, _diffusion_reconstruct,
                        ("sample", "reconstruct")),
    "upsample": Family("upsample", "4x super-resolution decoder (pixel shuffle) of a down-sampled image",
                       _presets(small=dict(width=8, steps=400, batch=8, crop=96, max_minutes=8),
                                gpu=dict(width=32, steps=30000, batch=64, crop=192, device="cuda")),
                       _upsample_build, _upsample_fit, None, _upsample_reconstruct, ("reconstruct",)),
    "vae": Family("vae", "the forge's VAE synthesiser (shipped; whole images)",
                  _presets(small=dict(size=128, steps=0), gpu=dict(size=256, steps=0)),
                  _no_build, _no_fit, _vae_sample, None, ("sample",)),
}


def family(name: str) -> Family:
    """The family called ``name`` (a one-line error listing the families otherwise)."""
    if name not in FAMILIES:
        raise MedForensicsError(None, f"unknown generator family {name!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[name]


# ============================================================================== train, save, load

ARCHITECTURE = "ZooGenerator"


def train_family(name: str, preset: str | Preset = "small", out: str | Path | None = None, *,
                 data_root: str | Path | None = None, progress: bool = True) -> ZooModel:
    """Train family ``name`` on the ``train`` patients' real radiographs; written to ``out`` (a
    new ``.safetensors`` file with a model card) when given."""
    import torch

    from ...datapath import card_data_root, sources_of
    from ...learn.checkpoint import save_checkpoint
    from ...learn.loop import pick_device, seed_everything, torch_threads
    from . import real_images

    fam = family(name)
    p = fam.presets.get(preset) if isinstance(preset, str) else preset
    if p is None:
        raise MedForensicsError(None, f"family {name} has no preset {preset!r} ({', '.join(fam.presets)})")
    if out is not None and Path(out).exists():
        raise FileExistsError(f"{out}: already exists; choose a new name")
    try:
        pick_device(p.device)
    except MedForensicsError:
        raise MedForensicsError(None, f"preset {p.name} of {name} asks for CUDA but no CUDA device is available") from None
    seed_everything(p.seed)
    with torch_threads(max(1, p.threads)):
        reals = real_images(data_root, split="train", limit=p.max_images or None)
        nets = fam.build(p)

        def run(steps, step, desc):
            return fit_loop(steps, step, desc=desc, max_minutes=p.max_minutes, progress=progress)

        training = fam.fit(nets, p, [r.pixels for r in reals], run)
    for net in nets.values():
        net.eval()
    root = reals[0].root if reals else None
    card = {"architecture": ARCHITECTURE, "family": name, "summary": fam.summary, "config": p.to_dict(),
            "data": {"root": card_data_root(), "split": "train",
                     "sources": sources_of([r.path for r in reals], root) if root else [],
                     "n_images": len(reals), "patients": sorted({r.patient for r in reals})},
            "training": {**training, "torch": torch.__version__}}
    model = ZooModel(name, nets, card)
    if out is not None:
        state = {f"{k}.{t}": v for k, net in nets.items() for t, v in net.state_dict().items()}
        if not state:
            state = {"empty": torch.zeros(1)}
        save_checkpoint(state, out, card)
        model.path = Path(out)
    return model


def load_zoo_model(path: str | Path) -> ZooModel:
    """A family member written by :func:`train_family` (networks in eval mode)."""
    from ...learn.checkpoint import load_checkpoint

    state, card = load_checkpoint(path)
    if card.get("architecture") != ARCHITECTURE or card.get("family") not in FAMILIES:
        raise MedForensicsError(path, f"not a generator-zoo checkpoint (architecture {card.get('architecture')!r})")
    fam = FAMILIES[card["family"]]
    names = {f.name for f in dataclasses.fields(Preset)}
    p = Preset(**{k: v for k, v in card.get("config", {}).items() if k in names})
    nets = fam.build(p)
    for key, net in nets.items():
        sub = {k[len(key) + 1:]: v for k, v in state.items() if k.startswith(key + ".")}
        try:
            net.load_state_dict(sub)
        except RuntimeError as e:
            raise MedForensicsError.wrap(path, e, f"checkpoint tensors do not fit the {key}", limit=160) from None
        net.eval()
    return ZooModel(card["family"], nets, card, Path(path))


def untrained(name: str) -> ZooModel:
    """A family member without training (its card says so); what the ``vae`` family always is."""
    fam = family(name)
    p = fam.presets["small"]
    nets = fam.build(p)
    for net in nets.values():
        net.eval()
    return ZooModel(name, nets, {"architecture": ARCHITECTURE, "family": name, "config": p.to_dict(),
                                 "training": {"steps_done": 0}})

