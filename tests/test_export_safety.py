"""export --to never writes through a link inside the destination nor over an input; entry names
stay inside the target after Unicode NFKC normalisation; manifest cells cannot inject formulas."""

from __future__ import annotations

import os

from crashops import make_pngs, run

from batchcli.engine.store import Store

RUN = ("--min-free-space", "0", "-w", "1")


def _batch(home, src, out, *extra):
    r = run(home, "start", src, "--out", out, "--name", "A", "--pipeline", "convert png", *RUN, *extra)
    assert r.returncode == 0, r.stderr
    return Store(str(home)).resolve("A")


def test_export_to_never_writes_through_a_link_inside_the_destination(tmp_path):
    home, src, out, dest, victim = (tmp_path / n for n in ("home", "in", "out", "dest", "victim"))
    make_pngs(src / "sub", 2)
    _batch(home, src, out)
    dest.mkdir()
    victim.mkdir()
    (dest / "sub").symlink_to(victim, target_is_directory=True)
    r = run(home, "export", "A", "--to", dest)
    assert r.returncode == 2
    assert r.stderr == (f"Error: --to {dest}: {dest}/sub is a symbolic link or a file, not a folder; export never "
                        "writes through a link inside the destination (remove it, or export elsewhere)\n")
    assert os.listdir(victim) == [] and sorted(os.listdir(dest)) == ["sub"]
    (dest / "sub").unlink()
    (dest / "sub").mkdir()
    (dest / "sub" / "img000.png").symlink_to(victim / "x.png")  # a link as the file itself: replaced, not followed
    assert run(home, "export", "A", "--to", dest).returncode == 0
    assert os.listdir(victim) == [] and not (dest / "sub" / "img000.png").is_symlink()


def test_export_to_never_replaces_an_input(tmp_path, bind_mount):
    home, src, out, dest = (tmp_path / n for n in ("home", "in", "out", "dest"))
    make_pngs(src, 2)
    _batch(home, src, out)
    dest.mkdir()
    bind_mount(src, dest)  # dest/img000.png is the input img000.png
    before = {n: (src / n).read_bytes() for n in os.listdir(src)}
    r = run(home, "export", "A", "--to", dest)
    assert r.returncode == 2
    assert r.stderr.startswith(f"Error: --to {dest}: {dest}/img000.png is the batch's input {src}/img000.png "
                               "(the same file, device ")
    assert {n: (src / n).read_bytes() for n in os.listdir(src)} == before
