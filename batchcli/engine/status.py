"""A batch's state as plain data, by replaying its journal (read-only, safe while a runner
writes), and `mark`: one lifecycle record appended without a runner."""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable
from typing import Any

from batchcli.engine.journal import STATE_NAMES, Replay, iter_records, replay
from batchcli.engine.slots import live_entry, queue_position, read_priority
from batchcli.engine.store import BatchPaths, Store, damage, manifest_damage  # noqa: F401  (damage: re-exported)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


LIVE = ("pending", "running", "paused", "interrupted", "scheduled")
"""Journal states a live runner may be in the queue from (a resumed batch waits as queued)."""


def effective_state(paths: BatchPaths, st: Replay, entry: Any = None) -> tuple[str, int | None]:
    """The journal's state, corrected by reality: a live runner's own word from the home's board
    (queued, throttled, running); 'running' with no live runner is 'interrupted'."""
    from batchcli.engine.liveness import orphaned, runner_alive

    if entry is None and st.state in LIVE:
        entry = live_entry(paths)
    if entry is not None:
        return entry.state, entry.pid
    if orphaned(paths, st.state):
        return "interrupted", None
    if st.state == "running":
        info = runner_alive(paths)
        if info is None:
            return "interrupted", None
        return "running", info.get("pid")
    return st.state, None


def damaged_status(paths: BatchPaths, reason: str) -> dict[str, Any]:
    """The status object of a damaged batch folder: every field there, counts zero."""
    try:
        created = os.stat(paths.dir).st_mtime
    except OSError:
        created = None
    return {"batch_id": paths.id, "name": None, "status": "damaged", "total": 0, "completed": 0, "failed": 0,
            "skipped": 0, "remaining": 0, "progress_percent": 0.0, "created_at": _iso(created),
            "started_at": None, "paused_at": None, "completed_at": None, "out_dir": None, "pipeline": None,
            "runner_pid": None, "reason": reason, "priority": None, "queue_position": None, "slots": None,
            "worker_rss": None, "scheduled_for": None, "after": None, "executor": None, "workers": None, "dedupe_skipped": 0,
            "journal_records": 0, "journal_corrupt_lines": 0, "journal_problems": [], "top_failures": []}


