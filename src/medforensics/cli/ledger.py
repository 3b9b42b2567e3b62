"""``medforensics ledger ...``: the transparency log of image fingerprints (see docs/provenance/ledger.md).

LOG is a SQLite file (or ``sqlite:///path``) or a ``postgresql://`` URL; it defaults to
``$MEDFORENSICS_LEDGER``. ``ledger add`` also writes to a log served over HTTP
(``--log https://...``, with a write token from ``ledger token new``). Exit status: 0 success, 1 an input could not be read (the rest are
still processed), 2 usage error, 3 the answer is negative (``verify``: an image is changed or
unknown; ``check``: the proof does not verify; ``audit``: the log is inconsistent).
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .console import UsageError, err, new_output, out
from ..progress import progress_bar
from ..core import MedForensicsError
from ..provenance.ledger import (ENV_KEY, ENV_LOG, Fingerprint, Ledger, RemoteLog, check_bundle, fingerprint, generate_key,
                                 is_remote, load_private_key)

ledger_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Transparency log (Merkle tree, signed heads, proofs) of image fingerprints.")
token_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Write tokens of a served log (ledger serve --writable): new, list, revoke.")
ledger_app.add_typer(token_app, name="token")

_LOG_HELP = f"The log: a SQLite file, sqlite:///path or postgresql://... (default: ${ENV_LOG})."
STATUS_STYLE = {"unchanged": "green", "changed": "red", "unknown": "yellow", "error": "red"}


def _log(log: Optional[str], *, served_ok: bool = False) -> str:
    """The log given, else the one the environment names (:mod:`medforensics.config`); an
    ``http(s)://`` URL (a served log) only where ``served_ok`` (``ledger add``)."""
    from ..config import settings

    log = log or settings().ledger
    if not log:
        raise UsageError(f"no log given: pass LOG / --log or set {ENV_LOG}")
    if is_remote(log) and not served_ok:
        raise UsageError(f"{log}: a served log (URL); only 'ledger add' writes to one, the other commands need "
                         "the log itself (a SQLite file or a postgresql:// URL)")
    return log


def _new_file(path: Optional[Path], what: str = "file") -> None:
    """Refuse an output that exists (the ledger never overwrites a file) or whose folder does not."""
    if path is None:
        return
    if path.exists():
        raise UsageError(f"{path}: already exists; the ledger writes a new {what}, never over an existing one: "
                         "choose a new name")
    new_output(path)


