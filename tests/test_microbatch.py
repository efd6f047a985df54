"""Micro-batching through the CLI: `model ... batch=N` runs up to N images per model call in
each worker, gives the same results as one at a time, and a bad image fails only itself."""

from __future__ import annotations

import cv2
import numpy as np
import onnx_models as om
import pytest
from conftest import cli, cli_json

from batchcli.models import embeddings as emb


def colours(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        img = np.zeros((20 + k, 30, 3), np.uint8)
        img[:] = (k * 9 % 256, 255 - k * 7 % 256, k * 13 % 256)
        cv2.imwrite(str(folder / f"c{k:02d}.png"), img)


def vectors(home, name):
    batch = cli_json("status", name, home=home)
    ids, m = emb.load(str(home / "batches" / batch["batch_id"]))
    return dict(zip(ids.tolist(), m.tolist()))


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_n_runs_images_together_with_the_same_results(tmp_path, home, workers):
    src = tmp_path / "in"
    colours(src, 19)
    model = om.batch_probe(tmp_path)
    for name, batch in (("one", 1), ("four", 4)):
        r = cli("start", str(src), "--name", name, "-w", str(workers),
                "--pipeline", f"model {model} task=embed size=8x8 normalize=false batch={batch}", home=home)
        assert r.returncode == 0, r.stderr
    one, four = vectors(home, "one"), vectors(home, "four")
    assert sorted(one) == sorted(four) == list(range(19))
    assert {v[3] for v in one.values()} == {1.0}
    sizes = [v[3] for v in four.values()]
    assert max(sizes) == 4.0 and all(1 <= s <= 4 for s in sizes)
    # 19 items in chunks of at least 4: most images ran in a full batch of 4
    assert sizes.count(4.0) >= 12
    for i in range(19):
        assert np.allclose(one[i][:3], four[i][:3], atol=1e-4)


def test_a_broken_image_in_a_batch_fails_alone(tmp_path, home):
    src = tmp_path / "in"
    colours(src, 7)
    (src / "c03.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    model = om.batch_probe(tmp_path)
    r = cli("start", str(src), "--name", "b", "-w", "1",
            "--pipeline", f"model {model} task=embed size=8x8 normalize=false batch=8", home=home)
    assert r.returncode == 1, r.stderr
    items = {it["src"].rsplit("/", 1)[-1]: it for it in cli_json("status", "b", "--items", home=home)["items"]}
    assert items["c03.png"]["status"] == "failed" and "c03.png" in items["c03.png"]["error"]
    assert [n for n, it in items.items() if it["status"] == "completed"] == \
        ["c00.png", "c01.png", "c02.png", "c04.png", "c05.png", "c06.png"]
    vecs = vectors(home, "b")
    assert {v[3] for v in vecs.values()} == {6.0}  # the six good images in one model call


def test_classify_with_batch_matches_one_at_a_time(tmp_path, home):
    src = tmp_path / "in"
    colours(src, 10)
    model = om.classifier(tmp_path)
    labels = om.labels_file(tmp_path, ["blue", "green", "red", "other"])
    metas = {}
    for name, batch in (("c1", 1), ("c5", 5)):
        r = cli("start", str(src), "--name", name, "-w", "2", "--pipeline",
                f"model {model} task=classify labels={labels} size=8x8 batch={batch} top=4", home=home)
        assert r.returncode == 0, r.stderr
        metas[name] = {it["i"]: it["meta"]["classify"] for it in cli_json("status", name, "--items", home=home)["items"]}
    assert metas["c1"] == metas["c5"] and len(metas["c1"]) == 10
