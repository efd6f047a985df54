"""Analyze: measurements recorded in the item's journal record (`meta["analyze"]`); no pixels change.

Everything is measured on the image as it reaches this op, in display orientation (a pending
EXIF orientation is taken into account), and is plain JSON: ints, floats, strings, lists.
"""

from __future__ import annotations

from batchcli.imaging import metadata
from batchcli.imaging.imageio import apply_orientation, max_value, split_alpha
from batchcli.imaging.lazy import cv2, np
from batchcli.ops.base import Frame, Op, Param, register

_THUMB = 256  # statistics other than sharpness are taken on a thumbnail this wide at most
_KMEANS = 64  # dominant colours: k-means on a thumbnail this wide at most


def to_gray8(img: np.ndarray) -> np.ndarray:
    px, _ = split_alpha(img)
    if px.dtype == np.uint16:
        px = ((px.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return px if px.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(px), cv2.COLOR_BGR2GRAY)


def thumbnail(img: np.ndarray, side: int = _THUMB) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(1.0, side / max(h, w))
    if s >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def dhash(gray: np.ndarray) -> str:
    """64-bit difference hash as 16 hex digits: is each of 8x8 cells brighter than its right neighbour."""
    small = cv2.resize(gray, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two dhash values (0 = same picture; up to about 10 = similar)."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def colorfulness(bgr: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003) colourfulness metric on 8-bit BGR (0 = gray; above ~60 = vivid)."""
    b, g, r = (bgr[:, :, i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    (m_rg, s_rg), (m_yb, s_yb) = (_mean_std(x) for x in (rg, yb))
    return float(np.hypot(s_rg, s_yb) + 0.3 * np.hypot(m_rg, m_yb))


def _mean_std(a: np.ndarray) -> tuple[float, float]:
    """Mean and (population) standard deviation in one pass (numpy's pair costs more on small images)."""
    mean, std = cv2.meanStdDev(a)
    return float(mean[0, 0]), float(std[0, 0])


def dominant_colors(bgr: np.ndarray, k: int, iterations: int = 12) -> list[dict]:
    """k-means on the pixels of a small 8-bit BGR image, started from evenly spaced brightness
    quantiles (no randomness, so the same image always gives the same answer). Returns
    [{"hex": "#rrggbb", "share": 0.42}, ...], largest share first."""
    pts = bgr.reshape(-1, 3).astype(np.float64)
    k = max(1, min(k, len(pts)))
    order = np.argsort(pts @ np.array([0.114, 0.587, 0.299]), kind="stable")
    centers = pts[order[((np.arange(k) + 0.5) * len(pts) / k).astype(int)]]
    labels = np.zeros(len(pts), np.int64)
    counts = np.zeros(k, np.int64)
    for _ in range(iterations):
        # nearest centre: |p - c|^2 = |p|^2 - 2 p.c + |c|^2, and |p|^2 does not change the argmin
        labels = ((centers ** 2).sum(axis=1) - 2.0 * (pts @ centers.T)).argmin(axis=1)
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=pts[:, j], minlength=k) for j in range(3)], axis=1)
        filled = counts > 0
        moved = centers.copy()
        moved[filled] = sums[filled] / counts[filled, None]
        done = np.abs(moved - centers).max() <= 0.5 + 1e-5 * np.abs(centers).max()
        centers = moved
        if done:
            break
    out = []
    for c in np.argsort(-counts, kind="stable"):
        if counts[c] == 0:
            continue
        b, g, r = (int(round(v)) for v in np.clip(centers[c], 0, 255))
        out.append({"hex": f"#{r:02x}{g:02x}{b:02x}", "share": round(float(counts[c] / len(pts)), 4)})
    return out


@register
class Analyze(Op):
    name = "analyze"
    summary = "Record size, format, camera, metadata blocks, brightness, sharpness, colourfulness, dominant colours and a dHash."
    writes_image = False
    params = (
        Param("colors", "int", 5, min=1, max=16, help="how many dominant colours to report"),
    )

    def apply(self, frame: Frame) -> Frame:
        img = frame.img
        px, alpha = split_alpha(img)
        h, w = img.shape[:2]
        if frame.orientation in (5, 6, 7, 8):
            w, h = h, w
        info = frame.info or {}
        gray = to_gray8(img)
        thumb = apply_orientation(thumbnail(img), frame.orientation)
        thumb_px, _ = split_alpha(thumb)
        thumb_gray = gray if thumb is img else to_gray8(thumb)  # a small upright image is its own thumbnail
        color8 = None
        if px.ndim == 3:
            color8 = np.ascontiguousarray(thumb_px if thumb_px.dtype == np.uint8 else
                                          ((thumb_px.astype(np.uint32) + 128) // 257).astype(np.uint8))
        record = {
            "width": int(w),
            "height": int(h),
            "format": frame.fmt,
            "channels": int(1 if img.ndim == 2 else img.shape[2]),
            "bit_depth": 16 if max_value(img) == 65535 else 8,
            "has_alpha": alpha is not None,
            "orientation": int(info.get("orientation", frame.orientation)),
            "brightness": round(float(gray.mean()), 2),
            "sharpness": round(_mean_std(cv2.Laplacian(gray, cv2.CV_64F))[1] ** 2, 2),
            "colorfulness": round(colorfulness(color8), 2) if color8 is not None else 0.0,
            "dominant_colors": dominant_colors(
                thumbnail(color8 if color8 is not None else cv2.cvtColor(thumb_gray, cv2.COLOR_GRAY2BGR), _KMEANS),
                self.p["colors"]),
            "dhash": dhash(thumb_gray),
        }
        if info.get("mode"):
            record["mode"] = info["mode"]
        camera = info.get("camera") or {}
        for key in ("make", "model", "captured_at"):
            if key in camera:
                record["camera_" + key if key != "captured_at" else key] = str(camera[key])
        record["metadata"] = metadata.summary(frame.metadata)
        if "frames" in frame.meta:
            record["frames"] = int(frame.meta["frames"]["count"])
        frame.meta["analyze"] = record
        return frame
