"""Colour: preset (built-in or TOML looks), lut (.cube 3D LUTs), autolevel, whitebalance, clahe.

Every op works on uint8 and uint16, gray, BGR and BGRA; alpha passes through untouched.
One grading engine (`Look`) implements the look adjustments; the built-in presets in
`batchcli.ops.presets` are just parameter sets for it. A look is applied in three vectorised
steps: a 3x3 colour matrix (exposure, temperature, tint, saturation), one tone lookup table
per channel (contrast, gamma, curves), then a radial vignette mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from batchcli.argfiles import read_file, read_text
from batchcli.errors import ConfigError
from batchcli.imaging.imageio import max_value, merge_alpha, split_alpha
from batchcli.imaging.lazy import cv2, np
from batchcli.ops.base import Frame, Op, Param, op_file, register
from batchcli.ops.presets import BUILTIN

_LUMA_BGR = (0.114, 0.587, 0.299)
_RANGES = {
    "exposure": (-5.0, 5.0, "stops"),
    "contrast": (-100.0, 100.0, ""),
    "saturation": (-100.0, 100.0, ""),
    "temperature": (-100.0, 100.0, "negative cooler, positive warmer"),
    "tint": (-100.0, 100.0, "negative greener, positive more magenta"),
    "gamma": (0.1, 10.0, "above 1 brightens the mid-tones"),
    "vignette": (0.0, 100.0, "darkening of the corners"),
}
_CURVE_CHANNELS = ("rgb", "r", "g", "b")
LOOK_KEYS = (*_RANGES, "curves")


# --- tone curves ---------------------------------------------------------------------------------

def monotone_curve(points: list[tuple[float, float]], x: np.ndarray) -> np.ndarray:
    """Evaluate a smooth curve through (x, y) points in 0..1 that never overshoots between them
    (monotone cubic Hermite interpolation), flat outside the first and last point."""
    px = np.array([p[0] for p in points], np.float64)
    py = np.array([p[1] for p in points], np.float64)
    if len(px) == 1:
        return np.full_like(x, py[0])
    d = np.diff(py) / np.diff(px)
    m = np.empty_like(px)
    m[0], m[-1] = d[0], d[-1]
    m[1:-1] = np.where(d[:-1] * d[1:] > 0, 2 / (1 / np.where(d[:-1] == 0, 1, d[:-1]) + 1 / np.where(d[1:] == 0, 1, d[1:])), 0)
    xc = np.clip(x, px[0], px[-1])
    i = np.clip(np.searchsorted(px, xc, side="right") - 1, 0, len(px) - 2)
    h = px[i + 1] - px[i]
    t = (xc - px[i]) / h
    t2, t3 = t * t, t * t * t
    return ((2 * t3 - 3 * t2 + 1) * py[i] + (t3 - 2 * t2 + t) * h * m[i]
            + (-2 * t3 + 3 * t2) * py[i + 1] + (t3 - t2) * h * m[i + 1])


def _parse_curve(where: str, value: Any) -> tuple[tuple[float, float], ...]:
    try:
        pts = sorted((float(a), float(b)) for a, b in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: a curve is a list of [input, output] pairs in 0..255") from None
    if len(pts) < 2 or any(not (0 <= a <= 255 and 0 <= b <= 255) for a, b in pts):
        raise ConfigError(f"{where}: a curve needs at least 2 [input, output] points in 0..255")
    if len({a for a, _ in pts}) != len(pts):
        raise ConfigError(f"{where}: two curve points share an input value")
    return tuple((a / 255, b / 255) for a, b in pts)


# --- the look ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Look:
    """A set of adjustments; all zero (gamma 1) is the identity."""

    exposure: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    temperature: float = 0.0
    tint: float = 0.0
    gamma: float = 1.0
    vignette: float = 0.0
    curves: tuple = ()  # ((channel, ((x, y), ...)), ...) in 0..1; channel rgb, r, g or b
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, doc: dict, where: str) -> Look:
        """Validate a look table (TOML or built-in). Unknown keys and bad values raise ConfigError."""
        values: dict[str, Any] = {}
        for key, raw in doc.items():
            if key in ("about", "name"):
                continue
            if key == "curves":
                table = {"rgb": raw} if isinstance(raw, list) else raw
                if not isinstance(table, dict) or not set(table) <= set(_CURVE_CHANNELS):
                    raise ConfigError(f"{where}: curves is a list of points or a table with keys rgb, r, g, b")
                values["curves"] = tuple((ch, _parse_curve(f"{where}: curves.{ch}", table[ch]))
                                         for ch in _CURVE_CHANNELS if ch in table)
                continue
            if key not in _RANGES:
                raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(LOOK_KEYS)})")
            lo, hi, _ = _RANGES[key]
            try:
                v = float(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: {key} must be a number, not {raw!r}") from None
            if not lo <= v <= hi:
                raise ConfigError(f"{where}: {key} = {v:g} is outside {lo:g}..{hi:g}")
            values[key] = v
        return cls(**values)

    # -- building blocks (cached per look and depth) --
    def gains(self) -> np.ndarray:
        """Per-channel (B, G, R) gains from exposure, temperature and tint."""
        t, m = self.temperature / 100, self.tint / 100
        return 2.0 ** self.exposure * np.array([1 - 0.25 * t, 1 - 0.18 * m, 1 + 0.25 * t])

    def matrix(self) -> np.ndarray:
        s = 1 + self.saturation / 100
        sat = s * np.eye(3) + (1 - s) * np.outer(np.ones(3), np.array(_LUMA_BGR, np.float64))
        return (sat @ np.diag(self.gains())).astype(np.float32)

    def tone(self, x: np.ndarray, channel: str, gain: float = 1.0) -> np.ndarray:
        """The tone curve of one channel ('b', 'g', 'r' or 'rgb' for gray) on values in 0..1."""
        y = np.clip(x * gain, 0, 1)
        if self.contrast:
            y = np.clip((y - 0.5) * (1 + self.contrast / 100) + 0.5, 0, 1)
        if self.gamma != 1:
            y = y ** (1 / self.gamma)
        curves = dict(self.curves)
        if "rgb" in curves:
            y = monotone_curve(list(curves["rgb"]), y)
        if channel != "rgb" and channel in curves:
            y = monotone_curve(list(curves[channel]), y)
        return np.clip(y, 0, 1)

    def luts(self, top: int, channels: int, fold_gains: bool) -> list[np.ndarray]:
        """Tone tables for each channel; with fold_gains the colour gains are applied in them."""
        key = (top, channels, fold_gains)
        if key not in self._cache:
            x = np.arange(top + 1, dtype=np.float64) / top
            dtype = np.uint8 if top == 255 else np.uint16
            if channels == 1:
                gains, names = [2.0 ** self.exposure], ["rgb"]
            else:
                gains, names = (list(self.gains()) if fold_gains else [1.0] * 3), ["b", "g", "r"]
            self._cache[key] = [(self.tone(x, n, g) * top + 0.5).astype(dtype) for n, g in zip(names, gains)]
        return self._cache[key]

    def vignette_mask(self, h: int, w: int, top: int) -> np.ndarray:
        """A (h, w) multiplier in 0..top, darker towards the corners."""
        key = ("vig", h, w, top)
        if key not in self._cache:
            self._cache.pop(next((k for k in self._cache if k[0] == "vig"), None), None)
            sh, sw = max(2, min(h, 256)), max(2, min(w, 256))
            yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
            r = np.hypot((xx / (sw - 1) - 0.5) * 2, (yy / (sh - 1) - 0.5) * 2) / np.sqrt(2)
            fall = np.clip((r - 0.3) / 0.7, 0, 1) ** 2
            small = 1 - (self.vignette / 100) * 0.75 * fall
            mask = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
            self._cache[key] = (mask * top + 0.5).astype(np.uint8 if top == 255 else np.uint16)
        return self._cache[key]

    def apply(self, img: np.ndarray) -> np.ndarray:
        """Grade gray or BGR pixels (no alpha) of uint8 or uint16."""
        top = max_value(img)
        gray = img.ndim == 2
        use_matrix = not gray and self.saturation != 0
        out = img
        if use_matrix:
            out = cv2.transform(out, self.matrix())
        out = apply_luts(out, self.luts(top, 1 if gray else 3, fold_gains=not use_matrix))
        if self.vignette:
            mask = self.vignette_mask(out.shape[0], out.shape[1], top)
            if not gray:
                mask = cv2.merge([mask, mask, mask])
            out = cv2.multiply(out, mask, scale=1.0 / top)
        return out


def apply_luts(img: np.ndarray, luts: list[np.ndarray]) -> np.ndarray:
    """Per-channel table lookup (one table per channel) for uint8 or uint16 images."""
    if img.dtype == np.uint8:
        table = luts[0] if len(luts) == 1 else np.dstack(luts).reshape(1, 256, len(luts))
        return cv2.LUT(img, table)
    if img.ndim == 2:
        return luts[0][img]
    return np.dstack([lut[img[:, :, c]] for c, lut in enumerate(luts)])


def blend(graded: np.ndarray, original: np.ndarray, amount: float) -> np.ndarray:
    """`amount` (0..100) of the graded image over the original."""
    if amount >= 100:
        return graded
    if amount <= 0:
        return original
    a = amount / 100
    return cv2.addWeighted(graded, a, original, 1 - a, 0)


def graded(frame: Frame, fn, amount: float = 100.0) -> Frame:
    """Run `fn(pixels)` on the colour or gray part of a frame, blend, and keep its alpha."""
    pixels, alpha = split_alpha(frame.img)
    pixels = np.ascontiguousarray(pixels)
    frame.img = merge_alpha(blend(fn(pixels), pixels, amount), alpha)
    return frame


def _read_toml(path: str, what: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    text = read_text(path, what, "toml")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what}: {path} is not valid TOML: {exc}") from None


def is_look_file(name: str) -> bool:
    return name.endswith(".toml") or os.sep in name or "/" in name or os.path.isfile(name)


def load_look(name: str) -> Look:
    """A built-in look by name, or a user look from a TOML file path."""
    if name in BUILTIN:
        return Look.from_dict(BUILTIN[name], f"preset {name}")
    if is_look_file(name):
        doc = _read_toml(name, "preset")
        if isinstance(doc.get("preset"), dict):
            doc = doc["preset"]
        return Look.from_dict(doc, f"preset {name}")
    raise ConfigError(f"preset: unknown look {name!r} (built-in: {', '.join(BUILTIN)}; or a path to a .toml look)")


@register
class Preset(Op):
    name = "preset"
    summary = "Apply a look (built-in: " + ", ".join(BUILTIN) + "; or a look.toml), blended with the original."
    shrink_safe = True
    params = (
        Param("look", "str", positional=True,
              help="built-in name or a .toml file with exposure, contrast, saturation, temperature, tint, "
                   "gamma, curves, vignette"),
        Param("blend", "float", 100.0, min=0, max=100, help="strength of the look in percent (0 = original)"),
    )

    def check(self) -> None:
        look = self.p["look"]
        if look not in BUILTIN and is_look_file(look):
            self.p["look"] = look = op_file(look, "preset")
        self._look = load_look(look)

    def apply(self, frame: Frame) -> Frame:
        return graded(frame, self._look.apply, self.p["blend"])


# --- .cube 3D LUTs ---------------------------------------------------------------------------------

@dataclass
class Cube:
    """A parsed .cube 3D LUT: `table[b, g, r]` holds the (r, g, b) output for that grid point."""

    size: int
    table: np.ndarray  # (N, N, N, 3) float32
    domain_min: tuple[float, float, float] = (0.0, 0.0, 0.0)
    domain_max: tuple[float, float, float] = (1.0, 1.0, 1.0)
    title: str = ""


def parse_cube(text: str, where: str = "lut") -> Cube:
    """Parse the Adobe/Resolve .cube format: TITLE, LUT_3D_SIZE, DOMAIN_MIN/MAX (or
    LUT_3D_INPUT_RANGE), comments, then N^3 rows of 'r g b' with red changing fastest."""
    size, title = 0, ""
    dmin, dmax = [0.0] * 3, [1.0] * 3
    rows: list[list[float]] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        word = line.split(None, 1)[0].upper()
        try:
            if word == "TITLE":
                title = line[5:].strip().strip('"')
            elif word == "LUT_3D_SIZE":
                size = int(line.split()[1])
            elif word == "LUT_1D_SIZE":
                raise ConfigError(f"{where}: 1D .cube LUTs are not supported (this op applies 3D LUTs)")
            elif word == "DOMAIN_MIN":
                dmin = [float(v) for v in line.split()[1:4]]
            elif word == "DOMAIN_MAX":
                dmax = [float(v) for v in line.split()[1:4]]
            elif word == "LUT_3D_INPUT_RANGE":
                lo, hi = (float(v) for v in line.split()[1:3])
                dmin, dmax = [lo] * 3, [hi] * 3
            elif word[0].isalpha() and word not in ("NAN", "INF", "INFINITY"):
                continue  # other keywords (e.g. LUT_1D_INPUT_RANGE) do not affect a 3D table
            else:
                values = [float(v) for v in line.split()]
                if len(values) != 3:
                    raise ValueError("expected 3 numbers")
                rows.append(values)
        except (ValueError, IndexError) as exc:
            raise ConfigError(f"{where}: line {n}: cannot read {raw.strip()[:40]!r} ({str(exc)[:80]})") from None
    if not 2 <= size <= 256:
        raise ConfigError(f"{where}: LUT_3D_SIZE missing or outside 2..256")
    if len(rows) != size ** 3:
        raise ConfigError(f"{where}: expected {size ** 3} rows for LUT_3D_SIZE {size}, found {len(rows)}")
    if len(dmin) != 3 or len(dmax) != 3 or any(b <= a for a, b in zip(dmin, dmax)):
        raise ConfigError(f"{where}: DOMAIN_MIN must be below DOMAIN_MAX for every channel")
    table = np.asarray(rows, np.float32).reshape(size, size, size, 3)
    if not (np.isfinite(table).all() and np.isfinite(dmin + dmax).all()):
        raise ConfigError(f"{where}: NaN or infinite values in the table or the domain")
    return Cube(size, table, tuple(dmin), tuple(dmax), title)


class CubeApplier:
    """Trilinear interpolation of a 3D LUT with OpenCV primitives.

    The cube is first resampled along blue to 256 slices (one per 8-bit blue value, linear
    between the cube's own slices), and the N x N (green x red) slices sit side by side in a 2D
    atlas. For 8-bit input a pixel's blue picks its slice exactly, so one bilinear `cv2.remap`
    (red and green) gives the trilinear result; every coordinate comes from a 256-entry table, so
    no per-pixel arithmetic runs in Python. 16-bit input blends the two nearest slices."""

    SLICES = 256
    STRIP_PIXELS = 1 << 18

    def __init__(self, cube: Cube):
        n = self.n = cube.size
        self.dmin = np.array(cube.domain_min[::-1], np.float64)  # B, G, R order
        self.dmax = np.array(cube.domain_max[::-1], np.float64)
        self.per_row = max(1, 32000 // n)  # remap needs the atlas under 32767 px wide
        rows = -(-self.SLICES // self.per_row)
        blue = self._coords(np.arange(self.SLICES) / (self.SLICES - 1), 0)
        lo = np.minimum(np.floor(blue), n - 2).astype(np.int64)
        frac = (blue - lo).astype(np.float32)[:, None, None, None]
        table = cube.table[:, :, :, ::-1]  # rows g, columns r, BGR out
        slices = table[lo] * (1 - frac) + table[lo + 1] * frac  # (256, N, N, 3)
        self.atlas = np.zeros((rows * n, min(self.SLICES, self.per_row) * n, 3), np.float32)
        for k in range(self.SLICES):
            y, x = (k // self.per_row) * n, (k % self.per_row) * n
            self.atlas[y:y + n, x:x + n] = slices[k]
        k = np.arange(self.SLICES)
        self.xoff = ((k % self.per_row) * n).astype(np.float32)
        self.yoff = ((k // self.per_row) * n).astype(np.float32)
        v = np.arange(256, dtype=np.float64) / 255
        self.red = self._coords(v, 2).astype(np.float32)
        self.green = self._coords(v, 1).astype(np.float32)

    def _coords(self, values: np.ndarray, c: int) -> np.ndarray:
        """Grid coordinate (0..N-1) of channel c (B=0, G=1, R=2) for normalised input values."""
        t = (values - self.dmin[c]) / (self.dmax[c] - self.dmin[c])
        return np.clip(t, 0, 1) * (self.n - 1)

    def _lookup(self, fx: np.ndarray, fy: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Bilinear lookup in blue slice k (uint8 or integer-valued array) at red fx, green fy."""
        if k.dtype == np.uint8:
            mx, my = cv2.add(fx, cv2.LUT(k, self.xoff)), fy
            if self.per_row < self.SLICES:
                my = cv2.add(fy, cv2.LUT(k, self.yoff))
        else:
            mx, my = fx + self.xoff[k], fy + self.yoff[k]
        return self._remap(mx, my)

    def _remap(self, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
        """`cv2.remap` of the atlas at (mx, my). remap takes maps under 32767 px a side; as every
        pixel is looked up alone, longer maps are laid out again in rows of 4096, a block at a time."""
        h, w = mx.shape
        if h < 32767 and w < 32767:
            return cv2.remap(self.atlas, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        fx, fy = mx.reshape(-1), my.reshape(-1)
        out = np.empty((fx.size, 3), np.float32)
        step = 4096 * 4096
        for at in range(0, fx.size, step):
            part = slice(at, min(at + step, fx.size))
            n = part.stop - part.start
            pad = -n % 4096
            bx = np.pad(fx[part], (0, pad)).reshape(-1, 4096)
            by = np.pad(fy[part], (0, pad)).reshape(-1, 4096)
            got = cv2.remap(self.atlas, bx, by, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            out[part] = got.reshape(-1, 3)[:n]
        return out.reshape(h, w, 3)

    def apply(self, img: np.ndarray) -> np.ndarray:
        """BGR uint8/uint16 in, same out. Gray input is looked up as neutral colour and kept gray."""
        gray = img.ndim == 2
        if gray:
            img = cv2.merge([img, img, img])
        if img.dtype == np.uint8:
            out = np.empty_like(img)
            rows = max(1, self.STRIP_PIXELS // img.shape[1])
            for y in range(0, img.shape[0], rows):  # strips keep the temporaries in cache
                b, g, r = cv2.split(img[y:y + rows])
                part = self._lookup(cv2.LUT(r, self.red), cv2.LUT(g, self.green), b)
                out[y:y + rows] = cv2.convertScaleAbs(part, alpha=255.0)
        else:
            top = float(max_value(img))
            f = img.astype(np.float32) / top
            fx = self._coords(f[:, :, 2], 2).astype(np.float32)
            fy = self._coords(f[:, :, 1], 1).astype(np.float32)
            kb = f[:, :, 0] * (self.SLICES - 1)
            k0 = np.minimum(np.floor(kb), self.SLICES - 2).astype(np.intp)
            w = (kb - k0).astype(np.float32)
            out = cv2.blendLinear(self._lookup(fx, fy, k0), self._lookup(fx, fy, k0 + 1), 1 - w, w)
            out = np.clip(out * top + 0.5, 0, top).astype(np.uint16)
        return cv2.cvtColor(out, cv2.COLOR_BGR2GRAY) if gray else out


@register
class Lut(Op):
    name = "lut"
    summary = "Apply a .cube 3D LUT (Lightroom, Resolve, darktable) with trilinear interpolation."
    shrink_safe = True
    params = (
        Param("file", "path", positional=True, help="the .cube file"),
        Param("blend", "float", 100.0, min=0, max=100, help="strength in percent (0 = original)"),
    )

    def check(self) -> None:
        text = read_file(self.p["file"], "lut", "lut").decode("utf-8", "replace")
        self._cube = parse_cube(text, f"lut {self.p['file']}")
        self._applier: CubeApplier | None = None

    def prepare(self) -> None:
        if self._applier is None:
            self._applier = CubeApplier(self._cube)

    def apply(self, frame: Frame) -> Frame:
        self.prepare()
        return graded(frame, self._applier.apply, self.p["blend"])

    def __getstate__(self):  # the atlas is rebuilt per worker in prepare(), not pickled
        state = dict(self.__dict__)
        state["_applier"] = None
        return state


# --- automatic corrections -----------------------------------------------------------------------

def _sample(img: np.ndarray, limit: int = 1_000_000) -> np.ndarray:
    """A strided subsample with at most about `limit` pixels, for statistics."""
    h, w = img.shape[:2]
    step = max(1, int(np.sqrt(h * w / limit)))
    return img[::step, ::step]


def _percentiles(channel: np.ndarray, top: int, clip: float) -> tuple[int, int]:
    hist = np.bincount(channel.ravel(), minlength=top + 1).cumsum()
    total = hist[-1]
    lo = int(np.searchsorted(hist, total * clip / 100, side="right"))
    hi = int(np.searchsorted(hist, total * (1 - clip / 100), side="left"))
    return lo, max(hi, lo)


def _stretch_lut(lo: int, hi: int, top: int) -> np.ndarray:
    x = np.arange(top + 1, dtype=np.float64)
    y = (x - lo) / max(hi - lo, 1) * top if hi > lo else x
    return np.clip(y + 0.5, 0, top).astype(np.uint8 if top == 255 else np.uint16)


@register
class Autolevel(Op):
    name = "autolevel"
    summary = "Stretch the levels so the darkest and brightest clip% of pixels reach black and white."
    shrink_safe = True
    params = (
        Param("clip", "float", 0.5, min=0, max=10, help="percent of pixels allowed to clip at each end"),
        Param("per_channel", "bool", True, help="stretch each channel on its own (also removes colour casts)"),
    )

    def apply(self, frame: Frame) -> Frame:
        def run(px: np.ndarray) -> np.ndarray:
            top = max_value(px)
            sample = _sample(px)
            chans = [sample] if px.ndim == 2 else [sample[:, :, c] for c in range(px.shape[2])]
            if self.p["per_channel"] or px.ndim == 2:
                bounds = [_percentiles(np.ascontiguousarray(c), top, self.p["clip"]) for c in chans]
            else:
                lum = cv2.cvtColor(np.ascontiguousarray(sample), cv2.COLOR_BGR2GRAY)
                bounds = [_percentiles(lum, top, self.p["clip"])] * len(chans)
            return apply_luts(px, [_stretch_lut(lo, hi, top) for lo, hi in bounds])

        return graded(frame, run)


@register
class Whitebalance(Op):
    name = "whitebalance"
    summary = "Grey-world white balance: scale the channels so the image averages to neutral grey."
    shrink_safe = True
    params = (Param("strength", "float", 100.0, min=0, max=100, help="percent of the full correction"),)

    def apply(self, frame: Frame) -> Frame:
        if frame.img.ndim == 2:
            return frame

        def run(px: np.ndarray) -> np.ndarray:
            top = max_value(px)
            means = _sample(px).reshape(-1, 3).mean(axis=0)
            gains = np.clip(means.mean() / np.maximum(means, 1e-6), 0.25, 4.0) ** (self.p["strength"] / 100)
            x = np.arange(top + 1, dtype=np.float64)
            dtype = np.uint8 if top == 255 else np.uint16
            return apply_luts(px, [np.clip(x * g + 0.5, 0, top).astype(dtype) for g in gains])

        return graded(frame, run)


@register
class Clahe(Op):
    name = "clahe"
    summary = "Local contrast (CLAHE) on the luminance, colours kept."
    params = (
        Param("clip", "float", 2.0, min=0.1, max=40, help="contrast limit per tile"),
        Param("tiles", "int", 8, min=1, max=64, help="tiles across each side"),
    )

    def apply(self, frame: Frame) -> Frame:
        clahe = cv2.createCLAHE(clipLimit=self.p["clip"], tileGridSize=(self.p["tiles"], self.p["tiles"]))

        def run(px: np.ndarray) -> np.ndarray:
            if px.ndim == 2:
                return clahe.apply(px)
            ycc = cv2.cvtColor(px, cv2.COLOR_BGR2YCrCb)
            y, cr, cb = cv2.split(ycc)
            return cv2.cvtColor(cv2.merge([clahe.apply(y), cr, cb]), cv2.COLOR_YCrCb2BGR)

        return graded(frame, run)
