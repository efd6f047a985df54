"""Lifecycle control from any shell: pause, cancel, recover, cleanup, follow.

Each function returns plain data (or yields events) and raises BatchcliError subclasses; the
CLI formats them. A live runner is asked through its control file; without one, these functions
take the batch lock themselves and append the lifecycle record (`mark`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from typing import Any

from batchcli.engine.journal import replay
from batchcli.engine.liveness import (
    ORPHAN_REASON,
    locked_error,
    orphaned,
    read_runner_info,
    request,
    runner_alive,
    sweep_dead_tmp,
    sweep_exports,
)
from batchcli.engine.slots import forget
from batchcli.engine.status import batch_status, damage, mark
from batchcli.engine.store import BatchPaths, Store, manifest_damage
from batchcli.errors import BatchLocked, InvalidTransition

log = logging.getLogger("batchcli.lifecycle")

TERMINAL = ("completed", "cancelled")
"""States nothing can leave (except `resume --retry-failed / --repair` out of completed)."""
FINAL = ("completed", "failed", "cancelled")
"""States a follower stops at."""
WAIT_POLL = 0.05


def _wait_released(paths: BatchPaths, timeout: float) -> bool:
    """True once no runner holds the batch lock (it exited), False after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if runner_alive(paths) is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(WAIT_POLL)


def wait_stopped(paths: BatchPaths, timeout: float) -> bool:
    """True once no runner holds the batch (one that has recorded its end may still be closing)."""
    return _wait_released(paths, timeout)


def _ask_runner(paths: BatchPaths, what: str, wait: float) -> dict[str, Any] | None:
    """Send a request to the live runner and wait for it to exit. None when no runner is live."""
    info = runner_alive(paths)
    if info is None:
        return None
    request(paths, what)
    done = _wait_released(paths, wait)
    out = batch_status(paths)
    out.update(via="runner", waited=done)  # runner_pid: the runner while it lives, null once it stopped
    if not done:
        out["runner_pid"] = out["runner_pid"] or info.get("pid")
    return out


def pause(paths: BatchPaths, now: bool = False, wait: float = 60.0) -> dict[str, Any]:
    """Pause a batch. A live runner finishes its in-flight items (or abandons them with `now`:
    they stay pending) and exits; with no runner, the batch is marked paused here."""
    for _ in range(3):  # a runner may start or stop between our look and our write
        st = replay(paths.journal, int(paths.load_manifest()["total"]))
        if st.state in TERMINAL:
            raise InvalidTransition(f"batch {paths.id} is {st.state}; only a running or pending batch can be paused")
        out = _ask_runner(paths, "pause-now" if now else "pause", wait)
        if out is not None and not (out["waited"] and out["status"] == "cancelled"):
            return out
        if out is not None:  # a cancel reached the runner first, and wins: say so (next turn)
            continue
        if st.state == "paused":
            out = batch_status(paths)
            out.update(via="none", already=True)
            return out
        if st.state == "failed" and st.remaining == 0:
            raise InvalidTransition(f"batch {paths.id} is failed with nothing left to run; nothing to pause")
        try:
            if not mark(paths, "batch_paused", unless=TERMINAL, reason="paused by user (no live runner)"):
                continue  # ended meanwhile (a cancel its runner wrote): say so (next turn)
        except BatchLocked:
            continue
        out = batch_status(paths)
        out.update(via="journal", already=False)
        return out
    _refuse_if_ended(paths, "only a running or pending batch can be paused")
    raise BatchLocked(f"batch {paths.id}: its runner kept starting and stopping; try again")


def _refuse_if_ended(paths: BatchPaths, why: str) -> None:
    """After the last turn of pause or cancel: a batch that ended meanwhile is named as such."""
    st = replay(paths.journal, int(paths.load_manifest()["total"]))
    if st.state in TERMINAL:
        raise InvalidTransition(f"batch {paths.id} is {st.state}; {why}")


