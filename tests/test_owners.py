"""Outputs have one owner: live batches claim their paths, a later batch supersedes a finished
one, and a purge deletes only what the cleaned batch still owns, inside the folder it recorded."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from crashops import create, make_pngs, named, run, spawn, wait_for

from batchcli.engine.liveness import runner_alive
from batchcli.engine.store import Store

RUN = ("--min-free-space", "0", "-w", "1")


def _start(home, src, out, name, pipeline="convert png", *extra):
    r = run(home, "start", src, "--out", out, "--name", name, "--pipeline", pipeline, *RUN, *extra)
    assert r.returncode == 0, r.stderr
    return Store(str(home)).resolve(name)


def _files(folder) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, folder)] = open(p, "rb").read()
    return out


def test_a_runner_that_has_not_written_batch_started_yet_is_named_running(tmp_path):
    """Between taking its lock and its first worker (the fork server's imports: seconds on a busy
    machine) a runner's journal holds only the header; a refusal still names the batch running."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 3)
    first = spawn(home, "start", src, "--out", out, "--name", "A", "--pipeline", "convert png", *RUN,
                  env={"BATCHCLI_TEST_SERVER_DELAY": "5"})  # the fork server takes 5 s to start
    try:
        a = wait_for(lambda: named(home, "A"), what="batch A")
        wait_for(lambda: runner_alive(a), what="A's runner")
        with open(a.journal, "rb") as fh:  # the window this test is about
            assert b"batch_started" not in fh.read()
        r = run(home, "start", src, "--out", out, "--name", "B", "--pipeline", "convert png", *RUN)
        assert r.returncode == 2 and f"batch {a.id} (A, running) also writes 3 of these outputs" in r.stderr, r.stderr
    finally:
        first.kill()
        first.wait()


def test_a_second_runner_into_the_same_folder_is_refused_naming_the_first(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 12)
    (tmp_path / "link").symlink_to(out, target_is_directory=True)
    out.mkdir()
    first = spawn(home, "start", src, "--out", out, "--name", "A", "--pipeline",
                  "crashtest delay=1 | convert png", *RUN)  # 12 s of work: cancelled at the end
    try:
        a = wait_for(lambda: named(home, "A"), what="batch A")
        wait_for(lambda: runner_alive(a), what="A's runner")
        for where in (out, tmp_path / "link"):  # the same folder by another path is the same folder
            r = run(home, "start", src, "--out", where, "--name", "B", "--pipeline", "convert png", *RUN)
            assert r.returncode == 2, r.stderr
            line = r.stderr.strip()
            assert "\n" not in line, repr(r.stderr)
            assert f"batch {a.id} (A, running) also writes 12 of these outputs:" in line, line
            assert "img000.png, img001.png, img002.png, img003.png, img004.png and 7 more" in line
            assert f"batchcli cancel {a.id}" in line and "; wait for it to finish, cancel it" in line
        assert Store(str(home)).ids() == [a.id]  # B left nothing behind
        r = run(home, "start", src, "--out", out, "--name", "C", "--pipeline", "convert jpg", *RUN)
        assert r.returncode == 0, r.stderr  # other names (.jpg) in the same folder: no clash
    finally:
        run(home, "cancel", "A")
        first.wait(60)


def test_a_paused_batch_still_claims_its_outputs_and_a_resume_checks_too(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 3)
    a = create(home, [src], out, "convert png", name="A")
    assert run(home, "pause", a.id).returncode == 0
    r = run(home, "start", src, "--out", out, "--pipeline", "resize 10x10", *RUN)  # extension unknown: clashes
    assert r.returncode == 2 and f"batch {a.id} (A, paused) also writes 3" in r.stderr
    assert f"; resume it ('batchcli resume {a.id}'), cancel it ('batchcli cancel {a.id}')" in r.stderr, r.stderr
    assert "wait for it" not in r.stderr  # nothing runs it
    assert run(home, "cancel", a.id).returncode == 0
    b = _start(home, src, out, "B")
    (out / "img001.png").unlink()
    assert run(home, "verify", b.id, "--repair").returncode == 1  # item 1 re-queued: B will write again
    c = create(home, [src], out, "convert png", name="C")  # B is completed: C may take the paths
    r = run(home, "resume", b.id, *RUN)
    assert r.returncode == 2, r.stderr
    assert f"batch {c.id} (C, pending) also writes 1 of the outputs this resume would write: img001.png;" in r.stderr
    assert f"; start it ('batchcli resume {c.id}') or cancel it" in r.stderr and "wait for it" not in r.stderr


