"""/api/v1: batches created, listed, inspected, paused, resumed, cancelled and removed.

Handlers are thin, like the CLI's commands: check the request, call `batchcli.api` or the
engine's lifecycle functions (in a worker thread: they touch files), return plain JSON. Errors
are BatchcliError subclasses, turned into `{"error", "status"}` in app.py."""

from __future__ import annotations

import os
import shutil
from typing import Any, Optional, Union

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchcli import api
from batchcli.engine import lifecycle
from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError, InvalidTransition
from batchcli.server.uploads import Uploads

router = APIRouter()

STATES = ("pending", "scheduled", "queued", "throttled", "running", "paused", "interrupted", "completed", "failed",
          "cancelled", "damaged")
ITEM_STATES = ("pending", "completed", "failed", "skipped")
LIFECYCLE_WAIT = 5.0
"""Seconds a pause or cancel waits for a live runner to stop before answering (202 if it has not)."""


class RunFlags(BaseModel):
    """The run flags of `batchcli start` / `resume` (flags not given: the defaults, or on resume
    the values of the batch's last run)."""

    model_config = ConfigDict(extra="forbid")
    workers: Optional[int] = Field(None, ge=1, le=1024)
    retries: Optional[int] = Field(None, ge=0, le=100)
    item_timeout: Optional[float] = Field(None, ge=0, allow_inf_nan=False)
    max_failures: Optional[str] = None
    worker_memory: Optional[str] = None
    min_free_space: Optional[str] = None
    providers: Optional[str] = None

    def options(self, last: dict | None = None):
        return api.run_options(self.workers, self.retries, self.item_timeout, self.max_failures, self.providers,
                               self.worker_memory, self.min_free_space, last=last)


class ImageSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: Optional[str] = Field(None, description="an http(s) URL, downloaded by the worker")
    base64: Optional[str] = Field(None, description="the file's bytes, base64-encoded")
    name: Optional[str] = Field(None, description="file name for a base64 image (sanitised; default imageK, "
                                                  "K its index in images)")


class BatchRequest(RunFlags):
    """POST /batches as JSON (multipart form fields take the same names)."""

    inputs: list[str] = Field(default_factory=list, description="paths under an allowed root (files, folders, globs) or URLs")
    images: list[ImageSource] = Field(default_factory=list, description="each {\"url\"} or {\"base64\", \"name\"}")
    pipeline: Optional[str] = Field(None, description='e.g. "orient | resize 1024x1024 | convert webp"')
    pipeline_toml: Optional[str] = Field(None, description="the pipeline as TOML text ([[op]] tables)")
    variants: Union[dict[str, str], list[str], None] = Field(
        None, description='more outputs from one decode: {"thumb": "resize 256x256"} or ["thumb=resize 256x256"]')
    media: Optional[str] = Field(None, description="image (default), video or all")
    name: Optional[str] = None
    out: Optional[str] = Field(None, description="output folder under an allowed root (default: the batch's own folder)")
    ext: Optional[list[str]] = None
    exclude: Optional[list[str]] = None
    dedupe: Optional[str] = None
    name_template: Optional[str] = None
    max_file_size: Optional[str] = None
    max_pixels: Optional[int] = Field(None, ge=1)


class ResumeRequest(RunFlags):
    retry_failed: bool = False
    repair: bool = False
    force: bool = False


class CleanupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than: str = "7d"
    keep_last: int = Field(0, ge=0)
    status: Optional[list[str]] = None
    purge_outputs: bool = False
    dry_run: bool = False


def ctx(request: Request):
    return request.app.state.ctx


def resolve(c, batch: str) -> BatchPaths:
    """The batch a path names (an id, a unique id prefix, or a name), as the CLI resolves it: a
    blank one or an ambiguous prefix is a 400 (the request is wrong), no such batch a 404."""
    from batchcli.errors import BatchNotFound

    try:
        return c.store.resolve(batch, damaged_ok=True)
    except BatchNotFound as exc:
        if not batch.strip() or sum(1 for b in c.store.ids() if b.startswith(batch)) > 1:
            raise ConfigError(str(exc)) from None
        raise


def whole(c, batch: str) -> BatchPaths:
    """`resolve`, for the endpoints that need a whole batch: a damaged folder (no manifest or one
    that cannot be read, or left half-made by a killed upload) is a 409 with the CLI's message."""
    from batchcli.engine.store import damage, manifest_damage
    from batchcli.errors import BatchDamaged

    paths = resolve(c, batch)
    reason = damage(paths) or manifest_damage(paths)
    if reason is not None:
        raise BatchDamaged(paths.id, reason)
    return paths


