"""Option types and the error boundary shared by every command module."""

import functools
import math
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer


def finite(value: float | None) -> float | None:
    """Option callback: NaN and infinities are usage errors (exit 2), for every number."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


BATCH_STATES = ("pending", "scheduled", "queued", "running", "throttled", "paused", "interrupted", "completed",
                "failed", "cancelled", "damaged")


def parse_states(values: list[str] | None) -> tuple[str, ...]:
    """--status values (repeatable or comma-separated); an unknown state is a usage error."""
    from batchcli.errors import ConfigError

    wanted = tuple(s.strip() for v in (values or []) for s in v.split(",") if s.strip())
    unknown = sorted(set(wanted) - set(BATCH_STATES))
    if unknown:
        raise ConfigError(f"--status {','.join(unknown)}: expected some of {', '.join(BATCH_STATES)}")
    return wanted


HomeOpt = Annotated[Optional[str], typer.Option("--home", envvar="BATCHCLI_HOME", metavar="DIR",
                                                help="Batch home folder (default: the user data dir).",
                                                show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
BatchArg = Annotated[str, typer.Argument(help="Batch id, unique id prefix, or name.", show_default=False)]
VariantOpt = Annotated[Optional[list[str]], typer.Option(
    "--variant", show_default=False, metavar="NAME=PIPELINE",
    help='Another output per item, after --pipeline, under OUT/NAME/ (repeatable), e.g. '
         '"thumb=resize 400x400 | convert jpg quality=80".')]
OptBatchArg = Annotated[Optional[str], typer.Argument(help="Batch id, unique id prefix, or name (default: the latest).",
                                                      show_default=False)]


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """BatchcliError -> 'Error: message' on stderr and its exit code. The only such place."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from batchcli.cli.console import error
        from batchcli.errors import BatchcliError

        try:
            return fn(*args, **kwargs)
        except BatchcliError as exc:
            error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # never a traceback: one line naming the file and the reason
            message, code = describe_os_error(exc)
            error(message)
            raise typer.Exit(code) from None

    return wrapper


def describe_os_error(exc: OSError) -> tuple[str, int]:
    """A file error that escaped the engine, as one line and an exit code. A batch folder that
    went away (`cleanup` racing `resume`) or lost its files is said as such (exit 2)."""
    import errno
    import os
    import re

    from batchcli.engine.store import BatchPaths, damage
    from batchcli.errors import BatchDamaged

    name = os.fsdecode(exc.filename) if exc.filename is not None else ""
    m = re.match(r"^(.*[/\\]batches[/\\][^/\\]+)(?:[/\\]|$)", name)
    if m and exc.errno not in (errno.ENOSPC, errno.EDQUOT):  # a full disk is said as such
        paths = BatchPaths(m.group(1))
        if not os.path.isdir(paths.dir):
            return f"batch {paths.id} was removed while this command ran (by cleanup?)", 2
        reason = damage(paths)
        if reason is not None:
            return str(BatchDamaged(paths.id, reason)), 2
    return f"{name or type(exc).__name__}: {exc.strerror or exc}", 1
