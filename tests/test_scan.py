"""The scan pipeline and the command-line contract: one record per item, errors per item, exit codes."""
from __future__ import annotations

import json
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medforensics.core import Evidence, Image
from medforensics.detectors.base import Detector, available_detectors, regions_from_heatmap
from medforensics.scan import analyze, scan

RECORD_KEYS = {"schema", "path", "kind", "uid", "n_instances", "score", "label", "evidence", "errors"}
BUILTIN = {"dicom_header", "container", "ct_physics", "copy_move", "noise_residual"}


class Boom(Detector):
    name = "boom"

    def detect(self, image):
        raise RuntimeError("exploded\non two lines")


class Bright(Detector):
    name = "bright"

    def detect(self, image):
        heat = (image.pixels > 0.5).astype(np.float32)
        return Evidence("bright", float(heat.mean() > 0), "bright pixels", heatmap=heat,
                        regions=regions_from_heatmap(image, heat))


def test_builtin_detectors_registered():
    found = available_detectors()
    assert BUILTIN <= set(found)
    for cls in found.values():
        assert cls.name and cls.description and cls.applies_to()


def test_failing_detector_is_an_error_not_a_crash():
    pix = np.zeros((32, 32), np.float32)
    pix[4:10, 20:30] = 1
    v = analyze(Image.from_array(pix), [Boom(), Bright()])
    assert v.label == "manipulated" and [e.detector for e in v.evidence] == ["bright"]
    assert len(v.errors) == 1 and "boom failed: exploded on two lines" in v.errors[0]
    (region,) = v.evidence[0].regions
    assert region.bbox_voxel == (4, 20, 10, 30) and region.center_voxel == (6, 24)
    with pytest.raises(RuntimeError):
        analyze(Image.from_array(pix), [Boom()], debug=True)


class Where(Detector):
    """Records the thread it ran in, waits for its partner, then raises a warning and reports."""
    name = "where"

    def __init__(self, name: str, barrier: threading.Barrier | None = None):
        self.name, self.barrier, self.threads = name, barrier, []

    def detect(self, image):
        self.threads.append(threading.current_thread().name)
        if self.barrier is not None:
            self.barrier.wait(timeout=10)   # only two detectors running at once get past this
        warnings.warn(f"{self.name} saw something odd", UserWarning, stacklevel=1)
        return Evidence(self.name, 0.1, "nothing")


