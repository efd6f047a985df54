"""The fork server that `start` begins before it parses its flags (cli/warm.py): started only
for a batch that runs here, with the thread count the run will give its workers, started again
when that guess was wrong, and gone when the command ends without running."""

from __future__ import annotations

import json
import os

import pytest
from crashops import make_pngs, run, spawn, wait_for

from batchcli.cli.warm import warm_for
from batchcli.executors import forkserve

pytestmark = pytest.mark.skipif(forkserve.START_METHOD != "forkserver", reason="no fork server here")


def _server_pid() -> int | None:
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid


def _omp(pid: int) -> str | None:
    """The server's OMP_NUM_THREADS, once it runs (it is started without waiting for its exec)."""
    wait_for(lambda: b"forkserver" in open(f"/proc/{pid}/cmdline", "rb").read(), what="the server's exec")
    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return next((e[16:].decode() for e in env if e.startswith(b"OMP_NUM_THREADS=")), None)


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("BATCHCLI_SLOTS", raising=False)
    yield
    forkserve.stop_server(now=True)


@pytest.mark.parametrize("args", [["status"], ["start", "in", "--detach"], ["start", "in", "-d"],
                                  ["start", "in", "--at", "+1h"], ["start", "in", "--after=x"],
                                  ["start", "--help"], ["start", "in", "--executor", "dask"],
                                  ["--home", "h", "sync", "in"]])
def test_no_server_for_a_command_that_runs_nothing_here(args, clean_env):
    assert warm_for(args) is False
    assert _server_pid() is None


def test_the_guess_is_the_run_s_thread_count_and_a_wrong_one_is_corrected(tmp_path, clean_env):
    cpus = len(os.sched_getaffinity(0))
    assert warm_for(["--home", str(tmp_path), "start", "in", "--out", "o", "-w", "1", "--executor=local"])
    first = _server_pid()
    assert first is not None and _omp(first) == str(cpus)
    forkserve.warm_up(threads=cpus)  # what the run then asks for: the same server
    assert _server_pid() == first
    forkserve.stop_server(now=True)
    assert warm_for(["start", "in", "--workers=64", "--home", str(tmp_path)])
    guessed = _server_pid()
    assert _omp(guessed) == "1"
    forkserve.warm_up(threads=2)  # the flags meant something else: a fresh server, 2 threads
    fresh = _server_pid()
    assert fresh not in (None, guessed) and _omp(fresh) == "2"
    forkserve.warm_up(threads=1)  # confirmed once: later calls keep it, as before
    assert _server_pid() == fresh
    assert "OMP_NUM_THREADS" not in os.environ


def test_a_usage_error_after_the_server_started_leaves_no_process(tmp_path):
    """The server starts before the flags are checked; a refused command kills it before it ends
    (each process of the run carries a marker in its environment, so they can be found; the
    resource tracker leaves on its own as the command ends)."""
    home, src = tmp_path / "home", tmp_path / "in"
    make_pngs(src, 2)
    env = {"BATCHCLI_TEST_MARK": tmp_path.name, "BATCHCLI_TEST_SERVER_DELAY": "5"}  # the server takes 5 s to start
    mark = f"BATCHCLI_TEST_MARK={tmp_path.name}".encode()
    refused = spawn(home, "start", src, "-w", "2", "--pipeline", "resize 8x8", "--no-such-flag", env=env)
    assert refused.wait(60) == 2  # (not run(): a pipe would wait for the server to go as well)
    wait_for(lambda: not _marked(mark), timeout=3, what="no process left (the server would sleep 5 s)")
    ok = run(home, "start", src, "--out", tmp_path / "out", "-w", "2", "--pipeline", "resize 8x8",
             env={"BATCHCLI_TEST_MARK": tmp_path.name})  # (a run that goes on waits for its server anyway)
    assert ok.returncode == 0, ok.stderr
    wait_for(lambda: not _marked(mark), timeout=3, what="no process left")


def _marked(mark: bytes) -> list[str]:
    """The processes (their command lines) whose environment holds `mark`."""
    return [cmd for _, cmd in _marked_pids(mark)]


def test_a_start_ends_at_once_with_its_output_whole_and_its_exit_code(tmp_path):
    """A run here ends without the interpreter's teardown: what it wrote to a pipe is all there
    (every JSON event up to the summary), and the exit code says a failed item (1)."""
    home, src = tmp_path / "home", tmp_path / "in"
    make_pngs(src, 40)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    r = run(home, "start", src, "--out", tmp_path / "out", "-w", "2", "--pipeline", "resize 8x8", "--json")
    assert r.returncode == 1, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["type"] == "started" and events[-1]["type"] == "finished", events[-1]
    assert events[-1]["completed"] == 40 and events[-1]["failed"] == 1
    r = run(home, "start", src, "--out", tmp_path / "out2", "-w", "2", "--pipeline", "resize 8x8", "--quiet")
    assert r.returncode == 1 and "completed 40, failed 1, remaining 0, of 41" in r.stdout, r.stdout


