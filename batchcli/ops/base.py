"""The operation protocol, parameter specs and the registry every op joins.

An op is a small class: a name, a tuple of `Param`s, and `apply(frame) -> frame`. Parameters
arrive as strings (command line) or TOML values and are validated here, in the parent, before
any item runs. Ops are pickled to worker processes; `prepare()` runs once per worker process
(load a model, build a LUT) and `apply()` once per image.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ClassVar

from batchcli.errors import ConfigError
from batchcli.imaging.frame import Frame
from batchcli.units import parse_bytes

REQUIRED = object()
FILE_GUARD: ContextVar[Callable[[str, str], str] | None] = ContextVar("batchcli_file_guard", default=None)
"""Set by `batchcli serve` while it builds a client's pipeline: (path as given, what it is for) ->
the absolute path, or ConfigError (400) for one outside the server's allowed folders."""


def op_file(raw: Any, what: str) -> str:
    """The absolute path of a file an op reads (a LUT, a look, an ICC profile, a model, its labels,
    a logo, a font), checked by FILE_GUARD where one is set."""
    guard = FILE_GUARD.get()
    if guard is not None:
        return guard(str(raw), what)
    return os.path.abspath(os.path.expanduser(str(raw)))
_SIZE_RE = re.compile(r"^(\d+)?[xX](\d+)?$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Param:
    """One parameter of an op: how to parse it, its default, and its help line."""

    name: str
    kind: str = "str"  # int, float, bool, str, size, path, color, choice, floats, bytes (300K, 2M)
    default: Any = REQUIRED
    help: str = ""
    positional: bool = False
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def parse(self, op: str, value: Any) -> Any:
        """Turn a command-line string (or TOML value) into a typed value, or raise ConfigError."""
        where = f"{op}: {self.name}"
        if self.kind == "path":
            return op_file(value, where)
        if isinstance(value, bool) and self.kind != "bool":  # (TOML `blend = true` is no number)
            raise ConfigError(f"{where}: {str(value).lower()} is not a valid {self.kind}")
        try:
            out = _PARSERS[self.kind](value, self)
        except ConfigError as exc:
            raise ConfigError(f"{op}: {exc}") from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise ConfigError(f"{where}: {value!r} is not a valid {self.kind} ({exc})") from None
        if self.kind in ("float", "floats") and not all(map(math.isfinite, out if self.kind == "floats" else (out,))):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        if self.kind in ("int", "float", "bytes"):
            if self.min is not None and out < self.min:
                raise ConfigError(f"{where}: {out} is below the minimum {self.min:g}")
            if self.max is not None and out > self.max:
                raise ConfigError(f"{where}: {out} is above the maximum {self.max:g}")
        if self.kind == "choice" and out not in self.choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(c for c in self.choices if c)}")
        return out

    def describe(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "required": self.required,
            "default": None if self.required else self.default,
            "positional": self.positional,
            "choices": list(self.choices),
            "help": self.help,
        }


def _parse_int(v: Any) -> int:
    """An int from a command-line string or a TOML value; 2.0 is 2, 2.5 is refused."""
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError("expected a whole number")
        return int(v)
    return int(v)


def _parse_bool(v: Any, p: Param) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError("expected true or false")


def _parse_size(v: Any, p: Param) -> tuple[int, int]:
    """'1024x768' -> (1024, 768); 'x768' or '1024x' leave the other side free (0)."""
    if isinstance(v, (list, tuple)) and len(v) == 2:
        w, h = int(v[0]), int(v[1])
    else:
        s = str(v).strip()
        if s.isdigit():
            w = h = int(s)
        else:
            m = _SIZE_RE.match(s)
            if not m or not (m.group(1) or m.group(2)):
                raise ValueError("expected WIDTHxHEIGHT, e.g. 1024x768")
            w, h = int(m.group(1) or 0), int(m.group(2) or 0)
    if w < 0 or h < 0 or (w == 0 and h == 0) or w > 65535 or h > 65535:
        raise ValueError("sides must be between 1 and 65535")
    return (w, h)


def _parse_color(v: Any, p: Param) -> tuple[int, int, int]:
    """'#rrggbb', 'rrggbb', 'r,g,b' or a few names -> (b, g, r) for OpenCV."""
    names = {"black": "000000", "white": "ffffff", "gray": "808080", "grey": "808080"}
    if isinstance(v, (list, tuple)) and len(v) == 3:
        r, g, b = (int(x) for x in v)
    else:
        s = names.get(str(v).strip().lower(), str(v).strip().lstrip("#"))
        if "," in s:
            r, g, b = (int(x) for x in s.split(","))
        elif len(s) == 6:
            r, g, b = int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16)
        else:
            raise ValueError("expected #rrggbb or r,g,b")
    if not all(0 <= c <= 255 for c in (r, g, b)):
        raise ValueError("channels must be 0..255")
    return (b, g, r)


