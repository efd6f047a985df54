"""Photo ops: what an output keeps of its input's metadata (`metadata`), colour conversion
between ICC profiles (`profile`), and how camera RAW files are developed (`raw`).

Without a `metadata` op an output keeps everything its format can carry: EXIF, IPTC, XMP and
the ICC profile (see batchcli.imaging.metadata). Without a `profile` op, pixels and profile pass
through untouched.
"""

from __future__ import annotations

from batchcli.argfiles import read_file
from batchcli.errors import ConfigError
from batchcli.imaging import colour
from batchcli.imaging.metadata import DROPPABLE, fits, icc_name, icc_space
from batchcli.ops.base import Frame, Op, Param, op_file, register


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


@register
class Profile(Op):
    name = "profile"
    summary = "Convert the colours to sRGB or to an ICC profile with LittleCMS, and tag the output with it."
    shrink_safe = True
    params = (
        Param("target", "str", positional=True, help="srgb, or an .icc/.icm file (RGB or gray) to convert to"),
        Param("intent", "choice", "relative", choices=colour.INTENTS,
              help="rendering intent; relative uses black-point compensation"),
    )

    def check(self) -> None:
        target = self.p["target"]
        if target.lower() == "srgb":
            self.p["target"] = "srgb"
            self._icc: bytes | None = None
            return
        path = self.p["target"] = op_file(target, "profile")
        data = read_file(path, "profile", "icc")
        try:
            colour.load_profile(data)
        except Exception:
            raise ConfigError(f"profile: {path} is not an ICC profile") from None
        if icc_space(data) not in ("RGB", "GRAY"):
            raise ConfigError(f"profile: {path} is a {icc_space(data) or 'unknown'} profile; outputs are RGB or gray")
        self._icc = data

    def apply(self, frame: Frame) -> Frame:
        dst = self._icc or colour.srgb()
        channels = 1 if frame.img.ndim == 2 else frame.img.shape[2]
        src = frame.icc if fits(frame.icc, channels) else colour.srgb()  # untagged: taken as sRGB
        record = {"from": icc_name(src) if frame.icc is src else "untagged (sRGB)", "to": icc_name(dst), "intent": self.p["intent"]}
        if src != dst:
            frame.img, how = colour.convert(frame.img, src, dst, self.p["intent"])
            if how == "lcms-8bit":
                record["precision"] = "8-bit (a LUT profile: LittleCMS at 8 bits, widened back to 16)"
        frame.icc = dst
        frame.meta["profile"] = record
        return frame


@register
class Raw(Op):
    name = "raw"
    summary = "How camera RAW inputs are developed (first op): white balance, exposure, half size, embedded preview."
    shrink_safe = True
    params = (
        Param("wb", "choice", "camera", choices=("camera", "auto"), help="white balance: the camera's as shot, or computed from the image"),
        Param("exposure", "float", 0.0, min=-3, max=3, help="exposure change in EV (stops)"),
        Param("half", "bool", False, help="half-size demosaic (4x fewer pixels, about 4x faster)"),
        Param("preview", "choice", "auto", choices=("auto", "always", "never"),
              help="auto: use the embedded JPEG preview when the pipeline needs no more pixels than it has"),
    )

    def apply(self, frame: Frame) -> Frame:
        return frame  # the settings act when the RAW is decoded (Pipeline.raw_settings); other inputs pass
