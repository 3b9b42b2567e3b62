"""``medforensics sign`` and ``medforensics verify``: DICOM digital signatures (and, in ``verify``,
C2PA manifests of PNG/JPEG files).

``sign`` writes signed copies under ``--out`` (the layout of :mod:`medforensics.io.plan`: a
folder's layout is kept below ``--out`` without the folder's own name, a file given by name goes to
its top; every output is checked to be new before anything is written: exit 2 otherwise); exit 1
when any input failed. Inputs follow the planner's rule: ``sign`` takes DICOM files, ``verify``
DICOM, PNG and JPEG; other files found in folders are skipped and counted, hidden names too.
``verify`` prints one row per signature or C2PA manifest. Its exit status:

* 0 -- every file is signed, every signature intact and its signer chains to a trust anchor
  (``--trust``, else ``MEDFORENSICS_TRUST``);
* 1 -- any file unsigned, unreadable, changed after signing (broken), signed by an untrusted
  signer, with an expired certificate or an unsupported algorithm;
* 2 -- usage error;
* 3 -- every signature intact, but no trust anchors were given, so the signers were NOT checked:
  anyone can sign with a key of their own. Each signer's subject and certificate SHA-256
  fingerprint are printed for a person to compare.

Trust is decided by :func:`medforensics.provenance.trust.decide`, the function the ``provenance``
detector of ``scan`` uses too.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .console import UsageError, err, new_output, out
from ..progress import progress_bar
from ..core import MedForensicsError

_RASTER = {"png", "jpeg"}
#: exit status of verify when every signature is intact but no trust anchors were given
NOT_CHECKED_EXIT = 3


def _plan(paths: List[Path], command: str):
    """The inputs of ``sign`` or ``verify`` (:func:`medforensics.io.plan`); what was skipped is said."""
    from ..io import plan

    p = plan(paths, command)
    if p.note():
        err.print(escape(p.note()), soft_wrap=True)
    return p


def sign_cmd(
    paths: List[Path] = typer.Argument(..., help="DICOM files or folders (walked recursively; other files and "
                                       "hidden names in folders are skipped)."),
    key: Path = typer.Option(..., "--key", help="Signer's private key (PEM)."),
    cert: Path = typer.Option(..., "--cert", help="Signer's certificate (PEM; its issuers may follow)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for the signed copies (a folder's layout is "
                                  "kept below it, without the folder's own name; never overwrites)."),
    tags: Optional[str] = typer.Option(None, "--tags", help="Sign only these attributes: keywords or gggg,eeee, "
                                       "comma-separated (default: all)."),
    profile: str = typer.Option("base", "--profile", help="base, creator, authorization or none."),
    mac: str = typer.Option("SHA256", "--mac", help="MAC algorithm: SHA256, SHA384 or SHA512."),
    no_block_digest: bool = typer.Option(False, "--no-block-digest",
                                         help="Leave out the signed per-attribute and per-block digests."),
) -> None:
    """Add a DICOM digital signature (PS3.15) to copies of DICOM files; dcmsign verifies them."""
    from ..provenance.keys import load_identity, make_folder
    from ..provenance.signature import MAC_ALGORITHMS, PROFILES, parse_tags, sign_file

    if profile not in PROFILES:
        raise UsageError(f"--profile must be one of {', '.join(PROFILES)}")
    if mac.upper() not in MAC_ALGORITHMS:
        raise UsageError(f"--mac must be one of {', '.join(MAC_ALGORITHMS)}")
    sel = None
    if tags is not None:
        try:
            sel = parse_tags(_split_tags(tags))
        except ValueError as e:
            raise UsageError(f"--tags: {e}") from None
        if profile == "creator":
            raise UsageError("--profile creator signs every attribute; leave out --tags")
    ident = load_identity(key, cert)
    now = _dt.datetime.now(_dt.timezone.utc)
    if now > ident.cert.not_valid_after_utc:
        raise MedForensicsError(cert, f"certificate expired on {ident.cert.not_valid_after_utc:%Y-%m-%d}; "
                                      "refusing to sign with it")
    if now < ident.cert.not_valid_before_utc:
        raise MedForensicsError(cert, "certificate is not valid yet; refusing to sign with it")
    from ..io import OutputCollision

    p = _plan(paths, "sign")
    try:
        files = p.targets(out_dir)
    except OutputCollision as e:
        raise UsageError(str(e)) from None
    make_folder(out_dir)
    failed = done = 0
    with progress_bar("signing") as bar:
        task = bar.add_task("", total=len(files))
        for inp, dst in files:
            src = inp.path
            bar.update(task, description=escape(src.name))
            try:
                if inp.problem:
                    raise MedForensicsError(src, inp.problem)
                make_folder(dst.parent)
                sign_file(src, dst, ident, tags=sel, profile=profile, mac_algorithm=mac.upper(),
                          block_digest=not no_block_digest)
                done += 1
            except MedForensicsError as e:
                failed += 1
                err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
            bar.advance(task)
    err.print(f"signed {done} of {len(files)} file(s) into {escape(str(out_dir))}"
              + (f"; {failed} failed" if failed else ""))
    if failed or not files:
        raise typer.Exit(1)


def _split_tags(s: str) -> list[str]:
    """``PatientName,0010,0020,(0008,0018)`` -> ``['PatientName', '0010,0020', '0008,0018']``."""
    def hex4(t: str) -> bool:
        return len(t) == 4 and all(c in "0123456789abcdefABCDEF" for c in t)
    toks = [t.strip().strip("()") for t in s.split(",") if t.strip()]
    outl, i = [], 0
    while i < len(toks):
        if hex4(toks[i]) and i + 1 < len(toks) and hex4(toks[i + 1]):
            outl.append(f"{toks[i]},{toks[i + 1]}")
            i += 2
        else:
            outl.append(toks[i])
            i += 1
    return outl


def verify_cmd(
    paths: List[Path] = typer.Argument(..., help="DICOM, PNG or JPEG files or folders."),
    trust: Optional[List[Path]] = typer.Option(None, "--trust", help="Trusted CA certificate (PEM/DER); repeatable "
                                               "(default: $MEDFORENSICS_TRUST). Without any, signers are not "
                                               "checked: exit 3."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON object per file (new file)."),
) -> None:
    """Verify DICOM digital signatures (and C2PA manifests of PNG/JPEG files).

    Exit 0 only when every file carries signatures, all of them intact and their signers chained
    to a trust anchor; 1 when any file is unsigned, unreadable, broken, untrusted, expired or
    unsupported; 3 when all are intact but no --trust (nor MEDFORENSICS_TRUST) was given, so the
    signers were NOT checked (their subject and SHA-256 fingerprint are printed).
    """
    from ..config import settings
    from ..provenance.signature import verify_file
    from ..provenance.trust import load_anchors

    new_output(json_out)
    trust_files = [str(p) for p in trust] if trust else list(settings().trust)
    anchors = load_anchors(trust_files) if trust_files else None
    files = _plan(paths, "verify").inputs
    table = Table(show_lines=False, pad_edge=False)
    for col in ("file", "signature", "signer", "result", "reasons"):
        table.add_column(col, overflow="fold")
    records = []
    with progress_bar("verifying") as bar:
        task = bar.add_task("", total=len(files))
        for inp in files:
            bar.update(task, description=escape(inp.path.name))
            rec = _verify_one(inp.path, inp.kind, inp.problem, anchors, verify_file)
            records.append(rec)
            _rows(table, rec)
            bar.advance(task)
    out.print(table)
    n_trusted = sum(r["status"] == "trusted" for r in records)
    n_unsigned = sum(r["status"] == "unsigned" for r in records)
    unchecked = [r for r in records if r["status"] == "not-checked"]
    for r in unchecked:
        for who in r["signers"]:
            # plain text: no markup, and no emoji codes (":AB:" of a fingerprint would become one)
            err.print(Text(f"{r['path']}: signature intact, but the signer was NOT checked against any trust "
                           f"store: {who['subject'] or '?'}, certificate SHA-256 {who['fingerprint'] or '?'}"),
                      soft_wrap=True)
    err.print(f"verified {n_trusted} of {len(records)} file(s)"
              + (f"; {n_unsigned} unsigned (counted as not verified)" if n_unsigned else "")
              + (f"; {len(unchecked)} intact but signer NOT checked (no --trust or MEDFORENSICS_TRUST; "
                 f"exit {NOT_CHECKED_EXIT})" if unchecked else ""), soft_wrap=True)
    if json_out is not None:
        with open(json_out, "x", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, default=str) + "\n")
    if not records or any(r["status"] not in ("trusted", "not-checked") for r in records):
        raise typer.Exit(1)
    if unchecked:
        raise typer.Exit(NOT_CHECKED_EXIT)


def _file_status(statuses: list[str]) -> str:
    """A file's status from its signatures': the worst of them (``trusted`` only when all are)."""
    from ..provenance.trust import CHECK_STATUSES

    return max(statuses, key=CHECK_STATUSES.index)


def _verify_one(src: Path, kind: str | None, problem: str | None, anchors, verify_file) -> dict:
    """One JSON record: ``status`` is ``trusted``, ``not-checked``, ``unsigned``, ``error`` or the
    failure of the worst signature (:func:`medforensics.provenance.trust.status_of`); ``ok`` is
    True only for ``trusted``; ``signers``: each signer's subject and certificate fingerprint."""
    from ..provenance.trust import status_of

    if problem:
        return {"path": str(src), "kind": "unknown", "ok": False, "unsigned": True, "status": "error",
                "error": problem, "signatures": [], "signers": []}
    if kind in _RASTER:
        base = {"path": str(src), "kind": "c2pa", "ok": False, "unsigned": True, "status": "error", "signatures": [],
                "signers": []}
        try:
            from ..provenance.c2pa_manifest import verify_manifest
        except ImportError as e:
            return {**base, "error": f"C2PA verification is not available ({e})"}
        try:
            res = verify_manifest(src, trust=anchors)
        except MedForensicsError as e:
            return {**base, "error": e.problem}
        status = status_of(res) if res.present else "unsigned"
        return {**base, "ok": status == "trusted", "unsigned": not res.present, "status": status,
                "error": None, "signer": res.signer, "trust": res.trust if res.present else None,
                "reasons": list(res.reasons), "manifest": res.to_dict(),
                "signers": [{"subject": res.signer_subject, "fingerprint": res.signer_fingerprint}]
                if res.present else []}
    res = verify_file(src, trust=anchors)
    rec = res.to_dict()
    rec["kind"] = "dicom"
    for s, chk in zip(rec["signatures"], res.signatures):
        s["status"] = status_of(chk)
    rec["status"] = ("error" if res.error else "unsigned" if res.unsigned
                     else _file_status([s["status"] for s in rec["signatures"]]))
    rec["ok"] = rec["status"] == "trusted"
    rec["signers"] = [{"subject": c.signer_subject, "fingerprint": c.signer_fingerprint} for c in res.signatures]
    return rec


