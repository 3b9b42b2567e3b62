"""Which files a command reads and where it writes: one input planner for every command.

``scan``, ``sign``, ``verify``, ``watermark``, ``export`` and ``ledger`` all take files and
folders; they find their inputs the same way:

* **One walker** (:func:`walk`). Folders are walked recursively in a fixed order (the paths in
  the order given; inside a folder, names sorted, a folder's files before its sub-folders).
  Names starting with ``.`` -- files and folders -- are skipped and counted (a hidden folder is
  not entered). Symbolic links to folders are not followed inside a walked folder (no loops);
  a folder given by name is walked even when it is a link.
* **One rule per command** (:data:`KINDS`): what kinds of file it takes, as data. A file given
  *by name* that the command cannot take is an input with a one-line ``problem`` naming it (the
  command reports it as an error and goes on); a file *found in a folder* that the command does
  not take is skipped and counted, never an error. The kind comes from the file's first bytes
  (:func:`kind_of`; a name ending ``.dcm``, ``.png``, ... decides only when the bytes do not).
  An empty file is an input with the problem "file is empty" when given by name, or when found
  under a name that does not say it is something else (``x.dcm``, ``1.2.3``: yes; ``notes.txt``,
  ``x.png`` for ``sign``: skipped).
* **One output layout** for commands that write copies (``sign``, ``watermark embed`` and
  ``restore``, ``export``): :meth:`Plan.targets`. Below each folder given, the relative layout is
  kept under the output folder, *without the given folder's own name*; a file given by name goes
  to the top of the output folder::

      sign study/ extra/ct.dcm --out signed/
      study/a.dcm         -> signed/a.dcm
      study/s1/b.dcm      -> signed/s1/b.dcm
      extra/ct.dcm        -> signed/ct.dcm

  Why without the folder's name: a copy of a folder then has the folder's own layout, so
  commands chain and round-trip (``watermark embed in --out m`` then ``watermark restore m --out
  r`` gives ``r`` the layout of ``in``, and ``diff -r in r`` compares them) instead of nesting one
  more level at every step; ``.`` and ``..`` need no made-up name. Two inputs that would land on
  the same output path (two folders with the same relative file, a file and a folder's file of
  the same name, ``x.dcm`` and ``x.png`` exported to ``x.png``) are a usage error
  (:class:`OutputCollision`) listing both, raised before anything is written; so is an output
  file that already exists (``FileExistsError``).
* **Never overwrite**: :func:`new_folder` (an output folder must not exist or be empty; it is
  created) and :func:`new_file` (an output file must not exist). Both raise
  ``FileExistsError`` with a one-line message naming the path; the command line turns it into
  exit status 2.

>>> p = plan(["study/"], "sign")                     # doctest: +SKIP
>>> [(i.path.name, i.rel, i.problem) for i in p.inputs]   # doctest: +SKIP
[('a.dcm', PosixPath('a.dcm'), None), ('b.dcm', PosixPath('s1/b.dcm'), None)]
>>> p.note()                                         # doctest: +SKIP
'skipped 1 file(s) that sign does not take (e.g. study/README.txt) and 1 hidden name(s)'
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..core import MedForensicsError
from .dicom import looks_like_raw_dicom

__all__ = ["KINDS", "Input", "Plan", "Walk", "OutputCollision", "walk", "plan", "kind_of", "sniff", "new_folder",
           "new_file"]

#: What each command takes. A kind is ``dicom``, ``png``, ``jpeg``, ``tiff`` or ``nifti``.
KINDS: dict[str, frozenset[str]] = {
    "scan": frozenset({"dicom", "png", "jpeg", "tiff", "nifti"}),
    "sign": frozenset({"dicom"}),
    "verify": frozenset({"dicom", "png", "jpeg"}),       # DICOM signatures, C2PA manifests
    "watermark": frozenset({"dicom"}),
    "export": frozenset({"dicom", "png", "jpeg", "tiff"}),
    "ledger": frozenset({"dicom", "png", "jpeg", "tiff", "nifti"}),
}
_NAMES = {"dicom": "DICOM", "png": "PNG", "jpeg": "JPEG", "tiff": "TIFF", "nifti": "NIfTI"}
_ORDER = ("dicom", "png", "jpeg", "tiff", "nifti")

#: Extensions that are never images.
_NOT_IMAGES = {".md", ".txt", ".csv", ".xml", ".json", ".jsonl", ".html", ".htm", ".py", ".pdf", ".zip",
               ".gz", ".tar", ".yaml", ".yml", ".toml", ".log", ".sh", ".ini", ".cfg", ".parquet"}
_NOT_IMAGE_NAMES = ("license", "attribution", "readme", "copying", "notice")
_IMAGE_EXT = {".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom", ".png": "raster", ".jpg": "raster",
              ".jpeg": "raster", ".tif": "raster", ".tiff": "raster", ".nii": "nifti"}
_EXT_KIND = {".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg",
             ".tif": "tiff", ".tiff": "tiff", ".nii": "nifti"}


class OutputCollision(ValueError):
    """Two inputs would be written to one output path (a usage error: exit status 2)."""


# ----------------------------------------------------------------------------- what a file is

def sniff(path: Path) -> str | None:
    """The kind of a file from its first bytes (and its name for NIfTI): ``dicom``, ``raster``,
    ``nifti``, ``empty`` or None when it is not a recognised image."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(352)
    except OSError:
        return None
    name = path.name.lower()
    if not head:
        return "empty"
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff") or head[:4] in (b"II*\x00", b"MM\x00*"):
        return "raster"
    if name.endswith(".nii") or name.endswith(".nii.gz") or head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return "nifti"
    ext = path.suffix.lower()
    if ext in _NOT_IMAGES or name in _NOT_IMAGE_NAMES:
        return None
    if ext in _IMAGE_EXT:
        return _IMAGE_EXT[ext]
    if looks_like_raw_dicom(path):
        return "dicom"
    return None


