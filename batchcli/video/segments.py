"""The segmented transcode: decode, run the ops on every frame, encode; one segment at a time.

A segment starts on a keyframe of the source (the first after `plan.segment` seconds), so a
resume seeks straight to where the last finished segment ended and decodes nothing twice. Each
segment is encoded into its own file (timestamps from 0), written under a temp name, fsynced and
renamed, and only then reported: `report(record)` (the runner journals it as
`segment_completed`). The final output is joined from the segments by copying their packets,
offset back to their place, with the source's audio copied (or re-encoded when the container
does not take its codec) in one continuous pass; it is written atomically like every output.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from batchcli.atomic import fsync_dir, tmp_name
from batchcli.errors import ItemError
from batchcli.imaging.frame import Frame
from batchcli.imaging.lazy import cv2, np
from batchcli.imaging.pixels import to_uint8
from batchcli.video.codecs import Target, add_audio_encoder, add_video_stream
from batchcli.video.plan import Plan
from batchcli.video.probe import VideoInfo, open_input


class Paused(Exception):
    """A pause (or stop) was asked for between two segments: the item is left unfinished."""


@dataclass
class Job:
    """One video item as the segment code sees it."""

    src: str
    info: VideoInfo
    plan: Plan
    pipeline: Any  # has run_batch(list[Frame]) -> list[Frame | Exception] and batch_size
    out_dir: str
    stem: str  # the output path below out_dir, without extension
    fingerprint: str  # of the pipeline: segments made by another pipeline are not reused
    src_stat: list  # [size, mtime] of the input: segments of another version are not reused
    report: Callable[[dict], None] = lambda rec: None
    stop: Callable[[], bool] = lambda: False
    progress: Callable[[int, int], None] = lambda done, total: None  # frames done, total: often, cheap
    threads: int = 0  # FFmpeg threads for decoding and encoding (0: as many as it likes)
    done: list[dict] = field(default_factory=list)  # segment records already finished (resume)

    @property
    def seg_dir(self) -> str:
        head, tail = os.path.split(os.path.join(self.out_dir, self.stem))
        return os.path.join(head, f".{tail}.batchcli-segments")

    def base(self, rec: dict) -> dict:
        """The fields every segment record carries."""
        return {"fp": self.fingerprint, "src_stat": self.src_stat, **rec}


def durable_rename(tmp: str, final: str) -> int:
    """fsync `tmp`, rename it to `final`, fsync the folder. Returns its size."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(final))
    return size


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def to_bgr(img: Any) -> Any:
    """Any pipeline result as 8-bit BGR (the encoders take no alpha, gray or 16 bits)."""
    img = to_uint8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, :3])
    return img


_TURNS = {90: "ROTATE_90_COUNTERCLOCKWISE", 180: "ROTATE_180", 270: "ROTATE_90_CLOCKWISE"}


def upright(frame: Any) -> Any:
    """A decoded frame's pixels (BGR), turned as its display matrix says (phones record
    portrait video as landscape pixels plus a rotation): outputs carry no rotation, they show
    upright everywhere."""
    img = frame.to_ndarray(format="bgr24")
    turn = _TURNS.get(round(getattr(frame, "rotation", 0) or 0) % 360)
    return cv2.rotate(img, getattr(cv2, turn)) if turn else img


def run_ops(job: Job, images: list[Any], pipeline: Any = None) -> list[Frame]:
    """The pipeline (the job's, or the part of it left to run) over decoded frames (BGR
    arrays), as one micro-batch; an op that fails on a frame fails the video."""
    frames = [Frame(img=img, src=job.src, fmt="video", src_size=(img.shape[1], img.shape[0])) for img in images]
    out = []
    for res in (pipeline or job.pipeline).run_batch(frames):
        if isinstance(res, BaseException):
            if isinstance(res, ItemError):
                raise res
            raise ItemError("op", f"on a frame: {type(res).__name__}: {res}") from res
        out.append(res)
    return out


