"""The child side: set up once per process, then turn items into results. Never raises."""

from __future__ import annotations

import hashlib
import os
import pickle
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from batchcli.errors import ItemError
from batchcli.executors.heap import keep_freed_memory
from batchcli.executors.proc import PeakRss, cap_memory, die_with_parent, readable, rss
from batchcli.executors.writer import Writer
from batchcli.imaging.lazy import LazyModule
from batchcli.imaging.noise import Capture, unique

imageio: Any = LazyModule("batchcli.imaging.imageio")
"""Imported on a worker's first item (the fork server has it already): the runner imports this
module for WorkerConfig, and a start's own process never needs the image modules."""

if os.environ.get("BATCHCLI_TEST_OPS"):  # test-only ops (tests/crashops.py); never set in production
    import importlib

    importlib.import_module(os.environ["BATCHCLI_TEST_OPS"])


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs; pickled once per process."""

    pipeline: bytes  # pickled Pipeline
    out_dir: str | None
    max_file_size: int
    max_pixels: int
    threads: int = 1
    providers: str = "cpu"
    memory_limit: int = 0  # bytes of address space per worker; 0 = no cap
    extra: dict = field(default_factory=dict)


class Worker:
    """Holds the per-process state: the pipeline with its prepared ops and the limits."""

    def __init__(self, cfg: WorkerConfig):
        os.environ["BATCHCLI_THREADS"] = str(cfg.threads)
        os.environ["BATCHCLI_PROVIDERS"] = cfg.providers
        os.environ.setdefault("OMP_NUM_THREADS", str(cfg.threads))
        import cv2

        cv2.setNumThreads(cfg.threads)
        from batchcli.imaging.headers import given_limits
        from batchcli.imaging.imageio import Limits

        self.cfg = cfg
        self.limits = Limits(cfg.max_file_size, cfg.max_pixels, given_limits(cfg.extra.get("limits_given")))
        self.pipeline = pickle.loads(cfg.pipeline)
        self.pipeline.prepare()
        self.writes = self.pipeline.writes_image and cfg.out_dir is not None
        self.writer: Any = None  # a Writer: outputs written in the background (see worker_main)
        self.shards = bool(cfg.extra.get("shards"))  # --shards: outputs go back to the runner, unwritten
        self.batch = self.pipeline.batch_size  # items processed together: > 1 only for micro-batches
        self.at: Any = None  # called with each item's index as it is taken in hand (worker_main)
        self.quick = False  # the last items each took under QUICK_MS: small ones may go in groups
        self.on_segment: Any = None  # video: called with each finished segment's record (worker_main sends it)
        self.on_progress: Any = None  # video: called with {"i", "done", "total"} about once a second
        self.stop_requested: Any = lambda: False  # video: asked between segments; True leaves the item unfinished
        self.noise: Any = _Quiet()  # a Capture in a pool process (see worker_main)

    def group(self, items: list[dict[str, Any]], pos: int) -> int:
        """How many items from `pos` to process together: a micro-batch (`batch=N`); else up to
        GROUP small images in a row (SMALL_INPUT bytes or fewer each, as items.jsonl recorded
        them) while items take under QUICK_MS each, whose decodes, ops and encodes then run
        phase by phase (a sixth less CPU on tiny images than one item at a time; a kill or a
        pause costs at most a group's few milliseconds more); else one."""
        if self.batch > 1:
            return self.batch
        if not self.quick:
            return 1
        n = 0
        for it in items[pos:pos + GROUP]:
            size = it.get("size")
            if it.get("video") or not isinstance(size, int) or size > SMALL_INPUT:
                break
            n += 1
        return max(1, n)

    def process(self, item: dict[str, Any]) -> dict[str, Any]:
        """One item -> a result dict: {"i", "ok", "ms", ...}. Never raises."""
        return self.process_batch([item])[0]

    def process_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Items -> one result dict each, in order. Each is loaded and saved on its own; the
        pipeline runs them together, so an op with `batch=N` sees up to N frames per call.
        A failure fails its own item only. Never raises."""
        if any(it.get("video") for it in items):  # videos run on their own, segment by segment
            return [self._video(it) if it.get("video") else self.process_batch([it])[0] for it in items]
        loaded: list[Any] = []
        changed: list[list | None] = []
        spent: list[float] = []
        noise = self.noise
        said: list[list[str]] = []  # what the C libraries printed while each item was in hand
        alone = len(items) == 1  # (then all of it is the item's: read once, after its save)
        at = self.at
        held, rest = 0, []  # decoded bytes in hand; a group of small files stops loading past GROUP_BYTES
        for n, item in enumerate(items):
            if self.batch == 1 and held > GROUP_BYTES:  # the rest after these (memory stays bounded)
                items, rest = items[:n], items[n:]
                break
            if at is not None:
                at(item["i"])
            t0 = time.perf_counter()
            try:
                frame, stat = self._load(item)
                held += getattr(frame.img, "nbytes", 0)
            except Exception as exc:
                frame, stat = exc, None
            loaded.append(frame)
            changed.append(stat)
            spent.append(time.perf_counter() - t0)
            said.append([] if alone else noise.take())
        t0 = time.perf_counter()
        frames = self.pipeline.run_batch(loaded, None if at is None or self.batch > 1 else
                                         (lambda k: at(items[k]["i"])))
        share = (time.perf_counter() - t0) / max(1, len(items))
        shared = [] if alone else noise.take()  # a micro-batch's model run: every item of it
        results = []
        for item, frame, stat, t, own in zip(items, frames, changed, spent, said):
            if at is not None:
                at(item["i"])
            t0 = time.perf_counter()
            if isinstance(frame, BaseException):
                res = _error(item["src"], frame)
            else:
                try:
                    res = self._save(item, frame, stat)
                    res["ok"] = True
                except Exception as exc:
                    res = _error(item["src"], exc)
            res["i"] = item["i"]
            res["ms"] = round((t + share + time.perf_counter() - t0) * 1000, 1)
            warnings = unique(own + shared + noise.take())
            if warnings:  # never a reason to fail the item: recorded with it
                res["warnings"] = warnings
            results.append(res)
        self.quick = all(r["ms"] < QUICK_MS and r.get("ok") for r in results)  # after a failure: one at a time
        return results + self.process_batch(rest) if rest else results

    def _video(self, item: dict[str, Any]) -> dict[str, Any]:
        """A video item: its result, or {"paused": True} when a stop came between two segments."""
        from batchcli.video.job import Paused, process_video
        from batchcli.video.probe import VideoLimits

        t0 = time.perf_counter()
        extra = self.cfg.extra
        limits = VideoLimits(self.cfg.max_pixels, float(extra.get("max_duration") or 0), self.limits.given[1])

        def report(rec: dict[str, Any]) -> None:
            if self.on_segment is not None:
                self.on_segment({"i": item["i"], **rec, "mem": rss()})

        told = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if self.on_progress is not None and now - told[0] >= PROGRESS_EVERY:
                told[0] = now
                self.on_progress({"i": item["i"], "done": done, "total": total})

        try:
            res = process_video(item, self.pipeline, self.cfg.out_dir if self.writes else None, limits,
                                segment=float(extra.get("segment") or 10.0), report=report,
                                stop=self.stop_requested, progress=progress)
            res["ok"] = True
            changed = _changed_stat(item)
            if changed is not None:
                res["src_stat"] = changed
        except Paused:
            res = {"paused": True}
        except Exception as exc:
            res = _error(item["src"], exc)
        res["i"] = item["i"]
        res["ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return res

    def _load(self, item: dict[str, Any]) -> tuple[Any, list | None]:
        src, changed, read = item["src"], None, []
        if src.startswith(("http://", "https://")):
            from batchcli.inputs.fetch import fetch_url  # inputs: URLs are fetched by the worker

            data = fetch_url(src, self.limits)
        else:  # whether the input changed since items.jsonl recorded it: from the file as read
            data = imageio.read_bytes(src, self.limits, read)
            changed = _changed_from(item, read[0])
        shrink = self.pipeline.shrink_for if self.writes else self.pipeline.shrink_when_unsaved
        return imageio.load(src, self.limits, shrink, data=data, raw=self.pipeline.raw_settings), changed

    def _save(self, item: dict[str, Any], frame: Any, changed: list | None) -> dict[str, Any]:
        res: dict[str, Any] = {}
        if self.writes and self.pipeline.variants:
            self._save_variants(item, frame, res)
        elif self.writes:
            self._write(frame, os.path.join(self.cfg.out_dir, item["stem"]), res, res)
            if frame.route and not self.shards:
                res["routed"] = _route(self.cfg.out_dir, frame.route, os.path.join(self.cfg.out_dir, res["out"]))
        if frame.meta:
            res["meta"] = frame.meta
        if changed is not None:  # the input is not what items.jsonl recorded: journal what we read
            res["src_stat"] = changed
        return res

    def _write(self, frame: Any, dest: str, res: dict[str, Any], entry: dict[str, Any],
               data: tuple[str, bytes] | None = None) -> None:
        """Encode (unless `data` is the encoded output: path, bytes) and write one output; its
        out, bytes and sha256 go into `entry`, and its mtime: now, or, with the Writer, once the
        file is durable (the pending write is added to res["_write"]; see settle)."""
        if self.shards:  # the runner puts the bytes into its tar shard (engine/shards.py)
            path, blob = data or imageio.encode_to(frame, dest)
            res.setdefault("_blobs", []).append(blob)
            nbytes, digest = len(blob), hashlib.sha256(blob).hexdigest()
        elif self.writer is not None and not frame.route:
            # encoded here; written, fsynced and renamed by the writer thread while this one
            # decodes the next image. The result goes out only once the write is done.
            path, blob = data or imageio.encode_to(frame, dest)
            res.setdefault("_write", []).append((entry, self.writer.submit(path, blob)))
            nbytes, digest = len(blob), hashlib.sha256(blob).hexdigest()
        elif data is not None:
            path, blob = data
            entry["mtime"] = imageio.write(path, blob)
            nbytes, digest = len(blob), hashlib.sha256(blob).hexdigest()
        else:
            path, nbytes, digest = imageio.save(frame, dest)  # discovery keeps outputs off inputs
            entry["mtime"] = os.stat(path).st_mtime
        entry.update(out=_below(path, self.cfg.out_dir), bytes=nbytes, sha256=digest)

    def _save_variants(self, item: dict[str, Any], frame: Any, res: dict[str, Any]) -> None:
        """Each variant from the shared frame, into OUT/NAME/<stem> (or the template's {variant}):
        all encoded before any is written, so a failed variant writes nothing; it fails the item,
        named. The first variant's output is also the record's `out` (readers that know one
        output per item see that one)."""
        from batchcli.inputs.names import variant_stem

        templated = bool(self.cfg.extra.get("variant_template"))
        encoded = []
        for name, got in self.pipeline.branch(frame):
            try:
                if isinstance(got, BaseException):
                    raise got
                dest = os.path.join(self.cfg.out_dir, variant_stem(item["stem"], name, templated))
                encoded.append((name, got, imageio.encode_to(got, dest)))
            except Exception as exc:
                raise VariantFailed(name, exc) from None
        outputs = []
        for name, got, data in encoded:
            entry: dict[str, Any] = {"variant": name}
            self._write(got, "", res, entry, data)
            extra = {k: v for k, v in got.meta.items() if frame.meta.get(k) != v}
            if extra:  # what the variant's own ops recorded (its profile conversion, say)
                entry["meta"] = extra
            outputs.append(entry)
        res.update({k: v for k, v in outputs[0].items() if k in ("out", "bytes", "sha256", "mtime")}, outputs=outputs)
        if res.get("_write"):
            res["_write"].append((res, res["_write"][0][1]))  # the record's own mtime is the first output's


class _Quiet:
    """No capture (a Worker used in-process, by tests or Dask): nothing to take."""

    def take(self) -> list[str]:
        return []


class VariantFailed(Exception):
    """A variant's ops or encoder failed: the item fails with the variant named."""

    def __init__(self, name: str, exc: BaseException):
        super().__init__(name)
        self.name, self.exc = name, exc


def settle(res: dict[str, Any], src: str, wait: bool) -> bool:
    """Fold an item's background writes into its result: False while one is still running
    (and not `wait`); a failed write turns the result into that failure."""
    pending = res.get("_write")
    if pending is None:
        return True
    if not wait and not all(fut.done() for _, fut in pending):
        return False
    del res["_write"]
    for entry, fut in pending:
        exc = fut.exception()
        if exc is not None:
            err = _error(src, exc)
            for k in [k for k in res if k not in ("i", "ms")]:
                del res[k]
            res.update(err)
            return True
        entry["mtime"] = fut.result()
    return True


def _error(src: str, exc: BaseException) -> dict[str, Any]:
    """The failed result for an item: its error class and a one-line reason naming the file."""
    if isinstance(exc, VariantFailed):
        err = _error(src, exc.exc)
        err["error"] = f"{src}: variant {exc.name}: {err['error'][len(src) + 2:]}"
        return err
    if isinstance(exc, ItemError):
        return {"ok": False, "error_class": exc.error_class, "error": f"{src}: {exc}"}
    if isinstance(exc, MemoryError):
        return {"ok": False, "error_class": "oom", "error": f"{src}: out of memory (over --worker-memory?)"}
    # an op's bug must fail its item, not the batch
    msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    return {"ok": False, "error_class": "op", "error": f"{src}: {type(exc).__name__}: {msg}"[:500]}


def _below(path: str, root: str) -> str:
    """os.path.relpath(path, root), without its two abspath calls when `path` is plainly
    inside `root` (the output paths a worker makes)."""
    n = len(root)
    if path.startswith(root) and path[n:n + 1] == os.sep:
        rel = path[n + 1:]
        if not any(part in ("", ".", "..") for part in rel.split(os.sep)):
            return rel
    return os.path.relpath(path, root)


def _changed_stat(item: dict[str, Any]) -> list | None:
    """[size, mtime] of a local input when they differ from the ones recorded for the item."""
    try:
        return None if item["src"].startswith(("http://", "https://")) else _changed_from(item, os.stat(item["src"]))
    except OSError:
        return None  # the decoder reports it


def _changed_from(item: dict[str, Any], st: os.stat_result) -> list | None:
    now = [st.st_size, st.st_mtime]  # (`st`: the input's, as read)
    return None if "size" not in item or now == [item["size"], item.get("mtime")] else now


def _route(out_dir: str, label: str, path: str) -> str:
    """Link (or copy) an output into out/<label>/ under its own output name (out/<label>/<its
    path below out/>), so two items never share a routed name; returns the relative path."""
    import shutil

    from batchcli.atomic import tmp_name

    rel = os.path.relpath(path, out_dir)
    dest = os.path.join(out_dir, label, rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tmp_name(dest)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    return os.path.join(label, rel)


PROGRESS_EVERY = 1.0
"""Seconds between a video's progress messages (frames done) within a segment."""

GROUP = 16
"""Small images processed together by a worker (Worker.group)..."""
SMALL_INPUT = 256 << 10
"""...each at most this many bytes on disk..."""
GROUP_BYTES = 64 << 20
"""...and loading stops once the group's decoded pixels pass this (the rest follow after)."""
QUICK_MS = 2.0
"""Items are grouped only while each of the last ones took less than this (ms)."""
FLUSH_EVERY = 0.02
"""Seconds a worker may hold finished results before sending them (tiny items: one message per
many results). Held results are always sent before `stopped` and their chunk's `done`; a worker
without work sends each as soon as its output is durable."""


def worker_process(conn, cfg: WorkerConfig, current: Any = None) -> None:
    """A pool process's target: `worker_main`, then exit at once. Every result has been sent by
    then (and every output is durable), so the interpreter's teardown (numpy, OpenCV, a model's
    session: 0.1-0.2 s) is skipped; the runner joins its workers before it ends the run."""
    import sys

    worker_main(conn, cfg, current)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def worker_main(conn, cfg: WorkerConfig, current: Any = None) -> None:
    """Entry point of a pool process: receive chunks, send one message per item.

    From the parent: (chunk_id, items) to queue work, "stop" to drop queued work after the
    current item, None to exit. To the parent: ("ready",), ("items", [result, ...]) in item order,
    ("done", chunk_id) after the last result of a chunk, ("stopped",), ("init_error", msg).
    `current`, a shared integer, holds the index of the item in hand, so the parent knows which
    one a crash concerns. Messages are checked between items (between micro-batches when an op
    takes `batch=N`, and between groups of small quick images: Worker.group), so a pause waits for
    at most one item (batch, group) per worker. A result is sent
    only once its output is durable (written by the Writer thread in groups, overlapping the
    next items, also those of the next chunk), and as soon as it is: the Writer's thread sends
    what its group made durable, so a result never waits for the next item to be processed (a
    cancel or a kill in that wait left an output written but never recorded).
    """
    import threading
    from multiprocessing.connection import wait as wait_for

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides what Ctrl-C means
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # and a hung-up terminal means nothing to a batch
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # nor `timeout`'s or systemd's, sent to the whole group
    die_with_parent()
    cap_memory(cfg.memory_limit)
    keep_freed_memory()
    try:
        worker = Worker(cfg)
    except Exception as exc:  # e.g. a model that loaded in the parent but not here
        conn.send(("init_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    lock = threading.RLock()  # sends, and the held results, are shared with the Writer's thread

    def send_msg(msg: Any) -> None:
        with lock:
            conn.send(msg)

    if current is not None and worker.batch == 1:  # the item in hand, item by item within a group
        worker.at = lambda i: setattr(current, "value", i)
    worker.noise = Capture()  # from here, decoder warnings land in item records, not on the terminal
    writer = worker.writer = Writer() if worker.writes and not worker.shards else None
    chunks: deque = deque()
    asked: list = []  # a "stop" or None read while a video was in hand, handled once it returns
    incoming = readable(conn)

    def stop_requested() -> bool:
        """Between two segments of a video: read what the parent sent; True on stop or exit."""
        while not asked and incoming():
            msg = conn.recv()
            if msg is None or msg == "stop":
                asked.append(msg)
            else:
                chunks.append([msg[0], msg[1], 0])
        return bool(asked)

    worker.stop_requested = stop_requested
    worker.on_segment = lambda rec: send_msg(("segment", rec))
    worker.on_progress = lambda rec: send_msg(("progress", rec))
    # (result, source) in item order; (None, chunk_id) marks the end of a chunk
    held: deque[tuple[dict[str, Any] | None, Any]] = deque()
    held_since = 0.0
    peak = PeakRss()

    def flush(wait: bool = True) -> None:
        """Send the held results whose outputs are durable (all of them with `wait`), each with
        the worker's peak memory while it was made (`rss`, bytes, read once per flush that sends
        something), and each chunk's "done" once its last result is sent. With `wait`, the writes
        are waited for before the lock is taken: the Writer's thread takes it after each group
        (on_group), so a later group waited for under the lock would never be written."""
        if wait:
            from concurrent.futures import wait as wait_all

            with lock:  # only this thread adds to `held`: nothing joins it while we wait
                pending = [fut for res, _ in held if res is not None for _, fut in res.get("_write", ())]
            wait_all(pending)
        with lock:
            _flush(wait)

    def _flush(wait: bool) -> None:
        ready: list[dict[str, Any]] = []
        rss: list[int | None] = []

        def send() -> None:
            if not rss:
                rss.append(peak.read())
            for r in ready:
                if rss[0]:
                    r["rss"] = rss[0]
            conn.send(("items", ready))

        while held:
            res, src = held[0]
            if res is None:
                if ready:
                    send()
                    ready = []
                conn.send(("done", src))
            elif settle(res, src, wait):
                ready.append(res)
            else:
                break
            held.popleft()
        if ready:
            send()

    if writer is not None:  # (quick small images: this loop's own flushes send them in batches)
        writer.on_group = lambda: None if worker.quick else flush(wait=False)
    try:
        while True:
            while not chunks or incoming():
                if not chunks and held:
                    # no work in hand, results waiting on their writes: send what is durable,
                    # then wake for the next finished group or a message, whichever comes first
                    if writer is not None:
                        writer.drain()
                    flush(wait=False)
                    if held and writer is not None and not incoming():
                        wait_for([conn, writer.fileno()])
                        continue
                msg = conn.recv()
                if msg is None:
                    flush()
                    return
                if msg == "stop":
                    flush()
                    chunks.clear()
                    send_msg(("stopped",))
                else:
                    chunks.append([msg[0], msg[1], 0])
            chunk = chunks[0]
            chunk_id, items, pos = chunk
            group = items[pos:pos + worker.group(items, pos)]
            if current is not None:
                current.value = group[0]["i"]
            if not held:
                held_since = time.monotonic()
            done = [(res, it["src"]) for res, it in zip(worker.process_batch(group), group) if not res.get("paused")]
            with lock:
                held.extend(done)
            chunk[2] = pos + len(group)
            if asked:  # a stop came while a video was in hand: its item stays unfinished
                flush()
                if asked.pop() is None:
                    return
                chunks.clear()
                send_msg(("stopped",))
                continue
            if chunk[2] >= len(items):
                chunks.popleft()
                with lock:
                    held.append((None, chunk_id))
                flush(wait=False)
                held_since = time.monotonic()
            elif time.monotonic() - held_since >= FLUSH_EVERY or not all(res.get("ok") for res, _ in done):
                flush(wait=False)  # (a failure goes at once: --max-failures counts as they come)
                held_since = time.monotonic()
    except (EOFError, OSError, BrokenPipeError):
        return
