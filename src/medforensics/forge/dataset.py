"""``forge dataset``: a labelled dataset of real and forged images with masks, centres, splits.

Built from real images only (``../shared/data`` or any folder laid out like it), reproducible by
seed. Every item is one 2D image file written in the form of its source (a DICOM slice keeps
the headers of its series, a PNG stays an 8-bit PNG of the same size): authentic items go
through the same writer as forged ones, so that format, size, bit depth and encoder never tell
the classes apart.

Classes
-------
CT nodule scans, as CT-GAN defines them: ``TB`` (true benign: a real slice with no malignant
nodule), ``TM`` (true malignant: a real slice through a nodule the LIDC readers rated
malignancy >= 3), ``FB`` (false benign: a real nodule removed), ``FM`` (false malignant: a nodule
injected). 2D images (radiographs and single CT slices): ``authentic``, ``copymove``, ``splice``,
``inpaint``, ``intensity``, ``contrast``, ``resample``, and ``synthetic`` (whole synthetic
radiographs). The binary ``label`` is ``real`` or ``fake``.

Splits are patient-disjoint: every patient (LIDC case, TCIA patient, MHH patient id, NIH patient
number; each synthetic image is its own "patient") lies in exactly one of ``train``,
``validation``, ``test``; splice donors come from the same split. :func:`check_patient_disjoint`
verifies a manifest.

Layout of the output folder::

    manifest.csv           one row per item (see MANIFEST_COLUMNS)
    dataset.json           config, counts per split and class, time taken
    <split>/<class>/<id>.<ext>        the image (.dcm or .png)
    <split>/<class>/<id>.mask.png     what changed (forged items; all zero for real ones)

Paths of real images in the manifest (``source_file``, and ``donor``/``reference`` in ``params``)
are relative to the data root, and ``dataset.json`` records the data root as ``"."`` (as model
cards do, :func:`medforensics.datapath.card_data_root`): no machine's folder is written.
"""
from __future__ import annotations

import csv
import json
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..core import Image, MedForensicsError, ignoring_warnings
from ..datapath import card_data_root
from ..io import load_instance, load_raster, load_series
from ..io.plan import new_folder
from ..io.write import write_image, write_mask
from .base import Forgery

MANIFEST_COLUMNS = ["id", "file", "mask", "split", "label", "class", "modality", "kind", "method", "patient_id",
                    "source_dataset", "source_file", "slice", "center_voxel", "bbox_voxel", "center_mm", "seed",
                    "augmentation", "parent_id", "params"]
SPLITS = ("train", "validation", "test")
EDIT_KINDS = ("copymove", "splice", "inpaint", "intensity", "contrast", "resample")
CT_CLASSES = ("TB", "TM", "FB", "FM")


@dataclass
class DatasetConfig:
    """What :func:`build_dataset` makes. The defaults make about 2,500 items from ../shared/data."""

    seed: int = 0
    #: Nodules injected (FM) per 100 slices of a CT series, at least ``min_injections`` per series
    #: (so a short series does not outweigh its own real slices); diameters 4-20 mm, three types.
    injections_per_100_slices: float = 45.0
    min_injections: int = 10
    #: Removal runs per real nodule of at least ``min_nodule_mm`` (FB), alternating methods and seeds.
    removals_per_nodule: int = 4
    min_nodule_mm: float = 4.0
    #: Slices written per injected/removed/real nodule: the centre slice and this many either side.
    slices_either_side: int = 1
    #: Methods of the 3D CT forgeries (``gan`` needs the shipped in-painting model).
    ct_methods: tuple[str, ...] = ("classic", "gan")
    #: Forged copies made of every real 2D image (each with a kind drawn from ``edit_kinds``).
    fakes_per_image: int = 1
    edit_kinds: tuple[str, ...] = EDIT_KINDS
    #: In-painting methods for 2D (``learned`` needs the 2D in-painting model).
    inpaint_methods: tuple[str, ...] = ("classic", "learned")
    #: Whole synthetic radiographs (0 for none; needs the shipped synthesis model).
    synthetic: int = 250
    #: The 1,000 NIH radiographs at 64x64 (real and forged alike).
    include_nih_small: bool = True
    #: Augment forged items as the review paper did: rotations of +-5 and +-10 degrees, brightness
    #: +-10% and +-25%, eight variants per fake. Off by default: it teaches "rotated means fake".
    augment: bool = False
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- real inputs

@dataclass
class RealSource:
    """One real input: a CT series (several files) or one 2D image file."""

    kind: str  # "ct-series" or "image"
    files: list[Path]
    dataset: str
    patient_id: str

    @property
    def name(self) -> str:
        f = self.files[0]
        return f.parent.name if self.kind == "ct-series" else f.stem


