"""One machine, many batches: 20 batches of real-photo thumbnails started within one second
under a shared worker budget, against the same 20 batches run one after another.

    .venv/bin/python benchmarks/bench_queue.py [--batches 20] [--items 100] [--slots 2]

Checks and prints: the most worker processes alive at once (sampled every 100 ms; never more
than the slots), that every batch completes with every output, the wall time of both ways
(the ratio), the CPU time both ways spent (runners and workers: the cost of sharing, whatever
else runs on the machine), that a priority-10 batch started last finishes before the
priority-0 batches started before it, and the runners' memory (sum of their RSS at the busiest
sample). With --rounds N the two ways alternate N times and the best wall of each counts.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "work" / "queue"
PIPELINE = "orient | resize 320x320 | convert jpg quality=80"


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def photos(n: int) -> tuple[Path, str]:
    """n distinct photos of 2000x1333 made from ../shared/images/real (else generated scenes)."""
    import cv2

    out = WORK / f"photos{n}"
    if out.is_dir() and len(list(out.glob("*.jpg"))) == n:
        return out, "../shared/images/real" if _real() else "generated scenes"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    real = _real()
    if not real:
        sys.path.insert(0, str(ROOT / "examples"))
    for k in range(n):
        if real:
            img = cv2.resize(cv2.imread(real[k % len(real)]), (2000, 1333), interpolation=cv2.INTER_CUBIC)
            if k >= len(real):  # no two files alike
                img = cv2.flip(img, 1) if (k // len(real)) % 2 else img
                img[0, :k % 2000] = k % 255
        else:
            from make_samples import scene

            img = scene(2000, 1333, k)
        cv2.imwrite(str(out / f"p{k:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    return out, "../shared/images/real" if real else "generated scenes"


def _real() -> list[str]:
    return sorted(glob.glob(str(ROOT.parent / "shared" / "images" / "real" / "*.jpg")))


def env(home: Path, slots: int) -> dict:
    e = dict(os.environ)
    e.pop("CI", None)
    e.update(BATCHCLI_HOME=str(home), BATCHCLI_SLOTS=str(slots))
    return e


def start_cmd(src: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batchcli", "start", str(src), "--out", str(out), "--pipeline", PIPELINE,
            "--name", name, "--min-free-space", "0", "--quiet", *extra]


class Sampler:
    """Every 100 ms: the home's worker processes, and the RSS of its runners and workers."""

    def __init__(self, home: Path):
        self.home = str(home)
        self.max_workers = 0
        self.max_runner_rss = 0
        self.max_total_rss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            workers = runners = 0
            runner_rss = total_rss = 0
            for p in psutil.process_iter(["name", "cmdline", "memory_info"]):
                cmd = p.info["cmdline"] or []
                try:
                    if p.environ().get("BATCHCLI_HOME") != self.home:
                        continue
                except psutil.Error:
                    continue
                rss = p.info["memory_info"].rss if p.info["memory_info"] else 0
                if p.info["name"] == "batchcli-worker":
                    workers += 1
                    total_rss += rss
                elif any("multiprocessing.forkserver" in c for c in cmd):  # a runner's fork server
                    total_rss += rss
                elif "batchcli" in cmd and "start" in cmd:
                    runners += 1
                    runner_rss += rss
                    total_rss += rss
            self.samples += 1
            self.max_workers = max(self.max_workers, workers)
            self.max_runner_rss = max(self.max_runner_rss, runner_rss)
            self.max_total_rss = max(self.max_total_rss, total_rss)
            self._stop.wait(0.1)

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5)


def finished_at(home: Path, name: str) -> float:
    from batchcli.engine.journal import iter_records
    from batchcli.engine.store import Store

    paths = Store(str(home)).resolve(name)
    return next(r["t"] for r in iter_records(paths.journal) if r["type"] == "batch_finished")


def check(home: Path, names: list[str], items: int) -> None:
    from batchcli.engine.status import batch_status
    from batchcli.engine.store import Store

    for name in names:
        s = batch_status(Store(str(home)).resolve(name))
        outs = len(os.listdir(s["out_dir"]))
        if s["status"] != "completed" or s["completed"] != items or outs != items:
            raise SystemExit(f"batch {name}: {s['status']}, {s['completed']} completed, {outs} outputs")


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children and their waited-for workers
    return r.ru_utime + r.ru_stime


