"""The `model` op on tiny ONNX models built in code: every task checked numerically."""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np
import onnx_models as om
import pytest

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging import imageio
from batchcli.models import session as onnx_session
from batchcli.models.boxes import nms
from batchcli.models.labels import folder_name, read_labels
from batchcli.models.prep import Geom, fit_image
from batchcli.ops.base import Frame
from batchcli.pipeline import Pipeline

LABELS = ["blue", "green", "red", "other"]


def frame(img: np.ndarray, fmt: str = "png") -> Frame:
    return Frame(img=img, src="test", fmt=fmt)


def solid(bgr: tuple[int, int, int], w: int = 40, h: int = 30) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bgr
    return img


def run(spec: str, img: np.ndarray) -> Frame:
    p = Pipeline.parse(spec)
    p.prepare()
    return p.run(frame(img))


def softmax(x):
    e = np.exp(np.asarray(x, np.float64) - max(x))
    return e / e.sum()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


# --- classify ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_classify_scores_are_the_softmax_of_known_logits(models, layout, dtype):
    path = om.classifier(models, layout=layout, dtype=dtype, bias=(0, 0, 0, 110))
    labels = om.labels_file(models, LABELS)
    f = run(f"model {path} task=classify labels={labels} top=4", solid((90, 100, 120)))
    top = f.meta["classify"]["top"]
    want = softmax([90, 100, 120, 110])
    assert [t["label"] for t in top] == ["red", "other", "green", "blue"]
    assert [t["index"] for t in top] == [2, 3, 1, 0]
    tol = 1e-2 if dtype == "float16" else 1e-5
    assert top[0]["score"] == pytest.approx(want[2], abs=tol)
    assert top[1]["score"] == pytest.approx(want[3], abs=tol)


def test_classify_top_threshold_and_softmax_off(models):
    path = om.classifier(models)
    f = run(f"model {path} task=classify top=2 softmax=no threshold=15", solid((10, 20, 30)))
    assert f.meta["classify"]["top"] == [{"label": None, "index": 3, "score": 100.0},
                                         {"label": None, "index": 2, "score": 30.0}]
    f = run(f"model {path} task=classify top=3 softmax=no threshold=25", solid((10, 20, 30)))
    assert [t["index"] for t in f.meta["classify"]["top"]] == [3, 2]


def test_classify_route_sets_a_safe_folder_label(models):
    path = om.classifier(models)
    labels = om.labels_file(models, ["blue sky", "green/leaf", "red, crimson", "other"], "odd.txt")
    f = run(f"model {path} task=classify labels={labels} route=true", solid((0, 0, 255)))
    assert f.route == "red"
    f = run(f"model {path} task=classify labels={labels} route=true", solid((0, 250, 0)))
    assert f.route == "green_leaf"


def test_classify_writes_no_image_but_a_resize_before_it_does(models):
    path = om.classifier(models)
    assert not Pipeline.parse(f"model {path} task=classify").writes_image
    assert Pipeline.parse(f"resize 10x10 | model {path} task=classify").writes_image


def test_classify_gray_rgba_and_16bit_inputs(models):
    path = om.classifier(models)
    gray = np.full((20, 20), 77, np.uint8)
    f = run(f"model {path} task=classify softmax=no top=4", gray)
    assert {t["index"]: t["score"] for t in f.meta["classify"]["top"]}[0] == pytest.approx(77)
    bgra = np.dstack([solid((1, 2, 250)), np.full((30, 40), 9, np.uint8)])
    f = run(f"model {path} task=classify softmax=no", bgra)
    assert {t["index"]: t["score"] for t in f.meta["classify"]["top"]}[2] == pytest.approx(250)
    deep = (solid((0, 0, 200)).astype(np.uint16) * 257)
    f = run(f"model {path} task=classify softmax=no", deep)
    assert {t["index"]: t["score"] for t in f.meta["classify"]["top"]}[2] == pytest.approx(200)


def test_preset_and_overrides_change_what_the_model_sees(models):
    path = om.classifier(models, bias=(0, 0, 0, 0))
    img = solid((10, 20, 200))
    f = run(f"model {path} task=classify softmax=no top=3 order=rgb", img)  # channels swapped
    assert [t["index"] for t in f.meta["classify"]["top"]][:1] == [0]
    f = run(f"model {path} task=classify softmax=no top=3 preset=unit", img)  # rgb, /255
    got = {t["index"]: t["score"] for t in f.meta["classify"]["top"]}
    assert got[0] == pytest.approx(200 / 255, abs=1e-5)
    f = run(f"model {path} task=classify softmax=no top=3 mean=10,20,30 std=2,2,2", img)
    got = {t["index"]: t["score"] for t in f.meta["classify"]["top"]}
    assert got[2] == pytest.approx((200 - 30) / 2)


