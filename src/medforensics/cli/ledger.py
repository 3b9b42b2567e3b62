"""``medforensics ledger ...``: the transparency log of image fingerprints (see docs/provenance/ledger.md).

LOG is a SQLite file (or ``sqlite:///path``) or a ``postgresql://`` URL; it defaults to
``$MEDFORENSICS_LEDGER``. Exit status: 0 success, 1 an input could not be read (the rest are
still processed), 2 usage error, 3 the answer is negative (``verify``: an image is changed or
unknown; ``check``: the proof does not verify; ``audit``: the log is inconsistent).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .console import UsageError, err, new_output, out
from ..progress import progress_bar
from ..core import MedForensicsError
from ..provenance.ledger import ENV_KEY, ENV_LOG, Fingerprint, Ledger, check_bundle, fingerprint, generate_key, load_private_key

ledger_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Transparency log (Merkle tree, signed heads, proofs) of image fingerprints.")

_LOG_HELP = f"The log: a SQLite file, sqlite:///path or postgresql://... (default: ${ENV_LOG})."
STATUS_STYLE = {"unchanged": "green", "changed": "red", "unknown": "yellow", "error": "red"}


def _log(log: Optional[str]) -> str:
    """The log given, else the one the environment names (:mod:`medforensics.config`)."""
    from ..config import settings

    log = log or settings().ledger
    if not log:
        raise UsageError(f"no log given: pass LOG / --log or set {ENV_LOG}")
    return log


def image_files(paths: List[Path]) -> list[tuple[Path, Optional[str]]]:
    """The inputs of ``ledger add``/``verify`` (:func:`medforensics.io.plan`, ``ledger`` rule: DICOM,
    PNG, JPEG, TIFF, NIfTI), each with an error message when it cannot be an image; other files met
    in folders and hidden names are skipped and counted (the count is printed)."""
    from ..io import plan
    p = plan(paths, "ledger")
    if p.note():
        err.print(p.note(), soft_wrap=True, markup=False)
    return [(i.path, i.problem) for i in p.inputs]


def _fingerprints(paths: List[Path], label: str):
    """Yield (path, fingerprint or None, error or None) with a progress bar; errors printed as they come."""
    files = image_files(paths)
    with progress_bar(label) as progress:
        task = progress.add_task("", total=len(files))
        for path, problem in files:
            fp, error = None, problem and f"{path}: {problem}"
            if error is None:
                try:
                    fp = fingerprint(path)
                except MedForensicsError as e:
                    error = str(e)
            if error:
                progress.console.print(f"[red]error[/red] {error}", soft_wrap=True, markup=True, highlight=False)
            yield path, fp, error
            progress.update(task, advance=1, description=path.name)


@ledger_app.command("init")
def init_cmd(
    log: Optional[str] = typer.Argument(None, help=_LOG_HELP),
    key: Optional[Path] = typer.Option(None, "--key", help="PEM private key of the log (e.g. key.pem from "
                                       "'medforensics keys new'); default: generate an EC P-256 key."),
    key_out: Optional[Path] = typer.Option(None, "--key-out", help="Where to write a generated key (new file, mode "
                                           "0600); default LOG.key.pem beside a SQLite log."),
) -> None:
    """Create an empty log whose tree heads are signed by KEY (the public key is stored in the log;
    the private key is never stored in it, only its path, as a hint for later appends)."""
    log = _log(log)
    is_pg = log.startswith(("postgresql://", "postgres://"))
    if not is_pg:
        new_output(Path(log[len("sqlite:///"):] if log.startswith("sqlite:///") else log))
    if key is not None:
        if key_out is not None:
            raise UsageError("give either --key or --key-out, not both")
        private = load_private_key(key)
        key_path = key
    else:
        if key_out is None:
            if is_pg:
                raise UsageError("a PostgreSQL log needs --key (an existing key) or --key-out (where to write a new one)")
            key_out = Path((log[len("sqlite:///"):] if log.startswith("sqlite:///") else log) + ".key.pem")
        new_output(key_out)
        private = generate_key()
        key_path = key_out
    with Ledger.create(log, private, key_path=key_path) as lg:
        if key is None:
            from cryptography.hazmat.primitives import serialization
            fd = os.open(key_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
            err.print(f"private key written to {key_out} (keep it secret; appends need it)")
        err.print(f"log {lg.name} created; log id {lg.log_id.hex()}")


@ledger_app.command("add")
def add_cmd(
    paths: List[Path] = typer.Argument(..., help="Image files and folders (DICOM, PNG, JPEG, TIFF, NIfTI)."),
    log: Optional[str] = typer.Option(None, "--log", help=_LOG_HELP),
    key: Optional[Path] = typer.Option(None, "--key", help="The log's PEM private key (default: "
                                       f"${ENV_KEY}, else the key recorded at init)."),
    batch: int = typer.Option(1000, "--batch", min=1, help="Entries per transaction (one signed head each)."),
) -> None:
    """Fingerprint images and append them to the log (images already logged unchanged are skipped;
    a changed image is logged as a new version)."""
    n_err = added = skipped = 0
    with Ledger(_log(log), key_path=key) as lg:
        lg._signer()  # fail before reading any image if the key is missing or wrong
        pending: list[Fingerprint] = []
        seen: set[tuple[str, str, str]] = set()
        for _, fp, error in _fingerprints(paths, "logging"):
            if error:
                n_err += 1
                continue
            assert fp is not None
            ident = (fp.key, fp.pixel_sha256, fp.header_sha256)
            if ident in seen or lg.lookup(fp).status == "unchanged":
                skipped += 1
                continue
            seen.add(ident)
            pending.append(fp)
            if len(pending) >= batch:
                added += len(lg.append(pending))
                pending = []
        if pending:
            added += len(lg.append(pending))
        head = lg.head()
    out.print(f"{added} added, {skipped} already logged, {n_err} error(s); tree size {head.tree_size}, "
              f"root {head.root_hash.hex()}")
    if n_err:
        raise typer.Exit(1)


@ledger_app.command("verify")
def verify_cmd(
    paths: List[Path] = typer.Argument(..., help="Image files and folders to compare with the log."),
    log: Optional[str] = typer.Option(None, "--log", help=_LOG_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write one JSON object per file here (new file)."),
) -> None:
    """Is each image logged and unchanged? Exit 0 only when all are unchanged (3 otherwise, 1 on read errors)."""
    new_output(json_out)
    rows = []
    with Ledger(_log(log)) as lg:
        for path, fp, error in _fingerprints(paths, "verifying"):
            if error:
                rows.append({"path": str(path), "status": "error", "error": error})
                continue
            r = lg.lookup(fp)
            rows.append({"path": str(path), **r.to_dict()})
        head = lg.head()
    table = Table(title=f"ledger {lg.name}: tree size {head.tree_size}")
    for col in ("path", "status", "entry", "key"):
        table.add_column(col, overflow="fold")
    for r in rows:
        st = r["status"]
        label = f"changed ({'|'.join(r['changed'])})" if st == "changed" else st
        table.add_row(r["path"], f"[{STATUS_STYLE[st]}]{label}[/{STATUS_STYLE[st]}]",
                      "" if r.get("leaf_index") is None else str(r["leaf_index"]), r.get("key") or r.get("error", ""))
    out.print(table)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUS_STYLE}
    out.print(", ".join(f"{v} {k}" for k, v in counts.items()))
    if json_out:
        with open(json_out, "x", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    if counts["error"]:
        raise typer.Exit(1)
    if counts["changed"] or counts["unknown"]:
        raise typer.Exit(3)


@ledger_app.command("prove")
def prove_cmd(
    path: Path = typer.Argument(..., help="The image to prove logged and unchanged."),
    log: Optional[str] = typer.Option(None, "--log", help=_LOG_HELP),
    out_path: Path = typer.Option(..., "--out", help="The proof bundle to write (new JSON file)."),
) -> None:
    """Write a self-contained proof bundle (leaf, audit path, signed tree head, public key)."""
    new_output(out_path)
    with Ledger(_log(log)) as lg:
        bundle = lg.prove(path)
    with open(out_path, "x", encoding="utf-8") as f:
        json.dump(bundle, f, indent=1)
    err.print(f"proof of entry {bundle['leaf']['index']} in tree size {bundle['inclusion']['tree_size']} "
              f"written to {out_path}")


@ledger_app.command("check")
def check_cmd(
    bundle: Path = typer.Argument(..., help="A proof bundle written by 'ledger prove'."),
    public_key: Path = typer.Option(..., "--public-key", help="The log's public key (PEM), obtained independently."),
    image: Optional[Path] = typer.Option(None, "--image", help="Also check that this file is the logged image."),
) -> None:
    """Check a proof bundle with the log's public key alone (exit 0 valid, 3 invalid, 1 malformed)."""
    from ..provenance.keys import read_bytes
    pem = read_bytes(public_key)
    res = check_bundle(bundle, pem, image=image)
    if res.ok:
        out.print(f"[green]valid[/green]: entry {res.leaf_index} ({res.fingerprint.key}) is in the log's tree of size "
                  f"{res.tree_size}, signed at {res.tree_head.timestamp} ms")
        return
    for p in res.problems:
        out.print(f"[red]invalid[/red]: {p}", soft_wrap=True)
    raise typer.Exit(3)


