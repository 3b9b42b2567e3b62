"""``medforensics export``: DICOM (and PNG/JPEG/TIFF) to new PNG/JPEG files carrying a signed C2PA manifest.

Exit status: 0 when every input was exported, 1 when any input failed (the others are still
exported), 2 for a usage error (no key without ``--no-manifest``, a bad option, two inputs for one output,
an output that already exists -- checked for every input before anything is written).

Inputs and layout are :mod:`medforensics.io.plan`'s: DICOM, PNG, JPEG and TIFF files are taken
(other files found in folders and hidden names are skipped and counted); below a folder given,
its layout is kept under ``--out`` without the folder's own name, and a file given by name goes
to the top of ``--out``.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from .console import UsageError, err
from ..progress import progress_bar
from ..core import MedForensicsError

_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def parse_window(text: Optional[str]) -> Optional[tuple[float, float]]:
    """``"C,W"`` to ``(centre, width)``; a UsageError when it is not two numbers with width > 0."""
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    try:
        c, w = (float(p) for p in parts)
    except ValueError:
        raise UsageError(f"--window must be CENTRE,WIDTH (two numbers, e.g. 40,400), got {text!r}") from None
    if not w > 0 or c != c or abs(c) == float("inf") or w == float("inf"):
        raise UsageError(f"--window width must be a positive number, got {text!r}")
    return c, w


def output_name(rel: Path, suffix: str) -> Path:
    """``rel`` with an image suffix: ``.dcm``/``.dicom``/``.ima`` and raster suffixes are replaced,
    anything else (UID-style names with dots, no suffix) keeps its name and gains the suffix."""
    if rel.suffix.lower() in _DICOM_SUFFIXES | _RASTER_SUFFIXES:
        return rel.with_suffix(suffix)
    return rel.with_name(rel.name + suffix)


def plan(paths: List[Path], out_dir: Path, suffix: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """(source, output) pairs under ``out_dir``, and input errors (``"<file>: <problem>"``).

    Inputs and layout are :mod:`medforensics.io.plan`'s: a file named on the command line goes to
    ``out_dir/<name>``; below a folder ``F`` given, ``F/a/b.dcm`` goes to ``out_dir/a/b.png``
    (sub-folders kept, ``F``'s own name not). Files in folders that are neither DICOM nor
    PNG/JPEG/TIFF, and hidden names, are skipped. Raises :class:`~medforensics.io.OutputCollision`
    when two inputs would be written to one path and ``FileExistsError`` when an output exists,
    before anything is written.
    """
    from ..io import plan as plan_inputs

    p = plan_inputs(paths, "export")
    if p.note():
        err.print(escape(p.note()), soft_wrap=True)
    targets = p.targets(out_dir, rename=lambda rel: output_name(rel, suffix))
    pairs = [(i.path, d) for i, d in targets if d is not None]
    errors = [f"{i.path}: {i.problem}" for i in p.inputs if i.problem is not None]
    return pairs, errors


def where(written: List[Path], out: Path) -> str:
    """Where the files went, for the summary line: ``to OUT/sub`` when they share one folder,
    ``to N folders under OUT (OUT/a, OUT/b, ...)`` otherwise, ``to OUT`` when nothing was written."""
    folders = sorted({str(p.parent) for p in written})
    if not folders:
        return f"to {out}"
    if len(folders) == 1:
        return f"to {folders[0]}"
    shown = ", ".join(folders[:3]) + (", ..." if len(folders) > 3 else "")
    return f"to {len(folders)} folders under {out} ({shown})"


def export_cmd(
    paths: List[Path] = typer.Argument(..., help="DICOM files and folders (PNG/JPEG/TIFF files too)."),
    out: Path = typer.Option(..., "--out", help="Folder for the exported images (created if missing); "
                                                "a folder's layout is kept inside it, without the "
                                                "folder's own name."),
    fmt: str = typer.Option("png", "--format", help="png or jpeg."),
    key: Optional[Path] = typer.Option(None, "--key", help="PEM private key of the signer (keys new makes one)."),
    cert: Optional[Path] = typer.Option(None, "--cert", help="PEM certificate of the signer, then its issuers."),
    window: Optional[str] = typer.Option(None, "--window", help="VOI window CENTRE,WIDTH in modality units "
                                                               "(HU for CT), e.g. 40,400 or -600,1500; default: "
                                                               "the header's, else the full range."),
    bits: int = typer.Option(8, "--bits", help="Bits per pixel of PNG output: 8 or 16."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG quality."),
    max_size: Optional[int] = typer.Option(None, "--max-size", min=1, help="Downscale so the longer side is at "
                                                                         "most this many pixels."),
    no_manifest: bool = typer.Option(False, "--no-manifest", help="Write plain images without a C2PA manifest."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Render DICOM images to new PNG/JPEG files, each carrying a C2PA manifest signed with --key/--cert
    that names the source study (UIDs and SHA-256; no patient data) and what was done (window, resize).

    Signing is the default: without --key and --cert, export refuses unless --no-manifest is given.
    Existing files are never overwritten.
    """
    from ..provenance.c2pa_manifest import _common_name, export
    from ..provenance.keys import load_identity, make_folder

    fmt = fmt.lower()
    if fmt not in ("png", "jpeg", "jpg"):
        raise UsageError("--format must be png or jpeg")
    suffix = ".png" if fmt == "png" else ".jpg"
    if bits not in (8, 16):
        raise UsageError("--bits must be 8 or 16")
    if bits == 16 and suffix == ".jpg":
        raise UsageError("--bits 16 needs --format png (JPEG holds 8 bits)")
    win = parse_window(window)
    if no_manifest and (key or cert):
        raise UsageError("--no-manifest and --key/--cert contradict each other; give one or the other")
    if not no_manifest and (key is None or cert is None):
        raise UsageError("export signs a C2PA manifest: give --key and --cert (make a test identity with "
                         "'medforensics keys new DIR'), or pass --no-manifest for plain images")
    identity = None if no_manifest else load_identity(key, cert)
    from ..io import OutputCollision

    try:
        pairs, errors = plan(paths, out, suffix)
    except OutputCollision as e:
        raise UsageError(str(e)) from None
    if not pairs and not errors:
        raise UsageError("no DICOM or raster images found in the given paths")
    for e in errors:
        err.print(f"[red]error[/red] {escape(e)}", soft_wrap=True)
    if pairs:
        make_folder(out)  # a file in the way or no permission: one line naming the folder
    done, written = 0, []
    with progress_bar("exporting") as progress:
        task = progress.add_task("", total=len(pairs))
        for src, dst in pairs:
            progress.update(task, description=src.name)
            try:
                make_folder(dst.parent)
                export(src, dst, identity, window=win, bits=bits, quality=quality, max_size=max_size)
                done += 1
                written.append(dst)
            except MedForensicsError as e:
                if debug:
                    raise
                errors.append(str(e))
                progress.console.print(f"[red]error[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
            progress.advance(task)
    signed = f", C2PA manifest signed by {_common_name(identity.cert)}" if identity else \
        ", without C2PA manifest"
    err.print(f"exported {done} of {len(pairs)} image(s) {where(written, out)}{signed}", soft_wrap=True,
              highlight=False)
    if errors:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add export to ``app``."""
    app.command("export")(export_cmd)
