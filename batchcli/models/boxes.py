"""Boxes shared by the detectors (the `model` op's detect task and the `faces` op):
non-maximum suppression, marking boxes in an image, boxes as metadata."""

from __future__ import annotations

import math
from collections.abc import Sequence

from batchcli.imaging.lazy import cv2, np

MAX_DETECTIONS = 1000


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
