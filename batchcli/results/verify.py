"""Verify: recompute every recorded output's sha256 against the journal; re-queue what is broken.

Read-only and safe while a runner writes (it checks the items completed when it starts).
`requeue` appends one `items_requeued` record, which needs the batch lock: it refuses while a
runner holds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from batchcli.engine.store import BatchPaths
from batchcli.results.snapshot import Changed, Snapshot, copy_verified, open_output

MAX_LISTED = 1000
"""Problems listed one by one in a report (all of them are counted)."""


@dataclass
class VerifyReport:
    batch_id: str
    checked: int = 0
    ok: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)
    superseded: list[dict[str, Any]] = field(default_factory=list)  # rewritten by a later batch
    missing_count: int = 0
    changed_count: int = 0
    superseded_count: int = 0
    superseded_by: dict[str, dict[str, Any]] = field(default_factory=dict)  # batch id -> {name, count}
    bad_items: list[int] = field(default_factory=list)  # every bad item, in order
    bytes_checked: int = 0
    running: bool = False
    requeued: int = 0

    @property
    def clean(self) -> bool:
        return not self.bad_items

    def as_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "checked": self.checked, "ok": self.ok,
                "missing_count": self.missing_count, "changed_count": self.changed_count,
                "superseded_count": self.superseded_count, "superseded": self.superseded,
                "superseded_by": self.superseded_by,
                "missing": self.missing, "changed": self.changed, "bytes_checked": self.bytes_checked,
                "running": self.running, "requeued": self.requeued, "clean": self.clean}


def check(out_dir: str, rec: dict[str, Any]) -> str | None:
    """None when the output matches its record (an item's record, or an entry of its outputs),
    else "missing" or "changed"."""
    fh, size = open_output(out_dir, rec)
    if fh is None:
        return size  # type: ignore[return-value]
    with fh:
        try:
            copy_verified(fh, None, rec.get("sha256"))
        except Changed:
            return "changed"
    return None


def verify_batch(paths: BatchPaths) -> VerifyReport:
    """Check every output file of every completed item (each variant's). An output a later batch wrote
    over (the catalog names another last writer) is "superseded": no longer this batch's to
    check or repair."""
    from batchcli.engine.owners import superseded

    snap = Snapshot(paths)
    rep = VerifyReport(batch_id=paths.id, running=snap.running)
    if not snap.out_dir:
        return rep
    later = superseded(paths)
    for item in snap:
        bad = False
        for out in snap.outputs(item):  # every variant's output
            rep.checked += 1
            rel = out["out"]
            by = later.get(rel)
            if by is not None:
                rep.superseded_count += 1
                rep.superseded_by.setdefault(by[0], {"name": by[1], "count": 0})["count"] += 1
                if len(rep.superseded) < MAX_LISTED:
                    rep.superseded.append({"i": item.i, "input": item.src, "output": os.path.join(snap.out_dir, rel),
                                           "by": by[0], "by_name": by[1]})
                continue
            problem = check(snap.out_dir, out)
            if problem is None:
                rep.ok += 1
                rep.bytes_checked += int(out.get("bytes") or 0)
                continue
            bad = True
            row = {"i": item.i, "input": item.src, "output": os.path.join(snap.out_dir, rel)}
            if out.get("shard"):  # a member of a tar shard: the shard and member, as `status --items` says
                row.update(output=os.path.join(snap.out_dir, out["shard"]), member=out.get("member"))
            if problem == "missing":
                rep.missing_count += 1
                if len(rep.missing) < MAX_LISTED:
                    rep.missing.append(row)
            else:
                rep.changed_count += 1
                if len(rep.changed) < MAX_LISTED:
                    rep.changed.append(row)
        if bad:  # redone as a whole: every variant comes from the one decode
            rep.bad_items.append(item.i)
    return rep


def find_bad(paths: BatchPaths) -> list[int]:
    """Items whose recorded output is missing or whose sha256 changed (sorted item numbers)."""
    return verify_batch(paths).bad_items


def requeue(paths: BatchPaths, items: list[int]) -> int:
    """Append an `items_requeued` record so that a later `resume` redoes these items.
    Takes the batch lock; raises BatchLocked while a runner holds it. Returns the count."""
    if not items:
        return 0
    from batchcli.engine.status import mark

    mark(paths, "items_requeued", items=sorted(set(items)), reason="repair")
    return len(set(items))
