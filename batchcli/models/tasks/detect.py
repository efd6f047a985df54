"""task=detect: boxes from three output formats ([N,6] boxes, SSD scores + boxes, YOLO), kept
by score and class, suppressed (NMS), mapped back to image pixels; optionally marked in the image."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batchcli.imaging.lazy import np
from batchcli.models.boxes import mark_boxes, nms, xyxy_to_meta
from batchcli.models.prep import Geom, Prep
from batchcli.models.tasks.base import Task, config_error, describe, item_error, squeeze_lead
from batchcli.ops.base import Frame


class Detect(Task):
    name = "detect"
    default_threshold = 0.5

    def __init__(self, p: dict[str, Any], prep: Prep, labels: list[str] | None):
        super().__init__(p, prep, labels)
        self.decoder = "auto"

    def check_outputs(self, outputs: list[Any]) -> bool:
        shapes = [o.shape for o in outputs]
        self.decoder = self._pick_decoder(shapes, config_error, outputs)
        return self._dynamic_batch() and all(len(o.shape) >= 3 for o in outputs)

    def writes_image(self) -> bool:
        return self.p["mark"] != "none"

    def _pick_decoder(self, shapes: list[tuple], fail: Callable[[str], Exception], outputs: Any = None) -> str:
        """The decoder for outputs of these shapes (None: a dynamic axis, decided on the first
        real output): decoder= when they fit it, else the one they fit. `fail` makes the error."""
        want = self.p["decoder"]
        if want != "auto":
            why = _unfit(want, shapes)
            if why:
                raise fail(why)
            return want
        if len(shapes) == 2 and not _unfit("ssd", shapes):
            return "ssd"
        if len(shapes) == 1:
            s = shapes[0]
            if s and s[-1] == 6 and not _unfit("boxes", shapes):
                return "boxes"
            if len(s) == 3 and s[1] and s[2] and 4 < s[1] < s[2]:
                return "yolo"
        if len(shapes) <= 2 and any(d is None for s in shapes for d in s):
            return "auto"
        shown = describe(outputs) if outputs is not None else ", ".join(str(list(x)) for x in shapes)
        raise fail(f"cannot tell how to decode detector output {shown}; set decoder=boxes|ssd|yolo "
                   f"({FORMATS})")

    def _decode(self, outs: list[np.ndarray], geom: Geom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (xyxy boxes in model-input pixels, scores, classes)."""
        shapes = [o.shape for o in outs]
        fail = item_error
        decoder = self._pick_decoder(shapes, fail) if self.decoder == "auto" else self.decoder
        why = _unfit(decoder, shapes)
        if why:
            raise fail(why)
        if decoder == "ssd":
            bi = _box_index(shapes)
            boxes = squeeze_lead(outs[bi], 2).reshape(-1, 4).astype(np.float32)
            s = squeeze_lead(outs[1 - bi], 2).astype(np.float32)
            s = s.reshape(len(boxes), -1)  # one score row per box: _unfit checked the counts
            if s.shape[1] == 1:
                scores, classes = s[:, 0], np.zeros(len(s), np.int64)
            else:  # column 0 is the background
                classes = s[:, 1:].argmax(1) + 1
                scores = s[np.arange(len(s)), classes]
            fmt = "xyxy"
        elif decoder == "yolo":
            a = squeeze_lead(outs[0], 2).astype(np.float32)
            if a.shape[0] < a.shape[1]:
                a = a.T
            boxes, cls_scores = a[:, :4], a[:, 4:]
            classes = cls_scores.argmax(1)
            scores = cls_scores[np.arange(len(a)), classes]
            fmt = "cxcywh"
        else:
            a = squeeze_lead(outs[0], 2).astype(np.float32)
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

    def finish(self, frame: Frame, outs: list[np.ndarray], geom: Geom) -> Frame:
        boxes, scores, classes = self._decode(outs, geom)
        keep = scores >= self.threshold
        if self.targets is not None:
            keep &= np.isin(classes, list(self.targets))
        boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
        boxes = geom.to_image(boxes)
        good = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, classes = boxes[good], scores[good], classes[good]
        kept = nms(boxes, scores, self.p["iou"], classes)
        boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
        meta: dict[str, Any] = {"boxes": xyxy_to_meta(boxes, scores, classes), "count": int(len(kept))}
        if self.labels:
            meta["labels"] = [self.labels[c] if 0 <= c < len(self.labels) else None for c in classes.tolist()]
        frame.meta["detect"] = meta
        if self.p["mark"] != "none":
            frame.img = mark_boxes(frame.img, [b[:4] for b in meta["boxes"]], self.p["mark"])
        return frame


FORMATS = "boxes: one output [1,N,6]; ssd: two outputs, scores [1,N,C] and boxes [1,N,4]; yolo: one output [1,4+C,N]"


def _box_index(shapes: list[tuple]) -> int:
    """SSD: the boxes are the last output ending in 4 (scores first when both do, UltraFace's order)."""
    return [i for i, s in enumerate(shapes) if len(s) >= 2 and s[-1] == 4][-1]


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def _unfit(decoder: str, shapes: list[tuple]) -> str:
    """Why outputs of these shapes (None: a dynamic axis) cannot be read by `decoder`; '' when they can."""
    first = shapes[0]
    lead = first[:-2]
    if decoder == "boxes":
        if first[-1:] not in ((6,), (None,)) or len(first) < 2 or any(d not in (1, None) for d in lead):
            return f"detector output {list(first)} is not [N,6] (decoder=boxes reads x1,y1,x2,y2,score,class rows)"
        return ""
    if decoder == "yolo":
        rows = [d for d in first[-2:] if d is not None]
        if len(first) < 2 or any(d not in (1, None) for d in lead) or (rows and max(rows) < 5) \
                or (len(rows) == 2 and min(rows) < 5):
            return (f"detector output {list(first)} is not [1,4+C,N] (decoder=yolo reads rows of a box "
                    "and at least one class score)")
        return ""
    if len(shapes) != 2:
        return (f"decoder=ssd needs two outputs, scores [1,N,C] and boxes [1,N,4]; the model has "
                f"{len(shapes)}: {', '.join(str(list(s)) for s in shapes[:4])}{', ...' if len(shapes) > 4 else ''}")
    if not any(len(s) >= 2 and s[-1] == 4 for s in shapes):
        return f"decoder=ssd needs boxes [1,N,4]; neither output {list(shapes[0])} nor {list(shapes[1])} ends in 4"
    bi = _box_index(shapes)
    boxes, scores = shapes[bi], shapes[1 - bi]
    if not (_same(scores[:-1], boxes[:-1]) or _same(scores, boxes[:-1])):
        return (f"decoder=ssd needs one score row per box: scores {list(scores)} and boxes {list(boxes)} "
                "do not have the same count")
    return ""
