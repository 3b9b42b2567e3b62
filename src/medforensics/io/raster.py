"""PNG, JPEG and TIFF radiographs: 8- and 16-bit gray, colour noted then reduced to gray."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image as PILImage, UnidentifiedImageError

from ..core import Image, MedForensicsError, ignoring_warnings
from .budget import WORK_RASTER_COLOUR, WORK_RASTER_GRAY, check

FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}


def file_digest(path: Path) -> str:
    """First 32 hex digits of the SHA-256 of a file: the uid of images that carry none."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:32]


def _to_gray(arr: np.ndarray, mode: str) -> tuple[np.ndarray, bool, bool]:
    """(gray float32, was colour, colour channels actually differ)."""
    if arr.ndim == 2:
        return arr.astype(np.float32), False, False
    rgb = arr[..., :3].astype(np.float32)
    differ = bool(np.any(np.abs(rgb[..., 0] - rgb[..., 1]) > 1) or np.any(np.abs(rgb[..., 1] - rgb[..., 2]) > 1))
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return gray, True, differ


#: Bytes per pixel of Pillow's own decoded buffer, by mode (Pillow keeps 3-band images in 4 bytes).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_GRAY_MODES = {"1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}


def _check_budget(path: Path, pil: PILImage.Image, budget: int | str | None) -> None:
    """Refuse, from the header Pillow has read (``Image.open`` decodes nothing), an image that
    would take more than the decode budget to load: Pillow's buffer, numpy's copy of it and the
    float32 gray result (and, for colour, the float32 channels)."""
    width, height = pil.size
    mode = pil.mode
    itemsize = _MODE_BYTES.get(mode, 4)
    work = WORK_RASTER_GRAY + itemsize if mode in _GRAY_MODES else WORK_RASTER_COLOUR
    check(path, {"height": height, "width": width}, itemsize, work, budget, note=f"Pillow mode {mode}")


#: EXIF tags kept: Software, ProcessingSoftware, Make and ImageDescription (generators and editors name themselves there)
EXIF_TAGS = (305, 11, 315, 270)


def container_metadata(pil: PILImage.Image) -> dict:
    """What an opened, decoded image file says beside its pixels, for the ``container`` detector:
    ``text`` (PNG text chunks), ``xmp`` (the XMP packet, or ""), ``exif`` (the :data:`EXIF_TAGS`
    as text), ``exif_error`` (when the EXIF directory is damaged) and ``quantization`` (a JPEG's
    tables, else ``None``).

    Read once the pixels are decoded: a PNG's text and EXIF chunks may follow them, and Pillow
    decodes the whole image to reach them.

    >>> from PIL import Image, PngImagePlugin
    >>> import io
    >>> info = PngImagePlugin.PngInfo(); info.add_text("parameters", "a chest x-ray, Steps: 20")
    >>> buf = io.BytesIO(); Image.new("L", (8, 8)).save(buf, "PNG", pnginfo=info)
    >>> container_metadata(Image.open(buf))["text"]
    {'parameters': 'a chest x-ray, Steps: 20'}
    """
    out: dict = {"text": {}, "xmp": "", "exif": {}, "quantization": None}
    if pil.format == "PNG":
        out["text"] = {str(k): str(v) for k, v in (pil.text or {}).items()}
    try:
        out["exif"] = {k: str(v) for k, v in pil.getexif().items() if k in EXIF_TAGS}
    except Exception as e:  # noqa: BLE001 - Pillow raises KeyError & co. on a damaged TIFF/EXIF directory
        out["exif_error"] = f"unreadable EXIF/TIFF tags ({type(e).__name__}: {e})"[:200]
    for v in (pil.info.get("xmp"), pil.info.get("XML:com.adobe.xmp"), out["text"].get("XML:com.adobe.xmp")):
        if v:
            out["xmp"] = v.decode("utf-8", "ignore") if isinstance(v, bytes) else str(v)
            break
    if pil.format == "JPEG":
        out["quantization"] = getattr(pil, "quantization", None)
    return out


def load_raster(path: str | Path, budget: int | str | None = None) -> Image:
    """Load a PNG, JPEG or TIFF file as a 2D gray :class:`Image` (modality ``XR``).

    ``meta`` records ``bit_depth``, ``mode`` (the PIL mode), ``color`` (stored as colour),
    ``color_differs`` (the channels are not all equal), ``n_frames`` and ``container`` (what the file says
    beside its pixels: :func:`container_metadata`); for a multi-page TIFF
    the first page is used.

    ``budget``: the most memory loading may take (bytes or ``"512M"``; default
    ``MEDFORENSICS_DECODE_BUDGET``, else 2 GiB); the size is taken from the header and a larger
    image is refused before it is decoded (:mod:`.budget`). Pillow's own limit
    (``MAX_IMAGE_PIXELS``) still refuses more than twice its pixel count as a decompression bomb.
    """
    path = Path(path)
    try:
        with ignoring_warnings():
            pil = PILImage.open(path)
            fmt = FORMATS.get(pil.format or "")
            if fmt is None:
                raise MedForensicsError(path, f"unsupported image format {pil.format!r}")
            n_frames = int(getattr(pil, "n_frames", 1) or 1)
            mode = pil.mode
            _check_budget(path, pil, budget)
            opened = pil
            if mode == "P" or mode == "PA":
                pil = pil.convert("RGBA" if "transparency" in pil.info or mode == "PA" else "RGB")
            elif mode == "1":
                pil = pil.convert("L")
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                pil = pil.convert("RGB")
            arr = np.asarray(pil)
            container = container_metadata(opened)
    except MedForensicsError:
        raise
    except UnidentifiedImageError:
        raise MedForensicsError(path, "not an image file (format not recognised)") from None
    except PILImage.DecompressionBombError as e:
        raise MedForensicsError.wrap(path, e, "refused: the image declares more pixels than the decoder allows "
                                     "(a decompression bomb?)") from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on damaged files (TypeError from a TIFF without dimensions, struct.error, ...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MedForensicsError(path, f"damaged or truncated image file: {msg}") from None
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # gray+alpha or RGBA: drop alpha
        arr = arr[..., :-1] if arr.shape[-1] == 4 else arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise MedForensicsError(path, f"unexpected pixel array of shape {arr.shape}")
    gray, color, differs = _to_gray(arr, mode)
    bit_depth = {np.dtype("uint8"): 8, np.dtype("uint16"): 16, np.dtype("int32"): 32,
                 np.dtype("float32"): 32, np.dtype("bool"): 1}.get(arr.dtype, arr.dtype.itemsize * 8)
    if mode.startswith("I;16") or (mode == "I" and int(arr.max(initial=0)) < 65536):
        bit_depth = 16
    meta = {"bit_depth": bit_depth, "mode": mode, "color": color, "color_differs": differs, "n_frames": n_frames,
            "container": container}
    return Image(pixels=gray, spacing=(None, None), modality="XR", format=fmt, sources=[path],
                 uid=file_digest(path), meta=meta)
