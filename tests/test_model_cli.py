"""End to end through the real CLI: a model pipeline over a folder, its metadata in the journal,
embeddings in the batch folder, `similar`, and exit 2 for a bad model before any item runs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx_models as om
from conftest import cli, cli_json


def solid_image(path, bgr):
    img = np.zeros((24, 32, 3), np.uint8)
    img[:] = bgr
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def test_embed_batch_then_similar(tmp_path, home):
    src = tmp_path / "in"
    colours = {"red1": (0, 0, 250), "red2": (0, 2, 248), "green": (0, 250, 0), "blue": (250, 0, 0)}
    for name, bgr in colours.items():
        solid_image(src / f"{name}.png", bgr)
    model = om.embedder(tmp_path)
    r = cli("start", str(src), "--name", "emb", "--workers", "2",
            "--pipeline", f"model {model} task=embed size=8x8", home=home)
    assert r.returncode == 0, r.stderr
    items = cli_json("status", "emb", "--items", home=home)["items"]
    assert all(it["status"] == "completed" for it in items)
    assert all(it["meta"]["embed"]["dim"] == 3 and "vector" not in it["meta"]["embed"] for it in items)
    groups = cli_json("similar", "emb", "--threshold", "0.99", home=home)["groups"]
    assert [sorted(x["src"].rsplit("/", 1)[-1] for x in g["items"]) for g in groups] == [["red1.png", "red2.png"]]


def test_classify_route_and_bad_model(tmp_path, home):
    src = tmp_path / "in"
    solid_image(src / "a.png", (0, 0, 250))
    solid_image(src / "b.png", (250, 0, 0))
    model = om.classifier(tmp_path)
    labels = om.labels_file(tmp_path, ["blue", "green", "red", "other"])
    out = tmp_path / "out"
    r = cli("start", str(src), "--out", str(out), "--pipeline",
            f"model {model} task=classify labels={labels} route=true size=8x8 softmax=no", home=home)
    assert r.returncode == 0, r.stderr
    assert (out / "red" / "a.png").exists() and (out / "blue" / "b.png").exists()
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    r = cli("start", str(src), "--out", str(tmp_path / "o2"), "--pipeline", f"model {bad} task=classify", home=home)
    assert r.returncode == 2 and "not a usable ONNX model" in r.stderr
    assert json.loads(cli("list", "--json", home=home).stdout)["total"] == 1  # no batch was created


def test_an_all_zero_embedding_fails_its_item_as_model(tmp_path, home):
    src = tmp_path / "in"
    solid_image(src / "a.png", (0, 0, 250))
    r = cli("start", str(src), "--name", "zero", "--pipeline", f"model {om.zero_embedder(tmp_path)} task=embed size=8x8",
            home=home)
    assert r.returncode == 1
    (item,) = cli_json("status", "zero", "--items", home=home)["items"]
    assert item["status"] == "failed"
    assert item["error_class"] == "model" and "a zero vector cannot be normalised" in item["error"]
