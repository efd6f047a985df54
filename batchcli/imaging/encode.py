"""Encoding and the durable write of an output: one entry point (`save`), so every output is
written the same way (atomic, fsynced, failures as item errors)."""

from __future__ import annotations

import errno
import hashlib
import os
import struct

from batchcli.atomic import atomic_write, atomic_write_many
from batchcli.errors import ItemError
from batchcli.imaging import heif, metadata
from batchcli.imaging.frame import Frame
from batchcli.imaging.lazy import cv2, np
from batchcli.imaging.pixels import apply_orientation, flatten_alpha, to_uint8

WRITABLE = {"jpg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp", "avif": ".avif", "heic": ".heic"}
EXTENSIONS = {"jpg": "jpg", "png": "png", "webp": "webp", "tiff": "tif", "bmp": "bmp", "avif": "avif", "heic": "heic"}


def can_write(fmt: str) -> bool:
    """Whether `fmt` can be encoded here (HEIC and AVIF depend on pillow-heif and Pillow's build)."""
    if fmt not in WRITABLE:
        return False
    return fmt not in ("avif", "heic") or heif.can_write(fmt)


def output_format(frame: Frame) -> str:
    fmt = frame.out_format or frame.fmt
    return fmt if can_write(fmt) else "png"


def encode(frame: Frame) -> tuple[bytes, str]:
    """Encode a frame. Returns (bytes, format). Orientation still pending is applied first, so the
    output displays upright even though OpenCV writes no EXIF. JPEG gets alpha flattened on
    `encode["background"]` (white by default); JPEG, WebP, AVIF and BMP are 8-bit, PNG, TIFF and
    HEIC keep 16 bits (HEIC as 10-bit). Metadata goes in as imaging.metadata says. With
    `encode["max_bytes"]`, the highest quality up to `quality` whose output fits (see _within)."""
    img = apply_orientation(frame.img, frame.orientation)
    fmt = output_format(frame)
    settings = frame.encode
    q = settings.get("quality")
    quality = int(q if q is not None else 90)
    if fmt in ("jpg", "webp", "avif", "bmp"):
        img = to_uint8(img)
    if fmt == "jpg" and img.ndim == 3 and img.shape[2] == 4:
        img = flatten_alpha(img, settings.get("background", (255, 255, 255)))
    limit = settings.get("max_bytes")
    if limit and fmt in ("jpg", "webp", "avif", "heic") and not settings.get("lossless"):
        return _within(frame, img, fmt, quality, int(limit)), fmt
    return _encode(frame, img, fmt, quality), fmt


_MAX_SIDE = {"jpg": ("JPEG", 65500), "webp": ("WebP", 16383)}
"""The longest side each encoder takes (libjpeg's JPEG_MAX_DIMENSION, the WebP format's 14 bits)."""


def _encode(frame: Frame, img: np.ndarray, fmt: str, quality: int) -> bytes:
    settings = frame.encode
    if fmt in ("heic", "avif"):
        return heif.encode(img, fmt, quality, metadata.blocks(frame, img, fmt))
    params: list[int] = []
    if fmt == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        if settings.get("progressive"):
            params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101 if settings.get("lossless") else quality]
    elif fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(settings.get("compression", 3))]
    elif fmt == "tiff":
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 5]  # LZW: lossless and widely readable
    name, side = _MAX_SIDE.get(fmt, ("", 0))
    if side and max(img.shape[:2]) > side:
        raise ItemError("encode", f"cannot encode as {fmt}: the image is {img.shape[1]}x{img.shape[0]}, over the "
                                  f"{name} limit of {side} px a side (resize it, or convert png or tiff)")
    try:
        ok, buf = cv2.imencode(WRITABLE[fmt], np.ascontiguousarray(img), params)
    except cv2.error as exc:
        line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "encoder error"
        raise ItemError("encode", f"cannot encode as {fmt}: {line[:200]}") from None
    if not ok:
        raise ItemError("encode", f"cannot encode as {fmt}")
    data = buf.tobytes()
    if fmt == "tiff" and img.ndim == 3 and img.shape[2] == 4:
        data = _tiff_alpha(data)
    return metadata.embed(data, fmt, frame, img)


