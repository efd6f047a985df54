"""HEIC/HEIF through pillow-heif (its wheels carry libheif) and AVIF through Pillow's own AVIF
plugin: decoding HEIC, encoding both with their metadata (EXIF, XMP, ICC) passed to the encoder.

libheif applies a HEIC's rotation and mirroring when decoding, so decoded pixels are upright.
10- and 12-bit HEIC decode to 16 bits; 16-bit pixels encode as 10-bit HEIC.
"""

from __future__ import annotations

import io

from batchcli.errors import ItemError
from batchcli.imaging.lazy import np


def heic_size(data: bytes) -> tuple[int, int, int]:
    """(width, height, images) of a HEIF file's primary image, read without decoding."""
    import pillow_heif

    try:
        hf = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False, bgr_mode=True)
        return hf.size[0], hf.size[1], len(hf)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ItemError("decode", f"cannot read HEIF: {str(exc).strip()[:160]}") from None


def decode_heic(data: bytes):
    """The primary image of a HEIF file as gray, BGR or BGRA, uint8 (8-bit) or uint16 (deeper)."""
    import pillow_heif

    try:
        hf = pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=False, bgr_mode=True)
        img = np.asarray(hf)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ItemError("decode", f"cannot decode HEIF: {str(exc).strip()[:160]}") from None
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return np.ascontiguousarray(img)


def encode(img, fmt: str, quality: int, blocks: dict[str, bytes]) -> bytes:
    """Gray, BGR or BGRA pixels as HEIC (pillow-heif; 16-bit as 10-bit) or AVIF (Pillow, 8-bit),
    with `blocks` (exif, xmp, icc_profile) in the file."""
    extra = {k: v for k, v in blocks.items() if v}
    buf = io.BytesIO()
    try:
        if fmt == "heic":
            import pillow_heif

            if img.ndim == 2:
                img = np.dstack([img, img, img])
            mode = ("BGRA" if img.shape[2] == 4 else "BGR") + (";16" if img.dtype == np.uint16 else "")
            pillow_heif.encode(mode, (img.shape[1], img.shape[0]), np.ascontiguousarray(img).tobytes(), buf,
                               quality=quality, **extra)
        else:
            from PIL import Image

            rgb = img if img.ndim == 2 else np.ascontiguousarray(img[:, :, [2, 1, 0, 3][:img.shape[2]]])
            Image.fromarray(rgb).save(buf, "AVIF", quality=quality, **extra)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        raise ItemError("encode", f"cannot encode as {fmt}: {str(exc).strip()[:160]}") from None
    return buf.getvalue()


def can_write(fmt: str) -> bool:
    """Whether the installed libraries can encode `fmt` ('heic' or 'avif')."""
    try:
        if fmt == "heic":
            import pillow_heif

            return bool(pillow_heif.libheif_info().get("HEIF"))
        from PIL import features

        return bool(features.check("avif"))
    except ImportError:
        return False
