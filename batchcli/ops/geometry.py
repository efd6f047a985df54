"""Geometry: orient, resize, crop, rotate, flip, pad.

Sizes and positions are in display coordinates: `resize` accounts for an EXIF orientation that
is still pending, and the other ops apply it first, so a portrait photo is cropped, padded or
rotated as it is seen, whether or not the pipeline starts with `orient`.
"""

from __future__ import annotations

import math

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import LazyModule, cv2, np
from batchcli.ops.base import Frame, Op, Param, register
from batchcli.units import fmt_bytes

imageio = LazyModule("batchcli.imaging.imageio")  # (pixels only: a pipeline is parsed without it)

_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
GRAVITIES = ("center", "top", "bottom", "left", "right", "tl", "tr", "bl", "br")


@register
class Orient(Op):
    name = "orient"
    summary = "Rotate/flip the pixels upright according to the EXIF orientation tag."
    shrink_safe = True

    def apply(self, frame: Frame) -> Frame:
        if frame.orientation != 1:
            frame.meta.setdefault("orient", {})["applied"] = frame.orientation
            frame.img = imageio.apply_orientation(frame.img, frame.orientation)
            frame.orientation = 1
        return frame


# --- resize ------------------------------------------------------------------------------------

def _fit_scale(w: int, h: int, box: tuple[int, int]) -> float:
    bw, bh = box
    scales = [s for s in ((bw / w) if bw else None, (bh / h) if bh else None) if s is not None]
    return min(scales)


def _scaled(w: int, h: int, s: float) -> tuple[int, int]:
    return max(1, round(w * s)), max(1, round(h * s))


