"""The command-line interface: parse, call the engine, render. Exit codes come out here only.

Heavy modules (cv2, numpy, onnxruntime) are imported inside the commands that need them."""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Annotated, Any, Callable, Optional

import typer


from batchcli import __version__
from batchcli.commands import COMMANDS

app = typer.Typer(
    name="batchcli",
    help="Batch-process image folders with a durable journal: pause, resume, recover, never lose work.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no rich import on the --help path
    context_settings={"help_option_names": ["-h", "--help"]},
)

HomeOpt = Annotated[Optional[str], typer.Option("--home", envvar="BATCHCLI_HOME",
                                                help="Batch home folder (default: the user data dir).",
                                                show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
BatchArg = Annotated[str, typer.Argument(help="Batch id, unique id prefix, or name.", show_default=False)]
OptBatchArg = Annotated[Optional[str], typer.Argument(help="Batch id, unique id prefix, or name (default: the latest).",
                                                      show_default=False)]


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """BatchcliError -> 'Error: message' on stderr and its exit code. The only such place."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from batchcli.console import error
        from batchcli.errors import BatchcliError

        try:
            return fn(*args, **kwargs)
        except BatchcliError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"batchcli {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Batch-process image folders with a durable journal: pause, resume, recover, never lose work.

    Exit codes: 0 all items completed, 1 finished with failed items, 2 usage or configuration
    error, 3 paused, 4 cancelled, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """


def _register_all() -> None:
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"batchcli.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"batchcli.commands.{name}":
                raise
            continue
        mod.register(app)


_register_all()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
