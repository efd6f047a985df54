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


def _cli_bytes(home, *args, stdin=None, cwd=None):
    """The CLI with raw bytes in and out (a name that is not UTF-8 is printed as its bytes)."""
    import subprocess
    import sys

    from crashops import cli_env

    return subprocess.run([sys.executable, "-m", "batchcli", *map(os.fsdecode, args)], env=cli_env(home),
                          capture_output=True, input=stdin, timeout=120, cwd=cwd)


def test_a_file_name_that_is_not_utf8_works_end_to_end(tmp_path):
    import json
    import subprocess

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 3)
    raw = os.fsencode(src) + b"/caf\xe9.png"  # Latin-1 e-acute: not UTF-8
    os.rename(src / "img001.png", raw)
    bad = os.fsencode(src) + b"/bro\xffken.png"
    with open(bad, "wb") as fh:
        fh.write(b"not an image")
    r = _cli_bytes(home, "start", src, "--out", out, "--name", "U", "--pipeline", "convert png", *RUN)
    assert r.returncode == 1, r.stderr  # the broken file fails its own item, nothing else does
    assert b"bro\xffken.png: not an image" in r.stderr + r.stdout and b"Traceback" not in r.stderr + r.stdout
    assert open(os.fsencode(out) + b"/caf\xe9.png", "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"  # the same bytes
    items = json.loads(_cli_bytes(home, "status", "U", "--items", "--json").stdout)["items"]
    by_src = {it["src"]: it for it in items}
    assert by_src[os.fsdecode(raw)]["status"] == "completed"
    assert by_src[os.fsdecode(raw)]["output"] == os.fsdecode(os.fsencode(out) + b"/caf\xe9.png")
    assert by_src[os.fsdecode(bad)]["error_class"] == "decode"
    journal = [json.loads(line) for line in open(next((home / "batches").iterdir()) / "journal.jsonl", "rb")]
    assert os.fsdecode(b"caf\xe9.png") in [rec.get("out") for rec in journal]  # lossless, and valid JSON
    if subprocess.run(["which", "jq"], capture_output=True).returncode == 0:
        jq = subprocess.run(["jq", "-c", "select(.type==\"item_completed\") | .out"],
                            stdin=open(next((home / "batches").iterdir()) / "journal.jsonl", "rb"), capture_output=True)
        assert jq.returncode == 0 and "caf\ufffd.png" in jq.stdout.decode()
    assert b"all match the journal" in _cli_bytes(home, "verify", "U").stdout
    _exports_keep_the_bytes(home, tmp_path)
    listed = _cli_bytes(home, "start", "-", "--out", tmp_path / "o2", "--pipeline", "convert png", *RUN,
                        stdin=b"caf\xe9.png\n", cwd=src)  # a list on stdin, relative to the folder
    assert listed.returncode == 0, listed.stderr
    assert os.path.exists(os.fsencode(tmp_path / "o2") + b"/caf\xe9.png")
    r = _cli_bytes(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--status", "completed,failed")
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(os.fsencode(out) + b"/caf\xe9.png")


def _exports_keep_the_bytes(home, tmp_path):
    """export --to, --zip and --manifest of batch U name its output caf\xe9.png by those bytes."""
    import json
    import shutil
    import subprocess

    name, png = b"caf\xe9.png", b"\x89PNG\r\n\x1a\n"
    r = _cli_bytes(home, "export", "U", "--to", tmp_path / "to")
    assert r.returncode == 0, r.stderr
    assert open(os.fsencode(tmp_path / "to") + b"/" + name, "rb").read()[:8] == png
    assert not [n for n in os.listdir(tmp_path / "to") if "\ufffd" in n]
    csv_rows = (tmp_path / "to" / "manifest.csv").read_bytes().split(b"\r\n")
    assert any(row.startswith(b"1,") and b"," + name + b",completed," + name + b"," in row for row in csv_rows)
    rows = [json.loads(line) for line in (tmp_path / "to" / "manifest.jsonl").read_bytes().splitlines()]
    assert os.fsdecode(name) in [row["output"] for row in rows]  # \udce9: jq shows U+FFFD, Python gets the byte
    r = _cli_bytes(home, "export", "U", "--manifest", tmp_path / "m.csv")
    assert r.returncode == 0 and b"," + name + b",completed," + name + b"," in (tmp_path / "m.csv").read_bytes()
    r = _cli_bytes(home, "export", "U", "--zip", tmp_path / "u.zip")
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "u.zip") as zf:  # raw bytes, no UTF-8 flag (bit 11): as Info-ZIP's zip writes it
        info = {i.filename.encode("cp437"): i for i in zf.infolist()}
        assert info[name].flag_bits & 0x800 == 0 and zf.read(info[name])[:8] == png
    if shutil.which("unzip"):
        (tmp_path / "uz").mkdir()
        assert subprocess.run(["unzip", "-q", tmp_path / "u.zip"], cwd=tmp_path / "uz").returncode == 0
        assert open(os.fsencode(tmp_path / "uz") + b"/" + name, "rb").read()[:8] == png


def test_zip_entry_names_utf8_flagged_and_raw_bytes_kept():
    from batchcli.results.names import UniqueNames, sanitize_name
    from batchcli.results.zipstream import entry_name

    assert entry_name("a.png") == (b"a.png", 0)
    assert entry_name("caf\u00e9.png") == ("caf\u00e9.png".encode(), 0x800)
    raw = os.fsdecode(b"caf\xe9/\xff\xfe.png")
    assert entry_name(sanitize_name(raw)) == (b"caf\xe9/\xff\xfe.png", 0)
    long = sanitize_name(os.fsdecode(b"\xe9" * 300 + b".png"))  # capped by bytes, each one byte
    assert os.fsencode(long) == b"\xe9" * 236 + b".png"
    mixed = sanitize_name("x" + "\u00e9" * 119 + os.fsdecode(b"\xe9") + ".png")  # no UTF-8 sequence cut in two
    assert os.fsencode(mixed) == b"x" + "\u00e9".encode() * 117 + b".png"
    u = UniqueNames()
    assert [u.take(n) for n in (raw, raw)] == [raw, os.fsdecode(b"caf\xe9/\xff\xfe_2.png")]
