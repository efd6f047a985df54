"""The `model` op: run any single-image-input ONNX model with onnxruntime.

One op, five tasks (classify, detect, segment, image2image, embed), one module each under
`batchcli.models.tasks`. Preprocessing (`batchcli.models.prep`) is inferred from the model's
image input (rank, NCHW/NHWC, fixed or dynamic size, float32/float16/uint8) and every part of it
can be overridden. Everything is validated in `check()` (parent process, before any item); the
InferenceSession is created in `prepare()`, once per worker process, through the per-process
cache of `batchcli.models.session`. This module batches images into model runs and keeps one
bad image from failing its neighbours; the task reads the outputs.
"""

from __future__ import annotations

from typing import Any

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging.lazy import np
from batchcli.models.labels import read_labels
from batchcli.models.prep import PRESETS, Geom, Prep, resolve_prep
from batchcli.models.tasks import TASKS, Task
from batchcli.ops.base import Frame, Op, Param, op_file, register


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


TASK_PARAMS = {"top": ("classify",), "softmax": ("classify",), "threshold": ("classify", "detect", "segment"),
               "iou": ("detect",), "decoder": ("detect",), "mark": ("detect",), "target": ("segment", "detect"),
               "output": ("segment",), "tile": ("image2image",), "overlap": ("image2image",),
               "normalize": ("embed",)}
"""The parameters that mean something to some tasks only: given to another, they are a usage error."""


@register
class Model(Op):
    name = "model"
    summary = "Run an ONNX model: classify, detect, segment, image2image (super-resolution, style) or embed."
    uses_onnx = True  # the CLI prints which onnxruntime provider was chosen when a pipeline has one
    params = (
        Param("path", "path", positional=True, help="the .onnx model file"),
        Param("task", "choice", choices=tuple(TASKS), help="what the model does (decides the output handling)"),
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
        self._task: Task | None = None
        self._batchable = False

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_sess"] = None  # sessions never travel; prepare() rebuilds from the process cache
        return state

    # --- validation (parent) -------------------------------------------------------------------
    def check(self) -> None:
        from batchcli.models import session as onnx_session

        p = self.p
        task = TASKS[p["task"]]
        onnx_session.parse_providers()  # unknown names in --providers fail here, before any item
        info = onnx_session.inspect_model(p["path"])
        images = [t for t in info.inputs if len(t.shape) in (3, 4)]
        if len(info.inputs) != 1:
            names = ", ".join(f"{t.name}{list(t.shape)}" for t in info.inputs)
            raise ConfigError(f"model: {p['path']} has {len(info.inputs)} inputs ({names}); only models with one image input are supported")
        if not images:
            t = info.inputs[0]
            raise ConfigError(f"model: input {t.name!r} has rank {len(t.shape)} {list(t.shape)}; task={task.name} needs an image tensor [N,C,H,W] or [N,H,W,C]")
        self._prep = resolve_prep(p, images[0], task.fixed_size)
        self._task = task(p, self._prep, self._load_labels(info, task))
        if not info.outputs:
            raise ConfigError("model: the model has no outputs")
        self._batchable = self._task.check_outputs(info.outputs)
        if p["overlap"] * 2 >= max(1, p["tile"]) and p["tile"]:
            raise ConfigError(f"model: overlap={p['overlap']} must be under half of tile={p['tile']}")
        self.writes_image = self._task.writes_image()
        if p["route"] and task.name != "classify":
            raise ConfigError("model: route=true needs task=classify")
        defaults = {prm.name: prm.default for prm in self.params}
        for name, tasks in TASK_PARAMS.items():
            if task.name not in tasks and p[name] != defaults[name]:
                raise ConfigError(f"model: {name}= is for task={' or task='.join(tasks)}, not task={task.name}")

    def _load_labels(self, info: Any, task: type[Task]) -> list[str] | None:
        if not self.p["labels"]:
            return None
        path = op_file(self.p["labels"], "model labels=")
        self.p["labels"] = path
        labels = read_labels(path)
        assert self._prep is not None
        task.check_labels(path, labels, info.outputs[0], self._prep)
        return labels

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
        if self._task is None or not self._task.fixed_size or prep is None or not (prep.width and prep.height):
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
        task, prep = self._task, self._prep
        assert task is not None and prep is not None
        if not task.batched:
            return [self._guard(task.apply, f, self._run) for f in frames]
        results: list[Frame | ItemError | None] = [None] * len(frames)
        ready: dict[tuple, list[tuple[int, np.ndarray, Geom]]] = {}
        for k, f in enumerate(frames):
            try:
                tensor, geom = task.to_tensor(f.img)
            except Exception as exc:  # an image this model cannot take fails alone
                results[k] = ItemError("model", f"cannot prepare the image for the model: {_one_line(exc)}")
                continue
            ready.setdefault(tensor.shape, []).append((k, tensor, geom))
        step = self.p["batch"] if self._batchable else 1
        if prep.batch_axis and prep.batch_axis > 1:
            step = prep.batch_axis
        for group in ready.values():
            for at in range(0, len(group), step):
                self._run_chunk(frames, group[at:at + step], results)
        return [r if r is not None else ItemError("model", "no result") for r in results]

    def _run_chunk(self, frames: list[Frame], chunk: list, results: list) -> None:
        task, prep = self._task, self._prep
        assert task is not None and prep is not None
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
            results[k] = self._guard(task.finish, frames[k], per, geom)

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
