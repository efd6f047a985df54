"""Atomic writes: whole file or old file, folders made once and again when they vanish."""

from __future__ import annotations

import os
import shutil

from batchcli.atomic import atomic_write, is_tmp_name


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
