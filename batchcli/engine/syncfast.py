"""A `sync` with nothing changed, in bulk. The plan (engine/syncplan.py) asks the catalog about
every item and walks them one by one; when nothing changed since the last sync into the same
folder, its answer is that batch's, item for item. So a sync whose run ends with every item
completed (reused or processed, one output file each) keeps beside its batch what that answer
will be (sync_fast.bin and sync_fast.data: derived, never the truth, which is the journal), and
the next sync of the same folder with the same pipeline into the same output folder compares
whole lists instead:

- the newest batch with this fingerprint into this folder (the catalog's answer, after the
  refresh the plan does too) kept the record, and its journal and the catalog rows its answer
  comes from are as they were then (the journal's identity, size and tail CRC; the batch's
  `reuses` rows and own rows, the journal offsets of the batches it reuses from);
- a walk of the input folder (a listing and a stat per file: discover.quick_walk) gives the same
  (path, size, mtime, device, inode) list, so discovery would write the same items.jsonl (it is
  linked: a hard link, or a copy);
- an lstat of every output gives the size and mtime recorded (while a child process walks
  most of the input folder, this one the rest).

Then every item is reused from that batch as the plan would say, and the records are written
from templates (`Reuse.write`); anything else, and the plan runs as ever. BATCHCLI_SYNC_FAST=0
turns the comparison off (the tests run both ways and compare)."""

from __future__ import annotations

import contextlib
import marshal
import os
import secrets
import sqlite3
import sys
import threading
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from batchcli.engine.catalog import Catalog, _tail_crc, index_quietly
from batchcli.engine.forked import Forked
from batchcli.engine.journal import GROUP_COMMIT_RECORDS, fold_completed, iter_matching, replay
from batchcli.engine.store import BatchPaths, Store
from batchcli.engine.sync import runs
from batchcli.engine.syncplan import SyncPlan, _question, named_by
from batchcli.inputs.discover import quick_walk
from batchcli.inputs.names import is_url

ENV = "BATCHCLI_SYNC_FAST"
"""Set to 0: every sync runs the plan (the record is still kept)."""
META, DATA = "sync_fast.bin", "sync_fast.data"
VERSION = 2
_RECORD_KEYS = ("i", "out", "bytes", "sha256", "mtime", "ms", "reused_from", "_src")
"""A plan's record of a reused result with one output file and nothing more (no metadata)."""


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def walk_spec(inputs: list[str], exts: Iterable[str], skip_dirs: Iterable[str | None], plain: bool) -> tuple | None:
    """quick_walk's arguments (folder, extensions, folders skipped) for inputs that are one
    local folder; None for anything else, or when not `plain` (a list, --exclude, --dedupe, a
    --name-template: what discovery does beyond a walk)."""
    if not plain or len(inputs) != 1 or inputs[0] == "-" or is_url(inputs[0]):
        return None
    top = os.path.abspath(os.path.expanduser(inputs[0]))
    if not os.path.isdir(top) or os.path.islink(top):
        return None
    return top, tuple(exts), tuple(os.path.realpath(d) for d in skip_dirs if d)


def _key(man: dict[str, Any]) -> tuple:
    """What the plan's answer depends on, of a manifest, but the batch's own id."""
    q = _question(man)
    return q[:4] + q[5:]


@dataclass
class Kept:
    """What a sync batch's record will say, kept until its run ends (`keep`)."""

    key: tuple
    walk: tuple
    total: int
    holders: list[tuple]  # (item, n, batch, its item): where a sync reusing this batch finds the rows
    links: list[tuple]  # (item, n, seq, batch, its item): this batch's own `reuses` rows, as _index writes them
    data: tuple | None = None  # (token, identities, outputs, their stats, record bodies) to write; or (token,) of
    data_from: str | None = None  # the data file of the batch this one reused from (the same lists)
    items: tuple | None = None  # items.jsonl's (size, CRC), when known
    start: int = 0  # where the run's own records begin in the journal (after the reused ones)


