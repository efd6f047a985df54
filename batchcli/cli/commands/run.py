"""start and resume: the commands that run a batch (here, or detached in the background)."""

import signal
from typing import Annotated, Optional

import typer

from batchcli.cli.finish import (
    OnFinishOpt,
    ReportOpt,
    SummaryOpt,
    WebhookOpt,
    WebhookSecretOpt,
    check_secret,
    keep_secret,
)
from batchcli.cli.options import BatchArg, HomeOpt, JsonOpt, VariantOpt, finite, handle_errors
from batchcli.results.notify import finish_flags

WorkersOpt = Annotated[Optional[int], typer.Option("--workers", "-w", metavar="N", min=1, show_default=False,
                                                   help="At most N worker processes (default: the home's worker slots; at most 8 per CPU; "
                                                        "never more than the items to do).")]
RetriesOpt = Annotated[Optional[int], typer.Option("--retries", metavar="N", min=0, max=100, show_default=False,
                                                   help="Retries for transient failures (timeout, crash, I/O, network); default 1.")]
TimeoutOpt = Annotated[Optional[float], typer.Option("--item-timeout", metavar="SECONDS", min=0, callback=finite, show_default=False,
                                                     help="Seconds before a stuck item's worker is killed (default 0 = no limit).")]
MaxFailOpt = Annotated[Optional[str], typer.Option("--max-failures", metavar="N|P%", show_default=False,
                                                   help="Halt after N failed items, or P% of processed items.")]
ProvidersOpt = Annotated[Optional[str], typer.Option("--providers", metavar="LIST", show_default=False,
                                                     help="ONNX execution providers in order: cpu, cuda, tensorrt, openvino, or auto (default cpu).")]
MemoryOpt = Annotated[Optional[str], typer.Option("--worker-memory", metavar="SIZE", show_default=False,
                                                  help="Address-space cap per worker, e.g. 2G, or 0 for none (default: free RAM / workers).")]
FreeOpt = Annotated[Optional[str], typer.Option("--min-free-space", metavar="SIZE", show_default=False,
                                                help="Pause the batch when the output disk has less free space (default 1G).")]
ExecutorOpt = Annotated[Optional[str], typer.Option("--executor", metavar="NAME", show_default=False,
                                                    help="local (default), dask (a local Dask cluster) or dask://HOST:PORT.")]
TransferOpt = Annotated[Optional[bool], typer.Option("--transfer/--no-transfer", show_default=False,
                                                     help="With Dask: ship image bytes to workers and back (no shared file system).")]
MaxLoadOpt = Annotated[Optional[str], typer.Option("--max-load", metavar="L|P%", show_default=False,
                                                   help="Run fewer workers, down to none, while the 1-minute load per core is over L (1.5), or the CPU pressure over P% (40%).")]
MinMemOpt = Annotated[Optional[str], typer.Option("--min-free-memory", metavar="SIZE", show_default=False,
                                                  help="Run fewer workers, down to none, while the available memory is under SIZE (2G).")]
PriorityOpt = Annotated[Optional[int], typer.Option("--priority", metavar="N", show_default=False,
                                                    help="Higher runs first when batches wait for worker slots (default 0).")]
AtOpt = Annotated[Optional[str], typer.Option("--at", metavar="TIME", show_default=False,
                                              help="Create the batch now, run it then: +30m, 02:00 or 2026-11-21T02:00 (implies --detach).")]
AfterOpt = Annotated[Optional[list[str]], typer.Option("--after", metavar="BATCH", show_default=False,
                                                       help="Create the batch now, run it when this batch ends (repeatable; implies --detach).")]
AfterSuccessOpt = Annotated[bool, typer.Option("--after-success",
                                               help="With --after: run only if that batch completed; else the batch is cancelled.")]
ShardsOpt = Annotated[Optional[str], typer.Option("--shards", metavar="FORMAT", show_default=False,
                                                  help="tar: outputs go into numbered tar shards OUT/00000.tar, ... (WebDataset layout) instead of files.")]
ShardSizeOpt = Annotated[Optional[int], typer.Option("--shard-size", metavar="N", min=1, show_default=False,
                                                     help="Items per shard with --shards (default 1000).")]
DetachOpt = Annotated[bool, typer.Option("--detach", "-d", help="Run in the background; print the batch id and return.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output, only the summary.")]


