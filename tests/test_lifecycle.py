"""pause / resume / cancel from other processes, the batch lock, resume checks, detached runs, signals."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from crashops import create, make_pngs, records, run, spawn, wait_for

from batchcli.engine.journal import replay
from batchcli.engine.liveness import runner_alive

NOSPACE = ("--min-free-space", "0")


def _done(journal) -> set[int]:
    return {r["i"] for r in records(journal) if r.get("type") == "item_completed"}


@pytest.fixture
def slow_batch(tmp_path):
    """40 images whose items take 100 ms each: long enough to act on a live runner (until
    `full_speed`: what is left after the test acted runs at full speed)."""
    make_pngs(tmp_path / "in", 40)
    seen = tmp_path / "seen.log"
    slow = tmp_path / "slow"
    slow.touch()
    paths = create(tmp_path / "home", [tmp_path / "in"], tmp_path / "out",
                   f"crashtest delay=0.1 slow={slow} log={seen} | convert png")
    return tmp_path / "home", paths, seen


def full_speed(home) -> None:
    """The slow_batch's items take no time from now on."""
    (home.parent / "slow").unlink()


def test_pause_from_another_process_then_resume_runs_exactly_the_rest(slow_batch):
    home, paths, seen = slow_batch
    runner = spawn(home, "resume", paths.id, "-w", "2", *NOSPACE)
    wait_for(lambda: len(_done(paths.journal)) >= 6, what="6 items done")
    r = run(home, "pause", paths.id)
    assert r.returncode == 0, r.stderr
    assert "paused" in r.stdout and f"batchcli resume {paths.id}" in r.stdout
    assert runner.wait(10) == 3  # EXIT_PAUSED
    before = _done(paths.journal)
    st = replay(paths.journal, 40)
    assert st.state == "paused" and 6 <= st.completed < 40 and st.completed == len(before)
    processed_before = len(seen.read_text().splitlines())
    assert processed_before == len(before), "a pause lets in-flight items finish and journals them"

    full_speed(home)
    r = run(home, "resume", paths.id, "-w", "2", *NOSPACE)
    assert r.returncode == 0, r.stdout + r.stderr
    after_lines = seen.read_text().splitlines()[processed_before:]
    after = {int(os.path.basename(p)[3:6]) for p in after_lines}
    assert len(after_lines) == len(after) and after == set(range(40)) - before
    assert replay(paths.journal, 40).completed == 40


def test_pause_now_abandons_in_flight_items_which_stay_pending(slow_batch):
    home, paths, _ = slow_batch
    runner = spawn(home, "resume", paths.id, "-w", "2", *NOSPACE)
    wait_for(lambda: len(_done(paths.journal)) >= 2, what="2 items done")
    assert run(home, "pause", paths.id, "--now").returncode == 0
    assert runner.wait(10) == 3
    st = replay(paths.journal, 40)
    assert st.state == "paused" and st.failed == 0 and st.completed + st.remaining == 40
    full_speed(home)
    assert run(home, "resume", paths.id, *NOSPACE).returncode == 0
    assert replay(paths.journal, 40).completed == 40


def test_pause_without_runner_and_invalid_transitions(slow_batch):
    home, paths, _ = slow_batch
    r = run(home, "pause", paths.id)  # pending, no runner: marked paused here
    assert r.returncode == 0 and f"resume with: batchcli resume {paths.id}" in r.stdout
    assert replay(paths.journal, 40).state == "paused"
    assert run(home, "pause", paths.id).returncode == 0  # already paused: says so, changes nothing
    assert run(home, "cancel", paths.id).returncode == 0
    st = replay(paths.journal, 40)
    assert st.state == "cancelled" and st.skipped == 40
    for cmd in ("pause", "cancel", "resume"):
        r = run(home, cmd, paths.id)
        assert r.returncode == 2 and "cancelled" in r.stderr, (cmd, r.stderr)


