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
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchcli.engine.catalog import KIND_NONE, KIND_OUT, KIND_ROUTED, Catalog
from batchcli.engine.journal import (
    FAILED,
    GROUP_COMMIT_RECORDS,
    JournalWriter,
    decode,
    encode,
    fold,
    fold_completed,
    iter_matching,
    prefix_crc,
    replay,
    save_snapshot,
)
from batchcli.engine.store import BatchPaths, Store
from batchcli.errors import ItemError
from batchcli.inputs.discover import iter_items


@dataclass
class SyncPlan:
    total: int = 0
    reused: int = 0
    new: int = 0  # no earlier result from this input with this pipeline
    changed: int = 0  # an earlier result, but the input or the output changed since
    failed_again: int = 0  # failed for good last time (not a transient class), input unchanged: not retried
    from_batches: Counter = field(default_factory=Counter)  # batch id -> items reused from it
    todo: list[str] = field(default_factory=list)  # inputs to process (the first TODO_LISTED)
    contents: dict[int, str] = field(default_factory=dict)  # --checksum: item -> its input's sha256

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "reused": self.reused, "to_process": self.new + self.changed,
                "new": self.new, "changed": self.changed, "failed_again": self.failed_again, "reused_from": dict(self.from_batches),
                "to_process_sample": self.todo}


log = logging.getLogger("batchcli.sync")

TODO_LISTED = 1000
"""Inputs to process named in a plan (a dry run lists them)."""


def _earlier(store: Store, cat: Catalog, man: dict[str, Any]) -> dict[tuple[int, int], list[tuple]]:
    """(input device, inode) -> the rows of the newest result of this fingerprint into this
    folder (one per file: each variant's output, a routed link; or one without a file). Batches
    are read newest first, down to the newest `sync` batch: that one holds the whole picture
    of its time, so nothing older is needed (and the cost does not grow with the history)."""
    out: dict[tuple[int, int], list[tuple]] = {}
    for bid in cat.batches_with(man.get("out_dev"), man.get("out_ino"), man["fingerprint"]):
        if bid == man["batch_id"]:
            continue
        for row in results_of(cat, bid):
            rows = out.get((row[0], row[1]))
            if rows is None:
                out[(row[0], row[1])] = [row]
            elif rows[0][4] == bid and rows[0][5] == row[5]:  # another file of the same result
                rows.append(row)
        try:
            with open(os.path.join(store.batches_dir, bid, "manifest.json"), "rb") as fh:
                if orjson.loads(fh.read()).get("kind") == "sync":
                    break
        except (OSError, ValueError):
            continue
    return out


def _earlier_failures(store: Store, cat: Catalog, man: dict[str, Any], me: str) -> dict[tuple, tuple]:
    """(input device, inode) -> (size, mtime, the record to copy) for the items that failed for
    good (decode, truncated, unsupported ...: not a transient class) in the newest other batch
    with this fingerprint into this folder. Running them again would fail again; the record
    keeps them failed (and the exit code 1) until the input changes."""
    if man.get("out_dev") is None:
        return {}
    rows = [b for b in cat.batches_into(man["out_dev"], man["out_ino"])
            if b.fingerprint == man["fingerprint"] and b.batch_id != me]
    if not rows:
        return {}
    old = BatchPaths(os.path.join(store.batches_dir, rows[-1].batch_id))
    try:
        total = int(old.load_manifest()["total"])
        with open(old.journal, "rb") as fh:  # no failure at all (the usual case): no need to fold it
            if b'"type":"item_failed"' not in fh.read():
                return {}
    except (OSError, ValueError, KeyError):
        return {}
    st = replay(old.journal, total)
    if not st.failed:
        return {}
    last: dict[int, dict[str, Any]] = {}
    for rec in iter_matching(old.journal, (b'"type":"item_failed"',)):
        i = rec.get("i")
        if isinstance(i, int) and 0 <= i < total and st.items[i] == FAILED:
            last[i] = rec
    out: dict[tuple, tuple] = {}
    for item in iter_items(old.items):
        rec = last.get(item["i"])
        if rec is None or rec.get("error_class") in ItemError.TRANSIENT or not item.get("ino"):
            continue
        copy = {k: rec.get(k) for k in ("error_class", "error", "attempts")}
        out[(item.get("dev"), item["ino"])] = (item.get("size"), item.get("mtime"),
                                               {**copy, "ms": 0.0, "reused_from": old.id})
    return out


