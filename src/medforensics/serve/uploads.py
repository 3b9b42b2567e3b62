"""Uploads to the review service: limited in size and number, accepted by content (never by
name), and written only inside the job's own folder under the service's data folder.

>>> str(safe_relative("study 1/series 2/IM0001.dcm"))
'study 1/series 2/IM0001.dcm'
>>> safe_relative("../../etc/passwd")
Traceback (most recent call last):
medforensics.core.MedForensicsError: ../../etc/passwd: unsafe file name (absolute, or '..' in it)
>>> file_type(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(124), "a.png")
'PNG'
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path, PurePosixPath

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..core import MedForensicsError

__all__ = ["file_type", "receive_upload", "safe_relative"]

_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_relative(name: str) -> PurePosixPath:
    """The relative path an uploaded file's name asks for (a folder upload sends
    ``folder/sub/file``), or an error for a name that would leave the job's folder."""
    text = name.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if "\x00" in text or text.startswith("/") or _DRIVE.match(text) or not parts or ".." in parts:
        raise MedForensicsError(name, "unsafe file name (absolute, or '..' in it)")
    if len(parts) > 32 or any(len(p.encode()) > 255 for p in parts):
        raise MedForensicsError(name[:200], "file name too long")
    return PurePosixPath(*parts)


def file_type(head: bytes, name: str) -> str | None:
    """The kind of image file that starts with ``head`` (its first 132 bytes or more):
    ``DICOM``, ``PNG``, ``JPEG``, ``TIFF``, ``NIfTI``, or ``None``."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540) or int.from_bytes(head[:4], "big") in (348, 540):
        return "NIfTI"
    if head.startswith(b"\x1f\x8b") and name.lower().endswith(".nii.gz"):
        return "NIfTI"
    return None


def _write(folder: Path, accepted: list[tuple[UploadFile, PurePosixPath]]) -> None:
    """Write the checked files into the job's new ``folder``, each a new file inside it."""
    folder.mkdir(parents=True)
    root = folder.resolve()
    for f, rel in accepted:
        dest = folder.joinpath(*rel.parts)
        if not dest.resolve().is_relative_to(root):
            raise OSError(f"{rel}: outside the job's folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest, "xb") as out:
            shutil.copyfileobj(f.file, out, 1024 * 1024)


def _limit(request: Request, max_bytes: int):
    """``request``'s receive channel, cut off with 413 once the body passes ``max_bytes``."""
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message.get("type") == "http.request":
            received += len(message.get("body", b""))
            if received > max_bytes:
                raise HTTPException(413, f"upload larger than the limit of {max_bytes // (1024 * 1024)} MB")
        return message

    return receive


async def receive_upload(request: Request, service, who: str):
    """Read a multipart upload (field ``files``), check every file, then write them into a new
    job's folder and queue the job; returns the job."""
    settings = service.settings
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes:
        raise HTTPException(413, f"upload larger than the limit of {settings.max_upload_mb:g} MB")
    limited = Request(request.scope, receive=_limit(request, settings.max_upload_bytes))
    try:
        form = await limited.form(max_files=settings.max_upload_files, max_fields=50)
    except HTTPException:
        raise
    except Exception as e:  # noqa: BLE001 - starlette's MultiPartException and malformed bodies
        raise HTTPException(400, f"not a valid multipart upload: {e}") from None
    try:
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise HTTPException(400, "no files: send them in the multipart field 'files'")
        accepted: list[tuple[UploadFile, PurePosixPath]] = []
        seen: set[PurePosixPath] = set()
        hidden = 0
        for f in files:
            try:
                rel = safe_relative(f.filename or "")
            except MedForensicsError as e:
                raise HTTPException(400, str(e)) from None
            if any(p.startswith(".") for p in rel.parts):
                hidden += 1     # .DS_Store and the like in a folder upload
                continue
            if rel in seen:
                raise HTTPException(400, f"{rel}: sent twice in one upload")
            seen.add(rel)
            head = f.file.read(132)
            f.file.seek(0)
            if file_type(head, rel.name) is None:
                raise HTTPException(415, f"{rel}: not a DICOM (with its 'DICM' preamble), PNG, JPEG, TIFF or NIfTI file")
            accepted.append((f, rel))
        if not accepted:
            raise HTTPException(400, "no image files in the upload")
        folders = {parent for _, rel in accepted for parent in rel.parents}
        clash = next((rel for _, rel in accepted if rel in folders), None)
        if clash is not None:
            raise HTTPException(400, f"{clash}: sent both as a file and as a folder")
        job = service.store.add_job(who, "upload", total=len(accepted),
                                    message=f"{hidden} hidden file(s) left out" if hidden else "")
        folder = settings.data / "uploads" / f"job-{job.id}"
        try:     # off the event loop: writing a large upload must not stall the other requests
            await run_in_threadpool(_write, folder, accepted)
        except OSError as e:
            service.store.update_job(job.id, state="failed", message=f"the files could not be stored ({e.strerror or e})")
            shutil.rmtree(folder, ignore_errors=True)      # this job's own new folder, partly written
            raise HTTPException(400, f"job {job.id}: the files could not be stored ({e.strerror or type(e).__name__})") from None
        service.store.audit_append(who, "upload", f"job:{job.id}", "", f"{len(accepted)} file(s)")
        service.submit(job.id, [folder])
        return job
    finally:
        await form.close()
