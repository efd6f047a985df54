"""The append-only JSONL journal: one self-checking record per line, group-committed.

Every line is a JSON object whose last field is ``"crc"``: the CRC-32 (hex) of the same object
serialised without that field. A torn tail (crash mid-write) or a flipped bit is detected,
reported and skipped; the file stays line-per-record JSON that ``jq`` reads.

Replay is the state: the last record for an item wins. Only the process holding the batch
lock writes (see runner.py); any process may read at any time.
"""

from __future__ import annotations

import errno
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from batchcli import jsonio
from batchcli.engine import crcmemo
from batchcli.errors import JournalWriteError

_CRC_KEY = b',"crc":"'

# Item states as stored in the replay array (one byte per item).
PENDING, COMPLETED, FAILED, SKIPPED = 0, 1, 2, 3
STATE_NAMES = {PENDING: "pending", COMPLETED: "completed", FAILED: "failed", SKIPPED: "skipped"}

# Record types that change the batch's lifecycle state, and the state they leave it in.
LIFECYCLE = {
    "header": "pending", "batch_started": "running", "batch_resumed": "running",
    "batch_paused": "paused", "batch_interrupted": "interrupted", "batch_cancelled": "cancelled",
    "batch_finished": None,  # its "status" field says completed or failed
    "batch_scheduled": "scheduled",  # --at / --after: created now, run later
}

RESERVE = "journal.reserve"
RESERVE_BYTES = 64 << 10
"""A file a writer keeps beside the journal and deletes when the disk is full, so that the
records that end the run (the pause and its reason) still fit."""
_FULL = (errno.ENOSPC, errno.EDQUOT)

GROUP_COMMIT_SECONDS = 0.05
"""Flush and fsync the journal at least this often while records are pending."""
GROUP_COMMIT_RECORDS = 1024
"""...or as soon as this many records are pending."""


def encode(record: dict[str, Any]) -> bytes:
    """A record as one journal line (with its CRC field and the newline)."""
    body = jsonio.dumps(record)  # (a file name that is not UTF-8 goes in escaped: batchcli/jsonio.py)
    return b"%s,\"crc\":\"%08x\"}\n" % (body[:-1], zlib.crc32(body))


def decode(line: bytes) -> dict[str, Any] | None:
    """One line (without newline) back to a record, or None when it is torn or corrupt."""
    p = line.rfind(_CRC_KEY)
    if p < 0 or len(line) != p + 18 or not line.endswith(b'"}'):
        return None
    body = line[:p] + b"}"
    try:
        if zlib.crc32(body) != int(line[p + 8 : p + 16], 16):
            return None
        rec = jsonio.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


@dataclass
class BadLine:
    lineno: int
    offset: int
    reason: str


def iter_records(path: str, bad: list[BadLine] | None = None, start: int = 0, first_line: int = 1,
                 pos: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Stream the valid records of a journal. Corrupt lines are skipped and appended to `bad`;
    an unterminated last line is a write still in progress (or torn by a crash) and is skipped too.
    `pos`, when given, is kept at [offset after the last complete line, lines read]."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        offset = start
        if start:
            fh.seek(start)
        lineno = first_line - 1
        for lineno, raw in enumerate(fh, first_line):
            n = len(raw)
            if raw.endswith(b"\n"):
                rec = decode(raw[:-1])
                offset += n
                if pos is not None:
                    pos[0], pos[1] = offset, lineno
                if rec is not None:
                    yield rec
                elif bad is not None and raw.strip():
                    bad.append(BadLine(lineno, offset - n, "checksum mismatch or malformed line"))
            elif bad is not None:
                bad.append(BadLine(lineno, offset, "torn final line (incomplete write)"))


@dataclass
class Replay:
    """The state of a batch as the journal tells it."""

    total: int
    items: bytearray
    header: dict[str, Any] | None = None
    state: str = "pending"
    reason: str | None = None  # why paused / failed / interrupted
    counts: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)  # "class: reason" -> failed items now
    fail_key: dict = field(default_factory=dict)  # item -> its failure reason, while it is failed
    times: dict[str, float] = field(default_factory=dict)  # created, started, paused, finished
    runner_pid: int | None = None
    last_seq: int = 0
    records: int = 0
    bad: list[BadLine] = field(default_factory=list)
    workers: int | None = None
    options: dict | None = None  # the run flags the last start or resume was given
    worker_rss: int | None = None  # the largest worker memory (RSS, bytes) measured by a run
    schedule: dict | None = None  # when a scheduled batch may start: {"at", "after", "after_success"}
    executor: str | None = None
    offset: int = 0  # bytes of the journal folded in (always the end of a complete line)
    lines: int = 0  # complete lines folded in
    crc_at: tuple[int, int] | None = None  # (offset, CRC-32 of the journal's bytes before it), when known

    @property
    def completed(self) -> int:
        return self.counts[COMPLETED]

    @property
    def failed(self) -> int:
        return self.counts[FAILED]

    @property
    def skipped(self) -> int:
        return self.counts[SKIPPED]

    @property
    def remaining(self) -> int:
        return self.total - self.completed - self.failed - self.skipped


