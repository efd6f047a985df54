"""Run a batch on a Dask cluster behind the same executor interface as the local process pool.

The runner stays on the user's machine and stays the journal's only writer; Dask only moves
chunks of items to worker processes and their results back. Install with `batchcli[dask]`.

- Each chunk the runner submits becomes one Dask task. In-flight work is bounded by
  `CHUNKS_PER_WORKER` tasks per worker thread of the cluster, re-read as workers come and go.
- Results are consumed with `distributed.as_completed`; `poll(timeout)` waits on it without
  blocking the runner for longer than `timeout`.
- Each Dask worker process builds one `worker.Worker` per batch configuration (the pipeline with
  its ONNX sessions) on first use and keeps it in a module-level cache: never one per item. Its
  thread budget is the worker's `nthreads` (for a LocalCluster started here: the local pool's).
- Worker deaths: the scheduler reruns a dead worker's tasks elsewhere (up to its
  allowed-failures). A task that still kills workers ends in `KilledWorker`; its chunk is then
  split into single items so the innocent ones finish, and a single item that kills workers is
  reported as lost with class `crash` (retried per `--retries` like a local crash, then failed).
- Data paths: shared file system by default (checked before the first task, and on each worker
  that joins later: it must run this batchcli version and see the output folder and the first
  input). With `--transfer` the runner reads the input bytes,
  ships them with the task, and writes the returned output bytes itself, atomically.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import pickle
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

from batchcli import __version__
from batchcli.atomic import atomic_write, tmp_name
from batchcli.errors import ConfigError, ItemError
from batchcli.executors.base import CHUNKS_PER_WORKER, Event, outputs_of
from batchcli.executors.worker import Worker, WorkerConfig
from batchcli.units import env_seconds

log = logging.getLogger("batchcli.dask")

CONNECT_TIMEOUT = 20.0
"""Seconds to wait for a scheduler and a first worker: BATCHCLI_DASK_TIMEOUT's default."""
SLOTS_EVERY = 2.0
"""Seconds between looks at the cluster's size (workers may join or leave)."""
PROGRESS_EVERY = 1.0
"""Seconds between looks at the items the workers are on (only with --item-timeout)."""
CACHED_WORKERS = 2
"""Prepared pipelines a Dask worker process keeps (a long-lived cluster serves many batches)."""


# --- the worker side (runs inside Dask worker processes) -----------------------------------

_CACHE: OrderedDict[str, Worker] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_PROGRESS: dict[str, list] = {}
"""task key -> [position in the chunk, time.time() the item started, results so far]."""


def config_key(cfg: WorkerConfig, threads: int | None, transfer: bool) -> str:
    """A short hash naming one worker set-up: same key, same prepared pipeline."""
    h = hashlib.sha256(pickle.dumps(cfg))
    h.update(f"|{threads}|{int(transfer)}".encode())
    return h.hexdigest()[:20]


def _thread_budget() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except Exception:
        return 1


def cached_worker(cfg: WorkerConfig, key: str, threads: int | None, transfer: bool) -> Worker:
    """This process's Worker for `key`, built once (pipeline.prepare() loads the models)."""
    with _CACHE_LOCK:
        w = _CACHE.get(key)
        if w is not None:
            _CACHE.move_to_end(key)
            return w
        local = replace(cfg, threads=threads or _thread_budget())
        if transfer and cfg.out_dir is not None:
            tmp_out = tempfile.mkdtemp(prefix="batchcli-out-")
            atexit.register(shutil.rmtree, tmp_out, True)
            local = replace(local, out_dir=tmp_out)
        w = Worker(local)
        _CACHE[key] = w
        while len(_CACHE) > CACHED_WORKERS:
            _old_key, old = _CACHE.popitem(last=False)
            if transfer and old.cfg.out_dir:
                shutil.rmtree(old.cfg.out_dir, ignore_errors=True)
        return w


