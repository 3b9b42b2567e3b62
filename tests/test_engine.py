"""The Dask engine (``scan --engine dask``): the same records as a local scan, in the same order,
one task per series, reused results not submitted, a killed worker's series run again, the CLI.

One local cluster of 2 worker processes with 1 thread each serves the module (the CLI test starts
its own, as ``scan --engine dask --workers 2`` does)."""
from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install -e '.[test]')")

from medforensics.engine import DaskEngine  # noqa: E402
from medforensics.report.jsonl import partial_path, read_records  # noqa: E402
from medforensics.scan import scan  # noqa: E402

#: fast detectors for most runs (the default set runs once, on two small inputs)
FAST = ["dicom_header", "noise_residual", "copy_move", "ct_physics", "container"]


@pytest.fixture(scope="module")
def cluster():
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                      silence_logs=logging.ERROR) as c:
            yield c


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def inputs(shared_data) -> list[Path]:
    """pydicom's CT_small.dcm, two NIH radiographs and an 11-slice LIDC sub-series (a folder)."""
    from pydicom.data import get_testdata_file

    xrays = sorted((shared_data / "xray" / "nih-cxr14").glob("*.png"))[:2]
    series = sorted(p.parent for p in (shared_data / "ct" / "lidc-idri-small").rglob("*.dcm"))
    if len(xrays) < 2 or not series:
        pytest.skip("NIH radiographs or the small LIDC series not found in shared data")
    return [Path(get_testdata_file("CT_small.dcm")), *xrays, series[-1]]


def _records(verdicts) -> list[dict]:
    """The JSON records without their timings (the only field allowed to differ)."""
    out = []
    for v in verdicts:
        record = v.to_dict()
        record.pop("timings", None)
        out.append(record)
    return out


@pytest.fixture(scope="module")
def local_fast(inputs) -> list[dict]:
    return _records(scan(inputs, FAST))


def test_dask_scan_equals_local_scan(cluster, inputs, local_fast):
    with DaskEngine(cluster.scheduler_address) as engine:
        verdicts = list(scan(inputs, FAST, engine=engine))
    assert _records(verdicts) == local_fast
    # one task per series: the 11 LIDC slices are one item, and heatmaps did not travel
    assert [r["kind"] for r in local_fast] == ["image", "image", "image", "series"]
    assert local_fast[-1]["n_instances"] > 1
    assert all(e.heatmap is None for v in verdicts for e in v.evidence)
    assert all(r["assessed_by"] and not r["errors"] for r in local_fast)


def test_dask_scan_with_the_default_detectors_equals_local_scan(cluster, inputs):
    small = [inputs[0], inputs[1]]
    local = _records(scan(small))
    with DaskEngine(cluster.scheduler_address) as engine:
        assert _records(scan(small, engine=engine)) == local
    assert "learned_2d" in local[1]["assessed_by"]


def test_detectors_load_once_per_worker(client, cluster, inputs):
    from medforensics import engine as engine_module

    def loaded():
        return {k: id(v) for k, v in engine_module._LOADED.items()}

    with DaskEngine(cluster.scheduler_address) as engine:
        list(scan(inputs, FAST, engine=engine))
        first = client.run(loaded)
        list(scan(inputs, FAST, engine=engine))
        assert client.run(loaded) == first  # the same detector objects: not loaded again
    assert all(len(keys) == 1 for keys in first.values()) and len(first) == 2


def test_reused_results_are_not_submitted(client, cluster, inputs, local_fast):
    earlier = {}

    def reuse(src):
        if src.kind == "raster":
            earlier[str(src.path)] = v = scan([src.path], FAST).__next__()
            return v
        return None

    with distributed.get_task_stream(client) as ts, DaskEngine(cluster.scheduler_address) as engine:
        verdicts = list(scan(inputs, FAST, engine=engine, reuse=reuse))
    assert _records(verdicts) == local_fast
    assert [v for v in verdicts if v.path in earlier] == list(earlier.values())  # the same objects
    ran = [t["key"] for t in ts.data if "medforensics-scan" in str(t["key"])]
    assert len(ran) == len(inputs) - 2 == 2


