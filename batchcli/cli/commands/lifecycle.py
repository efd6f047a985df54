"""pause, cancel, recover, cleanup: lifecycle control from any shell, safe from cron."""

from typing import Annotated, Optional

import typer

from batchcli.cli.options import BatchArg, HomeOpt, JsonOpt, finite, handle_errors, parse_states

WaitOpt = Annotated[float, typer.Option("--wait", metavar="SECONDS", min=0, callback=finite,
                                        help="Seconds to wait for a live runner to stop before returning.")]


def _state_line(verb: str, s: dict) -> str:
    done = f"{s['completed'] + s['failed']} of {s['total']} done"
    return f"batch {s['batch_id']}: {verb} ({done}, {s['failed']} failed, {s['remaining']} remaining)"


def _kept(b: dict) -> str:
    """' (3 files kept: 2 superseded by BATCH, 1 changed since)' for a purge that kept some."""
    reasons = b.get("outputs_kept_reasons") or {}
    if not b.get("outputs_kept"):
        return ""
    words = {"changed": "changed since", "missing": "already gone", "link": "behind a link",
             "outside": "outside the output folder"}
    parts = []
    if reasons.get("superseded"):
        by = ", ".join(b.get("superseded_by") or {})
        parts.append(f"{reasons['superseded']} superseded by {by} (a later batch wrote over them)")
    parts += [f"{n} {words.get(k, k)}" for k, n in reasons.items() if k != "superseded" and n]
    return f" ({b['outputs_kept']} files kept: {'; '.join(parts)})"


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    @handle_errors
    def pause(
        batch: BatchArg,
        now: Annotated[bool, typer.Option("--now", help="Abandon in-flight items (they stay pending).")] = False,
        wait: WaitOpt = 60.0,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Pause a batch: its runner finishes in-flight items, records paused and exits.

        Example: batchcli pause nightly
        """
        from batchcli.cli import console
        from batchcli.engine import lifecycle
        from batchcli.engine.store import Store

        s = lifecycle.pause(Store(home).resolve(batch), now=now, wait=wait)
        if json_out:
            console.emit_json(s)
            return
        if s["status"] != "paused":
            console.info(f"batch {s['batch_id']}: pause requested; runner pid {s.get('runner_pid')} is "
                         f"finishing its in-flight items (status: {s['status']})")
            return
        verb = "already paused" if s.get("already") else "paused"
        console.info(_state_line(verb, s) + f"\n  resume with: batchcli resume {s['batch_id']}")

    @app.command(no_args_is_help=True)
    @handle_errors
    def cancel(
        batch: BatchArg,
        wait: WaitOpt = 60.0,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Cancel a batch: remaining items are skipped. Final: it cannot be resumed.

        Example: batchcli cancel 20261120-2230
        """
        from batchcli.cli import console
        from batchcli.engine import lifecycle
        from batchcli.engine.store import Store

        s = lifecycle.cancel(Store(home).resolve(batch), wait=wait)
        if json_out:
            console.emit_json(s)
            return
        if s["status"] != "cancelled":
            console.info(f"batch {s['batch_id']}: cancel requested; runner pid {s.get('runner_pid')} "
                         f"has not stopped yet (status: {s['status']})")
            return
        console.info(_state_line("cancelled", s))

    @app.command()
    @handle_errors
    def recover(
        resume: Annotated[bool, typer.Option("--resume", help="Resume each recovered batch in the background.")] = False,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Find batches whose runner died: mark them paused, remove stray temp files (and resume).

        With --resume, scheduled batches that no runner waits for (after a reboot) get one again:
        those whose time has passed start at once.

        Safe to run at boot from cron or systemd: a second run changes nothing.

        Example: batchcli recover --resume
        """
        from batchcli.cli import console
        from batchcli.engine import lifecycle
        from batchcli.engine.store import Store

        store = Store(home)
        resume_fn = None
        if resume:
            from batchcli.api import run_options
            from batchcli.engine.slots import budget
            from batchcli.engine.spawn import spawn_detached

            def resume_fn(paths):
                from batchcli.engine.journal import replay

                st = replay(paths.journal, int(paths.load_manifest()["total"]))
                spawn_detached(paths, run_options(last=st.options, slots=budget(store.home)), store.home, resume=True)

        data = lifecycle.recover(store, resume=resume, resume_fn=resume_fn)
        if json_out:
            console.emit_json(data)
        else:
            for b in data["batches"]:
                if b.get("status") == "error":
                    console.info(f"batch {b['batch_id']}: could not recover: {b['error']}")
                    continue
                if b.get("status") == "scheduled":
                    what = ("due: started in the background" if b["due"] else "waiting again in the background") \
                        if b.get("resumed") else "no runner waits for it; start one with: batchcli recover --resume"
                    console.info(f"batch {b['batch_id']}: scheduled ({b['reason']}); {what}")
                    continue
                if b.get("status") == "damaged":
                    console.info(f"batch {b['batch_id']}: damaged, {b['reason']}; remove it with: "
                                 f"batchcli cleanup --status damaged --older-than 0s")
                    continue
                tail = ", resumed in the background" if b.get("resumed") else \
                    f"; resume with: batchcli resume {b['batch_id']}"
                if b.get("resumed_by") is not None:
                    tail = (f", resumed meanwhile by pid {b['resumed_by']}" if b["resumed_by"]
                            else ", resumed meanwhile by another command (it has ended)")
                who = f"runner pid {b['runner_pid']}" if b.get("runner_pid") else "the command that created it"
                console.info(f"batch {b['batch_id']}: {who} died; now paused "
                             f"({b['remaining']} remaining, {b['temp_files_removed']} temp files removed){tail}")
        if data["failed_count"]:
            raise typer.Exit(1)

    @app.command()
    @handle_errors
    def cleanup(
        older_than: Annotated[str, typer.Option("--older-than", metavar="AGE", help="Only batches idle this long (90m, 12h, 7d, 2w).")] = "7d",
        keep_last: Annotated[int, typer.Option("--keep-last", metavar="N", min=0, help="Always keep the N newest selected batches.")] = 0,
        status: Annotated[Optional[list[str]], typer.Option(
            "--status", metavar="STATE", show_default=False,
            help="States to clean (repeatable or comma-separated; default completed,cancelled,failed).")] = None,
        purge_outputs: Annotated[bool, typer.Option("--purge-outputs", help="Also delete the output files the batch wrote (only those).")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")] = False,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Remove old batch records (retention). Quiet and exit 0 when there is nothing to do.

        Example (crontab): 0 4 * * * batchcli cleanup --older-than 14d --keep-last 20
        """
        from batchcli.cli import console
        from batchcli.engine import lifecycle
        from batchcli.engine.store import Store
        from batchcli.units import parse_age

        wanted = parse_states(status) or lifecycle.DEFAULT_CLEANUP_STATUS
        data = lifecycle.cleanup(Store(home), older_than=parse_age(older_than, "--older-than"), keep_last=keep_last,
                                 status=wanted, purge_outputs=purge_outputs, dry_run=dry_run)
        refused = [s for s in data["skipped"] if s.get("refused")]
        if json_out:
            console.emit_json(data)
        else:
            verb = "would remove" if dry_run else "removed"
            for b in data["cleaned"]:
                extra = f", {b['outputs_removed']} output files" if purge_outputs else ""
                console.info(f"{verb} batch {b['batch_id']} ({b['status']}{extra}){_kept(b)}")
            for s in refused:
                console.error(f"kept batch {s['batch_id']}: {s['reason']}")
        if refused:  # the same exit code with --json: a script must not miss a refused purge
            raise typer.Exit(1)
