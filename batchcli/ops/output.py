"""Output format: convert."""

from __future__ import annotations

from batchcli.ops.base import Frame, Op, Param, register


@register
class Convert(Op):
    name = "convert"
    summary = "Choose the output format and its quality."
    shrink_safe = True
    params = (
        Param("format", "choice", positional=True, choices=("jpg", "jpeg", "png", "webp", "tiff", "bmp"),
              help="output format"),
        Param("quality", "int", 90, min=1, max=100, help="JPEG/WebP quality"),
        Param("compression", "int", 3, min=0, max=9, help="PNG compression level"),
    )

    @property
    def output_format(self) -> str:
        return "jpg" if self.p["format"] == "jpeg" else self.p["format"]

    def apply(self, frame: Frame) -> Frame:
        frame.out_format = self.output_format
        frame.encode.update(quality=self.p["quality"], compression=self.p["compression"])
        return frame
