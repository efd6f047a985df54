"""Inputs end to end through the real CLI: stdin, globs, --ext, --exclude, --from-file,
--dedupe content, --name-template, and awkward file names."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from conftest import cli, cli_json, make_image


def items(home) -> dict[str, dict]:
    """status --items --json, keyed by source path."""
    r = cli("status", "--items", "--json", home=home)
    assert r.returncode == 0, r.stderr
    return {row["src"]: row for row in json.loads(r.stdout)["items"]}


def manifest(home) -> dict:
    bid = cli_json("status", home=home)["batch_id"]
    return json.loads((home / "batches" / bid / "manifest.json").read_text())


def outputs(out) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@pytest.fixture
def shots(tmp_path):
    root = tmp_path / "shots"
    for k, name in enumerate(["2024/a.jpg", "2024/b.png", "2025/a.jpg", "2025/raw/c.jpg", "top.jpg",
                              "2025/a_thumb.jpg"]):
        make_image(root / name, seed=k)
    (root / "notes.txt").write_text("not an image")
    return root


def test_find_piped_into_start_dash(shots, tmp_path, home):
    """The README's example: a list on stdin, relative to the current folder, mirrored."""
    cmd = (f"find shots -name '*.jpg' | {shlex.quote(sys.executable)} -m batchcli start - --out web/ -w 2")
    r = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert outputs(tmp_path / "web") == ["shots/2024/a.jpg", "shots/2025/a.jpg", "shots/2025/a_thumb.jpg",
                                         "shots/2025/raw/c.jpg", "shots/top.jpg"]
    assert cli_json("status", home=home)["completed"] == 5


def test_globs_ext_and_exclude(shots, tmp_path, home, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "o"
    r = cli("start", "shots/**/*.*", "--ext", "jpg,png", "--exclude", "raw", "--exclude", "*_thumb.jpg",
            "--out", str(out), home=home)
    assert r.returncode == 0, r.stderr
    assert outputs(out) == ["2024/a.jpg", "2024/b.png", "2025/a.jpg", "top.jpg"]
    m = manifest(home)
    assert m["discovery"]["excluded"] == 2 and m["input_options"]["exts"] == ["jpg", "png"]
    # a pattern that matches nothing, and filters that leave nothing: exit 2 with the reason
    r = cli("start", "shots/*.gif", "--out", str(out), home=home)
    assert r.returncode == 2 and r.stderr.strip() == "Error: shots/*.gif: no file matches this pattern"
    r = cli("start", "shots", "--exclude", "*.jpg", "--ext", "jpg", "--out", str(out), home=home)
    assert r.returncode == 2
    assert "no input images found in shots (extensions: jpg; left out: 5 excluded)" in r.stderr


def test_from_file_with_comments_relative_paths_and_a_missing_file(shots, tmp_path, home):
    listing = shots / "2025" / "todo.txt"
    listing.write_text("# redo these\n\nraw/c.jpg\n  # not this one: ../2024/b.png\n"
                       "../top.jpg\nmissing.jpg\nraw/c.jpg\n")
    out = tmp_path / "o"
    r = cli("start", "--from-file", str(listing), "--out", str(out), home=home)
    assert r.returncode == 1, r.stderr  # one item failed
    rows = items(home)
    assert [(p.removeprefix(str(shots) + "/"), row["status"]) for p, row in rows.items()] == [
        ("2025/raw/c.jpg", "completed"), ("top.jpg", "completed"), ("2025/missing.jpg", "failed")]
    bad = rows[str(shots / "2025" / "missing.jpg")]
    assert bad["error_class"] == "unreadable" and "no such file" in bad["error"]
    # below the list's folder a path mirrors itself; outside it, its absolute path does
    assert outputs(out) == ["raw/c.jpg", str(shots / "top.jpg").lstrip("/")]
    assert manifest(home)["discovery"]["duplicates"] == 1


def test_dedupe_content_is_reported(shots, tmp_path, home):
    (shots / "copies").mkdir()
    (shots / "copies" / "same as a.jpg").write_bytes((shots / "2024" / "a.jpg").read_bytes())
    out = tmp_path / "o"
    r = cli("start", str(shots), str(shots / "2024" / "b.png"), "--dedupe", "content", "--out", str(out), home=home)
    assert r.returncode == 0, r.stderr
    m = manifest(home)
    assert m["total"] == 6 and m["dedupe_skipped"] == 1 and m["discovery"]["duplicates"] == 1
    assert "shots/copies/same as a.jpg" not in outputs(out)
    r = cli("start", str(shots), "--dedupe", "similar-ish", "--out", str(out), home=home)
    assert r.returncode == 2 and "--dedupe similar-ish: expected 'content'" in r.stderr


def test_name_template_fields_collisions_and_mirroring(tmp_path, home):
    src = tmp_path / "in"
    for k, name in enumerate(["a.jpg", "a.png", "sub/a.jpg", "sub/b c.jpg"]):
        make_image(src / name, seed=k)
    out = tmp_path / "o"
    r = cli("start", str(src), "--out", str(out), "--name", "summer", "-p", "preset warm blend=50 | convert webp",
            "--name-template", "{stem}_{preset}.{ext}", home=home)
    assert r.returncode == 0, r.stderr
    assert outputs(out) == ["a_warm.webp", "a_warm_2.webp", "sub/a_warm.webp", "sub/b_c_warm.webp"]
    out2 = tmp_path / "o2"
    r = cli("start", str(src), "--out", str(out2), "--name", "summer",
            "--name-template", "{name}/{parent}-{i:03d}.{ext}", home=home)
    assert r.returncode == 0, r.stderr
    assert outputs(out2) == ["summer/in-000.jpg", "summer/in-001.png", "summer/sub-002.jpg", "summer/sub-003.jpg"]


def test_bad_name_template_exits_2_before_any_work(tmp_path, home):
    """(Every template error is covered in test_discover; here, the path to exit code 2.)"""
    make_image(tmp_path / "in" / "a.jpg")
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--name-template", "{stem}-{ext}", home=home)
    assert r.returncode == 2
    assert r.stderr.strip() == "Error: --name-template '{stem}-{ext}': write the extension as '.{ext}' at the end"
    assert not (tmp_path / "o").exists() and not list(home.glob("batches/*"))


def test_awkward_names_work_on_their_own_items(tmp_path, home, monkeypatch):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "in"
    names = ["my photo.jpg", "café ☕.png", "new\nline.jpg", "[brackets].jpg"]
    for k, name in enumerate(names):
        make_image(src / name, seed=k)
    (src / "folder.jpg").mkdir()  # a folder named like an image is walked, not an item
    out = tmp_path / "o"
    stdin = "\n".join([str(src / "my photo.jpg"), str(src / "café ☕.png"), str(src / "[brackets].jpg")]) + "\n"
    r = cli("start", "-", str(src / "new\nline.jpg"), "--out", str(out), input=stdin, home=home)
    assert r.returncode == 0, r.stderr
    assert all(row["status"] == "completed" for row in items(home).values())
    # listed paths mirror their place below the current folder; a named file keeps its name
    assert outputs(out) == ["in/[brackets].jpg", "in/café ☕.png", "in/my photo.jpg", "new_line.jpg"]
    r = cli("start", "-", "--from-file", "-", "--out", str(out), input="", home=home)
    assert r.returncode == 2 and "stdin can be read only once" in r.stderr