def execute(paths, opts, json_out: bool, quiet: bool, resume: bool, **kw) -> None:
    """Run in this process with the right progress view, print the summary, exit with its code."""
    from batchcli.cli import console
    from batchcli.cli.exiting import resume_collector
    from batchcli.cli.finish import Finish
    from batchcli.engine.runner import Runner

    resume_collector()

    mode = "json" if json_out else "quiet" if quiet else "tty" if console.is_tty() else "plain"
    man = paths.load_manifest()
    steps = [*man["pipeline"], *(step for v in man.get("variants") or () for step in v["pipeline"])]
    if mode in ("tty", "plain") and any(step.get("name") == "model" for step in steps):
        from batchcli.models.session import describe_providers

        console.info(describe_providers(opts.providers))
    if kw.get("repair"):
        from batchcli.results.verify import find_bad

        kw["repair"] = find_bad(paths)
    else:
        kw.pop("repair", None)
    finish = Finish(paths, opts, json_out)
    console.log_to(paths.log)  # where output goes if the terminal or pipe goes away
    hangup = signal.signal(signal.SIGHUP, lambda *_: console.vanish_all("hung up (SIGHUP)"))
    try:
        with console.ProgressView(mode) as view:
            result = Runner(paths, opts, finish.tap(view)).run(resume=resume, **kw)
    finally:
        signal.signal(signal.SIGHUP, hangup)
    if not json_out:
        console.summary(result)
    finish.done(result)
    raise typer.Exit(result.exit_code)


def create(store, cfg, opts, json_out: bool, detach: bool = False):
    """The new batch of `start`, or of `sync` or `watch` (called from inside `start`'s body, so
    that they take every flag start takes): sync records up-to-date items as reused first; a
    watch batch may start empty and names the folders it watches. A batch that runs here gets
    its workers ready while its inputs are discovered."""
    from batchcli import api
    from batchcli.cli.commands.sync import SYNC, sync_create, watch_create
    from batchcli.cli.warm import early_paths

    mode = SYNC.get()
    if mode is None:
        checked = None if detach else api.warm_workers(opts)
        try:
            return api.create_batch(store, cfg, early_paths(store.home), checked=checked)
        except BaseException:
            if checked is not None:
                api.cold_workers()
            raise
    if mode.pop("watch", False):
        return watch_create(store, cfg, json_out, detach, **mode)
    return sync_create(store, cfg, opts, json_out, detach, **mode)


def _when(store, at: str | None, after: list[str] | None, after_success: bool) -> tuple | None:
    """--at / --after / --after-success checked before anything is created: (at, after ids,
    after_success), or None when the batch runs now."""
    from batchcli.errors import BatchNotFound, ConfigError

    if after_success and not after:
        raise ConfigError("--after-success needs --after BATCH (the batch that must complete first)")
    if at is None and not after:
        return None
    from batchcli.engine.schedule import parse_at

    ids = []
    for b in after or ():
        if not b.strip():
            raise ConfigError("--after needs a batch id, a unique id prefix, or a name")
        try:
            ids.append(store.resolve(b).id)
        except BatchNotFound as exc:
            raise ConfigError(f"--after {b}: {exc}") from None
    return (parse_at(at) if at is not None else None), ids, after_success


