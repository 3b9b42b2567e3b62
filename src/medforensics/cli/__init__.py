"""The ``medforensics`` command line: a leaf of the package that the library never imports.

* :mod:`.console` -- where it prints, its usage error and the new-output check (imports nothing
  else of the package);
* :mod:`.main` -- the top-level app and :func:`main`, the entry point, which turns errors into
  one line;
* one module per command or command group, each with a ``register(app)`` that :mod:`.main`
  calls (as pydicom's ``cli/main.py`` calls each subcommand's ``add_subparser``): :mod:`.scan`
  (``scan``, ``detectors``, ``demo``), :mod:`.forge` (``forge ...``, with one module per forge
  family), :mod:`.train`, :mod:`.evaluate`, :mod:`.keys`, :mod:`.sign` (``sign``, ``verify``),
  :mod:`.export`, :mod:`.ledger`, :mod:`.watermark`.
"""
from .main import app, main

__all__ = ["app", "main"]
