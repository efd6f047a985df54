"""A worker process's own set-up and readings: dying with its parent, its name, its memory cap,
its resident and peak memory."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any


def readable(conn: Any) -> Callable[[], bool]:
    """`conn.poll()` (is a message, or the end of the pipe, there to read?) for a check made
    between every two items, or every two messages: one poll object for the connection's life,
    where Connection.poll builds and tears down a selector each call (an eighth of a worker's
    CPU on tiny items)."""
    import select

    p = select.poll()
    p.register(conn.fileno(), select.POLLIN)
    return lambda: bool(p.poll(0))


def rss() -> int:
    """This process's resident memory in bytes (0 when unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies (no orphan workers), be `batchcli-worker` in ps."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        libc.prctl(15, b"batchcli-worker")  # PR_SET_NAME (15 bytes at most)
    except (OSError, AttributeError):
        pass
    from batchcli.executors.forkserve import leave

    leave()  # after the prctl: the fork server, this worker's parent, exits with the runner


def cap_memory(limit: int) -> None:
    """Cap this process's address space at `limit` bytes (--worker-memory; 0: no cap)."""
    if limit <= 0:
        return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass


class PeakRss:
    """The peak resident memory of this process since the last reading: Linux's VmHWM, reset by
    writing 5 to /proc/self/clear_refs (about 15 us a reading); elsewhere the peak of the
    process's whole life. Read once per message of results, so a result carries the peak of the
    window it was made in: its own item's for any item slower than FLUSH_EVERY."""

    def __init__(self) -> None:
        try:
            self._status = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
            self._clear: int | None = os.open("/proc/self/clear_refs", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            self._status = self._clear = None

    def read(self) -> int | None:
        if self._clear is not None:
            try:
                data = os.pread(self._status, 8192, 0)
                at = data.index(b"VmHWM:")
                kb = int(data[at + 6:data.index(b"kB", at)])
                os.write(self._clear, b"5")
                return kb << 10
            except (OSError, ValueError):
                self._clear = None
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10
        except (ImportError, OSError):
            return None
