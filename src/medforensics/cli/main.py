"""The top-level ``medforensics`` app and its entry point, :func:`main`.

Exit status of ``scan``: 0 when every input was read and analysed, 1 when any input had an
error (the others are still scanned and reported), 2 for a usage error (bad option, an output
file that already exists), 3 when ``--fail-on`` is given and an item reached that label, 130 when interrupted by Ctrl-C
(128 + the signal for SIGTERM and SIGHUP).
Options and outputs are a contract (see docs/design.md).
"""
from __future__ import annotations

import sys

import typer
from rich.markup import escape

from .. import __version__
from ..core import SCHEMA_VERSION, MedForensicsError, one_line
from . import evaluate, export, forge, gateway, keys, ledger, scan, serve, sign, train, watermark
from .console import UsageError, err, out

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Was this medical image generated or altered, where, and why.")
for _module in (scan, forge, keys, sign, export, ledger, watermark, train, evaluate, gateway, serve):
    _module.register(app)


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        out.print(f"medforensics {__version__} (JSON schema {SCHEMA_VERSION})")
        raise typer.Exit(0)


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's usage-error and abort classes: typer >= 0.2x raises those of its vendored click,
    and a separate ``click`` may be installed beside it (uvicorn brings one): catch both."""
    import importlib

    exc: list[type] = []
    aborts: list[type] = [typer.Abort]
    for mod in ("typer._click.exceptions", "click.exceptions"):
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        exc.append(m.ClickException)
        if hasattr(m, "Abort"):
            aborts.append(m.Abort)
    return tuple(exc), tuple(aborts)


def main() -> None:
    """Entry point: one-line errors instead of tracebacks unless ``--debug`` is given."""
    debug = "--debug" in sys.argv
    try:
        rc = app(standalone_mode=False)
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (UsageError, FileExistsError) as e:
        if debug:
            raise
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except MedForensicsError as e:
        if debug:
            raise
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - last resort: one line, never a traceback without --debug
        click_exc, aborts = _click_exception_types()
        if isinstance(e, click_exc):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, aborts):
            sys.exit(1)
        if debug:
            raise
        err.print(f"[red]error:[/red] {type(e).__name__}: {escape(one_line(e))} (run with --debug for details)",
                  soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
