"""Security test of the provenance issue: single bit flips in signed and in watermarked instances.

* 10,000 random single-bit flips in the encoded bytes of a signed instance -- in its pixel data and
  in the values of its signed attributes -- each in a fresh copy of the file: every one makes
  verification fail (or the file unreadable), never crash.
* 10,000 random single-bit flips in the stored pixel values of watermarked instances: every one is
  detected and localised to the block that holds the flipped pixel.
* 1,000 verifications of untouched, varied instances (500 signed, 500 watermarked) raise no alarm.

The flips are seeded, so a failure is reproducible; the seed and the flip are in the message.
"""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import keyword_for_tag
from pydicom.uid import generate_uid

from medforensics.provenance.keys import new_identity
from medforensics.provenance.signature import sign_dataset, verify_dataset
from medforensics.provenance.watermark import check, embed

pytestmark = pytest.mark.slow
N_FLIPS = 10_000
N_UNTOUCHED = 1_000
SEED = 20261123


@pytest.fixture(scope="module")
def identity():
    return new_identity("Security test signer", algorithm="ec")


def _signed_bytes(identity, source: str = "CT_small.dcm") -> bytes:
    ds = pydicom.dcmread(get_testdata_file(source))
    sign_dataset(ds, identity)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _signed_ranges(data: bytes) -> tuple[tuple[int, int], list[tuple[int, int, str]]]:
    """Byte ranges ``[start, stop)`` of the pixel data value and of the value of every other signed
    attribute in the encoded file, values nested in signed sequences included. (Item tags and
    lengths are encoding, not attribute values: PS3.15 leaves item lengths out of the MAC.)"""
    ds = pydicom.dcmread(io.BytesIO(data), defer_size=None)
    params = ds.MACParametersSequence[0]
    signed = {int(t) for t in params.DataElementsSigned} if "DataElementsSigned" in params else None

    def values(dataset, tags, base, name):
        for t in tags:
            raw = dataset.get_item(t)  # the raw element, with its offset (before conversion)
            start = getattr(raw, "value_tell", None)
            label = f"{name}{keyword_for_tag(int(t)) or f'{int(t):08X}'}"
            if start is None or not raw.length:
                continue
            if dataset[t].VR == "SQ":
                # items are read from the sequence's own bytes: their offsets are relative to it
                for item in dataset[t].value:
                    yield from values(item, list(item.keys()), start if base is None else base, label + ">")
            elif raw.length != 0xFFFFFFFF:
                yield ((base or 0) + start, (base or 0) + start + raw.length, label)

    top = [t for t in list(ds.keys())
           if int(t) not in (0xFFFAFFFA, 0x4FFE0001) and (signed is None or int(t) in signed)]
    ranges = list(values(ds, top, None, ""))
    pixel = next((a0, a1) for a0, a1, name in ranges if name == "PixelData")
    others = [r for r in ranges if r[2] != "PixelData"]
    assert others and all(0 <= a0 < a1 <= len(data) for a0, a1, _ in ranges)
    return pixel, others