_MAX_REASONS = 1000


def failure_key(error_class: str | None, error: str | None) -> str:
    """Group failures by class and the reason without the file name (`path: reason`)."""
    msg = (error or "").split(": ", 1)[-1] if error and ": " in error else (error or "")
    return f"{error_class or 'error'}: {msg[:120]}"


def replay(path: str, total: int, use_snapshot: bool = True, base: Replay | None = None,
           on_record: Callable[[Replay, dict[str, Any]], None] | None = None) -> Replay:
    """Fold the journal into a Replay. Memory: one byte per item plus small counters.

    A snapshot written by `checkpoint` (by the lock holder) is a cache of this fold up to a byte
    offset; it is used only when the journal's bytes up to that offset still match its CRC, and
    the rest of the journal is folded on top. Without one, the whole journal is read.

    `base`, a Replay of this journal from an earlier call, is folded further in place: only the
    lines appended since are read (a reader that follows a live batch). `on_record(st, rec)` is
    called after each record is folded in."""
    st = base if base is not None else _load_snapshot(path, total) if use_snapshot else None
    if st is None:
        st = Replay(total=total, items=bytearray(total))
        st.counts[PENDING] = total
    pos = [st.offset, st.lines]
    for rec in iter_records(path, st.bad, start=st.offset, first_line=st.lines + 1, pos=pos):
        fold(st, rec)
        if on_record is not None:
            on_record(st, rec)
    st.offset, st.lines = pos
    return st


def fold(st: Replay, rec: dict[str, Any]) -> None:
    """One record, as written, into the state (what `replay` does with each line)."""
    st.records += 1
    st.last_seq = rec.get("seq", st.last_seq)
    _fold(st, rec)


def fold_completed(st: Replay, items: list[int], last_seq: int) -> None:
    """`fold` of one `item_completed` record for each of `items` (distinct), the last numbered
    `last_seq`: what a run of such records leaves, without a dict per record."""
    states, counts, total = st.items, st.counts, st.total
    st.records += len(items)
    st.last_seq = last_seq
    if not items:
        return
    lo, hi = min(items), max(items)
    if 0 <= lo and hi < total and hi - lo + 1 == len(items) and states.count(PENDING, lo, hi + 1) == len(items):
        states[lo:hi + 1] = bytes([COMPLETED]) * len(items)  # a run of pending items (a fresh sync batch's)
        counts[PENDING] -= len(items)
        counts[COMPLETED] += len(items)
        return
    for i in items:
        if 0 <= i < total:
            old = states[i]
            if old != COMPLETED:
                if old == FAILED:
                    _unfail(st, i)
                counts[old] -= 1
                counts[COMPLETED] += 1
                states[i] = COMPLETED


def _fold(st: Replay, rec: dict[str, Any]) -> None:
    """One record into the state (the last record for an item wins)."""
    total, items, counts = st.total, st.items, st.counts
    kind = rec.get("type")
    i = rec.get("i")
    if i is not None:
        if not (0 <= i < total):
            return
        new = _ITEM_STATES.get(kind)
        if new is None:
            return
        old = items[i]
        if old == FAILED:
            _unfail(st, i)
        if old != new:
            counts[old] -= 1
            counts[new] += 1
            items[i] = new
        if new == FAILED and len(st.fail_key) < _MAX_TRACKED:
            key = failure_key(rec.get("error_class"), rec.get("error"))
            if key in st.failures or len(st.failures) < _MAX_REASONS:
                key = st.fail_key[i] = _intern.setdefault(key, key)
                st.failures[key] += 1
        return
    if kind == "items_requeued":  # resume --retry-failed / --repair: back to pending
        for j in rec.get("items", ()):
            if 0 <= j < total and items[j] != PENDING:
                if items[j] == FAILED:
                    _unfail(st, j)
                counts[items[j]] -= 1
                counts[PENDING] += 1
                items[j] = PENDING
        if rec.get("all_failed"):
            st.failures.clear()
            st.fail_key.clear()
            for j in range(total):
                if items[j] == FAILED:
                    items[j] = PENDING
            counts[PENDING] += counts[FAILED]
            counts[FAILED] = 0
        return
    if kind in LIFECYCLE:
        _lifecycle(st, kind, rec)


