"""sync: only new or changed inputs do work; up-to-date items are recorded as reused, so the newest
batch is the whole picture. Real runs through the CLI; `crashtest log=` counts the work done."""

from __future__ import annotations

import json
import os
import shutil
import time

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
    last = _latest(home)["batch_id"]
    deleted = [rec for rec in records(home / "batches" / last / "journal.jsonl") if rec.get("type") == "outputs_deleted"]
    assert len(deleted) == 1 and deleted[0]["count"] == 1 and deleted[0]["kept"] == {"changed": 1}
    assert deleted[0]["outputs"] == [str(gone_out.relative_to(out))]
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
    note = tmp_path / "finished.txt"
    r, done = sync("--on-finish", f'echo "$BATCHCLI_STATUS $BATCHCLI_COMPLETED" > {note}',
                   pipeline=f"crashtest log={tmp_path / 'seen.log'} | resize 24x24 | convert png")
    assert r.returncode == 0 and len(done) == 6 and "0 up to date (reused), 6 to process" in r.stdout
    assert note.read_text().split() == ["completed", "6"]  # notifications work on sync as on start


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


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The README's sample folder: examples/make_samples.py (two of its files are broken), its
    pictures at a tenth of their size (the same 13 files: a 12 MP photo costs seconds, here twice)."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path_factory.mktemp("examples") / "generated"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_samples.py"), str(out), "--scale", "0.1"],
                   check=True, capture_output=True)
    return out


@pytest.mark.slow
def test_ci_scenario_the_same_sync_twice_over_the_examples(samples, tmp_path):
    """README "In CI": the second run processes nothing, reuses everything (the two broken files
    stay failed without being run again) and writes a JUnit file and a Markdown summary."""
    from conftest import ROOT
    from junitparser import JUnitXml

    home, out = tmp_path / "home", tmp_path / "web"
    xml, summary = tmp_path / "batchcli.xml", tmp_path / "summary.md"
    total = sum(1 for p in samples.rglob("*") if p.is_file())
    args = ("sync", samples, "--out", out, "--pipeline-file", ROOT / "examples" / "web.toml", "--checksum",
            "--report", xml)
    first = run(home, *args)
    assert first.returncode == 1, first.stderr  # two broken samples
    before = _outputs(out)
    summary.write_text("")
    import subprocess
    import sys

    from crashops import cli_env

    env = {**cli_env(home), "GITHUB_STEP_SUMMARY": str(summary)}
    r = subprocess.run([sys.executable, "-m", "batchcli", *map(str, args)], env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=300)
    assert r.returncode == 1, r.stderr
    assert f"sync: {total - 2} up to date (reused), 0 to process (0 new, 0 changed) of {total}; " \
           "2 failed last time and are unchanged: still failed" in r.stdout
    assert "this run: 0 items" in r.stdout and _outputs(out) == before
    suite = next(iter(JUnitXml.fromfile(str(xml))))
    assert (suite.tests, suite.failures) == (total, 2)
    assert sum("reused from batch" in (c.system_out or "") for c in suite) == total - 2
    text = summary.read_text()
    assert f"| reused (up to date) | {total - 2} |" in text and "| failed | 2 |" in text


