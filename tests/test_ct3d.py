"""CT patch model (3D): network, training steps, sliding-window scan geometry, shipped checkpoint
and detector."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from medforensics.core import Evidence, Image, MedForensicsError
from medforensics.learn import ct3d


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, 3D convolutions with 2 threads can run 10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_network_runs_on_a_cube():
    net = ct3d.build_network().eval()
    x = torch.from_numpy(ct3d.window_hu(np.full((2, 1, *ct3d.CUBE), -700.0)))
    with torch.no_grad():
        y = net(x)
    assert tuple(y.shape) == (2, 1) and torch.isfinite(y).all()
    assert sum(p.numel() for p in net.parameters()) < 2_000_000  # small enough for CPU and a <= 15 MB checkpoint


def test_crop_repeats_the_edge():
    vol = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    c = ct3d.crop(vol, (-2, 1, 4), (4, 3, 5))
    assert c.shape == (4, 3, 5)
    assert np.array_equal(c[0], c[2]) and np.array_equal(c[2], vol[0, 1:4, [4, 5, 6, 6, 6]].T)


def test_few_training_steps_lower_the_loss(lidc_series_dir):
    from medforensics.io import load

    full = load(lidc_series_dir)[0]
    # slices 60-109 hold the series' large real tumour (slice 90): a smaller volume keeps the test quick
    image = dataclasses.replace(full, pixels=full.pixels[60:110].copy(), sources=full.sources[60:110],
                                datasets=full.datasets[60:110], affine=None)
    cubes = ct3d.make_cubes(image, n_injections=2, n_random=3, seed=4, removal_repeats=0, nodule_views=1)
    counts = cubes.counts()
    assert counts["inject"] == 2 and counts["random"] == 3 and counts["real-nodule"] >= 1  # real nodules are negatives
    assert all(c.shape == ct3d.STORED for c in cubes.crops)
    assert [l for l, k in zip(cubes.labels, cubes.kinds) if k == "real-nodule"] == [0] * counts["real-nodule"]
    torch.manual_seed(0)
    x = torch.from_numpy(ct3d._augment(cubes.crops, np.random.default_rng(0)))
    y = torch.tensor(cubes.labels, dtype=torch.float32)
    net = ct3d.build_network()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).reshape(-1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


class BrightCentre(torch.nn.Module):
    """A network whose output is known: a large logit when more than 2% of the window's central
    4x16x16 block (the heatmap cell it speaks for) is brighter than 0.8 (+120 HU: the planted
    block is at +200 HU, the phantom's body at +40 +- 15 HU), else a large negative one."""

    def forward(self, x):
        c = x[:, :, 6:10, 24:40, 24:40]
        frac = (c > 0.8).float().mean(dim=(2, 3, 4))
        return 200.0 * (frac - 0.02)


def _chest_phantom(plant: bool) -> Image:
    rng = np.random.default_rng(0)
    vol = np.full((40, 192, 192), -1000.0, np.float32)  # air around the body
    vol[:, 16:176, 16:176] = 40.0  # body
    vol[:, 40:150, 30:90] = -850.0  # lungs
    vol[:, 40:150, 102:162] = -850.0
    vol += rng.normal(0, 15, vol.shape).astype(np.float32)
    if plant:
        vol[20:28, 90:110, 50:70] = 200.0  # the "edit": a bright block inside the left lung
    affine = np.array([[0, 0, 0.8, -70.0], [0, 0.8, 0, -60.0], [2.0, 0, 0, -300.0], [0, 0, 0, 1.0]])
    return Image.from_array(vol, modality="CT", spacing=(2.0, 0.8, 0.8), name="phantom", format="dicom", affine=affine)


def test_sliding_window_heatmap_and_region_geometry():
    model = (BrightCentre().eval(), {"calibration": {"a": 1.0, "b": 0.0}})
    image = _chest_phantom(plant=True)
    s = ct3d.scan(image, model=model)
    heat = s.heatmap(image.pixels.shape)
    assert heat.shape == image.pixels.shape and heat.dtype == np.float32
    assert s.lung_found and s.n_refined > 0
    assert len(s.regions) == 1
    r = s.regions[0]
    k, i, j = r.center_voxel
    # the planted block spans slices 20-27, rows 90-109, columns 50-69: its centre is (23.5, 99.5, 59.5)
    assert abs(k - 23.5) <= 2.5 and abs(i - 99.5) <= 8.5 and abs(j - 59.5) <= 8.5
    b = r.bbox_voxel
    assert b[0] <= 20 and b[3] >= 28 and b[1] <= 90 and b[4] >= 110 and b[2] <= 50 and b[5] >= 70  # covers it
    assert b[3] - b[0] <= 16 and b[4] - b[1] <= 64 and b[5] - b[2] <= 64  # and not much more
    assert r.center_mm == image.voxel_to_mm(r.center_voxel)
    assert r.center_mm == (round(0.8 * j - 70, 2), round(0.8 * i - 60, 2), round(2.0 * k - 300, 2))
    assert heat[23, 100, 60] == pytest.approx(1.0) and heat[5, 30, 100] < 0.5
    # the same phantom without the block: nothing above the threshold
    clean = ct3d.scan(_chest_phantom(plant=False), model=model)
    assert clean.regions == [] and clean.score < 0.5


def test_scan_refuses_a_2d_image():
    with pytest.raises(MedForensicsError, match="3D series"):
        ct3d.scan(Image.from_array(np.zeros((64, 64)), modality="CT"))


def test_shipped_checkpoint_loads_and_says_what_it_was_trained_on():
    path = ct3d.default_checkpoint()
    assert path.is_file() and path.stat().st_size <= 15 * 2 ** 20
    net, card = ct3d.load_model()
    assert card["architecture"] == "monai.networks.nets.ResNet"
    patients = card["data"]["patients"]
    assert patients["train"] == ["LIDC-IDRI-0001"] and patients["validation"] == ["LIDC-IDRI-0002"]
    assert not set(patients["train"]) & set(patients["validation"])
    assert 0.0 <= card["metrics"]["validation_auc"] <= 1.0
    assert {"a", "b"} <= set(card["calibration"])
    with torch.no_grad():
        assert tuple(net(torch.zeros(1, 1, *ct3d.CUBE)).shape) == (1, 1)


def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MedForensicsError, match="bad.safetensors"):
        ct3d.load_model(bad)


