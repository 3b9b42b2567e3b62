"""A learned in-painting generator for realistic local forgeries (CT-GAN style), in 2D and 3D.

An attacker who wants to inject or remove a lung nodule cuts a cube around the spot, blanks the
region to change, paints the *coarse* content they want (a bright ball, or smooth lung) and lets
a generator add the fine texture and the scanner noise that make the result look acquired, then
pastes the cube back. :func:`render` is that generator step:

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> cube_hu = np.round(-850 + rng.normal(0, 20, (16, 48, 48))).astype(np.float32)   # lung, 2.5 x 0.7 x 0.7 mm
>>> zz, yy, xx = np.indices(cube_hu.shape)
>>> r_mm = np.sqrt(((zz - 8) * 2.5) ** 2 + ((yy - 24) * 0.7) ** 2 + ((xx - 24) * 0.7) ** 2)
>>> mask, ball = r_mm < 8, r_mm < 6                         # generate 16 mm; a 12 mm nodule in it
>>> sketch = lowpass(np.where(ball, 40.0, -850.0))           # coarse content: a soft-tissue ball
>>> out = render(cube_hu, mask, sketch, seed=3)              # the shipped 3D CT model
>>> out.shape, out.dtype, np.array_equal(out[~mask], cube_hu[~mask])
((16, 48, 48), dtype('float32'), True)
>>> bool(np.abs(lowpass(out) - sketch)[mask].mean() < 20), bool(out[ball].mean() > -200)
(True, True)
>>> np.array_equal(render(cube_hu, mask, sketch, seed=3), out)   # same seed, same result
True

* ``context``: float array in physical units -- HU for a CT cube ``(D, H, W)``, gray levels for a
  radiograph patch ``(H, W)``;
* ``mask``: bool, same shape, the region to generate;
* ``sketch``: same shape, physical units: what :func:`lowpass` of the final content should look
  like inside the mask (a Gaussian blur, sigma 1 voxel in-plane and 0.5 voxel across slices for
  3D, sigma 1 pixel for 2D). Values outside the mask are ignored.

The result equals ``context`` outside the mask bit for bit; inside it has texture and noise whose
low-pass follows the sketch. The network (:class:`InpaintUNet`) is a small U-Net with noise
inputs trained adversarially against a PatchGAN (:class:`PatchDiscriminator`) on cubes and patches
of real CT and radiographs (:func:`train`, :class:`TrainConfig`). Default models ship with the
package (``models/inpaint3d_ct.safetensors``, ``models/inpaint2d_xray.safetensors``) and are
loaded on first use (:func:`load_model`). See ``docs/forge/gan.md``.

The package has one module per job: :mod:`~medforensics.forge.gan.nets` (the networks, ordinary
``torch.nn.Module`` classes), :mod:`~medforensics.forge.gan.rendering` (:func:`lowpass`,
:func:`load_model`, :func:`render`) and :mod:`~medforensics.forge.gan.training` (:class:`TrainConfig`,
:func:`train`, in :func:`medforensics.learn.loop.fit`). Importing it does not import torch; the
networks are imported on first use.
"""
from __future__ import annotations

from .rendering import (CT_RANGE, SIGMA_2D, SIGMA_3D, _render, default_model_path, load_model,  # noqa: F401
                        lowpass, render)
from .training import TrainConfig, train

__all__ = ["render", "lowpass", "load_model", "train", "TrainConfig", "InpaintUNet", "PatchDiscriminator",
           "default_model_path", "SIGMA_3D", "SIGMA_2D", "CT_RANGE"]


def __getattr__(name: str):
    """The network classes, imported (with torch) on first use."""
    if name in ("InpaintUNet", "PatchDiscriminator"):
        from . import nets
        return getattr(nets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
