"""task=segment: a class map (logits, probabilities or class ids) -> a mask over the original
image, its coverage and classes; the pixels become the mask, a cut-out, or the foreground over a
replaced or blurred background."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import cv2, np
from batchcli.models.prep import Geom, Prep
from batchcli.models.tasks.base import Task, config_error, item_error, squeeze_lead
from batchcli.ops.base import Frame


class Segment(Task):
    name = "segment"
    default_threshold = 0.5

    @classmethod
    def check_labels(cls, path: str, labels: list[str], output: Any, prep: Prep) -> None:
        if len(output.shape) == 4:
            c = output.shape[1] if prep.layout == "nchw" else output.shape[3]
            if c and c > 1 and c != len(labels):
                raise ConfigError(f"model: {path} has {len(labels)} labels but the model gives {c} classes")

    def check_outputs(self, outputs: list[Any]) -> bool:
        o = self.only_output(outputs)
        if len(o.shape) < 2:
            raise ConfigError(f"model: output {o.name!r} {list(o.shape)} is not a map; task=segment needs [N,C,H,W], [N,H,W,C] or [N,H,W]")
        m = list(o.shape[1:] if self.prep.rank == 4 else o.shape)  # without the batch axis
        c = None
        if len(m) == 3:
            c, m = (m[2], m[:2]) if self._hwc(m) else (m[0], m[1:])
        if len(m) != 2 or any(d is not None and d <= 1 for d in m):
            raise ConfigError(f"model: output {o.name!r} {list(o.shape)} is not a spatial map; task=segment needs "
                              "[N,C,H,W], [N,H,W,C] or [N,H,W] with H and W over 1")
        if c and c > 1:
            self._split(c, config_error)
        return self._dynamic_batch() and len(o.shape) >= 3

    def _hwc(self, m: list) -> bool:
        """Whether a 3-axis map has its classes last: the short axis, else the input's layout."""
        if None not in m:
            c_first = m[0] < min(m[1], m[2])
            c_last = m[2] < min(m[0], m[1])
            if c_first != c_last:
                return c_last
        return self.prep.layout == "nhwc"

    def _split(self, c: int, fail: Callable[[str], Exception]) -> np.ndarray:
        """The target classes among c as a mask; an error when they do not split the classes."""
        targets = self.targets if self.targets is not None else frozenset(range(1, c))
        tmask = np.zeros(c, bool)
        tmask[[t for t in targets if 0 <= t < c]] = True
        if not tmask.any() or tmask.all() or max(targets) >= c:
            raise fail(f"segment target {sorted(targets)} does not split the model's {c} classes (0-{c - 1})")
        return tmask

    def finish(self, frame: Frame, outs: list[np.ndarray], geom: Geom) -> Frame:
        m = squeeze_lead(outs[0], 2)
        if m.ndim == 3:
            m = m if self._hwc(list(m.shape)) else m.transpose(1, 2, 0)
            if m.shape[2] == 1:
                m = m[:, :, 0]
        elif m.ndim != 2:
            raise ItemError("model", f"segmentation output {list(outs[0].shape)} is not a map")
        classes: dict[str, float] = {}
        if m.ndim == 2:
            if np.issubdtype(m.dtype, np.integer):  # class ids already
                targets = self.targets or frozenset(int(v) for v in np.unique(m) if v != 0)
                fg = np.isin(m, list(targets))
                margin = np.where(fg, 1.0, -1.0).astype(np.float32)
                ids = m.astype(np.int64)
            else:
                prob = m.astype(np.float32)
                if prob.min() < 0 or prob.max() > 1:
                    prob = 1 / (1 + np.exp(-prob))
                margin = prob - np.float32(self.threshold)
                ids = (margin > 0).astype(np.int64)
        else:
            logits = m.astype(np.float32)
            c = logits.shape[2]
            tmask = self._split(c, item_error)
            margin = logits[:, :, tmask].max(2) - logits[:, :, ~tmask].max(2)
            ids = logits.argmax(2)
        counts = np.bincount(ids.reshape(-1).clip(0), minlength=1)
        total = float(ids.size)
        for cid in np.nonzero(counts)[0].tolist():
            frac = counts[cid] / total
            if cid != 0 and frac >= 0.005:
                name = self.labels[cid] if self.labels and cid < len(self.labels) else str(cid)
                classes[name] = round(float(frac), 4)
        mask = _map_to_image(margin, geom) > 0
        coverage = float(mask.mean()) if mask.size else 0.0
        frame.meta["segment"] = {"coverage": round(coverage, 4), "classes": classes}
        frame.img = self._compose(frame, mask)
        return frame

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


def _map_to_image(margin: np.ndarray, geom: Geom) -> np.ndarray:
    """A score map at model-output resolution -> the same map over the original image."""
    mh, mw = margin.shape
    kx, ky = mw / geom.in_w, mh / geom.in_h  # output map px per model-input px
    sx, sy = geom.sx * kx, geom.sy * ky
    ox, oy = geom.ox * kx, geom.oy * ky
    # map pixel centre = (image pixel centre) * s + o
    M = np.float32([[sx, 0, ox + 0.5 * sx - 0.5], [0, sy, oy + 0.5 * sy - 0.5]])
    return cv2.warpAffine(margin, M, (geom.img_w, geom.img_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=-1.0)
