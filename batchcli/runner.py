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
from batchcli.journal import (
    COMPLETED, FAILED, PENDING, JournalWriter, Replay, checkpoint, failure_key, iter_matching, iter_records,
    replay,
)
from batchcli.store import BatchPaths
from batchcli.worker import WorkerConfig

log = logging.getLogger("batchcli.runner")

PROGRESS_EVERY = 0.5
"""Seconds between progress events."""
CONTROL_EVERY = 0.1
"""Seconds between looks at the control file (pause / cancel requests from other shells)."""
SPACE_EVERY = 1.0
"""Seconds between free-space checks of the output folder (--min-free-space)."""
MAX_CHUNK = 16
"""Largest number of items sent to a worker in one message..."""
MAX_BATCH_CHUNK = 256
"""...unless an op takes micro-batches (`model ... batch=N`): then a chunk holds one batch."""

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
    given: dict = field(default_factory=dict)  # the flags as given (journaled; a resume reuses them)


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


PROBE_GRACE = 0.5
"""Seconds to wait for a lock held by no live runner: another shell's probe (`status`, this very
function) holds it for a few microseconds, and must not be mistaken for a runner."""


def _holder_alive(info: dict[str, Any] | None) -> bool:
    """runner.json names a process that is alive and is the one that wrote it (not a reused pid)."""
    pid = (info or {}).get("pid")
    if not pid:
        return False
    started = process_start_time(pid)
    want = (info or {}).get("started")
    return started is not None and (want is None or abs(started - want) < 1.0)


def take_lock(lock: FileLock, paths: BatchPaths, info: dict[str, Any] | None = None) -> bool:
    """Take the batch lock: True at once when free; False at once when a live runner holds it;
    else (a probe from another shell, or a runner still starting) wait up to PROBE_GRACE."""
    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        pass
    if _holder_alive(info if info is not None else read_runner_info(paths)):
        return False
    try:
        lock.acquire(timeout=PROBE_GRACE)
        return True
    except Timeout:
        return False


def runner_alive(paths: BatchPaths) -> dict[str, Any] | None:
    """The live runner's info, or None. The lock decides; pid + start time guard against reuse."""
    info = read_runner_info(paths)
    lock = FileLock(paths.lock)
    if not take_lock(lock, paths, info):
        return info or {"pid": None}
    lock.release()
    return None


