"""Metadata kept by default (EXIF, IPTC, XMP, ICC), and the `metadata` op, checked with exiftool."""

from __future__ import annotations

import pytest

from batchcli.errors import ConfigError
from batchcli.imaging import imageio
from batchcli.pipeline import Pipeline
from tests.conftest import cli
from tests.photos import ARTIST, COPYRIGHT, exiftool, photographer_jpeg


def run(src, pipeline: str, dest):
    """One item through the worker's own steps: decode, pipeline, encode and durable write."""
    frame = Pipeline.parse(pipeline).run(imageio.load(str(src)))
    path, _, _ = imageio.save(frame, str(dest))
    return path, frame


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return photographer_jpeg(tmp_path_factory.mktemp("meta") / "beach.jpg")


def test_photographer_scenario_keeps_everything_by_default(photo, tmp_path, home):
    """The issue's scenario from the command line: an upright output that keeps Make, Copyright,
    Artist, GPS, capture date, IPTC, XMP and the ICC profile, with orientation 1, the new pixel
    dimensions and no stale thumbnail."""
    r = cli("start", str(photo), "--out", str(tmp_path / "web"), "--pipeline", "orient | resize 200x200 | convert jpg", home=home)
    assert r.returncode == 0, r.stderr
    (tags,) = exiftool(tmp_path / "web" / "beach.jpg")
    assert tags["IFD0:Make"] == "Canon" and tags["IFD0:Model"] == "Canon EOS R5" and tags["Canon:OwnerName"] == "Jo"
    assert tags["IFD0:Copyright"] == COPYRIGHT and tags["IFD0:Artist"] == ARTIST
    assert tags["ExifIFD:DateTimeOriginal"] == "2024:05:06 07:08:09"
    assert tags["Composite:GPSLatitude"] == pytest.approx(48.858, abs=1e-3)
    assert tags["IPTC:Keywords"] == ["beach", "sun"] and tags["XMP-dc:Rights"] == COPYRIGHT
    assert tags["ICC_Profile:ProfileDescription"] == "ProPhoto RGB"
    assert tags["IFD0:Orientation"] == 1 and tags["XMP-tiff:Orientation"] == 1
    assert (tags["File:ImageWidth"], tags["File:ImageHeight"]) == (150, 200)  # portrait: turned upright
    assert (tags["ExifIFD:ExifImageWidth"], tags["ExifIFD:ExifImageHeight"]) == (150, 200)
    assert "IFD1:ThumbnailImage" not in tags and "IFD1:ThumbnailOffset" not in tags


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp", "tiff"])
def test_every_writable_format_carries_the_metadata(photo, tmp_path, fmt):
    path, _ = run(photo, f"resize 100x100 | convert {fmt}", tmp_path / "out")
    (tags,) = exiftool(path)
    assert tags["IFD0:Copyright"] == COPYRIGHT and tags["IFD0:Orientation"] == 1
    assert tags["Composite:GPSLatitude"] == pytest.approx(48.858, abs=1e-3)
    assert tags["XMP-dc:Rights"] == COPYRIGHT
    assert tags["ICC_Profile:ProfileDescription"] == "ProPhoto RGB"
    if fmt != "webp":  # WebP has no place for IPTC
        assert tags["IPTC:Keywords"] == ["beach", "sun"]
    assert imageio.load(path).img.shape[:2] == (100, 75)  # the pixels still decode


def test_bmp_carries_none(photo, tmp_path):
    path, _ = run(photo, "convert bmp", tmp_path / "out")
    (tags,) = exiftool(path)
    assert not [k for k in tags if k.startswith(("ICC", "IFD0", "XMP", "IPTC"))]


def test_drop_gps_removes_only_gps(photo, tmp_path):
    path, _ = run(photo, "metadata keep drop=gps", tmp_path / "out")
    (tags,) = exiftool(path)
    assert not [k for k in tags if "GPS" in k]
    assert tags["IFD0:Copyright"] == COPYRIGHT and tags["ExifIFD:SerialNumber"] == "0123456789"
    assert tags["IPTC:Keywords"] == ["beach", "sun"] and tags["ICC_Profile:ProfileDescription"] == "ProPhoto RGB"


def test_drop_serial_and_maker(photo, tmp_path):
    path, _ = run(photo, "metadata drop=serial,maker", tmp_path / "out")
    (tags,) = exiftool(path)
    assert not [k for k in tags if "Serial" in k] and not [k for k in tags if k.startswith("Canon:")]
    (before,) = exiftool(photo)
    assert before["ExifIFD:LensSerialNumber"] == "L998" and before["XMP-aux:SerialNumber"] == "0123456789"
    assert tags["IFD0:Make"] == "Canon" and "Composite:GPSLatitude" in tags


