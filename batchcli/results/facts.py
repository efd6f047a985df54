"""What a batch did, read back from its files: counts, bytes in and out, the time its runs took,
pauses, resumes and recoveries, and its failed items. The CI reports and `stats` read these."""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from batchcli.engine.journal import COMPLETED, FAILED, STATE_NAMES, decode, iter_records, replay
from batchcli.engine.status import effective_state
from batchcli.engine.store import BatchPaths
from batchcli.inputs.discover import iter_items

_RUN_START = ("batch_started", "batch_resumed")
_RUN_END = ("batch_paused", "batch_finished", "batch_cancelled", "batch_interrupted")
_LIFECYCLE_NEEDLES = (b'"type":"batch_', b'"type":"header"')


@dataclass
class Runs:
    """The runs of a batch, from its lifecycle records."""

    started: float | None = None  # when the first run began (a paused pending batch begins with a resume)
    ended: float | None = None  # the last batch_finished / batch_cancelled
    active_s: float = 0.0  # seconds runners ran (pauses and dead time excluded)
    resumes: int = 0
    pauses: int = 0
    recoveries: int = 0  # runs that died (batch_interrupted: found by recover or the next run)
    open_since: float | None = None  # a run still going (or that died without a record yet)

    def feed(self, rec: dict[str, Any], prev_t: float | None) -> None:
        """One lifecycle record. `prev_t`: the time of the record before it (a dead runner's
        run ends with its last record, not when its death was found)."""
        kind, t = rec.get("type"), rec.get("t")
        if not isinstance(t, (int, float)):
            return
        if kind in _RUN_START:
            if self.started is None:
                self.started = t
            self.resumes += kind == "batch_resumed"
            self.open_since = t
        elif kind in _RUN_END:
            end = prev_t if kind == "batch_interrupted" and prev_t is not None else t
            if self.open_since is not None:
                self.active_s += max(0.0, end - self.open_since)
                self.open_since = None
            self.pauses += kind == "batch_paused"
            self.recoveries += kind == "batch_interrupted"
            if kind in ("batch_finished", "batch_cancelled"):
                self.ended = t

    def seconds(self, now: float | None = None) -> float:
        """Active seconds, counting a run still going up to `now`."""
        if self.open_since is None or now is None:
            return self.active_s
        return self.active_s + max(0.0, now - self.open_since)


def scan_runs(journal: str) -> Runs:
    """Runs of a batch from a quick pass: only lifecycle lines are decoded."""
    runs = Runs()
    prev: bytes | None = None
    try:
        fh = open(journal, "rb")
    except FileNotFoundError:
        return runs
    with fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            if any(n in raw for n in _LIFECYCLE_NEEDLES):
                rec = decode(raw[:-1])
                if rec is not None:
                    before = decode(prev[:-1]) if prev is not None and rec.get("type") == "batch_interrupted" else None
                    runs.feed(rec, before.get("t") if before else None)
            prev = raw
    return runs


@dataclass
class ItemResult:
    """One item as a report shows it."""

    i: int
    src: str
    rel: str
    status: str  # pending / completed / failed / skipped
    seconds: float | None = None
    error_class: str | None = None
    error: str | None = None
    reused_from: str | None = None


@dataclass
class BatchFacts:
    batch_id: str
    name: str | None
    status: str
    reason: str | None
    pipeline: str | None
    out_dir: str | None
    total: int
    completed: int
    failed: int
    skipped: int
    remaining: int
    reused: int  # completed by reusing an earlier batch's output (sync)
    bytes_in: int  # inputs of the completed items
    bytes_out: int  # their outputs
    runs: Runs
    top_failures: list[tuple[str, int]] = field(default_factory=list)
    failed_items: list[ItemResult] = field(default_factory=list)  # the first FAILED_ROWS
    failed_again: int = 0  # failed: an earlier batch's failure of the same unchanged input, not run again (sync)

    @property
    def processed(self) -> int:
        """Items whose result came from work (reused items, completed or failed, excluded)."""
        return self.completed - self.reused + self.failed - self.failed_again

    @property
    def active_s(self) -> float:
        return self.runs.seconds(time.time() if self.status == "running" else None)

    @property
    def rate(self) -> float:
        secs = self.active_s
        return self.processed / secs if secs > 0 else 0.0

    @property
    def saving(self) -> float | None:
        """The fraction of input bytes the outputs saved (negative when they grew)."""
        return 1.0 - self.bytes_out / self.bytes_in if self.bytes_in and self.bytes_out else None


