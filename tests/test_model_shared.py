"""The real models in ../shared/models on the real photos in ../shared/images/real.
Skipped cleanly when ../shared is absent. Preprocessing follows ../shared/models/README.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import cli
from onnx_models import IMAGES, MODELS, have_shared

from batchcli.errors import ConfigError
from batchcli.imaging import imageio
from batchcli.pipeline import Pipeline

pytestmark = pytest.mark.shared


def need(*names: str) -> None:
    if not have_shared(*names):
        pytest.skip("../shared models or images not available")


def run(spec: str, image: str):
    p = Pipeline.parse(spec)
    p.prepare()
    return p.run(imageio.load(str(IMAGES / image)))


@pytest.mark.parametrize("image,expect", [("dog.jpg", "retriever"), ("coffee.png", "espresso")])
def test_squeezenet_defaults_reproduce_its_preprocessing(image, expect):
    """Defaults = preset raw: BGR, 0..255, plain resize to the fixed 224x224, float16 from the model."""
    need("squeezenet1.0_fp16.onnx", "imagenet_labels.txt")
    f = run(f"model {MODELS / 'squeezenet1.0_fp16.onnx'} task=classify labels={MODELS / 'imagenet_labels.txt'}", image)
    top = f.meta["classify"]["top"]
    assert expect in top[0]["label"] and top[0]["score"] > 0.9
    assert len(top) == 5


def test_squeezenet_route_folder():
    need("squeezenet1.0_fp16.onnx", "imagenet_labels.txt")
    f = run(f"model {MODELS / 'squeezenet1.0_fp16.onnx'} task=classify route=true "
            f"labels={MODELS / 'imagenet_labels.txt'}", "dog.jpg")
    assert f.route == "golden_retriever"


@pytest.mark.parametrize("image,count", [("group_4faces.jpg", 4), ("coffee.png", 0)])
def test_yunet_faces(image, count):
    need("face_detection_yunet_2023mar.onnx")
    f = run(f"faces blur model={MODELS / 'face_detection_yunet_2023mar.onnx'}", image)
    assert f.meta["faces"]["count"] == count
    assert all(b[4] >= 0.6 for b in f.meta["faces"]["boxes"])


def test_ultraface_through_the_generic_detector():
    need("ultraface_version-RFB-320.onnx")
    spec = f"model {MODELS / 'ultraface_version-RFB-320.onnx'} task=detect preset=ultraface threshold=0.7 iou=0.3"
    assert run(spec, "group_4faces.jpg").meta["detect"]["count"] == 4
    assert run(spec, "coffee.png").meta["detect"]["count"] == 0
    x, y, w, h, score, _ = run(spec, "astronaut.png").meta["detect"]["boxes"][0]
    assert (x, y, w, h) == pytest.approx((179, 63, 90, 111), abs=6) and score > 0.9


def test_deeplab_person_mask_on_astronaut():
    need("deeplabv3_mnv2_pascal_257.onnx")
    f = run(f"model {MODELS / 'deeplabv3_mnv2_pascal_257.onnx'} task=segment preset=tf target=15 output=cutout",
            "astronaut.png")
    assert f.img.shape == (512, 512, 4)
    assert 0.35 < f.meta["segment"]["coverage"] < 0.55
    alpha = f.img[:, :, 3]
    assert alpha[300, 200] == 255  # the suit
    assert alpha[20, 480] == 0  # the top-right background
    assert f.out_format == "png"


def test_super_resolution_triples_the_size():
    need("super_resolution_x3_core.onnx")
    f = run(f"model {MODELS / 'super_resolution_x3_core.onnx'} task=image2image preset=y tile=256", "hopper.jpg")
    assert f.img.shape == (384, 384, 3)
    assert f.meta["image2image"]["scale"] == 3.0
    src = imageio.load(str(IMAGES / "hopper.jpg")).img
    small = src[::3, ::3].astype(float).mean()
    assert abs(f.img.astype(float).mean() - small) < 8  # same picture, not noise


def test_style_transfer_whole_image():
    need("fns_mosaic.onnx")
    f = run(f"model {MODELS / 'fns_mosaic.onnx'} task=image2image tile=0", "hopper.jpg")
    src = imageio.load(str(IMAGES / "hopper.jpg")).img
    assert f.img.shape == src.shape
    assert np.abs(f.img.astype(int) - src.astype(int)).mean() > 20  # restyled


M = "model " + str(MODELS) + "/"


@pytest.mark.parametrize("model,spec,reason", [
    ("face_detection_yunet_2023mar.onnx", "task=detect",
     r"cannot tell how to decode detector output cls_8\[1, 6400, 1\], .*; set decoder=boxes\|ssd\|yolo"),
    ("face_detection_yunet_2023mar.onnx", "task=detect decoder=ssd", "decoder=ssd needs two outputs.* the model has 12"),
    ("face_detection_yunet_2023mar.onnx", "task=classify", "has 12 outputs .*task=classify reads a single output"),
    ("squeezenet1.0_fp16.onnx", "task=segment", r"\[1, 1000, 1, 1\] is not a spatial map"),
    ("squeezenet1.0_fp16.onnx", "task=image2image", "output 1x1000 is not a uniform scale of 224x224"),
    ("ultraface_version-RFB-320.onnx", "task=detect preset=ultraface decoder=yolo", r"\[1, 4420, 2\] is not \[1,4\+C,N\]"),
    ("deeplabv3_mnv2_pascal_257.onnx", "task=segment preset=tf target=99",
     r"segment target \[99\] does not split the model's 21 classes"),
    ("fns_mosaic.onnx", "task=classify", r"\[None, 3, 720, 720\] is not one score vector"),
])
def test_a_model_that_does_not_suit_the_task_stops_before_any_item(model, spec, reason):
    need(model)
    with pytest.raises(ConfigError, match=reason) as err:
        Pipeline.parse(f"{M}{model} {spec}")
    assert "Error" not in str(err.value)


def test_yunet_detect_exits_2_and_starts_nothing(tmp_path, home):
    need("face_detection_yunet_2023mar.onnx")
    r = cli("start", str(IMAGES / "astronaut.png"), "--name", "yd", "--pipeline",
            f"{M}face_detection_yunet_2023mar.onnx task=detect", home=home)
    assert r.returncode == 2
    assert "cannot tell how to decode detector output" in r.stderr and "Traceback" not in r.stderr
    assert json.loads(cli("list", "--json", home=home).stdout)["total"] == 0
