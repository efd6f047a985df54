"""HEIC/HEIF and AVIF read and written (pillow-heif, Pillow), with their metadata; GIF and HEIC in
the default extensions."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from batchcli.imaging import imageio
from batchcli.pipeline import Pipeline
from tests.conftest import cli
from tests.photos import COPYRIGHT, exiftool, icc_profile, photo_pixels, photographer_jpeg

pillow_heif = pytest.importorskip("pillow_heif")


def make_heic(path, bgr: np.ndarray, **extra):
    """A HEIC written by pillow-heif: 8-bit from uint8 pixels, 10-bit from uint16 ones."""
    buf = io.BytesIO()
    mode = "BGR" + (";16" if bgr.dtype == np.uint16 else "")
    pillow_heif.encode(mode, (bgr.shape[1], bgr.shape[0]), np.ascontiguousarray(bgr).tobytes(), buf, quality=95, **extra)
    path.write_bytes(buf.getvalue())
    return path


def run(src, pipeline: str, dest):
    frame = Pipeline.parse(pipeline).run(imageio.load(str(src)))
    path, _, _ = imageio.save(frame, str(dest))
    return path, frame


def test_heic_from_a_phone_runs_through_resize_and_convert(tmp_path, home):
    bgr = photo_pixels(128, 96)[:, :, ::-1]
    (tmp_path / "in").mkdir()
    make_heic(tmp_path / "in" / "IMG_0001.heic", bgr)
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--pipeline", "resize 64x64 | convert jpg", home=home)
    assert r.returncode == 0, r.stderr + r.stdout
    out = cv2.imread(str(tmp_path / "out" / "IMG_0001.jpg"))
    assert out.shape == (48, 64, 3)
    want = cv2.resize(bgr, (64, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(out.astype(int) - want.astype(int)).mean() < 4


def test_heic_keeps_its_metadata_and_rotation(tmp_path):
    """A HEIC whose EXIF says orientation 6 is stored rotated (irot): it decodes upright, and a
    JPEG made from it keeps the copyright and the profile with orientation 1."""
    from PIL import Image

    jpg = photographer_jpeg(tmp_path / "src.jpg", 64, 48)
    with Image.open(jpg) as im:
        exif, icc, xmp = im.info["exif"], im.info["icc_profile"], im.info["xmp"]
        bgr = np.asarray(im)[:, :, ::-1]
    src = make_heic(tmp_path / "p.heic", bgr, exif=exif, icc_profile=icc, xmp=xmp)
    path, frame = run(src, "convert jpg", tmp_path / "out")
    assert frame.img.shape[:2] == (64, 48) and frame.orientation == 1  # turned upright by libheif
    (tags,) = exiftool(path)
    assert tags["IFD0:Copyright"] == COPYRIGHT and tags["IFD0:Orientation"] == 1
    assert tags["ICC_Profile:ProfileDescription"] == "ProPhoto RGB" and tags["XMP-dc:Rights"] == COPYRIGHT


@pytest.mark.parametrize("fmt", ["heic", "avif"])
def test_convert_to_heic_and_avif_with_metadata(tmp_path, fmt):
    jpg = photographer_jpeg(tmp_path / "src.jpg", 96, 64)
    path, _ = run(jpg, f"metadata drop=gps | convert {fmt} quality=80", tmp_path / "out")
    assert path.endswith("." + fmt)
    back = imageio.load(path)
    assert back.fmt == fmt and back.img.shape[:2] == (96, 64)  # upright: orientation 6 was applied
    (tags,) = exiftool(path)
    assert tags["IFD0:Copyright"] == COPYRIGHT and tags["ICC_Profile:ProfileDescription"] == "ProPhoto RGB"
    assert not [k for k in tags if "GPS" in k] and tags.get("IFD0:Orientation", 1) == 1
    assert tags.get("QuickTime:Rotation", 0) == 0


def test_ten_bit_heic_decodes_to_sixteen_bits_and_writes_back(tmp_path):
    rgb16 = (photo_pixels(64, 48).astype(np.uint16) * 257)[:, :, ::-1]
    src = make_heic(tmp_path / "deep.heic", rgb16)
    frame = imageio.load(str(src))
    assert frame.img.dtype == np.uint16
    assert np.abs(frame.img.astype(int) // 257 - rgb16.astype(int) // 257).mean() < 4
    path, _ = run(src, "convert heic", tmp_path / "out")
    assert imageio.load(path).img.dtype == np.uint16
    path, _ = run(src, "convert png", tmp_path / "out16")
    assert cv2.imread(path, cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_the_default_extensions_find_heic_avif_and_gif(tmp_path, home):
    from PIL import Image

    folder = tmp_path / "phone"
    folder.mkdir()
    make_heic(folder / "a.HEIC", photo_pixels(32, 24)[:, :, ::-1])
    frames = [Image.fromarray(photo_pixels(32, 24, seed=k)) for k in range(3)]
    frames[0].save(folder / "b.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(photo_pixels(32, 24)).save(folder / "c.avif")
    r = cli("start", str(folder), "--out", str(tmp_path / "out"), "--pipeline", "convert png", home=home)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]
    assert "animated: 1 input used its first frame only" in r.stdout  # the 3-frame GIF


def test_a_broken_heic_fails_its_item_with_a_reason(tmp_path):
    src = make_heic(tmp_path / "x.heic", photo_pixels(32, 24)[:, :, ::-1])
    src.write_bytes(src.read_bytes()[:200])
    with pytest.raises(Exception) as err:
        imageio.load(str(src))
    assert getattr(err.value, "error_class", None) in ("decode", "truncated")


def test_a_heic_profile_is_converted_from(tmp_path):
    """A HEIC's own profile is the one `profile srgb` converts from."""
    src = make_heic(tmp_path / "adobe.heic", photo_pixels(32, 24)[:, :, ::-1], icc_profile=icc_profile("AdobeRGB1998"))
    path, frame = run(src, "profile srgb | convert jpg", tmp_path / "out")
    assert "Adobe RGB" in frame.meta["profile"]["from"]


def test_an_avif_keeps_a_camera_s_maker_notes_whole(tmp_path):
    """Pillow's AVIF writer rewrote any EXIF holding an orientation tag, which moved the Canon
    maker notes off their offsets (exiftool: 'Invalid CanonCameraSettings data'). The AVIF's EXIF
    goes without that tag (the container says no rotation) and the notes read as in the JPEG."""
    import shutil

    from tests.conftest import shared_path

    src = shutil.copy(shared_path("images", "real", "horse-cart.jpg"), tmp_path / "cam.jpg")
    path, _ = run(src, "orient | convert avif", tmp_path / "out")
    before, after = exiftool(src, path)
    canon = {k: v for k, v in before.items() if k.startswith("Canon:")}
    assert canon and {k: after.get(k) for k in canon} == canon
    assert not any("Warning" in k for k in after) and "IFD0:Orientation" not in after
    assert after.get("QuickTime:Rotation", 0) == 0
