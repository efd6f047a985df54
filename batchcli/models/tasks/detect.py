"""task=detect: boxes from three output formats ([N,6] boxes, SSD scores + boxes, YOLO), kept
by score and class, suppressed (NMS), mapped back to image pixels; optionally marked in the image."""

from __future__ import annotations

from typing import Any

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import np
from batchcli.models.boxes import mark_boxes, nms, xyxy_to_meta
from batchcli.models.prep import Geom, Prep
from batchcli.models.tasks.base import Task, squeeze_lead
from batchcli.ops.base import Frame


class Detect(Task):
    name = "detect"
    default_threshold = 0.5

    def __init__(self, p: dict[str, Any], prep: Prep, labels: list[str] | None):
        super().__init__(p, prep, labels)
        self.decoder = "auto"

    def check_outputs(self, outputs: list[Any]) -> bool:
        self.decoder = self._pick_decoder([o.shape for o in outputs])
        return self._dynamic_batch() and all(len(o.shape) >= 3 for o in outputs)

    def writes_image(self) -> bool:
        return self.p["mark"] != "none"

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

    def _decode(self, outs: list[np.ndarray], geom: Geom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> (xyxy boxes in model-input pixels, scores, classes)."""
        decoder = self.decoder
        if decoder == "auto":
            decoder = self._pick_decoder([o.shape for o in outs])
        if decoder == "ssd":
            four = [i for i, o in enumerate(outs) if o.shape[-1] == 4]
            bi = four[-1]  # scores first, boxes second when both end in 4 (UltraFace order)
            boxes_out = outs[bi]
            score_out = next(o for i, o in enumerate(outs) if i != bi)
            boxes = squeeze_lead(boxes_out, 2).reshape(-1, 4).astype(np.float32)
            s = squeeze_lead(score_out, 2).astype(np.float32)
            s = s.reshape(len(boxes), -1)
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
