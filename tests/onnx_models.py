"""Tiny ONNX models built in code for the model-op tests (no binary files in the repo).

Each builder writes a model into a folder and returns its path. Their outputs are simple,
known functions of the input, so tests can check results numerically.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = SHARED / "models"
IMAGES = SHARED / "images" / "real"


def _save(graph: onnx.GraphProto, path: Path) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _const(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _vi(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def classifier(folder: Path, *, size: int = 8, layout: str = "nchw", dtype: str = "float32",
               batch: str | int = "N", bias: tuple[float, ...] = (0, 0, 0, 100)) -> str:
    """Scores [N,4] = (mean B, mean G, mean R, 0) + bias: the channel means of the input.
    Labels for tests: blue, green, red, other."""
    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    shape = [batch, 3, size, size] if layout == "nchw" else [batch, size, size, 3]
    nodes = []
    x = "x"
    if dtype == "float16":
        nodes.append(helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", [x], ["xt"], perm=[0, 3, 1, 2]))
        x = "xt"
    w = np.zeros((3, 4), np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = 1
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["scores"]),
    ]
    graph = helper.make_graph(nodes, "classifier", [_vi("x", elem, shape)],
                              [_vi("scores", TensorProto.FLOAT, [batch, 4])],
                              [_const("w", w), _const("b", np.asarray(bias, np.float32))])
    return _save(graph, folder / f"classifier_{layout}_{dtype}.onnx")


def embedder(folder: Path, size: int = 8) -> str:
    """Vector [N,3] = the mean of each input channel (B, G, R)."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["vec"], axis=1)]
    graph = helper.make_graph(nodes, "embedder", [_vi("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [_vi("vec", TensorProto.FLOAT, ["N", 3])])
    return _save(graph, folder / "embedder.onnx")


def zero_embedder(folder: Path, size: int = 8) -> str:
    """Vector [N,3] of zeros whatever the input (a vector with no direction)."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
             helper.make_node("Mul", ["flat", "zero"], ["vec"])]
    graph = helper.make_graph(nodes, "zero_embedder", [_vi("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [_vi("vec", TensorProto.FLOAT, ["N", 3])], [_const("zero", np.zeros((), np.float32))])
    return _save(graph, folder / "zero_embedder.onnx")


def several_outputs(folder: Path, shapes: dict[str, tuple[int, ...]], size: tuple[int, int] = (64, 64)) -> str:
    """A model with one image input and an output of zeros per name, of the given shape (after
    the batch axis): YuNet's kind of outputs (scores, boxes and landmarks at several strides)."""
    return _constant_outputs(folder, "several_" + "_".join(shapes),
                             {k: np.zeros(v, np.float32) for k, v in shapes.items()}, size)


def _tied_constant(name: str, arr: np.ndarray, nodes: list, inits: list) -> None:
    """`name` = arr + 0 * mean(x): a constant that still depends on the input."""
    inits.append(_const(name + "_c", arr.astype(np.float32)))
    inits.append(_const(name + "_zero", np.zeros((), np.float32)))
    nodes += [helper.make_node("ReduceMean", ["x"], [name + "_m"], keepdims=0),
              helper.make_node("Mul", [name + "_m", name + "_zero"], [name + "_z"]),
              helper.make_node("Add", [name + "_c", name + "_z"], [name])]


def _constant_outputs(folder: Path, name: str, outputs: dict[str, np.ndarray], size: tuple[int, int],
                      dynamic: bool = False) -> str:
    """A model with input [1,3,H,W] whose outputs are the given arrays (with a batch axis added).
    dynamic: the input's batch axis is dynamic and each output is tiled that many times along its
    second axis, so the outputs' counts (that axis) are known only when the model runs (the same arrays at 1)."""
    w, h = size
    nodes: list = []
    inits: list = []
    if dynamic:
        inits += [_const("zero", np.array([0], np.int64)), _const("one", np.array([1], np.int64))]
        nodes += [helper.make_node("Shape", ["x"], ["xshape"]),
                  helper.make_node("Slice", ["xshape", "zero", "one"], ["n"])]
    for out, arr in outputs.items():
        if not dynamic:
            _tied_constant(out, arr[None], nodes, inits)
            continue
        inits += [_const(out + "_c", arr[None].astype(np.float32)),
                  _const(out + "_ones", np.ones(arr.ndim - 1, np.int64))]
        nodes += [helper.make_node("Concat", ["one", "n", out + "_ones"], [out + "_reps"], axis=0),
                  helper.make_node("Tile", [out + "_c", out + "_reps"], [out])]
    def dims(out: str, arr: np.ndarray) -> list:
        return [1, f"{out}_n", *arr.shape[1:]] if dynamic else [1, *arr.shape]
    graph = helper.make_graph(nodes, name, [_vi("x", TensorProto.FLOAT, ["N" if dynamic else 1, 3, h, w])],
                              [_vi(out, TensorProto.FLOAT, dims(out, arr)) for out, arr in outputs.items()], inits)
    return _save(graph, folder / f"{name}{'_dyn' if dynamic else ''}.onnx")


def detector_boxes(folder: Path, boxes: np.ndarray, size: tuple[int, int] = (64, 64)) -> str:
    """Output dets [1,N,6] = the given (x1,y1,x2,y2,score,cls) rows."""
    return _constant_outputs(folder, "detector_boxes", {"dets": boxes}, size)


def detector_ssd(folder: Path, scores: np.ndarray, boxes: np.ndarray, size: tuple[int, int] = (64, 48),
                 dynamic: bool = False) -> str:
    """UltraFace-like: scores [1,N,C] and normalised xyxy boxes [1,N,4]."""
    return _constant_outputs(folder, "detector_ssd", {"scores": scores, "boxes": boxes}, size, dynamic)


def detector_yolo(folder: Path, rows: np.ndarray, size: tuple[int, int] = (64, 64)) -> str:
    """YOLOv8-like: output [1, 4+C, N] (cx, cy, w, h, class scores...) per column."""
    return _constant_outputs(folder, "detector_yolo", {"preds": rows}, size)


def segmenter(folder: Path, size: int | None = 32, nhwc_out: bool = False, fixed_reshape: int = 0) -> str:
    """Two classes: logit1 = R - 128 (raw BGR input), logit0 = 0, so 'foreground' = red > 128.
    size None: dynamic input. fixed_reshape=S: the graph reshapes its input to S x S, so any other
    image size makes the run fail (for the one-bad-image tests)."""
    shape = [1, 3, size, size] if size else [1, 3, "H", "W"]
    wconv = np.zeros((2, 3, 1, 1), np.float32)
    wconv[1, 2] = 1
    nodes = []
    inits = [_const("wc", wconv), _const("bc", np.asarray([0, -128], np.float32))]
    x = "x"
    if fixed_reshape:
        inits.append(_const("shape", np.asarray([1, 3, fixed_reshape, fixed_reshape], np.int64)))
        nodes.append(helper.make_node("Reshape", ["x", "shape"], ["xr"]))
        x = "xr"
    nodes.append(helper.make_node("Conv", [x, "wc", "bc"], ["logits" if not nhwc_out else "lc"]))
    out_shape: list = [1, 2, size, size] if size else [1, 2, "H", "W"]
    if nhwc_out:
        nodes.append(helper.make_node("Transpose", ["lc"], ["logits"], perm=[0, 2, 3, 1]))
        out_shape = [1, size, size, 2] if size else [1, "H", "W", 2]
    graph = helper.make_graph(nodes, "segmenter", [_vi("x", TensorProto.FLOAT, shape)],
                              [_vi("logits", TensorProto.FLOAT, out_shape)], inits)
    return _save(graph, folder / f"segmenter_{size}_{int(nhwc_out)}_{fixed_reshape}.onnx")


def inverter(folder: Path, size: int | None = None) -> str:
    """image2image: y = 255 - x (raw 0..255 input), any size unless `size` fixes it."""
    shape = [1, 3, size, size] if size else [1, 3, "H", "W"]
    graph = helper.make_graph([helper.make_node("Sub", ["c255", "x"], ["y"])], "invert",
                              [_vi("x", TensorProto.FLOAT, shape)], [_vi("y", TensorProto.FLOAT, shape)],
                              [_const("c255", np.asarray(255, np.float32))])
    return _save(graph, folder / f"invert_{size}.onnx")


def upscaler(folder: Path, channels: int = 3, factor: int = 2) -> str:
    """image2image: nearest-neighbour x`factor` upsampling, dynamic size, 1 or 3 channels."""
    scales = np.asarray([1, 1, factor, factor], np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    graph = helper.make_graph([node], "upscale", [_vi("x", TensorProto.FLOAT, [1, channels, "H", "W"])],
                              [_vi("y", TensorProto.FLOAT, [1, channels, "H2", "W2"])], [_const("scales", scales)])
    return _save(graph, folder / f"upscale_{channels}_{factor}.onnx")


def flat_input(folder: Path) -> str:
    """A model whose input is [1,10]: not an image."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "flat",
                              [_vi("x", TensorProto.FLOAT, [1, 10])], [_vi("y", TensorProto.FLOAT, [1, 10])])
    return _save(graph, folder / "flat.onnx")


def labels_file(folder: Path, names: list[str], name: str = "labels.txt") -> str:
    path = folder / name
    path.write_text("\n".join(names) + "\n")
    return str(path)


def have_shared(*names: str) -> bool:
    return all(os.path.exists(MODELS / n) for n in names) and IMAGES.is_dir()


def batch_probe(folder: Path, size: int = 8) -> str:
    """Vector [N,4] = (mean B, mean G, mean R, N): the last value is the number of images the
    model was run on together, so tests can see micro-batching happen."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["vec"], axis=1),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Slice", ["shape", "zero", "one"], ["n"]),
             helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
             helper.make_node("Concat", ["n", "one"], ["col_shape"], axis=0),
             helper.make_node("Expand", ["nf", "col_shape"], ["col"]),
             helper.make_node("Concat", ["vec", "col"], ["out"], axis=1)]
    graph = helper.make_graph(nodes, "batch_probe", [_vi("x", TensorProto.FLOAT, ["N", 3, size, size])],
                              [_vi("out", TensorProto.FLOAT, ["N", 4])],
                              [_const("zero", np.array([0], np.int64)), _const("one", np.array([1], np.int64))])
    return _save(graph, folder / "batch_probe.onnx")
