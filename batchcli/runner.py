"""The parent side of a run: hold the lock, replay the journal, feed the executor, journal results.

The runner is the journal's only writer. It streams items.jsonl (it never holds the item list),
keeps one byte of state per item, and records `item_completed` only after the worker reports
the output durable on disk.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from filelock import FileLock, Timeout

from batchcli import __version__
from batchcli.atomic import atomic_write
from batchcli.discover import iter_items
from batchcli.errors import (
    EXIT_CANCELLED, EXIT_FAILED_ITEMS, EXIT_OK, EXIT_PAUSED, EXIT_SIGINT, EXIT_SIGTERM,
    BatchLocked, InvalidTransition, ItemError,
)
from batchcli.journal import COMPLETED, FAILED, PENDING, JournalWriter, Replay, failure_key, replay
from batchcli.store import BatchPaths

log = logging.getLogger("batchcli.runner")

PROGRESS_EVERY = 0.5
"""Seconds between progress events."""
CONTROL_EVERY = 0.1
"""Seconds between looks at the control file (pause / cancel requests from other shells)."""
MAX_CHUNK = 16
"""Largest number of items sent to a worker in one message."""

EventSink = Callable[[dict[str, Any]], None]


@dataclass
class RunOptions:
    workers: int = 1
    threads: int = 1
    item_timeout: float = 0.0
    retries: int = 1
    max_failures: str | None = None  # "N" or "P%"
    providers: str = "cpu"
    memory_limit: int = 0  # bytes of address space per worker (--worker-memory); 0 = no cap
    min_free_space: int = 0  # bytes (--min-free-space): pause the batch below this
    durable: bool = True
    executor: str = "local"  # "local", "dask" (a LocalCluster) or "dask://host:port"
    transfer: bool = False  # --transfer: ship bytes to and from executor workers


@dataclass
class RunResult:
    batch_id: str
    status: str
    exit_code: int
    total: int
    completed: int
    failed: int
    skipped: int
    remaining: int
    processed_now: int
    wall: float
    reason: str | None = None
    out_dir: str | None = None
    top_failures: list[tuple[str, int]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.processed_now / self.wall if self.wall > 0 else 0.0


def read_runner_info(paths: BatchPaths) -> dict[str, Any] | None:
    try:
        with open(paths.runner, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def runner_alive(paths: BatchPaths) -> dict[str, Any] | None:
    """The live runner's info, or None. The lock decides; pid + start time guard against reuse."""
    info = read_runner_info(paths)
    lock = FileLock(paths.lock)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return info or {"pid": None}
    else:
        lock.release()
        return None


