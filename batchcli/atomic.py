"""Atomic, durable file writes: temp file in the target folder, fsync, os.replace, fsync the folder."""

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


def sweep_tmp(root: str) -> list[str]:
    """Remove temp files a killed writer left under `root`. Returns the paths removed."""
    removed = []
    if not os.path.isdir(root):
        return removed
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if is_tmp_name(name):
                p = os.path.join(folder, name)
                try:
                    os.unlink(p)
                    removed.append(p)
                except OSError:
                    pass
    return removed
