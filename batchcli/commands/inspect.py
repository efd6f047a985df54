"""status and list: read-only replays of the journal, safe while a runner writes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from batchcli.cli import HomeOpt, JsonOpt, OptBatchArg, handle_errors

LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=0, show_default=False, help="At most N rows.")]
OffsetOpt = Annotated[int, typer.Option("--offset", min=0, help="Skip the first N rows.")]


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def status(
        batch: OptBatchArg = None,
        items: Annotated[bool, typer.Option("--items", help="List items with status, output and error.")] = False,
        failed: Annotated[bool, typer.Option("--failed", help="With --items: only failed items.")] = False,
        limit: LimitOpt = None,
        offset: OffsetOpt = 0,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Progress of one batch (default: the latest).

        Example: batchcli status nightly --json
        """
        from batchcli import api, console
        from batchcli.store import Store

        paths = Store(home).resolve(batch)
        if items or failed:
            data = api.item_rows(paths, failed_only=failed, limit=limit, offset=offset)
            if json_out:
                console.emit_json(data)
                return
            console.table(["#", "status", "source", "output / error"],
                          [[str(r["i"]), r["status"], r["src"] or "",
                            (r["output"] or r["error"] or "").replace("\n", "\\n")] for r in data["items"]])
            return
        data = api.batch_status(paths)
        if json_out:
            console.emit_json(data)
        else:
            console.status_view(data)

    @app.command("list")
    @handle_errors
    def list_(
        status: Annotated[Optional[list[str]], typer.Option("--status", show_default=False,
                                                            help="Only batches in this state (repeatable or comma-separated).")] = None,
        limit: LimitOpt = None,
        offset: OffsetOpt = 0,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Batches, newest first.

        Example: batchcli list --status completed --limit 10 --json
        """
        from batchcli import api, console
        from batchcli.store import Store

        wanted = [s.strip() for v in (status or []) for s in v.split(",") if s.strip()]
        data = api.list_batches(Store(home), wanted, limit, offset)
        if json_out:
            console.emit_json(data)
            return
        console.table(["batch", "name", "status", "done", "failed", "total", "created"],
                      [[b["batch_id"], b["name"] or "", b["status"], str(b["completed"]), str(b["failed"]),
                        str(b["total"]), b["created_at"] or ""] for b in data["batches"]])
