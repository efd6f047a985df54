"""Decode and encode, with limits checked from the header before any pixel is allocated.

One entry point for decoding (`load`), one for encoding (`save`), so every file is judged the
same way. OpenCV decodes from bytes (`cv2.imdecode`), which, unlike `cv2.imread`, refuses a
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

import errno
import hashlib
import io
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass, field
from typing import Callable

from batchcli.lazy import cv2, np

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
WRITABLE = {"jpg": ".jpg", "png": ".png", "webp": ".webp", "tiff": ".tif", "bmp": ".bmp", "avif": ".avif"}
EXTENSIONS = {"jpg": "jpg", "png": "png", "webp": "webp", "tiff": "tif", "bmp": "bmp", "avif": "avif"}
_REDUCED = (2, 4, 8)  # cv2.IMREAD_REDUCED_COLOR_N / _GRAYSCALE_N
# Decoder failures are reported per item as ItemError; batchcli.lazy silences OpenCV's own log.

_EXIF_MAKE, _EXIF_MODEL, _EXIF_DATETIME, _EXIF_IFD, _EXIF_ORIGINAL = 0x010F, 0x0110, 0x0132, 0x8769, 0x9003


@dataclass(frozen=True)
class Limits:
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS


def read_bytes(path: str, limits: Limits) -> bytes:
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ItemError("unreadable", "is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ItemError("unreadable", "not a regular file (device, socket or pipe)")
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_file_size:
                raise ItemError("too_large", f"file is {size} bytes, over --max-file-size {limits.max_file_size}")
            data = fh.read(limits.max_file_size + 1)
    except IsADirectoryError:
        raise ItemError("unreadable", "is a directory, not an image file") from None
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
    mode: str = ""  # Pillow mode ("RGB", "L", "CMYK", "LAB", "I;16", ...); "" when not from Pillow
    tags: dict = field(default_factory=dict)  # TIFF tags that decide support: compression, bits, sample format
    camera: dict = field(default_factory=dict)  # EXIF make, model, captured_at where present


# --- format sniffing from magic bytes ---------------------------------------------------------

def magic_format(data: bytes) -> str | None:
    """The format the first bytes announce, or None."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[:2] == b"BM":
        return "bmp"
    if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or data[:4] == b"\xff\x4f\xff\x51":
        return "jp2"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
            return "heic"
    if data[:10] in (b"#?RADIANCE", b"#?RGBE\n") or data[:6] == b"#?RGBE":
        return "hdr"
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"1234567fF" and data[2:3] in b" \t\r\n0123456789":
        return "pfm" if data[1:2] in b"fF" else "ppm"
    if data[:4] == b"v/1\x01":
        return "exr"
    return None


def _fallback_size(data: bytes, fmt: str | None) -> tuple[int, int] | None:
    """Width and height read straight from the header, for files Pillow cannot identify."""
    try:
        if fmt == "png" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if fmt == "gif":
            return struct.unpack("<HH", data[6:10])
        if fmt == "webp":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w = int.from_bytes(data[24:27], "little") + 1
                h = int.from_bytes(data[27:30], "little") + 1
                return w, h
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
        if fmt in ("avif", "heic"):
            at = data.find(b"ispe", 0, 65536)
            if at > 0:
                return struct.unpack(">II", data[at + 8:at + 16])
        if fmt == "jp2":
            at = data.find(b"\xff\x51", 0, 65536)
            if at >= 0:
                xs, ys, xo, yo = struct.unpack(">IIII", data[at + 6:at + 22])
                return xs - xo, ys - yo
        if fmt == "hdr":
            m = re.search(rb"\n([-+][YX]) (\d+) ([-+][YX]) (\d+)\n", data[:8192])
            if m:
                a, b = int(m.group(2)), int(m.group(4))
                return (b, a) if m.group(1).endswith(b"Y") else (a, b)
    except (struct.error, ValueError):
        return None
    return None


