"""--on-finish and --webhook: a real HTTP server on 127.0.0.1 receives the signed event, a failing
command never changes the exit code, and a resume keeps both (they are journaled run flags)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import cli, cli_json, make_image, make_tree
from crashops import make_pngs, records, run, spawn, wait_for

from batchcli.results.notify import post_webhook, signature

SECRET = "s3cret-for-tests"


class Receiver:
    """A webhook receiver on 127.0.0.1: records every request, answers with the codes queued in
    `answers` (then 200)."""

    def __init__(self, answers=()):
        self.requests: list[dict] = []
        self.answers = list(answers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                code = outer.answers.pop(0) if outer.answers else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(answers=()):
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _verified(req: dict, secret: str) -> bool:
    sent = req["headers"].get("X-Batchcli-Signature", "")
    mine = "sha256=" + hmac.new(secret.encode(), req["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(sent, mine)


def test_webhook_arrives_signed_after_a_retry_and_on_finish_sees_the_figures(tmp_path, home, receiver):
    make_tree(tmp_path / "in", n=4)
    (tmp_path / "in" / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    hook = receiver(answers=[503])  # the first delivery fails: it is retried
    env_file = tmp_path / "env.txt"
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32", "-w", "1",
            "--name", "hooked", "--webhook", hook.url, "--webhook-secret", SECRET,
            "--on-finish", f"env | grep ^BATCHCLI_ > {env_file}", home=home)
    assert r.returncode == 1, r.stderr  # one failed item
    assert "warning" not in r.stderr
    assert len(hook.requests) == 2, "503 first, then delivered"
    req = hook.requests[-1]
    assert req["path"] == "/hook" and req["headers"]["Content-Type"] == "application/json"
    assert req["headers"]["X-Batchcli-Event"] == "finished"
    assert _verified(req, SECRET) and not _verified(req, "another secret")
    ev = json.loads(req["body"])
    assert ev["type"] == "finished" and ev["name"] == "hooked" and ev["status"] == "completed"
    assert (ev["completed"], ev["failed"], ev["total"], ev["exit_code"]) == (4, 1, 5, 1)
    batch_id = ev["batch_id"]
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert env["BATCHCLI_BATCH_ID"] == batch_id and env["BATCHCLI_STATUS"] == "completed"
    assert (env["BATCHCLI_COMPLETED"], env["BATCHCLI_FAILED"], env["BATCHCLI_EXIT_CODE"]) == ("4", "1", "1")
    # the secret is kept with the batch (mode 0600), never in the journal
    journal = home / "batches" / batch_id / "journal.jsonl"
    assert SECRET.encode() not in journal.read_bytes()
    assert os.stat(home / "batches" / batch_id / "webhook.secret").st_mode & 0o077 == 0


def test_a_failing_on_finish_command_never_changes_the_exit_code(tmp_path, home):
    make_tree(tmp_path / "in", n=3)
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32", "-w", "1",
            "--on-finish", "echo on-finish-ran >&2; exit 7", home=home)
    assert r.returncode == 0, r.stderr
    assert "on-finish-ran" in r.stderr  # its output goes to stderr: stdout stays the batch's
    assert "warning: --on-finish command exited with code 7" in r.stderr
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out2"), "-p", "resize 32x32", "-w", "1",
            "--json", "--on-finish", "echo to-stdout", home=home)
    assert r.returncode == 0
    assert [json.loads(line)["type"] for line in r.stdout.splitlines()][-1] == "finished"  # NDJSON only
    # SIGTERM while the command runs (a shutdown): it stops, the exit code stays the batch's (was 143)
    log = tmp_path / "term.log"
    p = spawn(home, "start", tmp_path / "in", "--out", tmp_path / "out3", "-p", "resize 32x32", "-w", "1",
              "--on-finish", "echo waiting >&2; sleep 60", log=log)
    wait_for(lambda: "waiting" in log.read_text(), what="the --on-finish command running")
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
    assert "warning: notifications interrupted" in log.read_text()
    assert not _processes_with("sleep 60", home=str(home)), "what it started goes with it"


def _processes_with(text: str, home: str) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if text in " ".join(proc.info["cmdline"] or ()) and proc.environ().get("BATCHCLI_HOME") == home:
                found.append(proc)
        except psutil.Error:
            pass
    return found


def test_pause_then_resume_notifies_both_and_keeps_the_flags(tmp_path, receiver):
    home = tmp_path / "home"
    make_pngs(tmp_path / "in", 30)
    hook = receiver()
    log = tmp_path / "finish.log"
    cmd = f'echo "$BATCHCLI_STATUS $BATCHCLI_EXIT_CODE" >> {log}'
    slow = tmp_path / "slow"  # items of 0.1 s until the pause
    slow.touch()
    runner = spawn(home, "start", tmp_path / "in", "--out", tmp_path / "out", "-w", "1", "--min-free-space", "0",
                   "-p", f"crashtest delay=0.1 slow={slow} | convert png", "--webhook", hook.url, "--webhook-secret", SECRET,
                   "--on-finish", cmd)
    journal = wait_for(lambda: next((home / "batches").glob("*/journal.jsonl"), None), what="a journal")
    wait_for(lambda: sum(r.get("type") == "item_completed" for r in records(journal)) >= 3, what="3 items done")
    batch_id = journal.parent.name
    assert run(home, "pause", batch_id).returncode == 0
    assert runner.wait(30) == 3
    assert log.read_text().split() == ["paused", "3"]
    assert [e["type"] for e in hook.events()] == ["paused"] and _verified(hook.requests[0], SECRET)

    slow.unlink()
    r = run(home, "resume", batch_id)  # no flags: the journaled ones, and the kept secret
    assert r.returncode == 0, r.stderr
    assert log.read_text().split() == ["paused", "3", "completed", "0"]
    assert [e["type"] for e in hook.events()] == ["paused", "finished"]
    assert hook.events()[-1]["completed"] == 30 and _verified(hook.requests[-1], SECRET)
    starts = [r for r in records(journal) if r.get("type") in ("batch_started", "batch_resumed")]
    assert starts[0]["options"]["webhook"] == hook.url and starts[0]["options"]["on_finish"]["cmd"] == cmd


def test_webhook_4xx_is_not_retried_and_an_unreachable_one_gives_up_in_bounded_time(receiver):
    hook = receiver(answers=[404])
    problem = post_webhook(hook.url, {"type": "finished"}, deadline=30)
    assert "HTTP 404" in problem and "not retried" in problem and len(hook.requests) == 1
    waits: list[float] = []
    closed = receiver()
    url = closed.url
    closed.close()  # nothing listens there any more
    problem = post_webhook(url, {"type": "finished"}, deadline=20, sleep=waits.append)
    assert problem.startswith(f"webhook {url}: not delivered after")
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and max(waits) <= 10.0


def test_signature_is_the_hmac_sha256_of_the_body():
    body = b'{"type":"finished"}'
    assert signature("key", body) == "sha256=" + hmac.new(b"key", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("args, env, message", [
    (("--webhook", "ftp://example/x"), {}, "expected an http:// or https:// URL"),
    (("--webhook-secret", "x"), {}, "--webhook-secret goes with --webhook URL"),
    (("--report", "out.txt"), {}, "must end in .xml (JUnit) or .md (Markdown)"),
    (("--report", "no/such/folder/r.xml"), {}, "no such folder"),
    # it was a traceback (and exit 1) once the batch had run; nan retried for ever
    (("--webhook", "http://127.0.0.1:9/x"), {"BATCHCLI_WEBHOOK_DEADLINE": "abc"},
     "BATCHCLI_WEBHOOK_DEADLINE=abc: expected the seconds a webhook is retried for, from 0 to 3600"),
    (("--webhook", "http://127.0.0.1:9/x"), {"BATCHCLI_WEBHOOK_DEADLINE": "nan"}, "BATCHCLI_WEBHOOK_DEADLINE=nan"),
])
def test_bad_notification_flags_are_usage_errors_before_any_work(tmp_path, home, args, env, message):
    make_image(tmp_path / "in" / "a.png")
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32", *args, env=env,
            home=home)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (home / "batches").exists() or not list((home / "batches").iterdir())


def test_webhook_retries_stop_at_60_s_by_default_or_at_the_deadline_set(receiver, monkeypatch):
    closed = receiver()
    url = closed.url
    closed.close()
    monkeypatch.delenv("BATCHCLI_WEBHOOK_DEADLINE", raising=False)
    waits: list[float] = []
    post_webhook(url, {"type": "paused"}, sleep=waits.append)
    assert 40 < sum(waits) <= 60
    monkeypatch.setenv("BATCHCLI_WEBHOOK_DEADLINE", "5")
    waits.clear()
    assert "in 5 s" in post_webhook(url, {"type": "paused"}, sleep=waits.append)
    assert sum(waits) <= 5
    monkeypatch.setenv("BATCHCLI_WEBHOOK_DEADLINE", "nan")  # set after the start checked it: the default
    waits.clear()
    assert "in 60 s" in _within(10, lambda: post_webhook(url, {"type": "paused"}, sleep=waits.append))


def _within(seconds: float, fn):
    """fn()'s answer, or a failure when it takes longer than `seconds` (it would hang the suite)."""
    answer: list = []
    caller = threading.Thread(target=lambda: answer.append(fn()), daemon=True)
    caller.start()
    caller.join(seconds)
    assert answer, f"still running after {seconds} s"
    return answer[0]