_MAX_TRACKED = 200_000
"""Failed items whose reason is tracked (for the top-reasons summary); beyond, counts only."""
_intern: dict[str, str] = {}


def _unfail(st: Replay, i: int) -> None:
    key = st.fail_key.pop(i, None)
    if key is not None:
        st.failures[key] -= 1
        if st.failures[key] <= 0:
            del st.failures[key]


SNAPSHOT_SUFFIX = ".snapshot"


def prefix_crc(path: str, length: int, start: int = 0, crc: int = 0) -> int | None:
    """CRC-32 of the `length` bytes from `start` (continuing `crc`, that of the bytes before)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            left = length
            while left > 0:
                block = fh.read(min(left, 16 << 20))
                if not block:
                    return None
                crc = zlib.crc32(block, crc)
                left -= len(block)
    except OSError:
        return None
    return crc


def checkpoint(path: str, total: int, writer: JournalWriter | None = None) -> Replay:
    """Fold the journal and save the fold as a snapshot beside it, so later replays read only
    what was appended since (unless nothing was: the snapshot is current). Call it only while
    holding the batch lock (the runner, at exit). `writer`: the lock holder's, whose own fold
    is used when it is the whole journal (JournalWriter.checkpoint)."""
    live = writer.checkpoint() if writer is not None else None
    if live is not None:
        return live
    snap = _load_snapshot(path, total)
    taken_at = snap.offset if snap is not None else -1
    st = replay(path, total, base=snap) if snap is not None else replay(path, total, use_snapshot=False)
    if st.offset != taken_at:
        save_snapshot(path, st)
    return st


def _live_copy(path: str, st: Replay) -> Replay:
    """A copy of `st` (the fold of the journal up to its end) for a writer to fold into, with the
    CRC of the bytes before its end when that costs little to know (see save_snapshot)."""
    from dataclasses import replace

    live = replace(st, items=bytearray(st.items), counts=Counter(st.counts), failures=Counter(st.failures),
                   fail_key=dict(st.fail_key), times=dict(st.times), bad=[])
    start, crc = st.crc_at if st.crc_at is not None and st.crc_at[0] <= st.offset else (0, 0)
    if st.offset - start <= 1 << 20:
        crc = prefix_crc(path, st.offset - start, start=start, crc=crc)
        live.crc_at = None if crc is None else (st.offset, crc)
    return live


def save_snapshot(path: str, st: Replay) -> None:
    """Save `st`, the fold of the journal at `path` up to `st.offset`, as its snapshot (see
    `checkpoint`; the lock holder only)."""
    from batchcli.atomic import atomic_write

    known = st.crc_at
    if known is not None and known[0] <= st.offset:  # only the bytes after the known part are read
        crc = prefix_crc(path, st.offset - known[0], start=known[0], crc=known[1])
    else:
        crc = prefix_crc(path, st.offset)
    if crc is None:
        return
    st.crc_at = (st.offset, crc)
    total = st.total
    head = {
        "v": 1, "offset": st.offset, "lines": st.lines, "crc": crc, "total": total,
        "header": st.header, "state": st.state, "reason": st.reason,
        "counts": {str(k): v for k, v in st.counts.items()}, "failures": dict(st.failures),
        "fail_key": {str(k): v for k, v in st.fail_key.items()},
        "times": st.times, "runner_pid": st.runner_pid, "last_seq": st.last_seq, "records": st.records,
        "bad": [[b.lineno, b.offset, b.reason] for b in st.bad if b.offset < st.offset],
        "workers": st.workers, "executor": st.executor, "options": st.options, "worker_rss": st.worker_rss,
        "schedule": st.schedule,
    }
    # a cache, not made durable (no fsync of it or its folder: 1-10 ms at the end of every run):
    # one a crash tore or lost does not parse, or names a prefix of the journal (CRC checked),
    # and the replay reads the journal instead
    atomic_write(path + SNAPSHOT_SUFFIX, jsonio.dumps(head) + b"\n" + bytes(st.items), durable=False)
    crcmemo.remember(path, st.offset, crc)


_RUN_STARTS = (b'"type":"batch_started"', b'"type":"batch_resumed"', b'"type":"batch_scheduled"',
               b'"type":"batch_paused"')  # a run paused while queued records its flags there


def iter_matching(path: str, needles: tuple[bytes, ...], start: int = 0) -> Iterator[dict[str, Any]]:
    """The valid records whose line contains one of `needles` (only those are decoded: a
    quick pass over a big journal for a few kinds of record)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        fh.seek(start)
        for raw in fh:
            if raw.endswith(b"\n") and any(n in raw for n in needles):
                rec = decode(raw[:-1])
                if rec is not None:
                    yield rec