def test_small_quick_images_go_in_groups_each_item_in_hand_named_in_turn(tmp_path, monkeypatch):
    """A worker takes small inputs in groups once items prove quick (decodes, ops, encodes phase
    by phase), never past a large input, and names each item it has in hand in turn (a crash is
    charged to that one); every item keeps its own result."""
    import pickle

    import batchcli.executors.worker as worker

    assert (worker.GROUP, worker.QUICK_MS) == (16, 2.0)  # the README's pause sentence
    monkeypatch.setattr(worker, "QUICK_MS", 1000.0)  # "quick" whatever the machine's load

    from batchcli.api import build_pipeline
    from batchcli.executors.worker import GROUP, Worker, WorkerConfig

    paths = make_pngs(tmp_path / "in", 20, size=16) + make_pngs(tmp_path / "big", 1, size=400)  # ~480 KB
    items = [{"i": k, "src": p, "stem": f"s{k:03d}", "size": os.path.getsize(p), "mtime": os.path.getmtime(p)}
             for k, p in enumerate(paths)]
    assert items[-1]["size"] > 256 << 10
    w = Worker(WorkerConfig(pipeline=pickle.dumps(build_pipeline("resize 8x8", None)), out_dir=str(tmp_path / "out"),
                            max_file_size=1 << 30, max_pixels=1 << 30))
    seen: list[int] = []
    w.at = seen.append
    assert w.group(items, 0) == 1  # nothing measured yet: one at a time
    k = 0
    while not w.quick and k < 3:  # the first decodes warm the codecs up
        assert [r["i"] for r in w.process_batch(items[k:k + 1])] == [k]
        k += 1
    assert w.quick
    n = w.group(items, k)
    assert n == GROUP
    seen.clear()
    results = w.process_batch(items[k:k + n])
    assert [r["i"] for r in results] == list(range(k, k + n)) and all(r["ok"] for r in results)
    assert seen == list(range(k, k + n)) * 3  # loaded, resized, saved: each in hand in turn
    assert w.group(items, k + n) == 20 - k - n  # stops before the large input
    assert w.group(items, 20) == 1
    monkeypatch.setattr(worker, "QUICK_MS", 0.0)  # items that stop being quick: one at a time again
    w.process_batch(items[k + n:k + n + 1])
    assert not w.quick and w.group(items, k + n + 1) == 1


def test_the_server_and_its_workers_run_without_a_resource_tracker(tmp_path, clean_env):
    """No third interpreter (multiprocessing's resource tracker) for a run: the workers make no
    named semaphore or shared memory for it to clean up. A worker from the server still does
    its items; once the pool is gone, anything else that needs the tracker gets a real one."""
    import pickle
    import time
    from multiprocessing import resource_tracker

    from batchcli.api import build_pipeline
    from batchcli.executors.local import ProcessPool
    from batchcli.executors.worker import WorkerConfig

    paths = make_pngs(tmp_path / "in", 3)
    cfg = WorkerConfig(pipeline=pickle.dumps(build_pipeline("resize 8x8", None)), out_dir=str(tmp_path / "out"),
                       max_file_size=1 << 30, max_pixels=1 << 30)
    tracker = resource_tracker._resource_tracker
    if tracker._fd is not None:  # one this process started for something else: the pool may use it
        tracker._stop()
    pool = ProcessPool(cfg, 1)
    try:
        pool.submit([{"i": k, "src": p, "stem": f"s{k}"} for k, p in enumerate(paths)])
        done: list[int] = []
        deadline = time.monotonic() + 60
        while len(done) < 3 and time.monotonic() < deadline:
            done += [ev.result["i"] for ev in pool.poll(0.1) if ev.kind == "item" and ev.result["ok"]]
        assert sorted(done) == [0, 1, 2]
        assert tracker._pid is None and not _children_running("resource_tracker")
        server = _server_pid()
    finally:
        pool.shutdown()
    assert tracker._fd is None  # given back: a later user starts a real one
    # killed by the pool's end, not waited for: reaped by the next call (the CLI's, as it exits),
    # unless the kernel was already done with it when the pool looked (it looks without waiting)
    assert _server_pid() is None and forkserve._LATE in ([server], [])
    forkserve.stop_server()
    assert forkserve._LATE == [] and not os.path.exists(f"/proc/{server}")


def _children_running(what: str) -> list[int]:
    """This process's children whose command line holds `what`."""
    me, out = str(os.getpid()), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()
            if stat[1].decode() == me and what.encode() in open(f"/proc/{pid}/cmdline", "rb").read():
                out.append(int(pid))
        except OSError:
            continue
    return out


def test_a_start_forks_its_server_first_thing(tmp_path):
    """The console script's `start` forks itself into the fork server first thing (no second
    interpreter to start: the command line stays the command's), with a listener in the abstract
    socket namespace, and imports multiprocessing meanwhile; the run's workers come from it."""
    home, src = tmp_path / "home", tmp_path / "in"
    make_pngs(src, 4)
    env = {"BATCHCLI_TEST_MARK": tmp_path.name, "BATCHCLI_TEST_SERVER_DELAY": "3"}  # the server takes 3 s to start
    mark = f"BATCHCLI_TEST_MARK={tmp_path.name}".encode()
    start = spawn(home, "start", src, "--out", tmp_path / "out", "-w", "2", "--pipeline", "resize 8x8", env=env)
    try:
        server = wait_for(lambda: next((p for p, _ in _marked_pids(mark) if _parent(p) == start.pid), None),
                          what="the fork server")
        cmdline = open(f"/proc/{start.pid}/cmdline", "rb").read()
        assert open(f"/proc/{server}/cmdline", "rb").read() == cmdline and b"forkserver" not in cmdline
        assert f"@batchcli-forkserver-{start.pid}-".encode() in open("/proc/net/unix", "rb").read()
        assert start.wait(60) == 0
    finally:
        start.kill()
        start.wait()
    assert len(os.listdir(tmp_path / "out")) == 4


def _marked_pids(mark: bytes) -> list[tuple[int, str]]:
    """(pid, command line) of the processes whose environment holds `mark`."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                out.append((int(pid), open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")))
        except OSError:
            continue
    return out


def _parent(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[1])
