"""The faster paths of issue 17 give what the slower ones gave: coarse heatmaps (``Evidence.heatmap_scale``)
keep regions and overlays in full-resolution pixels, the fused tile network scores as the trained one,
copy_move's working image is the same to a gray level."""
from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medforensics.core import Evidence, Image
from medforensics.detectors import load_detectors, regions_from_heatmap
from medforensics.detectors.copy_move import to_8bit, work_image
from medforensics.forge.edits import inpaint_region
from medforensics.io import load
from medforensics.report import render_figures


def _coarse_and_full(rng, shape, f):
    """A block grid covering ``shape`` at ``f`` px per cell, and the same map at pixel size."""
    cells = tuple(-(-n // f) for n in shape)
    grid = np.zeros(cells, np.float32)
    grid[2:4, 3:6] = 0.9
    grid[-1, -1] = 0.7                       # a partial cell at the far corner
    grid[5, 1] = rng.uniform(0.5, 1.0)
    full = np.repeat(np.repeat(grid, f, 0), f, 1)[:shape[0], :shape[1]]
    return grid, full


def test_full_heatmap_repeats_cells_and_checks_its_scale():
    rng = np.random.default_rng(0)
    grid, full = _coarse_and_full(rng, (70, 90), 8)
    ev = Evidence("x", 0.9, "", heatmap=grid, heatmap_scale=(8, 8))
    assert np.array_equal(ev.full_heatmap((70, 90)), full)
    same = Evidence("x", 0.9, "", heatmap=full)
    assert same.full_heatmap((70, 90)) is full and same.heatmap_plane(0) is full
    with pytest.raises(ValueError, match="one factor >= 1 per heatmap axis"):
        Evidence("x", 0.9, "", heatmap=grid, heatmap_scale=(1, 8, 8))
    with pytest.raises(ValueError, match="does not cover"):
        ev.full_heatmap((200, 90))
    vol = Evidence("v", 0.9, "", heatmap=np.stack([grid * 0, grid]), heatmap_scale=(1, 8, 8))
    assert np.array_equal(vol.heatmap_plane(1), grid) and vol.full_heatmap((2, 70, 90))[1].shape == (70, 90)


def test_regions_of_a_coarse_heatmap_are_those_of_the_full_one_in_pixels():
    rng = np.random.default_rng(1)
    image = Image.from_array(np.zeros((70, 90)), modality="CR")
    grid, full = _coarse_and_full(rng, (70, 90), 8)
    coarse = regions_from_heatmap(image, grid, min_size=1, scale=(8, 8))
    fine = regions_from_heatmap(image, full, min_size=1)
    assert [r.bbox_voxel for r in coarse] == [r.bbox_voxel for r in fine]
    assert [r.score for r in coarse] == pytest.approx([r.score for r in fine])
    for c, f in zip(coarse, fine):   # centres: the middle of the same cells, in pixels
        assert all(abs(a - b) <= 1 for a, b in zip(c.center_voxel, f.center_voxel))
    assert coarse[0].bbox_voxel == (16, 24, 32, 48)
    assert max(r.bbox_voxel[2] for r in coarse) == 70 and max(r.bbox_voxel[3] for r in coarse) == 90   # clipped


def test_overlays_of_a_coarse_heatmap_are_those_of_the_full_one():
    rng = np.random.default_rng(2)
    px = rng.normal(40, 15, (3, 70, 90)).astype(np.float32)
    image = Image.from_array(px, modality="CT", spacing=(2.5, 0.7, 0.7))
    grid, full = _coarse_and_full(rng, (70, 90), 8)
    vol_grid = np.zeros((3,) + grid.shape, np.float32)
    vol_grid[2] = grid
    vol_full = np.zeros((3, 70, 90), np.float32)
    vol_full[2] = full
    coarse = Evidence("noise_residual", 0.8, "", heatmap=vol_grid, heatmap_scale=(1, 8, 8))
    fine = Evidence("noise_residual", 0.8, "", heatmap=vol_full)
    a, b = render_figures(image, [coarse]), render_figures(image, [fine])
    assert a["slice"] == b["slice"] == "2" and a["overlay:noise_residual"] == b["overlay:noise_residual"]


@pytest.fixture(scope="module")
def cr():
    return load(get_testdata_file("RG1_UNCI.dcm"))[0]


def test_block_detectors_keep_their_grid_and_full_resolution_regions(cr):
    """noise_residual's heatmap is its block grid; its region of an in-painted box is in pixels."""
    det = {d.name: d for d in load_detectors(["noise_residual"])}["noise_residual"]
    box = (1000, 1150, 1150, 1300)
    edited, _ = inpaint_region(cr.pixels, box)
    im = copy.copy(cr)
    im.pixels = edited
    ev = det.detect(im)
    b = ev.details["block_px"]
    assert ev.heatmap_scale == (b, b) and ev.heatmap.shape == tuple(-(-n // b) for n in im.pixels.shape)
    r = ev.regions[0]
    assert r.bbox_voxel[0] < box[2] and box[0] < r.bbox_voxel[2] and r.bbox_voxel[1] < box[3] and box[1] < r.bbox_voxel[3]
    assert all(v % b == 0 or v in im.pixels.shape for v in r.bbox_voxel)   # block edges, in pixels
    full = ev.full_heatmap(im.pixels.shape)
    assert full[r.center_voxel] >= 0.5 and full.shape == im.pixels.shape


def test_fused_tile_network_scores_as_the_trained_one(cr):
    """learned_2d's inference network (batch norm folded, channels-last) against ``clf.model``."""
    from medforensics.detectors.learned2d import Learned2DDetector, inference_model
    from medforensics.learn.data import normalise_image, tiles

    det = Learned2DDetector()
    clf = det.classifier("xray")
    batch, _, _ = tiles(normalise_image(cr.pixels[:600, :600], "radiograph"), clf.preprocess)
    fast = det._tile_logits(clf, batch)
    p = np.clip(clf.fake_probability(clf.predict_tensors(batch)), 1e-7, 1 - 1e-7)
    assert np.allclose(fast, np.log(p / (1 - p)), atol=1e-4)
    assert inference_model(clf) is inference_model(clf) and inference_model(clf) is not clf.model


def test_copy_move_work_image_is_the_windowed_then_scaled_one_to_a_gray_level(cr):
    img = cr.pixels
    f = 1024 / max(img.shape)
    old = cv2.resize(to_8bit(img), (round(img.shape[1] * f), round(img.shape[0] * f)), interpolation=cv2.INTER_AREA)
    new = work_image(img, f)
    assert new.shape == old.shape and new.dtype == np.uint8
    assert int(np.abs(new.astype(int) - old).max()) <= 1 and np.mean(new != old) < 0.2


def test_grey_levels_is_counted_once_per_image_and_again_when_it_changes():
    from medforensics.detectors.noise_residual import grey_levels

    rng = np.random.default_rng(3)
    for a in (rng.integers(0, 3000, (300, 400)).astype(np.float32), rng.normal(0, 1, (300, 400)).astype(np.float32),
              rng.integers(0, 3000, (300, 400)).astype(np.float32) * 0.5):
        lo, hi = np.percentile(a, [1, 99])
        want = np.unique(a[(a >= lo) & (a <= hi)]).size   # the definition, by a sort
        assert grey_levels(a) == want and grey_levels(a) == want   # counted, then from the cache
    a = np.repeat(np.arange(12, dtype=np.float32), 10_000).reshape(300, 400)
    assert grey_levels(a) == 12
    a[:150] = 0.0                                       # changed in place: counted again
    assert grey_levels(a) == np.unique(a[(a >= np.percentile(a, 1)) & (a <= np.percentile(a, 99))]).size < 12