def _tiff_alpha(data: bytes) -> bytes:
    """OpenCV's TIFF with its fourth sample declared as alpha (ExtraSamples = 2, unassociated):
    OpenCV writes none, so readers that follow the TIFF standard take the fourth channel for an
    unknown extra one and show the picture opaque. The first IFD is copied to the end of the file
    with the tag added (its values stay where they are)."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or struct.unpack(order + "H", data[2:4])[0] != 42:
        return data
    ifd = struct.unpack(order + "I", data[4:8])[0]
    count = struct.unpack(order + "H", data[ifd:ifd + 2])[0]
    entries = [data[ifd + 2 + 12 * k:ifd + 14 + 12 * k] for k in range(count)]
    if any(struct.unpack(order + "H", e[:2])[0] == 338 for e in entries):
        return data
    entries.append(struct.pack(order + "HHIHH", 338, 3, 1, 2, 0))  # SHORT, count 1, value 2
    entries.sort(key=lambda e: struct.unpack(order + "H", e[:2])[0])
    following = data[ifd + 2 + 12 * count:ifd + 6 + 12 * count]
    body = data + b"\x00" * (len(data) % 2)  # an IFD starts on a word boundary
    new = struct.pack(order + "H", len(entries)) + b"".join(entries) + following
    return body[:4] + struct.pack(order + "I", len(body)) + body[8:] + new


def _within(frame: Frame, img: np.ndarray, fmt: str, top: int, limit: int) -> bytes:
    """The output at the highest quality in 1..top whose file (metadata included) is at most
    `limit` bytes, by bisection: at most 7 encodes for top <= 127. The quality chosen goes into
    the item's record (meta.convert); a file over the limit even at quality 1 fails the item."""
    lo, hi, best, smallest, tries = 0, top + 1, b"", 0, 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        data = _encode(frame, img, fmt, mid)
        tries += 1
        if len(data) <= limit:
            lo, best = mid, data
        else:
            hi, smallest = mid, len(data)
    if not best:
        raise ItemError("encode", f"cannot fit {fmt} in {_kib(limit)}: {_kib(smallest)} even at quality 1 "
                                  "(resize it smaller first)")
    frame.meta["convert"] = {"quality": lo, "max_bytes": limit, "encodes": tries}
    return best


def _kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n < 10 << 20 else f"{n / (1 << 20):.1f} MiB"


def save(frame: Frame, dest_stem: str) -> tuple[str, int, str]:
    """Encode and write atomically to `dest_stem` + the format's extension.
    Returns (path, bytes, sha256 hex)."""
    path, data = encode_to(frame, dest_stem)
    write(path, data)
    return path, len(data), hashlib.sha256(data).hexdigest()


def encode_to(frame: Frame, dest_stem: str) -> tuple[str, bytes]:
    """The output path for `dest_stem` (the format's extension added) and the encoded bytes."""
    data, fmt = encode(frame)
    return f"{dest_stem}.{EXTENSIONS[fmt]}", data


def write(path: str, data: bytes) -> float:
    """The durable, atomic write of an output; failures as ItemError (disk_full, io).
    Returns the file's mtime (the output catalog records it)."""
    try:
        atomic_write(path, data)
        return os.stat(path).st_mtime
    except OSError as exc:
        raise _write_error(path, exc) from None


def write_many(entries: list[tuple[str, bytes]]) -> list[float | ItemError]:
    """`write` for a group of outputs, durable together (one journal commit for the group, see
    atomic_write_many): for each, its mtime or the ItemError that failed it."""
    return [r if isinstance(r, float) else _write_error(path, r)
            for (path, _), r in zip(entries, atomic_write_many(entries))]


def _write_error(path: str, exc: OSError) -> ItemError:
    if exc.errno == errno.ENOSPC:
        return ItemError("disk_full", f"no space left writing {path}")
    return ItemError("io", f"cannot write {path}: {exc.strerror or exc}")
