"""The journal: self-checking records, torn tails, flipped bits, replay = last record wins."""

from __future__ import annotations

import json
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcli.engine.journal import COMPLETED, FAILED, PENDING, SKIPPED, JournalWriter, decode, encode, iter_records, replay

TOTAL = 12
events = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["item_completed", "item_failed", "item_skipped"]), st.integers(0, TOTAL - 1)),
        st.tuples(st.sampled_from(["batch_started", "batch_paused", "batch_resumed"]), st.none()),
    ),
    max_size=60,
)
STATE = {"item_completed": COMPLETED, "item_failed": FAILED, "item_skipped": SKIPPED}


def write(path, seq):
    with JournalWriter(str(path)) as j:
        j.append("header", total=TOTAL)
        for kind, i in seq:
            if i is None:
                j.append(kind)
            else:
                j.append(kind, i=i, error="x: boom" if kind == "item_failed" else None)


@settings(max_examples=150, deadline=None)
@given(events)
def test_replay_is_last_record_per_item(tmp_path_factory, seq):
    path = tmp_path_factory.mktemp("j") / "journal.jsonl"
    write(path, seq)
    expect = [PENDING] * TOTAL
    for kind, i in seq:
        if i is not None:
            expect[i] = STATE[kind]
    st_ = replay(str(path), TOTAL)
    assert list(st_.items) == expect
    assert st_.completed == expect.count(COMPLETED)
    assert st_.failed == expect.count(FAILED)
    assert st_.remaining == expect.count(PENDING)
    assert not st_.bad
    # every line is plain JSON that jq (or json.loads) reads
    for line in path.read_text().splitlines():
        assert isinstance(json.loads(line), dict)


@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-2**63, 2**63 - 1), st.text(),
                                                       st.floats(allow_nan=False, allow_infinity=False),
                                                       st.none(), st.booleans()), max_size=6))
def test_encode_decode_round_trip(rec):
    rec = {k: v for k, v in rec.items() if k != "crc"}
    line = encode(rec)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line[:-1]) == rec


def _journal(tmp_path, n=5):
    path = tmp_path / "journal.jsonl"
    with JournalWriter(str(path)) as j:
        j.append("header", total=n)
        j.append("batch_started", pid=1)
        for i in range(n):
            j.append("item_completed", i=i, out=f"o{i}.jpg", bytes=10, sha256="ab" * 32, ms=1.0)
    return path


def test_torn_tail_at_every_offset_of_the_last_records(tmp_path):
    path = _journal(tmp_path)
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    start_of_last_two = len(data) - len(lines[-1]) - len(lines[-2])
    for cut in range(start_of_last_two, len(data)):
        torn = tmp_path / "torn.jsonl"
        torn.write_bytes(data[:cut])
        st_ = replay(str(torn), 5)
        complete_lines = data[:cut].count(b"\n")
        # records before the tear all count; the torn one is reported, never fatal
        assert st_.records == complete_lines
        assert st_.completed == complete_lines - 2
        assert len(st_.bad) == (0 if data[:cut].endswith(b"\n") else 1)


def test_flipped_bit_is_detected_and_skipped(tmp_path):
    path = _journal(tmp_path)
    data = bytearray(path.read_bytes())
    rnd = random.Random(7)
    lines = data.splitlines(keepends=True)
    line_start = sum(len(x) for x in lines[:3])  # the first item record
    for _ in range(40):
        corrupt = bytearray(data)
        pos = line_start + rnd.randrange(len(lines[3]) - 1)  # not the newline itself
        corrupt[pos] ^= 1 << rnd.randrange(8)
        if corrupt[pos] == 0x0A:  # a new newline: splits the record; still detected
            pass
        bad_path = tmp_path / "bad.jsonl"
        bad_path.write_bytes(bytes(corrupt))
        st_ = replay(str(bad_path), 5)
        assert st_.completed == 4, f"flip at {pos} was not detected"
        assert st_.bad


def test_writer_appends_after_a_torn_tail_on_a_fresh_line(tmp_path):
    path = _journal(tmp_path)
    with open(path, "ab") as fh:
        fh.write(b'{"seq":99,"t":1,"type":"item_comp')  # a crash mid-write
    st_ = replay(str(path), 5)
    with JournalWriter(str(path), st_.last_seq) as j:
        j.append("item_failed", i=0, error_class="decode", error="x: bad")
    st2 = replay(str(path), 5)
    assert st2.items[0] == FAILED and st2.completed == 4
    assert len(st2.bad) == 1 and "checksum" in st2.bad[0].reason


