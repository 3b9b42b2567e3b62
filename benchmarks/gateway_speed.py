"""Throughput of ``medforensics gateway``: receive-and-spool rate against DCMTK's storescp, and the
end-to-end rate (receive, check, SR/SEG, forward) into a real Orthanc.

    python benchmarks/gateway_speed.py [DATA_DIR] [--repeat 3] [--copies 3] [--workers 1] [--json OUT]

Every measurement uses the 133-slice 512x512 CT series LIDC-IDRI-0001 (``ct/lidc-idri/`` under
the data root), sent by DCMTK's ``storescu`` (the real one, found by its ``--version``; the
``storescu`` of pynetdicom on a venv's PATH is skipped).

* **Receive and spool**: ``storescu`` sends the series to (a) DCMTK ``storescp`` writing to a
  temporary folder and (b) a fresh ``medforensics gateway run`` with no archive and
  ``--idle 86400`` (nothing is checked meanwhile), timed from the start to the end of
  ``storescu``; ``--repeat`` runs each, alternating, median reported. Twice: with DCMTK's
  defaults and with ``TCP_NODELAY=1`` in the environment of storescu and storescp (DCMTK then
  disables Nagle's algorithm; the gateway disables it on its own sockets either way). The gateway
  fsyncs every instance and commits its queue row before acknowledging it; storescp does neither.
* **End to end**: a real Orthanc (``tests/orthanc_server.py``: free ports, ``TCP_NODELAY=1``) and a gateway ``--archive 127.0.0.1:PORT:ORTHANC --idle 1 --workers N``
  with the default scan. The series is copied ``--copies`` times as different series (new
  Study/Series/SOP/FrameOfReference UIDs per copy, pixel data unchanged) and the copies are sent
  back to back (``TCP_NODELAY=1``); timed from the first instance sent until Orthanc holds every
  instance and, separately, until the gateway's queue says every instance is forwarded. Warm-up
  copies go first, one per worker (the fresh gateway spawns its worker processes and each loads
  the models); their time is reported apart as the cold start. The policy here forwards every label with its
  result, so that a false alarm cannot stall the measurement (the labels found are reported).
  Stages per series come from the queue's transitions. Orthanc's own rate (``storescu``, with
  ``TCP_NODELAY=1``, straight to it) shows the archive's limit.

Child processes get ``OMP_NUM_THREADS=1`` unless it is set (the output says which).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from datetime import datetime
from pathlib import Path

from medforensics.datapath import data_root

REPO = Path(__file__).resolve().parents[1]
DEFAULT = data_root()   # DATA_DIR, else $MEDFORENSICS_DATA, else ../shared/data beside the repository
AET_GATEWAY, AET_STORESCP = "MEDFORENSICS", "STORESCP"
_POLICY = "[labels]\n" + "".join(f'{label} = "forward_with_result"\n'
                                 for label in ("authentic", "suspicious", "manipulated", "synthetic", "error"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dcmtk(tool: str) -> str:
    """DCMTK's ``tool`` (first on PATH, then the system's folders) whose ``--version`` says dcmtk."""
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/local/bin"]
    for d in dict.fromkeys(dirs):
        exe = shutil.which(tool, path=d) if d else None
        if exe is None:
            continue
        try:
            v = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in (v.stdout + v.stderr).lower():
            return exe
    raise SystemExit(f"DCMTK's {tool} not found (Debian package dcmtk)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(nodelay: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env.pop("TCP_NODELAY", None)
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def wait_echo(port: int, aet: str, proc: subprocess.Popen, logfile: Path, timeout: float = 120.0) -> None:
    """Until a C-ECHO to 127.0.0.1:``port`` succeeds (the SCP ``proc`` is listening)."""
    echoscu = dcmtk("echoscu")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the SCP exited ({proc.returncode}); its log ends:\n{logfile.read_text()[-2000:]}")
        if subprocess.run([echoscu, "-aec", aet, "127.0.0.1", str(port)], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"nothing answered a C-ECHO on port {port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def storescu(files: list[Path], port: int, aet: str, nodelay: bool) -> float:
    """Send ``files`` in one association; the wall seconds of storescu."""
    cmd = [dcmtk("storescu"), "-aec", aet, "127.0.0.1", str(port), *map(str, files)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=child_env(nodelay))
    seconds = time.perf_counter() - t0
    if r.returncode != 0 or "E:" in r.stderr:
        raise SystemExit(f"storescu to {aet} failed ({r.returncode}): {r.stderr.strip()[-1000:]}")
    return seconds


def gateway_cmd(port: int, spool: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "medforensics", "gateway", "run", "--port", str(port), "--ae-title", AET_GATEWAY,
            "--spool", str(spool), *extra]


def start_scp(cmd: list[str], port: int, aet: str, logfile: Path, nodelay: bool = False) -> subprocess.Popen:
    with open(logfile, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env(nodelay))
    try:
        wait_echo(port, aet, proc, logfile)
    except BaseException:
        stop(proc)
        raise
    return proc


# ---------------------------------------------------------------------------------- receive

def receive_storescp(files: list[Path], nodelay: bool, work: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=work, prefix="storescp-"))
    port = free_port()
    proc = start_scp([dcmtk("storescp"), "-aet", AET_STORESCP, "-od", str(out), str(port)], port, AET_STORESCP,
                     work / "storescp.log", nodelay)
    try:
        seconds = storescu(files, port, AET_STORESCP, nodelay)
    finally:
        stop(proc)
    got = len(list(out.glob("*")))
    if got != len(files):
        raise SystemExit(f"storescp wrote {got} files, {len(files)} were sent")
    shutil.rmtree(out)
    return seconds


def receive_gateway(files: list[Path], nodelay: bool, work: Path) -> float:
    from medforensics.gateway.queue import Queue

    spool = Path(tempfile.mkdtemp(dir=work, prefix="gateway-"))
    port = free_port()
    proc = start_scp(gateway_cmd(port, spool, "--idle", "86400"), port, AET_GATEWAY, work / "gateway-receive.log")
    try:
        seconds = storescu(files, port, AET_GATEWAY, nodelay)
    finally:
        stop(proc)
    with Queue(spool / "queue.sqlite") as q:
        got = q.counts()["received"]
    if got != len(files):
        raise SystemExit(f"the gateway's queue holds {got} received instances, {len(files)} were sent")
    shutil.rmtree(spool)
    return seconds


def receive_rates(files: list[Path], repeat: int, work: Path) -> dict:
    n, out = len(files), {}
    for nodelay in (False, True):
        mode = "TCP_NODELAY=1" if nodelay else "DCMTK defaults"
        runs: dict[str, list[float]] = {"storescp": [], "gateway": []}
        for r in range(repeat):
            for name, fn in (("storescp", receive_storescp), ("gateway", receive_gateway)):
                runs[name].append(fn(files, nodelay, work))
                log(f"  receive, {mode}, {name} run {r + 1}/{repeat}: {n / runs[name][-1]:.1f} instances/s")
        rates = {k: n / statistics.median(v) for k, v in runs.items()}
        out[mode] = {"seconds": runs, "instances_per_s": rates, "ratio": rates["gateway"] / rates["storescp"]}
    return out


# ---------------------------------------------------------------------------------- end to end

def copy_series(files: list[Path], dest: Path) -> tuple[str, list[str], list[Path]]:
    """The series copied to ``dest`` with new Study, Series, FrameOfReference and SOP Instance UIDs
    (consistently within the copy; pixel data unchanged): (series UID, SOP UIDs, files)."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    dest.mkdir(parents=True)
    new = {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(),
           "FrameOfReferenceUID": generate_uid()}
    sops, paths = [], []
    for i, f in enumerate(files):
        ds = dcmread(f)
        for key, uid in new.items():
            if key in ds:
                setattr(ds, key, uid)
        sop = generate_uid()
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        p = dest / f"{i:04d}.dcm"
        ds.save_as(p)
        sops.append(sop)
        paths.append(p)
    return new["SeriesInstanceUID"], sops, paths


