"""A test-only op that misbehaves on chosen items: crash, hang, eat memory, fill the disk.

Registered only where the environment says BATCHCLI_TEST_OPS=crashops (with tests/ on the
Python path): batchcli/worker.py imports it then, in the CLI process and in every worker.

    crashtest action=kill match=img007 once=/tmp/marks log=/tmp/seen.log

`match` picks items by a substring of their source path ("" = every item). `once` is a folder:
the op misbehaves only the first time it meets an item (a marker file remembers it), so a retry
succeeds. `flag` is a file: the op misbehaves only while it exists. `log` is a file that gets
one line per processed item (to count redone work). `mark` is a file that gets the time just
before a crash (to measure how long the runner takes to notice). `hold` is a file: the items
`match` picks wait while it exists (a run that cannot finish before the test says so). `slow` is
a file: `delay` applies only while it exists (slow items until the test has paused, cancelled or
killed the run; the test removes it and the rest, in a resume, runs at full speed).

With BATCHCLI_TEST_SYNC_LOG=FILE, every process that imports this module also logs each fsync,
syncfs, rename and exclusive create (a temp file) it makes, after it returned ("<time> fsync
<path>", "<time> syncfs <path>", "<time> replace <from> <to>", "<time> create <path>"), and
BATCHCLI_TEST_SYNC_DELAY=S makes each fsync and syncfs take S seconds longer (a slow disk), so
the order of durable writes and journal records can be checked under real kills;
BATCHCLI_TEST_SYNC_UNDER=FOLDER slows only those of files in FOLDER and of FOLDER itself.
BATCHCLI_TEST_SYNCFS=0 makes groups of outputs use fsyncs instead of syncfs, =1 syncfs always.
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
        Param("hold", "str", "", "the items picked by match wait while this file exists"),
        Param("slow", "str", "", "sleep `delay` only while this file exists; empty = always"),
    )
    shrink_safe = True

    def apply(self, frame: Frame) -> Frame:
        p = self.p
        if p["log"]:
            fd = os.open(p["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{frame.src}\n".encode())
            os.close(fd)
        if p["delay"] and (not p["slow"] or os.path.exists(p["slow"])):
            time.sleep(p["delay"])
        while p["hold"] and p["match"] in frame.src and os.path.exists(p["hold"]):
            time.sleep(0.01)
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


@register
class FaultTest(Op):
    name = "faulttest"
    summary = "Test only: allocate and free buffers, as decoding a photo does; record the page faults and the memory cap."
    params = (Param("rounds", "int", 10, "rounds of four 4 MiB buffers, written and freed", min=1),)
    shrink_safe = True

    def apply(self, frame: Frame) -> Frame:
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(self.p["rounds"]):
            bufs = [bytearray(4 << 20) for _ in range(4)]
            for b in bufs:
                b[::4096] = bytes(len(b[::4096]))  # every page written
            del bufs
        frame.meta["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        frame.meta["rlimit_as"] = resource.getrlimit(resource.RLIMIT_AS)[0]  # the worker's --worker-memory cap
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


def _spy_on_syncs(log: str, delay: float, under: str) -> None:
    import batchcli.atomic

    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open
    real_syncfs = batchcli.atomic.syncfs
    out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(*words: str) -> None:
        os.write(out, (" ".join((f"{time.time():.6f}", *words)) + "\n").encode())  # one write: whole lines

    def slow(path: str) -> None:
        if delay and (not under or path == under or path.startswith(under + os.sep)):
            time.sleep(delay)

    def fsync(fd) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        path = os.readlink(f"/proc/self/fd/{fd}")
        slow(path)
        real_fsync(fd)
        note("fsync", path)

    def replace(src, dst, **kw) -> None:
        real_replace(src, dst, **kw)
        note("replace", os.fspath(src), os.fspath(dst))

    def syncfs(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        slow(path)
        real_syncfs(fd)
        note("syncfs", path)

    def open_(path, flags, *args, **kw) -> int:
        fd = real_open(path, flags, *args, **kw)
        if flags & os.O_EXCL:
            note("create", os.fspath(path))
        return fd

    os.fsync, os.replace, os.open = fsync, replace, open_
    batchcli.atomic.syncfs = syncfs


if os.environ.get("BATCHCLI_TEST_SYNCFS") in ("0", "1"):
    import batchcli.atomic

    batchcli.atomic.SYNCFS = os.environ["BATCHCLI_TEST_SYNCFS"] == "1"
    batchcli.atomic.DIRTY_LIMIT = 1 << 62  # whatever else the machine is writing


if os.environ.get("BATCHCLI_TEST_SYNC_LOG"):
    _spy_on_syncs(os.environ["BATCHCLI_TEST_SYNC_LOG"], float(os.environ.get("BATCHCLI_TEST_SYNC_DELAY") or 0),
                  os.environ.get("BATCHCLI_TEST_SYNC_UNDER", ""))


# --- helpers for the lifecycle tests (real processes; polling conditions, never fixed sleeps) ---

TESTS = os.path.dirname(os.path.abspath(__file__))


def cli_env(home, **extra) -> dict:
    """The environment of a CLI process that knows `crashtest` and uses `home` (and `extra`)."""
    env = dict(os.environ, **extra)
    env.pop("CI", None)
    env.update(BATCHCLI_HOME=str(home), BATCHCLI_TEST_OPS="crashops",
               PYTHONPATH=os.pathsep.join(p for p in (TESTS, env.get("PYTHONPATH", "")) if p))
    return env


def spawn(home, *args, log=None, env=None):
    """Start `python -m batchcli ARGS` without waiting (output to `log`, a path, or discarded;
    `env`: more environment variables)."""
    import subprocess
    import sys

    out = open(log, "ab") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen([sys.executable, "-m", "batchcli", *map(str, args)], env=cli_env(home, **(env or {})),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log:
            out.close()


def run(home, *args, timeout=120, env=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "batchcli", *map(str, args)], env=cli_env(home, **(env or {})),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def wait_for(pred, timeout=30.0, what="condition"):
    """Poll `pred` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def records(journal) -> list[dict]:
    from batchcli.engine.journal import iter_records

    return list(iter_records(str(journal)))


def line_count(journal) -> int:
    """Complete lines in the journal: cheap enough to poll while the runner works."""
    try:
        with open(journal, "rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


def make_pngs(folder, n, size=64) -> list:
    """n small distinct PNGs: img000.png, img001.png, ..."""
    import cv2
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(n)
    out = []
    for k in range(n):
        p = os.path.join(folder, f"img{k:03d}.png")
        cv2.imwrite(p, rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        out.append(p)
    return out


def batch_dir(home):
    """The only batch in `home`."""
    from batchcli.engine.store import Store

    ids = Store(str(home)).ids()
    assert len(ids) == 1, ids
    return os.path.join(str(home), "batches", ids[0])


def named(home, name):
    """The batch called `name` in `home`, or None while it is still being created (its folder can
    appear before the manifest that names it): a condition for wait_for."""
    from batchcli.engine.store import Store
    from batchcli.errors import BatchNotFound

    try:
        return Store(str(home)).resolve(name)
    except BatchNotFound:
        return None


def create(home, inputs, out, pipeline, name=None):
    """A new pending batch (created in this process); returns its BatchPaths."""
    from batchcli import api
    from batchcli.engine.store import Store

    return api.create_batch(Store(str(home)), api.StartConfig(inputs=[str(i) for i in inputs],
                                                              out_dir=str(out) if out else None,
                                                              pipeline_text=pipeline, name=name))
