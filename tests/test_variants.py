"""Variants: several outputs from one decode (`--variant NAME=PIPELINE`, `[[variant]]` tables).

Real CLI processes over real images; outputs checked by decoding them and against the journal."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from crashops import make_pngs, records, run

from tests.conftest import make_image
from tests.photos import ARTIST, COPYRIGHT, exiftool, icc_profile, photographer_jpeg

LARGE = "large=resize 2048x2048 | convert webp quality=82"
THUMB = "thumb=resize 400x400 mode=fill | metadata strip | convert jpg quality=80"


def _size(path: Path) -> tuple[int, int]:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img.shape[1], img.shape[0]


def _journal(home: Path) -> list[dict]:
    (batch,) = (home / "batches").iterdir()
    return records(batch / "journal.jsonl")


def _completed(home: Path) -> dict[int, dict]:
    return {r["i"]: r for r in _journal(home) if r["type"] == "item_completed"}


@pytest.fixture(scope="module")
def shoot(tmp_path_factory) -> Path:
    """Camera JPEGs as a photographer has them (EXIF orientation 6, copyright, GPS, a profile), in
    a nested folder."""
    root = tmp_path_factory.mktemp("shoot")
    srgb = icc_profile("sRGB")
    photographer_jpeg(root / "a.jpg", 1200, 900, icc=srgb)
    (root / "day2").mkdir()
    photographer_jpeg(root / "day2" / "b.jpg", 1200, 900, icc=srgb)
    make_image(root / "day2" / "c.png", 640, 480, seed=3)
    return root


@pytest.fixture(scope="module")
def example(shoot, tmp_path_factory):
    """The README's (and the issue's) example command, run once."""
    tmp = tmp_path_factory.mktemp("example")
    home, site = tmp / "home", tmp / "site"
    r = run(home, "start", shoot, "--out", site, "--pipeline", "orient | profile srgb",
            "--variant", LARGE, "--variant", THUMB)
    assert r.returncode == 0, r.stdout + r.stderr
    return home, site


def test_the_example_writes_both_variants_for_every_input(example):
    home, site = example
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert files == ["large/a.webp", "large/day2/b.webp", "large/day2/c.webp",
                     "thumb/a.jpg", "thumb/day2/b.jpg", "thumb/day2/c.jpg"]
    assert _size(site / "large/a.webp") == (900, 1200)  # turned upright (orientation 6) by the shared orient
    assert _size(site / "thumb/a.jpg") == (400, 400)
    assert _size(site / "large/day2/c.webp") == (640, 480)
    assert _size(site / "thumb/day2/c.jpg") == (400, 400)


def test_every_variant_output_is_in_the_journal_with_its_sha256(example):
    home, site = example
    done = _completed(home)
    assert len(done) == 3
    for rec in done.values():
        assert [o["variant"] for o in rec["outputs"]] == ["large", "thumb"]
        for o in rec["outputs"]:
            data = (site / o["out"]).read_bytes()
            assert o["bytes"] == len(data) and o["sha256"] == hashlib.sha256(data).hexdigest()
            assert o["mtime"] == (site / o["out"]).stat().st_mtime
        assert rec["out"] == rec["outputs"][0]["out"]  # readers that know one output see the first
        assert rec["meta"]["profile"]["to"].startswith("sRGB")  # the shared ops' record


def test_each_variant_keeps_or_strips_metadata_as_its_own_ops_say(example):
    home, site = example
    large, thumb = exiftool(site / "large/a.webp", site / "thumb/a.jpg")
    assert large.get("IFD0:Copyright") == COPYRIGHT and large.get("IFD0:Artist") == ARTIST
    assert "GPS:GPSLatitude" in large
    assert not [k for k in thumb if k.split(":")[0] in ("IFD0", "ExifIFD", "GPS", "XMP-dc", "IPTC")]
    assert "ICC_Profile:ProfileDescription" in thumb  # strip keeps the profile (colours stay)


def test_the_shared_pipeline_runs_once_per_item_and_each_variant_once(tmp_path):
    for k in range(4):
        make_image(tmp_path / "in" / f"p{k}.png", 80, 60, seed=k)
    shared, per_variant = tmp_path / "shared.log", tmp_path / "variant.log"
    r = run(tmp_path / "home", "start", tmp_path / "in", "--out", tmp_path / "out", "-w", "2",
            "--pipeline", f"crashtest log={shared} | flip h",
            "--variant", "a=resize 40x40", "--variant", f"b=crashtest log={per_variant} | convert png",
            "--variant", "c=rotate 90 | convert webp")
    assert r.returncode == 0, r.stderr
    assert len(shared.read_text().splitlines()) == 4  # one decode and one run of the shared ops per item
    assert len(per_variant.read_text().splitlines()) == 4
    assert _size(tmp_path / "out/a/p0.png") == (40, 30)
    assert _size(tmp_path / "out/c/p0.webp") == (60, 80)
    import cv2

    flipped = cv2.flip(cv2.imread(str(tmp_path / "in/p1.png")), 1)
    assert (cv2.imread(str(tmp_path / "out/b/p1.png")) == flipped).all()  # b: the shared frame, losslessly


def test_a_failed_variant_fails_its_item_naming_the_variant_and_the_batch_goes_on(tmp_path):
    for k in range(3):
        make_image(tmp_path / "in" / f"p{k}.png", 80, 60, seed=k)
    home, out = tmp_path / "home", tmp_path / "out"
    r = run(home, "start", tmp_path / "in", "--out", out, "--retries", "0",
            "--variant", "web=convert webp", "--variant", "bad=crashtest raise match=p1 | convert jpg")
    assert r.returncode == 1, r.stderr
    failed = [rec for rec in _journal(home) if rec["type"] == "item_failed"]
    assert len(failed) == 1
    assert failed[0]["error"] == f"{tmp_path / 'in/p1.png'}: variant bad: RuntimeError: injected op failure"
    assert failed[0]["error_class"] == "op"
    assert not (out / "web/p1.webp").exists()  # every variant is encoded before any is written
    assert sorted(p.name for p in (out / "web").iterdir()) == ["p0.webp", "p2.webp"]


@pytest.mark.parametrize("template, files", [
    ("{rel}/{stem}_{variant}.{ext}", ["x/p_big.webp", "x/p_small.jpg"]),
    ("{stem}_web.{ext}", ["big/x/p_web.webp", "small/x/p_web.jpg"]),  # without {variant}: under OUT/NAME/
])
def test_a_name_template_places_the_variants(tmp_path, template, files):
    make_image(tmp_path / "in" / "x" / "p.png", 80, 60)
    home, out = tmp_path / "home", tmp_path / "out"
    r = run(home, "start", tmp_path / "in", "--out", out, "--name-template", template,
            "--variant", "small=resize 20x20 | convert jpg", "--variant", "big=convert webp")
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == files


def test_pipeline_files_take_variant_tables(tmp_path):
    make_image(tmp_path / "in" / "p.png", 80, 60)
    look = tmp_path / "site.toml"
    look.write_text('[[op]]\nname = "flip"\naxis = "h"\n\n'
                    '[[variant]]\nname = "web"\npipeline = "resize 40x40 | convert webp"\n\n'
                    '[[variant]]\nname = "thumb"\n[[variant.op]]\nname = "resize"\nsize = "20x20"\n'
                    '[[variant.op]]\nname = "convert"\nformat = "jpg"\nquality = 70\n')
    home, out = tmp_path / "home", tmp_path / "out"
    r = run(home, "start", tmp_path / "in", "--out", out, "--pipeline-file", look, "--variant", "full=convert png")
    assert r.returncode == 0, r.stderr
    assert _size(out / "web/p.webp") == (40, 30) and _size(out / "thumb/p.jpg") == (20, 15)
    assert _size(out / "full/p.png") == (80, 60)  # --variant flags add to the file's tables
    (batch,) = (home / "batches").iterdir()
    man = json.loads((batch / "manifest.json").read_text())
    assert [v["name"] for v in man["variants"]] == ["web", "thumb", "full"]
    assert man["variants"][1]["pipeline"][1] == {"name": "convert", "format": "jpg", "quality": 70, "compression": 3,
                                                 "lossless": False, "progressive": False, "background": "#ffffff"}


def test_the_readme_pipeline_file_gives_its_variants(tmp_path):
    from batchcli.pipeline import Pipeline

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```toml\n[[op]]\nname = \"orient\"")[1].split("```")[0]
    (tmp_path / "site.toml").write_text('[[op]]\nname = "orient"' + block)
    p = Pipeline.from_toml(str(tmp_path / "site.toml"))
    assert [name for name, _ in p.variants] == ["large", "thumb"]
    assert p.command_text() == ("orient --variant 'large=resize 2048x2048 | convert webp quality=82' "
                                "--variant 'thumb=resize 400x400 mode=fill | convert jpg'")


@pytest.mark.parametrize("args, message", [
    (["--variant", "thumb"], "--variant 'thumb': expected NAME=PIPELINE"),
    (["--variant", "thumb="], "the pipeline after thumb= is empty"),
    (["--variant", "../up=resize 9x9"], "variant '../up': a variant name is 1-64 letters"),
    (["--variant", "a=resize 9x9", "--variant", "a=flip h"], "variant 'a': given twice"),
    (["--variant", "a=resize nine"], "variant 'a': resize"),
    (["--variant", "a=analyze"], "variant 'a': writes no image"),
    (["--variant", "a=raw | resize 9x9"], "variant 'a': raw belongs in --pipeline"),
    (["--variant", "a=thumbnail at=10%"], "variant 'a': thumbnail is a video operation"),
    (["--name-template", "{stem}_{variant}.{ext}"], "{variant} needs --variant NAME=PIPELINE"),
])
def test_bad_variants_are_usage_errors_before_any_work(tmp_path, args, message):
    make_image(tmp_path / "in" / "p.png")
    r = run(tmp_path / "home", "start", tmp_path / "in", "--out", tmp_path / "out", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "home" / "batches").exists() or not any((tmp_path / "home" / "batches").iterdir())


def test_at_most_16_variants():
    from batchcli.errors import ConfigError
    from batchcli.pipeline import MAX_VARIANTS, Pipeline

    p = Pipeline.parse("flip h")
    for k in range(MAX_VARIANTS):
        p.add_variant(*Pipeline.parse_variant(f"v{k}=convert png"))
    with pytest.raises(ConfigError, match="variant 'v16': at most 16 variants"):
        p.add_variant(*Pipeline.parse_variant("v16=convert png"))


def test_watch_writes_every_variant_of_a_file_that_lands(tmp_path):
    from crashops import spawn, wait_for

    home, hot, out = tmp_path / "home", tmp_path / "hot", tmp_path / "out"
    hot.mkdir()
    watcher = spawn(home, "watch", hot, "--out", out, "-w", "1", "--min-free-space", "0", "--settle", "0.3s",
                    "--variant", "a=convert webp", "--variant", "b=resize 9x9 | convert jpg")
    try:
        wait_for(lambda: (home / "batches").is_dir() and any((home / "batches").iterdir()), what="the batch")
        make_image(tmp_path / "p.png", 80, 60).rename(hot / "p.png")
        wait_for(lambda: len(_completed(home)) == 1, timeout=60, what="the landed file")
        assert _size(out / "a/p.webp") == (80, 60) and _size(out / "b/p.jpg") == (9, 7)
    finally:
        run(home, "cancel", next((home / "batches").iterdir()).name)
        watcher.wait(60)


def test_variants_change_the_fingerprint_and_plain_pipelines_keep_theirs():
    from batchcli.pipeline import Pipeline

    plain = Pipeline.parse("resize 64x64")
    assert plain.fingerprint() == Pipeline.from_manifest({"pipeline": plain.spec()}).fingerprint()
    branched = Pipeline.parse("resize 64x64")
    branched.add_variant(*Pipeline.parse_variant("t=convert jpg"))
    assert branched.fingerprint() != plain.fingerprint()
    again = Pipeline.from_manifest({"pipeline": branched.spec(), "variants": branched.variant_spec()})
    assert again.fingerprint() == branched.fingerprint() and again.command_text() == branched.command_text()
    assert branched.command_text() == "resize 64x64 --variant 't=convert jpg'"


def test_the_decode_shrinks_only_as_far_as_the_largest_variant_allows():
    from batchcli.pipeline import Pipeline

    p = Pipeline.parse("orient")
    p.add_variant(*Pipeline.parse_variant("small=resize 400x400"))
    assert p.shrink_for(4000, 3000) == 8  # 500x375 still covers 400x400 fit
    p.add_variant(*Pipeline.parse_variant("big=resize 1500x1500"))
    assert p.shrink_for(4000, 3000) == 2
    p.add_variant(*Pipeline.parse_variant("full=convert png"))
    assert p.shrink_for(4000, 3000) == 1


def test_a_pending_batch_claims_its_variant_paths(tmp_path):
    from batchcli import api
    from batchcli.engine.store import Store

    home, out = tmp_path / "home", tmp_path / "out"
    make_pngs(tmp_path / "in", 3)
    api.create_batch(Store(str(home)), api.StartConfig(inputs=[str(tmp_path / "in")], out_dir=str(out), name="A",
                                                       variants=["web=convert webp", "t=resize 9x9 | convert jpg"]))
    r = run(home, "start", tmp_path / "in", "--out", out, "--variant", "t=convert jpg")
    assert r.returncode == 2 and "also writes 3 of these outputs: t/img000.jpg, t/img001.jpg, t/img002.jpg" in r.stderr
    r = run(home, "start", tmp_path / "in", "--out", out, "--pipeline", "convert jpg", "--name-template",
            "t/{stem}.{ext}")
    assert r.returncode == 2 and "(A, pending) also writes 3 of these outputs" in r.stderr  # the same paths
    r = run(home, "start", tmp_path / "in", "--out", out, "--variant", "t=convert png", "--variant", "u=convert jpg")
    assert r.returncode == 0, r.stderr  # t/*.png and u/*.jpg: nothing A writes


def test_sync_reuses_items_whose_every_variant_output_is_as_written(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 3)
    flags = ("--out", out, "-p", "flip h", "--variant", "a=convert webp", "--variant", "b=resize 9x9 | convert jpg")
    assert run(home, "sync", src, *flags).returncode == 0
    first = {p: p.stat().st_mtime_ns for p in out.rglob("*.*")}
    assert len(first) == 6
    (out / "b" / "img001.jpg").write_bytes(b"edited")  # one variant of one item changed since
    r = run(home, "sync", src, *flags, "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout.splitlines()[0])
    assert (plan["reused"], plan["changed"]) == (2, 1)
    assert _size(out / "b" / "img001.jpg") == (9, 9)  # redone
    assert all(p.stat().st_mtime_ns == t for p, t in first.items() if "img001" not in p.name)
    newest = sorted((home / "batches").iterdir())[-1]
    done = {r["i"]: r for r in records(newest / "journal.jsonl") if r["type"] == "item_completed"}
    assert len(done) == 3 and all(len(r["outputs"]) == 2 for r in done.values())
    reused = [r for r in done.values() if r.get("reused_from")]
    assert len(reused) == 2 and all(r["out"] == r["outputs"][0]["out"] for r in reused)
    assert run(home, "verify", newest.name).returncode == 0


@pytest.mark.slow
def test_variants_travel_with_dask_transfer(tmp_path):
    pytest.importorskip("distributed")
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 2)
    r = run(home, "start", src, "--out", out, "--executor", "dask", "--transfer", "-w", "1",
            "--variant", "a=convert webp", "--variant", "b=resize 9x9 | convert jpg", timeout=180)
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == [
        "a/img000.webp", "a/img001.webp", "b/img000.jpg", "b/img001.jpg"]
    for rec in _completed(home).values():
        for o in rec["outputs"]:
            assert hashlib.sha256((out / o["out"]).read_bytes()).hexdigest() == o["sha256"]


# --- after the run: status, export, verify, contact sheets, cleanup ---------------------------

@pytest.fixture
def branched(tmp_path):
    """A finished batch named 'site': three items, two variants, one item failed."""
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    for k in range(3):
        make_image(src / f"p{k}.png", 80, 60, seed=k)
    r = run(home, "start", src, "--out", out, "--name", "site", "--retries", "0", "-p", "analyze",
            "--variant", "web=resize 40x40 | convert webp", "--variant", "t=crashtest raise match=p2 | convert jpg")
    assert r.returncode == 1, r.stderr
    return home, out


def test_status_items_lists_every_variant_output(branched):
    home, out = branched
    r = run(home, "status", "site", "--items", "--json")
    rows = json.loads(r.stdout)["items"]
    assert rows[0]["outputs"] == [{"variant": "web", "output": str(out / "web/p0.webp")},
                                  {"variant": "t", "output": str(out / "t/p0.jpg")}]
    assert rows[0]["output"] == str(out / "web/p0.webp")
    assert "outputs" not in rows[2] and rows[2]["error"].endswith("variant t: RuntimeError: injected op failure")
    text = run(home, "status", "site", "--items").stdout
    assert f"{out / 'web/p1.webp'}, {out / 't/p1.jpg'}" in text


def test_export_takes_every_variant_output_or_the_one_asked_for(branched, tmp_path):
    import csv
    import io
    import zipfile

    home, out = branched
    assert run(home, "export", "site", "--zip", tmp_path / "all.zip").returncode == 0
    with zipfile.ZipFile(tmp_path / "all.zip") as z:
        assert sorted(z.namelist()) == ["manifest.csv", "manifest.jsonl", "t/p0.jpg", "t/p1.jpg",
                                        "web/p0.webp", "web/p1.webp"]
        assert z.read("t/p1.jpg") == (out / "t/p1.jpg").read_bytes()
        rows = list(csv.DictReader(io.StringIO(z.read("manifest.csv").decode())))
    assert [(r["i"], r["variant"], r["output"], r["status"]) for r in rows] == [
        ("0", "web", "web/p0.webp", "completed"), ("0", "t", "t/p0.jpg", "completed"),
        ("1", "web", "web/p1.webp", "completed"), ("1", "t", "t/p1.jpg", "completed"), ("2", "", "", "failed")]
    assert rows[1]["sha256"] == hashlib.sha256((out / "t/p0.jpg").read_bytes()).hexdigest()
    assert rows[0]["meta.analyze.width"] == "80"  # the shared ops' metadata on every row
    r = run(home, "export", "site", "--to", tmp_path / "thumbs", "--variant", "t", "--no-manifest",
            "--name-template", "{stem}_{variant}.{ext}")
    assert sorted(p.name for p in (tmp_path / "thumbs").iterdir()) == ["p0_t.jpg", "p1_t.jpg"]
    r = run(home, "export", "site", "--zip", tmp_path / "x.zip", "--variant", "big")
    assert r.returncode == 2 and "--variant big: no such variant in batch" in r.stderr and "(variants: web, t)" in r.stderr


def test_verify_checks_every_variant_and_repair_redoes_the_item(branched):
    home, out = branched
    r = run(home, "verify", "site")
    assert r.returncode == 0 and "checked 4 outputs" in r.stdout
    (out / "t/p1.jpg").write_bytes(b"not the thumbnail")
    r = run(home, "verify", "site", "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and rep["changed"] == [{"i": 1, "input": rep["changed"][0]["input"],
                                                     "output": str(out / "t/p1.jpg")}]
    before = (out / "web/p1.webp").stat().st_mtime_ns
    r = run(home, "resume", "site", "--repair")
    assert r.returncode == 1, r.stderr  # p2 still fails
    assert _size(out / "t/p1.jpg") == (80, 60)
    assert (out / "web/p1.webp").stat().st_mtime_ns != before  # the item is redone whole: one decode
    assert run(home, "verify", "site").returncode == 0


def test_contact_sheet_shows_one_variant_per_item(branched, tmp_path):
    home, _ = branched
    r = run(home, "export", "site", "--contact-sheet", tmp_path / "t.png", "--variant", "t", "--json")
    assert r.returncode == 0, r.stderr
    sheet = json.loads(r.stdout)["contact_sheet"]
    assert (sheet["tiles"], sheet["completed"], sheet["failed"]) == (3, 2, 1)
    for name, variant in (("first.png", None), ("web.png", "web")):
        assert run(home, "export", "site", "--contact-sheet", tmp_path / name,
                   *(["--variant", variant] if variant else [])).returncode == 0
    assert (tmp_path / "first.png").read_bytes() == (tmp_path / "web.png").read_bytes()  # the first variant
    assert (tmp_path / "first.png").read_bytes() != (tmp_path / "t.png").read_bytes()


def test_cleanup_purges_every_variant_output(branched):
    home, out = branched
    (out / "keep.txt").write_text("not ours")
    r = run(home, "cleanup", "--older-than", "0s", "--status", "failed,completed", "--purge-outputs", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == ["keep.txt"]


@pytest.mark.parametrize("shared", ["orient", "orient | crop 700x500", "flip h | pad 1700x1300"])
def test_variants_that_shrink_start_from_smaller_copies_and_match_their_own_pipeline(tmp_path, shared):
    """Each variant's output has the size its own pipeline (shared ops + the variant) gives, and
    nearly the same pixels (a few levels on average), whether it starts from a halving of the
    frame or not."""
    import numpy as np

    from batchcli.imaging import imageio
    from batchcli.pipeline import Pipeline
    from tests.photos import photo_pixels

    src = tmp_path / "p.jpg"
    import cv2

    cv2.imwrite(str(src), photo_pixels(1600, 1200)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    variants = ["big=resize 1000x1000", "mid=resize 390x390 mode=fill", "small=resize 150x150", "same=flip v"]
    p = Pipeline.parse(shared)
    for flag in variants:
        p.add_variant(*Pipeline.parse_variant(flag))
    got = dict(p.branch(p.run(imageio.load(str(src), shrink_for=p.shrink_for))))
    for flag in variants:
        name, rest = flag.split("=", 1)
        alone = Pipeline.parse(f"{shared} | {rest}")
        want = alone.run(imageio.load(str(src), shrink_for=alone.shrink_for)).img
        assert got[name].img.shape == want.shape, name
        assert np.abs(got[name].img.astype(int) - want.astype(int)).mean() < 3, name


def test_a_worker_killed_between_variants_costs_only_a_retry_of_its_item(tmp_path):
    home, src, out = tmp_path / "home", tmp_path / "in", tmp_path / "out"
    make_pngs(src, 4)
    (tmp_path / "once").mkdir()
    r = run(home, "start", src, "--out", out, "-w", "1", "--variant", "a=convert webp",
            "--variant", f"b=crashtest kill match=img002 once={tmp_path / 'once'} | convert jpg")
    assert r.returncode == 0, r.stderr
    assert len(_completed(home)) == 4
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.*")) == [
        *(f"a/img{k:03d}.webp" for k in range(4)), *(f"b/img{k:03d}.jpg" for k in range(4))]
    (batch,) = (home / "batches").iterdir()
    assert run(home, "verify", batch.name).returncode == 0
