"""``medforensics demo``: manipulate copies of real sample images, scan originals and copies.

The sample images are real, de-identified DICOM files that install from PyPI with pydicom and
pydicom-data: a Philips and a Fuji chest radiograph (CR), a GE CT slice and an MR slice. The demo
writes into a new folder::

    originals/       the untouched samples (and a PNG export of a radiograph), and signed/: a
                     watermarked and signed CT slice
    manipulated/     edited copies, and ground_truth.json saying what changed where (one of
                     them: the signed slice changed by 25 HU in a small patch)
    keys/            the demo signer's CA, certificate and key (its CA is trusted by the scan)
    scan.jsonl       one JSON object per image (the scan contract)
    report.html      the self-contained report with overlays

and prints, for every manipulated copy, whether the scan caught it and where.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image as PILImage, PngImagePlugin
from pydicom.data import get_testdata_file
from rich.console import Console
from rich.table import Table

from .core import MedForensicsError
from .forge.edits import copy_move, inpaint_region, rescale_region, splice

SAMPLES = {"chest_cr_philips.dcm": "RG1_UNCR.dcm", "chest_cr_fuji.dcm": "RG3_UNCI.dcm",
           "ct_slice.dcm": "CT_small.dcm", "mr_slice.dcm": "MR_small.dcm"}

console = Console(highlight=False)


def _sample(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        raise MedForensicsError(name, "sample file not found: install pydicom-data (pip install pydicom-data)")
    return Path(path)


def new_folder(base: Path) -> Path:
    """``base`` if it is new (or an empty folder), else ``base-2``, ``base-3``, ...: created with
    :func:`medforensics.io.plan.new_folder`, so the demo never writes into a folder with files."""
    from .io.plan import new_folder as create_new_folder

    i = 1
    while True:
        folder = Path(base) if i == 1 else Path(f"{base}-{i}")
        try:
            return create_new_folder(folder)
        except FileExistsError:
            i += 1


def _save_stored(ds: pydicom.Dataset, stored: np.ndarray, out: Path) -> None:
    """Write edited stored values back into a copy of the dataset, keeping every header."""
    ds = ds.copy()
    bits = int(ds.BitsStored)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if int(ds.PixelRepresentation) == 1 else (0, (1 << bits) - 1)
    arr = np.clip(np.round(stored), lo, hi).astype(ds.pixel_array.dtype)
    ds.PixelData = arr.tobytes()
    ds.save_as(out, enforce_file_format=False)


def _to_png8(stored: np.ndarray, photometric: str) -> np.ndarray:
    """A display export as a hospital viewer would do it: percentile window to 8 bits."""
    a = stored.astype(np.float64)
    if photometric == "MONOCHROME1":
        a = a.max() - a
    lo, hi = np.percentile(a, [0.5, 99.5])
    return np.clip((a - lo) / max(hi - lo, 1) * 255, 0, 255).round().astype(np.uint8)


def make_samples(root: Path) -> list[dict]:
    """Write originals and manipulated copies under ``root``; return the ground truth."""
    orig, fake = root / "originals", root / "manipulated"
    orig.mkdir(parents=True)
    fake.mkdir()
    for dst, src in SAMPLES.items():
        shutil.copy(_sample(src), orig / dst)
    truth: list[dict] = []

    def record(name: str, what: str, box: tuple[int, int, int, int] | None, detector: str) -> None:
        truth.append({"file": str(fake / name), "manipulation": what, "expected_detector": detector,
                      "bbox_voxel": list(box) if box else None})

    cr = pydicom.dcmread(orig / "chest_cr_philips.dcm")
    stored = cr.pixel_array.astype(np.float32)
    edited, mask = copy_move(stored, (900, 500, 1100, 700), (820, 1150), angle=12, scale=1.05, feather=6)
    _save_stored(cr, edited, fake / "cr_copy_move.dcm")
    record("cr_copy_move.dcm", "copy-move of a 200 px patch, rotated 12 deg, scaled 1.05, edges blended",
           _mask_box(mask), "copy_move")

    ct = pydicom.dcmread(orig / "ct_slice.dcm")
    stored = ct.pixel_array.astype(np.float32)
    edited, mask = rescale_region(stored, (40, 30, 72, 62), 0.15)
    _save_stored(ct, edited, fake / "ct_region_rescaled.dcm")
    record("ct_region_rescaled.dcm", "contrast of a 32x32 region cut to 15% (values rescaled about their mean)",
           _mask_box(mask), "ct_physics")

    ct2 = ct.copy()
    ct2.SoftwareVersions = "Adobe Photoshop 25.0"
    ct2.SOPInstanceUID = pydicom.uid.generate_uid()
    ct2.Manufacturer = "SIEMENS"
    ct2.ContentDate = "19990101"
    # its own folder: two versions of one slice side by side would be one series with a duplicate
    (fake / "header").mkdir()
    ct2.save_as(fake / "header" / "ct_header_edited.dcm", enforce_file_format=False)
    record("header/ct_header_edited.dcm", "header edited: software, manufacturer, new SOPInstanceUID, content date", None,
           "dicom_header")

    fuji = pydicom.dcmread(orig / "chest_cr_fuji.dcm")
    png = _to_png8(fuji.pixel_array, str(fuji.PhotometricInterpretation))
    PILImage.fromarray(png).save(orig / "chest_cr_fuji_export.png")

    stored = cr.pixel_array.astype(np.float32)
    edited, mask = inpaint_region(stored, (1000, 1150, 1150, 1300))
    _save_stored(cr, edited, fake / "cr_inpainted.dcm")
    record("cr_inpainted.dcm", "a 150 px region of the lung removed by in-painting", _mask_box(mask), "noise_residual")

    donor = fuji.pixel_array.astype(np.float32) * 28.0  # another patient, another detector (10-bit)
    edited, mask = splice(stored, donor, (700, 500, 900, 700), (900, 450))
    _save_stored(cr, edited, fake / "cr_spliced.dcm")
    record("cr_spliced.dcm", "a 200 px region spliced in from another patient's radiograph (other detector)",
           _mask_box(mask), "noise_residual")

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "chest x-ray, PA view, pneumonia, right lower lobe consolidation\n"
                                "Steps: 30, Sampler: DPM++ 2M, CFG scale: 7, Seed: 1234, Model: sd-xl-base-1.0")
    PILImage.fromarray(png).save(fake / "cr_generator_tagged.png", pnginfo=info)
    record("cr_generator_tagged.png", "PNG carrying a Stable Diffusion generation record", None, "container")

    # Provenance: a watermarked and signed CT slice, and a copy with a change too small to see
    # (+25 HU in a 10x10 patch) that only the broken signature and watermark reveal.
    import tempfile

    from .provenance.keys import new_identity
    from .provenance.signature import sign_file
    from .provenance.watermark import embed_file

    ident = new_identity("medforensics demo signer", algorithm="ec")
    ident.save(root / "keys")
    (orig / "signed").mkdir()
    with tempfile.TemporaryDirectory() as tmp:  # watermark first: the signature covers the marked pixels
        embed_file(orig / "ct_slice.dcm", Path(tmp) / "marked.dcm")
        sign_file(Path(tmp) / "marked.dcm", orig / "signed" / "ct_signed.dcm", ident)
    signed = pydicom.dcmread(orig / "signed" / "ct_signed.dcm")
    stored = signed.pixel_array.astype(np.float32)
    stored[60:70, 80:90] += 25.0 / float(signed.get("RescaleSlope", 1) or 1)
    (fake / "signed").mkdir()
    _save_stored(signed, stored, fake / "signed" / "ct_signed_tampered.dcm")
    record("signed/ct_signed_tampered.dcm", "signed and watermarked CT slice, +25 HU in a 10x10 patch after signing",
           (60, 80, 70, 90), "provenance")

    (fake / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    return truth


def _mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def _overlaps(region: dict, box: list[int]) -> bool:
    """Whether a region's in-plane box overlaps ``box`` (row0, col0, row1, col1)."""
    b = region["bbox_voxel"]
    if len(b) == 6:  # (slice, row, col) starts and stops
        b = b[1:3] + b[4:6]
    return not (b[2] <= box[0] or box[2] <= b[0] or b[3] <= box[1] or box[3] <= b[1])


