"""``forge dataset`` and ``forge report``: labelled datasets and the realism report."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer



def dataset_cmd(
    out: Path = typer.Option(..., "--out", help="New folder for the dataset (images, masks, manifest.csv)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Real images laid out like ../shared/data (default: $MEDFORENSICS_DATA or ../shared/data)."),
    seed: int = typer.Option(0, "--seed", help="Everything random follows from this."),
    injections: float = typer.Option(45.0, "--injections", help="Nodules injected (FM) per 100 CT slices, at least 10 per series."),
    removals: int = typer.Option(4, "--removals", help="Removals per real LIDC nodule (FB)."),
    synthetic: int = typer.Option(250, "--synthetic", help="Whole synthetic radiographs (0: none)."),
    fakes_per_image: int = typer.Option(1, "--fakes-per-image", help="Forged copies of each real 2D image."),
    ct_methods: str = typer.Option("classic,gan", "--ct-methods", help="CT forgery methods, comma-separated."),
    no_nih_small: bool = typer.Option(False, "--no-nih-small", help="Leave out the 1,000 NIH radiographs at 64x64."),
    augment: bool = typer.Option(False, "--augment", help="Eight augmented variants per fake, as the review paper did."),
    patches: int = typer.Option(0, "--patches", help="Write CT patches of this many pixels instead (TB/TM/FB/FM "
                                "crops centred on the nodule, HU DICOM + lung-window PNG; 32, 48, 64, 96 or 128)."),
) -> None:
    """Build a labelled dataset (CT-GAN's TB/TM/FB/FM, 2D edits, synthetic radiographs) with patient-disjoint splits."""
    from .console import UsageError, out as console
    from ..progress import progress_bar
    from ..datapath import data_root
    from ..forge.dataset import DatasetConfig, build_dataset
    from ..forge.patches import PATCH_SIZES, build_patches
    from ..io.plan import new_folder

    methods = tuple(m.strip() for m in ct_methods.split(",") if m.strip())
    if not methods or any(m not in ("classic", "gan") for m in methods):
        raise UsageError("--ct-methods takes classic and/or gan")
    if patches and patches not in PATCH_SIZES:
        raise UsageError(f"--patches takes one of {', '.join(map(str, PATCH_SIZES))}")
    if patches and augment:
        raise UsageError("--augment is for slice datasets; patches are written unaugmented")
    new_folder(out, create=False)  # FileExistsError (exit 2) unless new or empty; the builder creates it
    cfg = DatasetConfig(seed=seed, injections_per_100_slices=injections, removals_per_nodule=removals,
                        synthetic=synthetic, fakes_per_image=fakes_per_image, ct_methods=methods,
                        include_nih_small=not no_nih_small, augment=augment)
    with progress_bar("forging") as bar:
        task = bar.add_task("", total=None)

        def tick(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what[-40:])

        if patches:
            manifest = build_patches(data_root(data), out, cfg, size=patches, progress=tick)
        else:
            manifest = build_dataset(data_root(data), out, cfg, progress=tick)
    import json
    card = json.loads((manifest.parent / "dataset.json").read_text())
    console.print(f"{card['n_items']} items in {card['seconds']} s -> {manifest}")
    for split, counts in card["counts"].items():
        n_patients = card["patients"][split]
        n_patients = len(n_patients) if isinstance(n_patients, list) else n_patients
        console.print(f"  {split:<10} {n_patients:>4} patients  "
                      + ", ".join(f"{c} {n}" for c, n in counts.items()))
    for p in card["problems"][:5]:
        console.print(f"  [yellow]note:[/yellow] {p}")


def report_cmd(
    out: Path = typer.Option(..., "--out", help="New folder for the realism report (JSON, markdown, figures)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Real images laid out like ../shared/data."),
    n: int = typer.Option(12, "--n", help="Forgeries per method."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Compare each method's forged regions with real tissue (HU, noise, NPS) and say which detectors flag them."""
    from .console import out as console
    from ..progress import progress_bar
    from ..datapath import data_root
    from ..forge.realism import realism_report
    from ..io.plan import new_folder

    new_folder(out, create=False)  # FileExistsError (exit 2) unless new or empty; the builder creates it
    with progress_bar("measuring") as bar:
        task = bar.add_task("", total=None)

        def tick(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what[-40:])

        md = realism_report(data_root(data), out, n=n, seed=seed, progress=tick)
    console.print(md.read_text())


def register(forge_app: typer.Typer) -> None:
    """Add dataset, report to ``forge_app``."""
    forge_app.command("dataset")(dataset_cmd)
    forge_app.command("report")(report_cmd)
