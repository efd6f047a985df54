"""Tar shards for datasets (`start --shards tar [--shard-size N]`), the WebDataset convention:
OUT/00000.tar, 00001.tar, ... each holding, per item, its outputs and a JSON sidecar under one key
(`000000042.png`, `000000042.json`; a variant's output is `000000042.NAME.png`).

The runner writes the shard being filled under a temp name as results arrive; when it holds
`--shard-size` items (or the run ends) it is closed, fsynced, renamed and its folder fsynced, and
only then are its items recorded completed, followed by a `shard_sealed` record (its name,
number, size, sha256 and mtime). So a completed item's shard is always durable, and:

- a resume continues the sequence after the last sealed shard;
- a shard being filled when the runner died is a temp file: swept, its items still pending,
  so the next run writes them again into a shard of the same number (it is rebuilt);
- a shard renamed into place whose records the dead runner never wrote is complete by
  construction: the next run adopts it (records its items from their JSON sidecars).

Each item's record names its `shard`, its `member` and the `offset` of the member's bytes in the
shard, so readers (export, verify) read one member without scanning the tar.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from batchcli import jsonio
from batchcli.atomic import _create, fsync_dir, tmp_name
from batchcli.errors import ConfigError

FORMATS = ("tar",)
DEFAULT_SIZE = 1000
MAX_SIZE = 1_000_000
SHARD_RE = re.compile(r"^(\d{5,})\.tar$")
SEALED = b'"type":"shard_sealed"'
_BLOCK = 512  # tarfile.BLOCKSIZE and RECORDSIZE (tarfile is imported only where it reads or names: a start
_RECORD = 20 * _BLOCK  # writes its shards without it)
_IOV = 512  # pieces per writev (IOV_MAX is 1024 on Linux)

Complete = Callable[[int, dict[str, Any]], None]
"""Records one item completed (the runner's journal append and counts): (i, record fields)."""


def shard_name(n: int) -> str:
    return f"{n:05d}.tar"


def item_key(i: int) -> str:
    return f"{i:09d}"


def check_options(fmt: str | None, size: int | None) -> dict[str, Any] | None:
    """The manifest's `shards` entry for the flags given; ConfigError (exit 2) when they are wrong."""
    if fmt is None:
        if size is not None:
            raise ConfigError("--shard-size needs --shards tar")
        return None
    if fmt not in FORMATS:
        raise ConfigError(f"--shards {fmt}: expected one of {', '.join(FORMATS)}")
    size = DEFAULT_SIZE if size is None else size
    if not 1 <= size <= MAX_SIZE:
        raise ConfigError(f"--shard-size {size}: expected 1 to {MAX_SIZE:,} items per shard")
    return {"format": fmt, "size": size}


def existing(out_dir: str) -> list[str]:
    """The shard files in a folder, in order."""
    try:
        names = os.listdir(out_dir)
    except OSError:
        return []
    return sorted((n for n in names if SHARD_RE.match(n)), key=lambda n: int(n[:-4]))


def sealed_records(journal: str) -> Iterator[dict[str, Any]]:
    """The journal's `shard_sealed` records (only those lines are decoded)."""
    from batchcli.engine.journal import iter_matching

    yield from iter_matching(journal, (SEALED,))


def member_names(rec: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(output entry, member name) for each output of an item's result: `<key>.<ext>`, or
    `<key>.<variant>.<ext>` for a variant's."""
    from batchcli.executors.base import outputs_of

    key = item_key(rec["i"])
    out = []
    for entry in outputs_of(rec):
        ext = _ext(entry["out"])
        variant = entry.get("variant")
        out.append((entry, f"{key}.{variant}.{ext}" if variant else f"{key}.{ext}"))
    return out


def _ext(path: str) -> str:
    """A member's extension: the output's (os.path.splitext's, without the dot), else "bin"."""
    base = path.rpartition(os.sep)[2]
    dot = base.rfind(".")
    return base[dot + 1:] if dot > 0 and base[:dot].strip(".") and dot + 1 < len(base) else "bin"


_MODE = b"0000644\x000000000\x000000000\x00"  # mode, uid, gid
_TYPE = b"0"  # a regular file
_MAGIC = b"ustar\x0000"
_FIXED = sum(_MODE) + sum(b" " * 8) + sum(_TYPE) + sum(_MAGIC)  # the checksum counts its own field as spaces
_ZEROS = bytes(_BLOCK)
_TAIL = _TYPE + _ZEROS[:100] + _MAGIC + _ZEROS[:_BLOCK - 265]  # type, link name, magic and the rest (all fixed)


def _header(name: str, size: int, mtime: int) -> bytes:
    """The tar header of a plain file (ustar; tarfile's own for a name ustar cannot hold)."""
    if len(name) > 100 or not name.isascii():
        import tarfile

        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, mtime, 0o644
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    raw = name.encode()
    times = _TIMES.get((size, mtime))
    if times is None:
        if len(_TIMES) > 4096:
            _TIMES.clear()
        part = b"%011o\x00%011o\x00" % (size, mtime)
        times = _TIMES[size, mtime] = (part, _FIXED + sum(part))
    return b"".join((raw, _ZEROS[:100 - len(raw)], _MODE, times[0], b"%06o\x00 " % (times[1] + sum(raw)), _TAIL))


_TIMES: dict[tuple[int, int], tuple[bytes, int]] = {}
"""(size, mtime) -> (their header fields, the checksum of those and the fixed fields): a shard's
members share an mtime, and its small outputs and sidecars few sizes."""


class _Shard:
    """One tar being filled: members appended as they come (written out in large pieces, as
    the pieces they came in: no copy into one buffer), each one's data offset known."""

    FLUSH = 1 << 20

    def __init__(self, out_dir: str, n: int):
        self.n = n
        self.name = shard_name(n)
        self.path = os.path.join(out_dir, self.name)
        self.tmp = tmp_name(self.path)
        self.fd = _create(self.tmp, out_dir)
        self.offset = 0
        self.parts: list[bytes] = []  # what is not written yet
        self.written = 0  # bytes written
        self.sha = hashlib.sha256()
        self.items: list[tuple[int, dict[str, Any]]] = []  # (i, record fields) of the items inside

    def _write(self, data: bytes) -> None:
        self.parts.append(data)
        self.offset += len(data)
        if self.offset - self.written >= self.FLUSH:
            self._flush()

    def _flush(self) -> None:
        parts, self.parts = self.parts, []
        update = self.sha.update
        for part in parts:
            update(part)
        for k in range(0, len(parts), _IOV):
            todo = parts[k:k + _IOV]
            while todo:
                n = os.writev(self.fd, todo)
                while todo and n >= len(todo[0]):
                    n -= len(todo.pop(0))
                if n:
                    todo[0] = todo[0][n:]
        self.written = self.offset

    def add(self, name: str, data: bytes, mtime: float) -> int:
        """Append one member; returns the offset of its bytes in the shard."""
        header = _header(name, len(data), int(mtime))
        pad = -len(data) % _BLOCK
        self.parts += (header, data, _ZEROS[:pad]) if pad else (header, data)
        at = self.offset + len(header)
        self.offset = at + len(data) + pad
        if self.offset - self.written >= self.FLUSH:
            self._flush()
        return at

    def add_item(self, name: str, data: bytes, side_name: str, side: bytes, mtime: float) -> int:
        """`add` of an output and then its sidecar, in one piece; returns the output's offset."""
        t = int(mtime)
        head, n, m = _header(name, len(data), t), len(data), len(side)
        at = self.offset + len(head)
        piece = b"".join((head, data, _ZEROS[:-n % _BLOCK], _header(side_name, m, t), side, _ZEROS[:-m % _BLOCK]))
        self.parts.append(piece)
        self.offset += len(piece)
        if self.offset - self.written >= self.FLUSH:
            self._flush()
        return at

    def seal(self, durable: bool) -> dict[str, Any]:
        """End the archive, make it durable under its own name; returns its sealed record."""
        end = bytes(2 * _BLOCK)
        self._write(end + bytes(-(self.offset + len(end)) % _RECORD))
        self._flush()
        if durable:
            os.fsync(self.fd)
        mtime = os.fstat(self.fd).st_mtime
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.path)
        if durable:
            fsync_dir(os.path.dirname(self.path))
        return {"shard": self.name, "n": self.n, "items": len(self.items), "bytes": self.offset,
                "sha256": self.sha.hexdigest(), "mtime": mtime}

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


class ShardSink:
    """The runner's side of `--shards tar`: items go into the shard being filled; each full
    shard is sealed on a background thread (its fsync overlaps the next shard's filling), then
    its items are recorded through `complete` and `seal_record`, from the runner's thread, in
    `settle`. One shard is sealed at a time, in order."""

    def __init__(self, out_dir: str, size: int, batch_id: str, journal: str, complete: Complete,
                 seal_record: Callable[[dict[str, Any]], None], durable: bool = True):
        self.out_dir, self.size, self.batch_id = out_dir, size, batch_id
        self.complete, self.seal_record, self.durable = complete, seal_record, durable
        self.next = 1 + max((int(r.get("n", -1)) for r in sealed_records(journal)), default=-1)
        self.shard: _Shard | None = None
        self.sealing: tuple[_Shard, Any] | None = None  # (shard, future of its sealed record)
        self._sealer: Any = None

    def adopt(self, total: int) -> int:
        """Record the items of complete shards that a runner renamed into place but died before
        recording (numbers from `next` on, with this batch's sidecars); returns how many."""
        adopted = 0
        while True:
            path = os.path.join(self.out_dir, shard_name(self.next))
            found = _read_shard(path, self.batch_id, total)
            if found is None:
                return adopted
            for i, rec in found:
                self.complete(i, rec)
            st = os.stat(path)
            sha = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    sha.update(block)
            self.seal_record({"shard": shard_name(self.next), "n": self.next, "items": len(found),
                              "bytes": st.st_size, "sha256": sha.hexdigest(), "mtime": st.st_mtime,
                              "adopted": True})
            adopted += len(found)
            self.next += 1

    def add(self, i: int, src: str, rec: dict[str, Any], blobs: list[bytes]) -> None:
        """One finished item (its record fields and its outputs' bytes, in output order) into
        the open shard; seals the shard when it is full. OSError when the shard cannot be written."""
        if self.shard is None:
            self.shard = _Shard(self.out_dir, self.next)
            self.next += 1
        shard = self.shard
        now = time.time()
        key = item_key(i)
        sidecar: dict[str, Any] = {"key": key, "i": i, "batch_id": self.batch_id, "input": src}
        out = rec.get("out")
        if len(blobs) == 1 and out and "outputs" not in rec:  # one output: no copies
            member = f"{key}.{_ext(out)}"
            sidecar["member"], sidecar["out"], sidecar["bytes"], sidecar["sha256"] = member, out, rec["bytes"], rec["sha256"]
            meta = rec.get("meta")
            if meta:
                sidecar["meta"] = meta
            rec["shard"], rec["member"] = shard.name, member
            rec["offset"] = shard.add_item(member, blobs[0], f"{key}.json", jsonio.dumps(sidecar), now)
            rec.pop("mtime", None)
            shard.items.append((i, rec))
            if len(shard.items) >= self.size:
                self._seal_open()
            return
        members = member_names({"i": i, **rec})
        for (entry, member), data in zip(members, blobs):
            entry.update(shard=shard.name, member=member, offset=shard.add(member, data, now))
            entry.pop("mtime", None)
            about = {"member": member, "out": entry["out"], "bytes": entry["bytes"], "sha256": entry["sha256"]}
            if entry.get("variant"):
                sidecar.setdefault("variants", {})[entry["variant"]] = about
            else:
                sidecar.update(about)
        if members:  # the record's own fields are its first output's
            rec.update({k: members[0][0][k] for k in ("shard", "member", "offset")})
            rec.pop("mtime", None)
        if rec.get("meta"):
            sidecar["meta"] = rec["meta"]
        shard.add(f"{key}.json", jsonio.dumps(sidecar), now)  # (a name that is not UTF-8 escaped)
        shard.items.append((i, rec))
        if len(shard.items) >= self.size:
            self._seal_open()

    def _seal_open(self) -> None:
        """Hand the open shard to the sealing thread (after the one before it is recorded)."""
        shard, self.shard = self.shard, None
        if shard is None:
            return
        self.settle(wait=True)
        if self._sealer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._sealer = ThreadPoolExecutor(1, thread_name_prefix="batchcli-shard")
        self.sealing = (shard, self._sealer.submit(shard.seal, self.durable))

    def settle(self, wait: bool = False) -> None:
        """Record the items of the shard sealed in the background, once it is durable (with
        `wait`, wait for it). OSError when it could not be sealed: its items stay pending, and
        the shard being filled after it is dropped too (the numbers stay without a gap)."""
        if self.sealing is None or not (wait or self.sealing[1].done()):
            return
        shard, fut = self.sealing
        self.sealing = None
        try:
            sealed = fut.result()
        except BaseException:
            shard.discard()
            self.discard()
            self.next = shard.n  # the next run writes this number again
            raise
        for i, rec in shard.items:
            self.complete(i, rec)
        self.seal_record(sealed)

    def seal(self) -> None:
        """Seal the open shard, even partly filled, and record everything sealed (end of a run)."""
        if self.shard is not None and not self.shard.items:
            self.discard()
        self._seal_open()
        self.settle(wait=True)
        if self._sealer is not None:
            self._sealer.shutdown()
            self._sealer = None

    def discard(self) -> None:
        """Drop the open shard: its items stay pending."""
        if self.shard is not None:
            self.shard.discard()
            self.next = min(self.next, self.shard.n)
            self.shard = None


def _read_shard(path: str, batch_id: str, total: int) -> list[tuple[int, dict[str, Any]]] | None:
    """The items of a complete shard of this batch, as record fields; None when the file is
    missing, unreadable, or holds anything else."""
    if not os.path.isfile(path):  # (the usual answer, without importing tarfile)
        return None
    import tarfile

    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError):
        return None
    items: dict[int, dict[str, Any]] = {}
    where: dict[str, Any] = {}
    try:
        with tar:
            for info in tar:
                where[info.name] = info
                if not info.name.endswith(".json"):
                    continue
                fh = tar.extractfile(info)
                side = json.loads(fh.read()) if fh is not None else {}
                i = side.get("i")
                if side.get("batch_id") != batch_id or not isinstance(i, int) or not 0 <= i < total:
                    return None
                items[i] = side
    except (OSError, tarfile.TarError, ValueError):
        return None
    out = []
    for i, side in sorted(items.items()):
        entries = [({"variant": v, **about}) for v, about in (side.get("variants") or {}).items()]
        if "member" in side:
            entries.insert(0, {k: side[k] for k in ("member", "out", "bytes", "sha256")})
        for e in entries:
            info = where.get(e["member"])
            if info is None or info.size != e["bytes"]:
                return None
            e.update(shard=os.path.basename(path), offset=info.offset_data)
        rec: dict[str, Any] = dict(entries[0]) if entries else {}
        rec.pop("variant", None)
        if len(entries) > 1 or (entries and entries[0].get("variant")):
            rec["outputs"] = entries
        if side.get("meta"):
            rec["meta"] = side["meta"]
        out.append((i, rec))
    return out or None


