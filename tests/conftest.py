"""Shared fixtures: real data from ../shared/data (skipped with a clear message when absent)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from medforensics.datapath import data_root

SHARED_DATA = data_root()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real images in ../shared/data; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not found (set MEDFORENSICS_DATA to point at it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lidc_series_dir(shared_data: Path) -> Path:
    """The full 133-slice LIDC-IDRI-0001 chest CT series."""
    d = next((shared_data / "ct" / "lidc-idri" / "LIDC-IDRI-0001").rglob("*.dcm"), None)
    if d is None:
        pytest.skip("LIDC-IDRI-0001 series not found in shared data")
    return d.parent


@pytest.fixture
def learned_checkpoints(monkeypatch):
    """Point the ``learned_2d`` detector at checkpoints: ``learned_checkpoints(ct=PATH, xray=PATH)``;
    a kind left out uses the shipped model. Loaded models are forgotten before and after."""
    from medforensics.detectors import learned2d

    def use(ct=None, xray=None) -> None:
        for env, path in (("MEDFORENSICS_LEARNED_CT2D", ct), ("MEDFORENSICS_LEARNED_XRAY", xray)):
            if path is None:
                monkeypatch.delenv(env, raising=False)
            else:
                monkeypatch.setenv(env, str(path))
        learned2d._CACHE.clear()

    yield use
    learned2d._CACHE.clear()


class CliResult(NamedTuple):
    """What one ``medforensics`` command did: its exit status and what it printed."""

    code: int
    out: str
    err: str

    # the names of subprocess.CompletedProcess, so a test reads the same either way
    @property
    def returncode(self) -> int:
        return self.code

    @property
    def stdout(self) -> str:
        return self.out

    @property
    def stderr(self) -> str:
        return self.err


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``medforensics ARGS...`` in this process through the real entry point (one-line errors,
    exit statuses): ``run_cli("scan", path, "--json", out, cwd=folder)`` returns a
    :class:`CliResult` ``(code, out, err)``. Arguments may be paths; tables are printed 200
    columns wide so that lines are not folded."""
    from medforensics.cli import console, main

    monkeypatch.setattr(console.out, "width", 200)
    monkeypatch.setattr(console.err, "width", 200)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args, cwd: Path | None = None) -> CliResult:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["medforensics", *map(str, args)])
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            main()
        o = capsys.readouterr()
        return CliResult(int(e.value.code or 0), o.out, o.err)
    return run
