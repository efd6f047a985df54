"""Outputs have one owner (DESIGN.md invariant 8).

A batch that is not finished (pending, running, paused, interrupted), or whose runner is alive,
claims every output path it will write: its items' output names in its output folder (the same
folder by device and inode, whatever path reaches it). A new batch, or a resume, that would
write a path another batch claims is refused before any work, naming that batch and the first
few paths. The check and the new claim are made under one lock in the batch home, so two
commands started at the same moment cannot both pass.

Writing over a finished batch's output is allowed: the catalog then names the newer batch as the
file's last writer, and the older batch's verify says "superseded".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

from batchcli.engine.catalog import STATES, BatchRow, Catalog, out_identity
from batchcli.engine.journal import decode
from batchcli.engine.store import BatchPaths, Store
from batchcli.errors import ConfigError
from batchcli.inputs.discover import file_ext

LOCK_NAME = "claims.lock"
CATCH_UP = 32
"""Batches the catalog has not indexed (or not since their journal grew) that the claims check
reads from their own files; past that, it refreshes the catalog first (see batches_into)."""
SHOWN = 5
"""Paths named in a refusal (the rest are counted)."""


@contextlib.contextmanager
def claims_lock(store: Store) -> Iterator[None]:
    """Held while a command checks the claims and makes its own (batch created, or runner live)."""
    from batchcli.engine.liveness import FileLock

    os.makedirs(store.home, exist_ok=True)
    with FileLock(os.path.join(store.home, LOCK_NAME)):
        yield


def _key(stem: str, ext: str | None) -> bytes:
    name = stem.casefold() + ("." + ext if ext else "")
    return hashlib.blake2b(os.fsencode(name), digest_size=16).digest()


Lanes = list[tuple[Any, "str | None"]]
"""How a batch's item stems become its output paths: (stem -> output stem, extension or None
when it depends on the input), one lane per output an item writes (one per variant)."""


def output_lanes(manifest: dict[str, Any]) -> Lanes:
    """The lanes of a batch (its manifest, or the same fields before it is written)."""
    variants = manifest.get("variants")
    if not variants:
        return [(None, manifest.get("out_ext"))]
    from functools import partial

    from batchcli.inputs.names import template_has_variant, variant_stem

    templated = template_has_variant((manifest.get("input_options") or {}).get("name_template"))
    return [(partial(variant_stem, variant=v["name"], templated=templated), v.get("out_ext")) for v in variants]


def _stems(items_path: str, lanes: Lanes, runs: Callable[[int], bool] | None = None) -> Iterator[tuple[str, str | None]]:
    """(output stem, extension) of every output the items will have (of those `runs` selects)."""
    from batchcli.inputs.discover import iter_items

    for rec in iter_items(items_path):
        if runs is not None and not runs(rec["i"]):
            continue
        for to_stem, ext in lanes:
            yield (rec["stem"] if to_stem is None else to_stem(rec["stem"])), ext


def _claiming(store: Store, row: BatchRow) -> bool:
    """Does this batch claim its paths now: not finished, or its runner is alive (a resume of a
    finished batch with --retry-failed / --repair)."""
    if not row.finished:
        return True
    from batchcli.engine.liveness import runner_alive

    return runner_alive(BatchPaths(os.path.join(store.batches_dir, row.batch_id))) is not None


def check_claims(store: Store, me: str, items_path: str, out_dir: str | None, lanes: Lanes,
                 out_id: tuple[int, int] | None, runs: Callable[[int], bool] | None = None,
                 resuming: bool = False) -> None:
    """Raise ConfigError (exit 2) when a batch other than `me` claims a path that the items in
    `items_path` (those `runs` selects by number: the items a resume will run) would write into
    `out_dir` (identity `out_id`) along `lanes` (output_lanes; an extension None is not known
    before the run, so any extension may collide). `resuming`: the refusal's advice is for a
    resume (its folder cannot change). Call it under `claims_lock`."""
    if not out_dir or out_id is None:
        return
    rivals = [r for r in batches_into(store, out_id) if r.batch_id != me and _claiming(store, r)
              and not _superseded_orphan(store, r, me)]
    if not rivals:
        return
    from batchcli.inputs.discover import DigestSet

    for rival in rivals:
        theirs = output_lanes(_manifest(store, rival.batch_id))
        mine_exts = {ext for _, ext in lanes}
        their_exts = {ext for _, ext in theirs}
        if None not in mine_exts | their_exts and not mine_exts & their_exts:
            continue  # every output of one ends in .png, of the other in .jpg: no common path
        exact = None not in mine_exts | their_exts
        mine = DigestSet()
        for stem, ext in _stems(items_path, lanes, runs):
            mine.add(_key(stem, ext if exact else None))
        clashes: list[str] = []
        count = 0
        for stem, ext in _stems(os.path.join(store.batches_dir, rival.batch_id, "items.jsonl"), theirs):
            if not mine.add(_key(stem, ext if exact else None)):  # (a batch's output paths are unique)
                count += 1
                if len(clashes) < SHOWN:
                    clashes.append(stem + (f".{ext}" if ext else ".*"))
        if count:
            raise ConfigError(_refusal(store, rival, out_dir, clashes, count, me if resuming else None))


def check_resume(paths: BatchPaths, manifest: dict[str, Any], out_dir: str | None,
                 runs: Callable[[int], bool] | None) -> None:
    """check_claims for a resume of the batch at `paths` that will run the items `runs` selects
    (None: any of them). Its runner holds the batch lock, so from then on the batch claims all
    its paths, as other batches see it (_claiming)."""
    if not out_dir or manifest.get("out_dev") is None:
        return
    store = Store(paths.home)
    with claims_lock(store):
        check_claims(store, paths.id, paths.items, out_dir, output_lanes(manifest),
                     (manifest["out_dev"], manifest["out_ino"]), runs, resuming=True)


def _superseded_orphan(store: Store, row: BatchRow, me: str) -> bool:
    """A pending batch that will never run (liveness.orphaned: the command that created it was
    killed before its run began, so it wrote nothing) does not keep a new batch from its outputs:
    it is cancelled, its reason naming `me`. True when it was."""
    if row.state != "pending":
        return False
    from batchcli.engine.liveness import ORPHAN_REASON, orphaned
    from batchcli.engine.status import mark
    from batchcli.errors import BatchLocked

    paths = BatchPaths(os.path.join(store.batches_dir, row.batch_id))
    if not orphaned(paths, "pending"):
        return False
    try:
        return mark(paths, "batch_cancelled", unless=("running", "paused", "interrupted", "scheduled", "completed", "failed", "cancelled"),
                    reason=f"{ORPHAN_REASON}; superseded by batch {me}")
    except BatchLocked:  # a runner took it meanwhile: it claims its outputs
        return False


def batches_into(store: Store, out_id: tuple[int, int]) -> list[BatchRow]:
    """The batches whose output folder is `out_id` (by identity), oldest first, each in the state
    its journal leaves it in now. The catalog's row stands for a batch whose journal is unchanged
    since it was indexed; any other is read from its manifest and the end of its journal, so a
    new batch does not wait for the last one's outputs to be indexed (the commands that ask about
    outputs refresh the catalog themselves). Past CATCH_UP such batches, the catalog is
    refreshed first (their manifests would be read again by every start until something did)."""
    with Catalog(store) as cat:
        known = cat.indexed()
        behind = []
        for bid in reversed(store.ids()):
            bdir = os.path.join(store.batches_dir, bid)
            journal = os.path.join(bdir, "journal.jsonl")
            try:
                st = os.stat(journal)
            except OSError:
                continue  # being created (or removed): not a batch yet
            row, mark = known.get(bid, (None, None))
            behind.append((bid, bdir, journal) if mark != (st.st_dev, st.st_ino, st.st_size) else row)
        if sum(isinstance(b, tuple) for b in behind) > CATCH_UP:
            cat.refresh()
            return cat.batches_into(*out_id)
    rows = [_row_now(*b, out_id) if isinstance(b, tuple) else b for b in behind]
    return [r for r in rows if r is not None and (r.out_dev, r.out_ino) == tuple(out_id)]


def _row_now(bid: str, bdir: str, journal: str, out_id: tuple[int, int]) -> BatchRow | None:
    """A batch's row from its manifest (its state from its journal only when it writes into
    `out_id`); None without a readable manifest, as the catalog has it."""
    man = _manifest_in(bdir)
    if not man:
        return None
    dev, ino = out_identity(man)
    state = end_state(journal) if (dev, ino) == tuple(out_id) else "pending"
    return BatchRow(bid, man.get("name"), state, man.get("out_dir"), dev, ino, man.get("fingerprint"), man.get("total"))


_STATE_NEEDLES = tuple(b'"type":"%s"' % t.encode() for t in STATES)
_TAIL_BLOCK = 64 << 10


_SCHEDULED = {**STATES, "batch_scheduled": "scheduled"}
"""STATES and the record of a batch made to run later (the catalog counts it as pending)."""


def end_state(journal: str, states: dict[str, str] = STATES) -> str:
    """The state a journal's records leave its batch in, as an index of it records it (pending
    before any), read backwards from its end: one block unless that state was set long ago."""
    needles = _STATE_NEEDLES if states is STATES else tuple(b'"type":"%s"' % t.encode() for t in states)
    try:
        fh = open(journal, "rb")
    except OSError:
        return "pending"
    with fh:
        end, carry = fh.seek(0, os.SEEK_END), b""
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            fh.seek(start)
            lines = (fh.read(end - start) + carry).split(b"\n")
            carry = lines.pop(0) if start else b""  # (its start lies in the block before)
            for raw in reversed(lines):
                if any(n in raw for n in needles):
                    rec = decode(raw)
                    kind = rec.get("type") if rec is not None else None
                    if kind in states:
                        return rec.get("status", "completed") if kind == "batch_finished" else states[kind]
            end = start
    return "pending"


def _scheduled(paths: BatchPaths) -> bool:
    """Does the batch wait for its time (--at, --after)? Its journal's last record says so."""
    return end_state(paths.journal, _SCHEDULED) == "scheduled"


