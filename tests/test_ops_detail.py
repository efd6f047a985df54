"""Detail and overlay ops: sharpen, denoise, watermark."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from batchcli.errors import ConfigError
from batchcli.ops.base import Frame
from batchcli.pipeline import Pipeline


def run(spec: str, img: np.ndarray, orientation: int = 1) -> np.ndarray:
    return Pipeline.parse(spec).run(Frame(img=img.copy(), src="m", fmt="png", orientation=orientation)).img


def edges(h=80, w=80, channels=3, dtype=np.uint8) -> np.ndarray:
    """Soft-edged squares: something for sharpening to work on."""
    img = np.full((h, w), 60, np.uint8)
    img[20:60, 20:60] = 190
    img = cv2.GaussianBlur(img, (0, 0), 2)
    if channels > 1:
        img = cv2.merge([img] * 3 + ([np.full((h, w), 128, np.uint8)] if channels == 4 else []))
    return img.astype(np.uint16) * 257 if dtype == np.uint16 else img


def lap_var(img: np.ndarray) -> float:
    px = img[:, :, :3] if img.ndim == 3 else img
    g = px.astype(np.float64).mean(axis=2) if px.ndim == 3 else px.astype(np.float64)
    return float(cv2.Laplacian(g, cv2.CV_64F).var())


@pytest.mark.parametrize("channels, dtype", [(1, np.uint8), (3, np.uint8), (4, np.uint8), (3, np.uint16)])
@pytest.mark.parametrize("spec", ["sharpen", "sharpen amount=200 radius=2", "sharpen threshold=2"])
def test_sharpen_adds_edge_contrast_keeps_the_rest(spec, channels, dtype):
    img = edges(channels=channels, dtype=dtype)
    out = run(spec, img)
    assert out.shape == img.shape and out.dtype == dtype
    assert lap_var(out) > lap_var(img) * 1.25
    k = 257 if dtype == np.uint16 else 1
    assert abs(float(np.mean(out[..., :3] if channels > 1 else out)) - float(np.mean(img[..., :3] if channels > 1 else img))) < 2 * k
    assert np.array_equal(out[5, 5], img[5, 5])  # flat areas unchanged
    if channels == 4:
        assert np.array_equal(out[:, :, 3], img[:, :, 3])


def test_sharpen_threshold_leaves_fine_noise_alone():
    rng = np.random.default_rng(0)
    img = (128 + rng.normal(0, 1.0, (64, 64))).round().clip(0, 255).astype(np.uint8)
    assert np.array_equal(run("sharpen amount=300 threshold=10", img), img)
    assert not np.array_equal(run("sharpen amount=300", img), img)


@pytest.mark.parametrize("method", ["bilateral", "nlmeans", "median", "gaussian"])
@pytest.mark.parametrize("channels, dtype", [(1, np.uint8), (3, np.uint8), (4, np.uint8), (3, np.uint16)])
def test_denoise_reduces_noise(method, channels, dtype):
    rng = np.random.default_rng(1)
    clean = edges(64, 64, channels, dtype)
    top = np.iinfo(dtype).max
    noise = rng.normal(0, top * 0.04, clean.shape)
    if channels == 4:
        noise[:, :, 3] = 0
    noisy = (clean + noise).clip(0, top).astype(dtype)
    out = run(f"denoise method={method} strength=40", noisy)
    assert out.shape == noisy.shape and out.dtype == dtype
    err_before = np.abs(noisy.astype(float) - clean).mean()
    err_after = np.abs(out.astype(float) - clean).mean()
    assert err_after < err_before * 0.8
    if channels == 4:
        assert np.array_equal(out[:, :, 3], noisy[:, :, 3])


def _mark_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int]:
    diff = np.abs(after.astype(int) - before.astype(int))
    diff = diff.max(axis=2) if diff.ndim == 3 else diff
    ys, xs = np.nonzero(diff)
    return xs.min(), ys.min(), xs.max(), ys.max()


@pytest.mark.parametrize("position, where", [
    ("br", lambda x0, y0, x1, y1, w, h: x0 > w / 2 and y0 > h / 2),
    ("bl", lambda x0, y0, x1, y1, w, h: x1 < w / 2 and y0 > h / 2),
    ("tr", lambda x0, y0, x1, y1, w, h: x0 > w / 2 and y1 < h / 2),
    ("tl", lambda x0, y0, x1, y1, w, h: x1 < w / 2 and y1 < h / 2),
    ("center", lambda x0, y0, x1, y1, w, h: x0 < w / 2 < x1 and y0 < h / 2 < y1),
])
@pytest.mark.parametrize("channels, dtype", [(3, np.uint8), (1, np.uint8), (4, np.uint16)])
def test_text_watermark_position_and_size(position, where, channels, dtype):
    h, w = 300, 600
    img = np.full((h, w, channels) if channels > 1 else (h, w), 40 * (257 if dtype == np.uint16 else 1), dtype)
    out = run(f"watermark 'Sample' position={position} scale=25 opacity=80 margin=3", img)
    assert out.shape == img.shape and out.dtype == dtype
    x0, y0, x1, y1 = _mark_box(img[..., :3] if channels == 4 else img, out[..., :3] if channels == 4 else out)
    assert where(x0, y0, x1, y1, w, h)
    assert 0.15 * w < x1 - x0 < 0.3 * w  # about 25 % of the width
    if position in ("br", "tr"):
        assert w - x1 >= 0.03 * w - 4  # the margin
    if channels == 4:
        assert np.array_equal(out[:, :, 3], img[:, :, 3])


def test_watermark_opacity():
    img = np.zeros((100, 200, 3), np.uint8)
    assert np.array_equal(run("watermark Hi opacity=0", img), img)
    half = run("watermark Hi opacity=50 color=white", img).max()
    full = run("watermark Hi opacity=100 color=white", img).max()
    assert full == 255 and 120 <= half <= 135


def test_logo_watermark_respects_the_logo_alpha(tmp_path):
    logo = np.zeros((20, 40, 4), np.uint8)
    logo[:, :20] = (0, 0, 255, 255)  # opaque red left half, transparent right half
    path = tmp_path / "logo.png"
    cv2.imwrite(str(path), logo)
    img = np.full((100, 200, 3), 50, np.uint8)
    out = run(f"watermark image={path} position=tl margin=0 scale=50 opacity=100", img)
    assert out[10, 10].tolist() == [0, 0, 255]  # logo is 100x50 at the top-left
    assert out[10, 80].tolist() == [50, 50, 50]  # under the transparent half
    assert out[70, 10].tolist() == [50, 50, 50]  # below the logo


def test_watermark_follows_the_displayed_orientation():
    img = np.zeros((100, 200, 3), np.uint8)  # stored landscape, shown portrait (orientation 6)
    frame = Pipeline.parse("watermark X position=br").run(Frame(img=img.copy(), src="m", fmt="png", orientation=6))
    assert frame.orientation == 1 and frame.img.shape[:2] == (200, 100)
    x0, y0, _, _ = _mark_box(np.zeros_like(frame.img), frame.img)
    assert x0 > 50 and y0 > 100


DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def test_copyright_sign_in_the_built_in_font():
    img = np.zeros((200, 400, 3), np.uint8)
    out = run("watermark '© 2026 Ann Lee' opacity=100 scale=50", img)
    x0, y0, x1, y1 = _mark_box(img, out)
    assert 0.4 * 400 < x1 - x0 < 0.6 * 400 and x0 > 150 and y0 > 100  # bottom right


@pytest.mark.skipif(not os.path.exists(DEJAVU), reason="no DejaVu fonts on this machine")
def test_any_script_with_a_font_file():
    img = np.zeros((200, 400, 3), np.uint8)
    out = run(f"watermark 'Ünïcode — Привет' font={DEJAVU} opacity=100 scale=60", img)
    x0, y0, x1, y1 = _mark_box(img, out)
    assert 0.5 * 400 < x1 - x0 < 0.7 * 400
    with pytest.raises(ConfigError, match="no glyph for 中"):
        Pipeline.parse(f"watermark '中文' font={DEJAVU}")


@pytest.mark.parametrize("spec, message", [
    ("watermark", "either text"),
    ("watermark Hi image=x.png", "either text"),
    ("watermark image=/nonexistent/logo.png", "cannot read"),
    ("watermark 'Ünïcode'", "no glyph for Ü ï"),
    ("watermark Hi font=/nonexistent/font.ttf", "font=/nonexistent/font.ttf: cannot read"),
    ("watermark Hi opacity=150", "above the maximum"),
    ("denoise method=magic", "not one of"),
    ("sharpen amount=-1", "below the minimum"),
])
def test_validation(spec, message):
    with pytest.raises(ConfigError) as info:
        Pipeline.parse(spec)
    assert message in str(info.value)
