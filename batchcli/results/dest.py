"""A destination folder (`export --to DIR`) written without ever following a link inside it.

The destination itself is opened once (a link the user named as DIR is followed: that is their
choice); every folder below it is created and opened relative to its parent's descriptor with
O_NOFOLLOW, and files are created, linked, renamed and removed relative to those descriptors,
so a symbolic link already inside DIR, or swapped in while the export runs, is never written
through: the export stops with a one-line error instead.
"""

from __future__ import annotations

import errno
import os
import stat

from batchcli.argfiles import check_target
from batchcli.atomic import TMP_MARK
from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError

_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
MAX_OPEN = 256
"""Folder descriptors kept open (a cache: beyond, they are closed and opened again)."""


class LinkInside(ConfigError):
    """A symbolic link (or a file) where the export needs a folder inside the destination."""


class Dest:
    def __init__(self, path: str):
        self.path = path
        os.makedirs(path, exist_ok=True)
        self.root = os.open(path, _DIR)
        self._fds: dict[str, int] = {}
        self.touched: set[str] = {""}

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self.root)

    def __enter__(self) -> Dest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def folder(self, rel: str, create: bool = True) -> int:
        """The descriptor of folder `rel` ("a/b") below the destination, made if needed."""
        if not rel:
            return self.root
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        head, name = rel.rsplit("/", 1) if "/" in rel else ("", rel)
        parent = self.folder(head, create)
        if create:
            try:
                os.mkdir(name, 0o755, dir_fd=parent)
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR | _NOFOLLOW, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise LinkInside(f"--to {self.path}: {os.path.join(self.path, rel)} is a symbolic link or a file, "
                                 "not a folder; export never writes through a link inside the destination "
                                 "(remove it, or export elsewhere)") from None
            raise
        if len(self._fds) >= MAX_OPEN:
            for old in self._fds.values():
                os.close(old)
            self._fds.clear()
        self._fds[rel] = fd
        self.touched.add(rel)
        return fd

    def fsync_all(self) -> None:
        for rel in self.touched:
            try:
                os.fsync(self.folder(rel, create=False))
            except OSError:
                pass


def split(name: str) -> tuple[str, str]:
    """An entry name "a/b/x.jpg" -> ("a/b", "x.jpg")."""
    return tuple(name.rsplit("/", 1)) if "/" in name else ("", name)  # type: ignore[return-value]


def tmp_in(name: str) -> str:
    import secrets

    return f".{name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"


def lookup(dest: str, name: str) -> tuple[str | None, os.stat_result | None]:
    """Before an export: (the first link among the folders of `name` below `dest`, or None;
    the stat of the file `name` would replace, following links, or None)."""
    parts = name.split("/")
    here = dest
    for part in parts[:-1]:
        here = os.path.join(here, part)
        try:
            st = os.lstat(here)
        except OSError:
            return None, None  # made by the export: nothing there yet
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            return here, None
    try:
        return None, os.stat(os.path.join(dest, *parts))
    except OSError:
        return None, None


def check_file_target(paths: BatchPaths, what: str, path: str) -> None:
    """`argfiles.check_target` against the inputs of the batch `paths`: a file an export or
    report writes (temp file, then rename) never replaces a FIFO, a device or one of the inputs."""
    from batchcli.inputs.discover import iter_items

    def inputs():
        try:
            yield from iter_items(paths.items)
        except FileNotFoundError:  # a damaged batch: refused elsewhere, with that reason
            return

    check_target(path, what, inputs())
