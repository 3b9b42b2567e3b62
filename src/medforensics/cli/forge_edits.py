"""``medforensics forge copymove | splice | inpaint | edit``: 2D manipulations of one image.

Each command reads one image (a DICOM radiograph or CT slice, a PNG/JPEG/TIFF; a multi-frame
DICOM or NIfTI volume with ``--slice K``), writes three new files and prints where it changed::

    OUT                      the manipulated image, in the input's own form and transfer syntax
                             (lossy DICOM is written losslessly: medforensics.io.write.output_syntax)
    <OUT stem>.mask.png      what changed (0/255; .mask.npz for a volume): the edit and every
                             pixel that decodes differently from the input (forge.base.write_forgery)
    <OUT stem>.groundtruth.json   kind, method, centre, box and every parameter (reproducible)

Nothing is written when any of the three already exists, and the input is never touched.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer


_RASTER = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def _usage(msg: str) -> Exception:
    from .console import UsageError
    return UsageError(msg)


def _ints(text: Optional[str], n: int, name: str) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        vals = tuple(int(round(float(p))) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != n or len(parts) != n:
        what = "r0,c0,r1,c1 (rows and columns, stops exclusive)" if n == 4 else "r,c"
        raise _usage(f"{name} must be {n} whole numbers {what}, got {text!r}")
    return vals


def _outputs(image_path: Path, out: Path, volume: bool) -> tuple[Path, Path, Path]:
    """``out`` and the mask and ground-truth files beside it; all three must be new."""
    name = out.name
    for suffix in (".nii.gz",) + tuple(sorted(_RASTER | {".dcm", ".nii"}, key=len, reverse=True)):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    files = (out, out.with_name(f"{name}.mask.{'npz' if volume else 'png'}"), out.with_name(f"{name}.groundtruth.json"))
    try:
        same = out.resolve() == image_path.resolve()
    except OSError:
        same = False
    if same:
        raise _usage(f"{out}: is the input; forge never writes over its input")
    for f in files:
        if f.exists():
            raise _usage(f"{f}: already exists; forge writes new files only (choose another --out)")
    if not out.parent.is_dir():
        raise _usage(f"{out}: folder {out.parent} does not exist")
    return files


def _load_one(path: Path, slice_: Optional[int]):
    from ..core import MedForensicsError
    from ..io import load

    if not path.exists():
        raise MedForensicsError(path, "no such file")
    if path.is_dir():
        raise _usage(f"{path}: is a folder; give one image file (a DICOM radiograph or CT slice, PNG, JPEG or TIFF)")
    images = load(path)
    if len(images) != 1:
        raise MedForensicsError(path, f"holds {len(images)} images; one 2D image is expected")
    image = images[0]
    if image.pixels.ndim == 3:
        n = image.pixels.shape[0]
        if slice_ is None:
            if n != 1:
                raise _usage(f"{path}: is a volume of {n} slices; choose one with --slice K (0 to {n - 1})")
            slice_ = 0
        if not 0 <= slice_ < n:
            raise _usage(f"--slice {slice_} is outside the volume's {n} slices (0 to {n - 1})")
    elif slice_ not in (None, 0):
        raise _usage(f"{path}: is a 2D image; --slice does not apply")
    else:
        slice_ = None
    return image, slice_


def _check_suffix(image, out: Path) -> None:
    suffix = out.suffix.lower()
    if image.format == "dicom" and suffix in _RASTER:
        raise _usage(f"{out}: a DICOM input is written as DICOM; name the output .dcm")
    if image.format in ("png", "jpeg", "tiff") and suffix not in _RASTER:
        raise _usage(f"{out}: name the output .png, .jpg or .tif (the suffix chooses the format)")
    if image.format == "nifti" and not out.name.lower().endswith((".nii", ".nii.gz")):
        raise _usage(f"{out}: a NIfTI input is written as NIfTI; name the output .nii or .nii.gz")


def _run(kind: str, image_path: Path, out: Path, slice_: Optional[int], make) -> None:
    """Load, check every output, forge, write the three files, print where the change is."""
    from ..forge.base import write_forgery
    from ..io.write import write_mask

    image, k = _load_one(image_path, slice_)
    _check_suffix(image, out)
    out_file, mask_file, truth_file = _outputs(image_path, out, image.pixels.ndim == 3)
    try:
        forgery = make(image, k)
    except ValueError as e:
        from ..core import one_line
        raise _usage(one_line(e)) from None
    w = write_forgery(image, forgery, out_file)
    forgery.mask = w.mask  # every pixel that decodes differently, not only the edit's own
    write_mask(forgery.mask, mask_file)
    forgery.write_ground_truth(truth_file, input=str(image_path), output=[str(p) for p in w.files],
                               mask=str(mask_file), **w.record)
    _report(kind, forgery, w.files, mask_file, truth_file, w.record)


def _report(kind: str, f, written, mask_file: Path, truth: Path, record: dict) -> None:
    from .console import out as console

    p = f.params
    half = len(f.bbox_voxel) // 2
    start = ",".join(str(v) for v in f.bbox_voxel[:half])
    stop = ",".join(str(v) for v in f.bbox_voxel[half:])
    console.print(f"forge {kind} ({f.method}): {int(f.mask.sum())} pixel(s) in the mask", soft_wrap=True)
    axes = "slice, row, column" if half == 3 else "row, column"
    console.print(f"  box: {start} -> {stop} (start -> stop, exclusive; {axes})", soft_wrap=True)
    mm = f"  patient mm {', '.join(f'{v:.1f}' for v in f.center_mm)}" if f.center_mm else ""
    console.print(f"  centre: {','.join(str(v) for v in f.center_voxel)}{mm}", soft_wrap=True)
    extra = {key: p[key] for key in ("slice", "source_box", "donor", "donor_box", "angle", "scale", "feather",
                                     "offset", "factor", "seed") if p.get(key) is not None}
    if extra:
        console.print("  " + "; ".join(f"{key} {_fmt(v)}" for key, v in extra.items()), soft_wrap=True)
    for ts in record.get("transfer_syntax") or []:
        how = "kept" if ts["input"] == ts["output"] else f"{ts['reason']}: {ts['output_name']}"
        console.print(f"  transfer syntax {ts['input_name']}: {how}", soft_wrap=True, highlight=False, markup=False)
    if record.get("n_changed_by_encoding"):
        console.print(f"  {record['n_changed_by_encoding']} pixel(s) outside the edit changed by the lossy "
                      "re-encoding (in the mask too)", soft_wrap=True)
    console.print(f"  wrote {', '.join(str(w) for w in written)}, {mask_file}, {truth}", soft_wrap=True)


def _fmt(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


_OUT = typer.Option(..., "--out", help="New file for the manipulated image (its mask and ground truth go beside it).")
_BOX = typer.Option(None, "--box", help="Region r0,c0,r1,c1 (pixels, stops exclusive); default: drawn with the seed.")
_SEED = typer.Option(0, "--seed", help="Seed for everything not given (place, size, angle, noise).")
_SLICE = typer.Option(None, "--slice", help="Slice K of a volume (multi-frame DICOM, NIfTI).")
_FEATHER = typer.Option(None, "--feather", min=0, help="Blend the edges over this many pixels.")


def copymove_cmd(
    image: Path = typer.Argument(..., help="One image: DICOM radiograph or CT slice, PNG, JPEG, TIFF."),
    out: Path = _OUT,
    box: Optional[str] = typer.Option(None, "--box", help="Source region r0,c0,r1,c1; default: drawn with the seed."),
    to: Optional[str] = typer.Option(None, "--to", help="Top-left r,c of the copy; default: drawn, not overlapping the source."),
    angle: Optional[float] = typer.Option(None, "--angle", help="Rotation in degrees (default: 0-30, either way)."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Scale of the copy (default: 0.9-1.2)."),
    feather: Optional[int] = _FEATHER,
    seed: int = _SEED,
    slice_: Optional[int] = _SLICE,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Copy a region of the image elsewhere in it (rotated, scaled, edges blended)."""
    from ..forge.edits import forge_copymove

    b, t = _ints(box, 4, "--box"), _ints(to, 2, "--to")
    _run("copymove", image, out, slice_, lambda im, k: forge_copymove(im, seed=seed, box=b, to=t, angle=angle,
                                                                        scale=scale, feather=feather, k=k))