def batch_status(paths: BatchPaths, st: Replay | None = None) -> dict[str, Any]:
    """The status object of DESIGN.md (a replay: read-only, safe while a runner writes).
    `st`: a current replay of the batch's journal the caller keeps (else one is made). A folder
    that is not a whole batch has status `damaged` and the reason."""
    reason = damage(paths)
    if reason is not None:
        return damaged_status(paths, reason)
    try:
        man = paths.load_manifest()
        total = int(man["total"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return damaged_status(paths, manifest_damage(paths) or f"manifest.json unreadable: {exc}")
    if st is None:
        st = replay(paths.journal, total)
    entry = live_entry(paths) if st.state in LIVE else None
    state, pid = effective_state(paths, st, entry)
    reason = entry.reason if entry is not None else st.reason
    if state == "interrupted" and st.state == "pending":
        from batchcli.engine.liveness import ORPHAN_REASON

        reason = f"{ORPHAN_REASON}; 'batchcli recover --resume' runs it"
    if state == "scheduled":
        pid, reason = _scheduled(paths, reason)
    done = st.completed + st.failed
    videos = {}
    if man.get("videos") and st.remaining:
        from batchcli.engine.videos import video_rows

        videos = {"videos": video_rows(paths, st)}
    return {
        "batch_id": paths.id,
        "name": man.get("name"),
        "status": state,
        "total": total,
        "completed": st.completed,
        "failed": st.failed,
        "skipped": st.skipped,
        "remaining": st.remaining,
        "progress_percent": round(done / total * 100, 2) if total else 100.0,
        "created_at": _iso(man.get("created_at")),
        "started_at": _iso(st.times.get("started")),
        "paused_at": _iso(st.times.get("paused")),
        "completed_at": _iso(st.times.get("finished")),
        "out_dir": man.get("out_dir"),
        "pipeline": man.get("pipeline_text"),
        "runner_pid": pid,
        "reason": reason,
        "priority": read_priority(paths),
        "queue_position": queue_position(paths, entry) if entry is not None else None,
        "slots": entry.held if entry is not None else None,
        "worker_rss": max(st.worker_rss or 0, entry.rss if entry is not None else 0) or None,
        "scheduled_for": _iso((st.schedule or {}).get("at")) if state == "scheduled" else None,
        "after": (st.schedule or {}).get("after") or None if state == "scheduled" else None,
        "executor": st.executor,
        "workers": st.workers,
        "dedupe_skipped": man.get("dedupe_skipped", 0),
        "journal_records": st.records,
        "journal_corrupt_lines": len(st.bad),
        "journal_problems": [f"line {b.lineno}: {b.reason}" for b in st.bad[:5]],
        "top_failures": [{"reason": r, "count": c} for r, c in st.failures.most_common(5)],
        **videos,
    }


def _scheduled(paths: BatchPaths, reason: str | None) -> tuple[int | None, str | None]:
    """A scheduled batch's waiting runner (pid), or a reason that says none is waiting."""
    from batchcli.engine.liveness import runner_alive

    info = runner_alive(paths)
    if info is not None:
        return info.get("pid"), reason
    return None, f"{reason}; no runner is waiting for it (after a reboot?): 'batchcli recover --resume' starts one"


def list_batches(store: Store, status: Iterable[str] | None = None, limit: int | None = None,
                 offset: int = 0) -> dict[str, Any]:
    wanted = set(status or ())
    rows = []
    for paths in store.all():
        try:
            row = batch_status(paths)
        except (OSError, ValueError, KeyError):
            continue
        if wanted and row["status"] not in wanted:
            continue
        rows.append(row)
    total = len(rows)
    end = None if limit is None else offset + limit
    return {"batches": rows[offset:end], "total": total}


def item_rows(paths: BatchPaths, failed_only: bool = False, limit: int | None = None,
              offset: int = 0, states: Iterable[str] | None = None) -> dict[str, Any]:
    """Per-item listing: one streaming pass over items.jsonl and the journal, holding one page.
    `states`: only items in these states (pending, completed, failed, skipped)."""
    from batchcli.inputs.discover import iter_items

    man = paths.load_manifest()
    total = int(man["total"])
    st = replay(paths.journal, total)
    codes = {c for c, name in STATE_NAMES.items() if name in set(states)} if states else None
    if failed_only:
        codes = {2}
    items = st.items
    wanted = list(range(total)) if codes is None else [i for i in range(total) if items[i] in codes]
    count = len(wanted)
    end = count if limit is None else min(count, offset + limit)
    page = wanted[offset:end]
    rows: dict[int, dict[str, Any]] = {
        i: {"i": i, "src": None, "status": STATE_NAMES[st.items[i]], "output": None,
            "error_class": None, "error": None, "ms": 0.0} for i in page}  # ms: a number always (0: not run)
    if rows:
        for rec in iter_items(paths.items):
            r = rows.get(rec["i"])
            if r is not None:
                r["src"] = rec["src"]
        for rec in iter_records(paths.journal):
            r = rows.get(rec.get("i"))  # type: ignore[arg-type]
            if r is None:
                continue
            kind = rec.get("type")
            if kind in ("item_completed", "item_failed"):  # decoder warnings of its last run
                r.pop("warnings", None)
                if rec.get("warnings"):
                    r["warnings"] = rec["warnings"]
            if kind == "item_completed":
                r.update(output=os.path.join(man["out_dir"], rec.get("shard") or rec["out"])
                         if rec.get("out") and man.get("out_dir") else None, error_class=None, error=None, ms=rec.get("ms") or 0.0)
                if rec.get("shard"):  # the output is this member of that tar shard
                    r["member"] = rec.get("member")
                if man.get("variants") and man.get("out_dir"):  # every variant's output, in order
                    r["outputs"] = [{"variant": o.get("variant"), "output": os.path.join(man["out_dir"], o["out"])}
                                    for o in rec.get("outputs") or ()]
                if rec.get("meta"):
                    r["meta"] = rec["meta"]
            elif kind == "item_failed":
                r.update(output=None, error_class=rec.get("error_class"), error=rec.get("error"), ms=rec.get("ms") or 0.0)
                r.pop("outputs", None)
    return {"items": [rows[i] for i in page], "total": count}


def mark(paths: BatchPaths, kind: str, unless: Collection[str] = (), **fields: Any) -> bool:
    """Append one lifecycle record without a runner (takes the lock; fails if a runner holds it).
    Not when the batch is, under the lock, in a state of `unless` (a runner that ended since the
    caller looked: a cancel it wrote is not followed by a pause): False then."""
    from filelock import FileLock

    from batchcli.engine.journal import JournalWriter
    from batchcli.engine.liveness import take_lock
    from batchcli.errors import BatchLocked

    lock = FileLock(paths.lock)
    if not take_lock(lock, paths):
        raise BatchLocked(f"batch {paths.id} is held by a live runner")
    try:
        st = replay(paths.journal, int(paths.load_manifest()["total"]))
        if st.state in unless:
            return False
        with JournalWriter(paths.journal, st.last_seq) as j:
            j.append(kind, **fields)
    finally:
        lock.release()
    return True