def test_permanent_failures_stay_failed_and_transient_ones_are_retried(tmp_path):
    home, src, out, seen, flag = tmp_path / "home", tmp_path / "in", tmp_path / "out", tmp_path / "seen", tmp_path / "flag"
    make_tree(src, n=3)
    (src / "bad.png").write_bytes(b"not a png at all")
    flag.write_text("fail img001 with an I/O error while this file exists")
    pipe = f"crashtest action=ioerror match=img001 flag={flag} log={seen} | resize 32x32 | convert png"
    args = ("sync", src, "--out", out, "-p", pipe, "-w", "1", "--retries", "0", "--min-free-space", "0")
    r = run(home, *args)
    assert r.returncode == 1 and "completed 2, failed 2" in r.stdout, r.stdout
    flag.unlink()
    seen.unlink()
    r = run(home, *args)
    assert r.returncode == 1, r.stderr
    assert "2 up to date (reused), 1 to process (1 new, 0 changed) of 4; 1 failed last time" in r.stdout
    assert [os.path.basename(p) for p in seen.read_text().splitlines()] == ["img001.png"]  # the io failure, retried
    last = _latest(home)
    assert (last["completed"], last["failed"]) == (3, 1)
    failed = [rec for rec in records(home / "batches" / last["batch_id"] / "journal.jsonl")
              if rec.get("type") == "item_failed"]
    assert len(failed) == 1 and failed[0]["error_class"] in ("decode", "unsupported") and failed[0]["reused_from"]


def test_checksum_reuses_across_a_fresh_checkout(tmp_path):
    """A CI checkout: the same files again, with new inodes and new mtimes."""
    home, src, out, seen = tmp_path / "home", tmp_path / "in", tmp_path / "out", tmp_path / "seen.log"
    pristine = tmp_path / "pristine"
    make_tree(pristine, n=5)
    shutil.copytree(pristine, src)
    args = ("sync", src, "--out", out, "-p", f"crashtest log={seen} | resize 32x32 | convert png", "-w", "1",
            "--min-free-space", "0", "--checksum")
    assert run(home, *args).returncode == 0
    before = _outputs(out)

    def fresh_checkout():
        shutil.rmtree(src)
        time.sleep(0.01)
        shutil.copytree(pristine, src, copy_function=shutil.copyfile)  # new inodes, new mtimes
        seen.unlink(missing_ok=True)

    fresh_checkout()
    r = run(home, *args[:-1])  # without --checksum: identities differ, everything is redone
    assert r.returncode == 0 and "0 up to date (reused), 5 to process" in r.stdout
    fresh_checkout()
    r = run(home, *args)
    assert r.returncode == 0 and "0 up to date (reused), 5 to process" in r.stdout  # the last batch recorded no contents
    fresh_checkout()
    make_image(src / "img004.tif", seed=77)  # one file really changed
    r = run(home, *args)
    assert r.returncode == 0, r.stderr
    assert "4 up to date (reused), 1 to process (0 new, 1 changed)" in r.stdout
    assert [os.path.basename(p) for p in seen.read_text().splitlines()] == ["img004.tif"]
    assert set(_outputs(out)) == set(before)


def test_checksum_keeps_broken_inputs_failed_across_a_fresh_checkout(tmp_path):
    """README "In CI": a permanent failure whose input has not changed (by content, with
    --checksum) is not run again after a fresh checkout; a broken file fixed is."""
    home, src, out, seen = tmp_path / "home", tmp_path / "in", tmp_path / "out", tmp_path / "seen.log"
    pristine = tmp_path / "pristine"
    make_tree(pristine, n=3)
    (pristine / "bad.png").write_bytes(b"not a png at all")
    (pristine / "notes.jpg").write_text("plain text, not a photo\n")
    args = ("sync", src, "--out", out, "-p", f"crashtest log={seen} | resize 32x32 | convert png", "-w", "1",
            "--min-free-space", "0", "--checksum")

    def fresh_checkout():
        shutil.rmtree(src, ignore_errors=True)
        time.sleep(0.01)
        shutil.copytree(pristine, src, copy_function=shutil.copyfile)  # new inodes, new mtimes
        seen.unlink(missing_ok=True)

    fresh_checkout()
    r = run(home, *args)
    assert r.returncode == 1 and "completed 3, failed 2" in r.stdout, r.stdout
    for _ in range(2):  # and again: the failures copied by the last run are matched as well
        fresh_checkout()
        r = run(home, *args)
        assert r.returncode == 1, r.stderr
        assert "3 up to date (reused), 0 to process (0 new, 0 changed) of 5; " \
               "2 failed last time and are unchanged: still failed" in r.stdout, r.stdout
        assert not seen.exists()  # nothing decoded
        last = _latest(home)
        assert (last["completed"], last["failed"]) == (3, 2)
    make_image(pristine / "bad.png", seed=5)  # fixed: other content under the same name
    fresh_checkout()
    r = run(home, *args)
    assert r.returncode == 1 and "completed 4, failed 1" in r.stdout, r.stdout + r.stderr
    assert "3 up to date (reused), 1 to process (0 new, 1 changed) of 5; 1 failed last time" in r.stdout, r.stdout
    assert [os.path.basename(p) for p in seen.read_text().splitlines()] == ["bad.png"]


