"""Whole synthetic chest radiographs: a small generative model plus the finishing that makes its
samples look like real files.

The model is a convolutional VAE with an adversarial (patch discriminator) term, trained on the
real radiographs in ``../shared/data`` at 128 px (``small``, CPU) or 256 px (``gpu``). Samples are
drawn from a Gaussian fitted to the training images' latent codes (sharper than the N(0, I) prior).

A detector must learn what synthesis does to anatomy and texture, not the file's size, format or
noise level. So every sample is finished like a real reference image drawn at random from the real
data (:class:`Reference`): it is upsampled to that image's size, its intensity histogram is matched
to the reference's, signal-dependent noise is added until its high-pass noise level (as a function of
intensity) and its noise correlation match the reference's, and it is written in the reference's
format and bit depth (PNG, JPEG, or DICOM with plausible headers and no word of synthesis). The
ground truth goes in a JSON file beside each sample.

>>> from medforensics.forge.synth import synthesize, write_synthetic
>>> samples = synthesize(4, seed=0)                                        # doctest: +SKIP
>>> [s.pixels.shape for s in samples]                                      # doctest: +SKIP
[(524, 640), (524, 640), (1024, 1024), (524, 640)]
>>> write_synthetic(samples[0].pixels, "fake_0001.png", fmt="png")         # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import os
import re
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..core import MedForensicsError
from ..datapath import card_data_root, sources_of
from ..datapath import data_root as data_root_of
from ..io.write import new_file

__all__ = ["TrainConfig", "Reference", "SyntheticRadiograph", "train", "load_model", "synthesize", "synthesize_like",
           "write_synthetic", "write_samples", "measure_reference", "find_training_images",
           "noise_sigma", "noise_profile", "SHIPPED_CHECKPOINT"]

#: The checkpoint shipped with the package (trained with ``TrainConfig.small()``).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "models" / "synth_xray.safetensors"
ARCHITECTURE = "SynthXrayVAE"
FORMATS = ("png", "jpeg", "dicom")
#: Intensity levels (fractions of the full scale) at which a reference's histogram is kept.
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 129)
NOISE_BINS = 8


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


# ============================================================================== real data

def find_training_images(data_root: str | Path | None = None) -> list[Path]:
    """The full-size chest radiographs under ``data_root/xray``: MHH COVID-19 PNGs, the two
    512 px NIH PNGs and the SIIM DICOM. The 64 px NIH1000 thumbnails are left out: upsampled to
    128 px they would teach the model blur, which is exactly what a detector must not key on."""
    root = data_root_of(data_root)
    xray = root / "xray"
    if not xray.is_dir():
        raise MedForensicsError(root, "no xray folder with real radiographs here (set --data or MEDFORENSICS_DATA)")
    files = sorted((xray / "mhh-covid19" / "images").glob("*.png"))
    files += sorted((xray / "nih-cxr14").glob("*.png"))
    files += sorted((xray / "siim").glob("*.dcm"))
    if not files:
        raise MedForensicsError(xray, "no chest radiographs found (expected mhh-covid19/images/*.png, "
                                "nih-cxr14/*.png, siim/*.dcm)")
    return files


def _patient_ids(data_root: Path) -> dict[str, str]:
    """image_id -> patient_id from the MHH data.csv (empty when absent)."""
    csv_path = data_root / "xray" / "mhh-covid19" / "data.csv"
    out: dict[str, str] = {}
    if csv_path.is_file():
        import csv
        with open(csv_path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out[row.get("image_id", "")] = row.get("patient_id", "")
    return out


def _load_real(path: Path):
    """(gray pixels as float, full-scale value, Image) of one real radiograph."""
    from ..io import load
    im = load(path)[0]
    px = im.slice2d().astype(np.float64)
    if im.format == "dicom":
        ds = im.datasets[0]
        full = float(2 ** int(getattr(ds, "BitsStored", 8)) - 1)
    else:
        full = float(2 ** int(im.meta.get("bit_depth", 8)) - 1)
    return px, full, im


# ============================================================================== noise measurement

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def _immerkaer_abs(px: np.ndarray) -> np.ndarray:
    import cv2
    return np.abs(cv2.filter2D(np.asarray(px, np.float64), -1, _IMMERKAER, borderType=cv2.BORDER_REFLECT))


def noise_sigma(pixels: np.ndarray) -> float:
    """High-pass noise level of an image (Immerkaer's estimator: the difference of two Laplacians
    cancels smooth structure; exact for white Gaussian noise), in the image's own units."""
    a = _immerkaer_abs(pixels)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) / 6 * a.mean())


