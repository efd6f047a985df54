"""Small pixel helpers shared by decoding, encoding and the ops: orientation, bit depth, alpha."""

from __future__ import annotations

from batchcli.imaging.frame import Frame
from batchcli.imaging.lazy import cv2, np

_ORIENT = {
    2: lambda a: cv2.flip(a, 1),
    3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
    4: lambda a: cv2.flip(a, 0),
    5: lambda a: cv2.transpose(a),
    6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    7: lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
    8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def apply_orientation(img: np.ndarray, orientation: int) -> np.ndarray:
    fn = _ORIENT.get(orientation)
    return fn(img) if fn else img


def upright(frame: Frame) -> Frame:
    """Apply a pending EXIF orientation to the pixels, for ops that work in display coordinates."""
    if frame.orientation != 1:
        frame.img = apply_orientation(frame.img, frame.orientation)
        frame.orientation = 1
    return frame


def max_value(img: np.ndarray) -> int:
    """255 for uint8, 65535 for uint16."""
    return 65535 if img.dtype == np.uint16 else 255


def split_alpha(img: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour or gray pixels, alpha or None). Ops grade the first and pass the alpha through."""
    if img.ndim == 3 and img.shape[2] == 4:
        return img[:, :, :3], img[:, :, 3]
    return img, None


def merge_alpha(img: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is None:
        return img
    return cv2.merge([*cv2.split(img), alpha])


def color_for(img: np.ndarray, bgr: tuple[int, int, int]) -> tuple:
    """An 8-bit (b, g, r) colour as a pixel value of `img`: gray (luma), BGR or opaque BGRA,
    scaled to 16 bits when needed."""
    k = 257 if img.dtype == np.uint16 else 1
    b, g, r = (c * k for c in bgr)
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels == 1:
        return (int(round(0.114 * b + 0.587 * g + 0.299 * r)),)
    if channels == 4:
        return (b, g, r, 255 * k)
    return (b, g, r)


def to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


def flatten_alpha(img: np.ndarray, background=(255, 255, 255)) -> np.ndarray:
    alpha = img[:, :, 3:4].astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
    bg = np.array(background, np.float32).reshape(1, 1, 3)
    if img.dtype == np.uint16:
        bg = bg * 257
    out = img[:, :, :3].astype(np.float32) * alpha + bg * (1 - alpha)
    return np.clip(out + 0.5, 0, np.iinfo(img.dtype).max).astype(img.dtype)