def _parse_floats(v: Any, p: Param) -> tuple[float, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(float(x) for x in v)
    return tuple(float(x) for x in str(v).split(","))


_PARSERS = {
    "int": lambda v, p: _parse_int(v),
    "float": lambda v, p: float(v),
    "bool": _parse_bool,
    "str": lambda v, p: str(v),
    "choice": lambda v, p: str(v).strip().lower(),
    "size": _parse_size,
    "color": _parse_color,
    "floats": _parse_floats,
    "bytes": lambda v, p: v if isinstance(v, int) and not isinstance(v, bool) else parse_bytes(v, f"{p.name.replace('_', '-')}="),
}


class Op:
    """Base class of every operation. Subclasses set `name`, `summary`, `params`; implement `apply`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    writes_image: ClassVar[bool] = True  # False for ops that only record metadata (analyze)
    shrink_safe: ClassVar[bool] = False  # True when a smaller decoded input is fine before this op

    def __init__(self, **values: Any):
        self.p: dict[str, Any] = values

    # --- construction and validation (parent process) -------------------------------------
    @classmethod
    def from_args(cls, positionals: list[Any], keywords: dict[str, Any]) -> Op:
        specs = {p.name: p for p in cls.params}
        pos_specs = [p for p in cls.params if p.positional]
        values: dict[str, Any] = {}
        if len(positionals) > len(pos_specs):
            extra = " ".join(str(x) for x in positionals[len(pos_specs):])
            raise ConfigError(f"{cls.name}: unexpected value {extra!r}")
        for spec, raw in zip(pos_specs, positionals):
            values[spec.name] = spec.parse(cls.name, raw)
        for key, raw in keywords.items():
            if key not in specs:
                known = ", ".join(specs) or "none"
                raise ConfigError(f"{cls.name}: unknown parameter {key!r} (known: {known})")
            if key in values:
                raise ConfigError(f"{cls.name}: {key} given twice")
            values[key] = specs[key].parse(cls.name, raw)
        for spec in cls.params:
            if spec.name not in values:
                if spec.required:
                    raise ConfigError(f"{cls.name}: missing required parameter {spec.name!r}")
                values[spec.name] = spec.default
        op = cls(**values)
        op.check()
        return op

    def check(self) -> None:
        """Cross-parameter and resource checks, in the parent, before any item. Raise ConfigError."""

    def spec(self) -> dict:
        """The canonical, JSON-able form of this op (used for the manifest and the fingerprint).
        Parsing a spec again gives the same op."""
        out: dict[str, Any] = {"name": self.name}
        kinds = {p.name: p.kind for p in self.params}
        for k, v in self.p.items():
            if kinds.get(k) == "size":
                v = f"{v[0] or ''}x{v[1] or ''}"
            elif kinds.get(k) == "color":
                v = f"#{v[2]:02x}{v[1]:02x}{v[0]:02x}"
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        return out

    # --- execution (worker process) ------------------------------------------------------
    def prepare(self) -> None:
        """Once per worker process, before the first item (load a model, build tables)."""

    def apply(self, frame: Frame) -> Frame:
        raise NotImplementedError

    @property
    def batch_size(self) -> int:
        """Frames this op wants per `apply_batch` call; 1 means one at a time."""
        return 1

    def apply_batch(self, frames: list[Frame]) -> list[Any]:
        """Several frames at once. Returns one entry per frame, in order: the new frame, or the
        exception that failed it (one bad image never fails its neighbours)."""
        out: list[Any] = []
        for f in frames:
            try:
                out.append(self.apply(f))
            except Exception as exc:
                out.append(exc)
        return out

    def read_shrink(self, width: int, height: int) -> int:
        """For an op that only reads the pixels into metadata (a classifier, an embedder), as the
        last op of a pipeline whose image is not saved: the largest decode reduction that still
        leaves it all the pixels it uses. Default: no reduction."""
        return 1

    def shrink_limit(self, width: int, height: int) -> int:
        """For the first resizing op: the largest decode reduction (1, 2, 4, 8) that still leaves
        at least as many pixels as this op's output needs. Default: no reduction."""
        return 1


REGISTRY: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to the registry under its name."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY:
        raise TypeError(f"op {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls
