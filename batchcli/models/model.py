"""The `model` op: run any single-image-input ONNX model with onnxruntime.

One op, five tasks (classify, detect, segment, image2image, embed). Preprocessing is inferred
from the model's image input (rank, NCHW/NHWC, fixed or dynamic size, float32/float16/uint8) and
every part of it can be overridden. Everything is validated in `check()` (parent process, before
any item); the InferenceSession is created in `prepare()`, once per worker process, through the
per-process cache of `batchcli.models.session`.

Shared box helpers (`nms`, `mark_boxes`) live here too; the `faces` op uses them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import cv2, np
from batchcli.ops.base import Frame, Op, Param, _parse_size, register

TASKS = ("classify", "detect", "segment", "image2image", "embed")

# name -> (channel order, scale, mean, std); the model sees (pixel * scale - mean) / std
PRESETS: dict[str, tuple[str, float, tuple[float, ...], tuple[float, ...]]] = {
    "raw": ("bgr", 1.0, (0.0,), (1.0,)),  # caffe style: squeezenet1.0, YuNet, fast neural style
    "unit": ("rgb", 1 / 255, (0.0,), (1.0,)),
    "imagenet": ("rgb", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ("rgb", 1 / 127.5, (1.0,), (1.0,)),  # -1..1: DeepLabV3 / TF-Hub models
    "ultraface": ("rgb", 1.0, (127.0,), (128.0,)),
    "y": ("y", 1 / 255, (0.0,), (1.0,)),  # luma only, 0..1: ESPCN-style super-resolution
}
MAX_DETECTIONS = 1000


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


# --- preprocessing ----------------------------------------------------------------------------
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


# --- labels, boxes -----------------------------------------------------------------------------
_LABEL_LINE = re.compile(r"^\s*(\d+)\s*[,:\t]\s*(.+?)\s*$")


def read_labels(path: str) -> list[str]:
    """One label per line; `index,label` (or `index: label`) lines are accepted too."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = [ln.rstrip("\r\n") for ln in fh]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read labels: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: labels file is not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ConfigError(f"{path}: labels file is empty")
    parsed = [_LABEL_LINE.match(ln) for ln in lines]
    if all(parsed):
        idx = [int(m.group(1)) for m in parsed]  # type: ignore[union-attr]
        if idx == list(range(len(idx))):
            return [m.group(2) for m in parsed]  # type: ignore[union-attr]
    return [ln.strip() for ln in lines]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def folder_name(label: str) -> str:
    """A label -> a safe folder name ('golden retriever, ...' -> 'golden_retriever')."""
    first = label.split(",")[0].strip()
    name = _UNSAFE.sub("_", first).strip("._-")[:64]
    return name or "unlabeled"


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, classes: np.ndarray | None = None) -> np.ndarray:
    """Greedy non-maximum suppression on xyxy boxes; class-aware when `classes` is given.
    Returns the kept indices, best score first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    b = boxes.astype(np.float64)
    if classes is not None:
        off = (classes.astype(np.float64) * (float(np.abs(b).max()) + 1.0))[:, None]
        b = b + off
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and len(keep) < MAX_DETECTIONS:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        union = areas[i] + areas[rest] - inter
        ov = np.where(union > 0, inter / np.maximum(union, 1e-12), 0)
        order = rest[ov <= iou]
    return np.asarray(keep, np.int64)


def _int_box(box: Sequence[float], w: int, h: int, margin: float = 0.0) -> tuple[int, int, int, int]:
    """xywh (floats) -> clipped integer x1, y1, x2, y2, grown by `margin` of its size per side."""
    x, y, bw, bh = box[:4]
    x, y = x - bw * margin, y - bh * margin
    bw, bh = bw * (1 + 2 * margin), bh * (1 + 2 * margin)
    x1, y1 = max(0, int(math.floor(x))), max(0, int(math.floor(y)))
    x2, y2 = min(w, int(math.ceil(x + bw))), min(h, int(math.ceil(y + bh)))
    return x1, y1, x2, y2


def mark_boxes(img: np.ndarray, boxes: Sequence[Sequence[float]], how: str, margin: float = 0.0,
               color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """Apply `how` (draw, blur, pixelate, crop) to xywh boxes. `crop` keeps the first box
    (callers sort best first); with no box the image is returned unchanged."""
    h, w = img.shape[:2]
    if how == "crop":
        if not boxes:
            return img
        x1, y1, x2, y2 = _int_box(boxes[0], w, h, margin)
        return np.ascontiguousarray(img[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)])
    out = img.copy()
    for box in boxes:
        x1, y1, x2, y2 = _int_box(box, w, h, margin)
        if x2 <= x1 or y2 <= y1:
            continue
        roi = out[y1:y2, x1:x2]
        if how == "draw":
            val = color if out.ndim == 3 else (255,)
            if out.ndim == 3 and out.shape[2] == 4:
                val = (*color, 255)
            if out.dtype == np.uint16:
                val = tuple(v * 257 for v in val)
            thick = max(1, round(min(w, h) / 300))
            cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), val, thick)
        elif how == "blur":
            k = max(3, (max(x2 - x1, y2 - y1) // 3) | 1)
            blurred = cv2.GaussianBlur(roi, (k, k), 0)
            out[y1:y2, x1:x2] = cv2.GaussianBlur(blurred, (k, k), 0)
        elif how == "pixelate":
            bw, bh = x2 - x1, y2 - y1
            cells = max(1, round(max(bw, bh) / 10))
            small = cv2.resize(roi, (max(1, bw // cells), max(1, bh // cells)), interpolation=cv2.INTER_AREA)
            out[y1:y2, x1:x2] = cv2.resize(small, (bw, bh), interpolation=cv2.INTER_NEAREST)
    return out


def xyxy_to_meta(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> list[list[float]]:
    """-> [[x, y, w, h, score, cls], ...] with 1/10-pixel and 1e-4 score precision."""
    out = []
    for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), classes.tolist()):
        out.append([round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1), round(float(s), 4), int(c)])
    return out


def _squeeze_lead(a: np.ndarray, rank: int) -> np.ndarray:
    while a.ndim > rank and a.shape[0] == 1:
        a = a[0]
    return a


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


# --- the op ------------------------------------------------------------------------------------
@register
class Model(Op):
    name = "model"
    summary = "Run an ONNX model: classify, detect, segment, image2image (super-resolution, style) or embed."
    uses_onnx = True  # the CLI prints which onnxruntime provider was chosen when a pipeline has one
    params = (
        Param("path", "path", positional=True, help="the .onnx model file"),
        Param("task", "choice", choices=TASKS, help="what the model does (decides the output handling)"),
        Param("preset", "choice", "raw", choices=tuple(PRESETS),
              help="input normalisation: raw (BGR 0..255), unit (RGB 0..1), imagenet, tf (RGB -1..1), ultraface, y (luma 0..1)"),
        Param("size", "str", "auto", help="model input WIDTHxHEIGHT (default: the model's fixed size, else the image's)"),
        Param("fit", "choice", "stretch", choices=("stretch", "letterbox", "crop"),
              help="how the image meets a fixed input size"),
        Param("order", "choice", "auto", choices=("auto", "rgb", "bgr", "gray", "y"), help="channel order (overrides the preset)"),
        Param("scale", "float", 0.0, min=0, help="pixel multiplier before mean/std (0: from the preset)"),
        Param("mean", "floats", (), help="subtracted after scaling, per channel in model order (overrides the preset)"),
        Param("std", "floats", (), help="divisor after the mean, per channel (overrides the preset)"),
        Param("layout", "choice", "auto", choices=("auto", "nchw", "nhwc"), help="input layout (default: inferred)"),
        Param("dtype", "choice", "auto", choices=("auto", "float32", "float16", "uint8"), help="input element type"),
        Param("batch", "int", 1, min=1, max=1024, help="images per run when the runner hands over a chunk"),
        Param("labels", "str", "", help="labels file, one per line (or index,label)"),
        Param("top", "int", 5, min=1, max=1000, help="classify: how many labels to keep"),
        Param("threshold", "str", "auto", help="classify: min score (0); detect: min score (0.5); segment: mask cut (0.5)"),
        Param("iou", "float", 0.45, min=0, max=1, help="detect: NMS overlap limit"),
        Param("decoder", "choice", "auto", choices=("auto", "boxes", "ssd", "yolo"),
              help="detect: output format ([N,6] x1,y1,x2,y2,score,cls / scores+boxes / YOLO [4+C,N])"),
        Param("mark", "choice", "none", choices=("none", "draw", "blur", "pixelate", "crop"),
              help="detect: what to do to the detections in the image"),
        Param("route", "bool", False, help="classify: also file the output under out/<top label>/"),
        Param("softmax", "choice", "auto", choices=("auto", "yes", "no"),
              help="classify: softmax the scores (auto: unless they already look like probabilities)"),
        Param("output", "choice", "mask", choices=("mask", "cutout", "replace", "blur"),
              help="segment: the mask, a cut-out with alpha, or the background replaced by color / blurred"),
        Param("target", "str", "", help="segment/detect: class indices or label names to keep (segment default: all but 0)"),
        Param("color", "color", (255, 255, 255), help="segment output=replace: background colour"),
        Param("tile", "int", 512, min=0, max=8192, help="image2image: tile side for dynamic models (0: whole image at once)"),
        Param("overlap", "int", 32, min=0, max=1024, help="image2image: tile overlap in input pixels"),
        Param("normalize", "bool", True, help="embed: scale vectors to unit length"),
    )

    def __init__(self, **values: Any):
        super().__init__(**values)
        self._sess: Any = None
        self.writes_image = True  # per instance: classify/embed/plain detect write no pixels
        self._prep: Prep | None = None
        self._labels: list[str] | None = None
        self._threshold = 0.0
        self._targets: frozenset[int] | None = None
        self._batchable = False
        self._decoder = "auto"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sess"] = None  # sessions never travel; prepare() rebuilds from the process cache
        return state

    # --- validation (parent) -------------------------------------------------------------------
    def check(self) -> None:
        from batchcli.models import session as onnx_session

        p = self.p
        task = p["task"]
        onnx_session.parse_providers()  # unknown names in --providers fail here, before any item
        info = onnx_session.inspect_model(p["path"])
        images = [t for t in info.inputs if len(t.shape) in (3, 4)]
        if len(info.inputs) != 1:
            names = ", ".join(f"{t.name}{list(t.shape)}" for t in info.inputs)
            raise ConfigError(f"model: {p['path']} has {len(info.inputs)} inputs ({names}); only models with one image input are supported")
        if not images:
            t = info.inputs[0]
            raise ConfigError(f"model: input {t.name!r} has rank {len(t.shape)} {list(t.shape)}; task={task} needs an image tensor [N,C,H,W] or [N,H,W,C]")
        self._prep = self._resolve_prep(images[0])
        self._labels = self._load_labels(info)
        self._threshold = self._resolve_threshold()
        self._targets = self._resolve_targets()
        self._check_outputs(info)
        if p["overlap"] * 2 >= max(1, p["tile"]) and p["tile"]:
            raise ConfigError(f"model: overlap={p['overlap']} must be under half of tile={p['tile']}")
        if task in ("classify", "embed"):
            self.writes_image = bool(p["route"])  # routing files the (unchanged) image by label
        elif task == "detect":
            self.writes_image = p["mark"] != "none"
        if p["route"] and task != "classify":
            raise ConfigError("model: route=true needs task=classify")

    def _resolve_prep(self, t: Any) -> Prep:
        p = self.p
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
        if p["task"] in ("classify", "embed") and not (w and h):
            raise ConfigError(f"model: the input size is dynamic; task={p['task']} needs size=WxH so every image gets the same shape")
        dtype = t.dtype if p["dtype"] == "auto" else p["dtype"]
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

    def _load_labels(self, info: Any) -> list[str] | None:
        if not self.p["labels"]:
            return None
        path = os.path.abspath(os.path.expanduser(self.p["labels"]))
        self.p["labels"] = path
        labels = read_labels(path)
        task = self.p["task"]
        out = info.outputs[0]
        if task == "classify":
            dims = out.shape[1:] if len(out.shape) > 1 else out.shape
            n = math.prod(d for d in dims if d) if all(dims) else None
            if n is not None and n != len(labels):
                raise ConfigError(f"model: {path} has {len(labels)} labels but the model gives {n} scores")
        elif task == "segment" and len(out.shape) == 4:
            c = out.shape[1] if self._prep and self._prep.layout == "nchw" else out.shape[3]
            if c and c > 1 and c != len(labels):
                raise ConfigError(f"model: {path} has {len(labels)} labels but the model gives {c} classes")
        return labels

    def _resolve_threshold(self) -> float:
        raw = self.p["threshold"]
        if raw == "auto":
            return {"classify": 0.0, "detect": 0.5, "segment": 0.5}.get(self.p["task"], 0.0)
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"model: threshold: {raw!r} is not a number") from None

    def _resolve_targets(self) -> frozenset[int] | None:
        raw = self.p["target"].strip()
        if not raw:
            return None
        out = set()
        for word in (w.strip() for w in raw.split(",")):
            if word.isdigit():
                out.add(int(word))
                continue
            names = [folder_name(x).lower() for x in (self._labels or [])]
            key = folder_name(word).lower()
            if key not in names:
                where = "not in the labels file" if self._labels else "give labels=FILE to use names"
                raise ConfigError(f"model: target {word!r}: {where}")
            out.add(names.index(key))
        return frozenset(out)

    def _check_outputs(self, info: Any) -> None:
        task, outs = self.p["task"], info.outputs
        if not outs:
            raise ConfigError("model: the model has no outputs")
        prep = self._prep
        assert prep is not None
        dynamic_batch = prep.rank == 4 and prep.batch_axis is None
        if task == "detect":
            self._decoder = self._pick_decoder([o.shape for o in outs])
            self._batchable = dynamic_batch and all(len(o.shape) >= 3 for o in outs)
        elif task in ("classify", "embed"):
            self._batchable = dynamic_batch and len(outs[0].shape) >= 2
        elif task == "segment":
            if len(outs[0].shape) < 2:
                raise ConfigError(f"model: output {outs[0].name!r} {list(outs[0].shape)} is not a map; task=segment needs [N,C,H,W], [N,H,W,C] or [N,H,W]")
            self._batchable = dynamic_batch and len(outs[0].shape) >= 3
        elif task == "image2image":
            o = outs[0]
            if len(o.shape) not in (3, 4):
                raise ConfigError(f"model: output {o.name!r} {list(o.shape)} is not an image; task=image2image needs [N,C,H,W] or [N,H,W,C]")

    def _pick_decoder(self, shapes: list[tuple]) -> str:
        want = self.p["decoder"]
        if want != "auto":
            return want
        if len(shapes) >= 2 and any(s and s[-1] == 4 for s in shapes):
            return "ssd"
        s = shapes[0]
        if s and s[-1] == 6:
            return "boxes"
        if len(s) == 3 and s[1] and s[2] and 4 < s[1] < s[2]:
            return "yolo"
        if any(d is None for d in s):
            return "auto"  # decided on the first real output
        raise ConfigError(f"model: cannot tell how to decode detector output {list(s)}; set decoder=boxes|ssd|yolo")

    # --- execution (worker) --------------------------------------------------------------------
    def prepare(self) -> None:
        from batchcli.models import session as onnx_session

        if self._prep is None:
            self.check()
        self._sess = onnx_session.get_session(self.p["path"])

    def _run(self, tensor: np.ndarray) -> list[np.ndarray]:
        if self._sess is None:
            self.prepare()
        assert self._prep is not None
        try:
            return self._sess.run(None, {self._prep.input_name: tensor})
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ItemError("model", f"model run failed: {_one_line(exc)}") from None

    def read_shrink(self, width: int, height: int) -> int:
        """classify and embed at a fixed input size use only that many pixels: a JPEG may be
        decoded at 1/2, 1/4 or 1/8 as long as both sides stay at least the model's input."""
        prep = self._prep
        if self.p["task"] not in ("classify", "embed") or prep is None or not (prep.width and prep.height):
            return 1
        for n in (8, 4, 2):
            if -(-width // n) >= prep.width and -(-height // n) >= prep.height:
                return n
        return 1

    @property
    def batch_size(self) -> int:
        fixed = self._prep.batch_axis if self._prep is not None else None
        return max(self.p["batch"], fixed or 1)

    def apply(self, frame: Frame) -> Frame:
        result = self.apply_batch([frame])[0]
        if isinstance(result, ItemError):
            raise result
        return result

    def apply_batch(self, frames: list[Frame]) -> list[Frame | ItemError]:
        """Run up to `batch` frames per model call. Returns one entry per frame, in order: the
        frame, or the ItemError that failed it (one bad image never fails its neighbours)."""
        assert self._prep is not None
        if self.p["task"] == "image2image":
            return [self._guard(self._image2image, f) for f in frames]
        results: list[Frame | ItemError | None] = [None] * len(frames)
        ready: dict[tuple, list[tuple[int, np.ndarray, Geom]]] = {}
        for k, f in enumerate(frames):
            try:
                tensor, geom = self._to_tensor(f.img)
            except Exception as exc:  # an image this model cannot take fails alone
                results[k] = ItemError("model", f"cannot prepare the image for the model: {_one_line(exc)}")
                continue
            ready.setdefault(tensor.shape, []).append((k, tensor, geom))
        step = self.p["batch"] if self._batchable else 1
        if self._prep.batch_axis and self._prep.batch_axis > 1:
            step = self._prep.batch_axis
        for group in ready.values():
            for at in range(0, len(group), step):
                self._run_chunk(frames, group[at:at + step], results)
        return [r if r is not None else ItemError("model", "no result") for r in results]

    def _run_chunk(self, frames: list[Frame], chunk: list, results: list) -> None:
        prep = self._prep
        assert prep is not None
        tensors = [t for _, t, _ in chunk]
        if prep.rank == 4:
            fixed = prep.batch_axis
            if fixed and fixed > len(tensors):  # a fixed batch axis: pad with copies
                tensors = tensors + [tensors[-1]] * (fixed - len(tensors))
            batch = np.stack(tensors)
        else:
            batch = tensors[0]
        try:
            outs = self._run(batch)
        except ItemError as exc:
            if len(chunk) > 1:  # find the culprit: retry one by one
                for one in chunk:
                    self._run_chunk(frames, [one], results)
                return
            results[chunk[0][0]] = exc
            return
        for j, (k, _, geom) in enumerate(chunk):
            per = [o[j:j + 1] for o in outs] if prep.rank == 4 and batch.shape[0] > 1 else outs
            results[k] = self._guard(self._finish, frames[k], per, geom)

    @staticmethod
    def _guard(fn: Any, *args: Any) -> Frame | ItemError:
        try:
            return fn(*args)
        except ItemError as exc:
            return exc
        except MemoryError:
            return ItemError("oom", "out of memory handling the model output")
        except Exception as exc:  # an output this image made unusable fails this item only
            return ItemError("model", f"cannot use the model output: {type(exc).__name__}: {_one_line(exc)}")

    def _to_tensor(self, img: np.ndarray) -> tuple[np.ndarray, Geom]:
        prep = self._prep
        assert prep is not None
        base = drop_alpha(to_uint8(img))
        h, w = base.shape[:2]
        tw, th = (prep.width or w), (prep.height or h)
        fitted, geom = fit_image(base, tw, th, prep.fit)
        return normalize(convert_order(fitted, prep.order), prep), geom

    def _finish(self, frame: Frame, outs: list[np.ndarray], geom: Geom) -> Frame:
        task = self.p["task"]
        if task == "classify":
            return self._classify(frame, outs)
        if task == "detect":
            return self._detect(frame, outs, geom)
        if task == "segment":
            return self._segment(frame, outs, geom)
        return self._embed(frame, outs)

    # --- classify --------------------------------------------------------------------------------
    def _classify(self, frame: Frame, outs: list[np.ndarray]) -> Frame:
        scores = outs[0].astype(np.float32).reshape(-1)
        if self._labels is not None and scores.size != len(self._labels):
            raise ItemError("model", f"model gave {scores.size} scores for {len(self._labels)} labels")
        mode = self.p["softmax"]
        if mode == "yes" or (mode == "auto" and (scores.min() < 0 or abs(float(scores.sum()) - 1) > 0.01)):
            scores = _softmax(scores)
        k = min(self.p["top"], scores.size)
        idx = np.argsort(-scores, kind="stable")[:k]
        top = []
        for i in idx.tolist():
            s = float(scores[i])
            if s < self._threshold:
                break
            top.append({"label": self._labels[i] if self._labels else None, "index": i, "score": round(s, 6)})
        frame.meta["classify"] = {"top": top}
        if self.p["route"]:
            if not top:
                frame.route = "unsure"
            else:
                frame.route = folder_name(top[0]["label"]) if top[0]["label"] else str(top[0]["index"])
        return frame

    # --- embed -----------------------------------------------------------------------------------
    def _embed(self, frame: Frame, outs: list[np.ndarray]) -> Frame:
        vec = outs[0].astype(np.float32).reshape(-1)
        if not np.all(np.isfinite(vec)):
            raise ItemError("model", "embedding has NaN or infinite values")
        if self.p["normalize"]:
            n = float(np.linalg.norm(vec))
            if n > 0:
                vec = vec / n
        frame.meta["embed"] = {"dim": int(vec.size), "vector": [float(v) for v in vec]}
        return frame

    # --- detect ----------------------------------------------------------------------------------
    def _decode(self, outs: list[np.ndarray], geom: Geom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (xyxy boxes in model-input pixels, scores, classes)."""
        decoder = self._decoder
        if decoder == "auto":
            decoder = self._pick_decoder([o.shape for o in outs])
        if decoder == "ssd":
            four = [i for i, o in enumerate(outs) if o.shape[-1] == 4]
            bi = four[-1]  # scores first, boxes second when both end in 4 (UltraFace order)
            boxes_out = outs[bi]
            score_out = next(o for i, o in enumerate(outs) if i != bi)
            boxes = _squeeze_lead(boxes_out, 2).reshape(-1, 4).astype(np.float32)
            s = _squeeze_lead(score_out, 2).astype(np.float32)
            s = s.reshape(len(boxes), -1)
            if s.shape[1] == 1:
                scores, classes = s[:, 0], np.zeros(len(s), np.int64)
            else:  # column 0 is the background
                classes = s[:, 1:].argmax(1) + 1
                scores = s[np.arange(len(s)), classes]
            fmt = "xyxy"
        elif decoder == "yolo":
            a = _squeeze_lead(outs[0], 2).astype(np.float32)
            if a.shape[0] < a.shape[1]:
                a = a.T
            boxes, cls_scores = a[:, :4], a[:, 4:]
            classes = cls_scores.argmax(1)
            scores = cls_scores[np.arange(len(a)), classes]
            fmt = "cxcywh"
        else:
            a = _squeeze_lead(outs[0], 2).astype(np.float32)
            if a.ndim != 2 or a.shape[-1] != 6:
                raise ItemError("model", f"detector output {list(outs[0].shape)} is not [N,6]")
            boxes, scores, classes = a[:, :4], a[:, 4], a[:, 5].round().astype(np.int64)
            fmt = "xyxy"
        boxes = boxes.astype(np.float64)
        if fmt == "cxcywh":
            boxes = np.stack([boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2,
                              boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3] / 2], 1)
        if len(boxes) and float(np.abs(boxes).max()) <= 1.5:  # normalised coordinates
            boxes[:, [0, 2]] *= geom.in_w
            boxes[:, [1, 3]] *= geom.in_h
        return boxes, scores.astype(np.float64), classes.astype(np.int64)

    def _detect(self, frame: Frame, outs: list[np.ndarray], geom: Geom) -> Frame:
        boxes, scores, classes = self._decode(outs, geom)
        keep = scores >= self._threshold
        if self._targets is not None:
            keep &= np.isin(classes, list(self._targets))
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        boxes = geom.to_image(boxes)
        good = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[good], scores[good], classes[good]
        kept = nms(boxes, scores, self.p["iou"], classes)
        boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
        meta: dict[str, Any] = {"boxes": xyxy_to_meta(boxes, scores, classes), "count": int(len(kept))}
        if self._labels:
            meta["labels"] = [self._labels[c] if 0 <= c < len(self._labels) else None for c in classes.tolist()]
        frame.meta["detect"] = meta
        if self.p["mark"] != "none":
            frame.img = mark_boxes(frame.img, [b[:4] for b in meta["boxes"]], self.p["mark"])
        return frame

    # --- segment ---------------------------------------------------------------------------------
    def _segment(self, frame: Frame, outs: list[np.ndarray], geom: Geom) -> Frame:
        prep = self._prep
        assert prep is not None
        m = _squeeze_lead(outs[0], 2)
        if m.ndim == 3:
            c_first = m.shape[0] < min(m.shape[1], m.shape[2])
            c_last = m.shape[2] < min(m.shape[0], m.shape[1])
            hwc = c_last if c_first != c_last else prep.layout == "nhwc"
            m = m if hwc else m.transpose(1, 2, 0)
            if m.shape[2] == 1:
                m = m[:, :, 0]
        elif m.ndim != 2:
            raise ItemError("model", f"segmentation output {list(outs[0].shape)} is not a map")
        classes: dict[str, float] = {}
        if m.ndim == 2:
            if np.issubdtype(m.dtype, np.integer):  # class ids already
                targets = self._targets or frozenset(int(v) for v in np.unique(m) if v != 0)
                fg = np.isin(m, list(targets))
                margin = np.where(fg, 1.0, -1.0).astype(np.float32)
                ids = m.astype(np.int64)
            else:
                prob = m.astype(np.float32)
                if prob.min() < 0 or prob.max() > 1:
                    prob = 1 / (1 + np.exp(-prob))
                margin = prob - np.float32(self._threshold)
                ids = (margin > 0).astype(np.int64)
        else:
            logits = m.astype(np.float32)
            c = logits.shape[2]
            targets = self._targets if self._targets is not None else frozenset(range(1, c))
            tmask = np.zeros(c, bool)
            tmask[[t for t in targets if 0 <= t < c]] = True
            if not tmask.any() or tmask.all():
                raise ItemError("model", f"segment target {sorted(targets)} does not split the model's {c} classes")
            margin = logits[:, :, tmask].max(2) - logits[:, :, ~tmask].max(2)
            ids = logits.argmax(2)
        counts = np.bincount(ids.reshape(-1).clip(0), minlength=1)
        total = float(ids.size)
        for cid in np.nonzero(counts)[0].tolist():
            frac = counts[cid] / total
            if cid != 0 and frac >= 0.005:
                name = self._labels[cid] if self._labels and cid < len(self._labels) else str(cid)
                classes[name] = round(float(frac), 4)
        mask = self._map_to_image(margin, geom) > 0
        coverage = float(mask.mean()) if mask.size else 0.0
        frame.meta["segment"] = {"coverage": round(coverage, 4), "classes": classes}
        frame.img = self._compose(frame, mask)
        return frame

    def _map_to_image(self, margin: np.ndarray, geom: Geom) -> np.ndarray:
        """A score map at model-output resolution -> the same map over the original image."""
        mh, mw = margin.shape
        kx, ky = mw / geom.in_w, mh / geom.in_h  # output map px per model-input px
        sx, sy = geom.sx * kx, geom.sy * ky
        ox, oy = geom.ox * kx, geom.oy * ky
        # map pixel centre = (image pixel centre) * s + o
        M = np.float32([[sx, 0, ox + 0.5 * sx - 0.5], [0, sy, oy + 0.5 * sy - 0.5]])
        return cv2.warpAffine(margin, M, (geom.img_w, geom.img_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=-1.0)

    def _compose(self, frame: Frame, mask: np.ndarray) -> np.ndarray:
        img, how = frame.img, self.p["output"]
        top = 65535 if img.dtype == np.uint16 else 255
        if how == "mask":
            return np.where(mask, top, 0).astype(img.dtype)
        if how == "cutout":
            if img.ndim == 2:
                out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGRA)
            elif img.shape[2] == 3:
                out = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
            else:
                out = img.copy()
            alpha = np.where(mask, top, 0).astype(img.dtype)
            out[:, :, 3] = np.minimum(out[:, :, 3], alpha) if img.ndim == 3 and img.shape[2] == 4 else alpha
            if frame.out_format not in ("png", "webp", "tiff"):
                frame.out_format = "png"  # JPEG cannot carry the alpha channel
            return out
        if how == "replace":
            bg = np.empty_like(img)
            color = self.p["color"]
            if img.ndim == 2:
                bg[:] = round(0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]) * (257 if top == 65535 else 1)
            else:
                vals = [v * (257 if top == 65535 else 1) for v in color] + [top] * (img.shape[2] - 3)
                bg[:] = np.asarray(vals, img.dtype)
        else:  # blur
            k = max(3, (max(img.shape[:2]) // 40) | 1)
            bg = cv2.GaussianBlur(img, (k, k), 0)
        sel = mask if img.ndim == 2 else mask[:, :, None]
        return np.where(sel, img, bg)

    # --- image2image -----------------------------------------------------------------------------
    def _image2image(self, frame: Frame) -> Frame:
        prep = self._prep
        assert prep is not None
        src = frame.img
        alpha = src[:, :, 3] if src.ndim == 3 and src.shape[2] == 4 else None
        base = drop_alpha(to_uint8(src))
        chroma = None
        if prep.order == "y":
            if base.ndim == 2:
                base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
            ycc = cv2.cvtColor(base, cv2.COLOR_BGR2YCrCb)
            plane, chroma = ycc[:, :, :1], ycc[:, :, 1:]
        else:
            plane = convert_order(base, prep.order)
        h, w = plane.shape[:2]
        if prep.width and self.p["tile"] == 0:  # fixed-size model, whole image: stretch and back
            fitted = cv2.resize(plane, (prep.width, prep.height), interpolation=cv2.INTER_AREA)
            fitted = fitted if fitted.ndim == 3 else fitted[:, :, None]
            out = self._run_tile(fitted)
            fy, fx = out.shape[0] / prep.height, out.shape[1] / prep.width
            size = (max(1, round(w * fx)), max(1, round(h * fy)))
            out = cv2.resize(out, size, interpolation=cv2.INTER_CUBIC)
            tiles = 1
        else:
            out, tiles = self._tiled(plane)
        if out.ndim == 2:
            out = out[:, :, None]
        oh, ow = out.shape[:2]
        res = np.clip(np.rint(out), 0, 255).astype(np.uint8)
        if prep.order == "y":
            assert chroma is not None
            cc = cv2.resize(chroma, (ow, oh), interpolation=cv2.INTER_CUBIC)
            res = cv2.cvtColor(np.dstack([res[:, :, 0], cc]), cv2.COLOR_YCrCb2BGR)
        elif prep.order == "rgb":
            res = cv2.cvtColor(res, cv2.COLOR_RGB2BGR)
        elif res.shape[2] == 1:
            res = res[:, :, 0]
        if alpha is not None:
            a = cv2.resize(to_uint8(alpha), (ow, oh), interpolation=cv2.INTER_CUBIC)
            res = np.dstack([res if res.ndim == 3 else cv2.cvtColor(res, cv2.COLOR_GRAY2BGR), a])
        frame.img = res
        frame.meta["image2image"] = {"size": [ow, oh], "scale": round(ow / w, 4), "tiles": tiles}
        return frame

    def _run_tile(self, tile_hwc: np.ndarray) -> np.ndarray:
        """One HxWxC uint8 tile -> the model's output as HxWxC float32 0..255."""
        prep = self._prep
        assert prep is not None
        x = normalize(tile_hwc, prep)
        outs = self._run(x[None] if prep.rank == 4 else x)
        o = outs[0]
        o = o[0] if o.ndim == 4 else o
        layout = prep.layout
        if o.ndim == 3:  # the output may use another layout than the input
            if layout == "nchw" and o.shape[0] > 4 and o.shape[2] <= 4:
                layout = "nhwc"
            elif layout == "nhwc" and o.shape[2] > 4 and o.shape[0] <= 4:
                layout = "nchw"
        return denormalize(o, prep, layout)

    def _tiled(self, plane: np.ndarray) -> tuple[np.ndarray, int]:
        """Run the model over overlapping tiles and blend them with linear ramps; memory is the
        output image plus one tile, whatever the input size."""
        prep = self._prep
        assert prep is not None
        h, w = plane.shape[:2]
        if prep.width:
            tw, th = prep.width, prep.height
        else:
            t = self.p["tile"] or max(h, w)
            tw, th = min(t, w), min(t, h)
        ov = self.p["overlap"]
        xs, ys = _starts(w, tw, ov), _starts(h, th, ov)
        acc = wsum = None
        f = 0.0
        for y in ys:
            for x in xs:
                tile = plane[y:y + th, x:x + tw]
                ph, pw = th - tile.shape[0], tw - tile.shape[1]
                if ph or pw:  # image smaller than a fixed input: mirror-pad, crop after
                    tile = cv2.copyMakeBorder(tile, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
                    tile = tile if tile.ndim == 3 else tile[:, :, None]
                out = self._run_tile(tile)
                if acc is None:
                    f = out.shape[0] / th
                    if abs(out.shape[1] / tw - f) > 1e-6:
                        raise ItemError("model", f"output {out.shape[1]}x{out.shape[0]} is not a uniform scale of {tw}x{th}")
                    acc = np.zeros((round(h * f), round(w * f), out.shape[2]), np.float32)
                    wsum = np.zeros(acc.shape[:2], np.float32)
                elif out.shape[0] != round(th * f) or out.shape[1] != round(tw * f):
                    raise ItemError("model", "model output size changed between tiles")
                oy, ox = round(y * f), round(x * f)
                vh, vw = round((th - ph) * f), round((tw - pw) * f)
                vh, vw = min(vh, acc.shape[0] - oy), min(vw, acc.shape[1] - ox)
                wt = _ramp(vh, vw, round(ov * f), y > 0, y + th < h, x > 0, x + tw < w)
                acc[oy:oy + vh, ox:ox + vw] += out[:vh, :vw] * wt[:, :, None]
                wsum[oy:oy + vh, ox:ox + vw] += wt
        assert acc is not None and wsum is not None
        acc /= np.maximum(wsum, 1e-6)[:, :, None]
        return acc, len(xs) * len(ys)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [0, length) with at least `overlap` shared pixels between neighbours."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _ramp(h: int, w: int, ov: int, top: bool, bottom: bool, left: bool, right: bool) -> np.ndarray:
    """Blend weights for one tile: 1 inside, ramping down over `ov` pixels on shared edges."""
    def axis(n: int, lo: bool, hi: bool) -> np.ndarray:
        a = np.ones(n, np.float32)
        if ov > 0:
            r = (np.arange(n, dtype=np.float32) + 0.5) / ov
            if lo:
                a = np.minimum(a, r)
            if hi:
                a = np.minimum(a, r[::-1])
        return np.maximum(a, 1e-3)
    return axis(h, top, bottom)[:, None] * axis(w, left, right)[None, :]
