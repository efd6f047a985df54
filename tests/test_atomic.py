"""Atomic writes: whole file or old file, folders made once and again when they vanish; groups of
files made durable together, a failure failing only its own file."""

from __future__ import annotations

import os
import shutil

from batchcli.atomic import atomic_write, atomic_write_many, is_tmp_name


def test_write_makes_the_folder_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    atomic_write(str(target), b"one")
    atomic_write(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert not [n for n in os.listdir(target.parent) if is_tmp_name(n)]


def test_a_folder_removed_during_a_batch_is_made_again(tmp_path):
    folder = tmp_path / "out"
    atomic_write(str(folder / "x.bin"), b"1")
    shutil.rmtree(folder)  # someone cleans the output folder while the batch runs
    atomic_write(str(folder / "y.bin"), b"2")
    assert (folder / "y.bin").read_bytes() == b"2"


def test_a_group_is_written_whole_across_folders_with_each_mtime(tmp_path):
    entries = [(str(tmp_path / d / f"f{k}.bin"), bytes([k]) * (k + 1)) for d in ("a", "b") for k in range(5)]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f0.bin").write_bytes(b"old")  # replaced whole
    got = atomic_write_many(entries)
    for (path, data), mtime in zip(entries, got):
        assert open(path, "rb").read() == data
        assert mtime == os.stat(path).st_mtime  # what the output catalog records
    for d in ("a", "b"):
        assert not [n for n in os.listdir(tmp_path / d) if is_tmp_name(n)]


def test_a_file_that_cannot_be_written_fails_alone_in_its_group(tmp_path):
    (tmp_path / "blocked").write_text("a file where a folder should be")
    entries = [(str(tmp_path / "ok1.bin"), b"1"), (str(tmp_path / "blocked" / "x.bin"), b"2"),
               (str(tmp_path / "ok2.bin"), b"3")]
    got = atomic_write_many(entries)
    assert isinstance(got[1], OSError) and isinstance(got[0], float) and isinstance(got[2], float)
    assert (tmp_path / "ok1.bin").read_bytes() == b"1" and (tmp_path / "ok2.bin").read_bytes() == b"3"
    assert sorted(os.listdir(tmp_path)) == ["blocked", "ok1.bin", "ok2.bin"]  # no temp file left


def _spy_syncfs(monkeypatch, fail: bool = False) -> list[str]:
    import batchcli.atomic as atomic

    calls, real = [], atomic.syncfs

    def syncfs(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        if fail:
            raise OSError(5, "Input/output error")  # EIO: a write-back failed
        real(fd)

    monkeypatch.setattr(atomic, "syncfs", syncfs)
    monkeypatch.setattr(atomic, "SYNCFS", True)
    monkeypatch.setattr(atomic, "DIRTY_LIMIT", 1 << 62)
    return calls


def test_a_group_costs_two_syncfs_calls_on_linux_whatever_its_size(tmp_path, monkeypatch):
    calls = _spy_syncfs(monkeypatch)
    entries = [(str(tmp_path / "out" / f"f{k}.bin"), bytes([k])) for k in range(40)]
    got = atomic_write_many(entries)
    assert all(isinstance(m, float) for m in got)
    assert calls == [str(tmp_path / "out")] * 2  # the data before the renames, the renames after
    assert sorted(os.listdir(tmp_path / "out")) == sorted(f"f{k}.bin" for k in range(40))


def test_a_failed_syncfs_falls_back_to_an_fsync_of_each_file(tmp_path, monkeypatch):
    calls = _spy_syncfs(monkeypatch, fail=True)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    entries = [(str(tmp_path / f"f{k}.bin"), b"x" * k) for k in range(5)]
    got = atomic_write_many(entries)
    assert all(isinstance(m, float) for m in got) and len(calls) == 2
    assert sum(is_tmp_name(os.path.basename(p)) for p in synced) == 5  # each temp file, before its rename
    assert synced.count(str(tmp_path)) == 1  # and the folder after the renames
    assert [(tmp_path / f"f{k}.bin").read_bytes() for k in range(5)] == [b"x" * k for k in range(5)]


def test_with_much_else_waiting_to_be_written_a_group_uses_its_own_fsyncs(tmp_path, monkeypatch):
    import batchcli.atomic as atomic

    assert atomic.DIRTY_LIMIT == 64 << 20  # what the README says
    calls = _spy_syncfs(monkeypatch)
    monkeypatch.setattr(atomic, "DIRTY_LIMIT", 0)  # a syncfs would wait for every other program's writes
    got = atomic_write_many([(str(tmp_path / f"f{k}.bin"), b"1") for k in range(3)])
    assert all(isinstance(m, float) for m in got) and calls == []


def test_a_slow_syncfs_turns_to_fsyncs_for_a_while(tmp_path, monkeypatch):
    """A syncfs slower than SLOW_SYNCFS wrote out much else (another program's many small files):
    the next groups use their own fsyncs until SYNCFS_PAUSE has passed."""
    import time

    import batchcli.atomic as atomic

    assert (atomic.SLOW_SYNCFS, atomic.SYNCFS_PAUSE) == (0.1, 5.0)  # what the README says
    calls = _spy_syncfs(monkeypatch)
    spied = atomic.syncfs
    monkeypatch.setattr(atomic, "syncfs", lambda fd: (time.sleep(0.03), spied(fd)))
    monkeypatch.setattr(atomic, "SLOW_SYNCFS", 0.02)
    monkeypatch.setattr(atomic, "_syncfs_off_until", 0.0)

    def group(tag: str) -> None:
        got = atomic_write_many([(str(tmp_path / f"{tag}{k}.bin"), b"1") for k in range(3)])
        assert all(isinstance(m, float) for m in got)

    group("a")
    assert len(calls) == 2  # slow: syncfs is off now
    group("b")
    assert len(calls) == 2
    monkeypatch.setattr(atomic, "_syncfs_off_until", 0.0)  # the pause has passed
    group("c")
    assert len(calls) == 4
    assert len(os.listdir(tmp_path)) == 9


def test_only_temp_files_in_the_writers_own_form_are_swept(tmp_path):
    """`recover` swept every name holding '.batchcli-tmp-': a user's file and a completed output
    whose input was so named went with the dead writer's temp files."""
    from batchcli.atomic import sweep_tmp
    from batchcli.engine.liveness import sweep_dead_tmp

    (tmp_path / "sub").mkdir()
    keep = [tmp_path / "sub" / ".notes.batchcli-tmp-mine.txt", tmp_path / ".p.batchcli-tmp-99999-1.jpg",
            tmp_path / "plain.png"]
    dead = [tmp_path / ".a.png.batchcli-tmp-999999999-abcdef01", tmp_path / "sub" / ".b.webp.batchcli-tmp-999999998-0123abcd"]
    for p in keep + dead:
        p.write_bytes(b"x")
    assert sorted(sweep_dead_tmp(str(tmp_path))) == sorted(map(str, dead))
    assert all(p.exists() for p in keep)
    for p in dead:
        p.write_bytes(b"x")
    assert sorted(sweep_tmp(str(tmp_path))) == sorted(map(str, dead)) and all(p.exists() for p in keep)
