"""What a video is before any frame is decoded: its container from the magic bytes, whether the
file is complete (the container's own size fields against the file size), then duration, frame
size, frame rate, frame count and audio from the header, checked against the limits. Every
failure is an ItemError with a one-line reason."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from batchcli.errors import ItemError
from batchcli.imaging.headers import open_input_file, read_error
from batchcli.units import fmt_count

DEFAULT_MAX_DURATION = 6 * 3600.0
MAX_FPS = 1000.0
"""A header claiming more frames per second than this is not believed (a corrupt or hostile file)."""
_IMAGE_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")


@dataclass(frozen=True)
class VideoLimits:
    max_pixels: int = 150_000_000  # per frame (--max-pixels)
    max_duration: float = DEFAULT_MAX_DURATION  # seconds (--max-duration); 0 = no limit
    pixels_text: str | None = None  # --max-pixels as it was given


@dataclass
class VideoInfo:
    container: str  # "mp4" (also mov, m4v), "matroska" (mkv, webm) or "avi"
    width: int
    height: int
    duration: float  # seconds
    rate: Fraction  # frames per second (average)
    frames: int  # from the header, else estimated from duration x rate
    time_base: Fraction
    start_pts: int  # first video timestamp, in time_base units
    codec: str
    audio: str | None  # the audio codec's name, or None without audio
    rotation: int = 0  # degrees the display matrix turns the picture (phones)

    def describe(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "duration": round(self.duration, 3),
                "fps": round(float(self.rate), 3), "frames": self.frames, "codec": self.codec,
                "audio": self.audio}


def sniff(head: bytes) -> str | None:
    """The container family from the first bytes: "mp4", "matroska", "avi", or None."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return None if head[8:12] in _IMAGE_BRANDS else "mp4"
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def _read_head(path: str) -> tuple[bytes, int]:
    with open_input_file(path, "a video") as fh:
        try:
            return fh.read(64), os.fstat(fh.fileno()).st_size
        except OSError as exc:
            raise read_error(exc) from None


def _mp4_short(path: str, size: int) -> bool:
    """True when a top-level box claims more bytes than the file holds, or the index (`moov`)
    never comes: an upload or copy cut off, or a recording that was never finished."""
    moov = False
    with open(path, "rb") as fh:
        pos = 0
        while pos + 8 <= size:
            fh.seek(pos)
            head = fh.read(16)
            length = struct.unpack(">I", head[:4])[0]
            moov = moov or head[4:8] == b"moov"
            if length == 1:
                if len(head) < 16:
                    return True
                length = struct.unpack(">Q", head[8:16])[0]
            elif length == 0:  # to the end of the file
                return not moov
            if length < 8:
                return False  # not a box structure we understand: let the demuxer judge
            pos += length
        return pos > size or not moov


def _ebml_size(data: bytes, at: int) -> tuple[int | None, int]:
    """An EBML variable-size integer at `at`: (value or None when 'unknown', bytes used)."""
    first = data[at]
    n = 1
    while n <= 8 and not first & (0x80 >> (n - 1)):
        n += 1
    if n > 8 or at + n > len(data):
        return None, 1
    value = first & (0xFF >> n)
    for b in data[at + 1:at + n]:
        value = (value << 8) | b
    return (None if value == (1 << (7 * n)) - 1 else value), n


def _matroska_short(path: str, size: int) -> bool:
    with open(path, "rb") as fh:
        data = fh.read(4096)
    hsize, n = _ebml_size(data, 4)
    if hsize is None:
        return False
    seg = 4 + n + hsize  # the Segment element follows the EBML header
    if data[seg:seg + 4] != b"\x18\x53\x80\x67":
        return False
    ssize, n = _ebml_size(data, seg + 4)
    return ssize is not None and seg + 4 + n + ssize > size


def truncated(path: str, family: str, size: int) -> bool:
    """Whether the container's own size fields say the file ends early."""
    try:
        if family == "mp4":
            return _mp4_short(path, size)
        if family == "matroska":
            return _matroska_short(path, size)
        if family == "avi":
            with open(path, "rb") as fh:
                return struct.unpack("<I", fh.read(8)[4:8])[0] + 8 > size
    except (OSError, struct.error, IndexError):
        return False
    return False


def require_av() -> Any:
    """PyAV, or an error that says how to install it."""
    try:
        import av
    except ImportError:
        raise ItemError("unsupported", "videos need PyAV: pip install 'batchcli[video]'") from None
    return av


def open_input(path: str) -> Any:
    """PyAV's container for `path`, or an ItemError naming why it cannot be read."""
    av = require_av()

    try:
        return av.open(path, "r")
    except av.error.InvalidDataError:
        raise ItemError("decode", "corrupt video: the container cannot be read") from None
    except av.error.FFmpegError as exc:
        raise ItemError("decode", f"cannot open the video: {exc.strerror or exc}") from None


def probe(path: str, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """Check a video from its header (nothing is decoded). Raises ItemError."""
    head, size = _read_head(path)
    if size == 0:
        raise ItemError("decode", "empty file (0 bytes)")
    family = sniff(head)
    if family is None:
        raise ItemError("decode", "not a recognised video container (mp4, mov, mkv, webm, avi)")
    if truncated(path, family, size):
        raise ItemError("truncated", f"truncated {family} video: the file ends before its data does")
    with open_input(path) as c:
        return _info(c, family, limits)


def _info(c: Any, family: str, limits: VideoLimits) -> VideoInfo:
    if not c.streams.video:
        raise ItemError("decode", "no video stream (an audio-only file?)")
    vs = c.streams.video[0]
    cc = vs.codec_context
    width, height = int(cc.width or 0), int(cc.height or 0)
    if width <= 0 or height <= 0:
        raise ItemError("decode", f"invalid frame size {width}x{height} in header")
    if width * height > limits.max_pixels:
        raise ItemError("too_large", f"frames of {width}x{height} = {fmt_count(width * height)} pixels, "
                                     f"over --max-pixels {limits.pixels_text or fmt_count(limits.max_pixels)}")
    tb = Fraction(vs.time_base) if vs.time_base else Fraction(1, 1000)
    if vs.duration:
        duration = float(vs.duration * tb)
    elif c.duration:
        duration = c.duration / 1e6
    else:
        duration = 0.0
    rate = vs.average_rate or vs.guessed_rate or vs.base_rate
    rate = Fraction(rate) if rate else Fraction(0)
    if duration <= 0:
        raise ItemError("decode", "the header gives no duration (a stream cut off, or not a video file)")
    if limits.max_duration and duration > limits.max_duration:
        raise ItemError("too_large", f"{duration:.0f} s long, over --max-duration {limits.max_duration:g} s")
    if rate <= 0 or rate > MAX_FPS:
        raise ItemError("decode", f"implausible frame rate {float(rate):g} fps in header")
    frames = int(vs.frames or 0) or round(duration * rate)
    if frames > duration * MAX_FPS + 1:
        raise ItemError("decode", f"the header claims {frames} frames in {duration:.1f} s")
    audio = c.streams.audio[0].codec_context.codec.canonical_name if c.streams.audio else None  # mp3, not mp3float
    return VideoInfo(container=family, width=width, height=height, duration=duration, rate=rate,
                     frames=frames, time_base=tb, start_pts=int(vs.start_time or 0), codec=cc.name,
                     audio=audio)
