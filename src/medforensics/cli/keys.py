"""``medforensics keys new DIR``: a root CA and a signer certificate for signing and logging."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from .console import UsageError, err
from ..provenance.keys import ALGORITHMS, new_identity

keys_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="Signing identities (private key + X.509 certificate) for sign, export and ledger.")


@keys_app.command("new")
def keys_new(
    folder: Path = typer.Argument(..., help="New folder for key.pem, cert.pem and ca.pem."),
    name: Optional[str] = typer.Option(None, "--name", help="Common name of the signer certificate (default: "
                                       "'medforensics signer HOST DATE #RANDOM', unique)."),
    organisation: str = typer.Option("medforensics", "--organisation", help="Organisation in both certificates."),
    algorithm: str = typer.Option("ec", "--algorithm", help="Key type: ec (P-256) or rsa (2048 bits)."),
    days: int = typer.Option(825, "--days", min=1, help="Validity of the signer certificate in days."),
) -> None:
    """Make a private root CA and a signer certificate issued by it (key.pem is written mode 0600).

    Give ca.pem to whoever verifies (``verify --trust ca.pem``); keep key.pem secret. Each signer's
    subject is unique (a random serialNumber attribute, and a unique default name), and its
    SHA-256 fingerprint is printed: the name alone never proves who signed, the trust anchor does.
    """
    if algorithm not in ALGORITHMS:
        raise UsageError(f"--algorithm must be one of {', '.join(ALGORITHMS)}")
    from ..io.plan import new_folder
    from ..provenance.keys import subject
    from ..provenance.trust import fingerprint

    if name is not None and not name.strip():
        raise UsageError("--name must not be empty")
    new_folder(folder, create=False)  # refuses a file or a non-empty folder before any key is made
    identity = new_identity(name, algorithm=algorithm, days=days, organisation=organisation)
    files = identity.save(folder)
    for role, path in files.items():
        err.print(Text(f"{role:5s} {path}"))
    # plain text: no markup, no emoji codes (":AB:" in a fingerprint would become one)
    err.print(Text(f"signer {subject(identity.cert)}"), soft_wrap=True)
    err.print(Text(f"SHA-256 {fingerprint(identity.cert)}"), soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add keys to ``app``."""
    app.add_typer(keys_app, name="keys")