def _iso(ms: Optional[int]) -> str:
    """A time in ms since 1970 as ISO 8601 UTC (``2026-12-05T20:07:08.123Z``)."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _loopback(host: Optional[str]) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _token(token_file: Optional[Path]) -> Optional[str]:
    """The write token: the first line of ``token_file``, else ``$MEDFORENSICS_LEDGER_TOKEN``."""
    from ..config import LEDGER_TOKEN, settings

    if token_file is None:
        token = settings().ledger_token
        if not token:
            raise UsageError(f"writing to a served log needs a write token: pass --token-file or set {LEDGER_TOKEN}")
        return token
    return _read_token(token_file)


def _read_token(token_file: Path) -> str:
    """The first line of a token file (a one-line error when it cannot be read or is empty)."""
    try:
        lines = token_file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MedForensicsError(token_file, "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MedForensicsError(token_file, f"cannot be read ({type(e).__name__})") from None
    if not lines or not lines[0].strip():
        raise MedForensicsError(token_file, "holds no token (expected the token on its first line)")
    return lines[0].strip()


def dicomweb_options(paths: List[str], since: Optional[str], study: Optional[str],
                     token_file: Optional[Path]) -> dict:
    """:func:`medforensics.io.discover`'s options from ``--since --study --dicomweb-token-file``
    (``scan`` and ``ledger add``), checked first so that a typo is a usage error."""
    from ..io import parse_since
    from ..io.dicomweb import is_dicomweb

    remote = any(is_dicomweb(str(p)) for p in paths)
    if study and not remote:
        raise UsageError("--study chooses a study on a DICOMweb server: give a dicomweb+http(s):// URL")
    if token_file is not None and not remote:
        raise UsageError("--dicomweb-token-file is for a DICOMweb server: give a dicomweb+http(s):// URL")
    try:
        day = parse_since(since)
    except MedForensicsError as e:
        raise UsageError(str(e)) from None
    options: dict = {"since": day, "study": study}
    if token_file is not None:
        options["token"] = _read_token(token_file)
    return options


def image_files(paths: List[Path]) -> list[tuple[Path, Optional[str]]]:
    """The inputs of ``ledger add``/``verify`` (:func:`medforensics.io.plan`, ``ledger`` rule: DICOM,
    PNG, JPEG, TIFF, NIfTI), each with an error message when it cannot be an image; other files met
    in folders and hidden names are skipped and counted (the count is printed)."""
    from ..io import plan
    p = plan(paths, "ledger")
    if p.note():
        err.print(p.note(), soft_wrap=True, markup=False)
    return [(i.path, i.problem) for i in p.inputs]


def _fingerprints(paths: List[str], label: str, options: Optional[dict] = None):
    """Yield (path, fingerprint or None, error or None) with a progress bar; errors printed as they come.
    A ``dicomweb+http(s)://`` path is a DICOMweb server: each series that ``options`` choose
    (:func:`dicomweb_options`) is fetched into a temporary folder, each of its instances
    fingerprinted, and the folder removed; the path of an instance is its URL. ``since`` keeps
    local files modified on or after that day."""
    from ..io import discover
    from ..io.dicomweb import fetched, is_dicomweb

    local = [Path(p) for p in paths if not is_dicomweb(str(p))]
    remote = [str(p) for p in paths if is_dicomweb(str(p))]
    files = image_files(local) if local else []
    since = (options or {}).get("since")
    if since is not None:  # files modified on or after that day (local time)
        oldest = datetime.combine(since, datetime.min.time()).timestamp()
        files = [(p, problem) for p, problem in files if problem or p.stat().st_mtime >= oldest]
    series = discover(remote, **(options or {}))[0] if remote else []
    with progress_bar(label) as progress:
        task = progress.add_task("", total=len(files) + len(series))

        def report(error: str) -> None:
            progress.console.print(f"[red]error[/red] {escape(str(error))}", soft_wrap=True, markup=True, highlight=False)

        for path, problem in files:
            fp, error = None, problem and f"{path}: {problem}"
            if error is None:
                try:
                    fp = fingerprint(path)
                except MedForensicsError as e:
                    error = str(e)
            if error:
                report(error)
            yield path, fp, error
            progress.update(task, advance=1, description=path.name)
        for src in series:
            try:
                if src.error:
                    raise MedForensicsError(src.path, src.error)
                with fetched(src) as instances:
                    for f in instances:
                        fp = fingerprint(f)
                        where = f"{src.url}/instances/{fp.key}"
                        yield where, replace(fp, source=where), None
            except MedForensicsError as e:
                error = f"{src.path}: {e.problem}" if e.path else str(e)
                report(error)
                yield src.path, None, error
            progress.update(task, advance=1, description=src.uid or "")


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
        _new_file(Path(log[len("sqlite:///"):] if log.startswith("sqlite:///") else log), "log")
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
        _new_file(key_out, "key file")
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
    paths: List[str] = typer.Argument(..., help="Image files and folders (DICOM, PNG, JPEG, TIFF, NIfTI), or a "
                                      "DICOMweb server: dicomweb+http(s)://HOST/ROOT (docs/dicomweb.md)."),
    log: Optional[str] = typer.Option(None, "--log", help=_LOG_HELP + " Or a served log: http(s)://host:port."),
    key: Optional[Path] = typer.Option(None, "--key", help="The log's PEM private key (default: "
                                       f"${ENV_KEY}, else the key recorded at init); not for a served log."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="A served log only: file whose first line is "
                                              "the write token (default: $MEDFORENSICS_LEDGER_TOKEN)."),
    batch: int = typer.Option(1000, "--batch", min=1, help="Entries per transaction (one signed head each)."),
    since: Optional[str] = typer.Option(None, "--since", help="YYYY-MM-DD: only files modified on or after that day; "
                                        "on a DICOMweb server, only studies with a StudyDate on or after it."),
    study: Optional[str] = typer.Option(None, "--study", help="DICOMweb: only the study with this StudyInstanceUID."),
    dicomweb_token_file: Optional[Path] = typer.Option(None, "--dicomweb-token-file", help="DICOMweb: file whose first "
                                                       "line is a bearer token (default: $MEDFORENSICS_DICOMWEB_TOKEN)."),
) -> None:
    """Fingerprint images and append them to the log (images already logged unchanged are skipped;
    a changed image is logged as a new version). With --log http(s)://..., the fingerprints are
    posted to a log served with 'ledger serve --writable', authenticated by a write token.
    A dicomweb+http(s):// path logs the instances of a DICOMweb server in place (docs/dicomweb.md)."""
    n_err = added = skipped = 0
    options = dicomweb_options(paths, since, study, dicomweb_token_file)
    location = _log(log, served_ok=True)
    if is_remote(location):
        if key is not None:
            raise UsageError("--key signs a local log; a served log signs with its own key (give --token-file)")
        sink = RemoteLog(location, _token(token_file))
        host = urlparse(location).hostname
        if location.lower().startswith("http://") and not _loopback(host):
            err.print(f"warning: {location} is plain HTTP beyond loopback: the write token travels in clear; "
                      "use https://", soft_wrap=True, markup=False)
        access = sink.write_access()  # fail before reading any image if the token is refused
        batch = min(batch, int(access.get("max_entries") or batch))

        def status(fp: Fingerprint) -> str:
            return sink.lookup(fp)

        def head() -> tuple[int, str]:
            h = sink.head()
            return int(h["tree_size"]), str(h["root_hash"])
    else:
        if token_file is not None:
            raise UsageError("--token-file is for a served log (--log http(s)://...); a local log needs the key")
        sink = Ledger(location, key_path=key)
        try:
            sink._signer()  # fail before reading any image if the key is missing or wrong
        except BaseException:
            sink.close()
            raise

        def status(fp: Fingerprint) -> str:
            return sink.lookup(fp).status

        def head() -> tuple[int, str]:
            h = sink.head()
            return h.tree_size, h.root_hash.hex()
    with sink:
        pending: list[Fingerprint] = []
        seen: set[tuple[str, str, str]] = set()
        for _, fp, error in _fingerprints(paths, "logging", options):
            if error:
                n_err += 1
                continue
            assert fp is not None
            ident = (fp.key, fp.pixel_sha256, fp.header_sha256)
            if ident in seen or status(fp) == "unchanged":
                skipped += 1
                continue
            seen.add(ident)
            pending.append(fp)
            if len(pending) >= batch:
                added += len(sink.append(pending))
                pending = []
        if pending:
            added += len(sink.append(pending))
        size, root = head()
    out.print(f"{added} added, {skipped} already logged, {n_err} error(s); tree size {size}, root {root}")
    if n_err:
        raise typer.Exit(1)


