"""The command-line interface: parse, call the engine, render. Exit codes come out here only.

Heavy modules (cv2, numpy, onnxruntime) are imported inside the commands that need them."""

import copy
import os
import sys
from typing import Annotated, Optional

import typer

from batchcli import __version__
from batchcli.cli.commands import COMMANDS

app = typer.Typer(
    name="batchcli",
    help="Batch-process image folders with a durable journal: pause, resume, recover, never lose work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no rich import on the --help path
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _version(value: bool) -> None:
    if value:
        typer.echo(f"batchcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    home: Annotated[Optional[str], typer.Option("--home", metavar="DIR", show_default=False,
                                                help="Batch home folder, for the command that follows "
                                                     "(as BATCHCLI_HOME; the command's own --home wins).")] = None,
) -> None:
    """Batch-process image folders with a durable journal: pause, resume, recover, never lose work.

    Exit codes: 0 all items completed, 1 finished with failed items, 2 usage or configuration
    error, 3 paused, 4 cancelled, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    if home is not None:  # `batchcli --home DIR status` as well as `batchcli status --home DIR`
        os.environ["BATCHCLI_HOME"] = os.path.abspath(os.path.expanduser(home))


for _module in COMMANDS:
    _module.register(app)


def _named(args: list[str]) -> str | None:
    """The command `args` call, past the root's own options; None for none (or `--help`)."""
    k = 0
    while k < len(args) and (args[k] == "--home" or args[k].startswith("--home=")):
        k += 2 if args[k] == "--home" else 1
    return args[k] if k < len(args) and not args[k].startswith("-") else None


def app_for(args: list[str]) -> typer.Typer:
    """The app with only the command `args` call, when they name one exactly (else the whole app:
    root help, a misspelt command and its suggestions). Typer turns the options of every command
    it holds into click parameters before it parses anything: for a short command such as
    `status`, that was 40% of its start-up."""
    name = _named(args)
    mine = [c for c in app.registered_commands
            if name is not None and (c.name or typer.main.get_command_name(c.callback.__name__)) == name]
    if len(mine) != 1 or app.registered_groups:
        return app
    lean = copy.copy(app)
    lean.registered_commands = mine
    return lean


def main() -> None:
    from batchcli.cli.console import flush_at_exit, install_log_handler, setup_streams

    setup_streams()
    install_log_handler()
    try:
        app_for(sys.argv[1:])()
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        flush_at_exit()  # a pipe closed meanwhile (`| head -1`) costs nothing, not exit 120
