"""End to end through the real CLI: start, status, list, outputs on disk, exit codes."""

from __future__ import annotations

import json
import re

import cv2
import pytest
from conftest import cli, cli_json, make_image, make_tree

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    make_tree(root, n=14, size=(300, 200))
    make_image(root / "odd names" / "with space é.jpg", 200, 300, seed=99)
    make_image(root / "big.jpg", 2400, 1600, seed=5)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (root / "notes.txt").write_text("not an image extension: never picked up")
    return root


def test_start_then_status_and_list(photos, tmp_path, home):
    out = tmp_path / "web"
    r = cli("start", str(photos), "--out", str(out), "--name", "trip", "-w", "2",
            "--pipeline", "orient | resize 128x128 | convert webp quality=80", home=home)
    assert r.returncode == 1, r.stderr  # finished, with one failed item
    assert "completed 16, failed 1" in r.stdout
    assert "broken.jpg" in r.stderr  # the one-line reason names the file

    s = cli_json("status", home=home)  # no BATCH: the latest
    assert s["name"] == "trip" and s["status"] == "completed"
    assert (s["total"], s["completed"], s["failed"], s["remaining"]) == (17, 16, 1, 0)
    assert s["progress_percent"] == 100.0
    assert s["out_dir"] == str(out)
    assert s["runner_pid"] is None
    assert s["paused_at"] is None
    for key in ("created_at", "started_at", "completed_at"):
        assert ISO.match(s[key]), (key, s[key])
    assert s["pipeline"].startswith("orient | resize 128x128")
    assert s["top_failures"][0]["count"] == 1

    same = cli_json("status", "trip", home=home)  # by name
    assert same["batch_id"] == s["batch_id"]
    assert cli_json("status", s["batch_id"][:17], home=home)["batch_id"] == s["batch_id"]  # by prefix

    listing = cli_json("list", "--status", "completed", "--limit", "10", home=home)
    assert listing["total"] == 1 and listing["batches"][0]["batch_id"] == s["batch_id"]
    assert cli_json("list", "--status", "paused", home=home) == {"batches": [], "total": 0}

    items = cli_json("status", "--items", home=home)
    assert items["total"] == 17
    outputs = [row for row in items["items"] if row["status"] == "completed"]
    assert len(outputs) == 16
    for row in outputs:
        assert row["output"].endswith(".webp") and row["error"] is None
        img = cv2.imread(row["output"])
        assert img is not None, row["output"]
        assert max(img.shape[:2]) == 128  # fit inside 128x128, aspect kept
    failed = cli_json("status", "--items", "--failed", home=home)
    assert failed["total"] == 1
    row = failed["items"][0]
    assert row["src"].endswith("broken.jpg") and row["error_class"] in ("decode", "truncated")
    assert "\n" not in row["error"] and row["error"].startswith(row["src"])

    # nesting is mirrored, the input is untouched, nothing but outputs in the output folder
    assert (out / "odd names" / "with space é.webp").is_file()
    assert len(list(out.rglob("*.webp"))) == 16
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix != ".webp"]


def test_aspect_and_no_upscale(tmp_path, home):
    src = tmp_path / "in"
    make_image(src / "wide.png", 400, 100)
    make_image(src / "tiny.png", 30, 20)
    out = tmp_path / "out"
    r = cli("start", str(src), "--out", str(out), "-p", "resize 200x200", home=home)
    assert r.returncode == 0, r.stderr
    assert cv2.imread(str(out / "wide.png")).shape[:2] == (50, 200)
    assert cv2.imread(str(out / "tiny.png")).shape[:2] == (20, 30)  # not enlarged
    r = cli("start", str(src / "tiny.png"), "--out", str(tmp_path / "up"), "-p", "resize 60x60 upscale=true",
            home=home)
    assert r.returncode == 0 and cv2.imread(str(tmp_path / "up" / "tiny.png")).shape[:2] == (40, 60)


def test_same_file_twice_and_output_inside_input(tmp_path, home):
    src = tmp_path / "in"
    make_image(src / "a.jpg")
    make_image(src / "sub" / "b.jpg")
    out = src / "web"  # the output folder lives inside the input folder
    for _ in range(2):  # a second run must not ingest the first run's outputs
        r = cli("start", str(src), str(src / "a.jpg"), str(src / "sub"), "--out", str(out), home=home)
        assert r.returncode == 0, r.stderr
        assert cli_json("status", home=home)["total"] == 2


@pytest.mark.parametrize("pipeline, message", [
    ("resize 100x100 | bogus", "unknown operation 'bogus'"),
    ("resize 100", None),
    ("resize abc", "resize: size"),
    ("convert gif", "convert: format"),
    ("convert webp quality=500", "quality: 500 is above the maximum"),
    ("resize 10x10 colour=red", "unknown parameter 'colour'"),
])
def test_bad_pipeline_exits_2_before_any_work(tmp_path, home, pipeline, message):
    src = tmp_path / "in"
    make_image(src / "a.jpg")
    out = tmp_path / "out"
    r = cli("start", str(src), "--out", str(out), "-p", pipeline, home=home)
    if message is None:  # "resize 100" is a valid square box
        assert r.returncode == 0
        return
    assert r.returncode == 2
    assert message in r.stderr and r.stderr.startswith("Error: ")
    assert len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert cli("list", "--json", home=home).stdout.strip() in ("", '{"batches": [], "total": 0}')


def test_usage_errors(tmp_path, home):
    r = cli("start", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), home=home)
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("start", str(empty), "--out", str(tmp_path / "o"), home=home)
    assert r.returncode == 2 and "no input images found" in r.stderr
    r = cli("status", "nope", home=home)
    assert r.returncode == 2 and "no batches" in r.stderr
    r = cli("start", str(empty), "--workers", "0", home=home)
    assert r.returncode == 2


def test_json_events_are_ndjson(tmp_path, home):
    src = tmp_path / "in"
    make_tree(src, n=6)
    r = cli("start", str(src), "--out", str(tmp_path / "o"), "-p", "resize 32x32", "--json", home=home)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["type"] for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished"
    assert events[-1]["completed"] == 6 and events[-1]["exit_code"] == 0
    assert set(kinds) <= {"started", "progress", "item_failed", "paused", "finished"}


def test_journal_records_output_size_and_hash(tmp_path, home):
    import hashlib

    src = tmp_path / "in"
    make_tree(src, n=5)
    out = tmp_path / "o"
    assert cli("start", str(src), "--out", str(out), "-p", "convert png", home=home).returncode == 0
    bid = cli_json("status", home=home)["batch_id"]
    journal = home / "batches" / bid / "journal.jsonl"
    recs = [json.loads(x) for x in journal.read_text().splitlines()]
    assert recs[0]["type"] == "header" and recs[0]["fingerprint"] and recs[0]["version"]
    done = [r for r in recs if r["type"] == "item_completed"]
    assert len(done) == 5
    for r in done:
        data = (out / r["out"]).read_bytes()
        assert len(data) == r["bytes"] and hashlib.sha256(data).hexdigest() == r["sha256"]