class RunShards:
    """A ShardSink as the runner uses it: `put` a finished item, `close` at the end; a shard
    that cannot be written stops the batch (paused: its items stay pending), never fails items."""

    def __init__(self, sink: ShardSink):
        self.sink = sink
        self.broken = False

    def put(self, i: int, item: dict[str, Any] | None, rec: dict[str, Any]) -> tuple[str, str] | None:
        """The item into the shard; (stopping, reason) when the shard cannot be written (once
        broken, items are left pending: a resume does them again)."""
        blobs = rec.pop("_blobs", None) or []
        return self._try(lambda: self.sink.add(i, (item or {}).get("src", ""), rec, blobs))

    def poll(self) -> tuple[str, str] | None:
        """Record a shard whose background seal finished; (stopping, reason) if it failed."""
        return self._try(self.sink.settle)

    def close(self) -> tuple[str, str] | None:
        """Seal the last, partly filled shard (a resume goes on with the next number)."""
        if self.broken:
            self.sink.discard()
            if self.sink.sealing is not None:  # a seal started before the failure: record it if it held
                try:
                    self.sink.settle(wait=True)
                except OSError:
                    pass
            return None
        return self._try(self.sink.seal)

    def _try(self, step: Callable[[], None]) -> tuple[str, str] | None:
        if self.broken:
            return None
        try:
            step()
        except OSError as exc:
            return self._broke(exc)
        return None

    def _broke(self, exc: OSError) -> tuple[str, str]:
        import errno

        self.broken = True
        name = self.sink.shard.name if self.sink.shard is not None else shard_name(self.sink.next)
        self.sink.discard()
        what = f"cannot write shard {name} in {self.sink.out_dir}: {exc.strerror or exc}"
        return ("disk_full", f"disk full: {what}") if exc.errno == errno.ENOSPC else ("pause", what)


