"""The decode budget (issue 18, item 2): images that would take more memory to load than the budget
are refused from their header, before decoding, with a one-line error naming the file.

Each bomb of ``benchmarks/fuzz.py`` (a deflated-syntax DICOM of 1 MB that inflates to 1 GiB, a
DICOM claiming 30,000 x 30,000 colour pixels, a ``.nii.gz`` of real huge dimensions and one with a
1 GiB header extension, a 16-bit PNG and a float TIFF of 6,000 x 6,000, an RGB PNG of 3,000 x 3,000, a PNG over Pillow's pixel
limit) is scanned by ``medforensics scan`` in its own process under a memory limit
(``RLIMIT_AS`` of 6 GiB: importing torch and loading the detectors needs 4.5 GiB of address space)
with a 64 MiB budget; a real CT slice still scans under the same limit.
"""
from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from medforensics.core import MedForensicsError
from medforensics.io import budget as B
from medforensics.io import discover, load_source, read_header

FUZZ = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
#: Address space of one scan process: torch and the detectors need 4.5 GiB of it (measured).
LIMIT = 6 * 1024**3
BUDGET = "64M"


def _fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_bench", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def scan_limited(paths, out: Path, *args: str, budget: str = BUDGET, limit: int = LIMIT):
    """``medforensics scan PATHS --json OUT ARGS`` in a process limited to ``limit`` bytes of address
    space; returns (exit status, stderr, JSON records, peak RSS in bytes of the process tree)."""
    env = dict(os.environ, MEDFORENSICS_DECODE_BUDGET=budget, OMP_NUM_THREADS="1", COLUMNS="200")
    err_file = out.with_suffix(".stderr")
    with open(err_file, "w") as err, open(os.devnull, "w") as devnull:
        p = subprocess.Popen([sys.executable, "-m", "medforensics", "scan", *map(str, paths), "--json", str(out), *args],
                             stdout=devnull, stderr=err, env=env,
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    records = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return p.returncode, err_file.read_text(), records, usage.ru_maxrss * 1024


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    return _fuzz().write_bombs(tmp_path_factory.mktemp("bombs"), "test")


# ----------------------------------------------------------------------------- the budget itself

def test_sizes_parse_and_bad_values_are_one_line_errors(monkeypatch):
    assert B.parse_size("2G") == 2 * 1024**3
    assert B.parse_size("512 MiB") == 512 * 1024**2
    assert B.parse_size("64k") == 65536
    assert B.parse_size("1000") == 1000
    for bad in ("", "lots", "-1G", "0", "2X"):
        with pytest.raises(ValueError):
            B.parse_size(bad)
    monkeypatch.delenv("MEDFORENSICS_DECODE_BUDGET", raising=False)
    assert B.resolve() == B.DEFAULT_BUDGET == 2 * 1024**3
    monkeypatch.setenv("MEDFORENSICS_DECODE_BUDGET", "lots")
    with pytest.raises(MedForensicsError, match="MEDFORENSICS_DECODE_BUDGET: decode budget 'lots' is not a size"):
        B.resolve()
    assert B.resolve("1M") == 1024**2  # an argument wins over the environment


def test_budget_argument_and_environment(monkeypatch):
    from pydicom.data import get_testdata_file

    (src,), _ = discover([get_testdata_file("CT_small.dcm")])
    monkeypatch.delenv("MEDFORENSICS_DECODE_BUDGET", raising=False)
    assert load_source(src).pixels.shape == (128, 128)
    with pytest.raises(MedForensicsError) as e:
        load_source(src, budget="100K")
    msg = str(e.value)
    assert msg.startswith(str(src.path)) and "\n" not in msg
    assert "1 frame x 128 x 128 x 1 sample x 2 bytes" in msg and "over the 100.0 KiB decode budget" in msg
    monkeypatch.setenv("MEDFORENSICS_DECODE_BUDGET", "100K")
    with pytest.raises(MedForensicsError, match="decode budget"):
        load_source(src)
    assert load_source(src, budget="1G").pixels.shape == (128, 128)


def test_inflation_is_counted_in_bounded_chunks(tmp_path):
    fuzz = _fuzz()
    p = tmp_path / "z.raw"
    p.write_bytes(fuzz.deflate_zeros(b"head", 50 << 20, b"tail"))
    assert B.inflated_size(p, 0, 100 << 20, raw=True) == (50 << 20) + 8
    tracemalloc.start()
    assert B.inflated_size(p, 0, 10 << 20, raw=True) is None
    assert tracemalloc.get_traced_memory()[1] < 8 << 20
    tracemalloc.stop()
    g = tmp_path / "z.gz"
    g.write_bytes(fuzz.deflate_zeros(b"", 3 << 20, wrap="gzip") * 2)  # two gzip members, as gzip reads them
    assert B.inflated_size(g, 0, 100 << 20, raw=False) == 6 << 20


def test_an_element_claiming_gigabytes_allocates_nothing(tmp_path):
    """A damaged length of 4 GB made Python allocate 4 GB before finding the file shorter (a
    MemoryError under a memory limit); read through a memory map it costs the file's size."""
    import struct

    fuzz = _fuzz()
    ds = fuzz._dicom_dataset()
    body = fuzz._dataset_bytes(ds)
    claim = struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, 0xFFFFFFF0) + bytes(1000)
    i = body.index(b"\x10\x00")  # after the first elements of group 0008: put the claim early
    p = tmp_path / "claims.dcm"
    p.write_bytes(fuzz._meta_bytes(ds.file_meta) + body[:i] + claim)
    tracemalloc.start()
    try:
        read_header(p)
    except MedForensicsError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20, f"reading a 5 kB file allocated {peak / 2**20:.0f} MiB"


