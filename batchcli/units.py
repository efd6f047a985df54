"""Human units on the command line: sizes (512M, 1G) and ages (90s, 30m, 12h, 7d, 2w)."""

from __future__ import annotations

import re

from batchcli.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.I)
_SECS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_bytes(text: str, flag: str) -> int:
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected a size such as 512M, 2G or 1048576")
    unit = (m.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(float(m.group(1)) * _MULT[unit])


def parse_age(text: str, flag: str) -> float:
    m = _AGE.match(str(text))
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected an age such as 90s, 30m, 12h, 7d or 2w")
    return float(m.group(1)) * _SECS[m.group(2).lower()]
