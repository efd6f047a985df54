"""Colour management: convert pixels from one ICC profile to another with LittleCMS (Pillow's
ImageCms). 8-bit images go through LittleCMS itself. 16-bit images stay 16-bit: between two
matrix/TRC profiles (sRGB, Adobe RGB, ProPhoto, Wide Gamut, Display P3: the profiles photos
carry) the same conversion is computed here in floating point from the profiles' own tags;
other profiles go through LittleCMS at 8 bits and are widened back to 16 (said in the record).
"""

from __future__ import annotations

import io
import struct
from functools import lru_cache

from batchcli.errors import ItemError
from batchcli.imaging.lazy import np

INTENTS = ("perceptual", "relative", "saturation", "absolute")


@lru_cache(maxsize=1)
def srgb() -> bytes:
    """LittleCMS's own sRGB profile, as bytes (what untagged pixels are taken to be)."""
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def load_profile(data: bytes):
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(io.BytesIO(data))


@lru_cache(maxsize=16)
def _transform(src: bytes, dst: bytes, mode_in: str, mode_out: str, intent: str):
    from PIL import ImageCms

    flags = ImageCms.Flags.BLACKPOINTCOMPENSATION if intent == "relative" else ImageCms.Flags.NONE
    return ImageCms.buildTransform(load_profile(src), load_profile(dst), mode_in, mode_out,
                                   renderingIntent=ImageCms.Intent[_INTENT_NAMES[intent]], flags=flags)


_INTENT_NAMES = {"perceptual": "PERCEPTUAL", "relative": "RELATIVE_COLORIMETRIC", "saturation": "SATURATION",
                 "absolute": "ABSOLUTE_COLORIMETRIC"}