def test_a_resume_is_refused_only_for_the_paths_it_would_write(tmp_path):
    """A finished batch resumed after verify --repair writes only the repaired outputs: a paused
    batch claiming other paths of the folder does not keep it from them. One that would write a
    claimed path is still refused, naming only the paths this resume would write, with advice a
    resume can follow (its --out cannot change)."""
    home, out = tmp_path / "home", tmp_path / "out"
    make_pngs(tmp_path / "all", 6)
    make_pngs(tmp_path / "few", 3)  # img000..img002 and zz: B claims only these
    for folder in ("all", "few"):
        (tmp_path / folder / "zz.png").write_text("not an image")  # fails in A
    r = run(home, "start", tmp_path / "all", "--out", out, "--name", "A", "--pipeline", "convert png", *RUN)
    assert r.returncode == 1, r.stderr
    a = Store(str(home)).resolve("A")
    b = create(home, [tmp_path / "few"], out, "convert png", name="B")
    assert run(home, "pause", b.id).returncode == 0
    (out / "img005.png").unlink()  # a path B never writes
    assert run(home, "verify", a.id, "--repair").returncode == 1
    r = run(home, "resume", a.id, *RUN)
    assert r.returncode == 1 and "remaining 0" in r.stdout, r.stderr  # (zz still failed)
    assert (out / "img005.png").exists()
    r = run(home, "resume", a.id, "--retry-failed", *RUN)  # would write zz.png, which B claims
    assert r.returncode == 2 and "also writes 1 of the outputs this resume would write: zz.png;" in r.stderr, r.stderr
    for rel in ("img001.png", "img004.png"):  # B's path and one of A's own: the resume would write both
        (out / rel).unlink()
    assert run(home, "verify", a.id, "--repair").returncode == 1
    r = run(home, "resume", a.id, *RUN)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    line = r.stderr.strip()
    assert (f"resuming batch {a.id} into {out}: batch {b.id} (B, paused) also writes 1 of the outputs this "
            f"resume would write: img001.png; resume it ('batchcli resume {b.id}') or cancel it ('batchcli cancel "
            f"{b.id}'), then resume this batch again") in line, line
    assert "--out" not in line
    assert not (out / "img004.png").exists()  # refused before any work
    assert run(home, "cancel", b.id).returncode == 0
    assert run(home, "resume", a.id, *RUN).returncode == 1  # (zz still failed)
    assert (out / "img001.png").exists() and (out / "img004.png").exists()


def test_a_batch_whose_runner_died_is_named_interrupted_with_advice_that_fits(tmp_path):
    """A runner killed (kill -9, a reboot) leaves its journal saying running: the refusal names
    the batch as `status` does, interrupted, and says how to go on, not to wait for it."""
    import signal

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 6)
    first = spawn(home, "start", src, "--out", out, "--name", "A", "--pipeline", "crashtest delay=1 | convert png",
                  *RUN)
    try:
        a = wait_for(lambda: named(home, "A"), what="batch A")
        wait_for(lambda: b"batch_started" in open(a.journal, "rb").read(), what="A's batch_started")
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    wait_for(lambda: runner_alive(a) is None, what="A's runner to be gone")
    assert json.loads(run(home, "status", a.id, "--json").stdout)["status"] == "interrupted"
    for cmd in ("start", "sync"):
        r = run(home, cmd, src, "--out", out, "--pipeline", "convert png", *RUN)
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip()
        assert f"batch {a.id} (A, interrupted) also writes 6 of these outputs" in line, line
        assert (f"; resume it ('batchcli resume {a.id}' or 'batchcli recover --resume'), "
                f"cancel it ('batchcli cancel {a.id}'), or choose another --out") in line, line
        assert "wait for it" not in line
    assert run(home, "recover").returncode == 0  # recorded paused: said so
    r = run(home, "start", src, "--out", out, "--pipeline", "convert png", *RUN)
    assert r.returncode == 2 and "(A, paused) also writes 6" in r.stderr and "resume it" in r.stderr, r.stderr