@ledger_app.command("head")
def head_cmd(log: Optional[str] = typer.Argument(None, help=_LOG_HELP)) -> None:
    """Print the latest signed tree head as JSON."""
    with Ledger(_log(log)) as lg:
        out.print_json(json.dumps(lg.head().to_dict()))


@ledger_app.command("key")
def key_cmd(
    log: Optional[str] = typer.Argument(None, help=_LOG_HELP),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Write the PEM here (new file) instead of printing it."),
) -> None:
    """Export the log's public key (PEM): what third parties need to check proofs."""
    new_output(out_path)
    with Ledger(_log(log)) as lg:
        pem = lg.public_key_pem()
    if out_path:
        with open(out_path, "xb") as f:
            f.write(pem)
        err.print(f"public key written to {out_path}")
    else:
        typer.echo(pem.decode("ascii"), nl=False)


@ledger_app.command("audit")
def audit_cmd(log: Optional[str] = typer.Argument(None, help=_LOG_HELP)) -> None:
    """Recompute every hash from the leaves and check every signed head (exit 3 if anything disagrees)."""
    with Ledger(_log(log)) as lg:
        rep = lg.audit()
    if rep.ok:
        out.print(f"[green]ok[/green]: {rep.leaves} leaves, {rep.nodes} nodes, {rep.heads} signed heads agree; "
                  f"root {rep.root_hash.hex()}")
        return
    for p in rep.problems:
        out.print(f"[red]problem[/red]: {p}", soft_wrap=True)
    raise typer.Exit(3)


@ledger_app.command("serve")
def serve_cmd(
    log: Optional[str] = typer.Argument(None, help=_LOG_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8470, "--port", min=1, max=65535, help="Port to listen on."),
    writable: bool = typer.Option(False, "--writable", help="Accept POST /entries (needs the private key)."),
    key: Optional[Path] = typer.Option(None, "--key", help=f"The log's PEM private key for --writable (default: ${ENV_KEY}, else the key recorded at init)."),
) -> None:
    """Serve the log over HTTP (read-only unless --writable): /tree-head, /public-key,
    /proof/inclusion, /proof/consistency, /lookup, POST /entries."""
    import uvicorn

    from ..provenance.ledger import create_app
    application = create_app(_log(log), writable=writable, key_path=key)
    uvicorn.run(application, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    """Add ledger to ``app``."""
    app.add_typer(ledger_app, name="ledger")
