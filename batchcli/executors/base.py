"""What every executor shares: the event a result arrives as, and the protocol the runner uses.

The runner talks to an executor through a few calls (`capacity`, `submit`, `poll`, `shutdown`),
so a distributed engine can replace the local process pool without touching the runner."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

CHUNKS_PER_WORKER = 2
"""Chunks queued per worker: one running, one waiting, so no worker idles between chunks."""


@dataclass
class Event:
    kind: str  # "item" (a result), "lost" (item died with its worker), "requeue", "fatal", "pause",
    #            "segment" (a video's segment is durable; `result` is its record),
    #            "progress" (a video's frames done so far: {"i", "done", "total"})
    result: dict[str, Any] | None = None
    item: dict[str, Any] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    error_class: str = ""
    message: str = ""


def outputs_of(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The output files an item's result (or its journal record) names: its `outputs` (one
    entry per variant, or a video's stills: out, bytes, sha256, mtime, variant), else its one
    `out`. Records written before there were variants have only `out`. With --shards an output
    also names its `shard`, its `member` there and the `offset` of its bytes (engine/shards.py)."""
    many = rec.get("outputs")
    if many:
        return list(many)
    if rec.get("out"):
        return [{k: rec[k] for k in ("out", "bytes", "sha256", "mtime", "shard", "member", "offset") if k in rec}]
    return []


class Executor(Protocol):
    workers: int
    name: str

    def capacity(self) -> int: ...
    def submit(self, items: list[dict[str, Any]]) -> None: ...
    def poll(self, timeout: float) -> list[Event]: ...
    def busy(self) -> bool: ...
    def stop(self) -> None: ...
    def release(self) -> None: ...  # the run is over: workers may go (shutdown follows)
    def shutdown(self, abandon: bool = False) -> list[dict[str, Any]]: ...


class Idle:
    """The executor of a run with nothing left to do (every item recorded already, as in a
    `sync` where all is up to date): it starts no process."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    def capacity(self) -> int:
        return 1  # asked for work, it finds none, and the run ends

    def submit(self, items: list[dict[str, Any]]) -> None:
        raise RuntimeError("an idle executor was given items")

    def poll(self, timeout: float) -> list[Event]:
        return []

    def busy(self) -> bool:
        return False

    def stop(self) -> None:
        pass

    def release(self) -> None:
        pass

    def shutdown(self, abandon: bool = False) -> list[dict[str, Any]]:
        return []
