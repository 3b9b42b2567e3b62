"""``medforensics keys new DIR``: a root CA and a signer certificate for signing and logging."""
from __future__ import annotations

from pathlib import Path

import typer

from .console import UsageError, err
from ..provenance.keys import ALGORITHMS, new_identity

keys_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Signing identities (private key + X.509 certificate) for sign, export and ledger.")


@keys_app.command("new")
def keys_new(
    folder: Path = typer.Argument(..., help="New folder for key.pem, cert.pem and ca.pem."),
    name: str = typer.Option("medforensics signer", "--name", help="Common name of the signer certificate."),
    organisation: str = typer.Option("medforensics", "--organisation", help="Organisation in both certificates."),
    algorithm: str = typer.Option("ec", "--algorithm", help="Key type: ec (P-256) or rsa (2048 bits)."),
    days: int = typer.Option(825, "--days", min=1, help="Validity of the signer certificate in days."),
) -> None:
    """Make a private root CA and a signer certificate issued by it (key.pem is written mode 0600).

    Give ca.pem to whoever verifies (``verify --trust ca.pem``); keep key.pem secret.
    """
    if algorithm not in ALGORITHMS:
        raise UsageError(f"--algorithm must be one of {', '.join(ALGORITHMS)}")
    from ..io.plan import new_folder

    identity = new_identity(name, algorithm=algorithm, days=days, organisation=organisation)
    files = identity.save(new_folder(folder))
    for role, path in files.items():
        err.print(f"{role:5s} {path}")


def register(app: typer.Typer) -> None:
    """Add keys to ``app``."""
    app.add_typer(keys_app, name="keys")
