"""The command-line face: app.py (typer app, error -> exit code), options.py, console.py
(all rendering), detach.py, commands/ (one module per command group)."""


def main() -> None:
    """The `batchcli` console script."""
    from batchcli.cli.app import main as run

    run()
