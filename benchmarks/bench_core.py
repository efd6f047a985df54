"""Core benchmarks: thumbnails, orchestration overhead, status on a 1,000,000-record journal,
start-up time, runner memory at 1,000,000 items. Prints a table; compares ratios from one run.

    .venv/bin/python benchmarks/bench_core.py [--photos 200] [--tiny 20000] [--durable 3000] [--million 1000000]
                                              [--only thumbnails,orchestration,durable,million] [--work DIR]

Peers are used when installed (Debian: parallel, libvips-tools, imagemagick) and reported as
missing otherwise. The photo workload comes from real photographs when found (Debian's
mate-backgrounds, or ../shared/images/real), scaled to 3000x2000, else from generated scenes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work"
BATCHCLI = [sys.executable, "-m", "batchcli"]


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def compile_batchcli() -> None:
    """Cache batchcli's bytecode, as an installed package has it: an editable install under
    PYTHONDONTWRITEBYTECODE=1 compiles every module from source in every run and every worker
    (0.15-0.2 s of CPU a run here, 3% of the thumbnail run), which no installed copy pays."""
    import compileall

    compileall.compile_dir(str(ROOT / "batchcli"), quiet=1)


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def with_cpu(fn, *args, **kw) -> tuple[float, float]:
    """(the wall seconds `fn` returns, the CPU seconds of the processes it started and waited
    for): CPU time is the steadier figure when other work loads the machine."""
    before = _children_cpu()
    wall = fn(*args, **kw)
    return wall, _children_cpu() - before


def timed(cmd: list[str] | str, **kw) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, text=True, **kw)
    dt = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise RuntimeError(f"{cmd}: exit {r.returncode}: {r.stderr[-500:]}")
    return dt


# --- workloads ------------------------------------------------------------------------------
def photo_sources() -> tuple[list[str], str]:
    mate = sorted(glob.glob("/usr/share/backgrounds/mate/**/*.jpg", recursive=True))
    if mate:
        return mate, "Debian mate-backgrounds"
    real = sorted(glob.glob(str(ROOT.parent / "shared" / "images" / "real" / "*.jpg")))
    if real:
        return real, "../shared/images/real (scaled to 3000x2000)"
    return [], "generated scenes"


def make_photos(n: int) -> tuple[Path, str]:
    import cv2

    sys.path.insert(0, str(ROOT / "examples"))
    from make_samples import scene

    out = WORK / f"photos{n}"
    sources, origin = photo_sources()
    if out.is_dir() and len(list(out.glob("*.jpg"))) == n:
        return out, origin
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for k in range(n):
        if sources:
            img = cv2.imread(sources[k % len(sources)])
            img = cv2.resize(img, (3000, 2000), interpolation=cv2.INTER_CUBIC)
            if k >= len(sources):  # vary the pixels so no two files are identical
                img = cv2.flip(img, 1) if (k // len(sources)) % 2 else img
                img[0, :k % 3000] = k % 255
        else:
            img = scene(3000, 2000, k)
        cv2.imwrite(str(out / f"p{k:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return out, origin


def make_tiny(n: int) -> Path:
    import cv2
    import numpy as np

    out = WORK / f"tiny{n}"
    if out.is_dir() and len(list(out.glob("*.png"))) == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for k in range(n):
        cv2.imwrite(str(out / f"t{k:05d}.png"), np.full((8, 8, 3), k % 256, np.uint8))
    return out


# --- the bare loop the tool is compared with -----------------------------------------------------
def _bare_init() -> None:
    import cv2

    cv2.setNumThreads(1)


def _bare_one(args: tuple[str, str]) -> int:
    import cv2
    import numpy as np

    src, dst = args
    img = cv2.imdecode(np.fromfile(src, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    h, w = img.shape[:2]
    s = min(1024 / w, 1024 / h)
    img = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    buf.tofile(dst)
    return 1


def bare_pool(src: Path, out: Path, workers: int) -> float:
    """The bare loop as a process of its own, as batchcli is one: its wall time includes starting
    Python, and the CPU time of all its processes includes its parent's (dispatching the jobs,
    collecting the results), not only the pool's."""
    clear_out(out)
    return timed([sys.executable, __file__, "--bare-loop", str(src), str(out), str(workers)])


