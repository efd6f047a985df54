"""Atomic, durable file writes: temp file in the target folder, fsync, os.replace, fsync the folder.

`atomic_write` does it for one file; `atomic_write_many` for a group, paying for durability once:
fsyncs issued together from a few threads share one filesystem journal commit (ext4, XFS), and
each folder is fsynced once after all its renames, instead of two commits per file."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

TMP_MARK = ".batchcli-tmp-"


def tmp_name(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def is_tmp_name(name: str) -> bool:
    return name.startswith(".") and TMP_MARK in name


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_MADE: set[str] = set()
"""Folders this process made or found, so a batch does not ask again for every file."""


def _create(tmp: str, folder: str) -> int:
    if folder not in _MADE:
        os.makedirs(folder, exist_ok=True)
        _MADE.add(folder)
    try:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:  # the folder went away since: make it again
        _MADE.discard(folder)
        os.makedirs(folder, exist_ok=True)
        _MADE.add(folder)
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)


def atomic_write(path: str, data: bytes | memoryview, *, durable: bool = True) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never half."""
    folder = os.path.dirname(path) or "."
    tmp = tmp_name(path)
    fd = _create(tmp, folder)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(folder)


@contextmanager
def atomic_stream(path: str, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """`atomic_write` for data written piece by piece: a binary file to write to; on a clean
    exit it replaces `path` whole, on an exception it is removed and `path` is left as it was."""
    folder = os.path.dirname(path) or "."
    tmp = tmp_name(path)
    done = False
    try:
        with os.fdopen(_create(tmp, folder), "wb") as fh:
            yield fh
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done and os.path.lexists(tmp):
            os.unlink(tmp)
    if durable:
        fsync_dir(folder)


SYNC_THREADS = 8
"""Threads that fsync a group's files concurrently (the kernel folds them into one commit)."""
_syncers = None


def _write_synced(path: str, data: bytes | memoryview) -> tuple[str, float]:
    """Write `data` to a new temp file beside `path` and fsync it; (temp path, mtime)."""
    tmp = tmp_name(path)
    fd = _create(tmp, os.path.dirname(path) or ".")
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        return tmp, os.fstat(fd).st_mtime  # a rename keeps the mtime
    except BaseException:
        _discard(tmp)
        raise
    finally:
        os.close(fd)


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write_many(entries: list[tuple[str, bytes | memoryview]]) -> list[float | OSError]:
    """Write each (path, data) as `atomic_write` does, durable when this returns, paying for
    durability about once for the group: the files are created, written and fsynced by a few
    threads at once (the waits on the filesystem journal overlap, and concurrent fsyncs share its
    commits), then renamed, then each folder they went to is fsynced once. Returns, for each
    entry, the file's mtime or the OSError that stopped it (a failure fails only its own file,
    which is then not in place)."""
    global _syncers

    def one(entry: tuple[str, bytes | memoryview]) -> tuple[str, float] | OSError:
        try:
            return _write_synced(*entry)
        except OSError as exc:
            return exc

    if len(entries) < 2:
        written = [one(e) for e in entries]
    else:
        if _syncers is None:
            from concurrent.futures import ThreadPoolExecutor

            _syncers = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="batchcli-write")
        written = list(_syncers.map(one, entries))
    out: list[float | OSError] = []
    folders: set[str] = set()
    for (path, _), w in zip(entries, written):
        if isinstance(w, OSError):
            out.append(w)
            continue
        tmp, mtime = w
        try:
            os.replace(tmp, path)
        except OSError as exc:
            _discard(tmp)
            out.append(exc)
            continue
        out.append(mtime)
        folders.add(os.path.dirname(path) or ".")
    for folder in folders:
        fsync_dir(folder)
    return out


def sweep_tmp(root: str, pid: int | None = None) -> list[str]:
    """Remove temp files a killed writer left under `root` (only those of process `pid` when
    given). Returns the paths removed."""
    removed = []
    if not os.path.isdir(root):
        return removed
    mine = f"{TMP_MARK}{pid}-" if pid is not None else TMP_MARK
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if is_tmp_name(name) and mine in name:
                p = os.path.join(folder, name)
                try:
                    os.unlink(p)
                    removed.append(p)
                except OSError:
                    pass
    return removed
