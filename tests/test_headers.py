"""The fast JPEG and PNG header readers give exactly what Pillow gives, or step aside (None)."""

from __future__ import annotations

import io

import pytest
from conftest import shared_path
from PIL import Image

from batchcli.imaging import headers, imageio


def pillow_sniff(data: bytes, fast: str):
    """What sniff gives with the fast reader named `fast` switched off: Pillow's answer."""
    saved = getattr(headers, fast)
    setattr(headers, fast, lambda d: None)
    try:
        return imageio.sniff(data)
    finally:
        setattr(headers, fast, saved)


def pillow_header(data: bytes):
    return pillow_sniff(data, "_jpeg_header")


def jpeg(mode: str, size=(40, 30), exif: Image.Exif | None = None, **kw) -> bytes:
    im = Image.new(mode, size, 128 if mode == "L" else None)
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes() if exif is not None else b"", **kw)
    return buf.getvalue()


def camera_exif(orientation: int) -> Image.Exif:
    e = Image.Exif()
    e[0x0112] = orientation
    e[0x010F] = "Acme"
    e[0x0110] = "Snap 5"
    e[0x0132] = "2024:05:06 07:08:09"
    return e


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("progressive", [False, True])
def test_plain_jpegs_read_like_pillow(mode, progressive):
    data = jpeg(mode, progressive=progressive)
    fast = headers._jpeg_header(data)
    assert fast is not None and fast == pillow_header(data)
    assert (fast.width, fast.height, fast.mode) == (40, 30, mode)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_and_camera_like_pillow(orientation):
    data = jpeg("RGB", (50, 20), camera_exif(orientation))
    fast = headers._jpeg_header(data)
    assert fast == pillow_header(data)
    assert fast.orientation == orientation
    assert fast.camera == {"make": "Acme", "model": "Snap 5", "captured_at": "2024-05-06T07:08:09"}


def test_odd_files_are_left_to_pillow():
    good = jpeg("RGB")
    assert headers._jpeg_header(good[:2] + b"\x00\x00" + good[4:]) is None  # not a marker
    assert headers._jpeg_header(good[:20]) is None  # cut before the frame header
    cut = good.index(b"\xff\xc0")
    assert headers._jpeg_header(good[:cut] + b"\xff\xda\x00\x04ab" + good[cut:]) is None  # scan first
    twelve = bytearray(good)
    twelve[cut + 4] = 12  # 12-bit samples
    assert headers._jpeg_header(bytes(twelve)) is None


def test_every_corpus_jpeg_agrees_with_pillow():
    root = shared_path("corpus", "images")
    checked = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data[:3] != b"\xff\xd8\xff":
            continue
        fast, slow = headers._jpeg_header(data), pillow_header(data)
        if fast is None or slow is None:
            continue  # stepped aside, or Pillow cannot read it (then the decoder reports why)
        assert fast == slow, path
        checked += 1
    assert checked >= 10


# --- PNG ---------------------------------------------------------------------------------------
def png(mode: str, size=(30, 20), **kw) -> bytes:
    buf = io.BytesIO()
    im = Image.new(mode, size)
    if mode == "P":
        im.putpalette(list(range(256)) * 3)  # a full palette: stored at 8 bits
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def pillow_png(data: bytes):
    return pillow_sniff(data, "_png_header")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P"])
def test_plain_pngs_read_like_pillow(mode):
    data = png(mode)
    fast = headers._png_header(data)
    assert fast is not None and fast == pillow_png(data)
    assert (fast.width, fast.height, fast.mode) == (30, 20, mode)


def test_unusual_pngs_are_left_to_pillow():
    assert headers._png_header(png("I;16")) is None  # 16-bit
    assert headers._png_header(png("1")) is None  # 1-bit
    exif = Image.Exif()
    exif[0x0112] = 6
    assert headers._png_header(png("RGB", exif=exif.tobytes())) is None  # orientation lives there
    bad = bytearray(png("RGB"))
    bad[29] ^= 0xFF  # the IHDR checksum
    assert headers._png_header(bytes(bad)) is None


def test_every_corpus_png_agrees_with_pillow():
    root = shared_path("corpus", "images")
    checked = 0
    for path in sorted(root.rglob("*")):
        data = path.read_bytes() if path.is_file() else b""
        if data[:8] != b"\x89PNG\r\n\x1a\n":
            continue
        fast, slow = headers._png_header(data), pillow_png(data)
        if fast is not None:
            assert fast == slow, path
            checked += 1
    assert checked >= 5
