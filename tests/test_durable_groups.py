"""Outputs made durable in groups (a worker's writer writes a group of files, commits the
filesystem with syncfs, renames them, commits again, then reports them; or, without syncfs,
fsyncs the files together, renames them and fsyncs each folder once): kill -9 the runner while
groups are being written and check, at each kill, that every item the journal records completed
has its output in place with the recorded bytes, and that the output's temp file was durable
before its rename and the rename durable before the record (each sync made slower, so the groups
are in flight)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
from collections import defaultdict

import psutil
import pytest
from crashops import create, make_pngs, records, run, spawn, wait_for

from batchcli.atomic import is_tmp_name
from batchcli.engine.journal import replay
from batchcli.engine.lifecycle import recover
from batchcli.engine.store import Store

SLOW_FSYNC = 0.02
"""Seconds added to every fsync and syncfs: a disk this slow makes the order visible, and a group
of outputs (at least two of them each) slow enough that a resume does not complete most of the
batch between two looks of the test. At 4 ms with 160 items, the first kill sometimes came after
95 completions, which left room for only 3 kills (fewer on a loaded machine: a flaky failure)."""


def _completed(journal) -> list[dict]:
    return [r for r in records(journal) if r.get("type") == "item_completed"]


def _sync_log(path) -> tuple[dict, dict, dict, dict, list]:
    """fsynced files {path: time}, renames {to: [(time, from)]}, folder fsyncs {folder: [time]},
    temp files created {path: time}, syncfs calls [time] (every test file is on one filesystem)."""
    files: dict[str, float] = {}
    renames: dict[str, list] = defaultdict(list)
    folders: dict[str, list] = defaultdict(list)
    created: dict[str, float] = {}
    syncfs: list[float] = []
    for line in open(path).read().splitlines():
        t, kind, *paths = line.split(" ")
        if kind == "fsync" and os.path.isdir(paths[0]):
            folders[paths[0]].append(float(t))
        elif kind == "fsync":
            files[paths[0]] = float(t)
        elif kind == "replace":
            renames[paths[1]].append((float(t), paths[0]))
        elif kind == "create":
            created[paths[0]] = float(t)
        elif kind == "syncfs":
            syncfs.append(float(t))
    return files, renames, folders, created, syncfs


def _check_at_kill(out, journal, synclog) -> int:
    """Every completed item durable before its record; returns how many outputs were caught in
    flight (a temp file, or renamed and not yet recorded): the kill landed mid-group."""
    files, renames, folders, created, syncfs = _sync_log(synclog)
    recorded = set()
    for rec in _completed(journal):
        path = str(out / rec["out"])
        recorded.add(path)
        data = open(path, "rb").read()  # in place...
        assert hashlib.sha256(data).hexdigest() == rec["sha256"], f"{path}: not the recorded bytes"
        # ...and durable before the record: its temp file fsynced (or a syncfs after it was
        # made), renamed, then its folder fsynced (or a syncfs after the rename)
        t_rec = rec["t"] + 0.001  # record times are rounded to the millisecond
        ok = any((files.get(tmp, t_ren + 1) <= t_ren or any(created.get(tmp, t_ren) <= t <= t_ren for t in syncfs))
                 and any(t_ren <= t <= t_rec for t in [*folders.get(os.path.dirname(path), []), *syncfs])
                 for t_ren, tmp in renames.get(path, []))
        assert ok, f"{path}: recorded completed at {rec['t']} before it was durable: {renames.get(path)}"
    on_disk = [os.path.join(out, n) for n in os.listdir(out)] if out.exists() else []
    return sum(1 for p in on_disk if is_tmp_name(os.path.basename(p)) or p not in recorded)


@pytest.mark.parametrize("sync", ["syncfs", "fsync"])
def test_kill9_mid_group_every_recorded_output_is_durable(tmp_path, sync):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    n = 240
    make_pngs(src, n, size=16)
    synclog = tmp_path / "sync.log"
    env = {"BATCHCLI_TEST_SYNC_LOG": str(synclog), "BATCHCLI_TEST_SYNC_DELAY": str(SLOW_FSYNC),
           "BATCHCLI_TEST_SYNCFS": "1" if sync == "syncfs" else "0"}
    paths = create(home, [src], out, "resize 8x8")
    rng = random.Random(18)
    kills = caught = 0
    for k in range(5):
        target = len(_completed(paths.journal)) + rng.randint(4, 24)
        proc = spawn(home, "resume", paths.id, "-w", "2", "--quiet", "--min-free-space", "0", env=env)
        wait_for(lambda: proc.poll() is not None or len(_completed(paths.journal)) >= target,
                 what=f"kill {k}: {target} items completed")
        if proc.poll() is not None:
            break
        try:
            kids = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in kids),
                 timeout=5, what="workers of the killed runner to exit")
        kills += 1
        caught += _check_at_kill(out, paths.journal, synclog)
        recover(Store(str(home)))
    assert kills >= 3
    assert caught > 0, "no kill landed while a group was being written"
    assert (" syncfs " in synclog.read_text()) == (sync == "syncfs")
    if replay(paths.journal, n).state != "completed":  # the last resume may have run to the end before its kill
        r = run(home, "resume", paths.id, "-w", "2", "--min-free-space", "0", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    assert replay(paths.journal, n).completed == n
    assert sorted(os.listdir(out)) == sorted(f"img{k:03d}.png" for k in range(n))
    _check_at_kill(out, paths.journal, synclog)


def test_a_pause_while_groups_are_written_and_queued_pauses(tmp_path):
    """Outputs slow to make durable (their syncs 0.3 s longer), items quick to make: while one
    group is written the next gathers, and the pause comes then. The worker's flush before it
    stops waited for the queued group while holding the lock the writer's thread takes after a
    group: each waited for the other and the runner hung, 'pause requested', for ever."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 60, size=16)
    env = {"BATCHCLI_TEST_SYNC_LOG": str(tmp_path / "sync.log"), "BATCHCLI_TEST_SYNC_DELAY": "0.3",
           "BATCHCLI_TEST_SYNC_UNDER": str(out)}
    paths = create(home, [src], out, "crashtest delay=0.05 | convert png")  # 3 s of items, a group 0.6 s
    proc = spawn(home, "resume", paths.id, "-w", "1", "--quiet", "--min-free-space", "0", env=env)
    try:
        wait_for(lambda: _completed(paths.journal), what="a first group recorded")
        assert run(home, "pause", paths.id).returncode == 0
        assert proc.wait(timeout=30) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
    done = _completed(paths.journal)
    assert 0 < len(done) < 60 and sorted(os.listdir(out)) == sorted(r["out"] for r in done)  # each one recorded
    assert run(home, "resume", paths.id, "--min-free-space", "0").returncode == 0
    assert replay(paths.journal, 60).completed == 60
