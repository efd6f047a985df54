"""A streaming, deterministic ZIP writer (ZIP64 when needed)."""

from __future__ import annotations

import io
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from typing import IO

from batchcli.results.snapshot import BLOCK

# --------------------------------------------------------------------------------------------
# Streaming ZIP writer (deterministic; ZIP64 when needed).

_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01
_DOS_TIME = 0
_ATTR_FILE = (0o100644 << 16)
_MADE_BY = (3 << 8) | 45  # Unix, spec 4.5
_U32 = 0xFFFFFFFF  # the "see the ZIP64 record" marker
ZIP64_LIMIT = 0xFFFFFFFF
"""Sizes and offsets from here on go into ZIP64 records (a test lowers it to exercise them)."""
STORED, DEFLATED = 0, 8


class ZipStream:
    """Writes a ZIP to a seekable binary file object, one streamed entry at a time.

    Fixed timestamps (1980-01-01 00:00), fixed permissions (0644 regular file), no extra fields
    except ZIP64's: the same entries in the same order give the same bytes. The central directory
    is spooled to a temporary file, so memory does not grow with the number of entries.
    ZIP64 records are used for entries of 4 GiB or more, offsets past 4 GiB and more than
    65,535 entries."""

    def __init__(self, fh: IO[bytes], spool_dir: str | None = None):
        self.fh = fh
        self.count = 0
        self._cd = tempfile.TemporaryFile(dir=spool_dir)
        self._cd_size = 0
        self.zip64 = False
        self._closed = False

    def add(self, name: str, src: IO[bytes], size: int, method: int = STORED,
            check: Callable[[IO[bytes], IO[bytes]], tuple[int, int]] | None = None) -> int:
        """Add one entry from `src` (its `size` must be known for STORED). Returns the bytes
        written. `check(src, dst) -> (n, crc)` replaces the plain copy (and may raise, in which
        case nothing of the entry stays in the ZIP)."""
        fh = self.fh
        start = fh.tell()
        bname, flags = entry_name(name)
        limit = ZIP64_LIMIT
        need64 = size >= limit - (limit >> 12)  # leaves room for deflate's worst case
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if need64 else b""
        version = 45 if need64 else 20
        header = struct.pack("<IHHHHHIIIHH", 0x04034B50, version, flags, method, _DOS_TIME, _DOS_DATE,
                             0, _U32 if need64 else 0, _U32 if need64 else 0, len(bname), len(extra))
        fh.write(header + bname + extra)
        data_start = fh.tell()
        try:
            if method == DEFLATED:
                usize, crc = _deflate(src, fh)
            elif check is not None:
                usize, crc = check(src, fh)
            else:
                usize, crc = _copy_crc(src, fh)
        except BaseException:
            fh.seek(start)
            fh.truncate()
            raise
        end = fh.tell()
        csize = end - data_start
        if not need64 and (csize >= limit or usize >= limit):
            raise ValueError(f"{name}: entry grew past 4 GiB; size it before adding")  # never for STORED
        # patch the local header with the real CRC and sizes
        fh.seek(start + 14)
        if need64:
            fh.write(struct.pack("<I", crc))
            fh.seek(start + 30 + len(bname) + 4)
            fh.write(struct.pack("<QQ", usize, csize))
        else:
            fh.write(struct.pack("<III", crc, csize, usize))
        fh.seek(end)
        # central directory record
        ex: list[int] = []
        if need64:
            ex += [usize, csize]
        if start >= limit:
            ex.append(start)
        cextra = struct.pack("<HH", 1, 8 * len(ex)) + struct.pack(f"<{len(ex)}Q", *ex) if ex else b""
        cver = 45 if ex else 20
        rec = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | cver, cver, flags, method, _DOS_TIME, _DOS_DATE, crc,
                          _U32 if need64 else csize, _U32 if need64 else usize,
                          len(bname), len(cextra), 0, 0, 0, _ATTR_FILE,
                          _U32 if start >= limit else start) + bname + cextra
        if ex:
            self.zip64 = True
        self._cd.write(rec)
        self._cd_size += len(rec)
        self.count += 1
        return end - start

    def add_bytes(self, name: str, data: bytes, method: int = STORED) -> int:
        return self.add(name, io.BytesIO(data), len(data), method)

    def close(self) -> None:
        """Write the central directory and the end records. Does not close `fh`."""
        if self._closed:
            return
        self._closed = True
        fh = self.fh
        cd_start = fh.tell()
        self._cd.seek(0)
        shutil.copyfileobj(self._cd, fh, BLOCK)
        self._cd.close()
        cd_size, count = self._cd_size, self.count
        eocd64_at = fh.tell()
        limit = ZIP64_LIMIT
        big = count > 0xFFFF or cd_start >= limit or cd_size >= limit or eocd64_at >= limit
        if big:
            self.zip64 = True
            fh.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _MADE_BY, 45, 0, 0, count, count,
                                 cd_size, cd_start))
            fh.write(struct.pack("<IIQI", 0x07064B50, 0, eocd64_at, 1))
        n16 = 0xFFFF if count > 0xFFFF else count
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n16, n16, _U32 if big else cd_size,
                             _U32 if big else cd_start, 0))

    def abort(self) -> None:
        self._closed = True
        self._cd.close()


def entry_name(name: str) -> tuple[bytes, int]:
    """An entry's name as stored, and its flags: UTF-8 with the language encoding flag (bit 11)
    when the name is UTF-8 beyond ASCII; a name that holds bytes that are not UTF-8 (lone
    surrogates from os.fsdecode) is stored as those raw bytes without the flag, as Info-ZIP's
    `zip` stores it, so `unzip` on a POSIX system writes the same name back."""
    try:
        return name.encode("utf-8"), 0 if name.isascii() else 0x800
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape"), 0


def _copy_crc(src: IO[bytes], dst: IO[bytes]) -> tuple[int, int]:
    n = c = 0
    while True:
        block = src.read(BLOCK)
        if not block:
            return n, c
        c = zlib.crc32(block, c)
        dst.write(block)
        n += len(block)


def _deflate(src: IO[bytes], dst: IO[bytes]) -> tuple[int, int]:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15, 8)
    n = c = 0
    while True:
        block = src.read(BLOCK)
        if not block:
            break
        c = zlib.crc32(block, c)
        n += len(block)
        dst.write(comp.compress(block))
    dst.write(comp.flush())
    return n, c
