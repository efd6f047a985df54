"""A runner's share of the machine, decided between items: the slots of the home's budget it may
hold (engine/slots.py), the load it must leave room for (engine/load.py) and the memory its
workers were measured to use.

The runner calls `tick` from its loop; the gate grows or shrinks the process pool (at item
boundaries: a retiring worker finishes the item in hand) and says what the batch is doing:
`queued` (no slot yet), `throttled` (no worker because the machine is busy) or `running`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from batchcli.engine.load import Monitor, Throttle, parse_max_load
from batchcli.engine.slots import Board, Entry, Leases, Registration, allocate, queue_order, read_priority
from batchcli.engine.store import BatchPaths

TICK = 0.1
"""Seconds between looks at the board while running..."""
IDLE_TICK = 0.2
"""...and while queued or throttled (many waiting runners cost little)."""
REUSE_BOARD = 0.3
"""The board is read again when it changed, or after this long (a dead runner's records count
for at most this long; its slots themselves are free at once)."""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


class Gate:
    def __init__(self, paths: BatchPaths, workers: int, slots: int, max_load: str | None = None,
                 min_free_memory: int = 0, peak_rss: int = 0, emit: Callable[[dict[str, Any]], None] | None = None):
        self.paths = paths
        self.emit = emit or (lambda ev: None)  # a `state` event when the batch's state changes
        self.id = paths.id
        self.workers = workers
        self.size = slots
        self.leases = Leases(paths.home, slots, paths.id)
        self.board = Board(paths.home)
        self.monitor = Monitor()
        self.throttle = Throttle(parse_max_load(max_load), min_free_memory, self.monitor)
        self.peak_rss = peak_rss  # the largest worker RSS measured for this batch
        self.reg: Registration | None = None
        self.since = time.time()
        self.state = "queued"
        self.reason: str | None = None
        self.position: int | None = None
        self._priority = (None, 0)
        self._next = 0.0
        self._shown = "running"  # the state last told through `emit`

    @classmethod
    def for_run(cls, paths: BatchPaths, opt: Any, workers: int, st: Any, emit: Callable[[dict[str, Any]], None]) -> Gate:
        """The gate of a run with these RunOptions (the budget read from the home unless given)."""
        from batchcli.engine.slots import budget

        return cls(paths, workers, opt.slots or budget(paths.home), opt.max_load, opt.min_free_memory,
                   st.worker_rss or 0, emit)

    @property
    def priority(self) -> int:
        path = os.path.join(self.paths.dir, "priority")
        try:
            key = os.stat(path).st_mtime_ns
        except OSError:
            key = None
        if key != self._priority[0]:
            self._priority = (key, read_priority(self.paths))
        return self._priority[1]

    def observe(self, result: dict[str, Any]) -> None:
        rss = result.get("rss")
        if isinstance(rss, int) and rss > self.peak_rss:
            self.peak_rss = rss

    def tick(self, pool: Any, left: int, now: float | None = None) -> None:
        """Move the pool toward this runner's share. `left`: items not yet handed to the pool."""
        now = time.monotonic() if now is None else now
        if now < self._next:
            return
        self._next = now + (TICK if self.state == "running" else IDLE_TICK)
        if self.reg is None:
            self.reg = Registration(self.paths.home, self.id)
        size = pool.size()
        wanted = min(self.workers, pool.working() + left)
        cap = self.throttle.cap(size, wanted, now)
        want = min(wanted, cap)
        mem_note = None
        if want > max(size, 1) and self.peak_rss:  # the first worker is never held back by a guess
            s, _ = self.monitor.get(now)
            if s.mem_available is not None:
                room = max(0, (s.mem_available - self.throttle.min_free) // self.peak_rss)
                if size + room < want:
                    want = max(size, 1, size + room)
                    mem_note = (f"free memory {_mib(s.mem_available)} would not hold another worker "
                                f"(measured {_mib(self.peak_rss)} each)")
        me = Entry(self.id, os.getpid(), self.priority, self.since, want, self.leases.held,
                   self.state, self.size, self.reason)
        others = [e for e in self.board.entries(REUSE_BOARD) if e.batch_id != self.id]
        target = min(want, allocate([*others, me], self.size)[self.id])
        if pool.size() > target:
            pool.retire(pool.size() - target)
        keep = max(target, pool.alive())  # a slot goes only once its worker has exited
        if self.leases.held > keep:
            self.leases.release(self.leases.held - keep)
        need = target - pool.size()
        if need > 0:
            spare = self.leases.held - pool.alive()
            if need > spare and self.leases.acquire(need - max(0, spare)) and self.reg is not None:
                me.held, me.state = self.leases.held, "running"  # on the board before the workers start
                self.reg.publish(me)
            pool.grow(min(need, self.leases.held - pool.alive()))
        self._settle(pool, left, wanted, cap, mem_note, others, me)

    def _settle(self, pool: Any, left: int, wanted: int, cap: int, mem_note: str | None,
                others: list[Entry], me: Entry) -> None:
        if pool.size() > 0 or (left == 0 and pool.working() == 0):
            self.state = "running"
            if cap < wanted:
                self.reason = f"{pool.size()} of {wanted} workers: {self.throttle.reason}"
            else:
                self.reason = (f"{pool.size()} of {wanted} workers: {mem_note}") if mem_note else None
        elif cap == 0:
            self.state, self.reason = "throttled", self.throttle.reason
        else:
            self.state = "queued"
            busy = sum(e.held for e in others)
            self.reason = f"waiting for a worker slot ({busy} of {self.size} in use by other batches)"
        me.state, me.reason, me.held, me.rss = self.state, self.reason, self.leases.held, self.peak_rss
        self.position = None
        if self.state == "queued":
            order = [e.batch_id for e in queue_order([*others, me])]
            self.position = order.index(self.id) + 1
        if self.reg is not None:
            self.reg.publish(me)
        if self.state != self._shown:
            self._shown = self.state
            self.emit({"type": "state", "batch_id": self.id, "status": self.state, "reason": self.reason,
                       "queue_position": self.position})

    def close(self) -> None:
        """Leave the board, then let the slots go (call after the pool's workers have exited)."""
        if self.reg is not None:
            self.reg.close()
            self.reg = None
        self.leases.close()
