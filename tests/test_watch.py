"""watch: a hot folder as one long-lived batch. Files written slowly are taken only once complete,
a SIGKILLed watcher comes back with `recover --resume` and picks up what landed meanwhile, a
changed file is redone, and pause / cancel work as for any batch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import cv2
import pytest
from conftest import make_image
from crashops import records, run, spawn, wait_for

FLAGS = ("-w", "1", "--min-free-space", "0")


def _batch(home):
    return wait_for(lambda: next((home / "batches").glob("*/journal.jsonl"), None), what="the batch").parent


def _completed(batch) -> dict[int, dict]:
    return {r["i"]: r for r in records(batch / "journal.jsonl") if r.get("type") == "item_completed"}


def _write_slowly(path, data: bytes, pieces: int, pause: float) -> None:
    step = len(data) // pieces + 1
    with open(path, "wb") as fh:
        for k in range(0, len(data), step):
            fh.write(data[k:k + step])
            fh.flush()
            time.sleep(pause)


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "poll"])
def test_slowly_written_files_are_taken_once_complete(tmp_path, poll):
    home, hot, out, seen = tmp_path / "home", tmp_path / "hot", tmp_path / "out", tmp_path / "seen.log"
    make_image(hot / "there.png", 64, 48, seed=1)  # there before the watch starts
    runner = spawn(home, "watch", hot, "--out", out, "-p", f"crashtest log={seen} | convert png", *FLAGS,
                   "--settle", "0.6s", *(["--poll"] if poll else []), log=tmp_path / "watch.log")
    try:
        batch = _batch(home)
        wait_for(lambda: (out / "there.png").is_file(), what="the file already there")
        big = make_image(tmp_path / "big.png", 640, 480, seed=2).read_bytes()
        (hot / "sub").mkdir()
        _write_slowly(hot / "sub" / "slow.png", big, pieces=5, pause=0.25)  # 1.25 s, each pause < settle
        shutil.copy(tmp_path / "big.png", hot / "copied.png")
        wait_for(lambda: (out / "sub" / "slow.png").is_file() and (out / "copied.png").is_file(), timeout=30,
                 what="both outputs")
        img = cv2.imread(str(out / "sub" / "slow.png"))
        assert img is not None and img.shape[:2] == (480, 640)  # the whole image, never a half-written one
        wait_for(lambda: len(_completed(batch)) == 3, what="the three journaled")  # a moment after the files
        processed = seen.read_text().splitlines()
        assert sorted(os.path.basename(p) for p in processed) == ["copied.png", "slow.png", "there.png"]
        assert not [r for r in records(batch / "journal.jsonl") if r.get("type") == "item_failed"]
        s = json.loads(run(home, "status", "--json").stdout)
        assert (s["status"], s["total"], s["completed"]) == ("running", 3, 3)
        assert run(home, "pause", batch.name).returncode == 0
        assert runner.wait(20) == 3
    finally:
        if runner.poll() is None:
            runner.kill()
    s = json.loads(run(home, "status", "--json").stdout)
    assert (s["status"], s["total"], s["completed"], s["remaining"]) == ("paused", 3, 3, 0)


def test_sigkill_then_recover_resume_picks_up_what_landed_meanwhile(tmp_path):
    home, hot, out = tmp_path / "home", tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    runner = spawn(home, "watch", hot, "--out", out, "-p", "convert png", *FLAGS, "--settle", "0.3s")
    try:
        batch = _batch(home)
        make_image(hot / "a.png", seed=1)
        wait_for(lambda: 0 in _completed(batch), what="a.png done")
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    finally:
        if runner.poll() is None:
            runner.kill()
    make_image(hot / "b.png", seed=2)  # lands while nobody watches
    s = json.loads(run(home, "status", "--json").stdout)
    assert s["status"] == "interrupted"
    r = run(home, "recover", "--resume")
    assert r.returncode == 0, r.stderr
    try:
        wait_for(lambda: (out / "b.png").is_file(), what="b.png, landed while the watcher was dead")
        make_image(hot / "c.png", seed=3)
        wait_for(lambda: (out / "c.png").is_file(), what="c.png, after the resume")
        first = (out / "a.png").read_bytes()
        make_image(hot / "a.png", 80, 60, seed=9)  # a.png written again: redone
        def redone() -> bool:  # journaled too (group commit: a moment after the file is there)
            done_a = [r for r in records(batch / "journal.jsonl") if r.get("type") == "item_completed" and r["i"] == 0]
            return len(done_a) == 2 and (out / "a.png").read_bytes() != first

        wait_for(redone, what="a.png redone")
        assert cv2.imread(str(out / "a.png")).shape[:2] == (60, 80)
        done = _completed(batch)
        assert sorted(done) == [0, 1, 2]
        requeued = [r for r in records(batch / "journal.jsonl") if r.get("type") == "items_requeued"]
        assert [r["items"] for r in requeued] == [[0]] and requeued[0]["reason"] == "changed"
    finally:
        r = run(home, "cancel", batch.name)
    assert r.returncode == 0, r.stderr
    s = json.loads(run(home, "status", "--json").stdout)
    assert (s["status"], s["total"], s["completed"]) == ("cancelled", 3, 3)
    kinds = [r["type"] for r in records(batch / "journal.jsonl") if r.get("type", "").startswith("batch_")]
    assert kinds[:3] == ["batch_started", "batch_interrupted", "batch_paused"] and "batch_resumed" in kinds


@pytest.mark.parametrize("args, message", [
    (("notes.txt",), "not a folder (watch takes folders)"),
    (("--from-file", "list.txt"), "watch takes folders, not lists"),
    (("hot", "--settle", "soon"), "--settle 'soon'"),
])
def test_bad_watch_arguments_are_usage_errors(tmp_path, args, message):
    (tmp_path / "hot").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "list.txt").write_text("x")
    r = run(tmp_path / "home", "watch", *[str(tmp_path / a) if a in ("notes.txt", "hot", "list.txt") else a for a in args],
            "--out", tmp_path / "out", "-p", "convert png")
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_json_events_ctrl_c_and_a_detached_resume(tmp_path):
    home, hot, out, log = tmp_path / "home", tmp_path / "hot", tmp_path / "out", tmp_path / "events.ndjson"
    hot.mkdir()
    note = tmp_path / "finished.txt"
    runner = spawn(home, "watch", hot, "--out", out, "-p", "convert png", *FLAGS, "--settle", "0.3s", "--json",
                   "--on-finish", f'echo "$BATCHCLI_STATUS $BATCHCLI_EXIT_CODE" >> {note}', log=log)
    try:
        batch = _batch(home)
        make_image(hot / "a.png", seed=1)
        wait_for(lambda: (out / "a.png").is_file(), what="a.png")
        time.sleep(2.5)  # waiting for files: no progress event twice a second that says nothing new
        runner.send_signal(signal.SIGINT)
        assert runner.wait(20) == 130
    finally:
        if runner.poll() is None:
            runner.kill()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[0]["type"] == "started" and events[-1]["type"] == "paused" and events[-1]["completed"] == 1
    done = [e for e in events if e["type"] == "progress" and e["completed"] == 1]
    assert 1 <= len(done) <= 2, done  # once the count changed (and perhaps once more as a.png's result came)
    assert note.read_text().split() == ["paused", "130"]  # a watch ends by pausing: --on-finish runs then
    r = run(home, "resume", batch.name, "--detach")
    assert r.returncode == 0 and r.stdout.strip() == batch.name
    make_image(hot / "b.png", seed=2)
    wait_for(lambda: (out / "b.png").is_file(), what="b.png, under the detached runner")
    assert run(home, "pause", batch.name).returncode == 0
    s = json.loads(run(home, "status", "--json").stdout)
    assert (s["status"], s["completed"], s["runner_pid"]) == ("paused", 2, None)


def test_watch_detach_prints_the_batch_id_alone(tmp_path):
    home, hot, out = tmp_path / "home", tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    r = run(home, "watch", hot, "--out", out, "-p", "convert png", *FLAGS, "--settle", "0.3s", "--detach")
    assert r.returncode == 0, r.stderr
    batch_id = r.stdout.strip()
    assert (home / "batches" / batch_id).is_dir()  # scripts capture it: BATCH=$(batchcli watch ... --detach)
    try:
        make_image(hot / "a.png", seed=1)
        wait_for(lambda: (out / "a.png").is_file(), what="a.png, under the detached watcher")
    finally:
        r = run(home, "cancel", batch_id)
    assert r.returncode == 0, r.stderr


def test_a_landed_file_is_processed_once_even_when_the_journal_is_slow(tmp_path):
    """The run's own list of pending items is first read after a file landed: the file must come
    from the hot folder alone (a slow disk widens the moment where both offered it)."""
    home, hot, out, seen = tmp_path / "home", tmp_path / "hot", tmp_path / "out", tmp_path / "seen.log"
    hot.mkdir()
    runner = spawn(home, "watch", hot, "--out", out, "-p", f"crashtest log={seen} | convert png", *FLAGS,
                   "--settle", "0.1s", env={"BATCHCLI_TEST_SYNC_LOG": str(tmp_path / "syncs.log"),
                                            "BATCHCLI_TEST_SYNC_DELAY": "0.2"})
    try:
        batch = _batch(home)
        for k, name in enumerate(("a.png", "b.png")):
            make_image(hot / name, seed=k)
            wait_for(lambda: k in _completed(batch), what=f"{name} journaled")
        assert run(home, "pause", batch.name).returncode == 0
        assert runner.wait(20) == 3
    finally:
        if runner.poll() is None:
            runner.kill()
    assert sorted(os.path.basename(p) for p in seen.read_text().splitlines()) == ["a.png", "b.png"]
    done = [r["i"] for r in records(batch / "journal.jsonl") if r.get("type") == "item_completed"]
    assert sorted(done) == [0, 1]


def _runner_pid(home) -> int | None:
    return json.loads(run(home, "status", "--json").stdout)["runner_pid"]


def test_a_watch_killed_while_idle_comes_back_with_recover_resume(tmp_path):
    """Started on an empty folder, then resumed with nothing pending: SIGKILLed while idle each
    time, it is interrupted, and `recover --resume` watches again."""
    home, hot, out, log = tmp_path / "home", tmp_path / "hot", tmp_path / "out", tmp_path / "events.ndjson"
    hot.mkdir()
    runner = spawn(home, "watch", hot, "--out", out, "-p", "convert png", *FLAGS, "--settle", "0.3s", "--json", log=log)
    try:
        batch = _batch(home)
        wait_for(lambda: log.is_file() and '"started"' in log.read_text(), what="the watch to start")
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert json.loads(run(home, "status", "--json").stdout)["status"] == "interrupted"
    r = run(home, "recover", "--resume", "--json")  # nothing landed: resumed with nothing pending
    assert r.returncode == 0 and json.loads(r.stdout)["recovered_count"] == 1, r.stdout + r.stderr
    wait_for(lambda: [x["type"] for x in records(batch / "journal.jsonl")].count("batch_resumed") == 1,
             what="the resumed watch to run")
    pid = wait_for(lambda: _runner_pid(home), what="the resumed runner's pid")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: json.loads(run(home, "status", "--json").stdout)["status"] == "interrupted",
             what="the killed idle watch to read interrupted")
    make_image(hot / "a.png", seed=1)  # lands while nobody watches
    r = run(home, "recover", "--resume", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["recovered_count"] == 1, r.stdout + r.stderr
    try:
        wait_for(lambda: (out / "a.png").is_file(), what="a.png, landed while the watcher was dead")
        make_image(hot / "b.png", seed=2)
        wait_for(lambda: (out / "b.png").is_file(), what="b.png, after the resume")
    finally:
        assert run(home, "cancel", batch.name).returncode == 0


def test_a_watched_folder_deleted_as_the_watch_starts_is_waited_for_not_an_error(tmp_path):
    """The walk a second after the start (for files that landed as the watcher started) met the
    deleted folder and ended the watch with 'no such file or folder'."""
    home, hot, out = tmp_path / "home", tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    runner = spawn(home, "watch", hot, "--out", out, "-p", "convert png", *FLAGS, "--settle", "0.3s",
                   log=tmp_path / "watch.log")
    try:
        batch = _batch(home)
        shutil.rmtree(hot)  # before the walk of the first second
        time.sleep(2.0)
        assert runner.poll() is None, (tmp_path / "watch.log").read_text()
        hot.mkdir()
        make_image(hot / "late.png", seed=3)
        wait_for(lambda: (out / "late.png").is_file(), timeout=40, what="a file in the folder made again")
        assert run(home, "pause", batch.name).returncode == 0
        assert runner.wait(20) == 3
    finally:
        if runner.poll() is None:
            runner.kill()
    assert "no such file or folder" not in (tmp_path / "watch.log").read_text()


def test_a_watched_folder_deleted_and_made_again_is_watched_again(tmp_path):
    home, hot, out = tmp_path / "home", tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    make_image(hot / "a.png", seed=1)
    runner = spawn(home, "watch", hot, "--out", out, "-p", "convert png", *FLAGS, "--settle", "0.3s",
                   log=tmp_path / "watch.log")  # inotify
    try:
        batch = _batch(home)
        wait_for(lambda: (out / "a.png").is_file(), what="a.png")
        shutil.rmtree(hot)
        wait_for(lambda: "is gone" in (tmp_path / "watch.log").read_text(), what="the watcher to see it gone")
        hot.mkdir()
        make_image(hot / "early.png", seed=2)  # lands before the folder is watched again: found by a walk
        wait_for(lambda: "made again" in (tmp_path / "watch.log").read_text(), what="the watcher to see it back")
        time.sleep(1.5)  # (the walk comes a second after)
        make_image(hot / "late.png", seed=3)  # lands once it is watched again
        wait_for(lambda: (out / "early.png").is_file() and (out / "late.png").is_file(), timeout=40,
                 what="files in the folder made again")
        assert run(home, "pause", batch.name).returncode == 0
        assert runner.wait(20) == 3
    finally:
        if runner.poll() is None:
            runner.kill()
    assert "watching it again" in (tmp_path / "watch.log").read_text()


def _fail_then_stop(runner, batch, junk, failures: int) -> None:
    """Drop a file that is no image into the watched folder, wait for the batch's `failures`-th
    failure, then SIGTERM the watch (exit 143)."""
    try:
        junk.write_text(f"junk {failures}")
        wait_for(lambda: sum(r.get("type") == "item_failed" for r in records(batch / "journal.jsonl")) == failures,
                 what=f"{junk.name} failed")
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(20) == 143
    finally:
        if runner.poll() is None:
            runner.kill()


def test_a_watch_s_pause_names_the_top_failure_reasons(tmp_path):
    home, hot, out, log = tmp_path / "home", tmp_path / "hot", tmp_path / "out", tmp_path / "watch.log"
    hot.mkdir()
    runner = spawn(home, "watch", hot, "--out", out, "-p", "convert png", *FLAGS, "--settle", "0.3s", log=log)
    batch = _batch(home)
    _fail_then_stop(runner, batch, hot / "bad.png", 1)
    text = log.read_text()
    assert "top failure reasons:" in text and "not an image" in text.split("top failure reasons:")[1], text
    events = tmp_path / "events.ndjson"
    again = spawn(home, "resume", batch.name, *FLAGS, "--json", log=events)
    wait_for(lambda: events.is_file() and '"started"' in events.read_text(), what="the resume")
    _fail_then_stop(again, batch, hot / "worse.png", 2)
    paused = [json.loads(line) for line in events.read_text().splitlines() if '"paused"' in line][-1]
    status = json.loads(run(home, "status", "--json").stdout)
    assert paused["failed"] == 2 and paused["top_failures"] == status["top_failures"] != [], (paused, status)
    assert sum(t["count"] for t in paused["top_failures"]) == 2
