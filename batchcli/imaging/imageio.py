"""Decode, with limits checked from the header before any pixel is allocated; and the imaging
API in one name (headers, encode and pixels re-exported).

One entry point for decoding (`load`), one for encoding (`save` in imaging.encode), so every file
is judged the same way. OpenCV decodes from bytes (`cv2.imdecode`), which, unlike `cv2.imread`, refuses a
truncated JPEG instead of returning it padded with grey.

The decoding policy, pinned by tests/test_imageio.py against ../shared/corpus:

- Images keep their real form: 8- or 16-bit, gray, BGR or BGRA (palette and tRNS become BGRA).
  The EXIF orientation is read and left pending (`Frame.orientation`); `orient` or the encoder
  applies it, so outputs display upright.
- The header is read first (Pillow, then small parsers of our own for what Pillow cannot
  identify: PNG, BMP, GIF, WebP, AVIF, JPEG 2000, Radiance HDR). More pixels than
  `Limits.max_pixels` fail as ``too_large`` before anything is decoded.
- Multi-frame files (GIF, WebP, APNG, TIFF, MPO, AVIF sequences) give their first frame;
  `meta["frames"]` records it.
- 32-bit integer samples become 16-bit when the values fit, floating-point samples become 8 or
  16 bits (Radiance HDR is tone-mapped); anything else is ``unsupported``. CMYK decodes to BGR,
  CIE L*a*b* TIFF is converted with Pillow (OpenCV would read it as if it were RGB);
  `meta["decode"]` says so.
- A failed decode is classified from the bytes: ``truncated`` (the file ends early),
  ``unsupported`` (a valid file in a variant the decoder lacks: OJPEG, 2- and 4-bit or float
  TIFF, BMP-wrapped JPEG, SVG, tiled JPEG 2000), else ``decode``. Zero-byte files and text
  (HTML error pages saved as .jpg) say so.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Callable

from batchcli.errors import ItemError
from batchcli.imaging import heif, metadata
from batchcli.imaging import raw as rawfile
from batchcli.imaging.encode import EXTENSIONS, WRITABLE, can_write, encode, encode_to, output_format, save, write
from batchcli.imaging.frame import Frame
from batchcli.imaging.headers import (
    _REDUCED,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_PIXELS,
    Header,
    Limits,
    magic_format,
    read_bytes,
    sniff,
)
from batchcli.imaging.lazy import cv2, np
from batchcli.imaging.pixels import (
    apply_orientation,
    color_for,
    flatten_alpha,
    max_value,
    merge_alpha,
    split_alpha,
    to_uint8,
    upright,
)
from batchcli.units import fmt_bytes, fmt_count

# The imaging API in one name: decoding lives here, the rest in headers, encode and pixels.
__all__ = [
    "DEFAULT_MAX_FILE_SIZE", "DEFAULT_MAX_PIXELS", "EXTENSIONS", "WRITABLE", "Frame", "Header", "Limits",
    "apply_orientation", "can_write", "color_for", "encode", "encode_to", "flatten_alpha", "load", "magic_format",
    "max_value", "merge_alpha", "output_format", "read_bytes", "save", "sniff", "split_alpha", "to_uint8", "upright",
    "write",
]

# --- classification of failures ----------------------------------------------------------------

def _text_kind(data: bytes) -> str | None:
    """'HTML', 'SVG', 'XML', 'JSON' or 'plain text' when the file is text, else None."""
    head = data[:1024]
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:
            return None
        text = head[:exc.start].decode("utf-8")
    low = text.lstrip("\ufeff \t\r\n").lower()
    if "<svg" in low[:1024]:
        return "SVG"
    if low.startswith(("<!doctype html", "<html")) or "<html" in low[:1024]:
        return "HTML"
    if low.startswith("<?xml") or low.startswith("<"):
        return "XML"
    if low.startswith(("{", "[")):
        return "JSON"
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return "plain text" if text and printable / len(text) > 0.95 else None


def _is_truncated(data: bytes, fmt: str | None) -> bool:
    """True when the bytes visibly end before the format says they should."""
    try:
        if fmt == "jpg":
            return b"\xff\xd9" not in data[-4096:]
        if fmt == "png":
            return b"IEND" not in data[-64:]
        if fmt == "gif":
            return not data.rstrip(b"\x00 \t\r\n").endswith(b";")
        if fmt == "webp":
            return struct.unpack("<I", data[4:8])[0] + 8 > len(data)
        if fmt == "bmp":
            return struct.unpack("<I", data[2:6])[0] > len(data)
        if fmt == "tiff" and data[:4] in (b"II*\x00", b"MM\x00*"):
            order = "<" if data[:2] == b"II" else ">"
            return struct.unpack(order + "I", data[4:8])[0] + 2 > len(data)
    except struct.error:
        return True
    return False


def _unsupported_reason(data: bytes, head: Header | None, fmt: str | None) -> str | None:
    """Why a well-formed file is one the decoder cannot read, or None."""
    if head is not None and head.fmt == "tiff" and head.tags:
        if head.tags.get("compression") in (6,):
            return "old-style JPEG compression in TIFF (OJPEG)"
        if head.tags.get("sample_format") == 3:
            return f"{head.tags.get('bits')}-bit floating-point TIFF samples"
        if head.tags.get("bits") in (2, 4, 12, 24):
            return f"{head.tags['bits']}-bit TIFF samples"
    if fmt == "bmp" and len(data) >= 34 and struct.unpack("<I", data[30:34])[0] in (4, 5):
        return "BMP wrapping JPEG or PNG data"
    if head is not None and head.fmt == "jp2" and _pillow_decodes(data):
        return f"{head.fmt.upper()} variant the decoder cannot read (tiled or unusual codestream)"
    if fmt == "exr":
        return "EXR images are not supported"
    return None


def _pillow_decodes(data: bytes) -> bool:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
            return True
        except Exception:
            return False


def _decode_failure(data: bytes, head: Header | None) -> ItemError:
    """The one-line, classified reason a decode failed."""
    fmt = head.fmt if head is not None else magic_format(data)
    if fmt is None:
        kind = _text_kind(data)
        if kind == "SVG":
            return ItemError("unsupported", "SVG vector images are not supported")
        if kind:
            hint = " (an error page saved as an image?)" if kind in ("HTML", "XML", "JSON") else ""
            return ItemError("decode", f"not an image: the file holds {kind}{hint}")
        return ItemError("decode", "not a recognised image format")
    name = "JPEG" if fmt == "jpg" else fmt.upper()
    if _is_truncated(data, fmt):
        return ItemError("truncated", f"truncated {name}: the file ends before the image data does")
    reason = _unsupported_reason(data, head, fmt)
    if reason:
        return ItemError("unsupported", reason)
    if head is None:
        return ItemError("decode", f"corrupt {name}: cannot read its header")
    return ItemError("decode", f"cannot decode {name} data (corrupt or damaged)")


# --- decoding ----------------------------------------------------------------------------------

def _check_pixels(width: int, height: int, limits: Limits) -> None:
    if width <= 0 or height <= 0:
        raise ItemError("decode", f"invalid size {width}x{height} in header")
    pixels = width * height
    if pixels > limits.max_pixels:
        raise ItemError(
            "too_large",
            f"{width}x{height} = {fmt_count(pixels)} pixels, over --max-pixels {limits.pixels_text}",
        )


def load(path: str, limits: Limits = Limits(), shrink_for: Callable[[int, int], int] | None = None,
         data: bytes | None = None, raw: dict | None = None) -> Frame:
    """Read and decode one image. Raises ItemError with a one-line reason on any failure.
    `raw`: the `raw` op's settings for camera RAW files (see imaging.raw)."""
    if data is None:
        data = read_bytes(path, limits)
    elif not data:
        raise ItemError("decode", "empty file (0 bytes)")
    if len(data) > limits.max_file_size:
        raise ItemError("too_large", f"file is {fmt_bytes(len(data))}, over --max-file-size {limits.file_size_text}")
    if rawfile.is_raw(path, data):
        kind = _text_kind(data)
        if kind is not None:  # (LibRaw says only 'Input/output error')
            raise ItemError("decode", f"not a RAW file: the file holds {kind}")
        frame = rawfile.load(path, data, limits.max_pixels, shrink_for, raw, limits.pixels_text)
        frame.info = {"mode": "RGB", "orientation": frame.orientation, "camera": {}}
        frame.metadata = metadata.source_block(data, "raw")
        return frame  # sRGB pixels: no profile to carry
    head = sniff(data)
    if head is not None:
        _check_pixels(head.width, head.height, limits)
    shrink = 1
    if head is not None and head.fmt == "jpg" and shrink_for is not None and head.mode in ("RGB", "L", "CMYK"):
        w, h = (head.height, head.width) if head.orientation in (5, 6, 7, 8) else (head.width, head.height)
        shrink = shrink_for(w, h)
    if shrink in _REDUCED:
        kind = "GRAYSCALE" if head is not None and head.mode == "L" else "COLOR"
        flags = getattr(cv2, f"IMREAD_REDUCED_{kind}_{shrink}")
    else:
        shrink, flags = 1, cv2.IMREAD_UNCHANGED
    meta: dict = {}
    if head is not None and head.fmt == "heic":
        w, h, images = heif.heic_size(data)  # the primary image's size, before any pixel is decoded
        _check_pixels(w, h, limits)
        img = heif.decode_heic(data)
        head = Header(img.shape[1], img.shape[0], "heic", 1, images)  # libheif has turned it upright
    elif head is not None and head.mode == "LAB":
        img = _decode_lab(data)
        meta["decode"] = {"converted": "CIE L*a*b* to sRGB"}
    elif head is not None and head.fmt == "tiff" and (head.mode in ("LA", "La") or (head.mode == "RGBA" and head.tags.get("bits") == 8)):
        # OpenCV drops a gray image's alpha and multiplies an 8-bit RGBA's colours by it; libtiff (in
        # Pillow too) would turn it upright, so it is given orientation 1 as below
        img = _decode_tiff_alpha(_tiff_orientation_1(data))
    else:
        # libtiff (in OpenCV) turns a TIFF upright whatever the flags say: it is given the file with
        # its orientation tag set to 1, so the orientation stays pending as for every other format.
        img = _imdecode(_tiff_orientation_1(data) if head is not None and head.fmt == "tiff" else data,
                        flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.size == 0:
        raise _decode_failure(data, head)
    if head is None:  # decoded, though no header parser knew the size: check it now
        _check_pixels(img.shape[1], img.shape[0], limits)
        fmt = magic_format(data) or "img"
        head = Header(img.shape[1], img.shape[0], fmt)
    img = _normalise(img, head, meta)
    if head.fmt == "png" and (img.ndim == 2 or img.shape[2] == 3):
        img = _keyed_alpha(data, img)
    frame = Frame(img=img, src=path, fmt=head.fmt, orientation=head.orientation, shrink=shrink,
                  src_size=(head.width, head.height))
    frame.info = {"mode": head.mode, "orientation": head.orientation, "camera": head.camera}
    frame.metadata = metadata.source_block(data, head.fmt)
    frame.icc = metadata.read_icc(frame.metadata)
    if head.frames > 1:
        meta["frames"] = {"count": head.frames, "used": 1}
    frame.meta.update(meta)
    return frame


def _keyed_alpha(data: bytes, img: np.ndarray) -> np.ndarray:
    """A PNG whose transparency is a colour key (a tRNS chunk in a gray image, or a 16-bit RGB
    one), which OpenCV leaves opaque: that colour made transparent, as BGRA."""
    end = data.find(b"IDAT")
    at = data.find(b"tRNS", 12, end)
    if at < 0 or end < 0:
        return img
    colour, depth = data[25], data[24]
    key = data[at + 4:at + 4 + int.from_bytes(data[at - 4:at], "big")]
    if colour == 0 and len(key) == 2 and img.ndim == 2:
        value = int.from_bytes(key, "big")
        if depth < 8:  # OpenCV scales 1, 2 and 4-bit gray up to 8 bits
            value *= 255 // ((1 << depth) - 1)
        opaque = img != value
        img = np.dstack([img, img, img])
    elif colour == 2 and len(key) == 6 and img.ndim == 3 and img.dtype == np.uint16:
        r, g, b = (int.from_bytes(key[k:k + 2], "big") for k in (0, 2, 4))
        opaque = (img != np.array([b, g, r], img.dtype)).any(axis=2)
    else:
        return img
    top = np.iinfo(img.dtype).max
    return np.dstack([img, np.where(opaque, top, 0).astype(img.dtype)])


def _imdecode(data: bytes, flags: int) -> np.ndarray | None:
    buf = np.frombuffer(data, np.uint8)
    try:
        return cv2.imdecode(buf, flags)
    except cv2.error as exc:
        text = str(exc).strip()
        if "CV_IO_MAX_IMAGE" in text or "memory" in text.lower():
            raise ItemError("too_large", "the decoder refused the image size (over its pixel or memory limit)") from None
        line = text.splitlines()[-1] if text else "decoder error"
        raise ItemError("decode", f"cannot decode: {line[:200]}") from None


def _tiff_orientation_1(data: bytes) -> bytes:
    """A copy of a TIFF whose first IFD says orientation 1 (top-left), or the bytes unchanged."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return data
    try:
        big = struct.unpack(order + "H", data[2:4])[0] == 43
        ifd = struct.unpack(order + ("Q" if big else "I"), data[8:16] if big else data[4:8])[0]
        count_fmt, count_len, entry_len = ("Q", 8, 20) if big else ("H", 2, 12)
        count = struct.unpack(order + count_fmt, data[ifd:ifd + count_len])[0]
        for i in range(min(count, 4096)):
            at = ifd + count_len + i * entry_len
            tag, kind = struct.unpack(order + "HH", data[at:at + 4])
            if tag == 0x0112 and kind in (3, 4):  # Orientation, SHORT (or LONG, which libtiff also obeys): in the entry
                value, one = at + (12 if big else 8), struct.pack(order + ("H" if kind == 3 else "I"), 1)
                return data[:value] + one + data[value + len(one):]
    except struct.error:
        pass
    return data


def _decode_lab(data: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception:
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _decode_tiff_alpha(data: bytes) -> np.ndarray | None:
    """A TIFF with alpha, as BGRA with the colours as stored (a gray+alpha one with the gray in all
    three colour channels, as OpenCV gives a gray+alpha PNG), orientation still pending."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode == "RGBA":
                return np.ascontiguousarray(np.asarray(im)[:, :, [2, 1, 0, 3]])
            la = np.asarray(im.convert("LA"))
    except Exception:
        return None
    gray = la[:, :, 0]
    return np.ascontiguousarray(np.dstack([gray, gray, gray, la[:, :, 1]]))


def _normalise(img: np.ndarray, head: Header, meta: dict) -> np.ndarray:
    """Bring any decoded array to uint8/uint16 gray, BGR or BGRA (see the module docstring)."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4 and head.mode == "CMYK" and bool((img[:, :, 3] == 255).all()):
        img = np.ascontiguousarray(img[:, :, :3])  # libtiff gives CMYK as BGR plus an opaque alpha
    if head.mode == "CMYK":
        meta["decode"] = {"converted": "CMYK to BGR"}
    if img.dtype in (np.uint8, np.uint16):
        return img
    kind = img.dtype
    if img.dtype.kind in "iu":
        lo, hi = int(img.min()), int(img.max())
        if lo >= 0 and hi <= 65535:
            meta["decode"] = {"converted": f"{kind} samples to uint16"}
            return img.astype(np.uint16)
        raise ItemError("unsupported", f"{kind} samples outside 0..65535 are not supported")
    if img.dtype.kind == "f":
        img = np.nan_to_num(img.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if head.fmt == "hdr":
            mapped = img / (1.0 + img)  # Reinhard: linear HDR light into 0..1
            meta["decode"] = {"converted": "HDR tone-mapped to 8-bit"}
            return (np.power(np.clip(mapped, 0, 1), 1 / 2.2) * 255 + 0.5).astype(np.uint8)
        lo, hi = float(img.min()), float(img.max())
        if lo >= 0 and hi <= 1.0:
            meta["decode"] = {"converted": f"{kind} 0..1 to uint16"}
            return (img * 65535 + 0.5).astype(np.uint16)
        if lo >= 0 and hi <= 255.0:
            meta["decode"] = {"converted": f"{kind} 0..255 to uint8"}
            return (img + 0.5).astype(np.uint8)
        raise ItemError("unsupported", f"{kind} samples outside 0..255 are not supported")
    raise ItemError("unsupported", f"{kind} samples are not supported")
