"""Output names: each item's output stem, from its relative path or a --name-template, made
safe for every file system (one component at a time, clipped to a byte limit)."""

from __future__ import annotations

import os
import re
import string
import unicodedata
from typing import Protocol
from urllib.parse import unquote, urlsplit

from batchcli.errors import ConfigError

URL_PREFIXES = ("http://", "https://")
TEMPLATE_FIELDS = ("stem", "ext", "name", "i", "parent", "preset", "rel", "variant")
VARIANT_FIELD = "{variant}"
"""Kept as it is in the stems of a --name-template with {variant}; the worker puts each
variant's name there (other fields' values never hold braces: they are made safe first)."""
MAX_NAME_BYTES = 200  # per path component, leaving room for a _N suffix and the extension


class Found(Protocol):
    """What naming needs of a discovered input (inputs.discover.Found)."""

    src: str
    rel: str


def is_url(s: str) -> bool:
    return s[:8].lower().startswith(URL_PREFIXES)


_SAFE_PUNCT = frozenset("._-+=@,")


def safe_component(s: str) -> str:
    """Letters and digits of any script and . _ - + = @ , ; anything else becomes _."""
    s = unicodedata.normalize("NFC", s)
    out = "".join(c if c.isalnum() or c in _SAFE_PUNCT else "_" for c in s)
    return _clip(out) if out not in (".", "..") else ""


def _mirror_component(s: str) -> str:
    """Default naming keeps a name as it is, except control characters (newlines...)."""
    out = s if s.isprintable() else "".join("_" if (ord(c) < 32 or ord(c) == 127) else c for c in s)
    return _clip(out) if out not in (".", "..") else ""


def _clip(s: str, limit: int = MAX_NAME_BYTES) -> str:
    if len(s) * 4 <= limit:  # short enough whatever its characters (4 bytes at most each)
        return s
    b = s.encode("utf-8", "surrogateescape")
    if len(b) <= limit:
        return s
    return b[:limit].decode("utf-8", "ignore")


def _clean_path(path: str, component) -> str:
    return "/".join(c for c in (component(p) for p in path.replace("\\", "/").split("/")) if c)


def _clean_keeping_variant(path: str, component) -> str:
    """_clean_path, leaving each {variant} in place."""
    comps = (VARIANT_FIELD.join(component(p) for p in c.split(VARIANT_FIELD)) for c in path.replace("\\", "/").split("/"))
    return "/".join(c for c in comps if c)


def variant_stem(stem: str, variant: str, templated: bool) -> str:
    """Where a variant's output goes (without its extension): the item's stem with the name in
    its {variant} field when the --name-template had one (`templated`), else NAME/stem."""
    return stem.replace(VARIANT_FIELD, variant) if templated else f"{variant}/{stem}"


def template_has_variant(template: str | None) -> bool:
    return bool(template) and any(fld == "variant" for _, fld, _, _ in string.Formatter().parse(template or ""))


class Namer:
    """Output stems: the input's relative path without its extension (the default), or
    `--name-template`. The worker adds the extension of the output format."""

    def __init__(self, template: str | None = None, batch_name: str = "", preset: str = "none"):
        self.template = compile_template(template) if template else None
        self.path_template = bool(self.template) and ("/" in self.template or "{rel" in self.template)
        self.batch_name = safe_component(batch_name) or "batch"
        self.preset = safe_component(preset) or "none"
        self._folder, self._folder_clean = "", ""

    def candidate(self, i: int, f: Found) -> tuple[str, str]:
        """(stem, extension of the input) before collisions are resolved."""
        rel = f.rel  # os.path.split and os.path.splitext, spelled out (once per item of a batch)
        cut = rel.rfind("/") + 1
        folder, name = rel[:cut], rel[cut:]
        if folder and folder.strip("/"):
            folder = folder.rstrip("/")
        dot = name.rfind(".")
        stem, ext = (name[:dot], name[dot:]) if dot > 0 and name[:dot].strip(".") else (name, "")
        if stem == "" or (stem.startswith(".") and not ext):  # ".jpg", ".hidden"
            stem, ext = name, ""
        if self.template is None:
            if folder != self._folder:  # items come folder by folder: its part is made once
                self._folder, self._folder_clean = folder, _clean_path(folder, _mirror_component)
            name = _mirror_component(stem) if "/" not in stem and "\\" not in stem else _clean_path(stem, _mirror_component)
            out = f"{self._folder_clean}/{name}" if self._folder_clean and name else self._folder_clean or name
            return out or f"item{i}", ext
        values = {"stem": safe_component(stem), "name": self.batch_name, "i": i,
                  "parent": safe_component(_parent(f.src)), "preset": self.preset,
                  "rel": _clean_path(folder, safe_component), "variant": VARIANT_FIELD}
        text = self.template.format_map(values)
        out = _clean_keeping_variant(text, safe_component)
        if not self.path_template:
            out = _clean_keeping_variant(os.path.join(folder, out), safe_component)
        return out or f"item{i}", ext


