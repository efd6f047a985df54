"""The `faces` op: YuNet through cv2.FaceDetectorYN, the Haar fallback, and the actions."""

from __future__ import annotations

import pickle

import numpy as np
import onnx_models as om
import pytest

from batchcli.errors import ConfigError
from batchcli.imaging import imageio
from batchcli.models.faces import haar_cascade_path
from batchcli.pipeline import Pipeline

YUNET = om.MODELS / "face_detection_yunet_2023mar.onnx"


def yunet() -> str:
    if not om.have_shared("face_detection_yunet_2023mar.onnx"):
        pytest.skip("../shared YuNet model not available")
    return str(YUNET)


def load(name: str):
    return imageio.load(str(om.IMAGES / name))


def test_without_a_model_uses_haar_or_says_clearly_why_not():
    if haar_cascade_path() is None:
        with pytest.raises(ConfigError, match="ships no Haar cascade; pass model=PATH"):
            Pipeline.parse("faces blur")
    else:
        p = Pipeline.parse("faces count")
        p.prepare()
        f = p.run(imageio.Frame(img=np.zeros((64, 64, 3), np.uint8), src="x", fmt="png"))
        assert f.meta["faces"] == {"count": 0, "boxes": [], "detector": "haar"}


def test_a_model_that_is_not_yunet(tmp_path):
    path = om.classifier(tmp_path)
    with pytest.raises(ConfigError, match="not a YuNet face detector"):
        Pipeline.parse(f"faces blur model={path}")
    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ConfigError, match="not a usable ONNX model"):
        Pipeline.parse(f"faces blur model={bad}")


def test_count_writes_no_image_and_others_do():
    model = yunet()
    assert not Pipeline.parse(f"faces count model={model}").writes_image
    assert Pipeline.parse(f"faces pixelate model={model}").writes_image


@pytest.mark.parametrize("action", ["blur", "pixelate", "draw"])
def test_actions_change_only_the_faces(action):
    p = Pipeline.parse(f"faces {action} model={yunet()}")
    p.prepare()
    src = load("group_4faces.jpg")
    before = src.img.copy()
    f = p.run(src)
    boxes = f.meta["faces"]["boxes"]
    assert len(boxes) == 4
    x, y, w, h = (int(v) for v in boxes[0][:4])
    inner = 0 if action == "draw" else 5  # draw changes the outline only
    region = (slice(y + inner, y + h - inner), slice(x + inner, x + w - inner))
    assert np.abs(f.img[region].astype(int) - before[region]).mean() > 1
    assert np.array_equal(f.img[:40, :40], before[:40, :40])


def test_crop_takes_the_largest_face_with_margin():
    p = Pipeline.parse(f"faces crop margin=0.1 model={yunet()}")
    p.prepare()
    f = p.run(load("astronaut.png"))
    x, y, w, h, _ = f.meta["faces"]["boxes"][0]
    assert f.img.shape[0] == pytest.approx(h * 1.2, abs=3) and f.img.shape[1] == pytest.approx(w * 1.2, abs=3)


def test_crop_of_an_image_without_a_face_keeps_it_whole():
    p = Pipeline.parse(f"faces crop margin=0.1 model={yunet()}")
    p.prepare()
    src = load("coffee.png")
    before = src.img.copy()
    f = p.run(src)
    assert f.meta["faces"]["count"] == 0 and np.array_equal(f.img, before)


def test_detection_on_a_reduced_copy_maps_boxes_back():
    full = Pipeline.parse(f"faces count model={yunet()} max_side=0")
    small = Pipeline.parse(f"faces count model={yunet()} max_side=512")
    full.prepare()
    small.prepare()
    a = full.run(load("group_4faces.jpg")).meta["faces"]["boxes"]
    b = small.run(load("group_4faces.jpg")).meta["faces"]["boxes"]
    assert len(a) == len(b) == 4
    for ba, bb in zip(sorted(a), sorted(b)):
        assert ba[:4] == pytest.approx(bb[:4], rel=0.1, abs=4)


def test_gray_and_rgba_inputs_and_pickling():
    op = Pipeline.parse(f"faces count model={yunet()}").ops[0]
    op.prepare()
    clone = pickle.loads(pickle.dumps(op))
    assert clone.apply(load("camera.png")).meta["faces"]["count"] == 1
    assert clone.apply(load("gorilla_rgba.png")).meta["faces"]["count"] >= 0
