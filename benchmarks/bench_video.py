"""Videos beside Debian's ffmpeg, in one run, on a generated clip (1080p, 60 s, 25 fps, a textured
moving pattern with a sine tone; a keyframe every 2 s):

1. `resize 1280x720 | convert mp4 crf=23` against `ffmpeg -i in.mp4 -vf scale=1280:-2 -c:v libx264
   -crf 23 -c:a copy` (throughput ratio, frames per second)
2. `frames every=1s` against `ffmpeg -i in.mp4 -vf fps=1 out_%04d.jpg`
3. a `kill -9` of the runner half-way through (1.), then `recover` and `resume`: the frames done
   again, against one segment's worth

    python benchmarks/bench_video.py [--seconds 60] [--size 1920x1080] [--work /tmp/bench-video]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FPS = 25


def make_clip(path: Path, seconds: int, width: int, height: int) -> None:
    import av
    import numpy as np

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 48, (height, width), dtype=np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    checks = ((xx // 40 + yy // 40) % 2 * 90).astype(np.uint8)
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as c:
        vs = c.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "crf": "20", "g": str(2 * FPS)})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        a = c.add_stream("aac", rate=48000)
        a.layout = "stereo"
        t = 0
        for k in range(seconds * FPS):
            img = np.empty((height, width, 3), np.uint8)
            img[:, :, 0] = np.roll(checks, k * 6, axis=1) + texture
            img[:, :, 1] = np.roll(texture, k * 2, axis=0) + 70
            img[:, :, 2] = ((xx + k * 4) % 256).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts, frame.time_base = k, Fraction(1, FPS)
            for p in vs.encode(frame):
                c.mux(p)
            while t < (k + 1) * 48000 // FPS:
                tone = (np.sin(2 * np.pi * 440 * np.arange(t, t + 1024) / 48000) * 0.3).astype(np.float32)
                af = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                af.sample_rate, af.pts = 48000, t
                for p in a.encode(af):
                    c.mux(p)
                t += 1024
        for s in (vs, a):
            for p in s.encode():
                c.mux(p)
    tmp.rename(path)


def frames_of(path: Path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.demux(c.streams.video[0]) if _.size)


CPU: dict[str, float] = {}
"""CPU seconds (user + system) of the last command timed, its workers included."""


def timed(cmd: list[str], env: dict | None = None) -> float:
    """Wall seconds of a command; its CPU seconds go to CPU["last"]. On a loaded machine the
    CPU time is the steadier figure: other users' work stretches the wall time, not it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["last"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return wall


def batchcli(home: Path, *args: object) -> list[str]:
    return [sys.executable, "-m", "batchcli", *map(str, args), "--home", str(home)]


def segments(journal: Path) -> list[dict]:
    out = []
    for line in journal.read_text().splitlines():
        if '"segment_completed"' in line:
            out.append(json.loads(line))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--work", default="/tmp/bench-video")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    clip = work / f"in_{args.size}_{args.seconds}s/clip.mp4"
    if not clip.exists():
        clip.parent.mkdir(exist_ok=True)
        t = time.perf_counter()
        make_clip(clip, args.seconds, width, height)
        print(f"made {clip.name} in {time.perf_counter() - t:.0f} s")
    total = frames_of(clip)
    load = os.getloadavg()[0]
    print(f"clip: {args.size}, {args.seconds} s, {total} frames, {clip.stat().st_size >> 20} MiB; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    rows = []

    # 1. transcode
    for d in ("ff", "home1", "out1"):
        shutil.rmtree(work / d, ignore_errors=True)
    (work / "ff").mkdir()
    ff = timed(["ffmpeg", "-v", "error", "-y", "-i", clip, "-vf", "scale=1280:-2", "-c:v", "libx264", "-crf", "23",
                "-c:a", "copy", work / "ff/out.mp4"])
    ff_cpu = CPU["last"]
    ours = timed(batchcli(work / "home1", "start", clip.parent, "--out", work / "out1", "--media", "video", "-w", "1",
                          "--quiet", "--min-free-space", "0", "--pipeline", "resize 1280x720 | convert mp4 crf=23"))
    assert frames_of(work / "out1" / clip.name) == frames_of(work / "ff/out.mp4") == total
    rows.append(("resize 1280x720 | convert mp4 crf=23", f"{total / ours:.1f} fps, {CPU['last']:.0f} s CPU",
                 f"{total / ff:.1f} fps, {ff_cpu:.0f} s CPU", f"{ff / ours:.2f}x wall, {ff_cpu / CPU['last']:.2f}x CPU"))
    print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)

    # 2. stills
    for d in ("ff_frames", "home2", "out2"):
        shutil.rmtree(work / d, ignore_errors=True)
    (work / "ff_frames").mkdir()
    ff2 = timed(["ffmpeg", "-v", "error", "-y", "-i", clip, "-vf", "fps=1", "-q:v", "3", work / "ff_frames/out_%04d.jpg"])
    ff2_cpu = CPU["last"]
    ours2 = timed(batchcli(work / "home2", "start", clip.parent, "--out", work / "out2", "--media", "video", "-w", "1",
                           "--quiet", "--min-free-space", "0", "--pipeline", "frames every=1s | convert jpg quality=90"))
    stills = len(list((work / "out2" / clip.stem).iterdir()))
    rows.append((f"frames every=1s ({stills} stills; ffmpeg {len(list((work / 'ff_frames').iterdir()))})",
                 f"{total / ours2:.1f} fps, {CPU['last']:.0f} s CPU", f"{total / ff2:.1f} fps, {ff2_cpu:.0f} s CPU",
                 f"{ff2 / ours2:.2f}x wall, {ff2_cpu / CPU['last']:.2f}x CPU"))
    print(rows[-1], f"load {os.getloadavg()[0]:.1f}", flush=True)

    # 3. kill -9 half-way, recover, resume
    for d in ("home3", "out3"):
        shutil.rmtree(work / d, ignore_errors=True)
    run = batchcli(work / "home3", "start", clip.parent, "--out", work / "out3", "--media", "video", "-w", "1",
                   "--quiet", "--min-free-space", "0", "--name", "k", "--pipeline", "resize 1280x720 | convert mp4 crf=23")
    proc = subprocess.Popen(run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    time.sleep(ours / 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.perf_counter() - t0
    journal = next((work / "home3/batches").iterdir()) / "journal.jsonl"
    before = segments(journal)
    kept = before[-1]["done"] if before else 0
    reached = min(total, round(killed_at * total / ours))  # where the killed run had got to, at its pace in (1.)
    timed(batchcli(work / "home3", "recover"))
    t = time.perf_counter()
    timed(batchcli(work / "home3", "resume", "k", "--quiet", "--min-free-space", "0"))
    resumed = time.perf_counter() - t
    after = segments(journal)[len(before):]
    redo_from = after[0]["seg"] if after else None
    assert frames_of(work / "out3" / clip.name) == total
    seg_frames = max((r["frames"] for r in before + after), default=0)
    rows.append((f"kill -9 at {killed_at:.0f} s ({reached}/{total} frames), resume",
                 f"{len(before)} segments ({kept} frames) kept; resume began at segment {redo_from}, took {resumed:.0f} s",
                 "", f"~{max(0, reached - kept)} frames redone (one segment: {seg_frames})"))

    print(f"\n{'measure':<52} {'batchcli':<64} {'ffmpeg':<22} ratio")
    for name, a, b, c in rows:
        print(f"{name:<52} {a:<64} {b:<22} {c}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
