"""The parent side of a run: hold the lock, replay the journal, feed the executor, journal results.
The runner is the journal's only writer. It streams items.jsonl (never holding the item list), keeps
one byte of state per item, and records `item_completed` only once the output is durable on disk."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchcli import __version__
from batchcli.atomic import atomic_write
from batchcli.engine.checks import changed_inputs, check_fingerprint, journal_lost, low_space, out_moved, over_failures, parse_max_failures
from batchcli.engine.gate import Gate
from batchcli.engine.journal import COMPLETED, FAILED, PENDING, JournalWriter, Replay, checkpoint, failure_key, replay
from batchcli.engine.liveness import FileLock, locked_error, process_start_time, read_runner_info, strongest_request, sweep_dead_tmp, take_lock
from batchcli.engine.outcome import RunResult, close_run, refused
from batchcli.engine.outcome import Signals as _Signals
from batchcli.engine.shards import open_shards
from batchcli.engine.store import BatchPaths
from batchcli.engine.videos import VideoGate, discard_segments, segment_chains
from batchcli.engine.watch import HotFolder
from batchcli.errors import ConfigError, InvalidTransition, ItemError, JournalWriteError
from batchcli.executors.base import CHUNKS_PER_WORKER, Idle
from batchcli.executors.worker import WorkerConfig
from batchcli.inputs.discover import iter_items

log = logging.getLogger("batchcli.runner")

PROGRESS_EVERY = 0.5
"""Seconds between progress events."""
IDLE_PROGRESS_EVERY = 60.0  # seconds between progress events of a watch whose counts stay (waiting for files)
CONTROL_EVERY = 0.1
"""Seconds between looks at the control file (pause / cancel requests from other shells)."""
SPACE_EVERY = 1.0
"""Seconds between free-space checks of the output folder (--min-free-space)."""
MAX_CHUNK = 64
"""Largest number of items sent to a worker in one message..."""
MAX_BATCH_CHUNK = 256
"""...unless an op takes micro-batches (`model ... batch=N`): then a chunk holds one batch."""
IDLE_WAIT = 0.1
"""Seconds per loop while the runner has no worker (queued, throttled)."""
ABANDON_GRACE = 0.3
"""Seconds a cancel or pause --now waits for results whose outputs are being made durable."""

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
    slots: int = 0  # the home's worker budget (0: read it: BATCHCLI_SLOTS, config.toml, the CPUs)
    max_load: str | None = None  # --max-load: "1.5" (load per core) or "40%" (CPU pressure)
    min_free_memory: int = 0  # --min-free-memory, bytes


class Runner:
    def __init__(self, paths: BatchPaths, options: RunOptions, on_event: EventSink | None = None):
        self.paths = paths
        self.opt = options
        self.emit: EventSink = on_event or (lambda e: None)
        self.manifest = paths.load_manifest()
        self.total = int(self.manifest["total"])
        self.out_dir = self.manifest.get("out_dir")
        self._emb = None
        self.feed = None
        self._videos: VideoGate | None = None

    # --- public --------------------------------------------------------------------------
    def run(self, resume: bool = False, requeue: list[int] | None = None, requeue_failed: bool = False,
            repair: Sequence[int] = (), force: bool = False, expect: tuple[str, ...] | None = None) -> RunResult:
        """Run the batch's pending items. `resume` also reprocesses inputs changed since they were
        recorded; `repair` names items whose output was found missing or changed (the caller's
        verify): those still completed are redone; `force` runs even when
        the pipeline or options fingerprint changed; `expect` refuses unless the batch is in one
        of these states (a detached start that a pause overtook)."""
        if self.manifest.get("shards") and self.opt.executor != "local":
            raise ConfigError(f"--executor {self.opt.executor}: a batch with --shards runs on the local executor")
        lock = FileLock(self.paths.lock)
        if not take_lock(lock, self.paths):
            raise locked_error(self.paths, read_runner_info(self.paths) or {})
        try:
            self._locked_at = time.time()
            me = os.getpid()
            atomic_write(self.paths.runner, json.dumps({  # who holds the lock, for other shells
                "pid": me, "host": socket.gethostname(), "started": process_start_time(me),
                "version": __version__}).encode())
            return self._run_locked(resume, list(requeue or []), requeue_failed, repair, force, expect)
        finally:
            for p in (self.paths.runner, self.paths.control):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            try:  # a cache of the replay, so status of a huge batch reads only what comes after
                checkpoint(self.paths.journal, self.total, self._folded())
            except Exception:  # a cache: never worth failing a run for
                log.warning("could not write the journal snapshot", exc_info=True)
            if self.manifest.get("kind") == "sync":  # the next sync asks the catalog at once
                from batchcli.engine.syncfast import ended

                ended(self.paths)
            lock.release()

    # --- internals -------------------------------------------------------------------------
    def _run_locked(self, resume: bool, requeue: list[int], requeue_failed: bool, repair: Sequence[int],
                    force: bool, expect: tuple[str, ...] | None) -> RunResult:
        st = replay(self.paths.journal, self.total)
        if expect is not None and st.state not in expect:
            raise InvalidTransition(f"batch {self.paths.id} is {st.state}, not {' or '.join(expect)}; not started")
        if st.state == "cancelled":
            raise InvalidTransition(f"batch {self.paths.id} is cancelled; nothing to resume")
        check_fingerprint(self.paths, self.manifest, st, force)
        if resume:
            requeue += changed_inputs(self.paths, st)
        requeue += [i for i in repair if 0 <= i < self.total and st.items[i] == COMPLETED]
        requeue = sorted(set(requeue))
        if st.state == "completed" and st.remaining == 0 and not (requeue or requeue_failed):
            raise InvalidTransition(f"batch {self.paths.id} is completed; nothing to resume "
                                    f"(--retry-failed reruns failed items, --repair missing outputs)")
        if st.state != "pending":  # a new batch checked its claims when it was created
            self._check_claims(st, requeue, requeue_failed)
        self._drop_stale_control()
        from batchcli.pipeline import Pipeline

        pipeline = self._pipeline = Pipeline.from_manifest(self.manifest)
        if self.opt.executor in ("", "local") and st.state != "scheduled" and \
                (st.remaining or requeue or requeue_failed or self.manifest.get("watch")):
            from batchcli.executors.forkserve import warm_up  # workers' imports, while the journal is written

            warm_up(pipeline.worker_modules(), self.opt.threads)
        crashed = st.state == "running"  # we hold the lock, so the runner the journal names is gone
        if crashed and self.out_dir:
            sweep_dead_tmp(self.out_dir)
        self.journal = JournalWriter(self.paths.journal, st.last_seq, durable=self.opt.durable, fold_from=st)
        try:
            if crashed:
                self.journal.append("batch_interrupted", reason=f"runner pid {st.runner_pid} died", pid=st.runner_pid)
            if st.state == "scheduled":  # hold it until due (engine/schedule.py)
                from batchcli.engine.schedule import wait_scheduled

                early = wait_scheduled(self.paths, st, self.journal, self.emit, self._control, self.out_dir)
                if early is not None:
                    return early
            return self._loop(st, resume, requeue, requeue_failed, force)
        finally:
            self.journal.close()

    def _loop(self, st: Replay, resume: bool, requeue: list[int], requeue_failed: bool, force: bool) -> RunResult:
        from batchcli.executors.factory import make_executor

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
        # the executor first: one that refuses to start (a cluster that cannot see the files) must not leave "interrupted"
        pipeline = self._pipeline
        cfg = WorkerConfig(pipeline=pickle.dumps(pipeline), out_dir=self.out_dir,
                           max_file_size=int(self.manifest["options"].get("max_file_size", 200 << 20)),
                           max_pixels=int(self.manifest["options"].get("max_pixels", 150_000_000)),
                           threads=self.opt.threads, providers=self.opt.providers,
                           memory_limit=self.opt.memory_limit, extra=_worker_options(self.manifest))
        watching = bool(self.manifest.get("watch"))  # a hot folder (engine/watch.py): work keeps landing
        opt = self.opt
        if not watching:  # never more workers than items to do (a 3-item batch with --workers 64 starts 3)
            opt = dataclasses.replace(opt, workers=max(1, min(opt.workers, st.counts[PENDING])))
        local = opt.executor in ("", "local")  # local workers come with slots of the home's budget
        pool = None
        try:
            pool = make_executor(opt, cfg, start=0 if local else None) if st.counts[PENDING] or watching \
                else Idle(opt.workers)
            if hasattr(pool, "check") and (first := next(self._pending(st), None)) is not None:
                pool.check(first)
            gate = Gate.for_run(self.paths, self.opt, pool.workers, st, self.emit) if hasattr(pool, "grow") else None
        except BaseException as exc:
            refused(j, st, exc, self.opt.given)  # a new batch stays paused with the reason, a paused one as it was
            if pool is not None:
                pool.shutdown(abandon=True)
            raise
        fresh = st.state in ("pending", "scheduled")
        announced = False

        def announce() -> None:  # recorded once the batch has a worker: a queued batch has not started
            nonlocal announced
            announced = True
            j.append("batch_started" if fresh else "batch_resumed",
                     pid=me, host=socket.gethostname(), workers=pool.workers, executor=self.opt.executor,
                     options=self.opt.given, **({"priority": gate.priority} if gate and gate.priority else {}),
                     **({"forced": True} if force else {}))
            j.sync()

        if gate is None or watching:  # a watch has started once it watches, with or without a slot:
            announce()                # killed while idle or queued, it is interrupted (recover resumes it)

        t0 = time.monotonic()
        counts = st.counts
        failures: Counter = Counter(st.failures)
        pending_total = counts[PENDING]
        self.emit({"type": "started", "batch_id": self.paths.id, "total": self.total,
                   "remaining": pending_total, "workers": pool.workers, "resumed": resume,
                   "out_dir": self.out_dir})
        videos = self._videos = VideoGate(pool.workers) if self.manifest.get("videos") else None
        source = self._pending(st, videos)
        feed = self.feed = HotFolder(self, st) if watching else None
        retry_q: list[dict[str, Any]] = []
        attempts: dict[int, int] = {}
        micro = min(pipeline.batch_size, MAX_BATCH_CHUNK)  # a chunk holds a whole micro-batch
        fed = taken = 0
        exhausted = pending_total == 0 and feed is None  # (with no worker yet, nothing would find out)
        stopping: str | None = None  # "pause", "cancel", "halt", "disk_full"
        stop_reason: str | None = None
        abandon = False
        processed = failed_now = first_frames = 0
        last_progress = last_control = last_space = 0.0
        out_seen: list = []  # the output folder's device and inode, as this run first saw it
        max_fail = parse_max_failures(self.opt.max_failures)

        def record(i: int, kind: str, fields: dict[str, Any]) -> None:
            """Journal one item's end (its record's fields besides i) and count it."""
            nonlocal processed, first_frames
            j.append_item(kind, i, fields)
            new = COMPLETED if kind == "item_completed" else FAILED
            first_frames += new == COMPLETED and "frames" in (fields.get("meta") or {})
            counts[st.items[i]] -= 1
            counts[new] += 1
            st.items[i] = new
            attempts.pop(i, None)
            processed += 1
            if videos is not None:
                videos.finished(i)

        shards = open_shards(self, st, record) if self.manifest.get("shards") else None

        def finish_item(res: dict[str, Any], item: dict[str, Any] | None = None) -> None:
            nonlocal failed_now, stopping, stop_reason
            i = res["i"]
            if not res.get("ok"):
                record(i, "item_failed", {"error_class": res.get("error_class"), "error": res.get("error"),
                                          "ms": res.get("ms"), "attempts": attempts.get(i, 0) + 1,
                                          **({"warnings": res["warnings"]} if res.get("warnings") else {})})
                failed_now += 1
                failures[failure_key(res.get("error_class"), res.get("error"))] += 1
                self.emit({"type": "item_failed", "i": i, "error_class": res.get("error_class"),
                           "error": res.get("error")})
                return
            rec = res  # (the result is the record's fields, less these two)
            del rec["ok"], rec["i"]
            meta = rec.get("meta")
            vector = meta["embed"].pop("vector", None) if meta and "embed" in meta else None
            if vector is not None:
                self._embeddings().append(i, vector)
            if shards is None:
                record(i, "item_completed", rec)
            else:  # recorded once its shard is durable
                problem = shards.put(i, item, rec)
                if problem and stopping is None:
                    stopping, stop_reason = problem
                    pool.stop()

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
                retry(item)
                return
            finish_item(res)

        def retry(item: dict[str, Any]) -> None:
            if videos is not None and item.get("video"):  # back to the videos' own queue, from its last segment
                videos.finished(item["i"])
                videos.queue.appendleft(item)
            else:
                retry_q.append(item)

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
                    if stopping != "cancel" and now - last_control >= CONTROL_EVERY:
                        last_control = now  # looked at while stopping too: a cancel overrides a pause
                        req = self._control()
                        if req == "cancel" or (req and stopping is None):
                            stopping = "cancel" if req == "cancel" else "pause"
                            stop_reason = f"{req} requested"
                            if req in ("cancel", "pause-now"):
                                abandon = True
                                pool.stop()  # queued work dropped; what is written and sent meanwhile is kept
                                grace = time.monotonic() + ABANDON_GRACE
                                while time.monotonic() < grace and pool.busy():
                                    for ev in pool.poll(0.02):
                                        if ev.kind == "item" and ev.result.get("ok"):
                                            finish_item(ev.result, inflight.pop(ev.result["i"], None))
                                break
                            pool.stop()
                    if stopping is None and now - last_space >= SPACE_EVERY:
                        last_space = now
                        if lost := journal_lost(j, self.paths.dir):  # nothing can be recorded: stop at once
                            stopping, stop_reason, abandon = "lost", lost, True
                            break
                        low = self.out_dir and self.opt.min_free_space and low_space(self.out_dir, self.opt.min_free_space)
                        moved = self.out_dir and out_moved(self.out_dir, out_seen)
                        if low or moved:
                            stopping, stop_reason = ("disk_full", low) if low else ("pause", moved)
                            pool.stop()
                    if gate is not None and stopping is None:
                        if feed is not None and not pool.size() and not retry_q:
                            nxt = feed.next()  # a hot folder holds no slot while idle: a file that lands wants one
                            if nxt is not None:
                                retry_q.append(nxt)
                        queued = len(retry_q) + (len(videos.queue) if videos is not None else 0)  # videos wait apart
                        gate.tick(pool, queued + (0 if exhausted else max(0, pending_total - taken)), now)
                        if not announced and pool.size():
                            announce()
                    # feed
                    while stopping is None and pool.capacity() > 0:
                        if videos is not None and videos.queue and videos.may_start():  # a video goes alone
                            item = videos.queue.popleft()
                            videos.started(item)
                            inflight[item["i"]] = item
                            fed += 1
                            taken += 1
                            pool.submit([item])
                            continue
                        # chunks shrink as the end nears, so no worker idles while another
                        # still has a long queue (guided self-scheduling)
                        chunk = max(micro, min(MAX_CHUNK, (pending_total - fed) // (4 * pool.workers)), 1)
                        if max_fail is not None and max_fail[0] == "n":  # in hand: about the failures still allowed
                            chunk = min(chunk, max(1, int(max_fail[1] - failed_now) // (CHUNKS_PER_WORKER * pool.workers)))
                        batch_items: list[dict[str, Any]] = []
                        while retry_q and len(batch_items) < chunk:
                            batch_items.append(retry_q.pop())
                        while not exhausted and len(batch_items) < chunk:
                            nxt = next(source, None)
                            if nxt is None and feed is not None:
                                nxt = feed.next()  # None: nothing new has settled yet
                            if nxt is None:
                                exhausted = feed is None
                                break
                            taken += 1
                            batch_items.append(nxt)
                        if not batch_items:
                            break
                        for it in batch_items:
                            inflight[it["i"]] = it
                        fed += len(batch_items)
                        pool.submit(batch_items)
                    if not exhausted and feed is None and taken >= pending_total:
                        exhausted = True  # all handed out: a gate may retire every worker before the source says so
                    if exhausted and not retry_q and not pool.busy() and not (videos is not None and videos.queue):
                        break
                    if stopping is not None and not pool.busy():
                        break
                    for ev in pool.poll(0.05 if gate is None or pool.alive() else IDLE_WAIT):
                        if ev.kind == "item":
                            res = ev.result
                            if gate is not None:
                                gate.observe(res)
                            item = inflight.pop(res["i"], None)
                            if res.get("ok"):
                                finish_item(res, item)
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
                                    retry(it)
                        elif ev.kind == "segment":  # a video's segment is durable: journal it
                            self._segment(ev.result, inflight.get(ev.result["i"]))
                        elif ev.kind == "progress" and videos is not None:
                            videos.progress(ev.result)
                        elif ev.kind == "fatal":
                            stopping, stop_reason = "halt", ev.message
                            abandon = True
                        elif ev.kind == "pause":  # the executor cannot go on (e.g. lost its scheduler)
                            stopping, stop_reason = "pause", ev.message
                            abandon = True
                    if abandon:
                        break
                    if max_fail is not None and stopping is None and over_failures(max_fail, failed_now, processed, self.total):
                        stopping = "halt"
                        stop_reason = f"halted: {failed_now} items failed in this run (--max-failures {self.opt.max_failures})"
                        pool.stop()
                    problem = shards.poll() if shards is not None else None  # a shard sealed meanwhile: record it
                    if problem and stopping is None:
                        stopping, stop_reason = problem
                        pool.stop()
                    j.maybe_sync()
                    if now - last_progress >= PROGRESS_EVERY:
                        seen = (counts[COMPLETED], counts[FAILED], counts[PENDING], self.total)
                        if feed is None or videos is not None or seen != getattr(self, "_seen", None) \
                                or now - last_progress >= IDLE_PROGRESS_EVERY:
                            last_progress, self._seen = now, seen
                            self._progress(counts, processed, t0, pending_total)
            except JournalWriteError as exc:  # a full (or failing) disk under the journal: pause
                stopping, abandon = "journal", True
                stop_reason = f"disk full: {exc}" if exc.full else str(exc)
            finally:
                if out_seen:
                    os.close(out_seen.pop())
                if abandon:
                    pool.shutdown(abandon=True)
                    if self.out_dir:  # the killed workers' half-written files (nobody would sweep them)
                        sweep_dead_tmp(self.out_dir)
                else:  # told to exit: the workers do while the last shard is recorded
                    pool.release()
                problem = shards.close() if shards is not None else None
                if problem:
                    stopping, stop_reason = problem
                if not abandon:
                    pool.shutdown()
                if feed is not None:
                    feed.close()
                if gate is not None:
                    gate.close()  # the workers have exited: their slots can go
                if self._emb is not None:  # vectors: durable, and as one N x D .npy at the end
                    self._emb.close()
                    if self.paths and counts[PENDING] == 0:
                        from batchcli.models.embeddings import export_npy

                        export_npy(self.paths.dir)
            wall = time.monotonic() - t0
            self._progress(counts, processed, t0, pending_total)
            if stopping == "halt" and counts[PENDING] == 0 and self.feed is None:  # on the last item: it ended
                stopping = stop_reason = None
            if stopping != "lost" and (lost := journal_lost(j, self.paths.dir)):  # since the last look: never "completed"
                stopping, stop_reason = "lost", lost
            elif stopping not in ("cancel", "lost") and counts[PENDING] > 0 and self._control() == "cancel":
                stopping, stop_reason = "cancel", "cancel requested"  # came while we were stopping
            extra = {"worker_rss": gate.peak_rss} if gate is not None and gate.peak_rss else {}
            if not announced:  # ended while queued: the next resume still reuses this run's flags
                extra["options"] = self.opt.given
            status, code = close_run(self.journal, st.counts, stopping, stop_reason, sig.signum, extra,
                                     watching=self.feed is not None)
            if status == "cancelled" and videos is not None:
                discard_segments(self.paths, st, self.out_dir)
            if stopping == "journal":  # records the disk refused: their items are pending again
                counts = st.counts = replay(self.paths.journal, self.total).counts
        try:  # the reasons of the items failed now (a retried item that succeeded no longer counts)
            top = checkpoint(self.paths.journal, self.total, self._folded()).failures.most_common(5)
        except Exception:
            top = failures.most_common(5)
        result = RunResult(self.paths.id, status, code, self.total, counts[COMPLETED], counts[FAILED],
                           st.skipped if status != "cancelled" else self.total - counts[COMPLETED] - counts[FAILED],
                           counts[PENDING] if status != "cancelled" else 0, processed, wall,
                           stop_reason, self.out_dir, top, first_frames, resumable=stopping != "lost")
        self.emit({"type": "finished" if status not in ("paused",) else "paused", "status": status,
                   "exit_code": code, "completed": result.completed, "failed": result.failed,
                   "remaining": result.remaining, "total": self.total, "wall_s": round(wall, 3),
                   "rate": round(result.rate, 2), "reason": stop_reason, "out_dir": self.out_dir,
                   "top_failures": [{"reason": r, "count": c} for r, c in top], "first_frame_only": first_frames})
        return result

    def _folded(self) -> JournalWriter | None:
        """The journal writer whose own fold is the batch's state; None when a hot folder added
        items (the fold holds the items there were when the writer opened): replay instead."""
        if self.feed is not None and self.feed.grew:
            return None
        return getattr(self, "journal", None)

    def _check_claims(self, st: Replay, requeue: list[int], requeue_failed: bool) -> None:
        """Refuse to resume while another batch claims a path this run will write (engine/owners.py):
        the outputs of its pending and re-queued items; any of a hot folder's (it may redo each)."""
        from batchcli.engine.owners import check_resume

        again = set(requeue)
        check_resume(self.paths, self.manifest, self.out_dir, None if self.manifest.get("watch") else (
            lambda i: st.items[i] == PENDING or i in again or (requeue_failed and st.items[i] == FAILED)))

    def _pending(self, st: Replay, videos: VideoGate | None = None) -> Iterator[dict[str, Any]]:
        """The items pending now, in order, read as they are needed; with `videos`, video items go
        to its queue instead (each with the segments a previous run finished). Items a hot folder
        adds or requeues later come from it alone, even when this is first read after."""
        return self._pending_from(st.items, bytes(st.items), videos)

    def _pending_from(self, items: bytearray, at_start: bytes, videos: VideoGate | None) -> Iterator[dict[str, Any]]:
        chains = segment_chains(self.paths.journal) if videos is not None else {}
        for rec in iter_items(self.paths.items):
            if rec["i"] >= len(at_start):
                return
            if at_start[rec["i"]] == PENDING and items[rec["i"]] == PENDING:
                item = {"i": rec["i"], "src": rec["src"], "stem": rec["stem"],
                        "size": rec.get("size"), "mtime": rec.get("mtime")}
                if rec.get("video"):
                    item["video"] = True
                    if videos is not None:
                        item["segments"] = chains.get(rec["i"], [])
                        videos.queue.append(item)
                        continue
                yield item

    def _segment(self, rec: dict[str, Any], item: dict[str, Any] | None) -> None:
        """Journal a finished segment; a retry of the item starts after it."""
        self.journal.append("segment_completed", **rec)
        if item is not None:
            chain = item.setdefault("segments", [])
            del chain[rec["seg"]:]
            chain.append({k: v for k, v in rec.items() if k not in ("i", "mem")})
        if self._videos is not None:
            self._videos.segment(rec)

    def _embeddings(self):
        if self._emb is None:
            from batchcli.models.embeddings import EmbeddingStore

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
        """The strongest request other shells queued (cancel > pause-now > pause)."""
        return strongest_request(self.paths)

    def _progress(self, counts: Counter, processed: int, t0: float, pending_total: int) -> None:
        el = time.monotonic() - t0
        rate = processed / el if el > 0 else 0.0
        left = counts[PENDING]
        event = {"type": "progress", "completed": counts[COMPLETED], "failed": counts[FAILED],
                 "total": self.total, "remaining": left, "rate": round(rate, 2),
                 "eta_s": round(left / rate, 1) if rate > 0 else None, "elapsed_s": round(el, 2)}
        if self._videos is not None and self._videos.running:
            event["videos"] = self._videos.rows()
        self.emit(event)


def _worker_options(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a worker needs beyond the pipeline: for video items --max-duration and the segment
    length; for variants, whether the --name-template places them ({variant})."""
    from batchcli.inputs.names import template_has_variant

    options = manifest.get("options") or {}
    out = {k: options[k] for k in ("max_duration", "segment") if k in options}
    if manifest.get("limits_given"):  # --max-file-size and --max-pixels as typed: failures say them so
        out["limits_given"] = manifest["limits_given"]
    if manifest.get("shards"):
        out["shards"] = True
    if manifest.get("variants"):
        out["variant_template"] = template_has_variant((manifest.get("input_options") or {}).get("name_template"))
    return out
