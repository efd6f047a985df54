"""stats: figures across the home's batches, for people, scripts and monitoring."""

from typing import Annotated, Optional

import typer

from batchcli.cli.options import HomeOpt, JsonOpt, handle_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def stats(
        since: Annotated[Optional[str], typer.Option("--since", metavar="AGE", show_default=False,
                                                     help="Only batches created in the last AGE (90m, 12h, 30d; default: all).")] = None,
        prometheus: Annotated[Optional[str], typer.Option("--prometheus", metavar="FILE", show_default=False,
                                                          help="Also write the figures to FILE in the Prometheus text format (atomically).")] = None,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Batches started, completed, failed and cancelled; items done and failed; items/s;
        average and p95 batch duration; success rate; pauses, resumes and recoveries.

        Example: batchcli stats --since 30d --prometheus /var/lib/node_exporter/batchcli.prom
        """
        import os

        from batchcli.argfiles import check_target
        from batchcli.cli import console
        from batchcli.engine.store import Store
        from batchcli.errors import BatchcliError, ConfigError
        from batchcli.results.stats import home_stats, write_prometheus
        from batchcli.units import parse_age

        window = parse_age(since, "--since") if since is not None else None
        if prometheus:
            folder = os.path.dirname(os.path.abspath(prometheus))
            if not os.path.isdir(folder):
                raise ConfigError(f"--prometheus {prometheus}: no such folder {folder}")
            check_target(prometheus, "--prometheus")
        s = home_stats(Store(home), window)
        if prometheus:
            try:
                write_prometheus(prometheus, s)
            except OSError as exc:
                raise BatchcliError(f"cannot write {prometheus}: {exc.strerror or exc}") from None
        if json_out:
            console.emit_json(s)
            return
        console.info(stats_text(s, since))


OTHER_STATES = ("paused", "running", "queued", "throttled", "scheduled", "interrupted", "pending", "damaged")
"""The states `stats` names only when a batch is in them."""


def stats_text(s: dict, since: str | None) -> str:
    b, it, d = s["batches"], s["items"], s["duration_seconds"]

    def secs(v: float | None) -> str:
        from batchcli.cli.console import fmt_secs

        return fmt_secs(v) if v is not None else "-"

    rows = [
        ("window", f"batches created in the last {since}" if since else "all batches"),
        ("batches", f"{b['total']}: {b['started']} started, {b['completed']} completed, {b['failed']} failed, "
                    f"{b['cancelled']} cancelled" + "".join(f", {b[k]} {k}" for k in OTHER_STATES if b[k])),
        ("items", f"{it['completed']} done, {it['failed']} failed" + (f", {it['reused']} of the done reused" if it["reused"] else "")
         + (f", {it['failed_again']} of the failed unchanged since they failed (not run again)"
            if it.get("failed_again") else "")
         + (f", {it['skipped']} skipped" if it["skipped"] else "")),
        ("rate", f"{s['items_per_second']:.1f} items/s" if s["items_per_second"] is not None else "-"),
        ("success rate", f"{s['success_rate'] * 100:.1f}%" if s["success_rate"] is not None else "-"),
        ("duration", f"average {secs(d['average'])}, p95 {secs(d['p95'])} (over {d['count']} ended batches)"),
        ("pauses", str(s["pauses"])),
        ("resumes", str(s["resumes"])),
        ("recoveries", str(s["recoveries"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