def test_group_commit_writes_everything_on_close(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = JournalWriter(str(path))
    for i in range(3000):
        j.append("item_completed", i=i)
    j.close()
    assert sum(1 for _ in iter_records(str(path))) == 3000
    assert os.path.getsize(path) > 0


def test_cancelled_batch_skips_remaining_items(tmp_path):
    path = tmp_path / "journal.jsonl"
    with JournalWriter(str(path)) as j:
        j.append("header", total=4)
        j.append("batch_started")
        j.append("item_completed", i=0)
        j.append("item_failed", i=1, error_class="decode", error="a: b")
        j.append("batch_cancelled")
    st_ = replay(str(path), 4)
    assert st_.state == "cancelled"
    assert list(st_.items) == [COMPLETED, FAILED, SKIPPED, SKIPPED]


@pytest.mark.parametrize("line", [b"", b"{}", b'{"a":1}', b'{"a":1,"crc":"zzzzzzzz"}', b"not json"])
def test_decode_rejects_garbage(line):
    assert decode(line) is None


def test_snapshot_is_a_cache_of_the_full_replay(tmp_path):
    from batchcli.engine.journal import checkpoint

    path = tmp_path / "journal.jsonl"
    with JournalWriter(str(path)) as j:
        j.append("header", total=50)
        j.append("batch_started")
        for i in range(30):
            j.append("item_completed", i=i)
        j.append("item_failed", i=3, error_class="decode", error="a: bad")
    checkpoint(str(path), 50)
    assert (tmp_path / "journal.jsonl.snapshot").exists()
    with JournalWriter(str(path), replay(str(path), 50).last_seq) as j:
        for i in range(30, 45):
            j.append("item_completed", i=i)
        j.append("batch_paused", reason="x")
    fast, full = replay(str(path), 50), replay(str(path), 50, use_snapshot=False)
    assert list(fast.items) == list(full.items)
    assert (fast.completed, fast.failed, fast.state, fast.records, fast.last_seq) == \
           (full.completed, full.failed, full.state, full.records, full.last_seq) == (44, 1, "paused", 49, 49)
    # a journal changed under the snapshot (a flipped bit in the prefix): the snapshot is ignored
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    assert list(replay(str(path), 50).items) == list(replay(str(path), 50, use_snapshot=False).items)
    assert replay(str(path), 50).bad


def test_failure_reasons_count_items_failed_now(tmp_path):
    path = tmp_path / "journal.jsonl"
    with JournalWriter(str(path)) as j:
        j.append("header", total=4)
        j.append("item_failed", i=0, error_class="decode", error="a.jpg: bad data")
        j.append("item_failed", i=1, error_class="decode", error="b.jpg: bad data")
        j.append("item_failed", i=2, error_class="timeout", error="c.jpg: slow")
        j.append("item_failed", i=0, error_class="decode", error="a.jpg: bad data")  # retried, same
        j.append("item_completed", i=2)  # retried, worked
        j.append("items_requeued", items=[1])
    st_ = replay(str(path), 4)
    assert dict(st_.failures) == {"decode: bad data": 1}
    assert st_.failed == 1


def test_a_snapshot_this_process_saved_is_not_read_back_until_its_journal_changes(tmp_path):
    """The CRC of the journal a snapshot was taken of is remembered by the process that saved it
    (engine/crcmemo.py): while the journal's identity, size and mtime are as they were, a replay
    takes the snapshot without reading the journal back; a journal changed in place, even to the
    same size, is read back, and the snapshot that no longer matches it is ignored."""
    import json as _json

    from batchcli.engine import crcmemo
    from batchcli.engine.journal import checkpoint

    path = tmp_path / "journal.jsonl"
    with JournalWriter(str(path)) as j:
        j.append("header", total=20)
        for i in range(12):
            j.append("item_completed", i=i)
    checkpoint(str(path), 20)
    head = _json.loads((tmp_path / "journal.jsonl.snapshot").read_bytes().split(b"\n", 1)[0])
    assert crcmemo.known(str(path), head["offset"], head["crc"])
    assert replay(str(path), 20).completed == 12
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not crcmemo.known(str(path), head["offset"], head["crc"])
    fast = replay(str(path), 20)
    assert fast.bad and list(fast.items) == list(replay(str(path), 20, use_snapshot=False).items)


def test_last_options_without_a_replay_with_and_without_a_snapshot(tmp_path):
    from batchcli.engine.journal import checkpoint, last_options

    path = str(tmp_path / "journal.jsonl")
    with JournalWriter(path) as j:
        j.append("header", total=3)
        j.append("batch_started", pid=1, workers=2, options={"workers": 2, "retries": 3})
        j.append("item_completed", i=0, out="a.png")
        j.append("batch_paused", reason="x")
    assert last_options(path, 3) == {"workers": 2, "retries": 3}
    checkpoint(path, 3)  # the snapshot holds them; later lines still win
    assert last_options(path, 3) == {"workers": 2, "retries": 3}
    with JournalWriter(path, 10) as j:
        j.append("batch_resumed", pid=2, workers=1, options={"workers": 1})
        j.append("item_completed", i=1, out="b.png")
    with open(path, "ab") as fh:  # a torn start record after a crash is not believed
        fh.write(encode({"seq": 99, "type": "batch_resumed", "options": {"workers": 9}})[:-12])
    assert last_options(path, 3) == {"workers": 1} == replay(path, 3).options


def test_fold_completed_is_fold_of_one_completion_per_item():
    """journal.fold_completed (sync's reused records, in bulk) leaves the state `fold` leaves:
    a failed item completed since is no longer counted among the failures."""
    from batchcli.engine.journal import Replay, fold, fold_completed

    def start() -> Replay:
        st = Replay(total=6, items=bytearray(6))
        st.counts[0] = 6
        fold(st, {"seq": 1, "type": "item_failed", "i": 2, "error_class": "decode", "error": "a: bad"})
        fold(st, {"seq": 2, "type": "item_completed", "i": 4})
        return st

    for items in ([0, 2, 4, 5, 9], [1, 2, 3], [0, 1], [5], [3, 4, 5], []):  # (runs of pending items: in one go)
        one, bulk = start(), start()
        for seq, i in enumerate(items, 3):
            fold(one, {"seq": seq, "type": "item_completed", "i": i})
        fold_completed(bulk, items, 2 + len(items))
        assert (bulk.items, +bulk.counts, bulk.failures, bulk.fail_key, bulk.records, bulk.last_seq) == \
            (one.items, +one.counts, one.failures, one.fail_key, one.records, one.last_seq), items
    assert bulk.completed == 1 and bulk.failed == 1
    fold_completed(bulk, [0, 1, 2, 3, 4, 5], 9)
    assert bulk.completed == 6 and bulk.failed == 0 and not bulk.failures


@pytest.mark.parametrize("shards", [False, True])
def test_a_run_s_snapshot_is_what_a_full_replay_of_its_journal_saves(tmp_path, shards):
    """The runner folds each record as it writes it and saves that fold as the snapshot when the
    run ends, instead of reading the run's records back: the same bytes a full replay saves,
    after a run with a failed item and after a resume that retries it."""
    from crashops import batch_dir, make_pngs, run

    from batchcli.engine.journal import SNAPSHOT_SUFFIX, checkpoint

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 30, size=16)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    flags = ["--shards", "tar", "--shard-size", "7"] if shards else []
    r = run(home, "start", src, "--out", out, "-w", "2", "--pipeline", "resize 8x8", "--quiet", *flags)
    assert r.returncode == 1, r.stderr
    journal = os.path.join(batch_dir(home), "journal.jsonl")
    for resumed in (False, True):
        if resumed:
            r = run(home, "resume", os.path.basename(batch_dir(home)), "--retry-failed", "--quiet")
            assert r.returncode == 1, r.stderr
        saved = open(journal + SNAPSHOT_SUFFIX, "rb").read()
        os.unlink(journal + SNAPSHOT_SUFFIX)
        full = checkpoint(journal, 31)
        assert open(journal + SNAPSHOT_SUFFIX, "rb").read() == saved
        assert (full.completed, full.failed, full.state) == (30, 1, "completed")


def test_a_torn_or_empty_snapshot_is_ignored(tmp_path):
    """The snapshot is a cache written without fsync: what a crash may leave of it (nothing,
    part of it, zeros) is not used, and the replay reads the journal itself."""
    from batchcli.engine.journal import SNAPSHOT_SUFFIX, checkpoint

    path = str(tmp_path / "journal.jsonl")
    with JournalWriter(path) as j:
        j.append("header", total=20)
        for i in range(15):
            j.append("item_completed", i=i)
        j.append("item_failed", i=15, error_class="decode", error="x: bad")
    checkpoint(path, 20)
    whole = open(path + SNAPSHOT_SUFFIX, "rb").read()
    full = replay(path, 20, use_snapshot=False)
    for torn in (b"", whole[:len(whole) // 2], whole[:-3], bytes(len(whole))):
        with open(path + SNAPSHOT_SUFFIX, "wb") as fh:
            fh.write(torn)
        st_ = replay(path, 20)
        assert (list(st_.items), st_.counts, dict(st_.failures), st_.last_seq) == \
               (list(full.items), full.counts, dict(full.failures), full.last_seq)
