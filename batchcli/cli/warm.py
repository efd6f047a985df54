"""The fork server started first thing for `start`, before typer is even imported.

Its imports (OpenCV, NumPy, the ops: ~0.15 s of CPU) then run on another core while this process
parses its flags, discovers the inputs and writes the batch's files, so the workers are ready
when the runner wants them. Only for a `start` that runs here on the local executor; the thread
count the server's NumPy is given is worked out from the flags as run_options will
(`forkserve.confirm` starts it again if that guess was wrong).
"""

from __future__ import annotations

import os

_NOT_HERE = ("--detach", "-d", "--at", "--after", "-h", "--help")
"""Flags that mean no batch runs in this process (or nothing runs at all)."""


def command_of(args: list[str]) -> tuple[str | None, str | None, int]:
    """(the command a command line names, the --home given before it, the command's index)."""
    home, k = None, 0
    while k < len(args) and (args[k] == "--home" or args[k].startswith("--home=")):
        home = args[k + 1] if args[k] == "--home" and k + 1 < len(args) else args[k][7:]
        k += 2 if args[k] == "--home" else 1
    return (args[k] if k < len(args) else None), home, k


def warm_for(args: list[str], fork: bool = False) -> bool:
    """Start the fork server when `args` (the command line without the program) run a batch
    here; True when it was started. `fork`: the console script's call, first thing (see
    forkserve.warm_up)."""
    command, home, k = command_of(args)
    if command != "start":
        return False
    rest = args[k + 1:]
    workers: str | None = None
    for n, a in enumerate(rest):
        if a in _NOT_HERE or a.startswith(("--at=", "--after=")):
            return False
        if a in ("-w", "--workers") and n + 1 < len(rest):
            workers = rest[n + 1]
        elif a.startswith("--workers="):
            workers = a[10:]
        elif a.startswith("-w") and a[2:].isdigit():
            workers = a[2:]
        elif a == "--home" and n + 1 < len(rest):
            home = rest[n + 1]
        elif a.startswith("--home="):
            home = a[7:]
        elif (a == "--executor" and rest[n + 1:n + 2] != ["local"]) or (a.startswith("--executor=") and a != "--executor=local"):
            return False
    threads = _threads(workers, home)
    if threads is None:
        return False
    from batchcli.executors.forkserve import warm_up

    warm_up(threads=threads, guessed=True, fork=fork)
    return True


def _threads(workers: str | None, home: str | None) -> int | None:
    """The thread count run_options gives each worker for this --workers (None: the home's
    worker budget); None when the flags or the home say something it cannot tell."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        return None
    if workers is not None:
        n = int(workers) if workers.isdigit() else 0
    else:
        from batchcli.engine.slots import budget
        from batchcli.engine.store import Store

        try:
            n = budget(Store(home).home)
        except Exception:  # a bad config.toml: the command itself says so
            return None
    return max(1, cpus // n) if n > 0 else None
