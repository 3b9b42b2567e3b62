"""``medforensics forge train-gan``: train the learned in-painting generator (:mod:`.gan`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer



def train_gan(
    modality: str = typer.Option(..., "--modality", help="ct (3D cubes from CT series) or xray (2D patches from radiographs)."),
    config: str = typer.Option("small", "--config", help="small (CPU, about 12 minutes on 2 cores) or gpu (bigger, picks CUDA when available)."),
    out: Path = typer.Option(..., "--out", help="New .safetensors file for the generator and its model card."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data root (default: $MEDFORENSICS_DATA or ../shared/data beside the repository)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (default: the config's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (data regions, masks, initial weights)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N (default: cuda when available)."),
    time_limit: Optional[float] = typer.Option(None, "--time-limit", min=0,
                                               help="Stop after this many seconds even if steps remain (0: none)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: the config's, 2 for small)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Train a conditional in-painting GAN on real images and write it as a checkpoint with a model card."""
    from rich.console import Console

    from ..forge.gan import TrainConfig, train

    if modality not in ("ct", "xray"):
        raise typer.BadParameter("must be ct or xray", param_hint="--modality")
    if config not in ("small", "gpu"):
        raise typer.BadParameter("must be small or gpu", param_hint="--config")
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose a new name")
    if out.suffix != ".safetensors":
        raise typer.BadParameter("the output file must end in .safetensors", param_hint="--out")
    kw = {"seed": seed}
    if steps is not None:
        kw["steps"] = steps
    if device is not None:
        kw["device"] = device
    if threads is not None:
        kw["threads"] = threads
    if time_limit is not None:
        kw["time_limit_s"] = time_limit
    cfg = TrainConfig.preset_named(config, modality, **kw)
    console = Console(stderr=True)
    path = train(cfg, out, data, progress=True)   # MedForensicsError -> one line (cli.main); --debug: traceback
    from ..learn.checkpoint import load_checkpoint
    _, card = load_checkpoint(path)
    tr, met = card["training"], card["metrics"]
    fl = tr.get("final_losses_ema", {})
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {tr['steps_done']} steps in "
                  f"{tr['wall_time_s']:.0f} s on {tr['device']}; low-pass L1 {fl.get('lowpass', float('nan')):.4f}, "
                  f"noise {fl.get('noise', float('nan')):.3f}; held-out noise ratio (generated/around) "
                  f"{met.get('noise_ratio_median')}")


def register(forge_app: typer.Typer) -> None:
    """Add train-gan to ``forge_app``."""
    forge_app.command("train-gan")(train_gan)
