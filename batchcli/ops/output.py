"""Output format: convert (images, and videos: mp4, webm, mov with a codec).

The orientation is applied to the pixels before writing, so outputs display upright; metadata and
the ICC profile are carried over by batchcli.imaging.metadata.
"""

from __future__ import annotations

from batchcli.errors import ConfigError
from batchcli.ops.base import Frame, Op, Param, register

FORMATS = ("jpg", "jpeg", "png", "webp", "tiff", "tif", "bmp", "avif", "heic", "heif")
VIDEO_FORMATS = ("mp4", "webm", "mov")
VIDEO_CODECS = {"mp4": ("h264", "hevc", "av1", "vp9"), "mov": ("h264", "hevc"), "webm": ("vp9", "av1")}
"""The codecs each container takes (the first is its default)."""
SPEEDS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_ALIASES = {"jpeg": "jpg", "tif": "tiff", "heif": "heic"}
_VIDEO_PARAMS = ("codec", "crf", "preset", "fps")
QUALITY_FORMATS = ("jpg", "webp", "avif", "heic")


@register
class Convert(Op):
    name = "convert"
    summary = "Choose the output format (jpg, png, webp, tiff, bmp, avif, heic; videos: mp4, webm, mov) and its quality."
    shrink_safe = True
    params = (
        Param("format", "choice", positional=True, choices=FORMATS + VIDEO_FORMATS,
              help="output format; heic through pillow-heif, avif through Pillow; mp4, webm, mov for videos"),
        Param("quality", "int", 90, min=1, max=100, help="JPEG, WebP, AVIF and HEIC quality"),
        Param("compression", "int", 3, min=0, max=9, help="PNG compression level (0 fastest, 9 smallest)"),
        Param("lossless", "bool", False, help="WebP: lossless instead of quality-based"),
        Param("progressive", "bool", False, help="JPEG: progressive encoding"),
        Param("background", "color", (255, 255, 255),
              help="JPEG: colour that transparent pixels are flattened onto"),
        Param("codec", "choice", "", choices=("", "h264", "hevc", "vp9", "av1"),
              help="video codec (default: h264 for mp4 and mov, vp9 for webm)"),
        Param("crf", "int", -1, min=-1, max=63,
              help="video quality, lower is better (default: 23 h264, 28 hevc, 31 vp9, 35 av1)"),
        Param("preset", "choice", "medium", choices=SPEEDS, help="video encoder speed against size"),
        Param("fps", "float", 0.0, min=0, max=240, help="video frame rate (default: the source's)"),
        Param("max_bytes", "bytes", None, min=1024, max=1 << 30,
              help="jpg, webp, avif, heic: the highest quality up to `quality` whose file fits, e.g. max-bytes=300K "
                   "(bisection, at most 7 encodes; the record says which quality)"),
    )

    def check(self) -> None:
        fmt = self.output_format
        if self.p["max_bytes"] is not None and (fmt not in QUALITY_FORMATS or self.p["lossless"]):
            raise ConfigError(f"convert: max-bytes needs a format with a quality (jpg, webp, avif, heic), not "
                              f"{'lossless webp' if self.p['lossless'] else fmt}")
        if fmt not in VIDEO_FORMATS:
            if self.p["codec"] or self.p["crf"] >= 0 or self.p["fps"]:
                raise ConfigError(f"convert: codec, crf and fps are for videos (mp4, webm, mov), not {fmt}")
        elif self.p["codec"] and self.p["codec"] not in VIDEO_CODECS[fmt]:
            raise ConfigError(f"convert: {fmt} does not take {self.p['codec']} (it takes {', '.join(VIDEO_CODECS[fmt])})")
        else:
            from batchcli.video.codecs import missing_encoder  # PyAV, only for video pipelines

            codec = self.p["codec"] or VIDEO_CODECS[fmt][0]
            missing = missing_encoder(codec)
            if missing:
                others = [c for c in VIDEO_CODECS[fmt] if c != codec and not missing_encoder(c)]
                raise ConfigError(f"convert: this installation cannot encode {codec} (PyAV has no {missing} encoder)"
                                  + (f"; try codec={others[0]}" if others else ""))
        if self.output_format in ("avif", "heic"):
            from batchcli.imaging.heif import can_write  # the parent checks what the workers will use

            if not can_write(self.output_format):
                raise ConfigError(f"convert: this installation cannot write {self.output_format.upper()} (try webp)")

    @property
    def output_format(self) -> str:
        return _ALIASES.get(self.p["format"], self.p["format"])

    def spec(self) -> dict:
        """The video parameters only where they apply, and max_bytes only when given, so image
        pipelines keep their fingerprint."""
        out = super().spec()
        if self.output_format not in VIDEO_FORMATS:
            for name in _VIDEO_PARAMS:
                out.pop(name, None)
        if out.get("max_bytes") is None:
            out.pop("max_bytes", None)
        return out

    @property
    def video_role(self) -> str | None:
        """"encode" when this convert chooses a video format (the video runner reads it)."""
        return "encode" if self.output_format in VIDEO_FORMATS else None

    def apply(self, frame: Frame) -> Frame:
        if self.output_format in VIDEO_FORMATS:  # a photo in a video pipeline keeps its format
            return frame
        frame.out_format = self.output_format
        frame.encode.update(
            quality=self.p["quality"],
            compression=self.p["compression"],
            lossless=self.p["lossless"],
            progressive=self.p["progressive"],
            background=self.p["background"],
            max_bytes=self.p["max_bytes"],
        )
        return frame
