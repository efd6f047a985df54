"""sync: a batch that does only the new work, like rsync or make.

An item of a new batch is up to date when the output catalog knows a result made from an input
with the same identity (device, inode, size, mtime) by a pipeline with the same fingerprint into
the same output folder, and that output is still on disk as it was written (same size and
mtime; a file-less result, such as `analyze`'s, needs no file). Such an item is recorded in the
new batch as `item_completed` with `reused_from` (the batch whose record it copies, metadata
included) before the runner starts, so the runner never sees it and the new batch is the whole
picture for `status`, `export` and `verify`. Everything else runs as in `start`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from batchcli.engine.catalog import KIND_OUT, Catalog
from batchcli.engine.journal import (
    GROUP_COMMIT_RECORDS,
    JournalWriter,
    decode,
    encode,
    fold,
    fold_completed,
    prefix_crc,
    replay,
    save_snapshot,
)
from batchcli.engine.store import BatchPaths, Store
from batchcli.engine.syncplan import (  # noqa: F401  (what callers take from here)
    CONTENTS,
    TODO_LISTED,
    Earlier,
    SyncPlan,
    ask,
    input_contents,
    plan,
    results_of,
    save_contents,
)
from batchcli.inputs.discover import iter_items

log = logging.getLogger("batchcli.sync")


def record_reused(paths: BatchPaths, records: list[dict[str, Any]], bulk: Any = None) -> None:
    """Append the up-to-date items' records to a new batch's journal (it has no runner yet),
    as one durable write, and save the fold as the journal's snapshot: the runner, `status`
    and the rest read the snapshot instead of decoding every reused record again. Then index
    the batch in the catalog as far as those records (`_index`). `bulk`: instead of `records`,
    engine/syncfast.py's Reuse, which writes the same records for every item at once."""
    from batchcli.engine.liveness import FileLock, take_lock
    from batchcli.errors import BatchLocked

    lock = FileLock(paths.lock)
    if not take_lock(lock, paths):
        raise BatchLocked(f"batch {paths.id} is held by a live runner")
    # a completion without its source's rows (an output found by content, with another mtime): a refresh folds it
    rows = bulk is not None or all("_src" in rec for rec in records if "error_class" not in rec)
    try:
        written = _append(paths, bulk.write if bulk is not None else lambda *a: _append_records(records, *a))
    finally:
        lock.release()
    if written is not None and rows:
        try:  # a cache: should it fail, a later refresh folds the journal
            _index(paths, *written)
        except (OSError, sqlite3.Error, RuntimeError) as exc:
            log.warning("sync: the catalog will index batch %s from its journal (%s)", paths.id, exc)


Lines = Callable[[list[bytes], int], None]
"""Hands a group of encoded records, the last numbered so, to the journal."""


def _append(paths: BatchPaths, produce: Callable[[Any, int, float, Lines], tuple]) -> tuple | None:
    """Append what `produce(fold, last seq, time, lines)` hands to `lines` and folds into the
    fold (it returns (the runs of reused results and the copies, as _index takes them; the
    records written)) to the journal, durably. Returns (those runs, copies, the records' time,
    the journal's size before and after them), or None when the journal had a torn tail (a
    refresh folds it)."""
    st = replay(paths.journal, int(paths.load_manifest()["total"]))
    clean = st.offset == os.path.getsize(paths.journal)  # no torn tail: the fold is the file's
    t = round(time.time(), 3)
    j = JournalWriter(paths.journal, st.last_seq, durable=False)
    crc = prefix_crc(paths.journal, st.offset) if clean else None  # the snapshot's, extended group by group
    written = 0

    def lines(group: list[bytes], seq: int) -> None:
        nonlocal written, crc
        written, crc = _append_group(j, group, seq, written, crc)

    try:
        links, copies, n = produce(st, st.last_seq, t, lines)
    finally:
        j.close()
    with open(paths.journal, "rb") as fh:
        os.fsync(fh.fileno())
    if not (clean and n):
        return None
    before = st.offset
    st.offset, st.lines = st.offset + written, st.lines + n
    st.crc_at = (st.offset, crc) if crc is not None else None
    try:  # a cache: the journal alone is the truth
        save_snapshot(paths.journal, st)
    except OSError as exc:
        log.warning("sync: no journal snapshot: %s", exc)
    return links, copies, t, before, st.offset


