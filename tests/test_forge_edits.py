"""2D forgeries (copy-move, splice, in-painting, intensity, contrast, resampling) and their commands.

Real images: a 16-bit Philips chest CR and a CT slice from pydicom-data, and chest radiographs
(8-bit PNG) from ../shared/data/xray/mhh-covid19 where present.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage as ndi

import medforensics
from medforensics.core import Image, MedForensicsError
from medforensics.forge import edits as E
from medforensics.io import load

GAN_CHECKPOINT = Path(medforensics.__file__).resolve().parent / "models" / "inpaint2d_xray.safetensors"
MHH = "xray/mhh-covid19/images"


@pytest.fixture(scope="module")
def cr() -> Image:
    return load(get_testdata_file("RG1_UNCR.dcm"))[0]


@pytest.fixture(scope="module")
def ct() -> Image:
    return load(get_testdata_file("CT_small.dcm"))[0]


@pytest.fixture(scope="module")
def pngs(shared_data) -> list[Path]:
    files = sorted((shared_data / MHH).glob("*.png"))
    if len(files) < 6:
        pytest.skip(f"chest radiographs not found in {shared_data / MHH}")
    return files[::max(1, len(files) // 6)][:6]


def box_of(mask: np.ndarray) -> tuple[int, ...]:
    idx = np.argwhere(mask > 0)
    return tuple(int(v) for v in [*idx.min(axis=0), *(idx.max(axis=0) + 1)])


def noise(x: np.ndarray, where: np.ndarray) -> float:
    """Robust std of a 3x3 high-pass (independent of the forge's own noise measure)."""
    x = x.astype(np.float64)
    hp = x - ndi.uniform_filter(x, 3, mode="reflect")
    v = hp[where]
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def seam(x: np.ndarray, box) -> float:
    """Mean jump of the 2 px blurred image across the four edges of ``box`` (1 px in, 2 px out)."""
    g = ndi.gaussian_filter(x.astype(np.float64), 2)
    r0, c0, r1, c1 = box
    d = np.concatenate([g[r0 + 1, c0:c1] - g[r0 - 2, c0:c1], g[r1 - 2, c0:c1] - g[r1 + 1, c0:c1],
                        g[r0:r1, c0 + 1] - g[r0:r1, c0 - 2], g[r0:r1, c1 - 2] - g[r0:r1, c1 + 1]])
    return float(np.abs(d).mean())


def ring(box, shape, inner=4, width=24):
    r0, c0, r1, c1 = box
    m = np.zeros(shape, bool)
    m[max(0, r0 - inner - width):r1 + inner + width, max(0, c0 - inner - width):c1 + inner + width] = True
    m[max(0, r0 - inner):r1 + inner, max(0, c0 - inner):c1 + inner] = False
    return m


def core(box, shape, inset=4):
    r0, c0, r1, c1 = box
    m = np.zeros(shape, bool)
    m[r0 + inset:r1 - inset, c0 + inset:c1 - inset] = True
    return m


# ------------------------------------------------------------------------------ array functions

ARRAY_EDITS = {
    "copy_move": lambda a: E.copy_move(a, (20, 20, 60, 60), (90, 100), angle=17, scale=1.1, feather=5),
    "splice": lambda a: E.splice(a, a[::-1].copy() * 2, (10, 10, 50, 60), (80, 30), match_std=True),
    "rescale_region": lambda a: E.rescale_region(a, (30, 40, 70, 90), 0.5, offset=3),
    "intensity_region": lambda a: E.intensity_region(a, (30, 40, 70, 90), 25.0, feather=6),
    "contrast_region": lambda a: E.contrast_region(a, (30, 40, 70, 90), 1.5, feather=6),
    "resample_region": lambda a: E.resample_region(a, (30, 40, 70, 90), scale=1.2, angle=10),
    "inpaint_classic": lambda a: E.inpaint_region(a, (30, 40, 70, 90)),
    "inpaint_telea_noise": lambda a: E.inpaint_region(a, (30, 40, 70, 90), method="telea", noise=True, seed=2),
}


@pytest.mark.parametrize("name", sorted(ARRAY_EDITS))
def test_array_edit_changes_only_inside_its_mask(cr, name):
    a = cr.pixels[800:960, 700:860].copy()
    before = a.copy()
    edited, mask = ARRAY_EDITS[name](a)
    assert np.array_equal(a, before), "the input was modified"
    assert edited.shape == a.shape and edited.dtype == a.dtype and mask.dtype == np.uint8
    changed = edited != a
    assert changed.sum() > 0.5 * mask.sum() > 0
    assert not (changed & (mask == 0)).any(), "a pixel outside the mask changed"
    if name not in ("copy_move", "splice"):
        assert box_of(mask) == (30, 40, 70, 90)


def test_array_edit_errors():
    a = np.zeros((50, 50), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        E.contrast_region(a, (40, 40, 60, 60), 2)
    with pytest.raises(ValueError, match="scale other than 1"):
        E.resample_region(a, (10, 10, 20, 20))
    with pytest.raises(ValueError, match="unknown in-painting method"):
        E.inpaint_region(a, (10, 10, 20, 20), method="magic")


# ------------------------------------------------------------------------------ image functions

KINDS = ("copymove", "inpaint", "intensity", "contrast", "resample")


def forge(kind, image, **kw):
    return getattr(E, f"forge_{kind}")(image, **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_forgery_mask_box_and_reproducibility(cr, kind):
    f = forge(kind, cr, seed=11)
    assert f.kind == kind and f.pixels.shape == cr.pixels.shape and f.pixels.dtype == cr.pixels.dtype
    changed = f.pixels != cr.pixels
    assert changed.any() and not (changed & (f.mask == 0)).any()
    assert tuple(f.bbox_voxel) == box_of(f.mask)
    r0, c0, r1, c1 = f.params["box"]
    assert tuple(f.bbox_voxel) == (r0, c0, r1, c1) if kind != "copymove" else \
        (r0 <= f.bbox_voxel[0] and c0 <= f.bbox_voxel[1] and f.bbox_voxel[2] <= r1 and f.bbox_voxel[3] <= c1)
    assert f.center_voxel == ((r0 + r1 - 1) // 2, (c0 + c1 - 1) // 2) or kind == "copymove"
    # size relative to the image, inside the image and the body
    h, w = cr.pixels.shape
    assert 0.05 * w - 1 <= c1 - c0 <= 0.15 * w * 1.2 + 1
    assert 0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w
    body = E.placement_mask(cr.pixels, cr.modality)
    assert body[r0:r1, c0:c1].mean() > 0.9
    # the same seed gives the same forgery; the recorded parameters reproduce it
    assert np.array_equal(forge(kind, cr, seed=11).pixels, f.pixels)
    again = json.loads(json.dumps(f.ground_truth()))["params"]
    keep = {"copymove": ("box", "to", "angle", "scale", "feather"), "inpaint": ("box",),
            "intensity": ("box", "offset", "feather"), "contrast": ("box", "factor", "feather"),
            "resample": ("box", "scale", "angle", "feather")}[kind]
    kw = {k: again[k] for k in keep}
    if kind == "copymove":
        kw["box"] = again["source_box"]
    assert np.array_equal(forge(kind, cr, seed=again["seed"], **kw).pixels, f.pixels)
    assert forge(kind, cr, seed=12).params["box"] != f.params["box"]


def test_copymove_source_and_target_never_overlap(cr, ct):
    for image in (cr, ct):
        body = E.placement_mask(image.pixels, image.modality)
        for seed in range(12):
            f = E.forge_copymove(image, seed=seed)
            s, t = f.params["source_box"], f.params["box"]
            assert s[2] <= t[0] or t[2] <= s[0] or s[3] <= t[1] or t[3] <= s[1], (seed, s, t)
            assert 0 <= abs(f.params["angle"]) <= 30 and 0.9 <= f.params["scale"] <= 1.2
            assert 2 <= f.params["feather"] <= 8
            for b in (s, t):
                assert body[b[0]:b[2], b[1]:b[3]].mean() > 0.9, (seed, b)


def test_automatic_placement_avoids_border_and_burned_in_text():
    rng = np.random.default_rng(0)
    a = np.zeros((400, 500), np.float32)                       # black border
    yy, xx = np.mgrid[:300, :380]
    a[50:350, 60:440] = 100 + 30 * np.sin(yy / 17.0) * np.cos(xx / 23.0) + rng.normal(0, 4, (300, 380))
    a[70:100, 380:420] = 255                                   # a burned-in marker, flat and bright
    image = Image.from_array(a, modality="XR")
    body = E.placement_mask(a, "XR")
    assert not body[:50].any() and not body[:, :60].any() and not body[70:100, 380:420].any()
    for seed in range(20):
        for kind in ("inpaint", "copymove"):
            f = forge(kind, image, seed=seed)
            for b in (f.params["box"], f.params.get("source_box") or f.params["box"]):
                assert b[0] >= 50 and b[1] >= 60 and b[2] <= 350 and b[3] <= 440, (seed, b)
                assert b[2] <= 70 or b[0] >= 100 or b[3] <= 380 or b[1] >= 420, (seed, b)


def test_placement_on_real_radiographs_and_ct(pngs, ct):
    for f in pngs:
        im = load(f)[0]
        body = E.placement_mask(im.pixels, im.modality)
        h, w = im.pixels.shape
        assert 0.3 < body.mean() < 0.95
        assert not body[: int(0.04 * h)].any() and not body[:, : int(0.04 * w)].any()
        for seed in range(3):
            b = E.forge_inpaint(im, seed=seed, noise=False).params["box"]
            assert body[b[0]:b[2], b[1]:b[3]].mean() > 0.9
    body = E.placement_mask(ct.pixels, "CT")
    assert (ct.pixels[body] > -500).mean() > 0.9  # inside the patient, not the air around


def test_volume_slice_edit_has_a_3d_mask(ct):
    vol = Image.from_array(np.stack([ct.pixels] * 5), modality="CT", spacing=(2.0, 0.66, 0.66))
    f = E.forge_contrast(vol, seed=1, k=3)
    assert f.mask.shape == vol.pixels.shape and f.mask[3].any() and not np.delete(f.mask, 3, axis=0).any()
    assert np.array_equal(np.delete(f.pixels, 3, axis=0), np.delete(vol.pixels, 3, axis=0))
    assert f.params["slice"] == 3 and len(f.bbox_voxel) == 6 and f.bbox_voxel[0] == 3
    with pytest.raises(ValueError, match="outside the volume"):
        E.forge_contrast(vol, k=5)


# ------------------------------------------------------------------------------ splice

def test_splice_is_scaled_and_intensity_matched(pngs, cr):
    target, donor = load(pngs[0])[0], cr                      # 8-bit PNG <- 16-bit CR (another detector)
    for seed in range(4):
        f = E.forge_splice(target, donor, seed=seed)
        p = f.params
        assert p["donor"] == str(donor.path) and p["scale_from"] == "image width"
        assert abs(p["scale"] - target.pixels.shape[1] / donor.pixels.shape[1]) < 1e-5
        b = p["box"]
        db = p["donor_box"]
        assert abs((b[3] - b[1]) - (db[3] - db[1]) * p["scale"]) <= 1.5
        changed = f.pixels != target.pixels
        assert not (changed & (f.mask == 0)).any()
        inner = core(b, target.pixels.shape, inset=p["feather"] + 1)
        new, old = f.pixels[b[0]:b[2], b[1]:b[3]], target.pixels[b[0]:b[2], b[1]:b[3]]
        assert abs(new.mean() - old.mean()) < 0.2 * old.std() + 1
        assert 0.6 < new.std() / old.std() < 1.6
        if seed == 0:  # without matching, the 16-bit donor's values would stand out
            raw = E.forge_splice(target, donor, seed=seed, match=False, noise=False).pixels[b[0]:b[2], b[1]:b[3]]
            assert abs(raw.mean() - old.mean()) > 10 * old.std()
        # noise matched to the target's surroundings (the donor's 16-bit noise is 100x larger)
        n_in, n_out = noise(f.pixels, inner), noise(target.pixels, ring(b, target.pixels.shape))
        assert 1 / 1.5 < n_in / n_out < 1.5, (seed, n_in, n_out)


def test_splice_uses_pixel_spacing_when_known(cr):
    a = cr.pixels[::2, ::2]
    target = Image.from_array(a, modality="CR", spacing=(0.2, 0.2))
    donor = Image.from_array(cr.pixels, modality="CR", spacing=(0.1, 0.1), name="donor.dcm")
    f = E.forge_splice(target, donor, seed=1, box=(800, 700, 900, 820), match=False, noise=False)
    assert f.params["scale"] == 0.5 and f.params["scale_from"] == "pixel spacing"
    b = f.params["box"]
    assert (b[2] - b[0], b[3] - b[1]) == (50, 60)
    assert f.params["donor"] == "donor.dcm"


# ------------------------------------------------------------------------------ in-painting

def test_classic_inpainting_has_the_surroundings_noise(cr, pngs):
    cases = [(cr, 0), (cr, 1)] + [(load(p)[0], 0) for p in pngs[:4]]
    for image, seed in cases:
        f = E.forge_inpaint(image, seed=seed)
        b = f.params["box"]
        n_in = noise(f.pixels, core(b, image.pixels.shape))
        n_out = noise(image.pixels, ring(b, image.pixels.shape))
        assert 1 / 1.5 < n_in / n_out < 1.5, (image.path, n_in, n_out)
        plain = E.forge_inpaint(image, seed=seed, noise=False)
        assert noise(plain.pixels, core(b, image.pixels.shape)) < 0.5 * n_out  # a plain fill is noise-free
        # no seam: the smoothed jump across the box edge is about what the original has there
        assert seam(plain.pixels, b) < 2 * seam(image.pixels, b) + 1, (image.path, seam(plain.pixels, b))
        assert not ((f.pixels != image.pixels) & (f.mask == 0)).any()
        # the finding is gone: the fill does not copy what was in the box
        r0, c0, r1, c1 = b
        smooth = cv2.GaussianBlur(f.pixels, (0, 0), 2)[r0:r1, c0:c1]
        assert not np.allclose(smooth, cv2.GaussianBlur(image.pixels, (0, 0), 2)[r0:r1, c0:c1], atol=1)


def test_learned_inpainting_plumbing(cr, monkeypatch):
    """The context patch, mask and sketch handed to gan.render, and its result pasted back."""
    gan = pytest.importorskip("medforensics.forge.gan")
    calls = {}

    def fake_render(context, mask, sketch, *, seed=0, model=None):
        assert context.ndim == 2 and mask.dtype == bool and sketch.shape == context.shape
        assert mask.any() and not mask[0].any() and not mask[:, 0].any()  # context around the region
        calls.update(shape=context.shape, n=int(mask.sum()), seed=seed, model=model,
                     sketch_in=float(sketch[mask].mean()))
        return np.where(mask, sketch + 7.0, context).astype(context.dtype)

    monkeypatch.setattr(gan, "render", fake_render)
    box = (900, 800, 960, 880)
    f = E.forge_inpaint(cr, box=box, method="learned", seed=4, noise=False, model="m")
    assert f.method == "learned" and calls["n"] == 60 * 80 and calls["model"] == "m"
    assert calls["shape"][0] >= 60 + 32 and calls["shape"][1] >= 80 + 32
    assert not ((f.pixels != cr.pixels) & (f.mask == 0)).any()
    assert abs(f.pixels[900:960, 800:880].mean() - (calls["sketch_in"] + 7)) < 1
    r = cr.pixels[880:980, 780:900]
    assert r.min() - 10 < calls["sketch_in"] < r.max() + 10  # the sketch continues the surroundings

    def missing(*a, **k):
        raise MedForensicsError("/x/inpaint2d_xray.safetensors", "in-painting model not found")

    monkeypatch.setattr(gan, "render", missing)
    with pytest.raises(MedForensicsError, match="^learned in-painting needs the in-painting model"):
        E.forge_inpaint(cr, box=box, method="learned")


def test_learned_inpainting_through_the_real_network(cr, tmp_path):
    """gan.render with a real (small, untrained) generator from a checkpoint file: shapes, units
    and the paste-back work whatever model ships."""
    gan = pytest.importorskip("medforensics.forge.gan")
    pytest.importorskip("torch")
    from medforensics.learn.checkpoint import save_checkpoint

    ckpt = save_checkpoint(gan.InpaintUNet(dim=2, width=8, levels=2), tmp_path / "tiny.safetensors",
                           {"architecture": "InpaintUNet", "config": {"dim": 2, "width": 8, "levels": 2}})
    box = (1000, 1150, 1100, 1250)
    f = E.forge_inpaint(cr, box=box, method="learned", model=str(ckpt), seed=1)
    assert f.method == "learned" and tuple(f.bbox_voxel) == box
    assert np.isfinite(f.pixels).all() and not ((f.pixels != cr.pixels) & (f.mask == 0)).any()
    inside = f.pixels[box[0]:box[2], box[1]:box[3]]
    ring_vals = cr.pixels[ring(box, cr.pixels.shape)]
    assert ring_vals.min() - 3 * ring_vals.std() < inside.mean() < ring_vals.max() + 3 * ring_vals.std()
    n_in, n_out = noise(f.pixels, core(box, cr.pixels.shape)), noise(cr.pixels, ring(box, cr.pixels.shape))
    assert 1 / 1.5 < n_in / n_out < 1.5
    assert np.array_equal(E.forge_inpaint(cr, box=box, method="learned", model=str(ckpt), seed=1).pixels, f.pixels)


def test_learned_inpainting_with_the_real_model_or_a_clear_error(cr):
    box = (1000, 1150, 1100, 1250)
    try:
        import medforensics.forge.gan  # noqa: F401
        have_gan = True
    except ImportError:
        have_gan = False
    if not (have_gan and GAN_CHECKPOINT.is_file()):
        with pytest.raises(MedForensicsError, match="learned in-painting needs the in-painting model") as e:
            E.forge_inpaint(cr, box=box, method="learned")
        assert "\n" not in str(e.value)
        return
    f = E.forge_inpaint(cr, box=box, method="learned", seed=1)
    classic = E.forge_inpaint(cr, box=box, method="classic", seed=1)
    assert f.method == "learned" and not np.array_equal(f.pixels, classic.pixels)
    assert not ((f.pixels != cr.pixels) & (f.mask == 0)).any() and tuple(f.bbox_voxel) == box
    n_in, n_out = noise(f.pixels, core(box, cr.pixels.shape)), noise(cr.pixels, ring(box, cr.pixels.shape))
    assert 1 / 1.5 < n_in / n_out < 1.5
    assert np.array_equal(E.forge_inpaint(cr, box=box, method="learned", seed=1).pixels, f.pixels)


# ------------------------------------------------------------------------------ local edits

def test_local_edits_do_what_they_say(cr):
    box = (900, 700, 1000, 820)
    inner = core(box, cr.pixels.shape, inset=12)
    f = E.forge_intensity(cr, box=box, offset=500.0, feather=8)
    assert np.allclose((f.pixels - cr.pixels)[inner], 500.0)
    d = (f.pixels - cr.pixels)[900:1000, 700:820]
    assert 0 < d[0, 0] < d[50, 60]                             # soft edges: less at the border
    f = E.forge_contrast(cr, box=box, factor=0.5, feather=4)
    assert f.pixels[inner].std() < 0.6 * cr.pixels[inner].std()
    f = E.forge_resample(cr, box=box, scale=1.2, angle=0, feather=4)
    # zoomed about the box centre: a pixel d px from the centre now shows what was d/1.2 px away
    rc, cc = (900 + 999) / 2, (700 + 819) / 2
    for r, c in ((950, 770), (930, 742), (975, 790)):
        src = ndi.map_coordinates(cr.pixels.astype(np.float64), [[rc + (r - rc) / 1.2], [cc + (c - cc) / 1.2]], order=1)
        assert abs(f.pixels[r, c] - src[0]) < 1, (r, c)
    assert noise(f.pixels, inner) < 0.9 * noise(cr.pixels, inner)  # interpolation smooths the noise


# ------------------------------------------------------------------------------ command line

def test_cli_writes_three_new_files_and_refuses_to_overwrite(tmp_path, cr, run_cli):
    src = Path(get_testdata_file("RG1_UNCR.dcm"))
    before = src.read_bytes()
    r = run_cli("forge", "copymove", src, "--out", "fake.dcm", "--seed", 5, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "box:" in r.stdout and "centre:" in r.stdout
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["fake.dcm", "fake.groundtruth.json", "fake.mask.png"]
    truth = json.loads((tmp_path / "fake.groundtruth.json").read_text())
    assert truth["kind"] == "copymove" and truth["params"]["seed"] == 5 and truth["input"] == str(src)
    b = truth["bbox_voxel"]
    assert f"{b[0]},{b[1]} -> {b[2]},{b[3]}" in r.stdout
    mask = cv2.imread(str(tmp_path / "fake.mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    out = load(tmp_path / "fake.dcm")[0]
    changed = out.pixels != cr.pixels
    assert changed.sum() > 0.9 * mask.sum() and not (changed & ~mask).any()
    assert box_of(mask) == tuple(b)
    assert src.read_bytes() == before
    # any one of the three outputs existing: refused, nothing written
    (tmp_path / "fake.mask.png").unlink()
    (tmp_path / "fake.dcm").unlink()
    r = run_cli("forge", "copymove", src, "--out", "fake.dcm", cwd=tmp_path)
    assert r.returncode == 2 and "already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.groundtruth.json"]


def test_cli_splice_inpaint_edit_on_png(tmp_path, pngs, run_cli):
    img, donor = pngs[0], pngs[1]
    r = run_cli("forge", "splice", img, "--donor", donor, "--out", "s.png", "--seed", 2, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r2 = run_cli("forge", "inpaint", img, "--out", "i.png", "--box", "200,150,250,210", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    assert "200,150 -> 250,210" in r2.stdout
    r3 = run_cli("forge", "edit", img, "--out", "e.tif", "--kind", "resample", "--scale", "1.2", cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr
    orig = load(img)[0].pixels
    for stem, ext in (("s", "png"), ("i", "png"), ("e", "tif")):
        out = load(tmp_path / f"{stem}.{ext}")[0]
        mask = cv2.imread(str(tmp_path / f"{stem}.mask.png"), cv2.IMREAD_GRAYSCALE) > 0
        assert out.pixels.shape == orig.shape and mask.any()
        assert not ((out.pixels != orig) & ~mask).any()
        gt = json.loads((tmp_path / f"{stem}.groundtruth.json").read_text())
        assert gt["kind"] == {"s": "splice", "i": "inpaint", "e": "resample"}[stem]
    assert json.loads((tmp_path / "s.groundtruth.json").read_text())["params"]["donor"] == str(donor)


@pytest.mark.parametrize("args, code, words", [
    (["inpaint", "{cr}", "--out", "x.dcm", "--box", "1,2,3"], 2, "--box must be 4 whole numbers"),
    (["inpaint", "{cr}", "--out", "x.dcm", "--box", "0,0,5000,10"], 2, "does not fit"),
    (["inpaint", "{cr}", "--out", "x.png"], 2, "written as DICOM"),
    (["inpaint", "{cr}", "--out", "x.dcm", "--method", "magic"], 2, "--method must be one of"),
    (["edit", "{cr}", "--out", "x.dcm", "--kind", "blur"], 2, "--kind must be one of"),
    (["edit", "{cr}", "--out", "x.dcm", "--kind", "contrast", "--angle", "3"], 2, "does not apply"),
    (["copymove", "missing.dcm", "--out", "x.dcm"], 1, "no such file"),
    (["copymove", "{cr}", "--out", "nofolder/x.dcm"], 2, "does not exist"),
    (["copymove", "{cr}", "--out", "x.dcm", "--slice", "2"], 2, "2D image"),
])
def test_cli_errors_are_one_line(tmp_path, run_cli, args, code, words):
    src = get_testdata_file("RG1_UNCR.dcm")
    r = run_cli("forge", *[a.format(cr=src) for a in args], cwd=tmp_path)
    err = r.err
    assert r.code == code, (r.code, err)
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_cli_learned_inpaint_works_or_says_what_is_missing(tmp_path, run_cli):
    src = get_testdata_file("CT_small.dcm")
    r = run_cli("forge", "inpaint", src, "--out", "l.dcm", "--method", "learned", "--box", "40,40,70,70", cwd=tmp_path)
    if GAN_CHECKPOINT.is_file():
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / "l.groundtruth.json").read_text())["method"] == "learned"
    else:
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
        assert "learned in-painting needs the in-painting model" in r.stderr
        assert list(tmp_path.iterdir()) == []


def test_cli_volume_slice_writes_a_3d_mask(tmp_path, shared_data, run_cli):
    src = shared_data / "ct" / "nifti" / "example_ct_sm.nii.gz"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    r = run_cli("forge", "edit", src, "--out", "v.nii.gz", "--kind", "intensity", "--offset", "80", "--slice", "5",
                "--seed", "1", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "slice, row, column" in r.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.groundtruth.json", "v.mask.npz", "v.nii.gz"]
    mask = np.load(tmp_path / "v.mask.npz")["mask"]
    before, after = load(src)[0].pixels, load(tmp_path / "v.nii.gz")[0].pixels
    assert mask.shape == before.shape and np.nonzero(mask.any(axis=(1, 2)))[0].tolist() == [5]
    changed = np.abs(after - before) > 1e-3
    assert changed.any() and not (changed & (mask == 0)).any()
