"""``medforensics serve`` runs the review service; ``medforensics review ...`` manages its
accounts and audit trail (docs/serve.md).

Exit status: 0 success, 1 the service could not start or an action failed (one line says why),
2 usage error.
"""
from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .console import UsageError, err, new_output, out

review_app = typer.Typer(add_completion=False, no_args_is_help=True,
                         help="Accounts and audit trail of the review service (docs/serve.md).")

_CONFIG = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                       help="Settings file (TOML; see docs/serve.md). Options given here override it.")
_DATA = typer.Option(None, "--data", help="The service's folder: uploads, results and its database "
                     "(default ./medforensics-review).")
_PASSWORD_FILE = typer.Option(None, "--password-file", help="File whose first line is the password "
                              "(default: a new random one, printed once).")
_DATABASE = typer.Option(None, "--database", help="Its database: a SQLite file or postgresql://... "
                         "(default serve.sqlite in the data folder).")


def _settings(config: Optional[Path], **overrides):
    from ..serve.settings import load_settings

    return load_settings(config, **overrides)


def _store(config: Optional[Path], data: Optional[Path], database: Optional[str]):
    from ..serve.store import Store

    settings = _settings(config, data=data, database=database)
    settings.data.mkdir(parents=True, exist_ok=True)
    return Store(settings.database_location)


def _password(password_file: Optional[Path], user: str) -> tuple[str, bool]:
    """The password from the file's first line, or a new random one (and whether it was made)."""
    from ..serve.auth import check_password

    if password_file is None:
        return secrets.token_urlsafe(15), True
    try:
        lines = password_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{password_file}: cannot be read ({e.__class__.__name__})") from None
    if not lines:
        raise UsageError(f"{password_file}: empty; its first line is the password")
    return check_password(lines[0], user), False


def _shown_once(password: str, made: bool) -> None:
    """Print a password that was made here (a given one is never printed)."""
    if made:
        out.print(f"password (shown once): {password}")


def serve_cmd(
    config: Optional[Path] = _CONFIG,
    data: Optional[Path] = _DATA,
    database: Optional[str] = _DATABASE,
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port to listen on (default 8600)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Scan processes for upload jobs (default 1)."),
    demo: Optional[bool] = typer.Option(None, "--demo/--no-demo", help="Scan the demo's images at the first start "
                                        "(the originals and manipulated copies of 'medforensics demo')."),
    gateway_queue: Optional[str] = typer.Option(None, "--gateway-queue", help="The gateway's queue: show its "
                                                "checked series and release or reject quarantined ones."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every request (method, path, status)."),
) -> None:
    """Run the review service: work lists, the viewer, decisions and the quiz, in a browser.

    Create the first account with `medforensics review bootstrap` first; then open the
    address it prints.
    """
    import uvicorn

    from ..serve.app import create_app
    from ..serve.store import Store

    settings = _settings(config, data=data, database=database, host=host, port=port, workers=workers, demo=demo,
                         gateway_queue=gateway_queue)
    settings.data.mkdir(parents=True, exist_ok=True)
    with Store(settings.database_location) as store:
        if store.count_users() == 0:
            raise UsageError(f"{settings.database_location}: no accounts yet; create the first admin with "
                             f"'medforensics review bootstrap --data {settings.data}'")
    _port_free(settings.host, settings.port)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(message)s")
    app = create_app(settings)
    scheme = "https" if settings.secure_cookies() else "http"
    err.print(f"medforensics review service on {scheme}://{settings.host}:{settings.port}/ "
              f"(data: {settings.data}); Ctrl-C stops it")
    if settings.secure_cookies():
        err.print("[yellow]note:[/yellow] session cookies are Secure: serve it behind a TLS proxy "
                  "(or set cookie_secure = \"false\" on a trusted network)")
    # proxy_headers off: a client's X-Forwarded-For must not choose the address its sign-in
    # attempts are counted against
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_level="warning",
                proxy_headers=False)


def _port_free(host: str, port: int) -> None:
    """Refuse, in one line, an address the service could not listen on (before starting anything)."""
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as e:
        raise UsageError(f"{host}:{port}: cannot listen there ({e.strerror or e}); choose another --port or --host") from None


@review_app.command("bootstrap")
def bootstrap_cmd(
    user: str = typer.Option("admin", "--user", help="Name of the first admin."),
    password_file: Optional[Path] = _PASSWORD_FILE,
    config: Optional[Path] = _CONFIG,
    data: Optional[Path] = _DATA,
    database: Optional[str] = _DATABASE,
) -> None:
    """Create the first admin of a new service (refused once any account exists)."""
    from ..serve.auth import hash_password

    password, made = _password(password_file, user)      # a weak password is refused before anything is made
    with _store(config, data, database) as store:
        if store.count_users():
            raise UsageError("the service has accounts already; admins add more on the Admin page "
                             "or with 'medforensics review add-user'")
        store.add_user(user, "admin", hash_password(password))
        store.audit_append("medforensics", "bootstrap", f"user:{user}", "", "admin")
    out.print(f"admin {user!r} created")
    _shown_once(password, made)


