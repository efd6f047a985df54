"""Scheduled batches: `--at TIME` and `--after BATCH` create a batch now and run it later.

The batch is validated and discovered at once (any error is exit 2 then, not at 2 a.m.), then a
`batch_scheduled` record says when it may start; a detached runner holds the batch and waits
(`scheduled` in status). After a reboot `batchcli recover --resume` starts a runner again for
each scheduled batch: one whose time has passed starts at once, the others go on waiting.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError

ENDED = ("completed", "failed", "cancelled")
"""States a predecessor (`--after`) has ended in."""
CHECK_EVERY = 0.5
"""Seconds between looks at the clock and at the predecessors while waiting."""
MAX_AHEAD = 366 * 86400
"""The furthest ahead a batch may be scheduled."""

_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_at(text: str, now: float | None = None) -> float:
    """`--at`: `+30m` (from now), `02:00` (the next time the clock says so, local time) or an ISO
    date-time (`2026-11-21T02:00`, local time unless it names a zone). Returns a Unix time."""
    from batchcli.units import parse_age

    now = time.time() if now is None else now
    s = (text or "").strip()
    if s.startswith("+"):
        try:
            when = now + parse_age(s[1:], "--at")
        except ConfigError:  # worded for the flag as typed, '+' and all
            raise ConfigError(f"--at {text!r}: expected a wait such as +90s, +30m, +12h, +7d or +2w") from None
    elif _CLOCK.match(s):
        h, m, sec = (int(g or 0) for g in _CLOCK.match(s).groups())
        if h > 23 or m > 59 or sec > 59:
            raise ConfigError(f"--at {text!r}: not a time of day (00:00 to 23:59)")
        base = datetime.fromtimestamp(now)
        at = base.replace(hour=h, minute=m, second=sec, microsecond=0)
        if at.timestamp() <= now:
            at += timedelta(days=1)
        when = at.timestamp()
    else:
        try:
            when = datetime.fromisoformat(s).timestamp()
        except ValueError:
            raise ConfigError(f"--at {text!r}: expected +30m, a time of day such as 02:00, "
                              f"or a date-time such as 2026-11-21T02:00") from None
        if when < now:
            raise ConfigError(f"--at {text!r}: that time has passed")
    if when - now > MAX_AHEAD:
        raise ConfigError(f"--at {text!r}: more than a year ahead")
    return when


def describe(at: float | None, after: list[str], after_success: bool) -> str:
    parts = []
    if at is not None:
        parts.append("at " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)))
    if after:
        parts.append(f"when {' and '.join(after)} {'completes' if after_success else 'ends'}")
    return "starts " + ", ".join(parts)


def schedule(paths: BatchPaths, at: float | None, after: list[str], after_success: bool, options: dict) -> None:
    """Record when a new batch may start (its runner waits for it; `options` are the run flags,
    kept for a runner started again by `recover --resume`)."""
    from batchcli.engine.status import mark

    mark(paths, "batch_scheduled", at=at, after=list(after), after_success=after_success, options=options,
         reason=describe(at, after, after_success))


def _state_of(home: str, batch_id: str) -> str | None:
    """A predecessor's state; None when it is gone. A live runner means it has not ended."""
    from batchcli.engine.journal import replay
    from batchcli.engine.liveness import runner_alive

    paths = BatchPaths(os.path.join(home, "batches", batch_id))
    try:
        if runner_alive(paths) is not None:
            return "running"
        return replay(paths.journal, int(paths.load_manifest()["total"])).state
    except (OSError, ValueError, KeyError):
        return None


def check_due(paths: BatchPaths, sched: dict[str, Any], now: float | None = None) -> tuple[str, str | None]:
    """("wait", why), ("go", None) or ("cancel", why): the batch must not run (--after-success)."""
    now = time.time() if now is None else now
    at = sched.get("at")
    if at is not None and now < at:
        return "wait", None
    strict = bool(sched.get("after_success"))
    for bid in sched.get("after") or ():
        state = _state_of(paths.home, bid)
        if state is None:
            if strict:
                return "cancel", f"not run: batch {bid} is gone, so it did not complete (--after-success)"
            continue
        if state not in ENDED:
            return "wait", f"waiting for batch {bid} ({state})"
        if strict and state != "completed":
            return "cancel", f"not run: batch {bid} ended {state} (--after-success)"
    return "go", None


def wait_until_due(paths: BatchPaths, sched: dict[str, Any], control: Callable[[], str | None],
                   stopped: Callable[[], bool]) -> tuple[str, str | None]:
    """Wait for a scheduled batch's time and predecessors. Returns ("go", None); ("pause" or
    "cancel", why) when asked through the control file or when a predecessor did not complete
    under --after-success; ("signal", None) when the runner was told to stop."""
    while True:
        if stopped():
            return "signal", None
        req = control()
        if req:
            return ("cancel" if req == "cancel" else "pause"), f"{req} requested while scheduled"
        verdict, why = check_due(paths, sched)
        if verdict != "wait":
            return verdict, why
        time.sleep(CHECK_EVERY)


def wait_scheduled(paths: BatchPaths, st: Any, journal: Any, emit: Callable[[dict[str, Any]], None],
                   control: Callable[[], str | None], out_dir: str | None) -> Any:
    """The runner's wait for a scheduled batch (it holds the batch lock meanwhile). None when
    the batch is due; else the RunResult the run ends with: paused or cancelled as asked
    (recorded in the journal), or, on SIGTERM or Ctrl-C, still scheduled with nothing recorded,
    so `recover --resume` after a reboot starts another runner."""
    from batchcli.engine.outcome import early_result

    t0 = time.monotonic()
    ended = _wait(paths, st, journal, emit, control)
    if ended is None:
        return None
    journal.sync()
    return early_result(paths.id, st, *ended, time.monotonic() - t0, out_dir, emit)


def _wait(paths: BatchPaths, st: Any, journal: Any, emit: Callable[[dict[str, Any]], None],
          control: Callable[[], str | None]) -> tuple[str, int, str] | None:
    import signal

    from batchcli.engine.outcome import Signals
    from batchcli.errors import EXIT_CANCELLED, EXIT_PAUSED, EXIT_SIGINT, EXIT_SIGTERM

    emit({"type": "state", "batch_id": paths.id, "status": "scheduled", "reason": st.reason, "queue_position": None})
    with Signals() as sig:
        verdict, why = wait_until_due(paths, st.schedule or {}, control, lambda: sig.count > 0)
    if verdict == "go":
        return None
    if verdict == "signal":
        code = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}.get(sig.signum, EXIT_PAUSED)
        return "scheduled", code, (f"runner stopped by {signal.Signals(sig.signum).name} while waiting; "
                                   f"'batchcli recover --resume' starts another")
    kind, status, code = (("batch_paused", "paused", EXIT_PAUSED) if verdict == "pause"
                          else ("batch_cancelled", "cancelled", EXIT_CANCELLED))
    journal.append(kind, reason=why)
    return status, code, why or ""
