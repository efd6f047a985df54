"""watch: a hot folder. One long-lived batch, with the same journal as any other, that takes
files as they land in its folders.

The runner of a watch batch (its manifest has "watch") asks a HotFolder for work once the items
it already has are handed out. A file system watcher (watchfiles: inotify on Linux, or polling
with --poll, for network file systems) reports paths that appeared or changed; a path becomes an
item once it is complete: its size and mtime unchanged for the settle time. Discovery decides,
as for `start`, what is an item (extension, --exclude, never the output folder or the batch
home). A new file gets the next item number (a line appended to items.jsonl, the manifest's
total raised) before the runner sees it; a changed file that was done is requeued
(`items_requeued`) and redone. Files that landed while no runner watched (a pause, a reboot) are
found by one walk when the runner starts again.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import deque
from typing import Any

from batchcli.engine.journal import COMPLETED, FAILED, PENDING
from batchcli.inputs import discover, names

log = logging.getLogger("batchcli.watch")

SETTLE_DEFAULT = 2.0
"""Seconds a file's size and mtime must stay the same before it is taken (--settle)."""
LOOK_EVERY = 0.1
"""Seconds between looks at the files waiting to settle."""
RESCAN_AFTER = 1.0
"""Seconds after the start: one more walk, for files that landed while the watcher started."""
POLL_DELAY_MS = 250
"""With --poll (or when the native watcher cannot start): milliseconds between scans."""
ROOTS_EVERY = 0.5
"""Seconds between looks at the watched folders themselves: one deleted (and made again) is
watched again, as it is now (a kernel watch follows the folder it was given, not its path)."""


def watch_spec(inputs: list[str], settle: float, poll: bool) -> dict[str, Any]:
    """The manifest's "watch" entry; the folders must exist (a usage error otherwise)."""
    from batchcli.errors import ConfigError

    if not inputs:
        raise ConfigError("watch needs one or more folders to watch")
    for path in inputs:
        if not os.path.isdir(path):
            raise ConfigError(f"{path}: not a folder (watch takes folders)")
    if not (0 <= settle <= 3600):
        raise ConfigError(f"--settle {settle:g}s: expected 0 to 3600 seconds")
    return {"roots": [os.path.abspath(p) for p in inputs], "settle": settle, "poll": bool(poll)}


