"""Speed of the transparency log and the size of its proofs.

    python benchmarks/ledger_speed.py [--max 1000000] [--batch 1000] [--url postgresql://...] [DATA_DIR]

Grows one log (SQLite in a temporary folder, or the *empty* PostgreSQL database given by
``--url``) to ``--max`` leaves by appending precomputed fingerprints in batches of ``--batch``
(one transaction and one signed tree head per batch), and at n = 10, 100, 1k, ... reports:
inclusion proof length (hashes; the largest over up to 200 leaves), consistency proof length
from n/2 and from the previous checkpoint, the mean time of a ``lookup`` (indexed query + proof
+ its check against the signed head) and of a consistency proof. Then it times ``audit`` on the
whole log and ``fingerprint`` on real DICOM files (the LIDC series in DATA_DIR when present,
pydicom's CT_small otherwise). Target (issue): >= 5,000 appends/s with SQLite on 2 cores.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

from medforensics.provenance.ledger import Fingerprint, Ledger, fingerprint, generate_key
from medforensics.provenance.merkle import verify_consistency
from medforensics.datapath import data_root

DEFAULT = data_root()  # --data, else $MEDFORENSICS_DATA, else ../shared/data beside the repository


def fps(start: int, n: int) -> list[Fingerprint]:
    return [Fingerprint(f"1.2.826.0.1.3680043.10.{i}", f"{i:064x}", f"{i * 7 + 1:064x}") for i in range(start, start + n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--max", type=int, default=1_000_000, help="leaves to grow the log to")
    ap.add_argument("--batch", type=int, default=1000, help="appends per transaction")
    ap.add_argument("--url", default=None, help="an empty PostgreSQL database URL instead of SQLite")
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        location = args.url or str(Path(tmp) / "bench.db")
        lg = Ledger.create(location, generate_key())
        checkpoints = [10 ** k for k in range(1, 8) if 10 ** k <= args.max]
        if args.max not in checkpoints:
            checkpoints.append(args.max)
        print(f"log: {lg._db.dialect}, batches of {args.batch}, up to {args.max:,} leaves")
        print(f"{'n':>9} {'log2 n':>6} {'incl max':>8} {'cons n/2':>8} {'cons prev':>9} {'lookup ms':>9} "
              f"{'cons ms':>7} {'appends/s':>10}")
        n, prev, append_time = 0, 0, 0.0
        heads = {0: lg.head().root_hash}
        for cp in checkpoints:
            t0 = time.perf_counter()
            while n < cp:
                k = min(args.batch, cp - n)
                lg.append(fps(n, k))
                n += k
            dt = time.perf_counter() - t0
            append_time += dt
            rate = (cp - prev) / dt
            head = lg.head()
            heads[cp] = head.root_hash
            sample = sorted({rng.randrange(cp) for _ in range(200)} | {0, cp - 1})
            incl = max(len(lg.inclusion_proof(i, cp)) for i in sample)
            t1 = time.perf_counter()
            look = [rng.randrange(cp) for _ in range(200)]
            for i in look:
                assert lg.lookup(fps(i, 1)[0]).status == "unchanged"
            lookup_ms = (time.perf_counter() - t1) / len(look) * 1000
            half = max(1, cp // 2)
            t2 = time.perf_counter()
            for _ in range(50):
                cons_half = lg.consistency_proof(half, cp)
            cons_ms = (time.perf_counter() - t2) / 50 * 1000
            assert verify_consistency(half, cp, lg.root(half), head.root_hash, cons_half)
            cons_prev = lg.consistency_proof(prev, cp) if prev else []
            if prev:
                assert verify_consistency(prev, cp, heads[prev], head.root_hash, cons_prev)
            print(f"{cp:>9,} {math.log2(cp):>6.1f} {incl:>8} {len(cons_half):>8} {len(cons_prev):>9} "
                  f"{lookup_ms:>9.3f} {cons_ms:>7.3f} {rate:>10,.0f}")
            sys.stdout.flush()
            prev = cp
        print(f"appends: {n:,} in {append_time:.1f} s = {n / append_time:,.0f} per second "
              f"(batches of {args.batch}, one signed head each)")
        t0 = time.perf_counter()
        rep = lg.audit()
        print(f"audit of {rep.leaves:,} leaves and {rep.nodes:,} nodes: {time.perf_counter() - t0:.1f} s, ok={rep.ok}")
        lg.close()
        if args.url is None:
            size = (Path(tmp) / "bench.db").stat().st_size + sum(
                p.stat().st_size for p in Path(tmp).glob("bench.db-*"))
            print(f"SQLite file size: {size / 2**20:.0f} MiB ({size / n:.0f} bytes per leaf)")
    lidc = next((args.data / "ct" / "lidc-idri" / "LIDC-IDRI-0001").rglob("*.dcm"), None) \
        if (args.data / "ct").is_dir() else None
    files = sorted(lidc.parent.glob("*.dcm")) if lidc else []
    if not files:
        from pydicom.data import get_testdata_file
        files = [Path(get_testdata_file("CT_small.dcm"))] * 50
    t0 = time.perf_counter()
    for f in files:
        fingerprint(f)
    dt = time.perf_counter() - t0
    print(f"fingerprint: {len(files)} DICOM files ({files[0].parent.name}) in {dt:.2f} s = {len(files) / dt:.0f} per second")


if __name__ == "__main__":
    main()
