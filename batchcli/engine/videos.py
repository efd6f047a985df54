"""The runner's side of video items: the segments already finished (read back from the journal
for a resume), their progress, and how many videos may run at once.

A video worker's memory is measured, not guessed: until a first segment reports the worker's
resident size, one video runs at a time; then another starts only while the available memory
holds one more such worker (never more than the pool's workers)."""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from typing import Any

from batchcli.engine.journal import iter_matching

SEGMENT_RECORD = b'"type":"segment_completed"'
HEADROOM = 1.25
"""Available memory a new video worker must leave: this many times the largest measured one."""


def segment_chains(journal: str, wanted: set[int] | None = None) -> dict[int, list[dict[str, Any]]]:
    """item -> its finished segments in order (0, 1, 2, ...), from the journal. A segment done
    again replaces the later ones (a redo from there); a record out of sequence is ignored."""
    chains: dict[int, list[dict[str, Any]]] = {}
    for rec in iter_matching(journal, (SEGMENT_RECORD,)):
        i, k = rec.get("i"), rec.get("seg")
        if not isinstance(i, int) or not isinstance(k, int) or (wanted is not None and i not in wanted):
            continue
        chain = chains.setdefault(i, [])
        if k <= len(chain):
            del chain[k:]
            chain.append({key: v for key, v in rec.items() if key not in ("seq", "type", "crc", "i", "mem")})
    return chains


_SEGMENT = re.compile(r"^\d{5,}\.[a-z0-9]+$")  # a segment file's name (video/segments.py: 00003.mp4)


def discard_segments(paths: Any, st: Any, out_dir: str | None) -> None:
    """A cancelled batch leaves no half-made video behind: the segment files of its unfinished
    videos are deleted, with their hidden folders once empty (temp files of dead writers too)."""
    import os

    from batchcli.engine.journal import COMPLETED
    from batchcli.engine.liveness import sweep_dead_tmp

    if not out_dir:
        return
    for i, recs in segment_chains(paths.journal).items():
        if not 0 <= i < st.total or st.items[i] == COMPLETED:
            continue
        folders = set()
        for rec in recs:
            path = os.path.join(out_dir, rec.get("file", ""))
            if rec.get("file") and os.path.dirname(path).endswith(".batchcli-segments"):
                folders.add(os.path.dirname(path))
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for folder in folders:
            sweep_dead_tmp(folder)
            with contextlib.suppress(OSError):  # segments made but never recorded (the run stopped first) too
                for name in os.listdir(folder):
                    if _SEGMENT.match(name):
                        os.unlink(os.path.join(folder, name))
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def progress_row(i: int, src: str | None, recs: list[dict[str, Any]]) -> dict[str, Any]:
    """A video's progress from its segment records: frames done of the total, and an ETA from
    the pace between its first and last segment records (journal times)."""
    first, last = recs[0], recs[-1]
    row: dict[str, Any] = {"i": i, "src": src, "frames_done": last.get("done", 0), "frames_total": last.get("total"),
                           "segments": len(recs), "eta_s": None}
    spent = last.get("t", 0) - first.get("t", 0)
    made = last.get("done", 0) - first.get("done", 0)
    if spent > 0 and made > 0 and row["frames_total"]:
        row["eta_s"] = round(max(0, row["frames_total"] - row["frames_done"]) * spent / made, 1)
    return row


def video_rows(paths: Any, st: Any) -> list[dict[str, Any]]:
    """Unfinished videos that have segments done: their progress (for `status`)."""
    from batchcli.engine.journal import PENDING
    from batchcli.inputs.discover import iter_items

    chains = {i: recs for i, recs in segment_chains(paths.journal).items()
              if 0 <= i < st.total and st.items[i] == PENDING and recs}
    if not chains:
        return []
    srcs = {rec["i"]: rec["src"] for rec in iter_items(paths.items) if rec["i"] in chains}
    return [progress_row(i, srcs.get(i), chains[i]) for i in sorted(chains)]


class VideoGate:
    """Which video items may start now, and the progress of those running."""

    def __init__(self, workers: int, available: Any = None):
        self.workers = max(1, workers)
        self.per_video = 0  # the largest resident size a video worker reported (bytes)
        self.running: dict[int, dict[str, Any]] = {}  # i -> progress
        self.queue: deque = deque()  # pending video items, waiting for room (each runs alone)
        self._available = available or _available_memory

    def may_start(self) -> bool:
        n = len(self.running)
        if n == 0:
            return True
        if n >= self.workers or not self.per_video:
            return False
        return self._available() >= self.per_video * HEADROOM

    def started(self, item: dict[str, Any]) -> None:
        before = item.get("segments") or [{}]  # a resumed video starts where its segments end
        self.running[item["i"]] = {"i": item["i"], "src": item.get("src"), "frames_done": before[-1].get("done", 0),
                                   "frames_total": before[-1].get("total"), "segments": len(item.get("segments") or ()),
                                   "t0": time.monotonic(), "made": 0, "eta_s": None}

    def finished(self, i: int) -> None:
        self.running.pop(i, None)

    def segment(self, rec: dict[str, Any]) -> None:
        self.per_video = max(self.per_video, int(rec.get("mem") or 0))
        row = self.running.get(rec["i"])
        if row is None:
            return
        row["made"] += max(0, rec.get("done", 0) - row["frames_done"])
        row["frames_done"], row["frames_total"] = rec.get("done", 0), rec.get("total")
        row["segments"] = rec.get("seg", 0) + 1
        self._eta(row)

    def progress(self, rec: dict[str, Any]) -> None:
        """Frames done within a segment (not journaled: the segments are)."""
        row = self.running.get(rec["i"])
        if row is None:
            return
        made = row["made"] + max(0, rec.get("done", 0) - row["frames_done"])
        row["frames_done"], row["frames_total"], row["made"] = rec.get("done", 0), rec.get("total"), made
        self._eta(row)

    def _eta(self, row: dict[str, Any]) -> None:
        spent = time.monotonic() - row["t0"]
        if row["made"] and row["frames_total"]:
            row["eta_s"] = round(max(0, row["frames_total"] - row["frames_done"]) * spent / row["made"], 1)

    def rows(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in row.items() if k not in ("t0", "made")} for row in self.running.values()]


def _available_memory() -> int:
    from batchcli.engine.load import available_memory

    return available_memory() or 0
