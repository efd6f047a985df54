"""Live events read from the journals, for batches started anywhere (server, CLI, cron).

One `Feed` per batch folds its journal incrementally (only the lines appended since the last
look are read) and turns new records into the CLI's events: `started`, `progress`,
`item_completed`, `item_failed`, `paused`, `finished`. One `Hub` polls the feeds that have
subscribers (WebSocket per batch, SSE for all batches) and fans each event, serialised once, out
to every subscriber's bounded queue. The feeds double as the status cache of the API: a status
request folds the same Replay a subscriber is fed from, so a poll never re-reads a journal.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import time
from typing import Any

from batchcli.engine.journal import Replay, replay
from batchcli.engine.status import batch_status
from batchcli.engine.store import BatchPaths, Store

log = logging.getLogger("batchcli.server.events")

POLL = 0.1
"""Seconds between looks at the journals that have subscribers."""
IDLE_POLL = 1.0
"""...and at those of batches that are not running (something else may resume them)."""
DISCOVER_EVERY = 0.3
"""Seconds between looks for new batches while anyone listens to every batch."""
PROGRESS_EVERY = 0.25
"""Least seconds between two `progress` events of a batch (one always precedes paused/finished)."""
LIVENESS_AFTER = 1.0
"""Seconds without a new record before a running batch's runner is checked for life."""
QUEUE_MAX = 20_000
"""Events a subscriber may fall behind before it is dropped (it reconnects with ?since=SEQ)."""
RATE_WINDOW = 10.0
"""Seconds of journal time the rate is measured over."""
STATUS_TTL = 0.5
"""Seconds a status object is reused while the journal has not grown (the runner's liveness,
the one thing that changes without a journal line, is looked at no more often)."""
CACHED_FEEDS = 64
"""Feeds kept without subscribers (the status cache), least recently used dropped first."""

FINAL = ("completed", "failed", "cancelled", "interrupted")
HISTORY = "history"
"""The kind a replayed event (`?since=SEQ`) is queued under: whatever its type, it ends no stream."""