def _refusal(store: Store, rival: BatchRow, out_dir: str, clashes: list[str], count: int,
             resumed: str | None = None) -> str:
    """The one line of a refusal: the rival batch in its real state (as `status` says it), and
    what to do about it in that state; for a resume of the batch `resumed`, which cannot choose
    another folder, to resume it once the rival is done with those paths."""
    from batchcli.engine.liveness import runner_alive

    bid = rival.batch_id
    paths = BatchPaths(os.path.join(store.batches_dir, bid))
    alive = runner_alive(paths) is not None
    if rival.finished:
        state = f"{rival.state}, being resumed"
    elif rival.state == "running" and not alive:  # its runner died: status says interrupted
        state = "interrupted"
    elif rival.state == "pending" and alive:  # its runner is up: waiting for its time (--at, --after),
        state = "scheduled" if _scheduled(paths) else "running"  # or it has not written batch_started yet
    else:
        state = rival.state
    who = f"batch {bid} ({rival.name + ', ' if rival.name else ''}{state})"
    more = f" and {count - len(clashes)} more" if count > len(clashes) else ""
    cancel = f"cancel it ('batchcli cancel {bid}')"
    if alive:
        advice = "wait for it to finish"
    elif state == "interrupted":  # its runner died (a crash, a reboot, kill -9)
        advice = f"resume it ('batchcli resume {bid}' or 'batchcli recover --resume')"
    else:  # paused, or pending (made, never started): nothing runs it
        advice = f"{'resume' if state == 'paused' else 'start'} it ('batchcli resume {bid}')"
    if resumed is not None:
        return (f"resuming batch {resumed} into {out_dir}: {who} also writes {count} of the outputs this "
                f"resume would write: {', '.join(clashes)}{more}; {advice} or {cancel}, then resume this batch again")
    return (f"--out {out_dir}: {who} also writes {count} of these outputs: "
            f"{', '.join(clashes)}{more}; {advice}, {cancel}, or choose another --out")


