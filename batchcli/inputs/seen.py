"""What discovery remembers while it streams: the identity of every item (so the same file
reached twice is one item) and every output name given (so no two items share one).

`DigestSet` keeps 8- or 16-byte keys in one flat array (open addressing, linear probing): no
Python object per member. `SpillSet` keeps 64-bit keys for inputs of any length in bounded
memory: its first SET_KEYS keys in a Python set (fast: most batches never go past it), then
up to SPILL keys in a DigestSet; then the table is written, sorted, to a run file beside
the batch and only 2 bytes per key stay in memory (a 16-bit fingerprint within one of 65,536
buckets: 32 bits of the key in all); a key whose fingerprint is there is looked up in the run on
disk, so the answer stays exact. A list of 10,000,000 paths costs under 16 bytes per item (the
README gives the measured figure; benchmarks/bench_discover.py measures it).
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left

MASK64 = (1 << 64) - 1
SPILL = (1 << 20) - 1
"""Keys a SpillSet holds in its table before it writes them to a run (a 16 MiB table at most)."""
BUCKETS = 1 << 16
FILTER_BITS = 1 << 26
"""Bits of the filter in front of the runs (8 MiB): at 10,000,000 spilled keys about one new
key in fifteen still looks in the runs."""
FILTER_MASK = FILTER_BITS - 1
SET_KEYS = 1 << 18
"""Keys a SpillSet holds in a Python set (about a tenth of the time per key of the flat table,
about 100 bytes a key: 25 MiB at most) before it moves them into its DigestSet."""


def key64(digest: bytes) -> int:
    """A 64-bit key from a digest (a path's or URL's blake2b)."""
    return int.from_bytes(digest[:8], "little")


def identity_key(ino: int, dev: int) -> int:
    """A file's (inode, device) as a 64-bit key: one-to-one in the inode on any one device (an
    odd multiplier), so files of one file system never share a key."""
    return (ino * 0x9E3779B97F4A7C15 + dev * 0xC2B2AE3D27D4EB4F) & MASK64


class DigestSet:
    """A set of 16-byte digests in one flat array of 64-bit words (open addressing, linear
    probing): about 32-64 bytes per member and no Python object per member. `wide=False` keeps
    only 8 bytes of each digest (half the memory), for sets where a rare false "already there"
    does no harm (it only renames an output)."""

    def __init__(self, capacity: int = 1024, wide: bool = True):
        self._w = 2 if wide else 1
        cap = 1
        while cap < capacity:
            cap <<= 1
        self._alloc(cap)
        self.count = 0

    def _alloc(self, cap: int) -> None:
        self._mask = cap - 1
        self._slots = array("Q", bytes(8 * self._w * cap))

    def add(self, digest: bytes) -> bool:
        """Add; True when the digest was not there before."""
        hi = int.from_bytes(digest[:8], "little")
        if self._w == 1:
            hi = lo = hi | 1  # never 0: 0 marks an empty slot
        else:
            lo = int.from_bytes(digest[8:16], "little") | 1
        return self._add(hi, lo)

    def add_pair(self, hi: int, lo: int) -> bool:
        """Add a key given as two unsigned 64-bit numbers (e.g. inode and device, exactly);
        True when it was not there before."""
        lo = ((lo << 1) | 1) & MASK64 if self._w == 2 else (hi | 1) & MASK64
        hi = (hi * 0x9E3779B97F4A7C15) & MASK64  # odd multiplier: one-to-one, and spreads runs
        return self._add(lo if self._w == 1 else hi, lo)

    def _add(self, hi: int, lo: int) -> bool:
        if self._insert(hi, lo):
            self.count += 1
            if self.count * 2 > self._mask:
                self._grow()
            return True
        return False

    def _insert(self, hi: int, lo: int) -> bool:
        slots, mask, w = self._slots, self._mask, self._w
        j = (hi >> 1) & mask
        while True:
            k = j * w
            last = slots[k + w - 1]
            if last == 0:
                slots[k] = hi
                slots[k + w - 1] = lo
                return True
            if last == lo and slots[k] == hi:
                return False
            j = (j + 1) & mask

    def words(self) -> array:
        """The slots themselves (8 bytes each; 0 = empty): what a narrow set holds, for spilling."""
        return self._slots

    def _grow(self) -> None:
        old, w = self._slots, self._w
        self._alloc((self._mask + 1) * 2)
        for k in range(0, len(old), w):
            if old[k + w - 1]:
                self._insert(old[k], old[k + w - 1])



class SpillSet:
    """A set of 64-bit keys in bounded memory (see the module): `add(key)` is True when the key
    was not there before. A key added with `keep=False` is remembered only until the next spill
    (a hint, not a promise). With `folder` None it never spills (a plain DigestSet)."""

    def __init__(self, folder: str | None = None, spill: int | None = None):
        self.folder, self.spill = folder, spill or SPILL
        self.fast: set[int] | None = set()  # the first keys (until SET_KEYS, or the spill size)
        self.set_keys = min(SET_KEYS, self.spill) if folder is not None else SET_KEYS
        self.table = DigestSet(wide=False)
        self.runs: list[tuple[int, array, array]] = []  # (fd of the run file, bucket starts, low 16 bits)
        self.filter: bytearray | None = None  # two bits per spilled key: most new keys skip the runs
        self.count = 0

    def add(self, key: int, keep: bool = True) -> bool:
        # as the table stores it: bit 0 set (0 marks an empty slot), bit 1 set when it is kept
        key = (key | 3) & MASK64 if keep else (key | 1) & (MASK64 ^ 2)
        fast = self.fast
        if fast is not None:
            if key in fast:
                return False
            fast.add(key)
            self.count += 1
            if len(fast) >= self.set_keys:
                self._to_table()
            return True
        if self.runs and keep and self._maybe(key) and self._in_runs(key):
            return False
        if not self.table.add_pair(key, 0):
            return False
        self.count += 1
        if self.folder is not None and self.table.count >= self.spill:
            self._spill()
        return True

    def _to_table(self) -> None:
        """The set's keys into the flat table (spilled at once when that is full)."""
        for key in self.fast or ():
            self.table.add_pair(key, 0)
        self.fast = None
        if self.folder is not None and self.table.count >= self.spill:
            self._spill()

    def _maybe(self, key: int) -> bool:
        f = self.filter
        a, b = (key >> 2) & FILTER_MASK, (key >> 28) & FILTER_MASK
        return bool(f[a >> 3] & (1 << (a & 7)) and f[b >> 3] & (1 << (b & 7)))  # type: ignore[index]

    def _in_runs(self, key: int) -> bool:
        fp = key >> 32
        bucket, low = fp >> 16, fp & 0xFFFF
        for fd, starts, lows in self.runs:
            end = starts[bucket + 1]
            j = bisect_left(lows, low, starts[bucket], end)
            while j < end and lows[j] == low:  # a fingerprint match: the run on disk decides
                if int.from_bytes(os.pread(fd, 8, 8 * j), "little") == key:
                    return True
                j += 1
        return False

    def _spill(self) -> None:
        import numpy as np

        words = np.frombuffer(self.table.words(), dtype=np.uint64)
        keys = words[(words & np.uint64(2)) != 0]  # the kept keys (a copy)
        del words
        self.table = DigestSet(wide=False)  # the old table goes before the temporaries come
        keys.sort()
        path = os.path.join(self.folder, f".discovery-{id(self):x}-{len(self.runs)}.keys")  # type: ignore[arg-type]
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.unlink(path)  # the open descriptor keeps it; nothing is left behind, whatever happens
        view = memoryview(keys.astype("<u8", copy=False)).cast("B")
        while view:
            view = view[os.write(fd, view):]
        if self.filter is None:
            self.filter = bytearray(FILTER_BITS // 8)
        bits = np.frombuffer(self.filter, dtype=np.uint8)
        for shift in (2, 28):
            pos = (keys >> np.uint64(shift)) & np.uint64(FILTER_MASK)
            np.bitwise_or.at(bits, pos >> np.uint64(3), (np.uint8(1) << (pos & np.uint64(7)).astype(np.uint8)))
        fp = (keys >> np.uint64(32)).astype(np.uint32)
        del keys
        starts = np.searchsorted(fp >> np.uint32(16), np.arange(BUCKETS + 1, dtype=np.uint32))
        self.runs.append((fd, array("I", starts.astype(np.uint32).tobytes()),
                          array("H", (fp & np.uint32(0xFFFF)).astype(np.uint16).tobytes())))

    def close(self) -> None:
        for fd, _, _ in self.runs:
            os.close(fd)
        self.runs.clear()