def test_strip_keeps_the_profile_unless_told(photo, tmp_path):
    path, _ = run(photo, "metadata strip", tmp_path / "a")
    (tags,) = exiftool(path)
    assert not [k for k in tags if k.split(":")[0] in ("IFD0", "ExifIFD", "GPS", "IPTC", "IFD1", "Canon") or k.startswith("XMP")]
    assert tags["ICC_Profile:ProfileDescription"] == "ProPhoto RGB"
    path, _ = run(photo, "metadata strip icc=drop", tmp_path / "b")
    (tags,) = exiftool(path)
    assert not [k for k in tags if k.startswith(("ICC", "IFD0", "XMP", "IPTC"))]


def test_minimal_keeps_copyright_artist_date_camera_and_profile(photo, tmp_path):
    path, _ = run(photo, "metadata minimal", tmp_path / "out")
    (tags,) = exiftool(path)
    kept = {k for k in tags if k.split(":")[0] in ("IFD0", "ExifIFD", "GPS", "IPTC", "Canon", "IFD1") or k.startswith("XMP")}
    assert kept == {"IFD0:Make", "IFD0:Model", "IFD0:Artist", "IFD0:Copyright", "ExifIFD:DateTimeOriginal"}
    assert tags["ICC_Profile:ProfileDescription"] == "ProPhoto RGB"


def test_bad_metadata_options_are_usage_errors():
    with pytest.raises(ConfigError, match="drop=gpx is not one of gps, maker, serial, thumbnail"):
        Pipeline.parse("metadata drop=gpx")
    with pytest.raises(ConfigError, match="applies to keep mode only"):
        Pipeline.parse("metadata strip drop=gps")


def test_a_profile_that_no_longer_fits_the_pixels_is_not_written(tmp_path):
    """A CMYK JPEG decodes to RGB: its CMYK profile would now be wrong, so it is left out."""
    import numpy as np
    from PIL import Image, ImageCms

    cmyk = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk = cmyk[:16] + b"CMYK" + cmyk[20:]  # only the header's colour space matters for the check
    src = tmp_path / "cmyk.jpg"
    Image.fromarray(np.full((16, 16, 4), 40, np.uint8), "CMYK").save(src, icc_profile=cmyk)
    path, _ = run(src, "convert png", tmp_path / "out")
    (tags,) = exiftool(path)
    assert not [k for k in tags if k.startswith("ICC")]


def test_gray_output_keeps_a_gray_profile(tmp_path):
    from PIL import Image, ImageCms

    gray = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    gray = gray[:16] + b"GRAY" + gray[20:]
    src = tmp_path / "g.png"
    Image.new("L", (8, 8), 90).save(src, icc_profile=gray)
    path, frame = run(src, "convert jpg", tmp_path / "out")
    assert frame.img.ndim == 2
    (tags,) = exiftool(path)
    assert tags["ICC-header:ColorSpaceData"] == "GRAY"


def test_analyze_reports_the_metadata_blocks(photo, tmp_path):
    _, frame = run(photo, "analyze", tmp_path / "out")
    blocks = frame.meta["analyze"]["metadata"]
    assert blocks["icc"] == "ProPhoto RGB" and blocks["gps"] is True
    assert blocks["exif"] > 10 and blocks["iptc"] == 2 and blocks["xmp"] >= 4
    bare = tmp_path / "bare.bmp"
    from tests.conftest import make_image

    make_image(bare)
    _, frame = run(bare, "analyze", tmp_path / "out2")
    assert frame.meta["analyze"]["metadata"] == {"exif": 0, "iptc": 0, "xmp": 0, "icc": None, "gps": False}


def _tiff_with_profile(path, icc: bytes):
    import numpy as np
    from PIL import Image

    exif = Image.Exif()
    exif[0x013B] = ARTIST  # some EXIF to copy, beside the profile the TIFF holds in its IFD0
    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(path, icc_profile=icc, exif=exif)
    return path


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_a_tiff_sources_profile_does_not_ride_along_in_the_exif(tmp_path, fmt):
    """A TIFF keeps its ICC profile in an IFD0 tag (InterColorProfile); copied with the EXIF, it
    would be a second profile that `icc=drop` does not drop and `profile` does not replace."""
    import pyexiv2

    from tests.photos import icc_profile

    src = _tiff_with_profile(tmp_path / "in.tif", icc_profile("sRGB"))
    path, _ = run(src, f"metadata keep icc=drop | convert {fmt}", tmp_path / "out")
    with pyexiv2.ImageData(open(path, "rb").read()) as out:
        exif, icc = out.read_exif(), out.read_icc()
    assert exif.get("Exif.Image.Artist") == ARTIST
    assert "Exif.Image.InterColorProfile" not in exif and not icc


def test_profile_srgb_on_a_tagged_tiff_leaves_one_profile(tmp_path):
    from tests.photos import icc_profile

    src = _tiff_with_profile(tmp_path / "pro.tif", icc_profile("ProPhotoRGB"))
    path, _ = run(src, "profile srgb | convert jpg", tmp_path / "out")
    (tags,) = exiftool(path)
    profiles = {k.split(":")[0] for k in tags if k.startswith("ICC_Profile")}
    assert profiles == {"ICC_Profile"} and tags["ICC_Profile:ProfileDescription"] == "sRGB built-in", tags
