"""``medforensics forge ...``: every command writes new files, never over its input, and prints
where the manipulation is. One module per family of forgeries adds its commands to the group."""
from __future__ import annotations

import typer

from . import forge_ct, forge_dataset, forge_edits, forge_gan, forge_synth, forge_zoo


def register(app: typer.Typer) -> None:
    """Add the ``forge`` group, with every family's commands, to ``app``."""
    forge_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Make realistic medical deepfakes with ground truth (masks, centres, manifests).")
    for module in (forge_ct, forge_edits, forge_synth, forge_gan, forge_dataset, forge_zoo):
        module.register(forge_app)
    app.add_typer(forge_app, name="forge")
