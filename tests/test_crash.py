"""Dead and stuck workers, memory bombs, typed retries, --max-failures, disk full.

Each case ends as the issue specifies, and a later resume completes the batch.
"""

from __future__ import annotations

import glob
import json
import os

import pytest
from conftest import fill_disk
from crashops import create, make_pngs, records, run

from batchcli.engine.journal import replay

N = 12
NOSPACE = ("--min-free-space", "0")


def _batch(tmp_path, pipeline, n=N):
    make_pngs(tmp_path / "in", n)
    return tmp_path / "home", create(tmp_path / "home", [tmp_path / "in"], tmp_path / "out", pipeline)


def _failed(paths) -> dict[int, dict]:
    last = {}
    for r in records(paths.journal):
        if r.get("type") in ("item_completed", "item_failed"):
            last[r["i"]] = r
    return {i: r for i, r in last.items() if r["type"] == "item_failed"}


def test_worker_killed_mid_item_is_replaced_and_the_item_retried(tmp_path):
    home, paths = _batch(tmp_path, f"crashtest kill match=img005 once={tmp_path} | convert png")
    r = run(home, "resume", paths.id, "-w", "2", "--retries", "1", *NOSPACE)
    assert r.returncode == 0, r.stdout + r.stderr
    st = replay(paths.journal, N)
    assert st.completed == N and st.failed == 0


def test_item_that_kills_workers_repeatedly_is_quarantined(tmp_path):
    flag, mark = tmp_path / "armed", tmp_path / "crashed_at"
    flag.touch()
    home, paths = _batch(tmp_path, f"crashtest exit match=img007 flag={flag} mark={mark} | convert png")
    r = run(home, "resume", paths.id, "-w", "2", "--retries", "2", *NOSPACE)
    assert r.returncode == 1, r.stdout + r.stderr
    failed = _failed(paths)
    assert list(failed) == [7] and failed[7]["error_class"] == "crash" and failed[7]["attempts"] == 3
    assert "worker died" in failed[7]["error"]
    detect = failed[7]["t"] - float(mark.read_text())  # the last crash -> its failure record
    print(f"\ndead worker: failure recorded {detect * 1000:.0f} ms after the worker's last crash")
    assert detect < 2.0
    assert replay(paths.journal, N).completed == N - 1  # the batch went on
    flag.unlink()  # the hostile input is fixed
    assert run(home, "resume", paths.id, "--retry-failed", *NOSPACE).returncode == 0
    assert replay(paths.journal, N).completed == N


def test_a_crash_is_charged_to_the_item_in_hand_not_to_finished_ones_not_yet_reported(tmp_path):
    """Workers send the results of quick items in groups; the one that dies mid-chunk is still
    the one that fails, and the finished items it held run again without a failure."""
    n = 120
    home, paths = _batch(tmp_path, "crashtest exit match=img037 | convert png", n=n)
    r = run(home, "resume", paths.id, "-w", "1", "--retries", "0", *NOSPACE)
    assert r.returncode == 1, r.stdout + r.stderr
    failed = _failed(paths)
    assert list(failed) == [37] and failed[37]["error_class"] == "crash"
    st = replay(paths.journal, n)
    assert st.completed == n - 1 and st.failed == 1
    done = [rec["i"] for rec in records(paths.journal) if rec.get("type") == "item_completed"]
    assert sorted(done) == [i for i in range(n) if i != 37]  # one completed record each


@pytest.mark.parametrize("action, item, flags, error_class", [
    ("hang", 3, ("--item-timeout", "1"), "timeout"),  # a hung worker is killed after --item-timeout
    ("bomb", 4, ("--worker-memory", "1G"), "oom"),  # a memory bomb fails under the worker cap
])
def test_stuck_or_greedy_item_fails_alone_and_resume_completes(tmp_path, action, item, flags, error_class):
    flag = tmp_path / "armed"
    flag.touch()
    home, paths = _batch(tmp_path, f"crashtest {action} match=img{item:03d} flag={flag} | convert png")
    r = run(home, "resume", paths.id, "-w", "2", *flags, "--retries", "0", *NOSPACE)
    assert r.returncode == 1, r.stdout + r.stderr
    failed = _failed(paths)
    assert list(failed) == [item] and failed[item]["error_class"] == error_class
    flag.unlink()
    assert run(home, "resume", paths.id, "--retry-failed", *NOSPACE).returncode == 0
    assert replay(paths.journal, N).completed == N


