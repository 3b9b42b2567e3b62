"""A reversible fragile watermark for 8-16-bit stored pixel values (CT, X-ray), localised to blocks.

The image is cut into blocks (default 32x32; the last row/column of blocks absorbs the remainder,
so edge blocks are 32..63 pixels on a side). Each block carries, by itself, a 64-bit digest of its
ORIGINAL stored values and its position (frame, row and column bounds): HMAC-SHA-256 with a secret
key, plain SHA-256 without one, truncated to 64 bits. The digest is hidden by reversible histogram
shifting of prediction errors (checkerboard rhombus predictor inside the block, two passes), so the
checker recovers the exact original block and the digest from the marked block alone.

>>> import pydicom
>>> from pydicom.data import get_testdata_file
>>> stored = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array   # 128x128, 16 bits signed
>>> marked, report = embed(stored, bits_stored=16, signed=True, key=b"secret")
>>> marked.dtype, report.n_blocks, report.max_abs_dev <= 4
(dtype('int16'), 16, True)
>>> result = check(marked, bits_stored=16, signed=True, key=b"secret")
>>> result.intact, result.tampered_blocks, bool((result.restored == stored).all())
(True, [], True)

Changing one pixel by one stored value breaks exactly its block; the other blocks still restore:

>>> marked[70, 40] += 1
>>> result = check(marked, bits_stored=16, signed=True, key=b"secret")
>>> result.intact, result.tampered_blocks, result.n_verified
(False, [(64, 32, 96, 64)], 15)

A block verifies only when (a) decoding yields an original and a digest that match and (b)
embedding that original again gives back the marked block bit for bit; so any change of any
pixel of a block (a payload-carrying pixel included) fails its block, except with probability
2^-64. Tampered blocks are reported as boxes ``(row0, col0, row1, col1)`` (stops exclusive;
``(frame, row0, col0, frame+1, row1, col1)`` for 3D input) and left as they are in ``restored``;
every other block is restored exactly.

Each block uses the first of these embedding modes that fits it (the checker tries them in the
same order; the digest tells which one was used): two-sided shifting with at most ``t`` stored
values of change (``2s``), one-sided upward (``up``) or downward (``dn``) shifting for blocks that
touch one end of the Bits Stored range, and value-histogram shifting with the peak/zero pair kept
in the least significant bits of the first pixels (``ni``, Ni et al. 2006) for blocks that touch
both ends. ``t`` grows 1, 2, 3, 4, 6, ... only where a noisy block needs more room; one-sided modes
are used only where two-sided shifting could overflow. So no pixel ever leaves the Bits Stored
range and no location map is needed.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import MedForensicsError, ignoring_warnings

__all__ = ["embed", "check", "restore", "embed_file", "check_file", "restore_file", "declared", "read_key_file", "EmbedReport",
           "WatermarkCheck", "DIGEST_BITS", "LOSSLESS_SYNTAXES", "PRIVATE_CREATOR"]

DIGEST_BITS = 64
_MAGIC = b"medforensics-wm1"
#: Block sizes ``check`` tries, in this order, when none is given.
CHECK_BLOCKS = (32, 16, 64, 128)
_PROBE_PIXELS = 32 * 32 * 24  # pixels in the probe, at most
_PROBE = 24  # blocks sampled to decide whether a watermark of a given block size is there at all


@dataclass(frozen=True)
class _Mode:
    kind: str  # "2s", "up", "dn", "ni"
    t: int

    @property
    def name(self) -> str:
        return f"{self.kind}{self.t}"


def _modes() -> list[_Mode]:
    out: list[_Mode] = []
    for t in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        out += [_Mode("2s", t), _Mode("up", t), _Mode("dn", t)]
        if t == 2:
            out.append(_Mode("ni", 1))
    return out


MODES = _modes()


def _range(bits_stored: int, signed: bool) -> tuple[int, int]:
    if not 2 <= int(bits_stored) <= 16:
        raise MedForensicsError(None, f"bits_stored must be 2..16, not {bits_stored}")
    b = int(bits_stored)
    return (-(1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)


# ----------------------------------------------------------------------------------- geometry
def _bounds(n: int, block: int) -> list[tuple[int, int]]:
    k = max(1, n // block)
    starts = [i * block for i in range(k)]
    return [(s, starts[i + 1] if i + 1 < k else n) for i, s in enumerate(starts)]


def _blocks(shape: tuple[int, int], block: int) -> list[tuple[int, int, int, int]]:
    """Blocks as (row0, col0, row1, col1), row-major."""
    return [(r0, c0, r1, c1) for r0, r1 in _bounds(shape[0], block) for c0, c1 in _bounds(shape[1], block)]


def _groups(boxes: list[tuple[int, int, int, int]]) -> dict[tuple[int, int], list[int]]:
    g: dict[tuple[int, int], list[int]] = {}
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        g.setdefault((r1 - r0, c1 - c0), []).append(i)
    return g


class _Shape:
    """Masks and neighbour counts of one block shape (checkerboard passes A = black, B = white)."""

    _cache: dict[tuple[int, int], "_Shape"] = {}

    def __init__(self, h: int, w: int):
        ii, jj = np.indices((h, w))
        self.black = ((ii + jj) % 2 == 0).ravel()
        self.white = ~self.black
        one = np.pad(np.ones((h, w), np.int64), 1)
        self.cnt = (one[:-2, 1:-1] + one[2:, 1:-1] + one[1:-1, :-2] + one[1:-1, 2:]).ravel()
        self.fcnt = self.cnt.astype(np.float64)
        self.h, self.w = h, w

    @classmethod
    def get(cls, h: int, w: int) -> "_Shape":
        if (h, w) not in cls._cache:
            cls._cache[(h, w)] = cls(h, w)
        return cls._cache[(h, w)]

    def predict(self, flat: np.ndarray) -> np.ndarray:
        """Rhombus mean (floor) of the up to 4 neighbours inside the block, for every pixel.

        (Float division is exact here: a true integer quotient is representable, and a fractional
        one is at least 1/3 from the next integer.)"""
        v = flat.reshape(-1, self.h, self.w)
        s = np.zeros(v.shape, np.float64)
        s[:, 1:, :] += v[:, :-1, :]
        s[:, :-1, :] += v[:, 1:, :]
        s[:, :, 1:] += v[:, :, :-1]
        s[:, :, :-1] += v[:, :, 1:]
        s = s.reshape(flat.shape[0], -1)
        s /= self.fcnt
        return np.floor(s, out=s).astype(np.int32)


# ----------------------------------------------------------------------------------- digests
def _digest(block: np.ndarray, pos: tuple[int, ...], bits: int, signed: bool, key: bytes | None) -> bytes:
    msg = _MAGIC + struct.pack("<BB5q", bits, int(signed), *pos) + np.ascontiguousarray(block, "<i4").tobytes()
    if key:
        return hmac.new(key, msg, hashlib.sha256).digest()[: DIGEST_BITS // 8]
    return hashlib.sha256(msg).digest()[: DIGEST_BITS // 8]


def _payload(digests: list[bytes], width: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(b"".join(digests), np.uint8).reshape(len(digests), -1), axis=1)
    out = np.zeros((len(digests), max(width, DIGEST_BITS)), np.int32)
    out[:, :DIGEST_BITS] = bits
    return out


# ----------------------------------------------------------------------------------- PEE modes
def _fits(mode: _Mode, mins: np.ndarray, maxs: np.ndarray, lo: int, hi: int) -> np.ndarray:
    t = mode.t
    if mode.kind == "2s":
        return (mins >= lo + t) & (maxs <= hi - t)
    if mode.kind == "up":
        return maxs <= hi - t
    if mode.kind == "dn":
        return mins >= lo + t
    return np.ones(mins.shape, bool)


def _carriers(e: np.ndarray, mode: _Mode) -> np.ndarray:
    t = mode.t
    if mode.kind == "2s":
        return (e >= -t) & (e < t)
    if mode.kind == "dn":
        e = -e
    m = -(t // 2)
    return (e >= m) & (e < m + t)


def _forward(e: np.ndarray, b: np.ndarray, mode: _Mode) -> np.ndarray:
    t = mode.t
    if mode.kind == "2s":
        return np.where((e >= -t) & (e < t), 2 * e + b, np.where(e >= t, e + t, e - t))
    sign = -1 if mode.kind == "dn" else 1
    e = sign * e
    m = -(t // 2)
    out = np.where(e < m, e, np.where(e < m + t, 2 * e - m + b, e + t))
    return sign * out


def _inverse(y: np.ndarray, mode: _Mode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marked errors -> (errors, bits, carrier mask)."""
    t = mode.t
    if mode.kind == "2s":
        c = (y >= -2 * t) & (y < 2 * t)
        e = np.where(c, y >> 1, np.where(y >= 2 * t, y - t, y + t))
        return e, y & 1, c
    sign = -1 if mode.kind == "dn" else 1
    y = sign * y
    m = -(t // 2)
    c = (y >= m) & (y < m + 2 * t)
    e = np.where(y < m, y, np.where(c, m + ((y - m) >> 1), y - t))
    return sign * e, (y - m) & 1, c


def _pee_embed(x: np.ndarray, mode: _Mode, payload: np.ndarray, sh: _Shape) -> tuple[np.ndarray, np.ndarray]:
    """Embed ``payload`` (n, L) into flat blocks ``x`` (n, P); returns marked blocks and capacities."""
    y = x.copy()
    offset = np.zeros(x.shape[0], np.int32)
    for sel in (sh.black, sh.white):  # pass A predicts from original white; pass B from marked black
        p = sh.predict(y)[:, sel]
        e = x[:, sel] - p
        c = _carriers(e, mode)
        rank = np.cumsum(c, axis=1, dtype=np.int32) - 1 + offset[:, None]
        b = np.take_along_axis(payload, np.clip(rank, 0, payload.shape[1] - 1), axis=1) * c
        y[:, sel] = p + _forward(e, b, mode)
        offset += c.sum(axis=1)
    return y, offset


def _pee_decode(y: np.ndarray, mode: _Mode, sh: _Shape) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marked flat blocks -> (originals, first 64 bits, plausible); plausible means enough capacity and
    zero padding bits."""
    x = y.copy()
    parts = {}
    for name, sel in (("B", sh.white), ("A", sh.black)):
        p = sh.predict(x)[:, sel]
        e, b, c = _inverse(y[:, sel] - p, mode)
        x[:, sel] = p + e
        parts[name] = (b, c)
    bb = np.concatenate([parts["A"][0], parts["B"][0]], axis=1)
    cc = np.concatenate([parts["A"][1], parts["B"][1]], axis=1)
    rank = np.cumsum(cc, axis=1, dtype=np.int32) - 1
    ok = (cc.sum(axis=1) >= DIGEST_BITS) & ~(cc & (rank >= DIGEST_BITS) & (bb == 1)).any(axis=1)
    bits = np.zeros((y.shape[0], DIGEST_BITS), np.int32)
    rows, cols = np.nonzero(cc & (rank < DIGEST_BITS))
    bits[rows, rank[rows, cols]] = bb[rows, cols]
    return x, bits, ok


# ----------------------------------------------------------------------------------- Ni mode
def _ni_embed(x: np.ndarray, payload: np.ndarray, lo: int, bits: int) -> np.ndarray | None:
    """Value-histogram shifting of one flat block; peak and zero bins in the LSBs of the first pixels."""
    nh = 2 * bits
    if x.size <= nh:
        return None
    u = x - lo
    hist = np.bincount(u[nh:], minlength=1 << bits)
    peak = int(np.argmax(hist))
    above = np.flatnonzero(hist[peak + 1:] == 0)
    below = np.flatnonzero(hist[:peak] == 0)
    cands = []
    if above.size:
        cands.append((int(above[0]) + 1, peak + int(above[0]) + 1))
    if below.size:
        cands.append((peak - int(below[-1]), int(below[-1])))
    if not cands or hist[peak] < nh + DIGEST_BITS:
        return None
    zero = min(cands)[1]
    d = 1 if zero > peak else -1
    r = u[nh:].copy()
    between = (r - peak) * d > 0
    between &= (r - zero) * d < 0
    is_peak = r == peak
    carried = np.concatenate([u[:nh] & 1, payload[:DIGEST_BITS]])
    b = np.zeros(r.size, np.int64)
    b[is_peak] = np.concatenate([carried, np.zeros(int(is_peak.sum()) - carried.size, np.int64)])
    r = r + d * between + d * b
    header = np.array([(peak >> (bits - 1 - i)) & 1 for i in range(bits)]
                      + [(zero >> (bits - 1 - i)) & 1 for i in range(bits)], np.int64)
    head = (u[:nh] & ~1) | header
    return np.concatenate([head, r]) + lo


def _ni_plausible(y: np.ndarray, lo: int, bits: int) -> np.ndarray:
    """Vectorised pre-check of many flat blocks: do the header's peak bins hold enough carriers?"""
    nh = 2 * bits
    if y.shape[1] <= nh:
        return np.zeros(y.shape[0], bool)
    w = (1 << np.arange(bits - 1, -1, -1)).astype(np.int64)
    hb = (y[:, :nh] - lo) & 1
    peak, zero = hb[:, :bits] @ w, hb[:, bits:] @ w
    d = np.where(zero > peak, 1, -1)
    r = y[:, nh:] - lo
    n = ((r == peak[:, None]) | (r == (peak + d)[:, None])).sum(axis=1)
    return (peak != zero) & (n >= nh + DIGEST_BITS)


def _ni_decode(y: np.ndarray, lo: int, bits: int) -> tuple[np.ndarray, np.ndarray] | None:
    nh = 2 * bits
    if y.size <= nh:
        return None
    u = y - lo
    hb = u[:nh] & 1
    peak = int(sum(int(v) << (bits - 1 - i) for i, v in enumerate(hb[:bits])))
    zero = int(sum(int(v) << (bits - 1 - i) for i, v in enumerate(hb[bits:])))
    if peak == zero:
        return None
    d = 1 if zero > peak else -1
    r = u[nh:]
    carrier = (r == peak) | (r == peak + d)
    shifted = ((r - (peak + d)) * d > 0) & ((r - zero) * d <= 0)
    carried = (r[carrier] - peak) * d
    if carried.size < nh + DIGEST_BITS or carried[nh + DIGEST_BITS:].any():
        return None
    x = r - d * shifted
    x[carrier] = peak
    head = (u[:nh] & ~1) | carried[:nh]
    return np.concatenate([head, x]) + lo, carried[nh:nh + DIGEST_BITS]


# ----------------------------------------------------------------------------------- one frame
def _embed_group(x: np.ndarray, digests: list[bytes], sh: _Shape, lo: int, hi: int, bits: int,
                 boxes: list[tuple[int, int, int, int]]) -> tuple[np.ndarray, list[str], np.ndarray]:
    n = x.shape[0]
    payload = _payload(digests, x.shape[1])
    y = x.copy()
    names = [""] * n
    caps = np.zeros(n, np.int64)
    remaining = np.arange(n)
    mins, maxs = x.min(axis=1), x.max(axis=1)
    for mode in MODES:
        if not remaining.size:
            break
        fit = _fits(mode, mins[remaining], maxs[remaining], lo, hi)
        if mode.kind in ("up", "dn"):  # one-sided only where two-sided shifting could overflow
            fit &= ~_fits(_Mode("2s", mode.t), mins[remaining], maxs[remaining], lo, hi)
        idx = remaining[fit]
        if not idx.size:
            continue
        if mode.kind == "ni":
            done = []
            for i in idx:
                r = _ni_embed(x[i], payload[i], lo, bits)
                if r is not None:
                    y[i], names[i], caps[i] = r, mode.name, DIGEST_BITS
                    done.append(i)
            done = np.array(done, np.int64)
        else:
            yy, cap = _pee_embed(x[idx], mode, payload[idx], sh)
            ok = (cap >= DIGEST_BITS) & (yy.min(axis=1) >= lo) & (yy.max(axis=1) <= hi)
            done = idx[ok]
            y[done], caps[done] = yy[ok], cap[ok]
            for i in done:
                names[i] = mode.name
        remaining = np.setdiff1d(remaining, done, assume_unique=True)
    if remaining.size:
        r0, c0, r1, c1 = boxes[int(remaining[0])]
        raise MedForensicsError(None, f"block rows {r0}:{r1} cols {c0}:{c1} is too noisy to carry a {DIGEST_BITS}-bit "
                                      f"digest reversibly ({remaining.size} such block(s)); try a larger block")
    return y, names, caps


def _decode_group(y: np.ndarray, sh: _Shape, pos: list[tuple[int, ...]], lo: int, hi: int, bits: int,
                  signed: bool, key: bytes | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    n = y.shape[0]
    x = y.copy()
    verified = np.zeros(n, bool)
    names = [""] * n
    remaining = np.arange(n)
    ymin, ymax = y.min(axis=1), y.max(axis=1)
    for mode in MODES:
        if not remaining.size:
            break
        idx = remaining
        # cheap filters: a one-sided block was within t of its end, so its marked values are within 2t
        if mode.kind == "up":
            idx = idx[ymin[idx] < lo + 2 * mode.t]
        elif mode.kind == "dn":
            idx = idx[ymax[idx] > hi - 2 * mode.t]
        elif mode.kind == "ni":
            idx = idx[_ni_plausible(y[idx], lo, bits)]
        if not idx.size:
            continue
        if mode.kind == "ni":
            cand = []
            for i in idx:
                r = _ni_decode(y[i], lo, bits)
                if r is not None and _digest(r[0], pos[i], bits, signed, key) == np.packbits(r[1]).tobytes():
                    cand.append((i, r[0]))
            good = []
            for i, orig in cand:
                again = _ni_embed(orig, _payload([_digest(orig, pos[i], bits, signed, key)], orig.size)[0], lo, bits)
                if again is not None and np.array_equal(again, y[i]):
                    x[i], names[i] = orig, mode.name
                    good.append(i)
        else:
            xx, dbits, ok = _pee_decode(y[idx], mode, sh)
            ok &= _fits(mode, xx.min(axis=1), xx.max(axis=1), lo, hi)
            packed = np.packbits(dbits.astype(np.uint8), axis=1)
            good_local = [j for j in np.flatnonzero(ok)
                          if _digest(xx[j], pos[idx[j]], bits, signed, key) == packed[j].tobytes()]
            good = []
            if good_local:
                gl = np.array(good_local)
                again, _ = _pee_embed(xx[gl], mode, _payload([packed[j].tobytes() for j in gl], y.shape[1]), sh)
                same = (again == y[idx[gl]]).all(axis=1)
                for j in gl[same]:
                    x[idx[j]], names[idx[j]] = xx[j], mode.name
                    good.append(idx[j])
        if good:
            verified[np.array(good)] = True
            remaining = np.setdiff1d(remaining, np.array(good), assume_unique=True)
    return x, verified, names


def _gather(img: np.ndarray, boxes, idxs) -> np.ndarray:
    return np.stack([img[boxes[i][0]:boxes[i][2], boxes[i][1]:boxes[i][3]].ravel() for i in idxs]).astype(np.int32)


def _scatter(img: np.ndarray, boxes, idxs, flat: np.ndarray) -> None:
    for k, i in enumerate(idxs):
        r0, c0, r1, c1 = boxes[i]
        img[r0:r1, c0:c1] = flat[k].reshape(r1 - r0, c1 - c0)


# ----------------------------------------------------------------------------------- public API
@dataclass
class EmbedReport:
    """What embedding did: geometry, capacity, modes used, distortion (stored values), time."""

    shape: tuple[int, ...]
    bits_stored: int
    signed: bool
    block: int
    keyed: bool
    n_blocks: int
    payload_bits: int
    capacity_bits: int
    modes: dict[str, int]
    n_changed: int
    max_abs_dev: int
    mean_abs_dev: float
    psnr_db: float
    seconds: float
    #: Filled by :func:`embed_file`: rescale slope, physical unit ("HU" for CT) and deviations in it.
    physical_unit: str | None = None
    max_abs_dev_physical: float | None = None
    mean_abs_dev_physical: float | None = None
    transfer_syntax: str | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["shape"] = list(self.shape)
        d["psnr_db"] = None if not np.isfinite(self.psnr_db) else round(float(self.psnr_db), 3)
        return d


@dataclass
class WatermarkCheck:
    """Result of checking a (possibly) watermarked array or file.

    ``present``: at least one block verifies (a watermark made with this key, or without key when
    none is given, is there); ``intact``: every block verifies; ``tampered_blocks``: boxes of the
    blocks that do not, ``(row0, col0, row1, col1)`` or ``(frame, row0, col0, frame+1, row1, col1)``;
    ``restored``: the original stored values in every verified block, the checked values elsewhere.
    """

    present: bool
    intact: bool
    n_blocks: int
    n_verified: int
    tampered_blocks: list[tuple[int, ...]]
    restored: np.ndarray
    block: int | None
    keyed: bool
    modes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    path: str | None = None
    header_declared: bool | None = None

    @property
    def status(self) -> str:
        if self.intact:
            return "intact"
        if self.present:
            return f"tampered at {len(self.tampered_blocks)} block(s)"
        if self.header_declared:
            return "watermark declared in header but none verifies (pixels altered everywhere, or wrong key)"
        return "no watermark"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status, "present": self.present, "intact": self.intact,
                "n_blocks": self.n_blocks, "n_verified": self.n_verified, "block": self.block, "keyed": self.keyed,
                "tampered_blocks": [list(map(int, b)) for b in self.tampered_blocks], "modes": self.modes,
                "header_declared": self.header_declared, "seconds": round(self.seconds, 4)}


def _frames(stored: np.ndarray, bits_stored: int, signed: bool) -> tuple[np.ndarray, int, int]:
    a = np.asarray(stored)
    if a.ndim not in (2, 3) or not np.issubdtype(a.dtype, np.integer):
        raise MedForensicsError(None, f"expected a 2D or 3D integer array of stored values, got {a.ndim}D {a.dtype}")
    lo, hi = _range(bits_stored, signed)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise MedForensicsError(None, f"stored values {int(a.min())}..{int(a.max())} are outside the "
                                      f"{'signed' if signed else 'unsigned'} {bits_stored}-bit range {lo}..{hi}")
    return (a if a.ndim == 3 else a[None]), lo, hi


def embed(stored: np.ndarray, *, bits_stored: int, signed: bool, key: bytes | None = None,
          block: int = 32) -> tuple[np.ndarray, EmbedReport]:
    """Watermark stored values (2D, or 3D frames first); returns the marked array (same dtype) and a report.

    Raises MedForensicsError when values leave the Bits Stored range or a block cannot carry its digest.
    """
    t0 = time.perf_counter()
    if block < 4:
        raise MedForensicsError(None, f"block must be at least 4 pixels, not {block}")
    frames, lo, hi = _frames(stored, bits_stored, signed)
    out = np.empty(frames.shape, np.int64)
    modes: Counter = Counter()
    capacity = 0
    boxes = _blocks(frames.shape[1:], block)
    for k, frame in enumerate(frames):
        f64 = frame.astype(np.int64)
        res = f64.copy()
        for (h, w), idxs in _groups(boxes).items():
            x = _gather(f64, boxes, idxs)
            digests = [_digest(x[j], (k, *boxes[i]), bits_stored, signed, key) for j, i in enumerate(idxs)]
            try:
                y, names, caps = _embed_group(x, digests, _Shape.get(h, w), lo, hi, bits_stored,
                                              [boxes[i] for i in idxs])
            except MedForensicsError as e:
                raise MedForensicsError(None, (f"frame {k}: " if frames.shape[0] > 1 else "") + e.problem) from None
            _scatter(res, boxes, idxs, y)
            modes.update(names)
            capacity += int(caps.sum())
        out[k] = res
    marked = out.reshape(np.asarray(stored).shape).astype(np.asarray(stored).dtype)
    dev = np.abs(out - frames.astype(np.int64))
    mse = float((dev.astype(np.float64) ** 2).mean()) if dev.size else 0.0
    peak = float(hi - lo)
    report = EmbedReport(shape=tuple(np.asarray(stored).shape), bits_stored=int(bits_stored), signed=bool(signed),
                         block=int(block), keyed=bool(key), n_blocks=len(boxes) * frames.shape[0],
                         payload_bits=DIGEST_BITS * len(boxes) * frames.shape[0], capacity_bits=capacity,
                         modes=dict(sorted(modes.items())), n_changed=int((dev > 0).sum()),
                         max_abs_dev=int(dev.max()) if dev.size else 0, mean_abs_dev=float(dev.mean()) if dev.size else 0.0,
                         psnr_db=float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse),
                         seconds=time.perf_counter() - t0)
    return marked, report