@review_app.command("add-user")
def add_user_cmd(
    user: str = typer.Argument(..., help="Name of the new account."),
    role: str = typer.Option("viewer", "--role", help="viewer, reviewer or admin."),
    password_file: Optional[Path] = _PASSWORD_FILE,
    config: Optional[Path] = _CONFIG,
    data: Optional[Path] = _DATA,
    database: Optional[str] = _DATABASE,
) -> None:
    """Add an account (as the admin 'medforensics' in the audit trail)."""
    from ..serve.auth import ROLES, hash_password

    if role not in ROLES:
        raise UsageError(f"--role {role!r}: one of {', '.join(ROLES)}")
    with _store(config, data, database) as store:
        if store.user(user) is not None:
            raise UsageError(f"user {user!r} exists")
        password, made = _password(password_file, user)
        store.add_user(user, role, hash_password(password))
        store.audit_append("medforensics", "add-user", f"user:{user}", "", role)
    out.print(f"{role} {user!r} created")
    _shown_once(password, made)


@review_app.command("set-password")
def set_password_cmd(
    user: str = typer.Argument(..., help="The account."),
    password_file: Optional[Path] = _PASSWORD_FILE,
    config: Optional[Path] = _CONFIG,
    data: Optional[Path] = _DATA,
    database: Optional[str] = _DATABASE,
) -> None:
    """Give an account a new password and end its sessions (e.g. the only admin forgot theirs)."""
    from ..serve.auth import hash_password

    with _store(config, data, database) as store:
        if store.user(user) is None:
            raise UsageError(f"user {user!r}: no such account")
        password, made = _password(password_file, user)
        store.set_password_hash(user, hash_password(password))
        store.drop_sessions(user)
        store.audit_append("medforensics", "set-password", f"user:{user}", "", "")
    out.print(f"new password for {user!r}; their sessions have ended")
    _shown_once(password, made)


@review_app.command("users")
def users_cmd(config: Optional[Path] = _CONFIG, data: Optional[Path] = _DATA,
              database: Optional[str] = _DATABASE) -> None:
    """List the accounts."""
    with _store(config, data, database) as store:
        table = Table("user", "role", "created", "disabled")
        for u in store.users():
            table.add_row(u.name, u.role, u.created, "yes" if u.disabled else "")
    out.print(table)


@review_app.command("audit-export")
def audit_export_cmd(
    out_file: Path = typer.Argument(..., metavar="OUT", help="New JSON-lines file: one entry per line, then the "
                                    "tree size and root."),
    config: Optional[Path] = _CONFIG,
    data: Optional[Path] = _DATA,
    database: Optional[str] = _DATABASE,
) -> None:
    """Export the audit trail with its Merkle tree head (checked by 'review audit-verify')."""
    new_output(out_file)
    with _store(config, data, database) as store:
        store.audit_export(out_file)
        size, root = store.audit_head()
    out.print(f"{size} entries written to {out_file} (root {root})")


@review_app.command("audit-verify")
def audit_verify_cmd(
    file: Optional[Path] = typer.Argument(None, metavar="[EXPORT]", help="An exported trail to check on its own "
                                          "(default: the service's database)."),
    against: Optional[Path] = typer.Option(None, "--against", help="An earlier export: the database must still "
                                           "hold its tree head (catches entries cut from the end or rewritten)."),
    config: Optional[Path] = _CONFIG,
    data: Optional[Path] = _DATA,
    database: Optional[str] = _DATABASE,
) -> None:
    """Recompute every entry's hash and the tree roots; exit 1 when anything was changed.

    Keep each export (or its last line, the tree head) somewhere the service cannot write:
    `--against` it later shows whether entries were cut from the end or rewritten since.
    """
    from ..serve.store import export_head, verify_export

    if file is not None and against is not None:
        raise UsageError("--against checks the service's database against an export: give no EXPORT with it")
    if against is not None:
        if not against.is_file():
            raise UsageError(f"{against}: no such file")
        size, root = export_head(against)
        with _store(config, data, database) as store:
            problems = store.audit_verify_against(size, root)
        what = f"the audit trail (holding {against.name}'s {size} entries)"
    elif file is not None:
        if not file.is_file():
            raise UsageError(f"{file}: no such file")
        problems = verify_export(file)
        what = str(file)
    else:
        with _store(config, data, database) as store:
            problems = store.audit_verify()
        what = "the audit trail"
    if problems:
        for p in problems[:20]:
            err.print(f"[red]problem:[/red] {p}")
        raise typer.Exit(1)
    out.print(f"{what}: intact")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
    app.add_typer(review_app, name="review")