# --- batching ------------------------------------------------------------------------------------
def test_apply_batch_equals_one_by_one(models):
    path = om.classifier(models)
    op = Pipeline.parse(f"model {path} task=classify batch=3 top=4").ops[0]
    op.prepare()
    imgs = [solid((i * 20, 255 - i * 20, 7 * i), 20 + i, 10 + 2 * i) for i in range(7)]
    one = [op.apply(frame(im)).meta["classify"] for im in imgs]
    many = op.apply_batch([frame(im) for im in imgs])
    assert [f.meta["classify"] for f in many] == one
    assert op._batchable


def test_apply_batch_fails_only_the_bad_items(models):
    path = om.segmenter(models, size=None, fixed_reshape=16)  # only 16x16 images fit
    op = Pipeline.parse(f"model {path} task=segment batch=4").ops[0]
    op.prepare()
    imgs = [solid((0, 0, 255), 16, 16), solid((0, 0, 255), 20, 16), solid((0, 0, 0), 16, 16)]
    out = op.apply_batch([frame(i) for i in imgs])
    assert isinstance(out[0], Frame) and out[0].meta["segment"]["coverage"] == 1.0
    assert isinstance(out[1], ItemError) and out[1].error_class == "model"
    assert "model run failed" in str(out[1])
    assert isinstance(out[2], Frame) and out[2].meta["segment"]["coverage"] == 0.0
    with pytest.raises(ItemError) as err:
        op.apply(frame(imgs[1]))
    assert err.value.error_class == "model"


def test_op_pickles_after_prepare_and_runs_in_a_fresh_copy(models):
    path = om.classifier(models)
    op = Pipeline.parse(f"model {path} task=classify").ops[0]
    op.prepare()
    op.apply(frame(solid((0, 0, 255))))
    clone = pickle.loads(pickle.dumps(op))
    assert clone._sess is None
    clone.prepare()
    assert clone.apply(frame(solid((0, 0, 255)))).meta["classify"]["top"][0]["index"] == 2


def test_spec_round_trips(models):
    path = om.classifier(models)
    labels = om.labels_file(models, LABELS)
    p = Pipeline.parse(f"model {path} task=classify labels={labels} mean=1,2,3 fit=letterbox color=#102030")
    again = Pipeline.from_spec(p.spec())
    assert again.spec() == p.spec()


# --- detect --------------------------------------------------------------------------------------
DETS = np.array([
    [8, 8, 24, 24, 0.9, 0],
    [10, 10, 26, 26, 0.8, 0],  # overlaps the first: suppressed
    [10, 10, 26, 26, 0.75, 1],  # same place, other class: kept
    [40, 40, 60, 60, 0.3, 1],  # under the threshold
    [32, 0, 64, 32, 0.7, 1],
], np.float32)


def test_detect_boxes_are_thresholded_suppressed_and_mapped_back(models):
    path = om.detector_boxes(models, DETS)
    f = run(f"model {path} task=detect", solid((0, 0, 0), 128, 64))  # stretch: x * 2, y * 1
    meta = f.meta["detect"]
    assert meta["count"] == 3
    assert meta["boxes"] == [[16.0, 8.0, 32.0, 16.0, 0.9, 0], [20.0, 10.0, 32.0, 16.0, 0.75, 1],
                             [64.0, 0.0, 64.0, 32.0, 0.7, 1]]
    assert not Pipeline.parse(f"model {path} task=detect").writes_image


def test_detect_letterbox_maps_back_through_the_padding(models):
    path = om.detector_boxes(models, DETS)
    f = run(f"model {path} task=detect fit=letterbox threshold=0.85", solid((0, 0, 0), 128, 64))
    # 128x64 -> 64x32 centred in 64x64: y offset 16, scale 0.5
    assert f.meta["detect"]["boxes"] == [[16.0, 0.0, 32.0, 16.0, 0.9, 0]]


def test_detect_target_filters_classes_and_labels_are_listed(models):
    path = om.detector_boxes(models, DETS)
    labels = om.labels_file(models, ["cat", "dog"], "pets.txt")
    f = run(f"model {path} task=detect labels={labels} target=dog", solid((0, 0, 0), 64, 64))
    assert f.meta["detect"]["labels"] == ["dog", "dog"]
    assert [b[5] for b in f.meta["detect"]["boxes"]] == [1, 1]


