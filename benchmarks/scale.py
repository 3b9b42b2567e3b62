"""Scaling of ``medforensics scan``: instances per second with 1 and 2 local workers, with the
Dask engine and without, and from a real Orthanc over DICOMweb (issue 17, item 5).

Every configuration is one ``medforensics scan INPUTS --json OUT -q`` process, timed from start
to end, on the same inputs (by default the fitted CT series LIDC-IDRI-0001, 133 instances, the
two short series of lidc-idri-small, 23 instances, and the 65 instances of ``ct/slices``: 221
instances in 68 items, so that two workers have items to share). A second run of each configuration on one
small instance (pydicom's ``CT_small.dcm``) measures the fixed cost (starting Python, loading the
detectors and models, starting the pool or cluster); the steady rate is the instances of the
main run over its time minus that fixed cost -- what an archive of millions of instances sees.

    python benchmarks/scale.py [--out scale.json] [--workers 1 2] [--no-dicomweb] [INPUT ...]

DICOMweb needs Orthanc and its plugin (Debian ``orthanc``, ``orthanc-dicomweb``): the benchmark
starts one on free local ports with the test suite's helper (``tests/orthanc_server.py``),
uploads the inputs, and scans ``dicomweb+http://...`` instead of the folders.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _default_inputs() -> list[Path]:
    sys.path.insert(0, str(REPO / "src"))
    from medforensics.datapath import data_root

    root = data_root(None)
    lidc = next((root / "ct" / "lidc-idri" / "LIDC-IDRI-0001").rglob("*.dcm")).parent
    return [lidc, root / "ct" / "lidc-idri-small", root / "ct" / "slices"]


def _small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def run(inputs: list[str], workers: int, engine: str, extra: list[str], work: Path) -> dict:
    """One timed scan: wall seconds, instances and items read from its JSON lines."""
    out = work / f"scan-{engine}-{workers}-{time.monotonic_ns()}.jsonl"
    cmd = [sys.executable, "-m", "medforensics", "scan", *inputs, "--json", str(out), "-q",
           "--workers", str(workers), *extra]
    if engine == "dask":
        cmd += ["--engine", "dask"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode not in (0, 1):
        raise SystemExit(f"scan failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return {"wall_s": round(wall, 2), "items": len(records),
            "instances": sum(int(r.get("n_instances") or 1) for r in records),
            "errors": sum(1 for r in records if r.get("errors"))}


def measure(name: str, inputs: list[str], fixed_inputs: list[str], workers: int, engine: str, extra: list[str],
            work: Path) -> dict:
    main = run(inputs, workers, engine, extra, work)
    fixed = run(fixed_inputs, workers, engine, extra, work)
    steady = max(main["wall_s"] - fixed["wall_s"], 1e-6)
    row = {"configuration": name, "workers": workers, "engine": engine, **main,
           "fixed_s": fixed["wall_s"], "instances_per_s": round(main["instances"] / main["wall_s"], 2),
           "steady_instances_per_s": round(max(main["instances"] - fixed["instances"], 1) / steady, 2)}
    print(f"{name:28s} {workers} worker(s): {main['instances']} instances in {main['wall_s']:.1f} s "
          f"({row['instances_per_s']:.1f}/s; fixed cost {fixed['wall_s']:.1f} s, steady {row['steady_instances_per_s']:.1f}/s)",
          flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", type=Path, help="folders or files (default: LIDC-IDRI-0001, lidc-idri-small, ct/slices)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-dask", action="store_true", help="leave out the Dask engine")
    ap.add_argument("--no-dicomweb", action="store_true", help="leave out the Orthanc/DICOMweb runs")
    ap.add_argument("--out", type=Path, default=None, help="write the rows here as JSON (a new file)")
    args = ap.parse_args(argv)
    if args.out is not None and args.out.exists():
        raise SystemExit(f"{args.out}: already exists; choose a new name")
    inputs = [str(p) for p in (args.inputs or _default_inputs())]
    fixed = [str(_small())]
    rows = []
    with tempfile.TemporaryDirectory(prefix="mf-scale-") as tmp:
        work = Path(tmp)
        for workers in args.workers:
            rows.append(measure("local folders", inputs, fixed, workers, "local", [], work))
            if not args.no_dask:
                rows.append(measure("local folders, Dask", inputs, fixed, workers, "dask", [], work))
        if not args.no_dicomweb:
            rows += _dicomweb_rows(inputs, args.workers, work)
    print(f"\nmachine: {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    if args.out is not None:
        args.out.write_text(json.dumps({"cores": os.cpu_count(), "inputs": inputs, "rows": rows}, indent=1) + "\n")
    return 0


def _dicomweb_rows(inputs: list[str], workers_list: list[int], work: Path) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    import orthanc_server

    why = orthanc_server.missing()
    if why:
        print(f"DICOMweb left out: {why}")
        return []
    files = [f for p in map(Path, inputs) for f in ([p] if p.is_file() else sorted(p.rglob("*.dcm")))]
    rows = []
    server = orthanc_server.start(work / "orthanc")
    try:
        server.upload(files)
        small = orthanc_server.start(work / "orthanc-small")
        try:
            small.upload([_small()])
            url, url_small = server.dicomweb_with_user, small.dicomweb_with_user
            for workers in workers_list:
                rows.append(measure("Orthanc over DICOMweb", [url], [url_small], workers, "local", [], work))
        finally:
            small.stop()
    finally:
        server.stop()
    return rows


if __name__ == "__main__":
    sys.exit(main())
