"""The home's shared worker budget: slots as leases, the board of runners that want them, and
how the slots are shared out.

Every runner of a home (any shell, cron job or detached run) draws its workers from one budget:
`BATCHCLI_SLOTS`, else `slots = N` in `$BATCHCLI_HOME/config.toml`, else the usable CPUs.

- A slot is a lease: an exclusive `flock` on `$HOME/slots/<k>.lock`. The kernel drops it when
  its holder dies, however it dies (kill -9 included), so a slot never leaks. A runner starts a
  worker only once it holds a slot for it, and lets the slot go only after that worker has
  exited: the live workers of a home never outnumber the budget.
- Each runner publishes what it wants on the board, `$HOME/queue/<batch_id>.json` (priority,
  arrival, how many workers it could use, how many slots it holds, its state), and holds
  `$HOME/queue/<batch_id>.lock` while it lives: a record whose lock is free is a dead runner's
  and counts for nothing.
- Every runner computes the same share-out from the board (`allocate`): higher priority first,
  first come first served within a priority, one slot each in turn; then moves toward its share
  at item boundaries (its pool retires workers, or takes free slots and starts more).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from itertools import groupby
from typing import Any

from batchcli.atomic import atomic_write
from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError

ENV_SLOTS = "BATCHCLI_SLOTS"
MAX_SLOTS = 1024
"""The largest budget accepted (each slot is a lock file and, in use, a worker process)."""
PRIORITY_RANGE = (-1000, 1000)
CONFIG_MAX_BYTES = 64 << 10


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def budget(home: str) -> int:
    """The home's worker budget: BATCHCLI_SLOTS, else `slots` in config.toml, else the CPUs."""
    env = os.environ.get(ENV_SLOTS, "").strip()
    if env:
        return _count(env, f"{ENV_SLOTS}={env}")
    cfg = read_config(home)
    if "slots" in cfg:
        return _count(cfg["slots"], f"slots = {cfg['slots']!r} in {os.path.join(home, 'config.toml')}")
    return usable_cpus()


def read_config(home: str) -> dict[str, Any]:
    """$BATCHCLI_HOME/config.toml as a dict ({} when absent). A bad file is a usage error."""
    import stat

    path = os.path.join(home, "config.toml")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {}  # the usual case: no TOML parser to import (every runner asks)
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if not stat.S_ISREG(st.st_mode) or st.st_size > CONFIG_MAX_BYTES:
        raise ConfigError(f"{path}: not a regular file under {CONFIG_MAX_BYTES >> 10} KiB")
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _count(value: Any, what: str) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if isinstance(value, bool) or not 1 <= n <= MAX_SLOTS:
        raise ConfigError(f"{what}: expected a whole number of worker slots from 1 to {MAX_SLOTS}")
    return n


# --- priority ---------------------------------------------------------------------------------

def check_priority(n: int) -> int:
    lo, hi = PRIORITY_RANGE
    if not lo <= n <= hi:
        raise ConfigError(f"priority {n}: expected a whole number from {lo} to {hi} (higher runs first)")
    return n


def _priority_file(paths: BatchPaths) -> str:
    return os.path.join(paths.dir, "priority")


def read_priority(paths: BatchPaths) -> int:
    """The batch's priority (default 0). A runner rereads it, so a change applies live."""
    try:
        with open(_priority_file(paths), "rb") as fh:
            return int(fh.read(32).strip() or 0)
    except (OSError, ValueError):
        return 0


def write_priority(paths: BatchPaths, n: int) -> None:
    atomic_write(_priority_file(paths), b"%d\n" % check_priority(n))


# --- leases -----------------------------------------------------------------------------------

