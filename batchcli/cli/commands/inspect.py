"""status and list: read-only replays of the journal, safe while a runner writes."""

import sys
from typing import Annotated, Optional

import typer

from batchcli.cli.options import HomeOpt, JsonOpt, OptBatchArg, handle_errors, parse_states

LimitOpt = Annotated[Optional[int], typer.Option("--limit", metavar="N", min=0, show_default=False, help="At most N rows.")]
OffsetOpt = Annotated[int, typer.Option("--offset", metavar="N", min=0, help="Skip the first N rows.")]


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def status(
        batch: OptBatchArg = None,
        items: Annotated[bool, typer.Option("--items", help="List items with status, output and error.")] = False,
        failed: Annotated[bool, typer.Option("--failed", help="With --items: only failed items.")] = False,
        limit: LimitOpt = None,
        offset: OffsetOpt = 0,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow a live batch until it ends (NDJSON with --json).")] = False,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Progress of one batch (default: the latest).

        Example: batchcli status nightly --json
        """
        from batchcli import api
        from batchcli.cli import console
        from batchcli.engine.store import Store

        paths = Store(home).resolve(batch, damaged_ok=True)
        if follow:
            _follow(paths, json_out)
        if items or failed:
            data = api.item_rows(paths, failed_only=failed, limit=limit, offset=offset)
            if json_out:
                console.emit_json(data)
                return
            console.table(["#", "status", "source", "output / error"],
                          [[str(r["i"]), r["status"], r["src"] or "",
                            (", ".join(o["output"] for o in r["outputs"]) if r.get("outputs") else
                             r["output"] or r["error"] or "").replace("\n", "\\n")] for r in data["items"]])
            return
        data = api.batch_status(paths)
        if json_out:
            console.emit_json(data)
        else:
            console.status_view(data)

    @app.command("list")
    @handle_errors
    def list_(
        status: Annotated[Optional[list[str]], typer.Option("--status", metavar="STATE", show_default=False,
                                                            help="Only batches in this state (repeatable or comma-separated).")] = None,
        limit: LimitOpt = None,
        offset: OffsetOpt = 0,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Batches, newest first.

        Example: batchcli list --status completed --limit 10 --json
        """
        from batchcli import api
        from batchcli.cli import console
        from batchcli.engine.store import Store

        data = api.list_batches(Store(home), parse_states(status), limit, offset)
        if json_out:
            console.emit_json(data)
            return
        console.table(["batch", "name", "status", "done", "failed", "total", "created"],
                      [[b["batch_id"], b["name"] or "", console.status_word(b), str(b["completed"]), str(b["failed"]),
                        str(b["total"]), b["created_at"] or ""] for b in data["batches"]])


FOLLOW_EXIT = {"completed": 0, "failed": 1, "paused": 3, "cancelled": 4, "interrupted": 1}
READER_GONE = 141
"""A follower whose reader went away (`| head -1`, `| grep -m1`) stops: 128 + SIGPIPE, as the
shell reports a writer that a closed pipe ended. (The batch it followed goes on.)"""


def _follow(paths, json_out: bool) -> None:
    """Print events until the batch ends; exit with the code its runner would have (0, 1, 3, 4):
    1 for a batch completed with failed items."""
    from batchcli.cli import console
    from batchcli.engine.lifecycle import follow

    last = None
    for ev in follow(paths, stop=lambda: console.reader_left(sys.stdout)):  # a stalled batch writes nothing
        last = ev
        if json_out:
            console.emit_json(ev)
        elif ev["type"] == "item_failed":
            console.info(f"failed #{ev['i']}: {ev['error_class']}: {ev['error']}")
        elif ev["type"] == "progress":
            console.info(f"{ev['status']} {ev['completed'] + ev['failed']}/{ev['total']} "
                         f"({ev['progress_percent']:.1f}%) completed={ev['completed']} failed={ev['failed']}")
        else:
            reason = f" ({ev['reason']})" if ev.get("reason") else ""
            console.info(f"batch {ev['batch_id']}: {ev['status']}{reason}")
        if console.gone(sys.stdout):
            raise typer.Exit(READER_GONE)
    if last is None or last["type"] not in ("paused", "finished"):  # ended by `stop`: the reader left
        raise typer.Exit(READER_GONE)
    code = FOLLOW_EXIT.get(last["status"], 0) if last else 0
    if code == 0 and last and last.get("failed"):
        code = 1  # completed with failed items: what the runner exits with too
    raise typer.Exit(code)
