"""kill -9 the runner at random moments, `recover` + `resume` each time: nothing lost, nothing twice.

Kill moments are chosen by watching the journal grow to a random number of records, never by
sleeping. The figures (kills survived, items redone per kill) are printed: `pytest -s` shows them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
from collections import Counter

import psutil
import pytest
from crashops import create, line_count, records, run, spawn, wait_for

from batchcli.atomic import TMP_MARK
from batchcli.engine.journal import replay
from batchcli.engine.lifecycle import recover
from batchcli.engine.store import Store


def _item_records(journal) -> int:
    return sum(1 for r in records(journal) if r.get("type") in ("item_completed", "item_failed"))


def _kill_cycles(tmp_path, n_items: int, kills: int, seed: int, delay: float = 0.0) -> dict:
    rng = random.Random(seed)
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    from crashops import make_pngs

    make_pngs(src, n_items)
    seen, slow = tmp_path / "seen.log", tmp_path / "slow"  # items of `delay` s while the kills go on
    slow.touch()
    paths = create(home, [src], out, f"crashtest log={seen} delay={delay} slow={slow} | resize 48x48")
    survived = 0
    late = 0  # kills that landed after the batch's final record (nothing left to interrupt)
    for k in range(kills):
        base = line_count(paths.journal)
        target = base + 1 + rng.choice([0, 0, 1, 1, 2, 3, 5])  # batch_resumed + a few items
        proc = spawn(home, "resume", paths.id, "-w", "2", "--quiet", "--min-free-space", "0")
        wait_for(lambda: proc.poll() is not None or line_count(paths.journal) >= target,
                 what=f"kill {k}: journal to reach {target} records")
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        if proc.poll() is not None:  # it finished the batch before this moment came
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        survived += 1
        if replay(paths.journal, n_items).state == "completed":  # killed after its last record
            late += 1
            break
        # the workers die with their runner (PR_SET_PDEATHSIG): no orphans
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in kids),
                 timeout=5, what="workers of the killed runner to exit")
        rec = recover(Store(str(home)))  # the engine of `batchcli recover` (the CLI is tested below)
        assert [b["batch_id"] for b in rec["batches"]] == [paths.id], rec
        assert rec["batches"][0]["status"] == "paused"
    slow.unlink()  # the rest at full speed
    if replay(paths.journal, n_items).state != "completed":
        r = run(home, "resume", paths.id, "-w", "2", "--min-free-space", "0")
        assert r.returncode == 0, r.stdout + r.stderr
    return {"paths": paths, "out": out, "seen": seen, "survived": survived, "n": n_items, "late": late}


def _check_exactly_once(res: dict) -> dict:
    import cv2

    paths, out, n = res["paths"], res["out"], res["n"]
    recs = records(paths.journal)
    st = replay(paths.journal, n)
    assert st.state == "completed" and st.completed == n and not st.bad
    done = Counter(r["i"] for r in recs if r.get("type") == "item_completed")
    assert sorted(done) == list(range(n)) and set(done.values()) == {1}, "one completed record per item"
    assert not any(r.get("type") == "item_failed" for r in recs)
    files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert not [f for f in files if TMP_MARK in f], "temp files left"
    outs = {r["out"]: r["sha256"] for r in recs if r.get("type") == "item_completed"}
    assert files == sorted(outs), "every input has exactly one output, and nothing else"
    for rel, digest in outs.items():
        data = (out / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        assert cv2.imdecode(__import__("numpy").frombuffer(data, "uint8"), cv2.IMREAD_UNCHANGED) is not None
    processed = len(res["seen"].read_text().splitlines())
    redone = processed - n
    kills = res["survived"]
    figures = {"kills": kills, "items": n, "processed": processed, "redone": redone,
               "redone_per_kill": round(redone / kills, 2) if kills else 0.0,
               "interrupted_records": sum(1 for r in recs if r.get("type") == "batch_interrupted")}
    print("\nkill -9 figures:", json.dumps(figures))
    assert figures["interrupted_records"] == kills - res["late"]
    return figures


def test_kill9_recover_resume_fast(tmp_path):
    res = _kill_cycles(tmp_path, n_items=400, kills=12, seed=7)  # room for 12 kills: workers start fast
    assert res["survived"] >= 8
    _check_exactly_once(res)


@pytest.mark.slow
def test_kill9_recover_resume_50_kills(tmp_path):
    res = _kill_cycles(tmp_path, n_items=300, kills=52, seed=2026, delay=0.02)
    assert res["survived"] >= 50
    _check_exactly_once(res)


def test_recover_is_idempotent_and_sweeps_temp_files(tmp_path):
    from crashops import make_pngs

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 40)
    slow = tmp_path / "slow"  # items of 0.05 s until the kill
    slow.touch()
    paths = create(home, [src], out, f"crashtest delay=0.05 slow={slow} | convert png")
    proc = spawn(home, "resume", paths.id, "-w", "2", "--min-free-space", "0")
    wait_for(lambda: _item_records(paths.journal) >= 4, what="some items done")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    slow.unlink()
    out.mkdir(exist_ok=True)
    stray = out / f".img001.png{TMP_MARK}999999-deadbeef"  # what a killed writer leaves (tmp_name's form)
    stray.write_bytes(b"half")
    mine = out / "notes.txt"  # the user's own file: never touched
    mine.write_text("keep")
    assert json.loads(run(home, "status", paths.id, "--json").stdout)["status"] == "interrupted"

    first = json.loads(run(home, "recover", "--json").stdout)
    assert first["recovered_count"] == 1 and first["failed_count"] == 0
    b = first["batches"][0]
    # the stray, and any temp file the killed workers left mid-write
    assert b["status"] == "paused" and b["previous"] == "interrupted" and b["temp_files_removed"] >= 1
    assert not stray.exists() and mine.read_text() == "keep"
    kinds = [r["type"] for r in records(paths.journal)]
    assert kinds[-2:] == ["batch_interrupted", "batch_paused"]

    before = paths.journal and open(paths.journal, "rb").read()
    tree = sorted(os.listdir(out))
    second = run(home, "recover", "--json")
    assert second.returncode == 0
    assert json.loads(second.stdout) == {"recovered_count": 0, "failed_count": 0, "batches": []}
    assert open(paths.journal, "rb").read() == before and sorted(os.listdir(out)) == tree
    assert run(home, "recover").stdout == ""  # quiet from cron when there is nothing to do

    r = run(home, "resume", paths.id, "--min-free-space", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert replay(paths.journal, 40).completed == 40


def _killed_runner(tmp_path, delay: float):
    """30 items, their runner SIGKILLed once two are done: (home, the batch's paths)."""
    from crashops import make_pngs

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 30)
    paths = create(home, [src], out, f"crashtest delay={delay} | convert png")
    proc = spawn(home, "resume", paths.id, "-w", "2", "--min-free-space", "0")
    wait_for(lambda: _item_records(paths.journal) >= 2, what="some items done")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return home, paths


