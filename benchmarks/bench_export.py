"""Export at scale: a synthetic batch of N small outputs exported to a ZIP, a manifest and a
folder; prints items/s and the peak RSS (which should not grow with N).

    python benchmarks/bench_export.py 100000 /tmp/bench-export
"""

from __future__ import annotations

import hashlib
import os
import resource
import time

import orjson


def build(root: str, n: int):
    from batchcli import __version__
    from batchcli.engine.journal import JournalWriter, encode
    from batchcli.engine.store import Store

    store = Store(os.path.join(root, "home"))
    paths = store.create()
    out = os.path.join(root, "out")
    with open(paths.items, "wb") as items:
        for i in range(n):
            rel = f"d{i % 100:02d}/img{i:07d}.jpg"
            items.write(orjson.dumps({"i": i, "src": f"/in/{rel}", "rel": rel, "stem": rel[:-4], "size": 1, "mtime": 0})
                        + b"\n")
    paths.write_manifest({"batch_id": paths.id, "name": "bench", "created_at": time.time(), "version": __version__,
                          "pipeline": [], "pipeline_text": "", "options": {}, "out_dir": out, "total": n})
    with open(paths.journal, "wb") as fh:
        fh.write(encode({"seq": 0, "t": time.time(), "type": "header", "total": n}))
    with JournalWriter(paths.journal, 0, durable=False) as j:
        j.append("batch_started", pid=os.getpid())
        for i in range(n):
            rel = f"d{i % 100:02d}/img{i:07d}.webp"
            data = b"x" * (200 + i % 300)
            p = os.path.join(out, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
            j.append("item_completed", i=i, out=rel, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), ms=1.0)
        j.append("batch_finished", status="completed")
    return paths


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("n", nargs="?", type=int, default=20000, help="outputs in the synthetic batch (default 20000)")
    ap.add_argument("root", nargs="?", type=str, default='/tmp/bench-export', help="work folder (default /tmp/bench-export)")
    a = ap.parse_args()
    n, root = a.n, a.root
    from batchcli.results import export, verify

    t = time.perf_counter()
    paths = build(root, n)
    print(f"built {n} items in {time.perf_counter() - t:.1f}s")
    for label, fn in (("zip", lambda: export.export_zip(paths, os.path.join(root, "all.zip"))),
                      ("manifest", lambda: export.export_manifest(paths, os.path.join(root, "m.csv"))),
                      ("folder", lambda: export.export_dir(paths, os.path.join(root, "dir"))),
                      ("verify", lambda: verify.verify_batch(paths))):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{label:<9} {n / dt:>9.0f} items/s  ({dt:.1f}s)  peak RSS {rss:.0f} MB")
    print(f"zip: {os.path.getsize(os.path.join(root, 'all.zip')) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