KEPT: dict[str, Kept] = {}
"""Batch id -> what its record will say, once its run ends with every item completed."""


class Reuse:
    """A new sync batch of which every item is reused from the last, told without the plan."""

    def __init__(self, store: Store, walk: tuple | None, early: Forked | None = None):
        self.store, self.walk, self.early = store, walk, early
        self.meta: dict[str, Any] | None = None
        self.data: tuple | None = None
        self.stats: Any = None

    def discover(self, paths: BatchPaths, man: dict[str, Any] | None, stats: Any) -> int | None:
        """create_batch's `quick`: when nothing changed, the last batch's items.jsonl linked into
        the new batch, and the count; else None, and discovery, which runs then, keeps the items'
        identities in `stats` for the new batch's record (`identities`)."""
        early, self.early = self.early, None
        with early or _NONE:
            if self.walk is None:
                return None
            self.stats, stats.identities = stats, []
            if man is None or man.get("out_dev") is None or not enabled():
                return None
            found = self._discover(paths, man, early)
        if found is None:  # discovery writes items.jsonl: not into the recorded batch's file
            try:
                os.unlink(paths.items)
            except FileNotFoundError:
                pass
        return found

    def _discover(self, paths: BatchPaths, man: dict[str, Any], early: Forked | None) -> int | None:
        try:
            found = _recorded(self.store, man, self.walk)
            if found is None:
                return None
            meta, data = found
            out_b = os.fsencode(os.path.join(man["out_dir"], ""))
            same = self._same_early if early is not None else self._same
            if not same(paths, meta, data, out_b, early):
                return None
        except (OSError, ValueError, EOFError, TypeError, KeyError, IndexError, sqlite3.Error):
            return None
        self.meta, self.data = meta, data
        return meta["total"]

    def _same_early(self, paths: BatchPaths, meta: dict[str, Any], data: tuple, out_b: bytes, early: Forked) -> bool:
        """The comparison with a walk of most of the input folder that a child process began
        first thing (cli/warm.py: while this one imported and parsed), when its walk is this
        sync's; this process walks the rest and lstats every output meanwhile."""
        mine = quick_walk(*self.walk, part=(1.0 - EARLY_MINE, 1.0))  # the end of the list: a change there shows first
        if mine is None:
            return False
        ident, tail = memoryview(data[1]), marshal.dumps(mine, 2)[5:]
        if len(ident) < 5 + len(tail) or ident[len(ident) - len(tail):] != tail:
            return False
        if not as_recorded(out_b, data[2], data[3]):
            return False
        walked = early.result()
        return (walked is not None and walked[0] == self.walk and len(ident) == 5 + len(walked[2]) + len(tail)
                and ident[5:5 + len(walked[2])] == walked[2]
                and ident[:5] == marshal.dumps([None] * (walked[1] + len(mine)), 2)[:5]
                and _Copy(self.store, meta, paths).done())

    def _same(self, paths: BatchPaths, meta: dict[str, Any], data: tuple, out_b: bytes, _early: None) -> bool:
        """The comparison with the input folder walked in two parts: most of it by a child
        process, the rest here, and every output lstatted here."""
        ident, cut = memoryview(data[1]), (0.0, 1.0 - MINE)
        with Forked(walked_as, self.walk, ident, cut) as child:  # two cores: most inputs there, outputs here
            if child.pid is None:
                cut = (0.0, 0.0)
            mine = quick_walk(*self.walk, part=(cut[1], 1.0))  # the end of the list: a change there shows first
            if mine is None:
                return False
            tail = marshal.dumps(mine, 2)[5:]  # (a list's: its type and length, then its items)
            if len(ident) < 5 + len(tail) or ident[len(ident) - len(tail):] != tail:
                return False
            copy = _Copy(self.store, meta, paths)  # (its fsync while the outputs are looked at)
            if not (as_recorded(out_b, data[2], data[3]) & copy.done()):
                return False
            theirs = child.result() if child.pid is not None else (0, 0)
            return not (theirs is None or 5 + theirs[1] + len(tail) != len(ident)
                        or ident[:5] != marshal.dumps([None] * (theirs[0] + len(mine)), 2)[:5])

    def close(self) -> None:
        """The early walk cancelled, when `discover` never came to it."""
        early, self.early = self.early, None
        if early is not None:
            early.cancel()

    @property
    def found(self) -> bool:
        return self.meta is not None

    @property
    def identities(self) -> bytes | None:
        """What discovery found, as the record keeps it (marshal's version 2 bytes of quick_walk's
        list), when every item is a plain file."""
        got = getattr(self.stats, "identities", None)
        return got if isinstance(got, bytes) else None

    def plan(self) -> SyncPlan:
        n, source = self.meta["total"], self.meta["batch"]  # type: ignore[index]
        return SyncPlan(total=n, reused=n, from_batches=Counter({source: n}))

    def write(self, st: Any, seq: int, t: float, lines: Any) -> tuple:
        """sync._append's `produce`: the records the plan would write (each item completed,
        reused from the last batch, with its record's output), from a template each."""
        assert self.meta is not None and self.data is not None
        bodies = self.data[4].split(b"\n")
        # each record but its closing brace, then its CRC (of the record with the brace: encode())
        fmt = (b'{"seq":%d,"t":' + orjson.dumps(t) + b',"type":"item_completed","i":%d,%s,"ms":0.0,"reused_from":'
               + orjson.dumps(self.meta["batch"]))
        crc32, first, n = zlib.crc32, seq + 1, len(bodies)
        for start in range(0, n, GROUP_COMMIT_RECORDS):
            end = min(n, start + GROUP_COMMIT_RECORDS)
            recs = [fmt % (first + i, i, bodies[i]) for i in range(start, end)]
            group: list[bytes] = [b""] * (2 * len(recs))
            group[0::2] = recs
            group[1::2] = [b',"crc":"%08x"}\n' % crc32(b"}", crc32(rec)) for rec in recs]
            lines([b"".join(group)], seq + end)
        fold_completed(st, range(len(bodies)), seq + len(bodies))  # type: ignore[arg-type]
        links = [[i, n, first + i, src, src_i] for i, n, src, src_i in _merged(self.meta["holders"])]
        return links, [], len(bodies)

    def kept(self, paths: BatchPaths) -> None:
        """Keep what the new batch's record will say (`keep`, when its run ends): the same lists
        as the last batch's, every item reused from where that one's rows lie."""
        assert self.meta is not None
        holders = _merged(self.meta["holders"])
        KEPT[paths.id] = Kept(self.meta["key"], self.meta["walk"], self.meta["total"], holders,
                              [(i, n, i + 1, src, src_i) for i, n, src, src_i in holders],
                              data=(self.meta["data"],),
                              data_from=os.path.join(self.store.batches_dir, self.meta["batch"], DATA),
                              items=self.meta["items"])


