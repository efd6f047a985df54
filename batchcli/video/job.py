"""One video item from start to finish: check the header, take over the segments a previous run
finished (when their files are intact and were made from this input by this pipeline), do the
rest, and return the item's result (the same shape as a photo's, plus `outputs` for stills and
`meta.video`)."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from typing import Any

from batchcli.errors import ItemError
from batchcli.video.plan import DEFAULT_SEGMENT, plan_for
from batchcli.video.probe import VideoLimits, probe
from batchcli.video.segments import Job, Paused, join, transcode
from batchcli.video.stills import extract_frames, thumbnail

__all__ = ["Paused", "process_video", "usable_segments"]


def usable_segments(records: list[dict], job: Job) -> list[dict]:
    """The leading run of finished segments a resume can build on: numbered 0, 1, 2, ... made
    by this pipeline from this version of the input, with their files (or stills) intact."""
    out: list[dict] = []
    for k, rec in enumerate(records):
        if rec.get("seg") != k or rec.get("fp") != job.fingerprint or rec.get("src_stat") != job.src_stat:
            break
        files = [(rec["file"], rec["bytes"])] if "file" in rec else [(s["out"], s["bytes"]) for s in rec.get("stills", ())]
        if not all(_size(os.path.join(job.out_dir, f)) == n for f, n in files):
            break
        out.append(rec)
    return out


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def process_video(item: dict[str, Any], pipeline: Any, out_dir: str | None, limits: VideoLimits, *,
                  segment: float = DEFAULT_SEGMENT, report: Callable[[dict], None] = lambda rec: None,
                  stop: Callable[[], bool] = lambda: False, threads: int = 0,
                  progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, Any]:
    """Process a video item; returns its result fields (out, bytes, sha256, meta, ...). Raises
    ItemError for a bad file or op or a failed write (a full disk as `disk_full`, which pauses
    the batch), Paused when a stop was asked for between segments."""
    try:
        return _process(item, pipeline, out_dir, limits, segment, report, stop, threads, progress)
    except OSError as exc:  # writing segments or the output (PyAV's errors from FFmpeg are OSErrors too)
        if exc.errno == errno.ENOSPC:
            raise ItemError("disk_full", f"no space left writing the video's output in {out_dir}") from None
        raise ItemError("io", f"cannot write the video's output: {exc.strerror or exc}") from None


def _process(item: dict[str, Any], pipeline: Any, out_dir: str | None, limits: VideoLimits, segment: float,
             report: Callable[[dict], None], stop: Callable[[], bool], threads: int,
             progress: Callable[[int, int], None]) -> dict[str, Any]:
    src = item["src"]
    info = probe(src, limits)
    if out_dir is None:
        raise ItemError("unsupported", "a video needs an output: this pipeline writes no image")
    plan = plan_for(pipeline, segment)
    st = os.stat(src)
    job = Job(src=src, info=info, plan=plan, pipeline=pipeline, out_dir=out_dir, stem=item["stem"],
              fingerprint=pipeline.fingerprint(), src_stat=[st.st_size, st.st_mtime],
              report=report, stop=stop, threads=threads, progress=progress)
    job.done = usable_segments(list(item.get("segments") or ()), job)
    reused = len(job.done)
    meta: dict[str, Any] = {"source": info.describe()}
    if plan.mode == "thumbnail":
        res = thumbnail(job)
        meta["at"] = res.pop("t")
    elif plan.mode == "frames":
        records = extract_frames(job)
        outputs = [s for rec in records for s in rec["stills"]]
        res = {k: outputs[0][k] for k in ("out", "bytes", "sha256")}
        res["outputs"] = outputs
        meta.update(stills=len(outputs), segments=len(records), segments_reused=reused)
    else:
        target = plan.target(info.container, src)
        records = transcode(job, target)
        dest = os.path.join(out_dir, f"{item['stem']}.{target.ext}")
        size, digest, audio = join(job, target, records, dest)
        shutil.rmtree(job.seg_dir, ignore_errors=True)
        res = {"out": os.path.relpath(dest, out_dir), "bytes": size, "sha256": digest}
        w, h = records[0]["size"]
        meta.update(container=target.container, codec=target.codec, width=w, height=h,
                    frames=records[-1]["done"], audio=audio, segments=len(records), segments_reused=reused)
    res["meta"] = {"video": meta}
    return res
