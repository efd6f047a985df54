"""The output catalog: one SQLite file in the batch home that indexes every batch's journal.

For each output file it records the output folder's identity (path, device, inode), the path
relative to it, the batch and item that wrote it, sha256, size, mtime, the time written, the
input's identity (path, device, inode, size, mtime) and the pipeline fingerprint. It answers
"who wrote this file last", "what did this batch write", "which batches are still writing into
this folder" and "was this input already processed with this pipeline".

It is derived (DESIGN.md invariant 9): the journals stay the only source of truth. `refresh`
folds only what each journal gained since it was last indexed (the byte offset is kept per
batch, with a check that the bytes before it are unchanged), drops batches whose folder is gone,
and reindexes a batch whose journal was replaced. A missing, corrupt or older-format file is
rebuilt from the journals. Commands refresh it when they need it; a sync's runner also does
as it ends (`index_quietly`), so the next sync finds its results indexed.
A sync batch's reused results are held as `reuses` rows instead of copies (engine/reuses.py).

Paths are stored as bytes (os.fsencode), so names that are not valid UTF-8 round-trip.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from batchcli import jsonio
from batchcli.engine.journal import iter_records
from batchcli.engine.reuses import materialize as _materialize
from batchcli.engine.reuses import rollback as _rollback
from batchcli.engine.reuses import unlink as _unlink
from batchcli.engine.store import Store
from batchcli.errors import sqlite_disk_error
from batchcli.executors.base import outputs_of

log = logging.getLogger("batchcli.catalog")

FILENAME = "catalog.sqlite"
SCHEMA_VERSION = 2
"""2: the `reuses` table (a sync's up-to-date results, engine/sync_catalog.py). An older file is rebuilt."""
FLUSH_ROWS = 20_000
"""Rows gathered before they are written (one executemany)."""
TAIL = 256
"""Bytes before the indexed offset whose CRC tells an appended journal from a replaced one."""
FINISHED = ("completed", "failed", "cancelled")
"""Journal states in which a batch writes nothing more (unless resumed with --retry-failed or
--repair); any other state claims the batch's output paths."""

KIND_OUT, KIND_ROUTED, KIND_NONE = 0, 1, 2
"""An item's primary output, its routed link (classify route=true), or no file at all."""

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value);
CREATE TABLE batches (
    bkey INTEGER PRIMARY KEY,
    batch_id TEXT NOT NULL UNIQUE,
    name TEXT, created_at REAL, fingerprint TEXT,
    out_path BLOB, out_dev INTEGER, out_ino INTEGER,
    state TEXT NOT NULL DEFAULT 'pending',
    total INTEGER,
    j_dev INTEGER, j_ino INTEGER, j_offset INTEGER NOT NULL DEFAULT 0, j_tail INTEGER
);
CREATE TABLE items (
    bkey INTEGER NOT NULL, i INTEGER NOT NULL,
    src BLOB, dev INTEGER, ino INTEGER, size INTEGER, mtime REAL,
    PRIMARY KEY (bkey, i)
) WITHOUT ROWID;
CREATE TABLE outputs (
    bkey INTEGER NOT NULL, i INTEGER NOT NULL, kind INTEGER NOT NULL,
    out_dev INTEGER, out_ino INTEGER, rel BLOB NOT NULL,
    sha256 BLOB, size INTEGER, mtime REAL, written_at REAL, seq INTEGER,
    src_size INTEGER, src_mtime REAL,
    current INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (bkey, i, kind, rel)
) WITHOUT ROWID;
CREATE TABLE reuses (
    bkey INTEGER NOT NULL, i INTEGER NOT NULL, n INTEGER NOT NULL, seq INTEGER NOT NULL, written_at REAL,
    src_bkey INTEGER NOT NULL, src_i INTEGER NOT NULL,
    PRIMARY KEY (bkey, i)
) WITHOUT ROWID;
CREATE INDEX reuses_src ON reuses (src_bkey, src_i);
"""
"""`reuses`: the results a `sync` reuses, a row per run of them (engine/reuses.py)."""
_INDEXES = """
CREATE INDEX IF NOT EXISTS batches_out ON batches (out_dev, out_ino);
CREATE INDEX IF NOT EXISTS items_identity ON items (dev, ino) WHERE ino IS NOT NULL;
CREATE INDEX IF NOT EXISTS outputs_path ON outputs (out_dev, out_ino, rel, written_at) WHERE kind < 2;
"""
"""Made after the first full index of a new catalog (faster than keeping them up to date row by
row while millions of rows go in), then kept up to date. A query must say `kind < 2` for
SQLite to use the partial index outputs_path."""


@dataclass(frozen=True)
class Output:
    """One output as the catalog knows it (the last time its batch wrote it)."""

    batch_id: str
    i: int
    kind: int  # KIND_OUT, KIND_ROUTED or KIND_NONE
    out_path: str | None  # the output folder as recorded at start
    out_dev: int | None
    out_ino: int | None
    rel: str | None  # relative to out_path; None for KIND_NONE
    sha256: str | None
    size: int | None
    mtime: float | None
    written_at: float
    seq: int
    src: str | None
    src_dev: int | None
    src_ino: int | None
    src_size: int | None  # as read when the output was made
    src_mtime: float | None
    fingerprint: str | None
    current: bool  # the item's last record is this completion (not a later failure or requeue)

    @property
    def path(self) -> str | None:
        if self.out_path is None or self.rel is None:
            return None
        return os.path.join(self.out_path, self.rel)


@dataclass(frozen=True)
class BatchRow:
    batch_id: str
    name: str | None
    state: str
    out_path: str | None
    out_dev: int | None
    out_ino: int | None
    fingerprint: str | None
    total: int | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


_OUTPUT_COLUMNS = """b.batch_id, o.i, o.kind, b.out_path, o.out_dev, o.out_ino, o.rel, o.sha256, o.size,
    o.mtime, o.written_at, o.seq, it.src, it.dev, it.ino, COALESCE(o.src_size, it.size),
    COALESCE(o.src_mtime, it.mtime), b.fingerprint, o.current"""
_OUTPUT_FROM = """outputs o JOIN batches b ON b.bkey = o.bkey
    LEFT JOIN items it ON it.bkey = o.bkey AND it.i = o.i"""
_BATCH_COLUMNS = "batch_id, name, state, out_path, out_dev, out_ino, fingerprint, total"


def _fs(b: bytes | None) -> str | None:
    return None if b is None else os.fsdecode(b)


def _output(row: tuple) -> Output:
    r = list(row)
    r[3], r[6], r[12] = _fs(r[3]), _fs(r[6]) if r[2] != KIND_NONE else None, _fs(r[12])
    r[7] = r[7].hex() if r[7] is not None else None
    r[18] = bool(r[18])
    return Output(*r)


def _batch(row: tuple) -> BatchRow:
    r = list(row)
    r[3] = _fs(r[3])
    return BatchRow(*r)


class Catalog:
    """The catalog of a batch home. Cheap to open; `refresh()` before asking, when the answer
    must include what journals gained since (each query method says whether it refreshes)."""

    def __init__(self, home: str | Store | None = None):
        self.store = home if isinstance(home, Store) else Store(home)
        self.path = os.path.join(self.store.home, FILENAME)
        self._db: sqlite3.Connection | None = None

    # --- opening -----------------------------------------------------------------------------
    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = self._open()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        os.makedirs(self.store.home, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:  # a full disk is no reason to make the file again
            raise sqlite_disk_error(self.path, exc) or exc from None
        db.execute("PRAGMA synchronous=NORMAL")  # derived data: a crash may lose the last refresh only
        db.execute("PRAGMA cache_size=-65536")  # 64 MiB of pages while a rebuild writes millions of rows
        return db

    def _open(self) -> sqlite3.Connection:
        db = None
        try:
            db = self._connect()
            if _schema(db) == SCHEMA_VERSION:
                return db
        except sqlite3.DatabaseError as exc:  # a corrupt file ("file is not a database")
            log.warning("catalog %s unreadable (%s); rebuilding it from the journals", self.path, exc)
        if db is not None:
            db.close()
        return self._recreate()

    def _recreate(self) -> sqlite3.Connection:
        """A fresh, empty catalog file (its rows come back with the next refresh)."""
        from filelock import FileLock

        os.makedirs(self.store.home, exist_ok=True)
        with FileLock(self.path + ".lock"):
            db = None
            with contextlib.suppress(sqlite3.DatabaseError):  # another process made it meanwhile?
                db = self._connect()
                if _schema(db) == SCHEMA_VERSION:
                    return db
            if db is not None:
                db.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)
            db = self._connect()
            db.executescript(f"BEGIN; {_SCHEMA} INSERT INTO meta VALUES ('schema', {SCHEMA_VERSION});"
                             " INSERT INTO meta VALUES ('indexed', 0); COMMIT;")
            return db

    def rebuild(self) -> dict[str, int]:
        """Forget everything and index every journal again."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._db = self._recreate()
        stats = self.refresh()
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return stats

    # --- refreshing --------------------------------------------------------------------------
    def refresh(self, skip: str | None = None) -> dict[str, int]:
        """Fold in what the journals gained since the last refresh. Cheap when nothing changed
        (one stat per batch). Returns counts: batches indexed, dropped, records folded. `skip`:
        a batch left for later (a new sync batch: its own thread indexes it, engine/sync.py)."""
        try:
            return self._refresh(skip)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc) or sqlite_disk_error(self.path, exc):
                raise sqlite_disk_error(self.path, exc) or exc from None  # a full disk: the file is fine
            log.warning("catalog %s: %s; rebuilding it from the journals", self.path, exc)
            return self.rebuild()

    def _refresh(self, skip: str | None = None) -> dict[str, int]:
        db = self.db
        stats = {"batches": 0, "dropped": 0, "records": 0}
        ids = self.store.ids()
        db.execute("BEGIN IMMEDIATE")  # one refresher at a time; readers go on meanwhile
        try:
            known = {bid: (bkey, dev, ino, off, tail) for bkey, bid, dev, ino, off, tail in
                     db.execute("SELECT bkey, batch_id, j_dev, j_ino, j_offset, j_tail FROM batches")}
            present = set(ids)
            for bid, (bkey, *_rest) in known.items():
                if bid not in present:
                    self._drop(bkey)
                    stats["dropped"] += 1
            for bid in reversed(ids):  # oldest first
                if bid == skip and bid not in known:
                    continue
                n = self._index(bid, known.get(bid))
                if n >= 0:
                    stats["batches"] += 1
                    stats["records"] += n
            if db.execute("SELECT value FROM meta WHERE key='indexed'").fetchone() != (1,):
                for stmt in filter(str.strip, _INDEXES.split(";")):
                    db.execute(stmt)
                db.execute("INSERT OR REPLACE INTO meta VALUES ('indexed', 1)")
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        return stats

    def _drop(self, bkey: int) -> None:
        for (other,) in self.db.execute("SELECT DISTINCT bkey FROM reuses WHERE src_bkey = ?", (bkey,)).fetchall():
            _materialize(self.db, other)  # they read this batch's rows: they get their own first
        for table in ("reuses", "outputs", "items", "batches"):
            self.db.execute(f"DELETE FROM {table} WHERE bkey = ?", (bkey,))

    def materialize(self) -> None:
        """Turn every `reuses` row into outputs and items rows of their own (what the questions
        below read). Cheap when there are none."""
        db = self.db
        if db.execute("SELECT 1 FROM reuses LIMIT 1").fetchone() is None:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for (bkey,) in db.execute("SELECT DISTINCT bkey FROM reuses").fetchall():
                _materialize(db, bkey)
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise

    def _index(self, bid: str, known: tuple | None) -> int:
        """Index what is new in one batch's journal; -1 when nothing was (unchanged, half-made)."""
        bdir = os.path.join(self.store.batches_dir, bid)
        journal = os.path.join(bdir, "journal.jsonl")
        try:
            st = os.stat(journal)
        except OSError:
            return -1  # being created (or removed): not a batch yet
        if known is not None:
            bkey, dev, ino, offset, tail = known
            if (dev, ino) == (st.st_dev, st.st_ino) and st.st_size == offset:
                return -1
            if (dev, ino) != (st.st_dev, st.st_ino) or st.st_size < offset or _tail_crc(journal, offset) != tail:
                self._drop(bkey)  # not the journal we indexed: start over
                known = None
        if known is None:
            bkey = self._add_batch(bid, bdir)
            if bkey is None:
                return -1
            offset, fresh = 0, True
        else:
            bkey, offset, fresh = known[0], known[3], False
        pos = [offset, 0]
        n = _Folder(self.db, bkey, fresh).fold(iter_records(journal, start=offset, pos=pos))
        self.db.execute("UPDATE batches SET j_dev=?, j_ino=?, j_offset=?, j_tail=? WHERE bkey=?",
                        (st.st_dev, st.st_ino, pos[0], _tail_crc(journal, pos[0]), bkey))
        return n

    def _add_batch(self, bid: str, bdir: str, linked: bytearray | None = None) -> int | None:
        try:
            with open(os.path.join(bdir, "manifest.json"), "rb") as fh:
                man = jsonio.loads(fh.read())
        except (OSError, ValueError):
            return None
        out = man.get("out_dir")
        dev, ino = out_identity(man)
        cur = self.db.execute(
            "INSERT INTO batches (batch_id, name, created_at, fingerprint, out_path, out_dev, out_ino, total)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (bid, man.get("name"), man.get("created_at"), man.get("fingerprint"),
             os.fsencode(out) if out else None, dev, ino, man.get("total")))
        bkey = cur.lastrowid
        self._index_items(bkey, os.path.join(bdir, "items.jsonl"), linked)
        return bkey

    def _index_items(self, bkey: int, path: str, linked: bytearray | None = None) -> None:
        """`linked`: one byte per item of the batch, set for those a `reuses` row covers: they get
        no row (item i is line i of the file, so their lines are not even decoded; with every
        item covered, the file is not read)."""
        rows: list[tuple] = []
        sql = "INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?, ?, ?, ?)"
        if linked is not None and linked.find(0) < 0:
            return
        try:
            for rec in _items(path, linked):
                rows.append((bkey, rec["i"], os.fsencode(rec["src"]), rec.get("dev"), rec.get("ino"),
                             rec.get("size"), rec.get("mtime")))
                if len(rows) >= FLUSH_ROWS:
                    self.db.executemany(sql, rows)
                    rows.clear()
        except (OSError, ValueError) as exc:
            log.warning("catalog: %s: %s", path, exc)
        self.db.executemany(sql, rows)

    # --- questions -----------------------------------------------------------------------------
    def last_writer(self, out_dev: int, out_ino: int, rel: str) -> Output | None:
        """The newest write of OUT/rel across all batches (by journal time), or None. No refresh."""
        self.materialize()
        row = self.db.execute(
            f"SELECT {_OUTPUT_COLUMNS} FROM {_OUTPUT_FROM} WHERE o.out_dev=? AND o.out_ino=? AND o.rel=? AND o.kind < 2"
            " ORDER BY o.written_at DESC, o.bkey DESC LIMIT 1", (out_dev, out_ino, os.fsencode(rel))).fetchone()
        return None if row is None else _output(row)

    def last_writers(self, batch_id: str) -> Iterator[tuple[Output, Output]]:
        """(this batch's write, the newest write of the same file) for every file the batch wrote,
        in item order. No refresh."""
        self.materialize()
        rows = self.db.execute(
            f"""SELECT {_OUTPUT_COLUMNS}, (SELECT o2.bkey FROM outputs o2
                  WHERE o2.out_dev = o.out_dev AND o2.out_ino = o.out_ino AND o2.rel = o.rel AND o2.kind < 2
                  ORDER BY o2.written_at DESC, o2.bkey DESC LIMIT 1) AS last_bkey, o.bkey
                FROM {_OUTPUT_FROM} WHERE b.batch_id = ? AND o.kind < 2 ORDER BY o.i, o.kind, o.seq""",
            (batch_id,)).fetchall()
        for row in rows:
            mine = _output(row[:-2])
            if row[-2] == row[-1]:
                yield mine, mine
                continue
            yield mine, self.last_writer(mine.out_dev, mine.out_ino, mine.rel)  # type: ignore[arg-type]

    def outputs_of(self, batch_id: str) -> Iterator[Output]:
        """Everything a batch recorded as completed (files and file-less results), item order."""
        self.materialize()
        cur = self.db.execute(f"SELECT {_OUTPUT_COLUMNS} FROM {_OUTPUT_FROM} WHERE b.batch_id = ? "
                              "ORDER BY o.i, o.kind", (batch_id,))
        for row in cur:
            yield _output(row)

    def by_input(self, dev: int, ino: int, fingerprint: str | None = None) -> list[Output]:
        """The completed results made from the input with this identity (device, inode),
        optionally only with this pipeline fingerprint; newest first. No refresh."""
        self.materialize()
        sql = (f"SELECT {_OUTPUT_COLUMNS} FROM {_OUTPUT_FROM} WHERE it.dev = ? AND it.ino = ? AND o.current = 1"
               + (" AND b.fingerprint = ?" if fingerprint is not None else "")
               + " ORDER BY o.written_at DESC, o.bkey DESC, o.kind")
        args = (dev, ino, fingerprint) if fingerprint is not None else (dev, ino)
        return [_output(r) for r in self.db.execute(sql, args)]

    def batch(self, batch_id: str) -> BatchRow | None:
        row = self.db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        return None if row is None else _batch(row)

    def batches_into(self, out_dev: int, out_ino: int, live_only: bool = False) -> list[BatchRow]:
        """The batches whose output folder is this one (by identity), oldest first; with
        `live_only`, those not finished (they still claim their output paths). No refresh."""
        rows = self.db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE out_dev = ? AND out_ino = ? "
                               "ORDER BY batch_id", (out_dev, out_ino)).fetchall()
        out = [_batch(r) for r in rows]
        return [b for b in out if not b.finished] if live_only else out

    def indexed(self) -> dict[str, tuple[BatchRow, tuple[int, int, int]]]:
        """Every indexed batch: its row and the journal's (device, inode, size) it was indexed up
        to. No refresh: a row is current while its journal's stat still says the same."""
        return {r[0]: (_batch(r[:8]), (r[8], r[9], r[10])) for r in
                self.db.execute(f"SELECT {_BATCH_COLUMNS}, j_dev, j_ino, j_offset FROM batches")}

    def batches_with(self, out_dev: int | None, out_ino: int | None, fingerprint: str) -> list[str]:
        """For `sync`: the batches with this pipeline fingerprint into this output folder (by
        identity; None: batches that write no file), newest first. No refresh."""
        where = "out_dev = ? AND out_ino = ?" if out_dev is not None else "out_dev IS NULL AND ? IS NULL AND ? IS NULL"
        return [r[0] for r in self.db.execute(f"SELECT batch_id FROM batches WHERE {where} AND fingerprint = ? "
                                              "ORDER BY batch_id DESC", (out_dev, out_ino, fingerprint))]

    def counts(self) -> dict[str, int]:
        self.materialize()
        db = self.db
        return {"batches": db.execute("SELECT count(*) FROM batches").fetchone()[0],
                "items": db.execute("SELECT count(*) FROM items").fetchone()[0],
                "outputs": db.execute("SELECT count(*) FROM outputs WHERE kind < 2").fetchone()[0]}


