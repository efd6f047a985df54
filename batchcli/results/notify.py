"""Telling others that a batch ended or paused: a shell command (`--on-finish`) and a webhook
(`--webhook`, signed with `--webhook-secret`). Neither ever changes the batch's result: what goes
wrong comes back as a one-line message for the caller to show."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import subprocess
import time
import uuid
from typing import IO, Any
from urllib.parse import urlsplit

from batchcli import __version__
from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError

ON_FINISH_TIMEOUT = 600.0
"""Seconds an --on-finish command may run before it is killed (it never holds a batch up longer)."""
WEBHOOK_TIMEOUT = 10.0
"""Seconds one webhook request may take, from connecting to the last byte of the answer."""
WEBHOOK_DEADLINE = 60.0
"""Seconds a webhook is retried for (connection errors, timeouts, 5xx, 429), with backoff;
`BATCHCLI_WEBHOOK_DEADLINE` overrides it (0 to MAX_DEADLINE)."""
DEADLINE_ENV = "BATCHCLI_WEBHOOK_DEADLINE"
MAX_DEADLINE = 3600.0
SECRET_FILE = "webhook.secret"
"""The webhook secret lives in the batch folder (mode 0600), never in the journal or argv."""
SIGNATURE_HEADER = "X-Batchcli-Signature"


FINISH_DEFAULTS = {"on_finish": None, "webhook": None, "report": None, "summary": True, "delete": False}
"""The run flags of what follows a run, and their defaults: journaled with the other run flags
(api.RUN_DEFAULTS), so a resume keeps them."""


def finish_flags(on_finish: str | None = None, webhook: str | None = None, report: str | None = None,
                 summary: bool | None = None) -> dict[str, Any]:
    """The flags given, validated (ConfigError, exit 2, before any work); an empty value turns
    one off. A command keeps the folder it was given in; a report path is made absolute."""
    out: dict[str, Any] = {}
    if on_finish is not None:
        out["on_finish"] = {"cmd": on_finish, "cwd": os.getcwd()} if on_finish.strip() else None
    if webhook is not None:
        if webhook:
            check_webhook_url(webhook)
            webhook_deadline()
        out["webhook"] = webhook or None
    if report is not None:
        if report:
            from batchcli.results.report import report_kind  # imported only when wanted: a start pays nothing

            report_kind(report)
        out["report"] = os.path.abspath(report) if report else None
    if summary is not None:
        out["summary"] = summary
    return out


def check_webhook_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--webhook {url}: expected an http:// or https:// URL")


def webhook_deadline() -> float:
    """The seconds a webhook is retried for: BATCHCLI_WEBHOOK_DEADLINE, else 60. ConfigError
    (exit 2, checked before any work when --webhook is given) for anything but 0 to 3600."""
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return WEBHOOK_DEADLINE
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_DEADLINE:  # also NaN: a deadline never reached would retry for ever
        raise ConfigError(f"{DEADLINE_ENV}={raw}: expected the seconds a webhook is retried for, "
                          f"from 0 to {MAX_DEADLINE:.0f}")
    return value


def signature(secret: str, body: bytes) -> str:
    """`sha256=HEX`, the HMAC-SHA256 of the body (the convention GitHub's webhooks use)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def save_secret(paths: BatchPaths, secret: str) -> None:
    """Keep the secret for this batch's later runs (a resume, recover --resume)."""
    path = os.path.join(paths.dir, SECRET_FILE)
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    os.replace(path + ".tmp", path)


def load_secret(paths: BatchPaths) -> str | None:
    try:
        with open(os.path.join(paths.dir, SECRET_FILE)) as fh:
            return fh.read() or None
    except FileNotFoundError:
        return None


def on_finish_env(event: dict[str, Any]) -> dict[str, str]:
    """What an --on-finish command finds in its environment."""
    return {
        "BATCHCLI_BATCH_ID": str(event.get("batch_id", "")),
        "BATCHCLI_NAME": str(event.get("name") or ""),
        "BATCHCLI_STATUS": str(event.get("status", "")),
        "BATCHCLI_COMPLETED": str(event.get("completed", 0)),
        "BATCHCLI_FAILED": str(event.get("failed", 0)),
        "BATCHCLI_REMAINING": str(event.get("remaining", 0)),
        "BATCHCLI_TOTAL": str(event.get("total", 0)),
        "BATCHCLI_EXIT_CODE": str(event.get("exit_code", "")),
        "BATCHCLI_OUT_DIR": str(event.get("out_dir") or ""),
    }


def run_on_finish(cmd: str, cwd: str | None, event: dict[str, Any], output: IO | int | None = None,
                  timeout: float = ON_FINISH_TIMEOUT) -> str | None:
    """Run `cmd` through the shell with the batch's figures in its environment; its output goes
    to `output` (our stderr: stdout stays the batch's). None when it succeeded, else why not."""
    env = {**os.environ, **on_finish_env(event)}
    if cwd and not os.path.isdir(cwd):
        cwd = None
    try:  # its own process group: what it started goes with it when it is killed
        proc = subprocess.Popen(cmd, shell=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=output, start_new_session=True)
    except OSError as exc:
        return f"--on-finish command could not run ({exc.strerror or exc}): {cmd}"
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return f"--on-finish command killed after {timeout:.0f} s: {cmd}"
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the command goes too
        _kill_group(proc)
        raise
    if code != 0:
        return f"--on-finish command exited with code {code}: {cmd}"
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def post_webhook(url: str, event: dict[str, Any], secret: str | None = None,
                 deadline: float | None = None, sleep=time.sleep) -> str | None:
    """POST the event as JSON; retried with exponential backoff (1, 2, 4 ... 10 s) while the
    receiver is unreachable, times out, or answers 5xx or 429, for at most `deadline` seconds.
    None when it was delivered (2xx), else why not."""
    import urllib.error
    import urllib.request

    if deadline is None:
        try:
            deadline = webhook_deadline()
        except ConfigError:  # set since the run began (a resume's environment): the default
            deadline = WEBHOOK_DEADLINE
    body = json.dumps(event, ensure_ascii=False, default=str).encode()
    headers = {"Content-Type": "application/json", "User-Agent": f"batchcli/{__version__}",
               "X-Batchcli-Event": str(event.get("type", "")), "X-Batchcli-Delivery": str(uuid.uuid4())}
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    used = 0.0  # seconds spent on requests and waits (the budget: `deadline`)
    wait, attempt, problem = 1.0, 0, ""
    while True:
        attempt += 1
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        t0 = time.monotonic()
        exc = _send(req, min(WEBHOOK_TIMEOUT, max(1.0, deadline - used)))
        if exc is None:
            return None
        if isinstance(exc, urllib.error.HTTPError):
            problem = f"HTTP {exc.code} {exc.reason}"
            if exc.code < 500 and exc.code != 429:
                return f"webhook {url}: {problem} (not retried)"
        elif isinstance(exc, (urllib.error.URLError, OSError)):
            reason = getattr(exc, "reason", exc)
            problem = str(getattr(reason, "strerror", None) or reason)
        else:
            problem = f"{type(exc).__name__}: {exc}"  # e.g. a malformed answer (http.client)
        used += time.monotonic() - t0
        if used + wait > deadline:
            return f"webhook {url}: not delivered after {attempt} attempt(s) in {deadline:.0f} s: {problem}"
        sleep(wait)
        used += wait
        wait = min(wait * 2, 10.0)


def _send(req: Any, timeout: float) -> BaseException | None:
    """One request, given `timeout` seconds in all: the socket's timeout counts per read, so a
    receiver that answers a byte at a time would hold the runner for ever. It runs in a daemon
    thread that is left behind when it overstays (it dies with the process). None for a 2xx
    answer, else what went wrong."""
    import threading
    import urllib.request

    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                resp.read(1 << 16)
            outcome.append(None)
        except Exception as exc:  # handed to the caller, which words it
            outcome.append(exc)

    thread = threading.Thread(target=send, name="batchcli-webhook", daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else TimeoutError("timed out")


def after_run(paths: BatchPaths, event: dict[str, Any], flags: dict[str, Any],
              env: dict[str, str] | None = None, output: IO | int | None = None) -> list[str]:
    """Everything that follows a run's end or pause, in this order: the Markdown summary
    appended to `$GITHUB_STEP_SUMMARY` (unless flags["summary"] is False), the --report file,
    the --on-finish command (which may read both), the webhook. Returns the problems met."""
    env = os.environ if env is None else env
    problems: list[str] = []
    step_summary = env.get("GITHUB_STEP_SUMMARY")
    if step_summary and flags.get("summary", True) is not False:
        from batchcli.results.report import append_step_summary

        try:
            append_step_summary(paths, step_summary)
        except OSError as exc:
            problems.append(f"could not append the summary to $GITHUB_STEP_SUMMARY ({step_summary}): {exc.strerror or exc}")
    if flags.get("report"):
        from batchcli.results.report import write_report

        try:
            write_report(paths, flags["report"])
        except (OSError, ConfigError) as exc:
            why = f"could not write the report {flags['report']}: {getattr(exc, 'strerror', None) or exc}"
            try:  # an earlier run's report left there would be read as this one's (a CI's test reporter)
                os.unlink(flags["report"])
                why += "; the earlier report there was removed"
            except OSError:
                pass
            problems.append(why)
    on_finish = flags.get("on_finish")
    if on_finish and on_finish.get("cmd"):
        problems.append(run_on_finish(on_finish["cmd"], on_finish.get("cwd"), event, output) or "")
    if flags.get("webhook"):
        problems.append(post_webhook(flags["webhook"], event, load_secret(paths)) or "")
    return [p for p in problems if p]
