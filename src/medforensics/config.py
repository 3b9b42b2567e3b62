"""Settings read from the environment: every ``MEDFORENSICS_*`` variable, in one place.

Library code takes its settings as arguments (``load_detectors(names, options)``, ``--data``,
``--ledger``, ...); where an argument is not given it falls back to the variable below, read
here and nowhere else. Nothing in the package writes these variables.

=============================== ===============================================================
variable                        meaning
=============================== ===============================================================
``MEDFORENSICS_DATA``           the data root (default: ``../shared/data`` beside the repository)
``MEDFORENSICS_LEDGER``         the transparency log (a file or a ``postgresql://`` URL) that
                                ``scan`` and ``ledger`` use when none is given
``MEDFORENSICS_LEDGER_KEY``     the log's signing key (PEM) for ``ledger add``
``MEDFORENSICS_LEDGER_TOKEN``   the bearer token that ``ledger add`` sends to a writable log
                                served over HTTP (``ledger serve --writable``)
``MEDFORENSICS_DICOMWEB_TOKEN`` the bearer token sent to a DICOMweb server (``scan``/``ledger
                                add dicomweb+https://...``) when no ``--dicomweb-token-file``
``MEDFORENSICS_DICOMWEB_USER``  the user of HTTP basic authentication to a DICOMweb server,
                                when neither a token nor ``user:password@`` in the URL is given
``MEDFORENSICS_DICOMWEB_PASSWORD`` that user's password
``MEDFORENSICS_DECODE_BUDGET``  the most bytes one image may decode to (e.g. ``2G``, ``512M``);
                                larger images are refused before decoding (default 2 GiB)
``MEDFORENSICS_TRUST``          CA certificates (PEM files, separated by ``os.pathsep``) that
                                signers must chain to
``MEDFORENSICS_WATERMARK_KEY``  key file of keyed watermarks
``MEDFORENSICS_PROGRESS``       ``1``: draw progress bars even when stderr is not a terminal
``MEDFORENSICS_LEARNED_CT2D``   another checkpoint for ``learned_2d`` on CT
``MEDFORENSICS_LEARNED_XRAY``   another checkpoint for ``learned_2d`` on radiographs
``MEDFORENSICS_LEARNED_CTPATCH`` another checkpoint for ``ct_patch``
``MEDFORENSICS_LEARNED_ZOO``    another checkpoint for ``learned_synthesis``
=============================== ===============================================================

>>> s = settings({"MEDFORENSICS_TRUST": "a.pem" + os.pathsep + "b.pem", "MEDFORENSICS_PROGRESS": "1"})
>>> s.trust, s.progress, s.ledger
(('a.pem', 'b.pem'), True, None)
"""
from __future__ import annotations

import os
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .core import MedForensicsError

DATA = "MEDFORENSICS_DATA"
LEDGER = "MEDFORENSICS_LEDGER"
LEDGER_KEY = "MEDFORENSICS_LEDGER_KEY"
LEDGER_TOKEN = "MEDFORENSICS_LEDGER_TOKEN"
DECODE_BUDGET = "MEDFORENSICS_DECODE_BUDGET"
DICOMWEB_TOKEN = "MEDFORENSICS_DICOMWEB_TOKEN"
DICOMWEB_USER = "MEDFORENSICS_DICOMWEB_USER"
DICOMWEB_PASSWORD = "MEDFORENSICS_DICOMWEB_PASSWORD"
TRUST = "MEDFORENSICS_TRUST"
WATERMARK_KEY = "MEDFORENSICS_WATERMARK_KEY"
PROGRESS = "MEDFORENSICS_PROGRESS"
#: Checkpoint variables of the learned detectors, by model.
CHECKPOINTS = {"ct2d": "MEDFORENSICS_LEARNED_CT2D", "xray": "MEDFORENSICS_LEARNED_XRAY",
               "ctpatch": "MEDFORENSICS_LEARNED_CTPATCH", "zoo": "MEDFORENSICS_LEARNED_ZOO"}
