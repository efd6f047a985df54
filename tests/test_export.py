"""export: ZIP round trips through the real CLI, determinism, hostile names, ZIP64, folders,
manifests, missing outputs, and an export taken while a runner writes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, cli, make_image

PIPE = "resize 40x40 | convert webp quality=80"
HOSTILE = ["a b.jpg", "ünïcødé 写真.jpg", "new\nline.jpg", "-dash.jpg", "..dots.png", "tab\tname.png",
           "UPPER.jpg", "sub/deeper/x.jpg", "sub/deeper/X.png", "C:evil.jpg", "back\\slash.jpg"]


def make_batch(tmp: Path, names: list[str], name: str = "demo", pipeline: str = PIPE,
               bad: int = 1, workers: int = 2) -> tuple[Path, Path, dict]:
    """Images under tmp/in, run through the real CLI. Returns (home, out_dir, status)."""
    src, out, home = tmp / "in", tmp / "out", tmp / "home"
    src.mkdir(parents=True, exist_ok=True)
    for k, n in enumerate(names):
        make_image(src / n, 48 + k, 32 + k, seed=k, ext=os.path.splitext(n)[1])
    for k in range(bad):
        (src / f"broken{k}.jpg").write_bytes(b"this is plain text, not a jpeg")
    r = cli("start", str(src), "--out", str(out), "--name", name, "-w", str(workers), "-p", pipeline, home=home)
    assert r.returncode in (0, 1), r.stderr
    st = json.loads(cli("status", name, "--json", home=home).stdout)
    return home, out, st


def journal_records(home: Path) -> list[dict]:
    from batchcli.engine.journal import iter_records

    (bdir,) = (home / "batches").iterdir()
    return list(iter_records(str(bdir / "journal.jsonl")))


def completed_records(home: Path) -> dict[int, dict]:
    last: dict[int, dict] = {}
    for rec in journal_records(home):
        if rec.get("type") in ("item_completed", "item_failed"):
            last[rec["i"]] = rec
    return {i: r for i, r in last.items() if r["type"] == "item_completed"}


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exportbatch")
    names = [f"img{k:02d}.jpg" for k in range(8)] + HOSTILE
    home, out, st = make_batch(tmp, names)
    assert st["completed"] == len(names) and st["failed"] == 1
    return tmp, home, out, st


def test_round_trip_zip(batch, tmp_path):
    _, home, out, st = batch
    z = tmp_path / "res.zip"
    r = cli("export", "demo", "--zip", str(z), home=home)
    assert r.returncode == 0, r.stderr
    assert f"exported {st['completed']} results" in r.stdout
    recs = completed_records(home)
    with zipfile.ZipFile(z) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert names[-2:] == ["manifest.csv", "manifest.jsonl"]
        rows = [json.loads(line) for line in zf.read("manifest.jsonl").decode().splitlines()]
        assert len(rows) == st["total"]
        by_entry = {row["output"]: row for row in rows if row["output"]}
        assert len(by_entry) == len(recs) == len(names) - 2
        for info in zf.infolist():
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert (info.external_attr >> 16) == 0o100644
            if info.filename.startswith("manifest."):
                continue
            data = zf.read(info)
            row = by_entry[info.filename]
            rec = recs[row["i"]]
            digest = hashlib.sha256(data).hexdigest()
            assert digest == rec["sha256"] == row["sha256"]
            assert len(data) == rec["bytes"] == row["bytes"]
            assert (out / rec["out"]).read_bytes() == data
            assert info.compress_type == zipfile.ZIP_STORED
        failed = [row for row in rows if row["status"] == "failed"]
        assert len(failed) == 1 and failed[0]["error_class"] == "decode" and failed[0]["output"] is None
        assert "not" in failed[0]["error"]
        table = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode("utf-8"), newline="")))
    assert len(table) == st["total"]
    assert {row["input"] for row in table} == {row["input"] for row in rows}  # newlines survive CSV quoting
    assert list(table[0])[:10] == ["i", "input", "rel", "status", "output", "bytes", "sha256", "ms",
                                   "error_class", "error"]


def test_zip_is_deterministic(batch, tmp_path):
    _, home, out, _ = batch
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    assert cli("export", "demo", "--zip", str(a), home=home).returncode == 0
    for p in out.rglob("*"):  # timestamps of the outputs must not matter
        if p.is_file():
            os.utime(p, (time.time() + 100, time.time() + 100))
    assert cli("export", "demo", "--zip", str(b), home=home).returncode == 0
    assert a.read_bytes() == b.read_bytes()


def _assert_safe(names: list[str], dest: Path) -> None:
    for n in names:
        assert not n.startswith("/") and not n.startswith("\\"), n
        assert ".." not in n.split("/"), n
        assert not any(ord(c) < 32 or ord(c) == 127 for c in n), repr(n)
        assert "\\" not in n and ":" not in n, n
    lowered = [n.casefold() for n in names]
    assert len(set(lowered)) == len(lowered)


def test_hostile_names_give_safe_entries(batch, tmp_path):
    _, home, _, _ = batch
    z = tmp_path / "h.zip"
    assert cli("export", "demo", "--zip", str(z), home=home).returncode == 0
    with zipfile.ZipFile(z) as zf:
        names = zf.namelist()
        _assert_safe(names, tmp_path)
        dest = tmp_path / "x"
        zf.extractall(dest)
    for p in dest.rglob("*"):
        assert p.resolve().is_relative_to(dest.resolve())
    assert "new_line.webp" in names and "a b.webp" in names and "-dash.webp" in names
    assert "ünïcødé 写真.webp" in names and "C_evil.webp" in names and "tab_name.webp" in names
    assert "sub/deeper/X.webp" in names and "sub/deeper/x_jpg.webp" in names


@pytest.mark.parametrize("template", ["../../{stem}.{ext}", "/etc/{stem}.{ext}", "{dir}/../{stem}.{ext}",
                                      "..\\..\\{stem}.{ext}", "{name}.{ext}"])
def test_hostile_templates_stay_inside(batch, tmp_path, template):
    _, home, _, st = batch
    z = tmp_path / "t.zip"
    r = cli("export", "demo", "--zip", str(z), "--name-template", template, home=home)
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(z) as zf:
        names = [n for n in zf.namelist() if not n.startswith("manifest.")]
        _assert_safe(zf.namelist(), tmp_path)
        assert len(names) == st["completed"]
        zf.extractall(tmp_path / "x")
    for p in (tmp_path / "x").rglob("*"):
        assert p.resolve().is_relative_to((tmp_path / "x").resolve())
    if template == "{name}.{ext}":  # every name collides: deterministic suffixes in item order
        assert names[:3] == ["demo.webp", "demo_2.webp", "demo_3.webp"]


def test_name_template_fields(batch, tmp_path):
    _, home, _, _ = batch
    z = tmp_path / "n.zip"
    r = cli("export", "demo", "--zip", str(z), "--name-template", "{name}_{stem}_{i:03d}.{ext}", "--no-manifest",
            home=home)
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(z) as zf:
        names = zf.namelist()
    assert "manifest.csv" not in names
    from batchcli.results.names import sanitize_name

    want = {sanitize_name(f"demo_{os.path.splitext(os.path.basename(r['out']))[0]}_{i:03d}.webp")
            for i, r in completed_records(home).items()}
    assert set(names) == want
    assert any(n.startswith("demo_img00_") for n in names)


@pytest.mark.parametrize("raw, safe", [
    ("../../x.jpg", "x.jpg"),
    ("/etc/passwd", "etc/passwd"),
    ("C:\\Windows\\x.jpg", "C__Windows_x.jpg"),
    ("a/./b/../c.jpg", "a/b/c.jpg"),
    ("new\nline\r.jpg", "new_line_.jpg"),
    ("nul\x00byte.jpg", "nul_byte.jpg"),
    ("trailing. /x.jpg", "trailing/x.jpg"),
    ("", "file"),
    ("..", "file"),
    ("e\u0301.jpg", "\u00e9.jpg"),  # NFC
    ("-x.jpg", "-x.jpg"),
])
def test_sanitize_name(raw, safe):
    from batchcli.results.names import sanitize_name

    assert sanitize_name(raw) == safe


def test_sanitize_caps_long_components():
    from batchcli.results.names import sanitize_name

    s = sanitize_name("é" * 300 + ".jpg")
    assert s.endswith(".jpg") and len(s.encode()) <= 240


def test_unique_names():
    from batchcli.results.names import UniqueNames

    u = UniqueNames(reserved=("manifest.csv",))
    got = [u.take(n) for n in ["a.jpg", "A.jpg", "a.jpg", "manifest.csv", "d/x.jpg", "d", "a_2.jpg"]]
    assert got == ["a.jpg", "A_2.jpg", "a_3.jpg", "manifest_2.csv", "d/x.jpg", "d_2", "a_2_2.jpg"]


@pytest.mark.parametrize("template, msg", [("{nope}.jpg", "unknown field"), ("{stem", "template"),
                                           ("plain.jpg", "at least one field"), ("{stem.__class__}", "unknown field")])
def test_bad_template_is_usage_error(batch, tmp_path, template, msg):
    _, home, _, _ = batch
    r = cli("export", "demo", "--zip", str(tmp_path / "x.zip"), "--name-template", template, home=home)
    assert r.returncode == 2 and msg in r.stderr
    assert not (tmp_path / "x.zip").exists()


def test_usage_errors(batch, tmp_path):
    _, home, _, _ = batch
    r = cli("export", "nosuchbatch", "--zip", str(tmp_path / "x.zip"), home=home)
    assert r.returncode == 2 and "no batch matches" in r.stderr
    r = cli("export", "demo", home=home)
    assert r.returncode == 2 and "--zip" in r.stderr
    r = cli("export", "demo", "--manifest", str(tmp_path / "m.txt"), home=home)
    assert r.returncode == 2 and ".csv or .jsonl" in r.stderr


def test_nothing_to_export(tmp_path):
    home, _, st = make_batch(tmp_path, [], name="allbad", bad=3)
    assert st["completed"] == 0
    r = cli("export", "allbad", "--zip", str(tmp_path / "x.zip"), home=home)
    assert r.returncode == 1
    assert "no completed results to export" in r.stderr
    assert not (tmp_path / "x.zip").exists()


def test_zip64_many_entries(tmp_path):
    """More than 65,535 entries: the ZIP64 end records, read back by the standard library."""
    from batchcli.results.zipstream import ZipStream

    n = 65_600
    path = tmp_path / "many.zip"
    with open(path, "w+b") as fh:
        zs = ZipStream(fh)
        for k in range(n):
            zs.add_bytes(f"d{k % 7}/f{k:06d}.txt", b"%d" % k)
        zs.close()
        assert zs.zip64
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert len(infos) == n
        assert zf.read(infos[-1]) == b"%d" % (n - 1)
        assert zf.read("d3/f000010.txt") == b"10"
    if shutil.which("unzip"):
        r = subprocess.run(["unzip", "-tqq", str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_zip64_sizes_and_offsets(batch, tmp_path, monkeypatch):
    """With the ZIP64 threshold lowered to 1 KB, every size and offset record takes the ZIP64
    path (what a 4 GB output or archive would do); the archive still reads back byte for byte."""
    from batchcli.engine.store import Store
    from batchcli.results import export, zipstream

    _, home, out, st = batch
    monkeypatch.setattr(zipstream, "ZIP64_LIMIT", 1000)
    z = tmp_path / "z64.zip"
    res = export.export_zip(Store(str(home)).resolve("demo"), str(z))
    assert res.zip64 and res.exported == st["completed"]
    recs = completed_records(home)
    with zipfile.ZipFile(z) as zf:
        assert zf.testzip() is None
        rows = [json.loads(x) for x in zf.read("manifest.jsonl").splitlines()]
        for row in rows:
            if row["output"]:
                assert hashlib.sha256(zf.read(row["output"])).hexdigest() == recs[row["i"]]["sha256"]
    if shutil.which("unzip"):
        r = subprocess.run(["unzip", "-tqq", str(z)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_export_to_folder_links_and_copies(batch, tmp_path, monkeypatch):
    from batchcli.engine.store import Store
    from batchcli.results import export

    _, home, out, st = batch
    dest = tmp_path / "linked"
    r = cli("export", "demo", "--to", str(dest), home=home)
    assert r.returncode == 0, r.stderr
    assert "linked" in r.stdout
    recs = completed_records(home)
    rows = [json.loads(x) for x in (dest / "manifest.jsonl").read_text().splitlines()]
    for row in rows:
        if row["output"]:
            p = dest / row["output"]
            assert os.path.samefile(p, out / recs[row["i"]]["out"])  # a hard link
    assert not [p for p in dest.rglob("*") if ".batchcli-tmp-" in p.name]

    def no_links(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    copies = tmp_path / "copied"
    res = export.export_dir(Store(str(home)).resolve("demo"), str(copies), manifest=False)
    assert res.copied == st["completed"] and res.linked == 0
    assert not (copies / "manifest.csv").exists()
    for rec in recs.values():
        name = rec["out"]
        from batchcli.results.names import sanitize_name

        p = copies / sanitize_name(name)
        assert hashlib.sha256(p.read_bytes()).hexdigest() == rec["sha256"]
        assert not os.path.samefile(p, out / name)


def test_manifest_only(batch, tmp_path):
    _, home, _, st = batch
    for ext in ("csv", "jsonl"):
        m = tmp_path / f"m.{ext}"
        r = cli("export", "demo", "--manifest", str(m), home=home)
        assert r.returncode == 0, r.stderr
        text = m.read_text(encoding="utf-8")
        n = len(list(csv.DictReader(io.StringIO(text, newline="")))) if ext == "csv" else len(text.splitlines())
        assert n == st["total"]
    assert not list(tmp_path.glob("*.zip"))


def _fake_run(home: Path, tmp: Path, metas: list[dict | None]) -> tuple:
    """A batch whose journal is written here (as a runner would): outputs with metadata."""
    from batchcli import api
    from batchcli.engine.journal import JournalWriter
    from batchcli.engine.store import Store

    src = tmp / "src"
    for k in range(len(metas)):
        make_image(src / f"p{k}.png", 20, 20, seed=k)
    store = Store(str(home))
    paths = api.create_batch(store, api.StartConfig(inputs=[str(src)], out_dir=str(tmp / "o"),
                                                    pipeline_text="resize 10x10", name="meta"))
    with JournalWriter(paths.journal, 0) as j:
        j.append("batch_started", pid=os.getpid())
        for k, meta in enumerate(metas):
            data = b"output %d" % k
            (tmp / "o" / f"p{k}.png").write_bytes(data)
            rec = {"out": f"p{k}.png", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "ms": 1.5}
            if meta:
                rec["meta"] = meta
            j.append("item_completed", i=k, **rec)
        j.append("batch_finished", status="completed")
    return store, paths


def test_manifest_metadata_flattened(tmp_path):
    from batchcli.results import export

    metas = [{"classify": {"top": [{"label": "cat", "score": 0.9}]}, "analyze": {"mean": 12.5, "sharp": True}},
             None, {"analyze": {"mean": 3.0, "hist": {"r": [1, 2]}}, "faces": {"count": 2}}]
    _, paths = _fake_run(tmp_path / "home", tmp_path, metas)
    res = export.export_manifest(paths, str(tmp_path / "m.csv"))
    assert res.manifest_rows == 3
    rows = list(csv.DictReader(open(tmp_path / "m.csv", encoding="utf-8", newline="")))
    assert rows[0]["meta.classify.top"] == '[{"label":"cat","score":0.9}]'
    assert rows[0]["meta.analyze.mean"] == "12.5" and rows[0]["meta.analyze.sharp"] == "true"
    assert rows[1]["meta.analyze.mean"] == ""
    assert rows[2]["meta.analyze.hist"] == '{"r":[1,2]}' and rows[2]["meta.faces.count"] == "2"
    export.export_manifest(paths, str(tmp_path / "m.jsonl"))
    lines = [json.loads(x) for x in open(tmp_path / "m.jsonl", encoding="utf-8")]
    assert lines[2]["meta"] == metas[2] and "meta" not in lines[1]


def test_missing_and_changed_outputs_are_listed_not_exported(tmp_path):
    home, out, st = make_batch(tmp_path, [f"k{k}.jpg" for k in range(5)], name="broken")
    recs = completed_records(home)
    gone, edited = sorted(recs)[:2]
    (out / recs[gone]["out"]).unlink()
    p = out / recs[edited]["out"]
    p.write_bytes(p.read_bytes()[:-3] + b"abc")  # same size, other bytes
    z = tmp_path / "b.zip"
    r = cli("export", "broken", "--zip", str(z), home=home)
    assert r.returncode == 0, r.stderr
    assert "1 output(s) missing and 1 changed" in r.stdout
    with zipfile.ZipFile(z) as zf:
        rows = {row["i"]: row for row in map(json.loads, zf.read("manifest.jsonl").splitlines())}
        entries = set(zf.namelist())
    assert len(entries) == 3 + 2
    assert rows[gone]["status"] == "missing" and rows[gone]["error_class"] == "missing" and rows[gone]["output"] is None
    assert rows[edited]["status"] == "missing" and rows[edited]["error_class"] == "changed"
    assert recs[edited]["out"] not in entries


def test_export_while_running(tmp_path):
    """A runner in another process keeps writing; the export is one consistent snapshot."""
    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    for k in range(50):
        make_image(src / f"r{k:03d}.png", 24, 24, seed=k)
    env = dict(os.environ, BATCHCLI_HOME=str(home), BATCHCLI_TEST_OPS="crashops",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    probe = subprocess.run([sys.executable, "-c", "import batchcli.executors.worker, batchcli.pipeline as p; "
                            "p.Pipeline.parse('crashtest none delay=0.05')"], capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        pytest.skip("the test-only crashtest op is not available")
    hold = tmp_path / "hold"  # the last item waits while this file exists: the run cannot end first
    hold.touch()
    proc = subprocess.Popen([sys.executable, "-m", "batchcli", "start", str(src), "--out", str(out), "--name", "live",
                             "-w", "1", "-p", f"crashtest none match=r049 hold={hold} | convert webp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if (home / "batches").is_dir() and len(completed_records(home)) >= 5:
                break
            time.sleep(0.05)
        z = tmp_path / "live.zip"
        r = cli("export", "live", "--zip", str(z), home=home)
        assert r.returncode == 0, r.stderr
        still_running = proc.poll() is None
    finally:
        hold.unlink()
        proc.wait(timeout=60)
    assert still_running, "the runner finished before the export"
    assert "the batch is still running" in r.stdout and "completed as of" in r.stdout
    recs = completed_records(home)
    with zipfile.ZipFile(z) as zf:
        rows = [json.loads(x) for x in zf.read("manifest.jsonl").splitlines()]
        done = [row for row in rows if row["status"] == "completed"]
        assert 5 <= len(done) < 50
        assert any(row["status"] == "pending" for row in rows)
        for row in done:
            data = zf.read(row["output"])
            assert hashlib.sha256(data).hexdigest() == row["sha256"] == recs[row["i"]]["sha256"]
    # the finished batch exports everything
    r = cli("export", "live", "--zip", str(tmp_path / "all.zip"), home=home)
    assert r.returncode == 0 and "still running" not in r.stdout
    with zipfile.ZipFile(tmp_path / "all.zip") as zf:
        assert len(zf.namelist()) == 50 + 2


def test_command_module_imports_no_heavy_modules():
    code = ("import sys, batchcli.cli.app, batchcli.cli.commands.export; "
            "print(sorted(m for m in ('cv2', 'numpy', 'PIL') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr
