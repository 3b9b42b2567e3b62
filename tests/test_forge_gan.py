"""The learned in-painting generator (forge/gan/): the render contract, the shipped models on
real CT, training, the checkpoint and its model card, the train-gan command."""
from __future__ import annotations


import numpy as np
import pytest

from medforensics.core import MedForensicsError
from medforensics.forge import gan


def _ellipsoid(shape, centre, radii):
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0


def _synthetic_ct(seed=0, shape=(12, 48, 48)):
    """Lung-like background (-850 HU) with a vessel and correlated noise of about 25 HU."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    x = np.full(shape, -850.0, np.float32)
    x += 150.0 * _ellipsoid(shape, (shape[0] / 2, shape[1] / 2, 10), (40, 40, 2.5))
    noise = gaussian_filter(rng.standard_normal(shape), (0.3, 0.7, 0.7))
    return (x + 25.0 * noise / noise.std()).astype(np.float32)


def _hp_std(x, region):
    hp = x.astype(np.float32) - gan.lowpass(x)
    v = hp[region]
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def _inside_and_ring(mask):
    from scipy.ndimage import binary_dilation, binary_erosion
    inner = binary_erosion(mask, np.ones((1, 3, 3) if mask.ndim == 3 else (3, 3), bool))
    ring = binary_dilation(mask, np.ones((3, 9, 9) if mask.ndim == 3 else (9, 9), bool)) & ~mask
    return inner, ring


# --- the render contract ----------------------------------------------------------------------

def test_render_keeps_context_bit_exact_and_follows_a_nodule_sketch():
    ctx = _synthetic_ct()
    mask = _ellipsoid(ctx.shape, (6, 24, 28), (3, 9, 9))
    nodule = _ellipsoid(ctx.shape, (6, 24, 28), (1.6, 5, 5))
    wanted = np.where(nodule, 40.0, ctx)                     # a soft-tissue nodule in the lung
    sketch = gan.lowpass(wanted)
    out = gan.render(ctx, mask, sketch, seed=1)
    assert out.shape == ctx.shape and out.dtype == ctx.dtype
    assert np.array_equal(out[~mask], ctx[~mask])            # bit-exact outside
    assert not np.array_equal(out[mask], ctx[mask])
    inner, _ = _inside_and_ring(mask)
    err = np.abs(gan.lowpass(out)[inner] - sketch[inner]).mean()
    contrast = sketch[mask].max() - sketch[mask].min()
    assert contrast > 500
    assert err < 0.05 * contrast, (err, contrast)
    # The nodule is there: its centre is soft tissue, not lung.
    assert out[6, 22:27, 26:31].mean() > -200


def test_render_generated_noise_is_at_the_level_of_the_surroundings_synthetic():
    ctx = _synthetic_ct(seed=3)
    mask = _ellipsoid(ctx.shape, (6, 24, 24), (3, 10, 10))
    out = gan.render(ctx, mask, gan.lowpass(ctx), seed=0)
    inner, ring = _inside_and_ring(mask)
    ratio = _hp_std(out, inner) / _hp_std(out, ring)
    assert 1 / 1.5 < ratio < 1.5, ratio


def test_render_is_deterministic_per_seed_and_differs_across_seeds():
    ctx = _synthetic_ct(seed=5)
    mask = _ellipsoid(ctx.shape, (6, 20, 26), (3, 8, 8))
    sketch = gan.lowpass(ctx)
    a = gan.render(ctx, mask, sketch, seed=7)
    b = gan.render(ctx, mask, sketch, seed=7)
    c = gan.render(ctx, mask, sketch, seed=8)
    assert np.array_equal(a, b)
    diff = np.abs(a[mask] - c[mask])
    assert diff.mean() > 3.0          # HU: different texture, not a rounding difference
    assert np.array_equal(a[~mask], c[~mask])
    assert np.array_equal(gan.render(ctx, mask, sketch, seed=-3), gan.render(ctx, mask, sketch, seed=-3))


def test_render_any_size_and_tiling(monkeypatch):
    ctx = _synthetic_ct(seed=2, shape=(13, 45, 37))          # not a multiple of the network's size
    mask = _ellipsoid(ctx.shape, (6, 22, 18), (4, 12, 10))
    sketch = gan.lowpass(ctx) + 30.0 * _ellipsoid(ctx.shape, (6, 22, 18), (2, 5, 5))
    whole = gan.render(ctx, mask, sketch, seed=3)
    monkeypatch.setattr(gan.rendering, "_MAX_TILE_VOXELS", 2000)  # force tiles
    tiled = gan.render(ctx, mask, sketch, seed=3)
    for out in (whole, tiled):
        assert np.array_equal(out[~mask], ctx[~mask])
        inner, _ = _inside_and_ring(mask)
        assert np.abs(gan.lowpass(out)[inner] - sketch[inner]).mean() < 15.0
    # Tiles see the same noise, so they agree with the whole up to seams' fine texture.
    assert np.abs(whole[mask] - tiled[mask]).mean() < 25.0


def test_render_2d_scales_with_the_intensity_range_of_the_image():
    """An 8-bit and a 12-bit copy of one radiograph patch give the same content up to the scale."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :80]
    patch = (120 + 40 * np.sin(xx / 9.0) + 20 * (yy / 80.0) + 4 * rng.standard_normal((80, 80))).astype(np.float32)
    mask = _ellipsoid(patch.shape, (40, 40), (12, 15))
    sketch = gan.lowpass(patch) - 25.0 * _ellipsoid(patch.shape, (40, 40), (6, 6))
    a = gan.render(patch, mask, sketch, seed=4)
    b = gan.render(patch * 16.0, mask, sketch * 16.0, seed=4)
    assert np.array_equal(a[~mask], patch[~mask])
    assert np.allclose(b[mask], 16.0 * a[mask], rtol=1e-3, atol=0.05 * 16)
    inner, ring = _inside_and_ring(mask)
    assert np.abs(gan.lowpass(a)[inner] - sketch[inner]).mean() < 0.1 * 25.0
    ratio = _hp_std(a, inner) / _hp_std(a, ring)
    assert 1 / 1.5 < ratio < 1.5, ratio