@pytest.mark.parametrize("how", ["draw", "blur", "pixelate", "crop"])
def test_detect_mark_changes_pixels(models, how):
    path = om.detector_boxes(models, DETS)
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    f = run(f"model {path} task=detect mark={how} threshold=0.85", img.copy())
    if how == "crop":
        assert f.img.shape == (16, 16, 3)
        assert np.array_equal(f.img, img[8:24, 8:24])
    else:
        assert f.img.shape == img.shape
        assert not np.array_equal(f.img[8:24, 8:24], img[8:24, 8:24])
        assert np.array_equal(f.img[40:, 40:], img[40:, 40:])  # outside the box: untouched


def test_detect_ssd_outputs_with_normalised_boxes(models):
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.05, 0.95]], np.float32)
    boxes = np.array([[0.1, 0.1, 0.5, 0.5], [0, 0, 1, 1], [0.12, 0.12, 0.52, 0.52]], np.float32)
    path = om.detector_ssd(models, scores, boxes)
    f = run(f"model {path} task=detect preset=ultraface iou=0.3", solid((0, 0, 0), 200, 100))
    assert f.meta["detect"]["count"] == 1
    x, y, w, h, s, c = f.meta["detect"]["boxes"][0]
    assert (x, y, w, h, s, c) == pytest.approx((24, 12, 80, 40, 0.95, 1), abs=0.06)


def test_detect_yolo_layout(models):
    # columns: (cx, cy, w, h, score class 0, score class 1)
    rows = np.array([[16, 16, 8, 8, 0.9, 0.1], [48, 48, 16, 8, 0.2, 0.6], [5, 5, 2, 2, 0.1, 0.1]], np.float32).T
    rows = np.concatenate([rows, np.zeros((6, 5), np.float32)], 1)  # 8 candidates, 6 rows
    path = om.detector_yolo(models, rows)
    f = run(f"model {path} task=detect", solid((0, 0, 0), 64, 64))
    assert f.meta["detect"]["boxes"] == [[12.0, 12.0, 8.0, 8.0, 0.9, 0], [40.0, 44.0, 16.0, 8.0, 0.6, 1]]


def test_nms_keeps_best_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], float)
    scores = np.array([0.5, 0.9, 0.4, 0.3])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.5, np.array([0, 0, 0, 1])).tolist() == [1, 2, 3]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