def convert(img, src: bytes, dst: bytes, intent: str = "relative") -> tuple:
    """Pixels (gray, BGR or BGRA; uint8 or uint16) from profile `src` to profile `dst`.
    Returns (pixels, how) where `how` is "lcms", "matrix" (16-bit, computed here) or "lcms-8bit"."""
    from PIL import Image, ImageCms

    alpha = img[:, :, 3] if img.ndim == 3 and img.shape[2] == 4 else None
    px = img[:, :, :3] if alpha is not None else img
    gray = px.ndim == 2
    if gray and _space(src) == "RGB":  # gray pixels taken as RGB (untagged: sRGB) are R = G = B
        px, gray = np.dstack([px, px, px]), False
    out_space = _space(dst)
    if img.dtype == np.uint16 and not gray:
        a, b = _matrix_shaper(src), _matrix_shaper(dst)
        if a is not None and b is not None:
            return _with_alpha(_matrix_convert(px, a, b, intent), alpha), "matrix"
    wide = img.dtype == np.uint16
    if wide:
        px = ((px.astype(np.uint32) + 128) // 257).astype(np.uint8)
    mode_in = "L" if gray else "RGB"
    mode_out = "L" if out_space == "GRAY" else "RGB"
    try:
        rgb = px if gray else np.ascontiguousarray(px[:, :, ::-1])
        res = ImageCms.applyTransform(Image.fromarray(rgb, mode_in), _transform(src, dst, mode_in, mode_out, intent))
    except (ImageCms.PyCMSError, OSError, ValueError) as exc:
        raise ItemError("op", f"profile: cannot convert between these profiles: {exc}") from None
    out = np.asarray(res)
    if mode_out == "RGB":
        out = np.ascontiguousarray(out[:, :, ::-1])
    if wide:
        out = out.astype(np.uint16) * 257
    if alpha is not None and out.ndim == 2:
        out = np.dstack([out, out, out])
    return _with_alpha(out, alpha), "lcms-8bit" if wide else "lcms"


def _with_alpha(px, alpha):
    if alpha is None:
        return px
    return np.ascontiguousarray(np.dstack([px, alpha.astype(px.dtype)]))


def _space(icc: bytes) -> str:
    return icc[16:20].decode("latin-1").strip() if len(icc) >= 20 else ""


# --- matrix/TRC profiles, computed in floating point (16-bit pixels) ---------------------------

def _tags(icc: bytes) -> dict[bytes, bytes]:
    n = struct.unpack(">I", icc[128:132])[0]
    out = {}
    for k in range(min(n, 100)):
        sig, off, size = struct.unpack(">4sII", icc[132 + 12 * k:144 + 12 * k])
        out[sig] = icc[off:off + size]
    return out


def _xyz(tag: bytes):
    return np.array(struct.unpack(">3i", tag[8:20]), np.float64) / 65536.0


def _curve(tag: bytes):
    """A TRC tag as a 65536-entry table of the linear value for each 16-bit code."""
    x = np.arange(65536, dtype=np.float64) / 65535.0
    kind = tag[:4]
    if kind == b"curv":
        n = struct.unpack(">I", tag[8:12])[0]
        if n == 0:
            return x
        if n == 1:
            return x ** (struct.unpack(">H", tag[12:14])[0] / 256.0)
        table = np.frombuffer(tag[12:12 + 2 * n], ">u2").astype(np.float64) / 65535.0
        return np.interp(x, np.linspace(0, 1, n), table)
    if kind == b"para":
        fn = struct.unpack(">H", tag[8:10])[0]
        count = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}[fn]
        p = [v / 65536.0 for v in struct.unpack(f">{count}i", tag[12:12 + 4 * count])]
        g, a, b, c, d, e, f = (p + [0.0] * 7)[:7] if fn else (p[0], 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        if fn == 1:
            return np.where(x >= -b / a, np.clip(a * x + b, 0, None) ** g, 0.0)
        if fn == 2:
            return np.where(x >= -b / a, np.clip(a * x + b, 0, None) ** g + c, c)
        if fn == 3:
            return np.where(x >= d, np.clip(a * x + b, 0, None) ** g, c * x)
        if fn == 4:
            return np.where(x >= d, np.clip(a * x + b, 0, None) ** g + e, c * x + f)
        return x ** g
    raise ValueError("not a curve")


@lru_cache(maxsize=16)
def _matrix_shaper(icc: bytes):
    """(matrix RGB->XYZ, three TRC tables, white point) of an RGB matrix/TRC profile, else None."""
    try:
        if _space(icc) != "RGB":
            return None
        tags = _tags(icc)
        if b"A2B0" in tags or b"A2B1" in tags:  # a LUT profile: LittleCMS uses the LUT
            return None
        m = np.stack([_xyz(tags[t]) for t in (b"rXYZ", b"gXYZ", b"bXYZ")], axis=1)
        curves = tuple(_curve(tags[t]) for t in (b"rTRC", b"gTRC", b"bTRC"))
        white = _xyz(tags[b"wtpt"]) if b"wtpt" in tags else np.array([0.9642, 1.0, 0.8249])
        return m, curves, white
    except (KeyError, ValueError, struct.error, IndexError):
        return None


def _matrix_convert(bgr, a, b, intent: str):
    """uint16 BGR through profile a's TRCs and matrix to XYZ, then b's inverse: uint16 BGR."""
    (ma, ca, wa), (mb, cb, wb) = a, b
    rgb = np.stack([ca[k][bgr[:, :, 2 - k]] for k in range(3)], axis=-1)  # linear, profile a
    m = np.linalg.inv(mb) @ ma
    if intent == "absolute":
        m = np.linalg.inv(mb) @ np.diag(wa / wb) @ ma
    lin = np.clip(rgb.reshape(-1, 3) @ m.T, 0.0, 1.0).reshape(rgb.shape)
    grid = np.arange(65536, dtype=np.float64)
    out = np.empty(bgr.shape, np.uint16)
    for k in range(3):
        table = cb[k]
        out[:, :, 2 - k] = np.clip(np.interp(lin[:, :, k], table, grid) + 0.5, 0, 65535).astype(np.uint16)
    return out
