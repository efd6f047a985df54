"""Control requests are never lost: they queue in the control file, and cancel, being terminal,
wins over a pause sent just before or just after it. Real runner, real `pause`/`cancel` processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import make_image
from crashops import cli_env, create, records, wait_for

from batchcli.engine.journal import replay
from batchcli.engine.lifecycle import TERMINAL
from batchcli.engine.liveness import request, strongest_request
from batchcli.engine.status import mark
from batchcli.engine.store import BatchPaths


def _cli(home, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "batchcli", *map(str, args)], env=cli_env(home),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("first, second", [("cancel", "pause"), ("pause", "cancel"), ("cancel", "pause")])
def test_cancel_wins_whichever_comes_50ms_first(tmp_path, first, second):
    folder = tmp_path / "in"
    for k in range(40):
        make_image(folder / f"i{k:02d}.png", 16, 16, seed=k)
    home = tmp_path / "home"
    # items of 1 s: the runner is still finishing the one in hand when both requests (two CLI
    # processes, each a Python start-up, 50 ms apart) have arrived, however loaded the machine
    runner = _cli(home, "start", folder, "--out", tmp_path / "out", "-w", "1", "--min-free-space", "0",
                  "--pipeline", "crashtest delay=1.0 | convert png")
    journal = wait_for(lambda: next((home / "batches").glob("*/journal.jsonl"), None), what="the batch")
    wait_for(lambda: any(r["type"] == "item_completed" for r in records(journal)), what="a first item")
    a = _cli(home, first, journal.parent.name)
    time.sleep(0.05)
    b = _cli(home, second, journal.parent.name)
    assert runner.wait(timeout=120) == 4, runner.stderr.read()
    for p in (a, b):
        p.wait(timeout=120)
    st = replay(str(journal), 40)
    assert st.state == "cancelled", [r["type"] for r in records(journal)][-4:]
    assert sum(r["type"] == "batch_cancelled" for r in records(journal)) == 1
    assert (a if first == "cancel" else b).returncode == 0
    pauser = a if first == "pause" else b
    # the pause either saw the batch cancelled (exit 2, saying so) or stopped nothing: never "paused"
    out = pauser.stdout.read() + pauser.stderr.read()
    assert "cancelled" in out and "paused (" not in out, out


@pytest.mark.parametrize("how", ["cancel", "pause --now"])
def test_an_output_written_before_a_cancel_is_recorded_never_left_behind(tmp_path, how):
    """Items of 0.6 s: a result used to wait in its worker until the next item was done, so a
    cancel (or pause --now) left the last output written but never recorded, owned by nobody
    (export, verify and cleanup --purge-outputs skip it). Every output file belongs to a record."""
    import json

    folder = tmp_path / "in"
    for k in range(20):
        make_image(folder / f"i{k:02d}.png", 16, 16, seed=k)
    home, out = tmp_path / "home", tmp_path / "out"
    runner = _cli(home, "start", folder, "--out", out, "-w", "1", "--min-free-space", "0",
                  "--pipeline", "crashtest delay=0.6 | convert png")
    journal = wait_for(lambda: next((home / "batches").glob("*/journal.jsonl"), None), what="the batch")
    wait_for(lambda: sum(r["type"] == "item_completed" for r in records(journal)) >= 2, what="two items")
    time.sleep(0.3)  # the third is in hand
    stop = _cli(home, *how.split(), journal.parent.name)
    assert stop.wait(timeout=60) == 0, stop.stderr.read()
    assert runner.wait(timeout=60) in (3, 4), runner.stderr.read()
    recorded = {r["out"] for r in records(journal) if r["type"] == "item_completed"}
    assert recorded and sorted(p.name for p in out.iterdir()) == sorted(recorded)
    s = json.loads(subprocess.run([sys.executable, "-m", "batchcli", "status", journal.parent.name, "--json"],
                                  env=cli_env(home), capture_output=True, text=True).stdout)
    assert s["completed"] == len(recorded)


def test_requests_queue_and_the_strongest_wins(tmp_path):
    paths = BatchPaths(str(tmp_path))
    assert strongest_request(paths) is None
    request(paths, "pause")
    assert strongest_request(paths) == "pause"
    request(paths, "cancel")
    request(paths, "pause")
    assert strongest_request(paths) == "cancel"
    assert (tmp_path / "control").read_text().split() == ["pause", "cancel", "pause"]


def test_a_pause_written_without_a_runner_never_follows_a_cancel(tmp_path):
    """The runner that a pause found gone may have written a cancel since the pause looked: the
    pause's record is not written after it (the batch would have read paused, last record
    winning); the same for a cancel after a cancel."""
    make_image(tmp_path / "in" / "a.png", 16, 16)
    paths = create(tmp_path / "home", [tmp_path / "in"], tmp_path / "out", "resize 8x8")
    assert mark(paths, "batch_cancelled", unless=TERMINAL, reason="cancelled by its runner")
    before = (tmp_path / "home" / "batches" / paths.id / "journal.jsonl").read_bytes()
    assert not mark(paths, "batch_paused", unless=TERMINAL, reason="paused by user (no live runner)")
    assert not mark(paths, "batch_cancelled", unless=TERMINAL, reason="cancelled by user")
    assert (tmp_path / "home" / "batches" / paths.id / "journal.jsonl").read_bytes() == before
    assert replay(paths.journal, 1).state == "cancelled"
