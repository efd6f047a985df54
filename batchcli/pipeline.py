"""Parse and validate pipelines: `"orient | resize 1024x1024 | convert webp quality=85"` or TOML.

A pipeline is a value: its canonical spec (a list of dicts) is stored in the manifest and
hashed into the batch fingerprint, and the same spec always rebuilds the same ops.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Iterable
from typing import Any

from batchcli.errors import ConfigError
from batchcli.ops.base import REGISTRY, Frame, Op


def _load_ops() -> None:
    """Import every op module (each registers its ops). A module that fails to import is an
    error: no op is ever left out silently."""
    from batchcli.models import faces, model  # noqa: F401
    from batchcli.ops import analyze, color, detail, geometry, output, overlay, photo, video  # noqa: F401


def get_op(name: str) -> type[Op]:
    _load_ops()
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"unknown operation {name!r} (known: {known}; see 'batchcli ops')") from None


def all_ops() -> dict[str, type[Op]]:
    _load_ops()
    return dict(sorted(REGISTRY.items()))


def split_spec(text: str) -> list[tuple[str, list[str], dict[str, str]]]:
    """'resize 1024x1024 upscale=true | convert webp' -> [(name, positionals, keywords), ...]."""
    steps = []
    for segment in _split_pipes(text):
        try:
            words = shlex.split(segment)
        except ValueError as exc:
            raise ConfigError(f"pipeline: cannot parse {segment.strip()!r}: {exc}") from None
        if not words:
            raise ConfigError("pipeline: empty step (two '|' in a row, or a trailing '|')")
        name, rest = words[0].lower(), words[1:]
        positionals: list[str] = []
        keywords: dict[str, str] = {}
        for word in rest:
            key, eq, value = word.partition("=")
            if eq and key.isidentifier():
                if key in keywords:
                    raise ConfigError(f"{name}: {key} given twice")
                keywords[key] = value
            elif keywords:
                raise ConfigError(f"{name}: positional value {word!r} after key=value parameters")
            else:
                positionals.append(word)
        steps.append((name, positionals, keywords))
    return steps


def _split_pipes(text: str) -> list[str]:
    """Split on '|' outside quotes."""
    parts, cur, quote = [], [], ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "|":
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    if len(parts) == 1 and not parts[0].strip():
        return []
    return parts


class Pipeline:
    """An ordered list of validated ops."""

    def __init__(self, ops: list[Op]):
        if any(op.name == "raw" for op in ops[1:]):
            raise ConfigError("raw: must be the first operation (it says how camera RAW files are decoded)")
        self.ops = ops

    # --- construction --------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Pipeline:
        return cls([_build(name, pos, kw) for name, pos, kw in split_spec(text)])

    @classmethod
    def from_toml(cls, path: str) -> Pipeline:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read pipeline file: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        steps = doc.get("op")
        if not isinstance(steps, list) or not steps:
            raise ConfigError(f"{path}: no [[op]] tables")
        return cls.from_spec(steps, where=path)

    @classmethod
    def from_spec(cls, steps: Iterable[dict], where: str = "pipeline") -> Pipeline:
        ops = []
        for step in steps:
            step = dict(step)
            name = step.pop("name", None)
            if not isinstance(name, str):
                raise ConfigError(f"{where}: every [[op]] needs a name")
            ops.append(_build(name.lower(), [], step))
        return cls(ops)

    # --- properties ----------------------------------------------------------------------
    def spec(self) -> list[dict]:
        return [op.spec() for op in self.ops]

    def text(self) -> str:
        """A readable one-liner: positional values bare, parameters only where not the default.
        Parsing it gives the same pipeline."""
        parts = []
        for op in self.ops:
            spec = op.spec()
            words = [op.name]
            for param in op.params:
                if param.name not in spec:  # a parameter that does not apply (convert's video ones for a photo)
                    continue
                value = spec.get(param.name)
                if param.positional:
                    words.append(_fmt(value))
                elif param.required or value != _canon(op, param, param.default):
                    words.append(f"{param.name}={_fmt(value)}")
            parts.append(" ".join(words))
        return " | ".join(parts)

    def fingerprint(self, extra: dict[str, Any] | None = None) -> str:
        blob = json.dumps({"pipeline": self.spec(), "options": extra or {}}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def writes_image(self) -> bool:
        return any(op.writes_image for op in self.ops) or not self.ops or self.output_format is not None

    @property
    def raw_settings(self) -> dict | None:
        """How camera RAW inputs are decoded: the first op's parameters when it is `raw`."""
        return dict(self.ops[0].p) if self.ops and self.ops[0].name == "raw" else None

    @property
    def output_format(self) -> str | None:
        fmt = None
        for op in self.ops:
            fmt = getattr(op, "output_format", None) or fmt
        return fmt

    @property
    def output_ext(self) -> str | None:
        """The extension of every output when the pipeline fixes it (a `convert` with no `model`
        op after it, which may change the format); None when it depends on the input."""
        fmt = None
        for op in self.ops:
            if getattr(op, "output_format", None):
                fmt = op.output_format
            elif op.name == "model":
                fmt = None
        if fmt is None:
            return None
        from batchcli.imaging.encode import EXTENSIONS

        return EXTENSIONS.get(fmt)

    def shrink_for(self, width: int, height: int) -> int:
        """Decode reduction (1, 2, 4 or 8) allowed for a source of this size: only when every op
        before the first resize tolerates a smaller input, and the resize still downsizes."""
        for op in self.ops:
            if type(op).shrink_limit is not Op.shrink_limit:
                return op.shrink_limit(width, height)
            if not op.shrink_safe:
                return 1
        return 1

    def shrink_when_unsaved(self, width: int, height: int) -> int:
        """Decode reduction when the image itself is not saved: as `shrink_for`, or, when the
        last op only reads the pixels into metadata (`model ... task=classify|embed`) and every
        op before it tolerates a smaller input, the reduction that op allows."""
        *before, last = self.ops or [None]
        if last is not None and all(op.shrink_safe for op in before):
            n = last.read_shrink(width, height)
            if n > 1:
                return n
        return self.shrink_for(width, height)

    # --- execution (worker) --------------------------------------------------------------
    def prepare(self) -> None:
        for op in self.ops:
            op.prepare()

    def run(self, frame: Frame) -> Frame:
        for op in self.ops:
            frame = op.apply(frame)
        return frame

    @property
    def batch_size(self) -> int:
        """The most frames any op takes per call (`model ... batch=N`); 1 for most pipelines."""
        return max((op.batch_size for op in self.ops), default=1)

    def run_batch(self, frames: list[Any]) -> list[Any]:
        """Several frames through the pipeline. An entry may already be the exception that failed
        its item; it is passed through. Ops that take batches get every live frame in one call,
        the others one frame at a time. Returns one frame or exception per entry, in order."""
        out = list(frames)
        for op in self.ops:
            live = [k for k, f in enumerate(out) if isinstance(f, Frame)]
            if not live:
                break
            if op.batch_size > 1 and len(live) > 1:
                try:
                    results = op.apply_batch([out[k] for k in live])
                except Exception as exc:  # a bug in a batched op fails its batch, not the worker
                    results = [exc] * len(live)
                for k, r in zip(live, results):
                    out[k] = r
            else:
                for k in live:
                    try:
                        out[k] = op.apply(out[k])
                    except Exception as exc:
                        out[k] = exc
        return out


def _build(name: str, positionals: list, keywords: dict) -> Op:
    return get_op(name).from_args(positionals, keywords)


def _canon(op: Op, param: Any, value: Any) -> Any:
    """A default value in the same canonical form as spec() gives."""
    if value is None:
        return None
    try:
        value = param.parse(op.name, value)
    except Exception:
        return value
    probe = type(op).__new__(type(op))
    probe.p = {param.name: value}
    return Op.spec(probe)[param.name]


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    s = str(v)
    return shlex.quote(s) if any(c in s for c in " |'\"") else s
