"""Shared fixtures: real data from ../shared/data (skipped with a clear message when absent), a real PostgreSQL."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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


@pytest.fixture(scope="session")
def postgres():
    """(socket folder, port) of a PostgreSQL server initialised in a temporary folder."""
    initdbs = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    found = shutil.which("initdb")
    if not initdbs and not found:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin; "
                    "install the postgresql package to run the PostgreSQL tests")
    bindir = Path(initdbs[-1] if initdbs else found).parent
    prefix: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="mf-ledger-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        import pwd
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base)
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"

    def run(*cmd: str) -> None:
        subprocess.run(prefix + list(cmd), check=True, capture_output=True, timeout=120)

    try:
        run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60", "-o",
            f"-k {base} -p {port} -c listen_addresses='' -c fsync=off -c full_page_writes=off", "start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {getattr(e, 'stderr', b'').decode(errors='replace')[-500:]}")
    try:
        yield base, port
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


_DATABASES = iter(range(10**6))


def new_database(request, tmp_path: Path, dialect: str, stem: str) -> str:
    """A location for a new database: a SQLite file in ``tmp_path``, or a fresh database named
    ``STEM_N`` in the session's PostgreSQL (the ``postgres`` fixture)."""
    if dialect == "sqlite":
        return str(tmp_path / f"{stem}.sqlite")
    import psycopg
    base, port = request.getfixturevalue("postgres")
    name = f"{stem}_{next(_DATABASES)}"
    with psycopg.connect(f"postgresql://postgres@/postgres?host={base}&port={port}", autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={base}&port={port}"


def raw_sql(url: str, sql: str, params=()) -> list:
    """Run SQL (``?`` placeholders) on a SQLite file or a PostgreSQL URL behind the back of the
    code under test (its own connection, autocommit); the rows it returns."""
    if url.startswith("postgresql://"):
        import psycopg
        with psycopg.connect(url, autocommit=True) as c:
            cur = c.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []
    import sqlite3
    c = sqlite3.connect(url, isolation_level=None)
    try:
        return c.execute(sql, params).fetchall()
    finally:
        c.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers the tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



def serve_session(app, user: str, password: str):
    """A client of the review service ``app`` (FastAPI's TestClient), signed in as ``user``, that
    sends the session's CSRF token with every call."""
    from fastapi.testclient import TestClient

    from medforensics.serve.app import CSRF_HEADER

    client = TestClient(app, base_url="http://127.0.0.1")
    r = client.post("/api/session", json={"user": user, "password": password})
    assert r.status_code == 200, r.text
    client.headers[CSRF_HEADER] = r.json()["csrf"]
    return client
