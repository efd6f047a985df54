"""Model input preprocessing: presets, the input layout and element type, fitting an image to
the input size, and the way back from model pixels to image pixels.

`resolve_prep()` runs once in the parent (from the model's input tensor and the op's
parameters); the rest runs per image in the workers. `to_uint8` and `drop_alpha` give any
decoded image as the 8-bit colour or gray pixels that model inputs are built from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchcli.errors import ConfigError
from batchcli.imaging.lazy import cv2, np
from batchcli.ops.base import _parse_size

# name -> (channel order, scale, mean, std); the model sees (pixel * scale - mean) / std
PRESETS: dict[str, tuple[str, float, tuple[float, ...], tuple[float, ...]]] = {
    "raw": ("bgr", 1.0, (0.0,), (1.0,)),  # caffe style: squeezenet1.0, YuNet, fast neural style
    "unit": ("rgb", 1 / 255, (0.0,), (1.0,)),
    "imagenet": ("rgb", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ("rgb", 1 / 127.5, (1.0,), (1.0,)),  # -1..1: DeepLabV3 / TF-Hub models
    "ultraface": ("rgb", 1.0, (127.0,), (128.0,)),
    "y": ("y", 1 / 255, (0.0,), (1.0,)),  # luma only, 0..1: ESPCN-style super-resolution
}


@dataclass(frozen=True)
class Prep:
    """Everything the worker needs to turn an image into the model's input, fixed in check()."""

    input_name: str
    rank: int  # 3 (no batch axis) or 4
    layout: str  # nchw | nhwc
    channels: int  # 1 or 3
    width: int  # 0 = dynamic: the image's own size
    height: int
    dtype: str  # float32 | float16 | uint8 | float64
    order: str  # bgr | rgb | gray | y
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fit: str  # stretch | letterbox | crop
    batch_axis: int | None  # fixed batch size of the input, None when dynamic (or absent)


@dataclass(frozen=True)
class Geom:
    """Maps original image pixels to model-input pixels: x_in = x * sx + ox."""

    sx: float
    sy: float
    ox: float
    oy: float
    in_w: int
    in_h: int
    img_w: int
    img_h: int

    def to_image(self, boxes: np.ndarray) -> np.ndarray:
        """xyxy boxes in model-input pixels -> clipped xyxy boxes in image pixels."""
        out = boxes.astype(np.float64).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.ox) / self.sx
        out[:, [1, 3]] = (out[:, [1, 3]] - self.oy) / self.sy
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.img_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.img_h)
        return out


# --- the input, resolved once (parent) ----------------------------------------------------------
def resolve_prep(p: dict[str, Any], t: Any, fixed_size: bool) -> Prep:
    """The op's parameters + the model's image input `t` -> the Prep every worker uses.
    `fixed_size`: the task needs every image at the same shape (a dynamic input needs size=)."""
    shape = list(t.shape)
    rank = len(shape)
    dims = shape[1:] if rank == 4 else shape
    layout = p["layout"]
    if layout == "auto":
        if dims[0] in (1, 3):
            layout = "nchw"
        elif dims[2] in (1, 3):
            layout = "nhwc"
        else:
            layout = "nchw"
    c, h, w = (dims[0], dims[1], dims[2]) if layout == "nchw" else (dims[2], dims[0], dims[1])
    c = c or 3
    if c not in (1, 3):
        raise ConfigError(f"model: input {t.name!r} {shape} has {c} channels ({layout}); expected 1 or 3")
    h, w = h or 0, w or 0
    if p["size"] != "auto":
        try:
            sw, sh = _parse_size(p["size"], None)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(f"model: size: {p['size']!r}: {exc}") from None
        if not (sw and sh):
            raise ConfigError("model: size needs both sides, e.g. 224x224")
        if (w and w != sw) or (h and h != sh):
            raise ConfigError(f"model: size={sw}x{sh} but the model's input is fixed at {w}x{h}")
        w, h = sw, sh
    if fixed_size and not (w and h):
        raise ConfigError(f"model: the input size is dynamic; task={p['task']} needs size=WxH so every image gets the same shape")
    dtype = t.dtype if p["dtype"] == "auto" else p["dtype"]
    if dtype != t.dtype and t.dtype in ("float32", "float16", "uint8", "float64"):
        raise ConfigError(f"model: dtype={dtype} but the model's input {t.name!r} is {t.dtype} (leave dtype= out)")
    if dtype not in ("float32", "float16", "uint8", "float64"):
        raise ConfigError(f"model: input element type {dtype} is not supported (float32, float16, uint8)")
    order, scale, mean, std = PRESETS[p["preset"]]
    if p["order"] != "auto":
        order = p["order"]
    elif c == 1 and order in ("bgr", "rgb"):
        order = "gray"
    elif c == 3 and order in ("gray", "y"):
        raise ConfigError(f"model: preset={p['preset']} is for 1-channel inputs; this model takes 3")
    if (c == 1) != (order in ("gray", "y")):
        raise ConfigError(f"model: order={order} does not fit a {c}-channel input")
    scale = p["scale"] or scale
    mean = tuple(p["mean"]) or mean
    std = tuple(p["std"]) or std
    for name, vals in (("mean", mean), ("std", std)):
        if len(vals) not in (1, c):
            raise ConfigError(f"model: {name} has {len(vals)} values; give 1 or {c}")
    if any(s == 0 for s in std):
        raise ConfigError("model: std must not be 0")
    batch_axis = shape[0] if rank == 4 else 1
    return Prep(t.name, rank, layout, c, w, h, dtype, order, float(scale),
                tuple(float(m) for m in mean), tuple(float(s) for s in std), p["fit"], batch_axis)


