"""Scheduled batches: --at, --after, --after-success, and recover --resume after a reboot."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime

import pytest
from crashops import make_pngs, records, run, wait_for
from test_queue import no_runner_left  # noqa: F401  (ends what a failed test left running)

from batchcli.engine.schedule import parse_at
from batchcli.engine.status import batch_status
from batchcli.engine.store import Store
from batchcli.errors import ConfigError

NOSPACE = ("--min-free-space", "0")


def start(tmp_path, name, *flags, n=4, pipeline="convert png"):
    src = tmp_path / f"in-{name}"
    if not src.exists():
        make_pngs(src, n)
    return run(tmp_path / "home", "start", src, "--out", tmp_path / f"out-{name}", "--pipeline", pipeline,
               "--name", name, *NOSPACE, *flags)


def status(tmp_path, name):
    return batch_status(Store(str(tmp_path / "home")).resolve(name))


def types(tmp_path, name):
    return [r["type"] for r in records(Store(str(tmp_path / "home")).resolve(name).journal)]


def at(tmp_path, name, kind):
    recs = records(Store(str(tmp_path / "home")).resolve(name).journal)
    return next(r["t"] for r in recs if r["type"] == kind)


def test_parse_at():
    now = datetime(2026, 11, 20, 22, 30).timestamp()
    assert parse_at("+30m", now) == now + 1800
    assert parse_at("+2s", now) == now + 2
    assert parse_at("23:00", now) == datetime(2026, 11, 20, 23, 0).timestamp()
    assert parse_at("02:00", now) == datetime(2026, 11, 21, 2, 0).timestamp()  # the next 02:00
    assert parse_at("2026-11-21T02:00", now) == datetime(2026, 11, 21, 2, 0).timestamp()
    assert parse_at("2026-11-21T02:00:00+00:00", now) == datetime.fromisoformat("2026-11-21T02:00:00+00:00").timestamp()
    for bad, why in (("2026-11-20T01:00", "has passed"), ("25:00", "time of day"), ("soon", "expected"),
                     ("+3x", "expected"), ("2030-01-01T00:00", "year")):
        with pytest.raises(ConfigError, match=why):
            parse_at(bad, now)
    with pytest.raises(ConfigError) as err:  # named as typed ('-5m' and 'an age' before)
        parse_at("+-5m", now)
    assert str(err.value) == "--at '+-5m': expected a wait such as +90s, +30m, +12h, +7d or +2w"


def test_at_creates_the_batch_now_and_runs_it_then(tmp_path):
    r = start(tmp_path, "later", "--at", "+1h", "--json")
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["status"] == "scheduled" and ev["detached"] and ev["scheduled_for"]
    s = status(tmp_path, "later")
    assert s["status"] == "scheduled" and s["total"] == 4 and s["runner_pid"] == ev["pid"]
    assert s["reason"].startswith("starts at ") and s["scheduled_for"] == ev["scheduled_for"]
    assert "scheduled" in run(tmp_path / "home", "list").stdout
    assert "later" in run(tmp_path / "home", "list", "--status", "scheduled").stdout
    assert "scheduled - starts at " in run(tmp_path / "home", "status", "later").stdout
    r = run(tmp_path / "home", "start", tmp_path / "in-later", "--out", tmp_path / "out-later", "-p", "convert png")
    assert r.returncode == 2 and f"batch {s['batch_id']} (later, scheduled) also writes 4" in r.stderr, r.stderr
    assert run(tmp_path / "home", "cancel", "later").returncode == 0

    r = start(tmp_path, "soon", "--at", "+3s")
    assert r.returncode == 0 and r.stdout.strip() == status(tmp_path, "soon")["batch_id"], r.stderr
    wait_for(lambda: status(tmp_path, "soon")["status"] == "completed", timeout=60, what="completed")
    recs = records(Store(str(tmp_path / "home")).resolve("soon").journal)
    assert at(tmp_path, "soon", "batch_started") >= recs[1]["at"] > recs[0]["t"]  # created first, run then
    assert [r["type"] for r in recs][:3] == ["header", "batch_scheduled", "batch_started"]
    assert len(os.listdir(tmp_path / "out-soon")) == 4


def test_after_waits_for_a_batch_to_end_and_after_success_for_it_to_complete(tmp_path):
    assert start(tmp_path, "first", "--at", "+1h").returncode == 0
    r = start(tmp_path, "second", "--after", "first")
    assert r.returncode == 0, r.stderr
    assert status(tmp_path, "second")["status"] == "scheduled"
    assert status(tmp_path, "second")["after"] == [status(tmp_path, "first")["batch_id"]]
    # a predecessor that fails: --after still runs, --after-success does not
    assert start(tmp_path, "bad", "--after", "first", n=3, pipeline="crashtest raise | convert png").returncode == 0
    assert start(tmp_path, "strict", "--after", "bad", "--after-success").returncode == 0
    assert start(tmp_path, "lenient", "--after", "bad", "--after", "second").returncode == 0
    assert all(status(tmp_path, n)["status"] == "scheduled" for n in ("second", "bad", "strict", "lenient"))
    home = tmp_path / "home"
    assert run(home, "pause", "first").returncode == 0 and run(home, "resume", "first").returncode == 0  # now
    for name in ("first", "second", "bad", "strict", "lenient"):
        wait_for(lambda: status(tmp_path, name)["status"] in ("completed", "failed", "cancelled"), timeout=90,
                 what=f"{name} ends")
    assert at(tmp_path, "second", "batch_started") >= at(tmp_path, "first", "batch_finished")
    assert at(tmp_path, "lenient", "batch_started") >= max(at(tmp_path, n, "batch_finished") for n in ("bad", "second"))
    assert status(tmp_path, "bad")["status"] == "failed"
    s = status(tmp_path, "strict")
    assert s["status"] == "cancelled" and s["skipped"] == 4 and "ended failed (--after-success)" in s["reason"]
    assert not (tmp_path / "out-strict").exists() or not os.listdir(tmp_path / "out-strict")
    assert status(tmp_path, "lenient")["status"] == "completed"


def test_schedule_errors_are_usage_errors_before_anything_is_created(tmp_path):
    for flags, why in ((("--at", "25:00"), "time of day"), (("--at", "2001-01-01T00:00"), "has passed"),
                       (("--after", "nosuch"), "--after nosuch: no batches in"), (("--after-success",), "needs --after")):
        r = start(tmp_path, "x", *flags)
        assert r.returncode == 2 and why in r.stderr, (flags, r.stderr)
    assert not Store(str(tmp_path / "home")).ids()


def test_a_scheduled_batch_paused_cancelled_and_reprioritised(tmp_path):
    home = tmp_path / "home"
    assert start(tmp_path, "p", "--at", "+1h").returncode == 0
    assert start(tmp_path, "c", "--at", "+1h").returncode == 0
    r = run(home, "priority", "p", "5")
    assert r.returncode == 0 and "priority 5 (scheduled)" in r.stdout, r.stderr
    r = run(home, "pause", "p")
    assert r.returncode == 0 and status(tmp_path, "p")["status"] == "paused", r.stdout + r.stderr
    assert run(home, "priority", "p", "7").returncode == 0 and status(tmp_path, "p")["priority"] == 7
    r = run(home, "resume", "p")  # a paused batch runs now: the schedule was dropped
    assert r.returncode == 0 and status(tmp_path, "p")["status"] == "completed"
    r = run(home, "cancel", "c")
    assert r.returncode == 0 and status(tmp_path, "c")["status"] == "cancelled"
    # --after a prefix: the start's own new batch is no candidate (it waited 5 s for itself, then
    # answered that it was 'still being created'; `--name N --after N` waited 5 s too)
    prefix = status(tmp_path, "c")["batch_id"][:4]
    r = start(tmp_path, "c2", "--after", prefix)
    assert r.returncode == 2 and f"batch prefix {prefix!r} is ambiguous" in r.stderr, r.stderr
    assert "still being created" not in r.stderr


def test_recover_resume_after_a_reboot_starts_due_batches_and_rearms_the_others(tmp_path):
    home = tmp_path / "home"
    assert start(tmp_path, "gate", "--at", "+1h").returncode == 0
    assert start(tmp_path, "due", "--after", "gate").returncode == 0
    assert start(tmp_path, "later", "--at", "+1h").returncode == 0
    # the reboot: the waiting runners are stopped (SIGTERM at shutdown, or simply gone)
    for name, sig in (("due", signal.SIGTERM), ("later", signal.SIGKILL)):
        pid = status(tmp_path, name)["runner_pid"]
        os.kill(pid, sig)
        wait_for(lambda: status(tmp_path, name)["runner_pid"] is None, what=f"{name}'s runner gone")
        s = status(tmp_path, name)
        assert s["status"] == "scheduled" and "recover --resume" in s["reason"]
    assert run(home, "cancel", "gate").returncode == 0  # "due" is due now, and no runner waits for it
    r = run(home, "recover")
    assert r.returncode == 0 and r.stdout.count("no runner waits for it") == 2
    assert len(r.stdout.splitlines()) == 2 and "paused" not in r.stdout, r.stdout  # one line each, as they are
    r = run(home, "recover", "--resume", "--json")
    assert r.returncode == 0, r.stderr
    rows = {b["name"]: b for b in json.loads(r.stdout)["batches"]}
    assert rows["due"]["due"] and rows["due"]["resumed"] and not rows["later"]["due"] and rows["later"]["resumed"]
    wait_for(lambda: status(tmp_path, "due")["status"] == "completed", timeout=60, what="due completes")
    s = status(tmp_path, "later")
    assert s["status"] == "scheduled" and s["runner_pid"] and "recover" not in s["reason"]
    assert json.loads(run(home, "recover", "--resume", "--json").stdout)["batches"] == []  # nothing left to do
    assert run(home, "cancel", "later").returncode == 0