def last_options(path: str, total: int) -> dict | None:
    """The run flags of the last start or resume, without folding the journal: from the
    snapshot when valid, then only the later lines that name a start or a resume are decoded."""
    snap = _load_snapshot(path, total)
    options, start = (snap.options, snap.offset) if snap is not None else (None, 0)
    for rec in iter_matching(path, _RUN_STARTS, start):
        options = rec.get("options", options)
    return options


def _load_snapshot(path: str, total: int) -> Replay | None:
    try:
        with open(path + SNAPSHOT_SUFFIX, "rb") as fh:
            head = jsonio.loads(fh.readline())
            items = bytearray(fh.read())
    except (OSError, ValueError):
        return None
    if head.get("v") != 1 or head.get("total") != total or len(items) != total:
        return None
    if not crcmemo.known(path, head["offset"], head["crc"]) and prefix_crc(path, head["offset"]) != head["crc"]:
        return None  # the journal is not the one the snapshot was taken of: ignore it
    st = Replay(total=total, items=items, header=head["header"], state=head["state"], reason=head["reason"],
                counts=Counter({int(k): v for k, v in head["counts"].items()}),
                failures=Counter(head["failures"]),
                fail_key={int(k): v for k, v in head.get("fail_key", {}).items()}, times=head["times"], runner_pid=head["runner_pid"],
                last_seq=head["last_seq"], records=head["records"],
                bad=[BadLine(*b) for b in head["bad"]], workers=head["workers"], executor=head["executor"],
                options=head.get("options"), worker_rss=head.get("worker_rss"), schedule=head.get("schedule"),
                offset=head["offset"], lines=head["lines"], crc_at=(head["offset"], head["crc"]))
    return st


_ITEM_STATES = {"item_completed": COMPLETED, "item_failed": FAILED, "item_skipped": SKIPPED,
                "item_pending": PENDING}


def _lifecycle(st: Replay, kind: str, rec: dict[str, Any]) -> None:
    t = rec.get("t")
    if kind == "header":
        st.header = rec
        st.times["created"] = t
        st.state = "pending"
        return
    if kind == "batch_finished":
        st.state = rec.get("status", "completed")
        st.times["finished"] = t
    else:
        st.state = LIFECYCLE[kind]
    st.reason = rec.get("reason")
    if rec.get("worker_rss"):
        st.worker_rss = max(st.worker_rss or 0, rec["worker_rss"])
    if kind in ("batch_started", "batch_resumed"):
        st.times.setdefault("started", t)
        st.times.pop("paused", None)
        st.times.pop("finished", None)
        st.runner_pid = rec.get("pid")
        st.workers = rec.get("workers", st.workers)
        st.options = rec.get("options", st.options)
        st.executor = rec.get("executor", st.executor)
    elif kind == "batch_scheduled":
        st.schedule = {k: rec.get(k) for k in ("at", "after", "after_success")}
        st.options = rec.get("options", st.options)
    elif kind == "batch_paused":
        st.times["paused"] = t
        st.options = rec.get("options", st.options)
    elif kind == "batch_cancelled":
        st.times["finished"] = t
        # every item still pending is skipped: computed, not written one record per item
        for j in range(st.total):
            if st.items[j] == PENDING:
                st.items[j] = SKIPPED
        st.counts[SKIPPED] += st.counts[PENDING]
        st.counts[PENDING] = 0


