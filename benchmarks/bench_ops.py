"""Cost of each image operation per megapixel, the .cube LUT target, and the full pipeline
against ImageMagick's mogrify.

    .venv/bin/python benchmarks/bench_ops.py            # all three parts
    .venv/bin/python benchmarks/bench_ops.py --ops-only # per-op table and the LUT line
    .venv/bin/python benchmarks/bench_ops.py --pipeline-only [--images 24] [--rounds 3]

Per-op figures are single-threaded (cv2.setNumThreads(1)) CPU times, the best of --repeat runs
on a 12 MP (4000x3000) BGR image, with the input copy outside the timing. The pipeline comparison
runs `batchcli start` with 2 workers and mogrify as 2 parallel processes over the same 3000x2000
JPEGs: `orient | resize 2048x2048 | preset warm blend=60 | sharpen | convert webp quality=85`
against `-auto-orient -resize 2048x2048 -modulate 100,110 -unsharp 0x1+0.8 -quality 85`.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from batchcli.imaging import imageio  # noqa: E402
from batchcli.ops.base import Frame  # noqa: E402
from batchcli.pipeline import Pipeline  # noqa: E402

REAL = ROOT.parent / "shared" / "images" / "real"
PIPELINE = "orient | resize 2048x2048 | preset warm blend=60 | sharpen | convert webp quality=85"
MOGRIFY = ["-auto-orient", "-resize", "2048x2048", "-modulate", "100,110", "-unsharp", "0x1+0.8",
           "-quality", "85", "-format", "webp"]


def photo(width: int, height: int) -> np.ndarray:
    """A photo-like test image: a real photo scaled up (with a little grain) when ../shared has
    one, else smooth colour gradients with grain."""
    rng = np.random.default_rng(0)
    src = REAL / "kimono.jpg"
    if src.exists():
        img = cv2.resize(cv2.imread(str(src)), (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        img = np.dstack([x / width, y / height, (x + y) / (width + height)]) * 230 + 10
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def cube_file(folder: Path, n: int = 33) -> Path:
    g = np.linspace(0, 1, n)
    b, gg, r = np.meshgrid(g, g, g, indexing="ij")
    rows = np.stack([np.clip(r ** 0.85 * 1.05, 0, 1), gg ** 1.1, np.clip(b * 0.9 + 0.05, 0, 1)], -1).reshape(-1, 3)
    path = folder / "look.cube"
    path.write_text(f"LUT_3D_SIZE {n}\n" + "\n".join(f"{a:.6f} {c:.6f} {d:.6f}" for a, c, d in rows))
    return path


def best_ms(fn, repeat: int) -> float:
    """Best CPU time of `repeat` runs in ms. Every op runs on one thread, so CPU time is the
    one-core cost, and other load on a shared machine does not inflate it the way wall time would."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times) * 1000


def time_op(spec: str, img: np.ndarray, repeat: int, orientation: int = 1) -> float:
    pipe = Pipeline.parse(spec)
    pipe.prepare()
    frames = [Frame(img=img.copy(), src="bench", fmt="jpg", orientation=orientation,
                    src_size=(img.shape[1], img.shape[0])) for _ in range(repeat + 1)]
    pipe.run(frames.pop())  # warm-up: caches, lazy tables
    return best_ms(lambda: pipe.run(frames.pop()), repeat)


