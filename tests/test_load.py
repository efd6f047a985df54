"""Load-awareness with real runners: --max-load, --min-free-memory, and measured worker memory.
The machine's figures come from BATCHCLI_LOAD_FILE (the tests write it), not the real load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from crashops import records, wait_for
from test_queue import Workers, cli, env, has_batch, no_runner_left, start, status  # noqa: F401

from batchcli.engine.load import Monitor, Sample, Throttle, parse_max_load
from batchcli.engine.store import Store
from batchcli.errors import ConfigError


def figures(path, **values):
    path.write_text(json.dumps(values))


def test_parse_max_load():
    assert parse_max_load("1.5") == ("load", 1.5)
    assert parse_max_load("0") == ("load", 0.0)
    assert parse_max_load(None) is None
    for bad in ("-1", "nan", "inf", "lots", "101%"):
        with pytest.raises(ConfigError, match="--max-load"):
            parse_max_load(bad)
    from batchcli.api import run_options

    with pytest.raises(ConfigError, match=r"--min-free-memory 100T: more than this machine's memory \("):
        run_options(min_free_memory="100T")  # it was taken, and the batch stayed throttled for ever
    assert run_options(min_free_memory="1M").min_free_memory == 1 << 20


def test_the_load_is_the_machines_own_per_core(monkeypatch):
    import os

    from batchcli.engine.load import sample

    monkeypatch.delenv("BATCHCLI_LOAD_FILE", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert abs(sample().load - os.getloadavg()[0] / cores) < 0.5  # every process counts, batchcli's too


def test_free_memory_and_process_start_times_read_from_proc_are_psutil_s():
    """`start` reads them without importing psutil (a tenth of its imports); what it reads is
    what psutil says: the available memory, and a process's start time (the runner's identity
    in runner.json, checked against a reused pid)."""
    import os

    import psutil

    from batchcli.engine.load import available_memory
    from batchcli.engine.store import process_alive, process_start_time

    assert abs(available_memory() - psutil.virtual_memory().available) < 64 << 20
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (os.getpid(), child.pid, 1):
            assert abs(process_start_time(pid) - psutil.Process(pid).create_time()) < 0.02
        assert process_alive(child.pid, psutil.Process(child.pid).create_time())
        assert not process_alive(child.pid, psutil.Process(child.pid).create_time() - 5)  # a reused pid
    finally:
        child.kill()
        child.wait()
    assert process_start_time(child.pid) is None and not process_alive(child.pid, None)


def test_throttle_steps_down_while_busy_and_up_after_a_quiet_spell():
    now = {"load": 5.0}
    t = Throttle(("load", 1.0), 0, Monitor(lambda: Sample(now["load"], None, None)))
    assert t.cap(0, 4, now=0.0) == 0 and "load 5.00 per core is over --max-load 1" in t.reason  # busy at once: none
    now["load"] = 0.2
    assert [t.cap(0, 4, now=s) for s in (1.0, 2.0, 3.0, 4.0)] == [0, 0, 0, 1]
    assert t.reason == ("back within the limits (load 0.20 per core): a worker more each second after 3 quiet "
                        "seconds")  # it said 'load 5.00 per core is over' until all 4 were back
    assert [t.cap(0, 4, now=s) for s in (5.0, 6.0, 7.0)] == [2, 3, 4]
    assert t.reason is None
    now["load"] = 3.0
    assert [t.cap(4, 4, now=s) for s in (8.0, 9.0)] == [3, 2]  # one fewer per second


def test_max_load_throttles_to_zero_workers_and_back(tmp_path):
    home, load = tmp_path / "home", tmp_path / "load.json"
    figures(load, load=0.1)
    p = start(tmp_path, home, "a", 120, 0.05, "-w", "2", "--max-load", "1", extra_env={"BATCHCLI_LOAD_FILE": load})
    # (enough work left when the load rises: the runner gives up a worker a second, two to go)
    wait_for(lambda: has_batch(home, "a") and status(home, "a")["completed"] >= 3, what="a running")
    with Workers(home) as w:
        figures(load, load=4.0)  # the machine gets busy: in-flight items finish, workers go, down to none
        wait_for(lambda: status(home, "a")["status"] == "throttled", timeout=20, what="throttled")
        assert status(home, "a")["reason"] == "load 4.00 per core is over --max-load 1"
        wait_for(lambda: status(home, "a")["slots"] == 0, what="its slots given back")  # once its workers exit
        done = status(home, "a")["completed"]
        wait_for(lambda: w.samples and not w.samples[-1], what="no worker alive")
        assert status(home, "a")["completed"] == done and status(home, "a")["failed"] == 0
        figures(load, load=0.2)  # quiet again: after a few seconds it scales back up
        assert p.wait(60) == 0
    assert status(home, "a")["completed"] == 120


def test_max_load_zero_holds_a_batch_until_the_limit_is_raised(tmp_path):
    home, load = tmp_path / "home", tmp_path / "load.json"
    figures(load, load=0.5)
    p = start(tmp_path, home, "a", 10, 0.01, "--max-load", "0", extra_env={"BATCHCLI_LOAD_FILE": load})
    wait_for(lambda: has_batch(home, "a") and status(home, "a")["status"] == "throttled", what="throttled")
    assert "over --max-load 0" in status(home, "a")["reason"]
    assert "throttled - load 0.50 per core" in cli(home, "status", "a").stdout
    assert json.loads(cli(home, "list", "--status", "throttled", "--json").stdout)["total"] == 1
    r = cli(home, "pause", "a")
    assert r.returncode == 0 and p.wait(10) == 3
    assert [r["type"] for r in records(Store(str(home)).resolve("a").journal)] == ["header", "batch_paused"]
    p = subprocess.Popen([sys.executable, "-m", "batchcli", "resume", "a"], env=env(home, 2, BATCHCLI_LOAD_FILE=load),
                         stdout=subprocess.DEVNULL)  # a resume keeps the run's --max-load
    wait_for(lambda: status(home, "a")["status"] == "throttled", what="throttled again")
    assert cli(home, "pause", "a").returncode == 0 and p.wait(10) == 3
    r = subprocess.run([sys.executable, "-m", "batchcli", "resume", "a", "--max-load", "2"], capture_output=True,
                       text=True, timeout=60, env=env(home, 2, BATCHCLI_LOAD_FILE=load))
    assert r.returncode == 0, r.stdout + r.stderr
    assert status(home, "a")["completed"] == 10


@pytest.mark.parametrize("flags, values, reason", [
    (("--min-free-memory", "1G"), {"mem_available": 1 << 20}, "free memory 1 MiB is under --min-free-memory 1024 MiB"),
    (("--max-load", "40%"), {"cpu_pressure": 55}, "CPU pressure 55% is over --max-load 40%"),
])
def test_memory_floor_and_cpu_pressure_throttle_too(tmp_path, flags, values, reason):
    home, load = tmp_path / "home", tmp_path / "load.json"
    figures(load, **values)
    p = start(tmp_path, home, "a", 5, 0.01, *flags, extra_env={"BATCHCLI_LOAD_FILE": load})
    wait_for(lambda: has_batch(home, "a") and status(home, "a")["status"] == "throttled", what="throttled")
    assert status(home, "a")["reason"] == reason
    figures(load)  # the real machine's figures again
    assert cli(home, "cancel", "a").returncode == 0 and p.wait(10) == 4


def test_worker_memory_is_measured_and_a_worker_it_would_not_fit_is_not_started(tmp_path):
    home, load = tmp_path / "home", tmp_path / "load.json"
    p = start(tmp_path, home, "a", 40, 0.05, "-w", "1")
    wait_for(lambda: has_batch(home, "a") and status(home, "a")["completed"] >= 5, what="a running")
    assert cli(home, "pause", "a").returncode == 0 and p.wait(10) == 3
    recs = records(Store(str(home)).resolve("a").journal)
    rss = [r["rss"] for r in recs if r["type"] == "item_completed"]
    assert rss and all(10 << 20 < x < 4 << 30 for x in rss), rss  # a python worker with cv2: tens of MiB
    peak = status(home, "a")["worker_rss"]
    assert peak == max(rss) and "MiB peak RSS measured" in cli(home, "status", "a").stdout
    figures(load, mem_available=peak // 2)  # no room for a worker of that size: the first still starts
    with Workers(home) as w:
        r = subprocess.Popen([sys.executable, "-m", "batchcli", "resume", "a", "-w", "2"],
                             env=env(home, 4, BATCHCLI_LOAD_FILE=load), stdout=subprocess.DEVNULL)
        wait_for(lambda: "would not hold another worker" in (status(home, "a")["reason"] or ""), what="held back")
        assert r.wait(60) == 0
    assert w.max == 1, f"{w.max} workers started without room for a second"
    assert status(home, "a")["completed"] == 40
