"""The home's shared worker budget: real runners sharing slots, kill -9 of a holder, priority,
queued batches paused and cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from crashops import cli_env, make_pngs, records, wait_for

from batchcli.engine.slots import Entry, allocate, budget
from batchcli.engine.status import batch_status
from batchcli.engine.store import Store
from batchcli.errors import ConfigError

NOSPACE = ("--min-free-space", "0")


@pytest.fixture(autouse=True)
def no_runner_left(tmp_path):
    """After each test, end the processes it left (a failed test's runners, waiting or queued)."""
    yield
    import psutil

    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("BATCHCLI_HOME", "").startswith(str(tmp_path) + os.sep):
                p.kill()
        except psutil.Error:
            pass


def env(home, slots=2, **extra):
    e = cli_env(home)
    e["BATCHCLI_SLOTS"] = str(slots)
    e.update({k: str(v) for k, v in extra.items()})
    return e


def start(tmp_path, home, name, n=20, delay=0.05, *flags, slots=2, extra_env=None, slow=None):
    """`batchcli start` of n slow items in the background; returns the process. `slow`: a file
    the items are slow only while it exists (crashtest's slow=)."""
    src = tmp_path / f"in-{name}"
    if not src.exists():
        make_pngs(src, n)
    step = f"crashtest delay={delay}" + (f" slow={slow}" if slow else "")
    args = [sys.executable, "-m", "batchcli", "start", str(src), "--out", str(tmp_path / f"out-{name}"),
            "--pipeline", f"{step} | convert png", "--name", name, *NOSPACE, *map(str, flags)]
    log = open(tmp_path / f"{name}.log", "ab")
    try:
        return subprocess.Popen(args, env=env(home, slots, **(extra_env or {})), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def cli(home, *args, slots=2, timeout=120):
    return subprocess.run([sys.executable, "-m", "batchcli", *map(str, args)], env=env(home, slots),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def status(home, name):
    return batch_status(Store(str(home)).resolve(name))


def has_batch(home, name):
    try:
        Store(str(home)).resolve(name)
        return True
    except Exception:
        return False


class Workers:
    """Samples the worker processes of a home every 20 ms: how many at most, and per parent (a
    runner, or the fork server a runner forks its workers from)."""

    def __init__(self, home):
        self.home = str(home)
        self.max = 0
        self.samples: list[dict[int, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            per: dict[int, int] = {}
            for p in psutil.process_iter(["name", "ppid"]):
                if p.info["name"] != "batchcli-worker":  # each runner's workers share a parent
                    continue
                try:
                    if p.environ().get("BATCHCLI_HOME") != self.home:
                        continue
                except psutil.Error:
                    continue
                per[p.info["ppid"]] = per.get(p.info["ppid"], 0) + 1
            self.samples.append(per)
            self.max = max(self.max, sum(per.values()))
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


def finished_at(home, name) -> float:
    recs = records(Store(str(home)).resolve(name).journal)
    return next(r["t"] for r in recs if r["type"] == "batch_finished")


# --- the share-out (a pure function every runner computes alike) ---------------------------

def _e(bid, prio=0, since=0.0, want=2):
    return Entry(bid, 1, prio, since, want, 0, "queued", 2)


def test_allocate_priority_first_then_one_each_in_order_of_arrival():
    assert allocate([_e("a")], 4) == {"a": 2}  # never more than it wants
    assert allocate([_e("a", want=8)], 4) == {"a": 4}  # alone: every slot
    assert allocate([_e("a", since=1), _e("b", since=2)], 2) == {"a": 1, "b": 1}
    assert allocate([_e("a", since=1), _e("b", since=2), _e("c", since=3)], 2) == {"a": 1, "b": 1, "c": 0}
    assert allocate([_e("a", since=1), _e("b", since=2, prio=10)], 2) == {"a": 0, "b": 2}
    assert allocate([_e("a", since=1, want=1), _e("b", since=2, want=4)], 3) == {"a": 1, "b": 2}


def test_forget_takes_only_a_dead_runners_line_off_the_board(tmp_path):
    from batchcli.engine.slots import Board, Registration, forget

    reg = Registration(str(tmp_path), "b1")
    reg.publish(_e("b1"))
    forget(str(tmp_path), "b1")  # alive: stays
    assert [e.batch_id for e in Board(str(tmp_path)).entries()] == ["b1"]
    os.close(reg._fd)  # as a kill -9 would: the lock drops, the files stay
    forget(str(tmp_path), "b1")
    assert not os.listdir(tmp_path / "queue")


def test_budget_from_env_then_config_then_cpus(tmp_path, monkeypatch):
    monkeypatch.delenv("BATCHCLI_SLOTS", raising=False)
    assert budget(str(tmp_path)) == len(os.sched_getaffinity(0))
    (tmp_path / "config.toml").write_text("slots = 3\n")
    assert budget(str(tmp_path)) == 3
    monkeypatch.setenv("BATCHCLI_SLOTS", "5")
    assert budget(str(tmp_path)) == 5
    for bad in ("0", "many", "100000"):
        monkeypatch.setenv("BATCHCLI_SLOTS", bad)
        with pytest.raises(ConfigError, match="BATCHCLI_SLOTS"):
            budget(str(tmp_path))


def test_default_worker_memory_is_shared_by_the_slots():
    from batchcli.api import default_worker_memory, run_options

    opts = run_options(workers=1, slots=4)
    assert opts.workers == 1 and opts.slots == 4
    assert abs(opts.memory_limit - default_worker_memory(4)) < 64 << 20  # not "80% of RAM for this one worker"
    assert run_options(slots=3).workers == 3  # the default --workers is the budget


def test_bad_budget_and_priority_are_usage_errors_before_any_work(tmp_path):
    home = tmp_path / "home"
    make_pngs(tmp_path / "in", 2)
    base = ["start", tmp_path / "in", "--out", tmp_path / "out"]
    r = subprocess.run([sys.executable, "-m", "batchcli", *map(str, base)], env=env(home, "lots"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "BATCHCLI_SLOTS=lots" in r.stderr
    home.mkdir()
    (home / "config.toml").write_text("slots = -1\n")
    r = subprocess.run([sys.executable, "-m", "batchcli", *map(str, base)], env={**cli_env(home)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "config.toml" in r.stderr and "worker slots" in r.stderr
    r = cli(home, *base, "--priority", "5000")
    assert r.returncode == 2 and "priority 5000" in r.stderr
    assert not Store(str(home)).ids(), "nothing was created"


# --- real runners -------------------------------------------------------------------------------

def test_two_batches_share_two_slots(tmp_path):
    home, slow = tmp_path / "home", tmp_path / "slow"
    slow.touch()
    with Workers(home) as w:
        a = start(tmp_path, home, "a", 200, 0.05, "-w", "2", slow=slow)  # outlasts b: it takes b's slot back
        wait_for(lambda: has_batch(home, "a") and status(home, "a")["slots"] == 2, what="a alone holds both slots")
        b = start(tmp_path, home, "b", 30, 0.1, "-w", "2", "--json")
        assert b.wait(90) == 0
        seen = len(w.samples)
        wait_for(lambda: any(list(s.values()) == [2] for s in w.samples[seen:]) or a.poll() is not None,
                 what="a alone with two workers again")
        slow.unlink()  # the rest of a at full speed
        assert a.wait(90) == 0
    assert w.max <= 2, f"{w.max} workers alive at once with 2 slots"
    both = [k for k, s in enumerate(w.samples) if len(s) == 2]
    assert both and all(sorted(w.samples[k].values()) == [1, 1] for k in both), "two batches share: one slot each"
    assert any(2 in s.values() for s in w.samples[both[-1]:]), "the one left takes the freed slot again"
    for name, n in (("a", 200), ("b", 30)):
        s = status(home, name)
        assert s["status"] == "completed" and s["completed"] == n
        assert len(os.listdir(tmp_path / f"out-{name}")) == n
    assert not os.listdir(home / "queue"), "runners leave the board when they end"


def test_kill_9_of_a_slot_holder_frees_its_slots_within_a_second(tmp_path):
    home = tmp_path / "home"
    a = start(tmp_path, home, "a", 200, 0.1, "-w", "2")
    wait_for(lambda: has_batch(home, "a") and status(home, "a")["slots"] == 2, what="a holds both slots")
    # its slots are on the board before its workers start; batch_started comes with the first worker
    wait_for(lambda: any(r["type"] == "batch_started" for r in records(Store(str(home)).resolve("a").journal)),
             what="a started")
    b = start(tmp_path, home, "b", 10, 0.01, "-w", "2", "--json")
    wait_for(lambda: has_batch(home, "b") and status(home, "b")["status"] == "queued", what="b queued")
    s = status(home, "b")
    assert s["queue_position"] == 1 and "waiting for a worker slot" in s["reason"]
    os.kill(a.pid, signal.SIGKILL)
    t0 = time.monotonic()
    wait_for(lambda: (status(home, "b")["slots"] or 0) >= 1, timeout=5, what="b gets a slot")
    took = time.monotonic() - t0
    assert took < 1.0, f"the dead holder's slots reached b after {took:.2f} s"
    a.wait(10)
    assert b.wait(60) == 0
    assert status(home, "a")["status"] == "interrupted"  # and recover/resume carry on as ever
    a_id = status(home, "a")["batch_id"]
    assert sorted(os.listdir(home / "queue")) == [f"{a_id}.json", f"{a_id}.lock"]  # kill -9: no time to leave
    assert cli(home, "recover").returncode == 0
    assert not os.listdir(home / "queue"), "recover takes a dead runner's line off the board"
    events = [json.loads(line) for line in (tmp_path / "b.log").read_text().splitlines()]
    states = [(e["status"], e["queue_position"]) for e in events if e["type"] == "state"]
    assert states == [("queued", 1), ("running", None)] and events[-1]["type"] == "finished"


def test_priority_order_and_a_running_batch_yields_to_a_higher_one(tmp_path):
    home, slow = tmp_path / "home", tmp_path / "slow"
    slow.touch()
    a = start(tmp_path, home, "a", 150, 0.05, "-w", "1", "--priority", "10", slots=1, slow=slow)
    wait_for(lambda: has_batch(home, "a") and status(home, "a")["completed"] >= 1, what="a running")
    queued = []
    for name, prio in (("b", 0), ("c", 5), ("d", 10)):  # none outranks a: they wait
        queued.append(start(tmp_path, home, name, 5, 0.01, "--priority", prio, slots=1))
        wait_for(lambda: has_batch(home, name) and status(home, name)["status"] == "queued", what=f"{name} queued")
    assert [status(home, n)["queue_position"] for n in "dcb"] == [1, 2, 3]
    e = start(tmp_path, home, "e", 5, 0.01, "--priority", "20", slots=1)
    # e outranks the running a: a gives up its slot at an item boundary and waits as queued
    wait_for(lambda: has_batch(home, "e") and status(home, "a")["status"] == "queued", what="a yields")
    assert status(home, "a")["remaining"] > 0
    slow.unlink()  # the rest of a at full speed: the queue, not a's length, orders what follows
    for p in (a, e, *queued):
        assert p.wait(90) == 0
    t = {n: finished_at(home, n) for n in "abcde"}
    assert t["e"] < t["a"] < t["d"] < t["c"] < t["b"], t  # priority first, then first come first served
    recs = records(Store(str(home)).resolve("e").journal)
    assert next(r for r in recs if r["type"] == "batch_started")["priority"] == 20


def test_priority_command_reorders_the_queue_live(tmp_path):
    home = tmp_path / "home"
    a = start(tmp_path, home, "a", 100, 0.1, "-w", "1", "--priority", "50", slots=1)  # outranks b and c
    wait_for(lambda: has_batch(home, "a") and status(home, "a")["slots"] == 1, what="a running")
    b = start(tmp_path, home, "b", 3, 0.01, slots=1)
    wait_for(lambda: has_batch(home, "b") and status(home, "b")["status"] == "queued", what="b queued")
    c = start(tmp_path, home, "c", 3, 0.01, slots=1)
    wait_for(lambda: has_batch(home, "c") and status(home, "c")["status"] == "queued", what="c queued")
    assert (status(home, "b")["queue_position"], status(home, "c")["queue_position"]) == (1, 2)
    r = cli(home, "list", slots=1)
    assert "queued #1" in r.stdout and "queued #2" in r.stdout
    r = cli(home, "list", "--status", "queued", "--json", slots=1)
    assert sorted(b["name"] for b in json.loads(r.stdout)["batches"]) == ["b", "c"], r.stderr
    r = cli(home, "priority", "c", "3", slots=1)  # the answer knows the new place (it said position 2)
    assert r.returncode == 0 and "priority 3 (queued, position 1 in the queue)" in r.stdout, r.stdout + r.stderr
    wait_for(lambda: status(home, "c")["queue_position"] == 1, timeout=5, what="c first in the queue")
    assert status(home, "b")["queue_position"] == 2 and status(home, "c")["priority"] == 3
    r = cli(home, "priority", "b", "-4", "--json", slots=1)  # a negative number is the value
    assert r.returncode == 0 and json.loads(r.stdout)["priority"] == -4, r.stderr
    r = cli(home, "status", "c", slots=1)
    assert "queued #1 - waiting for a worker slot" in r.stdout and "priority" in r.stdout
    r = cli(home, "priority", "a", "60", slots=1)  # a running batch too
    assert r.returncode == 0 and "priority 60 (running)" in r.stdout
    cli(home, "cancel", "a", slots=1)
    assert a.wait(30) == 4 and b.wait(60) == 0 and c.wait(60) == 0
    assert finished_at(home, "c") < finished_at(home, "b")
    r = cli(home, "priority", "a", "1", slots=1)
    assert r.returncode == 2 and "cancelled" in r.stderr


def test_a_queued_batch_can_be_followed_paused_and_cancelled(tmp_path):
    home = tmp_path / "home"
    a = start(tmp_path, home, "a", 100, 0.1, "-w", "1", slots=1)
    wait_for(lambda: has_batch(home, "a") and status(home, "a")["slots"] == 1, what="a running")
    b = start(tmp_path, home, "b", 5, 0.01, slots=1)
    wait_for(lambda: has_batch(home, "b") and status(home, "b")["status"] == "queued", what="b queued")
    r = cli(home, "pause", "b", slots=1)
    assert r.returncode == 0 and "paused" in r.stdout, r.stderr
    assert b.wait(10) == 3
    recs = records(Store(str(home)).resolve("b").journal)
    assert [r["type"] for r in recs] == ["header", "batch_paused"], "a queued batch never started"
    b = subprocess.Popen([sys.executable, "-m", "batchcli", "resume", "b"], env=env(home, 1),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: status(home, "b")["status"] == "queued", what="b queued again")
    follow = subprocess.Popen([sys.executable, "-m", "batchcli", "status", "b", "--follow", "--json"],
                              env=env(home, 1), stdout=subprocess.PIPE, text=True)
    first = json.loads(follow.stdout.readline())
    assert first["status"] == "queued"
    r = cli(home, "cancel", "b", slots=1)
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
    assert b.wait(10) == 4
    out, _ = follow.communicate(timeout=30)
    assert follow.returncode == 4
    assert json.loads(out.splitlines()[-1])["status"] == "cancelled"
    assert status(home, "b")["skipped"] == 5
    cli(home, "cancel", "a", slots=1)
    assert a.wait(30) == 4


def test_an_idle_hot_folder_gives_its_slot_back_and_takes_one_when_a_file_lands(tmp_path):
    from conftest import make_image

    home, hot = tmp_path / "home", tmp_path / "hot"
    hot.mkdir()
    make_image(hot / "first.png", seed=1)
    watch = subprocess.Popen([sys.executable, "-m", "batchcli", "watch", str(hot), "--out", str(tmp_path / "hot-out"),
                              "-p", "convert png", "--settle", "0.2s", "--name", "hot", *NOSPACE],
                             env=env(home, 1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (tmp_path / "hot-out" / "first.png").is_file(), what="the first file done")
    wait_for(lambda: status(home, "hot")["slots"] == 0, what="the idle hot folder gives its slot back")
    b = start(tmp_path, home, "b", 5, 0.01, slots=1)  # the only slot is free for another batch
    assert b.wait(60) == 0 and status(home, "b")["completed"] == 5
    make_image(hot / "second.png", seed=2)
    wait_for(lambda: (tmp_path / "hot-out" / "second.png").is_file(), what="a file that lands gets a worker")
    assert cli(home, "pause", "hot", slots=1).returncode == 0 and watch.wait(20) == 3


def test_a_full_disk_keeps_the_last_board_record_and_the_next_publish_puts_the_new_one(small_disk):
    from conftest import fill_disk

    from batchcli.engine.slots import Registration

    reg = Registration(str(small_disk), "b1")
    first = Entry("b1", os.getpid(), 0, 1.0, want=2, held=1, state="running", budget=2)
    reg.publish(first)
    filler = fill_disk(small_disk)
    later = Entry("b1", os.getpid(), 0, 1.0, want=2, held=2, state="running", budget=2)
    reg.publish(later)  # no room: the run goes on (its journal says when the disk is really full)
    assert json.loads(open(reg.json).read())["held"] == 1
    assert sorted(os.listdir(small_disk / "queue")) == ["b1.json", "b1.lock"]  # no temp file left
    filler.unlink()
    reg.publish(later)
    assert json.loads(open(reg.json).read())["held"] == 2
    reg.close()