def test_render_integer_context_and_empty_mask():
    ctx = np.round(_synthetic_ct(seed=1)).astype(np.int16)
    empty = np.zeros(ctx.shape, bool)
    same = gan.render(ctx, empty, ctx.astype(np.float32))
    assert np.array_equal(same, ctx) and same is not ctx
    mask = _ellipsoid(ctx.shape, (6, 24, 24), (3, 6, 6))
    out = gan.render(ctx, mask, gan.lowpass(ctx))
    assert out.dtype == np.int16 and np.array_equal(out[~mask], ctx[~mask])


@pytest.mark.parametrize("bad", ["shape", "ndim", "nan", "mask"])
def test_render_refuses_bad_input_with_one_line(bad):
    ctx = _synthetic_ct()
    mask = _ellipsoid(ctx.shape, (6, 24, 24), (3, 6, 6))
    sketch = gan.lowpass(ctx)
    if bad == "shape":
        args = (ctx, mask[:, :-1], sketch)
    elif bad == "ndim":
        args = (ctx[None], mask[None], sketch[None])
    elif bad == "nan":
        s = sketch.copy()
        s[6, 24, 24] = np.nan
        args = (ctx, mask, s)
    else:
        args = (ctx, mask.astype(np.float32) * 0.5, sketch)
    with pytest.raises(MedForensicsError) as e:
        gan.render(*args)
    assert "\n" not in str(e.value)


# --- the shipped model on real CT --------------------------------------------------------------

def test_shipped_models_load_with_cards():
    for dim in (3, 2):
        m = gan.load_model(dim)
        assert m.dim == dim and gan.load_model(dim) is m          # cached
        card = m.card
        assert card["architecture"] == "InpaintUNet"
        assert card["data"]["files"] and card["training"]["steps_done"] > 0
        assert card["training"]["wall_time_s"] < 15 * 60
    with pytest.raises(MedForensicsError):
        gan.load_model(3, gan.default_model_path(2))           # a 2D model is not a 3D one


def test_shipped_ct_model_noise_level_on_a_real_lidc_cube(lidc_series_dir):
    from medforensics.io import load_series

    vol = load_series(sorted(lidc_series_dir.glob("*.dcm"))).pixels
    # A cube in the lung parenchyma of the middle slices.
    k = vol.shape[0] // 2
    sl = vol[k]
    rows, cols = np.nonzero((sl > -900) & (sl < -700))
    i = int(np.median(rows))
    j = int(np.median(cols[cols < 256])) if (cols < 256).any() else int(np.median(cols))
    cube = vol[k - 8:k + 8, i - 32:i + 32, j - 32:j + 32].astype(np.float32)
    assert np.median(cube) < -500
    mask = _ellipsoid(cube.shape, (8, 32, 32), (3, 10, 10))
    inner, ring = _inside_and_ring(mask)
    real_ratio = _hp_std(cube, inner) / _hp_std(cube, ring)
    for seed in (0, 1):
        out = gan.render(cube, mask, gan.lowpass(cube), seed=seed)
        ratio = _hp_std(out, inner) / _hp_std(out, ring)
        assert 1 / 1.5 < ratio < 1.5, (ratio, real_ratio)
        # The network itself (without the noise-level guard) is within a factor 2.
        raw = gan._render(cube, mask, gan.lowpass(cube), seed=seed, match_noise=False)
        raw_ratio = _hp_std(raw, inner) / _hp_std(raw, ring)
        assert 0.5 < raw_ratio < 2.0, raw_ratio
        # A lung fill follows the real cube's low-pass.
        assert np.abs(gan.lowpass(out)[inner] - gan.lowpass(cube)[inner]).mean() < 15.0