def _validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        raise ConfigError(f"{where}: {err.get('msg', 'invalid')}") from None


async def _json_body(request: Request, cap: int) -> Any:
    import json

    from batchcli.server.uploads import TooLarge

    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"request body over {cap} bytes (send large images as multipart uploads)")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ConfigError(f"the body is not valid JSON: {exc}") from None


# --- create ------------------------------------------------------------------------------------

@router.post("/batches", status_code=201, openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
        "pipeline": {"type": "string"}, "name": {"type": "string"}, "out": {"type": "string"}}}}}}})
async def create_batch(request: Request) -> JSONResponse:
    """Create a batch from paths, URLs, base64 images or uploaded files and run it (detached)."""
    c = ctx(request)
    paths = c.store.create()
    started: list[int] = []  # the runner's pid once spawned: from then on the batch is not ours to remove
    try:
        uploads = Uploads(os.path.join(paths.dir, api.UPLOADS), c.cfg.max_upload, c.cfg.max_files)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            fields = await uploads.read_multipart(ctype, request.stream())
            lists = {"inputs", "ext", "exclude", "variants"}
            data: dict[str, Any] = {k: (v if k in lists else v[-1]) for k, v in fields.items() if k not in ("files", "file")}
        else:
            data = await _json_body(request, c.cfg.max_upload * 4 // 3 + (1 << 20))
            if not isinstance(data, dict):
                raise ConfigError("the body must be a JSON object")
        req = _validated(BatchRequest, data)
        out = await run_in_threadpool(_create, c, paths, req, uploads, started)
    except BaseException:
        if not started:
            shutil.rmtree(paths.dir, ignore_errors=True)
        raise
    return JSONResponse(out, status_code=201)


def _create(c, paths: BatchPaths, req: BatchRequest, uploads: Uploads, started: list[int]) -> dict[str, Any]:
    from batchcli.ops.base import FILE_GUARD

    token = FILE_GUARD.set(c.guard.resolve)  # the files its ops read (a LUT, a model...) as well as its inputs
    try:
        return _create_guarded(c, paths, req, uploads, started)
    finally:
        FILE_GUARD.reset(token)


def _create_guarded(c, paths: BatchPaths, req: BatchRequest, uploads: Uploads, started: list[int]) -> dict[str, Any]:
    from batchcli.engine.spawn import spawn_detached
    from batchcli.inputs.discover import is_url
    from batchcli.units import parse_bytes

    opts = req.options()
    inputs = []
    for raw in req.inputs:
        inputs.append(raw if is_url(raw) else c.guard.resolve(raw, "inputs"))
    for k, img in enumerate(req.images):
        if (img.url is None) == (img.base64 is None):
            raise ConfigError(f"images[{k}]: give exactly one of url or base64")
        if img.url is not None:
            if not is_url(img.url):
                raise ConfigError(f"images[{k}].url: not an http(s) URL")
            inputs.append(img.url)
        else:
            uploads.add_base64(img.base64, img.name or f"image{k}")
    # each upload is an input named outright, as a file named on the command line: an item
    # whatever its name (IMG_0001, a .JPG2), never dropped by the extension filter of a folder walk
    inputs.extend(uploads.paths)
    if not inputs:
        raise ConfigError("no images: give inputs, images or files")
    if req.pipeline and req.pipeline_toml:
        raise ConfigError("give pipeline or pipeline_toml, not both")
    pipeline_file = None
    if req.pipeline_toml:
        pipeline_file = os.path.join(paths.dir, "pipeline.toml")
        with open(pipeline_file, "w", encoding="utf-8") as fh:
            fh.write(req.pipeline_toml)
    variants = [f"{k}={v}" for k, v in req.variants.items()] if isinstance(req.variants, dict) else req.variants
    out = c.guard.resolve(req.out, "out") if req.out else None
    if out is None:
        pipeline = api.build_pipeline(req.pipeline, pipeline_file, variants)
        out = os.path.join(paths.dir, "out") if pipeline.writes_image else None
    cfg = api.StartConfig(inputs=inputs, out_dir=out, pipeline_text=req.pipeline, pipeline_file=pipeline_file,
                          variants=variants, media=req.media or "image",
                          name=req.name, exts=req.ext, exclude=req.exclude, dedupe=req.dedupe,
                          name_template=req.name_template,
                          max_file_size=parse_bytes(req.max_file_size, "max_file_size") if req.max_file_size else 200 << 20,
                          max_pixels=req.max_pixels or 150_000_000)
    api.create_batch(c.store, cfg, paths=paths)
    _check_items_inside(c, paths, uploads.folder)
    before = c.hub.status(paths)["journal_records"]
    started.append(spawn_detached(paths, opts, c.store.home))
    pid = started[0]
    s = _after_spawn(c, paths, before)
    return {"batch_id": paths.id, "status": s["status"], "total": s["total"], "pid": pid,
            "message": f"batch {paths.id} started: {s['total']} items"}


def _check_items_inside(c, paths: BatchPaths, uploads: str) -> None:
    """Every local item must really lie under an allowed root (or be an upload): a symlinked
    file that leads out of the roots is refused, the batch not created."""
    from batchcli.inputs.discover import is_url, iter_items

    up = os.path.realpath(uploads) + os.sep
    for rec in iter_items(paths.items):
        src = rec["src"]
        if is_url(src):
            continue
        real = os.path.realpath(src)
        if not (real.startswith(up) or c.guard.inside(real)):
            raise ConfigError(f"inputs: {rec.get('rel') or os.path.basename(src)} leads outside the allowed folders")


SETTLE = 2.0
"""Seconds a start or resume waits for the new runner's first journal record (it is written
just after the runner takes the lock), so that the answer shows the batch running."""


def _after_spawn(c, paths: BatchPaths, records_before: int) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + SETTLE
    while True:
        s = c.hub.status(paths)
        if s["journal_records"] > records_before or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


# --- read --------------------------------------------------------------------------------------

def _states(values: list[str] | None, known: tuple[str, ...], what: str) -> list[str]:
    wanted = [s.strip() for v in values or [] for s in v.split(",") if s.strip()]
    bad = sorted(set(wanted) - set(known))
    if bad:
        raise ConfigError(f"{what} {','.join(bad)}: expected some of {', '.join(known)}")
    return wanted


@router.get("/batches")
def list_batches(request: Request, status: Optional[list[str]] = Query(None), name: Optional[str] = None,
                 limit: int = Query(50, ge=0, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """Batches, newest first, with `total` (before limit and offset)."""
    c = ctx(request)
    wanted = set(_states(status, STATES, "status"))
    chosen = []
    for paths in c.store.all():
        if name is not None:
            try:
                if paths.load_manifest().get("name") != name:
                    continue
            except (OSError, ValueError):
                continue
        chosen.append(paths)
    if not wanted:  # only the page's batches need their journals read
        return {"batches": [r for r in map(_status_or_none(c), chosen[offset:offset + limit]) if r], "total": len(chosen)}
    rows = [r for r in map(_status_or_none(c), chosen) if r and r["status"] in wanted]
    return {"batches": rows[offset:offset + limit], "total": len(rows)}


def _status_or_none(c):
    def one(paths: BatchPaths) -> dict[str, Any] | None:
        try:
            return c.hub.status(paths)
        except (OSError, ValueError, KeyError):  # a batch folder half removed or half made
            return None

    return one


@router.get("/batches/{batch}")
async def get_batch(request: Request, batch: str) -> dict[str, Any]:
    """The `status --json` object (plus `rate` and `eta_s` while it runs)."""
    # in the event loop: from the feed's cache, or a few new journal lines (the hot path of
    # every dashboard and poller; a thread hop would cost more than the work)
    c = ctx(request)
    paths = resolve(c, batch)
    if c.hub.warm(paths):
        return c.hub.status(paths)
    return await run_in_threadpool(c.hub.status, paths)  # a first fold may read a long journal


@router.get("/batches/{batch}/items")
def get_items(request: Request, batch: str, status: Optional[list[str]] = Query(None),
              limit: int = Query(100, ge=0, le=1000), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    """Items with status, output and error (`status --items --json`), filtered and paged."""
    c = ctx(request)
    paths = whole(c, batch)
    return api.item_rows(paths, limit=limit, offset=offset, states=_states(status, ITEM_STATES, "status") or None)


# --- lifecycle ---------------------------------------------------------------------------------

def _answer(s: dict[str, Any], want: str) -> JSONResponse:
    return JSONResponse(s, status_code=200 if s["status"] == want else 202)


class WaitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    now: bool = False
    wait: float = Field(LIFECYCLE_WAIT, ge=0, le=60, allow_inf_nan=False)


async def _body(request: Request, model: type[BaseModel]) -> Any:
    return _validated(model, await _json_body(request, 1 << 20))


@router.post("/batches/{batch}/pause", openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/WaitRequest"}}}}})
async def pause(request: Request, batch: str) -> JSONResponse:
    """Pause: the runner finishes its in-flight items (`now`: abandons them). 200 once paused,
    202 while the runner is still finishing; 409 when the batch cannot be paused."""
    c = ctx(request)
    body = await _body(request, WaitRequest)
    paths = whole(c, batch)
    s = await run_in_threadpool(lifecycle.pause, paths, body.now, body.wait)
    return _answer({**s, **_fresh(c, paths)}, "paused")


@router.post("/batches/{batch}/cancel", openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/WaitRequest"}}}}})
async def cancel(request: Request, batch: str) -> JSONResponse:
    """Cancel: remaining items are skipped; final. 409 when already completed or cancelled."""
    c = ctx(request)
    body = await _body(request, WaitRequest)
    paths = whole(c, batch)
    s = await run_in_threadpool(lifecycle.cancel, paths, body.wait)
    return _answer({**s, **_fresh(c, paths)}, "cancelled")


def _fresh(c, paths: BatchPaths) -> dict[str, Any]:
    s = c.hub.status(paths)
    return {k: s[k] for k in ("status", "completed", "failed", "remaining", "progress_percent")}


@router.post("/batches/{batch}/resume", openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/ResumeRequest"}}}}})
async def resume(request: Request, batch: str) -> dict[str, Any]:
    """Resume in the background: only items without a completed record run. 409 while it runs,
    when cancelled, or when completed with nothing to redo."""
    c = ctx(request)
    body = await _body(request, ResumeRequest)
    return await run_in_threadpool(_resume, c, whole(c, batch), body)


def _resume(c, paths: BatchPaths, body: ResumeRequest) -> dict[str, Any]:
    from batchcli.engine.spawn import spawn_detached

    s = c.hub.status(paths)
    if s["status"] == "running":
        raise InvalidTransition(f"batch {paths.id} is running (pid {s['runner_pid']})")
    if s["status"] == "completed" and s["remaining"] == 0 and not (body.retry_failed or body.repair):
        raise InvalidTransition(f"batch {paths.id} is completed; nothing to resume "
                                "(retry_failed reruns failed items, repair missing outputs)")
    lifecycle.wait_stopped(paths, 5.0)
    opts = body.options(last=api.last_run_flags(paths))
    before = c.hub.status(paths)["journal_records"]
    pid = spawn_detached(paths, opts, c.store.home, resume=True, retry_failed=body.retry_failed,
                         repair=body.repair, force=body.force)
    s = _after_spawn(c, paths, before)
    return {**s, "pid": pid, "message": f"batch {paths.id} resumed: {s['remaining']} items to do"}


@router.delete("/batches/{batch}")
def delete_batch(request: Request, batch: str, purge_outputs: bool = False) -> dict[str, Any]:
    """Remove a batch's record (and with purge_outputs the files it wrote). 409 while it runs."""
    from batchcli.engine.store import damage, manifest_damage

    c = ctx(request)
    paths = resolve(c, batch)
    reason = damage(paths) or manifest_damage(paths)
    if reason is not None and purge_outputs:
        raise InvalidTransition(f"batch {paths.id} is damaged ({reason}): which files it wrote is unknown, "
                                "so its outputs cannot be purged; DELETE it without purge_outputs")
    return lifecycle.remove(c.store, paths, purge_outputs=purge_outputs)


class RecoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resume: bool = False


@router.post("/recover", openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/RecoverRequest"}}}}})
async def recover(request: Request) -> dict[str, Any]:
    """`batchcli recover [--resume]`: batches whose runner died become paused (and resume)."""
    c = ctx(request)
    body = await _body(request, RecoverRequest)

    def resume_fn(paths: BatchPaths) -> None:
        from batchcli.engine.spawn import spawn_detached

        spawn_detached(paths, api.run_options(last=api.last_run_flags(paths)), c.store.home, resume=True)

    return await run_in_threadpool(lifecycle.recover, c.store, body.resume, resume_fn if body.resume else None)


@router.post("/cleanup", openapi_extra={"requestBody": {"content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/CleanupRequest"}}}}})
async def cleanup(request: Request) -> dict[str, Any]:
    """`batchcli cleanup` with its options as JSON (older_than, keep_last, status, purge_outputs, dry_run)."""
    from batchcli.units import parse_age

    c = ctx(request)
    body = await _body(request, CleanupRequest)
    wanted = tuple(_states(body.status, STATES, "status")) or lifecycle.DEFAULT_CLEANUP_STATUS
    return await run_in_threadpool(lambda: lifecycle.cleanup(
        c.store, older_than=parse_age(body.older_than, "older_than"), keep_last=body.keep_last, status=wanted,
        purge_outputs=body.purge_outputs, dry_run=body.dry_run))


SCHEMAS = (BatchRequest, ResumeRequest, WaitRequest, RecoverRequest, CleanupRequest, ImageSource)
"""Request bodies read by hand (streamed, capped), described in the OpenAPI document."""