# --- per image (worker) ---------------------------------------------------------------------------
def to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def drop_alpha(img: np.ndarray) -> np.ndarray:
    return img[:, :, :3] if img.ndim == 3 and img.shape[2] == 4 else img


def convert_order(bgr_or_gray: np.ndarray, order: str) -> np.ndarray:
    """8-bit BGR (or gray) -> HxWxC in the model's channel order (C = 3 or 1)."""
    img = bgr_or_gray
    if order in ("bgr", "rgb"):
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if order == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return img
    if img.ndim == 3:
        if order == "gray":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        else:  # y
            img = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)[:, :, 0]
    return img[:, :, None]


def fit_image(img: np.ndarray, w: int, h: int, fit: str) -> tuple[np.ndarray, Geom]:
    """Resize to exactly w x h by stretching, letterboxing (centred, zero padding) or
    centre-cropping; return the new image and how original coordinates map into it."""
    ih, iw = img.shape[:2]
    if (iw, ih) == (w, h):
        return img, Geom(1.0, 1.0, 0.0, 0.0, w, h, iw, ih)
    interp = cv2.INTER_AREA if iw > w and ih > h else cv2.INTER_LINEAR
    if fit == "stretch":
        return cv2.resize(img, (w, h), interpolation=interp), Geom(w / iw, h / ih, 0.0, 0.0, w, h, iw, ih)
    s = min(w / iw, h / ih) if fit == "letterbox" else max(w / iw, h / ih)
    nw, nh = max(1, round(iw * s)), max(1, round(ih * s))
    resized = cv2.resize(img, (nw, nh), interpolation=interp)
    if fit == "letterbox":
        px, py = (w - nw) // 2, (h - nh) // 2
        out = np.zeros((h, w) + img.shape[2:], img.dtype)
        out[py:py + nh, px:px + nw] = resized
        return out, Geom(nw / iw, nh / ih, float(px), float(py), w, h, iw, ih)
    cx, cy = (nw - w) // 2, (nh - h) // 2
    out = np.ascontiguousarray(resized[cy:cy + h, cx:cx + w])
    return out, Geom(nw / iw, nh / ih, float(-cx), float(-cy), w, h, iw, ih)


def normalize(hwc: np.ndarray, prep: Prep) -> np.ndarray:
    """HxWxC uint8 in model order -> the model's input tensor for one image (no batch axis)."""
    if prep.dtype == "uint8" and prep.scale == 1.0 and not any(prep.mean) and all(s == 1 for s in prep.std):
        x = hwc
    else:
        mean = np.asarray(prep.mean, np.float32)
        std = np.asarray(prep.std, np.float32)
        x = hwc.astype(np.float32) * np.float32(prep.scale)
        if np.any(mean):
            x -= mean
        if np.any(std != 1):
            x /= std
        if prep.dtype == "uint8":
            x = np.clip(np.rint(x), 0, 255)
    if prep.layout == "nchw":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=prep.dtype)


def denormalize(chw_or_hwc: np.ndarray, prep: Prep, layout: str) -> np.ndarray:
    """The inverse of `normalize` for image outputs: tensor (no batch axis) -> HxWxC float32 0..255."""
    x = chw_or_hwc.astype(np.float32)
    if x.ndim == 2:
        x = x[None] if layout == "nchw" else x[:, :, None]
    if layout == "nchw":
        x = x.transpose(1, 2, 0)
    c = x.shape[2]
    std = np.asarray(prep.std, np.float32)
    mean = np.asarray(prep.mean, np.float32)
    if std.size in (1, c):
        x = x * std + mean if mean.size in (1, c) else x * std
    return x / np.float32(prep.scale)


def image_tensor(img: np.ndarray, prep: Prep) -> tuple[np.ndarray, Geom]:
    """A decoded image -> the model's input tensor for it (no batch axis) and its geometry."""
    base = drop_alpha(to_uint8(img))
    h, w = base.shape[:2]
    tw, th = (prep.width or w), (prep.height or h)
    fitted, geom = fit_image(base, tw, th, prep.fit)
    return normalize(convert_order(fitted, prep.order), prep), geom
