"""Overlay: watermark with text or a logo image.

The mark is sized relative to the image (`scale` = its width as a percent of the image width,
`margin` = a percent of the image width), so the same pipeline marks a thumbnail and a 24 MP
original alike. A logo's own alpha is respected; the image's alpha passes through.
"""

from __future__ import annotations

from batchcli.argfiles import check_file, read_file
from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.imageio import Limits, load, max_value, merge_alpha, split_alpha, upright
from batchcli.imaging.lazy import cv2, np
from batchcli.ops.base import Frame, Op, Param, op_file, register

POSITIONS = ("br", "bl", "tr", "tl", "center", "top", "bottom", "left", "right")
_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX, only where Pillow was built without FreeType
_FONTS: dict = {}  # (font file or "", size) -> FreeTypeFont, per process
LOGO_PIXELS = 25_000_000
"""The most pixels a `watermark image=` logo may have, judged from its header before decoding."""


def _freetype() -> bool:
    from PIL import features

    return bool(features.check("freetype2"))


def _font(path: str, size: int):
    """The font file at `path` (or Pillow's built-in Aileron when empty) at `size` px."""
    key = (path, size)
    font = _FONTS.get(key)
    if font is None:
        from PIL import ImageFont

        font = ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)
        if len(_FONTS) > 64:
            _FONTS.clear()
        _FONTS[key] = font
    return font


def missing_glyphs(text: str, path: str) -> list[str]:
    """The characters of `text` the font draws as its "missing glyph" box."""
    font = _font(path, 32)

    def look(c: str):
        m = font.getmask(c)
        return m.size, bytes(m)

    nothing = look("\U0010ffff")  # a private-use code point no font has
    return [c for c in dict.fromkeys(text) if not c.isspace() and look(c) == nothing]


def _render_text(text: str, width: int, color: tuple[int, int, int], font_path: str = "") -> np.ndarray:
    """Text about `width` px wide, as a BGRA uint8 image in `color` on transparent."""
    if not _freetype():
        return _render_hershey(text, width, color)
    from PIL import Image, ImageDraw

    left, top, right, bottom = _font(font_path, 100).getbbox(text)
    size = max(4, min(2000, round(100 * width / max(1, right - left))))
    font = _font(font_path, size)
    left, top, right, bottom = font.getbbox(text)
    pad = max(1, size // 20)
    mask = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - left, pad - top), text, font=font, fill=255)
    alpha = np.asarray(mask, np.uint8)
    bgr = np.empty((*alpha.shape, 3), np.uint8)
    bgr[:] = color
    return cv2.merge([*cv2.split(bgr), alpha])


def _render_hershey(text: str, width: int, color: tuple[int, int, int]) -> np.ndarray:
    (tw, th), base = cv2.getTextSize(text, _FONT, 1.0, 2)
    scale = max(0.1, width / max(tw, 1))
    thick = max(1, round(2 * scale))
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thick)
    pad = thick + 1
    mask = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(mask, text, (pad, pad + th), _FONT, scale, 255, thick, cv2.LINE_AA)
    bgr = np.empty((*mask.shape, 3), np.uint8)
    bgr[:] = color
    return cv2.merge([*cv2.split(bgr), mask])


