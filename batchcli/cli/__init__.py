"""The command-line face: app.py (typer app, error -> exit code), options.py, console.py
(all rendering), detach.py, commands/ (one module per command group)."""


def main() -> None:
    """The `batchcli` console script."""
    import sys

    from batchcli.cli import exiting
    from batchcli.cli.warm import command_of, drop_walk, early_batch, walk_early, warm_for

    warmed = warm_for(sys.argv[1:], fork=True)  # a `start`: the workers' imports begin on another core now
    early_batch(sys.argv[1:])  # a `start`: its batch folder, for a `pause NAME` run just after it
    walk_early(sys.argv[1:])  # a `sync`: its walk of the inputs begins on another core now
    exiting.ENDS_AT_EXIT = warmed or command_of(sys.argv[1:])[0] == "sync"
    if warmed:
        exiting.pause_collector()  # until its run begins (cli/commands/run.py)
    try:
        from batchcli.cli.app import main as run

        run()
    except SystemExit as exc:
        drop_walk()
        if exiting.ENDS_AT_EXIT:
            _exit_now(exc.code)
        raise
    finally:
        drop_walk()
        if warmed:  # a run stops it itself; a usage error leaves no process behind
            from batchcli.executors.forkserve import stop_server

            stop_server(now=True)


def _exit_now(code: object) -> None:
    """End a `start` or `sync` without the interpreter's teardown of every module and object (30-50 ms
    after a run of 3,000 items, a tenth of the command), as the workers end: the server
    stopped, the exit handlers run (the log's included), both streams flushed. Not while
    another thread still runs (it would be cut off), nor for an exit with a message."""
    import atexit
    import os
    import sys
    import threading

    if threading.active_count() > 1 or not (code is None or isinstance(code, int)):
        return
    from batchcli.executors.forkserve import stop_server

    stop_server(now=True)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code or 0)
