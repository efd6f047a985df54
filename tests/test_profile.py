"""Colour management: `profile srgb|FILE.icc intent=...` against LittleCMS's own transform."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from batchcli.errors import ConfigError
from batchcli.imaging import imageio
from batchcli.pipeline import Pipeline
from tests.conftest import SHARED
from tests.photos import exiftool, icc_profile, photo_pixels

INTENTS = {"perceptual": ImageCms.Intent.PERCEPTUAL, "relative": ImageCms.Intent.RELATIVE_COLORIMETRIC,
           "saturation": ImageCms.Intent.SATURATION, "absolute": ImageCms.Intent.ABSOLUTE_COLORIMETRIC}


def lcms(rgb: np.ndarray, src: bytes, dst: bytes, intent: str = "relative") -> np.ndarray:
    """LittleCMS's own answer, called directly (RGB order, 8-bit)."""
    flags = ImageCms.Flags.BLACKPOINTCOMPENSATION if intent == "relative" else ImageCms.Flags.NONE
    out = ImageCms.profileToProfile(Image.fromarray(rgb), ImageCms.ImageCmsProfile(io.BytesIO(src)),
                                    ImageCms.ImageCmsProfile(io.BytesIO(dst)), renderingIntent=INTENTS[intent], flags=flags)
    return np.asarray(out)


def saturation(bgr: np.ndarray) -> float:
    return float(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)[:, :, 1].mean())


def tagged_png(path, rgb: np.ndarray, icc: bytes):
    Image.fromarray(rgb).save(path, icc_profile=icc)
    return path


def run(src, pipeline: str, dest):
    frame = Pipeline.parse(pipeline).run(imageio.load(str(src)))
    path, _, _ = imageio.save(frame, str(dest))
    return path, frame


@pytest.mark.parametrize("intent", ["relative", "perceptual", "absolute"])
def test_prophoto_to_srgb_matches_littlecms_and_is_not_duller(tmp_path, intent):
    pro, rgb = icc_profile("ProPhotoRGB"), photo_pixels(96, 64)
    src = tagged_png(tmp_path / "pro.png", rgb, pro)
    path, frame = run(src, f"profile srgb intent={intent}", tmp_path / "out")
    want = lcms(rgb, pro, ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), intent)
    got = cv2.imread(path)[:, :, ::-1]
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # shown on an sRGB screen: the converted output is more saturated than its numbers untagged
    assert saturation(cv2.imread(path)) > saturation(cv2.imread(str(src))) + 10
    assert frame.meta["profile"] == {"from": "ProPhoto RGB", "to": "sRGB built-in", "intent": intent}
    (tags,) = exiftool(path)
    assert tags["ICC-header:ColorSpaceData"].strip() == "RGB" and tags["ICC_Profile:ProfileDescription"] == "sRGB built-in"


def test_to_a_profile_file(tmp_path):
    pro, adobe = icc_profile("ProPhotoRGB"), icc_profile("AdobeRGB1998")
    rgb = photo_pixels(64, 48, seed=2)
    src = tagged_png(tmp_path / "pro.png", rgb, pro)
    target = tmp_path / "adobe.icc"
    target.write_bytes(adobe)
    path, _ = run(src, f"profile {target} | convert tiff", tmp_path / "out")
    got = cv2.imread(path)[:, :, ::-1]
    assert np.abs(got.astype(int) - lcms(rgb, pro, adobe).astype(int)).max() <= 1
    (tags,) = exiftool(path)
    assert "Adobe" in tags["ICC_Profile:ProfileDescription"]


def test_sixteen_bit_stays_sixteen_bit(tmp_path):
    pro, srgb = icc_profile("ProPhotoRGB"), ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb8 = photo_pixels(64, 48, seed=3)
    rgb16 = rgb8.astype(np.uint16) * 257
    src = tmp_path / "pro16.png"
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb16[:, :, ::-1]))
    import pyexiv2

    with pyexiv2.ImageData(buf.tobytes()) as img:
        img.modify_icc(pro)
        src.write_bytes(img.get_bytes())
    path, frame = run(src, "profile srgb", tmp_path / "out")
    assert frame.img.dtype == np.uint16 and "precision" not in frame.meta["profile"]
    got = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16
    want = lcms(rgb8, pro, srgb)[:, :, ::-1].astype(float)
    assert np.abs(got / 257.0 - want).max() <= 1.0
    assert len(np.unique(got)) > len(np.unique(want))  # finer than 8 bits


