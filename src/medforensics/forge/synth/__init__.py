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

With the shipped model (its card keeps the measured references, so no data folder is needed):

>>> import tempfile
>>> from pathlib import Path
>>> import numpy as np
>>> from PIL import Image
>>> from medforensics.forge.synth import synthesize, write_synthetic
>>> samples = synthesize(2, seed=0)
>>> [(s.pixels.shape, s.pixels.dtype.name, s.format) for s in samples]
[((524, 640), 'uint8', 'png'), ((524, 640), 'uint8', 'png')]
>>> np.array_equal(synthesize(1, seed=0)[0].pixels, samples[0].pixels)   # sample i depends on (seed, i) only
True
>>> folder = tempfile.TemporaryDirectory()
>>> path = write_synthetic(samples[0].pixels, Path(folder.name) / "fake_0001.png", fmt="png",
...                        ground_truth=samples[0].ground_truth)
>>> np.array_equal(np.array(Image.open(path)), samples[0].pixels), sorted(p.name for p in path.parent.iterdir())
(True, ['fake_0001.png', 'fake_0001.png.json'])
>>> folder.cleanup()

The package has one module per job:

* :mod:`~medforensics.forge.synth.reference` -- the real training images, noise measurement and
  :class:`Reference` (what a real file looks like);
* :mod:`~medforensics.forge.synth.model` -- the VAE-GAN, its training (:func:`train`, in
  :func:`medforensics.learn.loop.fit`) and checkpoints (:func:`load_model`);
* :mod:`~medforensics.forge.synth.finish` -- finishing samples like a reference (:func:`synthesize`);
* :mod:`~medforensics.forge.synth.dicom` -- DICOM headers of look-alike files;
* :mod:`~medforensics.forge.synth.write` -- writing PNG, JPEG and DICOM files (:func:`write_synthetic`).
"""
from __future__ import annotations

# the public names, and the private ones other modules of the package use (zoo, tests)
from .dicom import CR_SYSTEMS  # noqa: F401
from .finish import SyntheticRadiograph, _finish, _synthesize_indices, synthesize, synthesize_like  # noqa: F401
from .model import ARCHITECTURE, SHIPPED_CHECKPOINT, SynthModel, TrainConfig, load_model, train  # noqa: F401
from .reference import (FORMATS, NOISE_BINS, QUANTILE_LEVELS, Reference, _corr_ratio, _load_real,  # noqa: F401
                        _patient_ids, find_training_images, measure_reference, noise_profile, noise_sigma,
                        references_from)
from .write import write_samples, write_synthetic

__all__ = ["TrainConfig", "Reference", "SyntheticRadiograph", "train", "load_model", "synthesize", "synthesize_like",
           "write_synthetic", "write_samples", "measure_reference", "find_training_images",
           "noise_sigma", "noise_profile", "SHIPPED_CHECKPOINT"]
