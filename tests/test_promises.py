"""What the README promises, the tool does: the smaller promises found false once, each tried
the way a new user would, with the real CLI and real files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import cli, make_image
from crashops import records
from typer.main import get_command
from typer.testing import CliRunner

from batchcli.cli.app import app


def _batch(home: Path) -> Path:
    return max((home / "batches").iterdir())


def test_a_format_that_cannot_be_written_becomes_png(tmp_path):
    """README: without convert an output keeps its input's format where batchcli can write it;
    a GIF (which it cannot write) becomes a PNG with the .png extension."""
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(src / "anim.gif")
    make_image(src / "photo.webp", 20, 10)
    home = tmp_path / "home"
    r = cli("start", str(src), "--out", str(tmp_path / "out"), "--pipeline", "resize 10x10", home=home)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["anim.png", "photo.webp"]
    assert (tmp_path / "out" / "anim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contact_sheet_captions_give_the_real_sizes(tmp_path):
    """A thumbnail decoded at a reduced scale still reports the image's own size (2049 x 1001,
    not 2050 x 1002), upright."""
    from batchcli.imaging.headers import Limits
    from batchcli.results.contact import thumbnail

    odd = make_image(tmp_path / "odd.jpg", 2049, 1001)
    img, size = thumbnail(str(odd), 256, Limits())
    assert size == (2049, 1001) and max(img.shape[:2]) == 256


@pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")
def test_the_readme_jq_forms_on_a_journal_with_a_torn_last_line(tmp_path):
    src = tmp_path / "in"
    make_image(src / "a.png")
    (src / "b.png").write_text("not an image")
    home = tmp_path / "home"
    assert cli("start", str(src), "--out", str(tmp_path / "out"), home=home).returncode == 1
    journal = _batch(home) / "journal.jsonl"
    with open(journal, "ab") as fh:
        fh.write(b'{"seq":99,"t":1.0,"type":"item_comp')  # a crash mid-write
    plain = subprocess.run(["jq", "-c", 'select(.type=="item_failed")', str(journal)], capture_output=True, text=True)
    assert plain.returncode != 0 and '"item_failed"' in plain.stdout  # what came before, then an error
    skip = subprocess.run(["jq", "-cR", 'fromjson? | select(.type=="item_failed")', str(journal)],
                          capture_output=True, text=True)
    assert skip.returncode == 0, skip.stderr
    assert [json.loads(ln)["type"] for ln in skip.stdout.splitlines()] == ["item_failed"]


def test_home_before_or_after_the_subcommand(tmp_path):
    src = tmp_path / "in"
    make_image(src / "a.png")
    home = tmp_path / "home"
    first = cli("--home", str(home), "start", str(src), "--pipeline", "analyze", home=tmp_path / "elsewhere")
    assert first.returncode == 0, first.stderr
    assert (home / "batches").is_dir() and not (tmp_path / "elsewhere").exists()
    listed = json.loads(cli("--home", str(home), "list", "--json").stdout)
    assert listed["total"] == 1
    assert json.loads(cli("list", "--json", "--home", str(home)).stdout)["total"] == 1
    # the command's own --home wins over the one before it
    assert json.loads(cli("--home", str(tmp_path / "x"), "list", "--json", "--home", str(home)).stdout)["total"] == 1


def test_a_home_that_is_no_folder_is_a_usage_error_before_any_work(tmp_path):
    src = tmp_path / "in"
    make_image(src / "a.png")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    for home in (str(not_a_folder), "/dev/null"):
        for args in (["--home", home, "status"], ["list", "--home", home],
                     ["start", str(src), "--out", str(tmp_path / "out"), "-p", "analyze", "--home", home],
                     ["sync", str(src), "--out", str(tmp_path / "out"), "-p", "resize 8x8", "--home", home]):
            r = cli(*args)
            assert r.returncode == 2, (args, r.stderr)
            assert r.stderr.strip() == f"Error: {home}: the batch home (--home, BATCHCLI_HOME) is not a folder", args
            assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()
    r = cli("list", home=not_a_folder)  # BATCHCLI_HOME too
    assert r.returncode == 2 and "is not a folder" in r.stderr
    assert not_a_folder.read_text() == "x"


def test_counts_are_spelled_right_and_help_says_what_it_takes(tmp_path):
    src = tmp_path / "in"
    make_image(src / "a.png")
    r = cli("start", str(src), "--pipeline", "analyze", "-w", "1", home=tmp_path / "home")
    assert "1 of 1 item to do on 1 worker\n" in r.stdout and "this run: 1 item in" in r.stdout
    start = get_command(app).commands["start"]  # type: ignore[attr-defined]
    opts = {name: o for o in start.params for name in o.opts}
    assert "auto" in opts["--providers"].help
    runner = CliRunner()
    for name in get_command(app).commands:  # type: ignore[attr-defined]
        helps = runner.invoke(app, [name, "--help"], terminal_width=200).stdout
        assert "<str>" not in helps and "<int" not in helps and "<float" not in helps, (name, helps)
    helps = runner.invoke(app, ["start", "--help"], terminal_width=200).stdout
    helps += runner.invoke(app, ["export", "--help"], terminal_width=200).stdout
    for shown in ("--out DIR", "--pipeline-file FILE", "--from-file FILE", "--home DIR", "--zip FILE", "--to DIR"):
        assert shown in helps


def test_cancelled_and_repaired_batches_say_so_in_text(tmp_path):
    src = tmp_path / "in"
    for k in range(4):
        make_image(src / f"i{k}.png", seed=k)
    home, out = tmp_path / "home", tmp_path / "out"
    assert cli("start", str(src), "--out", str(out), "--pipeline", "convert png", home=home).returncode == 0
    bid = _batch(home).name
    for name in ("i0.png", "i1.png"):
        (out / name).unlink()
    assert cli("verify", bid, "--repair", home=home).returncode == 1
    s = cli("status", bid, home=home).stdout
    assert f"completed, 2 to repair (batchcli resume {bid})" in s
    assert cli("resume", bid, home=home).returncode == 0
    assert "to repair" not in cli("status", bid, home=home).stdout

    r = cli("start", str(src), "--out", str(tmp_path / "out2"), "--pipeline", "crashtest delay=5 | convert png",
            "--detach", home=home, env={"BATCHCLI_TEST_OPS": "crashops",
                                        "PYTHONPATH": str(Path(__file__).parent)})
    assert r.returncode == 0, r.stderr
    second = r.stdout.strip()
    assert cli("cancel", second, home=home).returncode == 0
    text = cli("status", second, home=home).stdout
    skipped = json.loads(cli("status", second, "--json", home=home).stdout)["skipped"]
    assert skipped > 0 and f"skipped    {skipped}" in text
    assert any(rec["type"] == "batch_cancelled" for rec in records(_batch(home) / "journal.jsonl"))


def test_an_input_folder_that_is_the_output_folder_is_named(tmp_path):
    folder = tmp_path / "inplace"
    for k in range(16):
        make_image(folder / f"p{k:02d}.png", seed=k)
    r = cli("start", str(folder), "--out", str(folder), "--pipeline", "convert jpg", home=tmp_path / "home")
    assert r.returncode == 2
    assert f"left out: {folder} (it is the output folder or the batch home, never read as input; " \
           "give another --out)" in r.stderr
    assert "1 inside the output folder" not in r.stderr


def test_the_default_extensions_are_the_ones_the_readme_lists():
    import re

    from batchcli.imaging.raw import EXTENSIONS as RAW
    from batchcli.inputs.discover import DEFAULT_EXTENSIONS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    m = re.search(r"\(default ([a-z ]+), and the camera RAW ones: ([a-z0-9 ]+)\)", readme)
    assert m, "the --ext sentence"
    assert m.group(1).split() + m.group(2).split() == list(DEFAULT_EXTENSIONS)
    assert m.group(2).split() == list(RAW)


def test_over_failures_counts_n_at_once_and_a_percentage_from_20_processed():
    from batchcli.engine.checks import over_failures

    assert not over_failures(("n", 3), 2, 2, 100) and over_failures(("n", 3), 3, 3, 100)
    assert not over_failures(("pct", 10.0), 19, 19, 25)  # 100% failed, but fewer than 20 processed
    assert over_failures(("pct", 10.0), 2, 20, 25) and not over_failures(("pct", 10.0), 1, 20, 25)
    assert over_failures(("pct", 50.0), 3, 5, 5)  # a batch of 5: all of them processed is enough


def test_a_slow_run_s_rate_reads_as_seconds_an_item():
    """One video in 36 s said '(0.0 items/s)'."""
    from batchcli.cli.console import fmt_run_rate

    assert fmt_run_rate(1 / 36) == "36.0 s/item" and fmt_run_rate(2.5) == "2.5 items/s" and fmt_run_rate(0.0) == "0.0 items/s"


def test_max_failures_halts_close_to_its_count_when_failures_come_fast(tmp_path):
    """25 inputs that fail in a fraction of a millisecond each: --max-failures 3 halted after 10
    (the worker had them all in hand). It hands out no more than the failures still allowed."""
    src = tmp_path / "bad"
    src.mkdir()
    for k in range(25):
        (src / f"b{k:02d}.jpg").write_text(f"text {k}")
    r = cli("start", str(src), "--out", str(tmp_path / "out"), "--max-failures", "3", "-w", "1", "-p", "resize 10x10",
            "--json", home=tmp_path / "home")
    assert r.returncode == 1, r.stderr
    end = json.loads(r.stdout.strip().splitlines()[-1])
    assert end["status"] == "failed" and "max-failures 3" in end["reason"]
    assert 3 <= end["failed"] <= 5 and end["remaining"] == 25 - end["failed"], end


def test_start_s_help_gives_the_default_extensions_the_tool_uses():
    r = cli("start", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0 and "default jpg jpeg png webp tif tiff bmp heic heif avif gif and the camera RAW ones" in text
