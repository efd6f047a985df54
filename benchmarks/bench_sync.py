"""sync and watch: the two speed figures of incremental runs, side by side with rsync in one run.

    .venv/bin/python benchmarks/bench_sync.py [--n 100000] [--changed 1000] [--drops 20] [--rounds 3]

1. `sync` over N small inputs of which none changed (the second run over the same tree), beside
   `rsync -a --dry-run` over the same tree against a mirror of it (rsync's own no-op: one stat
   per file on each side), taking turns for `--rounds` rounds; `status` of the last one; then the same sync after `--changed` inputs were rewritten, which
   must process just those.
2. `watch`: a file dropped into a watched folder (written, then closed) until its output is
   durable in the output folder, over `--drops` files: the median and p95 beyond `--settle`.

The first sync of the tree (which does the real work) is set-up and is reported on its own line.
Prints a table; the machine's load during the run is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "sync"
BATCHCLI = [sys.executable, "-m", "batchcli"]


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def tiny_png(grey: int = 128) -> bytes:
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), grey, np.uint8))
    return buf.tobytes()


def make_tree(root: Path, n: int) -> None:
    data = tiny_png()
    for k in range(n):
        if k % 100 == 0:
            (root / f"d{k // 100:05d}").mkdir(parents=True, exist_ok=True)
        (root / f"d{k // 100:05d}" / f"f{k:06d}.png").write_bytes(data)


CPU: list[float] = []
"""The CPU time (user + system) of each no-change sync and each rsync, in turn: steadier than
wall time on a busy machine."""


def children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def sync(env: dict, src: Path, out: Path) -> tuple[float, dict]:
    c0 = children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run([*BATCHCLI, "sync", str(src), "--out", str(out), "-p", "convert png", "--json", "--quiet",
                        "--min-free-space", "0"], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    CPU.append(children_cpu() - c0)
    if r.returncode != 0:
        raise RuntimeError(f"sync exited {r.returncode}: {r.stderr[-500:]}")
    plan = json.loads(r.stdout.splitlines()[0])
    return dt, plan


def rsync_dry(src: Path, mirror: Path) -> float | None:
    if not shutil.which("rsync"):
        return None
    if not mirror.exists():
        subprocess.run(["rsync", "-a", f"{src}/", f"{mirror}/"], check=True)
    c0 = children_cpu()
    t0 = time.perf_counter()
    subprocess.run(["rsync", "-a", "--dry-run", f"{src}/", f"{mirror}/"], check=True, capture_output=True)
    dt = time.perf_counter() - t0
    CPU.append(children_cpu() - c0)
    return dt


def watch_latency(env: dict, drops: int, settle: float) -> list[float]:
    hot, out = WORK / "hot", WORK / "hot_out"
    for p in (hot, out):
        shutil.rmtree(p, ignore_errors=True)
    hot.mkdir(parents=True)
    proc = subprocess.Popen([*BATCHCLI, "watch", str(hot), "--out", str(out), "-p", "convert png", "-w", "1",
                             "--settle", f"{settle}s", "--quiet", "--min-free-space", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    data = tiny_png()
    lat = []
    try:
        time.sleep(3)  # the runner and its worker are up
        for k in range(drops):
            target = out / f"drop{k:03d}.png"
            with open(hot / f"drop{k:03d}.png", "wb") as fh:
                fh.write(data)
            t0 = time.perf_counter()
            while not target.exists():
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError(f"{target} never appeared")
                time.sleep(0.005)
            lat.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(30)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--changed", type=int, default=1000)
    ap.add_argument("--drops", type=int, default=20)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3, help="no-change syncs, each followed by an rsync --dry-run")
    a = ap.parse_args()
    from bench_core import compile_batchcli

    compile_batchcli()  # every sync below starts as an installed copy does, its bytecode cached
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    env = {**os.environ, "BATCHCLI_HOME": str(WORK / "home")}
    env.pop("CI", None)
    src, out = WORK / "src", WORK / "out"
    log(f"making {a.n} inputs ...")
    make_tree(src, a.n)
    rows = []
    log("first sync (all new) ...")
    t_first, plan = sync(env, src, out)
    rows.append((f"set-up: first sync, {a.n} new inputs (durable PNG outputs)", f"{t_first:.1f} s", f"{plan['new']} new"))
    rsync_dry(src, WORK / "mirror")  # makes the mirror
    same, dry = [], []
    CPU.clear()
    for k in range(a.rounds):  # taking turns: the machine's other work weighs on both alike
        log(f"round {k + 1}: sync with nothing changed, rsync --dry-run ...")
        t_same, plan = sync(env, src, out)
        assert plan["reused"] == a.n and plan["new"] + plan["changed"] == 0, plan
        same.append(t_same)
        t_rsync = rsync_dry(src, WORK / "mirror")
        if t_rsync:
            dry.append(t_rsync)
    t_same = statistics.median(same)
    per_round = ", ".join(f"{s:.2f}" for s in same)
    if dry:
        ratio = (f"{t_same / statistics.median(dry):.1f}x rsync (per round: "
                 + ", ".join(f"{s / d:.1f}x" for s, d in zip(same, dry)) + ")")
    else:
        ratio = "rsync not installed"
    cpu_sync, cpu_rsync = statistics.median(CPU[0::2]), statistics.median(CPU[1::2] or [0.0])
    rows.append((f"sync, {a.n} inputs, none changed (median of {len(same)}: {per_round} s)", f"{t_same:.2f} s", ratio))
    rows.append(("  its CPU time (user + system, median)", f"{cpu_sync:.2f} s",
                 f"{cpu_sync / cpu_rsync:.1f}x rsync's" if dry and cpu_rsync else ""))
    if dry:
        rows.append((f"rsync -a --dry-run, the same tree against its mirror (median of {len(dry)})",
                     f"{statistics.median(dry):.2f} s", ", ".join(f"{d:.2f}" for d in dry) + " s"))
        rows.append(("  its CPU time (user + system, median)", f"{cpu_rsync:.2f} s", ""))
    t0 = time.perf_counter()
    r = subprocess.run([*BATCHCLI, "status", plan["batch_id"], "--json"], capture_output=True, text=True, env=env)
    t_status = time.perf_counter() - t0
    assert r.returncode == 0 and json.loads(r.stdout)["completed"] == a.n, r.stderr
    rows.append((f"status --json of that {a.n}-item batch", f"{t_status:.2f} s", ""))
    data = tiny_png(200)  # other pixels (and a new mtime)
    files = sorted(src.rglob("*.png"))[:: max(1, a.n // a.changed)][: a.changed]
    for p in files:
        p.write_bytes(data)
    t_changed, plan = sync(env, src, out)
    assert plan["changed"] == len(files) and plan["reused"] == a.n - len(files), plan
    rows.append((f"sync, {a.n} inputs, {len(files)} changed", f"{t_changed:.2f} s",
                 f"processed {plan['changed']}, reused {plan['reused']}"))
    log("watch ...")
    lat = watch_latency(env, a.drops, a.settle)
    p95 = sorted(lat)[max(0, int(round(0.95 * len(lat))) - 1)]
    rows.append((f"watch: drop to durable output, --settle {a.settle:g}s, {len(lat)} files",
                 f"p95 {p95:.2f} s", f"median {statistics.median(lat):.2f} s; p95 beyond settle {p95 - a.settle:.2f} s"))
    load = os.getloadavg()
    print(f"\nbench_sync on {os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          "(other work on the machine slows every figure)")
    w = max(len(r[0]) for r in rows)
    for name, fig, note in rows:
        print(f"  {name:<{w}}  {fig:>12}  {note}")


if __name__ == "__main__":
    main()
