"""Metadata carried from an input to its outputs: EXIF, IPTC, XMP and the ICC profile.

exiv2 (through pyexiv2) reads the input's blocks and writes them into the encoded output, the
way photo tools do: maker notes, IPTC and XMP survive intact, which Pillow alone does not manage
in every format. The output's EXIF is brought in line with its pixels: orientation 1 (the pixels
are turned upright before encoding), pixel dimensions updated, the embedded thumbnail dropped.

A `metadata` op sets a policy on the frame (`Frame.keep`); without one everything is kept. The
ICC profile is `Frame.icc`, the profile of the pixels as they are now (the `profile` op changes
it); it is written only when its colour space fits the output (an RGB profile on RGB pixels).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from batchcli.imaging.frame import Frame

log = logging.getLogger("batchcli.metadata")

# formats exiv2 reads metadata from (raw camera formats included) and those it writes into
READABLE = frozenset(("jpg", "png", "webp", "tiff", "heic", "avif", "jp2", "raw"))
WRITABLE = frozenset(("jpg", "png", "webp", "tiff"))
DROPPABLE = ("gps", "maker", "serial", "thumbnail")

# EXIF groups of the standard (everything else under Exif.* is a camera maker's note)
_STANDARD = frozenset(("Image", "Photo", "Iop", "GPSInfo", "Thumbnail", "MpfInfo", "Image2", "Image3", "SubImage1", "SubImage2"))
# IFD0 tags that describe a TIFF or RAW file's own pixels (layout, sensor, DNG calibration) or
# carry its ICC profile, XMP, IPTC or Photoshop blocks (each output gets those in its own place, as
# the policy says): they would be false in another file, so they are not copied into JPEG, PNG or
# WebP outputs (nor HEIC or AVIF, whose EXIF is made the same way)
_STRUCTURE = frozenset((
    "InterColorProfile", "XMLPacket", "IPTCNAA", "ImageResources",
    "NewSubfileType", "SubfileType", "ImageWidth", "ImageLength", "BitsPerSample", "Compression", "PhotometricInterpretation",
    "StripOffsets", "SamplesPerPixel", "RowsPerStrip", "StripByteCounts", "PlanarConfiguration", "TileWidth", "TileLength",
    "TileOffsets", "TileByteCounts", "SubIFDs", "JPEGTables", "SampleFormat", "Predictor", "ExtraSamples",
    "CFARepeatPatternDim", "CFAPattern", "BlackLevelRepeatDim", "BlackLevel", "BlackLevelDeltaH", "BlackLevelDeltaV",
    "WhiteLevel", "DefaultScale", "DefaultCropOrigin", "DefaultCropSize", "ColorMatrix1", "ColorMatrix2",
    "CameraCalibration1", "CameraCalibration2", "ReductionMatrix1", "ReductionMatrix2", "AnalogBalance", "AsShotNeutral",
    "AsShotWhiteXY", "BaselineExposure", "BaselineNoise", "BaselineSharpness", "BayerGreenSplit", "LinearResponseLimit",
    "CalibrationIlluminant1", "CalibrationIlluminant2", "ForwardMatrix1", "ForwardMatrix2", "ActiveArea", "MaskedAreas",
    "PreviewColorSpace", "LinearizationTable", "OpcodeList1", "OpcodeList2", "OpcodeList3", "DNGPrivateData",
    "MakerNoteSafety", "RawDataUniqueID", "OriginalRawFileName", "ProfileCalibrationSignature", "AsShotProfileName",
    "ProfileName", "ProfileHueSatMapDims", "ProfileHueSatMapData1", "ProfileHueSatMapData2", "ProfileToneCurve",
    "ProfileEmbedPolicy", "ProfileCopyright", "ProfileLookTableDims", "ProfileLookTableData", "NoiseProfile",
))
# those a TIFF output has of its own (its encoder's layout, and the places of its ICC profile, XMP and
# IPTC): the rest of _STRUCTURE (a DNG's version, sensor and calibration tags) would make a TIFF
# output claim to be a raw DNG, with the white level of the sensor
_TIFF_OWN = frozenset((
    "InterColorProfile", "XMLPacket", "IPTCNAA", "ImageResources", "ImageWidth", "ImageLength", "BitsPerSample",
    "Compression", "PhotometricInterpretation", "StripOffsets", "SamplesPerPixel", "RowsPerStrip", "StripByteCounts",
    "PlanarConfiguration", "TileWidth", "TileLength", "TileOffsets", "TileByteCounts", "SubIFDs", "JPEGTables",
    "SampleFormat", "Predictor", "ExtraSamples",
))
# `metadata minimal`: copyright, artist, capture date, camera
MINIMAL = (
    "Exif.Image.Artist", "Exif.Image.Copyright", "Exif.Image.Make", "Exif.Image.Model",
    "Exif.Photo.DateTimeOriginal", "Exif.Photo.OffsetTimeOriginal", "Exif.Photo.SubSecTimeOriginal",
)


def _exiv2():
    import pyexiv2

    if not getattr(pyexiv2, "_batchcli_quiet", False):
        pyexiv2.set_log_level(4)  # problems surface as exceptions, reported per item; no stderr lines
        pyexiv2._batchcli_quiet = True
    return pyexiv2


def source_block(data: bytes, fmt: str) -> bytes | None:
    """The part of an input's bytes that holds its metadata, for formats exiv2 reads: a JPEG up
    to its first scan (the compressed pixels are not needed), other formats whole."""
    if fmt not in READABLE:
        return None
    if fmt == "png" and not _png_has_metadata(data):
        return None  # nothing for exiv2 to read (most generated images): skip parsing it twice
    if fmt == "jpg":
        cut = _jpeg_scan_start(data)
        if cut and not _jpeg_has_metadata(data, cut):
            return None
        if cut:
            return data[:cut] + b"\xff\xd9"
    return data


_PNG_METADATA = frozenset((b"eXIf", b"iCCP", b"tEXt", b"zTXt", b"iTXt"))
_JPEG_METADATA = frozenset((0xE1, 0xE2, 0xED))  # APP1 (EXIF, XMP), APP2 (ICC), APP13 (IPTC)


def _png_has_metadata(data: bytes) -> bool:
    """Whether a PNG holds a chunk exiv2 reads (EXIF, ICC, text, XMP); True when the chunks do not parse."""
    i, n = 8, len(data)
    while i + 8 <= n:
        kind = data[i + 4:i + 8]
        if kind in _PNG_METADATA:
            return True
        if kind == b"IEND":
            return False
        i += 12 + struct.unpack(">I", data[i:i + 4])[0]
    return True


def _jpeg_has_metadata(data: bytes, scan: int) -> bool:
    """Whether a JPEG's markers before its first scan (at `scan`) hold EXIF, XMP, ICC or IPTC."""
    i = 2
    while i + 4 <= scan:
        m = data[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m in _JPEG_METADATA:
            return True
        if m == 0x01 or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return False


def _jpeg_scan_start(data: bytes) -> int:
    """Offset of the first SOS marker of a JPEG, or 0 when the markers do not parse."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return 0
        m = data[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m == 0xDA:
            return i
        if m == 0x01 or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return 0


def read_icc(block: bytes | None) -> bytes | None:
    """The ICC profile embedded in an input, or None (none, or metadata exiv2 cannot parse)."""
    if not block:
        return None
    try:
        with _exiv2().ImageData(block) as img:
            icc = img.read_icc()
    except (RuntimeError, ValueError) as exc:
        log.debug("no ICC profile read: %s", exc)
        return None
    icc = bytes(icc)
    if icc and (len(icc) < 132 or icc[36:40] != b"acsp" or int.from_bytes(icc[:4], "big") > len(icc)):
        return None  # damaged or cut short (exiv2 refuses such a profile in a JPEG, not in a PNG): untagged
    return icc or None


def icc_space(icc: bytes | None) -> str:
    """The colour space an ICC profile describes: 'RGB', 'GRAY', 'CMYK', 'Lab', ... ('' if none)."""
    if not icc or len(icc) < 20:
        return ""
    return icc[16:20].decode("latin-1").strip()


def icc_name(icc: bytes | None) -> str:
    """A profile's description ('sRGB IEC61966-2.1', 'ProPhoto RGB'), or '' when unreadable."""
    if not icc:
        return ""
    try:
        import io

        from PIL import ImageCms

        return ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except Exception:  # a damaged profile only loses its name here
        return ""


def fits(icc: bytes | None, channels: int) -> bool:
    """Whether a profile describes pixels with this many channels (alpha not counted)."""
    space = icc_space(icc)
    return (space == "RGB" and channels in (3, 4)) or (space == "GRAY" and channels in (1, 2))


def summary(block: bytes | None) -> dict[str, Any]:
    """Which metadata blocks an input carries, for `analyze`: {"exif": tags, "iptc": datasets,
    "xmp": properties, "icc": "profile name"|None, "gps": bool}."""
    out: dict[str, Any] = {"exif": 0, "iptc": 0, "xmp": 0, "icc": None, "gps": False}
    if not block:
        return out
    try:
        with _exiv2().ImageData(block) as img:
            exif, iptc, xmp, icc = img.read_exif(), img.read_iptc(), img.read_xmp(), img.read_icc()
    except (RuntimeError, ValueError):
        return out
    out.update(exif=len(exif), iptc=len(iptc), xmp=len(xmp), gps=any(k.startswith("Exif.GPSInfo.") for k in exif))
    if icc:
        out["icc"] = icc_name(bytes(icc)) or icc_space(bytes(icc)) or "unnamed"
    return out


def embed(data: bytes, fmt: str, frame: Frame, img: Any) -> bytes:
    """Write the frame's metadata, as its policy says, into an encoded output (JPEG, PNG, WebP or
    TIFF). `img` is the array that was encoded. Returns the new bytes; when exiv2 cannot parse
    the input's metadata the output goes without it and `meta["metadata"]` says why."""
    keep = frame.keep or {}
    mode = keep.get("mode", "keep")
    channels = 1 if img.ndim == 2 else img.shape[2]
    icc = frame.icc if keep.get("icc", "keep") == "keep" and fits(frame.icc, channels) else None
    block = frame.metadata if mode != "strip" else None
    if fmt not in WRITABLE or (block is None and icc is None):
        return data
    ex = _exiv2()
    try:
        with ex.ImageData(data) as out:
            copied = False
            if block is not None:
                with ex.ImageData(block) as src:
                    copied = _copy(src, out, fmt, mode, set(keep.get("drop", ())), img.shape[1], img.shape[0], icc)
            if icc is not None and fmt != "png" and not copied:
                out.modify_icc(icc)
            data = out.get_bytes()
    except (RuntimeError, ValueError) as exc:
        frame.meta["metadata"] = {"dropped": f"input metadata unreadable: {str(exc).strip()[:120]}"}
    return _png_with_icc(data, icc) if fmt == "png" and icc is not None else data


def _png_with_icc(data: bytes, icc: bytes) -> bytes:
    """A PNG with an iCCP chunk after IHDR (exiv2 writes one without the profile name PNG
    requires, which libpng then warns about and may ignore)."""
    import zlib

    body = b"iCCP" + b"ICC Profile\x00\x00" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    end = 8 + 12 + struct.unpack(">I", data[8:12])[0]  # signature, then IHDR
    return data[:end] + chunk + data[end:]


def _copy(src: Any, out: Any, fmt: str, mode: str, drop: set[str], width: int, height: int, icc: bytes | None) -> bool:
    """Copy EXIF (and, in keep mode, IPTC and XMP) from `src` to `out`, then edit the copy.
    Returns whether the profile `icc` went along (it is the source's own and the format takes it)."""
    if mode == "minimal":
        exif = src.read_exif()
        picked = {k: exif[k] for k in MINIMAL if k in exif}
        if picked:
            out.modify_exif(picked)
        return False
    same_icc = icc is not None and fmt != "png" and bytes(src.read_icc()) == icc
    src.copy_to_another_image(out, exif=True, iptc=True, xmp=True, comment=fmt == "jpg", icc=same_icc, thumbnail=False)
    exif = out.read_exif()
    edits: dict[str, Any] = {}
    for key in exif:
        group = key.split(".")[1]
        if (("gps" in drop and group == "GPSInfo")
                or ("maker" in drop and (group not in _STANDARD or key in ("Exif.Photo.MakerNote", "Exif.MakerNote")))
                or ("serial" in drop and "SerialNumber" in key)
                or group == "Thumbnail"  # the embedded thumbnail shows the pixels before the pipeline
                or (fmt != "tiff" and group.startswith("SubImage"))
                or (group == "Image" and (key[11:] in _STRUCTURE or key[11:].startswith("DNG")) and (fmt != "tiff" or key[11:] not in _TIFF_OWN))):
            edits[key] = None
    for key, value in (("Exif.Image.Orientation", 1), ("Exif.Photo.PixelXDimension", width), ("Exif.Photo.PixelYDimension", height)):
        if key in exif:
            edits[key] = value
    if edits:
        out.modify_exif(edits)
    xmp = out.read_xmp()
    edits = {k: None for k in xmp if ("gps" in drop and k.startswith("Xmp.exif.GPS")) or ("serial" in drop and "SerialNumber" in k)}
    for key, value in (("Xmp.tiff.Orientation", 1), ("Xmp.exif.PixelXDimension", width), ("Xmp.exif.PixelYDimension", height),
                       ("Xmp.tiff.ImageWidth", width), ("Xmp.tiff.ImageLength", height)):
        if key in xmp:
            edits[key] = value
    if edits:
        out.modify_xmp(edits)
    return same_icc


def blocks(frame: Frame, img: Any, fmt: str = "heic") -> dict[str, bytes]:
    """The metadata as raw blocks, for encoders that take them as arguments (HEIF and AVIF
    through Pillow): {"exif": ..., "xmp": ..., "icc_profile": ...}, each only when present. The
    same edits as `embed`, made by exiv2 on a tiny JPEG carrier, then lifted out of it. For AVIF
    the EXIF goes without its orientation tag: Pillow moves that tag into the container (as a
    rotation of none) and rewrites the EXIF to drop it, which moved the maker notes and broke
    their offsets."""
    carrier = embed(_carrier(), "jpg", frame, img)
    if fmt == "avif":
        carrier = _without_orientation(carrier)
    out: dict[str, bytes] = {}
    i = 2
    while i + 4 <= len(carrier) and carrier[i] == 0xFF and carrier[i + 1] != 0xDA:
        length = (carrier[i + 2] << 8) | carrier[i + 3]
        seg = carrier[i + 4:i + 2 + length]
        if carrier[i + 1] == 0xE1 and seg.startswith(b"Exif\x00\x00"):
            out["exif"] = bytes(seg)
        elif carrier[i + 1] == 0xE1 and seg.startswith(b"http://ns.adobe.com/xap/1.0/\x00"):
            out["xmp"] = bytes(seg[29:])
        i += 2 + length
    keep = frame.keep or {}
    channels = 1 if img.ndim == 2 else img.shape[2]
    if frame.icc is not None and keep.get("icc", "keep") == "keep" and fits(frame.icc, channels):
        out["icc_profile"] = frame.icc
    return out


def _without_orientation(jpeg: bytes) -> bytes:
    try:
        with _exiv2().ImageData(jpeg) as img:
            if "Exif.Image.Orientation" not in img.read_exif():
                return jpeg
            img.modify_exif({"Exif.Image.Orientation": None})
            return img.get_bytes()
    except (RuntimeError, ValueError):
        return jpeg


_CARRIER: list[bytes] = []


def _carrier() -> bytes:
    if not _CARRIER:
        from batchcli.imaging.lazy import cv2, np

        _CARRIER.append(cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))[1].tobytes())
    return _CARRIER[0]
