"""Where batches live: the batch home, batch ids, and resolving what the user typed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from batchcli.atomic import atomic_write
from batchcli.errors import BatchDamaged, BatchNotFound, ConfigError

ENV_HOME = "BATCHCLI_HOME"


def default_home() -> str:
    env = os.environ.get(ENV_HOME)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    from platformdirs import user_data_dir

    return user_data_dir("batchcli", appauthor=False)


def new_batch_id(now: float | None = None) -> str:
    """Sortable by creation time: 20261120-223015-123-a3f9 (UTC, milliseconds, random)."""
    now = time.time() if now is None else now
    ms = int(now * 1000) % 1000
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{ms:03d}-{os.urandom(2).hex()}"


def process_start_time(pid: int) -> float | None:
    """When `pid` started (seconds since the epoch, as psutil's create_time), None when it is
    gone. Linux: from /proc, without importing psutil (a tenth of a `start`'s imports)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            ticks = int(fh.read().rsplit(b")", 1)[1].split()[19])
        return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:
        return None


def _boot_time() -> float:
    """The system's boot time, from /proc/stat's btime line (as psutil reads it)."""
    with open("/proc/stat", "rb") as fh:
        for line in fh:
            if line.startswith(b"btime"):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


def process_alive(pid: int | None, started: float | None) -> bool:
    """Is `pid` alive and the process that recorded `started` (not a reused pid)?"""
    if not pid:
        return False
    now = process_start_time(pid)
    return now is not None and (started is None or abs(now - started) < 1.0)


@dataclass(frozen=True)
class BatchPaths:
    """The files of one batch."""

    dir: str

    @property
    def id(self) -> str:
        return os.path.basename(self.dir)

    @property
    def home(self) -> str:
        """The batch home this batch lives in."""
        return os.path.dirname(os.path.dirname(self.dir))

    def _p(self, name: str) -> str:
        return os.path.join(self.dir, name)

    manifest = property(lambda self: self._p("manifest.json"))
    items = property(lambda self: self._p("items.jsonl"))
    journal = property(lambda self: self._p("journal.jsonl"))
    lock = property(lambda self: self._p("runner.lock"))
    runner = property(lambda self: self._p("runner.json"))
    control = property(lambda self: self._p("control"))
    log = property(lambda self: self._p("log.txt"))
    creating = property(lambda self: self._p("creating"))  # there while discovery writes the batch

    def created(self) -> None:
        """The batch is whole (manifest, items, journal): it shows in every listing from now."""
        try:
            os.unlink(self.creating)
        except FileNotFoundError:
            pass

    def creator_alive(self) -> bool | None:
        """None when the batch is whole; else whether the process making it is still at it
        (False: it was killed during discovery and left the folder half-made)."""
        try:
            with open(self.creating, "rb") as fh:
                info = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return False
        return process_alive(info.get("pid"), info.get("started"))

    def being_created(self) -> tuple[float, str | None] | None:
        """(when its creation began, the --name it will have) of a batch another live process is
        making now; None for any other folder."""
        try:
            with open(self.creating, "rb") as fh:
                info = json.load(fh)
                began = os.fstat(fh.fileno()).st_mtime
        except (OSError, ValueError):
            return None
        if not isinstance(info, dict) or not process_alive(info.get("pid"), info.get("started")):
            return None
        if info.get("pid") == os.getpid():
            return None  # this command's own new batch: `start --name N --after N` waits for no one
        return began, info.get("name") if isinstance(info.get("name"), str) else None

    def load_manifest(self) -> dict[str, Any]:
        """The manifest; ValueError when the file holds no JSON object (a damaged batch)."""
        with open(self.manifest, "rb") as fh:
            data = json.load(fh)
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object but {type(data).__name__ if data is not None else 'null'}")
        return data

    def write_manifest(self, data: dict[str, Any]) -> None:
        atomic_write(self.manifest, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")


def damage(paths: BatchPaths) -> str | None:
    """Why a batch folder is not a whole batch (shown as status `damaged`), or None."""
    alive = paths.creator_alive()
    if alive is not None:
        return ("being created (discovery is still running)" if alive else
                "left half-made: the command creating it was killed during discovery")
    missing = [name for name, path in (("manifest.json", paths.manifest), ("items.jsonl", paths.items),
                                       ("journal.jsonl", paths.journal)) if not os.path.isfile(path)]
    return f"missing {', '.join(missing)}" if missing else None


def manifest_damage(paths: BatchPaths) -> str | None:
    """Why a batch's manifest.json cannot be read as one (empty, not JSON, no item count), or
    None. Apart from `damage`, which only looks at which files are there: read it once its
    folder is whole and a command is about to use it."""
    try:
        total = paths.load_manifest().get("total")
    except OSError as exc:
        return f"manifest.json unreadable: {exc.strerror or exc}"
    except json.JSONDecodeError as exc:
        return f"manifest.json unreadable: {f'not JSON ({exc})' if exc.doc.strip() else 'empty file'}"
    except ValueError as exc:  # JSON, but no object
        return f"manifest.json unreadable: {exc}"
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        return "manifest.json unreadable: no item count ('total')"
    return None


def creator_info() -> dict[str, Any]:
    """This process, as a manifest's `creator`: the command that made the batch, which runs it
    (or starts its runner) next."""
    pid = os.getpid()
    return {"pid": pid, "started": process_start_time(pid)}


def creator_gone(manifest: dict[str, Any]) -> bool:
    """The process that created the batch has exited (False when the manifest does not say)."""
    who = manifest.get("creator")
    return isinstance(who, dict) and not process_alive(who.get("pid"), who.get("started"))


def _unborn(path: str) -> bool:
    """A folder that is no batch yet: being created by a live process, just made (still empty),
    or not a folder at all. A folder left half-made, or one that lost its manifest, is not."""
    try:
        with os.scandir(path) as it:
            if next(it, None) is None:
                return True
    except OSError:
        return True
    return bool(BatchPaths(path).creator_alive())


CREATION_WAIT = 5.0
"""Seconds `resolve` waits for a batch whose creator is alive to be whole (the few
milliseconds between its manifest and its journal's header); and, counted from when its
creation began, for a batch a `start` is still creating (its flags checked, its inputs
discovered) that the reference may mean: `batchcli start ... &` then `batchcli pause NAME`."""


class Store:
    def __init__(self, home: str | None = None, wait_for_starts: bool = True):
        """The batch home `home` (--home), else BATCHCLI_HOME's, else the user's data folder.
        ConfigError (exit 2) when it is there but is no folder (a file, /dev/null): every command
        would fail on it, each with another error. `wait_for_starts`: `resolve` waits for a batch
        still being created that the reference may mean (not in a server's event loop)."""
        self.wait_for_starts = wait_for_starts
        self.home = os.path.abspath(os.path.expanduser(home)) if home else default_home()
        self.batches_dir = os.path.join(self.home, "batches")
        if not os.path.isdir(self.home) and os.path.lexists(self.home):
            raise ConfigError(f"{self.home}: the batch home (--home, BATCHCLI_HOME) is not a folder")

    def create(self, now: float | None = None, name: str | None = None) -> BatchPaths:
        """A new, empty batch folder, marked `creating` (with this process, and the batch's
        name when known) until `created()`."""
        try:
            os.makedirs(self.batches_dir, exist_ok=True)
            while True:
                path = os.path.join(self.batches_dir, new_batch_id(now))
                try:
                    os.mkdir(path)
                    break
                except FileExistsError:
                    continue
            paths = BatchPaths(path)
            pid = os.getpid()
            with open(paths.creating, "w") as fh:
                json.dump({"pid": pid, "started": process_start_time(pid), **({"name": name} if name else {})}, fh)
        except OSError as exc:
            raise ConfigError(f"batch home {self.home}: cannot create a batch folder: {exc.strerror}") from None
        return paths

    def ids(self) -> list[str]:
        """Batch ids, newest first (ids sort by creation time): every batch folder, damaged ones
        too (a missing manifest never hides a journal), but not one still being created."""
        return self._scan()[0]

    def _scan(self) -> tuple[list[str], list[str]]:
        """(ids(), the folders left out as not yet batches)."""
        try:
            names = os.listdir(self.batches_dir)
        except FileNotFoundError:
            return [], []
        out, unborn = [], []
        for n in names:
            path = os.path.join(self.batches_dir, n)
            if n.startswith("."):
                continue
            if not os.path.isfile(os.path.join(path, "manifest.json")) and _unborn(path):
                unborn.append(n)
                continue
            out.append(n)
        return sorted(out, reverse=True), unborn

    def all(self) -> Iterator[BatchPaths]:
        for bid in self.ids():
            yield BatchPaths(os.path.join(self.batches_dir, bid))

    def resolve(self, ref: str | None, damaged_ok: bool = False) -> BatchPaths:
        """A batch id, a unique prefix of one, or a batch name (the newest of that name);
        None means the latest batch. A damaged batch (a file missing: `damage`; a manifest that
        cannot be read: `manifest_damage`) is BatchDamaged (exit 2) before the command touches it,
        unless `damaged_ok` (status, removal)."""
        paths = self._find(ref)
        if damaged_ok:
            return paths
        deadline = time.monotonic() + CREATION_WAIT
        while paths.creator_alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # its manifest is written: only the journal's header is still to come
        reason = damage(paths) or manifest_damage(paths)
        if reason is not None:
            raise BatchDamaged(paths.id, reason)
        return paths

    def _find(self, ref: str | None) -> BatchPaths:
        if ref is not None and not ref.strip():  # `batchcli cancel "$UNSET"` must not mean the newest
            raise BatchNotFound(f"empty batch argument {ref!r}: give a batch id, a unique id prefix, or a name")
        ids, unborn = self._scan()
        starting = self._wait_for_start(ref, ids, unborn) if unborn and self.wait_for_starts else None
        if starting is None:
            return self._match(ref, ids)
        try:
            return self._match(ref, self.ids())
        except BatchNotFound as exc:
            still = [p.id for p in starting if p.being_created()]
            if not still:
                raise
            raise BatchNotFound(f"{exc}; batch {still[0]} is still being created (its inputs are being read): "
                                "try again once it is") from None

    def _match(self, ref: str | None, ids: list[str]) -> BatchPaths:
        if not ids:
            raise BatchNotFound(f"no batches in {self.home} (start one with 'batchcli start')")
        if ref is None:
            return BatchPaths(os.path.join(self.batches_dir, ids[0]))
        if ref in ids:
            return BatchPaths(os.path.join(self.batches_dir, ref))
        matches = [b for b in ids if b.startswith(ref)]
        if len(matches) == 1:
            return BatchPaths(os.path.join(self.batches_dir, matches[0]))
        for bid in ids:  # newest first
            paths = BatchPaths(os.path.join(self.batches_dir, bid))
            try:
                if paths.load_manifest().get("name") == ref:
                    return paths
            except (OSError, ValueError):
                continue
        if len(matches) > 1:
            more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
            raise BatchNotFound(f"batch prefix {ref!r} is ambiguous: {', '.join(matches[:5])}{more}")
        raise BatchNotFound(f"no batch matches {ref!r} (an id, a unique id prefix, or a name)")

    def _wait_for_start(self, ref: str | None, ids: list[str], unborn: list[str]) -> list[BatchPaths] | None:
        """Wait while a batch that `ref` may mean is being created, for at most CREATION_WAIT
        from when its creation began: a batch whose name is `ref`, or whose id `ref` begins; the
        newest one for the latest (None), when newer than every batch. The batches it waited
        for; None when there was none to wait for."""
        deadline, waiting = 0.0, []
        for bid in unborn:
            paths = BatchPaths(os.path.join(self.batches_dir, bid))
            making = paths.being_created()
            if making is not None and ((making[1] == ref or bid.startswith(ref)) if ref is not None
                                       else (not ids or bid > ids[0])):
                deadline = max(deadline, making[0] + CREATION_WAIT)
                waiting.append(paths)
        if not waiting:
            return None
        while time.time() < deadline and any(p.being_created() for p in waiting):
            time.sleep(0.02)
        return waiting
