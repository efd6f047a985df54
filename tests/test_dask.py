"""The Dask executor: same results as the local pool, and the same guarantees under failures.

Skipped when `distributed` is not installed (pip install 'batchcli[dask]').
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import cv2
import numpy as np
import pytest
from crashops import cli_env

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from batchcli.engine.journal import iter_records  # noqa: E402
from batchcli.engine.runner import RunOptions  # noqa: E402
from batchcli.executors.dask import DaskExecutor, _probe, scheduler_address  # noqa: E402
from batchcli.executors.worker import WorkerConfig  # noqa: E402
from batchcli.pipeline import Pipeline  # noqa: E402

PIPELINE = "resize 320x320 | convert png"
DASK_BIN = os.path.join(os.path.dirname(sys.executable), "dask")


# --- helpers ---------------------------------------------------------------------------------

def make_images(folder, n: int, size=(480, 360), extra: dict[str, int] | None = None) -> list[str]:
    """n noisy PNG/JPEG images (noise keeps the encoders busy), plus one broken file."""
    rng = np.random.default_rng(7)
    os.makedirs(os.path.join(folder, "sub"), exist_ok=True)
    paths = []
    for k in range(n):
        w, h = size
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        img[: h // 2] //= 2
        ext = "png" if k % 3 else "jpg"
        p = os.path.join(folder, "sub" if k % 4 == 0 else "", f"img{k:03d}.{ext}")
        cv2.imwrite(p, img)
        paths.append(p)
    for name, side in (extra or {}).items():
        p = os.path.join(folder, name)
        cv2.imwrite(p, rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
        paths.append(p)
    with open(os.path.join(folder, "broken.jpg"), "wb") as fh:
        fh.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    return paths


def cli(home, *args, check=True, timeout=180, env=None):
    proc = subprocess.run([sys.executable, "-m", "batchcli", *args], env=cli_env(home, **(env or {})), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode not in (0, 1):
        raise AssertionError(f"batchcli {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def batch_dirs(home) -> list[str]:
    root = os.path.join(home, "batches")
    return sorted(os.path.join(root, d) for d in os.listdir(root)) if os.path.isdir(root) else []


def records(batch_dir: str) -> list[dict]:
    return list(iter_records(os.path.join(batch_dir, "journal.jsonl")))


def item_states(batch_dir: str) -> dict[int, tuple]:
    """Last record per item, keyed by its input: (state, out, sha256, src_stat or error_class)."""
    srcs = {}
    with open(os.path.join(batch_dir, "items.jsonl")) as fh:
        for line in fh:
            rec = json.loads(line)
            srcs[rec["i"]] = rec["rel"] if "rel" in rec else rec["src"]
    out = {}
    for r in records(batch_dir):
        if r["type"] == "item_completed":
            out[srcs[r["i"]]] = ("completed", r.get("out"), r.get("sha256"), r.get("src_stat"))
        elif r["type"] == "item_failed":
            out[srcs[r["i"]]] = ("failed", None, None, r.get("error_class"))
    return out


def tree(folder) -> dict[str, bytes]:
    got = {}
    for base, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(base, f)
            with open(p, "rb") as fh:
                got[os.path.relpath(p, folder)] = fh.read()
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def completed_count(batch_dir: str) -> int:
    try:
        return sum(1 for r in records(batch_dir) if r["type"] == "item_completed")
    except FileNotFoundError:
        return 0


# --- the CLI: a LocalCluster gives what the local pool gives -----------------------------------

@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask-same")
    make_images(root / "in", 24)
    cli(root / "home", "start", str(root / "in"), "--out", str(root / "out-local"), "-w", "2",
        "--pipeline", PIPELINE, "--quiet")
    (batch,) = batch_dirs(root / "home")
    return root, batch


@pytest.mark.slow
@pytest.mark.parametrize("transfer", [False, True], ids=["shared-fs", "transfer"])
def test_local_cluster_matches_local_pool(local_run, transfer):
    root, local_batch = local_run
    out = root / f"out-dask-{int(transfer)}"
    home = root / f"home-{int(transfer)}"
    args = ["start", str(root / "in"), "--out", str(out), "-w", "2", "--executor", "dask",
            "--pipeline", PIPELINE, "--json"] + (["--transfer"] if transfer else [])
    proc = cli(home, *args)
    assert proc.returncode == 1, proc.stderr  # the broken file fails its item, as locally
    (batch,) = batch_dirs(home)

    assert tree(out) == tree(root / "out-local")
    want, got = item_states(local_batch), item_states(batch)
    assert got == want
    assert Counter(s[0] for s in got.values()) == {"completed": 24, "failed": 1}
    for rel, data in tree(out).items():  # the journal's sha256 is the file's
        assert any(s[1] == rel and s[2] == hashlib.sha256(data).hexdigest() for s in got.values())
    started = next(r for r in records(batch) if r["type"] == "batch_started")
    assert started["executor"] == "dask" and started["workers"] == 2
    status = json.loads(cli(home, "status", "--json").stdout)
    assert status["status"] == "completed" and status["completed"] == 24 and status["failed"] == 1


# --- the executor itself on a LocalCluster: crashes, hangs, one set-up per process -------------

class ProbePipeline:
    """Wraps a real pipeline: records each prepare() per process, kills or hangs on named inputs."""

    def __init__(self, inner: Pipeline, log_dir: str):
        self.inner = inner
        self.log_dir = log_dir

    def __getattr__(self, name):
        if name in ("inner", "log_dir") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def prepare(self) -> None:
        with open(os.path.join(self.log_dir, f"prepare-{os.getpid()}-{time.time_ns()}"), "w"):
            pass
        self.inner.prepare()

    def run_batch(self, frames, at=None):
        for frame in frames:
            name = os.path.basename(getattr(frame, "src", ""))
            if name.startswith("kill"):
                os.kill(os.getpid(), signal.SIGKILL)
            if name.startswith("hang"):
                time.sleep(600)
        return self.inner.run_batch(frames, at)


def probe_executor(tmp_path, item_timeout: float = 0.0, retries: int = 1):
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    logs = tmp_path / "prepares"
    logs.mkdir()
    pipe = ProbePipeline(Pipeline.parse(PIPELINE), str(logs))
    cfg = WorkerConfig(pipeline=cloudpickle.dumps(pipe), out_dir=str(tmp_path / "out"),
                       max_file_size=50 << 20, max_pixels=50_000_000)
    opt = RunOptions(workers=2, executor="dask", item_timeout=item_timeout, retries=retries)
    return DaskExecutor(cfg, opt), logs


def drain(ex, limit: float = 90.0) -> list:
    events = []
    deadline = time.monotonic() + limit
    while ex.busy():
        assert time.monotonic() < deadline, "executor never went idle"
        events.extend(ex.poll(0.1))
    return events


@pytest.mark.slow
def test_killer_item_is_quarantined_and_pipeline_prepared_once_per_process(tmp_path):
    paths = make_images(tmp_path / "in", 10, size=(64, 48), extra={"kill.png": 13})
    items = [{"i": k, "src": p, "stem": os.path.splitext(os.path.basename(p))[0]} for k, p in enumerate(paths)]
    ex, logs = probe_executor(tmp_path)
    try:
        ex.submit(items[:6])
        ex.submit(items[6:])
        events = drain(ex)
        lost = [e for e in events if e.kind == "lost"]
        assert [(e.item["src"], e.error_class) for e in lost] == [(paths[-1], "crash")], [e.message for e in lost]
        ex.submit([lost[0].item])  # the runner retries a crash once (--retries 1): it runs alone
        again = drain(ex)
        assert [(e.kind, e.error_class) for e in again] == [("lost", "crash")]
        assert ex.stats.splits == 1
    finally:
        ex.shutdown()
    done = Counter(e.result["i"] for e in events if e.kind == "item")
    assert sorted(done) == list(range(len(paths) - 1)) and set(done.values()) == {1}
    assert all(e.result["ok"] for e in events if e.kind == "item")
    # one prepare per worker process: 2 at start + one per process that replaced a killed one
    pids = Counter(name.split("-")[1] for name in os.listdir(logs))
    assert set(pids.values()) == {1}
    assert len(pids) <= 2 + 2


@pytest.mark.slow
def test_hung_item_times_out_and_the_rest_finish(tmp_path):
    paths = make_images(tmp_path / "in", 6, size=(64, 48), extra={"hang.png": 17})
    items = [{"i": k, "src": p, "stem": os.path.splitext(os.path.basename(p))[0]} for k, p in enumerate(paths)]
    ex, _logs = probe_executor(tmp_path, item_timeout=1.5)
    try:
        ex.submit(items[4:])  # the hung item with a neighbour behind it in its chunk
        ex.submit(items[:4])
        events = drain(ex)
    finally:
        ex.shutdown()
    lost = [e for e in events if e.kind == "lost"]
    assert [(e.item["src"], e.error_class) for e in lost] == [(paths[-1], "timeout")]
    requeued = [it["i"] for e in events if e.kind == "requeue" for it in e.items]
    done = [e.result["i"] for e in events if e.kind == "item"]
    assert sorted(done + requeued) == list(range(len(paths) - 1))
    assert len(set(done)) == len(done)


def test_probe_and_addresses(tmp_path):
    marker = tmp_path / ".probe"
    marker.write_bytes(b"")
    seen = _probe(str(tmp_path), str(marker), str(marker))
    assert seen["out"] and seen["src"]
    missing = _probe(str(tmp_path), str(tmp_path / "absent"), str(tmp_path / "absent.jpg"))
    assert not missing["out"] and not missing["src"]
    assert scheduler_address("dask") is None
    assert scheduler_address("dask://10.0.0.5") == "tcp://10.0.0.5:8786"
    assert scheduler_address("dask://h:9000") == "tcp://h:9000"
    assert scheduler_address("tcp://h:9000") == "tcp://h:9000"


def test_unreachable_scheduler_is_a_config_error_after_batchcli_dask_timeout(tmp_path, monkeypatch):
    from batchcli.errors import ConfigError
    from batchcli.executors.dask import CONNECT_TIMEOUT
    from batchcli.units import env_seconds

    assert CONNECT_TIMEOUT == 20.0  # the default the README gives
    for raw in ("", "abc", "0", "-3", "inf"):  # not a positive number: the default
        monkeypatch.setenv("BATCHCLI_DASK_TIMEOUT", raw)
        assert env_seconds("BATCHCLI_DASK_TIMEOUT", CONNECT_TIMEOUT) == 20.0
    monkeypatch.setenv("BATCHCLI_DASK_TIMEOUT", "1.5")
    cfg = WorkerConfig(pipeline=b"", out_dir=str(tmp_path), max_file_size=1, max_pixels=1)
    opt = RunOptions(workers=1, executor=f"dask://127.0.0.1:{free_port()}")
    with pytest.raises(ConfigError, match="no Dask worker reachable .* within 1.5 s"):
        DaskExecutor(cfg, opt)


def test_a_new_batch_whose_scheduler_is_unreachable_is_left_paused_with_the_reason(tmp_path):
    """Exit 2 with the reason, and the batch it made paused with it: not 'interrupted' (as if
    its command had died), which `recover --resume` would have run on the local pool."""
    make_images(tmp_path / "in", 2, size=(64, 48))
    addr = f"dask://127.0.0.1:{free_port()}"
    proc = cli(tmp_path / "home", "start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--pipeline", PIPELINE,
               "--executor", addr, check=False, env={"BATCHCLI_DASK_TIMEOUT": "2"})
    assert proc.returncode == 2 and proc.stderr.startswith(f"Error: --executor {addr}: no Dask worker reachable")
    assert "within 2 s" in proc.stderr, proc.stderr
    status = json.loads(cli(tmp_path / "home", "status", "--json").stdout)
    assert (status["status"], status["remaining"]) == ("paused", 3), status
    assert status["reason"] == "could not start: " + proc.stderr.strip()[len("Error: "):]
    assert json.loads(cli(tmp_path / "home", "recover", "--resume", "--json").stdout)["recovered_count"] == 0
    proc = cli(tmp_path / "home", "resume", status["batch_id"])  # on the local pool, once the user says so
    assert proc.returncode == 1 and "completed 2, failed 1" in proc.stdout, proc.stdout + proc.stderr


# --- a real scheduler and workers: kill a worker, then the runner ------------------------------

class Cluster:
    """A real `dask scheduler` and `dask worker` processes on 127.0.0.1, each in its own session."""

    def __init__(self, cwd):
        self.cwd = str(cwd)
        self.addr = f"tcp://127.0.0.1:{free_port()}"
        self.scheduler = self._spawn(["scheduler", "--host", "127.0.0.1", "--port", self.addr.rsplit(":", 1)[1],
                                      "--no-dashboard"], os.environ)
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, args, env) -> subprocess.Popen:
        return subprocess.Popen([DASK_BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, start_new_session=True, cwd=self.cwd)

    def add_workers(self, n: int, env=None) -> None:
        for _ in range(n):
            self.workers.append(self._spawn(["worker", self.addr, "--nworkers", "1", "--nthreads", "1",
                                             "--no-dashboard", "--host", "127.0.0.1"], env or cli_env(self.cwd)))
        client = wait_for(lambda: _client(self.addr), 60, "the scheduler")
        try:
            client.wait_for_workers(len(self.workers), timeout=60)
        finally:
            client.close()

    def kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        for p in [c.scheduler, *c.workers]:
            c.kill(p)


def _client(addr):
    try:
        return distributed.Client(addr, timeout="2s", set_as_default=False)
    except OSError:
        return None


def start_runner(tmp_path, n: int, *args, delay: float = 0.05) -> subprocess.Popen:
    """`batchcli start` on n fresh images in the background (home: tmp_path/home): items of
    `delay` seconds (tests/crashops.py), so a kill or a pause lands mid-batch however loaded the
    machine is, until the test removes tmp_path/slow (then the rest runs at full speed); the
    cluster's workers and every CLI process are given the op."""
    slow = tmp_path / "slow"
    slow.touch()
    pipeline = f"crashtest delay={delay} slow={slow} | {PIPELINE}"
    make_images(tmp_path / "in", n, size=(64, 48))
    return subprocess.Popen([sys.executable, "-m", "batchcli", "start", str(tmp_path / "in"), "--out",
                             str(tmp_path / "out"), "-w", "2", "--pipeline", pipeline, "--quiet", *args],
                            env=cli_env(tmp_path / "home"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_scheduler_worker_killed_then_runner_killed(tmp_path, cluster):
    cluster.add_workers(2)
    addr = cluster.addr
    n = 90
    home = tmp_path / "home"
    runner = start_runner(tmp_path, n, "--executor", addr.replace("tcp://", "dask://"))
    try:
        batch = wait_for(lambda: (batch_dirs(home) or [None])[0], 60, "the batch")
        wait_for(lambda: completed_count(batch) >= 10, 120, "10 completed items")
        cluster.kill(cluster.workers[0])  # one Dask worker (nanny and process) dies
        wait_for(lambda: completed_count(batch) >= 40, 120, "40 completed items")
        runner.kill()  # SIGKILL: no chance to write anything
        runner.wait(10)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)
    assert completed_count(batch) < n  # it really died mid-batch
    batch_id = os.path.basename(batch)
    (tmp_path / "slow").unlink()  # the rest at full speed

    rec = cli(home, "recover", "--json", check=False)
    if rec.returncode == 0:
        st = json.loads(cli(home, "status", batch_id, "--json").stdout)
        assert st["status"] == "paused"
    proc = cli(home, "resume", batch_id, "--executor", addr, "-w", "2", "--quiet")
    assert proc.returncode == 1, proc.stderr  # only the broken file failed

    recs = records(batch)
    completed = Counter(r["i"] for r in recs if r["type"] == "item_completed")
    failed = {r["i"] for r in recs if r["type"] == "item_failed"}
    assert len(completed) == n and set(completed.values()) == {1}  # nothing lost, nothing twice
    assert len(failed) == 1 and not failed & set(completed)
    for r in recs:
        if r["type"] == "item_completed":
            with open(tmp_path / "out" / r["out"], "rb") as fh:
                assert hashlib.sha256(fh.read()).hexdigest() == r["sha256"]
    assert len(tree(tmp_path / "out")) == n  # no stray temp files either
    st = json.loads(cli(home, "status", batch_id, "--json").stdout)
    assert st["status"] == "completed" and st["completed"] == n


@pytest.mark.slow
def test_pause_then_scheduler_lost_then_local_resume(tmp_path, cluster):
    """pause from another shell; the scheduler dies mid-run; resume with the local pool finishes."""
    cluster.add_workers(2)
    addr = cluster.addr
    n = 60
    home = tmp_path / "home"
    # items of 0.15 s: the batch outlasts the pause command's own start-up (a second or more on a
    # loaded machine), which items of 0.05 s did not: the batch was completed before the pause came
    runner = start_runner(tmp_path, n, "--executor", addr, "--name", "cl", delay=0.15)
    batch = wait_for(lambda: (batch_dirs(home) or [None])[0], 60, "the batch")
    wait_for(lambda: completed_count(batch) >= 5, 120, "5 completed items")
    cli(home, "pause", "cl")
    assert runner.wait(60) == 3, runner.stderr.read()  # EXIT_PAUSED
    paused_at = completed_count(batch)
    assert paused_at < n
    assert json.loads(cli(home, "status", "cl", "--json").stdout)["status"] == "paused"

    runner = subprocess.Popen([sys.executable, "-m", "batchcli", "resume", "cl", "--executor", addr, "--quiet"],
                              env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: completed_count(batch) >= paused_at + 5, 120, "5 more completed items")
    cluster.kill(cluster.scheduler)
    out, err = runner.communicate(timeout=120)
    assert runner.returncode != 0 and "Traceback" not in err, err
    assert (out + err).count("lost the Dask scheduler") == 1, out + err  # said once, in the summary
    st = json.loads(cli(home, "status", "cl", "--json").stdout)
    assert st["remaining"] > 0 and st["status"] in ("paused", "failed"), st

    (tmp_path / "slow").unlink()  # the rest at full speed
    proc = cli(home, "resume", "cl", "-w", "2", "--quiet")  # the local pool takes over
    assert proc.returncode == 1, proc.stderr  # only the broken file failed
    recs = records(batch)
    completed = Counter(r["i"] for r in recs if r["type"] == "item_completed")
    assert len(completed) == n and set(completed.values()) == {1}
    assert any("lost the Dask scheduler" in str(r.get("reason")) for r in recs)


@pytest.mark.slow
def test_worker_with_another_batchcli_is_refused_at_start(tmp_path, cluster):
    """A worker without this batchcli: exit 2 with a one-line reason, before any item runs."""
    fake = tmp_path / "elsewhere" / "batchcli"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "0.0-other"\n')
    cluster.add_workers(1, env={**os.environ, "PYTHONPATH": str(fake.parent)})
    make_images(tmp_path / "in", 3, size=(64, 48))
    proc = cli(tmp_path / "home", "start", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
               "--pipeline", PIPELINE, "--executor", cluster.addr, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"Error: Dask worker {cluster.addr.rsplit(':', 1)[0]}")
    assert "install the same version on every worker" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "out") or tree(tmp_path / "out") == {}
    # the batch it made is paused with that reason: not 'interrupted' (as if its command had died),
    # which `recover --resume` would have run on this machine
    status = json.loads(cli(tmp_path / "home", "status", "--json").stdout)
    assert status["status"] == "paused" and status["remaining"] == 4, status
    assert status["reason"].startswith(f"could not start: Dask worker {cluster.addr.rsplit(':', 1)[0]}"), status
    assert json.loads(cli(tmp_path / "home", "recover", "--resume", "--json").stdout)["recovered_count"] == 0
