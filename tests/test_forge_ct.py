"""CT-GAN style nodule injection and removal (forge.ct), LIDC-IDRI annotations (forge.lidc), and the
``forge inject`` / ``forge remove`` commands, on the real LIDC-IDRI series in ../shared/data."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from medforensics.core import Image, MedForensicsError
from medforensics.forge import ct
from medforensics.forge.lidc import nodules_for, read_annotations
from medforensics.io import load_series
from medforensics.io.write import write_like

IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


# ---------------------------------------------------------------------------------------------
# fixtures: each series is loaded once, each forgery made once


@pytest.fixture(scope="module")
def series(lidc_series_dir: Path) -> Image:
    return load_series(sorted(lidc_series_dir.glob("*.dcm")))


@pytest.fixture(scope="module")
def small_dir(shared_data: Path) -> Path:
    d = next((shared_data / "ct" / "lidc-idri-small" / "LIDC-IDRI-0003").rglob("*.dcm"), None)
    if d is None:
        pytest.skip("lidc-idri-small/LIDC-IDRI-0003 not found in shared data")
    return d.parent


@pytest.fixture(scope="module")
def small(small_dir: Path) -> Image:
    return load_series(sorted(small_dir.glob("*.dcm")))


@pytest.fixture(scope="module")
def site(series: Image) -> tuple[int, int, int]:
    return ct.choose_location(series, 14.0, 5)


@pytest.fixture(scope="module")
def injected(series: Image, site) -> dict:
    return {t: ct.inject(series, center_voxel=site, diameter_mm=14.0, nodule_type=t, seed=2) for t in ct.NODULE_TYPES}


@pytest.fixture(scope="module")
def lidc_nodules(series: Image) -> list:
    return nodules_for(series)


@pytest.fixture(scope="module")
def removed(series: Image, lidc_nodules):
    return ct.remove(series, nodule=lidc_nodules[0], seed=1)


def _cube(f) -> tuple[slice, ...]:
    b = f.bbox_voxel
    return tuple(slice(b[d], b[d + 3]) for d in range(3))


def _ball(shape, center, spacing, radius_mm) -> np.ndarray:
    g = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, center, spacing)], indexing="ij")
    return np.sqrt(sum(x ** 2 for x in g)) <= radius_mm


def _residual(vol: np.ndarray) -> np.ndarray:
    v = vol.astype(np.float64)
    return v - ndi.gaussian_filter(v, (0, 1.5, 1.5))


def _mad(x: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def _nps_centroid(resid: np.ndarray, mask: np.ndarray, p: int = 8) -> float:
    """Mean radial frequency (cycles/pixel) of the power spectrum of p x p patches inside mask."""
    patches = [resid[k, i:i + p, j:j + p] for k in range(mask.shape[0])
               for i in range(0, mask.shape[1] - p + 1, p // 2) for j in range(0, mask.shape[2] - p + 1, p // 2)
               if mask[k, i:i + p, j:j + p].all()]
    assert len(patches) >= 4, "too few patches to measure the NPS"
    arr = np.array(patches) - np.mean(patches, axis=(1, 2), keepdims=True)
    ps = np.mean(np.abs(np.fft.fft2(arr)) ** 2, axis=0)
    f = np.sqrt(np.fft.fftfreq(p)[:, None] ** 2 + np.fft.fftfreq(p)[None, :] ** 2)
    return float((f * ps).sum() / ps.sum())


def _adjacent_correlation(residuals: list, masks: list) -> float:
    """Correlation of the residual at (k, i, j) with (k + 1, i, j), pooled over ``masks`` (True where
    both voxels count; the last slice is ignored)."""
    a, b = [], []
    for r, m in zip(residuals, masks):
        m = m.copy()
        m[-1] = False
        a.append(r[m])
        b.append(np.roll(r, -1, axis=0)[m])
    return float(np.corrcoef(np.concatenate(a), np.concatenate(b))[0, 1])


def _phantom(seed: int = 0, z_sigma: float = 0.0) -> Image:
    """A small chest phantom (no real data needed): air, a soft-tissue body, two lungs, a
    vessel, a vertebra, correlated noise of 15 HU; 2.5 mm slices of 0.7 mm pixels."""
    rng = np.random.default_rng(seed)
    n, h, w = 24, 160, 160
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - 80) / 70.0) ** 2 + ((xx - 80) / 76.0) ** 2 < 1
    lungs = (((yy - 78) / 46.0) ** 2 + ((xx - 48) / 26.0) ** 2 < 1) | (((yy - 78) / 46.0) ** 2 + ((xx - 112) / 26.0) ** 2 < 1)
    sl = np.where(body, 40.0, -1000.0)
    sl = np.where(lungs, -860.0, sl)
    vessel = (np.abs(xx - 40) < 2) & lungs
    sl = np.where(vessel, 30.0, sl)
    sl = np.where((yy - 144) ** 2 + (xx - 80) ** 2 < 16, 700.0, sl)  # a vertebra
    noise = ndi.gaussian_filter(rng.standard_normal((n, h, w)), (z_sigma, 0.8, 0.8))
    vol = np.round(sl[None] + 15.0 * noise / noise.std())
    affine = np.array([[0, 0, 0.7, -56.0], [0, 0.7, 0, -56.0], [2.5, 0, 0, -30.0], [0, 0, 0, 1.0]])
    return Image.from_array(vol, modality="CT", spacing=(2.5, 0.7, 0.7), affine=affine, name="phantom")


def test_inject_and_remove_on_a_phantom() -> None:
    image = _phantom()
    site = ct.choose_location(image, 12.0, 1)
    assert image.pixels[site] < -700  # in a lung, off the vessel
    f = ct.inject(image, center_voxel=site, diameter_mm=12.0, nodule_type="solid", seed=1)
    changed = f.pixels != image.pixels
    outside = np.ones(image.pixels.shape, bool)
    outside[_cube(f)] = False
    assert changed.sum() > 50 and not changed[outside].any() and np.array_equal(changed, f.mask > 0)
    k, i, j = site
    assert -60 < f.pixels[k, i - 1:i + 2, j - 1:j + 2].mean() < 160
    g = ct.remove(f_image := Image.from_array(f.pixels, modality="CT", spacing=image.spacing, affine=image.affine),
                  center_voxel=site, diameter_mm=12.0, seed=2)
    assert g.kind == "remove" and g.params["region"] == "sphere"
    assert g.pixels[k, i - 1:i + 2, j - 1:j + 2].mean() < -700 < f_image.pixels[k, i - 1:i + 2, j - 1:j + 2].mean() + 800


def test_noise_model_recovers_known_noise() -> None:
    image = _phantom(3)  # noise: 15 HU std, white noise blurred by a Gaussian of 0.8 pixels
    nm = ct.noise_model(image.pixels, range(8, 16), (78, 80), tissue="soft")
    assert nm.n_patches >= 20
    assert np.all(np.abs(nm.sigma / 15.0 - 1.0) < 0.15), nm.sigma
    truth = ndi.gaussian_filter(np.random.default_rng(9).standard_normal((64, 96, 96)), (0, 0.8, 0.8))
    synth = nm.synthesize((64, 96, 96), np.random.default_rng(10))
    assert abs(synth.std() / float(np.mean(nm.sigma)) - 1.0) < 0.05
    centroid = [_nps_centroid(x, np.ones(x.shape, bool), p=16) for x in (synth, truth)]
    assert abs(centroid[0] / centroid[1] - 1.0) < 0.15, centroid
    assert nm.rho < 0.1  # independent slices
    with pytest.raises(MedForensicsError, match="lung"):
        ct.noise_model(np.full((3, 64, 64), 40.0), range(3), (32, 32), tissue="lung")
    # slices that share noise (overlapping reconstructions): the correlation is measured and made
    corr = _phantom(4, z_sigma=0.7)
    nm = ct.noise_model(corr.pixels, range(8, 16), (78, 80), tissue="soft")
    field = ndi.gaussian_filter(np.random.default_rng(11).standard_normal((16, 96, 96)), (0.7, 0.8, 0.8))
    ones = [np.ones(field.shape, bool)]
    truth_rho = _adjacent_correlation([_residual(field)], ones)
    synth = nm.synthesize((16, 96, 96), np.random.default_rng(12))
    assert truth_rho > 0.3 and abs(nm.rho - truth_rho) < 0.1, (nm.rho, truth_rho)
    assert abs(_adjacent_correlation([_residual(synth)], ones) - truth_rho) < 0.1


# ---------------------------------------------------------------------------------------------
# LIDC-IDRI annotations


def test_lidc_annotations_of_0001(series: Image, lidc_series_dir: Path, lidc_nodules) -> None:
    xml = next(lidc_series_dir.glob("*.xml"))
    marks = read_annotations(xml)
    assert len(marks) == 13  # 4 + 1 + 4 + 4 marks by the four readers
    assert {m.series_uid for m in marks} == {series.uid}
    big = [m for m in marks if not m.small]
    assert len(big) == 4 and sorted(m.malignancy for m in big) == [4, 5, 5, 5]
    # Consensus: the large nodule (all four readers) and three nodules under 3 mm (three readers each).
    assert len(lidc_nodules) == 4
    n1 = lidc_nodules[0]
    assert n1.id == 1 and n1.n_readers == 4 and not n1.small
    assert n1.malignancy == pytest.approx(4.75) and n1.malignant
    # Outlines on z -125 ... -105 mm (slices 86-94 of a series starting at -340 mm, 2.5 mm apart),
    # centred near column 316, row 367.
    k, i, j = n1.center_voxel
    assert 88 <= k <= 92 and abs(i - 367) <= 3 and abs(j - 316) <= 3
    assert n1.bbox_voxel[0] == 86 and n1.bbox_voxel[3] == 95
    assert 20.0 < n1.diameter_mm < 40.0
    assert n1.center_mm[2] == pytest.approx(series.meta["slice_positions"][k])
    # the readers' outlines as a mask over the box: the tumour (soft tissue) is inside it
    assert n1.mask.shape == tuple(n1.bbox_voxel[d + 3] - n1.bbox_voxel[d] for d in range(3))
    b = n1.bbox_voxel
    box = series.pixels[b[0]:b[3], b[1]:b[4], b[2]:b[5]]
    assert 3.0 < n1.mask.sum() * np.prod(series.spacing) / 1000 < 20.0  # mL
    assert np.median(box[n1.mask]) > -300 and np.median(box[~n1.mask]) < -600
    small = sorted((n.center_voxel for n in lidc_nodules[1:]))
    expected = [(66, 272, 403), (66, 317, 392), (76, 166, 188)]  # (z, y, x) of the point marks: -175, -175, -150 mm
    for got, want in zip(small, expected):
        assert got[0] == want[0] and abs(got[1] - want[1]) <= 2 and abs(got[2] - want[2]) <= 2
    assert all(n.small and n.n_readers == 3 and n.malignancy is None and not n.malignant for n in lidc_nodules[1:])


def test_lidc_partial_series_found_by_series_uid(shared_data: Path, small: Image) -> None:
    # The 11-slice sub-series has no XML of its own: it is found under lidc-idri/ by SeriesInstanceUID.
    nods = nodules_for(small)
    assert len(nods) == 1
    n = nods[0]
    assert n.n_readers == 4 and n.malignant and n.center_voxel[0] == 5
    d2 = next((shared_data / "ct" / "lidc-idri-small" / "LIDC-IDRI-0002").rglob("*.dcm"), None)
    if d2 is not None:
        s2 = load_series(sorted(d2.parent.glob("*.dcm")))
        n2 = nodules_for(s2)
        # Only nodules whose marked slices are all present: the large one (z -120 ... -87) is cut off.
        assert n2 and all(n.small for n in n2)
        assert all(n.bbox_voxel[0] >= 0 and n.bbox_voxel[3] <= s2.pixels.shape[0] for n in n2)


def test_read_annotations_rejects_other_xml(tmp_path: Path) -> None:
    p = tmp_path / "other.xml"
    p.write_text("<root><a/></root>")
    with pytest.raises(MedForensicsError, match="not an LIDC-IDRI"):
        read_annotations(p)
    (tmp_path / "broken.xml").write_text("<root>")
    with pytest.raises(MedForensicsError):
        read_annotations(tmp_path / "broken.xml")
    bad = ('<LidcReadMessage xmlns="http://www.nih.gov"><readingSession><unblindedReadNodule><noduleID>N</noduleID>'
           '<roi><imageZposition>-1</imageZposition><edgeMap><xCoord>x</xCoord><yCoord>2</yCoord></edgeMap></roi>'
           '</unblindedReadNodule></readingSession></LidcReadMessage>')
    (tmp_path / "bad.xml").write_text(bad)
    with pytest.raises(MedForensicsError, match="not a number"):
        read_annotations(tmp_path / "bad.xml")
    (tmp_path / "good.xml").write_text(bad.replace("<xCoord>x</xCoord>", "<xCoord>7</xCoord>"))
    (mark,) = read_annotations(tmp_path / "good.xml")
    assert mark.small and mark.rois[0].points.tolist() == [[7.0, 2.0]] and mark.malignancy is None


# ---------------------------------------------------------------------------------------------
# locations


def test_choose_location_in_lung_parenchyma(series: Image, site) -> None:
    k, i, j = site
    half = ct._half_extent(np.array(series.spacing), 14.0)
    assert half[0] <= k < series.pixels.shape[0] - half[0]  # the cube fits between first and last slice
    local = series.pixels[k, i - 5:i + 6, j - 5:j + 6]
    assert -950 < local.mean() < -600 and local.max() < -300  # lung, no vessel right there
    step = 4
    lung = ct.lung_mask(series.pixels[:, ::step, ::step], spacing=(2.5, 0.703 * step, 0.703 * step))
    assert lung[k, i // step, j // step]
    litres = lung.sum() * 2.5 * (0.703 * step) ** 2 / 1e6
    assert 1.5 < litres < 9.0  # both lungs of an adult
    assert ct.choose_location(series, 14.0, 5) == site  # reproducible


# ---------------------------------------------------------------------------------------------
# injection


@pytest.mark.parametrize("nodule_type", ct.NODULE_TYPES)
def test_inject_changes_only_inside_cube(series: Image, injected, site, nodule_type) -> None:
    f = injected[nodule_type]
    assert f.kind == "inject" and f.method == "classic" and f.center_voxel == tuple(site)
    assert f.center_mm == series.voxel_to_mm(site)
    assert f.pixels.shape == series.pixels.shape and f.mask.shape == series.pixels.shape
    changed = f.pixels != series.pixels
    assert np.array_equal(changed, f.mask.astype(bool))
    assert changed.sum() > 200
    outside = np.ones(series.pixels.shape, bool)
    outside[_cube(f)] = False
    assert not changed[outside].any()
    assert np.array_equal(f.pixels[outside], series.pixels[outside])
    cube = f.pixels[_cube(f)]
    assert np.array_equal(cube, np.round(cube))  # the stored grid (slope 1)
    for dk in range(cube.shape[0]):
        k = f.bbox_voxel[0] + dk
        assert series.pixels[k].min() <= cube[dk].min() and cube[dk].max() <= series.pixels[k].max()
    p = f.params
    assert p["diameter_mm"] == 14.0 and p["nodule_type"] == nodule_type and p["seed"] == 2
    assert p["cube_shape"] == [s.stop - s.start for s in _cube(f)]
    # anisotropic spacing: the cube is about as deep in mm as it is wide
    depth_mm, width_mm = p["cube_shape"][0] * 2.5, p["cube_shape"][1] * 0.703
    assert 0.7 < depth_mm / width_mm < 1.4


def test_nodule_types_differ_in_hu(series: Image, injected, site) -> None:
    sp = np.array(series.spacing)
    core = {}
    for t, f in injected.items():
        cube = _cube(f)
        c = [s - cb.start for s, cb in zip(site, cube)]
        ball = _ball(f.pixels[cube].shape, c, sp, 2.0)
        core[t] = float(f.pixels[cube][ball].mean())
    before = float(series.pixels[_cube(injected["solid"])][_ball(series.pixels[_cube(injected["solid"])].shape,
                   [s - cb.start for s, cb in zip(site, _cube(injected["solid"]))], sp, 2.0)].mean())
    assert before < -600
    assert -60 < core["solid"] < 160, core
    assert -760 < core["ground-glass"] < -340, core
    assert -250 < core["part-solid"] < 160, core  # solid core
    # part-solid: a ground-glass halo around the core
    f = injected["part-solid"]
    cube = _cube(f)
    c = [s - cb.start for s, cb in zip(site, cube)]
    shape = f.pixels[cube].shape
    halo = _ball(shape, c, sp, 6.0) & ~_ball(shape, c, sp, 4.5)
    halo &= np.arange(shape[0])[:, None, None] == c[0]
    assert -800 < float(np.median(f.pixels[cube][halo])) < -300
    assert core["solid"] - core["ground-glass"] > 300


def test_injected_noise_matches_real_tissue(series: Image, lidc_nodules) -> None:
    # Three 20 mm solid nodules at chosen places; noise = robust spread of the high-pass residual in
    # the middle of the nodule (a 6 mm ball on the three central slices), pooled over all three.
    res_inj, inside_all, soft, soft_res, soft_masks = [], [], [], [], []
    for seed in (1, 2, 3):
        f = ct.inject(series, diameter_mm=20.0, nodule_type="solid", seed=seed)
        cube = _cube(f)
        e = f.pixels[cube]
        c = [s - cb.start for s, cb in zip(f.center_voxel, cube)]
        inside = _ball(e.shape, c, np.array(series.spacing), 6.0) & (np.abs(np.arange(e.shape[0]) - c[0]) <= 1)[:, None, None]
        assert inside.sum() > 300 and (f.mask[cube][inside] > 0).all()
        res_inj.append(_residual(e))
        inside_all.append(inside)
        # reference 1: soft tissue (muscle, organs) on the same slices
        v = series.pixels[cube[0]]
        low = ndi.uniform_filter(v, (1, 9, 9))
        sd = np.sqrt(ndi.uniform_filter((v - low) ** 2, (1, 9, 9)))
        smask = ndi.binary_erosion((low > 0) & (low < 100) & (sd < 40), IN_PLANE, iterations=4)
        soft.append(_residual(v)[smask])
        soft_res.append(_residual(v))
        soft_masks.append(smask)
    noise_inj = _mad(np.concatenate([r[m] for r, m in zip(res_inj, inside_all)]))
    noise_soft = _mad(np.concatenate(soft))
    # reference 2: the real solid tumour of this patient (LIDC nodule 1)
    k, i, j = lidc_nodules[0].center_voxel
    real = series.pixels[k - 3:k + 4, i - 40:i + 40, j - 40:j + 40]
    g = ndi.gaussian_filter(real, (0, 2, 2))
    rmask = ndi.binary_erosion((g > 0) & (g < 150), IN_PLANE, iterations=3)
    r_real = _residual(real)
    noise_real = _mad(r_real[rmask])
    for ref in (noise_soft, noise_real):
        assert abs(noise_inj / ref - 1.0) < 0.30, (noise_inj, noise_soft, noise_real)
    # noise texture: the NPS centroid matches the real tumour's
    c_inj = np.mean([_nps_centroid(r, m) for r, m in zip(res_inj, inside_all)])
    c_real = _nps_centroid(r_real, rmask)
    assert abs(c_inj / c_real - 1.0) < 0.25, (c_inj, c_real)
    # and across slices: adjacent slices' texture is as correlated as in real soft tissue (~0.4)
    corr_inj = _adjacent_correlation(res_inj, [m & np.roll(m, -1, axis=0) for m in inside_all])
    corr_soft = _adjacent_correlation(soft_res, [m & np.roll(m, -1, axis=0) for m in soft_masks])
    assert 0.2 < corr_soft < 0.7 and abs(corr_inj - corr_soft) < 0.15, (corr_inj, corr_soft)


# ---------------------------------------------------------------------------------------------
# removal


def test_remove_lidc_nodule(series: Image, lidc_nodules, removed) -> None:
    n = lidc_nodules[0]
    f = removed
    assert f.kind == "remove" and f.center_voxel == n.center_voxel and f.params["nodule"]["id"] == 1
    changed = f.pixels != series.pixels
    assert np.array_equal(changed, f.mask.astype(bool))
    outside = np.ones(series.pixels.shape, bool)
    outside[_cube(f)] = False
    assert not changed[outside].any()
    cube = _cube(f)
    # only the readers' outline and a 2.5 mm margin (+1 mm soft edge) are painted over: the chest
    # wall and vessels beyond it are kept
    assert f.params["region"] == "outline"
    outline = np.zeros(series.pixels.shape, bool)
    b = n.bbox_voxel
    outline[b[0]:b[3], b[1]:b[4], b[2]:b[5]] = n.mask
    dist = ndi.distance_transform_edt(~outline[cube], sampling=series.spacing)
    assert dist[changed[cube]].max() < 3.5
    c = [s - cb.start for s, cb in zip(n.center_voxel, cube)]
    core = _ball(series.pixels[cube].shape, c, np.array(series.spacing), 0.3 * n.diameter_mm)
    before, after = float(series.pixels[cube][core].mean()), float(f.pixels[cube][core].mean())
    assert before > -150  # the solid tumour
    assert -950 < after < -650, after  # lung parenchyma now
    # the painted lung has lung-like noise: compare with real lung around
    e, o = f.pixels[cube], series.pixels[cube]
    inner = ndi.binary_erosion(f.mask[cube] > 0, IN_PLANE, iterations=3)
    low = ndi.uniform_filter(o, (1, 7, 7))
    lung = (low < -700) & (low > -950) & ~ndi.binary_dilation(f.mask[cube] > 0, IN_PLANE, iterations=6)
    assert inner.sum() > 1000 and lung.sum() > 1000
    r_e, r_o = _residual(e), _residual(o)
    ratio = _mad(r_e[inner]) / _mad(r_o[lung])
    assert 0.7 < ratio < 1.3, ratio
    nps = _nps_centroid(r_e, inner) / _nps_centroid(r_o, lung)
    assert 0.75 < nps < 1.25, nps
    assert f.params["noise"]["tissue"] == "lung"


def test_remove_needs_a_target(series: Image) -> None:
    with pytest.raises(ValueError, match="diameter"):
        ct.remove(series, center_voxel=(60, 256, 256))
    with pytest.raises(ValueError):
        ct.remove(series)
    with pytest.raises(MedForensicsError, match="outside the volume"):
        ct.remove(series, center_voxel=(60, 600, 10), diameter_mm=8)


def test_inject_rejects_bad_input(series: Image) -> None:
    flat = Image.from_array(np.zeros((64, 64)), modality="CT", spacing=(0.7, 0.7))
    with pytest.raises(MedForensicsError, match="3D"):
        ct.inject(flat)
    with pytest.raises(ValueError, match="nodule_type"):
        ct.inject(series, center_voxel=(60, 200, 200), nodule_type="cystic")
    with pytest.raises(ValueError, match="method"):
        ct.inject(series, center_voxel=(60, 200, 200), method="magic")


def test_inject_by_mm_and_reproducible(small: Image) -> None:
    k, i, j = 5, 300, 150
    mm = small.voxel_to_mm((k, i, j))
    a = ct.inject(small, center_mm=mm, diameter_mm=8.0, seed=7)
    b = ct.inject(small, center_voxel=(k, i, j), diameter_mm=8.0, seed=7)
    assert a.center_voxel == (k, i, j)
    assert np.array_equal(a.pixels, b.pixels)
    c = ct.inject(small, center_voxel=(k, i, j), diameter_mm=8.0, seed=8)
    assert not np.array_equal(a.pixels, c.pixels)


# ---------------------------------------------------------------------------------------------
# the GAN renderer hook


def test_gan_method_uses_forge_gan_render(series: Image, site, monkeypatch) -> None:
    calls = {}

    def render(context, mask, sketch, *, seed=0, model=None):
        calls.update(shape=context.shape, n=int(mask.sum()), seed=seed)
        assert mask.dtype == bool and sketch.shape == context.shape
        return np.where(mask, sketch, context)

    fake = types.ModuleType("medforensics.forge.gan")
    fake.render = render
    import medforensics.forge as forge_pkg
    monkeypatch.setitem(sys.modules, "medforensics.forge.gan", fake)
    monkeypatch.setattr(forge_pkg, "gan", fake, raising=False)
    f = ct.inject(series, center_voxel=site, diameter_mm=14.0, nodule_type="solid", method="gan", seed=4)
    assert calls["seed"] == 4 and calls["n"] > 100 and f.method == "gan"
    assert 0 < f.pixels[tuple(site)] < 120  # the sketch's solid core was rendered
    outside = np.ones(series.pixels.shape, bool)
    outside[_cube(f)] = False
    assert not f.mask[outside].any()
    del fake.render  # a module without render() is refused in one line
    with pytest.raises(MedForensicsError, match="gan"):
        ct.inject(series, center_voxel=site, method="gan")


def test_sketch_is_the_gan_lowpass_of_the_content(small: Image) -> None:
    gan = pytest.importorskip("medforensics.forge.gan", reason="the GAN renderer (forge/gan/) is not installed")
    cube = small.pixels[0:11, 270:330, 120:180]
    parts = ct.nodule_sketch(cube, small.spacing, (5, 30, 30), 12.0, "part-solid", 4)
    assert np.allclose(parts["sketch"], gan.lowpass(cube + parts["delta"]), atol=1e-2)
    gone = ct.removal_sketch(cube, small.spacing, (5, 30, 30), 12.0)
    w = gone["w"]
    assert np.allclose(gone["sketch"], (1 - w) * gan.lowpass(cube) + w * gone["fill"], atol=1e-2)


def test_gan_method_with_the_shipped_model(small: Image) -> None:
    gan = pytest.importorskip("medforensics.forge.gan", reason="the GAN renderer (forge/gan/) is not installed")
    if not hasattr(gan, "default_model_path") or not gan.default_model_path(3).exists():
        pytest.skip("no trained 3D in-painting checkpoint shipped yet: method='gan' end-to-end not run")
    f = ct.inject(small, center_voxel=(5, 300, 150), diameter_mm=10.0, nodule_type="solid", method="gan", seed=1)
    changed = f.pixels != small.pixels
    assert np.array_equal(changed, f.mask.astype(bool)) and changed.sum() > 50
    outside = np.ones(small.pixels.shape, bool)
    outside[_cube(f)] = False
    assert not changed[outside].any()
    assert f.pixels[5, 298:303, 148:153].mean() > -300  # a dense nodule where there was lung
    cube = f.pixels[_cube(f)]
    assert np.array_equal(cube, np.round(cube)) and cube.min() >= small.pixels[_cube(f)].min()


# ---------------------------------------------------------------------------------------------
# writing: pydicom, DCMTK, headers and UIDs


def test_written_series_is_valid_dicom_with_headers_kept(series: Image, injected, tmp_path: Path) -> None:
    f = injected["part-solid"]
    out = tmp_path / "forged"
    files = write_like(series, f.pixels, out)
    assert len(files) == series.pixels.shape[0]
    back = load_series(sorted(out.glob("*.dcm")))
    assert np.array_equal(back.pixels, f.pixels)  # exactly what was forged, nothing else
    changed_slices = sorted(set(np.argwhere(f.mask)[:, 0]))
    for k in changed_slices + [0]:
        src, dst = series.sources[k], out / series.sources[k].name
        a, b = pydicom.dcmread(src), pydicom.dcmread(dst)
        for uid in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            assert getattr(a, uid, None) == getattr(b, uid, None)
        assert [e.tag for e in a if e.tag != 0x7FE00010] == [e.tag for e in b if e.tag != 0x7FE00010]
        assert all(a[t].value == b[t].value for t in a.keys() if t != 0x7FE00010)
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("DCMTK dcmdump not installed: the DCMTK check of the written files was not run")
    for k in changed_slices[:3]:
        r = subprocess.run([dcmdump, str(out / series.sources[k].name)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "E:" not in r.stderr and "error" not in r.stderr.lower(), r.stderr
        assert series.datasets[k].SOPInstanceUID in r.stdout


# ---------------------------------------------------------------------------------------------
# command line (on the 11-slice series, to keep it quick)


def test_cli_inject_writes_series_and_ground_truth(small_dir: Path, small: Image, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "fake"
    r = run_cli("forge", "inject", str(small_dir), "--out", str(out), "--center", "5,300,150", "--diameter", "12",
                 "--type", "ground-glass", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "voxel (k,i,j) (5, 300, 150)" in r.stdout and "mm" in r.stdout and "cube" in r.stdout
    gt = json.loads((tmp_path / "fake.groundtruth.json").read_text())
    mask = np.load(tmp_path / "fake.mask.npz")["mask"]
    assert gt["kind"] == "inject" and gt["center_voxel"] == [5, 300, 150] and gt["params"]["nodule_type"] == "ground-glass"
    assert gt["series_uid"] == small.uid and gt["n_changed"] == int(mask.sum()) > 0
    b = gt["bbox_voxel"]
    inside = np.zeros(mask.shape, bool)
    inside[b[0]:b[3], b[1]:b[4], b[2]:b[5]] = True
    assert not mask[~inside].any()
    back = load_series(sorted(out.glob("*.dcm")))
    assert np.array_equal(back.pixels != small.pixels, mask.astype(bool))
    assert back.uid == small.uid and [d.SOPInstanceUID for d in back.datasets] == [d.SOPInstanceUID for d in small.datasets]
    # a copy outside the data tree has no annotations nearby, unless told where to look
    assert nodules_for(back) == []
    lidc_root = small_dir.parents[3] / "lidc-idri"
    if lidc_root.is_dir():
        assert [n.center_voxel for n in nodules_for(back, search=[lidc_root])] == [n.center_voxel for n in nodules_for(small)]
    # never overwrite: the same command again is refused (exit 2, one line) and changes nothing
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    again = run_cli("forge", "inject", str(small_dir), "--out", str(out), "--center", "5,300,150")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before


def test_cli_never_overwrites(small_dir: Path, tmp_path: Path, monkeypatch, capsys, run_cli) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "a.dcm").write_bytes(b"x")
    (tmp_path / "other.groundtruth.json").write_text("{}")
    (tmp_path / "third.mask.npz").write_bytes(b"x")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    for out in ("taken", "other", "third"):
        code, _, err = run_cli("forge", "inject", str(small_dir), "--out", str(tmp_path / out))
        assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("forge", "remove", str(small_dir), "--out", str(tmp_path / "other"),
                         "--nodule", "1")
    assert code == 2 and "exists" in err
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and not (tmp_path / "other").exists() and not (tmp_path / "third").exists()
    # never into the input folder
    code, _, err = run_cli("forge", "inject", str(small_dir), "--out", str(small_dir / "x"))
    assert code == 2 and "input" in err and not (small_dir / "x").exists()


def test_cli_remove_careless(small_dir: Path, small: Image, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "gone"
    r = run_cli("forge", "remove", str(small_dir), "--out", str(out), "--nodule", "1", "--careless")
    assert r.returncode == 0, r.stderr
    assert "removed nodule 1" in r.stdout
    gt = json.loads((tmp_path / "gone.groundtruth.json").read_text())
    assert gt["kind"] == "remove" and gt["careless"] is True
    back = load_series(sorted(out.glob("*.dcm")))
    k, i, j = gt["center_voxel"]
    assert back.pixels[k, i - 3:i + 4, j - 3:j + 4].mean() < -600 < small.pixels[k, i - 3:i + 4, j - 3:j + 4].mean()
    # careless: new UIDs everywhere and the editor named
    assert back.uid != small.uid
    assert not {d.SOPInstanceUID for d in back.datasets} & {d.SOPInstanceUID for d in small.datasets}
    assert "medforensics" in str(back.datasets[0].SoftwareVersions)


def test_cli_errors_are_one_line(small_dir: Path, tmp_path: Path, monkeypatch, capsys, run_cli) -> None:
    cases = [  # (arguments, exit code, text in the message)
        (["remove", str(small_dir), "--out", str(tmp_path / "e1"), "--nodule", "9"], 2, "no nodule 9"),
        (["inject", str(tmp_path / "missing"), "--out", str(tmp_path / "e2")], 1, "no such file"),
        (["inject", str(small_dir), "--out", str(tmp_path / "e3"), "--center", "1,2"], 2, "--center"),
        (["remove", str(small_dir), "--out", str(tmp_path / "e4")], 2, "--nodule"),
        (["inject", str(small_dir), "--out", str(tmp_path / "e5"), "--type", "cystic"], 2, "--type"),
        (["inject", str(small_dir), "--out", str(tmp_path / "e6"), "--center", "5,600,3"], 1, "outside the volume"),
        (["inject", str(small_dir), "--out", str(tmp_path / "e7"), "--diameter", "80"], 2, "--diameter"),
        (["inject", str(small_dir), "--out", str(tmp_path / "e8"), "--bogus"], 2, "No such option"),
        (["inject", str(small_dir), "--out", str(tmp_path / "e9"), "--seed", "abc"], 2, "--seed"),
    ]
    for args, want, text in cases:
        code, _, err = run_cli("forge", *args)
        assert code == want and text in err, (args, code, err)
        assert "Traceback" not in err
        if "--bogus" not in args and "abc" not in args:  # typer's own usage errors add a usage line
            assert len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.iterdir())  # nothing written on any error
    code, out, _ = run_cli("forge", "remove", str(small_dir), "--list")
    assert code == 0 and "malignant" in out and "31.0" in out


# ---------------------------------------------------------------------------------------------
# injections keep away from the readers' nodules (issue 18, item 8)


def _gap_mm(mask: np.ndarray, marks: np.ndarray, spacing) -> float:
    """Smallest distance (mm) between a changed voxel and a marked one."""
    changed = np.argwhere(mask)
    sp = np.asarray(spacing, float)
    return min(float(np.sqrt((((changed - m) * sp) ** 2).sum(axis=1)).min()) for m in marks)


def test_default_seed_keeps_away_from_annotated_nodules(series: Image, lidc_nodules) -> None:
    from medforensics.forge.lidc import marked_voxels
    marks = marked_voxels(series)
    assert len(marks) > 1000  # the 33 mm tumour's outlines and the small nodules' points
    big = lidc_nodules[0]
    assert tuple(big.center_voxel) in {tuple(m) for m in marks}
    f = ct.inject(series)  # the defaults of `forge inject`: seed 0, 10 mm
    assert f.params["annotated"]["n_voxels"] == len(marks)
    assert ct.cube_distance_mm(f.bbox_voxel, marks, series.spacing) >= ct.AVOID_MARGIN_MM
    assert _gap_mm(f.mask, marks, series.spacing) >= ct.AVOID_MARGIN_MM  # no changed voxel near a real finding
    # a centre next to the tumour is refused, with what and where
    with pytest.raises(MedForensicsError, match="annotated nodule"):
        ct.inject(series, center_voxel=(big.center_voxel[0], big.bbox_voxel[4] + 3, big.center_voxel[2]))
    # the distance is a parameter: nothing fits when it is as wide as the chest
    with pytest.raises(MedForensicsError, match="200 mm or more from the annotated nodules"):
        ct.inject(series, margin_mm=200.0)


def test_partial_nodules_are_avoided_too(shared_data: Path) -> None:
    """LIDC-IDRI-0002's 12-slice series cuts through a nodule that nodules_for leaves out (not all of
    its slices are there); its marked voxels are still kept away from."""
    from medforensics.forge.lidc import marked_voxels
    d = next((shared_data / "ct" / "lidc-idri-small" / "LIDC-IDRI-0002").rglob("*.dcm"), None)
    if d is None:
        pytest.skip("lidc-idri-small/LIDC-IDRI-0002 not found in shared data")
    image = load_series(sorted(d.parent.glob("*.dcm")))
    marks = marked_voxels(image)
    listed = {tuple(n.center_voxel) for n in nodules_for(image)}
    assert len(marks) and any(tuple(m) not in listed for m in marks)
    edge = marks[marks[:, 0] == 0]
    assert len(edge), "the nodule cut by the series' first slice"
    with pytest.raises(MedForensicsError, match="annotated nodule"):
        ct.inject(image, center_voxel=tuple(int(v) for v in edge[0]), diameter_mm=6)
    f = ct.inject(image, diameter_mm=6, seed=0)
    assert _gap_mm(f.mask, marks, image.spacing) >= ct.AVOID_MARGIN_MM


def test_no_place_far_enough_is_a_clear_error() -> None:
    image = _phantom()
    lungs = np.argwhere(image.pixels[:, ::4, ::4] < -700) * [1, 4, 4]  # "nodules" all over both lungs
    with pytest.raises(MedForensicsError, match="from the annotated nodules"):
        ct.inject(image, avoid=lungs)
    f = ct.inject(image, avoid=())  # nothing to avoid: as before
    assert f.params["annotated"] == {"n_voxels": 0, "margin_mm": ct.AVOID_MARGIN_MM, "distance_mm": None}


def test_cli_inject_keeps_the_margin_and_says_why_not(small_dir: Path, small: Image, tmp_path: Path, run_cli) -> None:
    import inspect

    from medforensics.cli.forge_ct import inject_cmd
    from medforensics.forge.lidc import marked_voxels
    assert inspect.signature(inject_cmd).parameters["nodule_margin"].default.default == ct.AVOID_MARGIN_MM
    marks = marked_voxels(small)
    r = run_cli("forge", "inject", str(small_dir), "--out", str(tmp_path / "ok"))
    assert r.returncode == 0, r.stderr
    gt = json.loads((tmp_path / "ok.groundtruth.json").read_text())
    mask = np.load(tmp_path / "ok.mask.npz")["mask"]
    assert gt["params"]["annotated"]["distance_mm"] >= ct.AVOID_MARGIN_MM
    assert _gap_mm(mask > 0, marks, small.spacing) >= ct.AVOID_MARGIN_MM
    k, i, j = (int(v) for v in marks[len(marks) // 2])
    r = run_cli("forge", "inject", str(small_dir), "--out", str(tmp_path / "near"), "--center", f"{k},{i},{j}")
    assert r.returncode == 1 and "annotated nodule" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "near").exists()
