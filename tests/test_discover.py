"""Discovery as a library: order, filters, de-duplication, list files, output names, memory."""

from __future__ import annotations

import io
import os
import random
import tracemalloc

import orjson
import pytest

from batchcli.errors import ConfigError
from batchcli.inputs import discover
from batchcli.inputs.discover import DigestSet, DiscoveryStats, Found, find, write_items
from batchcli.inputs.names import Namer, compile_template, preset_name


def touch(path, data: bytes = b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rels(found):
    return [f.rel for f in found]


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "photos"
    for name in ["b.jpg", "a.JPG", "notes.txt", "sub/c.png", "sub/deep/d.webp", "raw/e.jpg", "a/z.jpg"]:
        touch(root / name, name.encode())
    return root


def test_walk_order_is_sorted_files_first(tree):
    assert rels(find([str(tree)])) == ["a.JPG", "b.jpg", "a/z.jpg", "raw/e.jpg", "sub/c.png", "sub/deep/d.webp"]


def test_ext_lists_and_exclude(tree):
    assert rels(find([str(tree)], discover.parse_exts(["jpg,.PNG", "webp"]))) == [
        "a.JPG", "b.jpg", "a/z.jpg", "raw/e.jpg", "sub/c.png", "sub/deep/d.webp"]
    assert rels(find([str(tree)], ["png"])) == ["sub/c.png"]
    stats = DiscoveryStats()
    got = rels(find([str(tree)], exclude=["raw", "*.webp", "a.*"], stats=stats))
    assert got == ["b.jpg", "a/z.jpg", "sub/c.png"]  # "raw" prunes the folder; "a.*" matches a basename
    assert stats.excluded == 3
    assert rels(find([str(tree)], exclude=["sub/*"])) == ["a.JPG", "b.jpg", "a/z.jpg", "raw/e.jpg"]
    with pytest.raises(ConfigError, match="--ext"):
        discover.parse_exts([" , "])


def test_globs_keep_the_path_below_the_fixed_part(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    assert rels(find(["photos/**/*.jpg"])) == ["a/z.jpg", "b.jpg", "raw/e.jpg"]  # sorted matches
    assert rels(find(["photos/**/*.jpg"], exts=["png"])) == []  # --ext filters glob matches too
    with pytest.raises(ConfigError, match="no file matches"):
        list(find(["photos/*.gif"]))
    # several inputs: each keeps the name of its root, so equal names cannot meet
    assert rels(find(["photos/sub/*.png", str(tree / "raw")])) == ["sub/c.png", "raw/e.jpg"]


def test_same_file_through_several_inputs_is_one_item(tree, tmp_path):
    os.symlink(tree / "b.jpg", tree / "sub" / "link.jpg")
    os.link(tree / "raw" / "e.jpg", tmp_path / "hard.jpg")
    stats = DiscoveryStats()
    got = list(find([str(tree / "b.jpg"), str(tree), str(tree / "sub"), str(tmp_path / "hard.jpg")], stats=stats))
    srcs = [f.src for f in got]
    assert len(srcs) == len(set(srcs)) == 6
    assert got[0].rel == "b.jpg" and stats.duplicates == 3  # b.jpg again, link.jpg, the hard link


def test_output_folder_inside_an_input_is_skipped(tree):
    touch(tree / "web" / "b.jpg")
    touch(tree / "web" / "x" / "old.jpg")
    stats = DiscoveryStats()
    got = rels(find([str(tree), str(tree / "web" / "b.jpg")], skip_dirs=[str(tree / "web")], stats=stats))
    assert got == [f"photos/{r}" for r in ["a.JPG", "b.jpg", "a/z.jpg", "raw/e.jpg", "sub/c.png", "sub/deep/d.webp"]]
    assert stats.in_output == 1  # the file named in web/
    assert stats.out_folders == [str(tree / "web")]  # and the folder web/, pruned once, named


def test_list_with_comments_relative_paths_urls_and_missing_files(tree, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    listing = lists / "todo.txt"
    listing.write_text(
        "# shots to redo\n\n"
        "../photos/b.jpg\n"
        f"{tree / 'sub'}\n"  # an absolute folder is walked
        "   # an indented comment\n"
        "https://example.com/img/cat%20one.jpg?size=2\n"
        "../photos/missing.jpg\n"  # fails later, on its own item
        "../photos/notes.txt\n"  # not an image extension
        "../photos/b.jpg\r\n")  # CRLF, and a duplicate
    got = list(find([], from_file=str(listing)))
    assert [f.src for f in got] == [str(tree / "b.jpg"), str(tree / "sub" / "c.png"), str(tree / "sub/deep/d.webp"),
                                    "https://example.com/img/cat%20one.jpg?size=2", str(tree / "missing.jpg")]
    outside = str(tree).lstrip("/")  # outside the list's folder: the absolute path is mirrored
    assert [f.rel for f in got] == [f"{outside}/b.jpg", f"{outside}/sub/c.png", f"{outside}/sub/deep/d.webp",
                                    "cat_one.jpg", f"{outside}/missing.jpg"]


def test_stdin_list_is_relative_to_the_current_folder(tree, monkeypatch):
    monkeypatch.chdir(tree)
    stdin = io.BytesIO(b"sub/c.png\nb.jpg\n")
    assert rels(find(["-"], stdin=stdin)) == ["sub/c.png", "b.jpg"]
    stdin = io.BytesIO(b".\n./sub\n./b.jpg\n")  # what `find .` prints: the folder, then its contents
    stats = DiscoveryStats()
    assert rels(find(["-"], stdin=stdin, stats=stats)) == ["a.JPG", "b.jpg", "a/z.jpg", "raw/e.jpg", "sub/c.png",
                                                           "sub/deep/d.webp"]
    assert stats.duplicates == 1
    with pytest.raises(ConfigError, match="only once"):
        list(find(["-"], from_file="-", stdin=io.BytesIO(b"")))


def test_dedupe_content(tree):
    touch(tree / "copy" / "same.jpg", b"b.jpg")  # the bytes of photos/b.jpg
    stats = DiscoveryStats()
    got = rels(find([str(tree)], dedupe="content", stats=stats))
    assert "copy/same.jpg" not in got and "b.jpg" in got and stats.dedupe_skipped == 1
    with pytest.raises(ConfigError, match="expected 'content'"):
        list(find([str(tree)], dedupe="fuzzy"))


@pytest.mark.parametrize("wide", [True, False])
def test_digest_set_matches_a_python_set(wide):
    rng = random.Random(7)
    keys = [rng.randbytes(16) for _ in range(5000)]
    keys += keys[:700]
    rng.shuffle(keys)
    ds, ref = DigestSet(4, wide=wide), set()
    for k in keys:
        assert ds.add(k) == (k not in ref)
        ref.add(k)
    assert ds.count == len(ref) == 5000


def test_digest_set_pairs_are_exact_for_inode_runs():
    """(inode, device) keys: long runs of neighbouring inodes, the same inode on two devices,
    huge values; every key distinct from every other, repeats caught."""
    rng = random.Random(3)
    keys = [(ino, dev) for dev in (2049, 2050) for ino in range(1_000_000, 1_006_000)]
    keys += [(rng.getrandbits(64), rng.getrandbits(40)) for _ in range(2000)]
    keys += keys[::7]
    rng.shuffle(keys)
    ds, ref = DigestSet(4), set()
    for k in keys:
        assert ds.add_pair(*k) == (k not in ref)
        ref.add(k)
    assert ds.count == len(ref) == 14000


def items(found, namer=None) -> list[dict]:
    buf = io.BytesIO()
    write_items(found, buf, namer)
    return [orjson.loads(line) for line in buf.getvalue().splitlines()]


def test_default_names_mirror_folders_and_stay_unique_across_the_batch():
    found = [Found("/x/a.jpg", "a.jpg"), Found("/x/a.png", "a.png"), Found("/x/s/a.jpg", "s/a.jpg"),
             Found("/y/A.jpg", "A.jpg"), Found("/z/new\nline.jpg", "new\nline.jpg"), Found("/y/a.webp", "a.webp")]
    assert [r["stem"] for r in items(found)] == ["a", "a_png", "s/a", "A_2", "new_line", "a_webp"]


@pytest.mark.parametrize("template, expected", [
    ("{stem}_web.{ext}", ["s/a_web", "s/a_web_2", "s/b_web"]),
    ("{stem}_{preset}", ["s/a_warm", "s/a_warm_2", "s/b_warm"]),
    ("{name}-{i:04d}.{ext}", ["s/shoot-0000", "s/shoot-0001", "s/shoot-0002"]),
    ("{parent}/{stem}.{ext}", ["x/a", "y/a", "y/b"]),  # a "/" in the template: the template decides folders
    ("{rel}/{stem} #{i}.{ext}", ["s/a__0", "s/a__1", "s/b__2"]),
    ("../{stem}..{ext}", ["a.", "a._2", "b."]),  # ".." removed, never leaves the output folder
])
def test_name_templates(template, expected):
    found = [Found("/p/x/a.jpg", "s/a.jpg"), Found("/p/y/a.png", "s/a.png"), Found("/p/y/b.jpg", "s/b.jpg")]
    namer = Namer(template, batch_name="shoot", preset="warm")
    assert [r["stem"] for r in items(found, namer)] == expected


def test_template_names_are_made_safe():
    namer = Namer("{stem}.{ext}")
    url = "https://h/a/%2F..%2Fb.jpg"
    found = [Found("/p/été photo*?.jpg", "dir one/été photo*?.jpg"), Found(url, discover.url_name(url))]
    assert [r["stem"] for r in items(found, namer)] == ["dir_one/été_photo__", "_.._b"]


@pytest.mark.parametrize("template, message", [
    ("{stem}_{ext}", "'.{ext}' at the end"),
    ("{ext}/{stem}", "only come last"),
    ("{stem}.{ext:>3}", "'.{ext}' at the end"),
    ("{stem}_{size}.{ext}", "unknown field {size}"),
    ("{stem.__class__}", "unknown field"),
    ("{}", "unknown field"),
    ("{stem!r}", "conversions"),
    ("{i:q}", "Unknown format code"),
    ("{stem", "--name-template"),
    (".{ext}", "empty"),
])
def test_bad_templates(template, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")):
        compile_template(template)


def test_preset_name_from_the_pipeline_spec():
    assert preset_name([{"name": "resize"}, {"name": "preset", "look": "vintage", "blend": 60.0}]) == "vintage"
    assert preset_name([{"name": "preset", "look": "looks/film.toml"}]) == "film"
    assert preset_name([{"name": "resize"}]) == "none"


def test_a_long_list_streams(tmp_path, monkeypatch):
    """Memory per item is the fixed-size digests of the seen-sets, whatever the length of the
    paths: no line, path or Found is kept once written. (The sets' first keys sit in a Python
    set of bounded size, seen.SET_KEYS; here they go to the flat tables at once.)"""
    from batchcli.inputs import seen

    monkeypatch.setattr(seen, "SET_KEYS", 16)

    def peak(n: int) -> int:
        listing = tmp_path / f"list{n}.txt"
        with open(listing, "w") as fh:
            for k in range(n):
                fh.write(f"gone/{'long folder name ' * 12}{k // 1000}/img{k}.jpg\n")  # ~240 bytes a line
        tracemalloc.start()
        with open(tmp_path / "items.jsonl", "wb") as out:
            assert write_items(find([], from_file=str(listing)), out) == n
        result = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return result

    small, large = peak(1_000), peak(6_000)
    assert (large - small) / 5_000 < 200  # bytes per extra item; keeping the lines alone would be 280+


def test_spill_set_answers_exactly_across_spills(tmp_path):
    from batchcli.inputs.seen import SpillSet

    rng = random.Random(7)
    pool = [rng.getrandbits(64) for _ in range(6000)]
    s, ref = SpillSet(str(tmp_path), spill=500), set()
    for _ in range(20000):
        k = rng.choice(pool) if rng.random() < 0.5 else rng.getrandbits(64)
        want = (k | 3) not in ref  # kept keys are stored with their two low bits set
        ref.add(k | 3)
        assert s.add(k) is want
    assert len(s.runs) > 10 and s.count == len(ref)
    assert os.listdir(tmp_path) == []  # run files are open but unlinked: nothing to clean up
    s.close()


def test_spill_set_answers_exactly_from_its_set_to_its_table(monkeypatch):
    from batchcli.inputs import seen

    monkeypatch.setattr(seen, "SET_KEYS", 300)
    rng = random.Random(11)
    pool = [rng.getrandbits(64) for _ in range(2000)]
    s, ref = seen.SpillSet(None), set()
    for n in range(6000):
        k, keep = rng.choice(pool), n % 3 != 0
        stored = (k | 3) if keep else (k | 1) & ~2
        assert s.add(k, keep=keep) is (stored not in ref)
        ref.add(stored)
    assert s.fast is None and s.count == len(ref) and not s.runs


def test_a_long_list_gives_the_same_items_when_its_sets_spill(tmp_path, monkeypatch):
    """Duplicates and name collisions far apart in a list: the same items.jsonl with sets that
    spill every 40 keys as with sets held in memory."""
    from batchcli.inputs import seen

    src = tmp_path / "in"
    for k in range(30):
        touch(src / f"d{k % 3}" / f"img{k % 10}.{'jpg' if k % 2 else 'png'}")
    lines = [str(p) for p in sorted(src.rglob("*.*"))] * 3 + [f"/nowhere/x{k}.jpg" for k in range(200)] * 2
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")

    def items(spill_dir):
        out = io.BytesIO()
        stats = DiscoveryStats()
        n = write_items(find([], from_file=str(listing), stats=stats, spill_dir=spill_dir), out, stats=stats,
                        spill_dir=spill_dir)
        return n, stats.duplicates, out.getvalue()

    whole = items(None)
    monkeypatch.setattr(seen, "SPILL", 40)
    spilled = items(str(tmp_path))
    assert spilled == whole and whole[0] == 230 and whole[1] == 60 + 200