class Leases:
    """The slots this runner holds: one exclusive flock each, dropped by the kernel at death."""

    def __init__(self, home: str, size: int, holder: str):
        self.dir = os.path.join(home, "slots")
        self.size = size
        self.holder = holder
        self._fds: dict[int, int] = {}
        os.makedirs(self.dir, exist_ok=True)

    @property
    def held(self) -> int:
        return len(self._fds)

    def acquire(self, n: int) -> int:
        """Take up to `n` more free slots; returns how many were taken."""
        got = 0
        for k in range(self.size):
            if got >= n:
                break
            if k in self._fds:
                continue
            fd = os.open(os.path.join(self.dir, f"{k}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            try:  # who holds it, for a person looking at the folder
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {self.holder}\n".encode(), 0)
            except OSError:
                pass
            self._fds[k] = fd
            got += 1
        return got

    def release(self, n: int) -> None:
        for k in sorted(self._fds, reverse=True)[:max(0, n)]:
            os.close(self._fds.pop(k))  # closing the only descriptor drops the flock

    def close(self) -> None:
        self.release(len(self._fds))


# --- the board --------------------------------------------------------------------------------

@dataclass
class Entry:
    """One live runner's line on the board."""

    batch_id: str
    pid: int
    priority: int
    since: float  # when it joined the queue: first come first served within a priority
    want: int  # workers it could use now (after its own limits: --workers, load, memory)
    held: int  # slots it holds
    state: str  # queued, running, throttled
    budget: int
    reason: str | None = None
    rss: int = 0  # the largest worker memory measured so far (bytes)


def allocate(entries: list[Entry], size: int) -> dict[str, int]:
    """Share `size` slots among the entries: higher priority first; within a priority, one slot
    each in order of arrival, round after round, until every want is met or no slot is left."""
    alloc = {e.batch_id: 0 for e in entries}
    free = size
    order = sorted(entries, key=lambda e: (-e.priority, e.since, e.batch_id))
    for _, group in groupby(order, key=lambda e: e.priority):
        members = list(group)
        while free > 0:
            gave = False
            for e in members:
                if free > 0 and alloc[e.batch_id] < e.want:
                    alloc[e.batch_id] += 1
                    free -= 1
                    gave = True
            if not gave:
                break
    return alloc


def queue_order(entries: list[Entry]) -> list[Entry]:
    """The runners waiting for a slot, first to be served first."""
    waiting = [e for e in entries if e.state == "queued"]
    return sorted(waiting, key=lambda e: (-e.priority, e.since, e.batch_id))


def _held_by_someone(path: str) -> bool:
    """Is the lock file held (its runner alive)? A shared try-lock: never blocks the owner."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops our shared lock, if we got it
    return False


class Board:
    """The records of the home's live runners, read with a cache (a record is parsed again only
    when its file changed)."""

    def __init__(self, home: str):
        self.dir = os.path.join(home, "queue")
        self._cache: dict[str, tuple[tuple[int, int], Entry | None]] = {}
        self._seen: tuple[int, float, list[Entry]] | None = None  # (folder mtime, when, entries)

    def entries(self, reuse_for: float = 0.0) -> list[Entry]:
        """The live runners' records. With `reuse_for`, the last answer is reused while the
        folder is unchanged and younger than that many seconds (a dead runner is noticed
        within `reuse_for`)."""
        try:
            mtime = os.stat(self.dir).st_mtime_ns
        except FileNotFoundError:
            return []
        now = time.monotonic()
        if self._seen is not None and self._seen[0] == mtime and now - self._seen[1] < reuse_for:
            return self._seen[2]
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        out = []
        seen = set()
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            bid = name[:-5]
            seen.add(bid)
            entry = self._read(bid)
            if entry is not None and _held_by_someone(os.path.join(self.dir, bid + ".lock")):
                out.append(entry)
        for gone in set(self._cache) - seen:
            del self._cache[gone]
        self._seen = (mtime, now, out)
        return out

    def entry(self, batch_id: str) -> Entry | None:
        """One batch's live record, or None (no live runner is queued or running it)."""
        e = self._read(batch_id)
        if e is None or not _held_by_someone(os.path.join(self.dir, batch_id + ".lock")):
            return None
        return e

    def _read(self, batch_id: str) -> Entry | None:
        path = os.path.join(self.dir, batch_id + ".json")
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        hit = self._cache.get(batch_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        try:
            with open(path, "rb") as fh:
                entry = Entry(**json.load(fh))
        except (OSError, ValueError, TypeError):
            entry = None
        self._cache[batch_id] = (key, entry)
        return entry


class Registration:
    """This runner's place on the board: the lock it holds while alive, and its record."""

    def __init__(self, home: str, batch_id: str):
        self.dir = os.path.join(home, "queue")
        os.makedirs(self.dir, exist_ok=True)
        self.json = os.path.join(self.dir, batch_id + ".json")
        self.lock = os.path.join(self.dir, batch_id + ".lock")
        while True:
            self._fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # readers hold it shared for microseconds only
            try:
                if os.stat(self.lock).st_ino == os.fstat(self._fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(self._fd)  # `forget` removed the file we waited for: take a new one
        self._last: dict[str, Any] | None = None

    def publish(self, entry: Entry) -> None:
        """Put the record on the board. A full disk keeps the last one there and is tried again at
        the next tick: the run goes on, and its journal says when the disk is really full."""
        data = asdict(entry)
        if data != self._last:
            try:
                atomic_write(self.json, json.dumps(data).encode(), durable=False)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                return
            self._last = data

    def close(self) -> None:
        """Leave the board. Only this batch's runner (it holds the batch lock) touches these files."""
        for p in (self.json, self.lock):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        os.close(self._fd)


def forget(home: str, batch_id: str) -> None:
    """Take a dead runner's record off the board (one killed with kill -9 could not): what its
    `Registration.close` would have done. A live runner's record stays: its lock is held."""
    folder = os.path.join(home, "queue")
    lock = os.path.join(folder, batch_id + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return  # alive
    try:
        for path in (os.path.join(folder, batch_id + ".json"), lock):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)


def live_entry(paths: BatchPaths) -> Entry | None:
    """The batch's record on its home's board when a live runner published one."""
    return Board(paths.home).entry(paths.id)


def queue_position(paths: BatchPaths, entry: Entry, entries: list[Entry] | None = None) -> int | None:
    """1 for the next batch to get a slot, 2 for the one after, ...; None when not queued."""
    if entry.state != "queued":
        return None
    entries = Board(paths.home).entries() if entries is None else entries
    ids = [e.batch_id for e in queue_order(entries)]
    return ids.index(entry.batch_id) + 1 if entry.batch_id in ids else None
