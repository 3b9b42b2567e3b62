"""Issue 18: every item fails alone, outputs are never half-written, an interrupted scan resumes,
warnings go to the item, and the command line's help shows what its source says."""
from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medforensics.core import Evidence, Verdict
from medforensics.detectors.base import Detector
from medforensics.report.jsonl import ResultsFile, partial_path, read_records
from medforensics.scan import scan

from test_scan import Boom, _bomb_png

FAST = ["copy_move", "dicom_header", "noise_residual", "ct_physics"]
PROGRAM = [sys.executable, "-m", "medforensics"]


def _stable(record: dict) -> dict:
    """A record without what differs from run to run (timings)."""
    return {k: v for k, v in record.items() if k != "timings"}


# ----------------------------------------------------------------------- every item fails alone

def _hostile_and_good(folder: Path, order: tuple[str, ...]) -> dict[str, str]:
    """A bomb, a corrupt DICOM, a good CT slice and a good PNG, named so that they sort in ``order``."""
    folder.mkdir()
    names = {}
    for i, what in enumerate(order):
        if what == "bomb":
            names[what] = _bomb_png(folder / f"{i}_bomb.png").name
        elif what == "corrupt":
            data = bytearray(Path(get_testdata_file("CT_small.dcm")).read_bytes())
            data[1000:1400] = os.urandom(400)            # the header's tail and the pixels' start
            (folder / f"{i}_corrupt.dcm").write_bytes(bytes(data[:3000]))
            names[what] = f"{i}_corrupt.dcm"
        elif what == "ct":
            names[what] = shutil.copy(get_testdata_file("CT_small.dcm"), folder / f"{i}_ct.dcm").name
        else:
            from PIL import Image as PILImage
            rng = np.random.default_rng(i)
            PILImage.fromarray(rng.integers(60, 200, (96, 96), dtype=np.uint8)).save(folder / f"{i}_good.png")
            names[what] = f"{i}_good.png"
    return names


@pytest.mark.parametrize("order", list(itertools.permutations(["bomb", "corrupt", "ct", "png"])))
def test_hostile_files_fail_alone_in_every_order(tmp_path, order):
    names = _hostile_and_good(tmp_path / "in", order)
    verdicts = {Path(v.path).name: v for v in scan([str(tmp_path / "in")], FAST)}
    assert sorted(verdicts) == sorted(names.values())
    bomb, corrupt, ct, png = (verdicts[names[k]] for k in ("bomb", "corrupt", "ct", "png"))
    assert bomb.score is None and len(bomb.errors) == 1 and "bomb" in bomb.errors[0]
    assert corrupt.errors and all("\n" not in e for e in corrupt.errors)
    assert ct.score is not None and not ct.errors and ct.assessed
    assert png.score is not None and not png.errors


class Noisy(Detector):
    name = "noisy"

    def detect(self, image):
        np.log(np.zeros(2))                     # numpy's RuntimeWarning: divide by zero
        warnings.warn("a library's\nwarning", UserWarning, stacklevel=2)
        return Evidence("noisy", 0.0, "nothing")


def test_a_detector_and_the_figures_failing_are_that_items_errors(tmp_path, monkeypatch):
    import medforensics.report.figures as figures

    d = tmp_path / "in"
    for name in ("a", "b"):                      # one slice per folder: two items
        (d / name).mkdir(parents=True)
        shutil.copy(get_testdata_file("CT_small.dcm"), d / name / "ct.dcm")
    calls = []

    def render(image, evidence):
        calls.append(image.path)
        if len(calls) == 1:
            raise ValueError("cannot draw\nthis")
        return {}

    monkeypatch.setattr(figures, "render_figures", render)
    first, second = scan([str(d)], FAST, figures=True)
    assert first.score is None and first.errors == [f"{d / 'a' / 'ct.dcm'}: analysis failed (ValueError) (cannot draw this)"]
    assert second.score is not None and not second.errors


def test_warnings_go_to_the_item_not_stderr(tmp_path, capfd):
    from medforensics.scan import scan_source
    from medforensics.io import Source

    src = Source("dicom", [Path(get_testdata_file("CT_small.dcm"))])
    v = scan_source(src, [Noisy(), Boom()])
    assert any("RuntimeWarning: divide by zero" in w for w in v.warnings), v.warnings
    assert any("UserWarning: a library's warning" in w for w in v.warnings)
    assert v.errors and "exploded on two lines" in v.errors[0]
    assert v.to_dict()["warnings"] == v.warnings
    assert "Warning" not in capfd.readouterr().err