def sequential(src: Path, n: int, items: int, slots: int) -> tuple[float, float]:
    home = WORK / "home-seq"
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(WORK / "out-seq", ignore_errors=True)
    c0 = cpu_children()
    t0 = time.perf_counter()
    for k in range(n):
        r = subprocess.run(start_cmd(src, WORK / "out-seq" / f"b{k:02d}", f"b{k:02d}"), env=env(home, slots),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"sequential batch {k}: exit {r.returncode}: {r.stderr[-400:]}")
    wall = time.perf_counter() - t0
    check(home, [f"b{k:02d}" for k in range(n)], items)
    return wall, cpu_children() - c0


def concurrent(src: Path, n: int, items: int, slots: int) -> dict:
    home = WORK / "home-all"
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(WORK / "out-all", ignore_errors=True)
    names = [f"b{k:02d}" for k in range(n - 1)] + ["urgent"]
    c0 = cpu_children()
    with Sampler(home) as sampler:
        t0 = time.perf_counter()
        procs = []
        for name in names:  # all within one second; the last one at priority 10
            extra = ("--priority", "10") if name == "urgent" else ()
            procs.append(subprocess.Popen(start_cmd(src, WORK / "out-all" / name, name, *extra), env=env(home, slots),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        launched = time.perf_counter() - t0
        codes = [p.wait() for p in procs]
        wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"concurrent runs exited {codes}")
    check(home, names, items)
    urgent = finished_at(home, "urgent")
    before = [finished_at(home, nm) for nm in names[:-1]]
    return {"wall": wall, "cpu": cpu_children() - c0, "launched": launched, "max_workers": sampler.max_workers, "samples": sampler.samples,
            "urgent_first": sum(1 for t in before if t > urgent), "p0": len(before),
            "runner_rss": sampler.max_runner_rss, "total_rss": sampler.max_total_rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    src, origin = photos(a.items)
    loads = [os.getloadavg()[0]]
    log(f"{a.batches} batches x {a.items} photos ({origin}, 2000x1333), slots {a.slots}, "
        f"{len(os.sched_getaffinity(0))} CPUs, load {loads[0]:.1f}")
    concs, seqs = [], []
    for r in range(a.rounds):
        concs.append(concurrent(src, a.batches, a.items, a.slots))
        seqs.append(sequential(src, a.batches, a.items, a.slots))
        loads.append(os.getloadavg()[0])
        log(f"round {r + 1}: all at once {concs[-1]['wall']:.1f} s, one after another {seqs[-1][0]:.1f} s, "
            f"load {loads[-1]:.1f}")
    conc = min(concs, key=lambda c: c["wall"])
    conc["max_workers"] = max(c["max_workers"] for c in concs)
    conc["urgent_first"] = min(c["urgent_first"] for c in concs)
    seq, seq_cpu = min(seqs)
    cpu_ratio = min(c["cpu"] for c in concs) / min(c for _, c in seqs)
    mib = 1 << 20
    rows = [
        ("batches x items", f"{a.batches} x {a.items}", "real-photo thumbnails, 320 px"),
        ("started within", f"{conc['launched']:.2f} s", "all launched"),
        ("max workers alive", f"{conc['max_workers']}", f"slots {a.slots}; {conc['samples']} samples, 100 ms apart"),
        ("all complete", "yes", f"{a.batches * a.items} outputs checked"),
        ("wall, one after another", f"{seq:.1f} s", f"best of {a.rounds}; load average {min(loads):.1f}-{max(loads):.1f}"),
        ("wall, all at once", f"{conc['wall']:.1f} s", f"{conc['wall'] / seq:.2f}x the sequential wall"),
        ("CPU time, all at once", f"{cpu_ratio:.2f}x", "runners and workers, against one after another"),
        ("priority 10, started last", f"before {conc['urgent_first']} of {conc['p0']}", "priority-0 batches it finished before"),
        ("runners' RSS, busiest", f"{conc['runner_rss'] / mib:.0f} MiB", f"{conc['runner_rss'] / mib / a.batches:.0f} MiB per runner"),
        ("runners + workers RSS", f"{conc['total_rss'] / mib:.0f} MiB", "busiest sample"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'figure':<18}  note")
    for label, fig, note in rows:
        print(f"{label:<{width}}  {fig:<18}  {note}")
    print(json.dumps({"sequential_s": round(seq, 2), "sequential_cpu_s": round(seq_cpu, 2), "loads": loads,
                      **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in conc.items()}}))


if __name__ == "__main__":
    main()