@pytest.mark.shared
def test_corpus_bombs_fail_cleanly_with_4_workers_even_past_the_header_check(tmp_path):
    from conftest import shared_path

    bombs = sorted(glob.glob(str(shared_path("corpus", "images", "bad") / "bomb_*")))
    assert bombs
    home = tmp_path / "home"
    for extra in ((), ("--max-pixels", "10000000000", "--max-file-size", "2G", "--worker-memory", "1G")):
        out = tmp_path / f"out{len(extra)}"
        r = run(home, "start", *bombs, "--out", out, "-p", "resize 64x64", "-w", "4", "--json", *NOSPACE, *extra,
                timeout=300)
        assert r.returncode == 1, r.stderr
        end = json.loads(r.stdout.splitlines()[-1])
        assert end["type"] == "finished" and end["failed"] == len(bombs) and end["completed"] == 0
        classes = {f["reason"].split(":")[0] for f in end["top_failures"]}
        assert classes <= ({"too_large"} if not extra else {"too_large", "oom"}), classes


def test_retries_are_for_transient_failures_only(tmp_path):
    home, paths = _batch(tmp_path, f"crashtest ioerror match=img002 once={tmp_path / 'm1'} | "
                                   f"crashtest raise match=img009 once={tmp_path / 'm2'} | convert png")
    (tmp_path / "m1").mkdir()
    (tmp_path / "m2").mkdir()
    r = run(home, "resume", paths.id, "--retries", "1", *NOSPACE)
    assert r.returncode == 1
    failed = _failed(paths)
    assert list(failed) == [9] and failed[9]["error_class"] == "op" and failed[9]["attempts"] == 1  # not retried


def test_max_failures_halts_as_failed_and_resume_continues(tmp_path):
    flag = tmp_path / "armed"
    flag.touch()
    home, paths = _batch(tmp_path, f"crashtest raise match=img01 flag={flag} | convert png", n=40)
    r = run(home, "resume", paths.id, "-w", "1", "--max-failures", "3", *NOSPACE)
    assert r.returncode == 1, r.stdout
    st = replay(paths.journal, 40)
    assert st.state == "failed" and "halted" in st.reason and st.remaining > 0
    status = json.loads(run(home, "status", paths.id, "--json").stdout)
    assert status["status"] == "failed" and "max-failures" in status["reason"]
    flag.unlink()
    assert run(home, "resume", paths.id, "--retry-failed", *NOSPACE).returncode == 0
    assert replay(paths.journal, 40).completed == 40


def test_a_halt_says_how_many_items_were_not_run_and_one_on_the_last_item_ends_the_batch(tmp_path):
    """status of a halted batch counts the items never run (not 'to repair', verify's wording)
    and gives the resume command; a limit reached on the last item leaves the batch completed at
    once, so a resume has nothing to do."""
    home, paths = _batch(tmp_path, "crashtest raise match=img003 | convert png")
    r = run(home, "resume", paths.id, "-w", "1", "--max-failures", "1", *NOSPACE)
    assert r.returncode == 1 and f"  resume with: batchcli resume {paths.id}" in r.stdout, r.stdout
    left = replay(paths.journal, N).remaining
    assert left > 0
    s = run(home, "status", paths.id).stdout
    assert (f"failed - halted: 1 items failed in this run (--max-failures 1); {left} items not run, "
            f"resume with: batchcli resume {paths.id}") in s, s
    assert "to repair" not in s

    home, paths = _batch(tmp_path / "last", "crashtest raise match=img011 | convert png")  # the last item
    r = run(home, "resume", paths.id, "-w", "1", "--max-failures", "1", *NOSPACE)
    assert r.returncode == 1 and f"batch {paths.id}: completed\n" in r.stdout and "resume with" not in r.stdout, r.stdout
    status = json.loads(run(home, "status", paths.id, "--json").stdout)
    assert (status["status"], status["reason"], status["completed"], status["failed"]) == ("completed", None, N - 1, 1)
    r = run(home, "resume", paths.id, *NOSPACE)
    assert r.returncode == 2 and "is completed; nothing to resume" in r.stderr, r.stderr


def test_an_output_that_cannot_be_written_fails_its_item_only(tmp_path):
    """Outputs are written by a background thread while the next image decodes; a write that
    fails still fails just its own item, with the path and the reason."""
    home, paths = _batch(tmp_path, "convert png", n=30)
    (tmp_path / "out" / "img007.png").mkdir(parents=True)  # a folder where the output should go
    r = run(home, "resume", paths.id, "-w", "2", *NOSPACE)
    assert r.returncode == 1, r.stdout + r.stderr
    failed = _failed(paths)
    assert list(failed) == [7] and failed[7]["error_class"] == "io"
    assert "cannot write" in failed[7]["error"] and "img007.png" in failed[7]["error"]
    st = replay(paths.journal, 30)
    assert st.completed == 29
    for i in range(30):
        if i != 7:
            assert (tmp_path / "out" / f"img{i:03d}.png").is_file()


