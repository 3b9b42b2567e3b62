"""``medforensics gateway ...``: check every image on its way into the archive (docs/gateway.md).

Exit status: 0 success, 1 the gateway could not start or an action failed (one line says why),
2 usage error; ``run`` stops cleanly on SIGTERM or Ctrl-C (130).
"""
from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from .console import UsageError, err, new_output, out

gateway_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="DICOM gateway: receive, check, forward or quarantine (docs/gateway.md).")

_CONFIG = typer.Option(None, "--config", "-c", exists=True, dir_okay=False,
                       help="Settings file (TOML; see docs/gateway.md). Options given here override it.")


def _config(config: Optional[Path], **overrides):
    from ..gateway.config import load_config

    return load_config(config, **overrides)


@gateway_app.command("run")
def run_cmd(
    config: Optional[Path] = _CONFIG,
    port: Optional[int] = typer.Option(None, "--port", help="DICOM port to listen on (default 11112)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1; 0.0.0.0: all)."),
    ae_title: Optional[str] = typer.Option(None, "--ae-title", help="This gateway's AE title (default MEDFORENSICS)."),
    spool: Optional[Path] = typer.Option(None, "--spool", help="Folder for received instances, results and the queue."),
    queue: Optional[str] = typer.Option(None, "--queue", help="Queue: a SQLite file or postgresql://... "
                                        "(default: queue.sqlite in the spool)."),
    archive: Optional[str] = typer.Option(None, "--archive", help="Archive to forward to: HOST:PORT[:AE_TITLE]."),
    policy: Optional[Path] = typer.Option(None, "--policy", exists=True, dir_okay=False,
                                          help="Policy file (TOML): what to do per label and provenance finding."),
    allow: Optional[List[str]] = typer.Option(None, "--allow", help="Calling AE title allowed to send, optionally "
                                              "AE@IP (repeatable; default: any)."),
    idle: Optional[float] = typer.Option(None, "--idle", help="Seconds without a new instance before a series is "
                                         "checked (default 10)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Scan processes (default 1)."),
    sign_with: Optional[str] = typer.Option(None, "--sign-with", help="KEY,CERT: sign series that pass on the way in."),
    log: Optional[str] = typer.Option(None, "--log", help="Transparency log to record signed series in."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every series and refusal."),
) -> None:
    """Run the gateway: a DICOM Storage SCP that checks each series and forwards or quarantines it."""
    from ..gateway.config import Archive
    from ..gateway.service import Gateway

    signer = None
    if sign_with:
        parts = sign_with.split(",")
        if len(parts) != 2:
            raise UsageError("--sign-with: expected KEY,CERT")
        signer = (Path(parts[0]), Path(parts[1]))
    cfg = _config(config, port=port, host=host, ae_title=ae_title, spool=spool, queue=queue,
                  archive=Archive.parse(archive) if archive else None, policy=policy, allow=allow or None,
                  idle_seconds=idle, workers=workers, sign_with=signer, log=log)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    # pynetdicom logs each failed connection to a down archive as two errors: the gateway says it
    # once, with its retry time; -v shows pynetdicom's own log
    logging.getLogger("pynetdicom").setLevel(logging.INFO if verbose else logging.CRITICAL)
    gw = Gateway(cfg)
    stopping: list[int] = []

    def stop(signum, _frame) -> None:
        stopping.append(signum)
        gw.request_stop()

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, stop)
    gw.start()
    where = f"{cfg.archive.host}:{cfg.archive.port} ({cfg.archive.ae_title})" if cfg.archive else "no archive (hold all)"
    err.print(f"gateway {cfg.ae_title} listening on {cfg.host}:{cfg.port}; spool {cfg.spool}; forwarding to {where}",
              soft_wrap=True)
    try:
        gw.wait()
    finally:
        gw.stop()
        s = gw.stats
        err.print(f"gateway stopped: {s.received} received, {s.refused} refused, {s.checked_series} check(s), "
                  f"{s.forwarded} forwarded, {s.quarantined} quarantined", soft_wrap=True)
    if stopping and stopping[0] == signal.SIGINT:
        raise typer.Exit(130)


def _queue(config: Optional[Path], spool: Optional[Path], queue: Optional[str]):
    from ..gateway.queue import Queue

    return Queue(_config(config, spool=spool, queue=queue).queue_location)


