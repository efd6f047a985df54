"""All terminal output: rich on a terminal, plain lines in logs, NDJSON with --json.

The only module that imports rich (lazily, so `batchcli status --json` starts fast)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

PLAIN_EVERY = 5.0
"""Seconds between progress lines when stdout is not a terminal."""
FAIL_LINES = 20
"""Failed items shown one per line during a run; the rest are counted at the end."""


def is_tty(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stdout
    return not _VANISHED and stream.isatty() and not os.environ.get("CI") and os.environ.get("TERM") != "dumb"


# --- the shell may vanish ----------------------------------------------------------------------
# A closed stdout or stderr (`| head -1`, a killed `tee`, a dropped SSH session) must never stop a
# batch. A write that fails with EPIPE or EIO, or a SIGHUP, points that file descriptor at the
# batch's log.txt (at /dev/null outside a run), so the run goes on and every later line, from
# any thread, lands there.

_FALLBACK: list[str] = []  # the batch's log.txt while a batch runs in this process
_VANISHED: set[int] = set()  # file descriptors already pointed elsewhere


def log_to(path: str | None) -> None:
    """Where output goes once the terminal or pipe it was going to is gone (None: nowhere)."""
    _FALLBACK[:] = [path] if path else []


def vanish(stream: TextIO, why: str) -> None:
    """Point `stream`'s descriptor at the fallback log (or /dev/null), once."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    if fd in _VANISHED:
        return
    _VANISHED.add(fd)
    target = _FALLBACK[0] if _FALLBACK else os.devnull
    try:
        new = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        new = os.open(os.devnull, os.O_WRONLY)
    name = {1: "stdout", 2: "stderr"}.get(fd, f"fd {fd}")
    if target != os.devnull:
        os.write(new, f"--- {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {name} {why}; "
                      f"output continues here\n".encode())
    os.dup2(new, fd)
    os.close(new)


def gone(stream: TextIO) -> bool:
    """Whether `stream`'s terminal or pipe has gone (its writes now go to the fallback)."""
    try:
        return stream.fileno() in _VANISHED
    except (OSError, ValueError):
        return True


