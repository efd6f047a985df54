"""The plan of a `sync` (engine/sync.py): which items of a new batch are up to date, from what
the output catalog knows of earlier batches and what is on disk; nothing is written here."""

from __future__ import annotations

import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchcli import jsonio
from batchcli.engine.catalog import KIND_NONE, KIND_OUT, KIND_ROUTED, BatchRow, Catalog
from batchcli.engine.journal import (
    FAILED,
    decode,
    iter_matching,
    replay,
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
    stood_for: str | None = None  # --checksum into a restored folder: the batch whose folder this one stands for

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "reused": self.reused, "to_process": self.new + self.changed,
                "new": self.new, "changed": self.changed, "failed_again": self.failed_again, "reused_from": dict(self.from_batches),
                "to_process_sample": self.todo}



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
        get = out.get
        for row in results_of(cat, bid):
            key = row[:2]
            rows = get(key)
            if rows is None:
                out[key] = [row]
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
    planner: Planner | None = None  # fed the items written so far (follow), when it was
    moved: dict[tuple[int, int], float] = field(default_factory=dict)  # --checksum: in `present` by content, mtime now
    stood_for: str | None = None  # _restored's batch


def _question(man: dict[str, Any]) -> tuple:
    """What the catalog's answers (and a Planner) depend on, of a batch's manifest."""
    return (man.get("fingerprint"), man.get("out_dir"), man.get("out_dev"), man.get("out_ino"), man.get("batch_id"),
            man.get("out_ext"), orjson.dumps(man.get("variants")), (man.get("input_options") or {}).get("name_template"))


def ask(store: Store, man: dict[str, Any], checksum: bool = False) -> Earlier:
    """The catalog's answers for a batch with this manifest (its fingerprint, output folder and
    id are enough), and which of the outputs it names are still on disk (an lstat each)."""
    out_dir = man.get("out_dir")
    with Catalog(store) as cat:
        cat.refresh(skip=man["batch_id"])  # the new batch: record_reused indexes it
        ids = dict(cat.db.execute("SELECT bkey, batch_id FROM batches"))
        question, stood_for = _question(man), _restored(store, cat, man) if checksum else None
        if stood_for is not None:
            man = {**man, "out_dev": stood_for.out_dev, "out_ino": stood_for.out_ino}
        earlier = _earlier(store, cat, man) if man.get("out_dev") is not None or not out_dir else {}
        failures = _earlier_failures(store, cat, man, man["batch_id"])
        by_name = _earlier_contents(store, cat, man, man["batch_id"]) if checksum else {}
    out_b = os.fsencode(os.path.join(out_dir, "")) if out_dir else None
    present = set()
    moved: dict[tuple[int, int], float] = {}
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
            elif checksum and st.st_size == row[9] and _same_content(out_b + row[7], row[8]):
                present.add(key)  # as written, by content: another mtime (a cache restored by tar or zip)
                moved[key] = st.st_mtime
        elif all(_still_there(out_b, row) for row in rows):
            present.add(key)
    return Earlier(ids, earlier, failures, by_name, present, question, moved=moved,
                   stood_for=stood_for.batch_id if stood_for is not None else None)


def _restored(store: Store, cat: Catalog, man: dict[str, Any]) -> BatchRow | None:
    """sync --checksum into an output folder no batch with this pipeline wrote into (by its
    identity): a CI cache restores the output folder and the batch home as new files, perhaps at
    another path. The newest earlier --checksum batch with this fingerprint stands for this
    folder: its results count where this folder holds their files with the same content (an
    output is read only when its mtime differs). None when a batch with this pipeline wrote here."""
    me, dev, ino, fp = man["batch_id"], man.get("out_dev"), man.get("out_ino"), man.get("fingerprint")
    if dev is None or any(bid != me for bid in cat.batches_with(dev, ino, fp)):
        return None
    rows = [b for b, _ in cat.indexed().values()
            if b.fingerprint == fp and b.batch_id != me and b.out_dev is not None
            and os.path.exists(os.path.join(store.batches_dir, b.batch_id, CONTENTS))]
    return max(rows, key=lambda b: b.batch_id) if rows else None


def _same_content(path: bytes, sha256: str | None) -> bool:
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023 (used at once)
                h.update(block)
    except OSError:
        return False
    return sha256 is not None and h.hexdigest() == sha256


def plan(store: Store, paths: BatchPaths, checksum: bool = False, asked: Earlier | None = None
         ) -> tuple[SyncPlan, list[dict[str, Any]]]:
    """Which items of the new batch are up to date, and the records that say so (no writes).
    With `checksum`, an input whose content (sha256) equals the input of the same output name in
    the newest earlier batch that recorded contents also counts as the same input, whatever
    its identity and mtime (a fresh checkout in CI: new inodes, new mtimes); one that failed for
    good from that content stays failed. `asked`: `ask`'s
    answers from before the manifest was written (while the inputs were discovered), used when
    the manifest says what they were asked about; its `planner`, when it has one, has gone
    over the items written meanwhile (`follow`), and goes on from there."""
    man = paths.load_manifest()
    if asked is not None and asked.question != _question(man):
        asked = None
    planner = asked.planner if asked is not None else None
    if planner is None or not planner.feed_file(paths.items):
        planner = Planner(man, asked or ask(store, man, checksum), checksum,
                          input_contents(paths) if checksum else {})
        planner.feed_file(paths.items)
    return planner.finish(store, paths.items)