def _catalog_rows(home, batch_id) -> tuple[list, list]:
    """The catalog's items and outputs rows of a batch (without its key), its `reuses` rows made
    rows of their own (as before any question but sync's)."""
    from batchcli.engine.catalog import Catalog

    with Catalog(str(home)) as cat:
        cat.refresh()
        cat.materialize()
        (bkey,) = cat.db.execute("SELECT bkey FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        return ([r[1:] for r in cat.db.execute("SELECT * FROM items WHERE bkey = ? ORDER BY i", (bkey,))],
                sorted(r[1:] for r in cat.db.execute("SELECT * FROM outputs WHERE bkey = ?", (bkey,))))


def test_reused_results_are_in_the_catalog_as_a_rebuild_from_the_journals_has_them(tmp_path):
    """A sync indexes the results it reuses as one `reuses` row per run of them (not folding its
    journal, not copying rows): made rows, they are those a catalog rebuilt from the journals
    has, variants included."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_tree(src, n=5)
    args = ("sync", src, "--out", out, "-p", "resize 32x32", "--variant", "small=resize 8x8 | convert png",
            "--variant", "big=convert jpg", "-w", "1", "--min-free-space", "0")
    assert run(home, *args).returncode == 0
    r = run(home, *args)
    assert r.returncode == 0 and "5 up to date (reused)" in r.stdout, r.stdout + r.stderr
    second = _latest(home)["batch_id"]
    import sqlite3

    with sqlite3.connect(home / "catalog.sqlite") as db:  # the whole batch in one row, whatever its size
        assert db.execute("SELECT i, n FROM reuses").fetchall() == [(0, 5)]
    items, outputs = _catalog_rows(home, second)
    assert len(outputs) == 10 and all(row[-1] == 1 for row in outputs)  # two files an item, current
    for p in home.glob("catalog.sqlite*"):
        p.unlink()
    assert _catalog_rows(home, second) == (items, outputs)


def test_a_sync_killed_with_sigkill_and_resumed_loses_nothing(tmp_path):
    """kill -9 of a sync while it processes its new inputs (its reused records, snapshot and
    catalog rows written): `recover`, then `resume`, finishes it, the reused outputs untouched, each
    new input done, and the next sync reuses everything."""
    import signal

    from crashops import line_count, spawn, wait_for

    home, src, out, seen = tmp_path / "home", tmp_path / "in", tmp_path / "out", tmp_path / "seen.log"
    slow = tmp_path / "slow"  # items of 0.3 s only in the sync that is killed
    make_tree(src, n=6)
    args = ("sync", src, "--out", out, "-p", f"crashtest log={seen} delay=0.3 slow={slow} | resize 16x16 | convert png",
            "-w", "1", "--min-free-space", "0")
    assert run(home, *args).returncode == 0
    before = _outputs(out)
    for k in range(5):
        make_image(src / f"new{k}.png", seed=60 + k)
    seen.unlink()
    first = set(os.listdir(home / "batches"))
    slow.touch()
    proc = spawn(home, *args)
    batch = wait_for(lambda: [p for p in (home / "batches").iterdir() if p.name not in first
                              and (p / "journal.jsonl.snapshot").exists()  # the reused records' fold
                              and line_count(p / "journal.jsonl") >= 1 + 6 + 1 + 1], what="the sync to complete an item")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    slow.unlink()
    journal = batch[0] / "journal.jsonl"
    assert line_count(journal) < 1 + 6 + 1 + 5 + 1  # killed before its end
    items = {rec["i"]: os.path.basename(rec["src"]) for rec in map(json.loads, open(batch[0] / "items.jsonl"))}
    kept = {items[rec["i"]] for rec in records(journal) if rec.get("type") == "item_completed"}
    assert len(kept) >= 7  # the 6 reused and a new one, durable before the kill
    assert run(home, "recover").returncode == 0  # marked paused
    r = run(home, "resume", batch[0].name, "--min-free-space", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    s = _latest(home)
    assert (s["batch_id"], s["status"], s["completed"], s["failed"]) == (batch[0].name, "completed", 11, 0)
    reused = [rec for rec in records(journal) if rec.get("reused_from")]
    assert len(reused) == 6 and all(rec["type"] == "item_completed" for rec in reused)
    assert {k: v for k, v in _outputs(out).items() if k in before} == before  # reused outputs untouched
    done = [os.path.basename(p) for p in seen.read_text().splitlines()]
    assert sorted(set(done)) == [f"new{k}.png" for k in range(5)]
    assert not [name for name in kept if done.count(name) > 1]  # what was journaled is not done again
    assert run(home, "verify", batch[0].name).returncode == 0
    seen.unlink()
    r = run(home, *args)
    assert r.returncode == 0 and "11 up to date (reused), 0 to process" in r.stdout and not seen.exists()


def test_outputs_are_compared_by_size_and_mtime_not_read(synced):
    """As rsync without --checksum: an output given other bytes of the same size and its recorded
    mtime still counts as up to date (sync does not read it); `verify` reads it and says so."""
    home, _src, out, sync = synced
    target = sorted(out.rglob("*.png"))[0]
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    r, done = sync()
    assert r.returncode == 0 and done == [] and "6 up to date (reused)" in r.stdout
    r = run(home, "verify", _latest(home)["batch_id"], "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["changed_count"] == 1


def test_the_reused_records_snapshot_is_the_replay_of_the_journal(tmp_path):
    """What the runner and `status` read instead of decoding every reused record: the fold saved
    with the records equals a full replay of the journal."""
    from batchcli import api
    from batchcli.engine.journal import _load_snapshot, replay
    from batchcli.engine.store import Store
    from batchcli.engine.sync import plan, record_reused

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_tree(src, n=6)
    assert run(home, "sync", src, "--out", out, "-p", "resize 16x16 | convert png", "-w", "1",
               "--min-free-space", "0").returncode == 0
    make_image(src / "new.png", seed=70)
    store = Store(str(home))
    paths = api.create_batch(store, api.StartConfig(inputs=[str(src)], out_dir=str(out),
                                                    pipeline_text="resize 16x16 | convert png"))
    p, recs = plan(store, paths)
    assert (p.reused, p.new) == (6, 1)
    record_reused(paths, recs)
    snap, full = _load_snapshot(paths.journal, 7), replay(paths.journal, 7, use_snapshot=False)
    assert snap is not None and (snap.items, snap.counts, snap.offset, snap.lines, snap.last_seq, snap.records) == \
        (full.items, full.counts, full.offset, full.lines, full.last_seq, full.records)


def test_an_output_that_would_land_on_an_input_is_refused_and_up_to_date_items_are_not_checked(synced):
    """The output-on-input check of `start` holds for the items a sync will write; the up-to-date
    ones write nothing, so their outputs are not listed."""
    home, src, out, sync = synced
    target = next(out.rglob("img001.png"))
    victim = next(src.rglob("img001.png"))
    target.unlink()
    os.link(victim, target)  # the output of img001 is now the input itself: not as written, so redone
    before = victim.read_bytes()
    batches = sorted(os.listdir(home / "batches"))
    r, done = sync()
    assert r.returncode == 2 and done == []
    assert r.stderr.startswith(f"Error: --out {out}: the output {target} would replace the input {victim} "
                               "(the same file, device ")
    assert victim.read_bytes() == before and sorted(os.listdir(home / "batches")) == batches
    r, done = sync("--dry-run")
    assert r.returncode == 2 and "would replace the input" in r.stderr


def test_the_batch_that_wrote_the_reused_results_can_be_purged_and_removed(synced):
    """Later syncs hold the results they reuse without copies of their catalog rows. Purging and
    removing the batch that wrote them keeps the outputs (the newest sync is their last writer),
    and the next sync still reuses them all."""
    home, _src, out, sync = synced
    first = _latest(home)["batch_id"]
    before = _outputs(out)
    for _ in range(2):
        r, done = sync()
        assert r.returncode == 0 and done == []
    last = _latest(home)["batch_id"]
    r = run(home, "cleanup", "--older-than", "0s", "--keep-last", "2", "--purge-outputs", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [b["batch_id"] for b in data["cleaned"]] == [first] and data["cleaned"][0]["outputs_removed"] == 0
    assert _outputs(out) == before and not (home / "batches" / first).exists()
    assert run(home, "verify", last).returncode == 0
    r, done = sync()
    assert r.returncode == 0 and done == [] and "6 up to date (reused), 0 to process" in r.stdout
    assert _outputs(out) == before


def test_inputs_discovered_in_a_child_process_report_their_errors_as_before(tmp_path):
    """sync discovers its inputs in a child process while it asks the catalog: a pattern that
    matches nothing (found only while discovering) is still one line and exit 2, no batch left."""
    home, out = tmp_path / "home", tmp_path / "out"
    make_tree(tmp_path / "in", n=2)
    r = run(home, "sync", tmp_path / "in", "--out", out, "-p", "convert png", "--min-free-space", "0")
    assert r.returncode == 0, r.stderr
    r = run(home, "sync", str(tmp_path / "nowhere*" / "*.png"), "--out", out, "-p", "convert png", "--min-free-space", "0")
    assert r.returncode == 2 and "no file matches this pattern" in r.stderr and "Traceback" not in r.stderr
    assert len(os.listdir(home / "batches")) == 1


_FORKED = """
import os, threading, time
from batchcli.engine.forked import Forked