def inventory(root: str | Path, include_nih_small: bool = True) -> list[RealSource]:
    """The real images under ``root`` (laid out like ``../shared/data``), with their patients."""
    root = Path(root)
    if not root.is_dir():
        raise MedForensicsError(root, "data folder not found")
    out: list[RealSource] = []
    for base in (root / "ct" / "lidc-idri", root / "ct" / "lidc-idri-small"):
        for case in sorted(base.glob("LIDC-IDRI-*")):
            series_dirs = sorted({p.parent for p in case.rglob("*.dcm")})
            for d in series_dirs:  # the full and the short LIDC series are one dataset (one split pool)
                out.append(RealSource("ct-series", sorted(d.glob("*.dcm")), "lidc-idri", case.name))
    dcmqi = root / "ct" / "slices" / "dcmqi-3slice"
    if dcmqi.is_dir():
        out.append(RealSource("ct-series", sorted(dcmqi.glob("*.dcm")), "dcmqi", "dcmqi-3slice"))
    covid = root / "ct" / "slices" / "tcia-covid19-ny-sbu"
    for f in sorted(covid.rglob("*.dcm")) if covid.is_dir() else []:
        out.append(RealSource("image", [f], "tcia-covid19-ny-sbu", f.relative_to(covid).parts[0]))
    mhh = root / "xray" / "mhh-covid19"
    if (mhh / "data.csv").is_file():
        with open(mhh / "data.csv", newline="") as fh:
            patients = {r["image_id"]: r["patient_id"] for r in csv.DictReader(fh)}
        for f in sorted((mhh / "images").glob("*.png")):
            out.append(RealSource("image", [f], "mhh-covid19", "mhh-" + patients.get(f.stem, f.stem)))
    nih = root / "xray" / "nih-cxr14"
    for f in sorted(nih.glob("*.png")) if nih.is_dir() else []:
        out.append(RealSource("image", [f], "nih-cxr14", "nih-" + f.stem.split("_")[0]))
    if include_nih_small and (nih / "NIH1000").is_dir():
        for f in sorted((nih / "NIH1000").rglob("*.png")):
            out.append(RealSource("image", [f], "nih-cxr14-64px", "nih-" + f.stem.split("_")[0]))
    siim = root / "xray" / "siim"
    for f in sorted(siim.glob("*.dcm")) if siim.is_dir() else []:
        out.append(RealSource("image", [f], "siim", "siim-" + f.stem[-12:]))
    if not out:
        raise MedForensicsError(root, "no real images found (expected the layout of ../shared/data)")
    return out


