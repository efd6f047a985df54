"""What a resume checks before it runs: the pipeline fingerprint, and inputs changed since they
were processed; and what a run checks as it goes: --max-failures, --min-free-space, its output
folder and its journal still where they were."""

from __future__ import annotations

import logging
import os
from typing import Any

from batchcli.engine.journal import COMPLETED, FAILED, JournalWriter, Replay, iter_matching
from batchcli.engine.store import BatchPaths
from batchcli.errors import InvalidTransition
from batchcli.inputs.discover import iter_items

log = logging.getLogger("batchcli.runner")


def current_fingerprint(manifest: dict[str, Any]) -> str:
    """What this code computes now from the manifest's pipeline and options."""
    from batchcli.pipeline import Pipeline

    return Pipeline.from_manifest(manifest).fingerprint(manifest.get("options") or {})


def check_fingerprint(paths: BatchPaths, manifest: dict[str, Any], st: Replay, force: bool) -> None:
    """Refuse (unless forced) when the recorded fingerprint is not what the code would run now."""
    recorded = {manifest.get("fingerprint"), (st.header or {}).get("fingerprint", manifest.get("fingerprint"))}
    now = current_fingerprint(manifest)
    if recorded != {now} and not force:
        raise InvalidTransition(
            f"batch {paths.id}: the pipeline or options changed since the batch was created "
            f"(fingerprint {'/'.join(sorted(str(r) for r in recorded))}, now {now}); "
            f"outputs would mix two versions. Use --force to resume anyway")


def changed_inputs(paths: BatchPaths, st: Replay) -> list[int]:
    """Finished items whose local input's size or mtime differs from what was last recorded."""
    seen: dict[int, list] = {}  # only items reprocessed after a change carry src_stat: few
    for rec in iter_matching(paths.journal, (b'"src_stat":',)):
        if rec.get("type") == "item_completed" and "src_stat" in rec:
            seen[rec["i"]] = rec["src_stat"]
    out = []
    for rec in iter_items(paths.items):
        i = rec["i"]
        if st.items[i] not in (COMPLETED, FAILED) or "size" not in rec or "://" in rec["src"]:
            continue
        try:
            now = os.stat(rec["src"])
        except OSError:
            continue  # gone: keep its result rather than fail it
        if [now.st_size, now.st_mtime] != seen.get(i, [rec["size"], rec.get("mtime")]):
            out.append(i)
    if out:
        log.info("%d inputs changed since they were processed; reprocessing them", len(out))
    return out


def parse_max_failures(spec: str | None) -> tuple[str, float] | None:
    if not spec:
        return None
    s = spec.strip()
    if s.endswith("%"):
        pct = float(s[:-1])
        if not 0 < pct <= 100:  # NaN and infinities too
            raise ValueError(spec)
        return ("pct", pct)
    n = int(s)
    if n < 1:
        raise ValueError(spec)
    return ("n", float(n))


def over_failures(rule: tuple[str, float], failed: int, processed: int, total: int) -> bool:
    """Has --max-failures (`rule`, parsed) been reached?"""
    kind, val = rule
    if kind == "n":
        return failed >= val
    return processed >= min(20, total) and failed * 100.0 >= val * max(processed, 1) and failed > 0


def out_moved(folder: str, seen: list) -> str | None:
    """Why the batch must pause when its output folder was deleted or replaced during this run.
    `seen` holds a descriptor of the folder as this run first found it (opened on the first call:
    held open, its inode cannot be reused by a folder made again in its place); close it with
    `seen.clear()` after `os.close(seen[0])`."""
    if not seen:
        try:
            seen.append(os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)))
        except OSError:
            return None  # not there yet: the workers make it
        return None
    held = os.fstat(seen[0])
    try:
        st = os.stat(folder)
        same = (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
    except OSError:
        same = False
    if same and held.st_nlink:
        return None
    what = "deleted" if not held.st_nlink else "replaced (another folder is there now)"
    return f"the output folder {folder} was {what} while the batch ran; outputs written there are gone"


def journal_lost(writer: JournalWriter, batch_dir: str) -> str | None:
    """Why the batch must stop when its journal (`writer` holds it open) was deleted, with its
    batch folder or the home's batches/ folder, or moved or replaced while the batch ran: what
    the runner records would reach nobody, and a batch with no journal never completed."""
    try:  # the file it holds open cannot be freed, so its inode is not reused meanwhile
        st = os.stat(writer.path)
        if (st.st_dev, st.st_ino) == writer.identity:
            return None
    except OSError:
        pass
    if not os.path.isdir(batch_dir):
        return (f"the batch folder {batch_dir} was deleted (or moved) while the batch ran, its journal with it: "
                "nothing of this run could be recorded")
    return f"the journal {writer.path} was deleted or replaced while the batch ran: nothing of this run could be recorded"


def low_space(folder: str, need: int) -> str | None:
    """Why the batch must pause when `folder`'s disk has less than `need` bytes free (--min-free-space)."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= need:
        return None
    return f"disk full: {free >> 20} MiB free in {folder}, below --min-free-space {need >> 20} MiB"
