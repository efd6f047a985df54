"""Detail: sharpen (unsharp mask) and denoise. uint8 and uint16, gray, BGR, BGRA (alpha kept)."""

from __future__ import annotations

from batchcli.imaging.imageio import max_value
from batchcli.imaging.lazy import cv2, np
from batchcli.ops.base import Frame, Op, Param, register
from batchcli.ops.color import graded


def unsharp(img: np.ndarray, amount: float, radius: float, threshold: float) -> np.ndarray:
    """img + amount * (img - blur(img)), only where the difference exceeds `threshold`
    (in 8-bit levels, scaled for 16-bit images)."""
    blurred = cv2.GaussianBlur(img, (0, 0), sigmaX=radius, sigmaY=radius)
    sharp = cv2.addWeighted(img, 1 + amount, blurred, -amount, 0)
    if threshold <= 0:
        return sharp
    level = threshold * max_value(img) / 255
    mask = cv2.absdiff(img, blurred) > level
    return np.where(mask, sharp, img)


@register
class Sharpen(Op):
    name = "sharpen"
    summary = "Unsharp mask: add back the difference between the image and a blurred copy."
    params = (
        Param("amount", "float", 80.0, min=0, max=500, help="strength in percent"),
        Param("radius", "float", 1.0, min=0.1, max=50, help="blur radius (Gaussian sigma) in pixels"),
        Param("threshold", "float", 0.0, min=0, max=255,
              help="leave pixels alone whose difference is at most this many levels (protects smooth areas)"),
    )

    def apply(self, frame: Frame) -> Frame:
        return graded(frame, lambda px: unsharp(px, self.p["amount"] / 100, self.p["radius"], self.p["threshold"]))


def _denoise(img: np.ndarray, method: str, strength: float) -> np.ndarray:
    if method == "median":
        k = 3 if strength < 50 else 5  # 16-bit median supports 3 and 5 only
        return cv2.medianBlur(img, k)
    if method == "gaussian":
        return cv2.GaussianBlur(img, (0, 0), sigmaX=0.3 + strength / 25)
    if method == "bilateral":
        top = max_value(img)
        f = img.astype(np.float32) / top
        out = cv2.bilateralFilter(f, d=5 if strength < 50 else 9, sigmaColor=0.02 + strength / 400,
                                  sigmaSpace=2 + strength / 10)
        return np.clip(out * top + 0.5, 0, top).astype(img.dtype)
    # nlmeans: the best quality, and the slowest
    h = 1 + strength / 5
    if img.dtype == np.uint16:
        small = (img // 257).astype(np.uint8)
        den = _denoise(small, "nlmeans", strength).astype(np.int32) - small.astype(np.int32)
        return np.clip(img.astype(np.int32) + den * 257, 0, 65535).astype(np.uint16)
    if img.ndim == 2:
        return cv2.fastNlMeansDenoising(img, None, h=h, templateWindowSize=7, searchWindowSize=21)
    return cv2.fastNlMeansDenoisingColored(img, None, h=h, hColor=h, templateWindowSize=7, searchWindowSize=21)


@register
class Denoise(Op):
    name = "denoise"
    summary = "Reduce noise: bilateral (edge-preserving, default), nlmeans (best, slow), median or gaussian."
    params = (
        Param("method", "choice", "bilateral", choices=("bilateral", "nlmeans", "median", "gaussian"),
              help="bilateral keeps edges; nlmeans is strongest and slowest; median removes specks"),
        Param("strength", "float", 20.0, min=1, max=100, help="how much noise to remove"),
    )

    def apply(self, frame: Frame) -> Frame:
        return graded(frame, lambda px: _denoise(px, self.p["method"], self.p["strength"]))