def run_demo(out_dir: Path | None = None, *, workers: int = 1, debug: bool = False) -> Path:
    """Run the whole demo; return the folder it wrote."""
    from .scan import run_scan

    root = new_folder(Path(out_dir) if out_dir else Path("medforensics-demo"))
    console.print(f"[bold]medforensics demo[/bold]: writing sample images and manipulated copies to {root}/")
    truth = make_samples(root)
    trusted = {"provenance": {"trust": [str((root / "keys" / "ca.pem").resolve())]}}  # the demo signer's CA
    verdicts = run_scan([root / "originals", root / "manipulated"], json_out=root / "scan.jsonl",
                        report=root / "report.html", workers=workers, debug=debug, detector_options=trusted,
                        title="medforensics demo: real sample images and manipulated copies").verdicts
    by_path = {Path(v.path).name: v for v in verdicts}
    table = Table(title="manipulated copies: caught, and where")
    for col in ("file", "manipulation", "label", "score", "found by", "region on the change"):
        table.add_column(col, overflow="fold")
    for t in truth:
        v = by_path.get(Path(t["file"]).name)
        if v is None:
            continue
        top = v.evidence[0] if v.evidence else None
        on_target = "-"
        if t["bbox_voxel"] and v.evidence:
            on_target = "yes" if any(_overlaps(r.to_dict(), t["bbox_voxel"]) for e in v.evidence for r in e.regions
                                     if e.score >= 0.5) else "no"
        table.add_row(Path(t["file"]).name, t["manipulation"], v.label or "error",
                      "" if v.score is None else f"{v.score:.2f}", top.detector if top else "", on_target)
    console.print(table)
    console.print(f"open {root / 'report.html'} in a browser to see the overlays")
    return root