class Pixels:
    """How decoded frames become the encoder's input, decided on the first frame. A leading
    `resize` (without a crop) is done by FFmpeg's scaler in the same pass as the colour
    conversion, as a JPEG is shrunk on load; when no other op is left and the frame needs no
    turning, frames stay YUV from decoder to encoder (a plain transcode converts nothing)."""

    def __init__(self, job: Job, frame: Any):
        turn = _TURNS.get(round(getattr(frame, "rotation", 0) or 0) % 360)
        self.turn = getattr(cv2, turn) if turn else None
        sideways = turn is not None and turn != "ROTATE_180"
        w, h = (frame.height, frame.width) if sideways else (frame.width, frame.height)
        ops = [op for op in job.pipeline.ops if not getattr(op, "video_role", None)]
        self.scale: tuple[int, int] | None = None  # (width, height) as stored
        if ops and ops[0].name == "resize" and hasattr(ops[0], "plan"):
            size, crop = ops[0].plan(w, h)
            if crop is None:
                ops = ops[1:]
                self.scale = (size[1], size[0]) if sideways else size
        self.rest = type(job.pipeline)(ops) if ops else None
        self.yuv = self.rest is None and self.turn is None
        if self.yuv and self.scale:
            self.scale = (max(2, self.scale[0] - self.scale[0] % 2), max(2, self.scale[1] - self.scale[1] % 2))

    def _size(self) -> dict:
        return {"width": self.scale[0], "height": self.scale[1], "interpolation": "AREA"} if self.scale else {}

    def yuv_frame(self, frame: Any) -> Any:
        return frame.reformat(format="yuv420p", **self._size())

    def bgr(self, frame: Any) -> Any:
        img = frame.to_ndarray(format="bgr24", **self._size())
        return cv2.rotate(img, self.turn) if self.turn is not None else img


