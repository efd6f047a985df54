"""Where batches live: the batch home, batch ids, and resolving what the user typed."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from batchcli.atomic import atomic_write
from batchcli.errors import BatchNotFound

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
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{ms:03d}-{secrets.token_hex(2)}"


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

    def load_manifest(self) -> dict[str, Any]:
        with open(self.manifest, "rb") as fh:
            return json.load(fh)

    def write_manifest(self, data: dict[str, Any]) -> None:
        atomic_write(self.manifest, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")


class Store:
    def __init__(self, home: str | None = None):
        self.home = os.path.abspath(os.path.expanduser(home)) if home else default_home()
        self.batches_dir = os.path.join(self.home, "batches")

    def create(self, now: float | None = None) -> BatchPaths:
        os.makedirs(self.batches_dir, exist_ok=True)
        while True:
            bid = new_batch_id(now)
            path = os.path.join(self.batches_dir, bid)
            try:
                os.mkdir(path)
                return BatchPaths(path)
            except FileExistsError:
                continue

    def ids(self) -> list[str]:
        """Batch ids, newest first (ids sort by creation time)."""
        try:
            names = os.listdir(self.batches_dir)
        except FileNotFoundError:
            return []
        return sorted((n for n in names if os.path.isfile(os.path.join(self.batches_dir, n, "manifest.json"))),
                      reverse=True)

    def all(self) -> Iterator[BatchPaths]:
        for bid in self.ids():
            yield BatchPaths(os.path.join(self.batches_dir, bid))

    def resolve(self, ref: str | None) -> BatchPaths:
        """A batch id, a unique prefix of one, or a batch name (the newest of that name);
        None means the latest batch."""
        if ref is not None and not ref.strip():  # `batchcli cancel "$UNSET"` must not mean the newest
            raise BatchNotFound(f"empty batch argument {ref!r}: give a batch id, a unique id prefix, or a name")
        ids = self.ids()
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
