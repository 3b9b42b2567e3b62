"""``medforensics forge synthesize`` and ``medforensics forge train-synth``: whole synthetic radiographs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core import MedForensicsError


def synthesize_cmd(
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the samples and their ground truth."),
    n: int = typer.Option(10, "--n", min=1, help="How many radiographs."),
    fmt: str = typer.Option("like", "--format",
                            help="like (each sample in its real reference's format), png, jpeg, dicom or mixed."),
    seed: int = typer.Option(0, "--seed", help="Sample i depends only on (seed, i) and the model."),
    model: Optional[Path] = typer.Option(None, "--model", help="Generator checkpoint (default: the shipped one)."),
    like: Optional[Path] = typer.Option(None, "--like",
                                        help="Real images to copy sizes, formats, histograms and noise from "
                                             "(default: those the model was trained on)."),
    dicom_style: str = typer.Option("like", "--dicom-style",
                                    help="like (copy a real DICOM's encoding and header style) or cr "
                                         "(CR Image Storage, 12 bits, uncompressed)."),
) -> None:
    """Generate whole synthetic chest radiographs that look like real files (size, bit depth, format,
    histogram, noise), each with a ground-truth JSON beside it."""
    from rich.console import Console

    from ..progress import progress_bar
    from ..forge.synth import load_model, write_samples

    fmt = fmt.lower()
    if fmt not in ("like", "png", "jpeg", "jpg", "dicom", "mixed"):
        raise MedForensicsError(None, f"unknown --format {fmt!r} (use like, png, jpeg, dicom or mixed)")
    fmt = "jpeg" if fmt == "jpg" else fmt
    if dicom_style not in ("like", "cr"):
        raise MedForensicsError(None, f"unknown --dicom-style {dicom_style!r} (use like or cr)")
    m = load_model(model)  # write_samples refuses an output folder that is not new or empty
    console = Console()
    with progress_bar("synthesizing") as bar:
        task = bar.add_task("", total=n)
        written = write_samples(out, n, seed, fmt, model=m, like=like, dicom_style=dicom_style,
                                on_written=lambda p: bar.advance(task))
    kinds: dict[str, int] = {}
    for p in written:
        kinds[p.suffix] = kinds.get(p.suffix, 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
    console.print(f"wrote {len(written)} synthetic radiographs ({summary}) to {out}, each with a "
                  f"ground-truth .json beside it (model {m.path.name}, seed {seed})")
    for p in written[:5]:
        console.print(f"  {p}")
    if len(written) > 5:
        console.print(f"  ... and {len(written) - 5} more")


def train_synth_cmd(
    out: Path = typer.Option(..., "--out", help="New .safetensors checkpoint (never overwritten)."),
    config: str = typer.Option("small", "--config", help="small (CPU, under 15 min) or gpu (CUDA, bigger, longer)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Root of the real data (default $MEDFORENSICS_DATA or "
                                                             "../shared/data)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (default: the preset's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    minutes: Optional[float] = typer.Option(None, "--minutes", min=0.05,
                                            help="Time budget; training stops early when it is spent."),
) -> None:
    """Train the whole-radiograph generator on real chest radiographs and write a checkpoint with a
    model card (data, configuration, losses, time)."""
    from rich.console import Console

    from ..forge.synth import TrainConfig, train

    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new name")
    if out.suffix != ".safetensors":
        raise MedForensicsError(out, "the checkpoint must be a .safetensors file")
    kw: dict = {"seed": seed}
    if steps is not None:
        kw["steps"] = steps
    if minutes is not None:
        kw["max_minutes"] = minutes
    cfg = TrainConfig.preset(config, **kw)
    path = train(cfg, out, data_root=data, progress=True)
    from ..learn.checkpoint import load_checkpoint
    _, card = load_checkpoint(path)
    tr = card["training"]
    final = card["metrics"]["final"]
    Console().print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {tr['steps_done']} steps in "
                    f"{tr['wall_time_s']:.0f} s on {tr['device']}, {card['data']['n_images']} images; final "
                    f"recon L1 {final.get('recon_l1', float('nan')):.4f}, KL {final.get('kl', float('nan')):.0f}"
                    + (" (stopped at the time budget)" if tr["stopped_early"] else ""))


def register(forge_app: typer.Typer) -> None:
    """Add synthesize, train-synth to ``forge_app``."""
    forge_app.command("synthesize")(synthesize_cmd)
    forge_app.command("train-synth")(train_synth_cmd)
