"""The 2D classifiers: the review's six torchvision networks and ``fastnet``, a small CPU model.

>>> import torch
>>> from medforensics.learn.models import build_model, MODELS
>>> MODELS
('resnet50', 'efficientnet_b0', 'densenet121', 'vgg16', 'inception_v3', 'vit_b_16', 'fastnet')
>>> net = build_model("efficientnet_b0", num_classes=4).eval()    # any name of MODELS
>>> with torch.no_grad():
...     net(torch.zeros(1, 1, 224, 224)).shape
torch.Size([1, 4])
>>> net = build_model("fastnet", num_classes=4).eval()
>>> sum(p.numel() for p in net.parameters())
257524
>>> with torch.no_grad():
...     net(torch.zeros(2, 1, 128, 128)).shape
torch.Size([2, 4])

Every network is the torchvision one, built with ``weights=None`` (no pretrained weights), its
ReLU activations as in the original, and its ImageNet head replaced by ``Dropout(p)`` followed by
``Linear(num_classes)`` (VGG16 already ends in ``Dropout -> Linear``: its last layer is replaced and
its two dropouts take ``p``; InceptionV3 is built with ``aux_logits=False`` and its pre-head dropout
takes ``p``). The ImageNet networks take three channels: a 1-channel input is repeated to three
channels by :class:`GrayToRGB` in front of the unchanged network, so the torchvision layers (and
their state-dict names, under ``net.``) stay exactly as published.

``fastnet`` (:class:`FastNet`) is the default for CPUs: a fixed, non-trainable high-pass front end
(three classic noise-residual kernels of steganalysis/forensics: first- and second-order
differences and the 5x5 "KV" kernel) feeding a small ReLU CNN. Looking at the noise residual
rather than at the image makes the network learn texture and noise statistics (where pasted,
in-painted or synthesised pixels differ) instead of anatomy; at 0.26 M parameters and about
0.17 G multiply-adds per 224 px image it is ~24x cheaper than ResNet-50 (4.1 G).
"""
from __future__ import annotations

import torch
from torch import nn

ZOO = ("resnet50", "efficientnet_b0", "densenet121", "vgg16", "inception_v3", "vit_b_16")
MODELS = ZOO + ("fastnet",)

__all__ = ["ZOO", "MODELS", "build_model", "FastNet", "GrayToRGB", "highpass_kernels"]


def highpass_kernels() -> torch.Tensor:
    """The fixed front end of :class:`FastNet`: three 5x5 noise-residual kernels, shape (3, 1, 5, 5).

    First-order (horizontal difference), second-order (3x3 Laplacian-like, both directions) and
    the KV kernel of SRM (Fridrich and Kodovsky 2012), each scaled to unit L1 norm of its
    negative part so the residuals have comparable ranges.
    """
    k1 = torch.zeros(5, 5)
    k1[2, 2], k1[2, 3] = -1.0, 1.0
    k2 = torch.zeros(5, 5)
    k2[1:4, 1:4] = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]) / 4.0
    kv = torch.tensor([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2],
                       [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]], dtype=torch.float32) / 12.0
    return torch.stack([k1, k2, kv]).unsqueeze(1)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class FastNet(nn.Module):
    """Small CNN on fixed noise residuals, for CPUs (0.26 M parameters, ~0.17 G multiply-adds at 224 px).

    ``highpass=False`` replaces the fixed front end with a plain trainable 3x3 convolution of
    the image (for ablations; :func:`build_model` always uses the high-pass version).
    """

    def __init__(self, num_classes: int, *, dropout: float = 0.5, in_channels: int = 1, highpass: bool = True,
                 width: int = 16):
        super().__init__()
        self.highpass = highpass
        if highpass:
            k = highpass_kernels().repeat(1, in_channels, 1, 1) / in_channels
            self.register_buffer("residual_kernels", k)
            stem_in = k.shape[0]
        else:
            stem_in = in_channels
        w = width
        self.features = nn.Sequential(
            _block(stem_in, w, 1), _block(w, w, 2),           # 1/2
            _block(w, 2 * w, 1), _block(2 * w, 2 * w, 2),     # 1/4
            _block(2 * w, 4 * w, 2),                           # 1/8
            _block(4 * w, 8 * w, 2),                           # 1/16
            _block(8 * w, 8 * w, 2),                           # 1/32
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(8 * w, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.highpass:
            x = nn.functional.conv2d(x, self.residual_kernels, padding=2)
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


class GrayToRGB(nn.Module):
    """Repeat a 1-channel input to the three channels an ImageNet network expects."""

    def __init__(self, net: nn.Module, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x)


def _head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))


def _torchvision(name: str, num_classes: int, dropout: float, image_size: int) -> nn.Module:
    from torchvision import models as tvm

    if name == "resnet50":
        net = tvm.resnet50(weights=None)
        net.fc = _head(net.fc.in_features, num_classes, dropout)
    elif name == "efficientnet_b0":
        net = tvm.efficientnet_b0(weights=None)
        net.classifier = _head(net.classifier[-1].in_features, num_classes, dropout)
    elif name == "densenet121":
        net = tvm.densenet121(weights=None)
        net.classifier = _head(net.classifier.in_features, num_classes, dropout)
    elif name == "vgg16":
        net = tvm.vgg16(weights=None, dropout=dropout)  # classifier: ..., Dropout(p), Linear(4096, 1000)
        net.classifier[6] = nn.Linear(net.classifier[6].in_features, num_classes)
    elif name == "inception_v3":
        net = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True)
        net.dropout = nn.Dropout(dropout)  # avgpool -> dropout -> fc, as published
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    elif name == "vit_b_16":
        net = tvm.vit_b_16(weights=None, image_size=image_size)
        net.heads = _head(net.hidden_dim, num_classes, dropout)
    else:  # pragma: no cover - guarded by build_model
        raise AssertionError(name)
    return net


def build_model(name: str, num_classes: int, *, dropout: float = 0.5, in_channels: int = 1,
                image_size: int = 224) -> nn.Module:
    """A freshly initialised classifier ``name`` (one of :data:`MODELS`) with ``num_classes`` outputs.

    Input: ``(N, in_channels, H, W)`` float tensors; output: ``(N, num_classes)`` logits.
    ``image_size`` matters only for ``vit_b_16`` (whose position embedding is sized for it; a
    multiple of 16). Raises ValueError for an unknown name or bad sizes.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if name == "fastnet":
        return FastNet(num_classes, dropout=dropout, in_channels=in_channels)
    if in_channels not in (1, 3):
        raise ValueError(f"{name} takes 1 or 3 input channels, got {in_channels}")
    if name == "vit_b_16" and image_size % 16:
        raise ValueError(f"vit_b_16 needs an image size that is a multiple of 16, got {image_size}")
    return GrayToRGB(_torchvision(name, num_classes, dropout, image_size), in_channels)
