"""`medforensics demo` runs on PyPI-only sample data and catches its own manipulated copies."""
import json
import os
from pathlib import Path

from medforensics.demo import new_folder, run_demo


def test_demo_end_to_end(tmp_path):
    root = run_demo(tmp_path / "demo")
    records = {Path(r["path"]).name: r for r in map(json.loads, (root / "scan.jsonl").read_text().splitlines())}
    truth = json.loads((root / "manipulated" / "ground_truth.json").read_text())
    assert (root / "report.html").stat().st_size > 10_000
    originals = [r for name, r in records.items() if "originals" in r["path"]]
    assert originals and all(not r["errors"] for r in originals)
    caught = [t for t in truth if records[Path(t["file"]).name]["label"] != "authentic"]
    assert len(caught) >= len(truth) - 1, [(Path(t["file"]).name, records[Path(t["file"]).name]["label"]) for t in truth]
    false_alarms = [n for n, r in records.items() if "originals" in r["path"] and r["label"] != "authentic"]
    assert len(false_alarms) <= 1, false_alarms
    # provenance: the signed original holds, its invisibly changed copy is caught where it changed
    assert records["ct_signed.dcm"]["provenance"] == "signature:trusted watermark:intact"
    tampered = records["ct_signed_tampered.dcm"]
    assert tampered["label"] == "manipulated" and tampered["evidence"][0]["detector"] == "provenance"
    r0, c0, r1, c1 = tampered["evidence"][0]["regions"][0]["bbox_voxel"]
    assert r0 <= 60 and c0 <= 80 and r1 >= 70 and c1 >= 90
    assert "MEDFORENSICS_TRUST" not in os.environ  # the demo's trust setting does not leak
    # a second run never overwrites the first
    assert new_folder(root) != root
