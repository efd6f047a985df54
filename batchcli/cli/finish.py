"""The end of a run as the CLI sees it: the notification and report flags of start, resume, sync
and watch, and what follows a batch's end or pause (CI summary, --report, --on-finish, webhook).

The flags are run flags: journaled with each run, so a resume (or `recover --resume`) keeps
them. The webhook secret is the exception: it is kept in the batch folder (mode 0600), never in
the journal or on a command line."""

import os
import signal
import subprocess
import sys
from typing import Annotated, Any, Optional

import typer

OnFinishOpt = Annotated[Optional[str], typer.Option(
    "--on-finish", metavar="CMD", show_default=False,
    help="Shell command run when the batch ends or pauses, with BATCHCLI_BATCH_ID, BATCHCLI_STATUS, "
         "BATCHCLI_COMPLETED, BATCHCLI_FAILED and BATCHCLI_EXIT_CODE set. Its failure never changes the exit code.")]
WebhookOpt = Annotated[Optional[str], typer.Option(
    "--webhook", metavar="URL", show_default=False,
    help="POST the finished/paused event as JSON to URL when the batch ends or pauses (retried with backoff).")]
WebhookSecretOpt = Annotated[Optional[str], typer.Option(
    "--webhook-secret", metavar="S", envvar="BATCHCLI_WEBHOOK_SECRET", show_default=False,
    help="Sign the webhook: X-Batchcli-Signature: sha256=HMAC-SHA256 of the body.")]
ReportOpt = Annotated[Optional[str], typer.Option(
    "--report", metavar="FILE", show_default=False,
    help="When the run ends, write FILE.xml (JUnit: one test case per item) or FILE.md (Markdown summary).")]
SummaryOpt = Annotated[Optional[bool], typer.Option(
    "--summary/--no-summary", show_default=False,
    help="Append a Markdown summary to $GITHUB_STEP_SUMMARY when it is set (default: on).")]


def check_secret(secret: str | None, opts: Any) -> None:
    """--webhook-secret needs a webhook (given now or by the batch's last run)."""
    if secret and not opts.given.get("webhook"):
        from batchcli.errors import ConfigError

        raise ConfigError("--webhook-secret goes with --webhook URL")


def keep_secret(paths: Any, secret: str | None) -> None:
    """Store --webhook-secret with the batch, for this run and its resumes."""
    if secret is not None:
        from batchcli.results.notify import save_secret

        save_secret(paths, secret)


class Finish:
    """Watches a run's events for its end, then runs what follows it."""

    def __init__(self, paths: Any, opts: Any, json_out: bool = False):
        from batchcli.results.notify import FINISH_DEFAULTS

        self.paths = paths
        self.json_out = json_out
        self.flags = {k: opts.given.get(k, v) for k, v in FINISH_DEFAULTS.items()}
        self.event: dict[str, Any] | None = None

    def tap(self, view: Any) -> Any:
        def sink(ev: dict[str, Any]) -> None:
            if ev.get("type") in ("finished", "paused"):
                self.event = ev
            view(ev)

        return sink

    def done(self, result: Any) -> None:
        """Reports, --on-finish, webhook; each problem is one warning line on stderr."""
        from batchcli.cli import console
        from batchcli.results.notify import after_run

        if self.flags["delete"] and result.status == "completed":
            self._delete_stale()
        if not (self.flags["on_finish"] or self.flags["webhook"] or self.flags["report"]
                or (self.flags["summary"] and os.environ.get("GITHUB_STEP_SUMMARY"))):
            return
        event = dict(self.event or {"type": "paused" if result.status == "paused" else "finished",
                                    "status": result.status, "exit_code": result.exit_code,
                                    "completed": result.completed, "failed": result.failed,
                                    "remaining": result.remaining, "total": result.total})
        try:
            name = self.paths.load_manifest().get("name")
        except (OSError, ValueError):
            name = None
        event = {"type": event.pop("type"), "batch_id": self.paths.id, "name": name, **event}
        try:
            sys.stderr.flush()
            output = sys.stderr if sys.stderr.fileno() >= 0 else None
        except (AttributeError, OSError, ValueError):  # no real stderr: the command's output is dropped
            output = None
        def stop(*_: Any) -> None:
            raise KeyboardInterrupt  # as Ctrl-C: the batch has ended; its exit code stays

        try:
            term = signal.signal(signal.SIGTERM, stop)  # the default would end the process with 143
        except ValueError:  # not the main thread
            term = None
        try:
            problems = after_run(self.paths, event, self.flags, output=output or subprocess.DEVNULL)
        except KeyboardInterrupt:
            problems = ["notifications interrupted"]
        finally:
            if term is not None:
                signal.signal(signal.SIGTERM, term)
        for p in problems:
            console.warn(p)

    def _delete_stale(self) -> None:
        """sync --delete, once the batch completed: outputs whose inputs are gone."""
        from batchcli.cli import console
        from batchcli.engine.purge import Refused
        from batchcli.engine.status import mark
        from batchcli.engine.store import Store
        from batchcli.engine.sync import delete_stale

        try:
            gone = delete_stale(Store(os.path.dirname(os.path.dirname(self.paths.dir))), self.paths)
        except (Refused, OSError) as exc:
            console.warn(f"--delete: {exc}")
            return
        if gone.removed or gone.kept_count:
            mark(self.paths, "outputs_deleted", count=gone.removed, kept=dict(gone.kept), outputs=gone.removed_rels[:100])
        if self.json_out:
            console.emit_json({"type": "sync_deleted", "batch_id": self.paths.id, "removed": gone.removed,
                               "kept": dict(gone.kept), "outputs": gone.removed_rels[:1000]})
        elif gone.removed or gone.kept_count:
            console.info(f"removed {gone.removed} output(s) whose inputs are gone" + kept_text(gone))


KEPT = {"changed": "changed since written", "missing": "gone already", "link": "behind a link",
        "outside": "outside the folder"}


def kept_text(gone: Any) -> str:
    """'; kept 1 changed since written, 2 gone already' (empty when nothing was kept)."""
    parts = [f"{n} {KEPT.get(why, why)}" for why, n in sorted(gone.kept.items())]
    return f"; kept {', '.join(parts)}" if parts else ""
