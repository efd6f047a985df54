"""Short clips made with PyAV for the video tests: a moving bar over a frame-numbered background
(so every frame differs) and a 440 Hz sine tone; a keyframe every `gop` frames."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

av = pytest.importorskip("av")
np = pytest.importorskip("numpy")

CODECS = {".mp4": ("libx264", "aac"), ".mov": ("libx264", "aac"), ".m4v": ("libx264", "aac"),
          ".mkv": ("libx264", "aac"), ".webm": ("libvpx-vp9", "libopus"), ".avi": ("mpeg4", "libmp3lame")}


def make_clip(path: Path, seconds: float = 3.0, fps: int = 12, size: tuple[int, int] = (96, 64), gop: int = 12,
              audio: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    vcodec, acodec = CODECS[path.suffix]
    w, h = size
    with av.open(str(path), "w") as c:
        vs = c.add_stream(vcodec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.gop_size = gop
        if vcodec == "libx264":
            vs.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "ultrafast"}
        elif vcodec == "libvpx-vp9":
            vs.options = {"g": str(gop), "keyint_min": str(gop), "deadline": "realtime", "cpu-used": "8"}
        a = c.add_stream(acodec, rate=48000) if audio else None
        if a is not None:
            a.layout = "stereo"
        n = round(seconds * fps)
        for k in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 1] = (k * 7) % 256
            x = (k * 3) % w
            img[:, x:x + 8] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = k
            frame.time_base = Fraction(1, fps)
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if a is not None:
            rate, t, total = 48000, 0, int(seconds * 48000)
            step = a.codec_context.frame_size or 1024
            while t < total:
                m = min(step, total - t)
                tone = (np.sin(2 * np.pi * 440 * np.arange(t, t + m) / rate) * 0.3).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = rate, t
                for p in a.encode(frame):
                    c.mux(p)
                t += m
            for p in a.encode():
                c.mux(p)
    return path


def video_facts(path: Path) -> dict:
    """What a player would see: size, decoded frame count, timestamps (s), duration, audio."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        times = [float(f.pts * f.time_base) for f in c.decode(vs)]
        duration = c.duration / 1e6 if c.duration else None
        audio = c.streams.audio[0].codec_context.codec.canonical_name if c.streams.audio else None
        return {"width": vs.codec_context.width, "height": vs.codec_context.height, "frames": len(times),
                "times": times, "duration": duration, "audio": audio, "codec": vs.codec_context.name}


def audio_seconds(path: Path) -> float:
    """Seconds of audio that decode from the file's first audio stream."""
    with av.open(str(path)) as c:
        a = c.streams.audio[0]
        return sum(f.samples for f in c.decode(a)) / a.codec_context.sample_rate