def cancel(paths: BatchPaths, wait: float = 60.0) -> dict[str, Any]:
    """Cancel a batch: remaining items become skipped; terminal."""
    for _ in range(3):
        st = replay(paths.journal, int(paths.load_manifest()["total"]))
        if st.state in TERMINAL:
            raise InvalidTransition(f"batch {paths.id} is already {st.state}; nothing to cancel")
        out = _ask_runner(paths, "cancel", wait)
        if out is not None and (out["status"] == "cancelled" or not out["waited"]):
            return out
        if out is not None:  # it stopped before it read our request (a pause came first): cancel it here
            continue
        try:
            if not mark(paths, "batch_cancelled", unless=TERMINAL, reason="cancelled by user"):
                continue  # ended meanwhile: say so (next turn)
        except BatchLocked:
            continue
        manifest = paths.load_manifest()
        if manifest.get("videos"):
            from batchcli.engine.videos import discard_segments

            discard_segments(paths, replay(paths.journal, int(manifest["total"])), manifest.get("out_dir"))
        out = batch_status(paths)
        out.update(via="journal")
        return out
    _refuse_if_ended(paths, "nothing to cancel")
    raise BatchLocked(f"batch {paths.id}: its runner kept starting and stopping; try again")


def check_resumable(paths: BatchPaths, force: bool = False, rerun: bool = False) -> None:
    """The checks a detached resume makes before it returns: no live runner, not cancelled,
    same fingerprint (unless forced), something to do when completed (an input changed since, or
    `rerun`: --retry-failed, --repair). The runner repeats them under the lock."""
    from batchcli.engine.checks import changed_inputs, check_fingerprint

    info = runner_alive(paths)
    if info is not None:
        raise locked_error(paths, info)
    man = paths.load_manifest()
    st = replay(paths.journal, int(man["total"]))
    if st.state == "cancelled":
        raise InvalidTransition(f"batch {paths.id} is cancelled; nothing to resume")
    check_fingerprint(paths, man, st, force)
    if st.state == "completed" and st.remaining == 0 and not rerun and not changed_inputs(paths, st):
        raise InvalidTransition(f"batch {paths.id} is completed; nothing to resume "
                                f"(--retry-failed reruns failed items, --repair missing outputs)")


def set_priority(paths: BatchPaths, priority: int) -> dict[str, Any]:
    """Change a batch's priority; its live runner (queued or running) applies it within a tick."""
    from batchcli.engine.slots import write_priority

    st = replay(paths.journal, int(paths.load_manifest()["total"]))
    if st.state in TERMINAL or (st.state == "failed" and st.remaining == 0):
        raise InvalidTransition(f"batch {paths.id} is {st.state}; a priority applies to a batch that "
                                f"is queued, running, scheduled, pending or paused")
    write_priority(paths, priority)
    row = batch_status(paths)
    if row.get("queue_position") is not None:  # the board has the old priority until the next tick
        from batchcli.engine.slots import Board, queue_position

        entries = Board(paths.home).entries()
        mine = [e for e in entries if e.batch_id == paths.id]
        if mine:
            mine[0].priority = priority
            row["queue_position"] = queue_position(paths, mine[0], entries)
    return row


# --- recover ----------------------------------------------------------------------------------

def recover(store: Store, resume: bool = False, resume_fn=None) -> dict[str, Any]:
    """Every batch whose journal says running but whose lock is free: record interrupted, then
    paused; remove temp files dead writers left in its folders. Idempotent. With `resume`,
    `resume_fn(paths)` is called for each recovered batch (the CLI starts it detached), and for
    each scheduled batch no runner waits for (it starts when due: at once if its time passed)."""
    rows: list[dict[str, Any]] = []
    failed = 0
    for paths in store.all():
        try:
            row = _recover_one(paths)
        except Exception as exc:  # one broken batch must not stop the others
            log.warning("recover %s: %s", paths.id, exc)
            rows.append({"batch_id": paths.id, "status": "error", "error": str(exc)})
            failed += 1
            continue
        if row is None:
            continue
        if resume and resume_fn is not None and row["status"] in ("paused", "scheduled"):
            try:
                resume_fn(paths)
                row["resumed"] = True
            except Exception as exc:
                other = _resumed_meanwhile(paths)
                if other is not None:  # by another recover (two cron jobs, or @reboot and a unit at once)
                    row.update(resumed=True, resumed_by=other)
                else:
                    row["resumed"] = False
                    row["error"] = str(exc)
                    failed += 1
        rows.append(row)
    return {"recovered_count": sum(1 for r in rows if r.get("status") == "paused"),
            "failed_count": failed, "batches": rows}


def _resumed_meanwhile(paths: BatchPaths) -> int | None:
    """The pid of the runner another process started on this batch since it was recovered here
    (0 when that run has ended already), or None: nobody did."""
    info = runner_alive(paths)
    if info is not None:
        return int(info.get("pid") or 0)
    try:
        st = replay(paths.journal, int(paths.load_manifest()["total"]))
    except (OSError, ValueError, KeyError):
        return None
    return 0 if st.state not in ("paused", "interrupted", "running") else None


def _recover_one(paths: BatchPaths) -> dict[str, Any] | None:
    reason = damage(paths) or manifest_damage(paths)
    if reason is not None:  # nothing to resume: say so, cleanup removes it
        return {"batch_id": paths.id, "status": "damaged", "reason": reason, "resumed": False}
    man = paths.load_manifest()
    st = replay(paths.journal, int(man["total"]))
    never_ran = orphaned(paths, st.state)  # killed before its run began: as good as interrupted
    if not never_ran and (st.state not in ("running", "scheduled") or runner_alive(paths) is not None):
        return None
    if st.state == "scheduled":  # nothing ran: it needs only a runner to wait for it again
        from batchcli.engine.schedule import check_due

        due = check_due(paths, st.schedule or {})[0] != "wait"
        return {"batch_id": paths.id, "name": man.get("name"), "status": "scheduled", "runner_pid": None,
                "due": due, "reason": st.reason, "completed": st.completed, "failed": st.failed,
                "remaining": st.remaining, "temp_files_removed": 0, "resumed": False}
    info = read_runner_info(paths) or {}
    pid = info.get("pid") or st.runner_pid or (man.get("creator") or {}).get("pid")
    try:
        mark(paths, "batch_interrupted", reason=ORPHAN_REASON if never_ran else f"runner pid {pid} died", pid=pid)
        mark(paths, "batch_paused", reason="recovered after the runner died")
    except BatchLocked:
        return None  # a runner took it meanwhile: nothing to recover
    removed = sweep_dead_tmp(paths.dir)
    if man.get("out_dir"):
        removed += sweep_dead_tmp(man["out_dir"])
    for stale in (paths.runner, paths.control):
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
    forget(paths.home, paths.id)  # its line on the board of the home's runners (queue/)
    st = replay(paths.journal, int(man["total"]))
    return {"batch_id": paths.id, "name": man.get("name"), "status": "paused", "previous": "interrupted",
            "runner_pid": pid, "completed": st.completed, "failed": st.failed, "remaining": st.remaining,
            "temp_files_removed": len(removed), "resumed": False}


# --- cleanup ----------------------------------------------------------------------------------

DEFAULT_CLEANUP_STATUS = ("completed", "cancelled", "failed")