def _peak_of_load(path: Path) -> tuple[int, int]:
    """(bytes the loader's estimate says, bytes its peak RSS rose by) for loading ``path`` in a fresh process."""
    code = f"""
import json, sys
from medforensics.io import discover, load_source
(src,), _ = discover([{str(path)!r}])
open("/proc/self/clear_refs", "w").write("5")
rss0 = int(open("/proc/self/statm").read().split()[1]) * 4096
load_source(src, budget="1T")
hwm = [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(hwm - rss0)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[-1])


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs to reset the peak RSS")
def test_estimates_cover_what_loading_really_takes(tmp_path):
    """The working bytes per pixel of io.budget (measured once on 4096 x 4096 images) still cover
    the loaders' real peak memory, and are not more than 1.6 times it."""
    import nibabel as nib
    from PIL import Image as PILImage

    fuzz = _fuzz()
    rng = np.random.default_rng(0)
    g = rng.integers(0, 255, (3000, 3000)).astype(np.uint8)
    ds = fuzz._dicom_dataset(3000, 3000, rng.integers(0, 4000, (3000, 3000)).astype(np.uint16))
    ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "CT", 1, -1024
    ds.save_as(tmp_path / "ct.dcm", enforce_file_format=True)
    PILImage.fromarray(g.astype(np.uint16) * 200).save(tmp_path / "g16.png")
    PILImage.fromarray(np.stack([g, g.T, g[::-1]], -1)).save(tmp_path / "rgb.png")
    v = rng.integers(-1000, 1000, (384, 384, 96)).astype(np.int16)
    im = nib.Nifti1Image(v, np.eye(4))
    im.header.set_slope_inter(2.0, -3.0)
    nib.save(im, tmp_path / "v.nii.gz")
    cases = {"ct.dcm": B.check("ct.dcm", {"rows": 3000, "columns": 3000}, 2, B.WORK_DICOM),
             "g16.png": B.check("g16.png", {"rows": 3000, "columns": 3000}, 2, B.WORK_RASTER_GRAY + 2),
             "rgb.png": B.check("rgb.png", {"rows": 3000, "columns": 3000}, 4, B.WORK_RASTER_COLOUR),
             "v.nii.gz": B.check("v.nii.gz", {"i": 384, "j": 384, "k": 96}, 2, B.WORK_NIFTI)}
    for name, estimate in cases.items():
        peak = _peak_of_load(tmp_path / name)
        assert peak <= estimate <= 1.6 * peak, f"{name}: estimate {estimate / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------- each bomb, scanned under a memory limit