def orthanc_count(server, series_uid: str) -> int:
    """How many instances of ``series_uid`` Orthanc holds."""
    found = json.loads(server.request("POST", "/tools/lookup", series_uid.encode()))
    ids = [f["ID"] for f in found if f.get("Type") == "Series"]
    return len(server.json(f"/series/{ids[0]}")["Instances"]) if ids else 0


def wait_forwarded(server, queue, proc: subprocess.Popen, copies: list[tuple[str, list[str]]], forwarded: int,
                   logfile: Path, timeout: float) -> tuple[float, float]:
    """Poll until Orthanc holds every instance of ``copies`` and the queue counts ``forwarded``
    instances forwarded; the wall time (epoch seconds) of each."""
    waiting = {series: len(sops) for series, sops in copies}
    t_orthanc = t_queue = None
    deadline = time.monotonic() + timeout
    while t_orthanc is None or t_queue is None:
        now = time.time()
        if t_queue is None:
            counts = queue.counts()
            if counts["forwarded"] >= forwarded:
                t_queue = now
            if counts["quarantined"] or counts["rejected"]:
                raise SystemExit(f"instances held although the benchmark's policy forwards all: {counts}")
        if t_orthanc is None:
            for series in list(waiting):
                try:
                    if orthanc_count(server, series) >= waiting[series]:
                        del waiting[series]
                except (urllib.error.URLError, OSError):
                    pass
            if not waiting:
                t_orthanc = now
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited ({proc.returncode}); its log ends:\n{logfile.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not all forwarded within {timeout:.0f} s (queue {queue.counts()}); "
                             f"gateway log ends:\n{logfile.read_text()[-2000:]}")
        time.sleep(0.2)
    return t_orthanc, t_queue


