"""Per-batch embedding vectors: an append-only binary log, and near-duplicate grouping.

Files in the batch folder:

- ``embeddings.json``: ``{"dim": D, "dtype": "float32", "record_bytes": 8 + 4*D + 4, "version": 1}``,
  written atomically with the first vector.
- ``embeddings.bin``: fixed-size little-endian records ``item id (int64) | D x float32 | crc32``
  (the CRC covers id and vector). A torn last record (crash mid-write) is ignored on load and cut
  off before the next append; a record whose CRC does not match is skipped. When an item was
  redone (resume after a crash), its last record wins.
- ``embeddings.npy`` + ``embeddings_ids.npy``: an N x D matrix and its item ids, written by
  `export_npy()` (the runner calls it when a batch finishes) for numpy users.

The runner is the only writer, like the journal.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchcli.atomic import atomic_write

if TYPE_CHECKING:
    import numpy as np

HEADER = "embeddings.json"
DATA = "embeddings.bin"
NPY = "embeddings.npy"
NPY_IDS = "embeddings_ids.npy"
VERSION = 1


def _record_dtype(dim: int) -> np.dtype:
    import numpy as np

    return np.dtype([("i", "<i8"), ("v", "<f4", (dim,)), ("crc", "<u4")])


def read_header(batch_dir: str) -> dict | None:
    try:
        with open(os.path.join(batch_dir, HEADER), "rb") as fh:
            head = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{os.path.join(batch_dir, HEADER)}: unreadable embeddings header: {exc}") from None
    if not isinstance(head, dict) or not isinstance(head.get("dim"), int) or head["dim"] <= 0:
        raise ValueError(f"{os.path.join(batch_dir, HEADER)}: bad embeddings header")
    return head


class EmbeddingStore:
    """Append vectors for one batch. Not thread-safe; one writer per batch (the runner)."""

    def __init__(self, batch_dir: str, durable: bool = True):
        self.dir = batch_dir
        self.durable = durable
        self._fh: Any = None
        self._dim: int | None = None
        head = read_header(batch_dir)
        if head is not None:
            self._dim = head["dim"]

    @property
    def dim(self) -> int | None:
        return self._dim

    def append(self, i: int, vector: Sequence[float] | np.ndarray) -> None:
        """Add the vector of item `i`. The first call fixes the dimension for the batch."""
        import numpy as np

        vec = np.asarray(vector, dtype="<f4").reshape(-1)
        if vec.size == 0:
            raise ValueError("empty embedding vector")
        if self._dim is None:
            self._dim = int(vec.size)
            head = {"dim": self._dim, "dtype": "float32", "record_bytes": _record_dtype(self._dim).itemsize,
                    "version": VERSION}
            atomic_write(os.path.join(self.dir, HEADER), json.dumps(head).encode() + b"\n")
        elif vec.size != self._dim:
            raise ValueError(f"embedding of item {i} has {vec.size} values; this batch stores {self._dim}")
        if self._fh is None:
            self._fh = self._open()
        body = np.int64(i).astype("<i8").tobytes() + vec.tobytes()
        self._fh.write(body + np.uint32(zlib.crc32(body)).astype("<u4").tobytes())
        self._fh.flush()
        if self.durable:
            os.fsync(self._fh.fileno())

    def _open(self) -> Any:
        """Open for appending, first cutting off a torn record left by a crash."""
        assert self._dim is not None
        path = os.path.join(self.dir, DATA)
        rec = _record_dtype(self._dim).itemsize
        fh = open(path, "ab")
        size = fh.seek(0, os.SEEK_END)
        if size % rec:
            fh.truncate(size - size % rec)
            fh.seek(0, os.SEEK_END)
        return fh

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> EmbeddingStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class LoadReport:
    records: int = 0  # whole records read
    torn_bytes: int = 0  # a partial record at the end, ignored
    bad_crc: int = 0  # records skipped because their checksum does not match
    duplicates: int = 0  # older records of items stored again later


def load(batch_dir: str, report: LoadReport | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (item ids, int64 sorted ascending; matrix N x D float32). Empty arrays when the batch
    has no embeddings. Torn and corrupt records are skipped (counted in `report`)."""
    import numpy as np

    report = report if report is not None else LoadReport()
    head = read_header(batch_dir)
    if head is None:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    dim = head["dim"]
    dt = _record_dtype(dim)
    try:
        with open(os.path.join(batch_dir, DATA), "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    n = len(raw) // dt.itemsize
    report.torn_bytes = len(raw) - n * dt.itemsize
    recs = np.frombuffer(raw, dtype=dt, count=n)
    report.records = n
    body = dt.itemsize - 4
    ok = np.fromiter((zlib.crc32(raw[k * dt.itemsize:k * dt.itemsize + body]) == int(recs["crc"][k])
                      for k in range(n)), dtype=bool, count=n)
    report.bad_crc = int(n - ok.sum())
    recs = recs[ok]
    # last record of each item wins: unique over the reversed order keeps the latest
    ids_rev = recs["i"][::-1]
    uniq, first_rev = np.unique(ids_rev, return_index=True)
    report.duplicates = int(len(recs) - len(uniq))
    pick = len(recs) - 1 - first_rev
    matrix = np.ascontiguousarray(recs["v"][pick], dtype=np.float32)
    return uniq.astype(np.int64), matrix


def export_npy(batch_dir: str) -> tuple[str, str] | None:
    """Write embeddings.npy (N x D float32) and embeddings_ids.npy atomically; None if no vectors."""
    import numpy as np

    ids, matrix = load(batch_dir)
    if read_header(batch_dir) is None:
        return None
    paths = []
    for name, arr in ((NPY, matrix), (NPY_IDS, ids)):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        path = os.path.join(batch_dir, name)
        atomic_write(path, buf.getvalue())
        paths.append(path)
    return paths[0], paths[1]


# --- near duplicates ---------------------------------------------------------------------------
@dataclass
class Group:
    items: list[int]
    min_similarity: float  # the weakest link that joined the group
    max_similarity: float
    pairs: int = 0


@dataclass
class _UnionFind:
    parent: dict[int, int] = field(default_factory=dict)

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while a != root:  # path compression
            nxt = self.parent.get(a, a)
            self.parent[a] = root
            a = nxt
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_groups(ids: np.ndarray, matrix: np.ndarray, threshold: float,
                          block: int = 2048) -> list[Group]:
    """Items whose cosine similarity is >= threshold, joined transitively (union-find).
    Groups of 2 or more, largest first. Compares blocks of rows, so memory is block x block."""
    import numpy as np

    n = len(ids)
    if n < 2:
        return []
    x = np.asarray(matrix, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.where(norms > 0, x / np.maximum(norms, 1e-12), 0).astype(np.float32)
    uf = _UnionFind()
    lo: dict[int, float] = {}
    hi: dict[int, float] = {}
    pairs: list[tuple[int, int, float]] = []
    for a in range(0, n, block):
        xa = x[a:a + block]
        for b in range(a, n, block):
            sim = xa @ x[b:b + block].T
            if a == b:
                sim = np.triu(sim, k=1) + np.tril(np.full_like(sim, -2.0))
            ra, rb = np.nonzero(sim >= threshold)
            for r, c in zip(ra.tolist(), rb.tolist()):
                i, j = a + r, b + c
                uf.union(i, j)
                pairs.append((i, j, float(sim[r, c])))
    members: dict[int, list[int]] = {}
    for i in {k for p in pairs for k in p[:2]}:
        members.setdefault(uf.find(i), []).append(i)
    count: dict[int, int] = {}
    for i, _, s in pairs:
        root = uf.find(i)
        lo[root] = min(lo.get(root, 2.0), s)
        hi[root] = max(hi.get(root, -2.0), s)
        count[root] = count.get(root, 0) + 1
    groups = [Group(sorted(int(ids[k]) for k in rows), round(lo[r], 6), round(hi[r], 6), count[r])
              for r, rows in members.items()]
    groups.sort(key=lambda g: (-len(g.items), g.items[0]))
    return groups


def similar(batch_dir: str, threshold: float) -> dict[str, Any]:
    """The `similar` command's engine: groups with each item's source path, JSON-able."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError("threshold must be between -1 and 1")
    ids, matrix = load(batch_dir)
    groups = near_duplicate_groups(ids, matrix, threshold)
    wanted = {i for g in groups for i in g.items}
    src = _sources(os.path.join(batch_dir, "items.jsonl"), wanted)
    return {
        "threshold": threshold,
        "items": int(len(ids)),
        "count": len(groups),
        "groups": [{"size": len(g.items), "min_similarity": g.min_similarity, "max_similarity": g.max_similarity,
                    "items": [{"i": i, "src": src.get(i)} for i in g.items]} for g in groups],
    }


def _sources(items_path: str, wanted: set[int]) -> dict[int, str]:
    """Item id -> source, streaming items.jsonl and keeping only the ids asked for."""
    out: dict[int, str] = {}
    if not wanted:
        return out
    try:
        with open(items_path, "rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                i = rec.get("i") if isinstance(rec, dict) else None
                if i in wanted:
                    out[i] = rec.get("src") or rec.get("rel")
    except FileNotFoundError:
        pass
    return out