def process_bytes(w: Worker, item: dict[str, Any]) -> dict[str, Any]:
    """--transfer: run one item whose input bytes travel in item["data"]; return the output bytes.

    The input goes to a private temp folder under its own file name, the Worker writes the output
    into its private out folder, and the bytes come back in result["files"] ({relative path: bytes})
    so the runner can write them. Messages name the original path, never the temp one.
    """
    src = item["src"]
    data = item.get("data")
    changed = item.get("src_stat")
    local = {k: v for k, v in item.items() if k not in ("data", "src_stat")}
    tmp_in = None
    if data is not None:
        tmp_in = tempfile.mkdtemp(prefix="batchcli-in-")
        local["src"] = os.path.join(tmp_in, os.path.basename(src) or "input")
        with open(local["src"], "wb") as fh:
            fh.write(data)
    try:
        res = w.process(local)
    finally:
        if tmp_in is not None:
            shutil.rmtree(tmp_in, ignore_errors=True)
    if tmp_in is not None and res.get("error"):
        res["error"] = res["error"].replace(local["src"], src)
    if res.get("ok") and changed is not None:
        res["src_stat"] = changed
    if res.get("ok") and w.cfg.out_dir is not None:
        files: dict[str, bytes] = {}
        for rel in {o["out"] for o in outputs_of(res)} | ({res["routed"]} if res.get("routed") else set()):
            path = os.path.join(w.cfg.out_dir, rel)
            with open(path, "rb") as fh:
                files[rel] = fh.read()
            os.unlink(path)
            try:
                os.removedirs(os.path.dirname(path))  # empty mirrored folders, up to the root
            except OSError:
                pass
        res["files"] = files
        for entry in (res, *res.get("outputs", ())):
            entry.pop("mtime", None)  # the runner writes them: this temp copy's time is not theirs
    return res


def run_chunk(cfg: WorkerConfig, key: str, threads: int | None, transfer: bool,
              items: list[dict[str, Any]]) -> dict[str, Any]:
    """The Dask task: one chunk of items -> {"worker": address, "results": [...]}.

    Never raises for an item (Worker.process does not); a set-up failure comes back as
    {"init_error": message} so the runner can stop the batch with that reason.
    """
    try:
        w = cached_worker(cfg, key, threads, transfer)
    except Exception as exc:
        return {"init_error": f"{type(exc).__name__}: {exc}"}
    try:
        from distributed import get_worker

        me = get_worker().address
        task = get_worker().get_current_task()
    except Exception:
        me, task = "?", None
    results: list[dict[str, Any]] = []
    progress = [0, time.time(), results]
    if task is not None:
        _PROGRESS[str(task)] = progress
    try:
        step = 1 if transfer else w.batch  # `model ... batch=N`: micro-batches within the chunk
        for pos in range(0, len(items), step):
            progress[0], progress[1] = pos, time.time()
            if transfer:
                results.append(process_bytes(w, items[pos]))
            else:
                results.extend(w.process_batch(items[pos:pos + step]))
    finally:
        if task is not None:
            _PROGRESS.pop(str(task), None)
    return {"worker": me, "results": results}


def _probe(out_dir: str | None, marker: str | None, src: str | None) -> dict[str, Any]:
    """Run on every worker before the first task: can it see our files? Which version is it?"""
    import socket

    return {
        "version": __version__,
        "host": socket.gethostname(),
        "out": marker is None or (os.path.exists(marker) and os.access(out_dir or ".", os.W_OK)),
        "src": src is None or os.access(src, os.R_OK),
    }


def _progress(keys: list[str]) -> dict[str, tuple[int, float]]:
    """Which of these tasks this worker is running: key -> (position, seconds on that item)."""
    now = time.time()
    return {k: (p[0], now - p[1]) for k in keys if (p := _PROGRESS.get(k)) is not None}


def _partial(key: str) -> list[dict[str, Any]]:
    """The results a running task has produced so far (it is about to be killed)."""
    p = _PROGRESS.get(key)
    return list(p[2]) if p is not None else []


