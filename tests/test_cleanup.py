"""cleanup: cron-safe retention that never deletes a file the batch did not write."""

from __future__ import annotations

import json
import os

from crashops import create, make_pngs, run

from batchcli.engine.journal import JournalWriter, replay
from batchcli.engine.store import Store

NOSPACE = ("--min-free-space", "0")


def _tree(*roots) -> dict[str, bytes]:
    """Every file's bytes, but the output catalog's (a derived index a dry run may refresh)."""
    out = {}
    for root in roots:
        for d, _, files in os.walk(root):
            for f in files:
                if f.startswith("catalog.sqlite"):
                    continue
                p = os.path.join(d, f)
                out[p] = open(p, "rb").read()
    return out


def _done_batch(home, src, out, n=4, name=None):
    paths = create(home, [src], out, "resize 32x32", name=name)
    assert run(home, "resume", paths.id, *NOSPACE).returncode == 0
    return paths


def test_cleanup_with_nothing_to_do_is_quiet_and_exits_0(tmp_path):
    r = run(tmp_path / "home", "cleanup")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""
    r = run(tmp_path / "home", "cleanup", "--json")
    assert json.loads(r.stdout) == {"cleaned_count": 0, "skipped": [], "dry_run": False, "cleaned": []}


def test_dry_run_deletes_nothing_and_purge_removes_exactly_the_recorded_outputs(tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    make_pngs(tmp_path / "in", 4)
    a = _done_batch(home, tmp_path / "in", out)
    (out / "mine.txt").write_text("the user's own file")
    (out / "sub").mkdir()
    (out / "sub" / "img000.png").write_bytes(b"not written by the batch")
    victim = tmp_path / "victim.png"  # outside the output folder
    victim.write_bytes(b"precious")
    changed = out / "img003.png"
    changed.write_bytes(b"overwritten by someone else since")
    with JournalWriter(a.journal, replay(a.journal, 4).last_seq) as j:  # a record pointing outside
        j.append("item_completed", i=0, out="../victim.png", bytes=8, sha256=None)
        j.append("batch_finished", status="completed", reason=None)
    before = _tree(home, out, victim)

    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["dry_run"] is True and data["cleaned_count"] == 1
    assert data["cleaned"][0]["outputs_removed"] == 3  # img000..img002; not img003 nor victim
    assert _tree(home, out, victim) == before

    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--json")
    data = json.loads(r.stdout)
    assert data["cleaned_count"] == 1 and data["cleaned"][0]["outputs_kept"] == 2
    assert Store(str(home)).ids() == []
    assert victim.read_bytes() == b"precious" and changed.exists()
    assert (out / "mine.txt").exists() and (out / "sub" / "img000.png").exists()
    assert sorted(os.listdir(out)) == ["img003.png", "mine.txt", "sub"]


def test_selection_by_age_status_keep_last_and_live_runner(tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    make_pngs(tmp_path / "in", 4)
    old = [_done_batch(home, tmp_path / "in", out) for _ in range(3)]
    paused = create(home, [tmp_path / "in"], tmp_path / "out-paused", "resize 32x32")  # (it claims its outputs)
    assert run(home, "pause", paused.id).returncode == 0
    for p in old + [paused]:
        os.utime(p.journal, (1, 1))  # idle since 1970
    fresh = _done_batch(home, tmp_path / "in", out)

    r = run(home, "cleanup", "--older-than", "7d", "--keep-last", "1", "--json")
    data = json.loads(r.stdout)
    reasons = {s["batch_id"]: s["reason"] for s in data["skipped"]}
    assert reasons[fresh.id] == "kept by --keep-last"
    assert reasons[paused.id] == "status paused not selected"
    assert {c["batch_id"] for c in data["cleaned"]} == {p.id for p in old}
    assert set(Store(str(home)).ids()) == {fresh.id, paused.id}
    assert len(os.listdir(out)) == 4  # outputs stay without --purge-outputs

    r = run(home, "cleanup", "--status", "paused", "--json")
    assert [c["batch_id"] for c in json.loads(r.stdout)["cleaned"]] == [paused.id]
    assert run(home, "cleanup", "--status", "bogus").returncode == 2


def test_cleanup_never_touches_a_batch_with_a_live_runner(tmp_path):
    from crashops import spawn, wait_for

    from batchcli.engine.liveness import runner_alive

    home = tmp_path / "home"
    make_pngs(tmp_path / "in", 20)
    paths = create(home, [tmp_path / "in"], tmp_path / "out", "crashtest delay=0.1 | convert png")
    proc = spawn(home, "resume", paths.id, "-w", "1", *NOSPACE)
    wait_for(lambda: runner_alive(paths), what="runner")
    r = run(home, "cleanup", "--older-than", "0s", "--status", "running,paused,interrupted,completed", "--json")
    assert json.loads(r.stdout)["cleaned_count"] == 0
    assert os.path.isdir(paths.dir)
    run(home, "cancel", paths.id)
    proc.wait(30)


def test_a_batch_started_into_a_symlinked_out_is_recorded_by_its_folder_and_purged_there(tmp_path):
    """--out given as a link to a folder: the batch records the folder itself, so the purge (which
    opens the recorded folder without following links) works; it was refused for ever as 'now a
    symbolic link'."""
    make_pngs(tmp_path / "in", 3)
    real = tmp_path / "real-out"
    real.mkdir()
    (tmp_path / "link-out").symlink_to(real)
    home = tmp_path / "home"
    r = run(home, "start", tmp_path / "in", "--out", tmp_path / "link-out", "-p", "convert png", "--min-free-space", "0")
    assert r.returncode == 0, r.stderr
    assert json.loads(run(home, "status", "--json").stdout)["out_dir"] == str(real)
    assert len(os.listdir(real)) == 3
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs")
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.listdir(real) == [] and (tmp_path / "link-out").is_symlink()
