"""Detached runs, the parent side: start a runner in its own session and return once it runs.

`spawn_detached` starts `python -m batchcli.cli.detach BATCH_DIR OPTIONS_JSON [flags]` with
`start_new_session=True` (no terminal, no Ctrl-C from the shell or server that started it; the
runner outlives it), its output appended to the batch's log.txt, waits until the child holds
the batch lock (or has already finished), and returns its pid. The child is an ordinary runner:
it records `batch_started` for a new batch and `batch_resumed` otherwise, once. Both faces (the
CLI's `--detach`, `recover --resume`, the server) start runners here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time

from batchcli.engine.liveness import runner_alive
from batchcli.engine.runner import RunOptions
from batchcli.engine.store import BatchPaths
from batchcli.errors import BatchcliError

log = logging.getLogger("batchcli.spawn")

RUNNER_MAIN = "batchcli.cli.detach"
"""The detached runner's entry point (`python -m`): a runner writing plain progress lines."""
STARTUP_WAIT = 15.0
"""Seconds to wait for the child to take the batch lock before returning anyway."""


def spawn_detached(paths: BatchPaths, opts: RunOptions, home: str | None = None, resume: bool = False,
                   retry_failed: bool = False, repair: bool = False, force: bool = False) -> int:
    """Run the batch in the background. Returns the runner's pid once it holds the lock.
    Raises BatchcliError with the child's last log lines when it refuses to run."""
    if resume:
        from batchcli.engine.lifecycle import check_resumable

        check_resumable(paths, force, rerun=retry_failed or repair)
    cmd = [sys.executable, "-m", RUNNER_MAIN, paths.dir, json.dumps(dataclasses.asdict(opts))]
    cmd += [flag for flag, on in (("--resume", resume), ("--retry-failed", retry_failed),
                                  ("--repair", repair), ("--force", force)) if on]
    if not resume:
        cmd += ["--expect", "pending", "--expect", "scheduled"]  # a pause that overtakes the start wins
    with open(paths.log, "ab") as logf:
        start = logf.tell()
        logf.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} detached "
                   f"{'resume' if resume else 'start'}\n".encode())
        logf.flush()
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                 start_new_session=True, close_fds=True)
    deadline = time.monotonic() + STARTUP_WAIT
    while time.monotonic() < deadline:
        info = runner_alive(paths)
        if info is not None and info.get("pid") == child.pid:
            return child.pid
        code = child.poll()
        if code is not None:
            if code in (0, 1, 3, 4):  # it ran to an end already (small batch)
                return child.pid
            if code == 2 and not resume and _overtaken(paths):  # paused or cancelled before it began: as asked
                return child.pid
            raise BatchcliError(f"detached runner exited with code {code}: {_tail(paths.log, start)}", code)
        time.sleep(0.05)
    log.warning("detached runner pid %d has not taken the lock after %.0f s", child.pid, STARTUP_WAIT)
    return child.pid


def _tail(path: str, start: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            lines = fh.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    errs = [ln for ln in lines if ln.startswith("Error:")]
    return (errs or lines or ["(no output)"])[-1]


def _overtaken(paths: BatchPaths) -> bool:
    """A new batch that a pause or a cancel reached before its runner began (the runner then
    leaves it so, and exits 2)."""
    from batchcli.engine.journal import replay

    try:
        return replay(paths.journal, int(paths.load_manifest()["total"])).state in ("paused", "cancelled")
    except (OSError, ValueError, KeyError):
        return False