_NONE = contextlib.nullcontext()

EARLY_MINE = 0.15
"""The share of the input folder's sub-folders this process walks (first: a change among the last
files shows before the outputs are looked at) when a child process began the walk of the rest
first thing (`_same_early`)."""

MINE = 0.15
"""The share of the input folder's sub-folders this process walks (the child the rest): it also
lstats every output."""


def walked_as(walk: tuple, ident: memoryview, part: tuple[float, float]) -> tuple[int, int] | None:
    """How many files the walk of `part` of the input folder finds, and their bytes in the list
    recorded (`ident`: quick_walk's list as marshal's version 2 writes it, whose bytes are those
    of its values), when they are the first listed; else None."""
    found = quick_walk(*walk, part=part)
    if found is None:
        return None
    body = marshal.dumps(found, 2)[5:]
    return (len(found), len(body)) if ident[5:5 + len(body)] == body else None


class _Copy:
    """The recorded batch's items.jsonl, as recorded, in the new batch: a hard link to it (never
    rewritten: a sync batch's items are fixed once made, and that file was made durable when it
    was written), else written and made durable (as discovery makes it) by a thread meanwhile.
    `done()` says whether all went well (False too when the file was not as recorded)."""

    def __init__(self, store: Store, meta: dict[str, Any], paths: BatchPaths):
        self.ok, self.thread = False, None
        src = os.path.join(store.batches_dir, meta["batch"], "items.jsonl")
        with open(src, "rb") as fh:
            st = os.fstat(fh.fileno())
            items = fh.read()
        if (len(items), zlib.crc32(items)) != meta["items"]:
            return
        try:
            if os.stat(src).st_ino == st.st_ino:  # (not replaced since it was read)
                os.link(src, paths.items)
                self.ok = True
                return
        except OSError:
            pass
        fd = os.open(paths.items, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(items)
            while view:
                view = view[os.write(fd, view):]
        except BaseException:
            os.close(fd)
            raise
        self.thread = threading.Thread(target=self._sync, args=(fd,), daemon=True)
        self.thread.start()

    def _sync(self, fd: int) -> None:
        try:
            os.fsync(fd)
            self.ok = True
        except OSError:
            pass
        finally:
            os.close(fd)

    def done(self) -> bool:
        if self.thread is not None:
            self.thread.join()
        return self.ok


def as_recorded(out_b: bytes, rels: bytes, stats: bytes) -> bool:
    """Every output (`rels`: paths relative to out_b, NUL between them) is on disk with the size
    and mtime recorded (`stats`: their list as marshal's version 2 writes it): the plan's check,
    an lstat each."""
    lstat, got = os.lstat, []
    add = got.append
    try:
        for rel in rels.split(b"\0"):
            st = lstat(out_b + rel)
            add((st.st_size, st.st_mtime))
    except OSError:
        return False
    return marshal.dumps(got, 2) == stats


def _recorded(store: Store, man: dict[str, Any], walk: tuple) -> tuple[dict, tuple] | None:
    """The record of the newest batch with this fingerprint into this folder, when it holds for
    this sync and is still current; (its meta, its data)."""
    with Catalog(store) as cat:
        cat.refresh(skip=man["batch_id"])  # as the plan's question does
        newest = [b for b in cat.batches_with(man["out_dev"], man["out_ino"], man["fingerprint"]) if b != man["batch_id"]]
        if not newest:
            return None
        bdir = os.path.join(store.batches_dir, newest[0])
        try:
            with open(os.path.join(bdir, META), "rb") as fh:
                meta = marshal.loads(fh.read())
        except FileNotFoundError:
            return None
        if (meta.get("v") != VERSION or meta.get("batch") != newest[0] or meta.get("key") != _key(man)
                or meta.get("walk") != walk):
            return None
        journal = os.path.join(bdir, "journal.jsonl")
        st = os.stat(journal)
        dev, ino, size, tail = meta["journal"]
        if (st.st_dev, st.st_ino, st.st_size) != (dev, ino, size) or _tail_crc(journal, size) != tail:
            return None
        if catalog_state(cat.db, newest[0], meta["holders"]) != meta["catalog"]:
            return None
    with open(os.path.join(bdir, DATA), "rb") as fh:
        data = marshal.loads(fh.read())
    return (meta, data) if data[0] == meta["data"] else None


def catalog_state(db: sqlite3.Connection, batch_id: str, holders: list[tuple]) -> tuple | None:
    """What the catalog's answer for a batch's results rests on: the batch's journal as indexed
    (device, inode, offset), its `reuses` rows (with batch ids), how many current rows of its
    own it has, and the journal as indexed of each batch it reuses from."""
    row = db.execute("SELECT bkey, j_dev, j_ino, j_offset FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
    if row is None:
        return None
    names = dict(db.execute("SELECT bkey, batch_id FROM batches"))
    links = tuple((i, n, seq, names.get(src), src_i) for i, n, seq, src, src_i in db.execute(
        "SELECT i, n, seq, src_bkey, src_i FROM reuses WHERE bkey = ? ORDER BY i", (row[0],)))
    own = db.execute("SELECT count(*) FROM outputs WHERE bkey = ? AND current = 1", (row[0],)).fetchone()[0]
    held = tuple((h, db.execute("SELECT j_dev, j_ino, j_offset FROM batches WHERE batch_id = ?", (h,)).fetchone())
                 for h in sorted({h[2] for h in holders} - {batch_id}))
    return tuple(row[1:]), links, own, tuple((h, tuple(r) if r else None) for h, r in held)


def _merged(holders: Iterable[tuple]) -> list[tuple]:
    """Runs (item, n, batch, its item) with each run that continues the one before joined to it."""
    out: list[list] = []
    for i, n, src, src_i in holders:
        last = out[-1] if out else None
        if last is not None and last[0] + last[1] == i and last[2] == src and last[3] + last[1] == src_i:
            last[1] += n
        else:
            out.append([i, n, src, src_i])
    return [tuple(r) for r in out]


def from_plan(paths: BatchPaths, man: dict[str, Any], reuse: Reuse, p: SyncPlan,
              records: list[dict[str, Any]]) -> None:
    """After the plan (before record_reused takes the records' sources): keep what the batch's
    record will say of the items it reuses; `keep` adds the items its run processes."""
    ident = reuse.identities
    if reuse.walk is None or ident is None or p.total == 0 or p.failed_again or man.get("variants"):
        return
    n, me, size = p.total, paths.id, len(_RECORD_KEYS)
    bodies: list[bytes | None] = [None] * n
    rels: list[bytes | None] = [None] * n
    stats: list[tuple | None] = [None] * n  # (size, mtime) of each output
    holders: list[list] = []  # runs [item, n, batch, its item]
    fs = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    try:
        parts = []
        for rec in records:
            if len(rec) != size or rec.get("mtime") is None or rec.get("bytes") is None or "sha256" not in rec:
                return  # (not a reused result with one output file and nothing more)
            parts.append({"out": rec["out"], "bytes": rec["bytes"], "sha256": rec["sha256"], "mtime": rec["mtime"]})
        # every body in one call, cut at the seams: a name holding one gives more pieces, and no record
        cut = orjson.dumps(parts)[2:-2].split(b"},{") if records else []
        if len(cut) != len(records):
            return
        last = None
        for rec, body in zip(records, cut):
            i, (src, src_i, same) = rec["i"], rec["_src"]
            bodies[i], rels[i], stats[i] = body, rec["out"].encode(*fs), (rec["bytes"], rec["mtime"])
            if not same:
                src, src_i = me, i
            if last is not None and last[0] + last[1] == i and last[2] == src and last[3] + last[1] == src_i:
                last[1] += 1
            else:
                last = [i, 1, src, src_i]
                holders.append(last)
    except (TypeError, KeyError):  # a name that is not UTF-8 (the records are written another way), no source
        return
    links, _copies = runs((rec["i"], k + 1, *rec["_src"]) for k, rec in enumerate(records))
    KEPT[paths.id] = Kept(_key(man), reuse.walk, n, [tuple(r) for r in holders], [tuple(r) for r in links],
                          data=(secrets.token_hex(8), ident, rels, stats, bodies))


def written(paths: BatchPaths) -> None:
    """The reused records are written: the run's own begin after them."""
    kept = KEPT.get(paths.id)
    if kept is not None:
        kept.start = os.path.getsize(paths.journal)


def _body(rec: dict[str, Any]) -> bytes:
    """The part of a reused record that comes from the result it reuses."""
    return orjson.dumps({"out": rec["out"], "bytes": rec["bytes"], "sha256": rec["sha256"], "mtime": rec["mtime"]})[1:-1]


def _processed(paths: BatchPaths, kept: Kept, items: list[bytes]) -> bool:
    """Fill in what the record says of the items the run processed, from their completions,
    as a sync reusing them would find them in the catalog (one output file, named by the item's
    stem, made from the input as listed); False when one is anything else."""
    _token, _ident, rels, stats, bodies = kept.data  # type: ignore[misc]
    todo = {i for i, body in enumerate(bodies) if body is None}
    if not todo:
        return True
    last: dict[int, dict[str, Any]] = {}
    for rec in iter_matching(paths.journal, (b'"type":"item_completed"',), kept.start):
        if rec.get("i") in todo and "reused_from" not in rec:
            last[rec["i"]] = rec
    if last.keys() != todo:
        return False
    fs = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    for i, rec in last.items():
        item, stat = orjson.loads(items[i]), rec.get("src_stat")
        if (any(k in rec for k in ("meta", "outputs", "routed", "shard")) or rec.get("mtime") is None
                or rec.get("bytes") is None or not rec.get("out") or not rec.get("sha256")
                or (stat is not None and list(stat) != [item["size"], item["mtime"]])):
            return False
        rel = rec["out"].encode(*fs)
        if not named_by(rel, item["stem"].encode(*fs)):
            return False
        bodies[i], rels[i], stats[i] = _body(rec), rel, (rec["bytes"], rec["mtime"])
        kept.holders.append((i, 1, paths.id, i))
    return True


def ended(paths: BatchPaths) -> None:
    """A sync batch's run ended: index it in the catalog, so the next sync asks at once
    (catalog.index_quietly), then keep its record (`keep`)."""
    index_quietly(paths.home, paths.id)
    keep(paths)


def keep(paths: BatchPaths) -> None:
    """At the end of a sync batch's run: write its record, when one was kept (`from_plan`,
    `Reuse.kept`), the run completed every item and the catalog indexed the batch as planned.
    A cache: any failure leaves no record (the next sync runs the plan)."""
    kept = KEPT.pop(paths.id, None)
    if kept is None:
        return
    try:
        _keep(paths, kept)
    except (OSError, ValueError, TypeError, KeyError, sqlite3.Error):
        for name in (META, DATA):
            try:
                os.unlink(os.path.join(paths.dir, name))
            except OSError:
                pass


def _keep(paths: BatchPaths, kept: Kept) -> None:
    st = replay(paths.journal, kept.total)
    if st.state != "completed" or st.completed != kept.total:
        return
    if kept.data_from is None:
        with open(paths.items, "rb") as fh:
            items = fh.read()
        kept.items = (len(items), zlib.crc32(items))
        if not _processed(paths, kept, items.splitlines()):
            return
        kept.holders = _merged(sorted(kept.holders))
    jst = os.stat(paths.journal)
    with Catalog(paths.home) as cat:
        state = catalog_state(cat.db, paths.id, kept.holders)
    linked = sum(r[1] for r in kept.links)
    if (state is None or state[0] != (jst.st_dev, jst.st_ino, jst.st_size) or state[1] != tuple(kept.links)
            or state[2] != kept.total - linked or any(r is None for _, r in state[3])):
        return
    data_path = os.path.join(paths.dir, DATA)
    token = kept.data[0]  # type: ignore[index]
    if kept.data_from is not None:
        _link(kept.data_from, data_path)
    else:  # what the next sync compares, as it compares it (marshal's version 2: the bytes of the values)
        _token, ident, rels, stats, bodies = kept.data  # type: ignore[misc]
        _write(data_path, marshal.dumps((token, ident, b"\0".join(rels), marshal.dumps(stats, 2), b"\n".join(bodies))))
    meta = {"v": VERSION, "batch": paths.id, "key": kept.key, "walk": kept.walk, "total": kept.total,
            "items": kept.items, "holders": kept.holders, "data": token,
            "journal": (jst.st_dev, jst.st_ino, jst.st_size, _tail_crc(paths.journal, jst.st_size)),
            "catalog": state}
    _write(os.path.join(paths.dir, META), marshal.dumps(meta))


def _link(src: str, dst: str) -> None:
    """The same (never rewritten) file under another name: a hard link, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        import shutil

        shutil.copyfile(src, dst)


def _write(path: str, data: bytes) -> None:
    """A cache's file, replaced whole (not made durable: a torn one fails to load and is ignored)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
