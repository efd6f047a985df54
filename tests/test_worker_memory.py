"""A pool worker keeps the buffers it freed for the next item (glibc's heap, not fresh pages the
kernel must zero): decoding a photo allocates and frees several megabytes per item."""

from __future__ import annotations

import os
import sys

import pytest
from crashops import batch_dir, make_pngs, records, run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")


def test_a_worker_reuses_freed_buffers_instead_of_faulting_in_new_pages(tmp_path):
    make_pngs(tmp_path / "in", 2)
    r = run(tmp_path / "home", "start", tmp_path / "in", "--out", tmp_path / "out", "-w", "1",
            "-p", "faulttest rounds=10 | convert png", "--quiet")
    assert r.returncode == 0, r.stderr
    done = [rec for rec in records(os.path.join(batch_dir(tmp_path / "home"), "journal.jsonl")) if rec["type"] == "item_completed"]
    assert len(done) == 2
    # 10 rounds of 16 MiB written and freed are 40,960 fresh pages when each round is handed
    # back to the kernel; kept, only the first round's 4,096 (and none for the next item)
    assert all(rec["meta"]["faults"] < 2 * 4096 for rec in done), [rec["meta"] for rec in done]


@pytest.mark.parametrize("flag, cap", [("0", "none"), ("1G", 1 << 30)])
def test_worker_memory_caps_each_workers_address_space_and_0_means_no_cap(tmp_path, flag, cap):
    import resource

    make_pngs(tmp_path / "in", 1)
    r = run(tmp_path / "home", "start", tmp_path / "in", "--out", tmp_path / "out", "-w", "1", "--worker-memory", flag,
            "-p", "faulttest rounds=1 | convert png", "--quiet")
    assert r.returncode == 0, r.stderr
    done = [rec for rec in records(os.path.join(batch_dir(tmp_path / "home"), "journal.jsonl")) if rec["type"] == "item_completed"]
    assert [rec["meta"]["rlimit_as"] for rec in done] == [resource.RLIM_INFINITY if cap == "none" else cap]
