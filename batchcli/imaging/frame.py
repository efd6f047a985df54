"""The value that flows through a pipeline for one item: pixels plus what is known of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy stays out of the CLI start-up path
    import numpy as np


@dataclass
class Frame:
    """What flows through a pipeline for one item."""

    img: np.ndarray  # HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA); uint8 or uint16
    src: str  # where the pixels came from (path or URL), for messages
    fmt: str  # source format: "jpg", "png", "webp", "tiff", "bmp", "gif", ...
    orientation: int = 1  # EXIF orientation not yet applied to `img` (1 = upright)
    out_format: str | None = None  # set by `convert`; None keeps the source format
    encode: dict = field(default_factory=dict)  # encoder settings set by `convert`
    meta: dict = field(default_factory=dict)  # JSON-able results for the journal, key per op
    shrink: int = 1  # the decoder already reduced the image by this factor (shrink-on-load)
    src_size: tuple[int, int] = (0, 0)  # (width, height) of the source as stored
    route: str | None = None  # a label: the worker also links the output under out/<label>/
    info: dict = field(default_factory=dict)  # source facts from decoding (mode, EXIF orientation, camera); for ops, not journaled
    metadata: bytes | None = None  # the input's bytes that hold its EXIF, IPTC and XMP (see imaging.metadata)
    icc: bytes | None = None  # the ICC profile of the pixels as they are now; None: untagged (taken as sRGB)
    keep: dict | None = None  # what metadata the output keeps, set by the `metadata` op; None: everything
