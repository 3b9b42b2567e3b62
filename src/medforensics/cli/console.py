"""Console helpers of the command line: where it prints, and its usage error.

This module imports nothing else of the package, so that every command module can use it
without an import cycle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rich.console import Console

__all__ = ["UsageError", "out", "err", "new_output"]

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class UsageError(Exception):
    """A problem with the command line itself (exit status 2)."""


def new_output(path: Optional[Path], overwrite: bool = False) -> Optional[Path]:
    """Check that an output file is new (or may be replaced, with ``overwrite``) and that its
    folder exists; raise :class:`UsageError` otherwise."""
    if path is None:
        return None
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: already exists; choose a new name or pass --overwrite")
    if not path.parent.exists():
        raise UsageError(f"{path}: folder {path.parent} does not exist")
    return path