def test_claims_follow_the_journals_when_the_catalog_is_behind_them(tmp_path):
    """The claims check reads a batch the catalog indexed before its journal grew from the
    journal's end, however far back its last state record lies: a paused batch indexed then
    cancelled claims nothing; one paused after 200 KiB of other records still claims."""
    from batchcli.engine.catalog import Catalog
    from batchcli.engine.journal import JournalWriter, replay

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 3)
    a = create(home, [src], out, "convert png", name="A")
    assert run(home, "pause", a.id).returncode == 0
    with Catalog(str(home)) as cat:
        assert cat.refresh()["batches"] == 1
        assert [r.state for r in cat.batches_into(os.stat(out).st_dev, os.stat(out).st_ino)] == ["paused"]
    assert run(home, "cancel", a.id).returncode == 0  # the catalog still says paused
    c = create(home, [src], out, "convert png", name="C")
    assert run(home, "pause", c.id).returncode == 0
    with JournalWriter(c.journal, replay(c.journal, 3).last_seq) as j:  # the pause far from the end
        for _ in range(800):
            j.append("items_requeued", items=[], reason="x" * 200)
    assert os.path.getsize(c.journal) > 200 << 10
    r = run(home, "start", src, "--out", out, "--pipeline", "resize 10x10", *RUN)
    assert r.returncode == 2 and f"batch {c.id} (C, paused) also writes 3" in r.stderr, r.stderr
    assert a.id not in r.stderr


def test_writing_over_a_finished_batch_moves_ownership(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 3)
    a = _start(home, src, out, "A")
    b = _start(home, src, out, "B")
    r = run(home, "verify", "A")
    assert r.returncode == 0, r.stdout
    assert f"3 superseded\n  superseded by {b.id} (B): 3 output(s) a later batch wrote over" in r.stdout
    data = json.loads(run(home, "verify", "A", "--json").stdout)
    assert (data["ok"], data["changed_count"], data["missing_count"], data["superseded_count"]) == (0, 0, 0, 3)
    assert data["superseded_by"] == {b.id: {"name": "B", "count": 3}}
    assert data["superseded"][0] == {"i": 0, "input": str(src / "img000.png"), "output": str(out / "img000.png"),
                                     "by": b.id, "by_name": "B"}
    r = run(home, "verify", "A", "--repair", "--json")
    assert json.loads(r.stdout)["requeued"] == 0  # never asks to repair another batch's files
    assert "all match the journal" in run(home, "verify", "B").stdout
    assert a.id != b.id


