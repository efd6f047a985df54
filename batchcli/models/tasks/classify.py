"""task=classify: the top labels and their scores; optionally route the image by its top label."""

from __future__ import annotations

import math
from typing import Any

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import np
from batchcli.models.labels import folder_name
from batchcli.models.prep import Geom, Prep
from batchcli.models.tasks.base import Task
from batchcli.ops.base import Frame


class Classify(Task):
    name = "classify"
    fixed_size = True

    @classmethod
    def check_labels(cls, path: str, labels: list[str], output: Any, prep: Prep) -> None:
        dims = output.shape[1:] if len(output.shape) > 1 else output.shape
        n = math.prod(d for d in dims if d) if all(dims) else None
        if n is not None and n != len(labels):
            raise ConfigError(f"model: {path} has {len(labels)} labels but the model gives {n} scores")

    def check_outputs(self, outputs: list[Any]) -> bool:
        o = self.only_output(outputs)
        s = o.shape
        if not _score_vector(s):
            raise ConfigError(f"model: output {o.name!r} {list(s)} is not one score vector; "
                              "task=classify needs [N,C] or [N,C,1,1]")
        return self._dynamic_batch() and len(s) >= 2

    def writes_image(self) -> bool:
        return bool(self.p["route"])  # routing files the (unchanged) image by label

    def finish(self, frame: Frame, outs: list[np.ndarray], geom: Geom) -> Frame:
        scores = outs[0].astype(np.float32).reshape(-1)
        if self.labels is not None and scores.size != len(self.labels):
            raise ItemError("model", f"model gave {scores.size} scores for {len(self.labels)} labels")
        mode = self.p["softmax"]
        if mode == "yes" or (mode == "auto" and (scores.min() < 0 or abs(float(scores.sum()) - 1) > 0.01)):
            scores = _softmax(scores)
        k = min(self.p["top"], scores.size)
        idx = np.argsort(-scores, kind="stable")[:k]
        top = []
        for i in idx.tolist():
            s = float(scores[i])
            if s < self.threshold:
                break
            top.append({"label": self.labels[i] if self.labels else None, "index": i, "score": round(s, 6)})
        frame.meta["classify"] = {"top": top}
        if self.p["route"]:
            if not top:
                frame.route = "unsure"
            else:
                frame.route = folder_name(top[0]["label"]) if top[0]["label"] else str(top[0]["index"])
        return frame


def _score_vector(s: tuple) -> bool:
    """[C], [N,C], [N,C,1,1] or [N,1,1,C] (a dynamic axis may be anything)."""
    if len(s) in (1, 2):
        return True
    return len(s) == 4 and (all(d in (1, None) for d in s[2:]) or all(d in (1, None) for d in s[1:3]))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()
