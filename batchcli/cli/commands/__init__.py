"""Subcommand modules, one per command group. Each defines `register(app)`; cli/app.py calls
them in this order. Imported outright: a module that fails to import is an error."""

from batchcli.cli.commands import export, inspect, lifecycle, ops_cmd, queue, run, serve, similar, stats

COMMANDS = (
    run,        # start, resume
    inspect,    # status, list
    lifecycle,  # pause, cancel, recover, cleanup
    queue,      # priority
    export,     # export, verify
    ops_cmd,    # ops
    similar,    # similar
    stats,      # stats
    serve,      # serve (the HTTP face; needs the serve extra)
)
