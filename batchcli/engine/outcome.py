"""How a run ends: its closing journal record and status (close_run), what it returns
(RunResult), and how a runner hears Ctrl-C and SIGTERM (Signals)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchcli.engine.journal import COMPLETED, FAILED, PENDING
from batchcli.errors import (
    EXIT_CANCELLED,
    EXIT_FAILED_ITEMS,
    EXIT_OK,
    EXIT_PAUSED,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    ConfigError,
    JournalWriteError,
)

log = logging.getLogger("batchcli.runner")

@dataclass
class RunResult:
    batch_id: str
    status: str
    exit_code: int
    total: int
    completed: int
    failed: int
    skipped: int
    remaining: int
    processed_now: int
    wall: float
    reason: str | None = None
    out_dir: str | None = None
    top_failures: list[tuple[str, int]] = field(default_factory=list)
    first_frame_only: int = 0  # animated inputs (GIF, WebP, HEIC) of which only the first frame was used
    resumable: bool = True  # False when the batch's journal was lost as it ran (nothing to resume)

    @property
    def rate(self) -> float:
        return self.processed_now / self.wall if self.wall > 0 else 0.0


class Signals:
    """First SIGINT/SIGTERM: pause after in-flight items. Second: abandon them now."""

    def __init__(self) -> None:
        self.count = 0
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.signum = self.signum or signum

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def early_result(batch_id: str, st: Any, status: str, code: int, reason: str, wall: float, out_dir: str | None,
                 emit: Callable[[dict[str, Any]], None]) -> RunResult:
    """The result of a run that ended before any item ran (a scheduled batch paused, cancelled,
    or its waiting runner stopped), told to `emit` as the last event."""
    left = 0 if status == "cancelled" else st.remaining
    result = RunResult(batch_id, status, code, st.total, st.completed, st.failed,
                       st.total - st.completed - st.failed - left, left, 0, wall, reason, out_dir)
    emit({"type": "paused" if status == "paused" else "finished", "status": status, "exit_code": code,
          "completed": st.completed, "failed": st.failed, "remaining": left, "total": st.total,
          "wall_s": round(wall, 3), "rate": 0.0, "reason": reason, "out_dir": out_dir, "top_failures": []})
    return result


def refused(j: Any, st: Any, exc: BaseException, given: dict[str, Any]) -> None:
    """A new (or scheduled) batch whose executor refused its first run (a Dask cluster it cannot
    reach, or whose workers cannot see the files) is recorded paused with the reason, and the
    run flags it was given for the resume that follows the fix: left pending, it read as
    'interrupted' (its command died) and `recover --resume` ran it. Any other batch stays as it was."""
    if isinstance(exc, ConfigError) and st.state in ("pending", "scheduled"):
        j.append("batch_paused", reason=f"could not start: {exc}", options=given)
        j.sync()


def close_run(j: Any, counts: Any, stopping: str | None, reason: str | None, signum: int, extra: dict[str, Any],
              watching: bool = False) -> tuple[str, int]:
    """Append the run's closing record to the journal `j` (with `extra` fields: the measured
    worker memory) and return (status, exit code). `stopping`: why the loop ended (None: out of
    work; "pause", "signal", "disk_full", "journal" (the journal could not be written: always a
    pause), "cancel", "halt", "lost" (the journal was deleted or moved: failed); a hot folder (`watching`) pauses
    even with nothing pending."""
    if stopping == "cancel":
        j.append("batch_cancelled", reason=reason, **extra)
        status, code = "cancelled", EXIT_CANCELLED
    elif stopping in ("halt", "lost"):  # lost: the journal is gone (the record reaches a moved one, if any)
        j.append("batch_finished", status="failed", reason=reason, **extra)
        status, code = "failed", EXIT_FAILED_ITEMS
    elif stopping == "journal" or (stopping in ("pause", "signal", "disk_full") and (counts[PENDING] > 0 or watching)):
        j.append("batch_paused", reason=reason, **extra)
        status = "paused"
        code = {signal.SIGINT: EXIT_SIGINT, signal.SIGTERM: EXIT_SIGTERM}.get(signum, EXIT_PAUSED) \
            if stopping == "signal" else EXIT_PAUSED
    elif counts[PENDING] > 0:  # should not happen: work left but nothing asked us to stop
        j.append("batch_paused", reason="runner stopped with items left", **extra)
        status, code = "paused", EXIT_PAUSED
    else:
        done, failed = counts[COMPLETED], counts[FAILED]
        status = "failed" if failed and not done else "completed"
        j.append("batch_finished", status=status, reason=None, **extra)
        code = EXIT_OK if failed == 0 else EXIT_FAILED_ITEMS
    try:
        j.sync()
    except JournalWriteError as exc:  # still full: the journal says running, status shows the
        log.warning("%s", exc)  # batch interrupted, and a resume completes it all the same
    return status, code
