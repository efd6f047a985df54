"""Output format: convert.

The orientation is applied to the pixels before writing, so outputs display upright; metadata and
the ICC profile are carried over by batchcli.imaging.metadata.
"""

from __future__ import annotations

from batchcli.errors import ConfigError
from batchcli.ops.base import Frame, Op, Param, register

FORMATS = ("jpg", "jpeg", "png", "webp", "tiff", "tif", "bmp", "avif", "heic", "heif")
_ALIASES = {"jpeg": "jpg", "tif": "tiff", "heif": "heic"}


@register
class Convert(Op):
    name = "convert"
    summary = "Choose the output format (jpg, png, webp, tiff, bmp, avif, heic) and its quality."
    shrink_safe = True
    params = (
        Param("format", "choice", positional=True, choices=FORMATS,
              help="output format; heic through pillow-heif, avif through Pillow"),
        Param("quality", "int", 90, min=1, max=100, help="JPEG, WebP, AVIF and HEIC quality"),
        Param("compression", "int", 3, min=0, max=9, help="PNG compression level (0 fastest, 9 smallest)"),
        Param("lossless", "bool", False, help="WebP: lossless instead of quality-based"),
        Param("progressive", "bool", False, help="JPEG: progressive encoding"),
        Param("background", "color", (255, 255, 255),
              help="JPEG: colour that transparent pixels are flattened onto"),
    )

    def check(self) -> None:
        if self.output_format in ("avif", "heic"):
            from batchcli.imaging.heif import can_write  # the parent checks what the workers will use

            if not can_write(self.output_format):
                raise ConfigError(f"convert: this installation cannot write {self.output_format.upper()} (try webp)")

    @property
    def output_format(self) -> str:
        return _ALIASES.get(self.p["format"], self.p["format"])

    def apply(self, frame: Frame) -> Frame:
        frame.out_format = self.output_format
        frame.encode.update(
            quality=self.p["quality"],
            compression=self.p["compression"],
            lossless=self.p["lossless"],
            progressive=self.p["progressive"],
            background=self.p["background"],
        )
        return frame