def open_shards(runner: Any, st: Any, record: Callable[..., None]) -> RunShards:
    """The shards of a run: numbering goes on after the last sealed one, and complete shards a
    dead runner left unrecorded are adopted first. `record(i, kind, fields)` journals an item."""
    j = runner.journal

    def seal_record(fields: dict[str, Any]) -> None:
        j.append("shard_sealed", **fields)
        j.sync()  # the shard's items and the shard itself, durable together

    sink = ShardSink(runner.out_dir, int(runner.manifest["shards"]["size"]), runner.paths.id, runner.paths.journal,
                     lambda i, rec: record(i, "item_completed", rec), seal_record, durable=runner.opt.durable)
    _sweep_dead_shard_tmp(runner.out_dir)
    sink.adopt(runner.total)
    return RunShards(sink)


def _sweep_dead_shard_tmp(out_dir: str) -> None:
    """Remove shard temp files whose writer is gone (a run that paused on a full disk, or died),
    so the folder holds numbered shards only. A live writer's temp files are kept."""
    from batchcli.atomic import TMP_MARK
    from batchcli.engine.liveness import sweep_dead_tmp

    try:
        names = os.listdir(out_dir)
    except OSError:
        return
    for base in {n[1:].split(TMP_MARK, 1)[0] for n in names if n.startswith(".") and f".tar{TMP_MARK}" in n}:
        sweep_dead_tmp(out_dir, base)
