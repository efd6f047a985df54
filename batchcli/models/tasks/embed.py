"""task=embed: the model's output as one vector per image (unit length by default)."""

from __future__ import annotations

from typing import Any

from batchcli.errors import ItemError
from batchcli.imaging.lazy import np
from batchcli.models.prep import Geom
from batchcli.models.tasks.base import Task
from batchcli.ops.base import Frame


class Embed(Task):
    name = "embed"
    fixed_size = True

    def check_outputs(self, outputs: list[Any]) -> bool:
        o = self.only_output(outputs)
        return self._dynamic_batch() and len(o.shape) >= 2

    def writes_image(self) -> bool:
        return False

    def finish(self, frame: Frame, outs: list[np.ndarray], geom: Geom) -> Frame:
        vec = outs[0].astype(np.float32).reshape(-1)
        if not np.all(np.isfinite(vec)):
            raise ItemError("model", "embedding has NaN or infinite values")
        if self.p["normalize"]:
            n = float(np.linalg.norm(vec))
            if n == 0:
                raise ItemError("model", "embedding is all zeros: a zero vector cannot be normalised")
            vec = vec / n
        frame.meta["embed"] = {"dim": int(vec.size), "vector": [float(v) for v in vec]}
        return frame