def writers_into(store: Store, out_id: tuple[int, int], me: str) -> list[str]:
    """Batches other than `me` that may be writing into this output folder now: a live runner,
    or pending (about to start). Paused and interrupted ones cannot resume without the claims
    lock. Their ids, oldest first. Call it under `claims_lock`."""
    from batchcli.engine.liveness import runner_alive

    return [r.batch_id for r in batches_into(store, out_id) if r.batch_id != me and (
        r.state == "pending" or runner_alive(BatchPaths(os.path.join(store.batches_dir, r.batch_id))) is not None)]


def superseded(paths: BatchPaths) -> dict[str, tuple[str, str | None]]:
    """The outputs of this batch that a later batch wrote over: rel -> (that batch's id, its
    name). The catalog is refreshed first; a home this process cannot write (another user's,
    read-only) gives none: verify then checks every output against this batch's records."""
    import logging
    import sqlite3

    from batchcli.engine.catalog import KIND_OUT

    out: dict[str, tuple[str, str | None]] = {}
    try:
        with Catalog(paths.home) as cat:
            cat.refresh()
            names: dict[str, str | None] = {}
            for mine, last in cat.last_writers(paths.id):
                if mine.kind == KIND_OUT and last.batch_id != paths.id and mine.rel is not None:
                    if last.batch_id not in names:
                        row = cat.batch(last.batch_id)
                        names[last.batch_id] = row.name if row else None
                    out[mine.rel] = (last.batch_id, names[last.batch_id])
    except (sqlite3.Error, OSError) as exc:
        logging.getLogger("batchcli.owners").warning("output catalog unavailable (%s): superseded outputs "
                                                     "show as changed", exc)
    return out