def assign_splits(sources: list[RealSource], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Patient -> split, per source dataset, so that each dataset is spread over the splits.

    Patients are shuffled with ``seed`` and given, largest first, to the split furthest below
    its share of that dataset's items; a dataset of three patients gives one to each split.
    """
    rng = np.random.default_rng(seed)
    by_ds: dict[str, Counter] = defaultdict(Counter)
    for s in sources:
        by_ds[s.dataset][s.patient_id] += len(s.files)
    out: dict[str, str] = {}
    for ds in sorted(by_ds):
        counts = by_ds[ds]
        patients = sorted(counts)
        rng.shuffle(patients)
        patients.sort(key=lambda p: -counts[p])  # stable: ties keep the shuffled order
        total = sum(counts.values())
        have = dict.fromkeys(SPLITS, 0)
        for i, p in enumerate(patients):
            if i < len(SPLITS) and len(patients) >= len(SPLITS):
                split = SPLITS[i]  # every split gets at least one patient of each dataset
            else:
                split = max(SPLITS, key=lambda s: fractions[SPLITS.index(s)] * total - have[s])
            out[p] = split
            have[split] += counts[p]
    return out


def write_manifest(folder: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as ``folder/manifest.csv`` (a new file) with :data:`MANIFEST_COLUMNS`, missing
    values empty; returns its path."""
    manifest = Path(folder) / "manifest.csv"
    with open(manifest, "x", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows([{c: "" for c in MANIFEST_COLUMNS} | r for r in rows])
    return manifest


def counts_by_split(rows: list[dict[str, Any]], key: str = "class") -> dict[str, dict[str, int]]:
    """Items per split and value of ``key`` (sorted), for a dataset's ``dataset.json``.

    >>> counts_by_split([{"split": "test", "class": "TM"}, {"split": "test", "class": "FM"}])
    {'train': {}, 'validation': {}, 'test': {'FM': 1, 'TM': 1}}
    """
    counts = Counter((r["split"], r[key]) for r in rows)
    return {s: {c: n for (sp, c), n in sorted(counts.items()) if sp == s} for s in SPLITS}


def check_patient_disjoint(manifest: str | Path) -> dict[str, set[str]]:
    """Patients per split of a manifest; raises ValueError naming any patient in two splits."""
    seen: dict[str, set[str]] = defaultdict(set)
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh):
            seen[row["patient_id"]].add(row["split"])
    leaks = {p: s for p, s in seen.items() if len(s) > 1}
    if leaks:
        p, s = next(iter(sorted(leaks.items())))
        raise ValueError(f"{manifest}: {len(leaks)} patient(s) in more than one split, e.g. {p} in {sorted(s)}")
    per_split: dict[str, set[str]] = defaultdict(set)
    for p, s in seen.items():
        per_split[next(iter(s))].add(p)
    return dict(per_split)


# ----------------------------------------------------------------------------- writing items

def relative_to_root(value: Any, root: str | Path | None) -> Any:
    """``value`` with every absolute path under the data root ``root`` made relative to it (POSIX
    form), in strings, lists and dicts: manifests and dataset cards hold no machine's folders.

    >>> relative_to_root({"donor": "/data/xray/a.png", "n": 3}, "/data")
    {'donor': 'xray/a.png', 'n': 3}
    """
    if root is None:
        return value
    if isinstance(value, dict):
        return {k: relative_to_root(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_to_root(v, root) for v in value]
    if isinstance(value, (str, Path)) and str(value):
        p, base = Path(value), Path(root)
        try:
            return p.relative_to(base).as_posix()
        except ValueError:
            pass
        if p.is_absolute():
            try:
                return p.resolve().relative_to(base.resolve()).as_posix()
            except (ValueError, OSError):
                pass
        return p.as_posix() if isinstance(value, Path) else value
    return value


class _Writer:
    """Writes items under ``out`` and collects manifest rows (paths of real images relative to
    the data root ``root``)."""

    def __init__(self, out: Path, root: str | Path | None = None):
        self.out = out
        self.root = None if root is None else Path(root)
        self.rows: list[dict[str, Any]] = []
        self.n = 0

    def add(self, image2d: Image, pixels: np.ndarray, mask: np.ndarray, *, split: str, cls: str, label: str,
            kind: str, method: str, src: RealSource, source_file: Path, slice_: int | None = None,
            forgery: Forgery | None = None, seed: int | None = None, augmentation: str = "",
            parent_id: str = "", params: dict | None = None) -> str:
        self.n += 1
        item_id = f"{self.n:06d}"
        folder = self.out / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        ext = ".dcm" if image2d.format == "dicom" else {"png": ".png", "jpeg": ".jpg", "tiff": ".tif"}[image2d.format]
        path = folder / f"{item_id}{ext}"
        written = write_image(image2d, pixels, path)
        mpath = write_mask(mask.astype(np.uint8), folder / f"{item_id}.mask.png")
        gt = forgery.ground_truth() if forgery is not None else {}
        params = params if params is not None else gt.get("params", {})
        moved = [c for c in written.syntax if c["output"] != c["input"]]
        if moved:  # written in another transfer syntax than the source's (io.write.output_syntax): say so
            params = {**params, "transfer_syntax": moved}
        centre, box = gt.get("center_voxel"), gt.get("bbox_voxel")
        if forgery is not None and slice_ is not None and centre is not None and len(centre) == 3:
            centre, box = centre[1:], [box[1], box[2], box[4], box[5]]  # in-plane, for this slice
        self.rows.append({
            "id": item_id, "file": str(path.relative_to(self.out)), "mask": str(mpath.relative_to(self.out)),
            "split": split, "label": label, "class": cls, "modality": image2d.modality, "kind": kind,
            "method": method, "patient_id": src.patient_id, "source_dataset": src.dataset,
            "source_file": relative_to_root(Path(source_file), self.root), "slice": "" if slice_ is None else slice_,
            "center_voxel": json.dumps(centre) if centre is not None else "",
            "bbox_voxel": json.dumps(box) if box is not None else "",
            "center_mm": json.dumps(gt.get("center_mm")) if gt.get("center_mm") else "",
            "seed": "" if seed is None else seed, "augmentation": augmentation, "parent_id": parent_id,
            "params": json.dumps(relative_to_root(params, self.root), default=str)})
        return item_id


def _augmentations(pixels: np.ndarray, mask: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The review paper's eight variants: rotations +-5, +-10 degrees; brightness +-10%, +-25%."""
    import cv2

    h, w = pixels.shape
    for angle in (-10, -5, 5, 10):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        rot = cv2.warpAffine(pixels.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        rm = cv2.warpAffine(mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
        yield f"rotate{angle:+d}", rot, rm
    lo = float(np.percentile(pixels, 1))
    for pct in (-25, -10, 10, 25):
        yield f"brightness{pct:+d}%", lo + (pixels - lo) * (1 + pct / 100.0), mask


# ----------------------------------------------------------------------------- building

def build_dataset(data_root: str | Path, out: str | Path, config: DatasetConfig = DatasetConfig(),
                  progress: Callable[[int, int, str], None] | None = None) -> Path:
    """Build the dataset into the new folder ``out``; returns the manifest's path.

    ``progress(done, total, what)`` is called after each real source.
    """
    t0 = time.perf_counter()
    out = Path(out)
    new_folder(out, create=False)
    sources = inventory(data_root, config.include_nih_small)
    splits = assign_splits(sources, config.fractions, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out, data_root)
    rng = np.random.default_rng(config.seed)
    donors: dict[str, list[RealSource]] = defaultdict(list)
    for s in sources:
        if s.kind == "image":
            donors[splits[s.patient_id]].append(s)
    synth_refs = [s for s in sources if s.kind == "image" and s.dataset != "tcia-covid19-ny-sbu"]
    total = len(sources) + (1 if config.synthetic else 0)
    problems: list[str] = []
    for i, src in enumerate(sources):
        split = splits[src.patient_id]
        try:
            with ignoring_warnings():
                if src.kind == "ct-series":
                    _ct_series(w, src, split, config, rng)
                else:
                    _image(w, src, split, config, rng, donors[split])
        except MedForensicsError as e:
            problems.append(str(e))
        if progress:
            progress(i + 1, total, src.name)
    if config.synthetic:
        _synthetic(w, synth_refs, config, rng, problems)
        if progress:
            progress(total, total, "synthetic radiographs")
    if config.augment:
        _augment(w, config)
    manifest = write_manifest(out, w.rows)
    per_split = check_patient_disjoint(manifest)
    card = {"config": config.to_dict(), "data_root": card_data_root(), "n_items": len(w.rows),
            "seconds": round(time.perf_counter() - t0, 1), "counts": counts_by_split(w.rows),
            "patients": {s: len(per_split.get(s, ())) for s in SPLITS}, "problems": problems}
    with open(out / "dataset.json", "x") as fh:
        json.dump(card, fh, indent=2)
    return manifest


def _load_image(src: RealSource) -> Image:
    f = src.files[0]
    return load_instance(f) if f.suffix.lower() == ".dcm" else load_raster(f)


def _image(w: _Writer, src: RealSource, split: str, cfg: DatasetConfig, rng: np.random.Generator,
           donors: list[RealSource]) -> None:
    from . import edits

    img = _load_image(src)
    if img.pixels.ndim != 2:
        return
    zero = np.zeros(img.pixels.shape, np.uint8)
    w.add(img, img.pixels, zero, split=split, cls="authentic", label="real", kind=_kind(img), method="none",
          src=src, source_file=src.files[0])
    for _ in range(cfg.fakes_per_image):
        kind = str(rng.choice(cfg.edit_kinds))
        seed = int(rng.integers(2**31))
        method = "classic"
        if kind == "splice":
            pool = [d for d in donors if d.patient_id != src.patient_id and d.dataset == src.dataset] or \
                   [d for d in donors if d.patient_id != src.patient_id]
            if not pool:
                kind = "copymove"
            else:
                donor_src = pool[int(rng.integers(len(pool)))]
                f = edits.forge_splice(img, _load_image(donor_src), seed=seed)
                f.params["donor"] = str(donor_src.files[0])
        if kind == "inpaint":
            method = str(rng.choice(cfg.inpaint_methods))
            f = edits.forge_inpaint(img, method=method, seed=seed)
        elif kind != "splice":
            f = getattr(edits, f"forge_{kind}")(img, seed=seed)
        w.add(img, f.pixels, f.mask, split=split, cls=kind, label="fake", kind=_kind(img), method=f.method,
              src=src, source_file=src.files[0], forgery=f, seed=seed)


def _kind(img: Image) -> str:
    return "ct-slice" if img.modality == "CT" else "radiograph"


def _ct_series(w: _Writer, src: RealSource, split: str, cfg: DatasetConfig, rng: np.random.Generator) -> None:
    from . import ct, lidc

    vol = load_series(src.files)
    n = vol.pixels.shape[0]
    nodules = lidc.nodules_for(vol) if n >= 3 else []
    malignant_slices: set[int] = set()
    for nod in nodules:
        if nod.malignant:
            malignant_slices.update(range(nod.bbox_voxel[0], nod.bbox_voxel[3]))
    zero = np.zeros(vol.pixels.shape[1:], np.uint8)
    for k in range(n):  # every real slice: TM through a malignant nodule, TB otherwise
        inst = load_instance(vol.sources[k])
        w.add(inst, inst.pixels, zero, split=split, cls="TM" if k in malignant_slices else "TB", label="real",
              kind="ct-slice", method="none", src=src, source_file=vol.sources[k], slice_=k)
    if n < 8:
        return  # too few slices for a nodule cube
    methods = list(cfg.ct_methods)
    n_inject = max(cfg.min_injections, int(round(cfg.injections_per_100_slices * n / 100)))
    for j in range(n_inject):
        seed = int(rng.integers(2**31))
        method = methods[j % len(methods)]
        diameter = float(rng.uniform(4.0, 20.0))
        ntype = str(rng.choice(["solid", "solid", "part-solid", "ground-glass"]))
        try:
            f = ct.inject(vol, diameter_mm=diameter, nodule_type=ntype, method=method, seed=seed)
        except MedForensicsError:
            continue  # no room for a nodule of this size in a short series
        _ct_items(w, vol, f, "FM", split, src, cfg, seed)
    big = [nod for nod in nodules if nod.diameter_mm >= cfg.min_nodule_mm]
    for nod in big:
        for j in range(cfg.removals_per_nodule):
            seed = int(rng.integers(2**31))
            try:
                f = ct.remove(vol, nodule=nod, method=methods[j % len(methods)], seed=seed)
            except MedForensicsError:
                continue
            _ct_items(w, vol, f, "FB", split, src, cfg, seed)


def _ct_items(w: _Writer, vol: Image, f: Forgery, cls: str, split: str, src: RealSource, cfg: DatasetConfig,
              seed: int) -> None:
    k0 = int(f.center_voxel[0])
    ks = [k for k in range(k0 - cfg.slices_either_side, k0 + cfg.slices_either_side + 1)
          if 0 <= k < vol.pixels.shape[0] and f.mask[k].any()]
    for k in ks:
        inst = load_instance(vol.sources[k])
        w.add(inst, f.pixels[k], f.mask[k], split=split, cls=cls, label="fake", kind="ct-slice", method=f.method,
              src=src, source_file=vol.sources[k], slice_=k, forgery=f, seed=seed)


def _synthetic(w: _Writer, refs: list[RealSource], cfg: DatasetConfig, rng: np.random.Generator,
               problems: list[str]) -> None:
    """Whole synthetic radiographs, each written like a real reference image (size, format, depth)."""
    from . import synth

    if not refs:
        return
    try:
        model = synth.load_model()
    except MedForensicsError as e:
        problems.append(str(e))
        return
    for i in range(cfg.synthetic):
        ref_src = refs[int(rng.integers(len(refs)))]
        ref = _load_image(ref_src)
        seed = int(rng.integers(2**31))
        pixels = synth.synthesize_like(ref_src.files[0], seed=seed, model=model)
        split = SPLITS[int(rng.choice(3, p=np.asarray(cfg.fractions) / sum(cfg.fractions)))]
        fake_src = RealSource("image", ref_src.files, "synthetic", f"synthetic-{i:05d}")
        w.add(ref, pixels, np.ones(pixels.shape, np.uint8), split=split, cls="synthetic", label="fake",
              kind="radiograph", method="synth", src=fake_src, source_file=ref_src.files[0], seed=seed,
              params={"reference": str(ref_src.files[0]), "model": "synth_xray"})


def _augment(w: _Writer, cfg: DatasetConfig) -> None:
    """Eight augmented variants of every forged item, in its split, marked with their parent."""
    fakes = [r for r in w.rows if r["label"] == "fake" and not r["augmentation"]]
    for r in fakes:
        path = w.out / r["file"]
        img = load_instance(path) if path.suffix == ".dcm" else load_raster(path)
        import cv2
        mask = (cv2.imread(str(w.out / r["mask"]), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
        src = RealSource("image", [path], r["source_dataset"], r["patient_id"])
        for tag, px, m in _augmentations(img.pixels, mask):
            w.add(img, px, m, split=r["split"], cls=r["class"], label="fake", kind=r["kind"], method=r["method"],
                  src=src, source_file=Path(r["source_file"]), slice_=r["slice"] if r["slice"] != "" else None,
                  augmentation=tag, parent_id=r["id"], params=json.loads(r["params"]))


