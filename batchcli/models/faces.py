"""The `faces` op: find faces, then blur, pixelate, crop, draw or just count them.

With `model=PATH` it uses the YuNet ONNX model through `cv2.FaceDetectorYN`
(face_detection_yunet_2023mar.onnx from opencv_zoo). Without it, OpenCV's bundled Haar cascade,
when this OpenCV build ships one (OpenCV 5 no longer does: then the op asks for a model path).
"""

from __future__ import annotations

import os
from typing import Any

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import cv2, np
from batchcli.models.boxes import mark_boxes
from batchcli.models.prep import drop_alpha, to_uint8
from batchcli.ops.base import Frame, Op, Param, op_file, register

HAAR_FILE = "haarcascade_frontalface_default.xml"
ACTIONS = ("blur", "pixelate", "crop", "count", "draw")


def haar_cascade_path() -> str | None:
    """The bundled frontal-face cascade, or None when this OpenCV build has none."""
    if not hasattr(cv2, "CascadeClassifier"):
        return None
    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    path = os.path.join(folder, HAAR_FILE) if folder else ""
    return path if path and os.path.isfile(path) else None


@register
class Faces(Op):
    name = "faces"
    summary = "Detect faces (YuNet with model=, else the Haar cascade); blur, pixelate, crop, draw or count them."
    params = (
        Param("action", "choice", "count", positional=True, choices=ACTIONS, help="what to do with the faces"),
        Param("model", "str", "", help="YuNet .onnx file (face_detection_yunet_2023mar.onnx); default: the Haar cascade, if this OpenCV ships one"),
        Param("threshold", "float", 0.6, min=0, max=1, help="YuNet: minimum face score"),
        Param("iou", "float", 0.3, min=0, max=1, help="YuNet: NMS overlap limit"),
        Param("max_side", "int", 1920, min=0, max=65535,
              help="detect on a copy no larger than this (0: full size); boxes are scaled back"),
        Param("margin", "float", 0.0, min=0, max=2, help="grow each box by this fraction of its size per side"),
        Param("min_size", "int", 0, min=0, help="ignore faces smaller than this many pixels (short side)"),
    )

    def __init__(self, **values: Any):
        super().__init__(**values)
        self._det: Any = None
        self._haar = ""
        self.writes_image = values.get("action", "count") != "count"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_det"] = None  # OpenCV detectors do not pickle; prepare() builds one per process
        return state

    def check(self) -> None:
        if self.p["model"]:
            from batchcli.models import session as onnx_session

            path = op_file(self.p["model"], "faces model=")
            self.p["model"] = path
            info = onnx_session.inspect_model(path)  # not ONNX -> ConfigError
            if len(info.inputs) != 1 or len(info.inputs[0].shape) != 4:
                raise ConfigError(f"faces: {path} is not a YuNet face detector (expected one [1,3,H,W] input)")
            names = {o.name for o in info.outputs}
            if not {"cls_8", "obj_8", "bbox_8"} <= names:
                raise ConfigError(f"faces: {path} is not a YuNet face detector (outputs: {', '.join(sorted(names))})")
            return
        haar = haar_cascade_path()
        if haar is None:
            raise ConfigError(
                f"faces: this OpenCV build ({cv2.__version__}) ships no Haar cascade; pass "
                "model=PATH to a YuNet model (face_detection_yunet_2023mar.onnx from opencv_zoo)")
        self._haar = haar

    def prepare(self) -> None:
        if self.p["model"]:
            logging = cv2.utils.logging
            level = logging.getLogLevel()
            logging.setLogLevel(logging.LOG_LEVEL_ERROR)  # "targets are not supported" noise
            try:
                self._det = cv2.FaceDetectorYN.create(self.p["model"], "", (320, 320), self.p["threshold"],
                                                      self.p["iou"], 5000)
            except cv2.error as exc:
                raise ConfigError(f"faces: cannot load {self.p['model']}: {str(exc).strip().splitlines()[-1]}") from None
            finally:
                logging.setLogLevel(level)
        else:
            if not self._haar:
                self.check()
            self._det = cv2.CascadeClassifier(self._haar)

    def detect(self, img: np.ndarray) -> list[list[float]]:
        """-> [[x, y, w, h, score], ...] in image pixels, best first."""
        if self._det is None:
            self.prepare()
        base = drop_alpha(to_uint8(img))
        if base.ndim == 2:
            base = cv2.cvtColor(base, cv2.COLOR_GRAY2BGR)
        h, w = base.shape[:2]
        s = 1.0
        cap = self.p["max_side"]
        if cap and max(h, w) > cap:
            s = cap / max(h, w)
            base = cv2.resize(base, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
        try:
            if self.p["model"]:
                self._det.setInputSize((base.shape[1], base.shape[0]))
                _, found = self._det.detect(base)
                rows = [] if found is None else [list(map(float, r[:4])) + [float(r[14])] for r in found]
            else:
                gray = cv2.equalizeHist(cv2.cvtColor(base, cv2.COLOR_BGR2GRAY))
                found = self._det.detectMultiScale(gray, 1.1, 5, minSize=(24, 24))
                rows = [[float(x), float(y), float(bw), float(bh), 1.0] for x, y, bw, bh in found]
        except cv2.error as exc:
            raise ItemError("model", f"face detection failed: {str(exc).strip().splitlines()[-1]}") from None
        out = []
        for x, y, bw, bh, score in rows:
            x, y, bw, bh = x / s, y / s, bw / s, bh / s
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(float(w), x + bw), min(float(h), y + bh)
            if x2 <= x1 or y2 <= y1 or min(x2 - x1, y2 - y1) < self.p["min_size"]:
                continue
            out.append([round(x1, 1), round(y1, 1), round(x2 - x1, 1), round(y2 - y1, 1), round(score, 4)])
        out.sort(key=lambda b: (-b[4], -b[2] * b[3]))
        return out

    def apply(self, frame: Frame) -> Frame:
        boxes = self.detect(frame.img)
        frame.meta["faces"] = {"count": len(boxes), "boxes": boxes,
                               "detector": "yunet" if self.p["model"] else "haar"}
        action = self.p["action"]
        if action != "count":
            if action == "crop":  # the largest face
                boxes = sorted(boxes, key=lambda b: -b[2] * b[3])
            frame.img = mark_boxes(frame.img, boxes, action, margin=self.p["margin"])
        return frame