class HotFolder:
    """The runner's source of new work in a watch batch. Call `next()` from the runner's loop
    (None: nothing has landed yet) and `close()` at the end."""

    def __init__(self, runner: Any, st: Any):
        self.runner, self.st, self.paths = runner, st, runner.paths
        man = runner.manifest
        spec = man["watch"]
        self.roots: list[str] = spec["roots"]
        self.settle = float(spec.get("settle", SETTLE_DEFAULT))
        self.poll = bool(spec.get("poll"))
        opts = man.get("input_options") or {}
        self.exts = tuple(opts.get("exts") or discover.parse_exts(None))
        self.exclude = list(opts.get("exclude") or [])
        home = os.path.dirname(os.path.dirname(self.paths.dir))
        self.skip = [d for d in (man.get("out_dir"), home) if d]
        self.known: dict[str, list] = {}  # src -> [i, size, mtime as last offered, items.jsonl record]
        self._fh = open(self.paths.items, "ab")
        namer = names.Namer(opts.get("name_template"), man.get("name") or self.paths.id,
                            names.preset_name(man["pipeline"]))
        self.writer = discover.ItemWriter(self._fh, namer)
        for rec in discover.iter_items(self.paths.items):
            self.writer.seed(rec)
            self.known[os.path.abspath(rec["src"])] = [rec["i"], rec.get("size"), rec.get("mtime"), rec]
        self.waiting: dict[str, tuple | None] = {}  # path -> ((size, mtime_ns), since) while settling
        self.ready: deque[dict[str, Any]] = deque()
        self._events: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._restart = threading.Event()  # the watched folders changed: watch them anew
        self._ids = self._root_ids()
        self._roots_at = 0.0
        self._rescan_known = False
        self._last_look = 0.0
        self.grew = False  # items were added: the journal writer's fold no longer holds them all
        for f in self._discover():  # landed while no runner watched
            if os.path.abspath(f.src) not in self.known:
                self.waiting[os.path.abspath(f.src)] = None
        self._thread = threading.Thread(target=self._watch, name="batchcli-watch", daemon=True)
        self._thread.start()
        # a file that lands between the walk above and the moment the watcher is listening is
        # reported by neither: one more walk once the watcher surely runs finds it
        self._rescan_at = time.monotonic() + RESCAN_AFTER

    # --- the watcher thread ------------------------------------------------------------------
    def _watch(self) -> None:
        from watchfiles import Change, watch

        poll = self.poll
        either = _Either(self._stop, self._restart)
        while not self._stop.is_set():
            self._restart.clear()
            roots = [r for r in self.roots if os.path.isdir(r)]  # one deleted is watched once it is back
            if not roots:
                self._stop.wait(ROOTS_EVERY)
                continue
            try:
                for changes in watch(*roots, watch_filter=None, debounce=100, step=20, stop_event=either,
                                     force_polling=poll, poll_delay_ms=POLL_DELAY_MS, raise_interrupt=False,
                                     ignore_permission_denied=True):
                    with self._lock:
                        self._events.update(os.path.abspath(p) for c, p in changes if c != Change.deleted)
            except Exception as exc:  # e.g. out of inotify watches: poll instead
                if poll:
                    log.warning("watching %s failed: %s; retrying", ", ".join(self.roots), exc)
                    self._stop.wait(1.0)
                else:
                    log.warning("native file watching failed (%s); polling instead", exc)
                    poll = True

    def _root_ids(self) -> list[tuple[int, int] | None]:
        out: list[tuple[int, int] | None] = []
        for root in self.roots:
            try:
                st = os.stat(root)
                out.append((st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None)
            except OSError:
                out.append(None)
        return out

    def _look_at_roots(self, now: float) -> None:
        """A watched folder deleted, or made again, is watched anew, and walked once the watcher
        runs again (for the files that landed meanwhile)."""
        if now - self._roots_at < ROOTS_EVERY:
            return
        self._roots_at = now
        ids = self._root_ids()
        if ids == self._ids:
            return
        for root, was, now_id in zip(self.roots, self._ids, ids):
            if was != now_id:
                log.warning("watched folder %s %s", root, "is gone; watching it again once it is back"
                            if now_id is None else "was made again; watching it again")
        self._ids = ids
        self._restart.set()
        self._rescan_at, self._rescan_known = now + RESCAN_AFTER, True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._fh.close()

    # --- the runner's side -------------------------------------------------------------------
    def next(self) -> dict[str, Any] | None:
        if not self.ready:
            now = time.monotonic()
            if now - self._last_look < LOOK_EVERY:
                return None
            self._last_look = now
            self.ready.extend(self._collect(now))
        return self.ready.popleft() if self.ready else None

    def _collect(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            fresh, self._events = self._events, set()
        self._look_at_roots(now)
        if self._rescan_at and now >= self._rescan_at:
            self._rescan_at = 0.0
            seen = {os.path.abspath(f.src) for f in self._discover()} - set(self.waiting)
            fresh |= seen if self._rescan_known else seen - set(self.known)  # (a file the batch has: redone if changed)
            self._rescan_known = False
        for p in fresh:
            if not any(p.startswith(d.rstrip(os.sep) + os.sep) for d in self.skip):  # our own outputs
                self.waiting[p] = None
        done: list[str] = []
        for p, seen in list(self.waiting.items()):
            try:
                st = os.stat(p)
            except OSError:
                del self.waiting[p]
                continue
            if not stat.S_ISREG(st.st_mode):
                del self.waiting[p]
                continue
            key = (st.st_size, st.st_mtime_ns)
            if seen is None or seen[0] != key:
                self.waiting[p] = (key, now)
            elif now - seen[1] >= self.settle:
                del self.waiting[p]
                done.append(p)
        if not done:
            return []
        out = [item for p in done if p in self.known for item in self._changed(p)]
        new = {p for p in done if p not in self.known}
        if new:
            out += self._add([f for f in self._discover() if os.path.abspath(f.src) in new])
        return out

    def _discover(self) -> list[discover.Found]:
        """What discovery makes of the watched folders now (extensions, exclusions, skips); a
        folder deleted meanwhile is left out (it is walked once it is back: _look_at_roots)."""
        from batchcli.errors import ConfigError

        roots = [r for r in self.roots if os.path.isdir(r)]
        try:
            return [f for f in discover.find(roots, self.exts, skip_dirs=self.skip, exclude=self.exclude)
                    if f.ino] if roots else []
        except ConfigError:  # (deleted between the look and the walk)
            return []

    def _changed(self, p: str) -> list[dict[str, Any]]:
        """A file the batch has, written again: requeued when it was done (or failed)."""
        k = self.known[p]
        i, rec = k[0], k[3]
        try:
            st = os.stat(p)
        except OSError:
            return []
        if (st.st_size, st.st_mtime) == (k[1], k[2]):
            return []  # nothing new (an event about the same bytes)
        state = self.st.items[i]
        if state not in (COMPLETED, FAILED):
            return []  # pending or in hand: the worker reads the file as it is then
        k[1], k[2] = st.st_size, st.st_mtime
        self.runner.journal.append("items_requeued", items=[i], all_failed=False, reason="changed")
        self.st.counts[state] -= 1
        self.st.counts[PENDING] += 1
        self.st.items[i] = PENDING
        # the size and mtime of items.jsonl: the worker records the new ones (src_stat)
        return [_item(rec)]

    def _add(self, found: list[discover.Found]) -> list[dict[str, Any]]:
        if not found:
            return []
        recs = [self.writer.add(f) for f in found]
        self._fh.flush()
        os.fsync(self._fh.fileno())
        man = self.paths.load_manifest()
        man["total"] = self.writer.n
        self.paths.write_manifest(man)  # other shells' status counts them from now on
        grow = self.writer.n - len(self.st.items)
        self.st.items.extend(bytes(grow))
        self.st.counts[PENDING] += grow
        self.st.total = self.runner.total = self.writer.n
        self.grew = True
        for rec in recs:
            self.known[os.path.abspath(rec["src"])] = [rec["i"], rec["size"], rec["mtime"], rec]
        return [_item(rec) for rec in recs]


class _Either:
    """Set when either event is: the watcher's stop_event (it asks is_set() between steps)."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


def _item(rec: dict[str, Any]) -> dict[str, Any]:
    return {"i": rec["i"], "src": rec["src"], "stem": rec["stem"], "size": rec.get("size"), "mtime": rec.get("mtime")}
