"""The interface every model task implements, and what the tasks share.

`Model.check()` (parent) builds one Task from the op's parameters, the resolved input (`Prep`)
and the labels; the task travels to the workers with the op. Per item the op calls
`to_tensor()` on each image, runs the model over a batch, and hands each image's outputs to
`finish()`, which writes the metadata (and the pixels, if the task changes them). A task that
must call the model itself (image2image runs tiles) sets `batched = False` and implements
`apply()` instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, TypeAlias

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import np
from batchcli.models.labels import folder_name
from batchcli.models.prep import Geom, Prep, image_tensor
from batchcli.ops.base import Frame

Run: TypeAlias = "Callable[[np.ndarray], list[np.ndarray]]"  # the model: input tensor -> its outputs


class Task:
    name: ClassVar[str] = ""
    fixed_size: ClassVar[bool] = False  # every image at the model's input size (then JPEGs may shrink)
    default_threshold: ClassVar[float] = 0.0
    batched: ClassVar[bool] = True  # False: apply() calls the model itself

    def __init__(self, p: dict[str, Any], prep: Prep, labels: list[str] | None):
        self.p = p
        self.prep = prep
        self.labels = labels
        self.threshold = self._resolve_threshold()
        self.targets = self._resolve_targets()

    # --- setup (parent) -------------------------------------------------------------------------
    @classmethod
    def check_labels(cls, path: str, labels: list[str], output: Any, prep: Prep) -> None:
        """Raise ConfigError when the labels cannot fit the model's first output."""

    def check_outputs(self, outputs: list[Any]) -> bool:
        """Raise ConfigError when the outputs do not suit the task; return whether several
        images may share one model run (the input has a dynamic batch axis and the outputs too)."""
        return False

    def writes_image(self) -> bool:
        return True

    def only_output(self, outputs: list[Any]) -> Any:
        """The model's one output. A task that reads one output refuses a model with several
        rather than pick one of them silently."""
        if len(outputs) > 1:
            raise ConfigError(f"model: the model has {len(outputs)} outputs ({describe(outputs)}); "
                              f"task={self.name} reads a single output and cannot tell which one to use")
        return outputs[0]

    def _dynamic_batch(self) -> bool:
        return self.prep.rank == 4 and self.prep.batch_axis is None

    def _resolve_threshold(self) -> float:
        raw = self.p["threshold"]
        if raw == "auto":
            return self.default_threshold
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"model: threshold: {raw!r} is not a number (or auto)") from None
        if not math.isfinite(value):
            raise ConfigError(f"model: threshold: {raw!r} is not a finite number")
        return value

    def _resolve_targets(self) -> frozenset[int] | None:
        raw = self.p["target"].strip()
        if not raw:
            return None
        out = set()
        for word in (w.strip() for w in raw.split(",")):
            if word.isdigit():
                out.add(int(word))
                continue
            names = [folder_name(x).lower() for x in (self.labels or [])]
            key = folder_name(word).lower()
            if key not in names:
                where = "not in the labels file" if self.labels else "give labels=FILE to use names"
                raise ConfigError(f"model: target {word!r}: {where}")
            out.add(names.index(key))
        return frozenset(out)

    # --- per item (worker) ----------------------------------------------------------------------
    def to_tensor(self, img: np.ndarray) -> tuple[np.ndarray, Geom]:
        """A decoded image -> the model's input for it (no batch axis) and its geometry."""
        return image_tensor(img, self.prep)

    def finish(self, frame: Frame, outs: list[np.ndarray], geom: Geom) -> Frame:
        """This image's model outputs -> the frame's metadata (and pixels)."""
        raise NotImplementedError

    def apply(self, frame: Frame, run: Run) -> Frame:
        """For tasks with `batched = False`: the whole item, calling `run` as often as needed."""
        raise NotImplementedError


def config_error(message: str) -> ConfigError:
    """A model output that does not suit the task, known when the model is checked."""
    return ConfigError(f"model: {message}")


def item_error(message: str) -> ItemError:
    """The same, found in a real output (a dynamic shape): the item fails."""
    return ItemError("model", message)


def describe(outputs: list[Any], most: int = 4) -> str:
    """'name[1, 3, 224, 224], ...' for the first `most` outputs (None: a dynamic axis)."""
    text = ", ".join(f"{o.name}{list(o.shape)}" for o in outputs[:most])
    return text + (f", ... ({len(outputs) - most} more)" if len(outputs) > most else "")


def squeeze_lead(a: np.ndarray, rank: int) -> np.ndarray:
    """Drop leading axes of size 1 until `a` has `rank` axes (or the next one is wider)."""
    while a.ndim > rank and a.shape[0] == 1:
        a = a[0]
    return a