def _check_frames(frames, lo, hi, bits, signed, key, block, boxes, only=None):
    """Decode all (or ``only``: list of (frame, block index)) blocks; returns restored, verified, names."""
    restored = frames.astype(np.int64).copy()
    verified = np.zeros((frames.shape[0], len(boxes)), bool)
    modes: Counter = Counter()
    groups = _groups(boxes)
    for k in range(frames.shape[0]):
        f64 = restored[k]
        for (h, w), idxs in groups.items():
            if only is not None:
                idxs = [i for i in idxs if (k, i) in only]
                if not idxs:
                    continue
            y = _gather(f64, boxes, idxs)
            x, ok, names = _decode_group(y, _Shape.get(h, w), [(k, *boxes[i]) for i in idxs], lo, hi, bits, signed, key)
            _scatter(f64, boxes, [i for j, i in enumerate(idxs) if ok[j]], x[ok])
            verified[k, idxs] = ok
            modes.update(n for n in names if n)
    return restored, verified, modes


def check(marked: np.ndarray, *, bits_stored: int, signed: bool, key: bytes | None = None,
          block: int | None = None) -> WatermarkCheck:
    """Verify a watermark block by block and restore the verified blocks (see :class:`WatermarkCheck`).

    ``block`` defaults to trying 32, 16, 64 and 128 (a few sampled blocks decide which is there).
    """
    t0 = time.perf_counter()
    a = np.asarray(marked)
    frames, lo, hi = _frames(a, bits_stored, signed)
    found = None
    for b in ([block] if block else CHECK_BLOCKS):
        boxes = _blocks(frames.shape[1:], b)
        everything = [(k, i) for k in range(frames.shape[0]) for i in range(len(boxes))]
        n_probe = max(1, min(_PROBE, _PROBE_PIXELS // (b * b)))
        step = max(1, len(everything) // n_probe)
        probe = set(everything[::step][:n_probe])
        _, ok, _ = _check_frames(frames, lo, hi, bits_stored, signed, key, b, boxes, only=probe)
        if ok.any():
            found = (b, boxes)
            break
    if found is None:
        nb = len(_blocks(frames.shape[1:], block or CHECK_BLOCKS[0])) * frames.shape[0]
        return WatermarkCheck(False, False, nb, 0, [], a.copy(), block, bool(key), {}, time.perf_counter() - t0)
    b, boxes = found
    restored, verified, modes = _check_frames(frames, lo, hi, bits_stored, signed, key, b, boxes)
    bad = []
    for k, i in zip(*np.nonzero(~verified)):
        r0, c0, r1, c1 = boxes[i]
        bad.append((int(k), r0, c0, int(k) + 1, r1, c1) if a.ndim == 3 else (r0, c0, r1, c1))
    return WatermarkCheck(present=True, intact=not bad, n_blocks=int(verified.size), n_verified=int(verified.sum()),
                          tampered_blocks=bad, restored=restored.reshape(a.shape).astype(a.dtype), block=b,
                          keyed=bool(key), modes=dict(sorted(modes.items())), seconds=time.perf_counter() - t0)


def restore(marked: np.ndarray, *, bits_stored: int, signed: bool, key: bytes | None = None,
            block: int | None = None, partial: bool = False) -> np.ndarray:
    """The exact original stored values. Raises MedForensicsError when no watermark verifies, or when
    blocks are tampered unless ``partial`` (then tampered blocks keep their current values)."""
    res = check(marked, bits_stored=bits_stored, signed=signed, key=key, block=block)
    if not res.present:
        raise MedForensicsError(None, "no watermark verifies" + (" with this key" if key else " (is a key needed?)"))
    if not res.intact and not partial:
        raise MedForensicsError(None, f"watermark broken in {len(res.tampered_blocks)} block(s), first at "
                                      f"{res.tampered_blocks[0]}; pass partial=True to restore the others")
    return res.restored


# ----------------------------------------------------------------------------------- DICOM files
#: Private creator of the header note written by :func:`embed_file` (group 0x0077).
PRIVATE_CREATOR = "MEDFORENSICS WATERMARK"
_PRIVATE_GROUP = 0x0077
#: Transfer syntaxes whose pixels can be marked (lossless); any other is refused.
LOSSLESS_SYNTAXES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG Lossless
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless
}


def _read(path: str | Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise MedForensicsError(path, "no such file")
    try:
        with ignoring_warnings():
            ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as e:
        raise MedForensicsError.wrap(path, e, "not a readable DICOM file") from None
    if "PixelData" not in ds:
        raise MedForensicsError(path, "has no pixel data")
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2"))
    if ts not in LOSSLESS_SYNTAXES:
        from pydicom.uid import UID
        raise MedForensicsError(path, f"transfer syntax {UID(ts).name} is lossy; a reversible watermark needs "
                                      f"lossless pixel data (native, RLE, JPEG/JPEG-LS/JPEG 2000 lossless)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise MedForensicsError(path, "colour images are not supported (SamplesPerPixel != 1)")
    try:
        with ignoring_warnings():
            arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - any decoder problem is one line about this file
        raise MedForensicsError.wrap(path, e, "pixel data cannot be decoded") from None
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return ds, arr, bits, signed


def declared(ds) -> bool:
    """Whether a DICOM header (pixel data not needed) carries the note that :func:`embed_file` writes."""
    return _note(ds) is not None


def read_key_file(path: str | Path) -> bytes:
    """The secret key in a key file (its bytes, outer whitespace stripped); a clear error otherwise."""
    path = Path(path)
    try:
        data = path.read_bytes().strip()
    except OSError as e:
        raise MedForensicsError(path, f"watermark key cannot be read ({e.strerror or e})") from None
    if not data:
        raise MedForensicsError(path, "watermark key file is empty")
    return data


def _note(ds) -> Any:
    try:
        return ds.private_block(_PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None


def _write(ds, arr: np.ndarray, dst: Path, src: Path) -> str:
    """Store ``arr`` as the pixel data of ``ds`` (same transfer syntax where it can be encoded
    losslessly, else Explicit VR Little Endian) and save to the new file ``dst``."""
    from pydicom.uid import ExplicitVRLittleEndian

    from ..io.write import new_file

    new_file(dst)
    ts = ds.file_meta.TransferSyntaxUID
    if ts.is_compressed:
        try:
            with ignoring_warnings():
                ds.compress(ts, arr, generate_instance_uid=False)
                back = ds.pixel_array
            if not np.array_equal(back.reshape(arr.shape), arr):
                raise ValueError("round trip differs")
        except Exception:  # noqa: BLE001 - no lossless encoder for this syntax here
            ds.PixelData = arr.tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    else:
        ds.PixelData = arr.tobytes()
    ds.save_as(dst, enforce_file_format=False)
    return ds.file_meta.TransferSyntaxUID.name


def _units(ds) -> tuple[float, str]:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    unit = "HU" if str(ds.get("Modality", "")) == "CT" else str(ds.get("RescaleType", "") or "stored value")
    return abs(slope), unit


def embed_file(src: str | Path, dst: str | Path, key: bytes | None = None, *, block: int = 32) -> EmbedReport:
    """Watermark one DICOM file into the new file ``dst``; every header element and UID is kept, a
    private block (0077,xx "MEDFORENSICS WATERMARK") notes the watermark. Multi-frame: per frame."""
    src, dst = Path(src), Path(dst)
    ds, arr, bits, signed = _read(src)
    if _note(ds) is not None:
        raise MedForensicsError(src, "is already watermarked (restore it first)")
    stored = arr.reshape((-1,) + arr.shape[-2:]) if arr.ndim == 3 else arr
    try:
        marked, report = embed(stored, bits_stored=bits, signed=signed, key=key, block=block)
    except MedForensicsError as e:
        raise MedForensicsError(src, e.problem) from None
    blk = ds.private_block(_PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    blk.add_new(0x01, "LO", f"reversible fragile watermark v1 block={block}")
    blk.add_new(0x02, "CS", "HMAC_SHA256_64" if key else "SHA256_64")
    report.transfer_syntax = _write(ds, marked.reshape(arr.shape), dst, src)
    slope, unit = _units(ds)
    report.physical_unit = unit
    report.max_abs_dev_physical = report.max_abs_dev * slope
    report.mean_abs_dev_physical = report.mean_abs_dev * slope
    report.path = str(dst)
    return report


def check_file(path: str | Path, key: bytes | None = None) -> WatermarkCheck:
    """Check the watermark of one DICOM file from its pixels (the header note is only reported)."""
    path = Path(path)
    ds, arr, bits, signed = _read(path)
    try:
        res = check(arr, bits_stored=bits, signed=signed, key=key)
    except MedForensicsError as e:
        raise MedForensicsError(path, e.problem) from None
    res.path = str(path)
    res.header_declared = _note(ds) is not None
    return res


def restore_file(src: str | Path, dst: str | Path, key: bytes | None = None, *, partial: bool = False) -> WatermarkCheck:
    """Write the original pixels (and header, without the watermark note) of a watermarked DICOM file to
    the new file ``dst``. Refuses tampered files unless ``partial`` (tampered blocks keep their values)."""
    src, dst = Path(src), Path(dst)
    res = check_file(src, key)
    if not res.present:
        raise MedForensicsError(src, "no watermark verifies" + (" with this key" if key else " (is a key needed?)"))
    if not res.intact and not partial:
        raise MedForensicsError(src, f"watermark broken in {len(res.tampered_blocks)} block(s), first at "
                                     f"{res.tampered_blocks[0]}; use --partial to restore the others")
    ds, arr, _, _ = _read(src)
    blk = _note(ds)
    if blk is not None:
        for offset in (0x01, 0x02):
            if offset in blk:
                del blk[offset]
        creator_tag = (_PRIVATE_GROUP << 16) | (blk.block_start >> 8)
        if creator_tag in ds:
            del ds[creator_tag]
    _write(ds, res.restored.reshape(arr.shape), dst, src)
    return res
