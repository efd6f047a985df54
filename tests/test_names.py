"""Names across the tool: routed outputs unique like primary ones; ZIP and folder entries safe
after NFKC normalisation; manifest cells that cannot run as spreadsheet formulas."""

from __future__ import annotations

import csv
import os
import zipfile

import cv2
import numpy as np
import onnx_models as om
from crashops import make_pngs, run

RUN = ("--min-free-space", "0", "-w", "1")


def _solid(path, bgr):
    img = np.zeros((24, 32, 3), np.uint8)
    img[:] = bgr
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def test_two_routed_outputs_with_one_file_name_both_survive(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    _solid(src / "a" / "x.png", (0, 0, 250))
    _solid(src / "b" / "x.png", (0, 0, 240))  # both red, both named x.png
    model = om.classifier(tmp_path)
    labels = om.labels_file(tmp_path, ["blue", "green", "red", "other"])
    r = run(home, "start", src, "--out", out, "--name", "R", *RUN, "--pipeline",
            f"model {model} task=classify labels={labels} route=true size=8x8 softmax=no")
    assert r.returncode == 0, r.stderr
    for sub in ("a", "b"):
        assert (out / "red" / sub / "x.png").read_bytes() == (out / sub / "x.png").read_bytes()
    assert (out / "red" / "a" / "x.png").read_bytes() != (out / "red" / "b" / "x.png").read_bytes()
    assert "all match the journal" in run(home, "verify", "R").stdout
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--json")
    assert '"outputs_removed": 4' in r.stdout and os.listdir(out) == []


def test_entry_names_are_safe_after_nfkc_normalisation(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 2)
    os.rename(src / "img001.png", src / "．．／evil.png")  # fullwidth: NFKC makes it ../evil.png
    r = run(home, "start", src, "--out", out, "--name", "N", "--pipeline", "convert png", *RUN)
    assert r.returncode == 0, r.stderr
    assert (out / "．．／evil.png").is_file()  # on disk the name is kept as it is
    assert run(home, "export", "N", "--zip", tmp_path / "n.zip", "--to", tmp_path / "dest").returncode == 0
    names = zipfile.ZipFile(tmp_path / "n.zip").namelist()
    assert sorted(names) == ["evil.png", "img000.png", "manifest.csv", "manifest.jsonl"]
    assert sorted(os.listdir(tmp_path / "dest")) == sorted(names)
    assert sorted(os.listdir(tmp_path)) == ["dest", "home", "in", "n.zip", "out"]  # nothing landed beside


def test_manifest_cells_cannot_run_as_formulas(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    risky = ["=HYPERLINK(1)", "+1+2", "-3", "@SUM(1)", "\tx", "\ry"]
    make_pngs(src, len(risky))
    for k, name in enumerate(risky):
        os.rename(src / f"img{k:03d}.png", src / f"{name}.png")
    r = run(home, "start", src, "--out", out, "--name", "C", "--pipeline", "convert png", *RUN)
    assert r.returncode == 0, r.stderr
    assert run(home, "export", "C", "--manifest", tmp_path / "m.csv").returncode == 0
    with open(tmp_path / "m.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(row["rel"] for row in rows) == sorted(f"'{name}.png" for name in risky)
    for row in rows:
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in row.values()), row