_STYLE = {"trusted": "[green]OK[/green]", "not-checked": "[yellow]INTACT, SIGNER NOT CHECKED[/yellow]",
          "unsigned": "[yellow]UNSIGNED[/yellow]"}


def _rows(table: Table, rec: dict) -> None:
    """Table rows of one record; names, paths and reasons are plain :class:`rich.text.Text` (no
    markup, no emoji codes), only the result cell is styled."""
    path = Text(rec["path"])
    if rec.get("error"):
        table.add_row(path, "", "", "[red]ERROR[/red]", Text(rec["error"]))
    elif rec["kind"] == "c2pa":
        status = _STYLE.get(rec["status"], f"[red]FAILED ({rec['status']})[/red]")
        reasons = "; ".join(rec.get("reasons") or [])
        if rec["unsigned"]:
            reasons = reasons or "no C2PA manifest"
        elif not reasons:
            reasons = _trust_words(rec["status"])
        table.add_row(path, "C2PA manifest", Text(rec.get("signer") or ""), status, Text(reasons))
    elif rec["unsigned"]:
        table.add_row(path, "", "", _STYLE["unsigned"], "no DICOM digital signature (not verified)")
    else:
        for s in rec["signatures"]:
            status = _STYLE.get(s["status"], f"[red]FAILED ({s['status']})[/red]")
            reasons = "; ".join(s["reasons"]) or _trust_words(s["status"])
            table.add_row(path, Text(str(s["signature_uid"] or "?")[-24:]), Text(s["signer"] or ""), status,
                          Text(reasons))


def _trust_words(status: str) -> str:
    return {"trusted": "intact, signer trusted",
            "not-checked": "intact; signer NOT checked against any trust store (give --trust)"}.get(status, status)


def register(app: typer.Typer) -> None:
    """Add sign, verify to ``app``."""
    app.command("sign")(sign_cmd)
    app.command("verify")(verify_cmd)
