"""priority: reorder the batches waiting for the home's worker slots."""

from typing import Annotated

import typer

from batchcli.cli.options import BatchArg, HomeOpt, JsonOpt, handle_errors


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True, context_settings={"ignore_unknown_options": True})
    @handle_errors
    def priority(
        batch: BatchArg,
        value: Annotated[int, typer.Argument(help="The new priority: higher runs first (default 0; negative numbers too).",
                                             show_default=False)],
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Change a batch's priority while it is queued, running, scheduled or paused.

        Batches waiting for worker slots are served highest priority first, first come first
        served within a priority; a running batch gives up workers (at item boundaries) to a
        waiting batch of equal or higher priority.

        Example: batchcli priority nightly 10
        """
        from batchcli.cli import console
        from batchcli.engine import lifecycle
        from batchcli.engine.slots import check_priority
        from batchcli.engine.store import Store

        s = lifecycle.set_priority(Store(home).resolve(batch), check_priority(value))
        if json_out:
            console.emit_json(s)
            return
        where = f", position {s['queue_position']} in the queue" if s.get("queue_position") else ""
        console.info(f"batch {s['batch_id']}: priority {s['priority']} ({s['status']}{where})")