class JournalWriter:
    """Appends records with group commit. Only the lock holder may create one."""

    def __init__(self, path: str, last_seq: int = 0, durable: bool = True, fold_from: Replay | None = None):
        """`fold_from`: the replay of the journal as it is now; the writer then folds each record
        it appends into a copy of it (`checkpoint`)."""
        self.path = path
        self.seq = last_seq
        self.durable = durable
        self._buf: list[bytes] = []
        self._last_sync = time.monotonic()
        self._live: Replay | None = None
        self._saved = -1
        try:
            self._fh = open(path, "ab", buffering=0)
            # A torn tail left by a crash: start on a fresh line so new records stay valid JSONL.
            st = os.fstat(self._fh.fileno())
            self._size, self.identity = st.st_size, (st.st_dev, st.st_ino)  # of the file held (checks.journal_lost)
            if fold_from is not None and fold_from.offset == self._size and not fold_from.bad:
                self._live = _live_copy(path, fold_from)
            if self._size:
                with open(path, "rb") as fh:
                    fh.seek(self._size - 1)
                    if fh.read(1) != b"\n":
                        self._fh.write(b"\n")
                        self._size += 1
        except OSError as exc:
            raise JournalWriteError(f"cannot write the journal {path}: {exc.strerror}",
                                    full=exc.errno in _FULL) from None
        self._reserve = os.path.join(os.path.dirname(path), RESERVE)
        try:  # room for the last records (the pause) should the disk fill up
            with open(self._reserve, "wb") as fh:
                fh.write(bytes(RESERVE_BYTES))
        except OSError:
            self._release()

    def append(self, type_: str, **fields: Any) -> dict[str, Any]:
        return self.append_item(type_, None, fields)

    def append_item(self, type_: str, i: int | None, fields: dict[str, Any]) -> dict[str, Any]:
        """`append(type_, i=i, **fields)` without a copy of `fields` (the runner's per-item path)."""
        self.seq += 1
        rec = {"seq": self.seq, "t": round(time.time(), 3), "type": type_, **({} if i is None else {"i": i}), **fields}
        self._buf.append(encode(rec))
        if self._live is not None:
            fold(self._live, rec)
        if len(self._buf) >= GROUP_COMMIT_RECORDS:
            self.sync()
        return rec

    def append_encoded(self, lines: list[bytes], last_seq: int) -> None:
        """Records already encoded (`encode`), numbered after this writer's last one up to
        `last_seq`: written with the next sync, as `append` would have."""
        self._buf.extend(lines)
        self.seq = last_seq
        self._live = None  # (records this writer never saw as dicts)
        if len(self._buf) >= GROUP_COMMIT_RECORDS:
            self.sync()

    def maybe_sync(self) -> None:
        """Call often: commits the pending group when it is old enough."""
        if self._buf and time.monotonic() - self._last_sync >= GROUP_COMMIT_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Write and fsync the pending records. On a full disk the reserve is given up and the
        write tried once more, and JournalWriteError(full) is raised either way, so that the
        runner stops while its last records still fit; a write that fails is cut off (the file
        stays valid JSONL) and its records are dropped (their items stay pending)."""
        if self._buf:
            data = b"".join(self._buf)
            self._buf.clear()
            try:
                self._write(data)
            except OSError as exc:
                if not (exc.errno in _FULL and self._release()):
                    self._fail(exc)
                try:
                    self._write(data)
                except OSError as again:
                    self._fail(again)
                self._fail(exc)  # kept, in the reserve's room: stop now, while the pause still fits
        self._last_sync = time.monotonic()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = self._fh.write(view)
                view = view[n:]
            if self.durable:
                os.fsync(self._fh.fileno())
        except OSError:
            self._live = None
            try:  # a torn record in the middle would hide the ones after it
                os.ftruncate(self._fh.fileno(), self._size)
            except OSError:
                pass
            raise
        self._size += len(data)
        live = self._live
        if live is not None:
            live.offset = self._size
            live.lines += data.count(b"\n")
            if live.crc_at is not None:
                live.crc_at = (self._size, zlib.crc32(data, live.crc_at[1]))

    def checkpoint(self) -> Replay | None:
        """`checkpoint` without reading the journal back: the fold of every record this writer
        appended (the runner's, at the end of a run: 3,000 records took 10 ms to replay), saved
        as the snapshot; None when it is not the whole journal (the writer was not given its
        replay, or a write failed, or another wrote): then replay it."""
        st = self._live
        if st is None or self._buf:
            return None
        try:
            if os.stat(self.path).st_size != st.offset:
                return None
        except OSError:
            return None
        if self._saved != st.offset:
            save_snapshot(self.path, st)
            self._saved = st.offset
        return st

    def _release(self) -> bool:
        """Delete the reserve file; True when there was one (space was freed)."""
        try:
            os.unlink(self._reserve)
            return True
        except OSError:
            return False

    def _fail(self, exc: OSError) -> None:
        raise JournalWriteError(f"cannot write the journal {self.path}: {exc.strerror}",
                                full=exc.errno in _FULL) from None

    def close(self) -> None:
        try:
            self.sync()
        finally:
            self._fh.close()
            self._release()

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