def reader_left(stream: TextIO) -> bool:
    """Whether the pipe `stream` writes into has lost its reader (`| head -1` exited), known
    without writing: poll() reports POLLERR on such a pipe (a socket whose peer left: POLLHUP).
    False for a file, a terminal, or where poll() is missing."""
    if gone(stream):
        return True
    try:
        import select

        watch = select.poll()
        watch.register(stream.fileno(), 0)  # no events asked: only the errors, always reported
        return any(ev & (select.POLLERR | select.POLLHUP) for _fd, ev in watch.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def vanish_all(why: str) -> None:
    """The terminal hung up (SIGHUP): both streams go to the log."""
    for stream in (sys.stdout, sys.stderr):
        vanish(stream, why)


def write(stream: TextIO, text: str, again: bool = True) -> None:
    """Write and flush; a closed pipe or a hung-up terminal never raises: the text goes to the
    fallback instead (a failed flush drops what was buffered, so it is written again there;
    not with `again` False)."""
    try:
        stream.write(text)
        stream.flush()
    except OSError as exc:
        vanish(stream, f"closed ({exc.strerror or exc})")
        if not again:
            return
        try:
            stream.write(text)
            stream.flush()
        except OSError:
            pass


def flush_at_exit() -> None:
    """Flush both streams before the interpreter does, so a pipe closed by then is rerouted here
    instead of ending the process with 'Exception ignored ... BrokenPipeError'."""
    for stream in (sys.stdout, sys.stderr):
        write(stream, "")


class _Guarded:
    """A stream for rich: its writes go through `write`, so a hung-up terminal never raises
    (not even in rich's refresh thread); once the terminal is gone they are dropped: a progress
    bar's frames and colour codes mean nothing in log.txt, which gets plain lines instead."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        if not gone(self._stream):
            write(self._stream, text, again=False)
        return len(text)

    def flush(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def rich_console():
    from rich.console import Console

    return Console(file=_Guarded(sys.stdout), highlight=False)


def setup_streams() -> None:
    """A file name that is not UTF-8 is printed as its bytes (as `ls` does), not a traceback."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass


def install_log_handler() -> None:
    """The `batchcli` loggers' warnings on stderr as `warning: message`, one line each, never a
    traceback (Python's last-resort handler prints them), written through `write`."""
    import logging

    class OneLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            write(sys.stderr, f"{record.levelname.lower()}: {record.getMessage()}".replace("\n", " ") + "\n")

    root = logging.getLogger("batchcli")
    if not root.handlers:
        root.addHandler(OneLine(logging.WARNING))


def emit_json(obj: Any, stream: TextIO | None = None) -> None:
    from batchcli import jsonio

    write(stream or sys.stdout, jsonio.text(obj) + "\n")


def error(msg: str) -> None:
    write(sys.stderr, f"Error: {msg}\n")


def warn(msg: str) -> None:
    """A problem that does not change the outcome (a notification that failed, say)."""
    write(sys.stderr, f"warning: {msg}\n")


def info(msg: str) -> None:
    write(sys.stdout, msg + "\n")


def plural(n: int, word: str) -> str:
    """'1 item', '2 items', '1 worker'."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def fmt_rate(rate: float | None) -> str:
    return "-" if not rate else f"{rate:.1f}/s"


def fmt_secs(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def fmt_run_rate(rate: float) -> str:
    """A run's items a second, or seconds an item when that is under 0.1 a second (a video: 36.0 s/item)."""
    return f"{rate:.1f} items/s" if rate >= 0.1 or rate <= 0 else f"{1 / rate:.1f} s/item"


class ProgressView:
    """Consumes runner events and shows them the right way for where stdout goes."""

    def __init__(self, mode: str):  # "tty", "plain", "json", "quiet"
        self.mode = mode
        self._last_plain = 0.0
        self._progress = None
        self._bars: dict[int, Any] = {}  # a running video's bar, by item
        self._task = None
        self._fail_lines = 0
        self._batch = ""

    def __enter__(self) -> ProgressView:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, ev: dict[str, Any]) -> None:
        if self._progress is not None and _VANISHED:  # the terminal is gone: plain lines to the log
            self.close()
            self.mode = "plain"
        if self.mode == "json":
            emit_json(ev)
            return
        if self.mode == "quiet":
            return
        kind = ev["type"]
        if kind == "started":
            self._batch = ev["batch_id"]
            self._started(ev)
        elif kind == "progress":
            self._update(ev)
        elif kind == "item_failed":
            self._failed(ev)
        elif kind in ("finished", "paused") and self._fail_lines > FAIL_LINES:
            self.close()
            write(sys.stderr, f"... and {self._fail_lines - FAIL_LINES} more failures: "
                              f"batchcli status {self._batch} --items --failed\n")
        elif kind == "state":
            self._state(ev)

    def _state(self, ev: dict[str, Any]) -> None:
        """Queued for a worker slot, throttled by the machine's load, or running again."""
        where = f" #{ev['queue_position']}" if ev.get("queue_position") else ""
        msg = f"batch {ev['batch_id']}: {ev['status']}{where}" + (f" - {ev['reason']}" if ev.get("reason") else "")
        if self._progress is not None:
            self._progress.console.print(msg, markup=False, highlight=False)
        else:
            info(msg)

    def _started(self, ev: dict[str, Any]) -> None:
        verb = "resuming" if ev.get("resumed") else "starting"
        line = (f"batch {ev['batch_id']}: {verb}, {ev['remaining']} of {plural(ev['total'], 'item')} to do "
                f"on {plural(ev['workers'], 'worker')}")
        if self.mode == "tty":
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            console = rich_console()
            console.print(line)
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(),
                TextColumn("[red]{task.fields[failed]}"), transient=False, console=console)
            self._task = self._progress.add_task("processing", total=ev["total"],
                                                 completed=ev["total"] - ev["remaining"], rate="", failed="")
            self._progress.start()
        else:
            info(line)

    def _update(self, ev: dict[str, Any]) -> None:
        done = ev["completed"] + ev["failed"]
        if self._progress is not None:
            self._progress.update(self._task, completed=done, rate=fmt_rate(ev["rate"]),
                                  failed=f"{ev['failed']} failed" if ev["failed"] else "")
            self._video_bars(ev.get("videos") or [])
        elif self.mode == "plain":
            now = time.monotonic()
            if now - self._last_plain >= PLAIN_EVERY:
                self._last_plain = now
                info(f"progress {done}/{ev['total']} completed={ev['completed']} failed={ev['failed']} "
                     f"rate={fmt_rate(ev['rate'])} eta={fmt_secs(ev['eta_s'])}")
                for v in ev.get("videos") or []:
                    info(f"  video {video_line(v)}")

    def _video_bars(self, videos: list[dict[str, Any]]) -> None:
        """One bar per running video (frames done of its total), gone when it finishes."""
        bars = self._bars
        for v in videos:
            if v["i"] not in bars:
                bars[v["i"]] = self._progress.add_task(f"  {os.path.basename(v.get('src') or '')}", total=None,
                                                       rate="", failed="")
            self._progress.update(bars[v["i"]], completed=v["frames_done"], total=v.get("frames_total"),
                                  rate=f"eta {fmt_secs(v.get('eta_s'))}")
        for i in [i for i in bars if i not in {v["i"] for v in videos}]:
            self._progress.remove_task(bars.pop(i))

    def _failed(self, ev: dict[str, Any]) -> None:
        self._fail_lines += 1
        if self._fail_lines > FAIL_LINES:
            return
        msg = f"failed [{ev['error_class']}] {ev['error']}".replace("\n", "\\n")
        if self._progress is not None:
            self._progress.console.print(msg, style="red", markup=False, highlight=False)
        else:
            write(sys.stderr, msg + "\n")


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
        f"  this run: {plural(res.processed_now, 'item')} in {fmt_secs(res.wall)} ({fmt_run_rate(res.rate)})",
    ]
    if res.out_dir:
        lines.append(f"  output: {res.out_dir}")
    if getattr(res, "first_frame_only", 0):
        n = res.first_frame_only
        lines.append(f"  animated: {n} input{'s' if n != 1 else ''} used {'their' if n != 1 else 'its'} first frame only")
    if res.top_failures:
        lines.append("  top failure reasons:")
        lines.extend(f"    {n:>6}  {reason}" for reason, n in res.top_failures)
        others = res.failed - sum(n for _, n in res.top_failures)
        if others > 0:
            lines.append(f"    and {others} more failed items with other reasons: "
                         f"batchcli status {res.batch_id} --items --failed")
    if (res.status == "paused" or res.remaining) and getattr(res, "resumable", True):  # (a halt: --max-failures)
        lines.append(f"  resume with: batchcli resume {res.batch_id}")
    info("\n".join(lines))