def _as_bgra8(logo: np.ndarray) -> np.ndarray:
    if logo.dtype == np.uint16:
        logo = (logo // 257).astype(np.uint8)
    if logo.ndim == 2:
        return cv2.cvtColor(logo, cv2.COLOR_GRAY2BGRA)
    if logo.shape[2] == 3:
        return cv2.cvtColor(logo, cv2.COLOR_BGR2BGRA)
    return logo


def _read_logo(path: str) -> np.ndarray:
    """The logo's pixels, upright, decoded as inputs are (size from the header first: a small file
    can declare billions of pixels), under LOGO_PIXELS. ConfigError naming the file otherwise."""
    data = read_file(path, "watermark image=", "image")
    try:
        frame = load(path, Limits(max_pixels=LOGO_PIXELS), data=data)
    except ItemError as exc:
        reason = str(exc).replace("--max-pixels", "the logo limit of")
        raise ConfigError(f"watermark image={path}: {reason}") from None
    return upright(frame).img


def _origin(pos: str, outer: tuple[int, int], inner: tuple[int, int], margin: int) -> tuple[int, int]:
    (w, h), (mw, mh) = outer, inner
    x = {"l": margin, "r": w - mw - margin}.get(_side(pos, "lr"), (w - mw) // 2)
    y = {"t": margin, "b": h - mh - margin}.get(_side(pos, "tb"), (h - mh) // 2)
    return x, y


def _side(pos: str, letters: str) -> str:
    words = {"top": "t", "bottom": "b", "left": "l", "right": "r", "center": ""}
    code = words.get(pos, pos)
    return next((c for c in code if c in letters), "")


def composite(img: np.ndarray, mark: np.ndarray, x: int, y: int, opacity: float) -> np.ndarray:
    """Alpha-blend a BGRA uint8 mark onto gray/BGR uint8/uint16 pixels at (x, y), clipped to the
    image; `opacity` (0..1) scales the mark's own alpha."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mark.shape[1], w), min(y + mark.shape[0], h)
    if x0 >= x1 or y0 >= y1:
        return img
    part = mark[y0 - y:y1 - y, x0 - x:x1 - x]
    alpha = part[:, :, 3:4].astype(np.float32) * (opacity / 255)  # opacity in 0..1
    color = part[:, :, :3].astype(np.float32) * (max_value(img) / 255)
    if img.ndim == 2:
        color = cv2.cvtColor(color, cv2.COLOR_BGR2GRAY)[:, :, None]
    out = img.copy()
    region = out[y0:y1, x0:x1].astype(np.float32)
    if img.ndim == 2:
        region = region[:, :, None]
    mixed = region * (1 - alpha) + color * alpha
    mixed = np.clip(mixed + 0.5, 0, max_value(img)).astype(img.dtype)
    out[y0:y1, x0:x1] = mixed[:, :, 0] if img.ndim == 2 else mixed
    return out


@register
class Watermark(Op):
    name = "watermark"
    summary = "Stamp text or a logo image (alpha respected) in a corner, at an opacity, scaled to the image."
    params = (
        Param("text", "str", "", positional=True, help="text to stamp (quote it in a pipeline: watermark '(c) Ann')"),
        Param("image", "str", "", help="logo image file instead of text (PNG with alpha works best)"),
        Param("position", "choice", "br", choices=POSITIONS, help="br, bl, tr, tl, center, top, bottom, left, right"),
        Param("margin", "float", 2.0, min=0, max=40, help="distance from the edges, percent of the image width"),
        Param("opacity", "float", 50.0, min=0, max=100, help="percent"),
        Param("scale", "float", 20.0, min=1, max=100, help="width of the mark, percent of the image width"),
        Param("color", "color", (255, 255, 255), help="text colour"),
        Param("font", "str", "", help="TrueType/OpenType file for the text (default: Pillow's Aileron: "
                                      "English letters, digits, ©)"),
    )

    def check(self) -> None:
        if bool(self.p["text"]) == bool(self.p["image"]):
            raise ConfigError("watermark: give either text (watermark 'Ann Lee') or image=logo.png")
        if self.p["font"]:
            self.p["font"] = op_file(self.p["font"], "watermark font=")
            if not _freetype():
                raise ConfigError("watermark: font= needs Pillow built with FreeType")
            check_file(self.p["font"], "watermark font=", "font")
            try:
                _font(self.p["font"], 32)
            except OSError as exc:
                raise ConfigError(f"watermark: cannot load the font {self.p['font']}: {exc}") from None
        if self.p["text"] and _freetype():
            missing = missing_glyphs(self.p["text"], self.p["font"])
            if missing:
                which = self.p["font"] or "the built-in font"
                raise ConfigError(f"watermark: {which} has no glyph for {' '.join(missing)}; give "
                                  "font=/path/to/font.ttf (e.g. DejaVuSans.ttf) that has them")
        elif self.p["text"] and not self.p["text"].isascii():
            raise ConfigError("watermark: text must be ASCII here (Pillow has no FreeType: the fallback font has no other glyphs)")
        self._logo: np.ndarray | None = None
        if self.p["image"]:
            self.p["image"] = op_file(self.p["image"], "watermark image=")
            self._logo = _as_bgra8(_read_logo(self.p["image"]))

    def _mark(self, width: int) -> np.ndarray:
        if self._logo is None:
            return _render_text(self.p["text"], width, self.p["color"], self.p["font"])
        lh, lw = self._logo.shape[:2]
        size = (max(1, width), max(1, round(lh * width / lw)))
        interp = cv2.INTER_AREA if size[0] < lw else cv2.INTER_CUBIC
        return cv2.resize(self._logo, size, interpolation=interp)

    def apply(self, frame: Frame) -> Frame:
        upright(frame)
        pixels, alpha = split_alpha(frame.img)
        h, w = pixels.shape[:2]
        margin = round(w * self.p["margin"] / 100)
        mark = self._mark(max(1, round(w * self.p["scale"] / 100)))
        if mark.shape[0] > h - 2 * margin:  # a very wide image: fit the mark's height too
            s = max(1, h - 2 * margin) / mark.shape[0]
            mark = cv2.resize(mark, (max(1, round(mark.shape[1] * s)), max(1, round(mark.shape[0] * s))),
                              interpolation=cv2.INTER_AREA)
        x, y = _origin(self.p["position"], (w, h), (mark.shape[1], mark.shape[0]), margin)
        out = composite(np.ascontiguousarray(pixels), mark, x, y, self.p["opacity"] / 100)
        frame.img = merge_alpha(out, alpha)
        return frame
