"""Signed and verified 512x512 CT slices per second, in memory, on 2 cores.

    python benchmarks/signature_speed.py [--n 133] [--workers 2] [--json OUT.json]

Uses the LIDC-IDRI-0001 slices from ../shared/data/ct/lidc-idri (else pydicom's CT_small,
repeated). Files are read into memory first; each worker parses its share (not timed), then
times ``sign_dataset`` over it, writes the signed datasets to bytes and parses them again (not
timed), then times ``verify_dataset`` with the CA as trust anchor. Throughput = slices / the
slowest worker's time. RSA-2048 and EC P-256 keys, SHA-256 MAC, block digests on (the default).
Target (issue): >= 200 signed and >= 200 verified slices per second on 2 cores.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import time
from medforensics.datapath import data_root
from pathlib import Path

DATA = data_root() / "ct" / "lidc-idri"


def _files(n: int) -> list[bytes]:
    paths = sorted(DATA.rglob("*.dcm"))[:n] if DATA.is_dir() else []
    if not paths:
        from pydicom.data import get_testdata_file
        paths = [Path(get_testdata_file("CT_small.dcm"))] * n
    return [p.read_bytes() for p in paths]


def _worker(args) -> dict:
    blobs, alg, key_pem, cert_pem, ca_pem, block = args
    import pydicom
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from medforensics.provenance.keys import Identity
    from medforensics.provenance.signature import sign_dataset, verify_dataset

    ident = Identity(key=serialization.load_pem_private_key(key_pem, None),
                     cert=x509.load_pem_x509_certificate(cert_pem))
    ca = [x509.load_pem_x509_certificate(ca_pem)]
    dss = [pydicom.dcmread(io.BytesIO(b)) for b in blobs]
    t0 = time.perf_counter()
    for ds in dss:
        sign_dataset(ds, ident, block_digest=block)
    t_sign = time.perf_counter() - t0
    signed = []
    for ds in dss:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True, implicit_vr=False, little_endian=True)
        signed.append(pydicom.dcmread(io.BytesIO(buf.getvalue())))
    t0 = time.perf_counter()
    ok = sum(all(c.ok for c in verify_dataset(ds, trust=ca)) for ds in signed)
    t_verify = time.perf_counter() - t0
    return {"n": len(dss), "sign_s": t_sign, "verify_s": t_verify, "ok": ok}


def run(n: int, workers: int, alg: str, block: bool) -> dict:
    from medforensics.provenance.keys import new_identity
    ident = new_identity(f"bench {alg}", algorithm=alg)
    from cryptography.hazmat.primitives import serialization
    pem = serialization.Encoding.PEM
    blobs = _files(n)
    shares = [blobs[i::workers] for i in range(workers)]
    jobs = [(s, alg, ident.key_pem(), ident.cert.public_bytes(pem), ident.chain[0].public_bytes(pem), block)
            for s in shares]
    with mp.get_context("spawn").Pool(workers) as pool:
        res = pool.map(_worker, jobs)
    total = sum(r["n"] for r in res)
    return {"key": alg, "block_digest": block, "slices": total, "workers": workers,
            "signed_per_s": round(total / max(r["sign_s"] for r in res), 1),
            "verified_per_s": round(total / max(r["verify_s"] for r in res), 1),
            "ms_per_sign_per_core": round(1000 * sum(r["sign_s"] for r in res) / total, 2),
            "ms_per_verify_per_core": round(1000 * sum(r["verify_s"] for r in res) / total, 2),
            "all_verified": sum(r["ok"] for r in res) == total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=133)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = [run(a.n, a.workers, alg, block) for alg in ("rsa", "ec") for block in (True, False)]
    print(f"{'key':4s} {'blocks':6s} {'slices':>6s} {'signed/s':>9s} {'verified/s':>10s} {'ms sign':>8s} "
          f"{'ms verify':>9s}  (per core)")
    for r in rows:
        print(f"{r['key']:4s} {str(r['block_digest']):6s} {r['slices']:6d} {r['signed_per_s']:9.1f} "
              f"{r['verified_per_s']:10.1f} {r['ms_per_sign_per_core']:8.2f} {r['ms_per_verify_per_core']:9.2f}"
              + ("" if r["all_verified"] else "  NOT ALL VERIFIED"))
    if a.json:
        with open(a.json, "x") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