def _detached(paths, pid: int, json_out: bool, when: tuple | None = None) -> None:
    """The batch id on stdout (scripts capture it); with --json, one `started` event (with
    `scheduled_for` and `after` for a scheduled batch)."""
    if json_out:
        from batchcli.cli.console import emit_json
        from batchcli.engine.status import _iso

        emit_json({"type": "started", "batch_id": paths.id, "detached": True, "pid": pid, "log": paths.log,
                   **({"status": "scheduled", "scheduled_for": _iso(when[0]), "after": when[1]} if when else {})})
    else:
        from batchcli.cli.console import info

        info(paths.id)


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    @handle_errors
    def start(
        inputs: Annotated[Optional[list[str]], typer.Argument(
            help="Image files, folders (walked recursively), glob patterns, URLs, or - for a list on stdin.",
            show_default=False)] = None,
        out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="DIR", help="Output folder (mirrors input paths).",
                                                   show_default=False)] = None,
        pipeline: Annotated[Optional[str], typer.Option("--pipeline", "-p", metavar="SPEC", show_default=False,
                                                        help='Operations, e.g. "orient | resize 1024x1024 | convert webp quality=85".')] = None,
        pipeline_file: Annotated[Optional[str], typer.Option("--pipeline-file", metavar="FILE", show_default=False,
                                                             help="Pipeline as a TOML file of [[op]] (and [[variant]]) tables.")] = None,
        variant: VariantOpt = None,
        name: Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="A name to refer to the batch by.",
                                                    show_default=False)] = None,
        workers: WorkersOpt = None,
        ext: Annotated[Optional[list[str]], typer.Option("--ext", metavar="EXT", show_default=False,
                                                         help="Extensions to include (repeatable; default jpg jpeg png webp tif tiff bmp heic heif avif gif "
                                                              "and the camera RAW ones).")] = None,
        exclude: Annotated[Optional[list[str]], typer.Option("--exclude", metavar="GLOB", show_default=False,
                                                             help="Skip paths matching this glob (repeatable).")] = None,
        from_file: Annotated[Optional[str], typer.Option("--from-file", metavar="FILE", show_default=False,
                                                         help="A file listing one path or URL per line (- for stdin).")] = None,
        dedupe: Annotated[Optional[str], typer.Option("--dedupe", metavar="MODE", show_default=False,
                                                      help="content: skip byte-identical inputs.")] = None,
        name_template: Annotated[Optional[str], typer.Option("--name-template", metavar="T", show_default=False,
                                                             help='Output names, e.g. "{stem}_web.{ext}".')] = None,
        max_file_size: Annotated[str, typer.Option("--max-file-size", metavar="SIZE", help="Larger inputs fail their item.")] = "200M",
        max_pixels: Annotated[str, typer.Option("--max-pixels", metavar="N", help="Pixels (read from the header), e.g. 150M or 40000000; larger inputs fail their item.")] = "150M",
        media: Annotated[str, typer.Option("--media", metavar="KIND", help="Which files of a folder are items: image, video or all.")] = "image",
        max_duration: Annotated[str, typer.Option("--max-duration", metavar="TIME", help="Longer videos fail their item (0 = no limit).")] = "6h",
        video_segment: Annotated[str, typer.Option("--video-segment", metavar="TIME", help="Video work per durable segment (cut on keyframes).")] = "10s",
        shards: ShardsOpt = None,
        shard_size: ShardSizeOpt = None,
        retries: RetriesOpt = None,
        item_timeout: TimeoutOpt = None,
        max_failures: MaxFailOpt = None,
        worker_memory: MemoryOpt = None,
        min_free_space: FreeOpt = None,
        providers: ProvidersOpt = None,
        executor: ExecutorOpt = None,
        transfer: TransferOpt = None,
        on_finish: OnFinishOpt = None,
        webhook: WebhookOpt = None,
        webhook_secret: WebhookSecretOpt = None,
        report: ReportOpt = None,
        summary: SummaryOpt = None,
        max_load: MaxLoadOpt = None,
        min_free_memory: MinMemOpt = None,
        priority: PriorityOpt = None,
        at: AtOpt = None,
        after: AfterOpt = None,
        after_success: AfterSuccessOpt = False,
        detach: DetachOpt = False,
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Create a batch and run it.

        Example: batchcli start photos/ --out web/ --pipeline "orient | resize 1024x1024 | convert webp quality=85"
        """
        from batchcli import api
        from batchcli.cli.commands.sync import SYNC
        from batchcli.engine import slots
        from batchcli.engine.store import Store
        from batchcli.errors import ConfigError
        from batchcli.units import parse_bytes, parse_count, parse_time

        if not inputs and not from_file:
            raise ConfigError("no inputs: give files, folders, globs, URLs, - (stdin) or --from-file")
        store = Store(home)
        if priority is not None:
            slots.check_priority(priority)
        when = _when(store, at, after, after_success)
        if (shards or shard_size) and SYNC.get() is not None:
            raise ConfigError("--shards is for start: sync and watch keep their outputs as files")
        opts = api.run_options(workers, retries, item_timeout, max_failures, providers, worker_memory,
                               min_free_space, executor, transfer,
                               finish=finish_flags(on_finish, webhook, report, summary), max_load=max_load,
                               min_free_memory=min_free_memory, slots=slots.budget(store.home))
        check_secret(webhook_secret, opts)
        if shards and opts.executor != "local":
            raise ConfigError(f"--executor {opts.executor}: a batch with --shards runs on the local executor")
        limits = parse_bytes(max_file_size, "--max-file-size"), parse_count(max_pixels, "--max-pixels")
        for flag, given, value in (("--max-file-size", max_file_size, limits[0]), ("--max-pixels", max_pixels, limits[1])):
            if value < 1:
                raise ConfigError(f"{flag} {given}: must be above 0")
        cfg = api.StartConfig(inputs=list(inputs or []), out_dir=out, pipeline_text=pipeline,
                              pipeline_file=pipeline_file, variants=variant, name=name, exts=ext, exclude=exclude,
                              from_file=from_file, dedupe=dedupe, name_template=name_template,
                              max_file_size=limits[0], max_pixels=limits[1],
                              limits_given={"max_file_size": str(max_file_size).strip(),
                                            "max_pixels": str(max_pixels).strip()},
                              media=media, max_duration=parse_time(max_duration, "--max-duration"),
                              segment=parse_time(video_segment, "--video-segment"), shards=shards, shard_size=shard_size)
        paths = create(store, cfg, opts, json_out, detach or when is not None)  # `sync` too: the up-to-date items recorded
        keep_secret(paths, webhook_secret)
        if priority:
            slots.write_priority(paths, priority)
        if when is not None:
            from batchcli.engine.schedule import schedule

            schedule(paths, *when, options=opts.given)
            detach = True  # a scheduled batch waits in the background
        if detach:
            from batchcli.engine.spawn import spawn_detached

            _detached(paths, spawn_detached(paths, opts, home), json_out, when)
            return
        execute(paths, opts, json_out, quiet, resume=False)

    from batchcli.cli.commands.sync import register_sync

    register_sync(app, start)

    @app.command(no_args_is_help=True)
    @handle_errors
    def resume(
        batch: BatchArg,
        retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also run the items that failed.")] = False,
        repair: Annotated[bool, typer.Option("--repair", help="Also redo items whose output is missing or changed.")] = False,
        force: Annotated[bool, typer.Option("--force", help="Resume even if the pipeline or options changed.")] = False,
        workers: WorkersOpt = None,
        retries: RetriesOpt = None,
        item_timeout: TimeoutOpt = None,
        max_failures: MaxFailOpt = None,
        worker_memory: MemoryOpt = None,
        min_free_space: FreeOpt = None,
        providers: ProvidersOpt = None,
        executor: ExecutorOpt = None,
        transfer: TransferOpt = None,
        on_finish: OnFinishOpt = None,
        webhook: WebhookOpt = None,
        webhook_secret: WebhookSecretOpt = None,
        report: ReportOpt = None,
        summary: SummaryOpt = None,
        max_load: MaxLoadOpt = None,
        min_free_memory: MinMemOpt = None,
        priority: PriorityOpt = None,
        detach: DetachOpt = False,
        quiet: QuietOpt = False,
        json_out: JsonOpt = False,
        home: HomeOpt = None,
    ) -> None:
        """Continue a paused or interrupted batch: only items without a completed record run.

        Run flags not given keep the values the batch's last run was given (--executor and
        --transfer excepted: they default to here).

        Example: batchcli resume nightly --retry-failed
        """
        from batchcli import api
        from batchcli.engine import slots
        from batchcli.engine.liveness import locked_error, runner_alive
        from batchcli.engine.store import Store

        store = Store(home)
        paths = store.resolve(batch)
        live = runner_alive(paths)  # refuse at once, before any heavy import (the runner checks again)
        if live is not None:
            raise locked_error(paths, live)
        if priority is not None:
            slots.check_priority(priority)
        opts = api.run_options(workers, retries, item_timeout, max_failures, providers, worker_memory,
                               min_free_space, executor, transfer, last=api.last_run_flags(paths),
                               finish=finish_flags(on_finish, webhook, report, summary), max_load=max_load,
                               min_free_memory=min_free_memory, slots=slots.budget(store.home))
        if priority is not None:
            slots.write_priority(paths, priority)
        check_secret(webhook_secret, opts)
        keep_secret(paths, webhook_secret)
        if detach:
            from batchcli.engine.spawn import spawn_detached

            pid = spawn_detached(paths, opts, home, resume=True, retry_failed=retry_failed, repair=repair, force=force)
            _detached(paths, pid, json_out)
            return
        execute(paths, opts, json_out, quiet, resume=True, requeue_failed=retry_failed, repair=repair, force=force)
