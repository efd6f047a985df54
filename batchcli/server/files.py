"""Files out of a batch: the CLI's ZIP and manifests, contact sheets, outputs and thumbnails.

Exports are written by `batchcli.results` exactly as `batchcli export` writes them (so the ZIP is
the same bytes), into a private temp folder of the home, streamed from there and removed."""

from __future__ import annotations

import collections
import hashlib
import mimetypes
import os
import shutil
import tempfile
import threading
from array import array
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask

from batchcli.engine.store import BatchPaths
from batchcli.errors import BatchNotFound, NothingToExport
from batchcli.server.routes import whole

router = APIRouter()

THUMB_BOX = 320
"""Pixels of the longest side of a thumbnail."""
THUMBS = "thumbs"
"""The folder of a batch that caches thumbnails."""


def _ctx(request: Request):
    return request.app.state.ctx


def _tmpdir(c) -> str:
    base = os.path.join(c.store.home, ".server")
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(dir=base)


def _download(path: str, folder: str, filename: str, media: str) -> FileResponse:
    return FileResponse(path, media_type=media, filename=filename,
                        background=BackgroundTask(shutil.rmtree, folder, True))


def _label(paths: BatchPaths) -> str:
    try:
        name = paths.load_manifest().get("name")
    except (OSError, ValueError):
        name = None
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (name or ""))
    return safe or paths.id


@router.get("/batches/{batch}/export.zip", response_class=FileResponse)
async def export_zip(request: Request, batch: str, name_template: str | None = None,
                     manifest: bool = True) -> FileResponse:
    """The completed outputs and the manifest, as `batchcli export --zip` writes them (same
    bytes). 404 when nothing is completed."""
    from batchcli.results.export import export_zip as write_zip

    c = _ctx(request)
    paths = whole(c, batch)
    folder = _tmpdir(c)
    target = os.path.join(folder, "export.zip")
    try:
        await run_in_threadpool(write_zip, paths, target, name_template, manifest)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return _download(target, folder, f"{_label(paths)}.zip", "application/zip")


@router.get("/batches/{batch}/manifest.{fmt}", response_class=FileResponse)
async def export_manifest(request: Request, batch: str, fmt: str) -> FileResponse:
    """manifest.csv or manifest.jsonl: one row per item (as in the ZIP)."""
    from batchcli.results.export import export_manifest as write_manifest

    if fmt not in ("csv", "jsonl"):
        raise BatchNotFound(f"no such export: manifest.{fmt} (manifest.csv or manifest.jsonl)")
    c = _ctx(request)
    paths = whole(c, batch)
    folder = _tmpdir(c)
    target = os.path.join(folder, f"manifest.{fmt}")
    try:
        await run_in_threadpool(write_manifest, paths, target, fmt)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return _download(target, folder, f"{_label(paths)}-manifest.{fmt}", media)


@router.get("/batches/{batch}/contact-sheet.jpg", response_class=FileResponse)
async def contact_sheet(request: Request, batch: str, compare: bool = False,
                        page: int = Query(1, ge=1)) -> FileResponse:
    """A contact sheet page (`export --contact-sheet`; `compare` for before/after pairs).
    The number of pages is in the X-Pages header."""
    from batchcli.results.contact import render_contact_sheet

    c = _ctx(request)
    paths = whole(c, batch)
    folder = _tmpdir(c)
    try:
        res = await run_in_threadpool(render_contact_sheet, paths, os.path.join(folder, "sheet.jpg"), compare)
        if page > len(res.pages):
            raise BatchNotFound(f"contact sheet page {page}: there are {len(res.pages)}")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    resp = FileResponse(res.pages[page - 1], media_type="image/jpeg",
                        background=BackgroundTask(shutil.rmtree, folder, True))
    resp.headers["X-Pages"] = str(len(res.pages))
    return resp


class RecordIndex:
    """Where each item's last item_completed / item_failed record lies in a journal: built by one
    pass, then extended by reading only what was appended, so looking up an item (a thumbnail
    of a batch page) never rescans a long journal."""

    def __init__(self, total: int):
        self.offsets = array("q", [-1]) * total
        self.end = 0
        self.lock = threading.Lock()

    def record(self, journal: str, i: int) -> dict[str, Any] | None:
        from batchcli.engine.journal import decode

        with self.lock, open(journal, "rb") as fh:
            fh.seek(self.end)
            pos = self.end
            for raw in fh:
                if not raw.endswith(b"\n"):
                    break  # still being written
                here, pos = pos, pos + len(raw)
                if b'"type":"item_completed"' in raw or b'"type":"item_failed"' in raw:
                    rec = decode(raw[:-1])
                    j = rec.get("i") if rec else None
                    if isinstance(j, int) and 0 <= j < len(self.offsets):
                        self.offsets[j] = here
            self.end = pos
            if self.offsets[i] < 0:
                return None
            fh.seek(self.offsets[i])
            return decode(fh.readline()[:-1])


