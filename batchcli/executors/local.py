"""Executors: run chunks of items somewhere and report per-item results.

The runner talks to an executor through four calls (`capacity`, `submit`, `poll`, `shutdown`),
so a distributed engine can replace the local process pool without touching the runner.

`ProcessPool` gives each worker process its own pipe and a shared integer naming the item in
hand, so it always knows which item each worker is on: a worker that dies or hangs costs exactly
that item (reported as lost); the items queued behind it, and those it finished but had not yet
reported (workers send results in small groups), are handed back; a fresh worker takes its place.

Workers are forked from a fork server where the platform has one (executors/forkserve.py), else
spawned.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from batchcli.atomic import sweep_tmp
from batchcli.executors.base import CHUNKS_PER_WORKER, Event
from batchcli.executors.forkserve import START_METHOD, stop_server, warm_up
from batchcli.executors.proc import readable
from batchcli.executors.worker import WorkerConfig, worker_process


@dataclass
class _Proc:
    proc: Any
    conn: Any
    at: Any  # shared integer: the index of the item the worker has in hand
    queue: deque = field(default_factory=deque)  # of [items, position of the first unreported, holds a video]
    ready: bool = False
    item_started: float = 0.0
    readable: Any = None  # () -> a message (or the pipe's end) waits: executors/proc.py
    released: bool = False  # told to exit (ProcessPool.release)

    def _unreported(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for items, pos, _ in self.queue:
            out.extend(items[pos:])
        return out

    def on_video(self) -> bool:
        return any(video for _, _, video in self.queue)

    def current(self) -> dict[str, Any] | None:
        """The item the worker is on: the one it says, else the first without a result."""
        left = self._unreported()
        at = self.at.value
        return next((it for it in left if it["i"] == at), left[0] if left else None)

    def unstarted(self) -> list[dict[str, Any]]:
        """Every item without a result but the current one (some may be finished and not yet
        reported: they run again, their outputs replaced whole)."""
        cur = self.current()
        return [it for it in self._unreported() if it is not cur]


class ProcessPool:
    """A pool of worker processes with per-item crash and hang detection."""

    name = "local"

    def __init__(self, cfg: WorkerConfig, workers: int, item_timeout: float = 0.0, start: int | None = None):
        self.cfg = cfg
        self.workers = workers  # the most it runs; `start` of them at once (default all)
        self.item_timeout = item_timeout
        if START_METHOD == "forkserver":
            warm_up(threads=cfg.threads)  # a no-op when the runner already started it
        self._ctx = mp.get_context(START_METHOD)
        self._procs: list[_Proc] = [self._spawn() for _ in range(workers if start is None else start)]
        self._retiring: list[_Proc] = []  # told to stop after the item in hand, then to exit
        self.restarts = 0

    def _spawn(self) -> _Proc:
        parent, child = self._ctx.Pipe(duplex=True)
        at = self._ctx.RawValue("q", -1)
        proc = self._ctx.Process(target=worker_process, args=(child, self.cfg, at), daemon=True,
                                 name="batchcli-worker")
        with _main_not_rerun():
            proc.start()
        child.close()
        return _Proc(proc, parent, at, readable=readable(parent))

    def capacity(self) -> int:
        """Chunks that can be queued now; none behind a video, which may take minutes."""
        return sum(CHUNKS_PER_WORKER - len(p.queue) for p in self._procs if not p.on_video())

    def busy(self) -> bool:
        return any(p.queue for p in self._procs) or any(p.queue for p in self._retiring)

    # --- resizing (the home's shared worker budget; see engine/slots.py) ----------------------
    def size(self) -> int:
        """Workers taking new work."""
        return len(self._procs)

    def alive(self) -> int:
        """Worker processes that may still be alive: those taking work and those retiring."""
        return len(self._procs) + len(self._retiring)

    def working(self) -> int:
        """Workers with items in hand or queued."""
        return sum(1 for p in self._procs if p.queue)

    def grow(self, n: int) -> None:
        for _ in range(max(0, n)):
            self._procs.append(self._spawn())

    def retire(self, n: int) -> None:
        """Take `n` workers out at item boundaries: idle ones first; a busy one finishes the item
        in hand, hands back the rest of its queue (a `requeue` event) and exits."""
        for p in sorted(self._procs, key=lambda q: len(q.queue))[:max(0, n)]:
            self._procs.remove(p)
            self._retiring.append(p)
            try:
                p.conn.send("stop" if p.queue else None)
            except OSError:
                pass

    def submit(self, items: list[dict[str, Any]]) -> None:
        p = min(self._procs, key=lambda q: (q.on_video(), len(q.queue)))
        if not p.queue:
            p.item_started = time.monotonic()
        p.queue.append([items, 0, any(it.get("video") for it in items)])
        try:
            p.conn.send((0, items))
        except OSError:
            pass  # the worker just died: poll() finds its pipe closed and hands these items back

    def poll(self, timeout: float) -> list[Event]:
        events: list[Event] = []
        by_obj = {}
        for p in (*self._procs, *self._retiring):
            by_obj[p.conn] = p
            by_obj[p.proc.sentinel] = p
        if not by_obj:
            time.sleep(timeout)
            return events
        ready = wait(list(by_obj), timeout)
        dead: list[_Proc] = []
        for obj in ready:
            p = by_obj[obj]
            if obj is p.conn:
                if not self._drain(p, events):
                    dead.append(p)
            elif p not in dead:
                dead.append(p)
        now = time.monotonic()
        if self.item_timeout > 0:
            for p in (*self._procs, *self._retiring):
                if p.ready and p.current() is not None and p not in dead and now - p.item_started > self.item_timeout:
                    p.proc.kill()
                    p.proc.join(5)
                    self._replace(p, events, "timeout", f"no result after {self.item_timeout:g} s (worker killed)")
        for p in dead:
            if p in self._procs or p in self._retiring:
                self._drain(p, events)
                p.proc.join(5)
                code = p.proc.exitcode
                self._replace(p, events, "crash", f"worker died ({_how(code)}) while processing this item")
        return events

    def _drain(self, p: _Proc, events: list[Event]) -> bool:
        """Read everything the worker sent. False when its pipe is closed."""
        try:
            while p.readable():
                msg = p.conn.recv()
                kind = msg[0]
                now = time.monotonic()
                if kind == "items":
                    for res in msg[1]:
                        events.append(Event("item", result=res))
                    p.queue[0][1] += len(msg[1])
                    p.item_started = now
                elif kind == "segment":  # a video's segment is durable: --item-timeout counts afresh
                    events.append(Event("segment", result=msg[1]))
                    p.item_started = now
                elif kind == "progress":  # frames done within a video's segment
                    events.append(Event("progress", result=msg[1]))
                elif kind == "done":
                    p.queue.popleft()
                    p.item_started = now
                elif kind == "stopped":  # results came first: what is left never started
                    rest = p._unreported()
                    if rest:
                        events.append(Event("requeue", items=rest))
                    p.queue.clear()
                    p.item_started = now
                    if p in self._retiring:
                        p.conn.send(None)  # an OSError here is a dead worker: handled below
                elif kind == "ready":
                    p.ready = True
                    p.item_started = now
                elif kind == "init_error":
                    events.append(Event("fatal", message=f"worker failed to start: {msg[1]}"))
        except (EOFError, OSError):
            return False
        return True

    def _replace(self, p: _Proc, events: list[Event], error_class: str, message: str) -> None:
        """A worker is gone: charge its item, hand back its queue, start another in its place
        (none for a retiring worker: it was leaving)."""
        if p in self._retiring and p.proc.exitcode == 0 and not p.queue:
            self._retiring.remove(p)  # a retired worker that exited as asked
            p.conn.close()
            return
        cur = p.current()
        if cur is not None:
            events.append(Event("lost", item=cur, error_class=error_class, message=message))
        if self.cfg.out_dir:  # what its writer thread had in hand: the items run again, whole
            sweep_tmp(self.cfg.out_dir, pid=p.proc.pid)
        rest = p.unstarted()
        if rest:
            events.append(Event("requeue", items=rest))
        try:
            p.conn.close()
        except OSError:
            pass
        if p in self._retiring:
            self._retiring.remove(p)
            return
        idx = self._procs.index(p)
        self._procs[idx] = self._spawn()
        self.restarts += 1

    def stop(self) -> None:
        """Drop queued work: each worker finishes its current item, then reports `stopped`."""
        for p in (*self._procs, *self._retiring):
            if p.queue:
                try:
                    p.conn.send("stop")
                except OSError:
                    pass

    def release(self) -> None:
        """Tell every worker to exit (they have sent all they will: the run is over), without
        waiting: they exit while the runner ends its run (the last shard recorded), and
        `shutdown` then finds them gone."""
        self._procs += self._retiring
        self._retiring = []
        for p in self._procs:
            if not p.released:
                p.released = True
                try:
                    p.conn.send(None)
                except OSError:
                    pass

    def shutdown(self, abandon: bool = False) -> list[dict[str, Any]]:
        """Stop the workers. With abandon, kill them now and return the items they had not finished."""
        left: list[dict[str, Any]] = []
        if not abandon:
            self.release()
        self._procs += self._retiring
        self._retiring = []
        for p in self._procs:
            if abandon:
                cur = p.current()
                if cur is not None:
                    left.append(cur)
                left.extend(p.unstarted())
                p.proc.kill()
        deadline = time.monotonic() + 5
        for p in self._procs:
            p.proc.join(max(0.0, deadline - time.monotonic()))
            if p.proc.is_alive():
                p.proc.kill()
                p.proc.join(1)
            try:
                p.conn.close()
            except OSError:
                pass
        self._procs = []
        stop_server(now=True, reap=False)  # every worker has exited: nothing to wait for
        return left


@contextmanager
def _main_not_rerun() -> Iterator[None]:
    """A spawned (or fork-served) child imports the parent's main script again (as __mp_main__); for the
    `batchcli` console script that is typer and the whole CLI, ~45 ms per worker for nothing.
    Hide the script's path while the child is prepared; workers need nothing from it."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(main, "__spec__", None) is not None:
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def _how(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        import signal

        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return name + (", killed: out of memory?" if code == -9 else "")