def follow(planner: Planner, items_path: str, running: Callable[[], bool]) -> None:
    """Feed `planner` the lines of items.jsonl as another process writes them, until
    `running()` says it is done."""
    fh, tail = None, b""
    try:
        while True:
            alive = running()
            if fh is None:
                try:
                    fh = open(items_path, "rb")
                except FileNotFoundError:
                    if not alive:
                        return
                    time.sleep(0.002)
                    continue
            chunk = fh.read(FEED_BYTES)
            if chunk:
                tail += chunk
                cut = tail.rfind(b"\n") + 1
                if cut:
                    planner.feed(tail[:cut])
                    tail = tail[cut:]
            elif not alive:
                return
            else:
                time.sleep(0.002)
    finally:
        if fh is not None:
            fh.close()


FEED_BYTES = 4 << 20
"""items.jsonl is gone over in pieces of at most this many bytes (complete lines)."""


class Planner:
    """The plan's walk over a batch's items (items.jsonl, in order), fed complete lines as they
    come; then `finish`. `man`: the batch's manifest (or what it will say: api.manifest_preview)."""

    def __init__(self, man: dict[str, Any], e: Earlier, checksum: bool = False, contents: dict[int, str] | None = None):
        from batchcli.engine.owners import WrittenOutputs, output_lanes

        out_dir = man.get("out_dir")
        self.e, self.checksum, self.lanes = e, checksum, output_lanes(man)
        self.writes = WrittenOutputs(out_dir, self.lanes)  # the output-on-input check, for the items that will write
        self.out_b = os.fsencode(os.path.join(out_dir, "")) if out_dir else None
        self.p = SyncPlan(contents=contents or {}, stood_for=e.stood_for)
        self.records: list[dict[str, Any]] = []
        self.sources: Counter = Counter()
        self.single = not checksum and len(self.lanes) == 1 and self.lanes[0][0] is None
        self.offset, self.crc = 0, 0  # bytes of items.jsonl fed, and their CRC-32

    def feed_file(self, items_path: str) -> bool:
        """Feed the rest of items.jsonl (the whole file is there now). False, and nothing fed,
        when the part fed already is not the start of the file (it was written again)."""
        with open(items_path, "rb") as fh:
            crc, left = 0, self.offset
            while left > 0:
                block = fh.read(min(left, FEED_BYTES))
                if not block:
                    return False
                crc, left = zlib.crc32(block, crc), left - len(block)
            if crc != self.crc:
                return False
            tail = b""
            while chunk := fh.read(FEED_BYTES):
                tail += chunk
                cut = tail.rfind(b"\n") + 1
                if cut:
                    self.feed(tail[:cut])
                    tail = tail[cut:]
            if tail.strip():
                self.feed(tail + b"\n")
        return True

    def feed(self, data: bytes) -> None:
        """The next complete lines of items.jsonl."""
        if not data:
            return
        self.offset += len(data)
        self.crc = zlib.crc32(data, self.crc)
        e, p, records, sources, writes, out_b = self.e, self.p, self.records, self.sources, self.writes, self.out_b
        ids, earlier, failures, by_name, present = e.ids, e.results, e.failures, e.by_name, e.present
        fsencode, fsdecode, loads, checksum, lanes = os.fsencode, os.fsdecode, jsonio.loads, self.checksum, self.lanes
        fs = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()  # fsencode's, without its checks
        single = self.single and out_b
        lines = data[:-1].split(b"\n")  # (complete lines: data ends with one)
        for line in lines:
            item = loads(line)
            ino = item.get("ino")
            key = (item.get("dev"), ino)
            found = earlier.get(key) if ino else None
            if single and found is not None and len(found) == 1:  # the usual case, spelled out: one output file
                main = found[0]
                rel, stem, size, mtime = main[7], item["stem"].encode(*fs), item.get("size"), item.get("mtime")
                if main[6] == KIND_OUT and main[2] == size and main[3] == mtime and named_by(rel, stem) and key in present:
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
            failed = failures.get(key) if not found and ino else None
            if failed is None or failed[:2] != (item.get("size"), item.get("mtime")):
                failed = None
                if was is not None and not found and was[0] == p.contents.get(item["i"]):  # --checksum: by content
                    failed = failures.get(was[1])  # (that input failed for good in the batch that read it so)
                    failed = failed if failed is not None and failed[2]["reused_from"] == was[2] else None
            if failed is not None:
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
            rec.update(ms=0.0, reused_from=main[4], _seq=main[5])
            now = e.moved.get(was[1] if same_content else key)
            if now is None:
                rec["_src"] = (ids[main[12]], main[13], _same_input(main, item))
            else:  # the file as it is now (the catalog indexes this record, not the rows it copied)
                rec["mtime"] = now
            records.append(rec)
            sources[main[4]] += 1
        p.total += len(lines)

    def finish(self, store: Store, items_path: str) -> tuple[SyncPlan, list[dict[str, Any]]]:
        p = self.p
        self.writes.check(items_path)  # ConfigError (exit 2) before any work: an output that is an input
        p.reused, p.from_batches = sum(self.sources.values()), self.sources
        _copy_meta(store, self.records)
        return p, self.records


_NOT_LAST = (b"", b".", b"/")
"""A stem ending so is not split by os.path.splitext where the plan's quick check would."""


def named_by(rel: bytes, stem: bytes) -> bool:
    """A result's one file `rel` is the file an item with this output stem writes (the stem and
    one extension): the plan's check of a one-file result, quick where the rest after the stem
    plainly is one extension, else as os.path.splitext splits it."""
    rest = rel[len(stem):]
    return rel.startswith(stem) and ((rest[:1] == b"." and b"." not in rest[1:] and b"/" not in rest
                                      and stem[-1:] not in _NOT_LAST) or os.path.splitext(rel)[0] == stem)


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