def test_a_killed_worker_s_series_run_again(client, cluster, inputs, local_fast):
    killed: list[int] = []
    lost: list = []
    seen: list = []

    def kill_a_busy_worker(src):
        # called as each source is about to be submitted: by the third, two tasks are out
        seen.append(src)
        if not killed and len(seen) == 3:
            t0 = time.time()
            while time.time() - t0 < 30:
                busy = {w: keys for w, keys in client.processing().items() if keys}
                if busy:
                    worker, keys = next(iter(busy.items()))
                    pid = client.run(os.getpid, workers=[worker])[worker]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    lost.extend(keys)
                    break
                time.sleep(0.01)
        return None

    with DaskEngine(cluster.scheduler_address) as engine:
        verdicts = list(scan(inputs, FAST, engine=engine, reuse=kill_a_busy_worker))
    assert killed and lost, "no worker was busy: nothing was killed mid-run"
    assert killed[0] not in client.run(os.getpid).values()
    records = _records(verdicts)
    assert [r["path"] for r in records] == [r["path"] for r in local_fast]  # exactly one line each, in order
    assert len(records) == len(inputs)
    assert records == local_fast


def test_a_series_that_kills_every_worker_is_given_up_with_an_error(inputs, local_fast):
    """With ``allowed_failures=0`` a single worker death gives its task up: that item's line has
    the error (and no fingerprint, so that --resume tries it again); the others are as usual."""
    with DaskEngine(workers=2, allowed_failures=0) as engine:
        client = engine.client
        lost: list = []

        def kill_a_busy_worker(src):
            t0 = time.time()
            while not lost and time.time() - t0 < 30:
                busy = {w: keys for w, keys in client.processing().items() if keys}
                if busy:
                    worker, keys = next(iter(busy.items()))
                    os.kill(client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
                    lost.extend(keys)
                time.sleep(0.01)
            return None

        records = _records(scan(inputs, FAST, engine=engine,
                                reuse=lambda src: kill_a_busy_worker(src) if src.kind == "dicom-series" else None))
    assert lost
    assert [r["path"] for r in records] == [r["path"] for r in local_fast]
    failed = [r for r in records if r["errors"]]
    assert failed and all("every Dask worker that analysed it died" in r["errors"][0] for r in failed)
    assert all(r["fingerprint"] is None and r.get("score") is None for r in failed)
    assert [r for r in records if not r["errors"]] == [r for r in local_fast if r["path"] not in
                                                       {f["path"] for f in failed}]


def test_cli_engine_dask_resumes_a_local_scan(tmp_path, run_cli, inputs, local_fast):
    """A local scan of two inputs, then ``--engine dask --workers 2 --resume`` of all four: the
    two are reused, the others scanned on the cluster, the file equals a local scan of all."""
    out = tmp_path / "scan.jsonl"
    r = run_cli("scan", inputs[0], inputs[1], "--detectors", ",".join(FAST), "--json", out, "-q")
    assert r.code == 0, r.err
    r = run_cli("scan", *inputs, "--engine", "dask", "--workers", "2", "--detectors", ",".join(FAST),
                "--json", out, "--resume", "-q")
    assert r.code == 0, r.err
    assert "2 result(s) reused from the earlier run, 2 scanned now" in r.err
    assert "Traceback" not in r.err
    records = read_records(out)
    for record in records:
        record.pop("timings")
    assert records == local_fast


def test_cli_unreachable_scheduler_is_a_one_line_error(tmp_path, run_cli):
    import dask
    from pydicom.data import get_testdata_file

    out = tmp_path / "scan.jsonl"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        r = run_cli("scan", get_testdata_file("CT_small.dcm"), "--engine", "dask", "--scheduler",
                    "tcp://127.0.0.1:9", "--json", out)
    assert r.code == 1
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and "tcp://127.0.0.1:9: cannot connect to the Dask scheduler" in lines[0], r.err
    assert "Traceback" not in r.err + r.out
    assert not out.exists() and not partial_path(out).exists()
    r = run_cli("scan", get_testdata_file("CT_small.dcm"), "--scheduler", "tcp://127.0.0.1:9")
    assert r.code == 2 and "--scheduler needs --engine dask" in r.err
