"""The output catalog at scale: B synthetic batches of N completed outputs each (journals and
item lists as the runner writes them; no image files), then

- a rebuild from the journals (catalog.sqlite deleted), and the rows per second;
- a refresh with nothing new (one stat per batch);
- a refresh after one batch gained 1,000 records;
- lookups: last writer of a path, a batch's outputs with their last writers, an input's results.

The rebuild is linear in the records, so the figure for 1,000 batches x 1,000,000 outputs is
extrapolated from the measured rows per second when run smaller (the default) and printed.

    python benchmarks/bench_catalog.py [BATCHES] [OUTPUTS_PER_BATCH] [ROOT]
    python benchmarks/bench_catalog.py 1000 1000 /tmp/bench-catalog     # the full million
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import time

import orjson


def build(root: str, batches: int, per: int) -> str:
    from batchcli import __version__
    from batchcli.engine.journal import encode
    from batchcli.engine.store import Store

    home = os.path.join(root, "home")
    shutil.rmtree(root, ignore_errors=True)
    store = Store(home)
    out = os.path.join(root, "out")
    os.makedirs(out)
    st = os.stat(out)
    t0 = time.time() - batches * 60
    for b in range(batches):
        paths = store.create(now=t0 + b * 60)
        with open(paths.items, "wb") as fh:
            fh.write(b"".join(orjson.dumps({"i": i, "src": f"/in/d{i % 100:02d}/img{b:04d}{i:06d}.jpg",
                                            "rel": f"d{i % 100:02d}/img{i:06d}.jpg", "stem": f"d{i % 100:02d}/img{i:06d}",
                                            "size": 1000 + i, "mtime": 1.7e9 + i, "dev": 2049, "ino": b * per + i})
                              + b"\n" for i in range(per)))
        paths.write_manifest({"batch_id": paths.id, "name": f"b{b}", "created_at": t0 + b * 60,
                              "version": __version__, "pipeline": [], "pipeline_text": "", "options": {},
                              "fingerprint": "f" * 16, "out_dir": out, "out_dev": st.st_dev, "out_ino": st.st_ino,
                              "total": per})
        t = t0 + b * 60
        lines = [encode({"seq": 0, "t": t, "type": "header", "total": per}),
                 encode({"seq": 1, "t": t, "type": "batch_started", "pid": 1, "workers": 2})]
        for i in range(per):
            digest = hashlib.sha256(b"%d-%d" % (b, i)).hexdigest()
            lines.append(encode({"seq": i + 2, "t": round(t + i / 1000, 3), "type": "item_completed", "i": i,
                                 "out": f"d{i % 100:02d}/img{i:06d}.webp", "bytes": 5000 + i, "sha256": digest,
                                 "mtime": t + i / 1000, "ms": 12.5}))
        lines.append(encode({"seq": per + 2, "t": t + 59, "type": "batch_finished", "status": "completed"}))
        with open(paths.journal, "wb") as fh:
            fh.write(b"".join(lines))
    return home


def timed(fn):
    t = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("batches", nargs="?", type=int, default=100, help="synthetic batches (default 100)")
    ap.add_argument("per", nargs="?", type=int, default=1000, help="outputs per batch (default 1000)")
    ap.add_argument("root", nargs="?", type=str, default='/tmp/bench-catalog', help="work folder (default /tmp/bench-catalog)")
    a = ap.parse_args()
    batches, per, root = a.batches, a.per, a.root
    from batchcli.engine.catalog import Catalog
    from batchcli.engine.journal import JournalWriter, replay
    from batchcli.engine.store import Store

    _, secs = timed(lambda: build(root, batches, per))
    home = os.path.join(root, "home")
    records = batches * (per + 3)
    print(f"built {batches} batches x {per} outputs ({records} journal records) in {secs:.1f} s")
    cat = Catalog(home)
    cpu = time.process_time()
    stats, rebuild = timed(cat.rebuild)
    cpu = time.process_time() - cpu
    size = os.path.getsize(cat.path) + (os.path.getsize(cat.path + "-wal") if os.path.exists(cat.path + "-wal") else 0)
    rows = batches * per
    _, noop = timed(cat.refresh)
    ids = Store(home).ids()
    paths = Store(home).resolve(ids[0])
    st = replay(paths.journal, per)
    with JournalWriter(paths.journal, st.last_seq, durable=False) as j:
        for i in range(1000):
            j.append("item_completed", i=i, out=f"d{i % 100:02d}/img{i:06d}.webp", bytes=1, sha256="0" * 64, ms=1.0)
    more, incr = timed(cat.refresh)
    b = cat.batch(ids[0])
    _, one = timed(lambda: cat.last_writer(b.out_dev, b.out_ino, "d07/img000007.webp"))
    pairs, every = timed(lambda: sum(1 for _ in cat.last_writers(ids[-1])))
    _, inp = timed(lambda: cat.by_input(2049, 12345, "f" * 16))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_s = rows / rebuild
    print(f"{'what':<44} {'figure':>14}")
    print(f"{'rebuild (catalog.sqlite deleted)':<44} {rebuild:>12.2f} s  ({cpu:.1f} s of CPU)")
    print(f"{'  outputs indexed per second':<44} {per_s:>14,.0f}")
    print(f"{'  catalog size':<44} {size / 2**20:>11.1f} MiB")
    print(f"{'refresh, nothing new':<44} {noop * 1000:>11.1f} ms")
    print(f"{'refresh, one batch +1,000 records':<44} {incr * 1000:>11.1f} ms  ({more['records']} folded)")
    print(f"{'last writer of one path':<44} {one * 1000:>11.2f} ms")
    print(f"{'a batch: its outputs and their last writers':<44} {every * 1000:>11.1f} ms  ({pairs} rows)")
    print(f"{'results of one input + fingerprint':<44} {inp * 1000:>11.2f} ms")
    print(f"{'peak RSS':<44} {peak:>11.1f} MiB")
    if rows < 1_000_000:
        print(f"extrapolated: 1,000 batches / 1,000,000 outputs rebuild in about {1_000_000 / per_s:.0f} s "
              f"({cpu * 1_000_000 / rows:.0f} s of CPU; linear in records; {size / rows * 1e6 / 2**20:.0f} MiB)")
    assert stats["batches"] == batches


if __name__ == "__main__":
    main()
