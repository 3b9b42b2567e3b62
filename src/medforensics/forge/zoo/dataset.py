"""A labelled dataset of the zoo's fakes and the authentic images they compete with.

Every item, authentic or fake, goes through the same finishing: with probability
``export_share`` a random export chain (:func:`medforensics.learn.export.export_chain`: window,
sharpening, resizing, marks, JPEG once or twice), then a file in a format drawn the same way for
both classes (8-bit PNG, JPEG, or 12-bit DICOM CR through
:func:`medforensics.forge.synth.write_synthetic`). Whole generated images come at the
generator's size, so authentic images are also written down-scaled to those sizes (method
``resized``): size tells nothing.

The manifest has the forge's columns (:data:`medforensics.forge.dataset.MANIFEST_COLUMNS`), so
``medforensics train`` and :mod:`medforensics.learn.evaluate` read it: ``class`` is
``authentic`` or ``synthetic``, ``method`` the family (or ``authentic`` / ``resized``),
``params`` holds the mode (``sample`` or ``reconstruct``), the export steps and the format.
Patients follow :func:`medforensics.forge.zoo.split_of`; each whole generated image is its own
patient, a reconstruction keeps its authentic image's patient (and split).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core import MedForensicsError
from ...progress import progress_bar
from . import SPLIT_SHARES, real_images
from .families import FAMILIES, ZooModel

__all__ = ["ZooDatasetConfig", "build_zoo_dataset", "FORMAT_SHARES"]

#: Formats, drawn identically for authentic and fake items.
FORMAT_SHARES = {"png": 0.65, "jpeg": 0.15, "dicom": 0.2}


@dataclass
class ZooDatasetConfig:
    """How many items :func:`build_zoo_dataset` writes."""

    seed: int = 0
    #: Whole generated images per family, shared out over the splits by :data:`SPLIT_SHARES`.
    samples_per_family: int = 60
    #: Authentic images reconstructed per family and split (0 = all of that split).
    reconstructions: dict[str, int] = field(default_factory=lambda: {"train": 30, "validation": 8, "test": 25})
    #: Share of items (both classes) that go through a random export chain first.
    export_share: float = 0.5
    #: Authentic images also written down-scaled to the size of whole generated images.
    resized_per_split: dict[str, int] = field(default_factory=lambda: {"train": 60, "validation": 12, "test": 30})
    #: Authentic images per split (0 = all): for quick trials and tests.
    max_per_split: int = 0


def _finish(a: np.ndarray, rng: np.random.Generator, export_share: float) -> tuple[np.ndarray, list[str]]:
    from ...learn.export import export_chain
    if rng.random() < export_share:
        a, _, steps = export_chain(a, None, rng)
        return a, steps
    return a, []


def _write(a: np.ndarray, path_stem: Path, rng: np.random.Generator, steps: list[str]) -> tuple[Path, str]:
    from ..synth import write_synthetic
    fmt = str(rng.choice(list(FORMAT_SHARES), p=list(FORMAT_SHARES.values())))
    if fmt == "dicom" and steps:
        fmt = "png"  # an export is a raster file, not a DICOM object
    if fmt == "dicom":
        # on the 8-bit grid first, like the 8-bit authentic sources, so that a dense 12-bit histogram
        # does not tell a generated image from an authentic one
        stored = (np.rint(np.clip(a, 0, 1) * 255).astype(np.uint16) * 4095 + 127) // 255
        path = write_synthetic(stored, path_stem.with_suffix(".dcm"), "dicom", bit_depth=12, dicom_style="cr",
                               seed=int(rng.integers(2**31)))
    else:
        stored = np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
        path = write_synthetic(stored, path_stem.with_suffix(".png" if fmt == "png" else ".jpg"), fmt,
                               seed=int(rng.integers(2**31)))
    return path, fmt


def build_zoo_dataset(out: str | Path, models: dict[str, ZooModel], data_root: str | Path | None = None,
                      config: ZooDatasetConfig = ZooDatasetConfig(), *, progress: bool = True) -> Path:
    """Write the zoo dataset of ``models`` (family name -> trained model) to the new folder
    ``out``; returns its ``manifest.csv``."""
    from ..dataset import counts_by_split, write_manifest

    from ...io.plan import new_folder

    out = new_folder(out, create=False)
    for name, m in models.items():
        if name not in FAMILIES or m.family != name:
            raise MedForensicsError(None, f"model given for {name!r} is of family {m.family!r}")
    t0 = time.time()
    rng = np.random.default_rng(config.seed)
    rows: list[dict[str, Any]] = []
    by_split = {s: real_images(data_root, s, limit=config.max_per_split or None) for s in SPLIT_SHARES}
    sizes = sorted({m.preset.size for n, m in models.items() if FAMILIES[n].sample})

    jobs: list[tuple] = []
    for split, items in by_split.items():
        for r in items:
            jobs.append(("authentic", split, r, None))
        picks = rng.permutation(len(items))[: config.resized_per_split.get(split, 0)]
        for i, k in enumerate(picks):
            if sizes:
                jobs.append(("resized", split, items[int(k)], sizes[i % len(sizes)]))
        for name in models:
            fam = FAMILIES[name]
            if fam.reconstruct is not None:
                n = config.reconstructions.get(split, 0) or len(items)
                for k in rng.permutation(len(items))[:n]:
                    jobs.append(("reconstruct", split, items[int(k)], name))
            if fam.sample is not None:
                n = int(round(config.samples_per_family * SPLIT_SHARES[split]))
                jobs += [("sample", split, None, name)] * n
    out.mkdir(parents=True, exist_ok=True)
    counters: dict[str, int] = {}
    with progress_bar("zoo dataset", show=progress) as bar:
        task = bar.add_task("", total=len(jobs))
        for what, split, real, arg in jobs:
            seed = int(rng.integers(2**31))
            item_rng = np.random.default_rng(seed)
            if what in ("authentic", "resized"):
                a = real.pixels
                if what == "resized":
                    import cv2
                    a = cv2.resize(a, (arg, arg), interpolation=cv2.INTER_AREA)
                label, cls, method, patient = "real", "authentic", what, real.patient
                mode = what
            elif what == "reconstruct":
                a = FAMILIES[arg].reconstruct(models[arg], real.pixels, seed)
                label, cls, method, patient, mode = "fake", "synthetic", arg, real.patient, "reconstruct"
            else:
                a = FAMILIES[arg].sample(models[arg], 1, seed)[0]
                label, cls, method, mode = "fake", "synthetic", arg, "sample"
                patient = f"zoo-{arg}-{seed}"
            a, steps = _finish(a, item_rng, config.export_share)
            key = f"{split}/{method}"
            counters[key] = counters.get(key, 0) + 1
            item_id = f"{method}-{mode}-{counters[key]:05d}"
            folder = out / split / method
            folder.mkdir(parents=True, exist_ok=True)
            path, fmt = _write(a, folder / item_id, item_rng, steps)
            rows.append({"id": item_id, "file": str(path.relative_to(out)), "mask": "", "split": split,
                         "label": label, "class": cls, "modality": "XR", "kind": "radiograph", "method": method,
                         "patient_id": patient,
                         "source_dataset": arg if label == "fake" else real.path.parent.parent.name,
                         "source_file": str(real.path.relative_to(real.root)) if real is not None else "",
                         "slice": "", "center_voxel": "", "bbox_voxel": "", "center_mm": "", "seed": seed,
                         "augmentation": "", "parent_id": "",
                         "params": json.dumps({"mode": mode, "export": steps, "format": fmt,
                                               "shape": list(a.shape)})})
            bar.advance(task)
    manifest = write_manifest(out, rows)
    counts = counts_by_split(rows, "method")
    with open(out / "dataset.json", "x", encoding="utf-8") as fh:
        json.dump({"config": asdict(config), "families": {n: {
            "steps_done": {k: v["steps_done"] for k, v in m.card.get("training", {}).items()
                           if isinstance(v, dict) and "steps_done" in v},
            "preset": m.preset.name, "checkpoint": m.path.name if m.path else None}
            for n, m in models.items()}, "counts": counts, "seconds": round(time.time() - t0, 1)}, fh, indent=2)
    return manifest