def _exit_process() -> None:
    os._exit(1)  # the nanny starts a fresh worker process


# --- the runner side -------------------------------------------------------------------------

@dataclass
class _Task:
    items: list[dict[str, Any]]  # as the runner gave them (no bytes)
    payload: list[dict[str, Any]]  # as shipped (with bytes under --transfer)
    worker: str = ""
    pos: int = 0


@dataclass
class _Stats:
    per_worker: Counter = field(default_factory=Counter)  # items finished per Dask worker
    splits: int = 0  # chunks split after KilledWorker
    killed: int = 0  # workers this executor killed for --item-timeout


def scheduler_address(executor: str) -> str | None:
    """None for a LocalCluster (`dask`), else a tcp:// address (`dask://H:P`, `tcp://H:P`)."""
    if executor == "dask":
        return None
    if executor.startswith("dask://"):
        rest = executor[len("dask://"):]
        return f"tcp://{rest if ':' in rest else rest + ':8786'}"
    return executor


def _quiet_dask_logs():
    """Mute the stream handlers Dask installs on its loggers; returns the function that restores them.

    What goes wrong on the cluster reaches the runner as events (and the journal as reasons); Dask's
    own tracebacks on stderr (a lost connection, a restarted worker) would only repeat it noisily.
    """
    saved = [(h, h.level) for h in logging.getLogger("distributed").handlers
             if isinstance(h, logging.StreamHandler)]
    for h, _level in saved:
        h.setLevel(logging.CRITICAL)

    def restore() -> None:
        for h, level in saved:
            h.setLevel(level)

    return restore


