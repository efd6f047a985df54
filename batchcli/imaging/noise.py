"""Decoder noise: libpng, libtiff and libjpeg print warnings straight to the process's stderr
('libpng warning: iCCP: known incorrect sRGB profile', 'Corrupt JPEG data: 1 extraneous bytes
before marker 0xd9'). In a worker they are caught and recorded with the item in hand
(`warnings`); elsewhere (contact sheets) they are silenced. They never reach the terminal raw,
and a warning never fails an item."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator


def _flush() -> None:
    if sys.stderr is not None:
        sys.stderr.flush()


class Capture:
    """File descriptor 2 points at an anonymous file for the life of this (worker) process;
    `take()` returns what was written since the last call."""

    MAX_LINES = 10
    MAX_CHARS = 300

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self.fd = self._file.fileno()
        _flush()
        os.dup2(self.fd, 2)

    def take(self) -> list[str]:
        """The distinct lines written since the last call (then forgotten)."""
        _flush()
        size = os.lseek(self.fd, 0, os.SEEK_CUR)  # the offset fd 2 shares: where the next line goes
        if not size:
            return []
        data = os.pread(self.fd, min(size, 1 << 16), 0)
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        lines = [ln.strip()[:self.MAX_CHARS] for ln in data.decode(errors="replace").splitlines() if ln.strip()]
        return unique(lines)[:self.MAX_LINES]


def unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (every thread's C library writes too)."""
    _flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        _flush()
        os.dup2(saved, 2)
        os.close(saved)
