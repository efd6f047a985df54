"""Subcommand modules. Each defines `register(app)`; cli.py calls them in this order."""

COMMANDS = (
    "run",        # start, resume
    "inspect",    # status, list
    "lifecycle",  # pause, cancel, recover, cleanup
    "export",     # export, verify
    "ops_cmd",    # ops
    "similar",    # similar
)