def _append_records(records: list[dict[str, Any]], st: Any, seq: int, t: float, lines: Lines) -> tuple:
    """_append's `produce` for the plan's records."""
    reused: list[tuple] = []  # (item, seq, where its rows lie, same input)
    group: list[bytes] = []
    done: list[int] = []  # completions not folded yet (fold_completed: in bulk)
    dumps, crc32 = orjson.dumps, zlib.crc32
    for rec in records:
        seq += 1
        if "error_class" in rec:
            fold_completed(st, done, seq - 1)
            done = []
            full = {"seq": seq, "t": t, "type": "item_failed", **rec}
            line = encode(full)
            fold(st, full)
        else:
            src = rec.pop("_src", None)
            if src is not None:
                reused.append((rec["i"], seq, *src))
            full = {"seq": seq, "t": t, "type": "item_completed", **rec}
            try:  # encode(), spelled out
                body = dumps(full)
            except TypeError:  # a name that is not UTF-8 (batchcli/jsonio.py)
                line = encode(full)
            else:
                line = b'%s,"crc":"%08x"}\n' % (body[:-1], crc32(body))
            done.append(rec["i"])
        group.append(line)
        if len(group) >= GROUP_COMMIT_RECORDS:
            lines(group, seq)
            group = []
    lines(group, seq)
    fold_completed(st, done, seq)
    return (*runs(reused), len(records))


def runs(reused: Iterable[tuple]) -> tuple[list[list], list[tuple]]:
    """The reused results (item, seq, source batch, source item, same input) as the catalog
    keeps them: a run [item, n, seq, source batch, source item] per run of consecutive ones
    whose input is the same (a `reuses` row each), and the others (item, seq, source batch,
    source item), whose rows are copied."""
    links: list[list] = []
    copies = []
    run, nxt = None, (None, None, None, None)  # the run being extended; what its next item would be
    for i, seq, src, src_i, same in reused:
        if not same:
            copies.append((i, seq, src, src_i))
        elif (i, seq, src_i, src) == nxt:
            run[1] += 1  # type: ignore[index]
            nxt = (i + 1, seq + 1, src_i + 1, src)
        else:
            run = [i, 1, seq, src, src_i]
            links.append(run)
            nxt = (i + 1, seq + 1, src_i + 1, src)
    return links, copies


def _append_group(j: JournalWriter, lines: list[bytes], seq: int, written: int, crc: int | None) -> tuple[int, int | None]:
    """Hand a group of encoded records to the writer; (bytes written so far, the CRC so far)."""
    data = b"".join(lines)
    j.append_encoded([data], seq)
    j.sync()
    return written + len(data), (zlib.crc32(data, crc) if crc is not None else None)


