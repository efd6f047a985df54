"""Parse and validate pipelines: `"orient | resize 1024x1024 | convert webp quality=85"` or TOML.

A pipeline is a value: its canonical spec (a list of dicts) is stored in the manifest and
hashed into the batch fingerprint, and the same spec always rebuilds the same ops.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import shlex
from collections.abc import Callable, Iterable
from typing import Any

from batchcli.errors import ConfigError
from batchcli.ops.base import REGISTRY, Frame, Op


def _load_ops() -> None:
    """Import every op module (each registers its ops). A module that fails to import is an
    error: no op is ever left out silently."""
    from batchcli.models import faces, model  # noqa: F401
    from batchcli.ops import analyze, color, detail, geometry, output, overlay, photo, video  # noqa: F401


OP_MODULES = {
    "analyze": "batchcli.ops.analyze", "autolevel": "batchcli.ops.color", "clahe": "batchcli.ops.color",
    "convert": "batchcli.ops.output", "crop": "batchcli.ops.geometry", "denoise": "batchcli.ops.detail",
    "faces": "batchcli.models.faces", "flip": "batchcli.ops.geometry", "frames": "batchcli.ops.video",
    "lut": "batchcli.ops.color", "metadata": "batchcli.ops.photo", "model": "batchcli.models.model",
    "orient": "batchcli.ops.geometry", "pad": "batchcli.ops.geometry", "preset": "batchcli.ops.color",
    "profile": "batchcli.ops.photo", "raw": "batchcli.ops.photo", "resize": "batchcli.ops.geometry",
    "rotate": "batchcli.ops.geometry", "sharpen": "batchcli.ops.detail", "thumbnail": "batchcli.ops.video",
    "trim": "batchcli.ops.video", "watermark": "batchcli.ops.overlay", "whitebalance": "batchcli.ops.color",
}
"""Each op's module, so that parsing a pipeline imports only the modules of its own ops (every op
module: 10-20 ms of a `start` before its first worker); `_load_ops` still imports them all for
an unknown name and for `all_ops` (tests/test_ops.py checks this map against the registry)."""


def get_op(name: str) -> type[Op]:
    if name not in REGISTRY and name in OP_MODULES:
        import importlib

        importlib.import_module(OP_MODULES[name])
    if name not in REGISTRY:
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
            key = key.replace("-", "_")  # max-bytes=300K is max_bytes
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


MAX_VARIANTS = 16
"""Variants one batch may write per item (each is an encode and a file per item)."""
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Pipeline:
    """An ordered list of validated ops, and the variants that branch after them: each a name
    and a pipeline of its own, run on a copy of the frame the shared ops made."""

    def __init__(self, ops: list[Op], variants: Iterable[tuple[str, Pipeline]] = ()):
        if any(op.name == "raw" for op in ops[1:]):
            raise ConfigError("raw: must be the first operation (it says how camera RAW files are decoded)")
        self.ops = ops
        self.variants: list[tuple[str, Pipeline]] = []
        for name, branch in variants:
            self.add_variant(name, branch)

    def add_variant(self, name: str, branch: Pipeline) -> None:
        """Check a variant and add it: a name of letters, digits, '.', '_' and '-' (it becomes
        a folder), unique, a pipeline that writes an image, and no op that only the shared
        pipeline can hold."""
        where = f"variant {name!r}"
        if not _VARIANT_NAME.fullmatch(name):
            raise ConfigError(f"{where}: a variant name is 1-64 letters, digits, '.', '_' or '-' "
                              "(not starting with '.', '_' or '-'); it names the output folder OUT/NAME/")
        if any(name == other for other, _ in self.variants):
            raise ConfigError(f"{where}: given twice")
        if len(self.variants) >= MAX_VARIANTS:
            raise ConfigError(f"{where}: at most {MAX_VARIANTS} variants")
        for op in branch.ops:
            if op.name == "raw":
                raise ConfigError(f"{where}: raw belongs in --pipeline (it says how RAW files are decoded, once)")
            if getattr(op, "video_role", None):
                raise ConfigError(f"{where}: {op.name} is a video operation; variants are for images")
            if op.p.get("route") or op.p.get("task") == "embed":
                raise ConfigError(f"{where}: {op.name} {'route=true' if op.p.get('route') else 'task=embed'} "
                                  "records one result per item: put it in --pipeline")
        if not branch.writes_image:
            raise ConfigError(f"{where}: writes no image (a variant is an output file)")
        for op in self.ops:
            if op.p.get("route"):
                raise ConfigError(f"{op.name}: route=true does not go with variants (the variants choose the folders)")
        self.variants.append((name, branch))

    # --- construction --------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Pipeline:
        return cls([_build(name, pos, kw) for name, pos, kw in split_spec(text)])

    @staticmethod
    def parse_variant(text: str) -> tuple[str, Pipeline]:
        """'thumb=resize 400x400 | convert jpg' (a --variant value) -> ("thumb", its pipeline)."""
        name, eq, rest = text.partition("=")
        if not eq or not name.strip():
            raise ConfigError(f"--variant {text!r}: expected NAME=PIPELINE, e.g. "
                              "\"thumb=resize 400x400 | convert jpg quality=80\"")
        name = name.strip()
        if not rest.strip():
            raise ConfigError(f"--variant {text!r}: the pipeline after {name}= is empty")
        try:
            return name, Pipeline.parse(rest)
        except ConfigError as exc:
            raise ConfigError(f"variant {name!r}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str) -> Pipeline:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        from batchcli.argfiles import read_text

        text = read_text(path, "--pipeline-file", "toml")
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        steps = doc.get("op", [])
        variants = doc.get("variant", [])
        if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
            raise ConfigError(f"{path}: 'variant' must be [[variant]] tables")
        if not isinstance(steps, list) or not (steps or variants):
            raise ConfigError(f"{path}: no [[op]] tables")
        pipeline = cls.from_spec(steps, where=path)
        for table in variants:
            pipeline.add_variant(*_toml_variant(table, path))
        return pipeline

    @classmethod
    def from_spec(cls, steps: Iterable[dict], where: str = "pipeline",
                  variants: Iterable[dict] | None = None) -> Pipeline:
        """From the canonical form (spec(); variant_spec() for `variants`)."""
        ops = []
        for step in steps:
            step = dict(step)
            name = step.pop("name", None)
            if not isinstance(name, str):
                raise ConfigError(f"{where}: every [[op]] needs a name")
            keys = {}
            for key, value in step.items():  # max-bytes = "300K" is max_bytes, as on the command line
                if keys.setdefault(key.replace("-", "_"), value) is not value:
                    raise ConfigError(f"{where}: {name}: {key.replace('-', '_')} given twice")
            ops.append(_build(name.lower(), [], keys))
        return cls(ops, [(v["name"], cls.from_spec(v["pipeline"], where)) for v in variants or ()])

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Pipeline:
        """The pipeline a batch runs: the shared ops and the variants, as recorded at start."""
        return cls.from_spec(manifest["pipeline"], variants=manifest.get("variants"))

    # --- properties ----------------------------------------------------------------------
    def worker_modules(self) -> list[str]:
        """The modules of this pipeline's ops, variants' included, each once (a worker imports
        them; the fork server preloads them: executors/forkserve.py). onnxruntime is not one:
        importing it starts a thread, which a fork would not carry over."""
        ops = [*self.ops, *(op for _, branch in self.variants for op in branch.ops)]
        return list(dict.fromkeys(type(op).__module__ for op in ops))

    def spec(self) -> list[dict]:
        """The shared ops (without the variants: see variant_spec)."""
        return [op.spec() for op in self.ops]

    def variant_spec(self, with_ext: bool = False) -> list[dict]:
        """[{"name": NAME, "pipeline": [op spec, ...]}, ...]; empty without variants. `with_ext`
        adds each variant's "out_ext" (None when it depends on the input), for the manifest."""
        return [{"name": name, "pipeline": branch.spec(),
                 **({"out_ext": Pipeline(self.ops + branch.ops).output_ext} if with_ext else {})}
                for name, branch in self.variants]

    def command_text(self) -> str:
        """text(), then each variant as the --variant flag that gives it."""
        return " ".join([self.text(), *(f"--variant {shlex.quote(name + '=' + branch.text())}"
                                        for name, branch in self.variants)]).strip()

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
        doc: dict[str, Any] = {"pipeline": self.spec(), "options": extra or {}}
        if self.variants:  # pipelines without variants keep the fingerprint they always had
            doc["variants"] = self.variant_spec()
        blob = json.dumps(doc, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def writes_image(self) -> bool:
        return (bool(self.variants) or any(op.writes_image for op in self.ops) or not self.ops
                or self.output_format is not None)

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
        before the first resize tolerates a smaller input, and the resize still downsizes. With
        variants, the least any of them allows (the one decode serves them all)."""
        if self.variants:
            return min(Pipeline(self.ops + branch.ops).shrink_for(width, height) for _, branch in self.variants)
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
        for _, branch in self.variants:
            branch.prepare()

    def run(self, frame: Frame) -> Frame:
        for op in self.ops:
            frame = op.apply(frame)
        return frame

    def branch(self, frame: Frame) -> list[tuple[str, Any]]:
        """The shared ops' frame through each variant: [(name, frame or the exception that
        failed it)], in order. Each variant gets its own copy of the frame's settings and
        records; the pixels are shared, read-only, so no variant can change another's. A
        variant that begins by shrinking starts from a smaller copy of the pixels (_Levels)."""
        frame.img.flags.writeable = False
        levels = _Levels(frame)
        out: list[tuple[str, Any]] = []
        for name, branch in self.variants:
            try:
                start = levels.for_branch(branch)
                own = dataclasses.replace(start, encode=dict(frame.encode), meta=copy.deepcopy(frame.meta),
                                          info=dict(frame.info), keep=copy.deepcopy(frame.keep))
                out.append((name, branch.run(own)))
            except Exception as exc:
                out.append((name, exc))
        return out

    @property
    def batch_size(self) -> int:
        """The most frames any op takes per call (`model ... batch=N`); 1 for most pipelines."""
        return max((op.batch_size for op in self.ops), default=1)

    def run_batch(self, frames: list[Any], at: Callable[[int], None] | None = None) -> list[Any]:
        """Several frames through the pipeline. An entry may already be the exception that failed
        its item; it is passed through. Ops that take batches get every live frame in one call,
        the others one frame at a time (`at` is told the entry before each). Returns one frame or
        exception per entry, in order."""
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
                    if at is not None:
                        at(k)
                    try:
                        out[k] = op.apply(out[k])
                    except Exception as exc:
                        out[k] = exc
        return out


class _Levels:
    """Halvings of a frame's pixels, by area averaging, each made from the one before, for the
    variants that begin by shrinking. Each such variant starts from the smallest halving that
    still holds every pixel its first resize needs (Pipeline.shrink_for, as when a JPEG is
    decoded at reduced scale), so four sizes of a 12 MP photo cost about one and a third
    full-size resamplings, not four. Only while the frame's size still follows from its
    source's (no crop or pad among the shared ops changed it)."""

    def __init__(self, frame: Frame):
        self.levels = {frame.shrink: frame}
        h, w = frame.img.shape[:2]
        self.full: tuple[int, int] | None = (w, h) if frame.shrink <= 1 else None
        if frame.shrink > 1:
            sw, sh = frame.src_size
            for a, b in ((sw, sh), (sh, sw)):
                if -(-a // frame.shrink) == w and -(-b // frame.shrink) == h:
                    self.full = (a, b)

    def for_branch(self, branch: Pipeline) -> Frame:
        n = min(self.levels)
        base = self.levels[n]
        if self.full is None:
            return base
        want = branch.shrink_for(*self.full)
        while n < want:
            from batchcli.ops.geometry import resize_pixels

            w, h = self.full
            prev = self.levels[n]
            n *= 2
            if n not in self.levels:
                img = resize_pixels(prev.img, (-(-w // n), -(-h // n)))
                img.flags.writeable = False
                self.levels[n] = dataclasses.replace(prev, img=img, shrink=n, src_size=self.full)
        return self.levels[n]


def _toml_variant(table: dict, where: str) -> tuple[str, Pipeline]:
    """A [[variant]] table: `name`, and `pipeline = "..."` or [[variant.op]] tables."""
    name, text, steps = table.get("name"), table.get("pipeline"), table.get("op")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: every [[variant]] needs a name")
    if (text is None) == (steps is None) or not isinstance(text or steps, (str, list)):
        raise ConfigError(f"{where}: variant {name!r} needs pipeline = \"...\" or [[variant.op]] tables (one of them)")
    try:
        return name, Pipeline.parse(text) if isinstance(text, str) else Pipeline.from_spec(steps, where)
    except ConfigError as exc:
        raise ConfigError(f"{where}: variant {name!r}: {exc}") from None


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
