"""Figures across the batches of a home: how many started, completed, failed, were cancelled;
items done and failed, items/s, batch durations, pauses, resumes and recoveries. As plain data,
and in the Prometheus text format that node_exporter's textfile collector reads."""

from __future__ import annotations

import calendar
import math
import time
from typing import Any

from batchcli.atomic import atomic_write
from batchcli.engine.journal import replay
from batchcli.engine.status import effective_state
from batchcli.engine.store import Store, damage, manifest_damage
from batchcli.results.facts import scan_runs

STATES = ("pending", "scheduled", "queued", "running", "throttled", "paused", "interrupted", "completed", "failed",
          "cancelled", "damaged")
"""Every state a batch can be in (damaged: a folder that is not a whole batch, as `list` shows
it): each is a key of `batches` and a gauge, 0 or not, so the gauges add up to `total` and a
script finds the same keys whatever the home holds."""
FINAL = ("completed", "failed", "cancelled")


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _id_time(batch_id: str) -> float | None:
    """When a batch was created, from its id (20261120-223015-123-a3f9); None if it is no id."""
    try:
        return calendar.timegm(time.strptime(batch_id[:15], "%Y%m%d-%H%M%S")) + int(batch_id[16:19]) / 1000
    except ValueError:
        return None


def p95(values: list[float]) -> float | None:
    """The nearest-rank 95th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def home_stats(store: Store, since: float | None = None, now: float | None = None) -> dict[str, Any]:
    """Figures over the batches created in the last `since` seconds (all of them for None).
    A batch's duration is the time its runs ran (pauses and dead time excluded); averages and
    the p95 are over the batches that ended (completed, failed or cancelled)."""
    now = time.time() if now is None else now
    start = max(0.0, now - since) if since is not None else None  # (no window starts before 1970)
    by_state = dict.fromkeys(STATES, 0)
    items = {"completed": 0, "failed": 0, "skipped": 0, "reused": 0, "failed_again": 0}
    started = pauses = resumes = recoveries = 0
    active = 0.0
    durations: list[float] = []
    for paths in store.all():  # newest first
        if paths.creator_alive():
            continue  # still being created: not a batch yet (nor listed)
        if damage(paths) or manifest_damage(paths):
            created = _id_time(paths.id)  # no manifest to ask
            if start is None or created is None or created >= start:
                by_state["damaged"] += 1
            continue
        try:
            man = paths.load_manifest()
            created = float(man.get("created_at") or 0)
            if start is not None and created < start:
                continue  # (not a break: an id is made as its start begins, created_at after discovery)
            st = replay(paths.journal, int(man["total"]))
        except (OSError, ValueError, KeyError, TypeError):
            by_state["damaged"] += 1  # changed or removed since the look above
            continue
        state, _pid = effective_state(paths, st)
        runs = scan_runs(paths.journal)
        by_state[state] = by_state.get(state, 0) + 1
        started += runs.started is not None
        items["completed"] += st.completed
        items["failed"] += st.failed
        items["skipped"] += st.skipped
        items["reused"] += min(int(man.get("reused") or 0), st.completed)
        items["failed_again"] += min(int((man.get("sync") or {}).get("failed_again") or 0), st.failed)
        pauses += runs.pauses
        resumes += runs.resumes
        recoveries += runs.recoveries
        secs = runs.seconds(now if state == "running" else None)
        active += secs
        if state in FINAL and runs.started is not None:
            durations.append(secs)
    processed = items["completed"] - items["reused"] + items["failed"] - items["failed_again"]
    done = items["completed"] + items["failed"]
    return {
        "since_seconds": since,
        "window_start": _iso(start),
        "generated_at": _iso(now),
        "batches": {"total": sum(by_state.values()), "started": started, **by_state},
        "items": {**items, "processed": processed},
        "items_per_second": round(processed / active, 3) if active > 0 else None,
        "success_rate": round(items["completed"] / done, 4) if done else None,
        "duration_seconds": {"average": round(sum(durations) / len(durations), 3) if durations else None,
                             "p95": round(p95(durations), 3) if durations else None,
                             "count": len(durations)},
        "active_seconds": round(active, 3),
        "pauses": pauses,
        "resumes": resumes,
        "recoveries": recoveries,
    }


def _num(v: float | None) -> str:
    if v is None:
        return "NaN"
    return repr(float(v)) if isinstance(v, float) else str(v)


def prometheus_text(s: dict[str, Any], now: float | None = None) -> str:
    """The figures in the Prometheus text exposition format (gauges: a window's figures can
    go down as batches leave it). A figure with no data is NaN."""
    out: list[str] = []

    def metric(name: str, help_: str, samples: list[tuple[str, float | None]]) -> None:
        out.append(f"# HELP batchcli_{name} {help_}")
        out.append(f"# TYPE batchcli_{name} gauge")
        out.extend(f"batchcli_{name}{labels} {_num(v)}" for labels, v in samples)

    b, it = s["batches"], s["items"]
    metric("batches", "Batches created in the window, by status.",
           [(f'{{status="{k}"}}', b[k]) for k in STATES])
    metric("batches_started", "Batches in the window that started running.", [("", b["started"])])
    metric("items", "Items of the window's batches, by result (reused: up to date, not redone; failed_again: "
                    "failed last time and unchanged, not run again).",
           [(f'{{status="{k}"}}', it[k]) for k in ("completed", "failed", "skipped", "reused", "failed_again")])
    metric("items_per_second", "Items processed per second of running time.", [("", s["items_per_second"])])
    metric("success_ratio", "Completed items over completed and failed items.", [("", s["success_rate"])])
    d = s["duration_seconds"]
    metric("batch_duration_seconds", "Running time of the batches that ended.",
           [('{stat="average"}', d["average"]), ('{stat="p95"}', d["p95"])])
    metric("batches_ended", "Batches that ended (completed, failed or cancelled) in the window.", [("", d["count"])])
    metric("pauses", "Pauses recorded in the window's batches.", [("", s["pauses"])])
    metric("resumes", "Resumes recorded in the window's batches.", [("", s["resumes"])])
    metric("recoveries", "Runs that died and were found by recover or the next run.", [("", s["recoveries"])])
    metric("stats_window_seconds", "The window the figures cover (NaN: all batches).", [("", s["since_seconds"])])
    metric("stats_generated_timestamp_seconds", "When these figures were computed.",
           [("", round(time.time() if now is None else now, 3))])
    return "\n".join(out) + "\n"


def write_prometheus(path: str, s: dict[str, Any]) -> None:
    """Atomically (temp file and rename), so the textfile collector never reads half a file."""
    atomic_write(path, prometheus_text(s).encode())
