"""sync and watch: `start` that does only the new work, and `start` over a hot folder. Each takes
every flag start takes (its parameters are start's, plus its own) and runs start's own body,
which calls `create` in run.py: there sync records the up-to-date items as reused, and watch
names the folders its runner watches (engine/watch.py)."""

import inspect
import typing
from contextvars import ContextVar
from typing import Annotated, Any

import typer

from batchcli.cli.options import handle_errors

SYNC: ContextVar[dict[str, Any] | None] = ContextVar("batchcli_sync", default=None)
"""Set while `start`'s body runs on behalf of `sync` or `watch`: their own flags."""

DeleteOpt = Annotated[bool, typer.Option(
    "--delete", help="After the run, remove outputs whose inputs are gone: only files batchcli wrote and that are unchanged.")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="List what would be processed and reused; create and change nothing.")]
SettleOpt = Annotated[str, typer.Option(
    "--settle", metavar="AGE", help="Take a file once its size and mtime have not changed for this long.")]
PollOpt = Annotated[bool, typer.Option(
    "--poll", help="Scan the folders instead of asking the kernel for events (network file systems).")]


def watch_create(store, cfg, json_out: bool, detach: bool = False, settle: str = "2s", poll: bool = False):
    """An empty-or-not batch that names the folders its runner watches."""
    from batchcli import api
    from batchcli.cli import console
    from batchcli.engine.watch import watch_spec
    from batchcli.errors import ConfigError
    from batchcli.units import parse_age

    if cfg.from_file or "-" in cfg.inputs:
        raise ConfigError("watch takes folders, not lists (--from-file, -)")
    spec = watch_spec(cfg.inputs, parse_age(settle, "--settle"), poll)
    cfg.allow_empty = True
    paths = api.create_batch(store, cfg)
    man = paths.load_manifest()
    man.update(kind="watch", watch=spec)
    paths.write_manifest(man)
    if not (json_out or detach):  # detached, stdout is the batch id alone
        console.info(f"watching {', '.join(spec['roots'])}: a file is taken once unchanged for {spec['settle']:g} s; "
                     f"stop with Ctrl-C or 'batchcli pause {paths.id}'")
    return paths


ChecksumOpt = Annotated[bool, typer.Option(
    "--checksum", help="Compare inputs by content (sha256), not by identity and mtime: a fresh checkout reuses too.")]


def sync_create(store, cfg, opts, json_out: bool, detach: bool = False, delete: bool = False,
                dry_run: bool = False, checksum: bool = False):
    """Make the batch, record its up-to-date items as reused, say what is left to do. Without
    the cyclic garbage collector meanwhile: the plan makes few cycles (reference counting frees
    its objects), and the collector's passes over the hundreds of thousands of rows and records
    it holds cost about a fifth of its time (100,000 inputs: 0.25 s)."""
    import gc

    from batchcli.cli import exiting

    collecting = gc.isenabled()
    gc.disable()
    try:
        return _sync_create(store, cfg, opts, json_out, detach, delete, dry_run, checksum)
    finally:
        if exiting.ENDS_AT_EXIT and _KEPT:  # the plan is left for the process's end (os._exit: 0.08 s of freeing
            gc.freeze()  # 100,000 records and rows skipped), out of the collector's sight
        else:
            _KEPT.clear()
        if collecting:
            gc.enable()


_KEPT: list = []
"""The last plan's objects, when the process ends with os._exit after the run (cli/exiting.py)."""


