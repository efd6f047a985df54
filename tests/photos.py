"""Photographer's test media built on the spot: a JPEG carrying EXIF (camera, copyright, artist,
GPS, capture date, serial, orientation), IPTC, XMP and an ICC profile; and `exiftool`, the
independent reader the metadata tests check against."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED

COPYRIGHT = "(c) 2026 Jo Lens"
ARTIST = "Jo Lens"


def exiftool(*paths: Path) -> list[dict]:
    """exiftool's reading of each file (-G1 group names, numbers as numbers); skips without it."""
    if shutil.which("exiftool") is None:
        pytest.skip("exiftool not installed (Debian: libimage-exiftool-perl)")
    r = subprocess.run(["exiftool", "-j", "-G1", "-n", *map(str, paths)], capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


def icc_profile(name: str) -> bytes:
    """A profile from ../shared/icc (skips when absent); 'sRGB' comes from LittleCMS itself."""
    if name == "sRGB":
        from PIL import ImageCms

        return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = SHARED / "icc" / f"{name}.icc"
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path.read_bytes()


def photo_pixels(w: int, h: int, seed: int = 0):
    """Smooth, saturated RGB content (uint8, RGB order)."""
    import numpy as np

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 127 + 120 * np.sin(x / max(w, 1) * 6.3 + seed)
    g = 127 + 120 * np.sin(y / max(h, 1) * 6.3 + 2 * seed + 1)
    b = 127 + 120 * np.cos((x + y) / max(w + h, 1) * 9.4)
    return np.clip(np.dstack([r, g, b]), 0, 255).astype(np.uint8)


def photographer_jpeg(path: Path, w: int = 320, h: int = 240, icc: bytes | None = None, orientation: int = 6) -> Path:
    """A camera JPEG as a photographer has it: EXIF with Canon make and model, Copyright, Artist,
    GPS, DateTimeOriginal, a body serial number, a maker note and an orientation; IPTC keywords and
    copyright; XMP rights and subject; an ICC profile (`icc`, ProPhoto when None) and an EXIF
    thumbnail."""
    import pyexiv2
    from PIL import Image

    icc = icc if icc is not None else icc_profile("ProPhotoRGB")
    buf = io.BytesIO()
    thumb = io.BytesIO()
    Image.fromarray(photo_pixels(w, h)).save(buf, "JPEG", quality=92, icc_profile=icc)
    Image.fromarray(photo_pixels(160, 120)).save(thumb, "JPEG", quality=70)
    with pyexiv2.ImageData(buf.getvalue()) as img:
        img.modify_exif({
            "Exif.Image.Make": "Canon", "Exif.Image.Model": "Canon EOS R5", "Exif.Image.Orientation": str(orientation),
            "Exif.Image.Copyright": COPYRIGHT, "Exif.Image.Artist": ARTIST,
            "Exif.Photo.DateTimeOriginal": "2024:05:06 07:08:09", "Exif.Photo.BodySerialNumber": "0123456789", "Exif.Photo.LensSerialNumber": "L998",
            "Exif.Photo.PixelXDimension": str(w), "Exif.Photo.PixelYDimension": str(h),
            "Exif.Photo.UserComment": "charset=Ascii on the beach",
            "Exif.GPSInfo.GPSLatitudeRef": "N", "Exif.GPSInfo.GPSLatitude": "48/1 51/1 29/1",
            "Exif.GPSInfo.GPSLongitudeRef": "E", "Exif.GPSInfo.GPSLongitude": "2/1 17/1 40/1",
            "Exif.Canon.SerialNumber": "4242", "Exif.Canon.OwnerName": "Jo",
        })
        img.modify_thumbnail(thumb.getvalue())
        img.modify_iptc({"Iptc.Application2.Keywords": ["beach", "sun"], "Iptc.Application2.Copyright": COPYRIGHT})
        img.modify_xmp({"Xmp.dc.rights": COPYRIGHT, "Xmp.dc.subject": ["beach"], "Xmp.tiff.Orientation": str(orientation),
                        "Xmp.exif.GPSLatitude": "48,51.483N", "Xmp.aux.SerialNumber": "0123456789"})
        data = img.get_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
