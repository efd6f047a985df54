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