def noise_profile(pixels: np.ndarray, full_scale: float, bins: int = NOISE_BINS) -> list[list[float]]:
    """Noise level as a function of intensity: ``[[bin centre / full scale, sigma / full scale, share of
    pixels], ...]`` for ``bins`` equal bins of the local mean; saturated pixels (0 or full scale) and
    sharp edges (top 5 % of the Immerkaer response) are left out."""
    import cv2
    px = np.asarray(pixels, np.float64) / full_scale
    a = _immerkaer_abs(px)[1:-1, 1:-1]
    mean = cv2.GaussianBlur(px, (0, 0), 2.0)[1:-1, 1:-1]
    inner = px[1:-1, 1:-1]
    ok = (inner > 0.5 / full_scale) & (inner < 1 - 0.5 / full_scale)
    if ok.sum() > 100:
        ok &= a < np.quantile(a[ok], 0.95)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(mean, edges) - 1, 0, bins - 1)
    out = []
    total = max(1, int(ok.sum()))
    for b in range(bins):
        sel = ok & (idx == b)
        n = int(sel.sum())
        s = float(math.sqrt(math.pi / 2) / 6 * a[sel].mean()) if n >= 50 else float("nan")
        out.append([round(float((edges[b] + edges[b + 1]) / 2), 4), round(s, 6) if n >= 50 else None,
                    round(n / total, 4)])
    return out


def _corr_ratio(pixels: np.ndarray) -> float:
    """How correlated the fine noise is: Immerkaer sigma after 2x2 binning over sigma before
    (0.5 for white noise, towards 1 for noise blurred by resampling or compression)."""
    px = np.asarray(pixels, np.float64)
    h, w = (px.shape[0] // 2) * 2, (px.shape[1] // 2) * 2
    binned = px[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    s = noise_sigma(px)
    return float(noise_sigma(binned) / s) if s > 0 else 1.0


# ============================================================================== references

@dataclass
class Reference:
    """What a real radiograph looks like as a file: the pattern a synthetic sample is finished to."""

    name: str
    format: str                   # png, jpeg or dicom
    rows: int
    cols: int
    bit_depth: int
    quantiles: list[float]        # intensity (fraction of full scale) at QUANTILE_LEVELS
    noise: list[list[float]]      # noise_profile()
    noise_sigma: float            # whole-image Immerkaer sigma, fraction of full scale
    corr_ratio: float             # _corr_ratio()
    color: bool = False
    modality: str = "XR"
    dicom: dict[str, Any] = field(default_factory=dict)   # encoding and style of a DICOM reference

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Reference":
        return cls(**{k: d[k] for k in (f.name for f in dataclasses.fields(cls)) if k in d})


def _dicom_style(ds) -> dict[str, Any]:
    """The encoding and header style of a real DICOM, kept to write look-alikes."""
    ts = str(ds.file_meta.TransferSyntaxUID) if hasattr(ds, "file_meta") and "TransferSyntaxUID" in ds.file_meta else ""
    keep = {}
    for kw in ("SOPClassUID", "Modality", "ConversionType", "SeriesDescription", "BodyPartExamined", "ViewPosition",
               "PhotometricInterpretation", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
               "PixelSpacing", "LossyImageCompression", "LossyImageCompressionMethod", "SpecificCharacterSet",
               "StudyDate", "StudyTime", "Manufacturer", "ManufacturerModelName"):
        if kw in ds:
            v = ds.data_element(kw).value
            keep[kw] = [float(x) for x in v] if kw == "PixelSpacing" else (str(v) if not isinstance(v, int) else v)
    uid = str(getattr(ds, "SOPInstanceUID", ""))
    # the UID root of the writer (e.g. DCMTK's 1.2.276.0.7230010.3.) so new UIDs look the same
    m = re.match(r"^((?:\d+\.){5,7})", uid)
    keep["uid_root"] = m.group(1) if m else ""
    keep["patient_id_style"] = "uuid" if re.fullmatch(r"[0-9a-f-]{36}", str(getattr(ds, "PatientID", ""))) else "digits"
    keep["TransferSyntaxUID"] = ts
    return keep


def measure_reference(path: str | Path, _loaded=None) -> Reference:
    """Measure one real radiograph (size, format, bit depth, histogram, noise) as a :class:`Reference`."""
    path = Path(path)
    px, full, im = _loaded if _loaded is not None else _load_real(path)
    if px.ndim != 2:
        raise MedForensicsError(path, "not a 2D radiograph")
    q = np.quantile(px, QUANTILE_LEVELS) / full
    dicom = _dicom_style(im.datasets[0]) if im.format == "dicom" else {}
    return Reference(name=path.name, format=im.format, rows=int(px.shape[0]), cols=int(px.shape[1]),
                     bit_depth=int(round(math.log2(full + 1))), quantiles=[round(float(v), 6) for v in q],
                     noise=noise_profile(px, full), noise_sigma=round(noise_sigma(px) / full, 6),
                     corr_ratio=round(_corr_ratio(px), 4), color=bool(im.meta.get("color", False)),
                     modality=im.modality, dicom=dicom)


def references_from(like: str | Path | Sequence[str | Path]) -> list[Reference]:
    """References measured from real images: a file, a folder (searched recursively) or a list."""
    from ..io import sniff
    items = [like] if isinstance(like, (str, Path)) else list(like)
    files: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and sniff(f) in ("raster", "dicom"))
        elif p.is_file():
            files.append(p)
        else:
            raise MedForensicsError(p, "no such file or directory")
    if not files:
        raise MedForensicsError(str(like), "no real images found to take sizes, formats and histograms from")
    return [measure_reference(f) for f in files]


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
    from ..learn.checkpoint import save_checkpoint

    cfg = TrainConfig.preset(config) if isinstance(config, str) else config
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new name")
    if not out.parent.exists():
        raise MedForensicsError(out, f"folder {out.parent} does not exist")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise MedForensicsError(None, "config asks for CUDA but no CUDA device is available")
    root = data_root_of(data_root)
    files = find_training_images(root)
    t0 = time.time()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(cfg.threads, os.cpu_count() or 1)))
    try:
        dev = torch.device(cfg.device)
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
    finally:
        torch.set_num_threads(old_threads)
    return out