class Feed:
    """One batch: its Replay, folded further on each `poll`, and the events that came of it."""

    def __init__(self, paths: BatchPaths, fresh: bool = False):
        """`fresh`: a batch made after someone started listening to every batch: its whole
        journal is news, so the first poll turns every record into events."""
        self.paths = paths
        self.total = int(paths.load_manifest()["total"])
        self.lock = threading.Lock()
        self.st: Replay | None = None
        if fresh:
            self.st = Replay(total=self.total, items=bytearray(self.total))
            self.st.counts[0] = self.total
        self.subs: set[Subscriber] = set()
        self.status: str | None = None
        self._events: list[dict[str, Any]] = []
        self._done_at: collections.deque[tuple[float, int]] = collections.deque()
        self._last_progress_key: tuple | None = None
        self._last_progress_t = 0.0
        self._last_growth = time.monotonic()
        self._last_size = -1
        self._dead = False  # the journal says running but no runner holds the lock
        self.last_used = time.monotonic()
        self.next_poll = 0.0
        self.gone = False
        self.cached: tuple[tuple, float, dict[str, Any]] | None = None  # (journal size and state, when, status)

    # -- folding -----------------------------------------------------------------------------
    def poll(self, emit: bool = True) -> list[dict[str, Any]]:
        """Fold what the journal gained since the last call; the events that came of it.
        Call with `lock` held."""
        try:
            size = os.stat(self.paths.journal).st_size
        except FileNotFoundError:
            if not self.gone:
                self.gone = True
                return [{"type": "removed", "batch_id": self.paths.id}]
            return []
        now = time.monotonic()
        self._events = []
        if self.st is None:
            self.st = replay(self.paths.journal, self.total)
            self._last_size = size
            self.status = self._status()
            self._last_progress_key = self._key()
            return []
        if size != self._last_size:
            self._last_size = size
            self._last_growth = now
            self._dead = False
            # an unfinished last line was reported by the last fold; it is read again now
            self.st.bad[:] = [b for b in self.st.bad if b.offset < self.st.offset]
            replay(self.paths.journal, self.total, base=self.st, on_record=self._on_record if emit else None)
        elif self.st.state == "running" and not self._dead and now - self._last_growth >= LIVENESS_AFTER:
            from batchcli.engine.liveness import runner_alive

            self._last_growth = now
            if runner_alive(self.paths) is None:
                self._dead = True
                if emit:
                    self._progress(force=True)
                    self._events.append(self._end("finished"))
        self.status = self._status()
        if emit:
            self._progress()
        events, self._events = self._events, []
        return events

    def _status(self) -> str:
        assert self.st is not None
        return "interrupted" if self.st.state == "running" and self._dead else self.st.state

    def _key(self) -> tuple:
        st = self.st
        assert st is not None
        return (self._status(), st.completed, st.failed, st.skipped)

    def _on_record(self, st: Replay, rec: dict[str, Any]) -> None:
        kind = rec.get("type")
        seq = rec.get("seq")
        bid = self.paths.id
        if kind in ("item_completed", "item_failed"):
            self._done_at.append((rec.get("t") or 0.0, st.completed + st.failed))
            if kind == "item_completed":
                self._events.append({"type": "item_completed", "batch_id": bid, "seq": seq, "i": rec.get("i"),
                                     "out": rec.get("out"), "bytes": rec.get("bytes"), "ms": rec.get("ms")})
            else:
                self._events.append({"type": "item_failed", "batch_id": bid, "seq": seq, "i": rec.get("i"),
                                     "error_class": rec.get("error_class"), "error": rec.get("error"),
                                     "ms": rec.get("ms")})
        elif kind in ("batch_started", "batch_resumed"):
            self._done_at.clear()
            self._events.append({"type": "started", "batch_id": bid, "seq": seq, "total": st.total,
                                 "remaining": st.remaining, "workers": rec.get("workers"),
                                 "resumed": kind == "batch_resumed"})
        elif kind == "batch_paused":
            self._progress(force=True)
            self._events.append(self._end("paused"))
        elif kind in ("batch_finished", "batch_cancelled"):
            self._progress(force=True)
            self._events.append(self._end("finished"))

    def _end(self, kind: str) -> dict[str, Any]:
        st = self.st
        assert st is not None
        status = self._status()
        reason = st.reason if status != "interrupted" else \
            f"the runner died; recover it, then resume batch {self.paths.id}"
        return {"type": kind, "batch_id": self.paths.id, "seq": st.last_seq, "status": status,
                "completed": st.completed, "failed": st.failed, "skipped": st.skipped,
                "remaining": st.remaining, "total": st.total, "reason": reason}

    def rate(self) -> tuple[float | None, float | None]:
        """Items per second over the last RATE_WINDOW seconds of journal time, and the ETA."""
        st = self.st
        q = self._done_at
        if st is None or len(q) < 2 or st.state != "running" or self._dead:
            return None, None
        while len(q) > 2 and q[-1][0] - q[0][0] > RATE_WINDOW:
            q.popleft()
        dt = q[-1][0] - q[0][0]
        if dt <= 0:
            return None, None
        rate = (q[-1][1] - q[0][1]) / dt
        return round(rate, 2), (round(st.remaining / rate, 1) if rate > 0 else None)

    def progress_event(self) -> dict[str, Any]:
        st = self.st
        assert st is not None
        done = st.completed + st.failed
        rate, eta = self.rate()
        return {"type": "progress", "batch_id": self.paths.id, "seq": st.last_seq, "status": self._status(),
                "completed": st.completed, "failed": st.failed, "skipped": st.skipped, "total": st.total,
                "remaining": st.remaining,
                "progress_percent": round(done / st.total * 100, 2) if st.total else 100.0,
                "rate": rate, "eta_s": eta}

    def _progress(self, force: bool = False) -> None:
        key = self._key()
        now = time.monotonic()
        if key == self._last_progress_key or (not force and now - self._last_progress_t < PROGRESS_EVERY):
            return
        self._last_progress_key, self._last_progress_t = key, now
        self._events.append(self.progress_event())

    def history(self, since: int) -> list[dict[str, Any]]:
        """The events of the records after `since` up to what this feed has folded (a fresh fold
        of the journal). Call with `lock` held."""
        assert self.st is not None
        old = Feed(self.paths)
        old.st = Replay(total=self.total, items=bytearray(self.total))
        old.st.counts[0] = self.total
        out: list[dict[str, Any]] = []
        end = self.st.last_seq

        def keep(st: Replay, rec: dict[str, Any]) -> None:
            old._events = []
            old._on_record(st, rec)
            seq = rec.get("seq") or 0
            out.extend(e for e in old._events if since < seq <= end and e["type"] != "progress")

        replay(self.paths.journal, self.total, use_snapshot=False, base=old.st, on_record=keep)
        return out


class Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, batch_id: str | None, types: frozenset[str] | None):
        self.loop = loop
        self.batch_id = batch_id  # None: every batch (SSE)
        self.types = types
        self.queue: asyncio.Queue[tuple[str, str, int]] = asyncio.Queue()
        self.overflow = False
        self.joined: set[str] = set()  # (all batches) the feeds whose events it gets: caught up when it came

    def offer(self, kind: str, text: str, seq: int) -> None:
        """In the event loop: queue one event; past QUEUE_MAX waiting, an `overflow` marker
        instead, and nothing more (the consumer closes the connection)."""
        if self.overflow or (self.types is not None and kind not in self.types):
            return
        if self.queue.qsize() >= QUEUE_MAX:
            self.overflow = True
            kind, text = "overflow", ""
        self.queue.put_nowait((kind, text, seq))


class Hub:
    """The feeds of one batch home, polled while anybody listens."""

    def __init__(self, store: Store):
        self.store = store
        self.feeds: collections.OrderedDict[str, Feed] = collections.OrderedDict()
        self.all_subs: set[Subscriber] = set()
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._ids_at = 0.0
        self._known: set[str] | None = None  # while anyone listens to every batch: the batches seen
        self.closing = asyncio.Event()
        self.streams = 0  # open event streams (WebSocket, SSE)
        self._drained: asyncio.Event | None = None

    def stream_ended(self) -> None:
        self.streams -= 1
        if self.streams <= 0 and self._drained is not None:
            self._drained.set()

    async def close_streams(self, timeout: float = 2.0) -> None:
        """Server shutdown: every open event stream ends (the loop's own coroutines return);
        waits until they have, at most `timeout` seconds."""
        self._drained = asyncio.Event()
        self.closing.set()
        if self.streams > 0:
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning("%d event stream(s) still open at shutdown", self.streams)

    # -- feeds (status cache) ---------------------------------------------------------------
    def feed(self, paths: BatchPaths) -> Feed:
        with self.lock:
            f = self.feeds.get(paths.id)
            if f is None or f.gone:
                fresh = self._known is not None and paths.id not in self._known
                f = self.feeds[paths.id] = Feed(paths, fresh)
                if self._known is not None:
                    self._known.add(paths.id)
                for s in self.all_subs:  # a new feed has missed nothing
                    s.joined.add(paths.id)
            self.feeds.move_to_end(paths.id)
            f.last_used = time.monotonic()
            idle = [k for k, v in self.feeds.items() if not v.subs]
            for k in idle[: max(0, len(idle) - CACHED_FEEDS)]:
                if not self.all_subs:
                    del self.feeds[k]
        return f

    def warm(self, paths: BatchPaths) -> bool:
        """Has this batch's journal been folded already (so a status reads only new lines)?"""
        f = self.feeds.get(paths.id)
        return f is not None and f.st is not None and not f.gone

    def status(self, paths: BatchPaths) -> dict[str, Any]:
        """`status --json` of a batch, from its feed (only new journal lines are read). A folder
        that is no whole batch has status `damaged` and the reason, as in `batchcli status`."""
        try:
            f = self.feed(paths)
        except (OSError, ValueError, KeyError, TypeError):  # no manifest, or one that cannot be read
            return {**batch_status(paths), "rate": None, "eta_s": None}
        with f.lock:
            self._publish(f, f.poll())
            now = time.monotonic()
            key = (f._last_size, f.status)
            if f.cached is not None and f.cached[0] == key and now - f.cached[1] < STATUS_TTL:
                return dict(f.cached[2])
            s = batch_status(paths, f.st)
            if f.status == "interrupted":
                s["status"], s["runner_pid"] = "interrupted", None
            rate, eta = f.rate()
            s["rate"], s["eta_s"] = rate, eta
            f.cached = (key, now, s)
        return dict(s)

    # -- subscribing --------------------------------------------------------------------------
    def subscribe(self, paths: BatchPaths | None, since: int | None = None,
                  types: frozenset[str] | None = None) -> Subscriber:
        """A subscriber to one batch (`paths`) or to all (None). A batch subscriber first gets the
        events after `since` (when given), then the current `progress`, then live events. Reads
        files: call it in a thread, then `ensure_polling` in the loop."""
        assert self.loop is not None
        sub = Subscriber(self.loop, paths.id if paths else None, types)
        if paths is None:
            ids = set(self.store.ids())
            with self.lock:
                if self._known is None:
                    self._known = ids | set(self.feeds)
                self.all_subs.add(sub)
                feeds = list(self.feeds.values())
            for f in feeds:  # what a cached feed missed goes to its subscribers, not to this one
                with f.lock:
                    try:
                        self._publish(f, f.poll())
                    except (OSError, ValueError, KeyError):
                        pass
                    sub.joined.add(f.paths.id)
            return sub
        f = self.feed(paths)
        with f.lock:
            self._publish(f, f.poll())
            # the records after `since` are history: a `finished` among them ended an earlier run
            # (the batch may be running again), so it does not end the stream, unlike the last one
            # below when the batch stands finished, or a live one
            for ev in f.history(since) if since is not None else []:
                sub.offer(HISTORY, _dumps(ev), ev.get("seq") or 0)
            backlog = [f.progress_event()]
            if f.status in FINAL:
                backlog.append(f._end("finished"))
            for ev in backlog:
                sub.offer(ev["type"], _dumps(ev), ev.get("seq") or 0)
            f.subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self.lock:
            self.all_subs.discard(sub)
            if not self.all_subs:
                self._known = None
            feeds = list(self.feeds.values())
        for f in feeds:
            f.subs.discard(sub)

    def _publish(self, f: Feed, events: list[dict[str, Any]]) -> None:
        """Hand events to the subscribers, in order (called with the feed's lock held, from any
        thread: the loop runs the deliveries in the order they were scheduled)."""
        if not events or self.loop is None:
            return
        bid = f.paths.id
        subs = [*f.subs, *(s for s in list(self.all_subs) if bid in s.joined)]
        if not subs:
            return
        batch = [(e["type"], _dumps(e), e.get("seq") or 0) for e in events]
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(_deliver, subs, batch)

    # -- the poller ---------------------------------------------------------------------------
    def ensure_polling(self) -> None:
        """Start the poller if it is not running (call in the event loop, after `subscribe`)."""
        if self._task is None or self._task.done():
            assert self.loop is not None
            self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        import anyio.to_thread

        while not self.closing.is_set():
            with self.lock:
                listening = bool(self.all_subs) or any(f.subs for f in self.feeds.values())
            if not listening:
                break
            try:
                await anyio.to_thread.run_sync(self._tick)
            except Exception:  # one bad batch folder must not stop the events of the others
                log.exception("event poll failed")
            try:
                await asyncio.wait_for(self.closing.wait(), POLL)
            except asyncio.TimeoutError:
                pass
        self._task = None

    def _tick(self) -> None:
        now = time.monotonic()
        with self.lock:
            everything = bool(self.all_subs)
        if everything and now - self._ids_at >= DISCOVER_EVERY:
            self._ids_at = now
            with self.lock:
                known = set(self.feeds) | (self._known or set())
            for paths in self.store.all():
                if paths.id not in known:
                    try:
                        f = self.feed(paths)  # a batch made since: every record of it is news
                    except (OSError, ValueError, KeyError):
                        continue
                    with f.lock:
                        self._publish(f, f.poll())
        with self.lock:
            feeds = [f for f in self.feeds.values() if f.subs or everything]
        for f in feeds:
            if f.next_poll > now:
                continue
            with f.lock:
                try:
                    events = f.poll()
                except (OSError, ValueError, KeyError):
                    continue
                self._publish(f, events)
                f.next_poll = now + (POLL if f.st is not None and f.st.state == "running" else IDLE_POLL) * 0.9
            if f.gone:
                with self.lock:
                    self.feeds.pop(f.paths.id, None)


def _deliver(subs: list[Subscriber], batch: list[tuple[str, str, int]]) -> None:
    for s in subs:
        for kind, text, seq in batch:
            s.offer(kind, text, seq)


def _dumps(ev: dict[str, Any]) -> str:
    return json.dumps(ev, ensure_ascii=False, separators=(",", ":"))
