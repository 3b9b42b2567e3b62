"""forge report: the realism measures, and one small run of the whole report on real data."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from medforensics.forge.realism import noise_std, nps, nps_mean_freq, realism_report, residual, wasserstein


def test_noise_measures_recover_known_noise():
    rng = np.random.default_rng(0)
    white = rng.normal(0, 10, (128, 128))
    smooth_bg = np.outer(np.linspace(0, 500, 128), np.ones(128))
    m = np.ones(white.shape, bool)
    # the residual removes a smooth background; its robust std scales with the noise level
    assert abs(noise_std(smooth_bg + white, m) - noise_std(white, m)) < 0.3
    assert 1.9 < noise_std(2 * white, m) / noise_std(white, m) < 2.1
    assert np.isnan(noise_std(white, np.zeros(white.shape, bool)))
    # correlated (blurred) noise has its power at lower frequencies than white noise
    blurred = ndimage.gaussian_filter(rng.normal(0, 10, (128, 128)), 1.2)
    cw, cb = nps(white[:64, :64]), nps(blurred[:64, :64])
    assert abs(cw.sum() - 1) < 1e-6 and nps_mean_freq(cb) < nps_mean_freq(cw)
    assert residual(np.ones((4, 6, 6))).shape == (4, 6, 6)
    assert wasserstein(np.zeros(10), np.full(10, 3.0)) == pytest.approx(3.0)


@pytest.mark.slow
def test_report_on_real_data(shared_data, tmp_path):
    md = realism_report(shared_data, tmp_path / "rep", n=1, seed=0)
    out = md.parent
    res = json.loads((out / "realism.json").read_text())
    ct_methods = {r["method"] for r in res["ct"]["methods"]}
    assert {"inject (classic)", "remove (classic)"} <= ct_methods
    inj = next(r for r in res["ct"]["methods"] if r["method"] == "inject (classic)")
    assert inj["n"] == 1 and inj["mean"] > res["ct"]["reference"]["real_lung_mean"]  # a nodule is denser than lung
    assert 0.5 < inj["noise_ratio_median"] < 2.0
    xr = {r["method"] for r in res["radiographs"]["methods"]}
    assert {"copymove", "splice", "inpaint (classic)", "intensity", "contrast", "resample"} <= xr
    for name in res["figures"]:
        assert (out / name).stat().st_size > 1000
    text = md.read_text()
    assert "| inject (classic) | 1 |" in text and "Weak fakes" in text
    with pytest.raises(FileExistsError):
        realism_report(shared_data, out, n=1)