STATUS_STYLE = {"running": "cyan", "completed": "green", "failed": "red", "paused": "yellow",
                "cancelled": "magenta", "interrupted": "bold red", "pending": "white", "queued": "blue",
                "scheduled": "blue", "throttled": "yellow"}


def status_word(s: dict[str, Any]) -> str:
    """The status with its place in the queue (`queued #2`) or its start time (`scheduled ...`)."""
    if s.get("queue_position"):
        return f"{s['status']} #{s['queue_position']}"
    return s["status"]


def status_view(s: dict[str, Any]) -> None:
    state, left = status_word(s), ""
    if state in ("completed", "failed") and s["remaining"] and s.get("reason"):  # halted (--max-failures)
        left = f"; {plural(s['remaining'], 'item')} not run, resume with: batchcli resume {s['batch_id']}"
    elif state in ("completed", "failed") and s["remaining"]:  # items re-queued (verify --repair)
        state += f", {s['remaining']} to repair (batchcli resume {s['batch_id']})"
    rows = [
        ("batch", s["batch_id"] + (f"  ({s['name']})" if s.get("name") else "")),
        ("status", state + (f" - {s['reason']}" if s.get("reason") else "") + left),
        ("progress", f"{s['completed'] + s['failed']}/{s['total']} ({s['progress_percent']:.1f}%)"),
        ("completed", str(s["completed"])),
        ("failed", str(s["failed"])),
        *([("skipped", str(s["skipped"]))] if s.get("skipped") else []),
        ("remaining", str(s["remaining"])),
        ("pipeline", s.get("pipeline") or ""),
        ("output", s.get("out_dir") or "-"),
        ("created", s.get("created_at") or "-"),
        ("started", s.get("started_at") or "-"),
    ]
    if s.get("executor"):
        rows.append(("executor", f"{s['executor']} ({plural(s['workers'], 'worker') if s.get('workers') else '? workers'})"))
    if s.get("runner_pid"):
        rows.append(("runner pid", str(s["runner_pid"])))
    if s.get("priority"):
        rows.append(("priority", str(s["priority"])))
    if s.get("worker_rss"):
        rows.append(("worker memory", f"{s['worker_rss'] / (1 << 20):.0f} MiB peak RSS measured"))
    if s.get("completed_at"):
        rows.append(("finished", s["completed_at"]))
    if s.get("journal_corrupt_lines"):
        more = s["journal_corrupt_lines"] - len(s["journal_problems"])
        rows.append(("journal", f"{s['journal_corrupt_lines']} corrupt line(s) skipped: "
                     + "; ".join(s["journal_problems"]) + (f"; and {more} more" if more > 0 else "")))
    top = s.get("top_failures") or []
    for f in top:
        rows.append(("failure", f"{f['count']} x {f['reason']}"))
    others = s["failed"] - sum(f["count"] for f in top)
    if top and others > 0:
        rows.append(("failure", f"and {others} more with other reasons: "
                                f"batchcli status {s['batch_id']} --items --failed"))
    for v in s.get("videos") or []:
        rows.append(("video", video_line(v)))
    if is_tty():
        from rich.table import Table

        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column(style="bold")
        t.add_column()
        for k, v in rows:
            style = STATUS_STYLE.get(s["status"]) if k == "status" else None
            t.add_row(k, v, style=style)
        rich_console().print(t)
    else:
        width = max(len(k) for k, _ in rows)
        info("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def table(headers: list[str], rows: list[list[str]]) -> None:
    if is_tty():
        from rich.table import Table

        t = Table(*headers)
        for r in rows:
            t.add_row(*r)
        rich_console().print(t)
    else:
        info("\t".join(headers))
        for r in rows:
            info("\t".join(r))
