"""No traceback, ever: a full disk under the journal, a read-only --out or journal, damaged and
half-made batch folders, resume racing cleanup, temp files of a killed export. Real processes,
real file systems (tmpfs and read-only mounts need root: those tests skip cleanly otherwise)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, make_images
from crashops import wait_for

from batchcli.engine.journal import replay


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


@contextlib.contextmanager
def _mount(target: Path, *options: str):
    """A tmpfs (or a bind mount) at `target` for the block; skip the test when we cannot mount."""
    target.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    r = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount here: {r.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _batch(home: Path) -> Path:
    return max((home / "batches").iterdir())


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("many"), 300, 16, 16, prefix="m")


def test_a_full_disk_under_the_journal_pauses_and_resume_completes(many, tmp_path):
    home = tmp_path / "home"
    with _mount(home, "-t", "tmpfs", "-o", "size=160k", "tmpfs"):
        r = cli("start", str(many), "--pipeline", "analyze", "-w", "1", "--min-free-space", "0", home=home)
        assert r.returncode == 3, r.stderr  # paused, not a traceback and not failed items
        assert "Traceback" not in r.stderr
        assert "paused (disk full: cannot write the journal" in r.stdout and "No space left on device" in r.stdout
        batch = _batch(home)
        st = replay(str(batch / "journal.jsonl"), 300)
        assert st.state == "paused" and "disk full" in st.reason and not st.bad  # still clean JSONL
        assert 0 < st.completed < 300 and st.failed == 0
        subprocess.run(["mount", "-o", "remount,size=4m", str(home)], check=True)
        r = cli("resume", batch.name, "--min-free-space", "0", home=home)
        assert r.returncode == 0, r.stdout + r.stderr
        st = replay(str(batch / "journal.jsonl"), 300)
        assert st.state == "completed" and st.completed == 300 and not st.bad


def test_a_full_batch_home_is_one_line_at_start(many, tmp_path):
    home = tmp_path / "home"
    with _mount(home, "-t", "tmpfs", "-o", "size=8k", "tmpfs"):
        r = cli("start", str(many), "--pipeline", "analyze", home=home)
        assert r.returncode == 2
        assert "No space left on device" in _one_line_error(r)
        assert not any((home / "batches").iterdir())  # the half-written batch is gone


def test_a_read_only_out_is_one_line_exit_2(many, tmp_path):
    ro = tmp_path / "ro"
    with _mount(ro, "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs"):
        for out in (ro, ro / "sub" / "web"):
            r = cli("start", str(many), "--out", str(out), "--pipeline", "convert png", home=tmp_path / "home")
            assert r.returncode == 2
            assert _one_line_error(r) == f"Error: --out {out}: cannot write there: Read-only file system"


def test_an_unwritable_journal_is_one_line(many, tmp_path):
    home = tmp_path / "home"
    r = cli("start", str(many), "--pipeline", "analyze", "--detach", home=home)
    assert r.returncode == 0
    batch = _batch(home)
    wait_for(lambda: json.loads(cli("status", "--json", home=home).stdout)["status"] == "completed",
             timeout=120, what="the batch to end")
    before = (batch / "journal.jsonl").read_bytes()
    with _mount(batch, "--bind", str(batch)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(batch)], check=True)
        r = cli("resume", batch.name, "--retry-failed", "--repair", home=home)
        assert r.returncode in (1, 2)
        assert "Read-only file system" in _one_line_error(r)
    assert (batch / "journal.jsonl").read_bytes() == before


def test_a_damaged_batch_is_listed_and_can_be_cleaned_up(many, tmp_path):
    home = tmp_path / "home"
    cli("start", str(many / "m000.png"), "--pipeline", "analyze", home=home)
    cli("start", str(many / "m001.png"), "--pipeline", "analyze", home=home)
    newest = _batch(home)
    (newest / "items.jsonl").unlink()
    rows = json.loads(cli("list", "--json", home=home).stdout)["batches"]
    assert [r["status"] for r in rows] == ["damaged", "completed"]
    assert rows[0]["reason"] == "missing items.jsonl"
    assert "damaged - missing items.jsonl" in cli("status", newest.name, home=home).stdout
    r = cli("resume", newest.name, home=home)
    assert r.returncode == 2 and "damaged (missing items.jsonl)" in _one_line_error(r)
    r = cli("recover", home=home)
    assert r.returncode == 0 and f"batch {newest.name}: damaged, missing items.jsonl" in r.stdout

    # a manifest there but empty, or JSON that is no manifest: damaged too, never a traceback
    older = min((home / "batches").iterdir())
    manifest = (older / "manifest.json").read_bytes()
    for bad, why in ((b"", "empty file"), (b"[]", "not a JSON object but list")):
        (older / "manifest.json").write_bytes(bad)
        r = cli("resume", older.name, home=home)
        assert r.returncode == 2 and f"damaged (manifest.json unreadable: {why})" in _one_line_error(r)
    r = cli("status", "no-such-name", home=home)  # a lookup by name reads every manifest
    assert r.returncode == 2 and "no batch matches" in _one_line_error(r)
    prom = tmp_path / "b.prom"
    r = cli("stats", "--json", "--prometheus", str(prom), home=home)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    batches = json.loads(r.stdout)["batches"]
    assert (batches["total"], batches["damaged"], batches["completed"]) == (2, 2, 0)
    assert 'batchcli_batches{status="damaged"} 2' in prom.read_text().splitlines()
    (older / "manifest.json").write_bytes(manifest)

    assert cli("cleanup", "--older-than", "0s", home=home).returncode == 0  # default states: the other one
    assert newest.exists() and len(list((home / "batches").iterdir())) == 1
    r = cli("cleanup", "--status", "damaged", "--older-than", "0s", home=home)
    assert r.returncode == 0 and f"removed batch {newest.name} (damaged)" in r.stdout
    assert not newest.exists()


def test_a_batch_half_made_by_a_kill_during_discovery(many, tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, BATCHCLI_HOME=str(home))
    p = subprocess.Popen([sys.executable, "-m", "batchcli", "start", "-", "--pipeline", "analyze"],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    p.stdin.write(f"{many / 'm000.png'}\n".encode())
    p.stdin.flush()  # discovery now waits for more lines: the folder exists, half-made
    wait_for(lambda: (home / "batches").is_dir() and any((home / "batches").iterdir()), what="the folder")
    assert json.loads(cli("list", "--json", home=home).stdout)["total"] == 0  # being created: not listed
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdin.close()
    rows = json.loads(cli("list", "--json", home=home).stdout)["batches"]
    assert len(rows) == 1 and rows[0]["status"] == "damaged" and "killed during discovery" in rows[0]["reason"]
    r = cli("recover", home=home)
    assert r.returncode == 0 and "left half-made" in r.stdout
    r = cli("cleanup", "--status", "damaged", "--older-than", "0s", home=home)
    assert r.returncode == 0 and "removed batch" in r.stdout
    assert not any((home / "batches").iterdir())


def test_resume_racing_cleanup_never_shows_a_traceback(many, tmp_path):
    home = tmp_path / "home"
    (tmp_path / "in").mkdir()
    for k in range(3):
        os.link(many / f"m{k:03d}.png", tmp_path / "in" / f"m{k}.png")
    (tmp_path / "in" / "bad.png").write_text("not an image")
    env = dict(os.environ, BATCHCLI_HOME=str(home))
    env.pop("CI", None)
    for _ in range(4):
        assert cli("start", str(tmp_path / "in"), "--pipeline", "analyze", home=home).returncode == 1
        bid = _batch(home).name
        procs = [subprocess.Popen([sys.executable, "-m", "batchcli", *args], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for args in (["resume", bid, "--retry-failed"], ["cleanup", "--older-than", "0s"])]
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert "Traceback" not in out + err, err
            assert p.returncode in (0, 1, 2), err
            if p.returncode == 2:
                assert len(err.strip().splitlines()) == 1, err


def test_temp_files_of_a_killed_export_go_with_the_next_export_or_cleanup(many, tmp_path):
    home = tmp_path / "home"
    cli("start", str(many / "m000.png"), "--out", str(tmp_path / "out"), "--pipeline", "convert png", home=home)
    bid = _batch(home).name
    exports = tmp_path / "exports"
    exports.mkdir()

    def killed_export_leftover(target: Path) -> Path:
        """A temp file named the way an export names its own, by a process now dead."""
        code = ("import sys; from batchcli.atomic import tmp_name; t = tmp_name(sys.argv[1]); "
                "open(t, 'wb').write(b'PK half a zip'); print(t)")
        r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, check=True)
        return Path(r.stdout.strip())

    left = killed_export_leftover(exports / "a.zip")
    other = killed_export_leftover(exports / "b.zip")  # another target's: not this export's business
    assert cli("export", bid, "--zip", str(exports / "a.zip"), home=home).returncode == 0
    assert not left.exists() and other.exists()
    assert cli("export", bid, "--to", str(exports / "tree"), home=home).returncode == 0
    left = killed_export_leftover(exports / "tree" / "m000.png")
    again = killed_export_leftover(exports / "a.zip")
    r = cli("cleanup", "--older-than", "0s", home=home)
    assert r.returncode == 0 and f"removed batch {bid}" in r.stdout
    assert not left.exists() and not again.exists() and other.exists()