@ledger_app.command("verify")
def verify_cmd(
    paths: List[Path] = typer.Argument(..., help="Image files and folders to compare with the log."),
    log: Optional[str] = typer.Option(None, "--log", help=_LOG_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write one JSON object per file here (new file)."),
) -> None:
    """Is each image logged and unchanged? Exit 0 only when all are unchanged (3 otherwise, 1 on read errors)."""
    _new_file(json_out)
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
    _new_file(out_path)
    with Ledger(_log(log)) as lg:
        bundle = lg.prove(path)
    with open(out_path, "x", encoding="utf-8") as f:
        json.dump(bundle, f, indent=1)
    err.print(f"proof of entry {bundle['leaf']['index']} in tree size {bundle['inclusion']['tree_size']} "
              f"written to {out_path}")


@ledger_app.command("check")
def check_cmd(
    bundle: Path = typer.Argument(..., help="A proof bundle written by 'ledger prove'."),
    public_key: Path = typer.Option(..., "--public-key", help="The log's public key (PEM), or a PEM certificate of "
                                    "it, obtained independently."),
    image: Optional[Path] = typer.Option(None, "--image", help="Also check that this file is the logged image."),
) -> None:
    """Check a proof bundle with the log's public key alone (a PEM public key, or a PEM certificate
    whose key is taken); exit 0 valid, 3 invalid, 1 malformed. The signing time is ISO 8601 UTC."""
    from ..provenance.keys import read_bytes
    pem = read_bytes(public_key)
    res = check_bundle(bundle, pem, image=image)
    if res.ok:
        out.print(f"[green]valid[/green]: entry {res.leaf_index} ({res.fingerprint.key}) is in the log's tree of size "
                  f"{res.tree_size}, signed at {_iso(res.tree_head.timestamp)}")
        return
    for p in res.problems:
        out.print(f"[red]invalid[/red]: {escape(str(p))}", soft_wrap=True)
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
    _new_file(out_path)
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
        out.print(f"[red]problem[/red]: {escape(str(p))}", soft_wrap=True)
    raise typer.Exit(3)


@ledger_app.command("serve")
def serve_cmd(
    log: Optional[str] = typer.Argument(None, help=_LOG_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (keep loopback; put a TLS reverse "
                             "proxy in front to serve others)."),
    port: int = typer.Option(8470, "--port", min=1, max=65535, help="Port to listen on."),
    writable: bool = typer.Option(False, "--writable", help="Accept POST /entries from holders of a write token "
                                  "('ledger token new'); needs the private key."),
    key: Optional[Path] = typer.Option(None, "--key", help=f"The log's PEM private key for --writable (default: ${ENV_KEY}, else the key recorded at init)."),
    max_body_bytes: int = typer.Option(2 * 1024 * 1024, "--max-body-bytes", min=1024,
                                       help="Largest POST /entries body; larger ones get 413 before parsing."),
    max_entries: int = typer.Option(1000, "--max-entries", min=1, help="Most entries in one POST /entries (413 above)."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Serve HTTPS with this PEM certificate (chain)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="The PEM private key of --tls-cert."),
) -> None:
    """Serve the log over HTTP (read-only unless --writable): /tree-head, /public-key,
    /proof/inclusion, /proof/consistency, /lookup, and with --writable GET /write-access and
    POST /entries (Authorization: Bearer TOKEN; refused to start without an active token)."""
    import uvicorn

    from ..provenance.ledger import WriteLimits, create_app
    if (tls_cert is None) != (tls_key is None):
        raise UsageError("give both --tls-cert and --tls-key, or neither")
    for f in (tls_cert, tls_key):
        if f is not None and not f.is_file():
            raise UsageError(f"{f}: no such file")
    application = create_app(_log(log), writable=writable, key_path=key,
                             limits=WriteLimits(max_body_bytes=max_body_bytes, max_entries=max_entries))
    if not _loopback(host):
        err.print(f"warning: listening on {host}, beyond loopback: anyone who can reach port {port} can read the log "
                  "(UIDs, hashes, source paths)", soft_wrap=True, markup=False)
        if writable and tls_cert is None:
            err.print("warning: --writable over plain HTTP beyond loopback: write tokens travel in clear; listen on "
                      "127.0.0.1 behind a TLS reverse proxy, or pass --tls-cert/--tls-key (docs/provenance/ledger.md)",
                      soft_wrap=True, markup=False)
    uvicorn.run(application, host=host, port=port, log_level="info",
                ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)


@token_app.command("new")
def token_new_cmd(
    log: Optional[str] = typer.Argument(None, help=_LOG_HELP),
    name: str = typer.Option(..., "--name", help="Who or what writes with it (e.g. pacs-ingest): recorded with "
                             "every write; 1-64 letters, digits, ._@-, never reused."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Write the token to this new file (mode 0600) instead "
                                            "of printing it."),
) -> None:
    """Create a write token for 'ledger serve --writable' and print it once (only its SHA-256 is
    kept in the log). Clients pass it with 'ledger add --log URL --token-file FILE'."""
    _new_file(out_path, "token file")
    with Ledger(_log(log)) as lg:
        token = lg.new_token(name)
        where = lg.name
    if out_path is not None:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        err.print(f"token {name!r} for {where} written to {out_path} (mode 0600); it cannot be shown again",
                  soft_wrap=True, markup=False)
    else:
        typer.echo(token)
        err.print(f"token {name!r} created for {where}; this is the only time it is shown: keep it secret",
                  soft_wrap=True, markup=False)


@token_app.command("list")
def token_list_cmd(log: Optional[str] = typer.Argument(None, help=_LOG_HELP)) -> None:
    """The write tokens (names, never the tokens), when made and revoked, and what each wrote."""
    with Ledger(_log(log)) as lg:
        tokens = lg.tokens()
        where = lg.name
    table = Table(title=f"write tokens of {where}")
    for col in ("name", "status", "created (UTC)", "revoked (UTC)", "writes", "entries"):
        table.add_column(col, overflow="fold")
    for t in tokens:
        table.add_row(t.name, "[green]active[/green]" if t.active else "[red]revoked[/red]", _iso(t.created),
                      _iso(t.revoked), str(t.writes), str(t.entries))
    out.print(table)
    out.print(f"{sum(t.active for t in tokens)} active, {sum(not t.active for t in tokens)} revoked")


@token_app.command("revoke")
def token_revoke_cmd(
    log: Optional[str] = typer.Argument(None, help=_LOG_HELP),
    name: str = typer.Option(..., "--name", help="The token to revoke (see 'ledger token list')."),
) -> None:
    """Revoke a write token: a running server refuses it from its next request on."""
    with Ledger(_log(log)) as lg:
        lg.revoke_token(name)
        where = lg.name
    err.print(f"token {name!r} of {where} revoked", soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    """Add ledger to ``app``."""
    app.add_typer(ledger_app, name="ledger")
