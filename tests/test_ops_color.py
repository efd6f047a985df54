"""Colour ops: presets and looks, .cube LUTs, autolevel, whitebalance, clahe, checked numerically."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np
import pytest

from batchcli.errors import ConfigError
from batchcli.imaging import imageio
from batchcli.ops.analyze import colorfulness
from batchcli.ops.base import Frame
from batchcli.ops.color import CubeApplier, monotone_curve, parse_cube
from batchcli.pipeline import Pipeline

REAL = Path(__file__).resolve().parents[2] / "shared" / "images" / "real"


def scene(h=96, w=128, channels=3, dtype=np.uint8) -> np.ndarray:
    """A colourful test card: hue across, brightness down; alpha (if any) is a ramp."""
    hsv = np.zeros((h, w, 3), np.uint8)
    hsv[..., 0] = np.linspace(0, 179, w)[None, :]
    hsv[..., 1] = 170
    hsv[..., 2] = np.linspace(40, 230, h)[:, None]
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if channels == 1:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    elif channels == 4:
        img = np.dstack([img, np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)])
    return img.astype(np.uint16) * 257 if dtype == np.uint16 else img


def run(spec: str, img: np.ndarray) -> np.ndarray:
    return Pipeline.parse(spec).run(Frame(img=img.copy(), src="m", fmt="png")).img


def means(img: np.ndarray) -> np.ndarray:
    """Mean B, G, R in 8-bit units."""
    k = 257 if img.dtype == np.uint16 else 1
    return np.array(cv2.mean(img)[:3]) / k


@pytest.mark.parametrize("channels, dtype", [(3, np.uint8), (4, np.uint8), (3, np.uint16), (4, np.uint16)])
@pytest.mark.parametrize("look, check", [
    ("warm", lambda d, a, b: d[2] > 8 and d[0] < -3),
    ("cool", lambda d, a, b: d[0] > 4 and d[2] < -6),
    ("mono", lambda d, a, b: colorfulness(_u8(b)) < 1),
    ("vivid", lambda d, a, b: colorfulness(_u8(b)) > colorfulness(_u8(a)) * 1.2),
    ("fade", lambda d, a, b: _u8(b).min() >= 35 and colorfulness(_u8(b)) < colorfulness(_u8(a))),
    ("vintage", lambda d, a, b: d[2] > d[0] and colorfulness(_u8(b)) < colorfulness(_u8(a))),
])
def test_builtin_looks(look, check, channels, dtype):
    img = scene(channels=channels, dtype=dtype)
    out = run(f"preset {look}", img)
    assert out.shape == img.shape and out.dtype == dtype
    if channels == 4:
        assert np.array_equal(out[:, :, 3], img[:, :, 3])  # alpha untouched
    assert check(means(out) - means(img), img[:, :, :3], out[:, :, :3])


def _u8(img: np.ndarray) -> np.ndarray:
    return imageio.to_uint8(np.ascontiguousarray(img))


@pytest.mark.parametrize("channels, dtype", [(1, np.uint8), (3, np.uint8), (3, np.uint16)])
def test_vignette_darkens_the_corners_only(tmp_path, channels, dtype):
    look = tmp_path / "vig.toml"
    look.write_text("vignette = 80\n")
    img = np.full((90, 120, channels) if channels > 1 else (90, 120), 200 * (257 if dtype == np.uint16 else 1), dtype)
    out = _u8(run(f"preset {look}", img)).astype(float)
    assert out[45, 60].mean() == pytest.approx(200, abs=1)
    assert out[0, 0].mean() < 200 * 0.5 and out[89, 119].mean() < 200 * 0.5


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_blend_zero_is_the_original_and_half_is_halfway(dtype):
    img = scene(dtype=dtype)
    assert np.array_equal(run("preset warm blend=0", img), img)
    full = means(run("preset warm", img)) - means(img)
    half = means(run("preset warm blend=50", img)) - means(img)
    assert np.allclose(half, full / 2, atol=0.6)


def test_gray_images_stay_gray_and_get_the_tone_only():
    img = scene(channels=1)
    out = run("preset vintage", img)
    assert out.ndim == 2 and out.min() >= 25  # lifted blacks from the curve


def test_user_look_from_toml(tmp_path):
    look = tmp_path / "look.toml"
    look.write_text('exposure = 0.5\ncontrast = 10\ntemperature = -20\ncurves = { rgb = [[0, 0], [255, 255]] }\n')
    img = scene()
    out = run(f"preset {look}", img)
    d = means(out) - means(img)
    assert d.mean() > 10 and d[0] > d[2]  # brighter, bluer
    frame = Pipeline.parse(f"preset {look} blend=40")
    assert Pipeline.parse(frame.text()).spec() == frame.spec()


@pytest.mark.parametrize("text, message", [
    ("exposure = 9", "outside -5..5"),
    ("sparkle = 3", "unknown key 'sparkle'"),
    ("contrast = 'high'", "must be a number"),
    ("curves = [[0, 0]]", "at least 2"),
    ("curves = { x = [[0, 0], [255, 255]] }", "keys rgb, r, g, b"),
    ("exposure = ", "not valid TOML"),
])
def test_bad_user_looks_fail_before_any_item(tmp_path, text, message):
    look = tmp_path / "bad.toml"
    look.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        Pipeline.parse(f"preset {look}")
    assert message in str(info.value)


def test_unknown_look_lists_the_built_ins():
    with pytest.raises(ConfigError) as info:
        Pipeline.parse("preset sepia")
    assert "warm" in str(info.value) and "vintage" in str(info.value)


def test_curves_are_monotone_through_their_points():
    pts = [(0, 0.1), (0.25, 0.2), (0.5, 0.7), (1, 0.9)]
    x = np.linspace(0, 1, 1001)
    y = monotone_curve(pts, x)
    assert np.all(np.diff(y) >= -1e-12)
    for px, py in pts:
        assert abs(monotone_curve(pts, np.array([px]))[0] - py) < 1e-9


# --- .cube LUTs ----------------------------------------------------------------------------------

def cube_text(n: int, fn, header: str = "") -> str:
    g = np.linspace(0, 1, n)
    b, gg, r = np.meshgrid(g, g, g, indexing="ij")  # red changes fastest in the file
    rows = np.stack(fn(r, gg, b), -1).reshape(-1, 3)
    return header + f"TITLE \"test\"\n# a comment\nLUT_3D_SIZE {n}\n\n" + "\n".join(
        f"{a:.6f} {c:.6f} {d:.6f}" for a, c, d in rows)


def _grade(r, g, b):
    return np.clip(r ** 0.8 * 1.05, 0, 1), g ** 1.2, np.clip(b * 0.85 + 0.1 * r, 0, 1)


def trilinear_reference(cube, img: np.ndarray) -> np.ndarray:
    """Straightforward trilinear interpolation in float64, pixel coordinates from 0..top."""
    top = 65535.0 if img.dtype == np.uint16 else 255.0
    n = cube.size
    f = img.astype(np.float64) / top
    c = [np.clip((f[..., 2 - i] - cube.domain_min[i]) / (cube.domain_max[i] - cube.domain_min[i]), 0, 1) * (n - 1)
         for i in range(3)]  # r, g, b coordinates
    lo = [np.minimum(np.floor(v).astype(int), n - 2) for v in c]
    fr = [v - low for v, low in zip(c, lo)]
    out = np.zeros(img.shape[:2] + (3,))
    for dr in (0, 1):
        for dg in (0, 1):
            for db in (0, 1):
                w = ((fr[0] if dr else 1 - fr[0]) * (fr[1] if dg else 1 - fr[1]) * (fr[2] if db else 1 - fr[2]))
                out += w[..., None] * cube.table[lo[2] + db, lo[1] + dg, lo[0] + dr]
    return out[..., ::-1] * top


@functools.cache
def _graded_cube(n: int):
    """Written and parsed once per size (65: 274,625 rows, about a second), for both depths."""
    return parse_cube(cube_text(n, _grade))


@pytest.mark.parametrize("n", [2, 17, 33, 65])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_lut_matches_reference_trilinear(n, dtype):
    cube = _graded_cube(n)
    img = scene(dtype=dtype)
    out = CubeApplier(cube).apply(img).astype(float)
    ref = trilinear_reference(cube, img)
    tol = 1.01 if dtype == np.uint8 else 300  # 16-bit: within about one 8-bit level
    assert np.abs(out - ref).max() <= tol
    assert np.abs(out - ref).mean() < tol / 3


@pytest.mark.parametrize("shape, dtype", [((2, 40000, 3), np.uint8), ((40000, 2, 3), np.uint16)])
def test_lut_on_sides_over_32767_px_matches_the_same_pixels_in_a_block(shape, dtype):
    """OpenCV's remap takes maps under 32767 px a side; a long panorama still gets its LUT,
    pixel for pixel as if it were laid out as an ordinary image."""
    top = 65535 if dtype == np.uint16 else 255
    img = np.random.default_rng(3).integers(0, top + 1, shape, dtype)
    applier = CubeApplier(_graded_cube(17))
    block = applier.apply(img.reshape(200, 400, 3))
    assert np.array_equal(applier.apply(img), block.reshape(shape))
    assert np.abs(block.astype(float) - trilinear_reference(_graded_cube(17), img.reshape(200, 400, 3))).max() <= (
        1.01 if dtype == np.uint8 else 300)


def test_identity_lut_is_exact(tmp_path):
    p = tmp_path / "id.cube"
    p.write_text(cube_text(33, lambda r, g, b: (r, g, b)))
    img = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    assert np.array_equal(run(f"lut {p}", img), img)


@pytest.mark.parametrize("channels", [1, 4])
def test_lut_on_gray_and_alpha(tmp_path, channels):
    p = tmp_path / "dark.cube"
    p.write_text(cube_text(9, lambda r, g, b: (r * 0.5, g * 0.5, b * 0.5)))
    img = scene(channels=channels)
    out = run(f"lut {p} blend=100", img)
    assert out.shape == img.shape
    if channels == 4:
        assert np.array_equal(out[:, :, 3], img[:, :, 3])
    assert np.allclose(means(out), means(img) / 2, atol=1)
    assert np.allclose(means(run(f"lut {p} blend=50", img)), means(img) * 0.75, atol=1)


def test_lut_domain_is_respected():
    text = cube_text(5, lambda r, g, b: (r, g, b), header="DOMAIN_MIN 0 0 0\nDOMAIN_MAX 0.5 0.5 0.5\n")
    cube = parse_cube(text)
    img = np.full((4, 4, 3), 64, np.uint8)  # 0.25 of full range = half of this domain
    assert abs(int(CubeApplier(cube).apply(img)[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize("text, message", [
    ("LUT_3D_SIZE 2\n0 0 0\n1 1 1\n", "expected 8 rows"),
    ("LUT_1D_SIZE 4\n0 0 0\n", "1D .cube LUTs are not supported"),
    ("0 0 0\n", "LUT_3D_SIZE missing"),
    ("LUT_3D_SIZE 2\n" + "0 0\n" * 8, "line 2"),
    ("LUT_3D_SIZE 2\nDOMAIN_MIN 1 1 1\nDOMAIN_MAX 0 0 0\n" + "0 0 0\n" * 8, "DOMAIN_MIN must be below"),
    # rows of NaN were taken for unknown keywords and skipped: 'expected 8 rows ..., found 0'
    ("LUT_3D_SIZE 2\n" + "nan 0 0\n" * 8, "NaN or infinite values"),
    ("LUT_3D_SIZE 2\n" + "0 inf 0\n" * 7 + "INF 0 0\n", "NaN or infinite values"),
    # a binary file's first line was repeated whole in the message (a megabyte line, a megabyte message)
    ("LUT_3D_SIZE 2\n1 2 " + "\x01\x7f" * 5000 + "\n", "line 2: cannot read"),
])
def test_bad_cube_files(tmp_path, text, message):
    p = tmp_path / "bad.cube"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        Pipeline.parse(f"lut {p}")
    assert message in str(info.value) and len(str(info.value)) < len(str(p)) + 300


def test_lut_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Pipeline.parse(f"lut {tmp_path / 'nope.cube'}")


def test_lut_op_pickles_without_its_atlas(tmp_path):
    import pickle

    p = tmp_path / "id.cube"
    p.write_text(cube_text(17, lambda r, g, b: (r, g, b)))
    pipe = Pipeline.parse(f"lut {p}")
    pipe.prepare()
    blob = pickle.dumps(pipe)
    assert len(blob) < 200_000
    again = pickle.loads(blob)
    img = scene()
    assert np.array_equal(again.run(Frame(img=img.copy(), src="m", fmt="png")).img, img)


# --- automatic corrections -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_autolevel_stretches_to_the_full_range(dtype, channels):
    img = scene(channels=channels, dtype=dtype)
    top = 65535 if dtype == np.uint16 else 255
    dull = (img.astype(np.float64) * 0.5 + top * 0.2).astype(dtype)
    if channels == 4:
        dull[:, :, 3] = img[:, :, 3]
    out = run("autolevel clip=0", dull)
    px = out if channels == 1 else out[:, :, :3]
    assert px.min() == 0 and px.max() == top
    if channels == 4:
        assert np.array_equal(out[:, :, 3], img[:, :, 3])


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_whitebalance_removes_a_colour_cast(dtype):
    img = scene(dtype=dtype).astype(np.float64)
    cast = np.clip(img * np.array([0.7, 0.95, 1.25]), 0, np.iinfo(dtype).max).astype(dtype)
    out = run("whitebalance", cast)
    m = means(out)
    assert np.ptp(m) < np.ptp(means(cast)) / 4
    assert np.array_equal(run("whitebalance", scene(channels=1)), scene(channels=1))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_clahe_adds_local_contrast(dtype, channels):
    rng = np.random.default_rng(2)
    flat = scene(channels=channels, dtype=dtype)
    top = np.iinfo(dtype).max
    low = (flat.astype(np.float64) * 0.2 + top * 0.4 + rng.normal(0, top * 0.01, flat.shape)).clip(0, top).astype(dtype)
    out = run("clahe clip=3", low)
    assert out.shape == low.shape and out.dtype == dtype
    assert _u8(out).std() > _u8(low).std() * 1.3


@pytest.mark.shared
@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png", "rocket.jpg"])
def test_real_photos_warm_and_cool_move_the_colour_balance(name):
    p = REAL / name
    if not p.exists():
        pytest.skip(f"{p} not available")
    img = imageio.load(str(p)).img
    warm, cool = run("preset warm", img), run("preset cool", img)
    assert (means(warm) - means(img))[2] > 5 > (means(cool) - means(img))[2]
    assert (means(warm) - means(img))[0] < 0 < (means(cool) - means(img))[0]
