"""A classifier or embedder at a fixed input size decodes big JPEGs reduced when the image is
not saved: same answer, fewer pixels; a saved image keeps its full size."""

from __future__ import annotations

import cv2
import numpy as np
import onnx_models as om
from conftest import cli, cli_json

from batchcli.pipeline import Pipeline


def big_jpeg(path, w=1600, h=1200):
    y, x = np.mgrid[0:h, 0:w]
    img = np.dstack([(x * 255 // w), (y * 255 // h), np.full_like(x, 90)]).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])


def test_reduction_allowed_only_for_a_last_reading_op(tmp_path):
    model = om.classifier(tmp_path, size=224)
    cls = Pipeline.parse(f"model {model} task=classify")
    cls.prepare()
    assert cls.shrink_when_unsaved(1600, 1200) == 4  # 400x300 still covers 224x224
    assert cls.shrink_when_unsaved(300, 300) == 1
    assert cls.shrink_for(1600, 1200) == 1  # when the image is saved: never
    later = Pipeline.parse(f"model {model} task=classify | analyze")
    later.prepare()
    assert later.shrink_when_unsaved(1600, 1200) == 1  # analyze would see the smaller image
    seg = Pipeline.parse(f"model {om.segmenter(tmp_path)} task=segment")
    seg.prepare()
    assert seg.shrink_when_unsaved(1600, 1200) == 1


def test_classify_reduced_gives_the_same_answer_and_saved_images_stay_full(tmp_path, home):
    src = tmp_path / "in"
    big_jpeg(src / "big.jpg")
    model = om.classifier(tmp_path, size=64)
    labels = om.labels_file(tmp_path, ["blue", "green", "red", "other"])
    pipe = f"model {model} task=classify labels={labels} softmax=no top=4"
    assert cli("start", str(src), "--name", "meta", "-p", pipe, home=home).returncode == 0
    out = tmp_path / "out"
    r = cli("start", str(src), "--name", "saved", "--out", str(out), "-p", pipe + " | convert png", home=home)
    assert r.returncode == 0, r.stderr
    reduced = cli_json("status", "meta", "--items", home=home)["items"][0]["meta"]["classify"]["top"]
    full = cli_json("status", "saved", "--items", home=home)["items"][0]["meta"]["classify"]["top"]
    assert [t["label"] for t in reduced] == [t["label"] for t in full]
    for a, b in zip(reduced, full):
        assert abs(a["score"] - b["score"]) < 0.02 * max(1.0, abs(b["score"]))
    assert cv2.imread(str(out / "big.png")).shape[:2] == (1200, 1600)
