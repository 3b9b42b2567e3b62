"""The quiz (training mode) of the review service: real or fake, and where?

A clinician is shown a mixed set of images, half of them authentic and half of them forged with
:mod:`medforensics.forge.edits` (:data:`KINDS`: copy-move, splice, in-painting, a region's
contrast rescaled), answers *real* or *fake*, clicks where, and then sees the truth with the
detectors' overlays. Scores per person and per kind are compared with :data:`STUDY_ACCURACY`.

**The answer must not be guessable from anything but the pixels.** Every quiz image, authentic
or fake, comes out of one pipeline: a seeded random square crop of a real sample image that
installs with pydicom and pydicom-data (:data:`SOURCES`: two radiographs, two CT and two MR
slices), resized to 512 x 512 (``cv2.INTER_AREA`` when shrinking, ``cv2.INTER_CUBIC`` when
enlarging, the one rule for every image), stored as uint16 MONOCHROME2 (CT as HU + 1024,
radiographs and MR scaled by one factor per source) in explicit VR little endian under one
header template: fresh UIDs of one fixed length, the modality of the source, no dates, device,
software or derivation words. Files of one modality
have the same size and the same header values except their UIDs; file names are numbers in the
shuffled order. Each source is used about as often for authentic images as for fakes.

**The edit comes after the common resize**, on the 512 x 512 values, before the one rounding to
stored integers that every image gets: so the resampling traces of the resize are the same for
authentic and fake images (both were resized identically, from images that were never edited),
the edit keeps its own traces at the scale it is seen and judged at (a forger who edits the
image as delivered), and the truth box is the edit's mask measured in the quiz image's own
pixels, with nothing changed outside it. Edits are placed at seeded random places inside the
body: where :func:`medforensics.forge.edits.placement_mask` allows, away from the dark
background; a copy-move copies the most structured of a few such boxes, a splice takes the
plainest of a few boxes of the donor (the other source of the same modality). The in-painting
is the plain biharmonic fill and the rescaled contrast a marked cut (to 20-35 %), so that the
detectors have something to show on the reveal page.

Sources: the radiologists' 75 % is from the reader study of GPT-4o generated radiographs
(Radiology, 2026): radiologists told real radiographs from generated ones 75 % of the time.
"""
from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import cv2
import numpy as np
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, ComputedRadiographyImageStorage, CTImageStorage,
                         ExplicitVRLittleEndian, MRImageStorage)

from ..core import MedForensicsError
from ..forge.edits import copy_move, inpaint_region, placement_mask, rescale_region, splice

__all__ = ["STUDY_ACCURACY", "AUTHENTIC", "KINDS", "KIND_NAMES", "SOURCES", "SIZE", "QuizSpec", "Score",
           "make_quiz_images", "quiz_round", "summarise"]

#: The benchmark: radiologists told GPT-4o generated radiographs from real ones 75 % of the time
#: (reader study, Radiology 2026).
STUDY_ACCURACY = 0.75

#: The kind of an untouched quiz image.
AUTHENTIC = "authentic"

#: The forgery kinds, each made with one function of :mod:`medforensics.forge.edits`.
KINDS = ("copymove", "splice", "inpaint", "rescale")

#: What each kind is, in words (for the reveal page).
KIND_NAMES = {
    AUTHENTIC: "authentic: the image as acquired (cropped and resized like every quiz image)",
    "copymove": "copy-move: a region of the same image copied elsewhere, turned, scaled and blended in",
    "splice": "splice: a region of another patient's image pasted in, its brightness and contrast matched",
    "inpaint": "in-painting: the content of a region removed and filled in from its surroundings",
    "rescale": "rescaled region: the contrast of a region cut about its mean (a finding played down)",
}

#: Source images (pydicom test files shipped by pydicom and pydicom-data) and their modality.
#: Each modality has two, so that a splice always has a donor of the same modality.
SOURCES = {
    "RG1_UNCR.dcm": "CR",                       # chest radiograph (Philips)
    "RG3_UNCR.dcm": "CR",                       # lower leg radiograph (Fuji)
    "693_UNCR.dcm": "CT",                       # head CT
    "CT_small.dcm": "CT",                       # thoracic spine CT (128 px)
    "MR2_UNCR.dcm": "MR",                       # shoulder MR
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "MR",  # abdominal MR
}