def test_cancel_a_running_batch_through_its_runner(slow_batch):
    home, paths, _ = slow_batch
    runner = spawn(home, "resume", paths.id, "-w", "2", *NOSPACE)
    wait_for(lambda: len(_done(paths.journal)) >= 3, what="3 items done")
    r = run(home, "cancel", paths.id, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "cancelled"
    assert runner.wait(10) == 4  # EXIT_CANCELLED
    st = replay(paths.journal, 40)
    assert st.state == "cancelled" and st.completed + st.skipped == 40 and st.remaining == 0


def test_second_runner_refuses_fast_and_lock_passes_on_after_sigkill(slow_batch):
    from filelock import FileLock

    from batchcli.engine.runner import Runner, RunOptions
    from batchcli.errors import BatchLocked

    home, paths, _ = slow_batch
    first = spawn(home, "resume", paths.id, "-w", "1", *NOSPACE)
    wait_for(lambda: (runner_alive(paths) or {}).get("pid") == first.pid, what="first runner to hold the lock")
    t0 = time.monotonic()
    with pytest.raises(BatchLocked, match=f"pid {first.pid}"):
        Runner(paths, RunOptions()).run(resume=True)
    engine_refused = time.monotonic() - t0
    t0 = time.monotonic()
    r = run(home, "resume", paths.id, *NOSPACE)
    cli_refused = time.monotonic() - t0
    assert r.returncode == 2 and f"pid {first.pid}" in r.stderr
    assert engine_refused < 1.0
    assert cli_refused < 5.0  # a whole CLI process: interpreter start-up on a loaded 2-core machine

    # it holds the lock before it writes to the journal: killed in between, it left nothing to note
    wait_for(lambda: any(r["type"] == "batch_started" for r in records(paths.journal)),
             what="first runner to start the batch")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    t0 = time.monotonic()
    lock = FileLock(paths.lock)
    lock.acquire(timeout=1.0)  # the kernel released the dead holder's lock
    freed = time.monotonic() - t0
    lock.release()
    t0 = time.monotonic()
    second = spawn(home, "resume", paths.id, "-w", "2", *NOSPACE)
    wait_for(lambda: (runner_alive(paths) or {}).get("pid") == second.pid, timeout=10, what="second runner")
    took = time.monotonic() - t0
    full_speed(home)
    print(f"\nlock: refused in {engine_refused * 1000:.1f} ms (engine), {cli_refused:.2f} s (CLI process); "
          f"free {freed * 1000:.1f} ms after SIGKILL; a new runner process held it after {took:.2f} s")
    assert freed < 1.0
    assert second.wait(60) == 0
    kinds = [r["type"] for r in records(paths.journal)]
    assert "batch_interrupted" in kinds  # the new runner noted the dead one


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_pauses_after_in_flight_items(slow_batch, sig, code):
    home, paths, _ = slow_batch
    runner = spawn(home, "resume", paths.id, "-w", "2", *NOSPACE)
    wait_for(lambda: len(_done(paths.journal)) >= 2, what="2 items done")
    runner.send_signal(sig)
    assert runner.wait(10) == code
    st = replay(paths.journal, 40)
    assert st.state == "paused" and st.failed == 0 and "interrupted by" in (st.reason or "")
    full_speed(home)
    assert run(home, "resume", paths.id, *NOSPACE).returncode == 0
    assert replay(paths.journal, 40).completed == 40


def test_sigterm_to_the_whole_process_group_pauses_too(slow_batch):
    """`timeout` and a systemd stop send SIGTERM to every process of the group, the fork server
    and the workers too: the batch still pauses after its in-flight items (exit 143)."""
    import subprocess
    import sys

    from crashops import cli_env

    home, paths, _ = slow_batch
    runner = subprocess.Popen([sys.executable, "-m", "batchcli", "resume", paths.id, "-w", "2", *NOSPACE],
                              env=cli_env(home), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for(lambda: len(_done(paths.journal)) >= 2, what="2 items done")
    before = len(_done(paths.journal))
    runner.send_signal(signal.SIGTERM)  # as `timeout` does: the command, then its whole group
    os.killpg(runner.pid, signal.SIGTERM)
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 143, err
    st = replay(paths.journal, 40)
    assert st.state == "paused" and st.failed == 0 and "interrupted by SIGTERM" in (st.reason or ""), err
    assert st.completed > before  # the items in the workers' hands were finished, not lost with them
    full_speed(home)
    assert run(home, "resume", paths.id, *NOSPACE).returncode == 0
    assert replay(paths.journal, 40).completed == 40


def test_fingerprint_change_refused_unless_forced(tmp_path):
    make_pngs(tmp_path / "in", 4)
    home = tmp_path / "home"
    paths = create(home, [tmp_path / "in"], tmp_path / "out", "resize 32x32")
    man = paths.load_manifest()
    man["options"]["max_pixels"] = 10_000_000  # what the code would run now differs from the header
    paths.write_manifest(man)
    r = run(home, "resume", paths.id, *NOSPACE)
    assert r.returncode == 2 and "--force" in r.stderr and "changed" in r.stderr
    assert run(home, "resume", paths.id, "--detach").returncode == 2  # refused before detaching too
    r = run(home, "resume", paths.id, "--force", *NOSPACE)
    assert r.returncode == 0, r.stderr
    assert any(r.get("forced") for r in records(paths.journal))


def test_changed_inputs_are_reprocessed_once_and_repair_redoes_bad_outputs(tmp_path):
    import hashlib

    src = make_pngs(tmp_path / "in", 6)
    home, out = tmp_path / "home", tmp_path / "out"
    paths = create(home, [tmp_path / "in"], out, "resize 32x32")
    assert run(home, "resume", paths.id, *NOSPACE).returncode == 0
    make_pngs(tmp_path / "other", 8)
    os.replace(tmp_path / "other" / "img007.png", src[2])  # new content, size and mtime
    r = run(home, "resume", paths.id, *NOSPACE)
    assert r.returncode == 0, r.stderr
    recs = records(paths.journal)
    assert [r["i"] for r in recs if r.get("type") == "item_completed"][6:] == [2]
    assert run(home, "resume", paths.id, *NOSPACE).returncode == 2  # nothing changed now: nothing to do

    (out / "img000.png").unlink()
    (out / "img001.png").write_bytes(b"tampered")
    assert run(home, "resume", paths.id, *NOSPACE).returncode == 2
    r = run(home, "resume", paths.id, "--repair", *NOSPACE)
    assert r.returncode == 0, r.stderr
    last = {}
    for rec in records(paths.journal):
        if rec.get("type") == "item_completed":
            last[rec["i"]] = rec
    # the two repaired items, in whichever order the two workers finished them
    assert sorted([r["i"] for r in records(paths.journal) if r.get("type") == "item_completed"][7:]) == [0, 1]
    for i in (0, 1):
        assert hashlib.sha256((out / last[i]["out"]).read_bytes()).hexdigest() == last[i]["sha256"]


def test_a_follower_stops_when_nobody_reads_it_and_the_batch_goes_on(tmp_path):
    """`status --follow | head -1`: once the pipe is closed the follower exits (141, as a writer a
    closed pipe ends), instead of following to the end of a batch that may run for hours."""
    import subprocess
    import sys

    from crashops import cli_env

    make_pngs(tmp_path / "in", 40)
    home = tmp_path / "home"
    r = run(home, "start", tmp_path / "in", "--out", tmp_path / "out", "-p", "crashtest delay=0.2 | convert png",
            "-w", "1", "--detach", *NOSPACE)
    assert r.returncode == 0, r.stderr
    bid = r.stdout.strip()
    f = subprocess.Popen([sys.executable, "-m", "batchcli", "status", bid, "--follow", "--json"], env=cli_env(home),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert json.loads(f.stdout.readline())["type"] == "progress"
        f.stdout.close()  # what `| head -1` does after its line
        assert f.wait(timeout=30) == 141
        assert b"Traceback" not in f.stderr.read()
        s = json.loads(run(home, "status", bid, "--json").stdout)
        assert s["status"] == "running" and s["remaining"] > 0  # the batch is not the follower's to stop
    finally:
        if f.poll() is None:
            f.kill()
        run(home, "cancel", bid)


def test_start_detach_returns_at_once_and_follow_streams_to_the_end(tmp_path):
    make_pngs(tmp_path / "in", 30)
    home = tmp_path / "home"
    t0 = time.monotonic()
    r = run(home, "start", tmp_path / "in", "--out", tmp_path / "out", "-p", "crashtest delay=0.03 | convert png",
            "-w", "2", "--detach", *NOSPACE)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    bid = r.stdout.strip()
    assert len(bid.splitlines()) == 1 and took < 5
    f = run(home, "status", bid, "--follow", "--json")
    assert f.returncode == 0, f.stderr
    events = [json.loads(line) for line in f.stdout.splitlines()]
    assert {e["type"] for e in events} <= {"progress", "item_failed", "finished"}
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "completed"
    assert events[-1]["completed"] == 30
    paths_dir = home / "batches" / bid
    kinds = [r["type"] for r in records(paths_dir / "journal.jsonl")]
    assert kinds.count("batch_started") == 1 and "batch_resumed" not in kinds
    log = (paths_dir / "log.txt").read_text()
    assert "detached start" in log and "completed" in log


def test_a_lock_probe_from_another_shell_does_not_stop_a_runner_from_starting(tmp_path):
    """`status` and friends take the batch lock for a few microseconds to see whether a runner
    holds it; a runner (or a resume) starting at that moment waits for it instead of refusing."""
    import threading

    from filelock import FileLock

    make_pngs(tmp_path / "in", 4)
    home = tmp_path / "home"
    paths = create(home, [tmp_path / "in"], tmp_path / "out", "convert png")
    probe = FileLock(paths.lock, thread_local=False)  # released by the timer thread
    probe.acquire()  # a probe caught in the act (held far longer than a real one, to be sure)
    threading.Timer(0.2, probe.release).start()
    r = run(home, "resume", paths.id, *NOSPACE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert replay(paths.journal, 4).completed == 4


def test_the_batch_lock_and_filelock_s_exclude_each_other(tmp_path):
    """The runner's lock (liveness.FileLock, without importing filelock) is the flock filelock
    takes: commands that lock with filelock and the runner never both hold a batch; a lock not
    given up in time says so with TimeoutError."""
    from filelock import FileLock as Theirs
    from filelock import Timeout

    from batchcli.engine.liveness import FileLock

    path = str(tmp_path / "runner.lock")
    ours, theirs = FileLock(path), Theirs(path)
    with ours:
        with pytest.raises(Timeout):
            theirs.acquire(timeout=0.1)
    with theirs:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            ours.acquire(timeout=0.2)
        assert 0.15 < time.monotonic() - t0 < 2.0
    ours.acquire(timeout=0)  # taken once filelock's holder let go
    with pytest.raises(Timeout):
        Theirs(path).acquire(timeout=0)
    ours.release()
    Theirs(path).acquire(timeout=0)  # free again
    assert os.path.exists(path)  # the file stays, as filelock leaves it


def _tree(folder) -> dict[str, tuple[int, int]]:
    return {os.path.relpath(os.path.join(d, n), folder): (os.stat(os.path.join(d, n)).st_size,
                                                          os.stat(os.path.join(d, n)).st_mtime_ns)
            for d, _, names in os.walk(folder) for n in names}


@pytest.mark.parametrize("lost", ["journal.jsonl", "manifest.json", "items.jsonl"])
def test_every_command_refuses_a_damaged_batch_and_writes_nothing_into_it(tmp_path, lost):
    make_pngs(tmp_path / "in", 3)
    home = tmp_path / "home"
    r = run(home, "start", tmp_path / "in", "--out", tmp_path / "out", "--pipeline", "convert png", "-w", "1",
            "--name", "d", *NOSPACE)
    assert r.returncode == 0, r.stderr
    bid = os.listdir(home / "batches")[0]
    batch = home / "batches" / bid
    (batch / lost).unlink()
    before = _tree(batch)
    want = (f"Error: batch {bid} is damaged (missing {lost}); remove it with: "
            "batchcli cleanup --status damaged --older-than 0s")
    for args in (["resume"], ["pause"], ["cancel"], ["verify"], ["priority", "5"],
                 ["export", "--zip", tmp_path / "x.zip"], ["export", "--manifest", tmp_path / "x.csv"]):
        r = run(home, args[0], bid, *args[1:])
        assert (r.returncode, r.stderr.strip(), r.stdout) == (2, want, ""), args
    assert _tree(batch) == before
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "x.csv").exists()
    r = run(home, "status", bid)
    assert r.returncode == 0 and f"damaged - missing {lost}" in r.stdout


def test_a_detached_start_overtaken_by_a_pause_reports_the_batch_not_an_error(tmp_path):
    """`start --detach` then, at once, `pause`: the pause can reach the new batch before its
    runner does. The runner leaves it paused (as asked); the start still gives the batch, exit 0."""
    from batchcli.engine.runner import RunOptions
    from batchcli.engine.spawn import spawn_detached

    make_pngs(tmp_path / "in", 4)
    home = tmp_path / "home"
    paths = create(home, [tmp_path / "in"], tmp_path / "out", "convert png")
    r = run(home, "pause", paths.id)
    assert r.returncode == 0, r.stderr
    pid = spawn_detached(paths, RunOptions(workers=1, min_free_space=0), str(home))
    assert isinstance(pid, int)
    wait_for(lambda: not runner_alive(paths), what="the runner gone")
    assert replay(paths.journal, 4).state == "paused"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_pause_run_just_after_a_background_start_finds_its_batch(tmp_path):
    """`batchcli start ... &` then, 0.2 s later, `pause NAME`: the batch folder did not exist yet,
    and the answer was 'no batches'."""
    make_pngs(tmp_path / "in", 6)
    home = tmp_path / "home"
    proc = spawn(home, "start", tmp_path / "in", "--out", tmp_path / "out", "--name", "bg", "-w", "1", *NOSPACE,
                 "-p", "crashtest delay=0.2 | convert png", log=tmp_path / "start.log")
    try:
        time.sleep(0.2)
        r = run(home, "pause", "bg")
        assert r.returncode == 0 and ": paused (" in r.stdout, r.stdout + r.stderr
    finally:
        assert proc.wait(60) == 3, (tmp_path / "start.log").read_text()


@pytest.mark.parametrize("command", ["pause", "cancel", "status"])
def test_a_command_waits_for_a_batch_still_being_created(tmp_path, command):
    """Its inputs still being read (a list on stdin, not yet closed): the command waits for the
    batch to be whole (at most 5 s from when its start began) instead of answering that no batch
    matches."""
    import subprocess
    import sys

    from crashops import cli_env

    make_pngs(tmp_path / "in", 3)
    home = tmp_path / "home"
    start = subprocess.Popen([sys.executable, "-m", "batchcli", "start", "-", "--out", str(tmp_path / "out"),
                              "--name", "bg", "-w", "1", *NOSPACE, "-p", "crashtest delay=0.3 | convert png"],
                             env=cli_env(home), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        start.stdin.write(f"{tmp_path / 'in' / 'img000.png'}\n".encode())
        start.stdin.flush()
        wait_for(lambda: (home / "batches").is_dir() and any((home / "batches").iterdir()), what="the batch folder")
        asked = subprocess.Popen([sys.executable, "-m", "batchcli", command, *(["bg"] if command != "status" else ["--json"])],
                                 env=cli_env(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        time.sleep(0.5)
        assert asked.poll() is None, asked.communicate()  # waiting, not 'no batch matches'
        start.stdin.write(f"{tmp_path / 'in' / 'img001.png'}\n{tmp_path / 'in' / 'img002.png'}\n".encode())
        start.stdin.close()  # discovery ends: the batch is whole
        out, err = asked.communicate(timeout=60)
        assert asked.returncode == 0, err
        if command == "status":
            assert (json.loads(out)["name"], json.loads(out)["total"]) == ("bg", 3)
        else:
            assert {"pause": ": paused (", "cancel": ": cancelled ("}[command] in out, out
    finally:
        if not start.stdin.closed:
            start.stdin.close()
        start.wait(60)
    assert start.returncode == {"pause": 3, "cancel": 4, "status": 0}[command], start.stderr.read()


def test_a_batch_being_created_for_long_is_named_not_waited_for(tmp_path):
    """Its start began over 5 s ago (a long discovery): the command answers at once, naming it."""
    import subprocess
    import sys

    from crashops import cli_env

    make_pngs(tmp_path / "in", 1)
    home = tmp_path / "home"
    start = subprocess.Popen([sys.executable, "-m", "batchcli", "start", "-", "--pipeline", "analyze", "--name", "bg"],
                             env=cli_env(home), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        marker = wait_for(lambda: next((home / "batches").glob("*/creating"), None) if (home / "batches").is_dir() else None,
                          what="the batch being created")
        os.utime(marker, (time.time() - 10, time.time() - 10))
        r = run(home, "pause", "bg")
        assert r.returncode == 2 and r.stderr == (
            f"Error: no batches in {home} (start one with 'batchcli start'); batch "
            f"{marker.parent.name} is still being created (its inputs are being read): try again once it is\n")
    finally:
        start.stdin.write(f"{tmp_path / 'in' / 'img000.png'}\n".encode())
        start.stdin.close()
        assert start.wait(60) == 0


def test_a_start_that_fails_its_checks_leaves_no_batch_folder(tmp_path):
    make_pngs(tmp_path / "in", 1)
    home = tmp_path / "home"
    r = run(home, "start", tmp_path / "in", "--out", tmp_path / "out", "--name", "bad", "-p", "resize nope")
    assert r.returncode == 2 and r.stderr.startswith("Error: ")
    assert run(home, "start", "--help").returncode == 0 and run(home, "start", "--no-such-flag").returncode == 2
    assert not home.exists()  # not even the home the early batch folder went in


def test_resume_detach_of_a_completed_batch_is_refused_every_time_unless_an_input_changed(tmp_path):
    """It exited 0 about 6 times in 10 (the child took the lock before it found nothing to do)."""
    make_pngs(tmp_path / "in", 3)
    home = tmp_path / "home"
    r = run(home, "start", tmp_path / "in", "--out", tmp_path / "out", "-p", "convert png", "--name", "done", *NOSPACE)
    assert r.returncode == 0, r.stderr
    from batchcli.engine.lifecycle import check_resumable
    from batchcli.engine.store import Store
    from batchcli.errors import InvalidTransition

    with pytest.raises(InvalidTransition, match="is completed; nothing to resume"):
        check_resumable(Store(str(home)).resolve("done"))  # before any child is started: no race
    check_resumable(Store(str(home)).resolve("done"), rerun=True)  # --retry-failed, --repair: allowed
    for _ in range(3):
        r = run(home, "resume", "done", "--detach")
        assert r.returncode == 2 and "is completed; nothing to resume" in r.stderr, r.stdout + r.stderr
    src = tmp_path / "in" / "img001.png"
    os.utime(src, (time.time() + 5, time.time() + 5))  # an input changed since: that item is redone
    r = run(home, "resume", "done", "--detach")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    f = run(home, "status", "done", "--follow", "--json")
    assert json.loads(f.stdout.splitlines()[-1])["status"] == "completed", f.stdout


def test_the_batches_folder_deleted_while_a_batch_runs_fails_it_with_the_reason(tmp_path):
    """It ran on into a journal nobody could read and ended 'completed' (exit 0) with no record
    of the batch left anywhere."""
    import shutil
    import subprocess
    import sys

    from crashops import cli_env

    make_pngs(tmp_path / "in", 8)
    home, out, hold = tmp_path / "home", tmp_path / "out", tmp_path / "hold"
    hold.touch()  # img004 waits while it exists: the batch cannot end before the folder goes
    p = subprocess.Popen([sys.executable, "-m", "batchcli", "start", str(tmp_path / "in"), "--out", str(out), "-w", "1",
                          "--min-free-space", "0", "-p", f"crashtest hold={hold} match=img004 | convert png"],
                         env=cli_env(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: out.is_dir() and len(list(out.iterdir())) >= 4, what="four outputs")
        shutil.rmtree(home / "batches")
    finally:
        hold.unlink()
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 1, stdout + stderr
    line = next(s for s in stdout.splitlines() if ": failed (" in s)
    assert line.endswith("was deleted (or moved) while the batch ran, its journal with it: nothing of this run "
                         "could be recorded)"), stdout
    assert "completed" not in line and "resume with" not in stdout and "Traceback" not in stderr
    assert len(list(out.iterdir())) >= 4  # the outputs written stay


def test_an_output_folder_deleted_while_the_batch_runs_pauses_it_with_the_reason(tmp_path):
    """It went on into a folder the workers made again and ended 'completed' with the first
    outputs gone."""
    import shutil
    import subprocess
    import sys

    from crashops import cli_env

    make_pngs(tmp_path / "in", 30)
    home, out, slow = tmp_path / "home", tmp_path / "out", tmp_path / "slow"
    slow.touch()
    p = subprocess.Popen([sys.executable, "-m", "batchcli", "start", str(tmp_path / "in"), "--out", str(out), "-w", "1",
                          "--min-free-space", "0", "-p", f"crashtest delay=0.2 slow={slow} | convert png", "--json"],
                         env=cli_env(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: out.is_dir() and len(list(out.iterdir())) >= 2, what="two outputs")
    shutil.rmtree(out)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 3, stderr
    end = json.loads(stdout.strip().splitlines()[-1])
    assert end["status"] == "paused" and f"the output folder {out} was deleted" in end["reason"], end
    assert end["remaining"] > 0
    bid = json.loads(stdout.strip().splitlines()[0])["batch_id"]
    slow.unlink()
    assert run(home, "verify", bid, "--repair").returncode == 1  # the lost ones, re-queued
    r = run(home, "resume", bid, *NOSPACE)
    assert r.returncode == 0, r.stderr
    assert len(list(out.iterdir())) == 30 and run(home, "verify", bid).returncode == 0
