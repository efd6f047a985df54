"""Stills out of a video: `frames every=2s|N|keyframes` (many outputs per item) and
`thumbnail at=10%` (one).

Stills are named by their timestamp in the video, `<stem>_<HHMMSS.mmm>.<ext>`, in a folder named
after the video (`OUT/<rel-without-ext>/`). Each is written atomically as it is found; they are
reported in segments like a transcode (`plan.segment` seconds, cut on keyframes), so a resume
starts after the last segment whose stills are all on disk.
"""

from __future__ import annotations

import hashlib
import math
import os
from fractions import Fraction
from typing import Any

from batchcli.errors import ItemError
from batchcli.imaging.encode import encode_to, write
from batchcli.video.segments import Job, Paused, bounds, decode, open_video, run_ops, upright


def clock(seconds: float) -> str:
    """3723.25 -> '010203.250' (HHMMSS.mmm)."""
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}{m:02d}{s:02d}.{ms:03d}"


def _save(job: Job, frame: Any, dest_stem: str, t: float) -> dict:
    if frame.out_format is None:
        frame.out_format = "jpg"
    path, data = encode_to(frame, dest_stem)
    write(path, data)
    return {"out": os.path.relpath(path, job.out_dir), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "t": round(t, 3)}


class _Picker:
    """Which decoded frames become stills."""

    def __init__(self, job: Job, origin: int, index: int):
        self.kind, self.every = job.plan.every
        self.tb, self.origin = job.info.time_base, origin
        self.half = Fraction(1, 2) / job.info.rate  # a frame at 1.98 s is the still for 2 s at 25 fps
        self.index = index  # frames of the range decoded before this one
        self.next = None  # time mode: the next wanted time, in seconds from the origin

    def __call__(self, pts: int, key: bool) -> bool:
        i = self.index
        self.index += 1
        if self.kind == "keyframes":
            return key
        if self.kind == "count":
            return i % int(self.every) == 0
        t = (pts - self.origin) * self.tb
        every = Fraction(self.every).limit_denominator(1000)
        if self.next is None:
            self.next = math.ceil((t - self.half) / every) * every if t > self.half else Fraction(0)
        if t + self.half < self.next:
            return False
        self.next = (math.floor((t + self.half) / every) + 1) * every
        return True

    def far(self, pts: int) -> bool:
        """Time mode: whether the next wanted still is far enough ahead (more than 0.5 s, and
        more than 8 frames: the decoder's threads run a few frames ahead) that frames no other
        frame refers to need not be decoded at all."""
        if self.kind != "time" or self.next is None:
            return False
        return (pts - self.origin) * self.tb < self.next - max(Fraction(1, 2), 16 * self.half)


def extract_frames(job: Job) -> list[dict]:
    """Write the stills of every segment not yet done; returns all the segment records."""
    info, plan = job.info, job.plan
    origin, end_pts = bounds(job)
    seg_len = max(1, round(Fraction(plan.segment) / info.time_base))
    done = job.done
    resume = done[-1]["end"] if done else origin
    pick = _Picker(job, origin, done[-1].get("index", done[-1]["done"]) if done else 0)
    total = max(1, round(((plan.end if plan.end is not None else info.duration) - plan.start) * float(info.rate)))
    folder = os.path.join(job.out_dir, job.stem)
    name = os.path.basename(job.stem)
    stills: list[dict] = []
    start, frames = resume, 0

    def close(end: int) -> None:
        nonlocal stills, frames
        reached = min(total, round((end - origin) * info.time_base * info.rate))  # frames skipped undecoded count too
        rec = job.base({"seg": len(done), "start": start, "end": end, "frames": frames, "index": pick.index,
                        "done": reached, "total": total, "stills": stills})
        done.append(rec)
        job.report(rec)
        stills, frames = [], 0

    c, vs = open_video(job, resume)
    with c:
        cc = vs.codec_context
        if plan.every[0] == "keyframes":
            cc.skip_frame = "NONKEY"
        last, skipping = None, False
        for frame in decode(c, vs):
            pts = frame.pts if frame.pts is not None else (last + 1 if last is not None else resume)
            if pts < resume or (last is not None and pts <= last):
                continue
            if end_pts is not None and pts >= end_pts:
                break
            if frame.key_frame and pts >= start + seg_len and last is not None:
                close(pts)
                if job.stop():
                    raise Paused()
                start = pts
            last = pts
            frames += 1
            job.progress(min(total, round((pts - origin) * info.time_base * info.rate)), total)
            picked = pick(pts, bool(frame.key_frame))
            if pick.far(pts) != skipping:
                skipping = not skipping
                cc.skip_frame = "NONREF" if skipping else "DEFAULT"
            if not picked:
                continue
            t = float((pts - info.start_pts) * info.time_base)
            res = run_ops(job, [upright(frame)])[0]
            stills.append(_save(job, res, os.path.join(folder, f"{name}_{clock(t)}"), t))
        if last is not None or not done:
            close(end_pts if end_pts is not None else (last if last is not None else resume) + 1)
    if not any(rec["stills"] for rec in done):
        raise ItemError("decode", "no frames in the chosen range" if plan.start or plan.end else "no decodable frames")
    return done


def thumbnail(job: Job) -> dict:
    """One still at the plan's position (the last frame when the position is past the end)."""
    info, plan = job.info, job.plan
    origin, end_pts = bounds(job)
    kind, value = plan.at
    span = (plan.end if plan.end is not None else info.duration) - plan.start
    at = value * span if kind == "share" else value
    want = origin + round(Fraction(at).limit_denominator(10**6) / info.time_base)
    half = Fraction(1, 2) / info.rate / info.time_base
    chosen = None
    c, vs = open_video(job, want)
    with c:
        for frame in decode(c, vs):
            if frame.pts is None or frame.pts < origin:
                continue
            if end_pts is not None and frame.pts >= end_pts:
                break
            chosen = frame
            if frame.pts + half >= want:
                break
    if chosen is None:
        raise ItemError("decode", "no decodable frame at or before the thumbnail's position")
    t = float((chosen.pts - info.start_pts) * info.time_base)
    res = run_ops(job, [upright(chosen)])[0]
    return _save(job, res, os.path.join(job.out_dir, job.stem), t)


def sample_frames(path: str, n: int = 4) -> list[Any]:
    """Up to `n` frames (BGR) spread evenly over a video, for a strip on a contact sheet; []
    when it cannot be read."""
    from batchcli.video.probe import open_input, probe

    try:
        info = probe(path)
        out = []
        with open_input(path) as c:
            vs = c.streams.video[0]
            for k in range(n):
                want = info.start_pts + round(Fraction(info.duration * (2 * k + 1) / (2 * n)).limit_denominator(10**6)
                                              / info.time_base)
                c.seek(want, stream=vs, backward=True, any_frame=False)
                got = None
                for frame in c.decode(vs):
                    got = frame
                    if frame.pts is None or frame.pts >= want:
                        break
                if got is not None:
                    out.append(upright(got))
        return out
    except Exception:
        return []
