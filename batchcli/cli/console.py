"""All terminal output: rich on a terminal, plain lines in logs, NDJSON with --json.

The only module that imports rich (lazily, so `batchcli status --json` starts fast)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

PLAIN_EVERY = 5.0
"""Seconds between progress lines when stdout is not a terminal."""


def is_tty(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


def emit_json(obj: Any, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    stream.flush()


def error(msg: str) -> None:
    sys.stderr.write(f"Error: {msg}\n")
    sys.stderr.flush()


def warn(msg: str) -> None:
    """A problem that does not change the outcome (a notification that failed, say)."""
    try:
        sys.stderr.write(f"warning: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # the shell went away: the batch's result stands
        pass


def info(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def fmt_rate(rate: float | None) -> str:
    return "-" if not rate else f"{rate:.1f}/s"


def fmt_secs(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class ProgressView:
    """Consumes runner events and shows them the right way for where stdout goes."""

    def __init__(self, mode: str):  # "tty", "plain", "json", "quiet"
        self.mode = mode
        self._last_plain = 0.0
        self._progress = None
        self._task = None
        self._fail_lines = 0

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, ev: dict[str, Any]) -> None:
        if self.mode == "json":
            emit_json(ev)
            return
        if self.mode == "quiet":
            return
        kind = ev["type"]
        if kind == "started":
            self._started(ev)
        elif kind == "progress":
            self._update(ev)
        elif kind == "item_failed":
            self._failed(ev)

    def _started(self, ev: dict[str, Any]) -> None:
        verb = "resuming" if ev.get("resumed") else "starting"
        line = (f"batch {ev['batch_id']}: {verb}, {ev['remaining']} of {ev['total']} items to do "
                f"on {ev['workers']} workers")
        if self.mode == "tty":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            Console(highlight=False).print(line)
            self._progress = Progress(
                TextColumn("[bold]processing"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("[red]{task.fields[failed]}"), transient=False)
            self._task = self._progress.add_task("run", total=ev["total"], completed=ev["total"] - ev["remaining"],
                                                 rate="", failed="")
            self._progress.start()
        else:
            info(line)

    def _update(self, ev: dict[str, Any]) -> None:
        done = ev["completed"] + ev["failed"]
        if self._progress is not None:
            self._progress.update(self._task, completed=done, rate=fmt_rate(ev["rate"]),
                                  failed=f"{ev['failed']} failed" if ev["failed"] else "")
        elif self.mode == "plain":
            now = time.monotonic()
            if now - self._last_plain >= PLAIN_EVERY:
                self._last_plain = now
                info(f"progress {done}/{ev['total']} completed={ev['completed']} failed={ev['failed']} "
                     f"rate={fmt_rate(ev['rate'])} eta={fmt_secs(ev['eta_s'])}")
                for v in ev.get("videos") or []:
                    info(f"  video {video_line(v)}")

    def _failed(self, ev: dict[str, Any]) -> None:
        self._fail_lines += 1
        if self._fail_lines > 20:
            return
        msg = f"failed [{ev['error_class']}] {ev['error']}".replace("\n", "\\n")
        if self._progress is not None:
            self._progress.console.print(msg, style="red", markup=False, highlight=False)
        else:
            sys.stderr.write(msg + "\n")


def video_line(v: dict[str, Any]) -> str:
    """'clip.mp4: frames 240/1500 (16%), 2 segments, eta 0:41'."""
    total = v.get("frames_total") or 0
    pct = f" ({v['frames_done'] * 100 // total}%)" if total else ""
    return (f"{os.path.basename(v.get('src') or str(v['i']))}: frames {v['frames_done']}/{total or '?'}{pct}, "
            f"{v['segments']} segment{'s' if v['segments'] != 1 else ''}, eta {fmt_secs(v.get('eta_s'))}")


def summary(res: Any) -> None:
    """The end-of-run summary (plain text: it reads the same on a terminal and in a log)."""
    lines = [
        f"batch {res.batch_id}: {res.status}"
        + (f" ({res.reason})" if res.reason else ""),
        f"  completed {res.completed}, failed {res.failed}, remaining {res.remaining}, of {res.total}",
        f"  this run: {res.processed_now} items in {fmt_secs(res.wall)} ({res.rate:.1f} items/s)",
    ]
    if res.out_dir:
        lines.append(f"  output: {res.out_dir}")
    if getattr(res, "first_frame_only", 0):
        n = res.first_frame_only
        lines.append(f"  animated: {n} input{'s' if n != 1 else ''} used {'their' if n != 1 else 'its'} first frame only")
    if res.top_failures:
        lines.append("  top failure reasons:")
        lines.extend(f"    {n:>6}  {reason}" for reason, n in res.top_failures)
    if res.status == "paused":
        lines.append(f"  resume with: batchcli resume {res.batch_id}")
    info("\n".join(lines))


STATUS_STYLE = {"running": "cyan", "completed": "green", "failed": "red", "paused": "yellow",
                "cancelled": "magenta", "interrupted": "bold red", "pending": "white"}


def status_view(s: dict[str, Any]) -> None:
    rows = [
        ("batch", s["batch_id"] + (f"  ({s['name']})" if s.get("name") else "")),
        ("status", s["status"] + (f" - {s['reason']}" if s.get("reason") else "")),
        ("progress", f"{s['completed'] + s['failed']}/{s['total']} ({s['progress_percent']:.1f}%)"),
        ("completed", str(s["completed"])),
        ("failed", str(s["failed"])),
        ("remaining", str(s["remaining"])),
        ("pipeline", s.get("pipeline") or ""),
        ("output", s.get("out_dir") or "-"),
        ("created", s.get("created_at") or "-"),
        ("started", s.get("started_at") or "-"),
    ]
    if s.get("executor"):
        rows.append(("executor", f"{s['executor']} ({s.get('workers') or '?'} workers)"))
    if s.get("runner_pid"):
        rows.append(("runner pid", str(s["runner_pid"])))
    if s.get("completed_at"):
        rows.append(("finished", s["completed_at"]))
    if s.get("journal_corrupt_lines"):
        rows.append(("journal", f"{s['journal_corrupt_lines']} corrupt line(s) skipped: "
                     + "; ".join(s["journal_problems"])))
    for f in s.get("top_failures") or []:
        rows.append(("failure", f"{f['count']} x {f['reason']}"))
    for v in s.get("videos") or []:
        rows.append(("video", video_line(v)))
    if is_tty():
        from rich.console import Console
        from rich.table import Table

        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        for k, v in rows:
            style = STATUS_STYLE.get(s["status"]) if k == "status" else None
            t.add_row(k, v, style=style)
        Console(highlight=False).print(t)
    else:
        width = max(len(k) for k, _ in rows)
        info("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def table(headers: list[str], rows: list[list[str]]) -> None:
    if is_tty():
        from rich.console import Console
        from rich.table import Table

        t = Table(*headers)
        for r in rows:
            t.add_row(*r)
        Console(highlight=False).print(t)
    else:
        info("\t".join(headers))
        for r in rows:
            info("\t".join(r))
