"""verify: every output re-hashed against the journal; missing and changed outputs found,
reported (exit 1) and re-queued with --repair."""

from __future__ import annotations

import json

import pytest
from conftest import cli
from test_export import completed_records, make_batch


@pytest.fixture
def batch(tmp_path):
    home, out, st = make_batch(tmp_path, [f"v{k}.jpg" for k in range(6)], name="ver", bad=1)
    return home, out, st


def test_clean_batch_verifies(batch):
    home, _, st = batch
    r = cli("verify", "ver", home=home)
    assert r.returncode == 0, r.stderr
    assert f"checked {st['completed']} outputs" in r.stdout and "all match" in r.stdout


def test_detects_modified_and_deleted_outputs(batch):
    from batchcli.engine.store import Store
    from batchcli.results.verify import find_bad

    home, out, _ = batch
    recs = completed_records(home)
    gone, edited, grown = sorted(recs)[:3]
    (out / recs[gone]["out"]).unlink()
    p = out / recs[edited]["out"]
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit, same size
    p.write_bytes(bytes(data))
    with open(out / recs[grown]["out"], "ab") as fh:
        fh.write(b"x")
    paths = Store(str(home)).resolve("ver")
    assert find_bad(paths) == sorted([gone, edited, grown])

    r = cli("verify", "ver", home=home)
    assert r.returncode == 1
    assert "1 missing, 2 changed" in r.stdout
    assert "resume" in r.stdout and "--repair" in r.stdout
    r = cli("verify", "ver", "--json", home=home)
    assert r.returncode == 1
    rep = json.loads(r.stdout)
    assert rep["missing_count"] == 1 and rep["changed_count"] == 2 and not rep["clean"]
    assert [m["i"] for m in rep["missing"]] == [gone]
    assert sorted(c["i"] for c in rep["changed"]) == sorted([edited, grown])
    assert rep["missing"][0]["output"].endswith(recs[gone]["out"])


def test_repair_requeues_the_broken_items(batch):
    home, out, st = batch
    recs = completed_records(home)
    bad = sorted(recs)[:2]
    for i in bad:
        (out / recs[i]["out"]).unlink()
    r = cli("verify", "ver", "--repair", home=home)
    assert r.returncode == 1
    assert "re-queued 2 items" in r.stdout
    from batchcli.engine.journal import iter_records
    from batchcli.engine.store import Store

    paths = Store(str(home)).resolve("ver")
    last = list(iter_records(paths.journal))[-1]
    assert last["type"] == "items_requeued" and last["items"] == bad
    items = json.loads(cli("status", "ver", "--items", "--json", home=home).stdout)["items"]
    assert [row["status"] for row in items if row["i"] in bad] == ["pending", "pending"]
    status = json.loads(cli("status", "ver", "--json", home=home).stdout)
    assert status["completed"] == st["completed"] - 2 and status["remaining"] == 2
    # the re-queued items are no longer completed: nothing left to verify is broken
    assert cli("verify", "ver", home=home).returncode == 0


def test_repair_refuses_while_a_runner_holds_the_lock(batch):
    from filelock import FileLock

    from batchcli.engine.store import Store

    home, out, _ = batch
    recs = completed_records(home)
    (out / recs[min(recs)]["out"]).unlink()
    lock = FileLock(Store(str(home)).resolve("ver").lock)
    with lock:
        r = cli("verify", "ver", "--repair", home=home)
    assert r.returncode == 2 and "live runner" in r.stderr


def test_unknown_batch(tmp_path):
    r = cli("verify", "nope", home=tmp_path / "h")
    assert r.returncode == 2
