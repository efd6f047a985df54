"""Photo ops: what an output keeps of its input's metadata (`metadata`).

Without a `metadata` op an output keeps everything its format can carry: EXIF, IPTC, XMP and
the ICC profile (see batchcli.imaging.metadata).
"""

from __future__ import annotations

from batchcli.errors import ConfigError
from batchcli.imaging.metadata import DROPPABLE
from batchcli.ops.base import Frame, Op, Param, register


@register
class Metadata(Op):
    name = "metadata"
    summary = "What outputs keep of EXIF, IPTC, XMP and the ICC profile (default: all of it)."
    shrink_safe = True
    params = (
        Param("mode", "choice", "keep", positional=True, choices=("keep", "strip", "minimal"),
              help="keep: everything; strip: no EXIF, IPTC or XMP; minimal: copyright, artist, capture date, camera"),
        Param("drop", "str", "", help=f"comma list of {', '.join(DROPPABLE)}: remove just those (keep mode)"),
        Param("icc", "choice", "keep", choices=("keep", "drop"), help="keep the ICC profile (colours stay right) or drop it"),
    )

    def check(self) -> None:
        drop = [d.strip().lower() for d in self.p["drop"].split(",") if d.strip()]
        bad = [d for d in drop if d not in DROPPABLE]
        if bad:
            raise ConfigError(f"metadata: drop={','.join(bad)} is not one of {', '.join(DROPPABLE)}")
        if drop and self.p["mode"] != "keep":
            raise ConfigError(f"metadata: drop= applies to keep mode only ({self.p['mode']} already drops more)")
        self.p["drop"] = ",".join(sorted(set(drop)))

    def apply(self, frame: Frame) -> Frame:
        frame.keep = {"mode": self.p["mode"], "drop": tuple(self.p["drop"].split(",")) if self.p["drop"] else (), "icc": self.p["icc"]}
        return frame
