"""Where the real images are: the data root, defined once.

The data root is a folder laid out like the workspace's ``../shared/data`` (``ct/``, ``xray/``;
see that folder's README). Every command and benchmark that reads real images finds it the same
way, in this order:

1. an explicit path (the ``--data`` option);
2. the environment variable ``MEDFORENSICS_DATA``;
3. ``../shared/data`` next to the repository (the checkout holding ``src/medforensics``).

>>> from medforensics.config import settings
>>> data_root("/data/xrays")
PosixPath('/data/xrays')
>>> data_root(None) == (Path(settings().data) if settings().data else REPOSITORY.parent / "shared" / "data")
True
"""
from __future__ import annotations

from pathlib import Path

from .config import DATA as ENV_DATA
from .config import settings

#: The repository (source checkout) that holds this package.
REPOSITORY = Path(__file__).resolve().parents[2]

__all__ = ["ENV_DATA", "REPOSITORY", "data_root", "sources_of", "card_data_root"]


def data_root(explicit: str | Path | None = None) -> Path:
    """The data root: ``explicit``, else ``$MEDFORENSICS_DATA``, else ``../shared/data`` beside the
    repository. The folder is not required to exist (callers say what they miss)."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit)
    env = settings().data
    if env:
        return Path(env)
    return REPOSITORY.parent / "shared" / "data"


def sources_of(paths, root: str | Path | None = None) -> list[str]:
    """The source folders of ``paths`` under the data root, as a model card lists them: two levels
    (``xray/mhh-covid19``, ``ct/lidc-idri``), three under ``ct/slices``. ``paths`` are relative to
    ``root``, or absolute under it.

    >>> sources_of(["xray/mhh-covid19/images/a.png", "ct/slices/dcmqi-3slice/1.dcm"])
    ['ct/slices/dcmqi-3slice', 'xray/mhh-covid19']
    """
    out = set()
    for p in paths:
        p = Path(p)
        if p.is_absolute() and root is not None:
            try:
                p = p.resolve().relative_to(Path(root).resolve())
            except ValueError:
                continue
        parts = p.parts
        out.add("/".join(parts[:3] if len(parts) > 3 and parts[1] == "slices" else parts[:2]))
    return sorted(out)


def card_data_root() -> str:
    """What a model card records as its data root: paths in cards are relative to it, so no
    machine's folder is written into a shipped file."""
    return "."
