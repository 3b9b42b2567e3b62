"""Issue 18, "done when": one folder holding every hostile file of the issue beside good ones is
scanned in one run, under a memory limit, to the end: one JSON line per item, a one-line error for
each hostile file that cannot be read, the good files (and the hostile files that can be read)
scored, no traceback, a report, exit status 1."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

from test_decode_budget import _fuzz, scan_limited
from test_scan import _bomb_png

CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


def _dicom(folder: Path, name: str, **changes) -> Path:
    ds = pydicom.dcmread(CT_SMALL)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    path = folder / name
    ds.save_as(path)
    return path


@pytest.fixture(scope="module")
def hostile(shared_data, lidc_series_dir, tmp_path_factory):
    """The folder, the names that must fail (no score) and those that must be scored."""
    root = tmp_path_factory.mktemp("hostile") / "in"
    root.mkdir()
    unreadable, scored = set(), set()
    # item 1 and 2: bombs (the decode budget of the scan below is 64 MiB)
    for path in _fuzz().write_bombs(root / "bombs", "test").values():
        unreadable.add(path.name)
    unreadable.add(_bomb_png(root / "pillow_limit.png").name)
    # item 5: silent fallbacks -- these are read, scored, and say what is wrong
    header = root / "headers"
    header.mkdir()
    for name, changes in {"nan_slope.dcm": {"RescaleSlope": "NaN"}, "huge_slope.dcm": {"RescaleSlope": "1e308"},
                          "zero_spacing.dcm": {"PixelSpacing": [0, 0]},
                          "negative_spacing.dcm": {"PixelSpacing": [-0.5, -0.5]},
                          "nan_spacing.dcm": {"PixelSpacing": ["NaN", "NaN"]},
                          "negative_thickness.dcm": {"SliceThickness": "-2.5"}}.items():
        scored.add(_dicom(header, name, **changes).name)
    series = root / "series_negative_thickness"
    series.mkdir()
    for f in sorted(lidc_series_dir.glob("*.dcm"))[40:52]:
        ds = pydicom.dcmread(f)
        ds.SliceThickness = "-2.5"
        ds.save_as(series / f.name)
    scored.add(series.name)
    alone = root / "single_lidc_slice"
    alone.mkdir()
    scored.add(shutil.copy(sorted(lidc_series_dir.glob("*.dcm"))[60], alone / "slice.dcm").name)
    # damaged and odd files
    odd = root / "odd"
    odd.mkdir()
    data = CT_SMALL.read_bytes()
    (odd / "truncated.dcm").write_bytes(data[:len(data) // 2])
    (odd / "empty.dcm").write_bytes(b"")
    (odd / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    unreadable |= {"truncated.dcm", "empty.dcm", "garbage.png"}
    unreadable.add(_dicom(odd, "wrong_bits.dcm", BitsAllocated=32).name)  # pixel data too short for it
    os.symlink(root / "nowhere.dcm", odd / "dangling.dcm")
    unreadable.add("dangling.dcm")
    # good files, some with hostile names
    good = root / "good"
    good.mkdir()
    scored.add(shutil.copy(CT_SMALL, good / "ct <img src=x onerror=alert(1)>.dcm").name)
    scored.add(shutil.copy(get_testdata_file("JPEG-lossy.dcm"), good / "jpeg baseline é.dcm").name)
    scored.add(shutil.copy(sorted((shared_data / "xray" / "nih-cxr14").glob("*.png"))[0], good / "chest.png").name)
    scored.add(shutil.copy(shared_data / "ct" / "nifti" / "example_ct_sm.nii.gz", good / "volume.nii.gz").name)
    rgb = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    PILImage.fromarray(rgb).save(good / "photo.jpg", quality=90)
    scored.add("photo.jpg")
    return root, unreadable, scored


def test_a_folder_of_every_hostile_file_scans_to_the_end(hostile, tmp_path):
    root, unreadable, scored = hostile
    code, err, records, peak = scan_limited([root], tmp_path / "out.jsonl", "--report", str(tmp_path / "r.html"),
                                            "--workers", "2")
    assert "Traceback" not in err, err[-3000:]
    assert code == 1, err[-3000:]
    by_name = {Path(r["path"]).name: r for r in records}
    assert len(records) == len(by_name) == len(unreadable) + len(scored), sorted(by_name)
    assert set(by_name) == unreadable | scored
    for name in unreadable:
        r = by_name[name]
        assert r.get("score") is None and len(r["errors"]) >= 1, r
        assert all("\n" not in e and str(root) in e for e in r["errors"]), r["errors"]
    for name in scored:
        r = by_name[name]
        assert r.get("score") is not None and math.isfinite(r["score"]), (name, r["errors"])
    series = by_name["series_negative_thickness"]
    assert series["kind"] == "series" and series["n_instances"] == 12
    assert by_name["slice.dcm"]["label"] == "authentic"          # an untouched slice alone (was manipulated 0.80)
    dicom_header = {r["path"]: e for r in records for e in r["evidence"] if e["detector"] == "dicom_header"}
    for name in ("nan_slope.dcm", "zero_spacing.dcm", "negative_thickness.dcm"):
        assert dicom_header[str(root / "headers" / name)]["score"] > 0.2, name
    assert (tmp_path / "r.html").exists() and "<img src=x onerror" not in (tmp_path / "r.html").read_text()
    assert peak < 3 * 1024**3, f"peak RSS {peak / 2**30:.1f} GiB"
