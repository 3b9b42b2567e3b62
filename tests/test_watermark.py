"""Reversible fragile watermark: exact restoration, detection and localisation of any change, keys, files, CLI."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medforensics.core import MedForensicsError
from medforensics.provenance import watermark as wm
from medforensics.provenance.watermark import check, check_file, embed, embed_file, restore, restore_file


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _lidc_slices(lidc_series_dir: Path, n: int) -> list[np.ndarray]:
    files = sorted(lidc_series_dir.glob("*.dcm"))
    pick = [files[int(i)] for i in np.linspace(0, len(files) - 1, n)]
    return [_read(f).pixel_array for f in pick]


def _range(bits, signed):
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _synthetic(bits: int, signed: bool, kind: str, rng, shape=(96, 80)) -> np.ndarray:
    lo, hi = _range(bits, signed)
    dtype = np.int16 if signed else np.uint16
    if kind == "min":
        a = np.full(shape, lo)
    elif kind == "max":
        a = np.full(shape, hi)
    elif kind == "constant":
        a = np.full(shape, (lo + hi) // 3)
    elif kind == "noise":  # smooth anatomy-like ramp plus noise, clipped into the range
        yy, xx = np.indices(shape)
        a = np.clip(np.round(lo + (hi - lo) * (0.2 + 0.6 * (yy + xx) / sum(shape)) + rng.normal(0, 6, shape)), lo, hi)
    elif kind == "extremes":  # saturated at both ends inside the same blocks, plus a noisy middle
        a = np.where(rng.random(shape) < 0.5, lo, hi)
        a[:, : shape[1] // 2] = np.clip(np.round((lo + hi) / 2 + rng.normal(0, 3, (shape[0], shape[1] // 2))), lo, hi)
        a[::7, ::5] = lo
        a[3::7, 2::5] = hi
        a[: shape[0] // 2, shape[1] // 2:] = lo
        a[shape[0] // 2:, shape[1] // 2:] = hi
        a[shape[0] // 2 - 3: shape[0] // 2 + 3, :] = rng.choice([lo, hi], (6, shape[1]))
    else:
        raise AssertionError(kind)
    return a.astype(dtype)


# ------------------------------------------------------------------------------- exact restoration
def test_real_ct_exact_restoration_and_small_change(lidc_series_dir):
    for a in _lidc_slices(lidc_series_dir, 3):
        marked, rep = embed(a, bits_stored=16, signed=True)
        assert marked.dtype == a.dtype and marked.shape == a.shape
        assert not np.array_equal(marked, a)
        assert rep.n_blocks == 256 and rep.payload_bits == 256 * 64 and rep.capacity_bits >= rep.payload_bits
        assert rep.max_abs_dev == int(np.abs(marked.astype(int) - a).max()) <= 8
        assert rep.psnr_db > 85
        res = check(marked, bits_stored=16, signed=True)
        assert res.present and res.intact and res.n_verified == 256 and res.tampered_blocks == [] and res.block == 32
        assert np.array_equal(res.restored, a)
        assert np.array_equal(restore(marked, bits_stored=16, signed=True), a)
        assert sum(res.modes.values()) == 256 and res.modes == rep.modes
    # larger blocks: more room per digest, so at most one stored value of change on this CT
    marked, rep = embed(a, bits_stored=16, signed=True, block=64)
    assert rep.max_abs_dev == 1
    assert np.array_equal(check(marked, bits_stored=16, signed=True).restored, a)


def test_ct_small_exact_restoration():
    a = _read(get_testdata_file("CT_small.dcm")).pixel_array
    marked, _ = embed(a, bits_stored=16, signed=True, key=b"k")
    assert np.array_equal(restore(marked, bits_stored=16, signed=True, key=b"k"), a)


@pytest.mark.parametrize("bits", [12, 14, 16])
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("kind", ["min", "max", "constant", "noise", "extremes"])
def test_synthetic_exact_restoration_in_range(bits, signed, kind):
    rng = np.random.default_rng(bits * 10 + signed)
    a = _synthetic(bits, signed, kind, rng)
    lo, hi = _range(bits, signed)
    marked, rep = embed(a, bits_stored=bits, signed=signed, block=32)
    assert int(marked.min()) >= lo and int(marked.max()) <= hi, "a value left the Bits Stored range"
    assert rep.max_abs_dev <= 2
    res = check(marked, bits_stored=bits, signed=signed)
    assert res.intact and np.array_equal(res.restored, a)
    # odd-sized image: edge blocks absorb the remainder
    b = a[:77, :71]
    m2, rep2 = embed(b, bits_stored=bits, signed=signed)
    assert rep2.n_blocks == 4
    assert np.array_equal(check(m2, bits_stored=bits, signed=signed).restored, b)


def test_multiframe_per_frame_boxes():
    rng = np.random.default_rng(3)
    a = np.stack([_synthetic(12, False, "noise", rng, (64, 64)) for _ in range(3)])
    marked, rep = embed(a, bits_stored=12, signed=False)
    assert rep.n_blocks == 12
    t = marked.copy()
    t[1, 40, 5] ^= 1
    res = check(t, bits_stored=12, signed=False)
    assert res.present and not res.intact and res.tampered_blocks == [(1, 32, 0, 2, 64, 32)]
    ok = np.ones(a.shape, bool)
    ok[1, 32:64, 0:32] = False
    assert np.array_equal(res.restored[ok], a[ok])
    # frames cannot be swapped: the frame index is in every digest
    swapped = marked[[1, 0, 2]]
    assert check(swapped, bits_stored=12, signed=False).n_verified == 4


def test_out_of_range_and_incompressible_input_refused():
    with pytest.raises(MedForensicsError, match="outside the unsigned 12-bit range"):
        embed(np.full((64, 64), 5000, np.uint16), bits_stored=12, signed=False)
    # uniform full-range noise is incompressible: no reversible scheme has room for the digests
    noise = np.random.default_rng(0).integers(0, 4096, (64, 64)).astype(np.uint16)
    with pytest.raises(MedForensicsError, match="too noisy to carry a 64-bit digest"):
        embed(noise, bits_stored=12, signed=False)


# ------------------------------------------------------------------------------- fragility
def test_2000_single_bit_flips_each_detected_in_its_block():
    """Every single-bit flip of a random pixel (payload carriers included) fails exactly its block.

    Vectorised: the 2,000 flipped copies of a marked 32x32 block are checked as one batch by the same
    per-block routine ``check`` uses; then 150 flips go through the public ``check`` for localisation."""
    rng = np.random.default_rng(7)
    a = _read(get_testdata_file("CT_small.dcm")).pixel_array  # 128x128 real CT, 16 blocks of 32
    marked, rep = embed(a, bits_stored=16, signed=True)
    boxes = wm._blocks(a.shape, 32)
    lo, hi = -32768, 32767
    sh = wm._Shape.get(32, 32)
    flips_per_block = 2000 // len(boxes)
    total = 0
    for bi, (r0, c0, r1, c1) in enumerate(boxes):
        blk = marked[r0:r1, c0:c1].astype(np.int32).ravel()
        pix = rng.integers(0, blk.size, flips_per_block)
        bit = rng.integers(0, 16, flips_per_block)
        batch = np.repeat(blk[None], flips_per_block, axis=0)
        u = batch[np.arange(flips_per_block), pix].astype(np.int64) & 0xFFFF
        u ^= (1 << bit)
        batch[np.arange(flips_per_block), pix] = np.where(u >= 32768, u - 65536, u)
        _, ok, _ = wm._decode_group(batch, sh, [(0, r0, c0, r1, c1)] * flips_per_block, lo, hi, 16, True, None)
        assert not ok.any(), f"{int((ok).sum())} flips in block {bi} went unnoticed"
        # the unflipped block does verify (the batch routine is not failing everything)
        _, ok0, _ = wm._decode_group(blk[None], sh, [(0, r0, c0, r1, c1)], lo, hi, 16, True, None)
        assert ok0.all()
        total += flips_per_block
    assert total == 2000
    # public API: each flip in a fresh copy, localised to the right block, everything else restored
    for _ in range(150):
        r, c, bit = int(rng.integers(0, 128)), int(rng.integers(0, 128)), int(rng.integers(0, 16))
        t = marked.copy()
        t.view(np.uint16)[r, c] ^= np.uint16(1 << bit)
        res = check(t, bits_stored=16, signed=True, block=32)
        assert res.present and not res.intact
        assert res.tampered_blocks == [(r // 32 * 32, c // 32 * 32, r // 32 * 32 + 32, c // 32 * 32 + 32)]
        keep = np.ones(a.shape, bool)
        keep[r // 32 * 32: r // 32 * 32 + 32, c // 32 * 32: c // 32 * 32 + 32] = False
        assert np.array_equal(res.restored[keep], a[keep])


def test_flips_in_side_information_detected():
    """Blocks saturated at both range ends use value-histogram shifting whose peak/zero bins sit in the
    LSBs of the first 2*BitsStored pixels (the scheme's only side information): flipping any bit of
    those pixels, or of the pixels that carry payload, fails the block."""
    a = _synthetic(12, False, "extremes", np.random.default_rng(5), shape=(32, 32))
    marked, rep = embed(a, bits_stored=12, signed=False)
    assert rep.modes == {"ni1": 1}
    flat = marked.ravel()
    hits = list(range(24))  # header pixels
    payload_px = np.flatnonzero((flat != a.ravel()))[:60]  # pixels the embedding changed
    hits += [int(i) for i in payload_px]
    for i in hits:
        for bit in range(12):
            t = flat.copy()
            t[i] ^= np.uint16(1 << bit)
            res = check(t.reshape(a.shape), bits_stored=12, signed=False, block=32)
            assert not res.intact and not res.present, (i, bit)


def test_pasted_patch_localised(lidc_series_dir):
    a = _lidc_slices(lidc_series_dir, 1)[0]
    marked, _ = embed(a, bits_stored=16, signed=True, key=b"secret")
    t = marked.copy()
    t[200:240, 300:340] = marked[100:140, 150:190]  # copy-move of a 40x40 patch inside the image
    res = check(t, bits_stored=16, signed=True, key=b"secret")
    assert res.present and not res.intact
    flagged = np.zeros(a.shape, bool)
    for r0, c0, r1, c1 in res.tampered_blocks:
        flagged[r0:r1, c0:c1] = True
    assert flagged[200:240, 300:340].all(), "the patch is not covered"
    patch_blocks = {(r, c) for r in range(192, 256, 32) for c in range(288, 352, 32)}
    assert {(b[0], b[1]) for b in res.tampered_blocks} == patch_blocks  # only the 4 blocks the patch touches
    with pytest.raises(MedForensicsError, match="broken in 4 block"):
        restore(t, bits_stored=16, signed=True, key=b"secret")
    part = restore(t, bits_stored=16, signed=True, key=b"secret", partial=True)
    assert np.array_equal(part[~flagged], a[~flagged])
    assert np.array_equal(part[flagged], t[flagged])  # tampered blocks are left as they are


def test_untouched_images_never_flagged(lidc_series_dir):
    for a in _lidc_slices(lidc_series_dir, 4):
        res = check(a, bits_stored=16, signed=True)
        assert not res.present and not res.intact and res.tampered_blocks == [] and res.status == "no watermark"
    rng = np.random.default_rng(1)
    for kind in ("constant", "noise", "extremes"):
        assert not check(_synthetic(12, False, kind, rng), bits_stored=12, signed=False).present
    with pytest.raises(MedForensicsError, match="no watermark verifies"):
        restore(a, bits_stored=16, signed=True)


def test_key_required_and_wrong_key_fails():
    a = _read(get_testdata_file("CT_small.dcm")).pixel_array
    marked, rep = embed(a, bits_stored=16, signed=True, key=b"right key")
    assert rep.keyed
    assert check(marked, bits_stored=16, signed=True, key=b"right key").intact
    for key in (b"wrong key", None):
        res = check(marked, bits_stored=16, signed=True, key=key)
        assert not res.present and not res.intact
    # and a keyless watermark does not verify under a key
    m2, _ = embed(a, bits_stored=16, signed=True)
    assert not check(m2, bits_stored=16, signed=True, key=b"right key").present


def test_blocks_cannot_be_swapped():
    a = _read(get_testdata_file("CT_small.dcm")).pixel_array
    marked, _ = embed(a, bits_stored=16, signed=True)
    t = marked.copy()
    t[0:32, 0:32], t[64:96, 64:96] = marked[64:96, 64:96], marked[0:32, 0:32]
    res = check(t, bits_stored=16, signed=True)
    assert sorted(res.tampered_blocks) == [(0, 0, 32, 32), (64, 64, 96, 96)]


# ------------------------------------------------------------------------------- files and CLI
def test_dicom_cli_round_trip(tmp_path, lidc_series_dir, run_cli):
    src = tmp_path / "in"
    src.mkdir()
    (src / "sub").mkdir()
    lidc = sorted(lidc_series_dir.glob("*.dcm"))[40]
    (src / "sub" / lidc.name).write_bytes(lidc.read_bytes())
    (src / "ct_small.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    rle = _read(get_testdata_file("CT_small.dcm"))
    rle.compress(pydicom.uid.RLELossless, generate_instance_uid=False)
    rle.save_as(src / "ct_rle.dcm")
    (tmp_path / "key").write_bytes(b"hospital secret\n")

    r = run_cli("watermark", "embed", src, "--out", tmp_path / "marked", "--key-file", tmp_path / "key")
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout and "HU" in r.stdout
    marked = tmp_path / "marked"
    assert sorted(p.relative_to(marked).as_posix() for p in marked.rglob("*.dcm")) == \
        ["ct_rle.dcm", "ct_small.dcm", f"sub/{lidc.name}"]
    for f in src.rglob("*.dcm"):
        o, m = _read(f), _read(marked / f.relative_to(src))
        assert m.SOPInstanceUID == o.SOPInstanceUID and m.SeriesInstanceUID == o.SeriesInstanceUID
        assert m.StudyInstanceUID == o.StudyInstanceUID
        assert m.file_meta.TransferSyntaxUID == o.file_meta.TransferSyntaxUID
        assert m.pixel_array.shape == o.pixel_array.shape and not np.array_equal(m.pixel_array, o.pixel_array)
        assert {e.tag for e in o} <= {e.tag for e in m}
        assert m.private_block(0x0077, wm.PRIVATE_CREATOR)[0x02].value == "HMAC_SHA256_64"

    # never overwrite
    r = run_cli("watermark", "embed", src, "--out", tmp_path / "marked", "--key-file", tmp_path / "key")
    assert r.returncode == 2 and "already exists" in r.stderr

    r = run_cli("watermark", "check", marked, "--key-file", tmp_path / "key", "--json", tmp_path / "c.jsonl")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [d["status"] for d in rows] == ["intact"] * 3 and all(d["header_declared"] for d in rows)
    assert run_cli("watermark", "check", marked).returncode == 1  # no key: not verified

    # tamper one pixel bit in the LIDC slice
    ds = _read(marked / "sub" / lidc.name)
    arr = ds.pixel_array.copy()
    arr.view(np.uint16)[300, 100] ^= np.uint16(4)
    ds.PixelData = arr.tobytes()
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    ds.save_as(tampered / "t.dcm")
    r = run_cli("watermark", "check", tampered, "--key-file", tmp_path / "key", "--json", tmp_path / "t.jsonl")
    assert r.returncode == 1 and "tampered at 1 block" in r.stdout
    assert json.loads((tmp_path / "t.jsonl").read_text())["tampered_blocks"] == [[288, 96, 320, 128]]
    r = run_cli("watermark", "restore", tampered, "--out", tmp_path / "rt", "--key-file", tmp_path / "key")
    assert r.returncode == 1 and "--partial" in r.stderr and not (tmp_path / "rt" / "t.dcm").exists()
    r = run_cli("watermark", "restore", tampered, "--out", tmp_path / "rt2", "--key-file", tmp_path / "key", "--partial")
    assert r.returncode == 0 and "partial" in r.stderr

    r = run_cli("watermark", "restore", marked, "--out", tmp_path / "restored", "--key-file", tmp_path / "key")
    assert r.returncode == 0, r.stderr
    for f in src.rglob("*.dcm"):
        o, b = _read(f), _read(tmp_path / "restored" / f.relative_to(src))
        assert b.PixelData == o.PixelData or np.array_equal(b.pixel_array, o.pixel_array)
        assert np.array_equal(b.pixel_array, o.pixel_array)
        assert b == o  # every element back as it was, the watermark note removed
    for name in ("ct_small.dcm", f"sub/{lidc.name}"):  # native files: bit-identical PixelData and file
        assert (tmp_path / "restored" / name).read_bytes() == (src / name).read_bytes()


def test_file_api_multiframe_and_lossy_refused(tmp_path, run_cli):
    src = get_testdata_file("eCT_Supplemental.dcm")  # 2 frames, 16-bit unsigned
    rep = embed_file(src, tmp_path / "m.dcm")
    assert rep.n_blocks == 2 * 256 and rep.physical_unit == "HU" and rep.max_abs_dev_physical is not None
    res = check_file(tmp_path / "m.dcm")
    assert res.intact and res.header_declared
    restore_file(tmp_path / "m.dcm", tmp_path / "r.dcm")
    assert _read(tmp_path / "r.dcm").PixelData == _read(src).PixelData
    with pytest.raises(FileExistsError):
        embed_file(src, tmp_path / "m.dcm")
    with pytest.raises(MedForensicsError, match="already watermarked"):
        embed_file(tmp_path / "m.dcm", tmp_path / "mm.dcm")
    assert not check_file(src).present and not check_file(src).header_declared

    lossy = get_testdata_file("693_J2KI.dcm")  # JPEG 2000 (lossy allowed)
    with pytest.raises(MedForensicsError, match="is lossy"):
        embed_file(lossy, tmp_path / "x.dcm")
    r = run_cli("watermark", "embed", lossy, "--out", tmp_path / "lossy")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and "693_J2KI.dcm" in lines[0] and "lossy" in lines[0] and "Traceback" not in r.stderr


def test_cli_output_problems_are_one_line_errors(tmp_path, run_cli):
    """A file where the output folder should be, or a JSON file in a missing folder: one line naming
    the path and the problem (issue 18), never a raw OS error, and nothing written."""
    ct = get_testdata_file("CT_small.dcm")
    (tmp_path / "file").write_text("x")
    for cmd in ("embed", "restore"):
        r = run_cli("watermark", cmd, ct, "--out", tmp_path / "file" / "out")
        assert r.returncode == 1, r.stderr
        assert "file/out: cannot create the folder" in r.stderr and "is a file, not a folder" in r.stderr
        assert "Errno" not in r.stderr and "Traceback" not in r.stderr
    r = run_cli("watermark", "embed", ct, "--out", tmp_path / "file")
    assert r.returncode == 2 and "exists and is not a folder" in r.stderr
    r = run_cli("watermark", "check", ct, "--json", tmp_path / "missing" / "c.jsonl")
    assert r.returncode == 2 and "missing does not exist" in r.stderr and "Errno" not in r.stderr
    assert (tmp_path / "file").read_text() == "x"