def _fit(cfg: TrainConfig, data, progress: bool, t0: float):
    """The training loop on a prepared tensor (N, 1, S, S) in [-1, 1] on the target device.

    Returns (EMA decoder, latent mean, latent Cholesky factor, loss history, steps done, stopped early).
    """
    import torch
    torch.manual_seed(cfg.seed)
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
    bar = _progress_bar(progress, cfg.steps)
    step = 0
    steps_done = 0
    stopped_early = False
    t_start = t0  # the time budget includes loading the data
    with bar:
        task = bar.add_task("training", total=cfg.steps, losses="")
        for step in range(cfg.steps):
            # progress: by steps, or by time when the time budget runs out first; the schedules
            # (KL warm-up, adversarial start, learning-rate decay) follow it
            frac = max(step / cfg.steps, (time.time() - t_start) / budget_s)
            if frac >= 1.0:
                stopped_early = True
                break
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
            steps_done = step + 1
            for k, v in (("recon_l1", l_rec), ("grad_l1", l_grad), ("kl", kl), ("adv_g", l_adv), ("disc", l_d)):
                acc.setdefault(k, []).append(float(v.detach()))
            if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
                rec_ = {k: round(float(np.mean(v)), 5) for k, v in acc.items()}
                history.append({"step": step + 1, "time_s": round(time.time() - t0, 1), **rec_})
                acc = {}
                bar.update(task, completed=step + 1,
                           losses=f"recon {rec_['recon_l1']:.4f} kl {rec_['kl']:.0f} adv {rec_['adv_g']:.3f}")
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


def _progress_bar(show: bool, total: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), console=Console(stderr=True),
                    disable=not show)


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
    from ..learn.checkpoint import load_checkpoint
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
        raise MedForensicsError(path, f"checkpoint does not match its model card ({' '.join(str(e).split())[:160]})") from None
    dec.eval()
    return SynthModel(decoder=dec, mean=mean, chol=chol, card=card, path=Path(path))


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


# ============================================================================== writing

#: (Manufacturer, ManufacturerModelName) of common CR/DX systems, for ``dicom_style="cr"``.
CR_SYSTEMS = [("FUJIFILM Corporation", "FCR PROFECT CS"), ("Agfa", "CR 85-X"), ("Carestream Health", "DRX-Evolution"),
              ("Philips Medical Systems", "DigitalDiagnost"), ("KONICA MINOLTA", "REGIUS MODEL 190"),
              ("SIEMENS", "Ysio"), ("GE Healthcare", "Definium 8000")]


