"""Generate a small, varied folder of sample images for `make demo` and the tutorials.

    python examples/make_samples.py examples/generated

Sizes from thumbnails to 12 MP, portrait and landscape, an EXIF-rotated phone shot, JPEG, PNG
(8- and 16-bit, grayscale, with alpha), WebP, TIFF, BMP, nested folders, and two broken files
(a truncated JPEG and a text file named .jpg) to show how failures are reported.
"""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np
from PIL import Image


def scene(w: int, h: int, seed: int) -> np.ndarray:
    """A colourful synthetic 'photo': sky gradient, sun, hills, some texture (BGR uint8)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    top = rng.uniform(120, 255, 3)
    bottom = rng.uniform(30, 200, 3)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        img[:, :, c] = top[c] * (1 - y) + bottom[c] * y + 10 * np.sin(x * 12 + c)
    s = min(w, h)
    cv2.circle(img, (int(w * rng.uniform(0.2, 0.8)), int(h * 0.3)), int(s * 0.12), (80, 220, 255), -1, cv2.LINE_AA)
    for k in range(3):
        pts = [(0, h)]
        for xx in np.linspace(0, w, 12):
            pts.append((int(xx), int(h * (0.55 + 0.1 * k) + rng.uniform(-0.08, 0.08) * h)))
        pts.append((w, h))
        colour = tuple(float(v) for v in rng.uniform(20, 160, 3))
        cv2.fillPoly(img, [np.array(pts, np.int32)], colour, cv2.LINE_AA)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def save_jpeg_with_orientation(path: str, bgr: np.ndarray, orientation: int) -> None:
    im = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "batchcli"  # Make
    exif[0x0110] = "Sample Camera"  # Model
    im.save(path, "JPEG", quality=90, exif=exif.tobytes())


def main(out: str, scale: float = 1.0) -> None:
    """Write the samples into `out`; `scale` shrinks the pictures (0.1: the same files, 1% of the pixels)."""

    def px(n: int) -> int:
        return max(16, round(n * scale))

    os.makedirs(os.path.join(out, "trip", "day1"), exist_ok=True)
    os.makedirs(os.path.join(out, "trip", "day2"), exist_ok=True)
    os.makedirs(os.path.join(out, "studio"), exist_ok=True)
    j = os.path.join
    cv2.imwrite(j(out, "trip", "day1", "beach.jpg"), scene(px(4000), px(3000), 1), [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(j(out, "trip", "day1", "hills.jpg"), scene(px(3000), px(2000), 2), [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(j(out, "trip", "day1", "small.jpg"), scene(px(640), px(480), 3))
    # a phone shot stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)
    # (the pixels are stored rotated 90 degrees counter-clockwise, as a phone held upright does)
    upright = scene(px(1512), px(2016), 4)
    save_jpeg_with_orientation(j(out, "trip", "day2", "phone portrait.jpg"),
                               cv2.rotate(upright, cv2.ROTATE_90_COUNTERCLOCKWISE), 6)
    cv2.imwrite(j(out, "trip", "day2", "tower.png"), scene(px(1200), px(1800), 5))
    cv2.imwrite(j(out, "trip", "day2", "dusk.webp"), scene(px(1920), px(1080), 6), [cv2.IMWRITE_WEBP_QUALITY, 85])
    cv2.imwrite(j(out, "studio", "scan.tif"), scene(px(1600), px(1200), 7))
    cv2.imwrite(j(out, "studio", "legacy.bmp"), scene(px(800), px(600), 8))
    gray = cv2.cvtColor(scene(px(1024), px(768), 9), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(j(out, "studio", "mono.png"), gray)
    deep = (scene(px(1024), px(1024), 10).astype(np.uint16) * 257)
    cv2.imwrite(j(out, "studio", "deep-16bit.png"), deep)
    logo = np.zeros((512, 512, 4), np.uint8)
    cv2.circle(logo, (256, 256), 200, (40, 120, 250, 255), -1, cv2.LINE_AA)
    cv2.putText(logo, "bc", (150, 320), cv2.FONT_HERSHEY_SIMPLEX, 5, (255, 255, 255, 255), 20, cv2.LINE_AA)
    cv2.imwrite(j(out, "studio", "logo-alpha.png"), logo)
    # failures, on purpose: a JPEG cut in half, and text that only looks like an image by name
    ok, buf = cv2.imencode(".jpg", scene(800, 600, 11))
    data = buf.tobytes()
    with open(j(out, "trip", "day2", "truncated.jpg"), "wb") as fh:
        fh.write(data[: len(data) // 2])
    with open(j(out, "studio", "notes.jpg"), "w") as fh:
        fh.write("This is a text file with an image's name.\n")
    n = sum(len(f) for _, _, f in os.walk(out))
    sys.stdout.write(f"wrote {n} sample files under {out}\n")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Write the demo's sample images into a folder.")
    ap.add_argument("out", nargs="?", default=os.path.join(os.path.dirname(__file__), "generated"),
                    help="folder to write into (default: examples/generated)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="shrink the pictures by this factor (0.1: a quick set for tests)")
    args = ap.parse_args()
    main(args.out, args.scale)

