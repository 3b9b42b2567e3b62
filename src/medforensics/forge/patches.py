"""``forge dataset --patches N``: CT patches as the CT-GAN dataset ships them.

CT-GAN's tampered-scan data is handed around as small crops around the nodule rather than whole
slices. This module writes such crops from our own forgeries and from real LIDC nodules, with
the classes of :mod:`medforensics.forge.dataset`:

* ``TM`` (true malignant): a crop centred on a real nodule the LIDC readers rated malignancy
  >= 3, on every slice that crosses it;
* ``TB`` (true benign): on every slice that crosses no malignant nodule, a crop centred on a
  random place in the lungs (method ``random-lung``) and one centred on real dense tissue in the
  lungs, above -500 HU (a vessel, a scar, an opacity: method ``dense-lung``; the hard negatives
  that keep a model from learning "a bright blob is fake"); a crop centred on each real nodule
  that is not rated malignant (method ``benign-nodule``, the centre slice); and the same two
  lung crops of every single CT slice of TCIA COVID-19 (other patients, GE and Toshiba scanners);
* ``FM`` (false malignant): a crop centred on an injected nodule, on its centre slice and
  ``slices_either_side`` either side (as the slice dataset);
* ``FB`` (false benign): a crop centred where a real nodule >= ``min_nodule_mm`` was removed.

Every crop is ``size`` x ``size`` pixels at the series' own resolution (never resampled) and is
written twice, by the same writer for every class:

* ``<id>.dcm`` -- HU as the series stored them: every header of the source instance is kept
  (patient, study, scanner, rescale, window), ``Rows``/``Columns`` become the crop's and
  ``ImagePositionPatient`` moves to the crop's first pixel; the pixel data keeps the source's
  transfer syntax where it can be re-encoded losslessly (:func:`medforensics.io.write.output_syntax`,
  the rule of every forge write). A crop is a new image, so it gets its
  own SOP Instance UID and Series Instance UID (derived from the source UIDs and the item id):
  ``scan`` then reads each file as one image rather than stacking a folder of crops of one series
  into a volume. Real and forged crops get the same treatment, so UIDs never tell them apart.
* ``<id>.png`` -- 8-bit grayscale through the fixed lung window of the learned models
  (:data:`medforensics.learn.data.CT_WINDOW`, HU -1000..400): ``round(255 * (HU + 1000) / 1400)``.
  A lung-window PNG holds no HU; the ``ct_patch`` detector reads it as the window's values
  (docs/detectors/ct_patch.md).

The manifest has the columns of :data:`medforensics.forge.dataset.MANIFEST_COLUMNS`; ``file`` is the
DICOM crop (``kind`` ``ct-slice``: it holds HU, so every tool that reads CT slices reads it),
``params`` holds the PNG's path (``png``), the crop's place in its slice (``crop_top_left``)
and, for forgeries, everything needed to redo them. ``center_voxel`` and ``bbox_voxel`` are in the
crop's own pixels. Splits are those of ``forge dataset`` with the same seed (patients assigned
over the whole inventory), so patches and slices of one seed never mix patients across splits.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core import Image, MedForensicsError, ignoring_warnings
from ..io import load_instance, load_series
from ..io.plan import new_file, new_folder
from .dataset import (SPLITS, DatasetConfig, RealSource, assign_splits, check_patient_disjoint,
                      counts_by_split, inventory, write_manifest)

__all__ = ["build_patches", "crop_box", "lung_window_png", "write_dicom_crop", "PATCH_SIZES"]

#: Patch sizes the command accepts (the learned patch model reads crops of 32 px and more).
PATCH_SIZES = (32, 48, 64, 96, 128)
#: Sources of single CT slices that give TB crops too (real lungs of more patients and scanners).
CT_SLICE_DATASETS = frozenset({"tcia-covid19-ny-sbu"})


def crop_box(center_ij: tuple[int, int], shape: tuple[int, int], size: int) -> tuple[int, int]:
    """``(top, left)`` of the ``size`` crop centred on ``center_ij``, moved inside ``shape``."""
    h, w = shape
    if size > h or size > w:
        raise ValueError(f"a {size} px crop does not fit a {h}x{w} slice")
    top = int(np.clip(int(center_ij[0]) - size // 2, 0, h - size))
    left = int(np.clip(int(center_ij[1]) - size // 2, 0, w - size))
    return top, left


def lung_window_png(hu: np.ndarray) -> np.ndarray:
    """HU to the 8-bit lung window of the learned models (HU -1000..400 -> 0..255)."""
    from ..learn.data import CT_WINDOW

    lo, hi = CT_WINDOW
    return np.round(np.clip((np.asarray(hu, np.float64) - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def write_dicom_crop(source: Path, hu_crop: np.ndarray, top: int, left: int, out: Path, uid_seed: str) -> Path:
    """Write ``hu_crop`` (HU, a crop of the instance ``source`` at ``top``, ``left``) as a new DICOM
    file keeping every header of ``source``; see the module doc for what changes."""
    from pydicom.uid import generate_uid

    from ..io.dicom import _decode  # the loader's own decoding
    from ..io.write import encode_like, new_file, physical_to_stored

    dst = new_file(out)
    ds, frames, _ = _decode(source)
    stored = physical_to_stored(ds, hu_crop).astype(frames.dtype)
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    encode_like(ds, stored)  # the source's transfer syntax where it can be kept (io.write.output_syntax)
    for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if tag in ds:
            delattr(ds, tag)
    ipp, iop, ps = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None), \
        getattr(ds, "PixelSpacing", None)
    if ipp is not None and iop is not None and ps is not None:
        row_dir, col_dir = np.array(iop[:3], float), np.array(iop[3:6], float)
        pos = np.array(ipp, float) + left * float(ps[1]) * row_dir + top * float(ps[0]) * col_dir
        ds.ImagePositionPatient = [float(f"{v:.6f}") for v in pos]
    sop = str(getattr(ds, "SOPInstanceUID", ""))
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[sop, uid_seed, "sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(getattr(ds, "SeriesInstanceUID", "")), uid_seed, "series"])
    ds.save_as(dst, enforce_file_format=False)
    return dst


@dataclass
class _Patch:
    cls: str
    label: str
    method: str
    k: int
    center_ij: tuple[int, int]
    hu: np.ndarray            # the (forged or real) slice in HU
    mask: np.ndarray          # what changed in that slice
    seed: int | None = None
    params: dict[str, Any] | None = None


class _PatchWriter:
    def __init__(self, out: Path, size: int):
        self.out, self.size = out, size
        self.rows: list[dict[str, Any]] = []
        self.n = 0

    def add(self, p: _Patch, vol: Image, src: RealSource, split: str) -> None:
        from PIL import Image as PILImage

        from ..io.write import write_mask

        self.n += 1
        item_id = f"{self.n:06d}"
        folder = self.out / split / p.cls
        folder.mkdir(parents=True, exist_ok=True)
        top, left = crop_box(p.center_ij, p.hu.shape, self.size)
        s = self.size
        hu = p.hu[top:top + s, left:left + s]
        mask = p.mask[top:top + s, left:left + s]
        source = Path(vol.sources[p.k if vol.pixels.ndim == 3 else 0])
        dcm = write_dicom_crop(source, hu, top, left, folder / f"{item_id}.dcm", f"{src.patient_id}/{item_id}")
        png = folder / f"{item_id}.png"
        PILImage.fromarray(lung_window_png(hu)).save(new_file(png))
        mpath = write_mask(mask.astype(np.uint8), folder / f"{item_id}.mask.png")
        centre = [int(p.center_ij[0]) - top, int(p.center_ij[1]) - left]
        box = ""
        if mask.any():
            ys, xs = np.nonzero(mask)
            box = json.dumps([int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1])
        ij = (int(p.center_ij[0]), int(p.center_ij[1]))
        centre_mm = vol.voxel_to_mm((p.k, *ij) if vol.pixels.ndim == 3 else ij)
        params = {**(p.params or {}), "png": str(png.relative_to(self.out)), "crop_top_left": [top, left],
                  "patch_size": s, "center_in_slice": [int(p.center_ij[0]), int(p.center_ij[1])]}
        self.rows.append({
            "id": item_id, "file": str(dcm.relative_to(self.out)), "mask": str(mpath.relative_to(self.out)),
            "split": split, "label": p.label, "class": p.cls, "modality": "CT", "kind": "ct-slice",
            "method": p.method, "patient_id": src.patient_id, "source_dataset": src.dataset,
            "source_file": source.name, "slice": p.k if vol.pixels.ndim == 3 else "", "center_voxel": json.dumps(centre), "bbox_voxel": box,
            "center_mm": json.dumps([round(float(v), 3) for v in centre_mm]) if centre_mm is not None else "",
            "seed": "" if p.seed is None else p.seed, "augmentation": "", "parent_id": "",
            "params": json.dumps(params, default=str)})


def _random_lung_centre(vol: Image, k: int, size: int, rng: np.random.Generator, *,
                        dense: bool = False) -> tuple[int, int] | None:
    """A random in-lung pixel of slice ``k`` at least 5 mm inside the lung, or None (no lung).
    ``dense``: one whose HU is above -500 (a vessel, a scar, an opacity: real dense tissue inside
    the lung, the hard negatives a nodule detector must learn to call real)."""
    from .ct import _lung_map

    step, grid, _, lung, dist = _lung_map(vol)
    h, w = vol.pixels.shape[1:]
    for margin in (5.0, 2.0, 0.0):
        ok = lung[k] & (dist[k] >= margin)
        if dense:
            ok &= grid[k] > -500.0
        cand = np.argwhere(ok)
        if len(cand):
            i, j = cand[rng.integers(len(cand))]
            return (int(min(i * step + step // 2, h - 1)), int(min(j * step + step // 2, w - 1)))
    return None


def _real_lung_patches(vol: Image, slices: list[int], size: int, rng: np.random.Generator,
                       emit: Callable[[_Patch], None]) -> None:
    """TB crops of ``slices``: one at a random place in the lungs, one on real dense tissue there."""
    zero = np.zeros(vol.pixels.shape[1:], np.uint8)
    for k in slices:
        for method, dense in (("random-lung", False), ("dense-lung", True)):
            try:
                c = _random_lung_centre(vol, k, size, rng, dense=dense)
            except MedForensicsError:
                return  # no lungs: not a chest CT
            if c is not None:
                emit(_Patch("TB", "real", method, k, c, vol.pixels[k], zero))


def _nodule_centre_on(nod: Any, k: int) -> tuple[int, int]:
    """The in-plane centre of a LIDC nodule on slice ``k`` (centroid of its outline there)."""
    if nod.mask is not None:
        k0, i0, j0 = nod.bbox_voxel[:3]
        if 0 <= k - k0 < nod.mask.shape[0] and nod.mask[k - k0].any():
            ys, xs = np.nonzero(nod.mask[k - k0])
            return int(round(ys.mean())) + i0, int(round(xs.mean())) + j0
    return int(nod.center_voxel[1]), int(nod.center_voxel[2])


def _series_patches(vol: Image, cfg: DatasetConfig, size: int, rng: np.random.Generator,
                    emit: Callable[[_Patch], None]) -> None:
    from . import ct, lidc

    n = vol.pixels.shape[0]
    nodules = lidc.nodules_for(vol) if n >= 3 else []
    zero = np.zeros(vol.pixels.shape[1:], np.uint8)
    malignant_slices: set[int] = set()
    for nod in nodules:
        if nod.malignant:
            for k in range(nod.bbox_voxel[0], nod.bbox_voxel[3]):
                malignant_slices.add(k)
                emit(_Patch("TM", "real", "nodule", k, _nodule_centre_on(nod, k), vol.pixels[k], zero,
                            params={"nodule": nod.id, "diameter_mm": round(nod.diameter_mm, 2),
                                    "malignancy": nod.malignancy}))
    for nod in nodules:
        if not nod.malignant:
            k = int(nod.center_voxel[0])
            emit(_Patch("TB", "real", "benign-nodule", k, _nodule_centre_on(nod, k), vol.pixels[k], zero,
                        params={"nodule": nod.id, "diameter_mm": round(nod.diameter_mm, 2),
                                "malignancy": nod.malignancy}))
    _real_lung_patches(vol, [k for k in range(n) if k not in malignant_slices], size, rng, emit)
    if n < 8:
        return  # too few slices for a nodule cube
    methods = list(cfg.ct_methods)
    n_inject = max(cfg.min_injections, int(round(cfg.injections_per_100_slices * n / 100)))
    for j in range(n_inject):
        seed = int(rng.integers(2**31))
        diameter = float(rng.uniform(4.0, 20.0))
        ntype = str(rng.choice(["solid", "solid", "part-solid", "ground-glass"]))
        try:
            f = ct.inject(vol, diameter_mm=diameter, nodule_type=ntype, method=methods[j % len(methods)], seed=seed)
        except MedForensicsError:
            continue
        _forged(f, "FM", cfg, seed, emit)
    for nod in (nod for nod in nodules if nod.diameter_mm >= cfg.min_nodule_mm):
        for j in range(cfg.removals_per_nodule):
            seed = int(rng.integers(2**31))
            try:
                f = ct.remove(vol, nodule=nod, method=methods[j % len(methods)], seed=seed)
            except MedForensicsError:
                continue
            _forged(f, "FB", cfg, seed, emit)


def _forged(f: Any, cls: str, cfg: DatasetConfig, seed: int, emit: Callable[[_Patch], None]) -> None:
    k0, i0, j0 = (int(v) for v in f.center_voxel)
    gt = f.ground_truth()
    for k in range(k0 - cfg.slices_either_side, k0 + cfg.slices_either_side + 1):
        if 0 <= k < f.pixels.shape[0] and f.mask[k].any():
            emit(_Patch(cls, "fake", f.method, k, (i0, j0), f.pixels[k], f.mask[k], seed=seed,
                        params={**gt.get("params", {}), "center_voxel_3d": [k0, i0, j0]}))


def _slice_patches(src: RealSource, size: int, rng: np.random.Generator,
                   emit: Callable[[_Patch, Image], None]) -> None:
    """TB crops of a single CT slice (random lung place and real dense tissue), from other
    patients and scanners than the series."""
    img = load_instance(src.files[0])
    if img.pixels.ndim != 2 or min(img.pixels.shape) < size:
        return
    sp = tuple(float(v) if v else 0.7 for v in img.spacing)
    stack = Image(pixels=img.pixels[None], spacing=(1.0, *sp), modality="CT", format="dicom",
                  sources=img.sources, uid=img.uid)
    _real_lung_patches(stack, [0], size, rng, lambda p: emit(p, img))


def build_patches(data_root: str | Path, out: str | Path, config: DatasetConfig = DatasetConfig(), size: int = 64,
                  progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Write CT patches of ``size`` px (TB/TM/FB/FM) from the CT series under ``data_root`` into
    the new folder ``out``; returns the manifest's path. ``config`` gives the seed, the injections
    and removals and the split fractions (its 2D settings are not used)."""
    t0 = time.perf_counter()
    out = Path(out)
    if size not in PATCH_SIZES:
        raise ValueError(f"patch size must be one of {', '.join(map(str, PATCH_SIZES))}, got {size}")
    new_folder(out, create=False)
    sources = inventory(data_root, config.include_nih_small)
    splits = assign_splits(sources, config.fractions, config.seed)  # the same splits as forge dataset
    series = [s for s in sources if s.kind == "ct-series" or s.dataset in CT_SLICE_DATASETS]
    if not series:
        raise MedForensicsError(data_root, "no CT series found (expected ct/lidc-idri laid out like ../shared/data)")
    out.mkdir(parents=True, exist_ok=True)
    w = _PatchWriter(out, size)
    rng = np.random.default_rng(config.seed)
    problems: list[str] = []
    for i, src in enumerate(series):
        split = splits[src.patient_id]
        try:
            with ignoring_warnings():
                if src.kind == "ct-series":
                    vol = load_series(src.files)
                    if min(vol.pixels.shape[1:]) < size:
                        raise MedForensicsError(src.files[0], f"slices smaller than {size} px")
                    _series_patches(vol, config, size, rng, lambda p: w.add(p, vol, src, split))
                else:
                    _slice_patches(src, size, rng, lambda p, img: w.add(p, img, src, split))
        except MedForensicsError as e:
            problems.append(str(e))
        if progress:
            progress(i + 1, len(series), src.name)
    manifest = write_manifest(out, w.rows)
    per_split = check_patient_disjoint(manifest) if w.rows else {}
    card = {"config": {**config.to_dict(), "patch_size": size}, "data_root": ".", "n_items": len(w.rows),
            "kind": "ct-patches", "seconds": round(time.perf_counter() - t0, 1), "counts": counts_by_split(w.rows),
            "patients": {s: sorted(per_split.get(s, ())) for s in SPLITS}, "problems": problems,
            "notes": ["file: the HU DICOM crop; params.png: the same crop as an 8-bit lung-window PNG "
                      "(HU -1000..400)", "splits: those of forge dataset with the same seed"]}
    with open(out / "dataset.json", "x") as fh:
        json.dump(card, fh, indent=2)
    return manifest
