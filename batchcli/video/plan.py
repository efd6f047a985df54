"""What a pipeline asks of a video: transcode it (every frame through the ops, then encoded), or
write stills out of it (`frames`, `thumbnail`); over which time range (`trim`); into which
container and codec (`convert mp4|webm|mov`). Read from the ops' `video_role`, so this package
needs no op class."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from batchcli.errors import ConfigError
from batchcli.video.codecs import DEFAULT_CODEC, DEFAULT_CRF, Target, keep_container

DEFAULT_SEGMENT = 10.0
"""Seconds of video per segment (cut on the next keyframe): the work a pause waits for, and
the most a crash makes a resume redo."""


@dataclass(frozen=True)
class Plan:
    mode: str  # "transcode", "frames" or "thumbnail"
    start: float = 0.0  # trim, seconds from the start of the video
    end: float | None = None
    every: tuple[str, float] = ("time", 1.0)  # frames: ("time", s), ("count", n), ("keyframes", 0)
    at: tuple[str, float] = ("share", 0.1)  # thumbnail: ("share", 0..1) or ("time", s)
    encode: dict | None = None  # the convert op's parameters when it names a video format
    segment: float = DEFAULT_SEGMENT

    def target(self, family: str, src: str) -> Target:
        p = self.encode or {}
        container = p.get("format") or keep_container(family, src)
        codec = p.get("codec") or DEFAULT_CODEC[container]
        crf = p.get("crf", -1)
        fps = p.get("fps") or 0
        return Target(container=container, codec=codec, crf=crf if crf is not None and crf >= 0 else DEFAULT_CRF[codec],
                      speed=p.get("preset") or "medium", fps=Fraction(fps).limit_denominator(1001) if fps else None)


def plan_for(pipeline: Any, segment: float = DEFAULT_SEGMENT) -> Plan:
    """The plan of a pipeline (its ops' `video_role`s). Raises ConfigError for combinations that
    mean nothing (two kinds of stills, stills and an encoded video)."""
    mode, start, end = "transcode", 0.0, None
    every: tuple[str, float] = ("time", 1.0)
    at: tuple[str, float] = ("share", 0.1)
    encode = None
    for op in pipeline.ops:
        role = getattr(op, "video_role", None)
        if role == "trim":
            start, end = op.range()
        elif role in ("frames", "thumbnail"):
            if mode != "transcode":
                raise ConfigError(f"{op.name}: a pipeline takes one of frames and thumbnail, once")
            mode = role
            if role == "frames":
                every = op.selector()
            else:
                at = op.position()
        elif role == "encode":
            encode = op.spec()
    if encode is not None and mode != "transcode":
        raise ConfigError(f"{mode}: writes stills, so convert {encode['format']} has nothing to encode "
                          f"(convert jpg|png|webp chooses the stills' format)")
    return Plan(mode=mode, start=start, end=end, every=every, at=at, encode=encode, segment=segment)


def check_pipeline(pipeline: Any) -> None:
    """Refuse, before any work, a pipeline whose video ops contradict each other."""
    plan_for(pipeline)
