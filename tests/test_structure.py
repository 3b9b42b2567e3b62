"""The package's structure (issue 14): the command line is a leaf, every module imports on its own
in a fresh interpreter, and the import graph has no cycle through the command line."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import medforensics

PACKAGE = Path(medforensics.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``__main__`` left out: importing it runs the CLI)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return dict(sorted(found.items()))


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports anywhere in its code (top level or inside functions)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (node.module or "").split(".") if node.module else []
            if node.level:
                root = here[:len(here) - (node.level - 1)]
                base = root + base
            dotted = ".".join(base)
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
            targets = [f"{dotted}.{a.name}" if f"{dotted}.{a.name}" in modules else dotted for a in node.names]
        for t in targets:
            # the deepest package module the import names
            parts = t.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return groups


def _is_cli(name: str) -> bool:
    return name == "medforensics.cli" or name.startswith("medforensics.cli.")


def test_the_library_never_imports_the_command_line():
    graph = _graph()
    offenders = {name: sorted(filter(_is_cli, deps)) for name, deps in graph.items()
                 if not _is_cli(name) and any(map(_is_cli, deps))}
    assert not offenders, f"library modules that import the command line: {offenders}"


def test_console_helpers_import_nothing_of_the_package():
    graph = _graph()
    assert graph["medforensics.cli.console"] == set(), graph["medforensics.cli.console"]


def test_no_import_cycle_through_the_command_line():
    cycles = [sorted(g) for g in _strongly_connected(_graph()) if any(map(_is_cli, g))]
    assert not cycles, f"import cycles through the command line: {cycles}"


def test_no_import_cycle_anywhere():
    """Layers import downwards only (core <- io <- detectors <- scan <- report <- cli), also inside
    functions."""
    cycles = [sorted(g) for g in _strongly_connected(_graph())]
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_finds_a_cycle_when_there_is_one():
    """The check above can fail: a made-up graph with a cycle through the CLI is found."""
    graph = {"medforensics.cli.main": {"medforensics.cli.sign"}, "medforensics.cli.sign": {"medforensics.cli.main"},
             "medforensics.core": set()}
    assert _strongly_connected(graph) == [{"medforensics.cli.main", "medforensics.cli.sign"}]


def test_every_module_imports_in_a_fresh_interpreter_in_alphabetical_order():
    names = list(_modules())
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as e:\n"
            "        print(f'{name}: {type(e).__name__}: {e}')\n"
            "        sys.exit(1)\n")
    r = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert len(names) > 80


# ----------------------------------------------------------------------------------- settings

def _code_files():
    root = PACKAGE.parents[1]
    return sorted(PACKAGE.rglob("*.py")) + sorted((root / "benchmarks").glob("*.py"))


def test_no_code_writes_the_environment():
    """Settings travel as arguments (``load_detectors(names, options)``), never through os.environ."""
    import re

    writes = re.compile(r"os\.environ\s*\[[^\]]+\]\s*=|os\.environ\.(setdefault|update|pop)\(|os\.putenv\(|del os\.environ")
    found = [f"{p.name}:{i}" for p in _code_files()
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if writes.search(line)]
    assert not found, f"code that writes the environment: {found}"


def test_only_the_config_module_reads_medforensics_variables():
    import re

    reads = re.compile(r"(os\.environ|getenv).*(MEDFORENSICS_|ENV_)|envvar=")
    found = [f"{p.relative_to(PACKAGE.parents[1])}:{i}" for p in _code_files() if p.name != "config.py"
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if reads.search(line)]
    assert not found, f"MEDFORENSICS_* variables read outside medforensics.config: {found}"


def test_detector_options_reach_the_constructors(tmp_path):
    from medforensics.core import Image
    from medforensics.detectors import load_detectors

    import numpy as np
    import pytest

    missing = tmp_path / "missing.safetensors"
    det, = load_detectors(["learned_2d"], {"learned_2d": {"checkpoints": {"xray": missing}}})
    assert det.checkpoints["xray"] == missing
    assert not det.applies(Image.from_array(np.zeros((300, 300)), modality="DX", format="dicom"))
    with pytest.raises(KeyError, match="unknown detector"):
        load_detectors(["copy_move"], {"no_such_detector": {}})
    with pytest.raises(ValueError, match="unknown kind"):
        load_detectors(["learned_2d"], {"learned_2d": {"checkpoints": {"mr": missing}}})


def test_ruff_passes():
    """The linter configuration in pyproject.toml ([tool.ruff]) passes on the code, tests and benchmarks."""
    import shutil

    root = PACKAGE.parents[1]
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a test dependency (pip install -e '.[test]')"
    r = subprocess.run([ruff, "check", "--output-format", "concise", "src", "tests", "benchmarks"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-1000:]


def test_the_installed_program_runs():
    """The console script and ``python -m medforensics`` start the same app (the other CLI tests
    run it in-process through the ``run_cli`` fixture)."""
    import shutil

    program = shutil.which("medforensics", path=str(Path(sys.executable).parent)) or shutil.which("medforensics")
    assert program, "the console script is installed with the package"
    for cmd in ([program, "--version"], [sys.executable, "-m", "medforensics", "--version"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and r.stdout.startswith("medforensics ") and "JSON schema" in r.stdout, r.stderr
    r = subprocess.run([program, "scan"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