def bare_loop(src: Path, out: Path, workers: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    jobs = [(str(p), str(out / p.name)) for p in sorted(src.glob("*.jpg"))]
    with get_context("spawn").Pool(workers, initializer=_bare_init) as pool:
        sum(pool.imap_unordered(_bare_one, jobs, chunksize=4))


TRASH = WORK / "trash"


def clear_out(out: Path) -> None:
    """Before a timed run: move the last run's output folder aside (deleted at the end of the
    benchmark, so no timed run pays for deleting thousands of files, nor the filesystem's search
    around their freed inodes), then flush the page cache, so no timed run pays for writing out
    files a run before it left unwritten (`cp` fsyncs nothing; a `syncfs` would write them)."""
    if out.exists():
        TRASH.mkdir(parents=True, exist_ok=True)
        out.rename(TRASH / f"{out.name}-{time.time_ns()}")
    os.sync()


def create_cost(n: int = 500) -> float:
    """Microseconds to create (and write 100 bytes to) one file in the work folder, from n. Every tool
    that creates files pays it: on ext4, in a part of the disk where many files were deleted in
    the last minutes (a benchmark's last outputs, say: ext4 steps over inodes freed less than
    5 minutes ago, up to 5 more for those not yet written back), a create cost 400-600 us where it
    costs 35-45 otherwise, so a ratio against `parallel cp` (3,000 files) means something only
    where this is small. The probe's files go with the run's outputs (deleted at the end: a
    deletion now would slow the creates that follow)."""
    probe = TRASH / f"create-probe-{os.getpid()}"
    probe.mkdir(parents=True)
    t = time.perf_counter()
    for k in range(n):
        fd = os.open(probe / f"f{k:04d}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, bytes(100))
        os.close(fd)
    return (time.perf_counter() - t) / n * 1e6


def batchcli_run(src: Path, out: Path | None, pipeline: str, workers: int, home: Path, *extra: str) -> float:
    if out is not None:
        clear_out(out)
    else:
        os.sync()
    env = dict(os.environ, BATCHCLI_HOME=str(home))
    where = ["--out", str(out)] if out is not None else []
    return timed(BATCHCLI + ["start", str(src), *where, "-w", str(workers), "-p", pipeline, "--quiet", *extra], env=env)


def parallel_cp(src: Path, out: Path, workers: int) -> float:
    """GNU parallel with a job log (its resumable mode) copying each file: the shell way."""
    clear_out(out)
    out.mkdir(parents=True)
    log_file = WORK / "joblog-cp"
    log_file.unlink(missing_ok=True)
    return timed(f"ls {src}/*.png | parallel -j{workers} --joblog {log_file} cp {{}} {out}/")


def durable_rows(a, w: int, home: Path, have: dict) -> list[tuple[str, str, str]]:
    """Tiny outputs made durable, as files and as tar shards, against GNU parallel running cp:
    the three alternate round by round (the machine is shared), each ratio from one round."""
    src = make_tiny(a.durable)
    rounds, cpus = [], []
    for _ in range(a.repeat):
        t_files, c_files = with_cpu(batchcli_run, src, WORK / "out-durable", "resize 8x8", w, home)
        t_shards, c_shards = with_cpu(batchcli_run, src, WORK / "out-shards", "resize 8x8", w, home, "--shards", "tar")
        t_cp, c_cp = with_cpu(parallel_cp, src, WORK / "out-cp", w) if have["parallel"] else (None, None)
        rounds.append((t_files, t_shards, t_cp))
        cpus.append((c_files, c_shards, c_cp))
        log(f"durable round: files {t_files:.2f} s ({c_files:.2f} s CPU), shards {t_shards:.2f} s ({c_shards:.2f}), "
            "parallel cp " + (f"{t_cp:.2f} s ({c_cp:.2f})" if t_cp else "-") + f"; load {os.getloadavg()[0]:.1f}")
    n = a.durable
    best_f, best_s = min(r[0] for r in rounds), min(r[1] for r in rounds)
    rows = [(f"durable: batchcli resize 8x8, {n} tiny PNGs, files (best of {a.repeat})", f"{best_f:.2f} s", f"{n / best_f:.0f} items/s"),
            (f"durable: the same into tar shards, --shards tar (best of {a.repeat})", f"{best_s:.2f} s", f"{n / best_s:.0f} items/s")]
    if have["parallel"]:
        best_c = min(r[2] for r in rounds)
        rows.append((f"durable: GNU parallel --joblog cp (best of {a.repeat})", f"{best_c:.2f} s", f"{n / best_c:.0f} items/s"))
        files = [r[2] / r[0] for r in rounds]
        shards = [r[2] / r[1] for r in rounds]
        rows.append(("  ratio files / parallel cp, per round (target >= 10)", "", " ".join(f"{x:.1f}x" for x in files)))
        rows.append(("  ratio shards / parallel cp, per round (target >= 30)", "", " ".join(f"{x:.1f}x" for x in shards)))
        rows.append(("  by CPU time of all processes, files; shards, per round", "",
                     " ".join(f"{c[2] / c[0]:.1f}x" for c in cpus) + "; " + " ".join(f"{c[2] / c[1]:.1f}x" for c in cpus)))
    return rows


# --- 1,000,000 records --------------------------------------------------------------------------
def make_million(n: int, home: Path, pending: int, tiny_png: str) -> str:
    """A batch of n items whose journal already has n - pending completed records."""
    sys.path.insert(0, str(ROOT))
    from batchcli import __version__
    from batchcli.engine.journal import encode

    bid = f"20000101-000000-000-{n:x}"[:24]
    d = home / "batches" / bid
    if (d / "journal.jsonl").exists():
        return bid
    d.mkdir(parents=True, exist_ok=True)
    st = os.stat(tiny_png)
    with open(d / "items.jsonl", "wb") as fh:
        for i in range(n):
            fh.write(b'{"i":%d,"src":"%s","rel":"t%07d.png","stem":"t%07d","size":%d,"mtime":%r}\n'
                     % (i, tiny_png.encode(), i, i, st.st_size, st.st_mtime))
    with open(d / "journal.jsonl", "wb") as fh:
        fh.write(encode({"seq": 0, "t": 0, "type": "header", "batch_id": bid, "version": __version__,
                         "pipeline": [{"name": "convert", "format": "png", "quality": 90, "compression": 3}],
                         "fingerprint": "x", "total": n}))
        fh.write(encode({"seq": 1, "t": 1, "type": "batch_started", "pid": 1, "workers": 2}))
        buf = []
        for i in range(n - pending):
            buf.append(encode({"seq": i + 2, "t": 2.0, "type": "item_completed", "i": i,
                               "out": f"t{i:07d}.png", "bytes": 100, "sha256": "0" * 64, "ms": 1.0}))
            if len(buf) >= 10000:
                fh.write(b"".join(buf))
                buf.clear()
        fh.write(b"".join(buf))
        fh.write(encode({"seq": n + 5, "t": 3, "type": "batch_paused", "reason": "bench"}))
    (d / "manifest.json").write_text(json.dumps({
        "batch_id": bid, "name": "million", "created_at": 0, "version": __version__,
        "pipeline": [{"name": "convert", "format": "png", "quality": 90, "compression": 3}],
        "pipeline_text": "convert png", "options": {}, "fingerprint": "x",
        "out_dir": str(WORK / "million-out"), "inputs": [], "total": n}))
    return bid


def peak_rss_of(cmd: list[str], env: dict) -> tuple[float, int]:
    import psutil

    t0 = time.perf_counter()
    p = psutil.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while p.poll() is None:
        try:
            peak = max(peak, p.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    return time.perf_counter() - t0, peak


def best_of(n: int, cmd: list[str], env: dict | None = None) -> float:
    return min(timed(cmd, env=env) for _ in range(n))


def main() -> None:
    if sys.argv[1:2] == ["--bare-loop"]:  # the bare loop's own process (see bare_pool)
        bare_loop(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=int(os.environ.get("BENCH_PHOTOS", 200)))
    ap.add_argument("--tiny", type=int, default=20000,
                    help="tiny PNGs for the orchestration rows (enough that the ~0.3 s start-up does not dominate)")
    ap.add_argument("--durable", type=int, default=3000, help="tiny PNGs for the durable-output rows (files, shards, cp)")
    ap.add_argument("--million", type=int, default=1_000_000)
    ap.add_argument("--only", default="thumbnails,orchestration,durable,million", help="sections to run (comma list)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each batchcli and bare-loop measure (best kept)")
    ap.add_argument("--work", default=os.environ.get("BENCH_WORK"), metavar="DIR",
                    help="the folder the inputs and outputs go in (default benchmarks/work; see the create-cost row)")
    a = ap.parse_args()
    global WORK, TRASH
    if a.work:
        WORK = Path(a.work).resolve()
        TRASH = WORK / "trash"
    try:
        WORK.mkdir(parents=True, exist_ok=True)
        create_us = create_cost()
    except OSError as exc:
        ap.error(f"--work {WORK}: cannot make files there ({exc.strerror or exc})")
    compile_batchcli()
    log(f"work folder {WORK}: creating a file there costs {create_us:.0f} us")
    home = WORK / "home"
    shutil.rmtree(home, ignore_errors=True)
    rows: list[tuple[str, str, str]] = []
    have = {t: shutil.which(t) is not None for t in ("parallel", "vipsthumbnail", "mogrify")}
    log("peers found: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in have.items()))
    only = set(a.only.split(","))
    load = os.getloadavg()
    w = a.workers
    if "thumbnails" in only:
        rows += thumbnail_rows(a, w, home, have)
    if "orchestration" in only:
        rows += orchestration_rows(a, w, home, have)
    if "durable" in only:
        rows += durable_rows(a, w, home, have)
    if "million" in only:
        rows += million_rows(a, w, home)
    rows.append(("load average (1 min) at the start and at the end, 2 cores", "",
                 f"{load[0]:.1f} -> {os.getloadavg()[0]:.1f}"))
    rows.append(("creating a file in the work folder (--work), at the start", "", f"{create_us:.0f} us"))
    shutil.rmtree(TRASH, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'time':>10}  rate")
    for name, t, rate in rows:
        print(f"{name:<{width}}  {t:>10}  {rate}")


def vips_run(photos: Path, w: int) -> float:
    out = WORK / "out-vips"
    clear_out(out)
    out.mkdir()
    return timed(f"ls {photos}/*.jpg | parallel -N50 -j{w} vipsthumbnail --size 1024x1024 -o '{out}/%s.jpg[Q=85]' {{}}")


def thumbnail_rows(a, w: int, home: Path, have: dict) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    photos, origin = make_photos(a.photos)
    log(f"thumbnail workload: {a.photos} JPEGs 3000x2000 from {origin}")
    # the machine is shared and noisy: batchcli, the bare loop and vipsthumbnail take turns,
    # round by round; each ratio is also given per round (from runs seconds apart)
    vips = have["parallel"] and have["vipsthumbnail"]
    tools, bares, vipss = [], [], []  # (wall, cpu) per round
    for _ in range(a.repeat):
        tools.append(with_cpu(batchcli_run, photos, WORK / "out-tool", "resize 1024x1024 | convert jpg quality=85", w, home))
        bares.append(with_cpu(bare_pool, photos, WORK / "out-bare", w))
        if vips:
            vipss.append(with_cpu(vips_run, photos, w))
        log(f"thumbnail round: batchcli {tools[-1][0]:.2f} s ({tools[-1][1]:.2f} s CPU), bare {bares[-1][0]:.2f} s "
            f"({bares[-1][1]:.2f})" + (f", vipsthumbnail {vipss[-1][0]:.2f} s ({vipss[-1][1]:.2f})" if vips else "")
            + f"; load {os.getloadavg()[0]:.1f}")
    t_tool, t_bare = min(t for t, _ in tools), min(t for t, _ in bares)
    per_round = " ".join(f"{b / t:.2f}x" for (t, _), (b, _) in zip(tools, bares))
    per_cpu = " ".join(f"{b / t:.2f}x" for (_, t), (_, b) in zip(tools, bares))
    rows.append((f"thumbnails: batchcli -w{w} (best of {a.repeat})", f"{t_tool:.2f} s", f"{a.photos / t_tool:.1f} img/s"))
    rows.append((f"thumbnails: bare Pool({w}) + IMREAD_REDUCED (best of {a.repeat})", f"{t_bare:.2f} s", f"{a.photos / t_bare:.1f} img/s"))
    rows.append(("  ratio batchcli / bare loop, best; per round (target >= 0.95)", "", f"{t_bare / t_tool:.2f}x; {per_round}"))
    rows.append(("  the same by CPU time of all processes, per round", "", per_cpu))
    if vips:
        t_vips = min(t for t, _ in vipss)
        per_round = " ".join(f"{v / t:.2f}x" for (t, _), (v, _) in zip(tools, vipss))
        per_cpu = " ".join(f"{v / t:.2f}x" for (_, t), (_, v) in zip(tools, vipss))
        rows.append((f"thumbnails: vipsthumbnail, parallel -N50 -j{w} (best of {a.repeat})", f"{t_vips:.2f} s",
                     f"{a.photos / t_vips:.1f} img/s"))
        rows.append(("  ratio batchcli / vipsthumbnail, best; per round (target >= 2.0)", "", f"{t_vips / t_tool:.2f}x; {per_round}"))
        rows.append(("  the same by CPU time of all processes, per round", "", per_cpu))
    if have["parallel"] and have["mogrify"]:
        out = WORK / "out-mogrify"
        clear_out(out)
        out.mkdir()
        t_mog = timed(f"ls {photos}/*.jpg | parallel -N50 -j{w} mogrify -path {out} -resize 1024x1024 "
                      f"-quality 85 {{}}")
        rows.append((f"thumbnails: mogrify, parallel -N50 -j{w} (one run)", f"{t_mog:.2f} s", f"{a.photos / t_mog:.1f} img/s"))
    return rows


def orchestration_rows(a, w: int, home: Path, have: dict) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    # two trivial pipelines: one that only reads and measures each image (journal fsyncs, no
    # output files), and one that writes each as a durable PNG (two fsyncs and a rename per file)
    tiny = make_tiny(a.tiny)
    t_meta = min(batchcli_run(tiny, None, "analyze", w, home) for _ in range(a.repeat))
    t_orch = min(batchcli_run(tiny, WORK / "out-tiny", "convert png", w, home) for _ in range(a.repeat))
    rows.append((f"orchestration: batchcli analyze (no output files), {a.tiny} tiny PNGs", f"{t_meta:.2f} s",
                 f"{a.tiny / t_meta:.0f} items/s"))
    rows.append((f"orchestration: batchcli convert png (durable outputs), {a.tiny} tiny PNGs", f"{t_orch:.2f} s",
                 f"{a.tiny / t_orch:.0f} items/s"))
    if have["parallel"]:
        t_par = timed(f"ls {tiny}/*.png | parallel -j{w} --joblog {WORK}/joblog true {{}}")
        rows.append(("orchestration: GNU parallel --joblog true", f"{t_par:.2f} s", f"{a.tiny / t_par:.0f} items/s"))
        rows.append(("  ratio batchcli analyze / parallel (target >= 10)", "", f"{t_par / t_meta:.1f}x"))
        rows.append(("  ratio batchcli convert png / parallel", "", f"{t_par / t_orch:.1f}x"))
    return rows


def million_rows(a, w: int, home: Path) -> list[tuple[str, str, str]]:
    """Status on 1,000,000 records, runner memory, start-up time."""
    rows: list[tuple[str, str, str]] = []
    first_tiny = str(sorted(make_tiny(a.tiny).glob("*.png"))[0])
    bid = make_million(a.million, home, 2000, first_tiny)
    env = dict(os.environ, BATCHCLI_HOME=str(home))
    # runner memory at 1,000,000 items (replay + streaming + the last 2,000 items run); the run
    # ends with a journal snapshot, as every real run does, which the status timing below uses
    shutil.rmtree(WORK / "million-out", ignore_errors=True)
    t_res, rss = peak_rss_of(BATCHCLI + ["resume", bid, "-w", str(w), "--quiet", "--force"], env)
    rows.append((f"runner peak RSS at {a.million:,} items (target < 150 MB)", f"{rss / 2**20:.0f} MB",
                 f"resume in {t_res:.1f} s"))

    # status of the batch just finished (snapshot + tail), and of the journal without one
    t_status = best_of(3, BATCHCLI + ["status", bid, "--json"], env)
    rows.append((f"status --json, {a.million:,} records (target < 1.5 s)", f"{t_status:.2f} s", ""))
    t_help = best_of(5, BATCHCLI + ["--help"])
    rows.append(("batchcli --help (target < 0.15 s)", f"{t_help * 1000:.0f} ms", ""))

    snap = home / "batches" / bid / "journal.jsonl.snapshot"
    if snap.exists():
        snap.unlink()
        t_full = best_of(1, BATCHCLI + ["status", bid, "--json"], env)
        rows.append((f"status --json, {a.million:,} records, no snapshot (full replay)", f"{t_full:.2f} s", ""))
    return rows


if __name__ == "__main__":
    main()
