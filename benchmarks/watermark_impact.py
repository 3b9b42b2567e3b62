"""Diagnostic impact, capacity and speed of the reversible fragile watermark on real images.

    python benchmarks/watermark_impact.py [--ct N] [--blocks 32,64] [--repeat 3]

Real CT: N slices spread over the LIDC-IDRI-0001 series (../shared/data, skipped when absent) and
pydicom's CT_small; real radiographs: the CR files of pydicom-data (RG1 15-bit, RG3 10-bit, uncompressed).
Every image is embedded, checked and restored (restoration is asserted bit-exact). Prints a
markdown table: max deviation in stored values and physical units (HU for CT), mean absolute
deviation, PSNR (peak = Bits Stored range), payload / capacity bits, embed and check time (median
of --repeat runs, one thread of numpy).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from medforensics.datapath import data_root  # noqa: E402
from medforensics.provenance.watermark import check, embed  # noqa: E402

DATA = data_root()


def _images(n_ct: int) -> list[tuple[str, pydicom.Dataset]]:
    from pydicom.data import get_testdata_file

    out = []
    lidc = sorted((DATA / "ct" / "lidc-idri").rglob("*.dcm"))
    for f in [lidc[int(i)] for i in np.linspace(0, len(lidc) - 1, n_ct)] if lidc else []:
        out.append((f"LIDC {f.name}", f))
    if not lidc:
        print(f"(no LIDC slices under {DATA}; CT rows from pydicom data only)", file=sys.stderr)
    for name in ("CT_small.dcm", "RG1_UNCI.dcm", "RG3_UNCI.dcm"):
        path = get_testdata_file(name)
        if path:
            out.append((name, path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [(label, pydicom.dcmread(p)) for label, p in out]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct", type=int, default=8, help="LIDC slices to measure (spread over the series)")
    ap.add_argument("--blocks", default="32,64", help="block sizes, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (median)")
    args = ap.parse_args()
    rows = []
    for label, ds in _images(args.ct):
        a = ds.pixel_array
        bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
        slope = abs(float(getattr(ds, "RescaleSlope", 1) or 1))
        unit = "HU" if ds.Modality == "CT" else "stored"
        for block in (int(b) for b in args.blocks.split(",")):
            te, tc = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                marked, rep = embed(a, bits_stored=bits, signed=signed, block=block)
                t1 = time.perf_counter()
                res = check(marked, bits_stored=bits, signed=signed, block=block)
                tc.append(time.perf_counter() - t1)
                te.append(t1 - t0)
            assert res.intact and np.array_equal(res.restored, a), f"{label}: restoration not exact"
            rows.append((label, ds.Modality, f"{a.shape[0]}x{a.shape[1]}", f"{bits}{'s' if signed else 'u'}", block,
                         rep.max_abs_dev, f"{rep.max_abs_dev * slope:g} {unit}", f"{rep.mean_abs_dev:.3f}",
                         f"{rep.psnr_db:.1f}", f"{rep.payload_bits}/{rep.capacity_bits}",
                         f"{1000 * np.median(te):.0f}", f"{1000 * np.median(tc):.0f}",
                         " ".join(f"{k}:{v}" for k, v in rep.modes.items())))
            print(f"done {label} block {block}", file=sys.stderr)
    head = ("image", "mod", "size", "bits", "block", "max dev (stored)", "max dev (phys)", "mean |dev|", "PSNR dB",
            "payload/capacity bits", "embed ms", "check ms", "modes (blocks)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
