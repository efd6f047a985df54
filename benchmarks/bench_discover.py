"""Memory of discovery: a list of N paths on stdin (`batchcli start - ...`), read by the same
code a batch uses (discover.find + write_items), in a fresh process each time. Prints, per row,
the lines per second and the memory the discovery added: peak RSS minus the RSS after the
imports, per item. "spilling" is what a batch does (its sets spill into the batch folder past
SPILL keys, inputs/seen.py); "in memory" keeps the sets whole, for comparison.

    python benchmarks/bench_discover.py [--lines 10000000] [--compare 2000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, resource, sys, time
import numpy  # imported by any batch (the pipeline's ops): in the baseline, not in the figure
from batchcli.inputs import discover

def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:")) * 1024

spill_dir = sys.argv[1] or None
base = rss()
t0 = time.perf_counter()
stats = discover.DiscoveryStats()
with open(os.devnull, "wb") as out:
    n = discover.write_items(discover.find(["-"], stdin=sys.stdin.buffer, stats=stats, spill_dir=spill_dir),
                             out, stats=stats, spill_dir=spill_dir)
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"items": n, "seconds": secs, "base": base, "peak": peak}))
"""

FEED = r"""
import sys
n = int(sys.argv[1])
w = sys.stdout.write
for i in range(n):
    w(f"/nonexistent/d{i % 1000:03d}/img{i:08d}.jpg\n")
"""


def measure(lines: int, spill: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-discover-") as folder:
        feed = subprocess.Popen([sys.executable, "-c", FEED, str(lines)], stdout=subprocess.PIPE)
        out = subprocess.run([sys.executable, "-c", CHILD, folder if spill else ""], stdin=feed.stdout,
                             capture_output=True, text=True, check=True)
        feed.stdout.close()
        feed.wait()
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--compare", type=int, default=2_000_000, help="lines for the in-memory row")
    a = ap.parse_args()
    rows = [("spilling (a batch)", a.lines, True), ("in memory (comparison)", a.compare, False)]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'sets':<24} {'lines':>12} {'lines/s':>10} {'added MiB':>10} {'bytes/item':>11}")
    for name, lines, spill in rows:
        r = measure(lines, spill)
        added = r["peak"] - r["base"]
        print(f"{name:<24} {r['items']:>12,} {r['items'] / r['seconds']:>10,.0f} {added / 2**20:>10.1f} "
              f"{added / r['items']:>11.1f}")


if __name__ == "__main__":
    main()
