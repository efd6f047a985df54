"""The composition root: what the CLI (or a script) calls. Returns plain data; never prints."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from batchcli import __version__
from batchcli.errors import ConfigError
from batchcli.journal import STATE_NAMES, Replay, encode, iter_records, replay
from batchcli.store import BatchPaths, Store


@dataclass
class StartConfig:
    inputs: list[str]
    out_dir: str | None
    pipeline_text: str | None = None
    pipeline_file: str | None = None
    name: str | None = None
    exts: list[str] | None = None  # --ext (repeatable, comma lists); None = the defaults
    exclude: list[str] | None = None  # --exclude GLOB (repeatable)
    from_file: str | None = None  # --from-file LIST: one path or URL per line ("-" = stdin)
    dedupe: str | None = None  # --dedupe content
    name_template: str | None = None  # --name-template "{stem}_{preset}.{ext}"
    max_file_size: int = 200 * 1024 * 1024
    max_pixels: int = 150_000_000
    extra_options: dict[str, Any] = field(default_factory=dict)
    stdin: Any = None  # binary stream read for "-" (default: sys.stdin.buffer)


def build_pipeline(text: str | None, file: str | None):
    from batchcli.pipeline import Pipeline

    if text and file:
        raise ConfigError("give --pipeline or --pipeline-file, not both")
    if file:
        return Pipeline.from_toml(file)
    return Pipeline.parse(text or "")


def create_batch(store: Store, cfg: StartConfig) -> BatchPaths:
    """Validate everything, discover the inputs, and write the batch's immutable files.
    Raises ConfigError (exit 2) before any work when anything is wrong."""
    import sys

    from batchcli import discover

    pipeline = build_pipeline(cfg.pipeline_text, cfg.pipeline_file)
    out_dir = os.path.abspath(os.path.expanduser(cfg.out_dir)) if cfg.out_dir else None
    if pipeline.writes_image and out_dir is None:
        raise ConfigError("--out is required: this pipeline writes images")
    if out_dir is not None and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {cfg.out_dir}: exists and is not a folder")
    if cfg.dedupe not in (None, "content"):
        raise ConfigError(f"--dedupe {cfg.dedupe}: expected 'content' (skip byte-identical inputs)")
    exts = discover.parse_exts(cfg.exts)
    discover.check_inputs(cfg.inputs, cfg.from_file)
    stdin = cfg.stdin
    if "-" in cfg.inputs or cfg.from_file == "-":
        if stdin is None:
            if sys.stdin is None or sys.stdin.isatty():
                raise ConfigError("- reads a list of paths from stdin, but stdin is a terminal "
                                  "(pipe a list in, e.g. find photos -name '*.jpg' | batchcli start - --out web/)")
            stdin = sys.stdin.buffer
    spec = pipeline.spec()
    template = discover.compile_template(cfg.name_template) if cfg.name_template else None
    options = {"max_file_size": cfg.max_file_size, "max_pixels": cfg.max_pixels, **cfg.extra_options}
    fingerprint = pipeline.fingerprint(options)
    inputs_opts = {"exts": list(exts), "exclude": list(cfg.exclude or []), "from_file": cfg.from_file,
                   "dedupe": cfg.dedupe, "name_template": cfg.name_template}
    stats = discover.DiscoveryStats()
    found = discover.find(cfg.inputs, exts, skip_dirs=[out_dir, store.home] if out_dir else [store.home],
                          exclude=cfg.exclude or (), from_file=cfg.from_file, dedupe=cfg.dedupe,
                          stdin=stdin, stats=stats)
    paths = store.create()
    try:
        namer = discover.Namer(cfg.name_template if template else None, cfg.name or paths.id,
                               discover.preset_name(spec))
        with open(paths.items, "wb") as fh:
            total = discover.write_items(found, fh, namer)
            fh.flush()
            os.fsync(fh.fileno())
        if total == 0:
            where = ", ".join([*cfg.inputs, *([f"--from-file {cfg.from_file}"] if cfg.from_file else [])])
            left = [f"{n} {what}" for n, what in ((stats.excluded, "excluded"), (stats.duplicates, "duplicates"),
                                                  (stats.dedupe_skipped, "same content"),
                                                  (stats.in_output, "inside the output folder")) if n]
            raise ConfigError(f"no input images found in {where} (extensions: {', '.join(exts)}"
                              + (f"; left out: {', '.join(left)}" if left else "") + ")")
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        now = time.time()
        paths.write_manifest({
            "batch_id": paths.id, "name": cfg.name, "created_at": now, "version": __version__,
            "pipeline": spec, "pipeline_text": pipeline.text(), "options": options,
            "fingerprint": fingerprint, "out_dir": out_dir, "inputs": cfg.inputs, "total": total,
            "input_options": inputs_opts, "dedupe_skipped": stats.dedupe_skipped,
            "discovery": {"excluded": stats.excluded, "duplicates": stats.duplicates,
                          "dedupe_skipped": stats.dedupe_skipped, "in_output": stats.in_output},
        })
        with open(paths.journal, "wb") as fh:
            fh.write(encode({"seq": 0, "t": round(now, 3), "type": "header", "batch_id": paths.id,
                             "version": __version__, "pipeline": spec,
                             "fingerprint": fingerprint, "total": total}))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        import shutil

        shutil.rmtree(paths.dir, ignore_errors=True)
        raise
    return paths


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def effective_state(paths: BatchPaths, st: Replay) -> tuple[str, int | None]:
    """The journal's state, corrected by reality: 'running' with no live runner is 'interrupted'."""
    from batchcli.runner import runner_alive

    if st.state == "running":
        info = runner_alive(paths)
        if info is None:
            return "interrupted", None
        return "running", info.get("pid")
    return st.state, None


