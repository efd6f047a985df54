"""A test-only op that misbehaves on chosen items: crash, hang, eat memory, fill the disk.

Registered only where the environment says BATCHCLI_TEST_OPS=crashops (with tests/ on the
Python path): batchcli/worker.py imports it then, in the CLI process and in every worker.

    crashtest action=kill match=img007 once=/tmp/marks log=/tmp/seen.log

`match` picks items by a substring of their source path ("" = every item). `once` is a folder:
the op misbehaves only the first time it meets an item (a marker file remembers it), so a retry
succeeds. `flag` is a file: the op misbehaves only while it exists. `log` is a file that gets
one line per processed item (to count redone work). `mark` is a file that gets the time just
before a crash (to measure how long the runner takes to notice).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

from batchcli.errors import ItemError
from batchcli.ops.base import Frame, Op, Param, register

ACTIONS = ("none", "exit", "kill", "segv", "hang", "bomb", "enospc", "ioerror", "raise")


@register
class CrashTest(Op):
    name = "crashtest"
    summary = "Test only: crash, hang, eat memory or fail on chosen items."
    params = (
        Param("action", "choice", "none", "what to do", positional=True, choices=ACTIONS),
        Param("match", "str", "", "substring of the source path; empty = every item"),
        Param("once", "str", "", "folder of markers: misbehave only on an item's first visit"),
        Param("flag", "str", "", "misbehave only while this file exists"),
        Param("log", "str", "", "append one line per processed item to this file"),
        Param("mark", "str", "", "write the time here just before crashing"),
        Param("delay", "float", 0.0, "seconds to sleep on every item", min=0),
    )
    shrink_safe = True

    def apply(self, frame: Frame) -> Frame:
        p = self.p
        if p["log"]:
            fd = os.open(p["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{frame.src}\n".encode())
            os.close(fd)
        if p["delay"]:
            time.sleep(p["delay"])
        if p["action"] == "none" or (p["match"] and p["match"] not in frame.src):
            return frame
        if p["flag"] and not os.path.exists(p["flag"]):
            return frame
        if p["once"]:
            marker = os.path.join(p["once"], hashlib.sha1(frame.src.encode()).hexdigest())
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return frame
        _misbehave(p["action"], frame.src, p["mark"])
        return frame


def _misbehave(action: str, src: str, mark: str) -> None:
    if mark:
        with open(mark, "w") as fh:
            fh.write(repr(time.time()))
    if action == "exit":
        os._exit(3)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if action == "hang":
        while True:
            time.sleep(60)
    if action == "bomb":
        hog = bytearray(64 << 30)  # far over any --worker-memory a test sets: MemoryError
        hog[-1] = 1
    if action == "enospc":
        raise ItemError("disk_full", f"no space left writing {src} (injected)")
    if action == "ioerror":
        raise ItemError("io", f"read error on {src} (injected)")
    if action == "raise":
        raise RuntimeError("injected op failure")