def locked_error(paths: BatchPaths, info: dict[str, Any]) -> BatchLocked:
    """The refusal a second runner (or a resume) gets while a live runner holds the lock."""
    return BatchLocked(f"batch {paths.id} is being run by pid {info.get('pid', '?')}; "
                       f"use 'batchcli pause {paths.id}' or wait")


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
    def run(self, resume: bool = False, requeue: list[int] | None = None, requeue_failed: bool = False,
            repair: bool = False, force: bool = False, expect: tuple[str, ...] | None = None) -> RunResult:
        """Run the batch's pending items. `resume` also reprocesses inputs changed since they were
        recorded; `repair` redoes items whose output is missing or changed; `force` runs even when
        the pipeline or options fingerprint changed; `expect` refuses unless the batch is in one
        of these states (a detached start that a pause overtook)."""
        lock = FileLock(self.paths.lock)
        if not take_lock(lock, self.paths):
            raise locked_error(self.paths, read_runner_info(self.paths) or {})
        try:
            self._locked_at = time.time()
            return self._run_locked(resume, list(requeue or []), requeue_failed, repair, force, expect)
        finally:
            for p in (self.paths.runner, self.paths.control):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            try:  # a cache of the replay, so status of a huge batch reads only what comes after
                checkpoint(self.paths.journal, self.total)
            except Exception:  # a cache: never worth failing a run for
                log.warning("could not write the journal snapshot", exc_info=True)
            lock.release()

    # --- internals -------------------------------------------------------------------------
    def _run_locked(self, resume: bool, requeue: list[int], requeue_failed: bool, repair: bool,
                    force: bool, expect: tuple[str, ...] | None) -> RunResult:
        st = replay(self.paths.journal, self.total)
        if expect is not None and st.state not in expect:
            raise InvalidTransition(f"batch {self.paths.id} is {st.state}, not {' or '.join(expect)}; not started")
        if st.state == "cancelled":
            raise InvalidTransition(f"batch {self.paths.id} is cancelled; nothing to resume")
        check_fingerprint(self.paths, self.manifest, st, force)
        if resume:
            requeue += changed_inputs(self.paths, st)
        if repair:
            requeue += bad_outputs(self.paths, st)
        requeue = sorted(set(requeue))
        if st.state == "completed" and st.remaining == 0 and not (requeue or requeue_failed):
            raise InvalidTransition(f"batch {self.paths.id} is completed; nothing to resume "
                                    f"(--retry-failed reruns failed items, --repair missing outputs)")
        self._drop_stale_control()
        crashed = st.state == "running"  # we hold the lock, so the runner the journal names is gone
        if crashed and self.out_dir:
            sweep_dead_tmp(self.out_dir)
        self.journal = JournalWriter(self.paths.journal, st.last_seq, durable=self.opt.durable)
        try:
            if crashed:
                self.journal.append("batch_interrupted", reason=f"runner pid {st.runner_pid} died", pid=st.runner_pid)
            return self._loop(st, resume, requeue, requeue_failed, force)
        finally:
            self.journal.close()

    def _loop(self, st: Replay, resume: bool, requeue: list[int], requeue_failed: bool, force: bool) -> RunResult:
        from batchcli.pipeline import Pipeline
        from batchcli.pool import make_executor

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
        atomic_write(self.paths.runner, json.dumps({  # who holds the lock, for other shells
            "pid": me, "host": socket.gethostname(), "started": process_start_time(me),
            "version": __version__}).encode())
        # the executor first: one that refuses to start (a cluster that cannot see the files)
        # must leave the batch as it was, not "interrupted"
        pipeline = Pipeline.from_spec(self.manifest["pipeline"])
        cfg = WorkerConfig(pipeline=pickle.dumps(pipeline), out_dir=self.out_dir,
                           max_file_size=int(self.manifest["options"].get("max_file_size", 200 << 20)),
                           max_pixels=int(self.manifest["options"].get("max_pixels", 150_000_000)),
                           threads=self.opt.threads, providers=self.opt.providers,
                           memory_limit=self.opt.memory_limit)
        pool = make_executor(self.opt, cfg)
        try:
            if hasattr(pool, "check"):
                first = next(self._pending(st), None)
                if first is not None:
                    pool.check(first)
        except BaseException:
            pool.shutdown(abandon=True)
            raise
        j.append("batch_started" if st.state == "pending" else "batch_resumed",
                 pid=me, host=socket.gethostname(), workers=pool.workers, executor=self.opt.executor,
                 options=self.opt.given,
                 **({"forced": True} if force else {}))
        j.sync()

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
        micro = min(pipeline.batch_size, MAX_BATCH_CHUNK)  # a chunk holds a whole micro-batch
        fed = 0
        exhausted = False
        stopping: str | None = None  # "pause", "cancel", "halt", "disk_full"
        stop_reason: str | None = None
        abandon = False
        processed = failed_now = 0
        last_progress = last_control = last_space = 0.0
        max_fail = _parse_max_failures(self.opt.max_failures)

        def finish_item(res: dict[str, Any]) -> None:
            nonlocal processed, failed_now
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
                failed_now += 1
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
                    if stopping is None and self.opt.min_free_space and self.out_dir and now - last_space >= SPACE_EVERY:
                        last_space = now
                        low = _low_space(self.out_dir, self.opt.min_free_space)
                        if low:
                            stopping, stop_reason = "disk_full", low
                            pool.stop()
                    # feed
                    while stopping is None and pool.capacity() > 0:
                        # chunks shrink as the end nears, so no worker idles while another
                        # still has a long queue (guided self-scheduling)
                        chunk = max(micro, min(MAX_CHUNK, (pending_total - fed) // (4 * pool.workers)), 1)
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
                        fed += len(batch_items)
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
                        elif ev.kind == "pause":  # the executor cannot go on (e.g. lost its scheduler)
                            stopping, stop_reason = "pause", ev.message
                            abandon = True
                    if abandon:
                        break
                    if max_fail is not None and stopping is None and _over(max_fail, failed_now, processed, self.total):
                        stopping = "halt"
                        stop_reason = f"halted: {failed_now} items failed in this run (--max-failures {self.opt.max_failures})"
                        pool.stop()
                    j.maybe_sync()
                    if now - last_progress >= PROGRESS_EVERY:
                        last_progress = now
                        self._progress(counts, processed, t0, pending_total)
            finally:
                pool.shutdown(abandon=abandon)
                if self._emb is not None:  # vectors: durable, and as one N x D .npy at the end
                    self._emb.close()
                    if self.paths and counts[PENDING] == 0:
                        from batchcli.embeddings import export_npy

                        export_npy(self.paths.dir)
            wall = time.monotonic() - t0
            self._progress(counts, processed, t0, pending_total)
            status, code = self._close(st, stopping, stop_reason, sig.signum)
        try:  # the reasons of the items failed now (a retried item that succeeded no longer counts)
            top = checkpoint(self.paths.journal, self.total).failures.most_common(5)
        except Exception:
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
                yield {"i": rec["i"], "src": rec["src"], "stem": rec["stem"],
                       "size": rec.get("size"), "mtime": rec.get("mtime")}

    def _embeddings(self):
        if self._emb is None:
            from batchcli.embeddings import EmbeddingStore

            self._emb = EmbeddingStore(self.paths.dir)
        return self._emb

    def _drop_stale_control(self) -> None:
        """A request written before this runner took the lock was meant for a runner now gone."""
        try:
            if os.stat(self.paths.control).st_mtime < self._locked_at - 1.0:
                os.unlink(self.paths.control)
        except FileNotFoundError:
            pass

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




def _low_space(folder: str, need: int) -> str | None:
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= need:
        return None
    return f"disk full: {free >> 20} MiB free in {folder}, below --min-free-space {need >> 20} MiB"


def current_fingerprint(manifest: dict[str, Any]) -> str:
    """What this code computes now from the manifest's pipeline and options."""
    from batchcli.pipeline import Pipeline

    return Pipeline.from_spec(manifest["pipeline"]).fingerprint(manifest.get("options") or {})


def check_fingerprint(paths: BatchPaths, manifest: dict[str, Any], st: Replay, force: bool) -> None:
    """Refuse (unless forced) when the recorded fingerprint is not what the code would run now."""
    recorded = {manifest.get("fingerprint"), (st.header or {}).get("fingerprint", manifest.get("fingerprint"))}
    now = current_fingerprint(manifest)
    if recorded != {now} and not force:
        raise InvalidTransition(
            f"batch {paths.id}: the pipeline or options changed since the batch was created "
            f"(fingerprint {'/'.join(sorted(str(r) for r in recorded))}, now {now}); "
            f"outputs would mix two versions. Use --force to resume anyway")


def changed_inputs(paths: BatchPaths, st: Replay) -> list[int]:
    """Finished items whose local input's size or mtime differs from what was last recorded."""
    seen: dict[int, list] = {}  # only items reprocessed after a change carry src_stat: few
    for rec in iter_matching(paths.journal, (b'"src_stat":',)):
        if rec.get("type") == "item_completed" and "src_stat" in rec:
            seen[rec["i"]] = rec["src_stat"]
    out = []
    for rec in iter_items(paths.items):
        i = rec["i"]
        if st.items[i] not in (COMPLETED, FAILED) or "size" not in rec or "://" in rec["src"]:
            continue
        try:
            now = os.stat(rec["src"])
        except OSError:
            continue  # gone: keep its result rather than fail it
        if [now.st_size, now.st_mtime] != seen.get(i, [rec["size"], rec.get("mtime")]):
            out.append(i)
    if out:
        log.info("%d inputs changed since they were processed; reprocessing them", len(out))
    return out


def bad_outputs(paths: BatchPaths, st: Replay) -> list[int]:
    """Completed items whose output file is missing or no longer matches its recorded sha256."""
    try:
        from batchcli.verify import find_bad
    except ImportError:
        return _find_bad_inline(paths, st)
    return [i for i in find_bad(paths) if st.items[i] == COMPLETED]


def _find_bad_inline(paths: BatchPaths, st: Replay) -> list[int]:
    import hashlib

    out_dir = paths.load_manifest().get("out_dir")
    if not out_dir:
        return []
    last: dict[int, tuple[str, str | None]] = {}
    for rec in iter_records(paths.journal):
        if rec.get("type") == "item_completed" and rec.get("out"):
            last[rec["i"]] = (rec["out"], rec.get("sha256"))
    bad = []
    for i, (rel, digest) in sorted(last.items()):
        if st.items[i] != COMPLETED:
            continue
        h = hashlib.sha256()
        try:
            with open(os.path.join(out_dir, rel), "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            bad.append(i)
            continue
        if digest and h.hexdigest() != digest:
            bad.append(i)
    return bad


def sweep_dead_tmp(root: str) -> list[str]:
    """Remove temp files under `root` left by writers that are no longer alive (the pid is in
    the name), so a live runner of another batch sharing the folder keeps its own."""
    import contextlib
    import pathlib

    from batchcli.atomic import TMP_MARK

    removed: list[str] = []
    for p in pathlib.Path(root).rglob(f".*{TMP_MARK}*"):
        pid = p.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if p.is_file() and not (pid.isdigit() and _writer_alive(int(pid), p)):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(str(p))
    return removed


def _writer_alive(pid: int, tmp) -> bool:
    """Is the process that wrote `tmp` still running? A zombie, or a pid reused by a process
    started after the file was written, is not it."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= tmp.stat().st_mtime + 1.0
    except (psutil.Error, OSError):
        return False