def _exif(im):
    """The EXIF block without decoding pixels (Pillow's PNG getexif() would decode the whole
    image to look for an eXIf chunk after the pixel data: a bomb's worth of work)."""
    from PIL import Image

    if im.format == "PNG":
        exif = Image.Exif()
        raw = im.info.get("exif")
        if raw:
            exif.load(raw)
        return exif
    return im.getexif()


def _camera(exif) -> dict:
    """EXIF make, model and capture time (ISO 8601, no zone) where present."""
    out: dict = {}
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # a broken EXIF block must not fail the image
        return out
    for key, tag, src in (("make", _EXIF_MAKE, exif), ("model", _EXIF_MODEL, exif)):
        value = src.get(tag)
        if isinstance(value, str) and value.strip("\x00 "):
            out[key] = value.strip("\x00 ")
    when = sub.get(_EXIF_ORIGINAL) or exif.get(_EXIF_DATETIME)
    if isinstance(when, str):
        m = re.match(r"(\d{4}):(\d\d):(\d\d)[ T](\d\d):(\d\d):(\d\d)", when.strip())
        if m and m.group(1) != "0000":
            out["captured_at"] = "{}-{}-{}T{}:{}:{}".format(*m.groups())
    return out


def _first(value) -> int:
    """A TIFF tag value that may be one number or one per sample."""
    return int(value[0] if isinstance(value, (tuple, list)) else value)


_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF))
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


def _jpeg_header(data: bytes) -> Header | None:
    """The header of a plain 8-bit JPEG read straight from its markers (a third of the time
    Pillow takes), with the same fields Pillow gives. None for anything out of the ordinary
    (multi-picture MPO, 12-bit, odd component counts, damaged markers): Pillow reads those."""
    n = len(data)
    i = 2
    exif = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD7:  # markers without a length
            i += 2
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            return None
        seg = data[i + 4:i + 2 + length]
        if m in _SOF:
            mode = _JPEG_MODES.get(seg[5]) if len(seg) >= 6 else None
            if mode is None or seg[0] != 8:
                return None
            height, width = (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4]
            orientation, camera = 1, {}
            if exif is not None:
                try:
                    from PIL import Image

                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        block = Image.Exif()
                        block.load(exif)
                        orientation = int(block.get(0x0112, 1) or 1)
                        camera = _camera(block)
                except Exception:  # a broken EXIF block must not fail the image
                    orientation = 1
                if orientation not in range(1, 9):
                    orientation = 1
            return Header(width, height, "jpg", orientation, 1, mode, {}, camera)
        if m == 0xE1 and exif is None and seg.startswith(b"Exif\x00\x00"):
            exif = bytes(seg)
        elif (m == 0xE2 and seg.startswith(b"MPF\x00")) or m == 0xDA:
            return None  # several pictures, or scan data before any frame header
        i += 2 + length
    return None


_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}  # colour type -> Pillow mode, 8-bit


def _png_header(data: bytes) -> Header | None:
    """The header of a plain 8-bit PNG read from its chunks, with the fields Pillow gives; None
    (Pillow reads it) for other depths, animation, an EXIF chunk, or a chunk whose CRC is wrong."""
    import zlib

    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    i = 8
    mode = None
    width = height = 0
    while i + 12 <= len(data):
        length = struct.unpack(">I", data[i:i + 4])[0]
        kind = data[i + 4:i + 8]
        end = i + 8 + length
        if kind == b"IDAT":
            break
        if end + 4 > len(data) or zlib.crc32(data[i + 4:end]) != struct.unpack(">I", data[end:end + 4])[0]:
            return None
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", data[i + 8:i + 18])
            mode = _PNG_MODES.get(colour) if depth == 8 else None
            if mode is None:
                return None
        elif kind in (b"eXIf", b"acTL", b"zTXt", b"iTXt", b"iCCP"):
            return None  # EXIF, animation, or compressed chunks Pillow checks as it opens
        i = end + 4
    else:
        return None
    if mode is None:
        return None
    return Header(width, height, "png", 1, 1, mode, {}, {})


