"""analyze: a JSON record per item with known values on generated images, real photos and EXIF."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from batchcli.imaging import imageio
from batchcli.ops.analyze import dhash, dominant_colors, hamming
from batchcli.ops.base import Frame
from batchcli.pipeline import Pipeline

REAL = Path(__file__).resolve().parents[2] / "shared" / "images" / "real"
KEYS = {"width", "height", "format", "channels", "bit_depth", "has_alpha", "orientation", "brightness",
        "sharpness", "colorfulness", "dominant_colors", "dhash"}


def analyze(img: np.ndarray, orientation: int = 1, fmt: str = "png") -> dict:
    frame = Frame(img=img, src="m", fmt=fmt, orientation=orientation)
    before = img.copy()
    Pipeline.parse("analyze").run(frame)
    assert np.array_equal(frame.img, before)  # pixels untouched
    record = frame.meta["analyze"]
    assert json.loads(json.dumps(record)) == record  # plain JSON types only
    return record


def test_analyze_only_pipelines_write_no_image():
    assert Pipeline.parse("analyze").writes_image is False
    assert Pipeline.parse("analyze | convert png").writes_image is True


@pytest.mark.parametrize("shape, dtype, channels, alpha, depth", [
    ((40, 60), np.uint8, 1, False, 8), ((40, 60, 3), np.uint8, 3, False, 8),
    ((40, 60, 4), np.uint8, 4, True, 8), ((40, 60, 3), np.uint16, 3, False, 16),
])
def test_flat_images_have_known_values(shape, dtype, channels, alpha, depth):
    img = np.full(shape, 128 * (257 if dtype == np.uint16 else 1), dtype)
    r = analyze(img)
    assert KEYS <= set(r)
    assert (r["width"], r["height"], r["channels"], r["bit_depth"], r["has_alpha"]) == (60, 40, channels, depth, alpha)
    assert r["brightness"] == pytest.approx(128, abs=0.5)
    assert r["sharpness"] == 0 and r["colorfulness"] == 0
    assert r["dominant_colors"] == [{"hex": "#808080", "share": 1.0}]


def test_dominant_colours_find_the_split():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, :70] = (255, 0, 0)  # 70 % blue (BGR)
    img[:, 70:] = (0, 200, 255)  # 30 % orange
    colors = analyze(img)["dominant_colors"]
    assert colors[0]["hex"] == "#0000ff" and colors[0]["share"] == pytest.approx(0.7, abs=0.02)
    assert colors[1]["hex"] == "#ffc800" and colors[1]["share"] == pytest.approx(0.3, abs=0.02)
    assert dominant_colors(img, 2) == dominant_colors(img.copy(), 2)  # deterministic


def test_sharpness_and_colourfulness_rank_images():
    rng = np.random.default_rng(0)
    crisp = rng.integers(0, 256, (64, 64, 3), np.uint8)
    soft = cv2.GaussianBlur(crisp, (0, 0), 3)
    assert analyze(crisp)["sharpness"] > 10 * analyze(soft)["sharpness"]
    gray = cv2.cvtColor(cv2.cvtColor(crisp, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    assert analyze(crisp)["colorfulness"] > 50 > analyze(gray)["colorfulness"]


def test_dhash_is_stable_under_resizing_and_differs_between_pictures():
    y, x = np.mgrid[0:240, 0:320]
    a = ((np.sin(x / 20) + np.cos(y / 15)) * 60 + 128).astype(np.uint8)
    b = ((np.sin(y / 9) * np.cos(x / 31)) * 100 + 128).astype(np.uint8)
    ha, hb = analyze(a)["dhash"], analyze(b)["dhash"]
    assert len(ha) == 16 and int(ha, 16) >= 0
    small = cv2.resize(a, (160, 120), interpolation=cv2.INTER_AREA)
    assert hamming(ha, analyze(small)["dhash"]) <= 4
    assert hamming(ha, hb) > 12
    assert dhash(a) == dhash(a.copy())


def test_pending_orientation_is_reported_as_displayed():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = 255  # left half white when stored; top half white when shown (orientation 6)
    r6, r1 = analyze(img, orientation=6), analyze(cv2.rotate(img, cv2.ROTATE_90_CLOCKWISE))
    assert (r6["width"], r6["height"]) == (40, 60)
    assert r6["dhash"] == r1["dhash"]


def _jpeg_with_exif(path: Path) -> Path:
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "NIKON CORPORATION", "NIKON D750", 8
    exif.get_ifd(0x8769)[0x9003] = "2019:12:24 18:05:00"
    Image.fromarray(np.full((30, 50, 3), 90, np.uint8)).save(path, exif=exif)
    return path


def test_camera_and_capture_date_from_exif(tmp_path):
    frame = imageio.load(str(_jpeg_with_exif(tmp_path / "cam.jpg")))
    r = Pipeline.parse("orient | analyze").run(frame).meta["analyze"]
    assert r["camera_make"] == "NIKON CORPORATION" and r["camera_model"] == "NIKON D750"
    assert r["captured_at"] == "2019-12-24T18:05:00"
    assert r["orientation"] == 8 and (r["width"], r["height"]) == (30, 50)
    assert r["format"] == "jpg" and r["mode"] == "RGB"


@pytest.mark.shared
@pytest.mark.parametrize("name", ["dog.jpg", "camera.png", "gorilla_rgba.png", "coffee.png"])
def test_real_photos(name):
    p = REAL / name
    if not p.exists():
        pytest.skip(f"{p} not available")
    frame = imageio.load(str(p))
    r = Pipeline.parse("analyze").run(frame).meta["analyze"]
    h, w = frame.img.shape[:2]
    assert (r["width"], r["height"]) == (w, h)
    assert 20 < r["brightness"] < 235 and r["sharpness"] > 20
    assert abs(sum(c["share"] for c in r["dominant_colors"]) - 1) < 0.01
    if frame.img.ndim == 2:
        assert r["colorfulness"] == 0
    else:
        assert r["colorfulness"] > 10
    again = Pipeline.parse("analyze").run(imageio.load(str(p))).meta["analyze"]
    assert again == r
