"""Safe purge: `cleanup --purge-outputs` deletes an output file only when

- the batch being cleaned is its last writer in the catalog (a later batch that wrote over it
  owns it now: kept, "superseded");
- its bytes still hash to the sha256 recorded, and its mtime is the one recorded (edited, or
  written again since: kept, "changed");
- it lies inside the output folder recorded when the batch was created: that folder is opened
  without following a symbolic link and must have the recorded device and inode, and every
  folder below it is opened the same way (a link anywhere: kept, "link"), so a folder swapped for
  a link since the run is refused with one line and nothing below it is deleted.

A folder deleted and made again at the recorded path (restored from a backup, say) has another
inode. It is purged all the same when it is on the recorded device and its path goes through no
symbolic link (the recorded path is the folder's real path): then it is the place the batch
wrote, not a different folder reached by the same name (another file system mounted there, a
link swapped in above it: refused as before). Its files are not the ones the batch wrote, so
each must prove it is a copy of one: the recorded size and sha256, and the recorded mtime to
the second (a restore that keeps modification times; tar keeps whole seconds), and no batch may
have written that path in the new folder since (the catalog knows it by the new identity:
kept, "superseded").

Everything is done relative to open folder descriptors (openat/unlinkat), so a link swapped in
while the purge runs is not followed either. Folders left empty by the purge are removed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections import Counter
from dataclasses import dataclass, field

from batchcli.engine.store import BatchPaths

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)


class Refused(Exception):
    """The output folder is not the one the batch wrote to: nothing is deleted (one-line reason)."""


@dataclass
class PurgeResult:
    removed: int = 0
    kept: Counter = field(default_factory=Counter)  # reason -> files: superseded, changed, missing, link
    superseded_by: Counter = field(default_factory=Counter)  # batch id -> files
    removed_rels: list[str] = field(default_factory=list)

    @property
    def kept_count(self) -> int:
        return sum(self.kept.values())


def open_out_folder(out_dir: str, dev: int | None, ino: int | None) -> int:
    """The recorded output folder, opened without following a link, checked by identity."""
    try:
        fd = os.open(out_dir, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(out_dir):
            raise Refused(f"output folder {out_dir} is now a symbolic link (to {_readlink(out_dir)}); "
                          "nothing below it was deleted") from None
        if exc.errno == errno.ENOTDIR:
            raise Refused(f"output folder {out_dir} is no longer a folder; nothing was deleted") from None
        raise
    st = os.fstat(fd)
    if dev is not None and (st.st_dev, st.st_ino) != (dev, ino):
        os.close(fd)
        raise Refused(f"output folder {out_dir} is not the folder the batch wrote to (device/inode "
                      f"{st.st_dev}/{st.st_ino}, recorded {dev}/{ino}: replaced or reached through a "
                      "different link since); nothing below it was deleted")
    return fd


def remade_identity(out_dir: str, dev: int | None, ino: int | None) -> tuple[int, int] | None:
    """The (device, inode) of the folder at `out_dir` when it is not the recorded one but the
    same place made again (see the module docstring); None when it is the recorded one, or when
    open_out_folder will say what is wrong. Raises Refused for a different folder at that path."""
    here = current_identity(out_dir)
    if dev is None or here is None or here == (dev, ino):
        return None
    real = os.path.realpath(out_dir)
    if real != out_dir:
        raise Refused(f"output folder {out_dir} is not the folder the batch wrote to (its path now goes through a "
                      f"symbolic link, to {real}); nothing below it was deleted")
    if here[0] != dev:
        raise Refused(f"output folder {out_dir} is not the folder the batch wrote to (device/inode "
                      f"{here[0]}/{here[1]}, recorded {dev}/{ino}: another file system); nothing below it "
                      "was deleted")
    return here


def current_identity(out_dir: str) -> tuple[int, int] | None:
    """The (device, inode) of the folder at `out_dir` now (not following a link), or None."""
    try:
        st = os.lstat(out_dir)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def purge_outputs(paths: BatchPaths, dry_run: bool) -> PurgeResult:
    """Delete the files this batch wrote and still owns (see the module docstring). Raises
    Refused when the output folder is not the recorded one; nothing is deleted then."""
    from batchcli.engine.catalog import Catalog

    man = paths.load_manifest()
    out_dir = man.get("out_dir")
    res = PurgeResult()
    if not out_dir or not os.path.lexists(out_dir):
        return res
    dev, ino = man.get("out_dev"), man.get("out_ino")
    remade = remade_identity(out_dir, dev, ino)
    owned = []
    with Catalog(paths.home) as cat:
        cat.refresh()
        for mine, last in cat.last_writers(paths.id):
            if last.batch_id == paths.id and remade is not None:  # a batch that wrote into the new folder
                last = cat.last_writer(*remade, mine.rel or "") or last
            if last.batch_id != paths.id:
                res.kept["superseded"] += 1
                res.superseded_by[last.batch_id] += 1
            else:
                owned.append(mine)
    owned += _shards(paths.journal) if man.get("shards") else []
    if remade is not None:
        dev, ino = remade
    delete_outputs(out_dir, dev, ino, owned, dry_run, res, copies=remade is not None)
    return res


def _shards(journal: str) -> list:
    """The tar shards a batch sealed (engine/shards.py), as outputs: a shard is its batch's
    alone (a sharded batch starts only in a folder without shards), so no catalog is asked."""
    from types import SimpleNamespace

    from batchcli.engine.shards import sealed_records

    return [SimpleNamespace(rel=r["shard"], size=r.get("bytes"), mtime=r.get("mtime"), sha256=r.get("sha256"))
            for r in sealed_records(journal)]


def delete_outputs(out_dir: str, dev: int | None, ino: int | None, outputs: list, dry_run: bool,
                   res: PurgeResult | None = None, copies: bool = False) -> PurgeResult:
    """Delete these outputs of the recorded folder (each with rel, size, mtime, sha256) by the
    rules above, and the folders left empty; `res.removed_rels` names the files removed. Raises
    Refused when the folder is not the recorded one; nothing is deleted then. `copies`: the
    folder was made again, its files are copies (mtime to the second, sha256 required)."""
    res = res if res is not None else PurgeResult()
    root = open_out_folder(out_dir, dev, ino)
    emptied: set[str] = set()
    try:
        for out in outputs:
            why = _delete(root, out.rel or "", out.size, out.mtime, out.sha256, dry_run, copies)
            if why is None:
                res.removed += 1
                res.removed_rels.append(out.rel or "")
                emptied.add(os.path.dirname(out.rel or ""))
            else:
                res.kept[why] += 1
        if not dry_run:
            _remove_empty(root, emptied)
    finally:
        os.close(root)
    return res


def _walk(root: int, parts: list[str]) -> int | None:
    """The folder `parts` below `root`, each step opened without following links; None when a
    step is missing, a link or not a folder. The caller closes the descriptor (unless root)."""
    fd = root
    for part in parts:
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            nxt = None
        if fd != root:
            os.close(fd)
        if nxt is None:
            return None
        fd = nxt
    return fd


def _delete(root: int, rel: str, size: int | None, mtime: float | None, digest: str | None,
            dry_run: bool, copy: bool = False) -> str | None:
    """None when deleted (or would be); else why the file is kept. A file with the recorded
    bytes but another mtime was written again since (by a batch whose record is gone, say).
    `copy`: the file is in a folder made again, its mtime compared to the second, its sha256
    required."""
    parts = rel.split("/")
    if not rel or os.path.isabs(rel) or any(p in ("", ".", "..") for p in parts):
        return "outside"
    folder = _walk(root, parts[:-1])
    if folder is None:
        return "link" if _has_link(root, parts[:-1]) else "missing"
    name = parts[-1]
    try:
        try:
            st = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return "missing"
        if stat.S_ISLNK(st.st_mode):
            return "link"
        # the recorded mtime cut to whole seconds: restored by tar into a folder whose inode the
        # deleted one's was given again (ext4 reuses it at once), so a copy, known by its sha256
        restored = mtime is not None and st.st_mtime != mtime and st.st_mtime == int(mtime)
        if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size) \
                or (mtime is not None and not restored and not _same_time(st.st_mtime, mtime, copy)):
            return "changed"
        if (digest or copy or restored) and _sha256(folder, name) != digest:
            return "changed"
        if not dry_run:
            os.unlink(name, dir_fd=folder)
        return None
    except OSError:
        return "changed"
    finally:
        if folder != root:
            os.close(folder)


def _same_time(now: float, recorded: float, to_the_second: bool) -> bool:
    return int(now) == int(recorded) if to_the_second else now == recorded


def _has_link(root: int, parts: list[str]) -> bool:
    fd = root
    try:
        for part in parts:
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except OSError:
                return False
            if stat.S_ISLNK(st.st_mode):
                return True
            nxt = _walk(fd, [part])
            if nxt is None:
                return False
            if fd != root:
                os.close(fd)
            fd = nxt
        return False
    finally:
        if fd != root:
            os.close(fd)


def _sha256(folder: int, name: str) -> str | None:
    h = hashlib.sha256()
    fd = os.open(name, _FILE_FLAGS, dir_fd=folder)
    with os.fdopen(fd, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _remove_empty(root: int, folders: set[str]) -> None:
    """Remove the folders the purge emptied, deepest first, and their parents once empty; never
    the output folder itself."""
    todo = set()
    for f in folders:
        while f:
            todo.add(f)
            f = os.path.dirname(f)
    for f in sorted(todo, key=lambda p: p.count("/"), reverse=True):
        parts = f.split("/")
        parent = _walk(root, parts[:-1])
        if parent is None:
            continue
        try:
            os.rmdir(parts[-1], dir_fd=parent)
        except OSError:
            pass  # not empty (the user's files, another batch's outputs), or gone
        finally:
            if parent != root:
                os.close(parent)