def test_cleanup_of_the_older_batch_keeps_the_newer_ones_files_even_without_the_catalog(tmp_path):
    """The issue's scenario: A and B write the same bytes to the same paths; cleaning A with
    --purge-outputs deleted B's files. And catalog.sqlite deleted between two commands."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 4)
    a = _start(home, src, out, "A")
    b = _start(home, src, out, "B")
    before = json.loads(run(home, "verify", "A", "--json").stdout)
    for name in os.listdir(home):
        if name.startswith("catalog.sqlite"):
            os.unlink(home / name)
    assert json.loads(run(home, "verify", "A", "--json").stdout) == before
    files = _files(out)
    r = run(home, "cleanup", "--older-than", "0s", "--status", "completed", "--purge-outputs", "--keep-last", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"removed batch {a.id} (completed, 0 output files) (4 files kept: 4 superseded by "
                        f"{b.id} (a later batch wrote over them))\n")
    assert _files(out) == files
    assert "all match the journal" in run(home, "verify", "B").stdout
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--json")
    assert json.loads(r.stdout)["cleaned"][0]["outputs_removed"] == 4
    assert os.listdir(out) == []


def test_a_file_written_again_since_is_kept_even_when_its_writer_is_gone(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 2)
    a = _start(home, src, out, "A")
    b = _start(home, src, out, "B")
    os.utime(b.journal, (1, 1))  # B is old: cleaned alone, records only (its files stay)
    r = run(home, "cleanup", "--older-than", "1h", "--json")
    assert [c["batch_id"] for c in json.loads(r.stdout)["cleaned"]] == [b.id]
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--dry-run")
    assert r.stdout == f"would remove batch {a.id} (completed, 0 output files) (2 files kept: 2 changed since)\n"
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--json")
    entry = json.loads(r.stdout)["cleaned"][0]
    assert entry["batch_id"] == a.id and entry["outputs_removed"] == 0  # same bytes, but B's mtime
    assert entry["outputs_kept_reasons"] == {"changed": 2}
    assert sorted(os.listdir(out)) == ["img000.png", "img001.png"]


@pytest.mark.parametrize("swap", ["symlink", "link above it"])
def test_a_swapped_output_folder_is_refused_and_nothing_below_it_deleted(tmp_path, swap):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "top" / "out"
    make_pngs(src, 3)
    a = _start(home, src, out, "A")
    backup = tmp_path / "backup"
    elsewhere = backup / "out"
    shutil.copytree(out, elsewhere)  # the same names, bytes and mtimes: a purge that follows would delete them
    if swap == "symlink":
        os.rename(out, tmp_path / "moved")
        out.symlink_to(elsewhere, target_is_directory=True)
    else:  # the path now leads into the backup: a different folder, not the one made again
        os.rename(tmp_path / "top", tmp_path / "moved")
        (tmp_path / "top").symlink_to(backup, target_is_directory=True)
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs")
    assert r.returncode == 1 and r.stdout == ""
    why = ("is now a symbolic link (to " + str(elsewhere) + ")" if swap == "symlink"
           else f"is not the folder the batch wrote to (its path now goes through a symbolic link, to {elsewhere})")
    assert r.stderr.startswith(f"Error: kept batch {a.id}: not purged: output folder {out} {why}")
    assert r.stderr.count("\n") == 1 and "nothing below it was deleted" in r.stderr
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--json")
    assert r.returncode == 1 and r.stderr == ""  # the same exit code for a script reading JSON
    skipped = json.loads(r.stdout)["skipped"]
    assert [(s["batch_id"], s["refused"]) for s in skipped] == [(a.id, True)] and why in skipped[0]["reason"]
    assert len(_files(elsewhere)) == 3 and len(_files(out)) == 3
    assert Store(str(home)).ids() == [a.id]  # kept whole: purge it once the folder is back


@pytest.mark.parametrize("inode", ["new", "same"])
def test_an_output_folder_made_again_from_a_backup_is_purged_of_the_copies(tmp_path, inode):
    """The folder's files restored from a backup (same file system): those with the recorded
    size, sha256 and mtime (to the second: tar keeps whole seconds) go; an edited one stays, and
    so does the user's own file. Whether the folder was made again (another inode), or kept with
    its inode (files restored into it, as `tar -x` does; ext4 also gives a deleted folder's inode
    to the next new one at once)."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 4)
    a = _start(home, src, out, "A")
    backup = tmp_path / "backup"
    shutil.copytree(out, backup)  # keeps the mtimes to the nanosecond, as cp -a and rsync -a do
    if inode == "new":  # the old folder still exists while the new one is made
        out.rename(tmp_path / "old")
        shutil.copytree(backup, out)
        shutil.rmtree(tmp_path / "old")
    else:
        for f in out.iterdir():
            f.unlink()
        shutil.copytree(backup, out, dirs_exist_ok=True)
    st = os.stat(out / "img001.png")
    os.utime(out / "img001.png", (int(st.st_atime), int(st.st_mtime)))  # as tar restores it
    edited = bytearray((out / "img002.png").read_bytes())
    edited[-20] ^= 0xFF  # same size, same mtime, other bytes: only the sha256 tells
    (out / "img002.png").write_bytes(bytes(edited))
    os.utime(out / "img002.png", ns=(st.st_atime_ns, os.stat(backup / "img002.png").st_mtime_ns))
    (out / "notes.txt").write_text("mine")
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--dry-run")
    assert r.returncode == 0 and r.stdout == (f"would remove batch {a.id} (completed, 3 output files) "
                                              "(1 files kept: 1 changed since)\n"), r.stdout + r.stderr
    assert len(os.listdir(out)) == 5
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--json")
    assert r.returncode == 0, r.stderr
    entry = json.loads(r.stdout)["cleaned"][0]
    assert (entry["outputs_removed"], entry["outputs_kept_reasons"]) == (3, {"changed": 1})
    assert sorted(os.listdir(out)) == ["img002.png", "notes.txt"] and len(os.listdir(backup)) == 4