def _parent(src: str) -> str:
    if is_url(src):
        parts = urlsplit(src)
        segs = [s for s in parts.path.split("/") if s]
        return unquote(segs[-2]) if len(segs) > 1 else (parts.hostname or "")
    return os.path.basename(os.path.dirname(src))


MAX_FIELD_WIDTH = 64
"""The widest a template field may be padded ({i:05d} is fine; {i:999999999d} would take 4 GB)."""


def check_field_specs(template: str, parsed: list[tuple]) -> None:
    """Refuse format specs that are nested ({i:{i}d}) or wider than MAX_FIELD_WIDTH."""
    for _lit, fld, spec, _conv in parsed:
        if fld is None or not spec:
            continue
        if "{" in spec:
            raise ConfigError(f"--name-template {template!r}: a field inside a format spec ({{{fld}:{spec}}}) "
                              "is not supported")
        widest = max((int(n) for n in re.findall(r"\d+", spec)), default=0)
        if widest > MAX_FIELD_WIDTH:
            raise ConfigError(f"--name-template {template!r}: {{{fld}:{spec}}} asks for {widest} characters; "
                              f"at most {MAX_FIELD_WIDTH}")


def compile_template(template: str) -> str:
    """Validate a --name-template; returns it without its trailing ".{ext}".
    Raises ConfigError naming the problem."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None
    check_field_specs(template, parsed)
    known = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    fields = [(lit, fld, spec, conv) for lit, fld, spec, conv in parsed if fld is not None]
    for n, (_lit, fld, _spec, conv) in enumerate(fields):
        if fld not in TEMPLATE_FIELDS:
            raise ConfigError(f"--name-template {template!r}: unknown field {{{fld}}} (known: {known})")
        if conv:
            raise ConfigError(f"--name-template {template!r}: conversions such as !{conv} are not supported")
        if fld == "ext" and (n != len(fields) - 1 or parsed[-1][1] != "ext"):
            raise ConfigError(f"--name-template {template!r}: {{ext}} can only come last, as '.{{ext}}' "
                              "(the worker adds the extension once the output format is known)")
    body = template
    if fields and fields[-1][1] == "ext":
        lit, _, spec, _ = parsed[-1]
        if spec or not lit.endswith("."):
            raise ConfigError(f"--name-template {template!r}: write the extension as '.{{ext}}' at the end")
        body = template[: template.rindex("{")]
        body = body[:-1]  # the dot before {ext}
    try:
        body.format_map({"stem": "a", "name": "b", "i": 1, "parent": "p", "preset": "none", "rel": "r",
                         "variant": "v"})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None
    if not body.strip():
        raise ConfigError(f"--name-template {template!r}: the name before the extension is empty")
    return body


def preset_name(spec: list[dict]) -> str:
    """{preset} in a name template: the look of the pipeline's first `preset` op, else "none"."""
    for step in spec:
        if step.get("name") != "preset":
            continue
        for key in ("look", "preset", "file", "path"):
            v = step.get(key)
            if isinstance(v, str) and v:
                return _look_name(v)
        for k, v in step.items():
            if k != "name" and isinstance(v, str) and v:
                return _look_name(v)
        return "preset"
    return "none"


def _look_name(v: str) -> str:
    if "/" in v or v.endswith(".toml"):
        return os.path.splitext(os.path.basename(v))[0]
    return v
