"""The fork server started first thing for `start`, before typer is even imported.

Its imports (OpenCV, NumPy, the ops: ~0.15 s of CPU) then run on another core while this process
parses its flags, discovers the inputs and writes the batch's files, so the workers are ready
when the runner wants them. Only for a `start` that runs here on the local executor; the thread
count the server's NumPy is given is worked out from the flags as run_options will
(`forkserve.confirm` starts it again if that guess was wrong).

Also first thing: a `start`'s batch folder (early_batch), and a `sync`'s walk (walk_early).
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


EARLY: list = []
"""The batch folder a `start` made first thing (early_batch), for the batch it creates."""


def early_batch(args: list[str]) -> None:
    """The batch folder of a `start`, made first thing (marked as being created, with its
    --name), so that `batchcli start ... &` then `batchcli pause NAME` (or cancel, status) finds
    it and waits for the batch to be whole (Store.resolve) instead of answering that there is no
    such batch: its flags and inputs take a few tenths of a second more. Removed at exit unless
    a batch was made in it (a usage error, --help)."""
    command, home, k = command_of(args)
    rest = args[k + 1:]
    if command != "start" or not rest or "--help" in rest or "-h" in rest:
        return
    name = None
    for n, a in enumerate(rest):
        if a in ("--home", "--name") and n + 1 < len(rest):
            home, name = (rest[n + 1], name) if a == "--home" else (home, rest[n + 1])
        elif a.startswith(("--home=", "--name=")):
            home, name = (a[7:], name) if a.startswith("--home=") else (home, a[7:])
    try:
        from batchcli.engine.store import Store

        store = Store(home)
        made = [d for d in (store.batches_dir, store.home) if not os.path.isdir(d)]
        paths = store.create(name=name)
    except Exception:  # noqa: BLE001 (a home that cannot be used: the command itself says why)
        return
    import atexit

    EARLY.append(paths)
    atexit.register(_drop_unmade, paths, made, os.getpid())


def _drop_unmade(paths, made: list[str], pid: int) -> None:
    """At exit: the early folder goes when no batch was made in it (still marked as being created
    by this process), and the home's folders it made, when empty; never from a child forked
    meanwhile."""
    if os.getpid() == pid and paths.creator_alive():
        import shutil

        shutil.rmtree(paths.dir, ignore_errors=True)
        for folder in made:
            try:
                os.rmdir(folder)
            except OSError:
                pass


def early_paths(home: str):
    """The folder early_batch made, when it is in the batch home `home` (else None: create one)."""
    if EARLY and EARLY[0].home == home:
        return EARLY.pop()
    return None


WALK: list = []
"""The walk a `sync` started first thing (`walk_early`): a Forked child, until the command takes
it (`take_walk`) or the process ends (`drop_walk`)."""

_FLAGS = frozenset(("--after-success", "--quiet", "-q", "--json", "--delete", "--transfer", "--no-transfer",
                    "--summary", "--no-summary", "--detach", "-d"))
"""start's and sync's options that take no value."""
_SHORT = frozenset(("-o", "-p", "-w"))
"""Their one-letter options that take one."""


def walk_early(args: list[str]) -> None:
    """For a `sync`, start the walk that tells whether its inputs changed (engine/syncfast.py)
    in a forked child now, while this process imports and parses: from what the command line
    seems to say. The command uses it only when the walk it would start is the same
    (cli/commands/sync.py), so a wrong guess costs nothing but the child."""
    command, home, k = command_of(args)
    if command != "sync":
        return
    guess = _sync_flags(args[k + 1:])
    if guess is None:
        return
    from batchcli.engine.forked import Forked

    child = Forked(_walk, *guess, home)
    if child.pid is not None:
        WALK.append(child)


def _sync_flags(rest: list[str]) -> tuple | None:
    """(inputs, --out, --ext values, --media, plain, the command's --home) of a sync's command
    line, as far as it can be told without its parser; None for a sync that walks nothing here
    or a command line this does not follow."""
    inputs: list[str] = []
    given: dict[str, list[str]] = {}
    n = 0
    while n < len(rest):
        a = rest[n]
        n += 1
        if a == "--":
            inputs += rest[n:]
            break
        if not a.startswith("-") or a == "-":
            inputs.append(a)
        elif a in _FLAGS:
            given[a] = []
        elif a.startswith("--"):
            name, eq, value = a.partition("=")
            if not eq:
                if n >= len(rest):
                    return None
                value, n = rest[n], n + 1
            given.setdefault(name, []).append(value)
        elif a[:2] in _SHORT:
            if len(a) == 2:
                if n >= len(rest):
                    return None
                a, n = a + rest[n], n + 1
            given.setdefault({"-o": "--out", "-p": "--pipeline", "-w": "--workers"}[a[:2]], []).append(a[2:])
        else:  # -h, or what this does not know
            return None
    if given.keys() & {"--dry-run", "--checksum", "--help", "--at", "--after"}:
        return None
    plain = not given.keys() & {"--from-file", "--exclude", "--dedupe", "--name-template"}
    one = {name: values[-1] for name, values in given.items() if values}
    return inputs, one.get("--out"), given.get("--ext"), one.get("--media", "image"), plain, one.get("--home")


def _walk(inputs: list[str], out: str | None, ext: list[str] | None, media: str, plain: bool,
          home: str | None, global_home: str | None) -> tuple | None:
    """In the child: (the walk's arguments, as cli/commands/sync.py's _walk makes them; how many
    files the walk of all but the last EARLY_MINE of the folder finds; their list's bytes as
    marshal's version 2 writes them, without its head); None when there is no walk."""
    import marshal

    from batchcli.engine.store import Store
    from batchcli.engine.syncfast import EARLY_MINE, walk_spec
    from batchcli.inputs.discover import parse_exts, quick_walk

    exts = parse_exts(ext, media)
    out_dir = os.path.abspath(os.path.expanduser(out)) if out else None
    spec = walk_spec(inputs, exts, [out_dir, Store(home or global_home).home], plain)
    found = quick_walk(*spec, part=(0.0, 1.0 - EARLY_MINE)) if spec is not None else None
    return (spec, len(found), marshal.dumps(found, 2)[5:]) if found is not None else None


def take_walk():
    """The walk `walk_early` started, for the command to use (or cancel); None if none."""
    return WALK.pop() if WALK else None


def drop_walk() -> None:
    """The walk `walk_early` started, cancelled unless its command took it."""
    while WALK:
        WALK.pop().cancel()