class _Segment:
    """One segment being encoded into a temp file beside its final name."""

    def __init__(self, job: Job, target: Target, k: int, start: int, offset: int, tb: Fraction, rate: Fraction,
                 size: tuple[int, int] | None):
        import av

        os.makedirs(job.seg_dir, exist_ok=True)
        self.job, self.target, self.k, self.start, self.offset, self.tb = job, target, k, start, offset, tb
        self.rate, self.size = rate, size
        self.final = os.path.join(job.seg_dir, f"{k:05d}.{target.ext}")
        self.tmp = tmp_name(self.final)
        self.out = av.open(self.tmp, "w", format=target.muxer)
        self.stream: Any = None
        self.frames = 0

    def add(self, img: Any, rel_pts: int) -> None:
        """Encode a picture (any array a pipeline gives) at `rel_pts`."""
        import av

        img = to_bgr(img)
        if self.size is None:  # the first frame of the video fixes the size (even, for 4:2:0)
            h, w = img.shape[:2]
            self.size = (max(2, w - w % 2), max(2, h - h % 2))
        w, h = self.size
        if img.shape[1] != w or img.shape[0] != h:
            img = img[:h, :w] if img.shape[1] >= w and img.shape[0] >= h else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        self.add_frame(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24"), rel_pts)

    def add_frame(self, vf: Any, rel_pts: int) -> None:
        """Encode a VideoFrame (its size fixed by the first one) at `rel_pts`."""
        if self.size is None:
            self.size = (vf.width, vf.height)
        if self.stream is None:
            self.stream = add_video_stream(self.out, self.target, *self.size, self.rate, self.tb, self.job.threads)
        vf.pts, vf.time_base = rel_pts, self.tb
        for pkt in self.stream.encode(vf):
            self.out.mux(pkt)
        self.frames += 1

    def finish(self, end: int, done_before: int, total: int) -> dict:
        try:
            if self.stream is not None:
                for pkt in self.stream.encode():
                    self.out.mux(pkt)
            self.out.close()
        except BaseException:
            self.abort()
            raise
        size = durable_rename(self.tmp, self.final)
        return self.job.base({
            "seg": self.k, "start": self.start, "end": end, "offset": self.offset, "tb": str(self.tb),
            "frames": self.frames, "done": done_before + self.frames, "total": total,
            "file": os.path.relpath(self.final, self.job.out_dir), "bytes": size, "size": list(self.size or (0, 0)),
        })

    def abort(self) -> None:
        try:
            self.out.close()
        except Exception:
            pass
        _unlink(self.tmp)


class _Timing:
    """Source timestamps -> output slots. Without `fps=`, each source frame is one output frame
    at its own timestamp; with it, frame j of the output shows the source frame on screen at
    j/fps (frames repeated or dropped)."""

    def __init__(self, info: VideoInfo, target: Target, origin: int):
        self.tb, self.origin, self.fps = info.time_base, origin, target.fps
        self.out_tb = Fraction(1) / self.fps if self.fps else self.tb

    def seconds(self, pts: int) -> Fraction:
        return (pts - self.origin) * self.tb

    def first_slot(self, pts: int) -> int:
        """The first output slot at or after source time `pts` (fps mode)."""
        return math.ceil(self.seconds(pts) * self.fps)

    def offset(self, start: int) -> int:
        """Where a segment starting at source `start` sits in the output, in out_tb units."""
        return self.first_slot(start) if self.fps else start - self.origin


def exact(seconds: float) -> Fraction:
    """2.7 -> 27/10 (not the binary float's 6079859496950170/2251799813685248)."""
    return Fraction(str(seconds))


def bounds(job: Job) -> tuple[int, int | None]:
    """The kept range in source timestamps: (origin, end or None)."""
    info, plan = job.info, job.plan
    origin = info.start_pts + math.ceil(exact(plan.start) / info.time_base)
    end = info.start_pts + math.ceil(exact(plan.end) / info.time_base) if plan.end is not None else None
    return origin, end


def open_video(job: Job, at: int) -> tuple[Any, Any]:
    """The source opened for decoding (FFmpeg's own threads), positioned at the keyframe at or
    before timestamp `at`."""
    c = open_input(job.src)
    vs = c.streams.video[0]
    vs.thread_type = "AUTO"
    vs.thread_count = job.threads
    if at > job.info.start_pts:
        c.seek(at, stream=vs, backward=True, any_frame=False)
    return c, vs


def transcode(job: Job, target: Target) -> list[dict]:
    """Encode every segment not yet done; returns all the segment records, in order. Raises
    Paused when a stop was asked for between segments, ItemError on a bad file or op."""
    info, plan = job.info, job.plan
    tb = info.time_base
    origin, end_pts = bounds(job)
    seg_len = max(1, round(exact(plan.segment) / tb))
    timing = _Timing(info, target, origin)
    end_slot = math.ceil((exact(plan.end) - exact(plan.start)) * target.fps) if plan.end is not None and target.fps else None
    span = (plan.end if plan.end is not None else info.duration) - plan.start
    total = max(1, round(span * float(target.fps or info.rate)))
    done = job.done
    resume = done[-1]["end"] if done else origin
    size = tuple(done[0]["size"]) if done else None
    counted = done[-1]["done"] if done else 0
    seg: _Segment | None = None
    held: tuple[int, Any] | None = None  # fps mode: the frame on screen until the next one
    batch: list[tuple[int, Any]] = []  # decoded frames waiting for the ops (micro-batches)
    group = max(1, int(getattr(job.pipeline, "batch_size", 1)))
    px: Pixels | None = None
    rate = target.fps or info.rate

    def new_segment(start: int) -> _Segment:
        return _Segment(job, target, len(done), start, timing.offset(start), timing.out_tb, rate, size)

    def flush_ops() -> None:
        nonlocal batch, px
        if not batch:
            return
        px = px or Pixels(job, batch[0][1])
        if px.yuv:
            pictures = [px.yuv_frame(f) for _, f in batch]
        else:
            images = [px.bgr(f) for _, f in batch]
            pictures = [res.img for res in run_ops(job, images, px.rest)] if px.rest is not None else images
        for (rel, _), pic in zip(batch, pictures):
            for r in ([rel] if isinstance(rel, int) else rel):
                (seg.add_frame if px.yuv else seg.add)(pic, r)
        batch = []
        job.progress(counted + seg.frames, total)

    def emit(frame: Any, pts: int, next_pts: int | None) -> None:
        """Queue a source frame for the segment: once, or (fps mode) for every slot it covers."""
        if not timing.fps:
            batch.append((pts - seg.start, frame))
        else:
            first = max(timing.first_slot(pts), seg.offset)
            last = timing.first_slot(next_pts) if next_pts is not None else \
                math.ceil((timing.seconds(pts) + 1 / info.rate) * timing.fps)
            if end_slot is not None:
                last = min(last, end_slot)
            slots = [j - seg.offset for j in range(first, last)]
            if slots:
                batch.append((slots, frame))
        if len(batch) >= group:
            flush_ops()

    def close(end: int) -> None:
        nonlocal seg, size, counted
        flush_ops()
        rec = seg.finish(end, counted, total)
        size, counted = tuple(rec["size"]), rec["done"]
        done.append(rec)
        seg = None
        job.report(rec)

    try:
        c, vs = open_video(job, resume)
        with c:
            last_pts = None
            start = resume  # where the next segment starts: here, then on each cut
            for frame in decode(c, vs):
                pts = frame.pts if frame.pts is not None else (last_pts + 1 if last_pts is not None else resume)
                if pts < resume or (last_pts is not None and pts <= last_pts):
                    continue
                if end_pts is not None and pts >= end_pts:
                    break
                if seg is not None and frame.key_frame and pts >= seg.start + seg_len:
                    if held is not None:
                        emit(held[1], held[0], pts)
                        held = None
                    close(pts)
                    if job.stop():
                        raise Paused()
                    start = pts
                if seg is None:
                    seg = new_segment(start)
                if timing.fps:
                    if held is not None:
                        emit(held[1], held[0], pts)
                    held = (pts, frame)
                else:
                    emit(frame, pts, None)
                last_pts = pts
            if seg is not None:
                if held is not None:
                    emit(held[1], held[0], None)
                close(end_pts if end_pts is not None else (last_pts or resume) + 1)
    except BaseException:
        if seg is not None:
            seg.abort()
        raise
    if not done:
        raise ItemError("decode", "no frames in the chosen range" if plan.start or plan.end else "no decodable frames")
    return done


def decode(c: Any, vs: Any) -> Iterator[Any]:
    """Decoded frames; a stream that breaks off mid-way fails the item as truncated or corrupt."""
    import av

    try:
        yield from c.decode(vs)
    except av.error.EOFError:
        return
    except av.error.FFmpegError as exc:
        raise ItemError("decode", f"corrupt video data: {exc.strerror or exc}") from None


# --- the join -----------------------------------------------------------------------------------

def join(job: Job, target: Target, segments: list[dict], dest: str) -> tuple[int, str, str | None]:
    """Write `dest` (atomically) from the segments' packets and the source's audio. Returns
    (bytes, sha256, audio: "copy", the encoder's name, or None)."""
    import av

    tmp = tmp_name(dest)
    options = {"movflags": "+faststart"} if target.muxer in ("mp4", "mov") else {}
    audio_mode = target.audio_mode(job.info.audio)
    try:
        with av.open(tmp, "w", format=target.muxer, options=options) as out:
            first = av.open(os.path.join(job.out_dir, segments[0]["file"]))
            # opaque: the segments' packets are copied, so no encoder is needed, and the codec
            # PyAV would look one up by is the decoder's (libdav1d for AV1, which encodes nothing)
            ov = out.add_stream_from_template(first.streams.video[0], opaque=True)
            first.close()
            src = open_input(job.src) if audio_mode else None
            try:
                audio = _audio_packets(job, target, src, out, audio_mode) if src is not None else iter(())
                video = _video_packets(job, segments, ov)
                for pkt in _merge(video, audio):
                    out.mux(pkt)
            finally:
                if src is not None:
                    src.close()
        size = durable_rename(tmp, dest)
    except BaseException:
        _unlink(tmp)
        raise
    return size, file_sha256(dest), audio_mode


def _video_packets(job: Job, segments: list[dict], stream: Any) -> Iterator[Any]:
    import av

    last = None
    for rec in segments:
        with av.open(os.path.join(job.out_dir, rec["file"])) as c:
            shift = None
            for pkt in c.demux(c.streams.video[0]):
                if pkt.dts is None:
                    continue
                if shift is None:
                    shift = int(Fraction(rec["offset"]) * Fraction(rec["tb"]) / pkt.time_base)
                pkt.pts += shift
                pkt.dts += shift
                if last is not None and pkt.dts <= last:
                    continue
                last = pkt.dts
                pkt.stream = stream
                yield pkt


def _audio_packets(job: Job, target: Target, src: Any, out: Any, mode: str) -> Iterator[Any]:
    """The source's audio over the kept range, rebased to the output's start: packets copied,
    or decoded and encoded again in one pass."""
    info, plan = job.info, job.plan
    ast = src.streams.audio[0]
    origin = info.start_pts * info.time_base + Fraction(plan.start)
    end = info.start_pts * info.time_base + Fraction(plan.end) if plan.end is not None else None
    atb = ast.time_base
    shift = round(origin / atb)
    if mode == "copy":
        oa = out.add_stream_from_template(ast)
        if atb.numerator != 1 and ast.codec_context.sample_rate:  # AVI's 1152/48000 s ticks: mp4 wants 1/N
            oa.time_base = Fraction(1, ast.codec_context.sample_rate)
    else:
        oa = add_audio_encoder(out, target.container, ast.layout.name)
        encoder = _AudioEncoder(oa, shift)
    if plan.start:
        src.seek(max(0, int(origin / atb) - int(1 / atb)), stream=ast, backward=True)
    last = None
    for pkt in src.demux(ast):
        if pkt.pts is None:
            continue
        t = pkt.pts * atb
        if end is not None and t >= end:
            break
        if plan.start and t < origin:
            continue
        if mode == "copy":
            pkt.pts -= shift
            pkt.dts = (pkt.dts - shift) if pkt.dts is not None else pkt.pts
            if last is not None and pkt.dts <= last:
                continue
            last = pkt.dts
            pkt.stream = oa
            yield pkt
        else:
            for frame in pkt.decode():
                yield from encoder.encode(frame)
    if mode != "copy":
        yield from encoder.encode(None)


class _AudioEncoder:
    """Decoded audio -> the encoder's sample format and frame size, timestamped by the samples
    counted from the first frame's place (so frames of 1152 samples in, 1024 out, stay exact)."""

    def __init__(self, stream: Any, shift: int):
        import av

        self.stream, self.shift = stream, shift
        cc = stream.codec_context
        self.size = cc.frame_size or 1024
        self.resampler = av.AudioResampler(format=cc.format.name, layout=cc.layout.name, rate=cc.sample_rate)
        self.fifo = av.AudioFifo()
        self.rate = cc.sample_rate
        self.next: int | None = None

    def encode(self, frame: Any) -> Iterator[Any]:
        if frame is not None and self.next is None:
            t = (frame.pts - self.shift) * frame.time_base if frame.pts is not None else 0
            self.next = round(t * self.rate)
        for part in self.resampler.resample(frame):
            part.pts = None
            self.fifo.write(part)
        while self.fifo.samples >= self.size or (frame is None and self.fifo.samples):
            chunk = self.fifo.read(min(self.size, self.fifo.samples))
            chunk.pts, chunk.time_base = self.next or 0, Fraction(1, self.rate)
            self.next = (self.next or 0) + chunk.samples
            yield from self.stream.encode(chunk)
        if frame is None:
            yield from self.stream.encode(None)


def _merge(video: Iterator[Any], audio: Iterator[Any]) -> Iterator[Any]:
    """Interleave two packet streams by decoding time, so the muxer never buffers a whole stream."""
    def key(pkt: Any) -> float:
        t = pkt.dts if pkt.dts is not None else pkt.pts
        return float(t * pkt.time_base) if t is not None else 0.0

    v, a = next(video, None), next(audio, None)
    while v is not None or a is not None:
        if a is None or (v is not None and key(v) <= key(a)):
            yield v
            v = next(video, None)
        else:
            yield a
            a = next(audio, None)