_INDEXES: collections.OrderedDict[str, RecordIndex] = collections.OrderedDict()
_INDEXES_LOCK = threading.Lock()
INDEXES_KEPT = 8
"""Batches whose record index is kept (8 bytes an item each)."""


def _total(paths: BatchPaths, i: int) -> int:
    total = int(paths.load_manifest()["total"])
    if not 0 <= i < total:
        raise BatchNotFound(f"batch {paths.id} has no item {i} (0..{total - 1})")
    return total


def item_source(paths: BatchPaths, i: int) -> str:
    """Item `i`'s input (from items.jsonl)."""
    from batchcli.inputs.discover import iter_items

    _total(paths, i)
    return next(r for r in iter_items(paths.items, start=i) if r["i"] == i)["src"]


def last_record(paths: BatchPaths, i: int) -> dict[str, Any] | None:
    """Item `i`'s last item_completed / item_failed record."""
    total = _total(paths, i)
    with _INDEXES_LOCK:
        index = _INDEXES.get(paths.dir)
        if index is None or len(index.offsets) != total:
            index = _INDEXES[paths.dir] = RecordIndex(total)
        _INDEXES.move_to_end(paths.dir)
        while len(_INDEXES) > INDEXES_KEPT:
            _INDEXES.popitem(last=False)
    return index.record(paths.journal, i)


def _output_path(paths: BatchPaths, i: int) -> tuple[str, dict[str, Any]]:
    """The output file of a completed item, checked to lie inside the batch's output folder."""
    out_dir = paths.load_manifest().get("out_dir")
    rec = last_record(paths, i)
    if not out_dir or rec is None or rec.get("type") != "item_completed" or not rec.get("out"):
        raise BatchNotFound(f"item {i} of batch {paths.id} has no output")
    root = os.path.realpath(out_dir)
    path = os.path.realpath(os.path.join(root, rec["out"]))
    if not path.startswith(root + os.sep) or not os.path.isfile(path):
        raise BatchNotFound(f"the output of item {i} is missing")
    return path, rec


@router.get("/batches/{batch}/items/{i}/output", response_class=FileResponse)
def item_output(request: Request, batch: str, i: int) -> FileResponse:
    """The output file of item i."""
    paths = whole(_ctx(request), batch)
    path, _ = _output_path(paths, i)
    return FileResponse(path, media_type=mimetypes.guess_type(path)[0] or "application/octet-stream")


@router.get("/batches/{batch}/items/{i}/thumbnail", response_class=Response)
def item_thumbnail(request: Request, batch: str, i: int, side: str = Query("output", pattern="^(output|input)$")) -> Response:
    """A small JPEG of item i's output (or of its input: `side=input`), cached in the batch folder."""
    paths = whole(_ctx(request), batch)
    if side == "output":
        path, rec = _output_path(paths, i)
        key = rec.get("sha256") or str(os.stat(path).st_mtime_ns)
    else:
        path = item_source(paths, i)
        if path.startswith(("http://", "https://")) or not os.path.isfile(path):
            raise BatchNotFound(f"the input of item {i} is not a local file")
        st = os.stat(path)
        key = f"{st.st_size}-{st.st_mtime_ns}"
    name = f"{side}-{i}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jpg"
    cached = os.path.join(paths.dir, THUMBS, name)
    if not os.path.exists(cached):
        _make_thumb(paths, path, cached)
    return FileResponse(cached, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _make_thumb(paths: BatchPaths, src: str, dest: str) -> None:
    import cv2

    from batchcli.atomic import atomic_write
    from batchcli.results.contact import limits_of, thumbnail

    img, _ = thumbnail(src, THUMB_BOX, limits_of(paths.load_manifest()))
    if img is None:
        raise NothingToExport(f"no thumbnail: {os.path.basename(src)} does not decode")
    if img.shape[2] == 4:  # RGBA: flatten onto white
        alpha = img[:, :, 3:4].astype("float32") / 255.0
        img = (img[:, :, :3] * alpha + 255 * (1 - alpha)).astype("uint8")
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 82])
    if not ok:
        raise NothingToExport(f"no thumbnail for {os.path.basename(src)}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    atomic_write(dest, buf.tobytes(), durable=False)
