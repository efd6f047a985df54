"""What a file is before any pixel is decoded: magic bytes, dimensions, mode, EXIF orientation
and camera, read with Pillow or with small parsers of our own (JPEG, PNG chunks, BMP, GIF, WebP,
AVIF, JPEG 2000, Radiance HDR); and the size limits checked from them."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from stat import S_ISDIR, S_ISREG

from batchcli.errors import ItemError
from batchcli.units import fmt_bytes, fmt_count

DEFAULT_MAX_FILE_SIZE = 200 * 1024 * 1024
DEFAULT_MAX_PIXELS = 150_000_000

# Pillow format name -> our short extension
_PIL_FORMATS = {
    "JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tiff", "BMP": "bmp",
    "GIF": "gif", "PPM": "ppm", "JPEG2000": "jp2", "AVIF": "avif", "HEIF": "heic",
}
_REDUCED = (2, 4, 8)  # cv2.IMREAD_REDUCED_COLOR_N / _GRAYSCALE_N
# Decoder failures are reported per item as ItemError; batchcli.imaging.lazy silences OpenCV's own log.

_EXIF_MAKE, _EXIF_MODEL, _EXIF_DATETIME, _EXIF_IFD, _EXIF_ORIGINAL = 0x010F, 0x0110, 0x0132, 0x8769, 0x9003


@dataclass(frozen=True)
class Limits:
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    given: tuple[str | None, str | None] = (None, None)  # the two flags as typed (--max-file-size, --max-pixels)

    @property
    def file_size_text(self) -> str:
        """--max-file-size in the units it was given in (else as a size flag is written)."""
        return self.given[0] or fmt_bytes(self.max_file_size, exact=True)

    @property
    def pixels_text(self) -> str:
        """--max-pixels in the units it was given in (else as a count flag is written)."""
        return self.given[1] or fmt_count(self.max_pixels, exact=True)


def given_limits(given: dict | None) -> tuple[str | None, str | None]:
    """Limits.given from a manifest's `limits_given` (the flags' text as typed; None for a batch
    that has none)."""
    given = given or {}
    return given.get("max_file_size"), given.get("max_pixels")


def open_input_fd(path: str, kind: str = "an image") -> int:
    """Open a local input for reading: a plain descriptor. A folder, a device, a missing or
    unreadable file raises ItemError with a one-line reason; `kind` names what the file should
    be. It is checked before it is opened, so a FIFO or a device never is."""
    try:
        st = os.stat(path)
        if S_ISDIR(st.st_mode):
            raise ItemError("unreadable", f"is a directory, not {kind} file")
        if not S_ISREG(st.st_mode):
            raise ItemError("unreadable", "not a regular file (device, socket or pipe)")
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except IsADirectoryError:
        raise ItemError("unreadable", f"is a directory, not {kind} file") from None
    except OSError as exc:
        raise read_error(exc) from None


def open_input_file(path: str, kind: str = "an image"):
    """open_input_fd as a binary file object."""
    return os.fdopen(open_input_fd(path, kind), "rb")


def read_error(exc: OSError) -> ItemError:
    """An OSError of reading an input as the item's error."""
    if isinstance(exc, FileNotFoundError):
        return ItemError("unreadable", "no such file (deleted, or a broken symlink)")
    if isinstance(exc, PermissionError):
        return ItemError("unreadable", "permission denied")
    return ItemError("io", f"read error: {exc.strerror or exc}")


def read_bytes(path: str, limits: Limits, stat: list | None = None) -> bytes:
    """The bytes of a local input (ItemError: too large, unreadable, empty); `stat` gets the
    open file's os.stat_result (the size and mtime of what was read). Read with plain system
    calls (open_input_fd, a stat and a read for most files: a file object made 9)."""
    fd = open_input_fd(path)
    try:
        st = os.fstat(fd)
        if stat is not None:
            stat.append(st)
        size = st.st_size
        if size > limits.max_file_size:
            raise ItemError("too_large", f"file is {fmt_bytes(size)}, over --max-file-size {limits.file_size_text}")
        # ask for the size the file has (one more byte shows it grew): a read of up to
        # --max-file-size bytes allocates that much first, 0.3 ms of a 700 KB photo's read
        data = os.read(fd, size + 1)
        while 0 < len(data) < size:  # a short read: on to its size, or to its end (all of it: at its end)
            more = os.read(fd, size + 1 - len(data))
            if not more:
                break
            data += more
        while size < len(data) <= limits.max_file_size:  # it grew since: what is there now, up to the limit
            more = os.read(fd, limits.max_file_size + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as exc:
        raise read_error(exc) from None
    finally:
        os.close(fd)
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
        brands = data[16:min(len(data), 8 + int.from_bytes(data[:4], "big"), 64)]
        if brand in (b"avif", b"avis") or (brand in (b"mif1", b"msf1") and (b"avif" in brands or b"avis" in brands)):
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
