"""Who runs a batch: the batch lock, runner.json (pid + process start time, so a reused pid is
not mistaken for the runner), the control file other shells write requests to, and the sweep of
temp files left by writers that died."""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any

from batchcli.engine.store import BatchPaths, process_alive, process_start_time  # noqa: F401
from batchcli.errors import BatchLocked


def read_runner_info(paths: BatchPaths) -> dict[str, Any] | None:
    try:
        with open(paths.runner, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None




PROBE_GRACE = 0.5
"""Seconds to wait for a lock held by no live runner: another shell's probe (`status`, this very
function) holds it for a few microseconds, and must not be mistaken for a runner."""


def _holder_alive(info: dict[str, Any] | None) -> bool:
    """runner.json names a process that is alive and is the one that wrote it (not a reused pid)."""
    return process_alive((info or {}).get("pid"), (info or {}).get("started"))


class FileLock:
    """An exclusive lock on a file, taken as filelock's FileLock takes it where the file system
    has flock (a flock of the file, which stays in place), so each excludes the other: without
    importing filelock, 10 ms of a `start`'s own 0.2 s before its first worker. Where flock is
    missing, it is filelock's. `acquire` raises TimeoutError (filelock's Timeout is one)."""

    POLL = 0.05

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None
        self._held = 0
        self._theirs: Any = None  # filelock's lock, on a file system without flock

    def acquire(self, timeout: float = -1) -> None:
        import fcntl

        if self._theirs is not None:
            return self._theirs.acquire(timeout=timeout)
        if self._held:
            self._held += 1
            return None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        deadline = time.monotonic() + timeout if timeout >= 0 else None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    raise TimeoutError(f"{self.path}: held by another process") from None
                time.sleep(self.POLL if deadline is None else max(0.0, min(self.POLL, deadline - time.monotonic())))
                continue
            except OSError:  # no flock here (ENOLCK, EOPNOTSUPP...): filelock's fallbacks
                os.close(fd)
                from filelock import FileLock as Theirs

                self._theirs = Theirs(self.path)
                return self._theirs.acquire(timeout=timeout)
            self._fd, self._held = fd, 1
            return None

    def release(self) -> None:
        import fcntl

        if self._theirs is not None:
            self._theirs.release()
            return
        if self._held > 1 or not self._held:
            self._held = max(0, self._held - 1)
            return
        fd, self._fd, self._held = self._fd, None, 0
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def take_lock(lock: Any, paths: BatchPaths, info: dict[str, Any] | None = None) -> bool:
    """Take the batch lock (a FileLock, ours or filelock's): True at once when free; False at
    once when a live runner holds it; else (a probe from another shell, or a runner still
    starting) wait up to PROBE_GRACE."""
    try:
        lock.acquire(timeout=0)
        return True
    except TimeoutError:
        pass
    if _holder_alive(info if info is not None else read_runner_info(paths)):
        return False
    try:
        lock.acquire(timeout=PROBE_GRACE)
        return True
    except TimeoutError:
        return False


def runner_alive(paths: BatchPaths) -> dict[str, Any] | None:
    """The live runner's info, or None. The lock decides; pid + start time guard against reuse."""
    info = read_runner_info(paths)
    lock = FileLock(paths.lock)
    if not take_lock(lock, paths, info):
        return info or {"pid": None}
    lock.release()
    return None


ORPHAN_REASON = "the command that created it died before its run began"
"""Why a pending batch is `interrupted` (see `orphaned`)."""


def orphaned(paths: BatchPaths, state: str) -> bool:
    """A batch that nobody will run: pending in its journal (it never started: created, or queued
    for a slot), no runner holds it, and the command that created it has exited (a detached
    start's command waits until its runner holds the lock; a scheduled batch is not pending)."""
    if state != "pending":
        return False
    from batchcli.engine.store import creator_gone

    try:
        man = paths.load_manifest()
    except (OSError, ValueError):
        return False
    return creator_gone(man) and runner_alive(paths) is None


def locked_error(paths: BatchPaths, info: dict[str, Any]) -> BatchLocked:
    """The refusal a second runner (or a resume) gets while a live runner holds the lock."""
    return BatchLocked(f"batch {paths.id} is being run by pid {info.get('pid', '?')}; "
                       f"use 'batchcli pause {paths.id}' or wait")


REQUESTS = ("pause", "pause-now", "cancel")
"""Control requests, weakest first: when several are queued, the strongest wins (cancel is
terminal, so a pause that follows a cancel never undoes it)."""


def request(paths: BatchPaths, what: str) -> None:
    """Ask the live runner to pause, pause-now or cancel: one line appended to the control file
    (O_APPEND: requests from several shells queue up; none overwrites another)."""
    fd = os.open(paths.control, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, what.encode() + b"\n")
    finally:
        os.close(fd)


def strongest_request(paths: BatchPaths) -> str | None:
    """The strongest request queued in the control file, or None."""
    try:
        with open(paths.control, "rb") as fh:
            words = set(fh.read(1 << 16).decode(errors="replace").split())
    except OSError:
        return None
    return next((r for r in reversed(REQUESTS) if r in words), None)


def sweep_dead_tmp(root: str, name: str = "*") -> list[str]:
    """Remove temp files under `root` left by writers that are no longer alive (the pid is in
    the name), so a live runner of another batch sharing the folder keeps its own. With `name`
    (a file name), only the temp files of that one file, in `root` itself."""
    import contextlib
    import pathlib

    from batchcli.atomic import TMP_MARK, tmp_pid

    removed: list[str] = []
    folder = pathlib.Path(root)
    found = folder.rglob(f".*{TMP_MARK}*") if name == "*" else folder.glob(f".{glob.escape(name)}{TMP_MARK}*")
    for p in found:
        pid = tmp_pid(p.name)  # (only names in tmp_name's own form: a user's file may hold the mark)
        if pid is not None and p.is_file() and not _writer_alive(pid, p):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(str(p))
    return removed


EXPORTS = "exports.txt"
"""Beside a batch's journal: one line per export target (kind, tab, path), so that `cleanup`
can sweep the temp files a killed export left there."""


def note_export(paths: BatchPaths, kind: str, target: str) -> None:
    """Remember an export target (once) and sweep the temp files a killed export left there."""
    line = f"{kind}\t{target}\n"
    where = os.path.join(paths.dir, EXPORTS)
    try:
        with open(where, "a+", encoding="utf-8", errors="surrogateescape") as fh:
            fh.seek(0)
            if line not in fh.read():
                fh.write(line)
    except OSError:
        pass
    sweep_export(kind, target)


def sweep_export(kind: str, target: str) -> list[str]:
    """Dead temp files of one export target: in a folder export (`dir`) the whole tree, else
    only the target file's own temp files beside it."""
    if kind == "dir":
        return sweep_dead_tmp(target) if os.path.isdir(target) else []
    folder, name = os.path.split(target)
    return sweep_dead_tmp(folder, name) if os.path.isdir(folder) else []


def sweep_exports(paths: BatchPaths) -> list[str]:
    """Every recorded export target of the batch, swept (cleanup, before the batch goes)."""
    removed: list[str] = []
    try:
        with open(os.path.join(paths.dir, EXPORTS), encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                kind, _, target = line.rstrip("\n").partition("\t")
                if target:
                    removed += sweep_export(kind, target)
    except OSError:
        pass
    return removed


def _writer_alive(pid: int, tmp) -> bool:
    """Is the process that wrote `tmp` still running? A zombie, or a pid reused by a process
    started after the file was written, is not it."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= tmp.stat().st_mtime + 1.0
    except (psutil.Error, OSError):
        return False
