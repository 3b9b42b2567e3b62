"""serve.render: windowed slices and heatmap overlays as PNG, saved heatmaps, the pixel cache, header rows."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pydicom.data
import pytest

from medforensics.core import Evidence, Image, MedForensicsError, Verdict
from medforensics.io import discover, load_source
from medforensics.serve import render
from medforensics.serve.render import (PixelCache, default_window, header_rows, load_heatmaps, overlay_png,
                                       render_overlay, render_slice, save_heatmaps, slice_png, window8)


def decode(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    a = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert a is not None
    return a


def alpha(png: bytes) -> np.ndarray:
    a = decode(png)
    assert a.ndim == 3 and a.shape[-1] == 4 and a.dtype == np.uint8
    return a[..., 3]


# ------------------------------------------------------------------------------------ windows

def test_window_edges_map_to_0_and_255_and_is_monotonic():
    center, width = -600.0, 1500.0
    lo, hi = center - width / 2, center + width / 2
    values = np.linspace(lo - 500, hi + 500, 4001, dtype=np.float32)
    out = window8(values.reshape(1, -1), center, width)[0]
    assert out[np.searchsorted(values, lo)] == 0 and window8(np.array([[lo]]), center, width)[0, 0] == 0
    assert window8(np.array([[hi]]), center, width)[0, 0] == 255
    assert np.all(out[values <= lo] == 0) and np.all(out[values >= hi] == 255)
    assert np.all(np.diff(out.astype(int)) >= 0)
    assert window8(np.array([[center]]), center, width)[0, 0] in (127, 128)
    assert set(np.unique(out)) == set(range(256))   # the whole grey range is used


def test_window_nan_and_bad_width():
    out = window8(np.array([[np.nan, np.inf, -np.inf]]), 0, 10)
    assert out.tolist() == [[0, 255, 0]]
    for width in (0, -5, float("nan")):
        with pytest.raises(MedForensicsError, match="width"):
            render_slice(np.zeros((4, 4)), 0, width)


def test_render_slice_png_round_trip_full_resolution():
    rng = np.random.default_rng(0)
    pixels = rng.normal(0, 300, (300, 517)).astype(np.float32)
    img = decode(render_slice(pixels, 0, 1000))
    assert img.shape == (300, 517) and img.dtype == np.uint8
    assert np.array_equal(img, window8(pixels, 0, 1000))   # lossless, nothing resized


def test_render_slice_rgb_and_bad_shapes():
    rgb = np.zeros((5, 6, 3), np.float32)
    rgb[..., 0] = 255   # red
    img = decode(render_slice(rgb, 127.5, 255))
    assert img.shape == (5, 6, 3) and img[0, 0].tolist() == [0, 0, 255]   # BGR in OpenCV
    with pytest.raises(MedForensicsError, match="2D"):
        render_slice(np.zeros((2, 3, 4, 5)), 0, 1)


def test_default_window():
    ct = Image.from_array(np.zeros((3, 8, 8)), modality="CT")
    assert default_window(ct) == (40.0, 400.0)
    xr = Image.from_array(np.arange(10000, dtype=np.float32).reshape(100, 100), modality="XR")
    c, w = default_window(xr)
    assert c == pytest.approx(4999.5, abs=60) and w == pytest.approx(9800, rel=0.02)
    flat = Image.from_array(np.full((10, 10), 7.0))
    assert default_window(flat) == (7.0, 1.0)


def test_default_window_from_dicom_header():
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    image = load_source(discover([path])[0][0])
    ds = image.datasets[0]
    ds.WindowCenter, ds.WindowWidth = ["50", "400"], ["350", "1500"]
    assert default_window(image) == (50.0, 350.0)
    ds.WindowWidth = "0"                 # unusable: CT falls back to the soft-tissue window
    assert default_window(image) == (40.0, 400.0)


def test_default_window_monochrome1_follows_the_inversion():
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME1", 12, 0
    ds.WindowCenter, ds.WindowWidth = 1000, 200
    image = Image.from_array(np.zeros((4, 4)), modality="CR", datasets=[ds])
    assert default_window(image) == (4095.0 - 1000.0, 200.0)


def test_slice_png_and_out_of_range():
    vol = Image.from_array(np.stack([np.full((6, 7), v, np.float32) for v in (-1000, 40, 1000)]), modality="CT")
    assert [int(decode(slice_png(vol, k))[0, 0]) for k in range(3)] == [0, 128, 255]
    assert int(decode(slice_png(vol, 1, center=540, width=1000))[0, 0]) == 0
    for k in (-1, 3, 1.5, "x", None):
        with pytest.raises(MedForensicsError, match="out of range"):
            slice_png(vol, k)
    flat = Image.from_array(np.zeros((6, 7)))
    assert decode(slice_png(flat, 0)).shape == (6, 7)
    with pytest.raises(MedForensicsError, match="out of range"):
        slice_png(flat, 1)


# ------------------------------------------------------------------------------------ overlays

def test_overlay_alpha_zero_at_or_below_threshold_positive_above():
    heat = np.array([[0.0, 0.2, 0.3], [0.31, 0.9, np.nan]], np.float32)
    a = alpha(render_overlay(heat, (2, 3), threshold=0.3))
    assert a.tolist()[0] == [0, 0, 0]
    assert a[1, 0] > 0 and a[1, 1] > 0 and a[1, 2] == 0        # NaN counts as 0
    assert a[1, 1] >= a[1, 0]                                  # alpha grows with the value
    a0 = alpha(render_overlay(heat, (2, 3)))
    assert a0[0, 0] == 0 and np.all(a0[0, 1:] > 0)             # default threshold 0
    assert np.all(np.diff(render.LUT[:, 3].astype(int)) >= 0) and render.LUT[255, 3] == 255


def test_overlay_colour_grows_with_heat():
    heat = np.array([[0.2, 0.5, 1.0]], np.float32)
    bgra = decode(render_overlay(heat, (1, 3)))
    brightness = bgra[0, :, :3].astype(int).sum(axis=1)
    assert brightness[0] < brightness[1] < brightness[2]


def test_coarse_cells_cover_the_right_pixels():
    heat = np.zeros((3, 4), np.float32)      # 4x4-pixel cells; the image is 10 x 15: last cells reach past it
    heat[1, 2] = 1.0
    heat[2, 3] = 0.6
    a = alpha(render_overlay(heat, (10, 15), scale=(4, 4)))
    assert a.shape == (10, 15)
    expected = Evidence("x", 0.5, "", heatmap=heat, heatmap_scale=(4, 4)).full_heatmap((10, 15)) > 0
    assert np.array_equal(a > 0, expected)
    assert np.all(a[4:8, 8:12] > 0) and np.all(a[8:10, 12:15] > 0)
    assert a[3, 8] == 0 and a[4, 7] == 0 and a[8, 11] == 0
    # without a scale, the smallest covering factor is found: the same picture here
    assert np.array_equal(alpha(render_overlay(heat, (10, 15))), a)
    with pytest.raises(MedForensicsError, match="does not cover"):
        render_overlay(heat, (13, 15), scale=(4, 4))


def test_overlay_png_selects_the_plane_of_slice_k():
    heat = np.zeros((3, 2, 2), np.float32)   # cells of 2 slices x 4 x 4 pixels; 6 slices of 8 x 8
    for c in range(3):
        heat[c, c % 2, 1] = 1.0
    heatmaps = {"noise_residual": (heat.astype(np.float16), (2, 4, 4))}
    for k in range(6):
        a = alpha(overlay_png(heatmaps, "noise_residual", (6, 8, 8), k))
        ev = Evidence("noise_residual", 0.5, "", heatmap=heat, heatmap_scale=(2, 4, 4))
        assert np.array_equal(a > 0, ev.full_heatmap((6, 8, 8))[k] > 0), k
        row = (k // 2) % 2
        assert np.all(a[4 * row:4 * row + 4, 4:8] > 0) and np.all(a[4 * (1 - row):4 * (2 - row)] == 0)
    with pytest.raises(MedForensicsError, match="out of range"):
        overlay_png(heatmaps, "noise_residual", (6, 8, 8), 6)
    with pytest.raises(MedForensicsError, match="no heatmap"):
        overlay_png(heatmaps, "copy_move", (6, 8, 8), 0)
    with pytest.raises(MedForensicsError, match="3D heatmap"):
        overlay_png(heatmaps, "noise_residual", (8, 8), 0)


def test_overlay_png_2d_heatmap_full_size():
    heat = np.zeros((8, 9), np.float32)
    heat[2:4, 5] = 0.8
    a = alpha(overlay_png({"copy_move": (heat, (1, 1))}, "copy_move", (8, 9), 0))
    assert np.array_equal(a > 0, heat > 0)
    with pytest.raises(MedForensicsError, match="out of range"):
        overlay_png({"copy_move": (heat, (1, 1))}, "copy_move", (8, 9), 1)


# ------------------------------------------------------------------------------------ saved heatmaps

def _verdict(evidence: list[Evidence]) -> Verdict:
    return Verdict("a", "series", "1.2", 1, 0.9, "manipulated", evidence)


def test_save_load_round_trip_and_refuses_to_overwrite(tmp_path):
    rng = np.random.default_rng(1)
    coarse = rng.random((5, 8, 8)).astype(np.float32)
    flat2d = rng.random((16, 12)).astype(np.float32)
    v = _verdict([Evidence("noise_residual", 0.7, "", heatmap=coarse, heatmap_scale=(4, 16, 16)),
                  Evidence("dicom_header", 0.9, ""),
                  Evidence("copy_move", 0.6, "", heatmap=flat2d),
                  Evidence("copy_move", 0.4, "", heatmap=flat2d * 0.5)])
    path = save_heatmaps(v, tmp_path / "item-1.npz")
    assert path == tmp_path / "item-1.npz" and sorted(p.name for p in tmp_path.iterdir()) == ["item-1.npz"]
    got = load_heatmaps(path)
    assert list(got) == ["noise_residual", "copy_move", "copy_move#2"]
    heat, scale = got["noise_residual"]
    assert heat.dtype == np.float16 and scale == (4, 16, 16)
    assert np.allclose(heat, coarse, atol=1e-3)
    assert got["copy_move"][1] == (1, 1) and np.allclose(got["copy_move#2"][0], flat2d * 0.5, atol=1e-3)
    before = path.read_bytes()
    with pytest.raises(MedForensicsError, match="already exists"):
        save_heatmaps(v, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["item-1.npz"]


def test_save_with_no_heatmaps_and_unreadable_file(tmp_path):
    path = save_heatmaps(_verdict([Evidence("dicom_header", 0.1, "")]), tmp_path / "none.npz")
    assert load_heatmaps(path) == {}
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(MedForensicsError, match="not a readable heatmap file"):
        load_heatmaps(tmp_path / "bad.npz")
    with pytest.raises(MedForensicsError, match="not a readable heatmap file"):
        load_heatmaps(tmp_path / "missing.npz")


def test_full_size_block_heatmap_of_a_ct_is_saved_small_and_draws_the_same(tmp_path):
    """A detector's full-size 3D map of 4 x 16 x 16 blocks (a 133-slice 512x512 CT) is stored as its
    blocks: the file is small and every overlay is the same as from the full map (at float16)."""
    shape = (133, 512, 512)
    rng = np.random.default_rng(2)
    cells = (rng.random((34, 32, 32)) * (rng.random((34, 32, 32)) > 0.9)).astype(np.float32)
    full = np.repeat(np.repeat(np.repeat(cells, 4, 0), 16, 1), 16, 2)[:shape[0]]
    v = _verdict([Evidence("ct3d", 0.9, "", heatmap=full)])
    path = save_heatmaps(v, tmp_path / "ct.npz")
    assert path.stat().st_size < 200_000
    heat, scale = load_heatmaps(path)["ct3d"]
    assert scale[0] % 4 == 0 or heat.shape[0] == 1
    assert heat.size <= cells.size
    ev = Evidence("ct3d", 0.9, "", heatmap=heat.astype(np.float32), heatmap_scale=scale)
    assert np.abs(ev.full_heatmap(shape) - full).max() < 1e-3
    for k in (0, 57, 132):
        a = alpha(overlay_png({"ct3d": (heat, scale)}, "ct3d", shape, k))
        b = alpha(render_overlay(full[k].astype(np.float16), shape[1:]))   # saved cells are float16
        assert np.array_equal(a, b), k


def test_huge_irregular_heatmap_is_max_pooled(monkeypatch):
    monkeypatch.setattr(render, "MAX_CELLS", 1000)
    heat = np.zeros((50, 50), np.float32)
    heat[13, 27] = 0.8
    small, scale = render.compact(heat + np.arange(50, dtype=np.float32)[None, :] * 1e-4, None)
    assert small.size <= 1000 and scale == (2, 2)
    ev = Evidence("x", 0.5, "", heatmap=small, heatmap_scale=scale)
    assert ev.full_heatmap((50, 50))[13, 27] == pytest.approx(0.8 + 27e-4)


# ------------------------------------------------------------------------------------ cache

def test_pixel_cache_loads_once_under_concurrency():
    cache = PixelCache(max_items=2)
    calls = []
    started = threading.Event()

    def loader():
        calls.append(threading.get_ident())
        started.set()
        time.sleep(0.2)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("a", loader))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and len(results) == 8 and all(r is results[0] for r in results)


def test_pixel_cache_lru_eviction():
    cache = PixelCache(max_items=2)
    loads = []

    def loader(key):
        return lambda: loads.append(key) or f"image {key}"

    assert cache.get(1, loader(1)) == "image 1"
    cache.get(2, loader(2))
    cache.get(1, loader(1))          # 1 is now the most recently used
    cache.get(3, loader(3))          # evicts 2
    assert 1 in cache and 3 in cache and 2 not in cache and len(cache) == 2
    cache.get(2, loader(2))          # evicts 1
    assert loads == [1, 2, 3, 2] and 1 not in cache
    cache.discard(3)
    assert 3 not in cache and len(cache) == 1
    with pytest.raises(ValueError):
        PixelCache(max_items=0)


def test_pixel_cache_failed_load_is_not_cached():
    cache = PixelCache()

    def broken():
        raise MedForensicsError("x.dcm", "damaged")

    with pytest.raises(MedForensicsError, match="damaged"):
        cache.get("x", broken)
    assert "x" not in cache and cache.get("x", lambda: 5) == 5


# ------------------------------------------------------------------------------------ header

def test_header_rows_of_a_dicom_file():
    path = pydicom.data.get_testdata_file("CT_small.dcm")
    sources, _ = discover([path])
    image = load_source(sources[0])
    rows = header_rows(image)
    by_keyword = {r["keyword"]: r for r in rows}
    assert by_keyword["Modality"] == {"tag": "(0008,0060)", "keyword": "Modality", "vr": "CS", "value": "CT"}
    assert "PixelData" not in by_keyword and all(not r["tag"].startswith("(7FE0,") for r in rows)
    assert all(set(r) == {"tag", "keyword", "vr", "value"} for r in rows)
    assert all(len(r["value"]) <= 200 and "\n" not in r["value"] for r in rows)
    assert by_keyword["ImagePositionPatient"]["value"].count("\\") == 2
    assert len(rows) > 40


def test_header_rows_sequences_long_values_and_bytes():
    ds = pydicom.Dataset()
    ds.Modality = "MR"
    ds.ImageComments = "x" * 500 + "\nsecond line"
    item = pydicom.Dataset()
    item.CodeValue = "1"
    ds.ReferencedImageSequence = pydicom.Sequence([item, pydicom.Dataset()])
    ds.add_new(0x00091010, "LO", "PrivateCreator")
    ds.add_new(0x00091011, "OB", b"\x00\x01\x02" * 100)
    ds.add_new(0x7FE00010, "OW", b"\x00" * 64)
    rows = header_rows(Image.from_array(np.zeros((4, 4)), modality="MR", datasets=[ds]))
    by_tag = {r["tag"]: r for r in rows}
    assert by_tag["(0008,1140)"]["value"] == "(2 items)" and by_tag["(0008,1140)"]["vr"] == "SQ"
    comments = by_tag["(0020,4000)"]["value"]
    assert len(comments) == 200 and comments.endswith("…")
    assert "bytes" in by_tag["(0009,1011)"]["value"] and len(by_tag["(0009,1011)"]["value"]) <= 200
    assert "(7FE0,0010)" not in by_tag
    assert "(0008,1150)" not in by_tag     # only top-level elements


def test_header_rows_of_png_container(tmp_path):
    from PIL import Image as PILImage, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a chest x-ray, Steps: 20 " + "y" * 300)
    PILImage.new("L", (8, 8)).save(tmp_path / "a.png", "PNG", pnginfo=info)
    image = load_source(discover([tmp_path / "a.png"])[0][0])
    rows = header_rows(image)
    assert rows and all(r["tag"] == "" and r["vr"] == "" for r in rows)
    row = next(r for r in rows if "parameters" in r["keyword"])
    assert row["value"].startswith("a chest x-ray, Steps: 20") and len(row["value"]) == 200
    assert header_rows(Image.from_array(np.zeros((4, 4)))) == []


def test_pixel_cache_is_bounded_by_bytes_too():
    from medforensics.core import Image
    from medforensics.serve.render import PixelCache

    cache = PixelCache(max_items=10, max_bytes=3 * 400)
    images = {k: Image.from_array(np.zeros((10, 10), np.float32), name=str(k)) for k in range(5)}   # 400 B each
    for k in range(5):
        cache.get(k, lambda k=k: images[k])
    assert len(cache) == 3 and 1 not in cache and 4 in cache
    big = Image.from_array(np.zeros((100, 100), np.float32), name="big")                     # 40 kB
    cache.get("big", lambda: big)
    assert len(cache) == 1 and "big" in cache           # the newest stays, whatever its size
    cache.discard("big")
    cache.get(7, lambda: images[0])
    assert len(cache) == 1