# --- segment -------------------------------------------------------------------------------------
def half_red(w: int = 100, h: int = 60) -> np.ndarray:
    img = np.full((h, w, 3), 40, np.uint8)
    img[:, : w // 2] = (0, 0, 255)
    return img


@pytest.mark.parametrize("nhwc", [False, True])
@pytest.mark.parametrize("size", [32, None])
def test_segment_mask_follows_the_red_half(models, nhwc, size):
    path = om.segmenter(models, size=size, nhwc_out=nhwc)
    f = run(f"model {path} task=segment output=mask", half_red())
    assert f.img.shape == (60, 100) and f.img.dtype == np.uint8
    assert (f.img[:, :45] == 255).all() and (f.img[:, 55:] == 0).all()
    assert f.meta["segment"]["coverage"] == pytest.approx(0.5, abs=0.03)
    assert f.meta["segment"]["classes"] == {"1": pytest.approx(0.5, abs=0.03)}


def test_segment_cutout_replace_and_blur(models):
    path = om.segmenter(models)
    img = half_red()
    f = run(f"model {path} task=segment output=cutout", img.copy())
    assert f.img.shape == (60, 100, 4) and f.out_format == "png"
    assert (f.img[:, :45, 3] == 255).all() and (f.img[:, 55:, 3] == 0).all()
    assert np.array_equal(f.img[:, :, :3], img)
    f = run(f"model {path} task=segment output=replace color=#00ff00", img.copy())
    assert (f.img[:, 55:] == (0, 255, 0)).all() and (f.img[:, :45] == (0, 0, 255)).all()
    f = run(f"model {path} task=segment output=blur", img.copy())
    assert f.img.shape == img.shape and (f.img[:, :45] == (0, 0, 255)).all()


def test_segment_target_names_from_labels(models):
    path = om.segmenter(models)
    labels = om.labels_file(models, ["background", "redness"], "seg.txt")
    f = run(f"model {path} task=segment labels={labels} target=background", half_red())
    assert (f.img[:, 55:] == 255).all() and (f.img[:, :45] == 0).all()
    assert f.meta["segment"]["classes"] == {"redness": pytest.approx(0.5, abs=0.03)}


# --- image2image ---------------------------------------------------------------------------------
def noise(w: int, h: int, seed: int = 0, c: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


@pytest.mark.parametrize("tile,size", [(0, None), (64, None), (48, 32)])
def test_image2image_invert_is_exact_with_and_without_tiles(models, tile, size):
    path = om.inverter(models, size)
    img = noise(150, 100)
    f = run(f"model {path} task=image2image tile={tile} overlap=8", img)
    assert f.img.shape == img.shape
    assert np.abs(f.img.astype(int) - (255 - img.astype(int))).max() <= 1
    assert f.meta["image2image"]["scale"] == 1.0
    if tile:
        assert f.meta["image2image"]["tiles"] > 1


def test_image2image_fixed_model_on_a_small_image_is_padded_and_cropped(models):
    path = om.inverter(models, 32)
    img = noise(20, 12)
    f = run(f"model {path} task=image2image", img)
    assert np.abs(f.img.astype(int) - (255 - img.astype(int))).max() <= 1


def test_image2image_x2_tiled_upscale_matches_nearest(models):
    path = om.upscaler(models, 3, 2)
    img = noise(130, 70)
    f = run(f"model {path} task=image2image tile=48 overlap=8", img)
    want = np.repeat(np.repeat(img, 2, 0), 2, 1)
    assert f.img.shape == (140, 260, 3)
    assert np.abs(f.img.astype(int) - want.astype(int)).max() <= 1
    assert f.meta["image2image"] == {"size": [260, 140], "scale": 2.0, "tiles": 8}


def test_image2image_luma_model_keeps_colour_and_alpha(models):
    path = om.upscaler(models, 1, 3)
    img = np.dstack([solid((30, 90, 200), 20, 10), np.full((10, 20), 128, np.uint8)])
    f = run(f"model {path} task=image2image preset=y", img)
    assert f.img.shape == (30, 60, 4)
    assert np.abs(f.img[:, :, :3].astype(int) - np.array([30, 90, 200])).max() <= 3
    assert (f.img[:, :, 3] == 128).all()


def test_image2image_gray_model_on_gray_image(models):
    path = om.upscaler(models, 1, 2)
    img = noise(30, 20, c=1)
    f = run(f"model {path} task=image2image", img)
    assert f.img.shape == (40, 60)
    assert np.array_equal(f.img, np.repeat(np.repeat(img, 2, 0), 2, 1))


def test_image2image_output_encodes(models):
    path = om.upscaler(models, 3, 2)
    f = run(f"model {path} task=image2image", noise(16, 16))
    data, fmt = imageio.encode(f)
    assert fmt == "png" and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (32, 32, 3)


# --- embed ---------------------------------------------------------------------------------------
def test_embed_is_the_unit_channel_mean(models):
    path = om.embedder(models)
    f = run(f"model {path} task=embed size=8x8", solid((30, 40, 0)))
    assert f.meta["embed"]["dim"] == 3
    assert f.meta["embed"]["vector"] == pytest.approx([0.6, 0.8, 0.0], abs=1e-6)
    f = run(f"model {path} task=embed size=8x8 normalize=false", solid((30, 40, 0)))
    assert f.meta["embed"]["vector"] == pytest.approx([30, 40, 0], abs=1e-4)


# --- bad input: exit 2 before any item -----------------------------------------------------------
def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("hello")
    with pytest.raises(ConfigError, match="not a usable ONNX model"):
        Pipeline.parse(f"model {bad} task=classify")
    with pytest.raises(ConfigError, match="not found"):
        Pipeline.parse(f"model {tmp_path / 'missing.onnx'} task=classify")


def test_rank_that_does_not_fit(models):
    path = om.flat_input(models)
    with pytest.raises(ConfigError, match=r"rank 2 .*needs an image tensor"):
        Pipeline.parse(f"model {path} task=classify")


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
def test_labels_as_index_comma_label_with_or_without_a_bom(tmp_path, bom):
    """A labels file saved by Notepad starts with a UTF-8 BOM: the first line is still `0,cat`."""
    path = tmp_path / "labels.txt"
    path.write_bytes(bom + b"0,cat\r\n1,golden retriever\r\n2,espresso\r\n\r\n")
    assert read_labels(str(path)) == ["cat", "golden retriever", "espresso"]


def test_labels_with_the_wrong_count(models):
    path = om.classifier(models)
    labels = om.labels_file(models, ["a", "b", "c"], "three.txt")
    with pytest.raises(ConfigError, match="has 3 labels but the model gives 4 scores"):
        Pipeline.parse(f"model {path} task=classify labels={labels}")


def test_unknown_provider(models, monkeypatch):
    path = om.classifier(models)
    monkeypatch.setenv("BATCHCLI_PROVIDERS", "cpu,quantum")
    with pytest.raises(ConfigError, match="unknown provider 'quantum'"):
        Pipeline.parse(f"model {path} task=classify")


@pytest.mark.parametrize("extra,msg", [
    ("size=100x100", "fixed at 8x8"),
    ("mean=1,2", "mean has 2 values"),
    ("std=0", "std must not be 0"),
    ("order=gray", "does not fit a 3-channel input"),
    ("route=true task=embed", "route=true needs task=classify"),
    ("threshold=high", "not a number"),
    ("target=cat", "give labels=FILE"),
    ("dtype=uint8", "dtype=uint8 but the model's input 'x' is float32"),
    ("mark=draw", "mark= is for task=detect, not task=classify"),
    ("output=cutout", "output= is for task=segment, not task=classify"),
    ("normalize=false", "normalize= is for task=embed, not task=classify"),
    ("task=embed threshold=2", "threshold= is for task=classify or task=detect or task=segment, not task=embed"),
])
def test_bad_parameters(models, extra, msg):
    path = om.classifier(models)
    task = "" if "task=" in extra else "task=classify"
    with pytest.raises(ConfigError, match=msg):
        Pipeline.parse(f"model {path} {task} {extra}")


def test_dynamic_size_classifier_needs_a_size(models):
    path = om.segmenter(models, size=None)
    with pytest.raises(ConfigError, match="needs size=WxH"):
        Pipeline.parse(f"model {path} task=classify")


# --- helpers -------------------------------------------------------------------------------------
def test_read_labels_formats(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("0,tench, Tinca tinca\n1,goldfish\n\n")
    assert read_labels(str(a)) == ["tench, Tinca tinca", "goldfish"]
    b = tmp_path / "b.txt"
    b.write_text("cat\ndog\n")
    assert read_labels(str(b)) == ["cat", "dog"]
    assert folder_name("golden retriever, ...") == "golden_retriever"
    assert folder_name("../..") == "unlabeled"


@pytest.mark.parametrize("fit", ["stretch", "letterbox", "crop"])
def test_fit_geometry_maps_corners(fit):
    img = np.zeros((50, 200, 3), np.uint8)
    out, g = fit_image(img, 64, 64, fit)
    assert out.shape == (64, 64, 3)
    assert isinstance(g, Geom)
    back = g.to_image(np.array([[g.ox, g.oy, g.ox + 200 * g.sx, g.oy + 50 * g.sy]]))
    assert back[0].tolist() == pytest.approx([0, 0, 200, 50])


def test_providers():
    assert "cpu" in onnx_session.available_providers()
    assert onnx_session.parse_providers("CUDA, cpu") == ["cuda", "cpu"]
    assert onnx_session.parse_providers("auto") == ["tensorrt", "cuda", "openvino", "cpu"]
    with pytest.raises(ConfigError):
        onnx_session.parse_providers("gpu")
    choice = onnx_session.choose_providers("cuda")
    assert choice.chosen[-1] == "cpu"
    if "cuda" not in onnx_session.available_providers():
        assert choice.missing == ("cuda",)
        line = onnx_session.describe_providers("cuda")
        assert "using cpu" in line and "cuda" in line and "onnxruntime-gpu" in line


def test_session_is_cached_per_process(models, monkeypatch):
    path = om.classifier(models)
    a = onnx_session.get_session(path)
    assert onnx_session.get_session(path) is a
    monkeypatch.setenv("BATCHCLI_THREADS", "2")
    b = onnx_session.get_session(path)
    assert b is not a
    assert onnx_session.thread_count() == 2
    monkeypatch.setenv("BATCHCLI_THREADS", "many")
    with pytest.raises(ConfigError):
        onnx_session.thread_count()


def test_a_model_file_replaced_in_place_is_inspected_anew(tmp_path):
    """inspect_model keeps its answer per file while the file is unchanged; a new file at the
    same path (a long-lived `serve` validating pipelines) is read again."""
    path = tmp_path / "m.onnx"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    os.replace(om.classifier(tmp_path / "a", size=8), path)
    assert onnx_session.inspect_model(str(path)).inputs[0].shape[-1] == 8
    assert onnx_session.inspect_model(str(path)).inputs[0].shape[-1] == 8
    os.replace(om.classifier(tmp_path / "b", size=16), path)
    assert onnx_session.inspect_model(str(path)).inputs[0].shape[-1] == 16
