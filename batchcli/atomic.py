"""Atomic, durable file writes: temp file in the target folder, fsync, os.replace, fsync the folder.

`atomic_write` does it for one file; `atomic_write_many` for a group, paying for durability about
once for the group instead of twice per file: on Linux, while little else waits to be written,
one `syncfs` before the renames and one after (each commits the whole filesystem: the group's
data, then its renames); elsewhere, fsyncs issued together from a few threads (they share the
filesystem's journal commits), then each folder fsynced once after all its renames."""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

TMP_MARK = ".batchcli-tmp-"


def tmp_name(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


_TMP_RE = re.compile(r"\..+" + re.escape(TMP_MARK) + r"(\d+)-[0-9a-f]{8}")


def tmp_pid(name: str) -> int | None:
    """The writer's pid of a temp file named by tmp_name (exactly that form: a user's file that
    merely holds the mark in its name is not one); None for any other name."""
    m = _TMP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def is_tmp_name(name: str) -> bool:
    return tmp_pid(name) is not None


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
    except BaseException as exc:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # a full disk: say which file
            raise OSError(exc.errno, exc.strerror, path) from None
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


SYNCFS = sys.platform.startswith("linux")
"""Make a group durable with `syncfs` (Linux): one call writes out every dirty page and the
journal of the filesystem, however many files the group has."""

DIRTY_LIMIT = 64 << 20
"""Above this much dirty page cache on the machine (other programs' writes), a group uses fsyncs
of its own files: a `syncfs` would wait for all of that too."""

SLOW_SYNCFS = 0.1
"""A `syncfs` that takes longer than this (seconds) was writing out much besides the group
(other programs' many small files: the byte count DIRTY_LIMIT looks at misses them)..."""
SYNCFS_PAUSE = 5.0
"""...so groups use their own fsyncs for this long (seconds), then try `syncfs` again."""
_syncfs_off_until = 0.0

_libc_syncfs = None


def syncfs(fd: int) -> None:
    """Commit the filesystem that holds `fd` to disk: its files' data and its journal (every rename
    done before the call is then durable). Raises OSError (EIO: a write-back failed)."""
    global _libc_syncfs
    if _libc_syncfs is None:
        import ctypes

        _libc_syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    if _libc_syncfs(fd) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _little_dirty() -> bool:
    """True when the machine's page cache holds less than DIRTY_LIMIT waiting to be written."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            info = fh.read()
    except OSError:
        return False
    waiting = 0
    for line in info.splitlines():
        if line.startswith((b"Dirty:", b"Writeback:")):
            waiting += int(line.split()[1]) << 10
    return waiting < DIRTY_LIMIT


SYNC_THREADS = 8
"""Threads that fsync a group's files concurrently (the kernel folds them into one commit)."""
_syncers = None


def _write_temp(path: str, data: bytes | memoryview, sync: bool = True) -> tuple[str, float] | OSError:
    """Write `data` to a new temp file beside `path`, fsynced with `sync`; (temp path, mtime),
    or the OSError that stopped it (the temp file then removed)."""
    try:
        return _write_synced(path, data, sync)
    except OSError as exc:
        return exc


def _write_synced(path: str, data: bytes | memoryview, sync: bool) -> tuple[str, float]:
    tmp = tmp_name(path)
    fd = _create(tmp, os.path.dirname(path) or ".")
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if sync:
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
    durability about once for the group. With `syncfs` (see SYNCFS, DIRTY_LIMIT): the files are
    written, the filesystem committed, the files renamed, the filesystem committed again.
    Otherwise the files are created, written and fsynced by a few threads at once (the waits on
    the filesystem journal overlap, and concurrent fsyncs share its commits), then renamed, then
    each folder they went to is fsynced once. Returns, for each entry, the file's mtime or the
    OSError that stopped it (a failure fails only its own file, which is then not in place)."""
    global _syncers

    if len(entries) > 1 and SYNCFS and time.monotonic() >= _syncfs_off_until and _little_dirty():
        written = [_write_temp(path, data, sync=False) for path, data in entries]
        folders = {os.path.dirname(p) or "." for (p, _), w in zip(entries, written) if not isinstance(w, OSError)}
        if not _syncfs_all(folders):  # a write-back failed: find whose with an fsync of each file
            written = [w if isinstance(w, OSError) else _fsync_or_error(w) for w in written]
        out, folders = _rename_all(entries, written)
        if not _syncfs_all(folders):
            for folder in folders:
                fsync_dir(folder)
        return out
    if len(entries) < 2:
        written = [_write_temp(*e) for e in entries]
    else:
        if _syncers is None:
            from concurrent.futures import ThreadPoolExecutor

            _syncers = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="batchcli-write")
        written = list(_syncers.map(lambda e: _write_temp(*e), entries))
    out, folders = _rename_all(entries, written)
    for folder in folders:
        fsync_dir(folder)
    return out


def _rename_all(entries: list[tuple[str, bytes | memoryview]],
                written: list[tuple[str, float] | OSError]) -> tuple[list[float | OSError], set[str]]:
    """Rename each written temp file to its path: (each mtime or OSError, the folders renamed in)."""
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
    return out, folders


def _syncfs_all(folders: set[str]) -> bool:
    """`syncfs` once for each filesystem the folders are on; False if one failed. A slow one
    turns `syncfs` off for a while (SLOW_SYNCFS)."""
    global _syncfs_off_until
    seen: set[int] = set()
    t0 = time.monotonic()
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return False
        try:
            dev = os.fstat(fd).st_dev
            if dev not in seen:
                seen.add(dev)
                syncfs(fd)
        except OSError:
            return False
        finally:
            os.close(fd)
    if time.monotonic() - t0 > SLOW_SYNCFS:
        _syncfs_off_until = time.monotonic() + SYNCFS_PAUSE
    return True


def _fsync_or_error(w: tuple[str, float]) -> tuple[str, float] | OSError:
    tmp = w[0]
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return w
    except OSError as exc:
        _discard(tmp)
        return exc


def sweep_tmp(root: str, pid: int | None = None) -> list[str]:
    """Remove temp files a killed writer left under `root` (only those of process `pid` when
    given). Returns the paths removed."""
    removed = []
    if not os.path.isdir(root):
        return removed
    for folder, _dirs, files in os.walk(root):
        for name in files:
            writer = tmp_pid(name)
            if writer is not None and (pid is None or writer == pid):
                p = os.path.join(folder, name)
                try:
                    os.unlink(p)
                    removed.append(p)
                except OSError:
                    pass
    return removed
