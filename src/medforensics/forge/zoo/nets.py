"""Networks of the generator zoo, apart from their training loops (as MONAI keeps them).

Every network maps images in [-1, 1] with one channel. Each family leaves the traces its
architecture leaves in real generators:

* :func:`dcgan_generator` -- a whole-image GAN generator: a latent vector grown to an image by
  stride-2 **transposed convolutions** (the checkerboard family of DCGAN, ProGAN, StyleGAN's
  up-sampling), with :func:`dcgan_discriminator` and an encoder for inversion
  (:func:`dcgan_encoder`).
* :func:`diffusion_unet` -- a denoising UNet of the ``diffusers`` library (``UNet2DModel``), the
  network of DDPM, DDIM and the latent-diffusion decoders' cousins.
* :func:`upsampler` -- a super-resolution decoder: 2x or 4x by sub-pixel convolution
  (**pixel shuffle**, as ESRGAN and most VAE decoders do), on top of a learned feature stack.

>>> import torch
>>> g = dcgan_generator(size=64, latent=16, base=8)
>>> tuple(g(torch.zeros(2, 16)).shape)
(2, 1, 64, 64)
>>> tuple(upsampler(scale=4, width=8, blocks=1)(torch.zeros(1, 1, 16, 20)).shape)
(1, 1, 64, 80)
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["dcgan_generator", "dcgan_discriminator", "dcgan_encoder", "diffusion_unet", "upsampler"]


def _levels(size: int) -> int:
    n = int(round(math.log2(size))) - 2
    if size < 16 or 2 ** (n + 2) != size:
        raise ValueError(f"size must be a power of two of at least 16, got {size}")
    return n


def _widths(levels: int, base: int, cap: int) -> list[int]:
    """Channel widths from the coarsest (4x4) to the finest level."""
    return [min(cap, base * 2 ** (levels - i)) for i in range(levels + 1)]


class _Generator(nn.Module):
    def __init__(self, size: int, latent: int, base: int, cap: int):
        super().__init__()
        levels = _levels(size)
        w = _widths(levels, base, cap)
        self.latent = latent
        self.project = nn.Sequential(nn.Linear(latent, w[0] * 16), nn.BatchNorm1d(w[0] * 16), nn.ReLU(True))
        layers: list[nn.Module] = []
        for i in range(levels):
            layers += [nn.ConvTranspose2d(w[i], w[i + 1], 4, 2, 1, bias=False), nn.BatchNorm2d(w[i + 1]), nn.ReLU(True)]
        layers += [nn.Conv2d(w[-1], 1, 3, 1, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.first = w[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.project(z).view(z.shape[0], self.first, 4, 4))


class _Critic(nn.Module):
    """Strided convolutions down to 4x4, then one number (or ``out`` numbers) per image."""

    def __init__(self, size: int, base: int, cap: int, out: int, norm: bool):
        super().__init__()
        levels = _levels(size)
        w = list(reversed(_widths(levels, base, cap)))
        layers: list[nn.Module] = [nn.Conv2d(1, w[0], 3, 1, 1), nn.LeakyReLU(0.2, True)]
        for i in range(levels):
            conv = nn.Conv2d(w[i], w[i + 1], 4, 2, 1)
            layers += [nn.utils.parametrizations.spectral_norm(conv) if norm else conv, nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(w[-1] * 16, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


def dcgan_generator(size: int = 256, latent: int = 128, base: int = 8, cap: int = 256) -> nn.Module:
    """A DCGAN generator: ``latent`` numbers -> a ``size`` x ``size`` image in [-1, 1] through
    stride-2 transposed convolutions (``base`` channels at full resolution, doubling per level up
    to ``cap``)."""
    return _Generator(size, latent, base, cap)


def dcgan_discriminator(size: int = 256, base: int = 8, cap: int = 256) -> nn.Module:
    """The GAN's critic (spectral-normalised strided convolutions, one logit per image)."""
    return _Critic(size, base, cap, 1, norm=True)


def dcgan_encoder(size: int = 256, latent: int = 128, base: int = 8, cap: int = 256) -> nn.Module:
    """An encoder image -> latent, trained to invert a frozen generator (reconstruction fakes)."""
    return _Critic(size, base, cap, latent, norm=False)


def diffusion_unet(width: int = 32, levels: int = 3, layers_per_block: int = 1) -> nn.Module:
    """A small ``diffusers.UNet2DModel`` (one channel in and out, ``levels`` resolutions of
    ``width`` x 1, 2, 2, ... channels). No self-attention, so it is fully convolutional: it
    denoises an image of any size divisible by ``2 ** (levels - 1)`` -- a native-resolution
    radiograph too, with memory linear in its pixels."""
    from diffusers import UNet2DModel

    widths = tuple(width * min(2, 2 ** i) for i in range(levels))
    return UNet2DModel(sample_size=None, in_channels=1, out_channels=1, block_out_channels=widths,
                       down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
                       layers_per_block=layers_per_block, norm_num_groups=8, add_attention=False)


class _Upsampler(nn.Module):
    def __init__(self, scale: int, width: int, blocks: int):
        super().__init__()
        if scale not in (2, 4):
            raise ValueError(f"scale must be 2 or 4, got {scale}")
        self.scale = scale
        body: list[nn.Module] = [nn.Conv2d(1, width, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        for _ in range(blocks):
            body += [nn.Conv2d(width, width, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        up: list[nn.Module] = []
        for _ in range(int(math.log2(scale))):
            up += [nn.Conv2d(width, width * 4, 3, 1, 1), nn.PixelShuffle(2), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*body)
        self.up = nn.Sequential(*up, nn.Conv2d(width, 1, 3, 1, 1))

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        base = nn.functional.interpolate(low, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return torch.clamp(base + self.up(self.body(low)), -1.0, 1.0)


def upsampler(scale: int = 4, width: int = 32, blocks: int = 4) -> nn.Module:
    """A super-resolution decoder: an image -> ``scale`` times larger (2 or 4), as a learned
    residual on bilinear up-sampling through sub-pixel (pixel-shuffle) convolutions."""
    return _Upsampler(scale, width, blocks)