class _Signals:
    """First SIGINT/SIGTERM: pause after in-flight items. Second: abandon them now."""

    def __init__(self) -> None:
        self.count = 0
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Signals":
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.signum = self.signum or signum

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class Runner:
    def __init__(self, paths: BatchPaths, options: RunOptions, on_event: EventSink | None = None):
        self.paths = paths
        self.opt = options
        self.emit: EventSink = on_event or (lambda e: None)
        self.manifest = paths.load_manifest()
        self.total = int(self.manifest["total"])
        self.out_dir = self.manifest.get("out_dir")
        self._emb = None

    # --- public --------------------------------------------------------------------------
    def run(self, resume: bool = False, requeue: list[int] | None = None, requeue_failed: bool = False) -> RunResult:
        lock = FileLock(self.paths.lock)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            info = read_runner_info(self.paths) or {}
            raise BatchLocked(f"batch {self.paths.id} is being run by pid {info.get('pid', '?')}; "
                              f"use 'batchcli pause {self.paths.id}' or wait") from None
        try:
            return self._run_locked(resume, requeue or [], requeue_failed)
        finally:
            for p in (self.paths.runner, self.paths.control):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            lock.release()

    # --- internals -------------------------------------------------------------------------
    def _run_locked(self, resume: bool, requeue: list[int], requeue_failed: bool) -> RunResult:
        st = replay(self.paths.journal, self.total)
        if st.state in ("completed", "cancelled") and not (requeue or requeue_failed):
            raise InvalidTransition(f"batch {self.paths.id} is {st.state}; nothing to resume")
        try:
            os.unlink(self.paths.control)  # a stale request must not stop the new run at once
        except FileNotFoundError:
            pass
        self.journal = JournalWriter(self.paths.journal, st.last_seq, durable=self.opt.durable)
        try:
            return self._loop(st, resume, requeue, requeue_failed)
        finally:
            self.journal.close()

    def _loop(self, st: Replay, resume: bool, requeue: list[int], requeue_failed: bool) -> RunResult:
        from batchcli.pipeline import Pipeline
        from batchcli.pool import make_executor
        from batchcli.worker import WorkerConfig

        j = self.journal
        if requeue or requeue_failed:
            j.append("items_requeued", items=requeue, all_failed=requeue_failed)
            for i in requeue:
                if 0 <= i < self.total:
                    st.counts[st.items[i]] -= 1
                    st.counts[PENDING] += 1
                    st.items[i] = PENDING
            if requeue_failed:
                for i in range(self.total):
                    if st.items[i] == FAILED:
                        st.items[i] = PENDING
                st.counts[PENDING] += st.counts[FAILED]
                st.counts[FAILED] = 0
        me = os.getpid()
        j.append("batch_resumed" if resume or st.state != "pending" else "batch_started",
                 pid=me, host=socket.gethostname(), workers=self.opt.workers, executor=self.opt.executor)
        j.sync()
        atomic_write(self.paths.runner, json.dumps({
            "pid": me, "host": socket.gethostname(), "started": process_start_time(me),
            "version": __version__}).encode())

        pipeline = Pipeline.from_spec(self.manifest["pipeline"])
        cfg = WorkerConfig(pipeline=pickle.dumps(pipeline), out_dir=self.out_dir,
                           max_file_size=int(self.manifest["options"].get("max_file_size", 200 << 20)),
                           max_pixels=int(self.manifest["options"].get("max_pixels", 150_000_000)),
                           threads=self.opt.threads, providers=self.opt.providers,
                           memory_limit=self.opt.memory_limit)
        pool = make_executor(self.opt, cfg)
        t0 = time.monotonic()
        counts = st.counts
        failures: Counter = Counter(st.failures)
        pending_total = counts[PENDING]
        self.emit({"type": "started", "batch_id": self.paths.id, "total": self.total,
                   "remaining": pending_total, "workers": self.opt.workers, "resumed": resume,
                   "out_dir": self.out_dir})
        source = self._pending(st)
        retry_q: list[dict[str, Any]] = []
        attempts: dict[int, int] = {}
        chunk = max(1, min(MAX_CHUNK, pending_total // max(1, self.opt.workers * 8)))
        exhausted = False
        stopping: str | None = None  # "pause", "cancel", "halt", "disk_full"
        stop_reason: str | None = None
        abandon = False
        processed = 0
        last_progress = last_control = 0.0
        max_fail = _parse_max_failures(self.opt.max_failures)

        def finish_item(res: dict[str, Any]) -> None:
            nonlocal processed
            i = res["i"]
            old = st.items[i]
            if res.get("ok"):
                rec = {k: v for k, v in res.items() if k not in ("ok", "i")}
                vector = (rec.get("meta") or {}).get("embed", {}).pop("vector", None)
                if vector is not None:
                    self._embeddings().append(i, vector)
                j.append("item_completed", i=i, **rec)
                new = COMPLETED
            else:
                j.append("item_failed", i=i, error_class=res.get("error_class"), error=res.get("error"),
                         ms=res.get("ms"), attempts=attempts.get(i, 0) + 1)
                new = FAILED
                failures[failure_key(res.get("error_class"), res.get("error"))] += 1
                self.emit({"type": "item_failed", "i": i, "error_class": res.get("error_class"),
                           "error": res.get("error")})
            counts[old] -= 1
            counts[new] += 1
            st.items[i] = new
            attempts.pop(i, None)
            processed += 1

        def handle_failure(res: dict[str, Any], item: dict[str, Any] | None) -> None:
            nonlocal stopping, stop_reason
            cls = res.get("error_class", "")
            i = res["i"]
            if cls == "disk_full":  # not the item's fault: pause the batch, keep the item pending
                if stopping is None:
                    stopping, stop_reason = "disk_full", f"disk full: {res.get('error')}"
                    pool.stop()
                return
            if cls in ItemError.TRANSIENT and item is not None and attempts.get(i, 0) < self.opt.retries:
                attempts[i] = attempts.get(i, 0) + 1
                retry_q.append(item)
                return
            finish_item(res)

        inflight: dict[int, dict[str, Any]] = {}  # i -> item, for retries (bounded by capacity)
        with _Signals() as sig:
            try:
                while True:
                    now = time.monotonic()
                    if sig.count and stopping not in ("signal",):
                        stopping, stop_reason = "signal", f"interrupted by {signal.Signals(sig.signum).name}"
                        pool.stop()
                    if sig.count >= 2 and not abandon:
                        abandon = True
                        break
                    if stopping is None and now - last_control >= CONTROL_EVERY:
                        last_control = now
                        req = self._control()
                        if req:
                            stopping = "cancel" if req == "cancel" else "pause"
                            stop_reason = f"{req} requested"
                            if req in ("cancel", "pause-now"):
                                abandon = True
                                break
                            pool.stop()
                    # feed
                    while stopping is None and pool.capacity() > 0:
                        batch_items: list[dict[str, Any]] = []
                        while retry_q and len(batch_items) < chunk:
                            batch_items.append(retry_q.pop())
                        while not exhausted and len(batch_items) < chunk:
                            nxt = next(source, None)
                            if nxt is None:
                                exhausted = True
                                break
                            batch_items.append(nxt)
                        if not batch_items:
                            break
                        for it in batch_items:
                            inflight[it["i"]] = it
                        pool.submit(batch_items)
                    if exhausted and not retry_q and not pool.busy():
                        break
                    if stopping is not None and not pool.busy():
                        break
                    for ev in pool.poll(0.05):
                        if ev.kind == "item":
                            res = ev.result
                            item = inflight.pop(res["i"], None)
                            if res.get("ok"):
                                finish_item(res)
                            else:
                                handle_failure(res, item)
                        elif ev.kind == "lost":
                            item = ev.item
                            inflight.pop(item["i"], None)
                            handle_failure({"i": item["i"], "ok": False, "error_class": ev.error_class,
                                            "error": f"{item['src']}: {ev.message}"}, item)
                        elif ev.kind == "requeue":
                            for it in ev.items:
                                inflight.pop(it["i"], None)
                                if stopping is None:
                                    retry_q.append(it)
                        elif ev.kind == "fatal":
                            stopping, stop_reason = "halt", ev.message
                            abandon = True
                    if abandon:
                        break
                    if max_fail is not None and stopping is None and _over(max_fail, counts[FAILED], processed, self.total):
                        stopping = "halt"
                        stop_reason = f"halted: {counts[FAILED]} failed items (--max-failures {self.opt.max_failures})"
                        pool.stop()
                    j.maybe_sync()
                    if now - last_progress >= PROGRESS_EVERY:
                        last_progress = now
                        self._progress(counts, processed, t0, pending_total)
            finally:
                pool.shutdown(abandon=abandon)
            wall = time.monotonic() - t0
            self._progress(counts, processed, t0, pending_total)
            status, code = self._close(st, stopping, stop_reason, sig.signum)
        top = failures.most_common(5)
        result = RunResult(self.paths.id, status, code, self.total, counts[COMPLETED], counts[FAILED],
                           st.skipped if status != "cancelled" else self.total - counts[COMPLETED] - counts[FAILED],
                           counts[PENDING] if status != "cancelled" else 0, processed, wall,
                           stop_reason, self.out_dir, top)
        self.emit({"type": "finished" if status not in ("paused",) else "paused", "status": status,
                   "exit_code": code, "completed": result.completed, "failed": result.failed,
                   "remaining": result.remaining, "total": self.total, "wall_s": round(wall, 3),
                   "rate": round(result.rate, 2), "reason": stop_reason, "out_dir": self.out_dir,
                   "top_failures": [{"reason": r, "count": c} for r, c in top]})
        return result

    def _close(self, st: Replay, stopping: str | None, reason: str | None, signum: int) -> tuple[str, int]:
        j = self.journal
        counts = st.counts
        if stopping == "cancel":
            j.append("batch_cancelled", reason=reason)
            status, code = "cancelled", EXIT_CANCELLED
        elif stopping == "halt":
            j.append("batch_finished", status="failed", reason=reason)
            status, code = "failed", EXIT_FAILED_ITEMS
        elif stopping in ("pause", "signal", "disk_full") and counts[PENDING] > 0:
            j.append("batch_paused", reason=reason)
            status = "paused"
            code = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}.get(signum, EXIT_PAUSED) \
                if stopping == "signal" else EXIT_PAUSED
        elif counts[PENDING] > 0:  # should not happen: work left but nothing asked us to stop
            j.append("batch_paused", reason="runner stopped with items left")
            status, code = "paused", EXIT_PAUSED
        else:
            done, failed = counts[COMPLETED], counts[FAILED]
            status = "failed" if failed and not done else "completed"
            j.append("batch_finished", status=status, reason=None)
            code = EXIT_OK if failed == 0 else EXIT_FAILED_ITEMS
        j.sync()
        return status, code

    def _pending(self, st: Replay) -> Iterator[dict[str, Any]]:
        items = st.items
        for rec in iter_items(self.paths.items):
            if items[rec["i"]] == PENDING:
                yield {"i": rec["i"], "src": rec["src"], "stem": rec["stem"]}

    def _embeddings(self):
        if self._emb is None:
            from batchcli.embeddings import EmbeddingStore

            self._emb = EmbeddingStore(self.paths.dir)
        return self._emb

    def _control(self) -> str | None:
        try:
            with open(self.paths.control) as fh:
                req = fh.read().strip()
        except FileNotFoundError:
            return None
        return req if req in ("pause", "pause-now", "cancel") else None

    def _progress(self, counts: Counter, processed: int, t0: float, pending_total: int) -> None:
        el = time.monotonic() - t0
        rate = processed / el if el > 0 else 0.0
        left = counts[PENDING]
        self.emit({"type": "progress", "completed": counts[COMPLETED], "failed": counts[FAILED],
                   "total": self.total, "remaining": left, "rate": round(rate, 2),
                   "eta_s": round(left / rate, 1) if rate > 0 else None, "elapsed_s": round(el, 2)})


def _parse_max_failures(spec: str | None) -> tuple[str, float] | None:
    if not spec:
        return None
    s = spec.strip()
    if s.endswith("%"):
        return ("pct", float(s[:-1]))
    return ("n", float(int(s)))


def _over(rule: tuple[str, float], failed: int, processed: int, total: int) -> bool:
    kind, val = rule
    if kind == "n":
        return failed >= val
    return processed >= min(20, total) and failed * 100.0 >= val * max(processed, 1) and failed > 0


def request(paths: BatchPaths, what: str) -> None:
    """Ask the live runner (through the control file) to pause, pause-now or cancel."""
    atomic_write(paths.control, what.encode() + b"\n", durable=False)


