"""The composition root: what the CLI (or a script) calls. Returns plain data; never prints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batchcli import __version__
from batchcli.argfiles import check_writable_folder
from batchcli.engine.journal import encode
from batchcli.engine.status import (  # noqa: F401  (the read side of the API)
    batch_status,
    effective_state,
    item_rows,
    list_batches,
    mark,
)
from batchcli.engine.store import BatchPaths, Store, creator_info
from batchcli.errors import ConfigError
from batchcli.results.notify import FINISH_DEFAULTS


@dataclass
class StartConfig:
    inputs: list[str]
    out_dir: str | None
    pipeline_text: str | None = None
    pipeline_file: str | None = None
    variants: list[str] | None = None  # --variant NAME=PIPELINE (repeatable): outputs under OUT/NAME/
    name: str | None = None
    exts: list[str] | None = None  # --ext (repeatable, comma lists); None = the defaults
    exclude: list[str] | None = None  # --exclude GLOB (repeatable)
    from_file: str | None = None  # --from-file LIST: one path or URL per line ("-" = stdin)
    dedupe: str | None = None  # --dedupe content
    name_template: str | None = None  # --name-template "{stem}_{preset}.{ext}"
    max_file_size: int = 200 * 1024 * 1024
    max_pixels: int = 150_000_000
    limits_given: dict[str, str] | None = None  # the two limits as typed ({"max_pixels": "40000000"}): failures say them so
    media: str = "image"  # --media image|video|all: which files of a folder are items
    max_duration: float = 6 * 3600.0  # --max-duration: longer videos fail their item (0 = no limit)
    segment: float = 10.0  # --video-segment: seconds of video per durable segment
    shards: str | None = None  # --shards tar: outputs into numbered tar shards (engine/shards.py)
    shard_size: int | None = None  # --shard-size: items per shard
    extra_options: dict[str, Any] = field(default_factory=dict)
    stdin: Any = None  # binary stream read for "-" (default: sys.stdin.buffer)
    allow_empty: bool = False  # a batch of no items (watch: files land later)
    writes_checked_later: bool = False  # sync: its plan checks the outputs it will write against the inputs


UPLOADS = "uploads"
"""The folder of a batch that holds files sent to the server (the only part of the home read as input)."""


def out_folder(raw: str) -> str:
    """The output folder as the batch records it: absolute, its links resolved, so that what it
    records is the folder itself (a purge opens it without following links)."""
    return os.path.realpath(os.path.expanduser(raw))


def build_pipeline(text: str | None, file: str | None, variants: list[str] | None = None):
    """The pipeline of --pipeline or --pipeline-file, with the --variant flags (after the
    file's [[variant]] tables)."""
    from batchcli.pipeline import Pipeline

    if text and file:
        raise ConfigError("give --pipeline or --pipeline-file, not both")
    pipeline = Pipeline.from_toml(file) if file else Pipeline.parse(text or "")
    for flag in variants or ():
        pipeline.add_variant(*Pipeline.parse_variant(flag))
    return pipeline


def _write_items(found: Any, paths: BatchPaths, namer: Any, stats: Any) -> tuple[int, Any]:
    from batchcli.inputs import discover

    try:  # a link to another batch's (engine/syncfast.py) is never written through
        os.unlink(paths.items)
    except FileNotFoundError:
        pass
    with open(paths.items, "wb") as fh:
        total = discover.write_items(found, fh, namer, stats, spill_dir=paths.dir)
        fh.flush()
        os.fsync(fh.fileno())
    return total, stats


def _discover(found: Any, paths: BatchPaths, namer: Any, stats: Any,
              meanwhile: Callable[[BatchPaths, Callable[[], bool]], None] | None) -> int:
    """Write items.jsonl (and fill `stats`); with `meanwhile`, in a child process while this one
    calls meanwhile(paths, running): two independent phases on two cores. Should the child fail (an
    input that is not there, a kill), the inputs are discovered here after all, and any error
    is raised here."""
    if meanwhile is not None:
        from batchcli.engine.forked import Forked

        with Forked(_write_items, found, paths, namer, stats) as child:
            if child.pid is not None:
                meanwhile(paths, child.running)
                got = child.result()
                if got is not None:
                    vars(stats).update(vars(got[1]))
                    return got[0]
    return _write_items(found, paths, namer, stats)[0]


def _options(cfg: StartConfig) -> dict[str, Any]:
    """The options a batch's fingerprint covers (a batch with videos adds theirs)."""
    return {"max_file_size": cfg.max_file_size, "max_pixels": cfg.max_pixels, **cfg.extra_options}


def manifest_preview(cfg: StartConfig, paths: BatchPaths) -> dict[str, Any] | None:
    """What the manifest of the batch `create_batch(store, cfg, paths)` makes will say of its
    pipeline and output folder (batch_id, fingerprint, out_dir, out_dev, out_ino; out_ext,
    variants, input_options' name_template: its output names), as far as
    it can be told before discovery (a batch of photos, an output folder that exists or none);
    None when it cannot (create_batch says why, if anything is wrong)."""
    try:
        pipeline = build_pipeline(cfg.pipeline_text, cfg.pipeline_file, cfg.variants)
        out_dir = out_folder(cfg.out_dir) if cfg.out_dir else None
        st = os.stat(out_dir) if out_dir else None
        return {"batch_id": paths.id, "fingerprint": pipeline.fingerprint(_options(cfg)), "out_dir": out_dir,
                **({"out_dev": st.st_dev, "out_ino": st.st_ino} if st is not None else {}),
                "out_ext": pipeline.output_ext, "input_options": {"name_template": cfg.name_template},
                **({"variants": pipeline.variant_spec(with_ext=True)} if pipeline.variants else {})}
    except Exception:  # noqa: BLE001 (create_batch reports it)
        return None


def create_batch(store: Store, cfg: StartConfig, paths: BatchPaths | None = None,
                 checked: Any = None, meanwhile: Callable[[BatchPaths, Callable[[], bool]], None] | None = None,
                 quick: Callable[[BatchPaths, Any], int | None] | None = None) -> BatchPaths:
    """Validate everything, discover the inputs, and write the batch's immutable files.
    Raises ConfigError (exit 2) before any work when anything is wrong (and removes the batch
    folder). `paths`: an empty batch folder made beforehand with `store.create()` (the server
    puts uploads in its `uploads/` first; that folder is read although the home is not).
    `checked`: called with the pipeline once the flags are checked, before discovery
    (`warm_workers`: a run that follows in this process gets its workers ready meanwhile).
    `meanwhile`: called with the new batch's paths and a function that says whether discovery
    is still going on, while a child process discovers the inputs into items.jsonl (`sync` asks
    the catalog meanwhile, then goes over the items written); not called when the inputs come
    from stdin. `quick`: called first with the new batch's paths and the discovery's stats (it
    may ask for the items' identities: DiscoveryStats.identities); when it writes items.jsonl
    itself (sync: the same items as the last sync's, engine/syncfast.py), it returns their
    count and the inputs are not discovered (returns None otherwise)."""
    import contextlib
    import sys

    from batchcli.engine import owners
    from batchcli.inputs import discover, names

    if cfg.name is not None and not cfg.name.strip():  # a batch no command could name (a blank BATCH is refused)
        raise ConfigError(f"--name {cfg.name!r}: empty; give a name, or leave --name out")
    pipeline = build_pipeline(cfg.pipeline_text, cfg.pipeline_file, cfg.variants)
    out_dir = out_folder(cfg.out_dir) if cfg.out_dir else None
    if pipeline.writes_image and out_dir is None:
        raise ConfigError("--out is required: this pipeline writes images")
    if out_dir is not None and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {cfg.out_dir}: exists and is not a folder")
    if out_dir is not None:
        check_writable_folder(out_dir, "--out")
    if cfg.dedupe not in (None, "content"):
        raise ConfigError(f"--dedupe {cfg.dedupe}: expected 'content' (skip byte-identical inputs)")
    exts = discover.parse_exts(cfg.exts, cfg.media)
    shards = _check_shards(cfg, pipeline, out_dir)
    if any(getattr(op, "video_role", None) for op in pipeline.ops):  # (video ops only: no import otherwise)
        from batchcli.video.plan import check_pipeline

        check_pipeline(pipeline)
    if cfg.max_duration < 0:
        raise ConfigError(f"--max-duration {cfg.max_duration:g} s: expected 0 (no limit) or more")
    if not 1 <= cfg.segment <= 3600:
        raise ConfigError(f"--video-segment {cfg.segment:g} s: expected from 1 s to 1 h")
    discover.check_inputs(cfg.inputs, cfg.from_file)
    stdin = cfg.stdin
    if "-" in cfg.inputs or cfg.from_file == "-":
        if stdin is None:
            if sys.stdin is None or sys.stdin.isatty():
                raise ConfigError("- reads a list of paths from stdin, but stdin is a terminal "
                                  "(pipe a list in, e.g. find photos -name '*.jpg' | batchcli start - --out web/)")
            stdin = sys.stdin.buffer
    spec = pipeline.spec()
    template = names.compile_template(cfg.name_template) if cfg.name_template else None
    if names.template_has_variant(cfg.name_template) and not pipeline.variants:
        raise ConfigError(f"--name-template {cfg.name_template!r}: {{variant}} needs --variant NAME=PIPELINE")
    options = _options(cfg)
    fingerprint = pipeline.fingerprint(options)
    inputs_opts = {"exts": list(exts), "exclude": list(cfg.exclude or []), "from_file": cfg.from_file,
                   "dedupe": cfg.dedupe, "name_template": cfg.name_template, "media": cfg.media}
    if checked is not None:
        checked(pipeline)
    stats = discover.DiscoveryStats()
    keep = [os.path.join(paths.dir, UPLOADS)] if paths is not None else []
    paths = paths or store.create()
    # a generator: it runs inside write_items, and what it remembers spills into the batch folder
    found = discover.find(cfg.inputs, exts, skip_dirs=[out_dir, store.home] if out_dir else [store.home],
                          exclude=cfg.exclude or (), from_file=cfg.from_file, dedupe=cfg.dedupe,
                          stdin=stdin, stats=stats, keep_dirs=keep, spill_dir=paths.dir)
    try:
        namer = names.Namer(cfg.name_template if template else None, cfg.name or paths.id,
                               names.preset_name(spec))
        total = quick(paths, stats) if quick is not None and stdin is None else None
        if total is None:
            total = _discover(found, paths, namer, stats, None if stdin is not None else meanwhile)
        if total == 0 and not cfg.allow_empty:
            where = ", ".join([*cfg.inputs, *([f"--from-file {cfg.from_file}"] if cfg.from_file else [])])
            left = [f"{n} {what}" for n, what in ((stats.excluded, "excluded"), (stats.duplicates, "duplicates"),
                                                  (stats.dedupe_skipped, "same content"),
                                                  (stats.in_output, "inside the output folder")) if n]
            left += [f"{folder} (it is the output folder or the batch home, never read as input; give another --out)"
                     for folder in stats.out_folders]
            raise ConfigError(f"no input images found in {where} (extensions: {', '.join(exts)}"
                              + (f"; left out: {', '.join(left)}" if left else "") + ")")
        out_id: dict[str, int] = {}
        made_out = False
        if out_dir:
            made_out = not os.path.isdir(out_dir)
            os.makedirs(out_dir, exist_ok=True)
            st = os.stat(out_dir)  # the folder's identity: a purge later deletes only inside this one
            out_id = {"out_dev": st.st_dev, "out_ino": st.st_ino}
        if stats.videos and shards:
            raise ConfigError(f"{stats.videos} of the inputs are videos: --shards takes images (give --media image)")
        if stats.videos and not (pipeline.writes_image and out_dir):
            raise ConfigError(f"{stats.videos} of the inputs are videos: a video needs an output, and this pipeline "
                              "writes no image (give --media image, or a pipeline that writes frames, and --out)")
        if stats.videos and pipeline.variants:
            raise ConfigError(f"{stats.videos} of the inputs are videos: --variant is for images "
                              "(give --media image, or run the videos in a batch of their own)")
        if stats.videos:  # photo-only batches keep the options (and fingerprint) they always had
            from batchcli.video.probe import require_av

            try:
                require_av()
            except Exception as exc:
                raise ConfigError(f"{stats.videos} of the inputs are videos, and {exc}") from None
            options.update(max_duration=cfg.max_duration, segment=cfg.segment)
            fingerprint = pipeline.fingerprint(options)
        outputs = {"out_ext": pipeline.output_ext, "input_options": inputs_opts,
                   **({"variants": pipeline.variant_spec(with_ext=True)} if pipeline.variants else {})}
        lanes = owners.output_lanes(outputs)
        with owners.claims_lock(store):  # the check and this batch's claim (its manifest) at once
            try:
                if not cfg.writes_checked_later:
                    owners.check_outputs_off_inputs(paths.items, out_dir, lanes)
                owners.check_claims(store, paths.id, paths.items, out_dir, lanes,
                                    (out_id["out_dev"], out_id["out_ino"]) if out_id else None)
            except ConfigError:
                if made_out:
                    with contextlib.suppress(OSError):
                        os.rmdir(out_dir)  # type: ignore[arg-type]
                raise
            now = time.time()
            paths.write_manifest({
                "batch_id": paths.id, "name": cfg.name, "created_at": now, "version": __version__,
                "creator": creator_info(),
                "pipeline": spec, "pipeline_text": pipeline.command_text(), "options": options,
                "fingerprint": fingerprint, "out_dir": out_dir, **out_id, **outputs,
                **({"limits_given": cfg.limits_given} if cfg.limits_given else {}),
                **({"shards": shards} if shards else {}),
                "inputs": cfg.inputs, "total": total, "dedupe_skipped": stats.dedupe_skipped, "videos": stats.videos,
                "discovery": {"excluded": stats.excluded, "duplicates": stats.duplicates,
                              "dedupe_skipped": stats.dedupe_skipped, "in_output": stats.in_output},
            })
            with open(paths.journal, "wb") as fh:
                fh.write(encode({"seq": 0, "t": round(now, 3), "type": "header", "batch_id": paths.id,
                                 "version": __version__, "pipeline": spec,
                                 **({"variants": pipeline.variant_spec()} if pipeline.variants else {}),
                                 "fingerprint": fingerprint, "total": total}))
                fh.flush()
                os.fsync(fh.fileno())
        paths.created()
    except BaseException as exc:
        import shutil

        shutil.rmtree(paths.dir, ignore_errors=True)
        if isinstance(exc, OSError):  # a full or read-only batch home
            raise ConfigError(f"cannot write batch {paths.id} in {store.home}: {exc.strerror}") from None
        raise
    return paths


def warm_workers(opts: Any) -> Any:
    """For create_batch's `checked`, when the batch runs next in this process: the local pool's
    fork server starts importing what the workers need (executors/forkserve.py) while discovery
    runs. `cold_workers` stops it when the batch is not created after all."""
    if opts.executor not in ("", "local"):
        return None
    from batchcli.executors.forkserve import warm_up

    return lambda pipeline: warm_up(pipeline.worker_modules(), opts.threads)


def cold_workers() -> None:
    from batchcli.executors.forkserve import stop_server

    stop_server(now=True)


def _check_shards(cfg: StartConfig, pipeline: Any, out_dir: str | None) -> dict[str, Any] | None:
    """The manifest's `shards` entry for --shards / --shard-size; ConfigError when they cannot apply."""
    from batchcli.engine import shards

    spec = shards.check_options(cfg.shards, cfg.shard_size)
    if spec is None:
        return None
    if not pipeline.writes_image:
        raise ConfigError("--shards: this pipeline writes no images, so there is nothing to put in shards")
    if out_dir is not None and shards.existing(out_dir):
        raise ConfigError(f"--out {cfg.out_dir}: already holds tar shards ({shards.existing(out_dir)[0]}, ...); "
                          "give a new folder for a new sharded batch")
    return spec


# --- run flags ----------------------------------------------------------------------------------

RUN_DEFAULTS = {"workers": None, "retries": 1, "item_timeout": 0.0, "max_failures": None, "providers": "cpu",
                "worker_memory": None, "min_free_space": "1G", "executor": "local", "transfer": False,
                "max_load": None, "min_free_memory": None, **FINISH_DEFAULTS}
"""The run flags and their defaults. A resume takes a flag it is not given from the batch's
last run (the journal records the flags each run was given), else from here; except where the
batch runs (--executor, --transfer), chosen afresh each time: that cluster may be gone."""
_PER_RUN = ("executor", "transfer")


def run_options(workers: int | None = None, retries: int | None = None, item_timeout: float | None = None,
                max_failures: str | None = None, providers: str | None = None, worker_memory: str | None = None,
                min_free_space: str | None = None, executor: str | None = None, transfer: bool | None = None,
                last: dict | None = None, finish: dict | None = None, max_load: str | None = None,
                min_free_memory: str | None = None, slots: int | None = None):
    """Validate the run flags (exit 2 before any work) and build RunOptions. None means "not
    given": the value of the last run (`last`), else the default. `finish`: the notification
    and report flags given (results.notify.finish_flags), where None turns one off. `slots`:
    the home's worker budget (engine.slots.budget; default the usable CPUs), the default
    --workers and what the default --worker-memory is shared by."""
    from batchcli.engine.checks import parse_max_failures
    from batchcli.engine.load import parse_max_load
    from batchcli.engine.runner import RunOptions
    from batchcli.executors.factory import check_executor, usable_cpus
    from batchcli.units import parse_bytes

    given = {k: v for k, v in (last or {}).items() if k in RUN_DEFAULTS and k not in _PER_RUN and v is not None}
    given.update({k: v for k, v in dict(workers=workers, retries=retries, item_timeout=item_timeout,
                                        max_failures=max_failures, providers=providers,
                                        worker_memory=worker_memory, min_free_space=min_free_space,
                                        executor=executor, transfer=transfer, max_load=max_load,
                                        min_free_memory=min_free_memory).items() if v is not None})
    given.update(finish or {})
    v = {**RUN_DEFAULTS, **given}
    workers, retries, item_timeout, max_failures = v["workers"], v["retries"], v["item_timeout"], v["max_failures"]
    providers, worker_memory, min_free_space = v["providers"], v["worker_memory"], v["min_free_space"]
    executor, transfer = v["executor"], v["transfer"]
    check_executor(executor)  # a misspelt one is exit 2 before the batch is made, not after
    if transfer and executor in ("", "local"):
        raise ConfigError("--transfer: only with --executor dask or dask://HOST:PORT (the local pool reads the "
                          "inputs where they are)")
    if providers != RUN_DEFAULTS["providers"]:  # (the model module only when it has a say)
        from batchcli.models.session import parse_providers

        parse_providers(providers)  # an unknown provider is a usage error, before any work
    parse_max_load(v["max_load"])
    cpus = usable_cpus()
    share = slots or cpus  # without `slots` the runner reads the home's budget itself
    if workers and workers > max_workers(cpus):
        raise ConfigError(f"--workers {workers}: at most {max_workers(cpus)} here ({WORKERS_PER_CPU} per usable CPU, at "
                          f"least {MIN_WORKER_CEILING}); more processes than that only slow the batch down")
    n = workers or min(share, max_workers(cpus))
    try:
        parse_max_failures(max_failures)
    except ValueError:
        raise ConfigError(f"--max-failures {max_failures!r}: expected a count (10) or a percentage (5%)") from None
    if worker_memory is None:
        memory = default_worker_memory(share)  # the home runs at most `slots` workers at once
    else:
        memory = parse_bytes(worker_memory, "--worker-memory")
    min_memory = parse_bytes(v["min_free_memory"], "--min-free-memory") if v["min_free_memory"] else 0
    if min_memory and min_memory > _machine_memory():
        raise ConfigError(f"--min-free-memory {v['min_free_memory']}: more than this machine's memory "
                          f"({_machine_memory() / (1 << 30):.1f} GiB); the batch would wait for ever")
    return RunOptions(workers=n, threads=max(1, cpus // n), item_timeout=item_timeout, retries=retries,
                      max_failures=max_failures, providers=providers, memory_limit=memory,
                      min_free_space=parse_bytes(min_free_space, "--min-free-space"),
                      executor=executor, transfer=bool(transfer), given=given, slots=slots or 0,
                      max_load=v["max_load"], min_free_memory=min_memory)


def _machine_memory() -> int:
    """The machine's physical memory in bytes (no limit when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 62


WORKERS_PER_CPU = 8
MIN_WORKER_CEILING = 32


def max_workers(cpus: int) -> int:
    """The most --workers accepted: 8 per usable CPU (room for I/O-bound downloads), at least 32.
    A run never starts more workers than it has items to do (the runner clamps)."""
    return max(MIN_WORKER_CEILING, WORKERS_PER_CPU * cpus)


def last_run_flags(paths) -> dict:
    """The run flags the batch's last start or resume was given (empty for older journals)."""
    from batchcli.engine.journal import last_options

    return last_options(paths.journal, int(paths.load_manifest()["total"])) or {}


def default_worker_memory(workers: int) -> int:
    """80% of the available RAM shared among the workers, never under 1 GiB each (an address-space
    cap: a decompression bomb fails its item with class oom instead of swapping the machine)."""
    from batchcli.engine.load import available_memory

    avail = available_memory()
    if avail is None:
        return 0
    return max(1 << 30, int(avail * 0.8) // max(1, workers))
