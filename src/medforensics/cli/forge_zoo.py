"""``medforensics forge zoo ...``: train the generator zoo's families and write their fakes
(:mod:`medforensics.forge.zoo`)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..core import MedForensicsError

zoo_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="Generators of several families (GAN, diffusion, super-resolution, VAE) and their fakes.")

DATA_HELP = "Data root (default: $MEDFORENSICS_DATA or ../shared/data beside the repository)."


@zoo_app.command("list")
def list_cmd() -> None:
    """The families, what fakes each makes and its presets."""
    from rich.console import Console
    from rich.table import Table

    from ..forge.zoo.families import FAMILIES

    t = Table("family", "fakes", "presets", "what it is")
    for f in FAMILIES.values():
        t.add_row(f.name, ", ".join(f.modes), ", ".join(f"{p.name} ({p.size} px, {p.steps} steps)"
                                                      for p in f.presets.values()), f.summary)
    Console().print(t)


@zoo_app.command("train")
def train_cmd(
    family: str = typer.Argument(..., help="gan, diffusion or upsample (vae is the shipped synthesiser)."),
    out: Path = typer.Option(..., "--out", help="New .safetensors file for the networks and their model card."),
    preset: str = typer.Option("small", "--preset", help="small (2 CPU cores, minutes) or gpu (needs CUDA)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (default: the preset's)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0, help="Stop after this long."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    seed: int = typer.Option(0, "--seed"),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Train one family on the train patients' real radiographs."""
    import dataclasses

    from rich.console import Console

    from ..forge.zoo.families import family as family_named
    from ..forge.zoo.families import train_family

    fam = family_named(family)
    if not fam.modes or fam.fit.__name__ == "_no_fit":
        raise MedForensicsError(None, f"family {family} is not trained here ({fam.summary})")
    if out.suffix != ".safetensors":
        raise typer.BadParameter("the output file must end in .safetensors", param_hint="--out")
    from ..io.plan import new_file

    new_file(out)
    p = fam.presets.get(preset)
    if p is None:
        raise typer.BadParameter(f"must be one of {', '.join(fam.presets)}", param_hint="--preset")
    changes = {"seed": seed}
    if steps is not None:
        changes["steps"] = steps
    if max_minutes is not None:
        changes["max_minutes"] = max_minutes
    m = train_family(family, dataclasses.replace(p, **changes), out, data_root=data)
    tr = m.card["training"]
    Console().print(f"wrote {out}: {family} ({preset}), trained on {m.card['data']['n_images']} radiographs of "
                    f"{len(m.card['data']['patients'])} patients; "
                    + "; ".join(f"{k} {v['steps_done']} steps in {v['wall_time_s']:.0f} s"
                                for k, v in tr.items() if isinstance(v, dict) and "steps_done" in v))


def _models(checkpoints: List[Path], vae: bool) -> dict:
    from ..forge.zoo.families import load_zoo_model, untrained

    models = {}
    for c in checkpoints:
        m = load_zoo_model(c)
        if m.family in models:
            raise MedForensicsError(c, f"a second {m.family} model (one per family)")
        models[m.family] = m
    if vae:
        models["vae"] = untrained("vae")
    if not models:
        raise MedForensicsError(None, "no generator given (--model CHECKPOINT, or --vae)")
    return models


@zoo_app.command("dataset")
def dataset_cmd(
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the dataset."),
    model: List[Path] = typer.Option([], "--model", help="A zoo checkpoint (repeat: one per family)."),
    vae: bool = typer.Option(True, "--vae/--no-vae", help="Include the shipped VAE synthesiser as a family."),
    samples: int = typer.Option(60, "--samples", min=0, help="Whole generated images per family (all splits)."),
    data: Optional[Path] = typer.Option(None, "--data", help=DATA_HELP),
    seed: int = typer.Option(0, "--seed"),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Write authentic radiographs, whole generated images and reconstructions of authentic ones by
    every family, finished alike, with a forge manifest (patient-disjoint splits)."""
    from rich.console import Console

    from ..forge.zoo.dataset import ZooDatasetConfig, build_zoo_dataset

    from ..io.plan import new_folder

    new_folder(out, create=False)  # the builder creates it
    manifest = build_zoo_dataset(out, _models(model, vae), data, ZooDatasetConfig(seed=seed, samples_per_family=samples))
    import csv
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fakes = sum(r["label"] == "fake" for r in rows)
    Console().print(f"wrote {len(rows)} items ({fakes} fake, {len(rows) - fakes} authentic) and {manifest}")


@zoo_app.command("realism")
def realism_cmd(
    manifest: Path = typer.Argument(..., help="A zoo manifest.csv."),
    out: Path = typer.Option(..., "--out", help="New .png for the figure (the table is printed)."),
    split: str = typer.Option("test", "--split"),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Noise level, noise power spectrum and sharpness of each family's fakes against authentic images."""
    from rich.console import Console
    from rich.table import Table

    from ..forge.zoo.realism import family_realism

    from ..io.plan import new_file

    new_file(out)
    table = family_realism(manifest, split, out)
    t = Table("items", "n", "noise", "NPS mean freq", "sharpness", "W1 noise", "W1 NPS", "W1 sharpness")
    for k, e in table.items():
        t.add_row(k, str(e["n"]), f"{e['noise']:.4f}", f"{e['nps_freq']:.3f}", f"{e['sharpness']:.3f}",
                  *(f"{e[m]:.4f}" if m in e else "" for m in ("noise_w1", "nps_freq_w1", "sharpness_w1")))
    Console().print(t)
    Console().print(f"figure: {out}")


def register(forge_app: typer.Typer) -> None:
    """Add zoo to ``forge_app``."""
    forge_app.add_typer(zoo_app, name="zoo")
