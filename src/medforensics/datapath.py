"""Where the real images are: the data root, defined once.

The data root is a folder laid out like the workspace's ``../shared/data`` (``ct/``, ``xray/``;
see that folder's README). Every command and benchmark that reads real images finds it the same
way, in this order:

1. an explicit path (the ``--data`` option);
2. the environment variable ``MEDFORENSICS_DATA``;
3. ``../shared/data`` next to the repository (the checkout holding ``src/medforensics``).

>>> from pathlib import Path
>>> data_root("/data/xrays")
PosixPath('/data/xrays')
>>> data_root(None).parts[-2:]  # doctest: +SKIP
('shared', 'data')
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_DATA = "MEDFORENSICS_DATA"
#: The repository (source checkout) that holds this package.
REPOSITORY = Path(__file__).resolve().parents[2]

__all__ = ["ENV_DATA", "REPOSITORY", "data_root"]


def data_root(explicit: str | Path | None = None) -> Path:
    """The data root: ``explicit``, else ``$MEDFORENSICS_DATA``, else ``../shared/data`` beside the
    repository. The folder is not required to exist (callers say what they miss)."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit)
    env = os.environ.get(ENV_DATA)
    if env:
        return Path(env)
    return REPOSITORY.parent / "shared" / "data"