def test_detector_on_a_short_real_series(shared_data):
    from medforensics.detectors.ct3d import CTPatch3DDetector
    from medforensics.io import load

    d = next((shared_data / "ct" / "lidc-idri-small" / "LIDC-IDRI-0003").rglob("*.dcm"), None)
    if d is None:
        pytest.skip("LIDC-IDRI-0003 sub-series not found in shared data")
    image = load(d.parent)[0]
    det = CTPatch3DDetector()
    assert det.applies(image) and not det.applies(Image.from_array(np.zeros((64, 64)), modality="CT", format="dicom"))
    t = time.time()
    ev = det.detect(image)
    elapsed = time.time() - t
    assert isinstance(ev, Evidence) and ev.detector == "ct_patch3d" and 0.0 <= ev.score <= 1.0
    assert ev.heatmap.shape == image.pixels.shape and ev.explanation
    assert ev.score == pytest.approx(float(ev.heatmap.max()), abs=1e-6)
    assert ev.details["n_windows"] > 0 and ev.details["model"]["trained_on"]["test"] == ["LIDC-IDRI-0003"]
    for r in ev.regions:
        assert all(r.bbox_voxel[a] <= r.center_voxel[a] < r.bbox_voxel[a + 3] for a in range(3))
        assert r.center_mm == image.voxel_to_mm(r.center_voxel) and r.score >= 0.5
    print(f"ct_patch3d on {image.pixels.shape}: {elapsed:.1f} s, score {ev.score:.3f}, {len(ev.regions)} regions")