CONTENTS = "input_sha256.jsonl"
"""sync --checksum: each input's sha256 as read when the batch was made, one {"i", "sha256"} a line."""


def input_contents(paths: BatchPaths) -> dict[int, str]:
    """The sha256 of every local input of a new batch (each file read once, like rsync -c)."""
    import hashlib

    out: dict[int, str] = {}
    for item in iter_items(paths.items):
        h = hashlib.sha256()
        try:
            with open(item["src"], "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023 (used at once)
                    h.update(block)
        except OSError:
            continue
        out[item["i"]] = h.hexdigest()
    return out


def save_contents(paths: BatchPaths, contents: dict[int, str]) -> None:
    from batchcli.atomic import atomic_write

    atomic_write(os.path.join(paths.dir, CONTENTS),
                 b"".join(orjson.dumps({"i": i, "sha256": h}) + b"\n" for i, h in sorted(contents.items())))


def _earlier_contents(store: Store, cat: Catalog, man: dict[str, Any], me: str) -> dict[str, tuple]:
    """Output name (stem) -> (input sha256, input identity, batch id) in the newest other batch
    with this fingerprint into this folder that recorded its inputs' contents (sync --checksum)."""
    if man.get("out_dev") is None:
        return {}
    for b in reversed(cat.batches_into(man["out_dev"], man["out_ino"])):
        if b.fingerprint != man["fingerprint"] or b.batch_id == me:
            continue
        old = os.path.join(store.batches_dir, b.batch_id)
        try:
            with open(os.path.join(old, CONTENTS), "rb") as fh:
                sums = {r["i"]: r["sha256"] for r in map(orjson.loads, fh)}
        except (OSError, ValueError):
            continue
        return {item["stem"]: (sums[item["i"]], (item.get("dev"), item.get("ino")), b.batch_id)
                for item in iter_items(os.path.join(old, "items.jsonl")) if item["i"] in sums}
    return {}


def _still_there(out_dir: bytes | None, row: tuple) -> bool:
    """The output is on disk as it was written (size and mtime as recorded: like rsync without
    --checksum, the file is not read). `out_dir` ends with a slash."""
    kind, rel, size, mtime = row[6], row[7], row[9], row[10]
    if kind == KIND_NONE:
        return True
    if not out_dir or not rel:
        return False
    try:
        st = os.lstat(out_dir + rel)
    except OSError:
        return False
    return st.st_size == size and (mtime is None or st.st_mtime == mtime)


def _names_match(files: list[tuple], stem: bytes, lanes: list) -> bool:
    """The result's files are the ones this item would write now (every variant, same names).
    Names as bytes, as the catalog has them."""
    if len(lanes) == 1 and lanes[0][0] is None and len(files) == 1:  # one output, named by the stem
        rel = files[0][7]
        return rel.startswith(stem) and os.path.splitext(rel)[0] == stem
    stems = {stem if to_stem is None else os.fsencode(to_stem(os.fsdecode(stem))) for to_stem, _ in lanes}
    return sorted(os.path.splitext(row[7])[0] for row in files) == sorted(stems)


@dataclass
class Earlier:
    """What the catalog knows of a new sync batch's inputs: the plan's questions, asked at once."""

    ids: dict[int, str]  # batch key -> batch id (where reused rows lie)
    results: dict[tuple[int, int], list[tuple]]  # _earlier's
    failures: dict[tuple, tuple]  # _earlier_failures'
    by_name: dict[str, tuple]  # _earlier_contents' (--checksum only)
    present: set[tuple[int, int]]  # the inputs (device, inode) in `results` whose files are all on disk as written
    question: tuple = ()  # _question of the manifest asked about


def _question(man: dict[str, Any]) -> tuple:
    """What the catalog's answers depend on, of a batch's manifest."""
    return man.get("fingerprint"), man.get("out_dir"), man.get("out_dev"), man.get("out_ino"), man.get("batch_id")


def ask(store: Store, man: dict[str, Any], checksum: bool = False) -> Earlier:
    """The catalog's answers for a batch with this manifest (its fingerprint, output folder and
    id are enough), and which of the outputs it names are still on disk (an lstat each)."""
    out_dir = man.get("out_dir")
    with Catalog(store) as cat:
        cat.refresh(skip=man["batch_id"])  # the new batch: record_reused indexes it
        ids = dict(cat.db.execute("SELECT bkey, batch_id FROM batches"))
        earlier = _earlier(store, cat, man) if man.get("out_dev") is not None or not out_dir else {}
        failures = _earlier_failures(store, cat, man, man["batch_id"])
        by_name = _earlier_contents(store, cat, man, man["batch_id"]) if checksum else {}
    out_b = os.fsencode(os.path.join(out_dir, "")) if out_dir else None
    present = set()
    lstat = os.lstat
    for key, rows in earlier.items():
        if len(rows) == 1 and rows[0][6] == KIND_OUT and out_b and rows[0][7]:  # _still_there, inline
            row = rows[0]
            try:
                st = lstat(out_b + row[7])
            except OSError:
                continue
            if st.st_size == row[9] and (row[10] is None or st.st_mtime == row[10]):
                present.add(key)
        elif all(_still_there(out_b, row) for row in rows):
            present.add(key)
    return Earlier(ids, earlier, failures, by_name, present, _question(man))


def plan(store: Store, paths: BatchPaths, checksum: bool = False, asked: Earlier | None = None
         ) -> tuple[SyncPlan, list[dict[str, Any]]]:
    """Which items of the new batch are up to date, and the records that say so (no writes).
    With `checksum`, an input whose content (sha256) equals the input of the same output name in
    the newest earlier batch that recorded contents also counts as the same input, whatever
    its identity and mtime (a fresh checkout in CI: new inodes, new mtimes). `asked`: `ask`'s
    answers from before the manifest was written (while the inputs were discovered), used when
    the manifest says what they were asked about."""
    return _plan(store, paths, checksum, SyncPlan(), asked)


def _plan(store: Store, paths: BatchPaths, checksum: bool, p: SyncPlan, asked: Earlier | None
          ) -> tuple[SyncPlan, list[dict[str, Any]]]:
    from batchcli.engine.owners import WrittenOutputs, output_lanes

    man = paths.load_manifest()
    out_dir = man.get("out_dir")
    lanes = output_lanes(man)
    writes = WrittenOutputs(out_dir, lanes)  # the output-on-input check, for the items that will write
    e = asked if asked is not None and asked.question == _question(man) else ask(store, man, checksum)
    ids, earlier, failures, by_name, present = e.ids, e.results, e.failures, e.by_name, e.present
    out_b = os.fsencode(os.path.join(out_dir, "")) if out_dir else None
    fsencode, fsdecode = os.fsencode, os.fsdecode
    fs = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # fsencode's, without its checks
    if checksum:
        p.contents = input_contents(paths)
    records: list[dict[str, Any]] = []
    single = not checksum and len(lanes) == 1 and lanes[0][0] is None
    sources: Counter = Counter()
    n = 0
    for n, item in enumerate(iter_items(paths.items), 1):  # noqa: B007 (n: the count, after the loop)
        key = (item.get("dev"), item.get("ino"))
        found = earlier.get(key) if item.get("ino") else None
        if single and found is not None and len(found) == 1 and out_b:  # the usual case, spelled out: one output file
            main = found[0]
            rel, stem, size, mtime = main[7], item["stem"].encode(*fs), item.get("size"), item.get("mtime")
            if main[6] == KIND_OUT and main[2] == size and main[3] == mtime and rel.startswith(stem) and (
                    _ext_only(rel[len(stem):], stem) or os.path.splitext(rel)[0] == stem):
                if key in present:
                    same = main[15] == size and main[16] == mtime and main[14] == item["src"].encode(*fs)
                    records.append({"i": item["i"], "out": rel.decode(*fs), "bytes": main[9], "sha256": main[8],
                                    "mtime": main[10], "ms": 0.0, "reused_from": main[4], "_seq": main[5],
                                    "_src": (ids[main[12]], main[13], same)})
                    sources[main[4]] += 1
                    continue
        same_content = False
        was = by_name.get(item["stem"]) if checksum else None
        if was is not None and was[0] == p.contents.get(item["i"]):
            rows = earlier.get(was[1])  # that input's newest result: the one made from this content?
            found, same_content = (rows, True) if rows and rows[0][4] == was[2] else (None, False)
        failed = failures.get(key) if not found and item.get("ino") else None
        if failed is not None and failed[:2] == (item.get("size"), item.get("mtime")):
            records.append({"i": item["i"], **failed[2]})
            p.failed_again += 1
            continue
        if not found:
            if was is not None:  # --checksum: the same output name, from other content
                p.changed += 1
            else:
                p.new += 1
            if len(p.todo) < TODO_LISTED:
                p.todo.append(item["src"])
            writes.add(item)
            continue
        files = [row for row in found if row[6] == KIND_OUT]
        main = files[0] if files else next((row for row in found if row[6] == KIND_NONE), None)
        ok = (main is not None and (same_content or (main[2], main[3]) == (item.get("size"), item.get("mtime")))
              and (main[6] == KIND_NONE or _names_match(files, fsencode(item["stem"]), lanes))
              and (was[1] if same_content else key) in present)  # its files are all there
        if not ok:
            p.changed += 1
            if len(p.todo) < TODO_LISTED:
                p.todo.append(item["src"])
            writes.add(item)
            continue
        rec: dict[str, Any] = {"i": item["i"]}
        if main[6] == KIND_OUT:
            rec.update(out=fsdecode(main[7]), bytes=main[9], sha256=main[8], mtime=main[10])
        for row in found:
            if row[6] == KIND_ROUTED:
                rec["routed"] = fsdecode(row[7])
        rec.update(ms=0.0, reused_from=main[4], _seq=main[5], _src=(ids[main[12]], main[13], _same_input(main, item)))
        records.append(rec)
        sources[main[4]] += 1
    writes.check(paths.items)  # ConfigError (exit 2) before any work: an output that is an input
    p.total, p.reused, p.from_batches = n, sum(sources.values()), sources
    _copy_meta(store, records)
    return p, records


def _ext_only(rest: bytes, stem: bytes) -> bool:
    """stem + rest splits (os.path.splitext) into stem and rest: rest is one extension, and the
    stem's last part is not dots alone. (False may be wrong: ask splitext then.)"""
    return rest[:1] == b"." and b"." not in rest[1:] and b"/" not in rest and stem[-1:] not in (b"", b".", b"/")


def _same_input(row: tuple, item: dict[str, Any]) -> bool:
    """The item's input is recorded as the reused row's (path, size, mtime): the catalog may say
    "this item holds that one's result" (a `reuses` row) instead of copying the rows."""
    return row[15] == item.get("size") and row[16] == item.get("mtime") and row[14] == os.fsencode(item["src"])


def _copy_meta(store: Store, records: list[dict[str, Any]]) -> None:
    """Bring each reused result's metadata (analysis, model output) and its outputs' list (the
    variants) along from the record it copies: its batch's journal is read only when it holds
    any."""
    wanted: dict[str, dict[int, dict[str, Any]]] = {}
    for rec in records:
        if "_seq" in rec:  # a completion (a failure has nothing to bring)
            wanted.setdefault(rec["reused_from"], {})[rec.pop("_seq")] = rec
    for bid, by_seq in wanted.items():
        journal = os.path.join(store.batches_dir, bid, "journal.jsonl")
        try:
            with open(journal, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        if b'"meta":' not in data and b'"outputs":' not in data:
            continue
        for raw in data.splitlines():
            if b'"meta":' in raw or b'"outputs":' in raw:
                old = decode(raw)
                if old is not None and old.get("seq") in by_seq:
                    rec = by_seq[old["seq"]]
                    rec.update({k: old[k] for k in ("meta", "outputs") if old.get(k) is not None})
                    if old.get("outputs"):  # the record's own out is its first output's
                        rec.update({k: old[k] for k in ("out", "bytes", "sha256", "mtime") if k in old})


def record_reused(paths: BatchPaths, records: list[dict[str, Any]]) -> None:
    """Append the up-to-date items' records to a new batch's journal (it has no runner yet),
    as one durable write, and save the fold as the journal's snapshot: the runner, `status`
    and the rest read the snapshot instead of decoding every reused record again. Then index
    the batch in the catalog as far as those records (`_index`)."""
    from filelock import FileLock

    from batchcli.engine.liveness import take_lock
    from batchcli.errors import BatchLocked

    lock = FileLock(paths.lock)
    if not take_lock(lock, paths):
        raise BatchLocked(f"batch {paths.id} is held by a live runner")
    try:
        written = _append_reused(paths, records)
    finally:
        lock.release()
    if written is not None:
        try:  # a cache: should it fail, a later refresh folds the journal
            _index(paths, *written)
        except (OSError, sqlite3.Error, RuntimeError) as exc:
            log.warning("sync: the catalog will index batch %s from its journal (%s)", paths.id, exc)


def _append_reused(paths: BatchPaths, records: list[dict[str, Any]]) -> tuple | None:
    """Returns (the reused results: (item, seq, source batch, source item, same input), their
    records' time, the journal's size before and after the records), or None when the journal
    had a torn tail (a refresh folds it)."""
    st = replay(paths.journal, int(paths.load_manifest()["total"]))
    clean = st.offset == os.path.getsize(paths.journal)  # no torn tail: the fold is the file's
    seq, t, written = st.last_seq, round(time.time(), 3), 0
    reused = [(rec["i"], seq + k, *rec.pop("_src"))  # (item, seq, where its rows lie, same input)
              for k, rec in enumerate(records, 1) if "_src" in rec]
    j = JournalWriter(paths.journal, st.last_seq, durable=False)
    crc = prefix_crc(paths.journal, st.offset) if clean else None  # the snapshot's, extended group by group
    lines: list[bytes] = []
    done: list[int] = []  # completions not folded yet (fold_completed: in bulk)
    dumps, crc32 = orjson.dumps, zlib.crc32
    try:
        for rec in records:
            seq += 1
            if "error_class" in rec:
                fold_completed(st, done, seq - 1)
                done = []
                full = {"seq": seq, "t": t, "type": "item_failed", **rec}
                line = encode(full)
                fold(st, full)
            else:
                full = {"seq": seq, "t": t, "type": "item_completed", **rec}
                try:  # encode(), spelled out
                    body = dumps(full)
                except TypeError:  # a name that is not UTF-8 (batchcli/jsonio.py)
                    line = encode(full)
                else:
                    line = b'%s,"crc":"%08x"}\n' % (body[:-1], crc32(body))
                done.append(rec["i"])
            lines.append(line)
            if len(lines) >= GROUP_COMMIT_RECORDS:
                written, crc = _append_group(j, lines, seq, written, crc)
                lines = []
        written, crc = _append_group(j, lines, seq, written, crc)
        fold_completed(st, done, seq)
    finally:
        j.close()
    with open(paths.journal, "rb") as fh:
        os.fsync(fh.fileno())
    if not (clean and records):
        return None
    before = st.offset
    st.offset, st.lines = st.offset + written, st.lines + len(records)
    st.crc_at = (st.offset, crc) if crc is not None else None
    try:  # a cache: the journal alone is the truth
        save_snapshot(paths.journal, st)
    except OSError as exc:
        log.warning("sync: no journal snapshot: %s", exc)
    return reused, t, before, st.offset


def _append_group(j: JournalWriter, lines: list[bytes], seq: int, written: int, crc: int | None) -> tuple[int, int | None]:
    """Hand a group of encoded records to the writer; (bytes written so far, the CRC so far)."""
    data = b"".join(lines)
    j.append_encoded([data], seq)
    j.sync()
    return written + len(data), (zlib.crc32(data, crc) if crc is not None else None)


def results_of(cat: Catalog, batch_id: str) -> list[tuple]:
    """A batch's current results with their input's identity, as tuples (input device, inode,
    size, mtime, batch id, record seq, kind, rel as bytes, sha256 hex, size, mtime, item, the
    batch key and item whose rows hold them, the input's path as bytes, its size and mtime as
    listed), one per file of a result (each variant's output, a routed link; or one without a
    file): its own rows and those its `reuses` rows point to (engine/reuses.py). In one query,
    converted by SQLite. No refresh."""
    row = cat.db.execute("SELECT bkey FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
    if row is None:
        return []
    return cat.db.execute(
        """SELECT it.dev, it.ino, COALESCE(o.src_size, it.size), COALESCE(o.src_mtime, it.mtime), :id, o.seq, o.kind,
                  o.rel, CASE WHEN o.sha256 IS NULL THEN NULL ELSE lower(hex(o.sha256)) END, o.size, o.mtime, o.i,
                  o.bkey, o.i, it.src, it.size, it.mtime
           FROM outputs o JOIN items it ON it.bkey = o.bkey AND it.i = o.i
           WHERE o.bkey = :b AND o.current = 1 AND it.ino IS NOT NULL
           UNION ALL
           SELECT it.dev, it.ino, it.size, it.mtime, :id, r.seq + o.i - r.src_i, o.kind, o.rel,
                  CASE WHEN o.kind = 2 OR o.sha256 IS NULL THEN NULL ELSE lower(hex(o.sha256)) END,
                  CASE o.kind WHEN 2 THEN NULL ELSE o.size END, CASE o.kind WHEN 2 THEN NULL ELSE o.mtime END,
                  r.i + o.i - r.src_i, o.bkey, o.i, it.src, it.size, it.mtime
           FROM reuses r JOIN outputs o ON o.bkey = r.src_bkey AND o.i BETWEEN r.src_i AND r.src_i + r.n - 1
                AND o.current = 1
           JOIN items it ON it.bkey = o.bkey AND it.i = o.i
           WHERE r.bkey = :b AND it.ino IS NOT NULL""", {"id": batch_id, "b": row[0]}).fetchall()


def _index(paths: BatchPaths, reused: list[tuple], t: float, before: int, after: int) -> None:
    """Index a new sync batch in the catalog up to its reused records (the journal's first
    `after` bytes): its header, the items whose input is not the reused result's (their rows),
    and the results it reuses: a `reuses` row per run of consecutive ones whose input is the
    same (nothing copied), the rows of the others copied in SQL. Nothing is kept (a refresh
    folds the journal later) when the catalog knows the batch already, lacks a batch whose rows
    are reused, or the journal is not as written."""
    from batchcli.engine.catalog import _Folder, _tail_crc

    links: list[list] = []  # [item, n, seq, t, source batch id, source item]
    copies = []
    run, nxt = None, (None, None, None, None)  # the run being extended; what its next item would be
    for i, seq, src, src_i, same in reused:
        if not same:
            copies.append((i, seq, src, src_i))
        elif (i, seq, src_i, src) == nxt:
            run[1] += 1
            nxt = (i + 1, seq + 1, src_i + 1, src)
        else:
            run = [i, 1, seq, t, src, src_i]
            links.append(run)
            nxt = (i + 1, seq + 1, src_i + 1, src)
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
            if paths.id in keys or st.st_size < after or not {row[4] for row in links} | {c[2] for c in copies} <= keys.keys():
                return
            with open(paths.journal, "rb") as fh:
                head = fh.read(before)
            bkey = cat._add_batch(paths.id, paths.dir, linked) if len(head) == before and head.endswith(b"\n") else None
            if bkey is None:
                return
            _Folder(db, bkey, True).fold(rec for rec in map(decode, head.splitlines()) if rec is not None)
            db.executemany("INSERT INTO reuses VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(bkey, i, n, seq, when, keys[src], src_i) for i, n, seq, when, src, src_i in links])
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
    man.update(kind="sync", reused=p.reused, sync={"new": p.new, "changed": p.changed,
                                                   "reused_from": dict(p.from_batches)})
    paths.write_manifest(man)


def dumps(p: SyncPlan) -> bytes:
    return orjson.dumps(p.as_dict())


def delete_stale(store: Store, paths: BatchPaths, dry_run: bool = False):
    """`sync --delete`: remove the outputs in this batch's folder whose inputs are gone, by the
    purge rules (engine/purge.py): only a file whose batch is its last writer in the catalog,
    unchanged (size, mtime and sha256 as recorded), inside the recorded folder with no link on
    the way; folders left empty go too. Returns a PurgeResult."""
    from batchcli.engine.purge import PurgeResult, delete_outputs

    man = paths.load_manifest()
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
    return delete_outputs(out_dir, man["out_dev"], man["out_ino"], stale, dry_run)