def cleanup(store: Store, older_than: float = 7 * 86400, keep_last: int = 0,
            status: tuple[str, ...] = DEFAULT_CLEANUP_STATUS, purge_outputs: bool = False,
            dry_run: bool = False, now: float | None = None) -> dict[str, Any]:
    """Remove the records of old batches (and with `purge_outputs` exactly the files they wrote).
    Never touches a batch with a live runner, nor one in a state not in `status`."""
    now = time.time() if now is None else now
    _empty_trash(store, dry_run)
    skipped: list[dict[str, Any]] = []
    cleaned: list[dict[str, Any]] = []
    kept = 0
    for paths in store.all():  # newest first
        try:
            row = batch_status(paths)
        except (OSError, ValueError, KeyError) as exc:
            skipped.append({"batch_id": paths.id, "reason": f"unreadable: {exc}"})
            continue
        bid, state = paths.id, row["status"]
        if state == "running":
            skipped.append({"batch_id": bid, "reason": f"runner alive (pid {row['runner_pid']})"})
            continue
        if state not in status:
            skipped.append({"batch_id": bid, "reason": f"status {state} not selected"})
            continue
        if kept < keep_last:
            kept += 1
            skipped.append({"batch_id": bid, "reason": "kept by --keep-last"})
            continue
        age = now - _last_activity(paths)
        if age < older_than:
            skipped.append({"batch_id": bid, "reason": f"newer than {_fmt_age(older_than)}"})
            continue
        entry = {"batch_id": bid, "name": row["name"], "status": state, "age_s": round(age),
                 "outputs_removed": 0, "outputs_kept": 0}
        try:
            _clean_one(store, paths, purge_outputs and state != "damaged", dry_run, entry)
        except BatchLocked:
            skipped.append({"batch_id": bid, "reason": "runner alive"})
            continue
        except PurgeRefused as exc:  # kept whole: its files can be purged once the cause is gone
            skipped.append({"batch_id": bid, "reason": f"not purged: {exc}", "refused": True})
            continue
        cleaned.append(entry)
    return {"cleaned_count": len(cleaned), "skipped": skipped, "dry_run": dry_run, "cleaned": cleaned}


def remove(store: Store, paths: BatchPaths, purge_outputs: bool = False) -> dict[str, Any]:
    """Remove one batch's record (and with `purge_outputs` exactly the files it wrote), whatever
    its age or state, unless a live runner holds it."""
    row = batch_status(paths)
    if row["status"] == "running":
        raise InvalidTransition(f"batch {paths.id} is running (pid {row['runner_pid']}); pause or cancel it first")
    wait_stopped(paths, 5.0)
    entry = {"batch_id": paths.id, "name": row["name"], "status": row["status"], "outputs_removed": 0, "outputs_kept": 0}
    try:
        _clean_one(store, paths, purge_outputs, False, entry)
    except BatchLocked:
        raise InvalidTransition(f"batch {paths.id} is held by a live runner; pause or cancel it first") from None
    return entry


def _last_activity(paths: BatchPaths) -> float:
    for path in (paths.journal, paths.manifest, paths.dir):  # a damaged folder may lack the first two
        try:
            return os.stat(path).st_mtime
        except OSError:
            continue
    return 0.0


