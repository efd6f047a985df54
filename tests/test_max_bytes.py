"""`convert jpg max-bytes=300K`: the highest quality whose file fits, found by bisection."""

from __future__ import annotations

import json

import pytest
from crashops import records, run

from tests.photos import photographer_jpeg


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    import cv2
    import numpy as np
    import pyexiv2

    root = tmp_path_factory.mktemp("maxbytes")
    path = photographer_jpeg(root / "in" / "p.jpg", 320, 240,  # small: HEIC encodes a 1200x900 in 2.5 s
                              icc=_srgb(), orientation=1)
    img = cv2.imread(str(path))  # texture, so quality matters to the size
    noise = np.random.default_rng(1).integers(-20, 20, img.shape, dtype=np.int16)
    ok, buf = cv2.imencode(".jpg", np.clip(img + noise, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 95])
    with pyexiv2.ImageData(path.read_bytes()) as src, pyexiv2.ImageData(buf.tobytes()) as dst:
        src.copy_to_another_image(dst)
        path.write_bytes(dst.get_bytes())
    return root


def _srgb() -> bytes:
    from tests.photos import icc_profile

    return icc_profile("sRGB")


def _done(home) -> dict:
    (batch,) = (home / "batches").iterdir()
    (rec,) = [r for r in records(batch / "journal.jsonl") if r["type"] in ("item_completed", "item_failed")]
    return rec


@pytest.mark.parametrize("fmt, ext", [("jpg", "jpg"), ("webp", "webp"), ("avif", "avif"), ("heic", "heic")])
def test_the_highest_quality_that_fits_is_chosen_and_recorded(photo, tmp_path, fmt, ext):
    from batchcli.imaging.encode import can_write

    if not can_write(fmt):
        pytest.skip(f"this installation cannot write {fmt}")
    limit = 16 * 1024
    home, out = tmp_path / "home", tmp_path / "out"
    r = run(home, "start", photo / "in", "--out", out, "-p", f"convert {fmt} max-bytes=16K")
    assert r.returncode == 0, r.stderr
    rec = _done(home)
    chosen = rec["meta"]["convert"]
    size = (out / f"p.{ext}").stat().st_size
    assert size == rec["bytes"] <= limit
    assert chosen["max_bytes"] == limit and 1 <= chosen["quality"] < 90 and chosen["encodes"] <= 7
    # one step of quality more would not fit (metadata included): it is the highest
    r = run(tmp_path / "home2", "start", photo / "in", "--out", tmp_path / "above", "-p",
            f"convert {fmt} quality={chosen['quality'] + 1}")
    assert r.returncode == 0 and (tmp_path / "above" / f"p.{ext}").stat().st_size > limit
    from batchcli.imaging import imageio

    assert imageio.load(str(out / f"p.{ext}")).img.shape[:2] == (240, 320)


def test_the_quality_given_is_the_ceiling(photo, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    r = run(home, "start", photo / "in", "--out", out, "-p", "convert jpg quality=40 max-bytes=5M")
    assert r.returncode == 0, r.stderr
    assert _done(home)["meta"]["convert"] == {"quality": 40, "max_bytes": 5 << 20, "encodes": 6}


def test_a_limit_nothing_fits_in_fails_the_item_with_the_reason(photo, tmp_path):
    home = tmp_path / "home"
    r = run(home, "start", photo / "in", "--out", tmp_path / "out", "-p", "convert jpg max-bytes=2K")
    assert r.returncode == 1
    rec = _done(home)
    assert rec["error_class"] == "encode"
    assert "cannot fit jpg in 2 KiB:" in rec["error"] and "even at quality 1 (resize it smaller first)" in rec["error"]


@pytest.mark.parametrize("spec, message", [
    ("convert png max-bytes=300K", "convert: max-bytes needs a format with a quality (jpg, webp, avif, heic), not png"),
    ("convert webp lossless=true max-bytes=300K", "not lossless webp"),
    ("convert jpg max-bytes=lots", "convert: max-bytes= 'lots': expected a size such as 512M"),
    ("convert jpg max-bytes=-5K", "convert: max-bytes= '-5K': expected a size"),
    ("convert jpg max-bytes=10", "convert: max_bytes: 10 is below the minimum 1024"),
])
def test_bad_limits_are_usage_errors(photo, tmp_path, spec, message):
    r = run(tmp_path / "home", "start", photo / "in", "--out", tmp_path / "out", "-p", spec)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_a_pipeline_file_spells_it_as_the_command_line_does(photo, tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[[op]]\nname = "convert"\nformat = "jpg"\nmax-bytes = "300K"\n')
    from batchcli.pipeline import Pipeline

    assert Pipeline.from_toml(str(toml)).spec() == Pipeline.parse("convert jpg max-bytes=300K").spec()
    toml.write_text('[[op]]\nname = "convert"\nformat = "jpg"\nmax-bytes = "300K"\nmax_bytes = "200K"\n')
    r = run(tmp_path / "home", "start", photo / "in", "--out", tmp_path / "out", "--pipeline-file", toml)
    assert r.returncode == 2 and "max_bytes given twice" in r.stderr, r.stderr


def test_pipelines_without_a_limit_keep_their_fingerprint():
    from batchcli.pipeline import Pipeline

    plain = Pipeline.parse("convert jpg quality=80")
    assert "max_bytes" not in plain.spec()[0]
    limited = Pipeline.parse("convert jpg quality=80 max-bytes=300K")
    assert limited.spec()[0]["max_bytes"] == 300 * 1024 and limited.fingerprint() != plain.fingerprint()
    assert limited.text() == "convert jpg quality=80 max_bytes=307200"
    assert Pipeline.parse(limited.text()).fingerprint() == limited.fingerprint()
    assert json.loads(json.dumps(limited.spec())) == Pipeline.from_spec(limited.spec()).spec()
