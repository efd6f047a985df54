"""A function run in a forked child process while this one goes on with other work (two cores
for two independent phases): its result comes back pickled through a pipe. Anything that goes
wrong in the child (an exception, a kill) gives None, and the caller does the work itself."""

from __future__ import annotations

import os
import pickle
import signal
import threading
from collections.abc import Callable
from typing import Any


class Forked:
    """`fn(*args)` in a child process. `result()` waits for it; `cancel()` (also on leaving a
    `with` block) kills it unless its result was taken. The child writes nothing but the pipe,
    whatever `fn` writes, and leaves with os._exit (no exit handlers, no stdio flushed twice)."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self.pid: int | None = None
        self.fd = -1
        if threading.active_count() > 1:  # a fork copies one thread: the others' locks stay held
            return
        r, w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return
        if pid == 0:  # the child
            code = 1
            try:
                os.close(r)
                view = memoryview(pickle.dumps(fn(*args), protocol=pickle.HIGHEST_PROTOCOL))
                while view:
                    view = view[os.write(w, view):]
                code = 0
            except BaseException:  # noqa: BLE001,S110 (the parent does the work itself)
                pass
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self.fd = pid, r

    def result(self) -> Any:
        """The child's result, or None when it failed (or no child could be started)."""
        if self.pid is None:
            return None
        chunks = []
        try:
            while True:
                chunk = os.read(self.fd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            chunks = []
        ok = self._reap() == 0
        if not (ok and chunks):
            return None
        try:
            return pickle.loads(b"".join(chunks))
        except Exception:  # noqa: BLE001 (a torn result: the caller does the work itself)
            return None

    def running(self) -> bool:
        """The child is still at work (it writes its result only at its end)."""
        if self.pid is None:
            return False
        import select

        return not select.select([self.fd], [], [], 0)[0]

    def cancel(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._reap()

    def _reap(self) -> int | None:
        pid, self.pid = self.pid, None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if pid is None:
            return None
        while True:
            try:
                _, status = os.waitpid(pid, 0)
            except InterruptedError:
                continue
            except ChildProcessError:
                return None
            return os.waitstatus_to_exitcode(status)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.cancel()