def _sync_create(store, cfg, opts, json_out: bool, detach: bool, delete: bool, dry_run: bool, checksum: bool):
    import shutil
    import tempfile

    from batchcli import api
    from batchcli.cli import console
    from batchcli.engine import syncfast
    from batchcli.engine.store import Store
    from batchcli.engine.sync import ask, delete_stale, note_plan, plan, record_reused, save_contents
    from batchcli.engine.syncplan import Planner, follow

    asked: list = []

    def meanwhile(paths, discovering):  # while a child process discovers the inputs
        man = api.manifest_preview(cfg, paths)
        if man is None:
            return
        try:
            asked.append(ask(store, man, checksum))  # the catalog
            if not checksum:  # then the items written so far (--checksum reads them all first)
                planner = Planner(man, asked[0])
                follow(planner, paths.items, discovering)
                asked[0].planner = planner
        except Exception:  # noqa: BLE001 (the plan asks again, and says what is wrong)
            pass

    cfg.writes_checked_later = True  # by the plan: up-to-date items write nothing
    if dry_run:  # discover into a scratch home; compare with the real catalog; keep nothing
        scratch = tempfile.mkdtemp(prefix="batchcli-sync-")
        try:
            paths = api.create_batch(Store(scratch), cfg, meanwhile=meanwhile)
            p, _records = plan(store, paths, checksum, asked[0] if asked else None)
            gone = delete_stale(store, paths, dry_run=True, stood_for=p.stood_for) if delete else None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if json_out:
            console.emit_json({"type": "sync_plan", "dry_run": True, **p.as_dict(),
                               **({"delete": {"removed": gone.removed, "kept": dict(gone.kept),
                                              "outputs": gone.removed_rels[:1000]}} if gone else {})})
        else:
            lines = [f"sync (dry run): {p.reused} up to date, {p.new + p.changed} to process "
                     f"({p.new} new, {p.changed} changed) of {p.total}" + _failed_again(p)]
            lines += [f"  process {src}" for src in p.todo]
            if p.new + p.changed > len(p.todo):
                lines.append(f"  ... and {p.new + p.changed - len(p.todo)} more")
            if gone is not None:
                from batchcli.cli.finish import kept_text

                lines.append(f"would remove {gone.removed} output(s) whose inputs are gone" + kept_text(gone))
                lines += [f"  remove {rel}" for rel in gone.removed_rels[:1000]]
            console.info("\n".join(lines))
        raise typer.Exit(0)
    from batchcli.cli.warm import take_walk

    reuse = syncfast.Reuse(store, None if checksum else _walk(store, cfg), early=take_walk())
    try:
        paths = api.create_batch(store, cfg, meanwhile=meanwhile,
                                 quick=lambda paths, stats: reuse.discover(paths, api.manifest_preview(cfg, paths), stats))
    finally:
        reuse.close()
    try:
        if reuse.found:  # nothing changed since the last sync: every item reused from it, in bulk
            p = reuse.plan()
            record_reused(paths, [], bulk=reuse)
            reuse.kept(paths)
        else:
            p, records = plan(store, paths, checksum, asked[0] if asked else None)
            _KEPT[:] = [asked, records]
            if checksum:
                save_contents(paths, p.contents)
            syncfast.from_plan(paths, paths.load_manifest(), reuse, p, records)
            record_reused(paths, records)
            syncfast.written(paths)
        note_plan(paths, p)
    except BaseException:
        shutil.rmtree(paths.dir, ignore_errors=True)
        raise
    if delete:
        opts.given["delete"] = True  # a run flag: done after the run (cli/finish.py), kept by resume
    if json_out:
        console.emit_json({"type": "sync_plan", "batch_id": paths.id, "dry_run": False,
                           **{k: v for k, v in p.as_dict().items() if k != "to_process_sample"}})
    elif not detach:  # detached, stdout is the batch id alone
        console.info(f"sync: {p.reused} up to date (reused), {p.new + p.changed} to process "
                     f"({p.new} new, {p.changed} changed) of {p.total}" + _failed_again(p))
    return paths


def _walk(store, cfg) -> tuple | None:
    """The walk that tells whether a sync's inputs changed since the last (engine/syncfast.py)."""
    from batchcli import api
    from batchcli.engine.syncfast import walk_spec
    from batchcli.errors import ConfigError
    from batchcli.inputs.discover import parse_exts

    try:
        exts = parse_exts(cfg.exts, cfg.media)
    except ConfigError:  # create_batch says so
        return None
    out_dir = api.out_folder(cfg.out_dir) if cfg.out_dir else None
    return walk_spec(cfg.inputs, exts, [out_dir, store.home],
                     plain=not (cfg.from_file or cfg.exclude or cfg.dedupe or cfg.name_template))


def _failed_again(p) -> str:
    return f"; {p.failed_again} failed last time and are unchanged: still failed" if p.failed_again else ""


def register_sync(app: typer.Typer, start) -> None:
    _derive(app, start, "sync", [("delete", False, DeleteOpt), ("dry_run", False, DryRunOpt),
                                 ("checksum", False, ChecksumOpt)], _sync_doc)
    _derive(app, start, "watch", [("settle", "2s", SettleOpt), ("poll", False, PollOpt)], _watch_doc)


def _sync_doc() -> None:
    """Like start, but only new or changed inputs do work: an input whose identity (device,
    inode, size, mtime) and pipeline match an output an earlier batch wrote, still as it was
    written, is recorded as completed with reused_from, not processed again.

    Example: batchcli sync photos/ --out web/ --pipeline "resize 1024x1024 | convert webp" --delete
    """


def _watch_doc() -> None:
    """A hot folder: process what is there, then every file that lands or changes, once it is
    complete, as one long-lived batch (status, pause, resume, cancel and recover as for any).

    Example: batchcli watch tethered/ --out web/ --pipeline "orient | resize 2048x2048" --settle 2s
    """


def _derive(app: typer.Typer, start, name: str, own: list[tuple[str, Any, Any]], doc) -> None:
    """Register `name` as start's parameters plus `own`, running start's body with SYNC set."""
    target = inspect.unwrap(start)
    hints = typing.get_type_hints(target, include_extras=True)
    params = [p.replace(annotation=hints[p.name]) for p in inspect.signature(target).parameters.values()]
    extra = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d, annotation=a) for n, d, a in own]
    at = next(k for k, p in enumerate(params) if p.name == "detach")
    params[at:at] = extra

    def command(**kw: Any) -> None:
        mode = {n: kw.pop(n) for n, _d, _a in own}
        if name == "watch":
            mode["watch"] = True
        token = SYNC.set(mode)
        try:
            target(**kw)
        finally:
            SYNC.reset(token)

    command.__doc__ = doc.__doc__
    command.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    app.command(name, no_args_is_help=True)(handle_errors(command))