def splice_cmd(
    image: Path = typer.Argument(..., help="The image to paste into."),
    donor: Path = typer.Option(..., "--donor", help="The image a region is taken from (another patient, another scanner)."),
    out: Path = _OUT,
    box: Optional[str] = typer.Option(None, "--box", help="Donor region r0,c0,r1,c1 in donor pixels; default: drawn."),
    to: Optional[str] = typer.Option(None, "--to", help="Top-left r,c in the image; default: drawn inside the body."),
    scale: Optional[float] = typer.Option(None, "--scale", help="Resize factor of the donor region (default: from pixel spacing, else image widths)."),
    feather: Optional[int] = _FEATHER,
    no_match: bool = typer.Option(False, "--no-match", help="Keep the donor's intensities (no mean and std matching)."),
    no_noise: bool = typer.Option(False, "--no-noise", help="Keep the donor's noise (no noise matching)."),
    seed: int = _SEED,
    slice_: Optional[int] = _SLICE,
    donor_slice: Optional[int] = typer.Option(None, "--donor-slice", help="Slice K of a donor volume."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Paste a region of another image, scaled to this one's pixel size, intensity- and noise-matched."""
    from ..forge.edits import forge_splice

    b, t = _ints(box, 4, "--box"), _ints(to, 2, "--to")
    donor_image, dk = _load_one(donor, donor_slice)
    _run("splice", image, out, slice_, lambda im, k: forge_splice(im, donor_image, seed=seed, box=b, to=t, scale=scale,
                                                                    feather=feather, match=not no_match,
                                                                    noise=not no_noise, k=k, donor_k=dk))


def inpaint_cmd(
    image: Path = typer.Argument(..., help="One image: DICOM radiograph or CT slice, PNG, JPEG, TIFF."),
    out: Path = _OUT,
    box: Optional[str] = _BOX,
    method: str = typer.Option("classic", "--method", help="classic (biharmonic), telea, or learned (the in-painting network)."),
    no_noise: bool = typer.Option(False, "--no-noise", help="Leave the fill noise-free (easy to detect)."),
    seed: int = _SEED,
    slice_: Optional[int] = _SLICE,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Remove what is in a region (a finding) by in-painting it from its surroundings."""
    from ..forge.edits import INPAINT_METHODS, forge_inpaint

    if method not in INPAINT_METHODS:
        raise _usage(f"--method must be one of {', '.join(INPAINT_METHODS)}, got {method!r}")
    b = _ints(box, 4, "--box")
    _run("inpaint", image, out, slice_, lambda im, k: forge_inpaint(im, box=b, method=method, seed=seed,
                                                                      noise=not no_noise, k=k))


def edit_cmd(
    image: Path = typer.Argument(..., help="One image: DICOM radiograph or CT slice, PNG, JPEG, TIFF."),
    out: Path = _OUT,
    kind: str = typer.Option(..., "--kind", help="intensity, contrast or resample."),
    box: Optional[str] = _BOX,
    offset: Optional[float] = typer.Option(None, "--offset", help="intensity: value added (image units, e.g. HU)."),
    factor: Optional[float] = typer.Option(None, "--factor", help="contrast: multiplier of the contrast about the region mean."),
    scale: Optional[float] = typer.Option(None, "--scale", help="resample: zoom of the region's content."),
    angle: Optional[float] = typer.Option(None, "--angle", help="resample: rotation of the region's content, degrees."),
    interpolation: Optional[str] = typer.Option(None, "--interpolation", help="resample: nearest, linear (default) or cubic."),
    feather: Optional[int] = _FEATHER,
    seed: int = _SEED,
    slice_: Optional[int] = _SLICE,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """A local edit with soft edges: brighten/darken (intensity), contrast, or resample a region in place."""
    from ..forge import edits

    allowed = {"intensity": {"offset"}, "contrast": {"factor"}, "resample": {"scale", "angle", "interpolation"}}
    if kind not in allowed:
        raise _usage(f"--kind must be one of {', '.join(allowed)}, got {kind!r}")
    given = {n for n, v in (("offset", offset), ("factor", factor), ("scale", scale), ("angle", angle),
                            ("interpolation", interpolation)) if v is not None}
    wrong = sorted(given - allowed[kind])
    if wrong:
        raise _usage(f"--{wrong[0]} does not apply to --kind {kind}")
    b = _ints(box, 4, "--box")
    common = dict(box=b, feather=feather, seed=seed)
    if kind == "intensity":
        make = lambda im, k: edits.forge_intensity(im, offset=offset, k=k, **common)  # noqa: E731
    elif kind == "contrast":
        make = lambda im, k: edits.forge_contrast(im, factor=factor, k=k, **common)  # noqa: E731
    else:
        if interpolation not in (None, "nearest", "linear", "cubic"):
            raise _usage(f"--interpolation must be nearest, linear or cubic, got {interpolation!r}")
        make = lambda im, k: edits.forge_resample(im, scale=scale, angle=angle, k=k,  # noqa: E731
                                                  interpolation=interpolation or "linear", **common)
    _run(kind, image, out, slice_, make)


def register(forge_app: typer.Typer) -> None:
    """Add copymove, splice, inpaint, edit to ``forge_app``."""
    forge_app.command("copymove")(copymove_cmd)
    forge_app.command("splice")(splice_cmd)
    forge_app.command("inpaint")(inpaint_cmd)
    forge_app.command("edit")(edit_cmd)
