"""Video ops: `trim`, `frames`, `thumbnail`. They choose which part of a video, or which stills,
the pipeline works on; the video runner (batchcli.video) reads them from the pipeline. Every other
op runs on each frame as on a photo. On a photo they change nothing (`--media all` runs one
pipeline over both).

`video_role` tells the video runner what an op is: "trim" (a time range), "frames" (stills out
of the video) or "thumbnail" (one still)."""

from __future__ import annotations

from typing import ClassVar

from batchcli.errors import ConfigError
from batchcli.ops.base import Frame, Op, Param, register
from batchcli.units import parse_time


class _VideoOp(Op):
    video_role: ClassVar[str] = ""
    shrink_safe = True

    def apply(self, frame: Frame) -> Frame:
        return frame


@register
class Trim(_VideoOp):
    name = "trim"
    summary = "Videos: keep only the part from start= to end= (seconds, 1m30s, 00:01:30.5)."
    video_role = "trim"
    params = (
        Param("start", "str", "0", help="where the kept part begins (default: the beginning)"),
        Param("end", "str", "", help="where it ends (default: the end of the video)"),
    )

    def check(self) -> None:
        start, end = self.range()
        if end is not None and end <= start:
            raise ConfigError(f"trim: end {self.p['end']} is not after start {self.p['start']}")

    def range(self) -> tuple[float, float | None]:
        """(start, end) in seconds from the start of the video; end None = to the end."""
        start = parse_time(self.p["start"], "trim: start")
        end = parse_time(self.p["end"], "trim: end") if str(self.p["end"]).strip() else None
        return start, end


@register
class Frames(_VideoOp):
    name = "frames"
    summary = "Videos: write stills (every=2s, every N-th frame, or every=keyframes) as OUT/<video>/<stem>_<HHMMSS.mmm>.<ext>."
    video_role = "frames"
    params = (
        Param("every", "str", "1s", help="a time (2s, 500ms, 1m), a whole number of frames (25), or keyframes"),
    )

    def check(self) -> None:
        self.selector()

    def selector(self) -> tuple[str, float]:
        """("time", seconds), ("count", n) or ("keyframes", 0)."""
        every = str(self.p["every"]).strip().lower()
        if every in ("keyframes", "keyframe", "key"):
            return ("keyframes", 0.0)
        if every.isdigit():
            n = int(every)
            if n < 1:
                raise ConfigError("frames: every must be at least 1 frame")
            return ("count", float(n))
        try:
            float(every)
        except ValueError:
            seconds = parse_time(every, "frames: every")
        else:
            raise ConfigError(f"frames: every={every}: give a unit for a time (every={every}s) or a whole number of frames")
        if seconds <= 0:
            raise ConfigError("frames: every must be longer than 0 s")
        return ("time", seconds)


@register
class Thumbnail(_VideoOp):
    name = "thumbnail"
    summary = "Videos: one still at at=10% of the duration (or at=3s, 00:00:03) as OUT/<video stem>.<ext>."
    video_role = "thumbnail"
    params = (
        Param("at", "str", "10%", help="a share of the duration (10%) or a time (3s, 00:01:05)"),
    )

    def check(self) -> None:
        self.position()

    def position(self) -> tuple[str, float]:
        """("share", 0..1) or ("time", seconds)."""
        at = str(self.p["at"]).strip()
        if at.endswith("%"):
            try:
                share = float(at[:-1])
            except ValueError:
                raise ConfigError(f"thumbnail: at={at}: expected a percentage such as 10%") from None
            if not 0 <= share <= 100:
                raise ConfigError(f"thumbnail: at={at}: a percentage must be between 0% and 100%")
            return ("share", share / 100)
        return ("time", parse_time(at, "thumbnail: at"))