def test_a_folder_made_again_keeps_what_a_later_batch_wrote_into_it(tmp_path):
    """After the folder was made again, batch B wrote the same paths (known to the catalog by the
    new folder's identity): A's purge keeps them, even with A's bytes and mtimes; while B runs
    into the new folder, A's purge waits."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 3)
    a = _start(home, src, out, "A")
    mtimes = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
    shutil.rmtree(out)
    out.mkdir()
    proc = spawn(home, "start", src, "--out", out, "--name", "B", "--pipeline", "crashtest delay=1 | convert png",
                 *RUN)
    try:
        b = wait_for(lambda: named(home, "B"), what="batch B")
        wait_for(lambda: runner_alive(b), what="B's runner")
        r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--status", "completed")
        assert r.returncode == 1 and r.stderr == (
            f"Error: kept batch {a.id}: not purged: batch {b.id} is writing into the same output folder {out}; "
            "purge it once that batch has finished\n")
    finally:
        proc.wait(60)
    assert proc.returncode == 0
    for n, ns in mtimes.items():  # only the catalog can tell B's files from A's now
        os.utime(out / n, ns=(ns, ns))
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--keep-last", "1", "--json")
    entry = json.loads(r.stdout)["cleaned"][0]
    assert entry["batch_id"] == a.id and entry["outputs_removed"] == 0
    assert entry["outputs_kept_reasons"] == {"superseded": 3} and entry["superseded_by"] == {b.id: 3}
    assert len(os.listdir(out)) == 3


def test_a_link_inside_the_output_folder_is_not_followed(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src / "sub", 2)
    make_pngs(src, 1)
    _start(home, src, out, "A")
    elsewhere = tmp_path / "precious"
    shutil.copytree(out / "sub", elsewhere)
    shutil.rmtree(out / "sub")
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--dry-run")
    assert r.stdout.endswith("(completed, 1 output files) (2 files kept: 2 behind a link)\n"), r.stdout
    r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--json")
    entry = json.loads(r.stdout)["cleaned"][0]
    assert (entry["outputs_removed"], entry["outputs_kept_reasons"]) == (1, {"link": 2})
    assert len(_files(elsewhere)) == 2


def test_a_purge_waits_while_another_batch_runs_into_the_folder(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 10)
    a = _start(home, src, out, "A")
    proc = spawn(home, "start", src, "--out", out, "--name", "B", "--pipeline", "crashtest delay=1 | convert png",
                 *RUN)  # 10 s of work: cancelled at the end
    try:
        b = wait_for(lambda: named(home, "B"), what="batch B")
        wait_for(lambda: runner_alive(b), what="B's runner")
        r = run(home, "cleanup", "--older-than", "0s", "--purge-outputs", "--status", "completed")
        assert r.returncode == 1
        assert r.stderr == (f"Error: kept batch {a.id}: not purged: batch {b.id} is writing into the same output "
                            f"folder {out}; purge it once that batch has finished\n")
        assert a.id in Store(str(home)).ids() and len(os.listdir(out)) == 10
    finally:
        run(home, "cancel", "B")
        proc.wait(60)


@pytest.mark.parametrize("how", ["bind mount", "symlink", "hard link"])
def test_an_output_that_would_land_on_an_input_is_refused_before_any_work(tmp_path, how, bind_mount):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src / "sub", 3)
    out.mkdir()
    if how == "bind mount":
        bind_mount(src, out)  # out/sub/img000.png is in/sub/img000.png: the paths differ, not the files
    elif how == "symlink":
        (out / "sub").symlink_to(src / "sub", target_is_directory=True)
    else:
        (out / "sub").mkdir()
        os.link(src / "sub" / "img001.png", out / "sub" / "img001.png")
    before = _files(src)
    r = run(home, "start", src, "--out", out, "--pipeline", "resize 16x16", *RUN)
    assert r.returncode == 2, r.stderr
    first = "img001" if how == "hard link" else "img000"
    assert r.stderr.startswith(f"Error: --out {out}: the output {out}/sub/{first}.png would replace the input "
                               f"{src}/sub/{first}.png (the same file, device ")
    assert r.stderr.count("\n") == 1 and r.stderr.rstrip().endswith("choose another --out")
    assert _files(src) == before and Store(str(home)).ids() == []


def test_outputs_that_are_one_file_but_no_input_are_not_refused(tmp_path):
    """Two existing output paths hard-linked to one file (not an input) clash with no input: the
    batch runs and writes both outputs."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src / "sub", 3)
    (out / "sub").mkdir(parents=True)
    (tmp_path / "other.png").write_bytes(b"not an input")
    os.link(tmp_path / "other.png", out / "sub" / "img000.png")
    os.link(tmp_path / "other.png", out / "sub" / "img001.png")
    r = run(home, "start", src, "--out", out, "--pipeline", "resize 16x16", *RUN)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "other.png").read_bytes() == b"not an input"  # replaced by new files, not written through
    assert (out / "sub" / "img000.png").stat().st_ino != (out / "sub" / "img001.png").stat().st_ino


