"""The generator zoo: several families of generators, trained here, whose fakes test whether a
detector catches generators it never saw.

Families (:mod:`medforensics.forge.zoo.families`): a whole-image GAN (``gan``), a denoising
diffusion model (``diffusion``), a super-resolution decoder (``upsample``) and the forge's VAE
synthesiser (``vae``). Each is trained on the real chest radiographs of the ``train`` patients
only (:func:`real_images`; never on the outside folders) with a ``small`` CPU preset and a
``gpu`` preset, and makes two kinds of fakes:

* **whole images** (``sample``): drawn from the model;
* **reconstructions** (``reconstruct``): an authentic image passed through the family's
  generator (encoder-decoder, super-resolution of a down-sampled copy, or noised and denoised by
  the diffusion model as DRCT does), so that fake and authentic share their anatomy and differ
  only in the generator's traces.

:func:`medforensics.forge.zoo.dataset.build_zoo_dataset` writes them like real files (PNG, JPEG
or DICOM; the export chains of :mod:`medforensics.learn.export` applied to authentic and fake
alike) with a forge manifest; ``benchmarks/unseen_generators.py`` holds one family out at a time.

Patients are split by a hash of their id (:func:`split_of`), the same in every run and for
every family, so that no generator is trained on a test patient and no detector is tested on
its own training patients.

>>> split_of("mhh-024e7871") in ("train", "validation", "test")
True
>>> split_of("mhh-024e7871") == split_of("mhh-024e7871")
True
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core import MedForensicsError

__all__ = ["RealImage", "real_images", "split_of", "SPLIT_SHARES"]

#: Shares of patients in train, validation and test.
SPLIT_SHARES = {"train": 0.7, "validation": 0.15, "test": 0.15}


def split_of(patient: str) -> str:
    """The split of a patient: a fixed function of its id (SHA-256), so every run and every
    family agree on it."""
    u = int.from_bytes(hashlib.sha256(patient.encode()).digest()[:8], "big") / 2.0 ** 64
    acc = 0.0
    for name, share in SPLIT_SHARES.items():
        acc += share
        if u < acc:
            return name
    return "test"


@dataclass
class RealImage:
    """One real radiograph: its file, patient, split and pixels in [0, 1] (float32)."""

    path: Path
    root: Path
    patient: str
    split: str
    pixels: np.ndarray


def real_images(data_root: str | Path | None = None, split: str | None = None,
                limit: int | None = None) -> list[RealImage]:
    """The real chest radiographs that may be trained on (the forge synthesiser's set: MHH,
    the two full-size NIH images, the SIIM DICOM), optionally of one ``split`` only and at most
    ``limit`` of them (in file order)."""
    from ...datapath import data_root as data_root_of
    from ..synth.reference import _load_real, _patient_ids, find_training_images

    if split is not None and split not in SPLIT_SHARES:
        raise MedForensicsError(None, f"unknown split {split!r}; choose from {', '.join(SPLIT_SHARES)}")
    root = data_root_of(data_root)
    pids = _patient_ids(root)
    out = []
    for f in find_training_images(root):
        patient = f"{f.parent.parent.name if f.parent.name == 'images' else f.parent.name}-{pids.get(f.stem, f.stem)}"
        s = split_of(patient)
        if split is not None and s != split or limit is not None and len(out) >= limit:
            continue
        px, full, _ = _load_real(f)
        out.append(RealImage(f, root, patient, s, np.clip(px / full, 0.0, 1.0).astype(np.float32)))
    if not out:
        raise MedForensicsError(root, f"no real radiographs{' in split ' + split if split else ''}")
    return out
