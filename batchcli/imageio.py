"""Decode and encode, with limits checked from the header before any pixel is allocated.

One entry point for decoding (`load`), one for encoding (`save`), so every file is judged the
same way. OpenCV decodes from bytes (`cv2.imdecode`), which, unlike `cv2.imread`, refuses a
truncated JPEG instead of returning it padded with grey.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from batchcli.atomic import atomic_write
from batchcli.errors import ItemError
from batchcli.ops.base import Frame

DEFAULT_MAX_FILE_SIZE = 200 * 1024 * 1024
DEFAULT_MAX_PIXELS = 150_000_000

# Pillow format name -> our short extension
_PIL_FORMATS = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp",
    "GIF": "gif", "PPM": "ppm", "JPEG2000": "jp2", "AVIF": "avif", "HEIF": "heic",
}
WRITABLE = {"jpg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp"}
EXTENSIONS = {"jpg": "jpg", "png": "png", "webp": "webp", "tiff": "tif", "bmp": "bmp"}
_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass(frozen=True)
class Limits:
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS


def read_bytes(path: str, limits: Limits) -> bytes:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_file_size:
                raise ItemError("too_large", f"file is {size} bytes, over --max-file-size {limits.max_file_size}")
            data = fh.read(limits.max_file_size + 1)
    except IsADirectoryError:
        raise ItemError("unreadable", "is a directory") from None
    except FileNotFoundError:
        raise ItemError("unreadable", "no such file (deleted, or a broken symlink)") from None
    except PermissionError:
        raise ItemError("unreadable", "permission denied") from None
    except OSError as exc:
        raise ItemError("io", f"read error: {exc.strerror or exc}") from None
    if not data:
        raise ItemError("decode", "empty file (0 bytes)")
    return data


@dataclass
class Header:
    width: int
    height: int
    fmt: str
    orientation: int = 1
    frames: int = 1


def sniff(data: bytes) -> Header | None:
    """Read size, format and EXIF orientation from the header without decoding pixels."""
    from PIL import Image  # lazy: only workers need it

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = _PIL_FORMATS.get(im.format or "", (im.format or "").lower())
            orientation = 1
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # a broken EXIF block must not fail the image
                orientation = 1
            if orientation not in range(1, 9):
                orientation = 1
            frames = int(getattr(im, "n_frames", 1) or 1)
            return Header(im.width, im.height, fmt, orientation, frames)
    except Image.DecompressionBombError as exc:  # still gives us no size; treat as too large
        raise ItemError("too_large", f"decompression bomb: {exc}") from None
    except Exception:
        return None


def load(path: str, limits: Limits = Limits(), shrink_for: Callable[[int, int], int] | None = None,
         data: bytes | None = None) -> Frame:
    """Read and decode one image. Raises ItemError with a one-line reason on any failure."""
    if data is None:
        data = read_bytes(path, limits)
    head = sniff(data)
    if head is not None:
        pixels = head.width * head.height
        if head.width <= 0 or head.height <= 0:
            raise ItemError("decode", f"invalid size {head.width}x{head.height} in header")
        if pixels > limits.max_pixels:
            raise ItemError("too_large", f"{head.width}x{head.height} = {pixels / 1e6:.0f} MP, over --max-pixels {limits.max_pixels / 1e6:.0f} MP")
    shrink = 1
    if head is not None and head.fmt == "jpg" and shrink_for is not None:
        w, h = (head.height, head.width) if head.orientation in (5, 6, 7, 8) else (head.width, head.height)
        shrink = shrink_for(w, h)
    buf = np.frombuffer(data, np.uint8)
    flags = (_REDUCED[shrink] if shrink in _REDUCED else cv2.IMREAD_UNCHANGED) | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else "decoder error"
        if "memory" in msg.lower():
            raise ItemError("too_large", f"decoder ran out of memory: {msg}") from None
        raise ItemError("decode", f"cannot decode: {msg}") from None
    if img is None or img.size == 0:
        if head is not None and head.fmt == "jpg" and b"\xff\xd9" not in data[-4096:]:
            raise ItemError("truncated", "truncated JPEG (no end-of-image marker)")
        if head is None:
            raise ItemError("decode", "not a recognised image format")
        raise ItemError("decode", f"cannot decode {head.fmt.upper()} data (corrupt, truncated or unsupported variant)")
    if head is None:
        fmt = "img"
        orientation, frames = 1, 1
        src_size = (img.shape[1], img.shape[0])
    else:
        fmt, orientation, frames = head.fmt, head.orientation, head.frames
        src_size = (head.width, head.height)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    frame = Frame(img=img, src=path, fmt=fmt, orientation=orientation, shrink=shrink, src_size=src_size)
    if frames > 1:
        frame.meta["frames"] = {"count": frames, "used": 1}
    return frame


_ORIENT = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: lambda a: cv2.transpose(a),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    fn = _ORIENT.get(orientation)
    return fn(img) if fn else img


def output_format(frame: Frame) -> str:
    fmt = frame.out_format or frame.fmt
    return fmt if fmt in WRITABLE else "png"


def encode(frame: Frame) -> tuple[bytes, str]:
    """Encode a frame. Returns (bytes, format). Orientation still pending is applied first, so the
    output displays upright even though OpenCV writes no EXIF."""
    img = apply_orientation(frame.img, frame.orientation)
    fmt = output_format(frame)
    params: list[int] = []
    q = frame.encode.get("quality")
    if fmt in ("jpg", "webp") and img.dtype != np.uint8:
        img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else np.clip(img, 0, 255).astype(np.uint8)
    if fmt == "jpg":
        if img.ndim == 3 and img.shape[2] == 4:
            img = flatten_alpha(img, frame.encode.get("background", (255, 255, 255)))
        params = [cv2.IMWRITE_JPEG_QUALITY, int(q if q is not None else 90)]
        if frame.encode.get("progressive"):
            params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(q if q is not None else 90)]
    elif fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(frame.encode.get("compression", 3))]
    ok, buf = cv2.imencode(WRITABLE[fmt], img, params)
    if not ok:
        raise ItemError("encode", f"cannot encode as {fmt}")
    return buf.tobytes(), fmt


def flatten_alpha(img: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    alpha = img[:, :, 3:4].astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
    bg = np.array(background, np.float32).reshape(1, 1, 3)
    if img.dtype == np.uint16:
        bg = bg * 257
    out = img[:, :, :3].astype(np.float32) * alpha + bg * (1 - alpha)
    return np.clip(out + 0.5, 0, np.iinfo(img.dtype).max).astype(img.dtype)


def save(frame: Frame, dest_stem: str) -> tuple[str, int, str]:
    """Encode and write atomically to `dest_stem` + the format's extension.
    Returns (path, bytes, sha256 hex)."""
    data, fmt = encode(frame)
    path = f"{dest_stem}.{EXTENSIONS[fmt]}"
    try:
        atomic_write(path, data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ItemError("disk_full", f"no space left writing {path}") from None
        raise ItemError("io", f"cannot write {path}: {exc.strerror or exc}") from None
    return path, len(data), hashlib.sha256(data).hexdigest()
