"""task=image2image: super-resolution, style transfer, any model whose output is an image.
Dynamic-size models run over overlapping tiles blended with linear ramps; luma-only models
(preset=y) get the chroma back, scaled to the output; an alpha channel is carried over."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import cv2, np
from batchcli.models.prep import convert_order, denormalize, drop_alpha, normalize, to_uint8
from batchcli.models.tasks.base import Run, Task, config_error, item_error
from batchcli.ops.base import Frame


class Image2Image(Task):
    name = "image2image"
    batched = False

    def check_outputs(self, outputs: list[Any]) -> bool:
        o = self.only_output(outputs)
        if len(o.shape) not in (3, 4):
            raise ConfigError(f"model: output {o.name!r} {list(o.shape)} is not an image; task=image2image needs [N,C,H,W] or [N,H,W,C]")
        chw = list(o.shape[1:] if len(o.shape) == 4 else o.shape)
        layout = _output_layout(chw, self.prep.layout)
        c, oh, ow = (chw[0], chw[1], chw[2]) if layout == "nchw" else (chw[2], chw[0], chw[1])
        if c is not None and c not in (1, 3):
            raise ConfigError(f"model: output {o.name!r} {list(o.shape)} has {c} channels; task=image2image needs an image of 1 or 3")
        if oh and ow and self.prep.width and self.prep.height:
            _uniform(ow, oh, self.prep.width, self.prep.height, config_error)
        return False

    def apply(self, frame: Frame, run: Run) -> Frame:
        prep = self.prep
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
            out = self._run_tile(fitted, run)
            fy, fx = out.shape[0] / prep.height, out.shape[1] / prep.width
            size = (max(1, round(w * fx)), max(1, round(h * fy)))
            out = cv2.resize(out, size, interpolation=cv2.INTER_CUBIC)
            tiles = 1
        else:
            out, tiles = self._tiled(plane, run)
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

    def _run_tile(self, tile_hwc: np.ndarray, run: Run) -> np.ndarray:
        """One HxWxC uint8 tile -> the model's output as HxWxC float32 0..255."""
        prep = self.prep
        x = normalize(tile_hwc, prep)
        outs = run(x[None] if prep.rank == 4 else x)
        o = outs[0]
        o = o[0] if o.ndim == 4 else o
        layout = _output_layout(list(o.shape), prep.layout) if o.ndim == 3 else prep.layout
        return denormalize(o, prep, layout)

    def _tiled(self, plane: np.ndarray, run: Run) -> tuple[np.ndarray, int]:
        """Run the model over overlapping tiles and blend them with linear ramps; memory is the
        output image plus one tile, whatever the input size."""
        prep = self.prep
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
                out = self._run_tile(tile, run)
                if acc is None:
                    f = _uniform(out.shape[1], out.shape[0], tw, th, item_error)
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


def _output_layout(chw: list, layout: str) -> str:
    """The layout of a 3-axis output, which may differ from the input's: the short axis (4 or
    under) holds the channels. A dynamic axis (None) leaves the input's layout."""
    if None in (chw[0], chw[2]):
        return layout
    if layout == "nchw" and chw[0] > 4 and chw[2] <= 4:
        return "nhwc"
    if layout == "nhwc" and chw[2] > 4 and chw[0] <= 4:
        return "nchw"
    return layout


def _uniform(ow: int, oh: int, tw: int, th: int, fail: Callable[[str], Exception]) -> float:
    """The output's scale of a tw x th input; an error when width and height scale differently."""
    f = oh / th
    if abs(ow / tw - f) > 1e-6:
        raise fail(f"output {ow}x{oh} is not a uniform scale of {tw}x{th}")
    return f


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
