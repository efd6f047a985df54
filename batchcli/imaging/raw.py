"""Camera RAW files (DNG, CR2, CR3, NEF, ARW, RAF, ORF, RW2, PEF) through rawpy (LibRaw).

A RAW is demosaiced with the camera's white balance into 16-bit sRGB (LibRaw's sRGB primaries
and sRGB tone curve), turned upright, then the pipeline runs. The `raw` op's settings arrive as
a dict: `wb` (camera|auto), `exposure` (EV), `half` (half-size demosaic) and `preview`
(auto|always|never). With `auto`, when the pipeline needs no more pixels than the camera's
embedded JPEG preview has, the preview is decoded instead of demosaicing the sensor data.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from batchcli.errors import ItemError
from batchcli.imaging.frame import Frame
from batchcli.imaging.lazy import cv2, np

EXTENSIONS = ("dng", "cr2", "cr3", "nef", "arw", "raf", "orf", "rw2", "pef")
DEFAULTS = {"wb": "camera", "exposure": 0.0, "half": False, "preview": "auto"}
_FLIP_TO_EXIF = {0: 1, 3: 3, 5: 8, 6: 6}  # LibRaw's sizes.flip -> EXIF orientation


def is_raw(src: str, data: bytes) -> bool:
    """A RAW file: by its extension (URLs: the path's), or by magic bytes that only RAWs have."""
    name = src.split("?", 1)[0].rsplit("/", 1)[-1]
    if name.rpartition(".")[2].lower() in EXTENSIONS and "." in name.lstrip("."):
        return True
    head = data[:16]
    return (head.startswith(b"FUJIFILMCCD-RAW") or head[:4] in (b"IIRO", b"IIRS", b"MMOR", b"IIU\x00")
            or (head[:4] == b"II*\x00" and head[8:10] == b"CR") or (head[4:12] == b"ftypcrx "))


def load(src: str, data: bytes, max_pixels: int, shrink_for: Callable[[int, int], int] | None,
         settings: dict[str, Any] | None, limit_text: str | None = None) -> Frame:
    """Decode a RAW (see the module docstring). Raises ItemError with a one-line reason.
    `limit_text`: --max-pixels as it was given."""
    import rawpy

    opts = {**DEFAULTS, **(settings or {})}
    try:
        raw = rawpy.imread(io.BytesIO(data))
    except (rawpy.LibRawError, ValueError, OSError) as exc:
        msg = str(exc).strip()
        if msg[:2] in ("b'", 'b"') and msg[-1:] == msg[1]:  # LibRaw's messages come as bytes' repr
            msg = msg[2:-1]
        raise ItemError("decode", f"cannot read RAW: {msg[:120] or type(exc).__name__}") from None
    with raw:
        sizes = raw.sizes
        width, height = int(sizes.width), int(sizes.height)
        if width <= 0 or height <= 0:
            raise ItemError("decode", f"invalid size {width}x{height} in RAW header")
        if width * height > max_pixels:
            raise ItemError("too_large", f"{width}x{height} = {width * height / 1e6:.0f} MP, over --max-pixels {limit_text or f'{max_pixels / 1e6:.0f} MP'}")
        orientation = _FLIP_TO_EXIF.get(int(sizes.flip), 1)
        if opts["preview"] != "never":
            frame = _from_preview(raw, src, (width, height), orientation, opts["preview"] == "always", shrink_for)
            if frame is not None:
                return frame
        try:
            rgb = raw.postprocess(
                output_bps=16, use_camera_wb=opts["wb"] == "camera", use_auto_wb=opts["wb"] == "auto",
                half_size=bool(opts["half"]), no_auto_bright=True, exp_shift=2.0 ** float(opts["exposure"]),
                exp_preserve_highlights=0.0, gamma=(2.4, 12.92),
            )
        except (rawpy.LibRawError, ValueError, MemoryError) as exc:
            if isinstance(exc, MemoryError):
                raise
            raise ItemError("decode", f"cannot demosaic RAW: {type(exc).__name__} {str(exc).strip()[:120]}".strip()) from None
    img = np.ascontiguousarray(rgb[:, :, ::-1])
    frame = Frame(img=img, src=src, fmt="raw", src_size=(width, height))
    frame.meta["raw"] = {"decoded": "half" if opts["half"] else "full", "wb": opts["wb"], "exposure": float(opts["exposure"])}
    return frame


def _from_preview(raw: Any, src: str, full: tuple[int, int], orientation: int, always: bool,
                  shrink_for: Callable[[int, int], int] | None) -> Frame | None:
    """The embedded JPEG preview as the frame, when `always`, or when the pipeline's allowed decode
    reduction for the full size is at least the preview's (it needs no more pixels than that)."""
    import rawpy

    if not always and shrink_for is None:
        return None
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawError, ValueError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    img = cv2.imdecode(np.frombuffer(thumb.data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        return None
    ph, pw = img.shape[:2]
    turned = orientation in (5, 6, 7, 8)
    fw, fh = (full[1], full[0]) if turned else full  # display size of the RAW
    if not always:
        allowed = shrink_for(fw, fh)
        if allowed <= 1 or max(pw, ph) * allowed < max(full):
            return None
    frame = Frame(img=img, src=src, fmt="raw", orientation=orientation, src_size=(pw, ph))
    frame.meta["raw"] = {"decoded": "preview", "preview": f"{pw}x{ph}"}
    return frame
