"""``medforensics train``: train a 2D classifier on a forge dataset into a safetensors checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .console import UsageError, err, new_output, out
from ..progress import progress_bar


def _config_path(config: str) -> Path:
    """A config given as a path, or as the name of a shipped one (:data:`~.train.SHIPPED_CONFIGS`)."""
    from ..learn.train import SHIPPED_CONFIGS, shipped_config

    p = Path(config)
    if p.is_file():
        return p
    if config in SHIPPED_CONFIGS:
        return shipped_config(config)
    raise UsageError(f"--config {config}: no such file, and not a shipped configuration "
                     f"({', '.join(SHIPPED_CONFIGS)})")


train_app = typer.Typer(add_completion=False, help=(
    "Train a detector's model: a 2D classifier from a configuration (--config), or the CT patch "
    "model (train ct3d) or an unsupervised autoencoder (train autoencoder)."))


@train_app.callback(invoke_without_command=True)
def train_cmd(
    ctx: typer.Context,
    config: Optional[str] = typer.Option(None, "--config", help="TOML file with a \\[train] table, or a shipped one: review, fast-cpu, detector-ct, detector-xray, detector-ctpatch."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="Forge dataset manifest.csv (default: the config's 'manifest')."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="New checkpoint file (default: <model>-<task>.safetensors)."),
    model: Optional[str] = typer.Option(None, "--model", help="Override the config's model: resnet50, efficientnet_b0, densenet121, vgg16, inception_v3, vit_b_16, fastnet."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Override the number of epochs."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the seed."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0, help="Override the time budget (0: none)."),
) -> None:
    """Train a classifier (the review's protocol, or the fast CPU profile) and write a checkpoint;
    or, with a subcommand, the CT patch model or an autoencoder."""
    if ctx.invoked_subcommand is not None:
        if config is not None:
            raise UsageError(f"--config belongs to 'train' itself, not to 'train {ctx.invoked_subcommand}'")
        return
    if config is None:
        raise UsageError("give --config (a TOML file or a shipped configuration), or a subcommand: ct3d, autoencoder")
    from ..core import MedForensicsError
    from ..learn.models import MODELS
    from ..learn.train import TrainConfig, train

    if model is not None and model not in MODELS:
        raise UsageError(f"--model must be one of {', '.join(MODELS)}")
    path = _config_path(config)
    cfg = TrainConfig.from_toml(path, model=model, epochs=epochs, seed=seed, max_minutes=max_minutes)
    manifest = manifest or (Path(cfg.manifest) if cfg.manifest else None)
    if manifest is None:
        raise UsageError("no dataset: give --manifest (a forge dataset's manifest.csv) or set 'manifest' in the config")
    if not manifest.is_file():
        raise MedForensicsError(manifest, "manifest not found")
    out_path = new_output(out_path or Path(f"{cfg.model}-{cfg.task}.safetensors"))
    err.print(f"training {cfg.model} on {cfg.task} from {manifest} ({path.name}: {cfg.epochs} epochs, "
              f"batch {cfg.batch}, "
              + (f"native {cfg.crop} px tiles" if cfg.resize == "none" else f"{cfg.image_size} px")
              + (f", at most {cfg.max_minutes:g} min" if cfg.max_minutes else "") + ")")
    with progress_bar("training") as bar:
        task = bar.add_task("", total=None)

        def tick(step: int, total: int, text: str) -> None:
            bar.update(task, completed=step, total=total, description=text)

        ckpt = train(cfg, manifest, out_path, progress=tick)
    from ..learn.checkpoint import load_checkpoint

    _, card = load_checkpoint(ckpt)
    best, tr = card["metrics"]["best"], card["training"]
    out.print(f"best validation: epoch {best['epoch']} accuracy {best['accuracy']:.4f} loss {best['loss']:.4f} "
              f"({card['data']['validation_items_used']} items)")
    out.print(f"{tr['steps']} steps, {tr['epochs_done']:g} epochs in {tr['seconds']:.0f} s on {tr['device']} "
              f"(stopped by {tr['stopped_by']})")
    out.print(f"checkpoint: {ckpt}")


DATA_HELP = "Data root (default: $MEDFORENSICS_DATA or ../shared/data beside the repository)."
MANIFEST_HELP = "Forge dataset manifest.csv whose patient split to use."


@train_app.command("ct3d")
def ct3d_cmd(
    out_path: Path = typer.Option(..., "--out", help="New .safetensors checkpoint."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    minutes: float = typer.Option(10.0, "--minutes", min=0, help="Training-loop time limit."),
    seed: int = typer.Option(0, "--seed"),
    injections: int = typer.Option(90, "--injections", min=1, help="Tumours injected into the train series."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help=MANIFEST_HELP),
) -> None:
    """Train the CT patch model (3D) on forgeries of the train patient's series; validate on the
    validation patient's."""
    from ..datapath import data_root
    from ..learn.ct3d import train_ct3d

    new_output(out_path)
    path = train_ct3d(data_root(data), out_path, max_minutes=minutes, seed=seed, n_injections=injections,
                      manifest=manifest, log=lambda *a: err.print(*a))
    out.print(f"checkpoint: {path}")


@train_app.command("autoencoder")
def autoencoder_cmd(
    kind: str = typer.Argument(..., help="ct or xray."),
    out_path: Path = typer.Option(..., "--out", help="New .safetensors checkpoint."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    minutes: float = typer.Option(8.0, "--minutes", min=0, help="Training-loop time limit."),
    seed: int = typer.Option(0, "--seed"),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help=MANIFEST_HELP),
) -> None:
    """Train the unsupervised autoencoder detector's model on authentic images."""
    from ..datapath import data_root
    from ..learn.autoencoder import KINDS, train_autoencoder

    if kind not in KINDS:
        raise UsageError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    new_output(out_path)
    path = train_autoencoder(kind, data_root(data), out_path, max_minutes=minutes, seed=seed, manifest=manifest,
                             log=lambda *a: err.print(*a))
    out.print(f"checkpoint: {path}")


def register(app: typer.Typer) -> None:
    """Add ``train`` (with ``train ct3d`` and ``train autoencoder``) to ``app``."""
    app.add_typer(train_app, name="train")
