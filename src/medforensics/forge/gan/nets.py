"""The networks of the in-painting generator, as ordinary ``torch.nn.Module`` classes:
:class:`InpaintUNet` (a conditional U-Net with noise inputs) and :class:`PatchDiscriminator`
(a PatchGAN critic). Their parameter names are those of the shipped checkpoints."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InpaintUNet", "PatchDiscriminator", "NoiseInjection", "Block"]


def _strides(dim: int, levels: int) -> list[tuple[int, ...]]:
    """Down-sampling steps: in 3D the first halves rows and columns only (CT slices are thicker)."""
    if dim == 2:
        return [(2, 2)] * levels
    return [(1, 2, 2)] + [(2, 2, 2)] * (levels - 1)


def _multiple(dim: int, levels: int) -> tuple[int, ...]:
    m = [1] * dim
    for s in _strides(dim, levels):
        m = [a * b for a, b in zip(m, s)]
    return tuple(m)


class NoiseInjection(nn.Module):
    """Adds per-channel scaled Gaussian noise (StyleGAN-style): the source of stochastic texture."""

    def __init__(self, ch: int):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, ch), 0.1))

    def forward(self, x, generator=None):
        shape = (x.shape[0], 1, *x.shape[2:])
        n = torch.randn(shape, generator=generator, device="cpu" if generator is not None else x.device,
                        dtype=x.dtype).to(x.device)
        s = self.scale.reshape(1, -1, *([1] * (x.dim() - 2)))
        return x + s * n


class Block(nn.Module):
    def __init__(self, conv, cin: int, cout: int, noise: bool):
        super().__init__()
        self.c1 = conv(cin, cout, 3, padding=1)
        self.c2 = conv(cout, cout, 3, padding=1)
        self.noise = NoiseInjection(cout) if noise else None

    def forward(self, x, generator=None):
        x = F.leaky_relu(self.c1(x), 0.2)
        if self.noise is not None:
            x = self.noise(x, generator)
        return F.leaky_relu(self.c2(x), 0.2)


class InpaintUNet(nn.Module):
    """Conditional in-painting U-Net, 2D or 3D.

    Input channels: context with the masked region blanked, mask, sketch inside the mask, and
    a Gaussian noise map (all in normalised units). Noise is also injected in every decoder
    block, so texture is stochastic. Output: the content = (context outside, sketch inside)
    plus a learned residual; no normalisation layers, so it is fully convolutional and
    behaves the same on any input size (a multiple of :attr:`multiple`)."""

    def __init__(self, dim: int = 3, width: int = 16, levels: int = 3, in_ch: int = 4):
        super().__init__()
        if dim not in (2, 3):
            raise ValueError("dim must be 2 or 3")
        self.dim, self.width, self.levels, self.in_ch = dim, width, levels, in_ch
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        self.multiple = _multiple(dim, levels)
        chans = [width * min(2 ** i, 8) for i in range(levels + 1)]
        self.inc = Block(conv, in_ch, chans[0], noise=False)
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        for i, s in enumerate(_strides(dim, levels)):
            self.down.append(conv(chans[i], chans[i], kernel_size=s, stride=s))
            self.enc.append(Block(conv, chans[i], chans[i + 1], noise=(i == levels - 1)))
        self.up_conv = nn.ModuleList()
        self.dec = nn.ModuleList()
        self._up = list(reversed(_strides(dim, levels)))
        for i in reversed(range(levels)):
            self.up_conv.append(conv(chans[i + 1], chans[i], 3, padding=1))
            self.dec.append(Block(conv, 2 * chans[i], chans[i], noise=True))
        self.head = conv(chans[0] + 1, 1, 3, padding=1)   # + a last noise map, for pixel-level grain
        self.head_noise = nn.Parameter(torch.tensor(0.1))

    def forward(self, x, generator=None):
        """``x``: (B, 4, *spatial) = context blanked, mask, sketch in mask, noise."""
        base = x[:, 0:1] + x[:, 2:3]
        h = self.inc(x)
        skips = []
        for down, enc in zip(self.down, self.enc):
            skips.append(h)
            h = enc(down(h), generator)
        for s, up_conv, dec in zip(self._up, self.up_conv, self.dec):
            h = F.interpolate(h, scale_factor=s, mode="nearest")
            h = F.leaky_relu(up_conv(h), 0.2)
            h = dec(torch.cat([h, skips.pop()], 1), generator)
        shape = (x.shape[0], 1, *x.shape[2:])
        n = torch.randn(shape, generator=generator, device="cpu" if generator is not None else x.device,
                        dtype=x.dtype).to(x.device)
        return base + self.head(torch.cat([h, self.head_noise * n], 1))


class PatchDiscriminator(nn.Module):
    """PatchGAN critic: a map of real/fake scores, one per overlapping patch, from the image,
    its high-pass (scaled up, so noise texture counts) and the mask."""

    def __init__(self, dim: int = 3, width: int = 16, in_ch: int = 3):
        super().__init__()
        conv = nn.Conv3d if dim == 3 else nn.Conv2d
        sn = nn.utils.parametrizations.spectral_norm
        st = _strides(dim, 2)
        self.dim = dim
        self.multiple = _multiple(dim, 2)
        self.net = nn.Sequential(
            sn(conv(in_ch, width, 3, padding=1)), nn.LeakyReLU(0.2),
            sn(conv(width, 2 * width, 3, stride=st[0], padding=1)), nn.LeakyReLU(0.2),
            sn(conv(2 * width, 4 * width, 3, stride=st[1], padding=1)), nn.LeakyReLU(0.2),
            sn(conv(4 * width, 4 * width, 3, padding=1)), nn.LeakyReLU(0.2),
            conv(4 * width, 1, 3, padding=1),
        )

    def forward(self, x):
        return self.net(x)
