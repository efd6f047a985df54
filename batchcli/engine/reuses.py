"""The catalog's `reuses` rows (engine/catalog.py's schema): items i .. i+n-1 of batch bkey hold
the results (outputs rows) and inputs (items rows) of items src_i .. src_i+n-1 of batch
src_bkey, recorded with seqs seq .. seq+n-1 at written_at. `sync` writes one such row per run
of consecutive results it reuses (engine/sync.py) instead of copying their rows: a sync of
100,000 items with nothing changed adds one row. Only sync's own question reads them; before
any other question, and before either batch's rows for those items change or the source batch
is dropped, they become rows of their own (`materialize`), the rows a copy would have made."""

from __future__ import annotations

import sqlite3


def materialize(db: sqlite3.Connection, bkey: int) -> None:
    """A batch's `reuses` rows become outputs and items rows of its own (what Catalog._copy
    writes: a file-less result has no digest, size or mtime; the input's stat is not copied)."""
    db.execute("""INSERT OR REPLACE INTO items (bkey, i, src, dev, ino, size, mtime)
                  SELECT r.bkey, r.i + it.i - r.src_i, it.src, it.dev, it.ino, it.size, it.mtime
                  FROM reuses r JOIN items it ON it.bkey = r.src_bkey AND it.i BETWEEN r.src_i AND r.src_i + r.n - 1
                  WHERE r.bkey = ?""", (bkey,))
    db.execute("""INSERT OR REPLACE INTO outputs (bkey, i, kind, rel, sha256, size, mtime, written_at, seq,
                      src_size, src_mtime, out_dev, out_ino, current)
                  SELECT r.bkey, r.i + o.i - r.src_i, o.kind, o.rel, CASE o.kind WHEN 2 THEN NULL ELSE o.sha256 END,
                         CASE o.kind WHEN 2 THEN NULL ELSE o.size END, CASE o.kind WHEN 2 THEN NULL ELSE o.mtime END,
                         r.written_at, r.seq + o.i - r.src_i, NULL, NULL, o.out_dev, o.out_ino, 1
                  FROM reuses r JOIN outputs o ON o.bkey = r.src_bkey AND o.i BETWEEN r.src_i AND r.src_i + r.n - 1
                       AND o.current = 1
                  WHERE r.bkey = ?""", (bkey,))
    db.execute("DELETE FROM reuses WHERE bkey = ?", (bkey,))


def unlink(db: sqlite3.Connection, bkey: int, touched: set[int]) -> None:
    """Before a batch's rows for these items change: the `reuses` rows that cover them, as the
    reusing batch's items or as the source's, become rows of their own."""
    ranges = db.execute("SELECT bkey, i, n FROM reuses WHERE bkey = ? UNION ALL "
                        "SELECT bkey, src_i, n FROM reuses WHERE src_bkey = ?", (bkey, bkey)).fetchall()
    if not ranges:
        return
    from bisect import bisect_left

    order = sorted(touched)
    for owner in {b for b, start, n in ranges if (k := bisect_left(order, start)) < len(order) and order[k] < start + n}:
        materialize(db, owner)


def rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any: SQLite ends it itself on a full disk, and a
    ROLLBACK then would fail with "no transaction is active", hiding why."""
    if db.in_transaction:
        db.execute("ROLLBACK")
