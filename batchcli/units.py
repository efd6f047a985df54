"""Human units on the command line: sizes (512M, 1G), counts (150M pixels) and ages (90s, 30m,
12h, 7d, 2w); and the same units back in messages, so a limit reads as the user typed it."""

from __future__ import annotations

import re

from batchcli.errors import ConfigError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.I)
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(?:p|px)?\s*$", re.I)
_DEC = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.I)
_SECS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_bytes(text: str, flag: str) -> int:
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected a size such as 512M, 2G or 1048576")
    unit = (m.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(float(m.group(1)) * _MULT[unit])


def parse_count(text: str, flag: str) -> int:
    """A count with a decimal unit: 150M = 150,000,000 (so --max-pixels 150M, or 150MP)."""
    m = _COUNT.match(str(text))
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected a count such as 150M, 40000000 or 2.5G")
    return int(float(m.group(1)) * _DEC[m.group(2).lower()])


def parse_age(text: str, flag: str) -> float:
    m = _AGE.match(str(text))
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected an age such as 90s, 30m, 12h, 7d or 2w")
    return float(m.group(1)) * _SECS[m.group(2).lower()]


_CLOCK = re.compile(r"^\s*(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)\s*$")
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.I)
_SPAN_SECS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_time(text: str, what: str) -> float:
    """A point or length in a video, in seconds: `90`, `2.5s`, `500ms`, `3m`, `1:30`, `01:02:03.250`."""
    s = str(text)
    m = _CLOCK.match(s)
    if m:
        hours, minutes, seconds = int(m.group(1) or 0), int(m.group(2)), float(m.group(3))
        if minutes < 60 and seconds < 60:
            return hours * 3600 + minutes * 60 + seconds
    m = _SPAN.match(s)
    if not m:
        raise ConfigError(f"{what} {text!r}: expected a time such as 2s, 500ms, 3m or 00:01:30.5")
    return float(m.group(1)) * _SPAN_SECS[(m.group(2) or "s").lower()]


def _fmt(n: float, units: tuple[tuple[str, float], ...], exact: bool, plain: str) -> str:
    for unit, size in units:
        if n >= size:
            v = n / size
            if v == int(v):
                return f"{int(v)}{unit}"
            if not exact:
                return f"{v:.1f}{unit}"
    return plain


def fmt_bytes(n: int, exact: bool = False) -> str:
    """Bytes as a size flag is written: 200M, 1G, 512K. `exact`: a limit, shown as typed (in
    bytes when no unit divides it); otherwise rounded to one decimal (250.3M)."""
    units = (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))
    return _fmt(n, units, exact, f"{n} bytes")


def fmt_count(n: int, exact: bool = False) -> str:
    """A count with decimal units, as --max-pixels is written: 150M, 268.4M."""
    return _fmt(n, (("G", 1e9), ("M", 1e6), ("K", 1e3)), exact, str(n))


def env_seconds(name: str, default: float) -> float:
    """The environment variable `name` as seconds when it is a positive finite number, else `default`."""
    import os

    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        return default
    return value if 0 < value < float("inf") else default