#: Every variable this module reads.
VARIABLES = (DATA, LEDGER, LEDGER_KEY, LEDGER_TOKEN, DECODE_BUDGET, DICOMWEB_TOKEN, DICOMWEB_USER, DICOMWEB_PASSWORD, TRUST, WATERMARK_KEY, PROGRESS, *CHECKPOINTS.values())


@dataclass(frozen=True)
class Settings:
    """The settings the environment gives (``None`` or empty where a variable is unset)."""

    data: str | None = None
    ledger: str | None = None
    ledger_key: str | None = None
    ledger_token: str | None = None
    decode_budget: str | None = None
    dicomweb_token: str | None = field(default=None, repr=False)
    dicomweb_user: str | None = None
    dicomweb_password: str | None = field(default=None, repr=False)
    trust: tuple[str, ...] = ()
    watermark_key: str | None = None
    progress: bool = False
    checkpoints: Mapping[str, str] = field(default_factory=dict)

    def checkpoint(self, model: str) -> str | None:
        """The checkpoint the environment names for ``model`` (a key of :data:`CHECKPOINTS`)."""
        return self.checkpoints.get(model)


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings of ``environ`` (default: the process environment, read now)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    return Settings(data=get(DATA), ledger=get(LEDGER), ledger_key=get(LEDGER_KEY),
                    ledger_token=get(LEDGER_TOKEN), decode_budget=get(DECODE_BUDGET),
                    dicomweb_token=get(DICOMWEB_TOKEN), dicomweb_user=get(DICOMWEB_USER),
                    dicomweb_password=env.get(DICOMWEB_PASSWORD) or None,
                    trust=tuple(p for p in (get(TRUST) or "").split(os.pathsep) if p),
                    watermark_key=get(WATERMARK_KEY), progress=get(PROGRESS) == "1",
                    checkpoints={m: v for m, name in CHECKPOINTS.items() if (v := get(name))})


# ------------------------------------------------------------------ settings files (TOML)

def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML settings file (the gateway's, its policy, the review service's); a
    file that cannot be read or parsed is one error naming it."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise MedForensicsError.wrap(path, e, "cannot be read") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MedForensicsError(path, f"not valid TOML: {e}") from None


_NUMBERS = (int, float)


def check_types(obj: object, prefix: str = "") -> None:
    """Each setting of the dataclass ``obj`` has the type its field declares (TOML ``true`` is
    not a port); an error names the setting.

    >>> @dataclass
    ... class S:
    ...     port: int = 1
    >>> check_types(S(port=True))
    Traceback (most recent call last):
    medforensics.core.MedForensicsError: port: True is not a int
    """
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        if value is None:
            continue
        if kind.startswith("int"):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind.startswith("float"):
            ok = isinstance(value, _NUMBERS) and not isinstance(value, bool)
        elif kind.startswith("str"):
            ok = isinstance(value, str)
        elif kind.startswith("list[str]"):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif kind.startswith("bool"):
            ok = isinstance(value, bool)
        else:
            continue
        if not ok:
            raise MedForensicsError(prefix + f.name, f"{value!r} is not a {kind.split(' ')[0]}")


def build_settings(cls: type, values: dict[str, Any], path: str | Path | None, name: str) -> Any:
    """The settings dataclass ``cls`` made of ``values`` (a file's, then the command line's) and
    checked by its ``check()``; an unknown or wrongly typed setting is one error naming the file
    (``path``; without a file, ``name``) and then the setting."""
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise MedForensicsError(path or name, f"unknown setting(s): {', '.join(unknown)}")
    try:
        return cls(**values).check()
    except TypeError as e:
        raise MedForensicsError(path or name, str(e)) from None
    except MedForensicsError as e:
        if path is None:
            raise
        raise MedForensicsError(path, str(e)) from None   # the file, then the setting
