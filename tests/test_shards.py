"""--shards tar: outputs in numbered tar shards (the WebDataset layout), each item recorded
completed only once its shard is durable; resume continues the sequence, a shard being filled
when the runner died is rebuilt, a renamed shard whose records were never written is adopted;
export, verify and cleanup --purge-outputs read and delete shards."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tarfile
from collections import Counter

import psutil
import pytest
from conftest import cli
from crashops import line_count, make_pngs, records, run, spawn, wait_for

from batchcli import api
from batchcli.atomic import is_tmp_name
from batchcli.engine.journal import replay
from batchcli.engine.lifecycle import recover
from batchcli.engine.store import Store

NOSPACE = ("--min-free-space", "0")


def _create(home, src, out, pipeline="resize 16x16", size=4):
    return api.create_batch(Store(str(home)), api.StartConfig(inputs=[str(src)], out_dir=str(out),
                                                              pipeline_text=pipeline, shards="tar", shard_size=size))


def _members(out) -> dict[str, dict[str, bytes]]:
    """shard name -> {member name: bytes}, every shard of the folder."""
    got = {}
    for name in sorted(os.listdir(out)):
        assert name.endswith(".tar") and not is_tmp_name(name), name
        with tarfile.open(out / name) as tar:
            got[name] = {m.name: tar.extractfile(m).read() for m in tar}
    return got


def _check_dataset(out, journal, n_done: int) -> list[int]:
    """Shards numbered 00000.tar on without a gap; every completed item in exactly one shard,
    under its key, with its JSON sidecar; each record names the member it is. Returns the
    items found, in shard order."""
    shards = _members(out)
    assert list(shards) == [f"{k:05d}.tar" for k in range(len(shards))]
    seen = []
    for members in shards.values():
        keys = Counter(m.split(".", 1)[0] for m in members)
        assert set(keys.values()) == {2}, keys  # an image and its .json, per key
        for key in keys:
            side = json.loads(members[f"{key}.json"])
            data = members[side["member"]]
            assert side["key"] == key and int(key) == side["i"]
            assert hashlib.sha256(data).hexdigest() == side["sha256"] and len(data) == side["bytes"]
            assert side["input"].endswith(f"img{side['i']:03d}.png") and side["out"] == f"img{side['i']:03d}.png"
            seen.append(side["i"])
    done = {r["i"]: r for r in records(journal) if r.get("type") == "item_completed"}
    assert sorted(seen) == sorted(done) and len(seen) == len(set(seen)) == n_done
    for rec in done.values():
        assert (rec["shard"], rec["member"]) in {(s, m) for s, ms in shards.items() for m in ms}
    sealed = [r for r in records(journal) if r.get("type") == "shard_sealed"]
    assert [r["shard"] for r in sealed] == list(shards)
    for r in sealed:
        assert hashlib.sha256((out / r["shard"]).read_bytes()).hexdigest() == r["sha256"]
    return seen


def test_shards_hold_each_item_and_its_json_and_a_dataset_loader_reads_them(tmp_path):
    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    make_pngs(src, 10, size=24)
    (src / "img010.png").write_bytes(b"not a png")  # fails: in no shard
    r = cli("start", str(src), "--out", str(out), "-p", "resize 16x16", "--shards", "tar", "--shard-size", "4",
            *NOSPACE, home=home)
    assert r.returncode == 1, r.stderr  # one item failed
    assert sorted(os.listdir(out)) == ["00000.tar", "00001.tar", "00002.tar"]  # 4 + 4 + 2
    bid = Store(str(home)).ids()[0]
    _check_dataset(out, Store(str(home)).resolve(bid).journal, 10)
    items = json.loads(cli("status", bid, "--items", "--json", home=home).stdout)["items"]
    ok = [it for it in items if it["status"] == "completed"]
    assert len(ok) == 10 and {it["output"] for it in ok} == {str(out / f"{k:05d}.tar") for k in range(3)}
    assert all(it["member"] == f"{it['i']:09d}.png" for it in ok)

    wds = pytest.importorskip("webdataset")
    import cv2
    import numpy as np

    urls = [str(out / f"{k:05d}.tar") for k in range(3)]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == [f"{i:09d}" for i in range(10)]
    for s in samples:
        img = cv2.imdecode(np.frombuffer(s["png"], np.uint8), cv2.IMREAD_UNCHANGED)
        assert img.shape[:2] == (16, 16) and json.loads(s["json"])["i"] == int(s["__key__"])


def test_a_paused_batch_seals_its_last_shard_and_resume_goes_on_with_the_next_number(tmp_path):
    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    make_pngs(src, 14, size=16)
    slow = tmp_path / "slow"  # items of 0.3 s until the pause, then full speed
    slow.touch()
    paths = _create(home, src, out, f"crashtest delay=0.3 slow={slow} | resize 8x8", size=4)
    proc = spawn(home, "resume", paths.id, "-w", "1", *NOSPACE)
    wait_for(lambda: any(r.get("type") == "shard_sealed" for r in records(paths.journal)), what="a sealed shard")
    assert run(home, "pause", paths.id).returncode == 0
    assert proc.wait(timeout=60) == 3  # paused
    first = replay(paths.journal, 14).completed
    assert 4 <= first < 14 and sorted(os.listdir(out))[-1] == f"{(first - 1) // 4:05d}.tar"
    slow.unlink()
    assert run(home, "resume", paths.id, "-w", "2", *NOSPACE).returncode == 0
    seen = _check_dataset(out, paths.journal, 14)
    assert len(seen) == 14 and len(os.listdir(out)) >= 4  # the paused run's last shard may hold fewer


def _kill_when(proc, journal, target):
    wait_for(lambda: proc.poll() is not None or line_count(journal) >= target, what=f"{target} journal lines")
    kids = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in kids),
             timeout=5, what="workers of the killed runner to exit")
    return True


def test_kill9_while_a_shard_fills_then_it_is_rebuilt_and_every_recorded_item_is_in_a_durable_shard(tmp_path):
    from batchcli.results.verify import verify_batch

    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    n = 40
    make_pngs(src, n, size=16)
    paths = _create(home, src, out, "crashtest delay=0.04 | resize 8x8", size=6)
    caught = kills = 0
    for extra in (3, 9, 5, 12, 4, 7, 6, 8):
        if kills >= 4 and caught:
            break
        target = line_count(paths.journal) + extra
        proc = spawn(home, "resume", paths.id, "-w", "2", *NOSPACE)
        if not _kill_when(proc, paths.journal, target):
            break
        # at the kill: every recorded item reads back from its sealed shard with the recorded bytes
        rep = verify_batch(paths)
        assert rep.clean and rep.ok == replay(paths.journal, n).completed, rep.as_dict()
        kills += 1
        caught += any(is_tmp_name(f) for f in os.listdir(out))  # a shard was being filled
        recover(Store(str(home)))
    assert caught, "no kill landed while a shard was being filled"
    if replay(paths.journal, n).state != "completed":
        assert run(home, "resume", paths.id, "-w", "2", *NOSPACE).returncode == 0
    _check_dataset(out, paths.journal, n)
    assert not [f for f in os.listdir(out) if is_tmp_name(f)]


def test_a_shard_renamed_before_its_records_were_written_is_adopted_not_redone(tmp_path):
    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    seen = tmp_path / "seen.log"
    make_pngs(src, 8, size=16)
    paths = _create(home, src, out, f"crashtest log={seen} | resize 8x8", size=4)
    assert run(home, "resume", paths.id, "-w", "1", *NOSPACE).returncode == 0
    before = (out / "00001.tar").read_bytes()
    # the journal as a runner left it when it died right after renaming 00001.tar into place
    lines = open(paths.journal, "rb").read().splitlines(keepends=True)
    sealed = [k for k, ln in enumerate(lines) if b'"shard_sealed"' in ln]
    keep = lines[:sealed[0] + 1]
    open(paths.journal, "wb").write(b"".join(keep))
    assert replay(paths.journal, 8).completed == 4
    r = run(home, "resume", paths.id, "-w", "1", *NOSPACE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(seen.read_text().splitlines()) == 8  # nothing redone
    assert (out / "00001.tar").read_bytes() == before and sorted(os.listdir(out)) == ["00000.tar", "00001.tar"]
    adopted = [r for r in records(paths.journal) if r.get("type") == "shard_sealed" and r.get("adopted")]
    assert [r["shard"] for r in adopted] == ["00001.tar"]
    _check_dataset(out, paths.journal, 8)


def _six_in_two_shards(tmp_path):
    """Batch `ds`: 6 small PNGs into shards of 3 (two shards); its output folder and home."""
    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    make_pngs(src, 6, size=16)
    r = cli("start", str(src), "--out", str(out), "-p", "resize 8x8", "--shards", "tar", "--shard-size", "3",
            "--name", "ds", *NOSPACE, home=home)
    assert r.returncode == 0, r.stderr
    return out, home


def test_export_verify_and_purge_understand_shards(tmp_path):
    import zipfile

    out, home = _six_in_two_shards(tmp_path)
    shards = _members(out)
    by_key = {m.split(".")[0]: data for ms in shards.values() for m, data in ms.items() if m.endswith(".png")}
    r = cli("export", "ds", "--zip", str(tmp_path / "ds.zip"), home=home)
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "ds.zip") as z:
        assert {n: z.read(n) for n in z.namelist() if n.endswith(".png")} == {
            f"img{i:03d}.png": by_key[f"{i:09d}"] for i in range(6)}
    assert json.loads(cli("verify", "ds", "--json", home=home).stdout)["ok"] == 6

    # a flipped byte in one member's pixels: that item is changed, the others still match
    rec = next(r for r in records(Store(str(home)).resolve("ds").journal) if r.get("i") == 4 and "offset" in r)
    with open(out / rec["shard"], "r+b") as fh:
        fh.seek(rec["offset"] + rec["bytes"] - 1)
        last = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([last[0] ^ 0xFF]))
    rep = json.loads(cli("verify", "ds", "--json", home=home).stdout)
    assert rep["ok"] == 5 and [c["i"] for c in rep["changed"]] == [4]

    r = cli("cleanup", "--older-than", "0s", "--purge-outputs", "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert os.listdir(out) == [rec["shard"]]  # the changed shard is kept, the other deleted


@pytest.mark.parametrize("args, says", [
    (["--shard-size", "10"], "--shard-size needs --shards tar"),
    (["--shards", "zip"], "--shards zip: expected one of tar"),
    (["--shards", "tar", "--shard-size", "2000000"], "--shard-size 2000000"),
])
def test_shard_flags_are_checked_before_any_work(tmp_path, args, says):
    make_pngs(tmp_path / "in", 2, size=8)
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "-p", "resize 8x8", *args,
            home=tmp_path / "home")
    assert r.returncode == 2 and says in r.stderr and not (tmp_path / "out").exists()


def test_shards_refused_where_they_cannot_apply(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 2, size=8)
    r = cli("start", str(src), "-p", "analyze", "--shards", "tar", home=home)
    assert r.returncode == 2 and "writes no images" in r.stderr
    out.mkdir()
    (out / "00000.tar").write_bytes(b"")  # someone's dataset
    r = cli("start", str(src), "--out", str(out), "-p", "resize 8x8", "--shards", "tar", home=home)
    assert r.returncode == 2 and "already holds tar shards" in r.stderr
    for cmd in ("sync", "watch"):
        r = cli(cmd, str(src), "--out", str(tmp_path / "o2"), "-p", "resize 8x8", "--shards", "tar", home=home)
        assert r.returncode == 2 and "--shards is for start" in r.stderr
    r = cli("start", str(src), "--out", str(tmp_path / "o3"), "-p", "resize 8x8", "--shards", "tar",
            "--executor", "dask", home=home)
    assert r.returncode == 2 and "runs on the local executor" in r.stderr
    assert not Store(str(home)).ids()


def test_shards_refuse_videos(tmp_path):
    from videoclips import make_clip

    make_clip(tmp_path / "in" / "clip.mp4", seconds=1.0)
    r = cli("start", str(tmp_path / "in"), "--media", "all", "--out", str(tmp_path / "out"), "-p", "resize 8x8",
            "--shards", "tar", home=tmp_path / "home")
    assert r.returncode == 2 and "--shards takes images" in r.stderr


def test_variants_go_into_the_shard_under_one_key_and_survive_adoption(tmp_path):
    from batchcli.results.verify import verify_batch

    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "home"
    make_pngs(src, 5, size=16)
    paths = api.create_batch(Store(str(home)), api.StartConfig(
        inputs=[str(src)], out_dir=str(out), pipeline_text="resize 12x12", variants=["small=resize 4x4", "mid=resize 8x8"],
        shards="tar", shard_size=3))
    assert run(home, "resume", paths.id, "-w", "1", *NOSPACE).returncode == 0
    names = {n for ms in _members(out).values() for n in ms}
    assert names == {f"{i:09d}.{v}" for i in range(5) for v in ("small.png", "mid.png", "json")}
    side = json.loads(_members(out)["00000.tar"]["000000000.json"])
    assert list(side["variants"]) == ["small", "mid"] and side["variants"]["mid"]["out"] == "mid/img000.png"
    # the last shard adopted from its sidecars: every variant recorded again, each one verified
    lines = open(paths.journal, "rb").read().splitlines(keepends=True)
    first = next(k for k, ln in enumerate(lines) if b'"shard_sealed"' in ln)
    open(paths.journal, "wb").write(b"".join(lines[:first + 1]))
    assert run(home, "resume", paths.id, "-w", "1", *NOSPACE).returncode == 0
    assert [r["shard"] for r in records(paths.journal) if r.get("adopted")] == ["00001.tar"]
    rep = verify_batch(paths)
    assert rep.clean and rep.ok == 10, rep.as_dict()


def test_a_shard_the_disk_has_no_room_for_pauses_the_batch_and_resume_completes(tmp_path, small_disk):
    from conftest import fill_disk

    src, home, out = tmp_path / "in", tmp_path / "home", small_disk / "out"
    make_pngs(src, 12, size=64)
    paths = _create(home, src, out, "convert png compression=0", size=4)  # about 50 KB a shard
    filler = fill_disk(small_disk, leave=80_000)
    r = run(home, "resume", paths.id, "-w", "2", *NOSPACE)
    assert r.returncode == 3, r.stdout + r.stderr  # paused, not failed
    st = replay(paths.journal, 12)
    assert st.state == "paused" and st.failed == 0 and "cannot write shard" in st.reason, st.reason
    assert 0 < st.completed < 12 and st.completed % 4 == 0
    filler.unlink()
    assert run(home, "resume", paths.id, "-w", "2", *NOSPACE).returncode == 0
    _check_dataset(out, paths.journal, 12)


def test_verify_names_the_missing_shard_and_member_not_loose_files(tmp_path):
    out, home = _six_in_two_shards(tmp_path)
    gone = sorted(os.listdir(out))[1]
    (out / gone).unlink()
    items = {it["i"]: it for it in json.loads(cli("status", "ds", "--items", "--json", home=home).stdout)["items"]}
    rep = json.loads(cli("verify", "ds", "--json", home=home).stdout)
    assert rep["missing_count"] == 3
    for row in rep["missing"]:
        assert (row["output"], row["member"]) == (items[row["i"]]["output"], items[row["i"]]["member"])
        assert row["output"] == str(out / gone)
    r = cli("verify", "ds", home=home)
    assert r.returncode == 1
    missing = [line for line in r.stdout.splitlines() if line.lstrip().startswith("missing")]
    assert missing == [f"  missing  #{row['i']}  {out / gone} (member {row['member']})" for row in rep["missing"]]