with Forked(sorted, [3, 1, 2]) as f:
    assert f.pid is not None and f.result() == [1, 2, 3]
assert Forked(int, "not a number").result() is None
f = Forked(time.sleep, 30)
pid = f.pid
t0 = time.monotonic()
f.cancel()
assert time.monotonic() - t0 < 5 and f.pid is None
try:
    os.kill(pid, 0)
    raise AssertionError("the cancelled child is still there")
except ProcessLookupError:  # killed and reaped
    pass
stop = threading.Event()
threading.Thread(target=stop.wait).start()  # a fork copies one thread: no child then
f = Forked(sorted, [2, 1])
assert f.pid is None and f.result() is None
stop.set()
print("ok")
"""


def test_a_forked_call_gives_its_result_or_none():
    """engine/forked.py: the value comes back; a failure or a kill gives None (the caller does
    the work itself); cancel kills a child that is still at work; with another thread running
    no child is forked. In a process of its own: the test process may hold other tests' threads."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _FORKED], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


def test_a_plan_fed_the_items_piece_by_piece_while_they_are_written_is_the_plan_of_the_whole_file(tmp_path):
    """sync goes over items.jsonl while a child process still writes it (syncplan.follow): a
    Planner fed the lines in pieces, then the rest from the file, plans what a fresh one does;
    one whose pieces are not the file's start (the file was written again) is not used."""
    from batchcli import api
    from batchcli.engine.store import Store
    from batchcli.engine.syncplan import Planner, ask, plan

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_tree(src, n=9)
    pipe = "resize 16x16 | convert png"
    assert run(home, "sync", src, "--out", out, "-p", pipe, "-w", "1", "--min-free-space", "0").returncode == 0
    make_image(src / "new.png", seed=71)
    os.utime(next(src.rglob("*.jpg")), (1, 1))  # one changed
    store = Store(str(home))
    paths = api.create_batch(store, api.StartConfig(inputs=[str(src)], out_dir=str(out), pipeline_text=pipe))
    man = paths.load_manifest()
    whole = plan(store, paths)
    assert (whole[0].reused, whole[0].new, whole[0].changed) == (8, 1, 1)
    with open(paths.items, "rb") as fh:
        lines = fh.read().splitlines(keepends=True)
    for cut in (0, 1, 4, len(lines)):
        e = ask(store, man)
        e.planner = Planner(man, e)
        e.planner.feed(b"".join(lines[:min(cut, 1)]))  # (an empty piece too)
        e.planner.feed(b"".join(lines[1:cut]))
        p, recs = plan(store, paths, asked=e)
        assert (p.as_dict(), recs) == (whole[0].as_dict(), whole[1]), cut
    e = ask(store, man)
    e.planner = Planner(man, e)
    e.planner.feed(lines[1])  # not the first line: not the file's start
    p, recs = plan(store, paths, asked=e)
    assert (p.as_dict(), recs) == (whole[0].as_dict(), whole[1])