def write_synthetic(pixels: np.ndarray, out_path: str | Path, fmt: str = "png", *, bit_depth: int | None = None,
                    jpeg_quality: int | None = None, reference: Reference | None = None,
                    dicom_style: str = "like", seed: int = 0, ground_truth: dict[str, Any] | None = None) -> Path:
    """Write stored pixel values as a PNG, JPEG or DICOM file that looks like a real radiograph.

    Parameters
    ----------
    pixels : ndarray
        2D uint8 or uint16 stored values (as :func:`synthesize` returns them).
    out_path : path
        A new file; nothing is overwritten.
    fmt : str
        ``png`` (8- or 16-bit gray, like the real PNGs), ``jpeg`` (8-bit gray, quality 85-95 drawn from
        ``seed`` unless ``jpeg_quality`` is given) or ``dicom``.
    bit_depth : int, optional
        Bits of ``pixels`` (default: 8 for uint8, 16 for uint16).
    reference : Reference, optional
        For DICOM with ``dicom_style="like"``: a DICOM reference whose encoding (SOP class, bits,
        transfer syntax, pixel spacing, UID root, header style) is copied, with new UIDs and patient.
    dicom_style : str
        ``like`` (copy the reference's style when it is a DICOM, else ``cr``) or ``cr``: CR Image
        Storage, 12 bits stored, MONOCHROME2, uncompressed, a common CR/DX maker and model, pixel
        spacing of 0.14-0.2 mm (as the real SIIM file keeps 0.168 mm at 1024 px).
    ground_truth : dict, optional
        Written as JSON beside the image (``<file>.json``), with the file's own facts added. No field
        inside the image says that it is synthetic.
    """
    out_path = Path(out_path)
    fmt = {"jpg": "jpeg"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise MedForensicsError(out_path, f"unknown format {fmt!r} (use png, jpeg or dicom)")
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
        raise MedForensicsError(out_path, f"pixels must be a 2D uint8 or uint16 array, got {arr.dtype} {arr.shape}")
    bits = bit_depth or (8 if arr.dtype == np.uint8 else 16)
    sidecar = out_path.with_name(out_path.name + ".json")
    new_file(out_path)
    if ground_truth is not None:
        new_file(sidecar)
    rng = np.random.default_rng([int(seed), 7])
    facts: dict[str, Any] = {"file": out_path.name, "format": fmt, "rows": int(arr.shape[0]), "cols": int(arr.shape[1])}
    from PIL import Image as PILImage
    if fmt == "png":
        img = PILImage.fromarray(arr) if arr.dtype == np.uint8 else PILImage.fromarray(arr.astype(np.uint16))
        if reference is not None and reference.color and arr.dtype == np.uint8:
            img = PILImage.fromarray(np.repeat(arr[..., None], 3, axis=2))
        img.save(out_path, format="PNG")
        facts["bit_depth"] = bits
    elif fmt == "jpeg":
        a8 = arr if arr.dtype == np.uint8 else np.round(arr.astype(np.float64) / (2 ** bits - 1) * 255).astype(np.uint8)
        q = int(jpeg_quality) if jpeg_quality else int(rng.integers(85, 96))
        if not 1 <= q <= 100:
            raise MedForensicsError(out_path, f"JPEG quality must be 1-100, got {q}")
        PILImage.fromarray(a8).save(out_path, format="JPEG", quality=q)
        facts.update(bit_depth=8, jpeg_quality=q)
    else:
        style = dicom_style
        if style == "like" and not (reference is not None and reference.format == "dicom" and reference.dicom):
            style = "cr"
        if style not in ("like", "cr"):
            raise MedForensicsError(out_path, f"unknown DICOM style {dicom_style!r} (use like or cr)")
        with warnings.catch_warnings():
            # a look-alike copies the real file's style, non-standard values included (SIIM: PatientAge '62')
            warnings.simplefilter("ignore", UserWarning)
            ds = _dicom_like(arr, bits, reference.dicom, rng) if style == "like" else _dicom_cr(arr, bits, rng)
            ds.save_as(out_path, enforce_file_format=True)
        facts.update(dicom_style=style, sop_class=str(ds.SOPClassUID), bits_stored=int(ds.BitsStored),
                     transfer_syntax=str(ds.file_meta.TransferSyntaxUID), sop_instance_uid=str(ds.SOPInstanceUID),
                     patient_id=str(ds.PatientID))
    if ground_truth is not None:
        with open(sidecar, "x", encoding="utf-8") as f:
            json.dump({**ground_truth, "file": facts}, f, indent=2, default=str)
    return out_path


def _base_dataset(sop_class: str, ts: str, sop_uid: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def _random_date(rng: np.random.Generator, lo: int = 2014, hi: int = 2024) -> dt.datetime:
    start = dt.datetime(lo, 1, 1)
    return start + dt.timedelta(seconds=int(rng.integers(0, (hi - lo) * 365 * 86400)))


def _pixel_module(ds, rows: int, cols: int, bits_alloc: int, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_alloc, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0


def _dicom_cr(arr: np.ndarray, bits: int, rng: np.random.Generator):
    """A CR Image Storage instance as a CR reader would write it (12 bits, uncompressed)."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    stored = arr.astype(np.float64) / (2 ** bits - 1) * 4095
    stored = np.clip(np.round(stored + rng.uniform(-0.5, 0.5, arr.shape) * (4095 / (2 ** bits - 1) if bits < 12 else 0)),
                     0, 4095).astype(np.uint16)
    ds = _base_dataset("1.2.840.10008.5.1.4.1.1.1", ExplicitVRLittleEndian, generate_uid())
    maker, model = CR_SYSTEMS[int(rng.integers(len(CR_SYSTEMS)))]
    when = _random_date(rng)
    born = when - dt.timedelta(days=int(rng.integers(18 * 365, 90 * 365)))
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    for k in ("Study", "Series", "Acquisition", "Content"):
        setattr(ds, f"{k}Date", when.strftime("%Y%m%d"))
        setattr(ds, f"{k}Time", (when + dt.timedelta(seconds=5 if k in ("Acquisition", "Content") else 0)).strftime("%H%M%S"))
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.AccessionNumber = str(int(rng.integers(10 ** 7, 10 ** 8)))
    ds.Modality = "CR"
    ds.Manufacturer, ds.ManufacturerModelName = maker, model
    ds.InstitutionName = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST"
    ds.SeriesDescription = "PA" if rng.random() < 0.7 else "AP"
    ds.PatientName = ""
    ds.PatientID = str(int(rng.integers(10 ** 8, 10 ** 9)))
    ds.PatientBirthDate = born.strftime("%Y%m%d")
    ds.PatientSex = "M" if rng.random() < 0.55 else "F"
    ds.PatientAge = f"{(when - born).days // 365:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = ds.SeriesDescription
    ds.KVP = str(int(rng.integers(100, 131)))
    ds.ExposureTime = str(int(rng.integers(5, 30)))
    ds.XRayTubeCurrent = str(int(rng.integers(160, 400)))
    ds.Exposure = str(int(rng.integers(1, 8)))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = str(int(rng.integers(1, 10 ** 5)))
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if ds.ViewPosition == "AP" else ["R", "F"]
    rows, cols = arr.shape
    spacing = float(rng.uniform(0.14, 0.2))
    ds.ImagerPixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.PixelSpacing = ds.ImagerPixelSpacing
    _pixel_module(ds, rows, cols, 16, 12)
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    lo, hi = np.percentile(stored, [1, 99])
    ds.WindowCenter, ds.WindowWidth = f"{(lo + hi) / 2:.0f}", f"{max(hi - lo, 1):.0f}"
    ds.PresentationLUTShape = "IDENTITY"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = stored.tobytes()
    return ds


def _dicom_like(arr: np.ndarray, bits: int, style: dict[str, Any], rng: np.random.Generator):
    """A look-alike of a real DICOM: same SOP class, encoding, pixel spacing and header style; new
    UIDs (under the same UID root) and a new patient."""
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid
    root = style.get("uid_root") or ""
    uid = (lambda kind: generate_uid(prefix=f"{root}{kind}." if root and len(root) < 40 else None))
    ts = style.get("TransferSyntaxUID") or ExplicitVRLittleEndian
    ds = _base_dataset(style.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.1"), ts, uid("1.4"))
    bits_stored = int(style.get("BitsStored", 8 if ts == JPEGBaseline8Bit else 12))
    full_in, full_out = 2 ** bits - 1, 2 ** bits_stored - 1
    stored = arr if full_in == full_out else np.round(arr.astype(np.float64) / full_in * full_out)
    stored = np.clip(stored, 0, full_out).astype(np.uint8 if bits_stored <= 8 else np.uint16)
    for kw in ("SpecificCharacterSet",):
        if kw in style:
            setattr(ds, kw, style[kw])
    if "StudyDate" in style and str(style["StudyDate"]).startswith("1901"):
        ds.StudyDate, ds.StudyTime = style["StudyDate"], style.get("StudyTime", "000000.00")  # anonymised style
    else:
        when = _random_date(rng)
        ds.StudyDate, ds.StudyTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = style.get("Modality", "CR")
    if "ConversionType" in style:
        ds.ConversionType = style["ConversionType"]
    for kw in ("Manufacturer", "ManufacturerModelName"):
        if kw in style:
            setattr(ds, kw, style[kw])
    ds.ReferringPhysicianName = ""
    view = "PA" if rng.random() < 0.6 else "AP"
    if "SeriesDescription" in style:
        ds.SeriesDescription = re.sub(r"\b(PA|AP)\b", view, str(style["SeriesDescription"]))
    pid = str(uuid.UUID(bytes=rng.bytes(16), version=4)) if style.get("patient_id_style") == "uuid" else \
        str(int(rng.integers(10 ** 8, 10 ** 9)))
    ds.PatientName = pid
    ds.PatientID = pid
    ds.PatientBirthDate = ""
    ds.PatientSex = "M" if rng.random() < 0.55 else "F"
    ds.PatientAge = str(int(rng.integers(18, 90)))
    ds.BodyPartExamined = style.get("BodyPartExamined", "CHEST")
    ds.ViewPosition = view
    ds.StudyInstanceUID = uid("1.2")
    ds.SeriesInstanceUID = uid("1.3")
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    _pixel_module(ds, arr.shape[0], arr.shape[1], 8 if bits_stored <= 8 else 16, bits_stored)
    if "PixelSpacing" in style:
        ds.PixelSpacing = [f"{v:.6g}" for v in style["PixelSpacing"]]
    _write_pixels(ds, stored, ts, rng, style)
    return ds


def _write_pixels(ds, stored: np.ndarray, ts: str, rng: np.random.Generator, style: dict[str, Any]) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
    if ts == JPEGBaseline8Bit:
        import io as _io
        from PIL import Image as PILImage
        buf = _io.BytesIO()
        PILImage.fromarray(stored.astype(np.uint8)).save(buf, format="JPEG", quality=int(rng.integers(90, 96)))
        ds.LossyImageCompression = style.get("LossyImageCompression", "01")
        ds.LossyImageCompressionMethod = style.get("LossyImageCompressionMethod", "ISO_10918_1")
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif ts == ExplicitVRLittleEndian or not getattr(ds.file_meta.TransferSyntaxUID, "is_compressed", False):
        ds.file_meta.TransferSyntaxUID = ts
        ds.PixelData = stored.tobytes()
    else:
        try:
            ds.PixelData = stored.tobytes()
            ds.compress(ts, stored)
        except Exception:  # noqa: BLE001 - no encoder for this syntax here: write it uncompressed
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.PixelData = stored.tobytes()


_EXT = {"png": ".png", "jpeg": ".jpg", "dicom": ".dcm"}


def write_samples(out_dir: str | Path, n: int, seed: int = 0, fmt: str = "like", *,
                  model: SynthModel | str | Path | None = None, like=None, dicom_style: str = "like",
                  on_written=None) -> list[Path]:
    """Synthesize ``n`` radiographs into a new (or empty) folder, each with a ground-truth JSON beside
    it; ``on_written(path)`` is called after each file (for progress)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder; choose a new one")
    if fmt not in (*FORMATS, "like", "mixed"):
        raise MedForensicsError(None, f"unknown format {fmt!r} (use like, png, jpeg, dicom or mixed)")
    m = model if isinstance(model, SynthModel) else load_model(model)
    refs = _resolve_references(m, like)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for start in range(0, n, 16):   # in chunks, to keep memory low at full size
        for s in _synthesize_indices(m, seed, range(start, min(n, start + 16)), refs, fmt):
            name = f"synth_{seed:04d}_{s.ground_truth['index']:05d}{_EXT[s.format]}"
            p = write_synthetic(s.pixels, out / name, s.format, bit_depth=s.bit_depth, reference=s.reference,
                                dicom_style=dicom_style, seed=seed * 100003 + s.ground_truth["index"],
                                ground_truth=s.ground_truth)
            written.append(p)
            if on_written:
                on_written(p)
    return written
