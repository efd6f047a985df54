"""export --to never writes through a link inside the destination nor over an input; entry names
stay inside the target after Unicode NFKC normalisation; manifest cells cannot inject formulas."""

from __future__ import annotations

import os
import stat

import pytest
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


def _listing(*folders) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry of `folders`: (mode, inode, bytes of a regular file)."""
    out = {}
    for folder in folders:
        for n in os.listdir(folder):
            p = os.path.join(folder, n)
            st = os.lstat(p)
            data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out[p] = (st.st_mode, st.st_ino, data)
    return out


FILE_FLAGS = [("--zip", "x.zip"), ("--manifest", "x.csv"), ("--report", "x.md"), ("--contact-sheet", "x.jpg")]


@pytest.fixture(scope="module")
def two_pngs(tmp_path_factory):
    """Batch A of two PNGs, made once for the module: (home, src, out). Its users export it only."""
    base = tmp_path_factory.mktemp("two")
    home, src, out = (base / n for n in ("home", "in", "out"))
    make_pngs(src, 2)
    _batch(home, src, out)
    return home, src, out


@pytest.mark.parametrize("flag,name", FILE_FLAGS)
def test_a_file_export_never_replaces_a_fifo_a_folder_or_an_input(two_pngs, tmp_path, flag, name):
    home, src, out = two_pngs
    dest = tmp_path / "dest"
    dest.mkdir()
    os.mkfifo(dest / f"fifo{name}")
    (dest / f"folder{name}").mkdir()
    os.link(src / "img000.png", dest / f"hard{name}")  # the same inode as an input
    (dest / f"sym{name}").symlink_to(src / "img001.png")
    os.mkfifo(dest / "fifo-target")
    (dest / f"symfifo{name}").symlink_to(dest / "fifo-target")
    before = _listing(src, dest, out)
    ino = os.stat(src / "img000.png").st_ino
    want = {
        "fifo": "a FIFO (named pipe), not a regular file; it is never replaced (give the name of a regular "
                "file, or of a new one)",
        "symfifo": "a FIFO (named pipe), not a regular file; it is never replaced (give the name of a regular "
                   "file, or of a new one)",
        "folder": "is a folder; give the name of the file to write",
        "hard": f"is the batch's input {src}/img000.png (the same file, device {os.stat(src).st_dev} inode {ino}); "
                "writing it would replace it",
        "sym": f"is the batch's input {src}/img001.png (the same file, device {os.stat(src).st_dev} inode "
               f"{os.stat(src / 'img001.png').st_ino}); writing it would replace it",
    }
    for kind, reason in want.items():
        target = dest / f"{kind}{name}"
        r = run(home, "export", "A", flag, target)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"Error: {flag} {target}: {reason}\n"), kind
        assert _listing(src, dest, out) == before, kind  # nothing replaced, no temp file left
    assert run(home, "export", "A", flag, dest / name).returncode == 0  # a new file: written
    assert os.path.isfile(dest / name)


def test_report_and_prometheus_targets_are_checked_before_any_work(tmp_path):
    home, src, out = (tmp_path / n for n in ("home", "in", "out"))
    make_pngs(src, 2)
    fifo = tmp_path / "fifo.md"
    os.mkfifo(fifo)
    r = run(home, "start", src, "--out", out, "--pipeline", "convert png", "--report", fifo, *RUN)
    assert r.returncode == 2 and r.stderr.startswith(f"Error: --report {fifo}: a FIFO (named pipe), not a regular file")
    assert not out.exists() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    prom = tmp_path / "fifo.prom"
    os.mkfifo(prom)
    r = run(home, "stats", "--prometheus", prom)
    assert r.returncode == 2 and r.stderr.startswith(f"Error: --prometheus {prom}: a FIFO (named pipe)")
    assert stat.S_ISFIFO(os.lstat(prom).st_mode)