def _name_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return "nifti"
    return _EXT_KIND.get(path.suffix.lower())


def _says_not_image(path: Path) -> bool:
    return path.suffix.lower() in _NOT_IMAGES or path.name.lower() in _NOT_IMAGE_NAMES


def kind_of(path: str | Path) -> str | None:
    """``dicom``, ``png``, ``jpeg``, ``tiff``, ``nifti``, ``empty``, or None (not an image).

    :func:`sniff`'s answer with rasters told apart by their signature (by their suffix when the
    signature is broken)."""
    path = Path(path)
    k = sniff(path)
    if k != "raster":
        return k
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return _name_kind(path)


def describe(kinds: Iterable[str]) -> str:
    """``{"dicom", "png", "jpeg"}`` -> ``'DICOM, PNG or JPEG'``."""
    names = [_NAMES[k] for k in _ORDER if k in set(kinds)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


# ----------------------------------------------------------------------------- walking

@dataclass
class Walk:
    """What :func:`walk` found: ``files`` as (path, path relative to its output folder, given by
    name), ``missing`` paths, ``broken`` links, and how many ``hidden`` names were skipped."""

    files: list[tuple[Path, Path, bool]] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)
    #: symbolic links whose target does not exist, as ``files``: an input's error, never "skipped"
    broken: list[tuple[Path, Path, bool]] = field(default_factory=list)
    hidden: int = 0


def walk(paths: Iterable[str | Path]) -> Walk:
    """Every file under ``paths`` in a deterministic order; names starting with ``.`` skipped and
    counted; symbolic links to folders inside a walked folder not followed (no loops)."""
    w = Walk()
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                shown = sorted(d for d in dirs if not d.startswith("."))
                w.hidden += len(dirs) - len(shown)
                dirs[:] = shown
                r = Path(root)
                for f in sorted(files):
                    if f.startswith("."):
                        w.hidden += 1
                    elif (r / f).is_symlink() and not (r / f).exists():
                        w.broken.append((r / f, (r / f).relative_to(p), False))
                    else:
                        w.files.append((r / f, (r / f).relative_to(p), False))
        elif p.exists():
            w.files.append((p, Path(p.name), True))
        elif p.is_symlink():
            w.broken.append((p, Path(p.name), True))
        else:
            w.missing.append(p)
    return w


def _link_target(path: Path) -> str:
    try:
        return str(os.readlink(path))
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class Input:
    """One input of a command. ``rel`` is where its copy goes below the output folder (None for a
    missing path); ``problem`` is a one-line reason it cannot be read (the command reports
    ``f"{path}: {problem}"`` and goes on)."""

    path: Path
    rel: Path | None
    kind: str | None
    named: bool
    problem: str | None = None


