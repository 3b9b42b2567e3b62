"""``medforensics watermark embed|check|restore``: the reversible fragile watermark on DICOM files.

Inputs and outputs follow :mod:`medforensics.io.plan`: DICOM files are taken (by content, or a
``.dcm``-like name), other files found in folders and hidden names are skipped and counted; copies
keep a folder's layout below ``--out`` (without the folder's own name) and a file given by name
goes to its top; two inputs for one output, or an output that exists, stop the command (exit 2)
before anything is written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .console import UsageError, err, new_output, out
from ..progress import progress_bar
from ..core import MedForensicsError

watermark_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Reversible fragile watermark: embed, check (localise edits), restore the exact original.")


def _key(key_file: Optional[Path]) -> Optional[bytes]:
    if key_file is None:
        return None
    from ..provenance.watermark import read_key_file
    try:
        return read_key_file(key_file)
    except MedForensicsError as e:
        raise UsageError(str(e)) from None


def _inputs(paths: List[Path]):
    """The DICOM inputs (:func:`medforensics.io.plan` with the ``watermark`` rule: other files found
    in folders and hidden names are skipped and counted); a missing path or no DICOM file at all is
    a usage error."""
    from ..io import plan

    p = plan(paths, "watermark")
    missing = [i.path for i in p.inputs if i.rel is None]
    if missing:
        raise UsageError(f"{missing[0]}: no such file or folder")
    if not p.inputs:
        raise UsageError("no DICOM files found in the given paths")
    if p.note():
        err.print(escape(p.note()), soft_wrap=True)
    return p


def _targets(p, out_dir: Path):
    """(input, output) pairs: a folder's layout is kept below ``out_dir`` (without the folder's own
    name), a file given by name goes to its top; collisions and existing outputs are refused
    before anything is written."""
    from ..io import OutputCollision

    try:
        return p.targets(out_dir)
    except OutputCollision as e:
        raise UsageError(str(e)) from None


@watermark_app.command("embed")
def embed_cmd(
    paths: List[Path] = typer.Argument(..., help="DICOM files and folders (12-16-bit CT, X-ray; lossless pixel data)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the watermarked copies (a folder's layout is kept below it, without the folder's own name; never overwrites)."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="Secret key (file bytes, outer whitespace stripped): HMAC-SHA-256 digests."),
    block: int = typer.Option(32, "--block", min=4, help="Block side in pixels (localisation vs. distortion: 64 halves the change on noisy images)."),
) -> None:
    """Watermark DICOM files into new files; print the diagnostic impact (max deviation, PSNR)."""
    from ..provenance.watermark import embed_file

    from ..provenance.keys import make_folder

    key = _key(key_file)
    pairs = _targets(_inputs(paths), out_dir)
    make_folder(out_dir)  # a file in the way or no permission: one line naming the folder, nothing written
    table = Table(title=f"watermark embed ({'keyed HMAC-SHA-256' if key else 'SHA-256, no key'}, block {block})")
    for col in ("file", "blocks", "max dev (stored)", "max dev (physical)", "mean dev", "PSNR dB"):
        table.add_column(col, overflow="fold")
    failed = 0
    with progress_bar("embedding") as progress:
        task = progress.add_task("", total=len(pairs))
        for inp, dst in pairs:
            src = inp.path
            try:
                if inp.problem:
                    raise MedForensicsError(src, inp.problem)
                make_folder(dst.parent)
                r = embed_file(src, dst, key, block=block)
                table.add_row(escape(str(dst)), str(r.n_blocks), str(r.max_abs_dev),
                              f"{r.max_abs_dev_physical:g} {r.physical_unit}", f"{r.mean_abs_dev:.3f}",
                              "inf" if r.psnr_db == float("inf") else f"{r.psnr_db:.1f}")
            except MedForensicsError as e:
                failed += 1
                progress.console.print(f"[red]error[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
            progress.advance(task)
    if table.row_count:
        out.print(table)
    if failed:
        raise typer.Exit(1)


@watermark_app.command("check")
def check_cmd(
    paths: List[Path] = typer.Argument(..., help="Watermarked DICOM files and folders."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="The key used at embedding (if any)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON object per file here (new file)."),
) -> None:
    """Verify watermarks block by block: intact / tampered at N blocks (with boxes) / no watermark.

    Exit status 0 only when every file is intact.
    """
    from ..provenance.watermark import check_file

    key = _key(key_file)
    found = _inputs(paths)
    new_output(json_out)  # new file in an existing folder, else a usage error naming it
    table = Table(title="watermark check")
    for col in ("file", "status", "tampered blocks (row0, col0, row1, col1)"):
        table.add_column(col, overflow="fold")
    all_intact = True
    jf = open(json_out, "x", encoding="utf-8") if json_out else None
    try:
        with progress_bar("checking") as progress:
            task = progress.add_task("", total=len(found.inputs))
            for inp in found.inputs:
                src = inp.path
                try:
                    if inp.problem:
                        raise MedForensicsError(src, inp.problem)
                    r = check_file(src, key)
                    d = r.to_dict()
                    style = "green" if r.intact else "red"
                    boxes = ", ".join(str(tuple(b)) for b in r.tampered_blocks[:6])
                    if len(r.tampered_blocks) > 6:
                        boxes += f", ... ({len(r.tampered_blocks) - 6} more)"
                    table.add_row(escape(str(src)), f"[{style}]{escape(r.status)}[/{style}]", boxes)
                except MedForensicsError as e:
                    d = {"path": str(src), "status": "error", "error": str(e)}
                    table.add_row(escape(str(src)), "[red]error[/red]", escape(e.problem))
                all_intact &= d.get("status") == "intact"
                if jf:
                    jf.write(json.dumps(d) + "\n")
                progress.advance(task)
    finally:
        if jf:
            jf.close()
    out.print(table)
    if json_out:
        err.print(f"JSON lines written to {json_out}")
    if not all_intact:
        raise typer.Exit(1)


@watermark_app.command("restore")
def restore_cmd(
    paths: List[Path] = typer.Argument(..., help="Watermarked DICOM files and folders."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the restored originals (a folder's layout is kept below it, without the folder's own name; never overwrites)."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="The key used at embedding (if any)."),
    partial: bool = typer.Option(False, "--partial", help="Restore tampered files too: verified blocks exactly, tampered ones as they are."),
) -> None:
    """Write the exact original pixels (bit for bit) of watermarked files; tampered files are refused unless --partial."""
    from ..provenance.watermark import restore_file

    from ..provenance.keys import make_folder

    key = _key(key_file)
    pairs = _targets(_inputs(paths), out_dir)
    make_folder(out_dir)
    failed = 0
    with progress_bar("restoring") as progress:
        task = progress.add_task("", total=len(pairs))
        for inp, dst in pairs:
            src = inp.path
            try:
                if inp.problem:
                    raise MedForensicsError(src, inp.problem)
                make_folder(dst.parent)
                r = restore_file(src, dst, key, partial=partial)
                note = "" if r.intact else f" (partial: {len(r.tampered_blocks)} tampered block(s) left as they are)"
                progress.console.print(f"restored {dst}{note}", soft_wrap=True, markup=False, highlight=False)
            except MedForensicsError as e:
                failed += 1
                progress.console.print(f"[red]error[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
            progress.advance(task)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add watermark to ``app``."""
    app.add_typer(watermark_app, name="watermark")