def op_table(repeat: int, tmp: Path) -> list[tuple[str, float, float]]:
    img = photo(4000, 3000)
    mp = img.shape[0] * img.shape[1] / 1e6
    lut = cube_file(tmp)
    specs = [
        ("orient (EXIF 6)", "orient", 6),
        ("resize 2048x2048", "resize 2048x2048", 1),
        ("resize 1080x1080 mode=fill", "resize 1080x1080 mode=fill", 1),
        ("resize 150 mode=percent", "resize 150 mode=percent", 1),
        ("crop aspect=16:9", "crop aspect=16:9", 1),
        ("rotate 90", "rotate 90", 1),
        ("flip h", "flip h", 1),
        ("pad 4500x4500", "pad 4500x4500", 1),
        ("preset warm", "preset warm", 1),
        ("preset warm blend=60", "preset warm blend=60", 1),
        ("preset vintage", "preset vintage", 1),
        ("lut 33-point .cube", f"lut {lut}", 1),
        ("autolevel", "autolevel", 1),
        ("whitebalance", "whitebalance", 1),
        ("clahe", "clahe", 1),
        ("sharpen", "sharpen", 1),
        ("denoise (bilateral)", "denoise", 1),
        ("denoise method=median", "denoise method=median", 1),
        ("denoise method=gaussian", "denoise method=gaussian", 1),
        ("watermark text", "watermark '(c) batchcli'", 1),
        ("analyze", "analyze", 1),
    ]
    rows = []
    for label, spec, orientation in specs:
        ms = time_op(spec, img, repeat, orientation)
        rows.append((label, ms, ms / mp))
    small = np.ascontiguousarray(img[:1000, :1000])  # nlmeans is slow: time it on 1 MP
    ms = time_op("denoise method=nlmeans", small, max(1, repeat // 3))
    rows.append(("denoise method=nlmeans (1 MP)", ms * mp, ms))
    for fmt, spec in (("jpg", "convert jpg quality=90"), ("webp", "convert webp quality=85"),
                      ("png", "convert png"), ("tiff", "convert tiff")):
        frame = Pipeline.parse(spec).run(Frame(img=img, src="bench", fmt="jpg"))
        ms = best_ms(lambda frame=frame: imageio.encode(frame), max(1, repeat // 2))
        rows.append((f"encode {fmt}", ms, ms / mp))
    data = imageio.encode(Pipeline.parse("convert jpg").run(Frame(img=img, src="bench", fmt="jpg")))[0]
    rows.append(("decode jpg (full)", best_ms(lambda: imageio.load("b", data=data), repeat), 0.0))
    shrink = Pipeline.parse("resize 1024x1024").shrink_for
    rows.append(("decode jpg (shrink-on-load, 1024 box)",
                 best_ms(lambda: imageio.load("b", data=data, shrink_for=shrink), repeat), 0.0))
    return [(label, ms, ms / mp if per == 0.0 else per) for label, ms, per in rows]


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_batchcli(src: Path, out: Path, home: Path) -> tuple[float, float]:
    """Wall and CPU seconds (all processes) of `batchcli start` with 2 workers into `out`."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(home, ignore_errors=True)
    env = dict(os.environ, BATCHCLI_HOME=str(home))
    cli = shutil.which("batchcli")
    cmd = [cli] if cli else [sys.executable, "-m", "batchcli"]
    t, c = time.perf_counter(), _children_cpu()
    done = subprocess.run([*cmd, "start", str(src), "--out", str(out), "--workers", "2",
                           "--pipeline", PIPELINE], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"batchcli start failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    return time.perf_counter() - t, _children_cpu() - c


def _run_mogrify(mogrify: str, files: list[str], out: Path) -> tuple[float, float]:
    """Wall and CPU seconds of mogrify as 2 parallel processes, each given half the files."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    t, c = time.perf_counter(), _children_cpu()
    procs = [subprocess.Popen([mogrify, "-path", str(out), *MOGRIFY, *half],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for half in (files[0::2], files[1::2])]
    for p in procs:
        p.wait()
    return time.perf_counter() - t, _children_cpu() - c


def stage_ms(files: list[str]) -> dict[str, float]:
    """The pipeline's CPU ms per image, stage by stage, one thread, in-process (median over
    `files`): what bounds the whole against mogrify."""
    from batchcli.executors.heap import keep_freed_memory

    keep_freed_memory()  # as a worker does
    steps = [s.strip() for s in PIPELINE.split("|")]
    pipes = [Pipeline.parse(s) for s in steps]
    for p in pipes:
        p.prepare()
    took: dict[str, list[float]] = {k: [] for k in ["read + decode", *steps[:-1], "encode (convert webp quality=85)"]}
    for path in files:
        t = time.process_time()
        frame = imageio.load(path)
        took["read + decode"].append(time.process_time() - t)
        for name, p in zip(steps[:-1], pipes[:-1]):
            t = time.process_time()
            frame = p.run(frame)
            took[name].append(time.process_time() - t)
        frame = pipes[-1].run(frame)
        t = time.process_time()
        imageio.encode(frame)
        took["encode (convert webp quality=85)"].append(time.process_time() - t)
    return {k: sorted(v)[len(v) // 2] * 1000 for k, v in took.items()}


def compare_mogrify(count: int, tmp: Path, rounds: int) -> None:
    """batchcli and mogrify take turns, round by round; each round prints its own ratios (wall
    clock, and CPU time of all processes: the steadier one on a machine busy with other work)."""
    mogrify = shutil.which("mogrify")
    if mogrify is None:
        print("\nmogrify comparison skipped: ImageMagick's mogrify is not installed")
        return
    src = tmp / "in"
    src.mkdir()
    base = photo(3000, 2000)
    rng = np.random.default_rng(1)
    for i in range(count):
        shifted = np.roll(base, int(rng.integers(0, 3000)), axis=1)
        cv2.imwrite(str(src / f"img_{i:03d}.jpg"), shifted, [cv2.IMWRITE_JPEG_QUALITY, 90])
    files = sorted(str(p) for p in src.iterdir())
    print(f"\npipeline on {count} JPEGs of 3000x2000, 2 workers each (start-up included), {rounds} alternating rounds")
    print(f"{'round':>5} {'batchcli s':>10} {'cpu s':>7} {'mogrify s':>9} {'cpu s':>7} {'wall':>6} {'cpu':>6}  load")
    ours_best, theirs_best, cpu_ratios, ours_cpus, theirs_cpus = float("inf"), float("inf"), [], [], []
    for r in range(rounds):
        ours, ours_cpu = _run_batchcli(src, tmp / "out_b", tmp / "home")
        made = len(list((tmp / "out_b").rglob("*.webp")))
        if made != count:
            raise SystemExit(f"batchcli made {made} outputs of {count}")
        theirs, theirs_cpu = _run_mogrify(mogrify, files, tmp / "out_m")
        ours_best, theirs_best = min(ours_best, ours), min(theirs_best, theirs)
        cpu_ratios.append(theirs_cpu / ours_cpu)
        ours_cpus.append(ours_cpu)
        theirs_cpus.append(theirs_cpu)
        print(f"{r + 1:>5} {ours:10.2f} {ours_cpu:7.2f} {theirs:9.2f} {theirs_cpu:7.2f} {theirs / ours:5.2f}x "
              f"{theirs_cpu / ours_cpu:5.2f}x  {os.getloadavg()[0]:.1f}")
    print(f"best of {rounds}: batchcli {ours_best:.2f} s ({count / ours_best:.2f} images/s), mogrify {theirs_best:.2f} s: "
          f"{theirs_best / ours_best:.2f}x wall, {max(cpu_ratios):.2f}x CPU (target: at least 4x)")
    stages = stage_ms(files[:8])
    mog = min(theirs_cpus) * 1000 / count
    print(f"\nCPU ms per image: batchcli {min(ours_cpus) * 1000 / count:.0f} (whole command, 2 workers), "
          f"mogrify {mog:.0f}; 4x mogrify leaves {mog / 4:.0f} ms for everything. The pipeline in-process, one thread:")
    for name, ms in stages.items():
        print(f"  {name:40} {ms:6.1f} ms")
    print(f"  {'sum':40} {sum(stages.values()):6.1f} ms")
    shared_encoder(mogrify, files[0], tmp, mog, sum(v for k, v in stages.items() if not k.startswith("encode")))


def _best_cpu(cmd: list[str], runs: int = 5) -> float:
    """The least CPU time (s) of `cmd` over `runs` runs, one thread."""
    env = dict(os.environ, MAGICK_THREAD_LIMIT="1", OMP_NUM_THREADS="1")
    best = float("inf")
    for _ in range(runs):
        before = _children_cpu()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, _children_cpu() - before)
    return best


def shared_encoder(mogrify: str, jpeg: str, tmp: Path, mog_ms: float, rest_ms: float) -> None:
    """The WebP encode both sides make, measured on each side: ImageMagick's (convert to WebP
    less convert to PPM, from the same 2048 px PNG) and batchcli's (OpenCV's imencode, one
    thread), and whether their files are the same bytes; then what 4x mogrify's CPU an image
    (`mog_ms`) leaves batchcli for everything else, against what its other stages take (`rest_ms`)."""
    convert = shutil.which("convert") or mogrify.replace("mogrify", "convert")
    if not os.path.exists(convert):
        return
    img = cv2.imread(jpeg)
    h, w = img.shape[:2]
    img = cv2.resize(img, (2048, round(h * 2048 / w)), interpolation=cv2.INTER_AREA)
    png = tmp / "shared.png"
    cv2.imwrite(str(png), img)
    theirs = (_best_cpu([convert, str(png), "-quality", "85", str(tmp / "shared.webp")])
              - _best_cpu([convert, str(png), str(tmp / "shared.ppm")])) * 1000
    convert_webp = Pipeline.parse("convert webp quality=85")
    convert_webp.prepare()
    frame = convert_webp.run(imageio.load(str(png)))
    ours, data = float("inf"), b""
    for _ in range(5):
        t = time.process_time()
        data = imageio.encode(frame)[0]
        ours = min(ours, (time.process_time() - t) * 1000)
    same = data == (tmp / "shared.webp").read_bytes()
    print(f"\nthe WebP encode both make (2048 px, quality 85), one thread: ImageMagick {theirs:.0f} ms "
          f"(convert to WebP less convert to PPM), batchcli {ours:.0f} ms; the same bytes: {'yes' if same else 'no'}")
    print(f"4x mogrify ({mog_ms:.0f} ms an image) leaves batchcli {mog_ms / 4 - ours:.0f} ms an image besides that encode; "
          f"its other stages take {rest_ms:.0f} ms (mogrify's besides it: {mog_ms - theirs:.0f} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per op (best is kept)")
    ap.add_argument("--images", type=int, default=24, help="JPEGs for the mogrify comparison")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of batchcli and mogrify")
    ap.add_argument("--ops-only", action="store_true", help="skip the mogrify comparison")
    ap.add_argument("--pipeline-only", action="store_true", help="only the mogrify comparison")
    args = ap.parse_args()
    # batchcli's bytecode cached, as an installed package has it (see bench_core.compile_batchcli)
    compileall.compile_dir(str(ROOT / "batchcli"), quiet=1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="bench_ops_") as d:
        tmp = Path(d)
        if args.pipeline_only:
            compare_mogrify(args.images, tmp, args.rounds)
            return
        rows = op_table(args.repeat, tmp)
        print(f"per-op cost on a 4000x3000 (12 MP) BGR uint8 image, one thread, CPU time, best of {args.repeat}")
        print(f"{'operation':40} {'ms/image':>10} {'ms/MP':>8}")
        for label, ms, per in rows:
            print(f"{label:40} {ms:10.1f} {per:8.2f}")
        lut_ms = next(ms for label, ms, _ in rows if label.startswith("lut"))
        verdict = "meets" if lut_ms < 150 else "MISSES"
        print(f"\nlut with a 33-point cube on 12 MP, one core: {lut_ms:.0f} ms ({verdict} the 150 ms target)")
        if not args.ops_only:
            compare_mogrify(args.images, tmp, args.rounds)


if __name__ == "__main__":
    main()