def test_debug_shows_the_traceback(tmp_path):
    _bomb_png(tmp_path / "bomb.png")
    quiet = subprocess.run([*PROGRAM, "scan", str(tmp_path / "bomb.png"), "-q"], capture_output=True, text=True)
    loud = subprocess.run([*PROGRAM, "scan", str(tmp_path / "bomb.png"), "-q", "--debug"], capture_output=True, text=True)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr and "bomb" in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr


# ------------------------------------------------------------------------- the JSON-lines file

def test_results_are_renamed_into_place_only_when_complete(tmp_path):
    out = tmp_path / "scan.jsonl"
    results = ResultsFile(out)
    results.write(Verdict("a.png", "image", None, 1, 0.1, "authentic", fingerprint="sha256:aa"))
    results.close()
    assert not out.exists() and len(read_records(results.partial)) == 1
    with pytest.raises(FileExistsError, match="--resume"):          # an interrupted scan is never lost
        ResultsFile(out)
    with open(results.partial, "a") as f:
        f.write('{"path": "b.png", "kind": "ima')                      # a line cut short by a crash
    resumed = ResultsFile(out, resume=True)
    assert resumed.previous == 1 and resumed.reusable("a.png", None, "sha256:aa") is not None
    resumed.write(resumed.reusable("a.png", None, "sha256:aa"), reused=True)
    resumed.write(Verdict("b.png", "image", None, 1, 0.9, "manipulated", fingerprint="sha256:bb"))
    resumed.finish()
    assert [r["path"] for r in read_records(out)] == ["a.png", "b.png"]
    assert not partial_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_results_hold_no_records_in_memory_and_leave_no_temporary_file(tmp_path):
    import tracemalloc

    out = tmp_path / "scan.jsonl"
    results = ResultsFile(out)
    ev = [Evidence(f"d{k}", 0.1, "an explanation of some length " * 4, details={"raw": k}) for k in range(6)]
    tracemalloc.start()
    for i in range(20_000):   # about 2 kB a record: 40 MB if they were kept
        results.write(Verdict(f"{i}.png", "image", None, 1, 0.1, "authentic", evidence=ev))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5 * 2**20, peak
    results.close()                       # interrupted: the partial file stays, the ordered copy goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.jsonl.partial"]
    (tmp_path / ".scan.jsonl.ordered").write_text("stale\n")   # as a SIGKILL would leave it
    resumed = ResultsFile(out, resume=True)
    for i in range(3):
        resumed.write(Verdict(f"{i}.png", "image", None, 1, 0.1, "authentic"), reused=True)
    resumed.finish()
    assert [r["path"] for r in read_records(out)] == ["0.png", "1.png", "2.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.jsonl"]


