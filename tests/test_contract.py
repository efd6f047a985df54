"""The command contract scripts rely on (DESIGN.md "Commands", "JSON shapes scripts rely on"):
usage errors are exit 2 before any batch exists, JSON fields keep their stated types in every
state, and a follower whose reader left stops with 141. Real processes, a real batch home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, make_images


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("three"), 3, 16, 16)


def _env(home: Path) -> dict:
    e = dict(os.environ)
    e.pop("CI", None)
    e["BATCHCLI_HOME"] = str(home)
    return e


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["start", "sync", "watch"])
def test_a_misspelt_executor_is_exit_2_before_the_batch_is_made(command, three, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    r = cli(command, str(three), "--out", str(out), "-p", "resize 8x8", "--executor", "locall", home=home, timeout=60)
    assert r.returncode == 2
    assert _one_error_line(r) == "Error: --executor 'locall': expected local, dask or dask://HOST:PORT"
    # no batch left behind ('interrupted', which `recover --resume` would have run), no output folder
    assert not list((home / "batches").glob("*")) and not out.exists()
    assert json.loads(cli("recover", "--resume", "--json", home=home).stdout)["recovered_count"] == 0


def test_transfer_without_dask_is_a_usage_error(three, tmp_path):
    """--transfer ships bytes to Dask workers; with the local pool it would be ignored, silently."""
    home = tmp_path / "home"
    r = cli("start", str(three), "--out", str(tmp_path / "out"), "-p", "resize 8x8", "--transfer", home=home, timeout=60)
    assert r.returncode == 2
    assert _one_error_line(r) == ("Error: --transfer: only with --executor dask or dask://HOST:PORT (the local pool "
                                  "reads the inputs where they are)")
    assert not list((home / "batches").glob("*"))


@pytest.mark.parametrize("name", ["", "  "])
def test_a_blank_name_is_a_usage_error(name, three, tmp_path):
    home = tmp_path / "home"
    r = cli("start", str(three), "--out", str(tmp_path / "out"), "-p", "resize 8x8", "--name", name, home=home, timeout=60)
    assert r.returncode == 2 and "--name" in _one_error_line(r)
    assert not list((home / "batches").glob("*"))


def test_json_types_hold_for_scheduled_paused_and_cancelled_batches(three, tmp_path):
    """Two batches waiting for their time (a runner process each): `stats` counts them by state,
    a follower whose reader leaves stops although nothing changes, and `pause`/`cancel --json`
    answer with the status object of a batch whose runner has stopped."""
    home = tmp_path / "home"
    ids = []
    for k in range(2):
        r = cli("start", str(three), "--out", str(tmp_path / f"out{k}"), "-p", "resize 8x8", "--at", "+30m", home=home)
        assert r.returncode == 0, r.stderr
        ids.append(r.stdout.strip())

    stats = json.loads(cli("stats", "--json", "--prometheus", str(tmp_path / "b.prom"), home=home).stdout)["batches"]
    states = ("pending", "scheduled", "queued", "running", "throttled", "paused", "interrupted", "completed", "failed",
              "cancelled")
    assert {k: stats[k] for k in states} == {k: 2 if k == "scheduled" else 0 for k in states}
    assert sum(stats[k] for k in states) == stats["total"] == 2
    assert 'batchcli_batches{status="scheduled"} 2' in (tmp_path / "b.prom").read_text().splitlines()

    # nothing happens to a scheduled batch: the follower learns that its reader left from the pipe
    follower = subprocess.Popen([sys.executable, "-m", "batchcli", "status", ids[0], "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(home))
    assert follower.stdout.readline().startswith(b"scheduled 0/3")
    follower.stdout.close()  # `| head -1` exits
    try:
        assert follower.wait(timeout=20) == 141
    finally:
        follower.kill()
        follower.wait()

    paused = json.loads(cli("pause", ids[0], "--json", home=home).stdout)
    cancelled = json.loads(cli("cancel", ids[1], "--json", home=home).stdout)
    for s, status in ((paused, "paused"), (cancelled, "cancelled")):
        assert (s["status"], s["runner_pid"], s["waited"]) == (status, None, True), s
        assert s == {**json.loads(cli("status", s["batch_id"], "--json", home=home).stdout), "via": "runner", "waited": True}

    for batch, state in ((ids[0], "pending"), (ids[1], "skipped")):
        rows = json.loads(cli("status", batch, "--items", "--json", home=home).stdout)
        assert rows["total"] == 3
        for row in rows["items"]:  # "ms": N, not null, for items that never ran
            assert row["status"] == state and row["output"] is None and row["error"] is None
            assert isinstance(row["ms"], float) and row["ms"] == 0.0



def test_a_file_where_a_folder_of_an_export_path_should_be_is_a_usage_error(three, tmp_path):
    """--zip, --manifest, --contact-sheet under a regular file: exit 2 naming that file, before
    any work (it was exit 1, 'cannot write ...: File exists', once the export had begun); as
    --report and stats --prometheus already were."""
    home = tmp_path / "home"
    r = cli("start", str(three), "--out", str(tmp_path / "out"), "-p", "resize 8x8", "--name", "done", home=home)
    assert r.returncode == 0, r.stderr
    plain = tmp_path / "plain.txt"
    plain.write_text("a file, not a folder\n")
    for flag, name in (("--zip", "x.zip"), ("--manifest", "m.csv"), ("--contact-sheet", "c.jpg")):
        target = plain / "sub" / name
        r = cli("export", "done", flag, str(target), home=home)
        assert r.returncode == 2 and _one_error_line(r) == f"Error: {flag} {target}: {plain} is a file, not a folder"
    for args in (["export", "done", "--report"], ["stats", "--prometheus"]):
        r = cli(*args, str(plain / "sub" / "r.xml"), home=home)
        assert r.returncode == 2 and _one_error_line(r).endswith(f"no such folder {plain / 'sub'}")
    assert plain.read_text() == "a file, not a folder\n"
