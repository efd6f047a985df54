"""How the console script ends a command (cli/__init__.py sets it before the command runs)."""

ENDS_AT_EXIT = False
"""True for a `start` or `sync` run by the console script: its process ends with os._exit
(cli._exit_now), so what a command holds at its end need not be freed object by object (sync
leaves its plan: cli/commands/sync.py)."""