def batch_status(paths: BatchPaths) -> dict[str, Any]:
    """The status object of DESIGN.md (a replay: read-only, safe while a runner writes)."""
    man = paths.load_manifest()
    total = int(man["total"])
    st = replay(paths.journal, total)
    state, pid = effective_state(paths, st)
    done = st.completed + st.failed
    return {
        "batch_id": paths.id,
        "name": man.get("name"),
        "status": state,
        "total": total,
        "completed": st.completed,
        "failed": st.failed,
        "skipped": st.skipped,
        "remaining": st.remaining,
        "progress_percent": round(done / total * 100, 2) if total else 100.0,
        "created_at": _iso(man.get("created_at")),
        "started_at": _iso(st.times.get("started")),
        "paused_at": _iso(st.times.get("paused")),
        "completed_at": _iso(st.times.get("finished")),
        "out_dir": man.get("out_dir"),
        "pipeline": man.get("pipeline_text"),
        "runner_pid": pid,
        "reason": st.reason,
        "executor": st.executor,
        "workers": st.workers,
        "dedupe_skipped": man.get("dedupe_skipped", 0),
        "journal_records": st.records,
        "journal_corrupt_lines": len(st.bad),
        "journal_problems": [f"line {b.lineno}: {b.reason}" for b in st.bad[:5]],
        "top_failures": [{"reason": r, "count": c} for r, c in st.failures.most_common(5)],
    }


def list_batches(store: Store, status: Iterable[str] | None = None, limit: int | None = None,
                 offset: int = 0) -> dict[str, Any]:
    wanted = set(status or ())
    rows = []
    for paths in store.all():
        try:
            row = batch_status(paths)
        except (OSError, ValueError, KeyError):
            continue
        if wanted and row["status"] not in wanted:
            continue
        rows.append(row)
    total = len(rows)
    end = None if limit is None else offset + limit
    return {"batches": rows[offset:end], "total": total}


def item_rows(paths: BatchPaths, failed_only: bool = False, limit: int | None = None,
              offset: int = 0) -> dict[str, Any]:
    """Per-item listing: one streaming pass over items.jsonl and the journal, holding one page."""
    from batchcli.discover import iter_items

    man = paths.load_manifest()
    total = int(man["total"])
    st = replay(paths.journal, total)
    wanted = [i for i in range(total) if not failed_only or st.items[i] == 2]
    count = len(wanted)
    end = count if limit is None else min(count, offset + limit)
    page = wanted[offset:end]
    rows: dict[int, dict[str, Any]] = {
        i: {"i": i, "src": None, "status": STATE_NAMES[st.items[i]], "output": None,
            "error_class": None, "error": None, "ms": None} for i in page}
    if rows:
        for rec in iter_items(paths.items):
            r = rows.get(rec["i"])
            if r is not None:
                r["src"] = rec["src"]
        for rec in iter_records(paths.journal):
            r = rows.get(rec.get("i"))  # type: ignore[arg-type]
            if r is None:
                continue
            kind = rec.get("type")
            if kind == "item_completed":
                r.update(output=os.path.join(man["out_dir"], rec["out"]) if rec.get("out") and man.get("out_dir") else None,
                         error_class=None, error=None, ms=rec.get("ms"))
                if rec.get("meta"):
                    r["meta"] = rec["meta"]
            elif kind == "item_failed":
                r.update(output=None, error_class=rec.get("error_class"), error=rec.get("error"), ms=rec.get("ms"))
    return {"items": [rows[i] for i in page], "total": count}


def mark(paths: BatchPaths, kind: str, **fields: Any) -> None:
    """Append one lifecycle record without a runner (takes the lock; fails if a runner holds it)."""
    from filelock import FileLock

    from batchcli.errors import BatchLocked
    from batchcli.journal import JournalWriter
    from batchcli.runner import take_lock

    lock = FileLock(paths.lock)
    if not take_lock(lock, paths):
        raise BatchLocked(f"batch {paths.id} is held by a live runner")
    try:
        st = replay(paths.journal, int(paths.load_manifest()["total"]))
        with JournalWriter(paths.journal, st.last_seq) as j:
            j.append(kind, **fields)
    finally:
        lock.release()