def test_resume_reuses_the_flags_the_last_run_was_given(tmp_path):
    """A resume (or recover --resume) without flags keeps the batch's own settings; a flag given
    again replaces just that one."""
    flag = tmp_path / "armed"
    flag.touch()
    home, paths = _batch(tmp_path, f"crashtest raise match=img0 flag={flag} | convert png", n=40)
    r = run(home, "resume", paths.id, "-w", "1", "--max-failures", "2", "--retries", "0", *NOSPACE)
    assert r.returncode == 1 and replay(paths.journal, 40).state == "failed"

    def runs():
        return [rec for rec in records(paths.journal) if rec.get("type") in ("batch_started", "batch_resumed")]

    assert runs()[-1]["options"] == {"workers": 1, "max_failures": "2", "retries": 0, "min_free_space": "0"}
    first = replay(paths.journal, 40).failed
    r = run(home, "resume", paths.id)  # no flags: still 1 worker, still halts after 2 more failures
    assert r.returncode == 1, r.stdout + r.stderr
    last = runs()[-1]
    assert last["workers"] == 1 and last["options"]["max_failures"] == "2"
    st = replay(paths.journal, 40)
    assert st.state == "failed" and "max-failures 2" in st.reason
    assert first + 2 <= st.failed and st.remaining > 0  # halted again, before the end
    assert st.options == last["options"]
    flag.unlink()
    r = run(home, "resume", paths.id, "--max-failures", "50", "--retry-failed")
    assert r.returncode == 0, r.stdout + r.stderr
    assert runs()[-1]["options"] == {"workers": 1, "max_failures": "50", "retries": 0, "min_free_space": "0"}
    assert replay(paths.journal, 40).completed == 40


def test_enospc_pauses_the_batch_and_resume_completes_after_space_is_freed(tmp_path, small_disk):
    make_pngs(tmp_path / "in", N)
    home = tmp_path / "home"
    paths = create(home, [tmp_path / "in"], small_disk / "out", "convert png compression=0")
    filler = fill_disk(small_disk)
    r = run(home, "resume", paths.id, "-w", "2", *NOSPACE)
    assert r.returncode == 3, r.stdout + r.stderr
    st = replay(paths.journal, N)
    assert st.state == "paused" and st.failed == 0 and "disk full" in st.reason
    filler.unlink()
    r = run(home, "resume", paths.id, "-w", "2", *NOSPACE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert replay(paths.journal, N).completed == N
    assert not [f for f in os.listdir(small_disk / "out") if f.startswith(".")]


def test_min_free_space_pauses_before_the_disk_fills(tmp_path, small_disk):
    make_pngs(tmp_path / "in", N)
    home = tmp_path / "home"
    paths = create(home, [tmp_path / "in"], small_disk / "out", "convert png")
    r = run(home, "resume", paths.id, "--min-free-space", "4M")
    assert r.returncode == 3
    st = replay(paths.journal, N)
    assert st.state == "paused" and "min-free-space" in st.reason and st.completed == 0
    assert run(home, "resume", paths.id, "--min-free-space", "64K").returncode == 0
    assert replay(paths.journal, N).completed == N


def test_injected_disk_full_pauses_and_resume_completes(tmp_path):
    flag = tmp_path / "full"
    flag.touch()
    home, paths = _batch(tmp_path, f"crashtest enospc match=img006 flag={flag} | convert png")
    r = run(home, "resume", paths.id, "-w", "1", *NOSPACE)
    assert r.returncode == 3
    st = replay(paths.journal, N)
    assert st.state == "paused" and st.failed == 0 and "disk full" in st.reason
    flag.unlink()
    assert run(home, "resume", paths.id, *NOSPACE).returncode == 0
    assert replay(paths.journal, N).completed == N


def test_workers_show_as_batchcli_worker_and_no_process_outlives_the_run(tmp_path):
    """The workers (forked from the runner's fork server where there is one) are named
    batchcli-worker in ps; when the run ends, every process it started has exited."""
    import psutil
    from crashops import spawn, wait_for

    home, paths = _batch(tmp_path, "crashtest delay=0.1 | convert png", n=16)
    proc = spawn(home, "resume", paths.id, "-w", "2", *NOSPACE)
    seen: dict[int, psutil.Process] = {}

    def workers() -> int:
        try:
            for p in psutil.Process(proc.pid).children(recursive=True):
                seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass
        named = 0
        for p in seen.values():
            try:
                named += p.name() == "batchcli-worker"
            except psutil.NoSuchProcess:
                pass
        return named

    wait_for(lambda: workers() == 2 or proc.poll() is not None, what="two batchcli-worker processes")
    assert workers() == 2
    assert proc.wait(timeout=120) == 0
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in seen.values()),
             timeout=5, what="every process of the run to exit")
    assert replay(paths.journal, 16).completed == 16