def sniff(data: bytes) -> Header | None:
    """Read size, format and EXIF orientation from the header without decoding pixels."""
    if data[:3] == b"\xff\xd8\xff":
        head = _jpeg_header(data)
        if head is not None:
            return head
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        head = _png_header(data)
        if head is not None:
            return head
    from PIL import Image  # lazy: only workers need it

    Image.MAX_IMAGE_PIXELS = None  # our own limit applies, from the size Pillow reports
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(io.BytesIO(data)) as im:
                fmt = _PIL_FORMATS.get(im.format or "", (im.format or "").lower())
                orientation, camera = 1, {}
                try:
                    exif = _exif(im)
                    orientation = int(exif.get(0x0112, 1) or 1)
                    camera = _camera(exif)
                except Exception:  # a broken EXIF block must not fail the image
                    orientation = 1
                if orientation not in range(1, 9):
                    orientation = 1
                frames = int(getattr(im, "n_frames", 1) or 1)
                tags = {}
                if fmt == "tiff":
                    tag = getattr(im, "tag_v2", {})
                    tags = {
                        "compression": int(tag.get(259, 1)),
                        "bits": _first(tag.get(258, 8)),
                        "sample_format": _first(tag.get(339, 1)),
                    }
                return Header(im.width, im.height, fmt, orientation, frames, im.mode, tags, camera)
        except Exception:
            pass
    fmt = magic_format(data)
    size = _fallback_size(data, fmt)
    if fmt and size:
        return Header(int(size[0]), int(size[1]), fmt)
    return None


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
    if head is not None and head.fmt in ("jp2", "heic") and _pillow_decodes(data):
        return f"{head.fmt.upper()} variant the decoder cannot read (tiled or unusual codestream)"
    if fmt in ("heic", "exr"):
        return f"{fmt.upper()} images are not supported"
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
            f"{width}x{height} = {pixels / 1e6:.0f} MP, over --max-pixels {limits.max_pixels / 1e6:.0f} MP",
        )