class _Results:
    """One pass over the journal: per item its last result (time taken, bytes written, error
    while failed, earlier batch when reused), and the runs. A few bytes per item."""

    def __init__(self, paths: BatchPaths, total: int):
        self.ms = array("f", bytes(4 * total))
        self.nbytes = array("q", bytes(8 * total))
        self.errors: dict[int, tuple[str | None, str | None]] = {}
        self.reused: dict[int, str] = {}
        self.failed_reused: set[int] = set()  # failed by copying an earlier batch's failure (sync)
        self.runs = Runs()
        prev_t = None
        for rec in iter_records(paths.journal):
            i = rec.get("i")
            kind = rec.get("type")
            if isinstance(i, int) and 0 <= i < total:
                if kind == "item_completed":
                    self.ms[i] = rec.get("ms") or 0.0
                    self.nbytes[i] = rec.get("bytes") or 0
                    self.errors.pop(i, None)
                    if rec.get("reused_from"):
                        self.reused[i] = rec["reused_from"]
                    else:
                        self.reused.pop(i, None)
                elif kind == "item_failed":
                    self.ms[i] = rec.get("ms") or 0.0
                    self.errors[i] = (rec.get("error_class"), rec.get("error"))
                    self.reused.pop(i, None)
                    if rec.get("reused_from"):
                        self.failed_reused.add(i)
                    else:
                        self.failed_reused.discard(i)
            elif kind in _RUN_START or kind in _RUN_END:
                self.runs.feed(rec, prev_t)
            prev_t = rec.get("t", prev_t)


FAILED_ROWS = 50
"""Failed items listed one by one in a summary; the rest are counted ("and N more")."""


def _load(paths: BatchPaths) -> tuple[dict[str, Any], Any, str, _Results]:
    man = paths.load_manifest()
    total = int(man["total"])
    st = replay(paths.journal, total)
    state, _pid = effective_state(paths, st)
    return man, st, state, _Results(paths, total)


def batch_facts(paths: BatchPaths, failed_rows: int = FAILED_ROWS) -> BatchFacts:
    """The figures of one batch (two streaming passes over its journal, one over its items)."""
    man, st, state, res = _load(paths)
    facts = BatchFacts(paths.id, man.get("name"), state, st.reason, man.get("pipeline_text"), man.get("out_dir"),
                       st.total, st.completed, st.failed, st.skipped, st.remaining,
                       sum(1 for i in res.reused if st.items[i] == COMPLETED), 0, 0, res.runs,
                       st.failures.most_common(5),
                       failed_again=sum(1 for i in res.failed_reused if st.items[i] == FAILED))
    for item in iter_items(paths.items):
        i = item["i"]
        state_i = st.items[i]
        if state_i == COMPLETED:
            facts.bytes_in += item.get("size") or 0
            facts.bytes_out += res.nbytes[i]
        elif state_i == FAILED and len(facts.failed_items) < failed_rows:
            facts.failed_items.append(_result(item, st.items, res))
    return facts


def item_results(paths: BatchPaths) -> Iterator[ItemResult]:
    """Every item in order with its last result (streams items.jsonl)."""
    _man, st, _state, res = _load(paths)
    for item in iter_items(paths.items):
        yield _result(item, st.items, res)


def _result(item: dict[str, Any], states: bytearray, res: _Results) -> ItemResult:
    i = item["i"]
    state = states[i]
    out = ItemResult(i, item["src"], item.get("rel") or item["src"], STATE_NAMES[state])
    if state in (COMPLETED, FAILED):
        out.seconds = round(res.ms[i] / 1000.0, 4)
    if state == FAILED:
        out.error_class, out.error = res.errors.get(i, (None, None))
    elif state == COMPLETED:
        out.reused_from = res.reused.get(i)
    return out
