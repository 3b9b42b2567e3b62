"""The HTML report and its figures: ranking, picture policy, per-evidence slices, escaping, no overwrite."""
from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest

from medforensics.core import Evidence, Image, Region, Verdict
from medforensics.report import overlay_png, render_figures, write_report
from medforensics.report.figures import evidence_slice, representative_slice, worth_showing
from medforensics.report.html import rank


def _png(b64: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)


def _volume() -> Image:
    rng = np.random.default_rng(0)
    return Image.from_array(rng.normal(0, 20, (10, 64, 64)), modality="CT", spacing=(2.0, 0.7, 0.7), name="vol")


def _ev(name, score, box, heat=None):
    c = tuple((a + b) // 2 for a, b in zip(box[: len(box) // 2], box[len(box) // 2:]))
    return Evidence(name, score, f"{name} says so", heatmap=heat, regions=[Region(c, box, score)])


def test_each_overlay_is_drawn_on_its_own_evidence_slice():
    img = _volume()
    a = _ev("a", 0.9, (2, 10, 10, 3, 20, 20))
    b = _ev("b", 0.6, (7, 30, 30, 8, 50, 50))
    figs = render_figures(img, [a, b])
    assert figs["slice"] == "2"  # the thumbnail shows the strongest evidence's slice
    assert figs["slice:a"] == "2" and figs["slice:b"] == "7"
    over = _png(figs["overlay:b"])
    assert over.ndim == 3 and over.shape[2] == 3
    # b's red box is on its slice: some pure-ish red pixels exist in b's overlay
    red = (over[..., 2] > 180) & (over[..., 1] < 80) & (over[..., 0] < 80)
    assert red.sum() > 20
    assert representative_slice(img, [b, a]) == 2


def test_evidence_with_nothing_to_show_gets_no_overlay():
    img = Image.from_array(np.zeros((32, 32)), name="flat")
    whole = Evidence("hdr", 0.9, "header", regions=[Region((16, 16), (0, 0, 32, 32))])
    weak = Evidence("weak", 0.05, "quiet", heatmap=np.full((32, 32), 0.1, np.float32))
    hot = Evidence("hot", 0.05, "hot spot", heatmap=np.pad(np.ones((4, 4), np.float32), 14))
    assert not worth_showing(img, whole) and not worth_showing(img, weak) and worth_showing(img, hot)
    figs = render_figures(img, [whole, weak, hot])
    assert sorted(figs) == ["overlay:hot", "slice", "thumbnail"] and figs["slice"] == ""
    assert evidence_slice(img, hot) is None


def test_heatmap_volume_slice_and_duplicate_detector_names():
    img = _volume()
    heat = np.zeros(img.pixels.shape, np.float32)
    heat[5, 20:30, 20:30] = 1.0
    e1 = Evidence("h", 0.7, "heat", heatmap=heat)
    e2 = Evidence("h", 0.3, "again", heatmap=heat)
    figs = render_figures(img, [e1, e2])
    assert figs["slice:h"] == "5" and "overlay:h#2" in figs


def test_report_ranks_filters_escapes_and_never_overwrites(tmp_path):
    img = Image.from_array(np.random.default_rng(1).normal(100, 5, (48, 48)), modality="CR", name="x")
    ev = _ev("copy_move", 0.95, (10, 10, 20, 20))
    bad = Verdict("<script>alert(1)</script>.dcm", "image", None, 1, None, None, errors=["<b>not DICOM</b>"])
    hi = Verdict("hi.png", "image", "u1", 1, 0.95, "manipulated", evidence=[ev], figures=render_figures(img, [ev]))
    lo = Verdict("lo.png", "image", "u2", 1, 0.1, "authentic", figures=render_figures(img, []))
    assert [v.path for v in rank([lo, bad, hi])] == ["hi.png", "lo.png", bad.path]

    out = write_report([lo, bad, hi], tmp_path / "r.html", summary={"elapsed_s": 2.0, "custom": "<i>x</i>"})
    html = out.read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;i&gt;x&lt;/i&gt;" in html
    assert html.index("hi.png") < html.index("lo.png")
    assert 'class="card lab-manipulated"' in html and 'class="card lab-unreadable"' in html
    assert html.count("data:image/png;base64,") == 3  # lo's thumbnail, hi's thumbnail and overlay
    assert "1 unreadable" in html and "1 manipulated" in html
    with pytest.raises(FileExistsError):
        write_report([lo], out)
    assert out.read_text() == html

    flagged = write_report([lo, hi], tmp_path / "f.html", figures="flagged").read_text()
    assert flagged.count("data:image/png;base64,") == 2
    assert "left out of a report" in flagged
    assert write_report([lo, hi], tmp_path / "n.html", figures="none").read_text().count("data:image") == 0
    with pytest.raises(ValueError):
        write_report([lo], tmp_path / "v.html", figures="some")


def test_overlay_png_writes_a_new_file(tmp_path):
    img = _volume()
    ev = _ev("a", 0.9, (4, 10, 10, 5, 20, 20))
    p = overlay_png(img, ev, tmp_path / "o.png")
    assert cv2.imread(str(p)).shape[:2] == (768, 768)
    with pytest.raises(FileExistsError):
        overlay_png(img, ev, p)