def test_a_receiver_that_answers_a_byte_at_a_time_is_given_up_at_the_deadline():
    """The socket's timeout counts per read: a receiver that sends a header line every 0.2 s held
    the runner for ever, far past the deadline."""
    import socket
    import time

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drip():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.2):
                conn.sendall(b"X-Still: here\r\n")

    threading.Thread(target=drip, daemon=True).start()
    t0 = time.monotonic()
    try:
        problem = _within(15, lambda: post_webhook(f"http://127.0.0.1:{server.getsockname()[1]}/hook",
                                                   {"type": "finished"}, deadline=2))
    finally:
        stop.set()
        server.close()
    assert problem.endswith("not delivered after 1 attempt(s) in 2 s: timed out"), problem
    assert time.monotonic() - t0 < 5


def test_the_secret_can_come_from_the_environment(tmp_path, home, receiver):
    make_image(tmp_path / "in" / "a.png")
    hook = receiver()
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32", "-w", "1",
            "--webhook", hook.url, env={"BATCHCLI_WEBHOOK_SECRET": SECRET}, home=home)
    assert r.returncode == 0, r.stderr
    assert len(hook.requests) == 1 and _verified(hook.requests[0], SECRET)


def test_recover_resume_after_sigkill_keeps_the_notification_flags(tmp_path, receiver):
    home = tmp_path / "home"
    make_pngs(tmp_path / "in", 12)
    hook = receiver()
    log, slow = tmp_path / "finish.log", tmp_path / "slow"  # items of 0.1 s until the kill
    slow.touch()
    runner = spawn(home, "start", tmp_path / "in", "--out", tmp_path / "out", "-w", "1", "--min-free-space", "0",
                   "-p", f"crashtest delay=0.1 slow={slow} | convert png", "--webhook", hook.url,
                   "--on-finish", f'echo "$BATCHCLI_STATUS" >> {log}')
    journal = wait_for(lambda: next((home / "batches").glob("*/journal.jsonl"), None), what="a journal")
    wait_for(lambda: any(r.get("type") == "item_completed" for r in records(journal)), what="an item done")
    runner.kill()  # SIGKILL: no notification from a runner that died
    runner.wait(10)
    slow.unlink()
    assert not log.exists() and hook.requests == []
    r = run(home, "recover", "--resume")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: log.exists() and log.read_text().split() == ["completed"], what="the on-finish command")
    wait_for(lambda: [e["type"] for e in hook.events()] == ["finished"], what="the webhook")


def test_an_empty_value_turns_a_kept_flag_off(tmp_path, home):
    make_tree(tmp_path / "in", n=3)
    for k in range(3):
        (tmp_path / "in" / f"bad{k}.jpg").write_bytes(b"not an image")
    log = tmp_path / "finish.log"
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 32x32", "-w", "1",
            "--max-failures", "1", "--on-finish", f'echo "$BATCHCLI_STATUS" >> {log}', home=home)
    assert r.returncode == 1 and log.read_text().split() == ["failed"]  # halted after the first bad file
    batch_id = cli_json("status", home=home)["batch_id"]
    assert cli("resume", batch_id, "--on-finish", "", home=home).returncode == 1  # halted again: no command
    assert cli("resume", batch_id, "--max-failures", "100", home=home).returncode == 1  # still off
    assert log.read_text().split() == ["failed"]

