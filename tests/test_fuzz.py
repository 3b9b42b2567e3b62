"""Fuzz test (issue 18, item 3): 1,000 hostile files derived from real DICOM, PNG, JPEG, TIFF and
NIfTI samples by the seeded mutator of ``benchmarks/fuzz.py`` (bit flips, truncations, huge, zero
and negative dimensions, wrong VRs, broken sequences, NaN and inf values, deflate bombs), scanned
in one ``medforensics scan FOLDER --json --workers 2`` process under a memory limit: no
traceback, exit status 0 or 1, exactly one JSON line per file, every error one line naming its
file, bounded memory. The same generator with 100,000 files is the benchmark
``python benchmarks/fuzz.py``.
"""
from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
COUNT = 1000
LIMIT = 6 * 1024**3  # address space per process: torch and the detectors take 4.5 GiB of it


def _fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_bench", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_thousand_hostile_files_scan_cleanly(shared_data, tmp_path):
    fuzz = _fuzz()
    made = fuzz.generate(tmp_path / "files", COUNT, seed=0, data=shared_data)
    assert len(made) == COUNT == len(list((tmp_path / "files").iterdir()))
    kinds = Counter(Path(name).suffix for name in made)
    assert all(kinds[s] >= 50 for s in (".dcm", ".png", ".jpg", ".tif", ".nii", ".gz")), kinds  # every format
    out = tmp_path / "scan.jsonl"
    r = fuzz.scan_limited([tmp_path / "files"], out, ["--workers", "2", "-q"], "64M", LIMIT)
    err = r["stderr"]
    assert "Traceback" not in err, err[-3000:]
    assert r["exit"] in (0, 1), err[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    per_file = Counter(Path(rec["path"]).name for rec in records)
    assert set(per_file) == set(made) and len(records) == COUNT, (
        f"no line for {sorted(set(made) - set(per_file))[:5]}; several for {[k for k, v in per_file.items() if v > 1][:5]}")
    for rec in records:
        for e in rec["errors"]:
            assert "\n" not in e and e.startswith(rec["path"]), e
            assert "Traceback" not in e and "MemoryError" not in e, e
    # the bombs were refused, each with its reason, and the budget held the memory down
    for rec in records:
        if "_bomb_" in rec["path"]:
            assert rec.get("label") is None and any(
                "decode budget" in e or "decompression bomb" in e for e in rec["errors"]), rec["errors"]
    scored = sum(rec.get("label") is not None for rec in records)
    assert scored >= 100, f"only {scored} of {COUNT} files were scored: the mutations leave too little readable"
    assert r["peak_rss_mb"] < 3000, f"peak RSS {r['peak_rss_mb']} MB"