def test_untagged_is_taken_as_srgb(tmp_path):
    rgb = photo_pixels(32, 24)
    src = tmp_path / "plain.png"
    Image.fromarray(rgb).save(src)
    path, frame = run(src, "profile srgb", tmp_path / "out")
    assert (cv2.imread(path)[:, :, ::-1] == rgb).all()
    assert frame.meta["profile"]["from"] == "untagged (sRGB)"
    (tags,) = exiftool(path)
    assert tags["ICC_Profile:ProfileDescription"] == "sRGB built-in"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_untagged_gray_converts_to_an_rgb_profile(tmp_path, dtype):
    """A black-and-white photo without a profile is sRGB gray: `profile AdobeRGB1998.icc` failed
    its item ('cannot build transform', a gray image through an RGB profile)."""
    adobe = icc_profile("AdobeRGB1998")
    gray = photo_pixels(32, 24)[:, :, 0]
    src = tmp_path / "bw.png"
    cv2.imwrite(str(src), gray.astype(np.uint16) * 257 if dtype == np.uint16 else gray)
    path, frame = run(src, f"profile {SHARED / 'icc' / 'AdobeRGB1998.icc'}", tmp_path / "out")
    got = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert got.dtype == dtype and got.shape == (24, 32, 3)
    want = lcms(np.dstack([gray, gray, gray]), icc_profile("sRGB"), adobe)
    assert np.abs(got[:, :, ::-1] / (257.0 if dtype == np.uint16 else 1.0) - want).max() <= 1.0
    (tags,) = exiftool(path)
    assert "Adobe RGB (1998)" in tags["ICC_Profile:ProfileDescription"]


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_a_damaged_embedded_profile_counts_as_untagged(tmp_path, name):
    """A PNG whose profile was cut short failed `profile srgb` ('cannot open profile from string'),
    while the same profile in a JPEG was ignored: both are now taken as untagged, sRGB."""
    rgb = photo_pixels(32, 24)
    src = tmp_path / name
    Image.fromarray(rgb).save(src, icc_profile=icc_profile("AdobeRGB1998")[:172], **({"quality": 100} if name.endswith("jpg") else {}))
    path, frame = run(src, "profile srgb | convert png", tmp_path / "out")
    assert frame.meta["profile"]["from"] == "untagged (sRGB)"
    assert np.abs(cv2.imread(path)[:, :, ::-1].astype(int) - np.asarray(Image.open(src).convert("RGB"))).max() == 0


def test_without_profile_op_pixels_and_profile_pass_through(tmp_path):
    pro, rgb = icc_profile("ProPhotoRGB"), photo_pixels(32, 24)
    path, _ = run(tagged_png(tmp_path / "pro.png", rgb, pro), "convert png", tmp_path / "out")
    assert (cv2.imread(path)[:, :, ::-1] == rgb).all()
    (tags,) = exiftool(path)
    assert tags["ICC_Profile:ProfileDescription"] == "ProPhoto RGB"


def test_alpha_survives_the_conversion(tmp_path):
    pro = icc_profile("WideGamutRGB")
    rgba = np.dstack([photo_pixels(32, 24), np.linspace(0, 255, 32 * 24).reshape(24, 32).astype(np.uint8)])
    src = tmp_path / "a.png"
    Image.fromarray(rgba).save(src, icc_profile=pro)
    path, frame = run(src, "profile srgb", tmp_path / "out")
    got = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert got.shape[2] == 4 and (got[:, :, 3] == rgba[:, :, 3]).all()


def test_bad_profiles_are_usage_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Pipeline.parse(f"profile {tmp_path}/missing.icc")
    junk = tmp_path / "junk.icc"
    junk.write_bytes(b"not a profile" * 10)
    with pytest.raises(ConfigError, match="is not an ICC profile"):
        Pipeline.parse(f"profile {junk}")
    with pytest.raises(ConfigError, match="a folder, not a regular file"):
        Pipeline.parse(f"profile {tmp_path}")
    lab = tmp_path / "lab.icc"
    lab.write_bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes())
    with pytest.raises(ConfigError, match="is a Lab profile; outputs are RGB or gray"):
        Pipeline.parse(f"profile {lab}")
    with pytest.raises(ConfigError, match="not one of perceptual, relative, saturation, absolute"):
        Pipeline.parse("profile srgb intent=vivid")