def _manifest(store: Store, batch_id: str) -> dict[str, Any]:
    return _manifest_in(os.path.join(store.batches_dir, batch_id))


def _manifest_in(bdir: str) -> dict[str, Any]:
    try:
        return BatchPaths(bdir).load_manifest()
    except (OSError, ValueError):
        return {}


_EXT_OF_SOURCE = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp", "tif": "tif", "tiff": "tif",
                  "bmp": "bmp", "avif": "avif"}
"""The extension an output gets without `convert`: its input's format (others become PNG)."""


def check_outputs_off_inputs(items_path: str, out_dir: str | None, lanes: Lanes) -> None:
    """Raise ConfigError (exit 2) when an item's output path is an input file itself (same
    device and inode: reached through a bind mount, a symbolic link or a hard link), before
    any work. Free when the output folder is empty; otherwise one listing per output folder
    (a stat per output only where a listing cannot tell: links, mount points, unusual file
    systems)."""
    if not out_dir or not _has_entries(out_dir):
        return
    from batchcli.inputs.discover import iter_items
    from batchcli.inputs.seen import SpillSet, identity_key

    keys = SpillSet()  # the inputs' identities and the existing outputs': one pass, any repeat is suspect
    suspect = False
    try:
        outputs = _Outputs(out_dir, lanes)
        for rec in iter_items(items_path):  # inputs are distinct files: one never repeats another
            if rec.get("ino") and not keys.add(identity_key(rec["ino"], rec["dev"])):
                suspect = True
            for _path, dev, ino in outputs.existing(rec):
                if not keys.add(identity_key(ino, dev)):
                    suspect = True
    finally:
        keys.close()
    if not suspect:
        return
    check = WrittenOutputs(out_dir, lanes)  # the exact pass (rare: a real clash, or two outputs that are one file)
    for rec in iter_items(items_path):
        check.add(rec)
    check.check(items_path)


