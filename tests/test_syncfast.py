"""sync with nothing changed, in bulk (engine/syncfast.py): the batch and the catalog it leaves
are those the plan's walk leaves. Each scenario runs the same sync from the same state twice, the
comparison on and off (BATCHCLI_SYNC_FAST=0), and compares what each leaves: items.jsonl, the
journal's records and its replay, the manifest, status, verify, export, the catalog's rows and
answers (last writer, sync --delete), and the record kept for the next sync."""

from __future__ import annotations

import json
import marshal
import os
import shutil
import zipfile

import pytest
from conftest import make_image, make_tree
from crashops import records, run

PIPE = "resize 16x16 | convert png"


def _sync(home, src, out, *extra, fast=True):
    r = run(home, "sync", src, "--out", out, "-p", PIPE, "-w", "1", "--min-free-space", "0", "--json", *extra,
            env={"BATCHCLI_SYNC_FAST": "1" if fast else "0"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[0])


@pytest.fixture
def synced(tmp_path):
    """8 inputs synced twice: the second sync kept the record the next one compares with."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_tree(src, n=8)
    assert _sync(home, src, out)["new"] == 8
    second = _sync(home, src, out)
    assert second["reused"] == 8 and (home / "batches" / second["batch_id"] / "sync_fast.bin").is_file()
    return home, src, out


def _norm(value, ids: dict[str, str]):
    if isinstance(value, str):
        for bid, name in ids.items():
            value = value.replace(bid, name)
        return value
    if isinstance(value, dict):
        return {_norm(k, ids): _norm(v, ids) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_norm(v, ids) for v in value]
    return value


def _left(home, out, tmp_path, bid: str, full: bool = True) -> dict:
    """What a sync batch leaves, with its id and times taken out; `full`: with the answers of
    status, verify, export and sync --delete."""
    from batchcli.engine.catalog import Catalog
    from batchcli.engine.journal import replay

    bdir = home / "batches" / bid
    man = json.loads((bdir / "manifest.json").read_text())
    st = replay(str(bdir / "journal.jsonl"), man["total"], use_snapshot=False)
    snap = replay(str(bdir / "journal.jsonl"), man["total"])
    recs = records(bdir / "journal.jsonl")
    done = {rec["i"] for rec in recs if rec.get("type") == "item_completed" and "reused_from" not in rec}
    # (items processed in this run: their timing and their output's new mtime are the run's own)
    recs = [{k: v for k, v in rec.items() if k not in ("t", "crc", "pid", "rss", "worker_rss") and not (
        rec.get("i") in done and k in ("ms", "mtime", "src_stat", "worker", "attempt"))} for rec in recs]
    with Catalog(str(home)) as cat:  # sync's own question first: before any other, reuses rows stay rows
        cat.refresh()
        db = cat.db
        (bkey,) = db.execute("SELECT bkey FROM batches WHERE batch_id = ?", (bid,)).fetchone()
        names = dict(db.execute("SELECT bkey, batch_id FROM batches"))
        reuses = [(i, n, seq, names[src], src_i) for i, n, seq, _t, src, src_i in
                  db.execute("SELECT i, n, seq, written_at, src_bkey, src_i FROM reuses WHERE bkey = ? ORDER BY i",
                             (bkey,))]
        row = db.execute("SELECT state, total, j_offset = ? FROM batches WHERE bkey = ?",
                         (os.path.getsize(bdir / "journal.jsonl"), bkey)).fetchone()
        cat.materialize()
        items = [r[1:] for r in db.execute("SELECT * FROM items WHERE bkey = ? ORDER BY i", (bkey,))]
        outputs = sorted((o.i, o.kind, o.rel, o.sha256, o.size, None if o.i in done else o.mtime, o.seq, o.src,
                          o.current) for o in cat.outputs_of(bid))
        st_out = os.stat(out)
        writers = [(o.rel, (w := cat.last_writer(st_out.st_dev, st_out.st_ino, o.rel)).batch_id, w.seq)
                   for o in cat.outputs_of(bid)]
    answers = _answers(home, out, tmp_path, bid, done) if full else None
    kept = None
    if (bdir / "sync_fast.bin").is_file():
        meta = marshal.loads((bdir / "sync_fast.bin").read_bytes())
        data = marshal.loads((bdir / "sync_fast.data").read_bytes())
        stats, bodies = ([None if i in done else v for i, v in enumerate(vs)]
                         for vs in (marshal.loads(data[3]), data[4].split(b"\n")))
        kept = ({k: v for k, v in meta.items() if k not in ("journal", "catalog", "data")}, meta["catalog"][1:3],
                marshal.loads(data[1]), data[2].split(b"\0"), stats, bodies)
    got = {"items": (bdir / "items.jsonl").read_bytes(), "records": recs,
           "replay": (st.state, dict(st.counts), bytes(st.items), st.last_seq, st.records),
           "snapshot": (snap.state, dict(snap.counts), bytes(snap.items), snap.last_seq, snap.offset == st.offset),
           "manifest": {k: v for k, v in man.items() if k not in ("created_at", "creator")},
           "catalog": (row, reuses, items, outputs, writers), "answers": answers, "kept": kept}
    return _norm(got, {bid: "NEW"})


def _answers(home, out, tmp_path, bid: str, done: set[int]) -> dict:
    """status, verify, export and sync --delete (a dry run) of a batch."""
    status = json.loads(run(home, "status", bid, "--json").stdout)
    verify = run(home, "verify", bid)
    zpath = tmp_path / f"{bid}.zip"
    assert run(home, "export", bid, "--zip", zpath).returncode == 0
    with zipfile.ZipFile(zpath) as z:
        exported = sorted((i.filename, i.file_size if not (done and i.filename.startswith("manifest.")) else None)
                          for i in z.infolist())  # (a processed item's timing is in the manifest)
    delete = json.loads(run(home, "sync", home.parent / "in", "--out", out, "-p", PIPE, "--dry-run", "--delete",
                            "--json").stdout)
    return {"status": {k: v for k, v in status.items() if "time" not in k and "_at" not in k and "rss" not in k
                       and k not in ("created", "started", "finished", "elapsed", "rate", "eta")},
            "verify": (verify.returncode, verify.stdout), "exported": exported, "delete": delete}


def _both_ways(home, src, out, tmp_path, *extra, full: bool = True) -> tuple[dict, dict, dict]:
    """The same sync from the same state, the comparison on and then off: what each left, and
    the first's plan."""
    saved = tmp_path / "catalog-saved"
    saved.mkdir()
    for p in home.glob("catalog.sqlite*"):
        shutil.copy2(p, saved / p.name)
    on = _sync(home, src, out, *extra, fast=True)
    left_on = _left(home, out, tmp_path, on["batch_id"], full)
    shutil.rmtree(home / "batches" / on["batch_id"])
    for p in home.glob("catalog.sqlite*"):
        p.unlink()
    for p in saved.iterdir():
        shutil.copy2(p, home / p.name)
    off = _sync(home, src, out, *extra, fast=False)
    left_off = _left(home, out, tmp_path, off["batch_id"], full)
    assert _norm(on, {on["batch_id"]: "NEW"}) == _norm(off, {off["batch_id"]: "NEW"})
    return left_on, left_off, on


def _items_of(home) -> dict[str, bytes]:
    """Each batch's items.jsonl."""
    return {p.parent.name: p.read_bytes() for p in (home / "batches").glob("*/items.jsonl")}


def _quick_finds(home, src, out) -> bool:
    """Whether the comparison tells the next sync of `src` unchanged (a new batch, not kept)."""
    from batchcli.api import StartConfig, manifest_preview
    from batchcli.cli.commands.sync import _walk
    from batchcli.engine.store import Store
    from batchcli.engine.syncfast import Reuse
    from batchcli.inputs.discover import DiscoveryStats

    store = Store(str(home))
    cfg = StartConfig(inputs=[str(src)], out_dir=str(out), pipeline_text=PIPE)
    reuse = Reuse(store, _walk(store, cfg))
    paths = store.create()
    try:
        return reuse.discover(paths, manifest_preview(cfg, paths), DiscoveryStats()) is not None
    finally:
        shutil.rmtree(paths.dir)


@pytest.mark.parametrize("last", ["processed all", "reused all", "processed one"])
def test_nothing_changed_leaves_what_the_plan_leaves(tmp_path, last):
    """After a sync that processed every input, one that reused every input, and one that
    processed a changed input and reused the others."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_tree(src, n=8)
    assert _sync(home, src, out)["new"] == 8
    if last != "processed all":
        assert _sync(home, src, out)["reused"] == 8
    if last == "processed one":
        first_in = sorted(p for p in src.rglob("*") if p.is_file())[0]
        os.utime(first_in, ns=(first_in.stat().st_atime_ns, first_in.stat().st_mtime_ns + 10**9))
        assert _sync(home, src, out)["changed"] == 1
    assert _quick_finds(home, src, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    on, off, plan = _both_ways(home, src, out, tmp_path)
    assert plan["reused"] == 8 and plan["new"] + plan["changed"] == 0
    assert on == off and on["kept"] is not None  # the batch made in bulk keeps the record the plan's would
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    # the questions asked above made the reused rows rows of their own: the next sync runs the
    # plan (the catalog is not as recorded) and keeps a record; the one after it compares
    assert not _quick_finds(home, src, out)
    assert _sync(home, src, out)["reused"] == 8 and _quick_finds(home, src, out)
    assert _sync(home, src, out)["reused"] == 8 and _quick_finds(home, src, out)


@pytest.mark.parametrize("change", ["input touched", "input added", "output deleted", "output rewritten",
                                    "catalog deleted", "another batch since"])
def test_any_change_falls_back_to_the_plan_with_the_same_result(synced, tmp_path, change):
    home, src, out = synced
    first_in = sorted(p for p in src.rglob("*") if p.is_file())[0]
    first_out = sorted(p for p in out.rglob("*") if p.is_file())[0]
    if change == "input touched":
        os.utime(first_in, ns=(first_in.stat().st_atime_ns, first_in.stat().st_mtime_ns + 10**9))
    elif change == "input added":
        make_image(src / "d1" / "zz.png", seed=90)
    elif change == "output deleted":
        first_out.unlink()
    elif change == "output rewritten":
        first_out.write_bytes(first_out.read_bytes() + b"\0")
    elif change == "catalog deleted":
        for p in home.glob("catalog.sqlite*"):
            p.unlink()
    else:  # a `start` of the same pipeline into the same folder: the newest batch there has no record
        r = run(home, "start", src, "--out", out, "-p", PIPE, "-w", "1", "--min-free-space", "0", "--quiet")
        assert r.returncode == 0, r.stderr
    earlier = _items_of(home)
    assert not _quick_finds(home, src, out)
    on, off, plan = _both_ways(home, src, out, tmp_path, full=change in ("input touched", "catalog deleted"))
    assert on == off
    # the new batch's items.jsonl is linked to the last one's before the outputs are looked at:
    # the discovery that follows a change found then writes a file of its own
    assert {b: items for b, items in _items_of(home).items() if b in earlier} == earlier
    if change in ("catalog deleted", "another batch since"):
        assert plan["reused"] == 8


def test_the_walk_finds_what_discovery_finds_or_gives_up(tmp_path):
    """quick_walk lists what find() lists (output folder pruned, other extensions left out,
    nested folders after files), and gives up on what only find handles (a link to a file)."""
    from batchcli.inputs.discover import find, parse_exts, quick_walk

    src = tmp_path / "in"
    make_tree(src, n=12)
    (src / "notes.txt").write_text("x")
    make_image(src / ".hidden.png", seed=2)
    (src / "out").mkdir()
    make_image(src / "out" / "x.png", seed=3)
    exts, skip = parse_exts(None), [str(src / "out"), str(tmp_path / "home")]
    walked = quick_walk(str(src), exts, skip)
    assert walked == [(f.src, f.size, f.mtime, f.dev, f.ino) for f in find([str(src)], exts, skip)]
    assert len(walked) == 13 and not any("/out/" in w[0] for w in walked)
    (src / "d1" / "link.png").symlink_to(src / "img001.png")
    assert quick_walk(str(src), exts, skip) is None


def test_only_one_folder_walked_plainly_is_compared(tmp_path):
    """A list, --exclude, --dedupe, a --name-template or several inputs: discovery does more
    than a walk, and the plan runs."""
    from batchcli.api import StartConfig
    from batchcli.cli.commands.sync import _walk
    from batchcli.engine.store import Store

    src = tmp_path / "in"
    make_tree(src, n=2)
    store = Store(str(tmp_path / "home"))

    def walk(**kw):
        return _walk(store, StartConfig(**{"inputs": [str(src)], "out_dir": str(tmp_path / "out"), **kw}))

    assert walk()[0] == str(src)
    for kw in ({"exclude": ["*.png"]}, {"dedupe": "content"}, {"name_template": "{i}.{ext}"},
               {"from_file": str(src / "list.txt")}, {"inputs": [str(src), str(src / "d1")]},
               {"inputs": ["-"]}, {"inputs": [str(src / "img000.jpg")]}):
        assert walk(**kw) is None, kw


def test_a_sync_in_bulk_killed_with_sigkill_loses_nothing(tmp_path):
    """kill -9 of a sync with nothing changed once its records in bulk appear in the journal
    (on a slow disk: the kill lands after them, before the batch ends): `recover`, then
    `resume`, completes it with every item, the records written before the kill kept, the outputs
    intact, and the next sync reuses all."""
    import signal

    from crashops import line_count, spawn, wait_for

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    n = 2100  # three groups of records (GROUP_COMMIT_RECORDS, 1024)
    make_tree(src, n=n, size=(8, 8))
    assert _sync(home, src, out)["new"] == n
    assert _sync(home, src, out)["reused"] == n and _quick_finds(home, src, out)
    before = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    first = set(os.listdir(home / "batches"))
    # a slow disk (each fsync 0.3 s longer): the batch's end comes well after its records appear
    proc = spawn(home, "sync", src, "--out", out, "-p", PIPE, "-w", "1", "--min-free-space", "0", "--quiet",
                 env={"BATCHCLI_TEST_SYNC_LOG": str(tmp_path / "syncs.log"), "BATCHCLI_TEST_SYNC_DELAY": "0.3"})
    try:
        batch = wait_for(lambda: [p for p in (home / "batches").iterdir() if p.name not in first
                                  and line_count(p / "journal.jsonl") > 1], what="the first record")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    journal = batch[0] / "journal.jsonl"
    written = [rec for rec in records(journal) if rec.get("type") == "item_completed"]
    assert all(rec["reused_from"] for rec in written)
    assert not [rec for rec in records(journal) if rec.get("type") == "batch_finished"]  # killed before its end
    assert run(home, "recover").returncode == 0
    r = run(home, "resume", batch[0].name, "--min-free-space", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(run(home, "status", batch[0].name, "--json").stdout)
    assert (s["status"], s["completed"], s["failed"]) == ("completed", n, 0)
    kept = [rec for rec in records(journal) if rec.get("type") == "item_completed"][:len(written)]
    assert [(rec["i"], rec["out"], rec["sha256"]) for rec in kept] == [
        (rec["i"], rec["out"], rec["sha256"]) for rec in written]  # what was journaled stays
    after = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()
    assert all(after[rec["out"]] == before[rec["out"]] for rec in written)  # reused outputs untouched
    assert run(home, "verify", batch[0].name).returncode == 0
    again = _sync(home, src, out)
    assert again["reused"] == n and again["new"] + again["changed"] == 0


def test_the_readme_names_every_file_of_a_sync_batch(synced):
    """README "On disk" lists what a batch folder holds: every file a sync batch (its record
    kept) leaves there is named, and so are the caches beside its journal."""
    import re
    from pathlib import Path

    home, _src, _out = synced
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## On disk", 1)[1].split("```")[1]
    listed = {name for line in block.splitlines() if line.startswith("  ")
              for name in re.findall(r"[\w.]+", line.split("  ")[1].split("  ")[0])}
    newest = sorted((home / "batches").iterdir())[-1]
    there = {p.name for p in newest.iterdir()}
    assert {"journal.jsonl.snapshot", "sync_fast.bin", "sync_fast.data"} <= there
    assert there <= listed, there - listed


def test_the_walk_begun_first_thing_is_the_one_the_command_would_begin(tmp_path, monkeypatch):
    """cli/warm.py starts a sync's walk before its command line is parsed, from what the line
    seems to say; the command uses it only when it is the walk it would start itself. For these
    lines the guess is that walk (typer's own parse of the line says which), and it lists what
    quick_walk lists; a line with more than a walk gets none."""
    from typer.main import get_command

    from batchcli.api import StartConfig
    from batchcli.cli.app import app
    from batchcli.cli.commands.sync import _walk
    from batchcli.cli.warm import _sync_flags
    from batchcli.cli.warm import _walk as early
    from batchcli.engine.store import Store
    from batchcli.engine.syncfast import EARLY_MINE
    from batchcli.inputs.discover import quick_walk

    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    monkeypatch.setenv("BATCHCLI_HOME", str(home))
    make_tree(src, n=10)
    s, o = str(src), str(out)
    lines = [[s, "--out", o, "-p", PIPE], [s, "-o", o, f"-p{PIPE}", "-w2", "--json", "-q", "--delete"],
             [f"--out={o}", "--ext", "png", "--ext=jpg,webp", "--media", "all", s, "--no-summary"],
             [s, "--out", o, "-p", PIPE, "--home", str(tmp_path / "other")], ["--out", o, "-p", PIPE, "--", s],
             [s, "--out", o, "--exclude", "*.jpg"], [s, s + "/d1", "--out", o], [s, "--out", o, "--name-template", "{stem}.x"]]
    sync = get_command(app).get_command(None, "sync")
    walked = 0
    for line in lines:
        p = sync.make_context("sync", list(line)).params
        cfg = StartConfig(inputs=list(p["inputs"]), out_dir=p["out"], exts=p["ext"], exclude=p["exclude"],
                          from_file=p["from_file"], dedupe=p["dedupe"], name_template=p["name_template"], media=p["media"])
        spec = _walk(Store(p["home"]), cfg)
        guess = _sync_flags(line)
        got = early(*guess, None) if guess is not None else None
        assert (got[0] if got else None) == spec, line
        if spec is not None:
            walked += 1
            rest = quick_walk(*spec, part=(1.0 - EARLY_MINE, 1.0))  # what the command walks itself
            joined = marshal.dumps([None] * (got[1] + len(rest)), 2)[:5] + got[2] + marshal.dumps(rest, 2)[5:]
            assert joined == marshal.dumps(quick_walk(*spec), 2) and 0 < got[1] < 10
    assert walked == 5
    assert _sync_flags([s, "--out", o, "--dry-run"]) is None and _sync_flags([s, "--out", o, "--checksum"]) is None
