"""The output catalog: derived from the journals, incremental, rebuilt when missing or corrupt."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from crashops import create, make_pngs, run

from batchcli.engine.catalog import FILENAME, KIND_OUT, Catalog
from batchcli.engine.journal import JournalWriter, replay

RUN = ("--min-free-space", "0", "--workers", "1")


def _done(home, src, out, pipeline="convert png", name=None):
    paths = create(home, [src], out, pipeline, name=name)
    r = run(home, "resume", paths.id, *RUN)
    assert r.returncode == 0, r.stderr
    return paths


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Batches A then B, both into out/ from the same three inputs (B overwrites A's files)."""
    root = tmp_path_factory.mktemp("cat")
    home, src, out = root / "home", root / "in", root / "out"
    make_pngs(src, 3)
    a = _done(home, src, out, name="A")
    b = _done(home, src, out, name="B")
    return home, src, out, a, b


def _answers(cat: Catalog, a, b, src, out) -> list:
    st = os.stat(out)
    first = os.stat(src / "img000.png")
    return [list(cat.outputs_of(a.id)), list(cat.outputs_of(b.id)),
            [(m.rel, last.batch_id) for m, last in cat.last_writers(a.id)],
            cat.last_writer(st.st_dev, st.st_ino, "img001.png"),
            cat.by_input(first.st_dev, first.st_ino, a.load_manifest()["fingerprint"]),
            [r.batch_id for r in cat.batches_into(st.st_dev, st.st_ino)]]


def test_each_output_is_recorded_with_its_folder_input_and_pipeline(two):
    home, src, out, a, b = two
    with Catalog(str(home)) as cat:
        cat.refresh()
        rows = list(cat.outputs_of(b.id))
    assert [r.rel for r in rows] == ["img000.png", "img001.png", "img002.png"]
    folder = os.stat(out)
    for k, r in enumerate(rows):
        path = out / r.rel
        data = path.read_bytes()
        st, inp = os.stat(path), os.stat(src / f"img{k:03d}.png")
        assert (r.batch_id, r.i, r.kind, r.path) == (b.id, k, KIND_OUT, str(path))
        assert (r.out_path, r.out_dev, r.out_ino) == (str(out), folder.st_dev, folder.st_ino)
        assert (r.sha256, r.size, r.mtime) == (hashlib.sha256(data).hexdigest(), len(data), st.st_mtime)
        assert (r.src, r.src_dev, r.src_ino, r.src_size, r.src_mtime) == \
            (str(src / f"img{k:03d}.png"), inp.st_dev, inp.st_ino, inp.st_size, inp.st_mtime)
        assert r.fingerprint == b.load_manifest()["fingerprint"] and r.current


def test_the_newest_write_of_a_path_is_its_last_writer(two):
    home, src, out, a, b = two
    with Catalog(str(home)) as cat:
        cat.refresh()
        pairs = list(cat.last_writers(a.id))
        assert [(m.batch_id, last.batch_id) for m, last in pairs] == [(a.id, b.id)] * 3
        assert all(m.written_at < last.written_at for m, last in pairs)
        assert [(m.batch_id, last.batch_id) for m, last in cat.last_writers(b.id)] == [(b.id, b.id)] * 3
        st = os.stat(out)
        assert [r.batch_id for r in cat.batches_into(st.st_dev, st.st_ino)] == [a.id, b.id]
        assert cat.batches_into(st.st_dev, st.st_ino, live_only=True) == []
        first = os.stat(src / "img000.png")
        assert [r.batch_id for r in cat.by_input(first.st_dev, first.st_ino)] == [b.id, a.id]
        assert cat.by_input(first.st_dev, first.st_ino, "no such fingerprint") == []


def test_refresh_reads_only_what_the_journals_gained(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 3)
    a = _done(home, src, out)
    with Catalog(str(home)) as cat:
        first = cat.refresh()
        assert first["batches"] == 1 and first["records"] == sum(1 for _ in open(a.journal, "rb"))
        assert cat.refresh() == {"batches": 0, "dropped": 0, "records": 0}  # nothing new: no journal read
        with JournalWriter(a.journal, replay(a.journal, 3).last_seq) as j:  # a repair re-queues item 1
            j.append("items_requeued", items=[1], reason="repair")
        assert cat.refresh() == {"batches": 1, "dropped": 0, "records": 1}
        st = os.stat(src / "img001.png")
        assert cat.by_input(st.st_dev, st.st_ino) == []  # pending again: no current result
        assert [r.current for r in cat.outputs_of(a.id)] == [True, False, True]
        b = _done(home, src, out)
        assert cat.refresh()["batches"] == 1  # only B is read
        shutil.rmtree(b.dir)
        assert cat.refresh()["dropped"] == 1
        assert [r.batch_id for r in cat.batches_into(os.stat(out).st_dev, os.stat(out).st_ino)] == [a.id]


def test_a_replaced_journal_is_indexed_again(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 2)
    a = _done(home, src, out)
    with Catalog(str(home)) as cat:
        cat.refresh()
        lines = open(a.journal, "rb").readlines()
        kept = [ln for ln in lines if b'"i":1,' not in ln]  # a journal without item 1's completion
        tmp = a.journal + ".new"
        with open(tmp, "wb") as fh:
            fh.writelines(kept)
        os.replace(tmp, a.journal)
        cat.refresh()
        assert [r.i for r in cat.outputs_of(a.id)] == [0]


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "schema 1"])
def test_a_missing_or_corrupt_catalog_is_rebuilt_with_the_same_answers(two, tmp_path, damage):
    home, src, out, a, b = two
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    with Catalog(str(copy)) as cat:
        cat.refresh()
        before = _answers(cat, a, b, src, out)
    path = copy / FILENAME
    if damage == "schema 1":  # a catalog from before the `reuses` table: emptied, so only a rebuild answers
        import sqlite3

        db = sqlite3.connect(path)
        db.executescript("DROP TABLE reuses; DELETE FROM outputs; DELETE FROM items; DELETE FROM batches;"
                         " UPDATE meta SET value = 1 WHERE key = 'schema';")
        db.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(path) + suffix):
            os.unlink(str(path) + suffix)
    if damage == "deleted":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    elif damage == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    with Catalog(str(copy)) as cat:
        cat.refresh()
        assert _answers(cat, a, b, src, out) == before