def test_a_2d_images_detectors_run_in_threads_and_warnings_stay_with_the_item():
    pix = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    barrier = threading.Barrier(2)
    a, b = Where("a", barrier), Where("b", barrier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = analyze(Image.from_array(pix), [a, b], threads=2)
    assert v.assessed == ["a", "b"] and not v.errors
    assert a.threads[0].startswith("detector") and b.threads[0].startswith("detector")
    # one thread: one after the other, in the calling thread; a volume: likewise
    for image, threads in ((Image.from_array(pix), 1), (Image.from_array(np.stack([pix] * 3)), 2)):
        c, d = Where("c"), Where("d")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analyze(image, [c, d], threads=threads)
        assert c.threads == d.threads == [threading.current_thread().name]


def test_threads_give_the_same_verdict_and_record_warnings(tmp_path):
    from medforensics.detectors import load_detectors
    from medforensics.io import discover
    from medforensics.scan import scan_source

    detectors = load_detectors() + [Where("noisy")]
    (src,), _ = discover([get_testdata_file("RG1_UNCI.dcm")])
    one = scan_source(src, detectors, threads=1)
    two = scan_source(src, detectors, threads=2)
    key = [(e.detector, e.score, e.explanation, [r.bbox_voxel for r in e.regions]) for e in one.evidence]
    assert key == [(e.detector, e.score, e.explanation, [r.bbox_voxel for r in e.regions]) for e in two.evidence]
    assert (one.label, one.score, one.assessed, one.not_assessed) == (two.label, two.score, two.assessed,
                                                                     two.not_assessed)
    assert any("noisy saw something odd" in w for w in two.warnings), two.warnings


def _mixed_folder(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), d / "ct.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), d / "mr.dcm")
    (d / "bad.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage")
    (d / "notes.txt").write_text("skipped")
    return d


def test_scan_yields_one_verdict_per_item_and_goes_on(tmp_path):
    d = _mixed_folder(tmp_path)
    verdicts = list(scan([str(d)]))
    by_name = {Path(v.path).name: v for v in verdicts}
    assert set(by_name) == {"ct.dcm", "mr.dcm", "bad.dcm"}
    assert by_name["bad.dcm"].score is None and by_name["bad.dcm"].errors
    assert by_name["ct.dcm"].score is not None and not by_name["ct.dcm"].errors
    for v in verdicts:
        assert RECORD_KEYS - {"score", "label"} <= set(v.to_dict())
    parallel = list(scan([str(d)], workers=2))
    assert [(v.path, v.score, v.label) for v in parallel] == [(v.path, v.score, v.label) for v in verdicts]


def test_cli_scan_contract(tmp_path, run_cli):
    d = _mixed_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    r = run_cli("scan", str(d), "--json", str(tmp_path / "o.jsonl"), "--report", str(tmp_path / "r.html"))
    assert r.returncode == 1, r.stderr  # bad.dcm is an error; the others are still scanned
    assert "Traceback" not in r.stderr + r.stdout
    assert any("bad.dcm" in line and "error" in line for line in r.stderr.splitlines())
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for rec in records:
        assert RECORD_KEYS - {"score", "label"} <= set(rec) and rec["schema"] == "1.2"
        for ev in rec["evidence"]:
            assert {"detector", "score", "explanation", "regions"} <= set(ev)
            for reg in ev["regions"]:
                assert {"center_voxel", "bbox_voxel"} <= set(reg)
    html = (tmp_path / "r.html").read_text()
    assert "ct.dcm" in html and "bad.dcm" in html
    assert before == {p.name: p.read_bytes() for p in d.iterdir()}  # inputs untouched
    # outputs are never overwritten without --overwrite
    r2 = run_cli("scan", str(d / "ct.dcm"), "--json", str(tmp_path / "o.jsonl"))
    assert r2.returncode == 2 and "already exists" in r2.stderr and "Traceback" not in r2.stderr
    r3 = run_cli("scan", str(d / "ct.dcm"), "--json", str(tmp_path / "o.jsonl"), "--overwrite")
    assert r3.returncode == 0 and len((tmp_path / "o.jsonl").read_text().splitlines()) == 1


def test_cli_usage_errors_are_one_line(tmp_path, run_cli):
    r = run_cli("scan", get_testdata_file("CT_small.dcm"), "--detectors", "nope")
    assert r.returncode == 2 and "unknown detector" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("scan", get_testdata_file("CT_small.dcm"), "--suspicious", "0.9", "--manipulated", "0.1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("detectors")
    assert r.returncode == 0 and all(n in r.stdout for n in BUILTIN)


def test_detectors_off_by_default_run_only_when_named():
    from medforensics.detectors.base import load_detectors
    registry = available_detectors()
    assert "ct_patch3d" in registry and registry["ct_patch3d"].default is False
    default = {d.name for d in load_detectors()}
    assert "ct_patch3d" not in default and "provenance" in default
    assert [d.name for d in load_detectors(["ct_patch3d"])] == ["ct_patch3d"]


def _bomb_png(path: Path, side: int = 30_000) -> Path:
    """A small PNG whose header declares ``side`` x ``side`` pixels (over Pillow's decoding limit)."""
    import io as _io
    import struct
    import zlib

    from PIL import Image as PILImage

    buf = _io.BytesIO()
    PILImage.new("L", (16, 16)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # signature, then the IHDR chunk: length (4), type (4), data (13), crc (4)
    data[ihdr + 8:ihdr + 16] = struct.pack(">II", side, side)
    data[ihdr + 21:ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4:ihdr + 21])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_is_one_items_error_and_the_scan_goes_on(tmp_path, run_cli):
    """Issue 18, item 1: a PNG over Pillow's pixel limit used to stop the whole scan."""
    d = tmp_path / "in"
    d.mkdir()
    _bomb_png(d / "a_bomb.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), d / "b_ct.dcm")
    verdicts = list(scan([str(d)]))
    assert [Path(v.path).name for v in verdicts] == ["a_bomb.png", "b_ct.dcm"]
    assert verdicts[0].score is None and "decompression bomb" in verdicts[0].errors[0]
    assert verdicts[1].score is not None and not verdicts[1].errors
    r = run_cli("scan", d, "--json", tmp_path / "o.jsonl")
    assert r.code == 1 and "Traceback" not in r.err
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 2


def test_an_unexpected_loader_failure_is_one_items_error(tmp_path, monkeypatch):
    import medforensics.scan as scan_module

    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), d / "a.dcm")

    def broken(source):
        raise RuntimeError("decoder\n crashed")

    monkeypatch.setattr(scan_module, "load_source", broken)
    v, = scan([str(d)])
    assert v.score is None and v.errors == [f"{d / 'a.dcm'}: cannot be read (RuntimeError) (decoder crashed)"]


class Prepared(Detector):
    """Records when its set-up and its detection ran, and in which thread."""
    name = "prepared"

    def __init__(self, events, tag):
        self.events, self.tag = events, tag

    def prepare(self, image):
        self.events.append(("prepare", self.tag, threading.current_thread().name))

    def detect(self, image):
        self.events.append(("detect", self.tag, threading.current_thread().name))
        return Evidence(self.name, 0.1, "looked")


def test_detectors_prepare_one_after_another_before_their_threads_start():
    """Set-up that is not thread-safe (torch.fx tracing patches every torch module of the
    process) runs before any detector runs in a thread: a CT scan once failed with "module is
    not installed as a submodule" when learned_2d traced its network beside ct_patch."""
    events: list = []
    analyze(Image.from_array(np.zeros((64, 64), np.float32)), [Prepared(events, "a"), Prepared(events, "b")], threads=2)
    kinds = [e[0] for e in events]
    assert kinds[:2] == ["prepare", "prepare"] and sorted(kinds[2:]) == ["detect", "detect"]
    assert {e[2] for e in events[:2]} == {threading.current_thread().name}
    assert all(e[2] != threading.current_thread().name for e in events[2:])


def test_learned_2d_traces_its_network_in_prepare():
    from medforensics.detectors import learned2d
    from medforensics.io import discover, load_source

    det = learned2d.Learned2DDetector()
    image = load_source(discover([get_testdata_file("CT_small.dcm")])[0][0])
    clf = det.classifier("ct")
    if not clf.native:
        pytest.skip("the shipped CT checkpoint is a whole-image classifier")
    learned2d._FAST.pop(id(clf), None)
    det.prepare(image)
    assert learned2d._FAST[id(clf)][0] is clf          # traced now, not in detect's thread
