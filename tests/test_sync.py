"""sync: only new or changed inputs do work; up-to-date items are recorded as reused, so the newest
batch is the whole picture. Real runs through the CLI; `crashtest log=` counts the work done."""

from __future__ import annotations

import json
import os

import pytest
from conftest import make_image, make_tree
from crashops import records, run


def _outputs(out) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.fixture
def synced(tmp_path):
    """6 inputs in nested folders, synced once."""
    home, src, out, seen = tmp_path / "home", tmp_path / "in", tmp_path / "out", tmp_path / "seen.log"
    make_tree(src, n=6)
    pipe = f"crashtest log={seen} | resize 32x32 | convert png"

    def sync(*extra, pipeline=pipe):
        seen.unlink(missing_ok=True)
        r = run(home, "sync", src, "--out", out, "-p", pipeline, "-w", "1", "--min-free-space", "0", *extra)
        done = seen.read_text().splitlines() if seen.exists() else []
        return r, sorted(os.path.basename(p) for p in done)

    r, done = sync()
    assert r.returncode == 0, r.stderr
    assert len(done) == 6 and "6 to process (6 new, 0 changed)" in r.stdout
    return home, src, out, sync


def _latest(home) -> dict:
    r = run(home, "status", "--json")
    return json.loads(r.stdout)


def test_second_sync_processes_nothing_and_reuses_everything(synced, tmp_path):
    home, _src, out, sync = synced
    first = _latest(home)["batch_id"]
    before = _outputs(out)
    r, done = sync()
    assert r.returncode == 0, r.stderr
    assert done == [] and "6 up to date (reused), 0 to process" in r.stdout
    assert _outputs(out) == before  # untouched, to the nanosecond
    s = _latest(home)
    assert s["batch_id"] != first and (s["status"], s["completed"], s["failed"]) == ("completed", 6, 0)
    journal = home / "batches" / s["batch_id"] / "journal.jsonl"
    reused = [rec for rec in records(journal) if rec.get("type") == "item_completed"]
    assert len(reused) == 6 and {rec["reused_from"] for rec in reused} == {first}
    # the newest batch is the whole picture: verify and export see every output
    assert run(home, "verify", s["batch_id"]).returncode == 0
    r = run(home, "export", s["batch_id"], "--zip", tmp_path / "all.zip")
    assert r.returncode == 0 and "exported 6 results" in r.stdout
    # and a third sync reuses from the second (the newest record), still doing nothing
    r, done = sync()
    assert done == [] and r.returncode == 0
    last = _latest(home)["batch_id"]
    assert {rec["reused_from"] for rec in records(home / "batches" / last / "journal.jsonl")
            if rec.get("type") == "item_completed"} == {s["batch_id"]}


def test_added_changed_and_deleted_inputs_with_and_without_delete(synced):
    home, src, out, sync = synced
    make_image(src / "new.png", seed=50)
    changed = next(src.rglob("img001.png"))
    make_image(changed, 80, 60, seed=51)  # other pixels, other size
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    gone = next(src.rglob("img002.webp"))
    gone.unlink()
    gone_out = out / gone.relative_to(src).with_suffix(".png")
    assert gone_out.is_file()
    r, done = sync()
    assert r.returncode == 0, r.stderr
    assert done == ["img001.png", "new.png"] and "4 up to date (reused), 2 to process (1 new, 1 changed)" in r.stdout
    assert gone_out.is_file()  # without --delete, outputs of deleted inputs stay

    edited = next(src.rglob("img003.bmp"))
    edited.unlink()  # its output was edited by hand: --delete keeps it
    edited_out = out / edited.relative_to(src).with_suffix(".png")
    edited_out.write_bytes(edited_out.read_bytes() + b"edited")
    before = _outputs(out)
    r, done = sync("--delete")
    assert r.returncode == 0 and done == []
    assert "removed 1 output(s) whose inputs are gone; kept 1 changed since written" in r.stdout
    assert not gone_out.exists() and edited_out.exists()
    after = _outputs(out)
    assert after == {k: v for k, v in before.items() if k != str(gone_out.relative_to(out))}


def test_catalog_deleted_between_runs_is_rebuilt_with_the_same_result(synced):
    home, _src, out, sync = synced
    before = _outputs(out)
    for p in home.glob("catalog.sqlite*"):
        p.unlink()
    r, done = sync()
    assert r.returncode == 0 and done == [] and "6 up to date (reused)" in r.stdout
    assert _outputs(out) == before and (home / "catalog.sqlite").exists()


def test_a_changed_pipeline_redoes_everything(synced, tmp_path):
    home, _src, out, sync = synced
    r, done = sync(pipeline=f"crashtest log={tmp_path / 'seen.log'} | resize 24x24 | convert png")
    assert r.returncode == 0 and len(done) == 6 and "0 up to date (reused), 6 to process" in r.stdout


def test_dry_run_lists_the_work_and_changes_nothing(synced):
    home, src, out, sync = synced
    make_image(src / "late.png", seed=60)
    batches = sorted(os.listdir(home / "batches"))
    before = _outputs(out)
    r, done = sync("--dry-run")
    assert r.returncode == 0 and done == []
    assert "sync (dry run): 6 up to date, 1 to process (1 new, 0 changed) of 7" in r.stdout
    assert f"process {src / 'late.png'}" in r.stdout
    assert sorted(os.listdir(home / "batches")) == batches and _outputs(out) == before
    r, _ = sync("--dry-run", "--json")
    plan = json.loads(r.stdout)
    assert plan["type"] == "sync_plan" and (plan["reused"], plan["new"]) == (6, 1)


def test_ci_scenario_second_run_writes_junit_and_summary(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_tree(src, n=4)
    xml, summary = tmp_path / "report.xml", tmp_path / "summary.md"
    args = ("sync", src, "--out", out, "-p", "resize 32x32", "-w", "1", "--report", xml)
    assert run(home, *args).returncode == 0
    r = run(home, *args, "--json")
    assert r.returncode == 0
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["type"] == "sync_plan" and events[0]["reused"] == 4 and events[-1]["type"] == "finished"
    from junitparser import JUnitXml

    suite = next(iter(JUnitXml.fromfile(str(xml))))
    assert suite.tests == 4 and suite.failures == 0
    assert all("reused from batch" in (c.system_out or "") for c in suite)
    env_run = run(home, "export", _latest(home)["batch_id"], "--report", summary)
    assert env_run.returncode == 0
    assert "| reused (up to date) | 4 |" in summary.read_text()
