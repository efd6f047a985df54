"""Encoders and containers: which FFmpeg encoder a codec name means, its quality and speed
settings, and what happens to the audio (copied when the container takes the source's codec,
re-encoded otherwise)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

CONTAINERS = {"mp4": ("mp4", "mp4"), "mov": ("mov", "mov"), "webm": ("webm", "webm")}
"""Output container -> (FFmpeg muxer, file extension)."""
DEFAULT_CODEC = {"mp4": "h264", "mov": "h264", "webm": "vp9"}
KEEP = {"mp4": "mp4", "matroska": "mp4", "avi": "mp4"}
"""Without `convert mp4|webm|mov`, a video keeps its container where one is written (webm and mov
are told apart by extension), else becomes mp4."""

ENCODERS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}


def missing_encoder(codec: str) -> str | None:
    """The FFmpeg encoder `codec` is made with, when this PyAV has none by that name; None when it
    has one, or when PyAV itself is missing (each video then fails saying how to install it)."""
    try:
        import av
    except ImportError:
        return None
    try:
        av.Codec(ENCODERS[codec], "w")
    except av.codec.codec.UnknownCodecError:
        return ENCODERS[codec]
    return None


DEFAULT_CRF = {"h264": 23, "hevc": 28, "vp9": 31, "av1": 35}
_SPEEDS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_VP9_CPU = (8, 7, 6, 5, 4, 3, 2, 1, 0)  # libvpx cpu-used for each of _SPEEDS
_SVT_PRESET = (12, 11, 10, 9, 8, 7, 6, 5, 4)  # SVT-AV1 preset for each of _SPEEDS

AUDIO_COPY = {
    "mp4": {"aac", "mp3", "alac", "opus", "ac3", "eac3", "flac"},
    "mov": {"aac", "mp3", "alac", "ac3", "pcm_s16le", "pcm_s24le"},
    "webm": {"opus", "vorbis"},
}
AUDIO_ENCODE = {"mp4": ("aac", 48000, 192_000), "mov": ("aac", 48000, 192_000), "webm": ("libopus", 48000, 128_000)}


@dataclass(frozen=True)
class Target:
    """What a transcoded video becomes."""

    container: str  # mp4, mov, webm
    codec: str  # h264, hevc, vp9, av1
    crf: int
    speed: str
    fps: Fraction | None  # None: the source's timing

    @property
    def muxer(self) -> str:
        return CONTAINERS[self.container][0]

    @property
    def ext(self) -> str:
        return CONTAINERS[self.container][1]

    def audio_mode(self, source_codec: str | None) -> str | None:
        """None (no audio), "copy", or the encoder the audio is re-encoded with."""
        if source_codec is None:
            return None
        if source_codec in AUDIO_COPY[self.container]:
            return "copy"
        return AUDIO_ENCODE[self.container][0]


def keep_container(family: str, src: str) -> str:
    """The container a video keeps without a `convert` to a video format."""
    ext = src.rsplit(".", 1)[-1].lower()
    if ext in ("webm", "mov"):
        return ext
    return KEEP.get(family, "mp4")


def add_video_stream(out: Any, target: Target, width: int, height: int, rate: Fraction, time_base: Fraction,
                     threads: int = 0) -> Any:
    """An encoder stream on `out` for frames of width x height at `rate` (timestamps in `time_base`)."""
    codec = target.codec
    speed = _SPEEDS.index(target.speed) if target.speed in _SPEEDS else 5
    options: dict[str, str] = {}
    if codec == "h264":
        options = {"crf": str(target.crf), "preset": target.speed}
    elif codec == "hevc":
        options = {"crf": str(target.crf), "preset": target.speed, "x265-params": "log-level=error"}
    elif codec == "vp9":
        options = {"crf": str(target.crf), "b": "0", "deadline": "good", "cpu-used": str(_VP9_CPU[speed]),
                   "row-mt": "1"}
    elif codec == "av1":
        options = {"crf": str(target.crf), "preset": str(_SVT_PRESET[speed]), "svtav1-params": "log-level=1"}
    stream = out.add_stream(ENCODERS[codec], rate=rate, options=options)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.time_base = time_base
    stream.codec_context.time_base = time_base
    stream.thread_count = threads
    if codec == "hevc" and target.container in ("mp4", "mov"):
        stream.codec_tag = "hvc1"  # what Apple players look for
    return stream


def add_audio_encoder(out: Any, container: str, layout: str) -> Any:
    name, rate, bitrate = AUDIO_ENCODE[container]
    stream = out.add_stream(name, rate=rate)
    stream.layout = layout if layout in ("mono", "stereo") else "stereo"
    stream.bit_rate = bitrate
    return stream