class WrittenOutputs:
    """check_outputs_off_inputs for a caller that knows which items will write (`sync`: not the
    up-to-date ones): `add` each such item (a listing per output folder, kept for the existing
    outputs only), then `check` the batch's inputs against the outputs found."""

    def __init__(self, out_dir: str | None, lanes: Lanes):
        self.out_dir = out_dir
        self.outputs = _Outputs(out_dir, lanes) if out_dir and _has_entries(out_dir) else None
        self.found: dict[tuple[int, int], str] = {}  # (device, inode) of an existing output -> its path

    def add(self, rec: dict) -> None:
        if self.outputs is not None:
            for path, dev, ino in self.outputs.existing(rec):
                self.found.setdefault((dev, ino), path)

    def check(self, items_path: str) -> None:
        """Raise ConfigError naming the first input (in item order) that is one of the outputs found."""
        if not self.found:
            return
        from batchcli.inputs.discover import iter_items

        for rec in iter_items(items_path):
            path = self.found.get((rec.get("dev"), rec.get("ino"))) if rec.get("ino") else None
            if path is not None:
                raise ConfigError(
                    f"--out {self.out_dir}: the output {path} would replace the input {rec['src']} (the same "
                    f"file, device {rec['dev']} inode {rec['ino']}, reached through a bind mount, a symbolic "
                    "link or a hard link); choose another --out")


LISTED_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "jfs", "reiserfs", "zfs"})
"""File systems whose folder listings give each entry's inode as its stat does (d_ino)."""
LISTINGS = 64
"""Output folders whose listing is kept at once (variants alternate between their folders)."""


class _Outputs:
    """The output paths of items that exist already, found by listing each output folder once."""

    def __init__(self, out_dir: str, lanes: Lanes):
        self.out_dir, self.lanes = out_dir, lanes
        self.mounts = _mounts()
        self.listings: dict[str, tuple[dict | None, int]] = {}

    def existing(self, rec: dict) -> Iterator[tuple[str, int, int]]:
        """(path, device, inode) of each output path of this item that exists."""
        src_ext = None
        for to_stem, out_ext in self.lanes:
            stem = rec["stem"] if to_stem is None else to_stem(rec["stem"])
            if not out_ext:
                src_ext = file_ext(rec["src"]) if src_ext is None else src_ext
                out_ext = _EXT_OF_SOURCE.get(src_ext, "png")
            path = os.path.join(self.out_dir, f"{stem}.{out_ext}")
            cut = path.rfind("/")
            folder, name = path[:cut] or "/", path[cut + 1:]  # (a stem never ends in "/")
            got = self.listings.get(folder)
            if got is None:
                if len(self.listings) >= LISTINGS:
                    del self.listings[next(iter(self.listings))]
                got = self.listings[folder] = _listing(folder, self.mounts)
            listing, dev = got
            if listing is not None:
                entry = listing.get(name)
                if entry is None:
                    continue
                if not entry.is_symlink():
                    yield path, dev, entry.inode()
                    continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            yield path, st.st_dev, st.st_ino


def _listing(folder: str, mounts: list[tuple[str, str]] | None) -> tuple[dict | None, int]:
    """A folder's entries by name and its device; (None, 0) where each path must be stat'ed:
    a mount point inside it, a file system whose listings may not give the inodes stat gives,
    or a folder that cannot be listed."""
    if mounts is None:
        return None, 0
    try:
        st = os.stat(folder)
    except OSError:
        return {}, 0  # no such folder: nothing in it exists
    real = os.path.realpath(folder)
    fstype = next((t for m, t in mounts if real == m or real.startswith(m.rstrip("/") + "/")), None)
    if fstype not in LISTED_FS or any(m.startswith(real + "/") for m, _ in mounts):
        return None, 0
    try:
        with os.scandir(folder) as it:
            return {e.name: e for e in it}, st.st_dev
    except OSError:
        return None, 0


def _mounts() -> list[tuple[str, str]] | None:
    """(mount point, file system type), the longest first; None when they cannot be read."""
    try:
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return None
    out = []
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split(" ")
        if len(fields) > 4 and right:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, right.split(" ")[0]))
    return sorted(out, key=lambda m: len(m[0]), reverse=True)


def _has_entries(folder: str) -> bool:
    try:
        with os.scandir(folder) as it:
            return next(it, None) is not None
    except OSError:
        return False
