"""CT physics detector: real CT scores low; edits that break the noise are found where they were made.

Manipulated copies are made in memory; nothing under the shared data folder is modified.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage

from medforensics.core import Image
from medforensics.detectors import available_detectors
from medforensics.detectors.ct_physics import CTPhysicsDetector
from medforensics.io import load

DET = CTPhysicsDetector()


# --------------------------------------------------------------------------- helpers

def _overlaps(bbox: tuple[int, ...], box: tuple[int, int, int, int], k: int | None = None) -> bool:
    """Whether a region box (2D ``[r0, c0, r1, c1]`` or 3D ``[z0, r0, c0, z1, r1, c1]``) meets an
    in-plane box ``(r0, c0, r1, c1)`` (on slice ``k`` for a 3D region)."""
    if len(bbox) == 6:
        if k is not None and not bbox[0] <= k < bbox[3]:
            return False
        bbox = (bbox[1], bbox[2], bbox[4], bbox[5])
    r0, c0, r1, c1 = bbox
    return not (r1 <= box[0] or box[2] <= r0 or c1 <= box[1] or box[3] <= c0)


def _found(ev, box, k=None) -> bool:
    """Scored as manipulated (> 0.8) with the strongest region on the edit."""
    return ev.score > 0.8 and bool(ev.regions) and _overlaps(ev.regions[0].bbox_voxel, box, k)


def _positions(s: np.ndarray, cls: str, size: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """``n`` random boxes of ``size`` px lying (95%) in lung or soft tissue inside the patient."""
    sm = cv2.blur(s, (9, 9))
    lab, _ = ndimage.label(sm > -500)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = ndimage.binary_erosion(ndimage.binary_fill_holes(lab == np.argmax(sizes)), iterations=10)
    lo, hi = {"lung": (-950, -600), "soft": (-150, 100)}[cls]
    share = cv2.blur(((sm > lo) & (sm < hi) & body).astype(np.float32), (size, size))
    ok = share > 0.95
    ok[:size], ok[-size:], ok[:, :size], ok[:, -size:] = False, False, False, False
    ys, xs = np.nonzero(ok)
    assert ys.size, f"no place for a {size} px patch in {cls}"
    idx = rng.choice(ys.size, size=n, replace=False)
    tops = [(int(ys[i]) - size // 2, int(xs[i]) - size // 2) for i in idx]
    return [(y, x, y + size, x + size) for y, x in tops]


def _blur(s, box):
    g = cv2.GaussianBlur(s, (0, 0), 3)
    out = s.copy()
    out[box[0]:box[2], box[1]:box[3]] = g[box[0]:box[2], box[1]:box[3]]
    return out


def _inpaint(s, box):
    mask = np.zeros(s.shape, np.uint8)
    mask[box[0]:box[2], box[1]:box[3]] = 1
    return cv2.inpaint(np.ascontiguousarray(s, np.float32), mask, 5, cv2.INPAINT_TELEA)


def _nodule(s, box, spacing_mm):
    """A smooth 10 mm sphere of +60 HU painted into lung without noise."""
    cy, cx = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    r = 5.0 / spacing_mm
    yy, xx = np.mgrid[: s.shape[0], : s.shape[1]]
    w = np.clip((r - np.hypot(yy - cy, xx - cx)) / 1.5 + 0.5, 0, 1).astype(np.float32)
    bg = float(s[box[0]:box[2], box[1]:box[3]].mean())
    return (1 - w) * s + w * (bg + 60.0)


def _paste_noisier(s, box, donor, donor_box, sigma, rng):
    """A patch of another slice, with extra noise (a noisier scan), its mean matched to the host."""
    p = donor[donor_box[0]:donor_box[2], donor_box[1]:donor_box[3]]
    p = p + rng.normal(0, sigma, p.shape).astype(np.float32)
    out = s.copy()
    out[box[0]:box[2], box[1]:box[3]] = p - p.mean() + s[box[0]:box[2], box[1]:box[3]].mean()
    return out


# --------------------------------------------------------------------------- without shared data

@pytest.fixture(scope="module")
def ct_small() -> Image:
    return load(get_testdata_file("CT_small.dcm"))[0]


def test_registered_and_applies(ct_small):
    assert available_detectors()["ct_physics"] is CTPhysicsDetector
    assert DET.applies(ct_small)
    assert DET.applies(Image.from_array(np.zeros((4, 64, 64)), modality="CT", spacing=(2.5, 0.7, 0.7)))
    assert not DET.applies(dataclasses.replace(ct_small, modality="MR"))


def test_ct_small_is_consistent(ct_small):
    ev = DET.detect(ct_small)
    assert ev.score < 0.5, ev.explanation
    assert ev.heatmap is not None and ev.full_heatmap(ct_small.pixels.shape).shape == ct_small.pixels.shape
    b = ev.details["block_px"]   # the heatmap is the block grid (Evidence.heatmap_scale), covering the image
    assert ev.heatmap_scale == (b,) * ct_small.pixels.ndim and ev.heatmap.shape == tuple(-(-n // f) for n, f in
                                                                        zip(ct_small.pixels.shape, ev.heatmap_scale))
    assert 0.0 <= ev.heatmap.min() and ev.heatmap.max() <= 1.0
    d = ev.details
    assert d["measured_blocks"] > 100
    assert 2.0 < d["highpass_noise_sigma_hu"]["soft tissue"] < 30.0
    assert d["inconsistent_blocks"] == 0
    assert "consistent" in ev.explanation


@pytest.mark.parametrize("edit", ["blur", "inpaint", "noise"])
@pytest.mark.parametrize("corner", [(84, 20), (100, 90), (96, 40)])
def test_ct_small_edit_is_found_where_made(ct_small, edit, corner):
    y, x = corner
    box = (y, x, y + 20, x + 20)
    s = ct_small.pixels
    if edit == "blur":
        p = _blur(s, box)
    elif edit == "inpaint":
        p = _inpaint(s, box)
    else:
        p = s.copy()
        p[y:y + 20, x:x + 20] += np.random.default_rng(0).normal(0, 15, (20, 20)).astype(np.float32)
    ev = DET.detect(dataclasses.replace(ct_small, pixels=p))
    assert _found(ev, box), (ev.score, [r.bbox_voxel for r in ev.regions], ev.explanation)
    assert ("less noise" in ev.explanation) == (edit != "noise")


@pytest.mark.parametrize("pad_value", [-3024.0, 0.0])
def test_padding_outside_the_field_of_view_is_ignored(ct_small, pad_value):
    p = ct_small.pixels.copy()
    yy, xx = np.mgrid[:128, :128]
    p[np.hypot(yy - 64, xx - 64) > 62] = pad_value
    ev = DET.detect(dataclasses.replace(ct_small, pixels=p))
    assert ev.score < 0.5, ev.explanation
    assert pad_value in ev.details["padding_values"]


def test_small_image_abstains():
    ev = DET.detect(Image.from_array(np.zeros((20, 20)), modality="CT", spacing=(1, 1)))
    assert ev.score == 0.0 and ev.details["abstained"]


# --------------------------------------------------------------------------- real data

@pytest.fixture(scope="module")
def lidc(lidc_series_dir: Path) -> Image:
    (im,) = load(lidc_series_dir)
    assert im.pixels.shape == (133, 512, 512)
    return im


def _slice(lidc: Image, k: int, pixels: np.ndarray | None = None) -> Image:
    return Image.from_array(lidc.pixels[k] if pixels is None else pixels, modality="CT", spacing=lidc.spacing[1:],
                            format="dicom")


def test_real_ct_in_shared_data_scores_low(shared_data):
    images = [im for im in load(shared_data / "ct") if im.modality == "CT"]
    images += load(get_testdata_file("CT_small.dcm"))
    assert len(images) >= 60
    scores = {str(im.path): DET.detect(im).score for im in images}
    low = [s < 0.5 for s in scores.values()]
    assert np.mean(low) >= 0.97, sorted(scores.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.parametrize("edit,cls,size,need", [
    ("blur", "soft", 30, 6), ("blur", "lung", 30, 6),
    ("inpaint", "soft", 30, 6), ("inpaint", "lung", 30, 6),
    ("nodule", "lung", 24, 5),
])
def test_lidc_slice_noise_free_edits_are_found(lidc, edit, cls, size, need):
    """Six random places on six slices; ``need`` of them found, strongest region on the edit."""
    rng = np.random.default_rng(7)
    hits = []
    for k in (40, 55, 65, 75, 85, 95):
        s = lidc.pixels[k]
        (box,) = _positions(s, cls, size, 1, rng)
        p = {"blur": lambda: _blur(s, box), "inpaint": lambda: _inpaint(s, box),
             "nodule": lambda: _nodule(s, box, lidc.spacing[1])}[edit]()
        ev = DET.detect(_slice(lidc, k, p))
        hits.append(_found(ev, box))
    assert sum(hits) >= need, hits


def test_lidc_patch_from_a_noisier_scan_is_found(lidc):
    """40x40 patches from another slice with 25 HU of extra noise, mean matched (a splice)."""
    rng = np.random.default_rng(3)
    hits = []
    for k in (40, 55, 65, 75, 85, 95):
        (box,) = _positions(lidc.pixels[k], "lung", 40, 1, rng)
        (dbox,) = _positions(lidc.pixels[k + 20], "lung", 40, 1, rng)
        p = _paste_noisier(lidc.pixels[k], box, lidc.pixels[k + 20], dbox, 25.0, rng)
        hits.append(_found(DET.detect(_slice(lidc, k, p)), box))
    assert sum(hits) >= 4, hits


def test_lidc_series_is_consistent(lidc):
    ev = DET.detect(lidc)
    assert ev.score < 0.5, ev.explanation
    assert ev.full_heatmap(lidc.pixels.shape).shape == lidc.pixels.shape
    assert ev.heatmap.nbytes * 64 <= lidc.pixels.nbytes   # a coarse grid, not a full-size float32 volume
    assert ev.details["highpass_noise_sigma_per_slice"]["median"] > 0
    assert ev.details["odd_slices"] == []


def test_series_slice_with_other_noise_is_found(lidc):
    k = 70
    vol = lidc.pixels.copy()
    vol[k] += np.random.default_rng(1).normal(0, 15, vol[k].shape).astype(np.float32)
    ev = DET.detect(dataclasses.replace(lidc, pixels=vol))
    assert ev.score > 0.8, ev.explanation
    assert ev.regions and ev.regions[0].bbox_voxel[0] == k
    assert ev.regions[0].center_mm is not None


def test_series_inpainted_region_is_found_on_its_slice(lidc):
    k = 80
    (box,) = _positions(lidc.pixels[k], "soft", 30, 1, np.random.default_rng(5))
    vol = lidc.pixels.copy()
    vol[k] = _inpaint(vol[k], box)
    ev = DET.detect(dataclasses.replace(lidc, pixels=vol))
    assert _found(ev, box, k), (ev.score, [r.bbox_voxel for r in ev.regions])
    assert "less noise" in ev.explanation


def test_global_hu_offset_is_flagged(lidc):
    s = lidc.pixels[60].copy()
    s[s > -2000] += 150.0          # the padding stays where it was
    ev = DET.detect(_slice(lidc, 60, s))
    assert ev.score > 0.8 and "Air" in ev.explanation, (ev.score, ev.details["hu_checks"])


# --------------------------------------------------------------------------- outside sources, lone blocks

def test_a_lone_block_needs_a_neighbour_to_count():
    from medforensics.detectors.ct_physics import supported
    e = np.zeros((3, 10, 10), np.float32)
    e[1, 5, 5] = 9.0                                   # one block alone: a seam, a bubble, a calcification
    assert supported(e).max() == 0.0
    e[1, 5, 6] = 8.0                                   # two neighbours in the slice: an edit covers several
    assert supported(e).max() == 8.0
    e[1, 5, 6] = 0.0
    e[2, 5, 5] = 7.5                                   # or the same place on the next slice
    assert supported(e).max() == 7.5
    e2 = np.zeros((1, 6, 6), np.float32)
    e2[0, 2, 2] = 9.0
    assert supported(e2).max() == 0.0                  # a single slice: in-plane neighbours only


def _slice_stats(nz=12, shift_groups=(), k=6, shift=1.0):
    """Block maps of a synthetic series: soft tissue in the middle, air around it, noise level L with
    a small natural spread; on slice ``k`` the named groups get ``shift`` more log noise."""
    from medforensics.detectors import ct_physics as cp
    rng = np.random.default_rng(0)
    L = rng.normal(2.0, 0.05, (nz, 16, 16)).astype(np.float32)
    T = rng.normal(-1.0, 0.05, (nz, 16, 16)).astype(np.float32)
    classes = np.full(L.shape, -1, np.int8)
    classes[:, 4:12, 4:12] = 2
    air = np.zeros(L.shape, bool)
    air[:, :3, :] = True
    if "soft tissue" in shift_groups:
        L[k][classes[k] == 2] += shift
    if "air" in shift_groups:
        L[k][air[k]] += shift
    zs, _ = cp.slice_consistency({"L": L, "T": T, "classes": classes, "air": air})
    return zs


def test_a_slice_is_odd_only_where_two_groups_of_blocks_agree():
    """A re-processed or replaced slice changes the noise in tissue and in air alike; one group alone
    (anatomy or a patient mask that changes from slice to slice) does not make the slice odd."""
    assert _slice_stats(shift_groups=("soft tissue", "air"))[6] > 7.0
    assert _slice_stats(shift_groups=("soft tissue",))[6] < 3.0
    assert _slice_stats(shift_groups=("air",))[6] < 3.0


def test_more_noise_must_exceed_what_structure_adds_where_the_noise_is_low():
    """3x the noise in a 40 px patch is found where the noise is 7 HU, not where it is 0.7 HU (a 2 HU
    excess, as unresolved anatomy next to bone leaves in smooth head kernels)."""
    for sigma, flagged in ((7.0, True), (0.7, False)):
        rng = np.random.default_rng(0)
        img = rng.normal(40, sigma, (256, 256)).astype(np.float32)
        img[100:140, 100:140] = 40 + rng.normal(0, 3 * sigma, (40, 40))
        ev = DET.detect(Image.from_array(np.round(img), modality="CT", spacing=(0.7, 0.7)))
        assert (ev.score > 0.8) == flagged, (sigma, ev.score, ev.details["local_evidence"])
        if flagged:
            assert _found(ev, (100, 100, 140, 140))


@pytest.mark.parametrize("folder", ["dcm-qa-ct/GE_HiSpeedDual_human_head",
                                    "dcm-qa-ct/Philips_Ingenuity_head_phantom_S21610_S2010",
                                    "emp-news/GE_Revolution_ATCM_phantom_40slices"])
def test_outside_ct_series_are_consistent(shared_data, folder):
    """Authentic series from scanners and anatomy the detector was not fitted to (head CT with 18.5 deg
    tilt and 4/7 mm slices, a head phantom, a dose-modulation phantom): measured, never fitted to."""
    d = shared_data / "ct" / folder
    if not d.is_dir():
        pytest.skip(f"{folder} not found")
    ev = DET.detect(load(d)[0])
    assert ev.score < 0.5, (ev.score, ev.details["local_evidence"], ev.details["slice_term"], ev.details["odd_slices"])
    assert ev.details["odd_slices"] == []