#: Side of every quiz image (pixels).
SIZE = 512
#: Side of the random square crop, as a fraction of the source's shorter side.
CROP_RANGE = (0.75, 1.0)
#: Width of an edit, as a fraction of the quiz image's width, per kind. A copy-move is larger:
#: at 512 px a turned copy under ~100 px holds too few SIFT keypoints for ``copy_move`` to find.
EDIT_RANGE = {"copymove": (0.16, 0.24), "splice": (0.10, 0.20), "inpaint": (0.10, 0.20), "rescale": (0.10, 0.20)}
#: Share of the value range (1st-99th percentile) at the dark end that counts as background.
DARK = 0.15
#: CT is stored as HU + 1024 (RescaleIntercept -1024).
CT_OFFSET = 1024.0
#: Radiographs and MR are stored scaled so that the source's brightest value is this: shrinking
#: a radiograph 3-fold leaves noise of a fraction of its own grey level, which rounding to the
#: source's units would erase (and with it the noise traces of an edit).
TOP = 60000.0

_SOP_CLASS = {"CR": ComputedRadiographyImageStorage, "CT": CTImageStorage, "MR": MRImageStorage}


@dataclass(frozen=True)
class QuizSpec:
    """One written quiz image: its file, its kind (:data:`AUTHENTIC` or one of :data:`KINDS`),
    the truth box ``(row0, col0, row1, col1)`` (exclusive stops, 512 x 512 pixels; ``None`` for
    an authentic image) and the source file it was cut from."""

    path: Path
    kind: str
    truth_box: tuple[int, int, int, int] | None
    source: str


class Score(Protocol):
    """A row of ``Store.scores()``: one user's answers on one kind."""

    user: str
    kind: str
    n: int
    correct: int
    hits: int


@dataclass(frozen=True)
class _Plan:
    """What one quiz image will be: its place in the set, kind, source and own seed."""

    index: int
    kind: str
    source: str
    seed: int


@dataclass(frozen=True)
class _Pixels:
    """A quiz image's stored values before and after its edit (the same array when authentic)."""

    before: np.ndarray
    after: np.ndarray
    mask: np.ndarray | None
    modality: str


# -------------------------------------------------------------------------------------- planning

def _plans(per_kind: int, seed: int) -> list[_Plan]:
    """The quiz set for ``seed``: ``per_kind`` fakes of each kind and as many authentic images,
    shuffled; sources dealt from one shuffled cycle to the fakes and another to the authentic
    images, so that a source says nothing about the answer."""
    if isinstance(per_kind, bool) or not isinstance(per_kind, int) or per_kind < 1:
        raise MedForensicsError("quiz", f"per_kind must be a whole number of at least 1, got {per_kind!r}")
    rng = np.random.default_rng([int(seed), 0x9012])
    names = list(SOURCES)
    fakes = [k for k in KINDS for _ in range(per_kind)]
    n = len(fakes)
    cycle = [names[i] for i in rng.permutation(len(names))]
    fake_sources = [cycle[i % len(cycle)] for i in range(n)]
    cycle = [names[i] for i in rng.permutation(len(names))]
    real_sources = [cycle[i % len(cycle)] for i in range(n)]
    items = list(zip(fakes, fake_sources)) + [(AUTHENTIC, s) for s in real_sources]
    order = rng.permutation(len(items))
    seeds = rng.integers(0, 2**63, size=len(items))
    return [_Plan(i, items[j][0], items[j][1], int(seeds[i])) for i, j in enumerate(order)]


# ---------------------------------------------------------------------------------------- pixels