@dataclass
class Plan:
    """The inputs of one command: ``inputs`` in order (with problems), files found in folders that
    the command does not take (``skipped``), and the number of ``hidden`` names skipped."""

    command: str
    inputs: list[Input]
    skipped: list[Path]
    hidden: int

    @property
    def readable(self) -> list[Input]:
        """The inputs without a problem."""
        return [i for i in self.inputs if i.problem is None]

    def note(self) -> str | None:
        """A one-line note on what was skipped, or None when nothing was."""
        if not self.skipped and not self.hidden:
            return None
        parts = []
        if self.skipped:
            parts.append(f"{len(self.skipped)} file(s) that {self.command} does not take (e.g. {self.skipped[0]})")
        if self.hidden:
            parts.append(f"{self.hidden} hidden name(s)")
        return "skipped " + " and ".join(parts)

    def targets(self, out_dir: str | Path, rename: Callable[[Path], Path] | None = None
                ) -> list[tuple[Input, Path | None]]:
        """Each input with its output path under ``out_dir`` (None for inputs with a problem),
        following the module's layout; ``rename`` maps a relative path to the one written (e.g. a
        new suffix). Before anything is written: :class:`OutputCollision` when two inputs would
        land on one path, ``FileExistsError`` when ``out_dir`` is not a folder or an output
        already exists."""
        out_dir = Path(out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise FileExistsError(f"{out_dir}: exists and is not a folder; choose a new output folder")
        pairs: list[tuple[Input, Path | None]] = []
        seen: dict[Path, Input] = {}
        for i in self.inputs:
            if i.problem is not None or i.rel is None:
                pairs.append((i, None))
                continue
            dst = out_dir / (rename(i.rel) if rename else i.rel)
            if dst in seen:
                raise OutputCollision(f"{seen[dst].path} and {i.path} would both be written to {dst}; "
                                      "give them in separate runs")
            seen[dst] = i
            pairs.append((i, dst))
        existing = [d for _, d in pairs if d is not None and (d.exists() or d.is_symlink())]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise FileExistsError(f"{existing[0]}: already exists{more}; nothing is overwritten, "
                                  "choose a new output folder")
        return pairs


def plan(paths: Iterable[str | Path], command: str) -> Plan:
    """The inputs of ``command`` (a key of :data:`KINDS`) under ``paths``: see the module's rules."""
    kinds = KINDS[command]
    w = walk(paths)
    inputs = [Input(m, None, None, True, "no such file or directory") for m in w.missing]
    inputs += [Input(b, rel, None, named, f"broken symbolic link (its target {_link_target(b)} does not exist)")
               for b, rel, named in w.broken]
    skipped: list[Path] = []
    for path, rel, named in w.files:
        kind = kind_of(path)
        if kind == "empty":
            guess = _name_kind(path)
            if named or guess in kinds or (guess is None and not _says_not_image(path)):
                inputs.append(Input(path, rel, guess, named, "file is empty"))
            else:
                skipped.append(path)
        elif kind in kinds:
            inputs.append(Input(path, rel, kind, named))
        elif not named:
            skipped.append(path)
        elif kind is None:
            inputs.append(Input(path, rel, None, True, f"not a recognised medical image (expected {describe(kinds)})"))
        else:
            inputs.append(Input(path, rel, kind, True, f"a {_NAMES[kind]} file; {command} takes {describe(kinds)} only"))
    return Plan(command, inputs, skipped, w.hidden)


# ----------------------------------------------------------------------------- never overwrite

def new_folder(path: str | Path, *, create: bool = True) -> Path:
    """Create the output folder ``path`` (and its parents) and return it; it must not exist, or
    be an empty folder. ``FileExistsError`` with a one-line message otherwise. ``create=False``
    only checks (for a writer that creates the folder once its inputs are known to be usable)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise FileExistsError(f"{path}: exists and is not a folder; choose a new folder")
        if any(path.iterdir()):
            raise FileExistsError(f"{path}: folder exists and is not empty; choose a new one "
                                  "(nothing is overwritten)")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def new_file(path: str | Path) -> Path:
    """``path`` when nothing is there yet and its folder exists; ``FileExistsError`` (or a
    :class:`~medforensics.core.MedForensicsError` for a missing folder) with a one-line message
    otherwise."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path}: already exists; choose a new name (nothing is overwritten)")
    if not path.parent.exists():
        raise MedForensicsError(path, f"folder {path.parent} does not exist")
    return path


def write_atomically(path: str | Path, data: str | bytes, *, replace: bool = False) -> Path:
    """Write ``data`` to ``path`` whole or not at all: to a hidden file beside it, flushed to
    disk, then moved into place in one step. ``path`` must be new unless ``replace`` is true (a
    file that appeared meanwhile is never replaced). A crash leaves at most the hidden file.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_atomically(folder / "report.html", "<html></html>").read_text()
    '<html></html>'
    >>> write_atomically(folder / "report.html", "again")
    Traceback (most recent call last):
    ...
    FileExistsError: ...report.html: already exists; choose a new name (nothing is overwritten)
    >>> sorted(p.name for p in folder.iterdir())
    ['report.html']
    """
    path = Path(path)
    if not replace:
        new_file(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "xb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    publish(tmp, path, replace=replace)
    return path


def publish(tmp: str | Path, path: str | Path, *, replace: bool = False) -> None:
    """Move the finished file ``tmp`` to ``path`` in one step. Without ``replace``, raise
    ``FileExistsError`` when ``path`` exists by then; ``tmp`` is gone either way."""
    tmp, path = Path(tmp), Path(path)
    if replace:
        os.replace(tmp, path)
        return
    try:
        try:
            os.link(tmp, path)               # fails if path exists: never replaces it
        except FileExistsError:
            raise FileExistsError(f"{path}: already exists; choose a new name (nothing is overwritten)") from None
        except OSError:                      # a file system without hard links
            new_file(path)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
