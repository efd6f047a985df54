"""The command-line face: app.py (typer app, error -> exit code), options.py, console.py
(all rendering), detach.py, commands/ (one module per command group)."""


def main() -> None:
    """The `batchcli` console script."""
    import sys

    from batchcli.cli.warm import warm_for

    warmed = warm_for(sys.argv[1:])  # a `start`: the workers' imports begin on another core now
    try:
        from batchcli.cli.app import main as run

        run()
    finally:
        if warmed:  # a run stops it itself; a usage error leaves no process behind
            from batchcli.executors.forkserve import stop_server

            stop_server(now=True)