# --- training, checkpoint, CLI ------------------------------------------------------------------

def _tiny(modality, preset="small", **kw):
    size = (4, 16, 16) if modality == "ct" else (32, 32)
    base = dict(size=size, width=4, d_width=4, batch=4, steps=30, pool=48, eval_cubes=4, threads=2,
                w_adv=0.05, lr=1e-3, time_limit_s=0.0)
    base.update(kw)
    return gan.TrainConfig.preset_named(preset, modality, **base)


@pytest.fixture
def small_ct_root(tmp_path, shared_data):
    """A data root with the two short LIDC sub-series only (fast to load)."""
    src = shared_data / "ct" / "lidc-idri-small"
    if not src.is_dir():
        pytest.skip("ct/lidc-idri-small not found in shared data")
    root = tmp_path / "data"
    (root / "ct").mkdir(parents=True)
    (root / "ct" / "lidc-idri-small").symlink_to(src, target_is_directory=True)
    return root


def test_tiny_training_lowers_the_loss_and_writes_a_checkpoint_with_a_card(tmp_path, small_ct_root):
    out = tmp_path / "tiny.safetensors"
    p = gan.train(_tiny("ct"), out, small_ct_root, progress=False)
    assert p == out and out.is_file()
    m = gan.load_model(3, out)
    card = m.card
    hist = card["training"]["loss_history"]
    assert hist[0]["step"] == 1 and card["training"]["steps_done"] == 30
    assert card["training"]["final_losses_ema"]["g"] < hist[0]["g"]
    assert card["training"]["final_losses_ema"]["lowpass"] < hist[0]["lowpass"]
    assert card["data"]["files"] and all(f.startswith("ct/lidc-idri-small/LIDC-IDRI-000") for f in card["data"]["files"])
    assert card["data"]["sources"] == ["ct/lidc-idri-small"] and card["data"]["root"] == "."  # no machine path
    assert card["config"] == {"dim": 3, "width": 4, "levels": 3, "in_ch": 4}
    assert card["metrics"]["heldout_regions"] == 4
    # The tiny model renders through the public API.
    ctx = _synthetic_ct()
    mask = _ellipsoid(ctx.shape, (6, 24, 24), (3, 6, 6))
    res = gan.render(ctx, mask, gan.lowpass(ctx), model=out)
    assert np.array_equal(res[~mask], ctx[~mask])
    with pytest.raises(FileExistsError):
        gan.train(_tiny("ct", steps=1), out, small_ct_root, progress=False)


def test_gpu_config_code_path_runs_on_cpu_for_2d(tmp_path, shared_data):
    nih = sorted((shared_data / "xray" / "nih-cxr14").glob("*.png"))
    if not nih:
        pytest.skip("xray/nih-cxr14 512 px radiographs not found in shared data")
    root = tmp_path / "data"
    (root / "xray" / "nih-cxr14").mkdir(parents=True)
    for f in nih:
        (root / "xray" / "nih-cxr14" / f.name).symlink_to(f)
    cfg = _tiny("xray", preset="gpu", steps=3, device="cpu")
    assert cfg.preset == "gpu" and cfg.time_limit_s == 0.0
    assert gan.TrainConfig.gpu("ct").size == (16, 64, 64) and gan.TrainConfig.gpu("ct").device == "auto"
    out = gan.train(cfg, tmp_path / "g.safetensors", root, progress=False)
    m = gan.load_model(2, out)
    assert m.card["training"]["train_config"]["preset"] == "gpu" and m.card["training"]["steps_done"] == 3


def test_train_gan_cli_refuses_to_overwrite_and_bad_options(tmp_path, run_cli):
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"keep me")
    errs = []
    for argv, code in (
        (["--modality", "ct", "--config", "small", "--out", str(existing), "--steps", "1"], 2),
        (["--modality", "mr", "--out", str(tmp_path / "new.safetensors")], 2),
        (["--modality", "ct", "--config", "huge", "--out", str(tmp_path / "new.safetensors")], 2),
        (["--modality", "ct", "--out", str(tmp_path / "new.safetensors"), "--steps", "1",
          "--data", str(tmp_path / "nowhere")], 1),
    ) + ((["--modality", "ct", "--out", str(tmp_path / "new.safetensors"), "--steps", "1", "--device", "cuda",
           "--data", str(tmp_path)], 1),) * (not _cuda_available()):
        r = run_cli("forge", "train-gan", *argv)
        assert r.code == code, argv
        errs.append(r.err)
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "new.safetensors").exists()
    err = "".join(errs)
    assert "already exists" in err and "data folder not found" in err
    assert _cuda_available() or "no CUDA device" in err
    assert "Invalid value for --modality" in err and "Invalid value for --config" in err


def _cuda_available():
    import torch
    return torch.cuda.is_available()
