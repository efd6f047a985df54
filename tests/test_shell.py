"""The shell may vanish (DESIGN.md invariant 10): a closed stdout or stderr, or a hung-up terminal,
never stops, fails or interrupts a batch; the runner goes on, logging to the batch's log.txt.
Real processes, real pipes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import cli, make_image
from crashops import cli_env, records, wait_for

N = 12


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    for k in range(N):
        make_image(folder / f"img{k:03d}.png", 32, 24, seed=k)
    return folder


def _spawn(home, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "batchcli", *map(str, args)], env=cli_env(home),
                            stdin=subprocess.DEVNULL, **kw)


def _batch_dir(home):
    return next((home / "batches").iterdir())


def _finished(home) -> dict:
    recs = records(_batch_dir(home) / "journal.jsonl")
    assert recs[-1]["type"] == "batch_finished", recs[-1]
    return recs[-1]


@pytest.mark.parametrize("json_out", [True, False])
def test_a_reader_that_exits_after_one_line_does_not_stop_the_batch(inputs, tmp_path, json_out):
    home, out = tmp_path / "home", tmp_path / "out"
    p = _spawn(home, "start", inputs, "--out", out, "-w", "1", "--pipeline", "crashtest delay=0.1 | convert png",
               *(["--json"] if json_out else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()  # like `| head -1`: one line, then the reader is gone
    p.stdout.close()
    assert first.startswith(b'{"type": "started"' if json_out else b"batch ")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    assert _finished(home)["status"] == "completed"
    assert len(list(out.glob("*.png"))) == N
    log = (_batch_dir(home) / "log.txt").read_text()
    assert "stdout closed (Broken pipe); output continues here" in log
    assert ('"type": "finished"' if json_out else "completed 12, failed 0") in log


def test_stdout_and_stderr_on_one_closed_pipe(inputs, tmp_path):
    """`batchcli start ... 2>&1 | head -1`: failure lines (stderr) and progress (stdout) both go."""
    (inputs / "zz_notes.png").write_text("not an image")
    home, out = tmp_path / "home", tmp_path / "out"
    p = _spawn(home, "start", inputs, "--out", out, "-w", "1", "--pipeline", "crashtest delay=0.1 | convert png",
               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    p.stdout.readline()
    p.stdout.close()
    assert p.wait(timeout=120) == 1  # one item failed: the batch's own exit code
    assert _finished(home)["status"] == "completed"
    log = (_batch_dir(home) / "log.txt").read_text()
    assert "failed [decode]" in log and "completed 12, failed 1" in log


def _session(sid: int) -> set[int]:
    """The live processes of session `sid`."""
    pids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    pids.add(int(name))
            except OSError:
                pass
    return pids


def test_a_hung_up_terminal_does_not_stop_the_batch(inputs, tmp_path):
    """SIGHUP to the whole process group (what a dropped SSH session sends): the runner and its
    workers keep going; output after it goes to log.txt."""
    home, out = tmp_path / "home", tmp_path / "out"
    p = _spawn(home, "start", inputs, "--out", out, "-w", "2", "--pipeline", "crashtest delay=0.2 | convert png",
               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    p.stdout.readline()  # started: the workers are up
    wait_for(lambda: any(r["type"] == "item_completed" for r in records(_batch_dir(home) / "journal.jsonl")),
             what="a first completed item")
    before = _session(p.pid)  # the runner, the fork server, its resource tracker, the workers
    os.killpg(p.pid, signal.SIGHUP)
    time.sleep(0.3)
    after = _session(p.pid)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert len(before) >= 4 and before <= after, f"processes of the run gone after SIGHUP: {before - after}"
    assert _finished(home)["status"] == "completed"
    recs = records(_batch_dir(home) / "journal.jsonl")
    assert sum(r["type"] == "item_completed" for r in recs) == N
    assert not any(r["type"] == "item_failed" for r in recs)  # no worker died of it
    assert "hung up (SIGHUP)" in (_batch_dir(home) / "log.txt").read_text()


def test_after_a_hang_up_the_log_gets_plain_lines_not_the_progress_bar(inputs, tmp_path):
    """On a real terminal (a pty) the run draws a progress bar; once the terminal hangs up, what
    follows in log.txt is plain text: no frame of the bar, no colour codes."""
    import pty

    home, out = tmp_path / "home", tmp_path / "out"
    master, slave = pty.openpty()
    env = {**cli_env(home), "TERM": "xterm-256color", "COLUMNS": "100"}
    p = subprocess.Popen([sys.executable, "-m", "batchcli", "start", str(inputs), "--out", str(out), "-w", "1",
                          "--pipeline", "crashtest delay=0.25 | convert png"], env=env, stdin=slave, stdout=slave,
                         stderr=slave, start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        while b"\x1b[" not in seen:  # the bar is on the terminal
            seen += os.read(master, 4096)
        wait_for(lambda: any(r["type"] == "item_completed" for r in records(_batch_dir(home) / "journal.jsonl")),
                 what="a first completed item")
        os.killpg(p.pid, signal.SIGHUP)
    finally:
        os.close(master)  # the terminal is gone
    assert p.wait(timeout=120) == 0
    assert _finished(home)["status"] == "completed"
    log = (_batch_dir(home) / "log.txt").read_text()
    assert "hung up (SIGHUP)" in log and "\x1b" not in log, log
    assert "completed 12" in log  # the summary is there, as plain text


def test_follow_exits_with_the_batch_code_and_capped_lists_say_what_they_left_out(tmp_path):
    """25 items over --max-pixels, each a different size: 25 failures with 25 different reasons."""
    folder = tmp_path / "in"
    for k in range(25):
        make_image(folder / f"f{k:02d}.png", 8 + k, 8, seed=k)
    make_image(folder / "ok.png", 1, 1)
    home = tmp_path / "home"
    r = cli("start", str(folder), "--out", str(tmp_path / "out"), "--max-pixels", "1", home=home)
    assert r.returncode == 1
    fails = [ln for ln in r.stderr.splitlines() if ln.startswith("failed [too_large]")]
    assert len(fails) == 20
    bid = _batch_dir(home).name
    assert f"... and 5 more failures: batchcli status {bid} --items --failed" in r.stderr
    assert f"and 20 more failed items with other reasons: batchcli status {bid} --items --failed" in r.stdout
    s = cli("status", home=home)
    assert f"and 20 more with other reasons: batchcli status {bid} --items --failed" in s.stdout
    f = cli("status", bid, "--follow", "--json", home=home)
    assert f.returncode == 1  # completed, with failed items: what the runner exited with
    assert json.loads(f.stdout.splitlines()[-1])["status"] == "completed"
    assert cli("status", bid, "--follow", home=home).returncode == 1


def test_an_empty_batch_argument_is_a_usage_error(inputs, tmp_path):
    home = tmp_path / "home"
    assert cli("start", str(inputs), "--out", str(tmp_path / "out"), "--detach", home=home).returncode == 0
    for cmd in ("cancel", "pause", "resume", "status", "verify"):
        for blank in ("", "  "):
            r = cli(cmd, blank, home=home)
            assert r.returncode == 2, (cmd, r.stderr)
            assert "empty batch argument" in r.stderr
    state = wait_for(lambda: json.loads(cli("status", "--json", home=home).stdout)["status"] in
                     ("completed", "cancelled", "paused") and json.loads(cli("status", "--json", home=home).stdout),
                     what="the batch to end")
    assert state["status"] == "completed"  # nothing above cancelled or paused it
