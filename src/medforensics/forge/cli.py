"""``medforensics forge ...``: every command writes new files, never over its input, and prints
where the manipulation is. Commands live beside the code they drive and register on
:data:`forge_app` when this module is imported."""
from __future__ import annotations

import typer

forge_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Make realistic medical deepfakes with ground truth (masks, centres, manifests).")

# Each module adds its commands to forge_app.
from . import _cli_ct, _cli_edits, _cli_synth, _cli_train, _cli_dataset, _cli_zoo  # noqa: E402,F401