def resize_pixels(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height): area averaging to shrink, Lanczos to enlarge. Colour under
    partly transparent pixels is weighted by alpha, so edges get no dark or bright fringes."""
    h, w = img.shape[:2]
    if (w, h) == size:
        return img
    try:
        return _resampled(img, size, cv2.INTER_AREA if size[0] * size[1] <= w * h else cv2.INTER_LANCZOS4)
    except cv2.error as exc:
        if "Insufficient memory" not in str(exc):
            raise
    need = size[0] * size[1] * (img.shape[2] if img.ndim == 3 else 1) * img.dtype.itemsize
    raise ItemError("oom", f"resize to {size[0]}x{size[1]}: out of memory for its {fmt_bytes(need)} of pixels")


def _resampled(img: np.ndarray, size: tuple[int, int], interp: int) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 4 and not (img[:, :, 3] == img[:, :, 3].max()).all():
        top = float(np.iinfo(img.dtype).max)
        f = img.astype(np.float32)
        a = f[:, :, 3:4] / top
        f[:, :, :3] *= a
        f = cv2.resize(f, size, interpolation=interp)
        alpha = np.clip(f[:, :, 3:4], 0, top)
        safe = np.where(alpha > 0, alpha / top, 1.0)
        f[:, :, :3] /= safe
        f[:, :, 3:4] = alpha
        return np.clip(f + 0.5, 0, top).astype(img.dtype)
    return cv2.resize(img, size, interpolation=interp)


def _full_size(frame: Frame) -> tuple[int, int]:
    """The (width, height) the current pixels would have without shrink-on-load."""
    h, w = frame.img.shape[:2]
    n = frame.shrink
    if n <= 1:
        return w, h
    sw, sh = frame.src_size
    for a, b in ((sw, sh), (sh, sw)):
        if math.ceil(a / n) == w and math.ceil(b / n) == h:
            return a, b
    return w * n, h * n


@register
class Resize(Op):
    name = "resize"
    summary = "Resize: fit inside WxH (default), fill and crop, exact, longest side, or percent."
    params = (
        Param("size", "size", positional=True,
              help="WIDTHxHEIGHT (x768 or 1024x leave a side free); one number for mode=long or percent"),
        Param("mode", "choice", "fit", choices=("fit", "fill", "exact", "long", "percent"),
              help="fit: inside the box, aspect kept; fill: cover the box, centre-cropped to it; "
                   "exact: stretched to WxH; long: longest side = N; percent: scaled by N %"),
        Param("upscale", "bool", False,
              help="fit, fill, long: also enlarge images smaller than the target (exact and percent always apply)"),
    )

    def check(self) -> None:
        w, h = self.p["size"]
        mode = self.p["mode"]
        if mode in ("fill", "exact") and not (w and h):
            raise ConfigError(f"resize: mode={mode} needs both sides, e.g. 800x600")
        if mode in ("long", "percent") and w and h and w != h:
            raise ConfigError(f"resize: mode={mode} takes one number, e.g. resize 2048 mode={mode}")
        if mode == "percent" and not 1 <= max(w, h) <= 1000:
            raise ConfigError("resize: mode=percent takes 1 to 1000")

    def plan(self, w: int, h: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """For a (display) w x h image: the size to resample to, and the centred crop after it."""
        bw, bh = self.p["size"]
        mode, up = self.p["mode"], self.p["upscale"]
        if mode == "exact":
            return (bw, bh), None
        if mode == "percent":
            return _scaled(w, h, max(bw, bh) / 100), None
        if mode == "fill":
            s = max(bw / w, bh / h)
            if s > 1 and not up:  # no enlarging: the largest crop of the box's shape
                return (w, h), (min(w, max(1, round(bw / s))), min(h, max(1, round(bh / s))))
            return (max(bw, round(w * s)), max(bh, round(h * s))), (bw, bh)
        s = max(bw, bh) / max(w, h) if mode == "long" else _fit_scale(w, h, (bw, bh))
        if s >= 1 and not up:
            return (w, h), None
        return _scaled(w, h, s), None

    def apply(self, frame: Frame) -> Frame:
        fw, fh = _full_size(frame)
        turned = frame.orientation in _TRANSPOSED
        if turned:
            fw, fh = fh, fw
        size, crop = self.plan(fw, fh)
        if turned:  # the pixels are stored sideways: plan upright, resample sideways
            size = (size[1], size[0])
            crop = (crop[1], crop[0]) if crop else None
        frame.img = resize_pixels(frame.img, size)
        if crop:
            frame.img = _crop_gravity(frame.img, crop, "center")
        return frame

    def shrink_limit(self, width: int, height: int) -> int:
        """The largest JPEG decode reduction that leaves at least the pixels the resample needs,
        for either orientation of the source (so a pending EXIF rotation cannot fool it)."""
        return min(self._limit(width, height), self._limit(height, width))

    def _limit(self, w: int, h: int) -> int:
        (rw, rh), _ = self.plan(w, h)
        for n in (8, 4, 2):
            if w // n >= rw and h // n >= rh:
                return n
        return 1


# --- crop, rotate, flip, pad -------------------------------------------------------------------

def _offset(space: int, gravity: str, low: str, high: str) -> int:
    if low in gravity:
        return 0
    if high in gravity:
        return space
    return space // 2


def _place(outer: tuple[int, int], inner: tuple[int, int], gravity: str) -> tuple[int, int]:
    """Top-left (x, y) of an inner box placed in an outer one by gravity."""
    g = {"top": "t", "bottom": "b", "left": "l", "right": "r", "center": ""}.get(gravity, gravity)
    return _offset(outer[0] - inner[0], g, "l", "r"), _offset(outer[1] - inner[1], g, "t", "b")


def _crop_gravity(img: np.ndarray, size: tuple[int, int], gravity: str) -> np.ndarray:
    h, w = img.shape[:2]
    cw, ch = min(size[0] or w, w), min(size[1] or h, h)
    x, y = _place((w, h), (cw, ch), gravity)
    return np.ascontiguousarray(img[y:y + ch, x:x + cw])


def _parse_aspect(text: str) -> float:
    a, sep, b = text.replace("/", ":").partition(":")
    num, den = float(a), float(b) if sep else 1.0
    if not (num > 0 and den > 0 and math.isfinite(num) and math.isfinite(den)):
        raise ValueError
    ratio = num / den
    if not ratio > 0 or math.isinf(ratio):
        raise ValueError
    return ratio


@register
class Crop(Op):
    name = "crop"
    summary = "Crop: a centred WxH, a box x,y,w,h, or the largest area of an aspect ratio (16:9, 1:1)."
    params = (
        Param("size", "str", "", positional=True, help="WIDTHxHEIGHT of a crop placed by gravity"),
        Param("box", "str", "", help="x,y,w,h in pixels from the top-left corner"),
        Param("aspect", "str", "", help="largest crop of this shape, e.g. 16:9, 4:3, 1:1"),
        Param("gravity", "choice", "center", choices=GRAVITIES,
              help="where a size or aspect crop sits: center, top, bottom, left, right, tl, tr, bl, br"),
    )

    def check(self) -> None:
        given = [k for k in ("size", "box", "aspect") if self.p[k]]
        if len(given) != 1:
            raise ConfigError("crop: give exactly one of a size (crop 800x600), box=x,y,w,h or aspect=16:9")
        try:
            if self.p["size"]:
                Param("size", "size").parse("crop", self.p["size"])
            elif self.p["box"]:
                self._box()
            else:
                _parse_aspect(self.p["aspect"])
        except (ValueError, ConfigError):
            key = given[0]
            raise ConfigError(f"crop: {key}={self.p[key]!r} is not valid "
                              "(size: 800x600; box: x,y,w,h with w,h > 0; aspect: 16:9)") from None

    def _box(self) -> tuple[int, int, int, int]:
        x, y, w, h = (int(v) for v in self.p["box"].split(","))
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise ValueError
        return x, y, w, h

    def apply(self, frame: Frame) -> Frame:
        imageio.upright(frame)
        img = frame.img
        h, w = img.shape[:2]
        if self.p["box"]:
            x, y, bw, bh = self._box()
            if x >= w or y >= h:
                raise ItemError("op", f"crop: box {self.p['box']} lies outside the {w}x{h} image")
            frame.img = np.ascontiguousarray(img[y:min(h, y + bh), x:min(w, x + bw)])
            return frame
        if self.p["size"]:
            size = Param("size", "size").parse("crop", self.p["size"])
        else:
            ratio = _parse_aspect(self.p["aspect"])
            size = (w, max(1, round(w / ratio))) if w / h <= ratio else (max(1, round(h * ratio)), h)
        frame.img = _crop_gravity(img, size, self.p["gravity"])
        return frame


_ROTATIONS = {"90": "ROTATE_90_CLOCKWISE", "180": "ROTATE_180", "270": "ROTATE_90_COUNTERCLOCKWISE"}


@register
class Rotate(Op):
    name = "rotate"
    summary = "Rotate clockwise by 90, 180 or 270 degrees (lossless)."
    params = (Param("angle", "choice", positional=True, choices=tuple(_ROTATIONS), help="degrees clockwise"),)

    def __init__(self, **values):
        super().__init__(**values)
        # a half turn keeps width and height, so a reduced decode before it changes nothing
        self.shrink_safe = self.p.get("angle") == "180"

    def apply(self, frame: Frame) -> Frame:
        imageio.upright(frame)
        frame.img = cv2.rotate(frame.img, getattr(cv2, _ROTATIONS[self.p["angle"]]))
        return frame


@register
class Flip(Op):
    name = "flip"
    summary = "Mirror the image: h (left-right) or v (top-bottom)."
    shrink_safe = True
    params = (Param("axis", "choice", positional=True, choices=("h", "v"), help="h: left-right; v: top-bottom"),)

    def apply(self, frame: Frame) -> Frame:
        imageio.upright(frame)
        frame.img = cv2.flip(frame.img, 1 if self.p["axis"] == "h" else 0)
        return frame


@register
class Pad(Op):
    name = "pad"
    summary = "Letterbox to exactly WxH: fit inside (shrinking only), then fill the border with a colour."
    params = (
        Param("size", "size", positional=True, help="WIDTHxHEIGHT of the result"),
        Param("color", "color", (0, 0, 0), help="border colour: #rrggbb, r,g,b, black, white or gray"),
        Param("gravity", "choice", "center", choices=GRAVITIES, help="where the image sits in the box"),
    )

    def check(self) -> None:
        w, h = self.p["size"]
        if not (w and h):
            raise ConfigError("pad: needs both sides, e.g. pad 1080x1080")

    def apply(self, frame: Frame) -> Frame:
        imageio.upright(frame)
        bw, bh = self.p["size"]
        img = frame.img
        h, w = img.shape[:2]
        s = min(bw / w, bh / h, 1.0)
        if s < 1:
            img = resize_pixels(img, (min(bw, max(1, round(w * s))), min(bh, max(1, round(h * s)))))
            h, w = img.shape[:2]
        x, y = _place((bw, bh), (w, h), self.p["gravity"])
        frame.img = cv2.copyMakeBorder(img, y, bh - h - y, x, bw - w - x, cv2.BORDER_CONSTANT,
                                       value=imageio.color_for(img, self.p["color"]))
        return frame