def _fmt_age(secs: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= n and secs % n == 0:
            return f"{int(secs // n)}{unit}"
    return f"{secs:g}s"


def _clean_one(store: Store, paths: BatchPaths, purge: bool, dry_run: bool, entry: dict[str, Any]) -> None:
    from filelock import FileLock

    from batchcli.engine.liveness import take_lock

    lock = FileLock(paths.lock)
    if not take_lock(lock, paths):
        raise BatchLocked(paths.id)
    try:
        if purge:
            _purge(store, paths, dry_run, entry)
        if dry_run:
            return
        sweep_exports(paths)  # temp files killed exports of this batch left behind
        forget(store.home, paths.id)  # a killed runner's line on the board (queue/)
        trash = os.path.join(store.home, ".trash")
        os.makedirs(trash, exist_ok=True)
        dest = os.path.join(trash, f"{paths.id}-{os.getpid()}")
        os.replace(paths.dir, dest)  # atomic: the batch leaves every listing at once
    finally:
        lock.release()
    shutil.rmtree(dest, ignore_errors=True)


def _purge(store: Store, paths: BatchPaths, dry_run: bool, entry: dict[str, Any]) -> None:
    """Delete the outputs the batch still owns (engine/purge.py), holding the claims lock so that
    no batch starts writing into the folder meanwhile. Raises PurgeRefused with the reason when
    another batch is writing there or the folder is not the recorded one."""
    from batchcli.engine import owners
    from batchcli.engine.purge import Refused, current_identity, purge_outputs

    man = paths.load_manifest()
    with owners.claims_lock(store):
        if man.get("out_dir") and man.get("out_dev") is not None:
            now = current_identity(man["out_dir"])  # a folder made again there: batches writing into it
            busy = [b for out_id in dict.fromkeys([(man["out_dev"], man["out_ino"]), now]) if out_id
                    for b in owners.writers_into(store, out_id, paths.id)]
            if busy:
                raise PurgeRefused(f"batch {busy[0]} is writing into the same output folder "
                                   f"{man['out_dir']}; purge it once that batch has finished")
        try:
            res = purge_outputs(paths, dry_run)
        except Refused as exc:
            raise PurgeRefused(str(exc)) from None
    entry["outputs_removed"], entry["outputs_kept"] = res.removed, res.kept_count
    entry["outputs_kept_reasons"] = dict(res.kept)
    entry["superseded_by"] = dict(res.superseded_by)


class PurgeRefused(Exception):
    """--purge-outputs cannot safely run for this batch now (the reason is the message)."""


def _empty_trash(store: Store, dry_run: bool) -> None:
    trash = os.path.join(store.home, ".trash")
    if not dry_run and os.path.isdir(trash):
        for name in os.listdir(trash):
            shutil.rmtree(os.path.join(trash, name), ignore_errors=True)


# --- follow -----------------------------------------------------------------------------------

def follow(paths: BatchPaths, every: float = 0.5, stop: Callable[[], bool] | None = None) -> Iterator[dict[str, Any]]:
    """Events of a batch seen from outside, by replaying its journal every `every` seconds:
    `progress` when it changes, `item_failed` for new failures, then `finished` or `paused`.
    `stop`: asked before each wait; True ends the events there (the follower's reader left)."""
    offset, _ = _new_failures(paths.journal, 0)  # failures from before we started: see status --failed
    last: tuple | None = None
    while True:
        offset, failures = _new_failures(paths.journal, offset)
        yield from failures
        s = batch_status(paths)
        key = (s["status"], s["completed"], s["failed"], s["remaining"])
        if key != last:
            last = key
            yield {"type": "progress", "batch_id": paths.id, "status": s["status"], "completed": s["completed"],
                   "failed": s["failed"], "total": s["total"], "remaining": s["remaining"],
                   "progress_percent": s["progress_percent"]}
        if s["status"] in FINAL or s["status"] in ("paused", "interrupted"):
            kind = "paused" if s["status"] == "paused" else "finished"
            yield {"type": kind, "batch_id": paths.id, "status": s["status"], "completed": s["completed"],
                   "failed": s["failed"], "remaining": s["remaining"], "total": s["total"],
                   "reason": s["reason"] if s["status"] != "interrupted"
                   else f"the runner died; run 'batchcli recover' then 'batchcli resume {paths.id}'"}
            return
        if stop is not None and stop():
            return
        time.sleep(every)


def _new_failures(journal: str, offset: int) -> tuple[int, list[dict[str, Any]]]:
    from batchcli.engine.journal import decode

    out: list[dict[str, Any]] = []
    try:
        with open(journal, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return offset, out
    end = data.rfind(b"\n") + 1  # complete lines only; the rest is still being written
    for line in data[:end].splitlines():
        rec = decode(line)
        if rec and rec.get("type") == "item_failed":
            out.append({"type": "item_failed", "i": rec.get("i"), "error_class": rec.get("error_class"),
                        "error": rec.get("error")})
    return offset + end, out