def test_recover_resume_runs_detached_to_completion(tmp_path):
    home, paths = _killed_runner(tmp_path, 0.03)
    r = run(home, "recover", "--resume", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["batches"][0]["resumed"] is True
    f = run(home, "status", paths.id, "--follow", "--json")
    events = [json.loads(line) for line in f.stdout.splitlines()]
    assert f.returncode == 0 and events[-1]["type"] == "finished" and events[-1]["status"] == "completed"


def _orphan(home, src, out, pipeline: str) -> str:
    """A batch made by a process SIGKILLed once the batch was whole, before any runner took it
    (a cron `start` or `sync` killed at that moment): its id."""
    import subprocess
    import sys

    from crashops import cli_env

    code = ("import os, signal, sys\nfrom batchcli import api\nfrom batchcli.engine.store import Store\n"
            "p = api.create_batch(Store(sys.argv[1]), api.StartConfig(inputs=[sys.argv[2]], out_dir=sys.argv[3], "
            "pipeline_text=sys.argv[4]))\nprint(p.id, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(home), str(src), str(out), pipeline],
                       env=cli_env(home), capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGKILL, r.stderr
    return r.stdout.strip()


def test_a_batch_whose_command_died_before_its_run_is_recovered_or_superseded(tmp_path):
    from crashops import make_pngs

    home, src = tmp_path / "home", tmp_path / "in"
    make_pngs(src, 4)
    first = _orphan(home, src, tmp_path / "o1", "convert png")
    s = json.loads(run(home, "status", first, "--json").stdout)
    assert s["status"] == "interrupted" and "died before its run began" in s["reason"], s
    r = run(home, "recover", "--resume", "--json")  # @reboot: it runs
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["batches"]
    assert [(b["batch_id"], b["status"], b["resumed"]) for b in rows] == [(first, "paused", True)]
    f = run(home, "status", first, "--follow", "--json")
    assert json.loads(f.stdout.splitlines()[-1])["status"] == "completed"
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == [f"img{i:03d}.png" for i in range(4)]

    second = _orphan(home, src, tmp_path / "o2", "convert png")  # the next cron run comes first: not blocked
    r = run(home, "sync", src, "--out", tmp_path / "o2", "-p", "convert png", "--min-free-space", "0")
    assert r.returncode == 0, r.stderr
    s = json.loads(run(home, "status", second, "--json").stdout)
    assert s["status"] == "cancelled" and "superseded by batch" in s["reason"], s
    assert len(list((tmp_path / "o2").iterdir())) == 4
    assert json.loads(run(home, "recover", "--json").stdout)["batches"] == []  # nothing left to recover
    third = _orphan(home, src, tmp_path / "o3", "convert png")
    r = run(home, "recover")
    assert r.stdout.startswith(f"batch {third}: ") and " died; now paused (4 remaining" in r.stdout, r.stdout
    assert "None" not in r.stdout and len(r.stdout.splitlines()) == 1


def test_two_recover_resume_at_once_is_no_failure(tmp_path):
    """Two `recover --resume` at the same moment (two cron entries, @reboot and a systemd unit):
    both recover the batch, one's runner takes it and the other's is refused. That one reports
    the batch resumed by the other runner's pid, and no failure (exit 0)."""
    from batchcli.api import run_options
    from batchcli.engine.liveness import runner_alive
    from batchcli.engine.slots import budget
    from batchcli.engine.spawn import spawn_detached

    home, paths = _killed_runner(tmp_path, 0.05)
    others = []

    def resume_fn(p):  # the CLI's, with the other recover's runner starting first
        others.append(spawn(home, "resume", p.id, "-w", "1", "--min-free-space", "0"))
        wait_for(lambda: runner_alive(p), what="the other runner")
        st = replay(p.journal, 30)
        spawn_detached(p, run_options(last=st.options, slots=budget(str(home))), str(home), resume=True)

    data = recover(Store(str(home)), resume=True, resume_fn=resume_fn)
    assert data["failed_count"] == 0, data
    row = data["batches"][0]
    assert row["resumed"] is True and row["resumed_by"] in (others[0].pid, 0) and "error" not in row
    assert others[0].wait(60) == 0
    assert replay(paths.journal, 30).completed == 30
