"""``medforensics forge inject | remove``: CT-GAN style nodule injection and removal on a CT series.

Each command reads one DICOM series (a folder), writes the manipulated series into a new folder
and the ground truth beside it, and prints where it changed::

    OUT/                     the series, every file under its own name; untouched slices are
                             byte copies, headers and UIDs kept (new UIDs and an editor named
                             with --careless)
    OUT.groundtruth.json     kind, method, centre (voxels and mm), cube, every parameter, the
                             transfer syntax written (the input's where it can be re-encoded
                             losslessly: medforensics.io.write.output_syntax)
    OUT.mask.npz             ``mask``: uint8 volume (slices, rows, cols), 1 where a voxel changed
                             (decoded from the written files and compared with the input)

Nothing is written when any of the three exists, and the input is never touched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

def _usage(msg: str) -> Exception:
    from .console import UsageError
    return UsageError(msg)

def _numbers(text: Optional[str], name: str, what: str, as_int: bool) -> Optional[tuple]:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise _usage(f"{name} must be three comma-separated numbers {what}, got {text!r}")
    if as_int:
        if any(v != int(v) for v in vals):
            raise _usage(f"{name} must be whole numbers {what}, got {text!r}")
        return tuple(int(v) for v in vals)
    return vals

def _load_series(path: Path):
    from ..core import MedForensicsError
    from ..io import discover, load_source

    if not path.exists():
        raise MedForensicsError(path, "no such file or folder")
    if not path.is_dir():
        raise _usage(f"{path}: give the folder of one CT series, not a file")
    sources, _ = discover([path])
    bad = [s for s in sources if s.error]
    series = [s for s in sources if s.kind == "dicom-series" and not s.error]
    if not series:
        if bad:
            raise MedForensicsError(bad[0].path, bad[0].error)
        raise MedForensicsError(path, "no DICOM series (a stack of CT slices) found in this folder")
    if len(series) > 1:
        raise MedForensicsError(path, f"holds {len(series)} series; point at the folder of one series")
    image = load_source(series[0])
    if image.modality != "CT":
        raise MedForensicsError(path, f"the series is {image.modality}, not CT")
    return image

def _outputs(series_dir: Path, out: Path) -> tuple[Path, Path, Path]:
    from .console import new_output

    if not out.name or out.name in (".", ".."):
        out = out.resolve()
    if not out.name:
        raise _usage(f"{out}: choose a new folder for the forged series")
    gt = out.with_name(out.name + ".groundtruth.json")
    mask = out.with_name(out.name + ".mask.npz")
    src = series_dir.resolve()
    dst = out.resolve()
    if dst == src or src in dst.parents:
        raise _usage(f"{out}: lies inside the input series folder; forge never writes into its input")
    if dst in src.parents:
        raise _usage(f"{out}: contains the input series; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _usage(f"{out}: already exists; choose a new folder (forge never overwrites)")
    for f in (gt, mask):
        new_output(f)
    if not out.parent.exists():
        raise _usage(f"{out}: folder {out.parent} does not exist")
    return out, gt, mask

def _write(image, forgery, out: Path, gt: Path, mask_path: Path, careless: bool, extra: dict[str, Any]) -> list[Path]:
    from ..forge.base import write_forgery
    from ..io.write import write_mask

    w = write_forgery(image, forgery, out, careless=careless)
    forgery.mask = w.mask  # every voxel that decodes differently, not only the edit's own
    write_mask(forgery.mask, mask_path)
    forgery.write_ground_truth(gt, source=str(image.path), series_uid=image.uid, output=str(out),
                               n_files=len(w.files), mask_file=mask_path.name, careless=careless,
                               shape=list(image.pixels.shape), **w.record, **extra)
    return w.files

def _report(verb: str, forgery, out: Path, gt: Path, mask: Path, n_files: int) -> None:
    from .console import out as console

    b = forgery.bbox_voxel
    mm = forgery.center_mm
    where = f"voxel (k,i,j) {tuple(forgery.center_voxel)}" + (f", patient (x,y,z) {tuple(mm)} mm" if mm else "")
    console.print(f"{verb} at {where}; cube k {b[0]}:{b[3]}, i {b[1]}:{b[4]}, j {b[2]}:{b[5]}; "
                  f"{int(forgery.mask.sum())} voxels changed", soft_wrap=True, highlight=False, markup=False)
    console.print(f"wrote {n_files} files to {out}; ground truth {gt.name} and mask {mask.name} beside it",
                  soft_wrap=True, highlight=False, markup=False)

def _check_method(method: str) -> None:
    from ..forge.ct import METHODS
    if method not in METHODS:
        raise _usage(f"--method must be one of {', '.join(METHODS)}, got {method!r}")

def inject_cmd(
    series_dir: Path = typer.Argument(..., help="Folder of one CT series (DICOM)."),
    out: Path = typer.Option(..., "--out", help="New folder for the manipulated series (ground truth goes beside it)."),
    center: Optional[str] = typer.Option(None, "--center", help="Centre as voxel indices k,i,j (slice, row, column)."),
    center_mm: Optional[str] = typer.Option(None, "--center-mm", help="Centre in patient coordinates x,y,z (LPS, mm)."),
    diameter: float = typer.Option(10.0, "--diameter", help="Nodule diameter in mm (3 to 40)."),
    nodule_type: str = typer.Option("solid", "--type", help="solid, part-solid or ground-glass."),
    method: str = typer.Option("classic", "--method", help="Renderer: classic (matched noise) or gan."),
    seed: int = typer.Option(0, "--seed", help="Seed for location, shape, HU levels and noise."),
    nodule_margin: float = typer.Option(5.0, "--nodule-margin", min=0.0,
                                        help="Keep every changed voxel this many mm from the LIDC readers' nodule marks."),
    careless: bool = typer.Option(False, "--careless", help="Leave a hurried editor's traces (new UIDs, software named)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Inject a lung nodule into a CT series (CT-GAN style): write the new series, mask and ground truth.

    The nodule's cube keeps --nodule-margin mm from every nodule the LIDC readers marked on the
    series (when its annotation XML is found): a clear error where that is not possible."""
    from ..core import MedForensicsError
    from ..forge.ct import NODULE_TYPES, inject

    if center and center_mm:
        raise _usage("give --center or --center-mm, not both")
    if nodule_type not in NODULE_TYPES:
        raise _usage(f"--type must be one of {', '.join(NODULE_TYPES)}, got {nodule_type!r}")
    _check_method(method)
    if not 3.0 <= diameter <= 40.0:
        raise _usage(f"--diameter must be between 3 and 40 mm, got {diameter:g}")
    cv = _numbers(center, "--center", "k,i,j", True)
    cm = _numbers(center_mm, "--center-mm", "x,y,z", False)
    out, gt, mask = _outputs(series_dir, out)
    image = _load_series(series_dir)
    try:
        forgery = inject(image, center_voxel=cv, center_mm=cm, diameter_mm=diameter, nodule_type=nodule_type,
                         method=method, seed=seed, margin_mm=nodule_margin)
    except ValueError as e:
        raise MedForensicsError(series_dir, str(e)) from None
    files = _write(image, forgery, out, gt, mask, careless, {})
    _report(f"injected a nodule of {diameter:g} mm ({nodule_type}, {method})", forgery, out, gt, mask, len(files))

