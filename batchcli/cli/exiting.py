"""How the console script ends a command (cli/__init__.py sets it before the command runs)."""

ENDS_AT_EXIT = False
"""True for a `start` or `sync` run by the console script: its process ends with os._exit
(cli._exit_now), so what a command holds at its end need not be freed object by object (sync
leaves its plan: cli/commands/sync.py)."""

_PAUSED: list[bool] = []


def pause_collector() -> None:
    """No cyclic garbage collection while a `start` sets up (imports, flags, discovery): they
    make no garbage cycles, and the collector's passes over what they keep cost about 10 ms of
    a 3,000-item run's 0.3 s in this process, before its first worker. `resume_collector` turns
    it back on for the run."""
    import gc

    if gc.isenabled():
        gc.disable()
        _PAUSED.append(True)


def resume_collector() -> None:
    """The collector on again (after `pause_collector`), with what set-up made frozen out of
    its sight: the run's own garbage is all it looks at."""
    import gc

    if _PAUSED:
        _PAUSED.clear()
        gc.freeze()
        gc.enable()