def load(path: str, limits: Limits = Limits(), shrink_for: Callable[[int, int], int] | None = None,
         data: bytes | None = None) -> Frame:
    """Read and decode one image. Raises ItemError with a one-line reason on any failure."""
    if data is None:
        data = read_bytes(path, limits)
    elif not data:
        raise ItemError("decode", "empty file (0 bytes)")
    if len(data) > limits.max_file_size:
        raise ItemError("too_large", f"file is {len(data)} bytes, over --max-file-size {limits.max_file_size}")
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
    if head is not None and head.mode == "LAB":
        img = _decode_lab(data)
        meta["decode"] = {"converted": "CIE L*a*b* to sRGB"}
    else:
        img = _imdecode(data, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.size == 0:
        raise _decode_failure(data, head)
    if head is None:  # decoded, though no header parser knew the size: check it now
        _check_pixels(img.shape[1], img.shape[0], limits)
        fmt = magic_format(data) or "img"
        head = Header(img.shape[1], img.shape[0], fmt)
    img = _normalise(img, head, meta)
    frame = Frame(img=img, src=path, fmt=head.fmt, orientation=head.orientation, shrink=shrink,
                  src_size=(head.width, head.height))
    frame.info = {"mode": head.mode, "orientation": head.orientation, "camera": head.camera}
    if head.frames > 1:
        meta["frames"] = {"count": head.frames, "used": 1}
    frame.meta.update(meta)
    return frame


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


def _decode_lab(data: bytes) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except Exception:
        return None
    return np.ascontiguousarray(rgb[:, :, ::-1])


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


# --- orientation and encoding ------------------------------------------------------------------

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


def upright(frame: Frame) -> Frame:
    """Apply a pending EXIF orientation to the pixels, for ops that work in display coordinates."""
    if frame.orientation != 1:
        frame.img = apply_orientation(frame.img, frame.orientation)
        frame.orientation = 1
    return frame


# --- small pixel helpers shared by the ops -----------------------------------------------------

def max_value(img: np.ndarray) -> int:
    """255 for uint8, 65535 for uint16."""
    return 65535 if img.dtype == np.uint16 else 255


def split_alpha(img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour or gray pixels, alpha or None). Ops grade the first and pass the alpha through."""
    if img.ndim == 3 and img.shape[2] == 4:
        return img[:, :, :3], img[:, :, 3]
    return img, None


def merge_alpha(img: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is None:
        return img
    return cv2.merge([*cv2.split(img), alpha])


def color_for(img: np.ndarray, bgr: tuple[int, int, int]) -> tuple:
    """An 8-bit (b, g, r) colour as a pixel value of `img`: gray (luma), BGR or opaque BGRA,
    scaled to 16 bits when needed."""
    k = 257 if img.dtype == np.uint16 else 1
    b, g, r = (c * k for c in bgr)
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        return (int(round(0.114 * b + 0.587 * g + 0.299 * r)),)
    if channels == 4:
        return (b, g, r, 255 * k)
    return (b, g, r)


def can_write(fmt: str) -> bool:
    """Whether this OpenCV build can encode `fmt` (AVIF depends on the build)."""
    ext = WRITABLE.get(fmt)
    if ext is None:
        return False
    return fmt != "avif" or bool(cv2.haveImageWriter(ext))


def output_format(frame: Frame) -> str:
    fmt = frame.out_format or frame.fmt
    return fmt if can_write(fmt) else "png"


def to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(frame: Frame) -> tuple[bytes, str]:
    """Encode a frame. Returns (bytes, format). Orientation still pending is applied first, so the
    output displays upright even though OpenCV writes no EXIF. JPEG gets alpha flattened on
    `encode["background"]` (white by default); JPEG, WebP, AVIF and BMP are 8-bit, PNG and TIFF
    keep 16 bits."""
    img = apply_orientation(frame.img, frame.orientation)
    fmt = output_format(frame)
    settings = frame.encode
    q = settings.get("quality")
    quality = int(q if q is not None else 90)
    if fmt in ("jpg", "webp", "avif", "bmp"):
        img = to_uint8(img)
    params: list[int] = []
    if fmt == "jpg":
        if img.ndim == 3 and img.shape[2] == 4:
            img = flatten_alpha(img, settings.get("background", (255, 255, 255)))
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
        if settings.get("progressive"):
            params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, 101 if settings.get("lossless") else quality]
    elif fmt == "avif":
        params = [cv2.IMWRITE_AVIF_QUALITY, quality]
    elif fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(settings.get("compression", 3))]
    elif fmt == "tiff":
        params = [cv2.IMWRITE_TIFF_COMPRESSION, 5]  # LZW: lossless and widely readable
    try:
        ok, buf = cv2.imencode(WRITABLE[fmt], np.ascontiguousarray(img), params)
    except cv2.error as exc:
        line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "encoder error"
        raise ItemError("encode", f"cannot encode as {fmt}: {line[:200]}") from None
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
    path, data = encode_to(frame, dest_stem)
    write(path, data)
    return path, len(data), hashlib.sha256(data).hexdigest()


def encode_to(frame: Frame, dest_stem: str) -> tuple[str, bytes]:
    """The output path for `dest_stem` (the format's extension added) and the encoded bytes."""
    data, fmt = encode(frame)
    return f"{dest_stem}.{EXTENSIONS[fmt]}", data


def write(path: str, data: bytes) -> None:
    """The durable, atomic write of an output; failures as ItemError (disk_full, io)."""
    try:
        atomic_write(path, data)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ItemError("disk_full", f"no space left writing {path}") from None
        raise ItemError("io", f"cannot write {path}: {exc.strerror or exc}") from None