def remove_cmd(
    series_dir: Path = typer.Argument(..., help="Folder of one CT series (DICOM)."),
    out: Optional[Path] = typer.Option(None, "--out", help="New folder for the manipulated series (ground truth goes beside it)."),
    nodule_id: Optional[int] = typer.Option(None, "--nodule", help="LIDC-IDRI nodule to remove (see --list)."),
    center: Optional[str] = typer.Option(None, "--center", help="Centre as voxel indices k,i,j (slice, row, column)."),
    center_mm: Optional[str] = typer.Option(None, "--center-mm", help="Centre in patient coordinates x,y,z (LPS, mm)."),
    diameter: Optional[float] = typer.Option(None, "--diameter", help="Diameter in mm of what to remove (with --center)."),
    list_only: bool = typer.Option(False, "--list", help="List the LIDC-IDRI nodules of the series and exit."),
    method: str = typer.Option("classic", "--method", help="Renderer: classic (matched noise) or gan."),
    seed: int = typer.Option(0, "--seed", help="Seed for the noise."),
    careless: bool = typer.Option(False, "--careless", help="Leave a hurried editor's traces (new UIDs, software named)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Remove a nodule from a CT series by painting lung over it: write the new series, mask and ground truth."""
    from ..core import MedForensicsError
    from ..forge.ct import remove
    from ..forge.lidc import nodules_for

    if list_only:
        image = _load_series(series_dir)
        _list(image, nodules_for(image))
        return
    if out is None:
        raise _usage("--out is required (or --list to list the nodules)")
    _check_method(method)
    if nodule_id is not None and (center or center_mm):
        raise _usage("give --nodule or --center/--center-mm, not both")
    if center and center_mm:
        raise _usage("give --center or --center-mm, not both")
    if nodule_id is None and not (center or center_mm):
        raise _usage("say what to remove: --nodule ID (see --list) or --center k,i,j --diameter MM")
    if (center or center_mm) and diameter is None:
        raise _usage("--diameter is needed with --center or --center-mm")
    if diameter is not None and not 1.0 <= diameter <= 100.0:
        raise _usage(f"--diameter must be between 1 and 100 mm, got {diameter:g}")
    cv = _numbers(center, "--center", "k,i,j", True)
    cm = _numbers(center_mm, "--center-mm", "x,y,z", False)
    out, gt, mask = _outputs(series_dir, out)
    image = _load_series(series_dir)
    extra: dict[str, Any] = {}
    nodule = None
    if nodule_id is not None:
        nodules = nodules_for(image)
        if not nodules:
            raise MedForensicsError(series_dir, "no LIDC-IDRI annotations found for this series; give --center and --diameter")
        nodule = next((n for n in nodules if n.id == nodule_id), None)
        if nodule is None:
            raise _usage(f"no nodule {nodule_id}; this series has nodules {', '.join(str(n.id) for n in nodules)} (see --list)")
    try:
        forgery = remove(image, nodule=nodule, center_voxel=cv, center_mm=cm, diameter_mm=diameter, method=method,
                         seed=seed)
    except ValueError as e:
        raise MedForensicsError(series_dir, str(e)) from None
    files = _write(image, forgery, out, gt, mask, careless, extra)
    what = f"nodule {nodule.id} ({nodule.diameter_mm:.1f} mm)" if nodule else f"a {forgery.params['diameter_mm']:g} mm region"
    _report(f"removed {what} ({method})", forgery, out, gt, mask, len(files))

def _list(image, nodules) -> None:
    from rich.table import Table

    from .console import out as console

    if not nodules:
        console.print(f"{image.path}: no LIDC-IDRI nodules found (no matching annotation XML, or none on these slices)",
                      soft_wrap=True, highlight=False, markup=False)
        return
    table = Table(title=f"LIDC-IDRI nodules of {image.uid}")
    for col in ("id", "centre k,i,j", "centre x,y,z mm", "diameter mm", "malignancy", "readers"):
        table.add_column(col)
    for n in nodules:
        mm = ",".join(f"{v:.1f}" for v in n.center_mm) if n.center_mm else ""
        mal = "-" if n.malignancy is None else f"{n.malignancy:.2f}" + (" (malignant)" if n.malignant else "")
        dia = "<3" if n.small else f"{n.diameter_mm:.1f}"
        table.add_row(str(n.id), ",".join(map(str, n.center_voxel)), mm, dia, mal, str(n.n_readers))
    console.print(table)

def register(forge_app: typer.Typer) -> None:
    """Add inject, remove to ``forge_app``."""
    forge_app.command("inject")(inject_cmd)
    forge_app.command("remove")(remove_cmd)
