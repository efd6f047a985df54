"""`batchcli serve` on loopback: status latency under 50 polling clients during a running batch
and that batch's throughput against the same batch without the server; 100 WebSocket
subscribers to a 1,000-item batch, each of which must receive every event; the server's RSS.

    python benchmarks/bench_serve.py [ITEMS] [WORKDIR]      # default 600 items, /tmp/bench-serve

Needs the serve extra. Each phase is bounded in count and time; prints a table.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from serverkit import jcall, server_env, start_server  # noqa: E402

PIPELINE = "resize 48x48 | convert png"
CLIENTS = 50
POLL_GAPS = (0.5, 0.05)  # seconds each client waits between two polls: a dashboard's pace, then a stress
SUBSCRIBERS = 100
WS_ITEMS = 1000
ROUNDS = 2


def make_inputs(folder: str, n: int) -> None:
    import cv2
    import numpy as np

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(7)
    for k in range(n):
        cv2.imwrite(os.path.join(folder, f"img{k:05d}.png"), rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))


def run_seconds(home: str, batch: str) -> tuple[float, int]:
    """The batch's running time from its journal (first start to finish) and its item count."""
    from batchcli.engine.journal import iter_records
    from batchcli.engine.store import Store

    paths = Store(home).resolve(batch)
    t0 = t1 = None
    n = 0
    for rec in iter_records(paths.journal):
        if rec["type"] == "batch_started" and t0 is None:
            t0 = rec["t"]
        elif rec["type"] == "batch_finished":
            t1 = rec["t"]
        elif rec["type"] == "item_completed":
            n += 1
    return (t1 or 0) - (t0 or 0), n


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def baseline(root: str, home: str, n: int, k: int) -> float:
    r = subprocess.run([sys.executable, "-m", "batchcli", "start", "in/", "--out", f"out-cli{k}/", "--pipeline", PIPELINE,
                        "-w", "2", "-q", "--name", f"cli{k}"], cwd=root, env=server_env(home), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    secs, done = run_seconds(home, f"cli{k}")
    assert done == n
    return done / secs


def polled(srv, root: str, n: int, gap: float, k: int) -> tuple[float, list[float], float, float]:
    """Start the batch through the server while CLIENTS poll its status every `gap` seconds
    (each starting at a random point of the first gap); (items/s, latencies, peak RSS, server
    CPU seconds)."""
    import psutil

    proc = psutil.Process(srv.proc.pid)
    cpu0 = sum(proc.cpu_times()[:2])
    status, made = jcall(srv.url + "/api/v1/batches", "POST", {"inputs": ["in/"], "out": f"out-srv-{k}/",
                                                               "pipeline": PIPELINE, "workers": 2})
    assert status == 201, made
    bid = made["batch_id"]
    host, port = srv.url.split("//")[1].split(":")
    lat: list[float] = []
    stop = threading.Event()
    peak = [rss_mb(srv.proc.pid)]

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        mine = []
        time.sleep(random.uniform(0, gap))
        while not stop.is_set():
            t = time.perf_counter()
            conn.request("GET", f"/api/v1/batches/{bid}")
            body = conn.getresponse().read()
            mine.append(time.perf_counter() - t)
            if json.loads(body)["status"] in ("completed", "failed"):
                break
            time.sleep(gap)
        conn.close()
        lat.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 600
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        peak.append(rss_mb(srv.proc.pid))
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    secs, done = run_seconds(srv.home, bid)
    assert done == n
    return done / secs, lat, max(peak), sum(proc.cpu_times()[:2]) - cpu0


def subscribers(srv, root: str) -> tuple[int, int, float, float]:
    """SUBSCRIBERS WebSockets on a WS_ITEMS batch: (subscribers that got every item event, events
    each, seconds from the batch's end to the last subscriber's `finished`, peak RSS)."""
    from websockets.sync.client import connect

    status, made = jcall(srv.url + "/api/v1/batches", "POST", {"inputs": ["in-ws/"], "name": "ws", "workers": 2,
                                                               "pipeline": "resize 16x16 | convert png"})
    assert status == 201, made
    bid = made["batch_id"]
    url = srv.url.replace("http://", "ws://") + f"/api/v1/batches/{bid}/events?since=0"
    got: list[tuple[int, int, float]] = []
    lock = threading.Lock()

    def sub() -> None:
        items = events = 0
        with connect(url, open_timeout=30, max_size=None) as ws:
            for msg in ws:
                ev = json.loads(msg)
                events += 1
                items += ev["type"] in ("item_completed", "item_failed")
                if ev["type"] == "finished":
                    break
        with lock:
            got.append((items, events, time.time()))

    threads = [threading.Thread(target=sub) for _ in range(SUBSCRIBERS)]
    for t in threads:
        t.start()
    peak = [rss_mb(srv.proc.pid)]
    deadline = time.monotonic() + 600
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        peak.append(rss_mb(srv.proc.pid))
        time.sleep(0.2)
    for t in threads:
        t.join(1)
    from batchcli.engine.journal import iter_records
    from batchcli.engine.store import Store

    end = [r["t"] for r in iter_records(Store(srv.home).resolve(bid).journal) if r["type"] == "batch_finished"][0]
    complete = sum(1 for items, _, _ in got if items == WS_ITEMS)
    lag = max(t for _, _, t in got) - end if got else float("nan")
    return complete, max(e for _, e, _ in got), lag, max(peak)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", nargs="?", type=int, default=600, help="items in the batch (default 600)")
    ap.add_argument("work", nargs="?", type=str, default='/tmp/bench-serve', help="work folder (default /tmp/bench-serve)")
    a = ap.parse_args()
    n, work = a.n, a.work
    shutil.rmtree(work, ignore_errors=True)
    root, home = os.path.join(work, "root"), os.path.join(work, "home")
    make_inputs(os.path.join(root, "in"), n)
    make_inputs(os.path.join(root, "in-ws"), WS_ITEMS)
    srv = start_server(home, root)
    alone: list[float] = []
    polls: dict[float, list] = {gap: [] for gap in POLL_GAPS}
    try:
        idle = rss_mb(srv.proc.pid)
        for k in range(ROUNDS):  # alternated, best of each: the machine's other load weighs on both sides
            alone.append(baseline(root, home, n, k))
            for gap in POLL_GAPS:
                polls[gap].append(polled(srv, root, n, gap, f"{gap}-{k}"))
        complete, events, lag, peak = subscribers(srv, root)
    finally:
        srv.stop()
    best = max(alone)
    rows = [("batch alone (CLI, 2 workers)", f"{best:.0f} items/s", f"{n} items, {PIPELINE}; best of {ROUNDS}")]
    for gap, runs in polls.items():
        served, mine, _, cpu = max(runs, key=lambda r: r[0])
        lat = sorted(x for r in runs for x in r[1])
        p50, p95 = (lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 for q in (0.5, 0.95))
        peak = max([peak] + [r[2] for r in runs])
        rows += [(f"same, {CLIENTS} clients polling every {gap * 1000:.0f} ms", f"{served:.0f} items/s",
                  f"{served / best:.2f}x of alone; best of {ROUNDS}"),
                 ("  GET /batches/{id} latency", f"p50 {p50:.1f} ms, p95 {p95:.1f} ms", f"{len(lat)} requests"),
                 ("  server CPU", f"{cpu / len(mine) * 1000:.2f} ms a request",
                  f"{cpu:.2f} s over the batch's {n / served:.1f} s")]
    rows += [
        (f"{SUBSCRIBERS} WebSocket subscribers", f"{complete}/{SUBSCRIBERS} got all {WS_ITEMS} items",
         f"{events} events each; last finished {lag:.2f} s after the batch"),
        ("server RSS", f"idle {idle:.0f} MB, peak {peak:.0f} MB", "while polled and subscribed"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'measure':<{w}}  figure")
    for name, fig, note in rows:
        print(f"{name:<{w}}  {fig:<32} {note}")


if __name__ == "__main__":
    main()