def test_sync_plans_without_the_cyclic_collector_and_turns_it_back_on(tmp_path):
    """The plan runs with the cyclic garbage collector off (its passes over the rows and records
    cost a fifth of the plan's time); the run and whatever comes after have it again."""
    import gc

    from typer.testing import CliRunner

    from batchcli.cli.app import app

    make_tree(tmp_path / "in", n=2)
    assert gc.isenabled()
    args = ["sync", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "convert png", "--home",
            str(tmp_path / "home"), "--dry-run", "--json"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0 and json.loads(result.stdout)["new"] == 2
    assert gc.isenabled()


def test_a_sync_process_ends_without_teardown_with_all_its_output_and_its_exit_code(synced, tmp_path):
    """A sync, like a start, ends with os._exit once its run is over (its plan is not freed
    object by object): a piped --json run's events are whole, up to the last, and the exit
    code says a failed item; --home before the command is understood."""
    from batchcli.cli.warm import command_of

    assert [command_of(a) for a in (["sync", "x"], ["--home", "h", "sync"], ["--home=h", "sync"], [])] == \
        [("sync", None, 0), ("sync", "h", 2), ("sync", "h", 1), (None, None, 0)]
    home, src, out, _sync = synced
    (src / "bad.png").write_bytes(b"not a png at all")
    r = run(tmp_path, "--home", home, "sync", src, "--out", out, "-p", "convert png", "--json", "-w", "1",
            "--retries", "0", "--min-free-space", "0")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1 and events[0]["type"] == "sync_plan" and events[0]["total"] == 7, r.stderr
    assert events[-1]["type"] == "finished" and events[-1]["exit_code"] == 1 and events[-1]["failed"] == 1


def test_a_sync_run_leaves_its_results_indexed_in_the_catalog(synced):
    """As its run ends, a sync folds its own journal into catalog.sqlite: the next sync asks the
    catalog at once."""
    import sqlite3

    home, _src, _out, _sync = synced
    s = _latest(home)
    journal = home / "batches" / s["batch_id"] / "journal.jsonl"
    db = sqlite3.connect(home / "catalog.sqlite")
    try:
        (offset,) = db.execute("SELECT j_offset FROM batches WHERE batch_id = ?", (s["batch_id"],)).fetchone()
        (rows,) = db.execute("SELECT count(*) FROM outputs o JOIN batches b USING (bkey) WHERE b.batch_id = ?",
                             (s["batch_id"],)).fetchone()
    finally:
        db.close()
    assert offset == journal.stat().st_size and rows == 6


def test_checksum_reuses_after_a_ci_cache_restore_at_another_path(tmp_path):
    """README "In CI": the batch home and the output folder kept in a CI cache come back as new
    files (new inodes; a tar or zip cache keeps whole-second mtimes), at another path with a
    fresh checkout: the sync processes nothing, what it records is what is on disk, and
    --delete removes the output of an input the checkout no longer has."""
    import tarfile

    first, again = tmp_path / "ci1", tmp_path / "ci2"
    pristine, seen = tmp_path / "pristine", tmp_path / "seen.log"
    make_tree(pristine, n=4)
    (pristine / "bad.png").write_bytes(b"not a png at all")

    def job(root):
        shutil.copytree(pristine, root / "src", copy_function=shutil.copyfile)  # a fresh checkout
        seen.unlink(missing_ok=True)
        r = run(root / "home", "sync", root / "src", "--out", root / "web", "-p",
                f"crashtest log={seen} | resize 32x32 | convert png", "-w", "1", "--min-free-space", "0", "--checksum",
                "--delete")
        return r, seen.read_text().splitlines() if seen.exists() else []

    r, done = job(first)
    assert r.returncode == 1 and len(done) == 4, r.stdout  # bad.png fails at its decode
    cache = tmp_path / "cache.tar"
    with tarfile.open(cache, "w", format=tarfile.GNU_FORMAT) as tar:  # whole seconds, as GNU tar's default
        tar.add(first / "home", "home")
        tar.add(first / "web", "web")
    shutil.rmtree(first)
    gone = next(pristine.rglob("img003.*"))
    gone.unlink()  # a commit removed it
    again.mkdir()
    with tarfile.open(cache) as tar:
        tar.extractall(again, filter="fully_trusted")
    r, done = job(again)
    assert r.returncode == 1, r.stderr
    assert "3 up to date (reused), 0 to process (0 new, 0 changed) of 4; 1 failed last time" in r.stdout
    assert done == [] and "removed 1 output(s) whose inputs are gone" in r.stdout
    assert sorted(p.stem for p in (again / "web").rglob("*.png")) == ["img000", "img001", "img002"]
    batch = _latest(again / "home")["batch_id"]
    v = run(again / "home", "verify", batch)
    assert v.returncode == 0 and "all match the journal" in v.stdout, v.stdout + v.stderr
    shutil.rmtree(again / "src")
    r, done = job(again)  # and the next job: the same folder now, by its identity
    assert r.returncode == 1 and "3 up to date (reused), 0 to process" in r.stdout and done == []


def test_a_batch_home_filling_up_is_one_error_line_never_a_traceback(tmp_path, tiny_fs):
    """README "One line, never a traceback": a sync whose batch home (a 2 MiB tmpfs) is nearly
    full ends with at most one `Error:` line naming a file, whatever it was writing (the
    catalog, the manifest, the journal), and once space is freed the next sync runs."""
    from conftest import fill

    home, src, out = tiny_fs / "home", tmp_path / "in", tmp_path / "out"
    make_tree(src, n=80, size=(16, 12))
    args = ("sync", src, "--out", out, "-p", "convert png", "--min-free-space", "0")
    assert run(home, *args).returncode == 0
    for free in (40, 60, 80):
        for p in src.rglob("*.*"):
            os.utime(p)  # changed inputs: work to do, records to write
        filler = fill(tiny_fs, leave=free * 1024)
        r = run(home, *args)
        errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
        assert "Traceback" not in r.stderr and len(errors) <= 1, r.stderr
        assert all(f"{tiny_fs}/" in line for line in errors), r.stderr  # names the file (or the home)
        filler.unlink()
        assert run(home, *args).returncode == 0
