"""The licences of medforensics' runtime dependencies, read from the installed packages' metadata.

    python benchmarks/licences.py [--extras] [--transitive]

Prints a Markdown table (name, installed version, licence, what it is for) of every requirement in
``[project] dependencies`` of the installed medforensics, and flags copyleft licences: ``strong``
(GPL, AGPL: linking obliges the whole program to the same terms) and ``weak`` (LGPL, MPL, EPL,
CDDL: obligations on the library itself). ``--extras`` adds the optional extras (the GPL JPEG
plugin is one); ``--transitive`` also lists every copyleft package among everything the runtime
dependencies pull in. The licence is the package's ``License-Expression`` (an SPDX expression),
else its ``License`` field when that is a short name, else its trove classifiers. A package's
metadata speaks for its own code; what its wheel bundles (native libraries) may say more.
Exits 1 when a runtime dependency is strong copyleft, so the check can run in CI.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

#: What each runtime dependency is for (the metadata's summary says what it is, not why it is here).
PURPOSE = {
    "numpy": "arrays: every image",
    "scipy": "filters, statistics, interpolation (detectors, forge)",
    "scikit-image": "image processing in the forge's edits",
    "opencv-python-headless": "image processing, PNG encoding of report figures, forge images",
    "pydicom": "DICOM reading and writing",
    "pylibjpeg": "plugin framework for the openjpeg and RLE decoders below",
    "pylibjpeg-openjpeg": "JPEG 2000 decoding and encoding (OpenJPEG)",
    "pylibjpeg-rle": "RLE Lossless decoding and encoding",
    "pyjpegls": "JPEG-LS decoding and encoding (CharLS)",
    "python-gdcm": "JPEG baseline/extended (8 and 12 bit)/lossless, JPEG-LS, JPEG 2000 decoding (GDCM)",
    "nibabel": "NIfTI volumes (reading and writing)",
    "pillow": "PNG/JPEG reading and JPEG quantisation tables, JPEG baseline in DICOM (decoding, the forge's encoding)",
    "tifffile": "writing TIFF files",
    "c2pa-python": "C2PA content credentials (provenance)",
    "typer": "command line",
    "rich": "console output",
    "jinja2": "HTML reports",
    "pydicom-data": "DICOM test and demo files",
    "torch": "learned detectors, forge generators",
    "torchvision": "backbones of the learned models",
    "safetensors": "model weights",
    "matplotlib": "plots of the forge's realism checks and learning evaluations",
    "cryptography": "signatures and keys (provenance ledger, C2PA manifests)",
    "psycopg": "PostgreSQL ledger",
    "fastapi": "HTTP service",
    "uvicorn": "HTTP server",
    "scikit-learn": "training and evaluation of the learned detectors",
    "monai": "networks of the autoencoder and 3D CT detectors",
    "grad-cam": "saliency maps of the learned detectors",
    "diffusers": "diffusion networks of the forge's generator zoo",
    "pylibjpeg-libjpeg": "optional [gpl-jpeg]: libjpeg decoders; not needed, GPL",
    "pytest": "tests",
    "httpx": "tests of the HTTP service",
}

#: Licences of optional packages, for when they are not installed (then the metadata cannot say).
KNOWN_IF_ABSENT = {"pylibjpeg-libjpeg": "GPL-3.0 (its project page; not installed here)"}

_STRONG = re.compile(r"\b(A?GPL|GNU (Affero )?General Public)", re.I)
_WEAK = re.compile(r"\b(LGPL|GNU Lesser|GNU Library|MPL|Mozilla Public|EPL|Eclipse Public|CDDL|EUPL|OSL)", re.I)


def licence(dist: md.Distribution) -> str:
    meta = dist.metadata
    expr = (meta.get("License-Expression") or "").strip()
    if expr:
        return expr
    text = (meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 60:
        return text
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    classifiers = [c for c in classifiers if c != "OSI Approved"]
    return " / ".join(classifiers) or (text.splitlines()[0][:60] if text else "unknown (see the package)")


def copyleft(lic: str) -> str:
    """'strong', 'weak' or '' for a licence string (a GPL with a linking exception is not flagged)."""
    if re.search(r"WITH\s+(GCC|Classpath|LLVM)", lic, re.I) and not re.search(r"\bAND\b|\bOR\b", lic):
        return ""
    if _WEAK.search(lic):
        return "weak"
    if _STRONG.search(lic.replace("LGPL", "")):
        return "strong"
    return ""


def requirements(extras: bool) -> list[tuple[Requirement, str]]:
    """(requirement, extra or '') for medforensics' runtime dependencies, and its extras if asked."""
    out = []
    for line in md.requires("medforensics") or []:
        req = Requirement(line)
        extra = ""
        if req.marker is not None:
            m = re.search(r'extra\s*==\s*"([^"]+)"', str(req.marker))
            if m:
                extra = m.group(1)
            elif not req.marker.evaluate():
                continue
        if extra and not extras:
            continue
        out.append((req, extra))
    return out


def closure(reqs: list[Requirement]) -> set[str]:
    """Canonical names of every installed package the requirements pull in (with their extras)."""
    seen: set[str] = set()
    todo = [(r, tuple(r.extras)) for r in reqs]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        for line in dist.requires or []:
            sub = Requirement(line)
            env_ok = sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (*extras, ""))
            if env_ok:
                todo.append((sub, tuple(sub.extras)))
    return {k.split("[")[0] for k in seen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extras", action="store_true", help="also the optional extras ([test], [gpl-jpeg])")
    ap.add_argument("--transitive", action="store_true", help="also copyleft packages pulled in indirectly")
    args = ap.parse_args(argv)

    reqs = requirements(args.extras)
    print("| Dependency | Version | Licence | Copyleft | For |")
    print("| --- | --- | --- | --- | --- |")
    strong = []
    for req, extra in reqs:
        try:
            dist = md.distribution(req.name)
            version, lic = dist.version, licence(dist)
        except md.PackageNotFoundError:
            version, lic = "not installed", KNOWN_IF_ABSENT.get(canonicalize_name(req.name), "?")
        flag = copyleft(lic)
        if flag == "strong" and not extra:
            strong.append(req.name)
        name = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        name += f" (extra `{extra}`)" if extra else ""
        purpose = PURPOSE.get(canonicalize_name(req.name), "")
        print(f"| {name} | {version} | {lic} | {('**' + flag + '**') if flag else ''} | {purpose} |")
    if args.transitive:
        direct = {canonicalize_name(r.name) for r, _ in reqs}
        indirect = sorted(closure([r for r, e in reqs if not e]) - direct)
        flagged = [(n, md.distribution(n).version, licence(md.distribution(n))) for n in indirect]
        flagged = [(n, v, lic, copyleft(lic)) for n, v, lic in flagged if copyleft(lic)]
        print(f"\nPulled in indirectly: {len(indirect)} packages; copyleft among them:"
              + ("" if flagged else " none"))
        for n, v, lic, flag in flagged:
            print(f"- {n} {v}: {lic} ({flag})")
            if flag == "strong":
                strong.append(n)
    if strong:
        print(f"\nStrong copyleft in the runtime dependencies: {', '.join(strong)}", file=sys.stderr)
    return 1 if strong else 0


if __name__ == "__main__":
    sys.exit(main())
