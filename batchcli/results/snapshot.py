"""The journal as it was when an export or a verify started, and the verified reading of one
output (its bytes must still hash to the sha256 recorded when it was written)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from batchcli.engine.journal import COMPLETED, FAILED, STATE_NAMES, decode, replay
from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError
from batchcli.executors.base import outputs_of

BLOCK = 1 << 20
MANIFEST_CSV = "manifest.csv"
MANIFEST_JSONL = "manifest.jsonl"


# --------------------------------------------------------------------------------------------
# Snapshot: the journal as it was when the export started.


@dataclass
class ItemView:
    """One item as the snapshot sees it."""

    i: int
    src: str
    rel: str
    stem: str
    state: str  # pending / completed / failed / skipped
    record: dict[str, Any] | None  # its last item_completed / item_failed record, if any

    @property
    def out(self) -> str | None:
        """The output path relative to the batch's out_dir (completed items that wrote a file)."""
        rec = self.record
        if self.state == "completed" and rec and rec.get("out"):
            return rec["out"]
        return None

    @property
    def outputs(self) -> list[dict[str, Any]]:
        """Every output file of a completed item (out, bytes, sha256; `variant` with variants):
        one per variant, a video's stills, or its one output."""
        if self.state == "completed" and self.record:
            return outputs_of(self.record)
        return []


class Snapshot:
    """A consistent, read-only view of a batch: replay once, then read records by offset."""

    def __init__(self, paths: BatchPaths):
        self.paths = paths
        self.manifest = paths.load_manifest()
        self.total = int(self.manifest["total"])
        self.out_dir: str | None = self.manifest.get("out_dir")
        self.taken_at = time.time()
        st = replay(paths.journal, self.total)
        self.replay = st
        self.items = st.items
        self.last_seq = st.last_seq
        self.running = st.state == "running" and _runner_alive(paths)
        # Offset of each item's last item record with seq <= last_seq (-1: none).
        self.offsets = array("q", [-1]) * self.total
        self.meta_keys: dict[str, None] = {}  # flattened meta columns, in first-seen order
        self.variants = [v["name"] for v in self.manifest.get("variants") or ()]
        self.variant: str | None = None  # choose_variant(): exports take only this variant's outputs
        self._scan()

    def choose_variant(self, name: str | None) -> None:
        """Exports of this snapshot take only the outputs of variant `name` (None: all)."""
        if name is not None and name not in self.variants:
            known = ", ".join(self.variants) if self.variants else "this batch has none"
            raise ConfigError(f"--variant {name}: no such variant in batch {self.paths.id} (variants: {known})")
        self.variant = name

    def outputs(self, item: ItemView) -> list[dict[str, Any]]:
        """The item's output files an export takes: all of them, or the chosen variant's."""
        if not self.out_dir:
            return []
        outs = item.outputs
        return outs if self.variant is None else [o for o in outs if o.get("variant") == self.variant]

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.paths.id

    def _scan(self) -> None:
        offsets, total, cutoff = self.offsets, self.total, self.last_seq
        with open(self.paths.journal, "rb") as fh:
            pos = 0
            for raw in fh:
                here, pos = pos, pos + len(raw)
                if not raw.endswith(b"\n") or b'"type":"item_' not in raw:
                    continue
                rec = decode(raw[:-1])
                if rec is None or rec.get("seq", 0) > cutoff:
                    continue
                i = rec.get("i")
                if not isinstance(i, int) or not 0 <= i < total:
                    continue
                if rec.get("type") in ("item_completed", "item_failed"):
                    offsets[i] = here
                    for meta in (rec.get("meta"), *(o.get("meta") for o in rec.get("outputs") or ())):
                        if meta and len(self.meta_keys) < MAX_META_COLUMNS:
                            for k in flatten_meta(meta):
                                self.meta_keys.setdefault(k, None)

    def record(self, fh: IO[bytes], i: int) -> dict[str, Any] | None:
        off = self.offsets[i]
        if off < 0:
            return None
        fh.seek(off)
        return decode(fh.readline()[:-1])

    def __iter__(self) -> Iterator[ItemView]:
        """Every item in item order, with its state and last record."""
        from batchcli.inputs.discover import iter_items

        with open(self.paths.journal, "rb") as jf:
            for it in iter_items(self.paths.items):
                i = it["i"]
                if not 0 <= i < self.total:
                    continue
                state = self.items[i]
                rec = self.record(jf, i) if state in (COMPLETED, FAILED) else None
                if rec is not None and (rec.get("type") == "item_completed") != (state == COMPLETED):
                    rec = None  # an older record of the other kind: not this state's story
                yield ItemView(i, it["src"], it.get("rel") or os.path.basename(it["src"]),
                               it.get("stem") or "", STATE_NAMES[state], rec)


def _runner_alive(paths: BatchPaths) -> bool:
    try:
        from batchcli.engine.liveness import runner_alive

        return runner_alive(paths) is not None
    except Exception:  # a stale runner.json must not stop an export
        return False


# --------------------------------------------------------------------------------------------
# Metadata flattening (for CSV columns).

MAX_META_COLUMNS = 200


def flatten_meta(meta: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested dicts become dotted keys (two levels); lists and deeper dicts become JSON text."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 1:
            out.update(flatten_meta(v, key + ".", depth + 1))
        elif isinstance(v, (dict, list, tuple)):
            out[key] = json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------------
# Verified reading of one output.


def _open_member(out_dir: str, rec: dict[str, Any]) -> tuple[IO[bytes], int] | tuple[None, str]:
    """A member of a tar shard as a file of its own: its header must name it, with its size."""
    import io
    import tarfile

    size = int(rec.get("bytes") or 0)
    try:
        with open(os.path.join(out_dir, rec["shard"]), "rb") as fh:
            fh.seek(max(0, int(rec["offset"]) - tarfile.BLOCKSIZE))
            head = fh.read(tarfile.BLOCKSIZE)
            data = fh.read(size)
    except OSError:
        return None, "missing"
    try:
        info = tarfile.TarInfo.frombuf(head, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None, "changed"
    if info.name != rec.get("member") or info.size != size or len(data) != size:
        return None, "changed"
    return io.BytesIO(data), size


class Changed(Exception):
    """The output's bytes no longer match its journal record."""


def open_output(out_dir: str, rec: dict[str, Any]) -> tuple[IO[bytes], int] | tuple[None, str]:
    """Open a recorded output (an item record, or one entry of its outputs): (file, size), or
    (None, "missing" / "changed"). An output in a tar shard is read from its recorded offset."""
    if rec.get("shard"):
        return _open_member(out_dir, rec)
    path = os.path.join(out_dir, rec["out"])
    try:
        fh = open(path, "rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None, "missing"
    except OSError:
        return None, "missing"
    size = os.fstat(fh.fileno()).st_size
    if rec.get("bytes") is not None and size != rec["bytes"]:
        fh.close()
        return None, "changed"
    return fh, size


def copy_verified(src: IO[bytes], dst: IO[bytes] | None, want_sha: str | None,
                  crc: bool = False) -> tuple[int, int, str]:
    """Stream src -> dst (if any) in blocks; returns (bytes, crc32, sha256 hex). Raises Changed."""
    h = hashlib.sha256()
    n = c = 0
    while True:
        block = src.read(BLOCK)
        if not block:
            break
        h.update(block)
        if crc:
            c = zlib.crc32(block, c)
        if dst is not None:
            dst.write(block)
        n += len(block)
    digest = h.hexdigest()
    if want_sha and digest != want_sha:
        raise Changed(digest)
    return n, c, digest