def test_run_scan_keeps_counts_and_the_top_items_not_every_verdict(tmp_path):
    from medforensics.scan import run_scan

    files = [get_testdata_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm")]
    tally = run_scan(files, json_out=tmp_path / "s.jsonl", quiet=True, detectors=["dicom_header"])
    assert tally.verdicts is None and tally.n == len(read_records(tmp_path / "s.jsonl")) == 3
    assert sum(tally.labels.values()) == 3 and len(tally.ranked()) == 3
    kept = run_scan(files, quiet=True, detectors=["dicom_header"], keep_verdicts=True)
    assert [v.path for v in kept.verdicts] == [r["path"] for r in read_records(tmp_path / "s.jsonl")]


def _radiographs(shared_data: Path, folder: Path, n: int) -> list[Path]:
    """``n`` chest radiographs (full-size NIH images, copied under new names)."""
    originals = sorted((shared_data / "xray" / "nih-cxr14").glob("*.png"))
    if not originals:
        pytest.skip("NIH radiographs not found in shared data")
    folder.mkdir()
    return [Path(shutil.copy(originals[i % len(originals)], folder / f"r{i:02d}.png")) for i in range(n)]


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and len(read_records(path)) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the scan ended before {n} line(s): {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no {n} line(s) in {path} after {timeout} s")


@pytest.fixture(scope="module")
def radiograph_scan(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """Six radiographs and the records of one uninterrupted scan of them."""
    folder = tmp_path_factory.mktemp("radiographs")
    _radiographs(shared_data, folder / "in", 6)
    full = folder / "full.jsonl"
    subprocess.run([*PROGRAM, "scan", str(folder / "in"), "--json", str(full), "-q"], check=True,
                   capture_output=True)
    return folder / "in", full


@pytest.mark.parametrize("how,workers", [("SIGINT", 2), ("SIGTERM", 1), ("SIGKILL", 1)])
def test_an_interrupted_scan_says_so_and_resumes_to_the_same_lines(radiograph_scan, tmp_path, how, workers):
    inputs, full = radiograph_scan
    out = tmp_path / "out.jsonl"
    cmd = [*PROGRAM, "scan", str(inputs), "--json", str(out), "--report", str(tmp_path / "r.html"),
           "-q", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for_lines(partial_path(out), 1, proc)
    sig = getattr(signal, how)
    if how == "SIGINT":
        os.killpg(proc.pid, sig)              # as Ctrl-C does: the whole process group
    else:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert not out.exists() and not (tmp_path / "r.html").exists()
    done = read_records(partial_path(out))
    assert 1 <= len(done) < 6
    if how != "SIGKILL":
        assert proc.returncode == 128 + sig, stderr
        assert "Traceback" not in stderr
        assert re.search(rf"after {len(done)} of 6 item\(s\).*out\.jsonl\.partial.*--resume", " ".join(stderr.split())), stderr
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 2 and "--resume" in again.stderr and "Traceback" not in again.stderr
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done)} result(s) reused" in " ".join(resumed.stderr.split())
    assert not partial_path(out).exists() and (tmp_path / "r.html").exists()
    assert [_stable(r) for r in read_records(out)] == [_stable(r) for r in read_records(full)]


def test_resume_rescans_what_changed_and_drops_what_is_gone(tmp_path, run_cli):
    d = tmp_path / "in"
    for name in ("a", "b", "c"):                 # one slice per folder: three items
        (d / name).mkdir(parents=True)
        shutil.copy(get_testdata_file("CT_small.dcm"), d / name / f"{name}.dcm")
    out = tmp_path / "o.jsonl"
    assert run_cli("scan", d, "--json", out, "-q", "--detectors", ",".join(FAST)).code == 0
    first = {Path(r["path"]).name: r for r in read_records(out)}
    data = bytearray((d / "b" / "b.dcm").read_bytes())
    data[-3] ^= 1
    (d / "b" / "b.dcm").write_bytes(bytes(data))
    shutil.rmtree(d / "c")
    r = run_cli("scan", d, "--json", out, "-q", "--detectors", ",".join(FAST), "--resume")
    assert r.code == 0, r.err
    second = {Path(r["path"]).name: r for r in read_records(out)}
    assert sorted(second) == ["a.dcm", "b.dcm"]
    assert second["a.dcm"] == first["a.dcm"]                      # reused as it was, timings included
    assert second["b.dcm"]["fingerprint"] != first["b.dcm"]["fingerprint"]
    assert run_cli("scan", d, "--resume", "-q").code == 2           # --resume needs --json


# ------------------------------------------------------------------------------ the help pages

def _commands(group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        yield (*prefix, name), cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*prefix, name))


def test_every_help_page_shows_its_source_text():
    """Help is rendered as Markdown: no raw double backticks, and text in brackets (``[fusion]``)
    is not swallowed as console markup."""
    import typer.main
    from typer.testing import CliRunner

    from medforensics.cli.main import app

    root = typer.main.get_command(app)
    runner = CliRunner()
    checked = 0
    for path, cmd in _commands(root):
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, (path, shown.output)
        text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", shown.output).split())
        assert "``" not in text, (path, text)
        for param in cmd.params:
            for bracket in re.findall(r"\[[a-z_.]+\]", getattr(param, "help", None) or ""):
                assert bracket in text, (path, param.name, bracket)
        checked += 1
    assert checked > 20


class Loud(Detector):
    name = "loud"

    def detect(self, image):
        for _ in range(100_000):
            warnings.warn("the same warning in a loop", RuntimeWarning, stacklevel=1)
        return Evidence("loud", 0.0, "nothing")


def test_a_warning_in_a_loop_is_one_entry_for_each_item():
    """Recording every repetition cost ct_physics 5.7 s and millions of entries per series."""
    from medforensics.io import Source
    from medforensics.scan import scan_source

    src = Source("dicom", [Path(get_testdata_file("CT_small.dcm"))])
    for _ in range(2):                                 # each item records it again
        v = scan_source(src, [Loud()])
        assert [w.split(": ", 1)[1] for w in v.warnings] == ["RuntimeWarning: the same warning in a loop"]