def _index(paths: BatchPaths, links: list[list], copies: list[tuple], t: float, before: int, after: int) -> None:
    """Index a new sync batch in the catalog up to its reused records (the journal's first
    `after` bytes): its header, the items whose input is not the reused result's (their rows),
    and the results it reuses: a `reuses` row per run of consecutive ones whose input is the
    same (nothing copied), the rows of the others copied in SQL (`runs`). Nothing is kept (a
    refresh folds the journal later) when the catalog knows the batch already, lacks a batch
    whose rows are reused, or the journal is not as written."""
    from batchcli.engine.catalog import _Folder, _tail_crc

    linked = bytearray(int(paths.load_manifest()["total"]))
    for link in links:
        linked[link[0]:link[0] + link[1]] = b"\x01" * link[1]
    with Catalog(paths.home) as cat:
        db = cat.db
        db.execute("BEGIN IMMEDIATE")
        ok = False
        try:
            keys = dict(db.execute("SELECT batch_id, bkey FROM batches"))
            st = os.stat(paths.journal)
            if paths.id in keys or st.st_size < after or not {row[3] for row in links} | {c[2] for c in copies} <= keys.keys():
                return
            with open(paths.journal, "rb") as fh:
                head = fh.read(before)
            bkey = cat._add_batch(paths.id, paths.dir, linked) if len(head) == before and head.endswith(b"\n") else None
            if bkey is None:
                return
            _Folder(db, bkey, True).fold(rec for rec in map(decode, head.splitlines()) if rec is not None)
            db.executemany("INSERT INTO reuses VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(bkey, i, n, seq, t, keys[src], src_i) for i, n, seq, src, src_i in links])
            ok = _copy(db, bkey, [(i, seq, keys[src], src_i) for i, seq, src, src_i in copies], t)
            if ok:
                db.execute("UPDATE batches SET j_dev=?, j_ino=?, j_offset=?, j_tail=? WHERE bkey=?",
                           (st.st_dev, st.st_ino, after, _tail_crc(paths.journal, after), bkey))
        finally:
            db.execute("COMMIT" if ok else "ROLLBACK")


def _copy(db: sqlite3.Connection, bkey: int, copies: list[tuple[int, int, int, int]], t: float) -> bool:
    """The rows of reused results copied in SQL (item, seq, source batch key, source item), as
    _Folder makes them from the records: a file-less result has no digest, size or mtime;
    src_stat is not copied. False when a source lacks its rows."""
    if not copies:
        return True
    db.execute("CREATE TEMP TABLE IF NOT EXISTS copies (i INTEGER, seq INTEGER, src_bkey INTEGER, src_i INTEGER)")
    db.execute("DELETE FROM temp.copies")
    db.executemany("INSERT INTO temp.copies VALUES (?, ?, ?, ?)", copies)
    db.execute(
        """INSERT OR REPLACE INTO outputs (bkey, i, kind, rel, sha256, size, mtime, written_at, seq,
               src_size, src_mtime, out_dev, out_ino, current)
           SELECT ?, c.i, o.kind, o.rel, CASE o.kind WHEN 2 THEN NULL ELSE o.sha256 END,
                  CASE o.kind WHEN 2 THEN NULL ELSE o.size END, CASE o.kind WHEN 2 THEN NULL ELSE o.mtime END,
                  ?, c.seq, NULL, NULL, o.out_dev, o.out_ino, 1
           FROM temp.copies c JOIN outputs o ON o.bkey = c.src_bkey AND o.i = c.src_i AND o.current = 1""", (bkey, t))
    db.execute("DELETE FROM temp.copies")
    return db.execute("SELECT count(DISTINCT i) FROM outputs WHERE bkey = ?", (bkey,)).fetchone()[0] == len(copies)


def note_plan(paths: BatchPaths, p: SyncPlan) -> None:
    """The plan's figures in the manifest (read by `stats` and the reports)."""
    man = paths.load_manifest()
    man.update(kind="sync", reused=p.reused, sync={"new": p.new, "changed": p.changed, "failed_again": p.failed_again,
                                                   "reused_from": dict(p.from_batches)})
    if p.stood_for is not None:
        man["sync"]["stood_for"] = p.stood_for
    paths.write_manifest(man)


def dumps(p: SyncPlan) -> bytes:
    return orjson.dumps(p.as_dict())


def delete_stale(store: Store, paths: BatchPaths, dry_run: bool = False, stood_for: str | None = None):
    """`sync --delete`: remove the outputs in this batch's folder whose inputs are gone, by the
    purge rules (engine/purge.py): only a file whose batch is its last writer in the catalog,
    unchanged (size, mtime and sha256 as recorded), inside the recorded folder with no link on
    the way; folders left empty go too. A `sync --checksum` into a restored folder (the plan's
    `stood_for`, from the manifest when not given): also the files of the batch whose folder
    it stands for that no item of this batch is named for, as copies (mtime to the second,
    sha256). Returns a PurgeResult."""
    from batchcli.engine.purge import PurgeResult, delete_outputs

    man = paths.load_manifest()
    stood_for = stood_for or (man.get("sync") or {}).get("stood_for")
    out_dir = man.get("out_dir")
    if not out_dir or man.get("out_dev") is None or not os.path.isdir(out_dir):
        return PurgeResult()
    stale = []
    with Catalog(store) as cat:
        cat.refresh()
        for b in cat.batches_into(man["out_dev"], man["out_ino"]):
            if b.batch_id == paths.id:
                continue
            for mine, last in cat.last_writers(b.batch_id):
                if mine.kind != KIND_OUT or last.batch_id != b.batch_id or last.seq != mine.seq:
                    continue  # a link, or written again since (by a later batch): not this one's
                if mine.src is None or os.path.lexists(mine.src):
                    continue  # its input is still there
                stale.append(mine)
        copies = _orphans(cat, paths, stood_for) if stood_for else []
    res = delete_outputs(out_dir, man["out_dev"], man["out_ino"], stale, dry_run)
    return delete_outputs(out_dir, man["out_dev"], man["out_ino"], copies, dry_run, res, copies=True) if copies else res


def _orphans(cat: Catalog, paths: BatchPaths, stood_for: str) -> list:
    """The files `stood_for` wrote last (in its folder) that no item of this batch is named for:
    their inputs are gone from this checkout."""
    stems = {item["stem"] for item in iter_items(paths.items)}
    mine_now = {out.rel for out in cat.outputs_of(paths.id)}
    return [mine for mine, last in cat.last_writers(stood_for)
            if mine.kind == KIND_OUT and last.batch_id == stood_for and last.seq == mine.seq
            and mine.rel not in mine_now and os.path.splitext(mine.rel or "")[0] not in stems]
