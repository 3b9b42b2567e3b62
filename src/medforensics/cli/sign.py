"""``medforensics sign`` and ``medforensics verify``: DICOM digital signatures (and, in ``verify``,
C2PA manifests of PNG/JPEG files).

``sign`` writes signed copies under ``--out`` (the layout of :mod:`medforensics.io.plan`: a
folder's layout is kept below ``--out`` without the folder's own name, a file given by name goes to
its top; every output is checked to be new before anything is written: exit 2 otherwise); exit 1
when any input failed. Inputs follow the planner's rule: ``sign`` takes DICOM files, ``verify``
DICOM, PNG and JPEG; other files found in folders are skipped and counted, hidden names too.
``verify`` prints one row per signature; exit 0 only when every file is signed and every
signature verified -- an unsigned file counts as not verified.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .console import UsageError, err, new_output, out
from ..progress import progress_bar
from ..core import MedForensicsError

_RASTER = {"png", "jpeg"}


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
    from ..provenance.keys import load_identity
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
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = done = 0
    with progress_bar("signing") as bar:
        task = bar.add_task("", total=len(files))
        for inp, dst in files:
            src = inp.path
            bar.update(task, description=escape(src.name))
            try:
                if inp.problem:
                    raise MedForensicsError(src, inp.problem)
                dst.parent.mkdir(parents=True, exist_ok=True)
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
    trust: Optional[List[Path]] = typer.Option(None, "--trust", help="Trusted CA certificate (PEM/DER); repeatable."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write one JSON object per file (new file)."),
) -> None:
    """Verify DICOM digital signatures (and C2PA manifests of PNG/JPEG files).

    Exit 0 only when every file carries signatures and all of them verified; unsigned files,
    broken or untrusted signatures and unreadable files give exit 1.
    """
    from ..provenance.keys import load_certificates
    from ..provenance.signature import verify_file

    new_output(json_out)
    anchors = [c for p in (trust or []) for c in load_certificates(p)]
    files = _plan(paths, "verify").inputs
    table = Table(show_lines=False, pad_edge=False)
    for col in ("file", "signature", "signer", "result", "reasons"):
        table.add_column(col, overflow="fold")
    records, n_ok = [], 0
    with progress_bar("verifying") as bar:
        task = bar.add_task("", total=len(files))
        for inp in files:
            bar.update(task, description=escape(inp.path.name))
            rec = _verify_one(inp.path, inp.kind, inp.problem, anchors, verify_file)
            records.append(rec)
            n_ok += bool(rec["ok"])
            _rows(table, rec)
            bar.advance(task)
    out.print(table)
    n_unsigned = sum(1 for r in records if r.get("unsigned"))
    err.print(f"verified {n_ok} of {len(records)} file(s)"
              + (f"; {n_unsigned} unsigned (counted as not verified)" if n_unsigned else ""))
    if json_out is not None:
        with open(json_out, "x", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, default=str) + "\n")
    if n_ok != len(records) or not records:
        raise typer.Exit(1)


def _verify_one(src: Path, kind: str | None, problem: str | None, anchors, verify_file) -> dict:
    if problem:
        return {"path": str(src), "kind": "unknown", "ok": False, "unsigned": True, "error": problem, "signatures": []}
    if kind in _RASTER:
        try:
            from ..provenance.c2pa_manifest import verify_manifest
        except ImportError as e:
            return {"path": str(src), "kind": "c2pa", "ok": False, "unsigned": True, "signatures": [],
                    "error": f"C2PA verification is not available ({e})"}
        try:
            res = verify_manifest(src, trust=anchors or None)
        except MedForensicsError as e:
            return {"path": str(src), "kind": "c2pa", "ok": False, "unsigned": True, "signatures": [],
                    "error": e.problem}
        return {"path": str(src), "kind": "c2pa", "ok": bool(res.ok), "unsigned": not res.present,
                "error": None, "signer": res.signer, "reasons": list(res.reasons), "manifest": res.to_dict(),
                "signatures": []}
    rec = verify_file(src, trust=anchors or None).to_dict()
    rec["kind"] = "dicom"
    return rec


def _rows(table: Table, rec: dict) -> None:
    path = escape(rec["path"])
    if rec.get("error"):
        table.add_row(path, "", "", "[red]ERROR[/red]", escape(rec["error"]))
    elif rec["kind"] == "c2pa":
        status = ("[green]OK[/green]" if rec["ok"] else "[yellow]UNSIGNED[/yellow]" if rec["unsigned"]
                  else "[red]FAILED[/red]")
        table.add_row(path, "C2PA manifest", escape(rec.get("signer") or ""), status,
                      escape("; ".join(rec.get("reasons") or []) or ("no C2PA manifest" if rec["unsigned"] else "")))
    elif rec["unsigned"]:
        table.add_row(path, "", "", "[yellow]UNSIGNED[/yellow]", "no DICOM digital signature (not verified)")
    else:
        for s in rec["signatures"]:
            status = "[green]OK[/green]" if s["ok"] else "[red]FAILED[/red]"
            trust = {True: "trusted", False: "untrusted", None: "trust not checked"}[s["trusted"]]
            reasons = "; ".join(s["reasons"]) or f"intact, {trust}"
            table.add_row(path, escape(str(s["signature_uid"] or "?")[-24:]), escape(s["signer"] or ""), status,
                          escape(reasons))


def register(app: typer.Typer) -> None:
    """Add sign, verify to ``app``."""
    app.command("sign")(sign_cmd)
    app.command("verify")(verify_cmd)
