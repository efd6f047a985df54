"""A worker's background writer: its outputs made durable in groups while it decodes the next
images (see worker_main)."""

from __future__ import annotations

import os
import time
from typing import Any


class Writer:
    """A background thread that makes a worker's outputs durable in groups: the outputs queued
    while it was busy, or within `linger` seconds of the first, are written and made durable
    together (imageio.write_many, atomic_write_many), so a group costs about two filesystem
    commits, not two per file, and the waiting overlaps the next images' decode. At most `depth` outputs or `max_bytes` wait.
    Each output's future gets its mtime or its ItemError; `fileno()` becomes readable after
    every group, so the worker can wait on it beside its pipe."""

    def __init__(self, depth: int = 64, max_bytes: int = 64 << 20, linger: float = 0.005):
        import threading

        self.depth = depth
        self.linger = linger
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._queue: list[tuple[str, bytes, Any]] = []
        self._count = 0  # queued or being written
        self._bytes = 0
        self.on_group: Any = None  # called on this thread after each group is durable (see worker_main)
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        threading.Thread(target=self._run, name="batchcli-writer", daemon=True).start()

    def submit(self, path: str, data: bytes) -> Any:
        from concurrent.futures import Future

        fut: Future = Future()
        with self._cond:
            while self._count and (self._count >= self.depth or self._bytes + len(data) > self.max_bytes):
                self._cond.wait()
            self._queue.append((path, data, fut))
            self._count += 1
            self._bytes += len(data)
            self._cond.notify_all()
        return fut

    def fileno(self) -> int:
        return self._r

    def drain(self) -> None:
        """Clear the wake-ups of the groups finished so far."""
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass

    def _run(self) -> None:
        from batchcli.imaging.encode import write_many

        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                deadline = time.monotonic() + self.linger  # let a group gather: each costs a commit
                while len(self._queue) < self.depth and self._bytes < self.max_bytes // 2:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                group, self._queue = self._queue, []
            try:
                outs: list[Any] = write_many([(path, data) for path, data, _ in group])
            except Exception as exc:  # a bug here must fail these items, not hang the worker
                outs = [exc] * len(group)
            for (_, _, fut), out in zip(group, outs):
                if isinstance(out, BaseException):
                    fut.set_exception(out)
                else:
                    fut.set_result(out)
            with self._cond:
                self._count -= len(group)
                self._bytes -= sum(len(data) for _, data, _ in group)
                self._cond.notify_all()
            os.write(self._w, b".")
            if self.on_group is not None:
                try:
                    self.on_group()
                except Exception:  # (the pipe to the runner is gone: the worker's own loop ends)
                    pass
