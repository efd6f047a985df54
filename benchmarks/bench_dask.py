"""Local process pool vs a Dask LocalCluster with the same number of processes, same files.

    .venv/bin/python benchmarks/bench_dask.py [--photos 120] [--small 600] [--workers N] [--repeat 1]

Two workloads: photos (2000x1500 JPEG -> 1024 px WebP, ~0.1 s of work per item) and small
images (320x240 PNG -> 128 px, a few ms per item, where any per-item overhead shows). For each,
`batchcli start` runs with the local pool, with `--executor dask` and with `--executor dask
--transfer`. Two figures per run:

- images/s as the runner reports it (from its first submit to its last result: the executor's
  start-up, e.g. the LocalCluster's, is outside it; each worker's pipeline set-up is inside it);
- the whole command's wall time, which also counts starting and stopping the cluster;
- CPU time per image of the command and all its processes (runner, scheduler, workers): the
  executor's cost in work, which a busy machine disturbs less than the rates.

Needs `pip install 'batchcli[dask]'`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "dask"
BATCHCLI = [sys.executable, "-m", "batchcli"]

WORKLOADS = {
    "photos": ((2000, 1500), "jpg", "resize 1024x1024 | convert webp quality=85"),
    "small": ((320, 240), "png", "resize 128x128"),
}
MODES = {
    "local pool": [],
    "dask LocalCluster": ["--executor", "dask"],
    "dask --transfer": ["--executor", "dask", "--transfer"],
}


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def make_inputs(kind: str, n: int) -> Path:
    import cv2

    sys.path.insert(0, str(ROOT / "examples"))
    from make_samples import scene

    (w, h), ext, _ = WORKLOADS[kind]
    folder = WORK / f"{kind}{n}"
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    base = [scene(w, h, seed) for seed in range(8)]
    for k in range(n):
        img = base[k % len(base)].copy()
        img[k % h, :] = (k * 37) % 256  # every file different
        cv2.imwrite(str(folder / f"{kind}{k:05d}.{ext}"), img)
    return folder


def run_one(folder: Path, pipeline: str, workers: int, extra: list[str], tag: str) -> dict:
    home = WORK / "home"
    out = WORK / f"out-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "BATCHCLI_HOME": str(home)}
    cmd = BATCHCLI + ["start", str(folder), "--out", str(out), "-w", str(workers),
                      "--pipeline", pipeline, "--json", "--min-free-space", "0", *extra]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    total = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr[-800:]}")
    fin = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")][-1]
    shutil.rmtree(out, ignore_errors=True)
    return {"rate": fin["rate"], "wall": fin["wall_s"], "total": total, "done": fin["completed"],
            "cpu_ms": cpu * 1000 / max(1, fin["completed"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=120)
    ap.add_argument("--small", type=int, default=600)
    ap.add_argument("--workers", type=int, default=0, help="processes (default: usable CPUs)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell; the best is kept")
    args = ap.parse_args()
    try:
        import distributed  # noqa: F401
    except ImportError:
        sys.exit("needs Dask: pip install 'batchcli[dask]'")
    from batchcli.executors.factory import usable_cpus

    workers = args.workers or usable_cpus()
    load0 = os.getloadavg()[0]
    rows = []
    for kind, n in (("photos", args.photos), ("small", args.small)):
        if n <= 0:
            continue
        folder = make_inputs(kind, n)
        pipeline = WORKLOADS[kind][2]
        best: dict[str, dict] = {}
        for k in range(args.repeat):  # modes interleaved, so a busy moment does not hit one alone
            for mode, extra in MODES.items():
                log(f"{kind} x{n}, {mode}, run {k + 1}/{args.repeat} ...")
                got = run_one(folder, pipeline, workers, extra, f"{kind}-{len(best)}")
                assert got["done"] == n, got
                if mode not in best or got["rate"] > best[mode]["rate"]:
                    best[mode] = got
        base = best["local pool"]["rate"]
        for mode, r in best.items():
            rows.append((f"{kind} x{n}", mode, r, r["rate"] / base))
    print(f"\n{workers} worker processes on {usable_cpus()} usable CPUs, {sys.platform}, Python {sys.version.split()[0]}")
    print(f"load average before: {load0:.1f}, after: {os.getloadavg()[0]:.1f} (figures from a busy machine are noisy)")
    print(f"{'workload':<14} {'executor':<19} {'images/s':>9} {'vs local':>9} {'run s':>7} {'command s':>10} {'CPU ms/img':>11}")
    for wl, mode, r, ratio in rows:
        print(f"{wl:<14} {mode:<19} {r['rate']:>9.1f} {ratio:>8.2f}x {r['wall']:>7.2f} {r['total']:>10.2f} {r['cpu_ms']:>11.1f}")


if __name__ == "__main__":
    main()
