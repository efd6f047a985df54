"""Geometry ops: sizes for every mode, reference pixels, orientation handling, validation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchcli.errors import ConfigError, ItemError
from batchcli.imaging import imageio
from batchcli.ops.base import Frame
from batchcli.pipeline import Pipeline

REAL = Path(__file__).resolve().parents[2] / "shared" / "images" / "real"


def make(h: int, w: int, channels: int = 3, dtype=np.uint8, orientation: int = 1) -> Frame:
    """A frame whose pixel (y, x) encodes its position, so moves can be checked exactly."""
    y, x = np.mgrid[0:h, 0:w]
    top = 65535 if dtype == np.uint16 else 255
    planes = [x * top // max(w - 1, 1), y * top // max(h - 1, 1), np.full((h, w), top // 3), np.full((h, w), top)]
    img = np.dstack(planes[:channels]).astype(dtype) if channels > 1 else planes[0].astype(dtype)
    return Frame(img=img, src="mem", fmt="png", orientation=orientation, src_size=(w, h))


def run(spec: str, frame: Frame) -> Frame:
    return Pipeline.parse(spec).run(frame)


def shown(frame: Frame) -> tuple[int, int]:
    """(width, height) as displayed, after any pending orientation."""
    h, w = frame.img.shape[:2]
    return (h, w) if frame.orientation in (5, 6, 7, 8) else (w, h)


@pytest.mark.parametrize("spec, src, out", [
    ("resize 100x100", (400, 300), (100, 75)),
    ("resize 100x100", (300, 400), (75, 100)),
    ("resize x50", (400, 300), (67, 50)),
    ("resize 100x", (400, 300), (100, 75)),
    ("resize 1000x1000", (400, 300), (400, 300)),  # no upscale by default
    ("resize 1000x1000 upscale=true", (400, 300), (1000, 750)),
    ("resize 100x100 mode=fill", (400, 300), (100, 100)),
    ("resize 160x90 mode=fill", (400, 300), (160, 90)),
    ("resize 1000x500 mode=fill", (400, 300), (400, 200)),  # no upscale: the box's shape, cropped
    ("resize 1000x500 mode=fill upscale=true", (400, 300), (1000, 500)),
    ("resize 123x45 mode=exact", (400, 300), (123, 45)),
    ("resize 800x800 mode=exact", (400, 300), (800, 800)),
    ("resize 200 mode=long", (400, 300), (200, 150)),
    ("resize 200 mode=long", (300, 400), (150, 200)),
    ("resize 500 mode=long", (400, 300), (400, 300)),
    ("resize 50 mode=percent", (400, 300), (200, 150)),
    ("resize 150 mode=percent", (400, 300), (600, 450)),
    ("resize 1024x1024", (100000, 2), (1024, 1)),  # a 100000x2 strip must not collapse to 0
    ("resize 64x64 mode=fill", (1, 100000), (1, 1)),
])
@pytest.mark.parametrize("channels, dtype", [(3, np.uint8), (1, np.uint8), (4, np.uint16)])
def test_resize_sizes(spec, src, out, channels, dtype):
    frame = run(spec, make(src[1], src[0], channels, dtype))
    assert shown(frame) == out
    assert frame.img.dtype == dtype and frame.img.ndim == (2 if channels == 1 else 3)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_resize_plans_in_display_coordinates(orientation):
    frame = run("resize 200x100 mode=exact", make(300, 400, orientation=orientation))
    assert shown(frame) == (200, 100)
    assert frame.orientation == orientation  # left pending, applied at encode
    assert imageio.apply_orientation(frame.img, frame.orientation).shape[:2] == (100, 200)


def test_resize_interpolation_area_down_lanczos_up():
    img = np.zeros((100, 100), np.uint8)
    img[::2] = 255  # stripes: area averaging gives flat grey, nearest would keep stripes
    down = run("resize 50x50", Frame(img=img, src="m", fmt="png")).img
    assert abs(float(down.mean()) - 127.5) < 1 and down.std() < 1
    ramp = np.tile(np.arange(0, 250, 25, dtype=np.uint8), (10, 1))
    up = run("resize 100x100 upscale=true", Frame(img=ramp, src="m", fmt="png")).img
    assert np.all(np.diff(up[50, 10:90].astype(int)) >= -2)  # smooth ramp, no blocks


def test_resize_alpha_edges_have_no_dark_fringe():
    img = np.zeros((64, 64, 4), np.uint8)
    img[:, :32] = (255, 255, 255, 255)  # white opaque; the transparent half is black underneath
    out = run("resize 16x16", Frame(img=img, src="m", fmt="png")).img
    edge = out[8, 7]
    assert edge[3] not in (0, 255) or edge[0] == 255
    assert out[8, :8, 0].min() >= 250  # colour stays white wherever anything is visible


@given(w=st.integers(64, 5000), h=st.integers(64, 5000), box=st.integers(16, 2000),
       mode=st.sampled_from(["fit", "fill", "long", "exact"]))
@settings(max_examples=200, deadline=None)
def test_shrink_limit_never_leaves_too_few_pixels(w, h, box, mode):
    spec = f"resize {box}x{box} mode={mode}" if mode != "long" else f"resize {box} mode=long"
    op = Pipeline.parse(spec).ops[0]
    n = op.shrink_limit(w, h)
    assert n in (1, 2, 4, 8)
    for ww, hh in ((w, h), (h, w)):
        (rw, rh), _ = op.plan(ww, hh)
        if n > 1:
            assert ww // n >= rw and hh // n >= rh


@pytest.mark.parametrize("spec, expected", [
    ("resize 1024x1024", 2), ("resize 500x500", 8), ("resize 3000x3000", 1), ("resize 400x300 mode=fill", 4),
    ("resize 50 mode=percent", 2), ("orient | flip h | resize 256", 8), ("crop 100x100 | resize 10", 1),
    ("rotate 90 | resize 100", 1), ("rotate 180 | resize 100", 8), ("preset warm | resize 100", 8),
    ("sharpen | resize 100", 1), ("resize 1000x1000 upscale=true", 4),
])
def test_pipeline_shrink_for(spec, expected):
    assert Pipeline.parse(spec).shrink_for(4000, 3000) == expected


@pytest.mark.parametrize("spec, size, ref", [
    ("crop 100x50", (100, 50), (150, 125)),  # centred: top-left pixel comes from (150, 125)
    ("crop 100x50 gravity=tl", (100, 50), (0, 0)),
    ("crop 100x50 gravity=br", (100, 50), (300, 250)),
    ("crop box=10,20,30,40", (30, 40), (10, 20)),
    ("crop box=390,290,50,50", (10, 10), (390, 290)),  # clipped at the edge
    ("crop aspect=1:1", (300, 300), (50, 0)),
    ("crop aspect=16:9", (400, 225), (0, 37)),
    ("crop aspect=1:2 gravity=left", (150, 300), (0, 0)),
    ("crop 1000x1000", (400, 300), (0, 0)),  # larger than the image: the whole image
])
def test_crop(spec, size, ref):
    src = make(300, 400)
    out = run(spec, make(300, 400)).img
    assert (out.shape[1], out.shape[0]) == size
    assert np.array_equal(out[0, 0], src.img[ref[1], ref[0]])


def test_crop_box_outside_the_image_fails_the_item():
    with pytest.raises(ItemError) as info:
        run("crop box=500,0,10,10", make(300, 400))
    assert info.value.error_class == "op"


def test_crop_works_on_the_displayed_image():
    frame = run("crop box=0,0,10,20", make(300, 400, orientation=6))
    assert frame.orientation == 1 and frame.img.shape[:2] == (20, 10)


@pytest.mark.parametrize("angle", ["90", "180", "270"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_rotate_moves_the_top_left_corner(angle, channels):
    src = make(30, 40, channels)
    out = run(f"rotate {angle}", make(30, 40, channels)).img
    expect_shape = (30, 40) if angle == "180" else (40, 30)
    assert out.shape[:2] == expect_shape
    h, w = out.shape[:2]
    # clockwise: the old top-left goes to the top-right (90), bottom-right (180), bottom-left (270)
    y, x = {"90": (0, w - 1), "180": (h - 1, w - 1), "270": (h - 1, 0)}[angle]
    assert np.array_equal(out[y, x], src.img[0, 0])


@pytest.mark.parametrize("axis", ["h", "v"])
def test_flip(axis):
    src = make(30, 40)
    out = run(f"flip {axis}", make(30, 40)).img
    expected = src.img[:, ::-1] if axis == "h" else src.img[::-1]
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("channels, dtype, value", [
    (3, np.uint8, (0, 0, 255)), (1, np.uint8, (76,)), (4, np.uint8, (0, 0, 255, 255)),
    (3, np.uint16, (0, 0, 65535)),
])
def test_pad_letterboxes_with_the_colour(channels, dtype, value):
    out = run("pad 200x200 color=#ff0000", make(50, 100, channels, dtype)).img
    assert out.shape[:2] == (200, 200)
    assert tuple(np.atleast_1d(out[0, 0])) == value  # border
    assert tuple(np.atleast_1d(out[199, 199])) == value
    assert out[75, 50].tolist() != list(value) or channels == 1  # the image sits in the middle rows 75..124


def test_pad_shrinks_larger_images_to_fit():
    out = run("pad 100x100", make(300, 400)).img
    assert out.shape[:2] == (100, 100)
    assert out[:12].max() == 0 and out[88:].max() == 0  # 100x75 image centred, 12-13 px bars


@pytest.mark.parametrize("spec, message", [
    ("resize 100x mode=fill", "needs both sides"),
    ("resize 100x50 mode=long", "one number"),
    ("resize 2000 mode=percent", "1 to 1000"),
    ("resize 10x10 mode=zoom", "not one of"),
    ("crop", "exactly one"),
    ("crop 10x10 aspect=1:1", "exactly one"),
    ("crop box=1,2,3", "not valid"),
    ("crop aspect=wide", "not valid"),
    ("rotate 45", "not one of"),
    ("flip x", "not one of"),
    ("pad 100x", "both sides"),
    ("pad 100x100 color=nope", "not a valid color"),
])
def test_validation_names_the_op_and_the_problem(spec, message):
    with pytest.raises(ConfigError) as info:
        Pipeline.parse(spec)
    assert spec.split()[0] in str(info.value) and message in str(info.value)


def _real(name: str) -> Path:
    p = REAL / name
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


@pytest.mark.shared
@pytest.mark.parametrize("name", ["dog.jpg", "kimono.jpg", "gorilla_rgba.png"])
@pytest.mark.parametrize("spec, check", [
    ("resize 256x256", lambda w, h, W, H: max(w, h) == min(256, max(W, H))),
    ("resize 200x100 mode=fill", lambda w, h, W, H: (w, h) == (200, 100)),
    ("crop aspect=1:1 | resize 64x64", lambda w, h, W, H: (w, h) == (64, 64)),
    ("pad 2000x2000 color=white", lambda w, h, W, H: (w, h) == (2000, 2000)),
    ("rotate 90", lambda w, h, W, H: (w, h) == (H, W)),
])
def test_real_photos(name, spec, check):
    frame = imageio.load(str(_real(name)), shrink_for=Pipeline.parse(spec).shrink_for)
    W, H = shown(imageio.load(str(_real(name))))
    before = cv2.mean(frame.img)[:3]
    out = Pipeline.parse(spec).run(frame)
    w, h = shown(out)
    assert check(w, h, W, H)
    if "pad" not in spec:  # geometry alone keeps the average colour
        assert np.allclose(cv2.mean(out.img)[:3], before, atol=12)


def test_a_resize_whose_output_cannot_be_allocated_fails_as_oom_in_one_line(tmp_path):
    """65000x65000 BGR is 11.8G: under a 2G --worker-memory cap OpenCV cannot allocate it."""
    from conftest import cli, make_image

    make_image(tmp_path / "in" / "a.png", 16, 16)
    r = cli("start", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--worker-memory", "2G", "--retries", "0",
            "--pipeline", "resize 65000x65000 mode=exact", home=tmp_path / "home", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    line = f"failed [oom] {tmp_path / 'in' / 'a.png'}: resize to 65000x65000: out of memory for its 11.8G of pixels"
    assert line in r.stdout + r.stderr, r.stdout + r.stderr