EXPECTED = {"dicom_deflate": "inflates to more than 32.0 MiB", "dicom_dims": "30000 x 30000 x 3 samples x 1 byte",
            "nifti_dims": "512 x 512 x 256 x 2 bytes, int16", "nifti_extension": "far more than the 8.4 KiB its header declares",
            "png16": "6000 x 6000 x 2 bytes, Pillow mode I;16", "png_rgb": "3000 x 3000 x 4 bytes, Pillow mode RGB", "tiff": "6000 x 6000 x 4 bytes, Pillow mode F",
            "png_pillow_limit": "more pixels than the decoder allows"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bomb_is_refused_under_a_memory_limit(bombs, tmp_path, name):
    path = bombs[name]
    code, err, records, peak = scan_limited([path], tmp_path / "out.jsonl")
    assert "Traceback" not in err, err[-2000:]
    assert code == 1, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error ")]
    assert len(lines) == 1 and str(path) in lines[0] and EXPECTED[name] in lines[0], err[-2000:]
    assert name == "png_pillow_limit" or "decode budget" in lines[0] or "decompression bomb" in lines[0]
    (rec,) = records
    assert rec["path"] == str(path) and rec.get("score") is None and rec.get("label") is None
    assert len(rec["errors"]) == 1 and EXPECTED[name] in rec["errors"][0] and "\n" not in rec["errors"][0]
    assert peak < 2 * 1024**3, f"{name}: peak RSS {peak / 2**30:.1f} GiB"


def test_real_ct_slice_scans_under_the_same_limit(shared_data, tmp_path):
    slice_ = min((shared_data / "ct" / "lidc-idri").rglob("*.dcm"))
    code, err, records, peak = scan_limited([slice_], tmp_path / "out.jsonl")
    assert "Traceback" not in err and code == 0, err[-2000:]
    (rec,) = records
    assert rec.get("label") is not None and not rec["errors"] and rec["evidence"]


def test_compressed_data_disagreeing_with_its_header_never_reaches_gdcm(tmp_path):
    """GDCM aborts the process (an uncaught C++ exception) on a JPEG-LS stream of 64 x 64 pixels in
    a dataset that says 32,768 x 64 and on 8-bit JPEG data with BitsStored 1, and crashes on a JPEG
    frame header of 40-bit samples: such files are
    refused before decoding. Loaded in a child process, so that a regression fails this test
    instead of killing the test run."""
    import pydicom
    from pydicom.data import get_testdata_file

    cases = {"rows.dcm": ("MR_small_jpeg_ls_lossless.dcm", {"Rows": 32768}, "stream holds 64 x 64 pixels"),
             "bits.dcm": ("SC_jpeg_no_color_transform.dcm", {"BitsStored": 1, "HighBit": 0},
                          "BitsStored 1 with BitsAllocated 8"),
             "highbit.dcm": ("MR_small_jpeg_ls_lossless.dcm", {"HighBit": 3}, "HighBit 3 with BitsStored 16")}
    cases["precision.dcm"] = ("SC_jpeg_no_color_transform.dcm", {}, "stream has 40-bit samples")  # GDCM: segfault
    for name, (seed, changes, _) in cases.items():
        ds = pydicom.dcmread(get_testdata_file(seed))
        for k, v in changes.items():
            setattr(ds, k, v)
        if name == "precision.dcm":
            data = bytearray(ds.PixelData)
            sof = data.index(b"\xff\xc0")
            data[sof + 4] = 40
            ds.PixelData = bytes(data)
        ds.save_as(tmp_path / name)
    code = f"""
from medforensics.io import load_instance
for name in {sorted(cases)!r}:
    try:
        load_instance({str(tmp_path)!r} + "/" + name)
        print(name, "LOADED")
    except Exception as e:
        print(name, type(e).__name__, e)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"the loader crashed: {r.returncode} {r.stderr[-1000:]}"
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    for name, (_, _, expected) in cases.items():
        assert lines[name].startswith("MedForensicsError") and expected in lines[name], lines[name]


def test_a_series_is_checked_as_a_whole_before_decoding(lidc_series_dir, tmp_path, monkeypatch):
    """Each slice fits the budget; the stacked series does not: refused from the headers."""
    import shutil

    import medforensics.io.dicom as dicom_module

    for f in sorted(lidc_series_dir.glob("*.dcm"))[:20]:
        shutil.copy(f, tmp_path / f.name)
    (src,), _ = discover([tmp_path])
    assert src.kind == "dicom-series" and len(src.files) == 20
    decoded = []
    monkeypatch.setattr(dicom_module, "_decode", lambda *a, **k: decoded.append(a) or (_ for _ in ()).throw(AssertionError))
    with pytest.raises(MedForensicsError, match=r"its 20 instances stack to 40.0 MiB .* over the 32.0 MiB decode budget"):
        load_source(src, budget="32M")
    assert decoded == []                      # nothing was decoded
    monkeypatch.undo()
    assert load_source(src, budget="64M").pixels.shape == (20, 512, 512)