class _Folder:
    """Folds journal records into the outputs table and the batch's state, in groups. Every
    file an item's completions named keeps a row (a redone item may have changed its output's
    extension); only the rows of its last completion are `current`, and only while the item's
    last record is that completion."""

    def __init__(self, db: sqlite3.Connection, bkey: int, fresh: bool):
        self.db, self.bkey, self.fresh = db, bkey, fresh
        self.out_dev, self.out_ino = db.execute("SELECT out_dev, out_ino FROM batches WHERE bkey = ?",
                                                (bkey,)).fetchone()
        self.rows: dict[tuple, tuple] = {}  # (i, kind, rel) -> (record number, row)
        self.last: dict[int, int] = {}  # i -> record number of its last completion in this group
        self.undone: set[int] = set()  # items whose last record is not a completion
        self.state: str | None = None
        self.flushed = bytearray()  # fresh index: items with rows from an earlier group (one byte each)

    def fold(self, records: Iterator[dict[str, Any]]) -> int:
        n = 0
        for rec in records:
            n += 1
            kind = rec.get("type")
            i = rec.get("i")
            if kind == "item_completed" and isinstance(i, int):
                for row in self._rows(i, rec):
                    self.rows[(i, row[2], row[3])] = (n, row)
                self.last[i] = n
                self.undone.discard(i)
            elif kind in ("item_failed", "item_skipped", "item_pending") and isinstance(i, int):
                self.undone.add(i)
            elif kind == "items_requeued":  # back to pending (failed items have nothing to withdraw)
                self.undone.update(j for j in rec.get("items", ()) if isinstance(j, int))
            elif kind in STATES:
                self.state = rec.get("status", "completed") if kind == "batch_finished" else STATES[kind]
            if len(self.rows) + len(self.undone) >= FLUSH_ROWS:
                self.flush()
        self.flush()
        if self.state is not None:
            self.db.execute("UPDATE batches SET state = ? WHERE bkey = ?", (self.state, self.bkey))
        return n

    def _rows(self, i: int, rec: dict[str, Any]) -> list[tuple]:
        """One row per file the record names (each variant's output, the routed link), or one
        KIND_NONE row for a result without a file."""
        src_stat = rec.get("src_stat") or (None, None)
        files = [(KIND_OUT, out) for out in outputs_of(rec) if not out.get("shard")]  # a tar member is no file
        if rec.get("routed"):
            files.append((KIND_ROUTED, {**rec, "out": rec["routed"]}))
        rows = []
        for kind, f in files or [(KIND_NONE, {**rec, "out": ""})]:
            digest = f.get("sha256")
            rows.append((self.bkey, i, kind, os.fsencode(f["out"]), bytes.fromhex(digest) if digest else None,
                         f.get("bytes"), f.get("mtime"), rec.get("t"), rec.get("seq"), src_stat[0], src_stat[1],
                         self.out_dev, self.out_ino))
        return rows

    def flush(self) -> None:
        db, bkey = self.db, self.bkey
        touched = {i for i, _, _ in self.rows} | self.undone
        if touched:
            _unlink(db, bkey, touched)
        if not self.fresh:  # rows from earlier refreshes are no longer the items' last completions
            earlier = touched
        else:
            earlier = {i for i in touched if i < len(self.flushed) and self.flushed[i]}
            top = max((i for i, _, _ in self.rows), default=-1)
            if top >= len(self.flushed):
                self.flushed.extend(bytes(top + 1 - len(self.flushed)))
            for i, _, _ in self.rows:
                self.flushed[i] = 1
        if earlier:
            db.executemany("UPDATE outputs SET current = 0 WHERE bkey = ? AND i = ?", [(bkey, i) for i in earlier])
        if self.rows:
            db.executemany(
                "INSERT OR REPLACE INTO outputs (bkey, i, kind, rel, sha256, size, mtime, written_at, seq,"
                " src_size, src_mtime, out_dev, out_ino, current) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*row, int(n == self.last[row[1]] and row[1] not in self.undone)) for n, row in self.rows.values()])
        self.rows.clear()
        self.last.clear()
        self.undone.clear()


STATES = {"header": "pending", "batch_started": "running", "batch_resumed": "running",
           "batch_paused": "paused", "batch_interrupted": "interrupted", "batch_cancelled": "cancelled",
           "batch_finished": "completed"}
"""Record types that set a batch's state, and the state (batch_finished: its `status`)."""


def out_identity(man: dict[str, Any]) -> tuple[int | None, int | None]:
    """A manifest's output folder (device, inode); (None, None) without one."""
    dev, ino = man.get("out_dev"), man.get("out_ino")
    if man.get("out_dir") and dev is None:  # a batch from before folder identities were recorded
        with contextlib.suppress(OSError):
            st = os.stat(man["out_dir"])
            dev, ino = st.st_dev, st.st_ino
    return dev, ino


def _items(path: str, linked: bytearray | None) -> Iterator[dict[str, Any]]:
    """items.jsonl's records but those set in `linked` (by line: line n holds item n)."""
    with open(path, "rb") as fh:
        for n, line in enumerate(fh):
            if linked is not None and n < len(linked) and linked[n]:
                continue
            rec = jsonio.loads(line)
            if linked is not None and rec["i"] != n:
                raise RuntimeError(f"{path}: line {n + 1} holds item {rec['i']}")
            yield rec


def _schema(db: sqlite3.Connection) -> int | None:
    """The schema version of an open catalog; None for an empty file."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return None if row is None else row[0]


def _tail_crc(path: str, offset: int) -> int:
    """CRC of the TAIL bytes before `offset` (0 for an empty prefix)."""
    if offset <= 0:
        return 0
    start = max(0, offset - TAIL)
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            return zlib.crc32(fh.read(offset - start))
    except OSError:
        return -1


def index_quietly(home: str, batch_id: str) -> None:
    """Fold what the journals gained into the catalog as a sync's run ends, while its journal is
    fresh in the page cache: the next sync of those inputs asks the catalog at once instead of
    folding this batch's results first (100,000 of them: about 1.4 s of that sync). A cache:
    a failure is logged, and the next command that needs the catalog folds the journal."""
    try:
        with Catalog(home) as cat:
            cat.refresh()
    except (OSError, sqlite3.Error) as exc:
        log.warning("the output catalog will index batch %s later (%s)", batch_id, exc)
