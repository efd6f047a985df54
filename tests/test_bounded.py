"""Everything the tool reads is bounded (DESIGN.md invariant 11): file arguments are regular files
under a size cap, numbers are finite, counts have ceilings; a bad value is exit 2 before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import cli, make_image, make_images

from batchcli.argfiles import CAPS, read_file
from batchcli.errors import ConfigError
from batchcli.pipeline import Pipeline, all_ops
from batchcli.units import fmt_bytes, fmt_count, parse_count


@pytest.fixture
def fifo(tmp_path) -> str:
    path = tmp_path / "pipe"
    os.mkfifo(path)  # nobody ever writes to it: opening it for reading must not block
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("tiny"), 3, prefix="t")


@pytest.mark.parametrize("step", ["lut {f}", "watermark image={f}", "watermark Hi font={f}", "preset {f}", "profile {f}"])
@pytest.mark.parametrize("target", ["/dev/zero", "fifo", "folder"])
def test_op_file_arguments_must_be_regular_files(step, target, fifo, tmp_path):
    f = {"/dev/zero": "/dev/zero", "fifo": fifo, "folder": str(tmp_path)}[target]
    want = {"/dev/zero": "a character device", "fifo": "a FIFO (named pipe)", "folder": "a folder"}[target]
    with pytest.raises(ConfigError) as info:
        Pipeline.parse(step.format(f=f))
    assert f"{f}: {want}, not a regular file" in str(info.value)


def test_model_files_and_labels_must_be_regular_files(fifo, tmp_path):
    onnx_models = pytest.importorskip("onnx_models")
    with pytest.raises(ConfigError, match="model /dev/zero: a character device, not a regular file"):
        Pipeline.parse("model /dev/zero task=classify")
    model = onnx_models.classifier(tmp_path)
    with pytest.raises(ConfigError, match="labels=.*pipe: a FIFO"):
        Pipeline.parse(f"model {model} task=classify labels={fifo}")
    with pytest.raises(ConfigError, match="model: threshold: 'nan' is not a finite number"):
        Pipeline.parse(f"model {model} task=classify threshold=nan")


def test_file_arguments_over_their_cap_are_refused(tmp_path):
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:
        fh.truncate(CAPS["toml"] + 1)  # sparse: no disk used
    with pytest.raises(ConfigError, match=r"big.toml: 1.0M is over the 1M limit for this file"):
        read_file(str(big), "--pipeline-file", "toml")
    with pytest.raises(ConfigError, match="over the 1M limit"):
        Pipeline.parse(f"preset {big}")


def _png_bomb(path: Path, side: int) -> Path:
    """A real 1-bit PNG of side x side black pixels: a few KB on disk, side*side pixels decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pack = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    idat = b"".join(pack.compress(row) for _ in range(side)) + pack.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_watermark_logos_are_read_like_inputs_and_refused_at_once(tiny, tmp_path):
    """A logo's size comes from its header (a small file can hold a decompression bomb), and an
    empty, truncated or non-image logo is a one-line usage error, before any batch exists."""
    home = tmp_path / "home"
    bomb = _png_bomb(tmp_path / "bomb.png", 10000)
    assert bomb.stat().st_size < 100_000
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.png"
    make_image(tmp_path / "whole.png", 64, 48)
    cut.write_bytes((tmp_path / "whole.png").read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    for logo, reason in [(bomb, "10000x10000 = 100M pixels, over the logo limit of 25M"),
                         (empty, "empty file (0 bytes)"), (cut, "truncated PNG"),
                         (text, "not an image: the file holds plain text")]:
        r = cli("start", str(tiny), "--out", str(tmp_path / "out"), "--pipeline", f"watermark image={logo}",
                home=home, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"Error: watermark image={logo}: {reason}"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (home / "batches").exists() or not os.listdir(home / "batches")
    Pipeline.parse(f"watermark image={_png_bomb(tmp_path / 'logo.png', 5000)}")  # 25M pixels: at the limit


def test_dev_zero_and_fifos_on_the_command_line_exit_2_at_once(tiny, fifo, tmp_path):
    home = tmp_path / "home"
    for args, message in [
        (["--pipeline", "lut /dev/zero"], "lut /dev/zero: a character device, not a regular file"),
        (["--pipeline-file", "/dev/zero"], "--pipeline-file /dev/zero: a character device"),
        (["--pipeline-file", fifo], "a FIFO (named pipe), not a regular file"),
        (["--from-file", fifo, "--pipeline", "convert png"], f"--from-file {fifo}: a FIFO"),
    ]:
        r = cli("start", str(tiny), "--out", str(tmp_path / "out"), *args, home=home, timeout=60)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip() == f"Error: {message}" or message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not (home / "batches").exists() or not os.listdir(home / "batches")  # nothing was started


def test_every_float_parameter_refuses_nan_and_infinities():
    checked = 0
    for name, op in all_ops().items():
        for p in op.params:
            if p.kind not in ("float", "floats"):
                continue
            for bad in ("nan", "inf", "-inf", "NaN", "1,nan,2"):
                with pytest.raises(ConfigError, match=f"{name}: {p.name}: .*(finite|not a valid)"):
                    p.parse(name, bad if p.kind == "floats" or "," not in bad else "nan")
            checked += 1
    assert checked > 10
    with pytest.raises(ConfigError, match="sharpen: amount: 'nan' is not a finite number"):
        Pipeline.parse("sharpen amount=nan")


def test_toml_nan_and_infinity_are_refused(tmp_path):
    pipe = tmp_path / "p.toml"
    pipe.write_text('[[op]]\nname = "sharpen"\namount = nan\n')
    with pytest.raises(ConfigError, match="not a finite number"):
        Pipeline.from_toml(str(pipe))
    pipe.write_text('[[op]]\nname = "convert"\nformat = "jpg"\nquality = inf\n')
    with pytest.raises(ConfigError, match="quality: inf is not a valid int"):
        Pipeline.from_toml(str(pipe))
    look = tmp_path / "look.toml"
    look.write_text("exposure = nan\n")
    with pytest.raises(ConfigError, match="exposure = nan is outside"):
        Pipeline.parse(f"preset {look}")
    cube = tmp_path / "x.cube"
    cube.write_text("LUT_3D_SIZE 2\n" + "0 0 0\n" * 7 + "1 nan 1\n")
    with pytest.raises(ConfigError, match="NaN or infinite"):
        Pipeline.parse(f"lut {cube}")


@pytest.mark.parametrize("args", [["--item-timeout", "nan"], ["--item-timeout", "inf"], ["--max-failures", "nan%"],
                                  ["--max-failures", "inf%"], ["--max-failures", "0"], ["--workers", "100000"],
                                  ["--retries", "1000"], ["--max-pixels", "nan"], ["--max-pixels", "0"],
                                  ["--name-template", "{i:999999999d}.{ext}"], ["--name-template", "{i:{i}d}.{ext}"],
                                  ["--pipeline", "crop aspect=0:0"], ["--pipeline", "crop aspect=16:0"]])
def test_bad_numbers_and_counts_exit_2_before_any_work(args, tiny, tmp_path):
    home = tmp_path / "home"
    r = cli("start", str(tiny), "--out", str(tmp_path / "out"), *args, home=home, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("Error: ") and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_export_template_widths_are_capped(tmp_path):
    from batchcli.results.names import check_template

    with pytest.raises(ConfigError, match="asks for 999999999 characters; at most 64"):
        check_template("{stem}{i:999999999d}.{ext}")
    check_template("{stem}_{i:05d}.{ext}")


def test_other_commands_refuse_nan(tmp_path):
    home = tmp_path / "home"
    for args in (["pause", "x", "--wait", "nan"], ["similar", "x", "--threshold", "nan"]):
        r = cli(*args, home=home)
        assert r.returncode == 2 and "not a finite number" in r.stderr, r.stderr


def test_workers_are_clamped_to_the_items_to_do(tiny, tmp_path):
    home = tmp_path / "home"
    r = cli("start", str(tiny), "--out", str(tmp_path / "out"), "--pipeline", "convert png", "--workers", "20",
            "--json", home=home)
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout.splitlines()[0])
    assert started["type"] == "started" and started["workers"] == 3
    batch = next((home / "batches").iterdir())
    runs = [json.loads(ln) for ln in (batch / "journal.jsonl").read_text().splitlines() if '"batch_started"' in ln]
    assert runs[0]["workers"] == 3 and runs[0]["options"]["workers"] == 20


def test_limits_take_and_speak_the_users_units(tiny, tmp_path):
    assert parse_count("150M", "--max-pixels") == parse_count("150MP", "--max-pixels") == 150_000_000
    assert (fmt_bytes(200 << 20, exact=True), fmt_bytes(1000, exact=True), fmt_bytes(262_500_000)) == \
        ("200M", "1000 bytes", "250.3M")
    assert (fmt_count(150_000_000, exact=True), fmt_count(268_402_689)) == ("150M", "268.4M")
    home = tmp_path / "home"
    r = cli("start", str(tiny / "t000.png"), "--out", str(tmp_path / "a"), "--max-pixels", "1K", home=home)
    assert r.returncode == 1
    assert "64x48 = 3.1K pixels, over --max-pixels 1K" in r.stderr
    size = (tiny / "t000.png").stat().st_size
    r = cli("start", str(tiny / "t000.png"), "--out", str(tmp_path / "b"), "--max-file-size", "1K", home=home)
    assert r.returncode == 1
    assert f"file is {fmt_bytes(size)}, over --max-file-size 1K" in r.stderr
    r = cli("start", str(tiny), "--out", str(tmp_path / "c"), "--max-pixels", "150M", home=home)
    assert r.returncode == 0, r.stderr
    # as typed, not as a unit would divide it (README "Limits"); a resume says it the same way
    r = cli("start", str(tiny / "t000.png"), "--out", str(tmp_path / "d"), "--max-pixels", "1000",
            "--max-file-size", "1048576", home=home)
    assert r.returncode == 1 and "64x48 = 3.1K pixels, over --max-pixels 1000" in r.stderr, r.stderr
    batch = r.stdout.split("batch ", 1)[1].split(":", 1)[0]
    man = json.loads((home / "batches" / batch / "manifest.json").read_text())
    assert man["limits_given"] == {"max_file_size": "1048576", "max_pixels": "1000"}
    r = cli("resume", batch, "--retry-failed", home=home)
    assert r.returncode == 1 and "64x48 = 3.1K pixels, over --max-pixels 1000" in r.stderr, r.stdout + r.stderr
    r = cli("start", str(tiny / "t000.png"), "--out", str(tmp_path / "e"), "--max-file-size", "1024", home=home)
    assert r.returncode == 1 and f"file is {fmt_bytes(size)}, over --max-file-size 1024" in r.stderr, r.stderr


def test_list_status_must_be_a_state(tmp_path):
    r = cli("list", "--status", "bogus", home=tmp_path / "home")
    assert r.returncode == 2
    assert r.stderr.startswith("Error: --status bogus: expected some of pending, scheduled, queued, running")


@pytest.mark.parametrize("args, line", [
    (["--max-pixels", "0"], "Error: --max-pixels 0: must be above 0"),
    (["--max-file-size", "0K"], "Error: --max-file-size 0K: must be above 0"),
])
def test_a_zero_limit_names_its_own_flag(args, line, tiny, tmp_path):
    r = cli("start", str(tiny), "--out", str(tmp_path / "out"), *args, home=tmp_path / "home", timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == line, r.stderr


def test_a_boolean_is_no_number_in_a_pipeline_file(tmp_path):
    from batchcli.pipeline import Pipeline

    toml = tmp_path / "p.toml"
    toml.write_text('[[op]]\nname = "preset"\nlook = "warm"\nblend = true\n')
    with pytest.raises(ConfigError, match="preset: blend: true is not a valid float"):
        Pipeline.from_toml(str(toml))
