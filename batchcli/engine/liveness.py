"""Who runs a batch: the batch lock, runner.json (pid + process start time, so a reused pid is
not mistaken for the runner), the control file other shells write requests to, and the sweep of
temp files left by writers that died."""

from __future__ import annotations

import json
import os
from typing import Any

from filelock import FileLock, Timeout

from batchcli.engine.store import BatchPaths
from batchcli.errors import BatchLocked


def read_runner_info(paths: BatchPaths) -> dict[str, Any] | None:
    try:
        with open(paths.runner, "rb") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def process_start_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


PROBE_GRACE = 0.5
"""Seconds to wait for a lock held by no live runner: another shell's probe (`status`, this very
function) holds it for a few microseconds, and must not be mistaken for a runner."""


def _holder_alive(info: dict[str, Any] | None) -> bool:
    """runner.json names a process that is alive and is the one that wrote it (not a reused pid)."""
    pid = (info or {}).get("pid")
    if not pid:
        return False
    started = process_start_time(pid)
    want = (info or {}).get("started")
    return started is not None and (want is None or abs(started - want) < 1.0)


def take_lock(lock: FileLock, paths: BatchPaths, info: dict[str, Any] | None = None) -> bool:
    """Take the batch lock: True at once when free; False at once when a live runner holds it;
    else (a probe from another shell, or a runner still starting) wait up to PROBE_GRACE."""
    try:
        lock.acquire(timeout=0)
        return True
    except Timeout:
        pass
    if _holder_alive(info if info is not None else read_runner_info(paths)):
        return False
    try:
        lock.acquire(timeout=PROBE_GRACE)
        return True
    except Timeout:
        return False


def runner_alive(paths: BatchPaths) -> dict[str, Any] | None:
    """The live runner's info, or None. The lock decides; pid + start time guard against reuse."""
    info = read_runner_info(paths)
    lock = FileLock(paths.lock)
    if not take_lock(lock, paths, info):
        return info or {"pid": None}
    lock.release()
    return None


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


def sweep_dead_tmp(root: str) -> list[str]:
    """Remove temp files under `root` left by writers that are no longer alive (the pid is in
    the name), so a live runner of another batch sharing the folder keeps its own."""
    import contextlib
    import pathlib

    from batchcli.atomic import TMP_MARK

    removed: list[str] = []
    for p in pathlib.Path(root).rglob(f".*{TMP_MARK}*"):
        pid = p.name.split(TMP_MARK, 1)[1].split("-", 1)[0]
        if p.is_file() and not (pid.isdigit() and _writer_alive(int(pid), p)):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(str(p))
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