_SPOOL = typer.Option(None, "--spool", help="The gateway's spool (its queue.sqlite), when no --config or --queue.")
_QUEUE = typer.Option(None, "--queue", help="The queue: a SQLite file or postgresql://...")


@gateway_app.command("list")
def list_cmd(config: Optional[Path] = _CONFIG, spool: Optional[Path] = _SPOOL, queue: Optional[str] = _QUEUE,
             state: Optional[str] = typer.Option(None, "--state", help="Only series in this state (e.g. quarantined)."),
             as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table.")) -> None:
    """The series the gateway has seen, with their state, label and decision."""
    q = _queue(config, spool, queue)
    try:
        rows = q.list_series(state)
    finally:
        q.close()
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps(_row(r)) + "\n")
        return
    table = Table(title=f"gateway: {len(rows)} series")
    for col in ("series", "state", "label", "score", "decision", "checked"):
        table.add_column(col, overflow="fold")
    for r in rows:
        d = _row(r)
        table.add_row(d.get("series_instance_uid", ""), d.get("state", ""), str(d.get("label") or ""),
                      "" if d.get("score") is None else f"{d['score']:.3f}", str(d.get("decision") or ""),
                      str(d.get("checked_at") or ""))
    out.print(table)


def _row(r) -> dict:
    from dataclasses import asdict

    return asdict(r)


def _decide(action: str, series: str, who: str, why: str, config, spool, queue) -> None:
    q = _queue(config, spool, queue)
    try:
        q.decide(series, action, who=who, why=why)
    finally:
        q.close()
    then = {"release": "a running gateway with an archive forwards it with its results",
            "reject": "never forwarded; its files stay in the spool"}[action]
    out.print(f"{series}: {action}{'d' if action.endswith('e') else 'ed'} by {who} ({then})")


_WHO = typer.Option(..., "--who", help="Who decides (recorded in the audit log).")
_WHY = typer.Option(..., "--why", help="Why (recorded in the audit log).")


@gateway_app.command("release")
def release_cmd(series: str = typer.Argument(..., help="SeriesInstanceUID of a quarantined series."),
                who: str = _WHO, why: str = _WHY, config: Optional[Path] = _CONFIG, spool: Optional[Path] = _SPOOL,
                queue: Optional[str] = _QUEUE) -> None:
    """Release a quarantined series: the gateway forwards it with its results."""
    _decide("release", series, who, why, config, spool, queue)


@gateway_app.command("reject")
def reject_cmd(series: str = typer.Argument(..., help="SeriesInstanceUID of a quarantined series."),
               who: str = _WHO, why: str = _WHY, config: Optional[Path] = _CONFIG, spool: Optional[Path] = _SPOOL,
               queue: Optional[str] = _QUEUE) -> None:
    """Reject a quarantined series: it is never forwarded (its files stay in the spool as evidence)."""
    _decide("reject", series, who, why, config, spool, queue)


@gateway_app.command("audit")
def audit_cmd(config: Optional[Path] = _CONFIG, spool: Optional[Path] = _SPOOL, queue: Optional[str] = _QUEUE,
              series: Optional[str] = typer.Option(None, "--series", help="Only this series."),
              export: Optional[Path] = typer.Option(None, "--export", help="Write the audit log to this new JSON-lines "
                                                    "file.")) -> None:
    """The audit log of release and reject decisions (who, when, what, why)."""
    q = _queue(config, spool, queue)
    try:
        entries = q.audit(series)
    finally:
        q.close()
    if export is not None:
        new_output(export)
        with open(export, "x", encoding="utf-8") as f:
            for e in entries:
                f.write(json.dumps(_row(e)) + "\n")
        err.print(f"{len(entries)} audit entr{'y' if len(entries) == 1 else 'ies'} written to {export}")
        return
    table = Table(title=f"gateway audit: {len(entries)} decision(s)")
    for col in ("at", "who", "action", "series", "why"):
        table.add_column(col, overflow="fold")
    for e in entries:
        d = _row(e)
        table.add_row(str(d.get("at", "")), str(d.get("who", "")), str(d.get("action", "")),
                      str(d.get("series_instance_uid", "")), str(d.get("why", "")))
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add gateway to ``app``."""
    app.add_typer(gateway_app, name="gateway")
