"""Geometry: orient, resize."""

from __future__ import annotations

import cv2

from batchcli.imageio import apply_orientation
from batchcli.ops.base import Frame, Op, Param, register


@register
class Orient(Op):
    name = "orient"
    summary = "Rotate/flip the pixels upright according to the EXIF orientation tag."
    shrink_safe = True

    def apply(self, frame: Frame) -> Frame:
        if frame.orientation != 1:
            frame.meta.setdefault("orient", {})["applied"] = frame.orientation
            frame.img = apply_orientation(frame.img, frame.orientation)
            frame.orientation = 1
        return frame


def _fit_scale(w: int, h: int, box: tuple[int, int]) -> float:
    bw, bh = box
    scales = [s for s in ((bw / w) if bw else None, (bh / h) if bh else None) if s is not None]
    return min(scales)


@register
class Resize(Op):
    name = "resize"
    summary = "Fit the image inside WxH (keeps the aspect ratio; no upscaling unless upscale=true)."
    params = (
        Param("size", "size", positional=True, help="target box WIDTHxHEIGHT (x768 or 1024x leave a side free)"),
        Param("upscale", "bool", False, help="allow enlarging images smaller than the box"),
    )

    def target(self, w: int, h: int) -> tuple[int, int]:
        s = _fit_scale(w, h, self.p["size"])
        if s >= 1 and not self.p["upscale"]:
            return w, h
        return max(1, round(w * s)), max(1, round(h * s))

    def apply(self, frame: Frame) -> Frame:
        h, w = frame.img.shape[:2]
        tw, th = self.target(w, h)
        if (tw, th) != (w, h):
            interp = cv2.INTER_AREA if tw < w else cv2.INTER_LANCZOS4
            frame.img = cv2.resize(frame.img, (tw, th), interpolation=interp)
        return frame

    def shrink_limit(self, width: int, height: int) -> int:
        s = _fit_scale(width, height, self.p["size"])
        for n in (8, 4, 2):
            if s * n <= 1.0:
                return n
        return 1
