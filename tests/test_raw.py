"""Camera RAW through rawpy (LibRaw): DNG files built here with PiDNG, whose camera space is
linear sRGB, so the developed colours are known exactly."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from batchcli.errors import ConfigError
from batchcli.imaging import imageio
from batchcli.pipeline import Pipeline
from tests.conftest import cli
from tests.photos import exiftool

pidng = pytest.importorskip("pidng.core")
pytest.importorskip("rawpy")

PATCH = (0.5, 0.3, 0.2)  # linear RGB of the scene


def srgb16(linear: float) -> float:
    v = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return v * 65535


def make_dng(path, w: int = 256, h: int = 192, rgb=PATCH, preview: np.ndarray | None = None, make: str = "Batch"):
    """A 12-bit RGGB DNG of a flat patch; its colour matrix says the camera sees linear sRGB.
    `preview`: a BGR image embedded as the JPEG preview (an IFD1 thumbnail, written by exiv2)."""
    from pidng.core import DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, Orientation, PhotometricInterpretation

    white = (1 << 12) - 1
    raw = np.zeros((h, w), np.uint16)
    r, g, b = rgb
    raw[0::2, 0::2], raw[0::2, 1::2], raw[1::2, 0::2], raw[1::2, 1::2] = r * white, g * white, g * white, b * white
    t = DNGTags()
    for tag, value in ((Tag.ImageWidth, w), (Tag.ImageLength, h), (Tag.TileWidth, w), (Tag.TileLength, h),
                       (Tag.Orientation, Orientation.Horizontal), (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 12),
                       (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
                       (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB),
                       (Tag.BlackLevel, 0), (Tag.WhiteLevel, white), (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                       (Tag.ColorMatrix1, [[v, 10000] for v in (32406, -15372, -4986, -9689, 18758, 415, 557, -2040, 10570)]),
                       (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]), (Tag.Make, make), (Tag.Model, "Test Cam"),
                       (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2)):
        t.set(tag, value)
    d = pidng.RAW2DNG()
    d.options(t, path="", compress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    d.convert(raw, filename=str(path)[:-4])
    if preview is not None:
        import pyexiv2

        with pyexiv2.ImageData(path.read_bytes()) as img:
            img.modify_thumbnail(cv2.imencode(".jpg", preview)[1].tobytes())
            path.write_bytes(img.get_bytes())
    return path


def run(src, pipeline: str, dest, **kw):
    pipe = Pipeline.parse(pipeline)
    frame = pipe.run(imageio.load(str(src), shrink_for=pipe.shrink_for, raw=pipe.raw_settings, **kw))
    path, _, _ = imageio.save(frame, str(dest))
    return path, frame


def test_a_dng_runs_through_resize_and_convert(tmp_path, home):
    make_dng(tmp_path / "shoot" / "IMG_1.dng")
    r = cli("start", str(tmp_path / "shoot"), "--out", str(tmp_path / "web"), "--pipeline", "resize 128x128 | convert jpg quality=95", home=home)
    assert r.returncode == 0, r.stderr + r.stdout
    out = cv2.imread(str(tmp_path / "web" / "IMG_1.jpg"))
    assert out.shape == (96, 128, 3)
    want = [srgb16(c) / 257 for c in PATCH[::-1]]  # BGR
    assert np.abs(out[20:-20, 20:-20].reshape(-1, 3).mean(axis=0) - want).max() < 3
    (tags,) = exiftool(tmp_path / "web" / "IMG_1.jpg")
    assert tags["IFD0:Make"] == "Batch" and tags["IFD0:Model"] == "Test Cam"
    assert not [k for k in tags if k in ("IFD0:TileOffsets", "IFD0:CFAPattern2", "IFD0:DNGVersion", "IFD0:ColorMatrix1")]


def test_a_tiff_developed_from_a_dng_is_not_a_dng(tmp_path):
    """A DNG developed to a 16-bit TIFF kept the DNG's IFD0 tags (DNGVersion, WhiteLevel 4095,
    ColorMatrix1, AsShotNeutral): exiftool called the output 'DNG' and raw developers would read
    its finished pixels as sensor data."""
    path, _ = run(make_dng(tmp_path / "a.dng"), "raw preview=never | convert tiff", tmp_path / "out")
    (tags,) = exiftool(path)
    assert tags["File:FileType"] == "TIFF" and tags["IFD0:BitsPerSample"] == "16 16 16"
    assert not [k for k in tags if k.rsplit(":", 1)[-1] in ("DNGVersion", "DNGBackwardVersion", "WhiteLevel", "BlackLevel", "ColorMatrix1",
                                                       "AsShotNeutral", "CalibrationIlluminant1")]
    assert tags["IFD0:Make"] == "Batch" and tags["IFD0:Model"] == "Test Cam"
    assert imageio.load(path).img.shape == (192, 256, 3)


def test_demosaic_is_sixteen_bit_with_the_camera_white_balance(tmp_path):
    path, frame = run(make_dng(tmp_path / "a.dng"), "convert png", tmp_path / "out")
    assert frame.meta["raw"] == {"decoded": "full", "wb": "camera", "exposure": 0.0}
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (192, 256, 3)
    assert np.abs(img[20:-20, 20:-20].reshape(-1, 3).mean(axis=0) - [srgb16(c) for c in PATCH[::-1]]).max() < 300


def test_exposure_and_half_size(tmp_path):
    src = make_dng(tmp_path / "a.dng", rgb=(0.2, 0.2, 0.2))
    path, plain = run(src, "raw", tmp_path / "p")
    assert path.endswith(".png") and cv2.imread(path, cv2.IMREAD_UNCHANGED).dtype == np.uint16
    _, brighter = run(src, "raw exposure=1", tmp_path / "b")
    assert brighter.img.mean() == pytest.approx(srgb16(0.4), rel=0.03) and plain.img.mean() == pytest.approx(srgb16(0.2), rel=0.03)
    _, half = run(src, "raw half=true", tmp_path / "h")
    assert half.img.shape[:2] == (96, 128) and half.meta["raw"]["decoded"] == "half"


def test_preview_auto_uses_the_embedded_jpeg_only_when_it_is_enough(tmp_path):
    preview = np.full((96, 128, 3), (200, 40, 10), np.uint8)  # a blue preview, so it is told apart
    src = make_dng(tmp_path / "p.dng", preview=preview)
    _, small = run(src, "raw | resize 64x64", tmp_path / "s")
    assert small.meta["raw"] == {"decoded": "preview", "preview": "128x96"} and small.img.shape[:2] == (48, 64)
    assert small.img[10, 10, 0] > 150
    _, big = run(src, "raw | resize 200x200", tmp_path / "b")  # more pixels than the preview has
    assert big.meta["raw"]["decoded"] == "full" and big.img.shape[:2] == (150, 200)
    _, never = run(src, "raw preview=never | resize 64x64", tmp_path / "n")
    assert never.meta["raw"]["decoded"] == "full"
    _, always = run(src, "raw preview=always", tmp_path / "a")
    assert always.meta["raw"]["decoded"] == "preview"
    _, bare = run(make_dng(tmp_path / "bare.dng"), "raw | resize 64x64", tmp_path / "x")  # no preview: demosaic
    assert bare.meta["raw"]["decoded"] == "full"


def test_header_limits_apply_before_decoding(tmp_path):
    from batchcli.errors import ItemError
    from batchcli.imaging.headers import Limits

    with pytest.raises(ItemError, match="over --max-pixels") as err:
        imageio.load(str(make_dng(tmp_path / "a.dng")), Limits(max_pixels=10_000))
    assert err.value.error_class == "too_large"


def test_a_damaged_raw_fails_its_item(tmp_path):
    from batchcli.errors import ItemError

    bad = tmp_path / "bad.nef"
    bad.write_bytes(b"II*\x00" + b"\x00" * 200)
    with pytest.raises(ItemError) as err:
        imageio.load(str(bad))
    assert err.value.error_class == "decode" and "RAW" in str(err.value)


def test_raw_must_come_first():
    with pytest.raises(ConfigError, match="raw: must be the first operation"):
        Pipeline.parse("resize 10x10 | raw")
    with pytest.raises(ConfigError, match="exposure: 9.0 is above the maximum 3"):
        Pipeline.parse("raw exposure=9")


@pytest.mark.parametrize("data, reason", [(b"hello, not a photo\n", "not a RAW file: the file holds plain text"),
                                          (b"II*\x00" + b"\x00" * 200, "cannot read RAW: Unsupported file format or not RAW file")])
def test_a_raw_that_is_not_one_says_so_in_words(tmp_path, data, reason):
    """A text file named .dng said 'cannot read RAW: LibRawIOError b'Input/output error''."""
    from batchcli.errors import ItemError

    bad = tmp_path / "r.dng"
    bad.write_bytes(data)
    with pytest.raises(ItemError) as err:
        imageio.load(str(bad))
    assert str(err.value) == reason