def _verify_bytes(data: bytes):
    """``(ok, problem)`` for encoded bytes; an unreadable file counts as detected."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - a flip may break the encoding itself: detected
        return False, f"unreadable: {type(e).__name__}"
    checks = verify_dataset(ds)
    return bool(checks) and all(c.ok for c in checks), "; ".join(r for c in checks for r in c.reasons)[:120]


def test_every_bit_flip_in_a_signed_instance_is_detected(identity):
    data = _signed_bytes(identity)
    assert _verify_bytes(data)[0]
    (p0, p1), attrs = _signed_ranges(data)
    rng = np.random.default_rng(SEED)
    weights = np.array([a1 - a0 for a0, a1, _ in attrs], float)
    n_attr = N_FLIPS * 3 // 10              # 30% in signed attributes, 70% in the pixel data
    missed, names = [], set()
    buf = bytearray(data)
    for i in range(N_FLIPS):
        if i < n_attr:
            a0, a1, name = attrs[rng.choice(len(attrs), p=weights / weights.sum())]
            pos = int(rng.integers(a0, a1))
            names.add(name)
        else:
            pos = int(rng.integers(p0, p1))
            name = "PixelData"
        bit = 1 << int(rng.integers(0, 8))
        buf[pos] ^= bit
        try:
            ok, _ = _verify_bytes(bytes(buf))
        finally:
            buf[pos] ^= bit                   # back to the untouched file for the next flip
        if ok:
            missed.append((i, name, pos, bit))
    assert bytes(buf) == data
    assert not missed, f"{len(missed)} undetected flips, first: {missed[:5]} (seed {SEED})"
    assert len(names) >= min(20, n_attr // 10)  # the flips reached many different signed attributes


def _watermarked(seed: int):
    """Watermarked real stored values: CT_small (16-bit signed) and MR_small (16-bit signed)."""
    out = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
        marked, _ = embed(ds.pixel_array, bits_stored=bits, signed=signed)
        out.append((name, marked, bits, signed))
    return out


def test_every_bit_flip_in_a_watermarked_instance_is_detected_and_localised():
    rng = np.random.default_rng(SEED + 1)
    images = _watermarked(SEED)
    missed, misplaced = [], []
    for i in range(N_FLIPS):
        name, marked, bits, signed = images[i % len(images)]
        r, c = int(rng.integers(0, marked.shape[0])), int(rng.integers(0, marked.shape[1]))
        bit = int(rng.integers(0, bits))
        flipped = marked.copy()
        flipped[r, c] = (flipped[r, c].astype(np.int64) ^ (1 << bit)) if not signed else \
            np.int64(np.uint16(np.int16(flipped[r, c])) ^ np.uint16(1 << bit)).astype(np.int16)
        res = check(flipped, bits_stored=bits, signed=signed)
        if res.intact:
            missed.append((i, name, r, c, bit))
        elif res.present and not any(b[0] <= r < b[2] and b[1] <= c < b[3] for b in res.tampered_blocks):
            misplaced.append((i, name, r, c, bit, res.tampered_blocks))
    assert not missed, f"{len(missed)} undetected flips, first: {missed[:5]} (seed {SEED + 1})"
    assert not misplaced, f"{len(misplaced)} flips localised to the wrong block, first: {misplaced[:3]}"


def test_a_thousand_untouched_instances_raise_no_alarm(identity):
    rng = np.random.default_rng(SEED + 2)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    alarms = []
    for i in range(N_UNTOUCHED // 2):         # signed: varied pixels, sizes and attributes
        ds = copy.deepcopy(template)
        rows, cols = int(rng.integers(16, 97)), int(rng.integers(16, 97))
        ds.Rows, ds.Columns = rows, cols
        ds.PixelData = rng.integers(-1024, 3072, (rows, cols), dtype=np.int16).tobytes()
        ds.SOPInstanceUID = generate_uid()
        ds.PatientName = f"Test^Patient{i}"
        ds.InstanceNumber = i
        ds.SliceLocation = float(rng.normal(0, 100))
        sign_dataset(ds, identity, block_digest=bool(i % 2))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        ok, why = _verify_bytes(buf.getvalue())
        if not ok:
            alarms.append(("signed", i, why))
    for i in range(N_UNTOUCHED // 2):         # watermarked: varied bit depths, signs, sizes, content
        bits = int(rng.integers(12, 17))
        signed = bool(rng.integers(0, 2))
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        shape = (int(rng.integers(32, 130)), int(rng.integers(32, 130)))
        kind = i % 3
        if kind == 0:                         # smooth anatomy-like ramp plus noise
            yy, xx = np.mgrid[:shape[0], :shape[1]]
            a = lo + (hi - lo) * (0.3 + 0.2 * np.sin(yy / 9.0) * np.cos(xx / 13.0)) + rng.normal(0, 20, shape)
        elif kind == 1:                       # heavy noise (a low-dose scan), anywhere in the range
            a = rng.uniform(lo, hi) + rng.normal(0, float(rng.uniform(5, 60)), shape)
        else:                                 # flat regions touching both ends of the range
            a = np.where(rng.random(shape) < 0.5, lo, hi)
        a = np.clip(a, lo, hi).astype(np.int16 if signed else np.uint16)
        marked, _ = embed(a, bits_stored=bits, signed=signed)
        res = check(marked, bits_stored=bits, signed=signed)
        if not res.intact or not np.array_equal(res.restored, a):
            alarms.append(("watermarked", i, bits, signed, kind, res.tampered_blocks[:2]))
    assert not alarms, f"{len(alarms)} false alarms, first: {alarms[:5]}"