class DaskExecutor:
    """Chunks as Dask tasks; per-item results, losses and requeues as the runner expects them."""

    name = "dask"

    def __init__(self, cfg: WorkerConfig, opt: Any):
        try:
            import dask
            from distributed import Client, LocalCluster, as_completed
        except ImportError:
            raise ConfigError("--executor dask needs Dask: pip install 'batchcli[dask]'") from None
        self.cfg = cfg
        self.opt = opt
        self.transfer = bool(opt.transfer)
        self.item_timeout = float(opt.item_timeout or 0.0)
        self.address = scheduler_address(opt.executor)
        self.stats = _Stats()
        self.cluster = None
        self._quiet = _quiet_dask_logs()
        if self.address is None:
            # One task per worker at a time, so a worker's death concerns only the chunk it was
            # running; that chunk is split and retried by us, then by the runner's --retries.
            with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                                  "distributed.scheduler.worker-saturation": 1.0}):
                self.cluster = LocalCluster(
                    n_workers=opt.workers, threads_per_worker=1, processes=True,
                    dashboard_address=None, silence_logs=logging.CRITICAL,
                    memory_limit=opt.memory_limit or "auto")
            self._threads: int | None = cfg.threads
            target: Any = self.cluster
        else:
            self._threads = None  # each worker's own nthreads
            target = self.address
        wait = env_seconds("BATCHCLI_DASK_TIMEOUT", CONNECT_TIMEOUT)
        try:
            self.client = Client(target, set_as_default=False, timeout=f"{wait}s")
            self.client.wait_for_workers(1, timeout=wait)
        except (OSError, TimeoutError) as exc:
            self._close_cluster()
            self._quiet()
            where = self.address or "the local Dask cluster"
            raise ConfigError(f"--executor {opt.executor}: no Dask worker reachable at {where} "
                              f"within {wait:g} s ({type(exc).__name__}: {exc})") from None
        self._key = config_key(cfg, self._threads, self.transfer)
        self._ac = as_completed(with_results=True, raise_errors=False, loop=self.client.loop)
        self._tasks: dict[Any, _Task] = {}
        self._events: list[Event] = []  # produced outside poll (e.g. unreadable input under --transfer)
        self._suspects: set[int] = set()  # items that killed a worker: they run alone from now on
        self._checked = False
        self._probed: dict[str, Any] = {}  # worker address -> its probe answer
        self._first_src: str | None = None
        self._slots = self._count_slots()
        self._slots_at = time.monotonic()
        self._progress_at = 0.0
        self.workers = self._slots

    # --- the executor interface ----------------------------------------------------------
    def capacity(self) -> int:
        now = time.monotonic()
        if now - self._slots_at >= SLOTS_EVERY:
            self._slots_at = now
            self._slots = self._count_slots() or self._slots
            self.workers = self._slots
        return max(0, CHUNKS_PER_WORKER * max(1, self._slots) - len(self._tasks))

    def busy(self) -> bool:
        return bool(self._tasks or self._events)

    def submit(self, items: list[dict[str, Any]]) -> None:
        self.check(items[0])
        payload = [self._ship(it) for it in items] if self.transfer else list(items)
        keep = [(it, p) for it, p in zip(items, payload) if p is not None]
        alone = [(it, p) for it, p in keep if it["i"] in self._suspects]
        rest = [(it, p) for it, p in keep if it["i"] not in self._suspects]
        if rest:
            self._submit([it for it, _ in rest], [p for _, p in rest])
        for it, p in alone:
            self._submit([it], [p])

    def poll(self, timeout: float) -> list[Event]:
        events, self._events = self._events, []
        deadline = time.monotonic() + timeout
        while True:
            done = self._ac.next_batch(block=False)
            if done or events or not self._tasks:
                break
            if self.client.status not in ("running", "connecting"):
                events.append(self._lost_scheduler())
                return events
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._ac.thread_condition:
                self._ac.thread_condition.wait(min(left, 0.05))
        for fut, res in done:
            self._finished(fut, res, events)
        if self.item_timeout > 0 and self._tasks:
            self._check_timeouts(events)
        return events

    def stop(self) -> None:
        """Drop queued work: tasks a worker has started finish; the others come back as requeued."""
        running = set(self._running_on().keys())
        dropped: list[dict[str, Any]] = []
        for fut in [f for f in self._tasks if f.key not in running]:
            dropped.extend(self._tasks.pop(fut).items)
            fut.cancel()
        if dropped:
            self._events.append(Event("requeue", items=dropped))

    def release(self) -> None:
        """Nothing to tell ahead: `shutdown` does it all."""

    def shutdown(self, abandon: bool = False) -> list[dict[str, Any]]:
        """Cancel what is left, disconnect, and stop the LocalCluster if this executor started it."""
        left: list[dict[str, Any]] = []
        for fut, task in list(self._tasks.items()):
            left.extend(task.items)
            fut.cancel()
        self._tasks.clear()
        try:
            self.client.close(timeout=10)
        except Exception:
            pass
        self._close_cluster()
        self._quiet()
        return left

    # --- internals -----------------------------------------------------------------------
    def _close_cluster(self) -> None:
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=10)
            except Exception:
                pass
            self.cluster = None

    def _submit(self, items: list[dict[str, Any]], payload: list[dict[str, Any]]) -> None:
        key = f"batchcli-{items[0]['i']}-{uuid.uuid4().hex[:12]}"
        fut = self.client.submit(run_chunk, self.cfg, self._key, self._threads, self.transfer, payload,
                                 key=key, pure=False, retries=self.opt.retries)
        self._tasks[fut] = _Task(items, payload)
        self._ac.add(fut)

    def _ship(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """--transfer: the item with its input bytes, or None (and a failed result) if unreadable."""
        src = item["src"]
        if src.startswith(("http://", "https://")):
            return dict(item)  # the worker fetches URLs itself
        from batchcli.imaging.headers import given_limits
        from batchcli.imaging.imageio import Limits, read_bytes

        try:
            if item.get("video"):  # streamed from and to files, segment by segment: not shipped whole
                raise ItemError("unsupported", "videos need the input and output folders shared with the "
                                               "workers (run without --transfer)")
            data = read_bytes(src, Limits(self.cfg.max_file_size, self.cfg.max_pixels,
                                          given_limits(self.cfg.extra.get("limits_given"))))
        except ItemError as exc:
            self._events.append(Event("item", result={
                "i": item["i"], "ok": False, "error_class": exc.error_class, "error": f"{src}: {exc}", "ms": 0.0}))
            return None
        shipped = {k: v for k, v in item.items() if k not in ("size", "mtime")}  # the copy's stat means nothing
        shipped["data"] = data
        if "size" in item:  # the input changed since discovery: the worker passes that on, as locally
            try:
                st = os.stat(src)
                if [st.st_size, st.st_mtime] != [item["size"], item.get("mtime")]:
                    shipped["src_stat"] = [st.st_size, st.st_mtime]
            except OSError:
                pass
        return shipped

    def check(self, first: dict[str, Any]) -> None:
        """Before the first task: every worker runs this batchcli version and sees our files.

        Raises ConfigError with a one-line reason. Runs once (the first submit calls it; a runner
        may call it earlier, before journaling anything)."""
        if self._checked:
            return
        if not self.transfer and not first["src"].startswith(("http://", "https://")):
            self._first_src = first["src"]
        problem = self._probe_workers(None)
        if problem:
            raise ConfigError(problem)
        self._checked = True

    def _probe_workers(self, workers: list[str] | None) -> str | None:
        """What is wrong with these workers (all when None), as a one-line message, or None."""
        out_dir = self.cfg.out_dir
        marker = None
        if not self.transfer and out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            marker = tmp_name(os.path.join(out_dir, "dask-probe"))
            with open(marker, "wb"):
                pass
        src = self._first_src
        try:
            answers = self.client.run(_probe, out_dir, marker, src, workers=workers, on_error="return")
        finally:
            if marker is not None:
                try:
                    os.unlink(marker)
                except OSError:
                    pass
        self._probed.update(answers)
        for addr, r in sorted(answers.items()):
            if isinstance(r, BaseException):
                return (f"Dask worker {addr} cannot run batchcli tasks ({type(r).__name__}: {r}); "
                        f"install batchcli {__version__} on every worker")
            if r["version"] != __version__:
                return (f"Dask worker {addr} has batchcli {r['version']}, this runner {__version__}: "
                        f"install the same version on every worker")
            if not r["out"]:
                return (f"Dask worker {addr} (host {r['host']}) cannot see or write the output folder "
                        f"{out_dir}: put it on a file system every worker shares, or use --transfer")
            if not r["src"]:
                return (f"Dask worker {addr} (host {r['host']}) cannot read the input {src}: "
                        f"inputs must be on a file system every worker shares, or use --transfer")
        return None

    def _count_slots(self) -> int:
        """Worker threads in the cluster now. A worker that joined since the start is probed
        like the first ones; one that fails stops the batch with the reason (fix it, resume)."""
        try:
            nthreads = self.client.nthreads()
        except Exception:
            return 0
        joined = [a for a in nthreads if a not in self._probed]
        if self._checked and joined:
            try:
                problem = self._probe_workers(joined)
            except Exception:
                problem = None  # it left again, or the scheduler is going: poll() reports that
            if problem:
                self._events.append(Event("fatal", message=problem))
        return sum(nthreads.values())

    def _finished(self, fut: Any, res: Any, events: list[Event]) -> None:
        task = self._tasks.pop(fut, None)
        if task is None:
            return  # cancelled by us: its items were already handed back
        if fut.status == "finished":
            if "init_error" in res:
                events.append(Event("fatal", message=f"a Dask worker failed to start: {res['init_error']}"))
                return
            self.stats.per_worker[res["worker"]] += len(res["results"])
            for r in res["results"]:
                events.append(Event("item", result=self._land(r) if self.transfer else r))
            return
        from distributed.scheduler import KilledWorker

        if isinstance(res, tuple) and len(res) == 3 and isinstance(res[1], BaseException):
            res = res[1]  # (type, exception, traceback) for a task that errred
        if isinstance(res, KilledWorker):
            if len(task.items) > 1:
                self.stats.splits += 1
                for it, p in zip(task.items, task.payload):
                    self._submit([it], [p])
                return
            self._suspects.add(task.items[0]["i"])
            events.append(Event("lost", item=task.items[0], error_class="crash",
                                message="it killed its Dask worker (KilledWorker)"))
            return
        if fut.status == "cancelled" or type(res).__name__ == "CancelledError":
            events.append(self._lost_scheduler())
            return
        for it in task.items:  # the task itself raised: not an item's verdict, a crash to retry
            events.append(Event("lost", item=it, error_class="crash",
                                message=f"Dask task failed: {type(res).__name__}: {res}"[:300]))

    def _lost_scheduler(self) -> Event:
        where = self.address or "the local Dask cluster"
        log.info("lost the Dask scheduler at %s; unfinished items stay pending", where)  # the pause says it
        return Event("pause", message=f"lost the Dask scheduler at {where}")

    def _land(self, res: dict[str, Any]) -> dict[str, Any]:
        """--transfer: write the returned output bytes under out_dir, atomically, then report."""
        files = res.pop("files", None) or {}
        if not res.get("ok") or not files:
            return res
        for out in outputs_of(res):
            data = files.get(out["out"])
            if data is not None and hashlib.sha256(data).hexdigest() != out.get("sha256"):
                return {"i": res["i"], "ok": False, "error_class": "io", "ms": res.get("ms"),
                        "error": f"{out['out']}: output bytes changed in transfer (sha256 mismatch)"}
        for rel, data in files.items():
            path = os.path.join(self.cfg.out_dir, rel)
            try:
                atomic_write(path, data, durable=getattr(self.opt, "durable", True))
            except OSError as exc:
                import errno

                cls = "disk_full" if exc.errno == errno.ENOSPC else "io"
                return {"i": res["i"], "ok": False, "error_class": cls, "ms": res.get("ms"),
                        "error": f"cannot write {path}: {exc.strerror or exc}"}
        return res

    def _running_on(self) -> dict[str, tuple[str, int, float]]:
        """Our tasks a worker is executing now: key -> (worker address, position, seconds on item)."""
        keys = [f.key for f in self._tasks]
        if not keys:
            return {}
        try:
            answers = self.client.run(_progress, keys, on_error="ignore")
        except Exception:
            return {}
        out = {}
        for addr, got in answers.items():
            for k, (pos, secs) in got.items():
                out[k] = (addr, pos, secs)
        return out

    def _check_timeouts(self, events: list[Event]) -> None:
        """Best effort: kill the worker on an item running past --item-timeout; fail that item."""
        now = time.monotonic()
        if now - self._progress_at < PROGRESS_EVERY:
            return
        self._progress_at = now
        running = self._running_on()
        by_key = {f.key: f for f in self._tasks}
        for key, (addr, pos, secs) in running.items():
            fut = by_key.get(key)
            if fut is None or secs <= self.item_timeout:
                continue
            task = self._tasks.pop(fut)
            try:
                done = self.client.run(_partial, key, workers=[addr]).get(addr, [])
            except Exception:
                done = []
            fut.cancel()
            try:
                self.client.run(_exit_process, workers=[addr], wait=False)
                self.stats.killed += 1
            except Exception:
                pass
            finished = {r["i"] for r in done}
            for r in done:
                events.append(Event("item", result=self._land(r) if self.transfer else r))
            hung = task.items[pos] if pos < len(task.items) else None
            if hung is not None and hung["i"] not in finished:
                events.append(Event("lost", item=hung, error_class="timeout",
                                    message=f"no result after {self.item_timeout:g} s (Dask worker restarted)"))
            rest = [it for it in task.items[pos + 1:] if it["i"] not in finished]
            if rest:
                events.append(Event("requeue", items=rest))
