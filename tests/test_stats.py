"""stats across a home's batches, built with real runs: completed, with failures, cancelled,
paused and resumed, killed with SIGKILL and recovered; --prometheus parsed with prometheus_client."""

from __future__ import annotations

import math
import signal
import time

from crashops import create, make_pngs, records, run, spawn, wait_for
from prometheus_client.parser import text_string_to_metric_families


def _json(home, *args):
    import json

    r = run(home, "stats", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_stats_and_prometheus_over_real_batches(tmp_path):
    home = tmp_path / "home"
    make_pngs(tmp_path / "in", 6)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    flags = ("-w", "1", "--min-free-space", "0")
    assert run(home, "start", tmp_path / "in", "--out", tmp_path / "o1", "-p", "convert png", *flags).returncode == 0
    assert run(home, "start", tmp_path / "in", tmp_path / "bad", "--out", tmp_path / "o2", "-p", "convert png",
               *flags).returncode == 1
    cancelled = create(home, [tmp_path / "in"], tmp_path / "o3", "convert png")
    assert run(home, "cancel", cancelled.id).returncode == 0  # never started
    paused = create(home, [tmp_path / "in"], tmp_path / "o4", "convert png")
    assert run(home, "pause", paused.id).returncode == 0
    assert run(home, "resume", paused.id, *flags).returncode == 0
    slow = tmp_path / "slow"  # items of 0.2 s until the kill
    slow.touch()
    killed = create(home, [tmp_path / "in"], tmp_path / "o5", f"crashtest delay=0.2 slow={slow} | convert png")
    runner = spawn(home, "resume", killed.id, *flags)
    wait_for(lambda: any(r.get("type") == "item_completed" for r in records(killed.journal)), what="an item done")
    runner.send_signal(signal.SIGKILL)
    runner.wait(10)
    slow.unlink()
    assert run(home, "recover").returncode == 0
    assert run(home, "resume", killed.id, *flags).returncode == 0

    s = _json(home)
    b = s["batches"]
    assert (b["total"], b["started"], b["completed"], b["failed"], b["cancelled"]) == (5, 4, 4, 0, 1)
    assert s["items"]["completed"] == 4 * 6 and s["items"]["failed"] == 1 and s["items"]["skipped"] == 6
    assert s["success_rate"] == round(24 / 25, 4)
    assert (s["pauses"], s["resumes"], s["recoveries"]) == (2, 2, 1)
    assert s["duration_seconds"]["count"] == 4 and 0 < s["duration_seconds"]["average"] <= s["duration_seconds"]["p95"]
    assert s["items_per_second"] > 0 and s["active_seconds"] > 0

    prom = tmp_path / "batchcli.prom"
    r = run(home, "stats", "--prometheus", prom)
    assert r.returncode == 0 and "4 started, 4 completed, 0 failed, 1 cancelled" in r.stdout, r.stdout
    samples = {(m.name, tuple(sorted(x.labels.items()))): x.value
               for m in text_string_to_metric_families(prom.read_text()) for x in m.samples}
    assert samples[("batchcli_batches", (("status", "completed"),))] == 4
    assert samples[("batchcli_batches", (("status", "cancelled"),))] == 1
    assert samples[("batchcli_batches_started", ())] == 4
    assert samples[("batchcli_items", (("status", "failed"),))] == 1
    assert samples[("batchcli_recoveries", ())] == 1
    assert samples[("batchcli_success_ratio", ())] == s["success_rate"]
    assert samples[("batchcli_batch_duration_seconds", (("stat", "p95"),))] == s["duration_seconds"]["p95"]
    assert math.isnan(samples[("batchcli_stats_window_seconds", ())])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".batchcli.prom")]  # no temp left

    newest = create(home, [tmp_path / "in"], tmp_path / "o6", "convert png")
    # a window that starts halfway between the last two batches' creation (seconds apart)
    middle = (killed.load_manifest()["created_at"] + newest.load_manifest()["created_at"]) / 2
    recent = _json(home, "--since", f"{time.time() - middle + 0.5:.3f}s")
    assert recent["batches"]["total"] == 1 and recent["batches"]["pending"] == 1
    assert recent["duration_seconds"] == {"average": None, "p95": None, "count": 0}
    ages = _json(home, "--since", "1000000w")  # longer ago than 1970: every batch, from the epoch on
    assert ages["window_start"] == "1970-01-01T00:00:00Z" and ages["batches"]["total"] == 6, ages


def test_bad_stats_arguments_are_usage_errors(tmp_path):
    r = run(tmp_path / "home", "stats", "--since", "soon")
    assert r.returncode == 2 and "--since 'soon'" in r.stderr
    r = run(tmp_path / "home", "stats", "--prometheus", tmp_path / "no" / "such" / "x.prom")
    assert r.returncode == 2 and "no such folder" in r.stderr


def test_a_batch_duration_is_its_running_time():
    from batchcli.results.facts import Runs

    runs = Runs()
    timeline = [("batch_started", 100.0), ("item_completed", 104.0), ("batch_paused", 110.0),  # 10 s
                ("batch_resumed", 1000.0), ("item_completed", 1003.0),  # the runner dies after this record
                ("batch_interrupted", 5000.0), ("batch_paused", 5000.0),  # found by recover much later
                ("batch_resumed", 6000.0), ("batch_finished", 6002.0)]  # 3 s + 2 s
    prev = None
    for kind, t in timeline:
        if kind.startswith("batch_"):
            runs.feed({"type": kind, "t": t}, prev)
        prev = t
    assert runs.active_s == 15.0 and runs.started == 100.0 and runs.ended == 6002.0
    assert (runs.pauses, runs.resumes, runs.recoveries) == (2, 2, 1)


def test_since_counts_a_batch_by_when_it_was_created_not_by_its_id(tmp_path):
    """An id is made as its start begins, created_at once discovery is done: a batch whose
    discovery took long has an older id than one started after it, yet the newer created_at."""
    home = tmp_path / "home"
    make_pngs(tmp_path / "in", 2)
    slow = create(home, [tmp_path / "in"], tmp_path / "o1", "convert png")
    quick = create(home, [tmp_path / "in"], tmp_path / "o2", "convert png")
    assert slow.id < quick.id
    for paths, created in ((slow, time.time()), (quick, time.time() - 3600)):  # slow's discovery took an hour
        man = paths.load_manifest()
        man["created_at"] = created
        paths.write_manifest(man)
    assert _json(home, "--since", "10m")["batches"]["total"] == 1