def _t(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def stages(queue, copies: list[tuple[str, list[str]]]) -> list[dict]:
    """Per series, from the queue's transitions: receive (first to last instance received), wait and
    check (last received to the check recorded: the idle time, any wait for a worker, the scan and
    the SR/SEG), forward (check recorded to the last instance acknowledged by the archive)."""
    rows = []
    for series, sops in copies:
        at: dict[str, list[float]] = {"received": [], "scanned": [], "forwarded": []}
        for sop in sops:
            for t in queue.transitions(sop):
                if t.state in at:
                    at[t.state].append(_t(t.at))
        checked = max(at["scanned"])
        rows.append({"series": series, "label": queue.series(series).label,
                     "first_received": min(at["received"]), "last_received": max(at["received"]),
                     "checked": checked, "last_forwarded": max(at["forwarded"]),
                     "receive_s": max(at["received"]) - min(at["received"]),
                     "wait_and_check_s": checked - max(at["received"]),
                     "forward_s": max(at["forwarded"]) - checked})
    return rows


def end_to_end(files: list[Path], copies: int, workers: int, repeat: int, work: Path, timeout: float) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    import orthanc_server

    why = orthanc_server.missing()
    if why:
        log(f"end to end left out: {why}")
        return {"left_out": why}
    from medforensics.gateway.queue import Queue

    n = len(files)
    server = orthanc_server.start(work / "orthanc")   # with TCP_NODELAY=1: Nagle off in its DCMTK
    proc = None
    try:
        alone = []
        for r in range(repeat):
            _, _, paths = copy_series(files, work / f"orthanc-alone-{r}")
            alone.append(storescu(paths, server.dicom_port, server.aet, nodelay=True))
            shutil.rmtree(paths[0].parent)
            log(f"  Orthanc alone run {r + 1}/{repeat}: {n / alone[-1]:.1f} instances/s")
        policy = work / "forward-all.toml"
        policy.write_text(_POLICY, encoding="utf-8")
        port, spool, logfile = free_port(), work / "gateway-e2e", work / "gateway-e2e.log"
        proc = start_scp(gateway_cmd(port, spool, "--archive", f"127.0.0.1:{server.dicom_port}:{server.aet}",
                                     "--idle", "1", "--workers", str(workers), "--policy", str(policy)),
                         port, AET_GATEWAY, logfile)
        queue = Queue(spool / "queue.sqlite")
        try:
            log("  copying the series ...")
            sent = [copy_series(files, work / f"copy-{i}") for i in range(workers + copies)]
            warm, rest = sent[:workers], sent[workers:]
            t0 = time.time()
            for *_, paths in warm:     # back to back: each worker process is started while the others load
                storescu(paths, port, AET_GATEWAY, nodelay=True)
            t_orthanc, t_queue = wait_forwarded(server, queue, proc, [c[:2] for c in warm], workers * n, logfile,
                                                timeout)
            cold = {"series": workers, "orthanc_s": t_orthanc - t0, "queue_s": t_queue - t0}
            log(f"  warm-up ({workers} series, cold gateway): {cold['orthanc_s']:.1f} s until Orthanc holds them")
            t0 = time.time()
            for *_, paths in rest:
                storescu(paths, port, AET_GATEWAY, nodelay=True)
            t_sent = time.time()
            t_orthanc, t_queue = wait_forwarded(server, queue, proc, [c[:2] for c in rest], (workers + copies) * n,
                                                logfile, timeout)
            per_series = stages(queue, [c[:2] for c in rest])
            warm_stages = stages(queue, [c[:2] for c in warm])
        finally:
            queue.close()
        total = copies * n
        return {
            "orthanc_alone": {"seconds": alone, "instances_per_s": n / statistics.median(alone)},
            "workers": workers, "copies": copies, "idle_s": 1,
            "cold": {**cold, "stages": warm_stages,
                     "max_wait_and_check_s": max(r["wait_and_check_s"] for r in warm_stages)},
            "send_s": t_sent - t0, "orthanc_s": t_orthanc - t0, "queue_s": t_queue - t0,
            "instances_per_s_orthanc": total / (t_orthanc - t0), "instances_per_s_queue": total / (t_queue - t0),
            "stages": per_series,
            "mean_stage_s": {k: statistics.mean(r[k] for r in per_series)
                             for k in ("receive_s", "wait_and_check_s", "forward_s")},
        }
    finally:
        if proc is not None:
            stop(proc)
        server.stop()


# ---------------------------------------------------------------------------------- report

def report(recv: dict, e2e: dict | None, n: int, repeat: int) -> None:
    modes = list(recv)
    print(f"### Receive and spool ({n} CT instances, 512x512, DCMTK storescu on loopback; median of {repeat})\n")
    print("| receiver | " + " | ".join(f"{m}: instances/s" for m in modes) + " |")
    print("|---|" + "---|" * len(modes))
    print("| DCMTK storescp (writes files; no fsync) | "
          + " | ".join(f"{recv[m]['instances_per_s']['storescp']:.1f}" for m in modes) + " |")
    print("| medforensics gateway (fsync per instance + committed queue row before each acknowledgement) | "
          + " | ".join(f"{recv[m]['instances_per_s']['gateway']:.1f}" for m in modes) + " |")
    print("| gateway / storescp | " + " | ".join(f"{recv[m]['ratio']:.2f}" for m in modes) + " |")
    print("\nTCP_NODELAY=1 is set for storescu and storescp (DCMTK reads it); the gateway turns Nagle's algorithm "
          "off on its own sockets in both columns. The gateway ran with no archive and --idle 86400, so only "
          "receiving and spooling were measured.")
    if not e2e or "left_out" in e2e:
        return
    c, k = e2e["cold"], e2e["copies"]
    st = e2e["mean_stage_s"]
    print(f"\n### End to end into Orthanc (default scan, --idle 1, --workers {e2e['workers']}, "
          f"{k} different series of {n} instances sent back to back)\n")
    print("| measurement | value |")
    print("|---|---|")
    print(f"| Orthanc alone (storescu, TCP_NODELAY=1, straight to Orthanc) | "
          f"{e2e['orthanc_alone']['instances_per_s']:.1f} instances/s |")
    print(f"| {k} x {n} instances: sending took | {e2e['send_s']:.1f} s |")
    print(f"| ... until Orthanc holds all | {e2e['orthanc_s']:.1f} s = "
          f"**{e2e['instances_per_s_orthanc']:.1f} instances/s** |")
    print(f"| ... until the gateway's queue says all forwarded | {e2e['queue_s']:.1f} s = "
          f"{e2e['instances_per_s_queue']:.1f} instances/s |")
    print(f"| per series (mean): receive / wait and check / forward | {st['receive_s']:.1f} / "
          f"{st['wait_and_check_s']:.1f} / {st['forward_s']:.1f} s |")
    print(f"| warm-up: {c['series']} series (one per worker) into a fresh gateway (cold: worker spawn, models), "
          f"until Orthanc holds them | {c['orthanc_s']:.1f} s (wait and check up to {c['max_wait_and_check_s']:.1f} s) |")
    labels = sorted({r["label"] for r in e2e["stages"]})
    print(f"\nThe clock starts after the warm-up. \"Wait and check\" runs from a series' last instance "
          f"received to its check recorded: the 1 s idle time, any wait for a busy worker, the scan, the SR/SEG. "
          f"\"Forward\" runs to the archive's last acknowledgement. Labels found: {', '.join(labels)} (the "
          f"benchmark's policy forwards every label with its result). Senders used TCP_NODELAY=1; Orthanc was "
          f"started with it.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each receive measurement (median)")
    ap.add_argument("--copies", type=int, default=3, help="different series sent end to end (after one warm-up series per worker)")
    ap.add_argument("--workers", type=int, default=1, help="the gateway's scan processes end to end")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the end-to-end forwarding")
    ap.add_argument("--no-end-to-end", action="store_true", help="measure receiving only")
    ap.add_argument("--json", type=Path, default=None, help="write the measurements here (a new file)")
    args = ap.parse_args(argv)
    if args.json is not None and args.json.exists():
        raise SystemExit(f"{args.json}: already exists; choose a new name")
    if args.repeat < 1 or args.copies < 1 or args.workers < 1:
        raise SystemExit("--repeat, --copies and --workers must be at least 1")
    lidc = args.data / "ct" / "lidc-idri" / "LIDC-IDRI-0001"
    files = sorted(lidc.glob("*/*/*.dcm"))
    if not files:
        raise SystemExit(f"{lidc}: the LIDC-IDRI-0001 series was not found (DATA_DIR, $MEDFORENSICS_DATA)")
    for tool in ("storescu", "storescp", "echoscu"):
        dcmtk(tool)
    with tempfile.TemporaryDirectory(prefix="mf-gateway-speed-") as tmp:
        work = Path(tmp)
        log(f"receive and spool: {len(files)} instances, {args.repeat} run(s) each")
        recv = receive_rates(files, args.repeat, work)
        e2e = None
        if not args.no_end_to_end:
            log(f"end to end: {args.copies} series after {args.workers} warm-up one(s), {args.workers} worker(s)")
            e2e = end_to_end(files, args.copies, args.workers, args.repeat, work, args.timeout)
    report(recv, e2e, len(files), args.repeat)
    omp = os.environ.get("OMP_NUM_THREADS")
    print(f"\nmachine: {os.cpu_count()} CPU(s); Python {sys.version.split()[0]}; OMP_NUM_THREADS="
          f"{omp if omp else '1 (set by the benchmark for its child processes)'}.")
    if args.json is not None:
        with open(args.json, "x", encoding="utf-8") as f:
            json.dump({"cpus": os.cpu_count(), "instances": len(files), "repeat": args.repeat,
                       "omp_num_threads": omp or "1", "receive": recv, "end_to_end": e2e}, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
