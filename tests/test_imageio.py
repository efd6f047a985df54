"""Decoding and encoding policy: every corpus file ends as pinned here, and generated edge cases."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from batchcli.errors import ItemError
from batchcli.imaging import imageio
from batchcli.imaging.imageio import Limits
from batchcli.pipeline import Pipeline

SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus"
SMALL = Pipeline.parse("orient | resize 64x64 | preset warm blend=50 | sharpen")

# The policy for ../shared/corpus/images (CATALOG.md): every ok/ and odd/ file decodes, except
# these, which fail their item with this class. Every bad/ file fails with the class given here,
# except the five that both OpenCV and a careful reader accept ("ok"): the catalog leaves them to
# us, and their pixels are intact enough to use.
ODD_FAILURES = {
    "10ct_32bit_128.tiff": "unsupported",  # 32-bit float TIFF: OpenCV cannot read it
    "vips_2bit.tif": "unsupported",
    "vips_ojpeg-strip.tif": "unsupported",
    "vips_Bretagne2_4.j2k": "unsupported",  # tiled JPEG 2000
}
BAD = {
    "zero_bytes.jpg": "decode",
    "text_readme_named.jpg": "decode",
    "svg_markup_named.jpg": "unsupported",
    "hopper_jpg_header_only.jpg": "truncated",
    "hopper_jpg_trunc50.jpg": "truncated",
    "vips_truncated.jpg": "truncated",
    "truncated_jpeg.jpg": "truncated",
    "progressive_jpg_trunc50.jpg": "truncated",
    "truncated_image.png": "truncated",
    "truncated_end_chunk.png": "truncated",
    "hopper_png_trunc50.png": "truncated",
    "broken.png": "truncated",
    "broken_data_stream.png": "truncated",
    "pngtest_bad.png.bin": "decode",
    "hopper_webp_trunc50.webp": "truncated",
    "flower_webp_trunc50.webp": "truncated",
    "hopper_tif_trunc50.tif": "truncated",
    "multipage_tiff_trunc60.tiff": "ok",  # page 1 is complete; only later pages are cut
    "vips_truncated.gif": "truncated",
    "iss634_gif_trunc50.gif": "truncated",
    "vips_invalid_multiframe.gif": "decode",
    "crash-0c7e0e8e11ce787078f00b5b0ca409a167f070e0.tif": "decode",
    "crash-0da013a13571cc8eb457a39fee8db18f8a3c7127.tif": "ok",  # both decoders read 218x84
    "crash-2020-10-test.tif": "decode",
    "crash-338516dbd2f0e83caddb8ce256c22db3bd6dc40f.tif": "decode",
    "crash-74d2a78403a5a59db1fb0a2b8735ac068a75f6e3.tif": "ok",  # imdecode (our one entry point) reads it
    "crash-86214e58da443d2b80820cff9677a38a33dcbbca.tif": "decode",
    "crash-4fb027452e6988530aa5dabee76eecacb3b79f8a.j2k": "decode",
    "crash-d2c93af851d3ab9a19e34503626368b2ecde9c03.j2k": "decode",
    "libtiff_segfault.tif": "decode",
    "oom-225817ca0f8c663be7ab4b9e717b02c661e66834.tif": "decode",
    "timeout-6646305047838720": "decode",
    "tiff_overflow_rows_per_strip.tif": "decode",
    "seek_too_large.tif": "decode",
    "zero_height.j2k": "decode",
    "zero_width.gif": "decode",
    "negative_size.ppm": "decode",
    "not_enough_data.jp2": "decode",
    "bmpsuite_b_badrle.bmp": "decode",
    "bmpsuite_b_shortfile.bmp": "truncated",
    "bmpsuite_b_badbitcount.bmp": "decode",
    "bmpsuite_b_badheadersize.bmp": "ok",  # OpenCV reads the pixels despite the odd header size
    "bmpsuite_q_rgb24jpeg.bmp": "unsupported",
    "decompression_bomb.gif": "too_large",
    "decompression_bomb_extents.gif": "ok",  # a 100x100 canvas; frame extents are clipped
    "bmpsuite_b_reallybig.bmp": "too_large",
    "vips_17000x17000.avif": "too_large",
    "bomb_png_1bit_30000x30000.png": "too_large",
    "bomb_png_1bit_33000x33000.png": "too_large",
    "bomb_webp_lossless_16383x16383.webp": "too_large",
}


def _catalog() -> list[dict]:
    path = CORPUS / "catalog.json"
    if not path.exists():
        return []
    return json.loads(path.read_text())


def _expected(row: dict) -> str:
    if row["dir"] == "bad":
        return BAD[row["file"]]
    return ODD_FAILURES.get(row["file"], "ok")


def _outcome(path: Path) -> tuple[str, str]:
    try:
        frame = imageio.load(str(path))
        SMALL.run(frame)
        data, _fmt = imageio.encode(frame)
        assert data
        return "ok", ""
    except ItemError as exc:
        return exc.error_class, str(exc)


@pytest.mark.shared
@pytest.mark.parametrize("row", _catalog() or [None], ids=lambda r: f"{r['dir']}/{r['file']}" if r else "absent")
def test_corpus_file_ends_as_pinned(row):
    if row is None:
        pytest.skip(f"{CORPUS} not available")
    path = CORPUS / "images" / row["dir"] / row["file"]
    started = time.perf_counter()
    outcome, message = _outcome(path)
    elapsed = time.perf_counter() - started
    assert outcome == _expected(row), message
    if outcome != "ok":
        assert message and "\n" not in message and len(message) < 300
        assert str(path) not in message  # the record carries the path; the reason stays short
    if outcome == "too_large":
        assert elapsed < 0.5, f"refused in {elapsed:.2f}s, not from the header"


def test_corpus_policy_covers_every_bad_file():
    rows = _catalog()
    if not rows:
        pytest.skip(f"{CORPUS} not available")
    assert {r["file"] for r in rows if r["dir"] == "bad"} == set(BAD)
    assert set(ODD_FAILURES) <= {r["file"] for r in rows if r["dir"] == "odd"}


def _corpus(name: str) -> Path:
    for sub in ("ok", "odd", "bad"):
        p = CORPUS / "images" / sub / name
        if p.exists():
            return p
    pytest.skip(f"{name} not in {CORPUS}")


@pytest.mark.shared
@pytest.mark.parametrize("name, shape, dtype", [
    ("tiff_16bit_RGB.tiff", (40, 100, 3), np.uint16),
    ("16bit.cropped.tif", (64, 64), np.uint16),
    ("12bit.cropped.tif", (100, 100), np.uint16),
    ("mode_16bit.png", (64, 128, 4), np.uint16),
    ("hopper_gray.jpg", (128, 128), np.uint8),
    ("vips_rgba.png", (128, 128, 4), np.uint8),
    ("p_trns_single.png", (64, 64, 4), np.uint8),
    ("pil_sample_cmyk.jpg", (100, 100, 3), np.uint8),
    ("tiff_strip_cmyk_jpeg.tif", (100, 100, 3), np.uint8),
    ("16_bit_binary_pgm.tiff", (100, 20), np.uint16),
    ("hopper.pfm", (128, 128), np.uint8),
    ("vips_sample.hdr", (980, 141, 3), np.uint8),
])
def test_corpus_real_form_is_kept(name, shape, dtype):
    frame = imageio.load(str(_corpus(name)))
    assert frame.img.shape == shape
    assert frame.img.dtype == dtype


@pytest.mark.shared
@pytest.mark.parametrize("name", ["pil_sample_cmyk.jpg", "tiff_strip_cmyk_jpeg.tif", "hopper.Lab.tif"])
def test_corpus_colour_spaces_decode_to_true_colours(name):
    from PIL import Image

    frame = imageio.load(str(_corpus(name)))
    with Image.open(_corpus(name)) as im:
        ref = np.asarray(im.convert("RGB"))[:, :, ::-1].astype(float)
    assert np.abs(frame.img.astype(float) - ref).mean() < 3
    assert "converted" in frame.meta["decode"]


@pytest.mark.shared
def test_corpus_lab_tiff_matches_the_rgb_original():
    lab = imageio.load(str(_corpus("hopper.Lab.tif"))).img.astype(float)
    rgb = imageio.load(str(_corpus("hopper.tif"))).img.astype(float)
    assert np.abs(lab - rgb).mean() < 5  # OpenCV alone, reading Lab as RGB, is ~13 off


@pytest.mark.shared
@pytest.mark.parametrize("name, count", [("chi.gif", 31), ("iss634.webp", 42), ("frozenpond.mpo", 2),
                                         ("multipage.tiff", 3)])
def test_corpus_multi_frame_files_use_the_first_frame_and_say_so(name, count):
    frame = imageio.load(str(_corpus(name)))
    assert frame.meta["frames"] == {"count": count, "used": 1}


@pytest.mark.shared
def test_corpus_exif_orientations_all_end_upright():
    views = {}
    for n in range(1, 9):
        frame = imageio.load(str(_corpus(f"vips_rotation_{n}.jpg")))
        assert frame.orientation == n
        Pipeline.parse("orient").run(frame)
        h, w = frame.img.shape[:2]
        assert h > w  # every variant shows the same portrait picture
        views[n] = cv2.resize(frame.img, (30, 40), interpolation=cv2.INTER_AREA).astype(float)
    for n in range(2, 9):
        assert np.abs(views[n] - views[1]).mean() < 12, n


# --- generated inputs ----------------------------------------------------------------------------

def _photo(h=120, w=160, channels=3, dtype=np.uint8) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    top = 65535 if dtype == np.uint16 else 255
    planes = [(x / w), (y / h), ((x + y) / (w + h))][:channels] + ([np.full((h, w), 0.5)] if channels == 4 else [])
    img = np.dstack(planes[:channels]) if channels > 1 else planes[0]
    return (img * top).astype(dtype)


def _write(tmp_path: Path, name: str, img: np.ndarray) -> Path:
    p = tmp_path / name
    ok, buf = cv2.imencode(os.path.splitext(name)[1], img)
    assert ok
    p.write_bytes(buf.tobytes())
    return p


@pytest.mark.parametrize("name, channels, dtype", [
    ("a.png", 1, np.uint8), ("a.png", 3, np.uint16), ("a.png", 4, np.uint8), ("a.png", 4, np.uint16),
    ("a.tif", 3, np.uint16), ("a.jpg", 3, np.uint8), ("a.jpg", 1, np.uint8), ("a.webp", 4, np.uint8),
])
def test_generated_images_decode_in_their_real_form(tmp_path, name, channels, dtype):
    img = _photo(channels=channels, dtype=dtype)
    frame = imageio.load(str(_write(tmp_path, name, img)))
    assert frame.img.shape == img.shape and frame.img.dtype == dtype
    if name.endswith((".png", ".tif")):
        assert np.array_equal(frame.img, img)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_tiff_alpha_is_read_as_stored(tmp_path, mode):
    """A gray+alpha TIFF came out gray with its transparency gone (OpenCV's TIFF reader drops a
    gray image's alpha), and an 8-bit RGBA TIFF as other tools write it (unassociated alpha) had its
    colours multiplied by the alpha (200 at alpha 40 read as 31). Both decode as stored, as BGRA."""
    from PIL import Image

    alpha = np.tile(np.arange(160, dtype=np.uint8), (120, 1))
    colour = [_photo(channels=1)] if mode == "LA" else list(np.moveaxis(_photo()[:, :, ::-1], 2, 0))
    Image.fromarray(np.dstack(colour + [alpha]), mode).save(tmp_path / "a.tif", compression="tiff_lzw")
    frame = imageio.load(str(tmp_path / "a.tif"))
    bgr = colour * 3 if mode == "LA" else colour[::-1]
    assert np.array_equal(frame.img, np.dstack(bgr + [alpha]))
    path, _, _ = imageio.save(frame, str(tmp_path / "out"))
    assert Image.open(path).getchannel("A").getextrema() == (0, 159)
    exif = Image.Exif()
    exif[0x0112] = 6  # turned once, upright: libtiff must not turn it before the pending orientation does
    Image.fromarray(np.dstack(colour + [alpha]), mode).save(tmp_path / "b.tif", exif=exif.tobytes())
    path, _, _ = imageio.save(imageio.load(str(tmp_path / "b.tif")), str(tmp_path / "turned"))
    assert np.array_equal(imageio.load(path).img, np.rot90(np.dstack(bgr + [alpha]), -1))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_output_declares_its_alpha(tmp_path, dtype):
    """OpenCV writes an RGBA TIFF without ExtraSamples: readers that follow the standard took the
    fourth channel for an unknown one and showed the picture opaque."""
    from PIL import Image

    img = _photo(channels=4, dtype=dtype)
    frame = imageio.load(str(_write(tmp_path, "a.png", img)))
    frame.out_format = "tiff"
    path, _, _ = imageio.save(frame, str(tmp_path / "out"))
    assert Image.open(path).tag_v2.get(338) == (2,)  # ExtraSamples: unassociated alpha
    assert np.array_equal(imageio.load(path).img, img)


def _load_error(path, data=None, limits=Limits()) -> ItemError:
    with pytest.raises(ItemError) as info:
        imageio.load(str(path), limits, data=data)
    return info.value


def test_truncated_jpeg_fails_as_truncated(tmp_path):
    data = _write(tmp_path, "a.jpg", _photo(400, 400)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    err = _load_error(tmp_path / "cut.jpg")
    assert err.error_class == "truncated"


@pytest.mark.parametrize("content, cls, words", [
    (b"", "decode", "empty file"),
    (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "decode", "HTML"),
    (b"just some notes\nnot a picture\n", "decode", "plain text"),
    (b"\x00\x01\x02garbage" * 10, "decode", "not a recognised image format"),
    (b'<svg xmlns="http://www.w3.org/2000/svg"></svg>', "unsupported", "SVG"),
])
def test_non_images_named_jpg_fail_with_a_clear_reason(tmp_path, content, cls, words):
    p = tmp_path / "photo.jpg"
    p.write_bytes(content)
    err = _load_error(p)
    assert err.error_class == cls and words in str(err)


def test_directories_and_missing_files_are_unreadable(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    assert _load_error(tmp_path / "folder.jpg").error_class == "unreadable"
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    err = _load_error(tmp_path / "link.jpg")
    assert err.error_class == "unreadable" and "symlink" in str(err)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_permissions(tmp_path):
    p = _write(tmp_path, "a.png", _photo())
    p.chmod(0)
    try:
        err = _load_error(p)
    finally:
        p.chmod(0o644)
    assert err.error_class == "unreadable" and "permission" in str(err)


@pytest.mark.parametrize("name", ["with space.png", "ünïcødé 写真.png", "new\nline.png"])
def test_awkward_names_work(tmp_path, name):
    p = _write(tmp_path, "plain.png", _photo())
    target = tmp_path / name
    p.rename(target)
    assert imageio.load(str(target)).img.shape == (120, 160, 3)


@pytest.mark.skipif(shutil.which("convert") is None, reason="ImageMagick's convert is not installed")
def test_webp_output_is_the_file_imagemagick_writes(tmp_path):
    """The same pixels give the same WebP bytes through `convert webp quality=85` as through
    ImageMagick's `-quality 85` (bench_ops measures that encode on both sides)."""
    rng = np.random.default_rng(3)
    img = np.clip(cv2.resize(_photo(90, 120), (480, 360)) + rng.normal(0, 6, (360, 480, 3)), 0, 255).astype(np.uint8)
    src = _write(tmp_path, "a.png", img)
    subprocess.run(["convert", str(src), "-quality", "85", str(tmp_path / "im.webp")], check=True,
                   env=dict(os.environ, MAGICK_THREAD_LIMIT="1"))
    convert = Pipeline.parse("convert webp quality=85")
    convert.prepare()
    data = imageio.encode(convert.run(imageio.load(str(src))))[0]
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    assert data == (tmp_path / "im.webp").read_bytes()


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def test_bombs_are_refused_from_the_header_in_milliseconds(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header(30000, 30000) + b"\x00" * 64)
    started = time.perf_counter()
    err = _load_error(p)
    assert err.error_class == "too_large" and "30000x30000" in str(err)
    assert time.perf_counter() - started < 0.2


def test_limits_are_configurable(tmp_path):
    p = _write(tmp_path, "a.png", _photo(100, 100))
    assert _load_error(p, limits=Limits(max_pixels=9_999)).error_class == "too_large"
    assert _load_error(p, limits=Limits(max_file_size=100)).error_class == "too_large"
    assert imageio.load(str(p), Limits(max_pixels=10_000)).img.shape == (100, 100, 3)


def test_data_from_memory_is_judged_like_a_file(tmp_path):
    data = _write(tmp_path, "a.jpg", _photo()).read_bytes()
    frame = imageio.load("https://example.com/a.jpg", data=data)
    assert frame.fmt == "jpg" and frame.src == "https://example.com/a.jpg"
    assert _load_error("https://example.com/b.jpg", data=data[:500]).error_class == "truncated"


def test_exif_camera_fields_reach_frame_info(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS 5D", 6
    exif.get_ifd(0x8769)[0x9003] = "2021:06:01 12:30:45"
    p = tmp_path / "cam.jpg"
    Image.fromarray(_photo()[:, :, ::-1]).save(p, exif=exif)
    frame = imageio.load(str(p))
    assert frame.orientation == 6
    assert frame.info["camera"] == {"make": "Canon", "model": "EOS 5D", "captured_at": "2021-06-01T12:30:45"}


@pytest.mark.parametrize("spec", ["resize 300x300", "resize 200 mode=long", "resize 250x150 mode=fill",
                                  "resize 300x200 mode=exact", "resize 25 mode=percent", "orient | resize 300x300"])
@pytest.mark.parametrize("gray", [False, True])
def test_shrink_on_load_gives_the_same_size_as_a_full_decode(tmp_path, spec, gray):
    img = _photo(1501, 2003)
    img = img[:, :, 0].copy() if gray else img
    p = _write(tmp_path, "big.jpg", img)
    pipe = Pipeline.parse(spec)
    full = pipe.run(imageio.load(str(p))).img
    small_frame = imageio.load(str(p), shrink_for=pipe.shrink_for)
    assert small_frame.shrink > 1
    assert small_frame.img.ndim == img.ndim
    shrunk = pipe.run(small_frame).img
    assert shrunk.shape == full.shape
    assert np.abs(shrunk.astype(float) - full.astype(float)).mean() < 3


# --- encoding ------------------------------------------------------------------------------------

def _frame(img, fmt="png", spec=""):
    frame = imageio.Frame(img=img, src="mem", fmt=fmt, src_size=(img.shape[1], img.shape[0]))
    return Pipeline.parse(spec).run(frame) if spec else frame


def _decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("fmt, keeps16, keeps_alpha", [
    ("png", True, True), ("tiff", True, True), ("webp", False, True), ("jpg", False, False), ("bmp", False, True),
])
def test_encode_keeps_depth_and_alpha_where_the_format_can(fmt, keeps16, keeps_alpha):
    img = _photo(channels=4, dtype=np.uint16)
    data, out_fmt = imageio.encode(_frame(img, spec=f"convert {fmt}"))
    assert out_fmt == fmt
    back = _decode(data)
    assert back.dtype == (np.uint16 if keeps16 else np.uint8)
    assert back.shape[2] == (4 if keeps_alpha else 3)


def test_jpeg_flattens_alpha_on_the_background_colour():
    img = np.zeros((20, 20, 4), np.uint8)
    img[:, :10] = (0, 0, 255, 255)  # opaque red left half, transparent right half
    data, _ = imageio.encode(_frame(img, spec="convert jpg background=#00ff00 quality=100"))
    back = _decode(data).astype(int)
    assert np.abs(back[10, 3] - [0, 0, 255]).max() < 8
    assert np.abs(back[10, 16] - [0, 255, 0]).max() < 8


def test_avif_is_written_when_the_build_supports_it():
    if not cv2.haveImageWriter(".avif"):
        pytest.skip("no AVIF writer in this OpenCV build")
    data, fmt = imageio.encode(_frame(_photo(), spec="convert avif quality=60"))
    assert fmt == "avif" and _decode(data).shape == (120, 160, 3)


def test_unwritable_source_formats_fall_back_to_png():
    assert imageio.encode(_frame(_photo(), fmt="gif"))[1] == "png"
    assert imageio.encode(_frame(_photo(), fmt="jp2"))[1] == "png"


def test_pending_orientation_is_applied_when_encoding():
    frame = _frame(_photo(20, 40))
    frame.orientation = 6
    assert _decode(imageio.encode(frame)[0]).shape == (40, 20, 3)


def _oriented(orientation: int, long: bool = False, **save) -> bytes:
    """A TIFF (written by Pillow) of an asymmetric picture whose EXIF orientation is `orientation`;
    `long`: the tag stored as a LONG, as some writers do (libtiff obeys it all the same)."""
    import io
    import struct

    from PIL import Image

    ex = Image.Exif()
    ex[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(_photo(30, 50)[:, :, ::-1]).save(out, "TIFF", exif=ex, **save)
    data = bytearray(out.getvalue())
    if long:  # little-endian classic TIFF: the value's low bytes stay where they are
        ifd = struct.unpack("<I", data[4:8])[0]
        for at in range(ifd + 2, ifd + 2 + 12 * struct.unpack("<H", data[ifd:ifd + 2])[0], 12):
            if struct.unpack("<H", data[at:at + 2])[0] == 0x0112:
                data[at + 2:at + 4] = struct.pack("<H", 4)
    return bytes(data)


@pytest.mark.parametrize("save", [{}, {"compression": "tiff_lzw"}, {"big_tiff": True}, {"long": True}], ids=["plain", "lzw", "bigtiff", "long"])
@pytest.mark.parametrize("out", ["png", "tiff"])
def test_tiff_exif_orientation_is_applied_once(save, out):
    """libtiff turns a TIFF upright itself; the pipeline must not turn it a second time."""
    for n in range(1, 9):
        frame = imageio.load("in.tif", data=_oriented(n, **save))
        assert frame.orientation == n
        frame.out_format = out
        got = _decode(imageio.encode(frame)[0])
        want = imageio.apply_orientation(_photo(30, 50), n)
        assert got.shape == want.shape, n
        assert np.abs(got.astype(int) - want).max() <= 1, n


@pytest.mark.parametrize("fmt, name, side", [("webp", "WebP", 16383), ("jpg", "JPEG", 65500)])
def test_an_image_over_an_encoders_side_limit_says_which_limit(fmt, name, side):
    frame = _frame(np.zeros((2, side + 1, 3), np.uint8))
    frame.out_format = fmt
    with pytest.raises(ItemError) as info:
        imageio.encode(frame)
    assert info.value.error_class == "encode"
    assert str(info.value) == (f"cannot encode as {fmt}: the image is {side + 1}x2, over the {name} limit of {side} px "
                               "a side (resize it, or convert png or tiff)")
    frame.img = np.zeros((2, side, 3), np.uint8)
    assert imageio.encode(frame)[1] == fmt  # the limit itself is fine


def test_save_writes_atomically_and_reports_the_hash(tmp_path):
    import hashlib

    path, size, digest = imageio.save(_frame(_photo(), spec="convert webp"), str(tmp_path / "out" / "x"))
    data = Path(path).read_bytes()
    assert path.endswith("x.webp") and size == len(data) and digest == hashlib.sha256(data).hexdigest()
    assert sorted(os.listdir(tmp_path / "out")) == ["x.webp"]


SPECS = [
    "orient | resize 100x100 | preset warm blend=60 | sharpen | convert webp quality=85",
    "crop aspect=1:1 | preset vintage | watermark 'batch' | convert jpg",
    "resize 50 mode=percent | autolevel | whitebalance | clahe | denoise | convert png",
    "pad 200x200 color=#123456 | rotate 90 | flip h | preset mono | convert tiff",
]


@pytest.mark.parametrize("spec", SPECS)
def test_pipelines_are_values_same_input_same_bytes(tmp_path, spec):
    p = _write(tmp_path, "in.jpg", _photo(240, 320))
    first = Pipeline.parse(spec)
    again = Pipeline.parse(first.text())  # rebuilt from its canonical form, as a worker would
    outputs = {imageio.encode(pipe.run(imageio.load(str(p))))[0] for pipe in (first, first, again)}
    assert len(outputs) == 1


@pytest.mark.parametrize("mode, depth", [("I;16", 16), ("L", 8)])
def test_a_gray_png_with_a_transparent_key_keeps_its_transparency(tmp_path, mode, depth):
    """A tRNS colour key in a gray PNG (OpenCV decodes it opaque): that value is transparent in
    the output, which keeps its bit depth."""
    from PIL import Image

    from batchcli.imaging import imageio

    pixels = (np.arange(32 * 32).reshape(32, 32) % 200).astype(np.uint16 if depth == 16 else np.uint8)
    src = tmp_path / "in" / "key.png"
    src.parent.mkdir()
    Image.fromarray(pixels).save(src, transparency=7)
    img = imageio.load(str(src)).img
    assert img.shape == (32, 32, 4) and img.dtype == pixels.dtype
    assert ((img[:, :, 3] == 0) == (pixels == 7)).all() and (img[:, :, 0] == pixels).all()
    r = subprocess.run([sys.executable, "-m", "batchcli", "start", str(src.parent), "--out", str(tmp_path / "out"),
                        "-p", "convert png", "--quiet"], env={**os.environ, "BATCHCLI_HOME": str(tmp_path / "home")},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = cv2.imread(str(tmp_path / "out" / "key.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (32, 32, 4) and out.dtype == pixels.dtype and ((out[:, :, 3] == 0) == (pixels == 7)).all()