def test_the_claims_check_catches_the_catalog_up_once_many_batches_are_behind(tmp_path, monkeypatch):
    """The claims check reads batches the catalog has not indexed from their own files, up to
    CATCH_UP of them; past that it refreshes the catalog (the same answer, and the next check
    reads nothing again)."""
    from batchcli.engine import owners
    from batchcli.engine.catalog import Catalog

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 2)
    done = [_start(home, src, out, name) for name in ("A", "B")]
    c = create(home, [src], tmp_path / "other", "convert png", name="C")  # pending, another folder
    store, st = Store(str(home)), os.stat(out)
    read_now = owners.batches_into(store, (st.st_dev, st.st_ino))
    assert [(r.batch_id, r.state) for r in read_now] == [(b.id, "completed") for b in done]
    with Catalog(str(home)) as cat:
        assert cat.indexed() == {}  # nothing was indexed for that answer
    monkeypatch.setattr(owners, "CATCH_UP", 2)
    assert owners.batches_into(store, (st.st_dev, st.st_ino)) == read_now
    with Catalog(str(home)) as cat:
        assert sorted(cat.indexed()) == sorted([*(b.id for b in done), c.id])


def test_claims_are_those_of_one_home(tmp_path):
    """README: batches of another home writing into the same folder are not seen."""
    make_pngs(tmp_path / "in", 30)
    out = tmp_path / "out"
    a = spawn(tmp_path / "home-a", "start", tmp_path / "in", "--out", out, "-w", "1", "--min-free-space", "0",
              "-p", "crashtest delay=0.2 | convert png")
    try:
        wait_for(lambda: out.is_dir() and any(out.iterdir()), what="the first batch writing")
        r = run(tmp_path / "home-a", "start", tmp_path / "in", "--out", out, "-p", "convert png")
        assert r.returncode == 2 and "also writes" in r.stderr  # the same home: refused
        r = run(tmp_path / "home-b", "start", tmp_path / "in", "--out", out, "-p", "convert png", "--min-free-space", "0")
        assert r.returncode == 0, r.stderr  # another home: not seen
    finally:
        a.kill()
        a.wait()