def _source_path(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    if path is None:
        raise MedForensicsError(name, "quiz source image not found: install pydicom-data (pip install pydicom-data)")
    return Path(path)


def _load_source(name: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    """A source's pixels (cached per call): HU for CT; radiographs (MONOCHROME1 inverted) and MR
    scaled by one factor per source so that its brightest value is :data:`TOP`."""
    if name not in cache:
        from ..io import load

        pixels = load(_source_path(name))[0].pixels
        pixels = np.asarray(pixels if pixels.ndim == 2 else pixels[pixels.shape[0] // 2], np.float32)
        if SOURCES[name] != "CT":
            pixels = pixels * np.float32(TOP / max(float(pixels.max()), 1e-6))
        cache[name] = pixels
    return cache[name]


def _crop_resize(rng: np.random.Generator, arr: np.ndarray) -> np.ndarray:
    """A random square crop of ``arr`` resized to SIZE x SIZE (float32): the common pipeline."""
    H, W = arr.shape
    side = max(8, int(round(min(H, W) * rng.uniform(*CROP_RANGE))))
    r = int(rng.integers(0, H - side + 1))
    c = int(rng.integers(0, W - side + 1))
    crop = np.ascontiguousarray(arr[r:r + side, c:c + side], np.float32)
    interp = cv2.INTER_AREA if side >= SIZE else cv2.INTER_CUBIC
    out = cv2.resize(crop, (SIZE, SIZE), interpolation=interp)
    lo, hi = float(crop.min()), float(crop.max())
    return np.clip(out, lo, hi).astype(np.float32)   # cubic overshoot stays in the crop's range


def _to_stored(arr: np.ndarray, modality: str) -> np.ndarray:
    offset = CT_OFFSET if modality == "CT" else 0.0
    return np.clip(np.round(arr + offset), 0, 65535).astype(np.uint16)


def _body(arr: np.ndarray, modality: str) -> np.ndarray:
    """Where an edit may go: the forge's placement mask, without the dark background (the
    darkest :data:`DARK` of the image's 1st-99th percentile range). Not "above the median":
    that leaves out the lungs of a chest radiograph, and the whole leg of pydicom's RG3 (its
    collimator shadow is brighter than the leg and covers a third of the image)."""
    lo, hi = np.percentile(arr, [1, 99])
    smooth = cv2.blur(arr, (9, 9))
    return placement_mask(arr, modality) & (smooth > lo + DARK * (hi - lo))


def _corner(rng: np.random.Generator, cand: np.ndarray, h: int, w: int,
            avoid: tuple[int, int, int, int] | None = None) -> tuple[int, int]:
    """A random top-left corner for an ``h x w`` box that lies in ``cand`` (the fit relaxed step
    by step where nothing fits) and does not touch ``avoid``."""
    H, W = cand.shape
    ii = cv2.integral(cand.astype(np.uint8), sdepth=cv2.CV_32S).astype(np.int64)
    inside = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
    for frac in (0.98, 0.9, 0.75, 0.5, 0.0):
        ok = inside >= frac * h * w
        if avoid is not None:
            ar0, ac0, ar1, ac1 = avoid
            ok[max(0, ar0 - h - 1):ar1 + 2, max(0, ac0 - w - 1):ac1 + 2] = False
        idx = np.flatnonzero(ok)
        if idx.size:
            r, c = np.unravel_index(int(idx[rng.integers(idx.size)]), ok.shape)
            return int(r), int(c)
    raise MedForensicsError("quiz", f"no room for a {h}x{w} edit in a {H}x{W} image")


def _structured_corner(rng: np.random.Generator, arr: np.ndarray, cand: np.ndarray, h: int, w: int, *,
                       most: bool, tries: int = 8) -> tuple[int, int]:
    """Of ``tries`` random corners in the body, the one whose box holds the ``most`` (or least)
    structure: a forger copies something worth copying (a vessel, a rib, a lesion), and splices
    in plain tissue from another patient rather than a bone edge that fits nowhere."""
    grad = np.abs(cv2.Laplacian(cv2.GaussianBlur(arr, (0, 0), 1.5), cv2.CV_32F))
    corners = [_corner(rng, cand, h, w) for _ in range(tries)]
    energy = [float(grad[r:r + h, c:c + w].mean()) for r, c in corners]
    return corners[int(np.argmax(energy) if most else np.argmin(energy))]


def _edit_size(rng: np.random.Generator, kind: str) -> tuple[int, int]:
    w = int(round(rng.uniform(*EDIT_RANGE[kind]) * SIZE))
    return int(round(w * rng.uniform(0.8, 1.25))), w


def _edit(kind: str, rng: np.random.Generator, arr: np.ndarray, modality: str,
          donor: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Apply forgery ``kind`` to ``arr`` at a random place in the body: ``(edited, mask)``."""
    if kind not in KINDS:
        raise MedForensicsError("quiz", f"unknown forgery kind {kind!r}; one of {', '.join(KINDS)}")
    cand = _body(arr, modality)
    h, w = _edit_size(rng, kind)
    if kind == "copymove":
        angle = float(rng.uniform(3, 15) * rng.choice([-1, 1]))
        scale = float(rng.uniform(0.92, 1.1))
        feather = int(rng.integers(2, 7))
        r, c = _structured_corner(rng, arr, cand, h, w, most=True)
        th, tw = max(2, int(round(h * scale))), max(2, int(round(w * scale)))   # as copy_move sizes it
        to = _corner(rng, cand, th, tw, avoid=(r, c, r + h, c + w))
        return copy_move(arr, (r, c, r + h, c + w), to, angle=angle, scale=scale, feather=feather)
    if kind == "splice":
        other = donor()
        r, c = _structured_corner(rng, other, _body(other, modality), h, w, most=False)
        to = _corner(rng, cand, h, w)
        return splice(arr, other, (r, c, r + h, c + w), to, match_mean=True, match_std=True,
                      feather=int(rng.integers(2, 7)))
    if kind == "inpaint":
        r, c = _corner(rng, cand, h, w)
        return inpaint_region(arr, (r, c, r + h, c + w), method="classic", noise=False, seed=rng)
    # rescale: contrast cut to 20-35 % (a finding played down); noise_residual finds a region's
    # noise cut below about a third, not a milder cut, nor a raise (bone texture raises it too)
    factor = float(rng.uniform(0.2, 0.35))
    r, c = _corner(rng, cand, h, w)
    return rescale_region(arr, (r, c, r + h, c + w), factor)


def _pixels(plan: _Plan, cache: dict[str, np.ndarray] | None = None) -> _Pixels:
    """The stored values of one planned quiz image, before and after its edit."""
    cache = {} if cache is None else cache
    modality = SOURCES[plan.source]
    rng = np.random.default_rng(plan.seed)
    arr = _crop_resize(rng, _load_source(plan.source, cache))
    before = _to_stored(arr, modality)
    if plan.kind == AUTHENTIC:
        return _Pixels(before, before, None, modality)

    def donor() -> np.ndarray:
        other = next(s for s, m in SOURCES.items() if m == modality and s != plan.source)
        return _crop_resize(rng, _load_source(other, cache))

    edited, mask = _edit(plan.kind, rng, arr, modality, donor)
    return _Pixels(before, _to_stored(edited, modality), mask.astype(bool), modality)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


# ---------------------------------------------------------------------------------------- header

def _uid() -> str:
    """A fresh UUID-derived UID (2.25.<uuid as an integer>) of one fixed length (44 characters),
    so that no file is a byte longer than another."""
    while True:
        value = uuid.uuid4().int
        if value >= 10**38:
            return f"2.25.{value}"


def _dataset(stored: np.ndarray, modality: str) -> Dataset:
    """The one header template of every quiz image: only the UIDs and the pixels differ between
    images of one modality."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    meta.MediaStorageSOPInstanceUID = _uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "Quiz^Anonymous"
    ds.PatientID = "QUIZ"
    ds.StudyInstanceUID = _uid()
    ds.SeriesInstanceUID = _uid()
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -CT_OFFSET if modality == "CT" else 0
    ds.RescaleSlope = 1
    ds.RescaleType = "HU" if modality == "CT" else "US"
    ds.PixelData = np.ascontiguousarray(stored, "<u2").tobytes()
    return ds


# ------------------------------------------------------------------------------------ public API

def make_quiz_images(out_dir: Path, *, per_kind: int = 2, seed: int = 0,
                     progress: Callable[[int, int], Any] | None = None) -> list[QuizSpec]:
    """Write a quiz set into the new folder ``out_dir``: ``per_kind`` fakes of every kind in
    :data:`KINDS` and as many authentic images, as ``q001.dcm``, ``q002.dcm``, ... in a shuffled
    order. The pixels, kinds, boxes and order depend only on ``seed``; the UIDs are fresh.
    ``progress(done, total)`` is called after each file. Refuses an existing non-empty folder."""
    from ..io.plan import new_folder

    plans = _plans(per_kind, seed)
    try:
        out = new_folder(Path(out_dir))
    except FileExistsError as e:
        raise MedForensicsError(out_dir, "quiz folder exists and is not empty; choose a new one") from e
    cache: dict[str, np.ndarray] = {}
    specs = []
    for done, plan in enumerate(plans, 1):
        px = _pixels(plan, cache)
        path = out / f"q{plan.index + 1:03d}.dcm"
        _dataset(px.after, px.modality).save_as(path, enforce_file_format=True)
        specs.append(QuizSpec(path, plan.kind, None if px.mask is None else _box(px.mask), plan.source))
        if progress is not None:
            progress(done, len(plans))
    return specs


def _seed_int(seed: int | str) -> int:
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed) & (2**64 - 1)
    return int.from_bytes(hashlib.sha256(str(seed).encode()).digest()[:8], "big")


def quiz_round(images: Sequence[Any], answered: Iterable[int], *, seed: int | str) -> list[int]:
    """The ids of ``images`` (anything with an ``id``) in the order to show them: those not yet
    ``answered`` first, then the answered ones, each group shuffled with ``seed`` (a number, or
    text such as the user's name): the same user gets the same order.

    >>> class Q:
    ...     def __init__(self, id): self.id = id
    >>> order = quiz_round([Q(i) for i in range(1, 7)], {2, 5}, seed="alice")
    >>> sorted(order[:4]), sorted(order[4:])
    ([1, 3, 4, 6], [2, 5])
    """
    done = set(answered)
    ids = sorted({int(im.id) for im in images})
    rng = np.random.default_rng(_seed_int(seed))
    groups = [[i for i in ids if i not in done], [i for i in ids if i in done]]
    return [g[j] for g in groups for j in rng.permutation(len(g))]


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _tally(rows: Iterable[Score]) -> dict[str, Any]:
    """Accuracy over ``rows``, overall and on fakes (sensitivity) and authentic images (specificity)."""
    n = correct = fake_n = fake_correct = real_n = real_correct = hits = 0
    for s in rows:
        n += s.n
        correct += s.correct
        if s.kind == AUTHENTIC:
            real_n += s.n
            real_correct += s.correct
        else:
            fake_n += s.n
            fake_correct += s.correct
            hits += s.hits
    return {"n": n, "correct": correct, "accuracy": _rate(correct, n),
            "sensitivity": _rate(fake_correct, fake_n), "specificity": _rate(real_correct, real_n),
            "hits": hits, "localised": _rate(hits, fake_n)}


def summarise(scores: Iterable[Score]) -> dict[str, Any]:
    """Accuracy per user and kind, per user, per kind and for the whole department, from rows
    with ``user, kind, n, correct, hits`` (``Store.scores()``).

    Every tally holds ``n``, ``correct``, ``accuracy`` (``None`` without answers),
    ``sensitivity`` (share of fakes called fake), ``specificity`` (share of authentic images
    called real), ``hits`` (clicks inside the truth box) and ``localised`` (the share of fakes
    whose edit was clicked on). The department's tally adds ``benchmark`` (:data:`STUDY_ACCURACY`),
    ``difference`` (accuracy minus benchmark) and ``users`` (how many answered).

    >>> from types import SimpleNamespace as S
    >>> s = summarise([S(user="ann", kind="authentic", n=4, correct=3, hits=0),
    ...                S(user="ann", kind="splice", n=4, correct=4, hits=2)])
    >>> s["department"]["accuracy"], s["department"]["difference"], s["users"]["ann"]["specificity"]
    (0.875, 0.125, 0.75)
    """
    rows = [s for s in scores if s.n]
    by_user: dict[str, list[Score]] = defaultdict(list)
    by_kind: dict[str, list[Score]] = defaultdict(list)
    for s in rows:
        by_user[s.user].append(s)
        by_kind[s.kind].append(s)
    users = {}
    for user in sorted(by_user):
        entry = _tally(by_user[user])
        kinds: dict[str, list[Score]] = defaultdict(list)
        for s in by_user[user]:
            kinds[s.kind].append(s)
        entry["kinds"] = {k: _tally(v) for k, v in sorted(kinds.items())}
        users[user] = entry
    department = _tally(rows)
    accuracy = department["accuracy"]
    department.update(benchmark=STUDY_ACCURACY, users=len(users),
                      difference=None if accuracy is None else accuracy - STUDY_ACCURACY)
    return {"benchmark": STUDY_ACCURACY, "department": department, "users": users,
            "kinds": {k: _tally(v) for k, v in sorted(by_kind.items())}}
