"""Entry names for exports: templates, names made safe for ZIP and every file system, unique."""

from __future__ import annotations

import hashlib
import os
import string
import unicodedata
from collections.abc import Callable
from typing import Any

from batchcli.errors import ConfigError
from batchcli.inputs.names import check_field_specs
from batchcli.results.snapshot import ItemView, Snapshot

# --------------------------------------------------------------------------------------------
# Entry names.

TEMPLATE_FIELDS = ("name", "id", "stem", "ext", "i", "rel", "dir", "variant")
_UNSAFE = set('<>:"|?*\\')
_MAX_COMPONENT = 240


def check_template(template: str) -> None:
    """Raise ConfigError for an unknown field or a malformed template (before any work)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None
    check_field_specs(template, parts)
    fields = [f for _, f, _, _ in parts if f is not None]
    for f in fields:
        if f not in TEMPLATE_FIELDS:
            raise ConfigError(f"--name-template: unknown field {{{f}}} (fields: "
                              + ", ".join("{" + x + "}" for x in TEMPLATE_FIELDS) + ")")
    if not fields:
        raise ConfigError("--name-template needs at least one field, e.g. {stem}_{i}.{ext}")
    try:
        template.format(**_sample_fields())
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None


def _sample_fields() -> dict[str, Any]:
    return {"name": "batch", "id": "id", "stem": "stem", "ext": "jpg", "i": 0, "rel": "a/stem", "dir": "a",
            "variant": "v"}


def name_fields(snap_name: str, batch_id: str, item: ItemView, output: dict[str, Any] | None = None) -> dict[str, Any]:
    """The fields of an export's --name-template for one output of an item (its first by default)."""
    out = output["out"] if output else item.out
    if out:
        rel, ext = os.path.splitext(out)
    else:  # no output file (e.g. an analyze-only pipeline): the input's name
        rel, ext = os.path.splitext(item.rel)
    folder, stem = os.path.split(rel)
    return {"name": snap_name, "id": batch_id, "stem": stem, "ext": ext.lstrip("."), "i": item.i,
            "rel": rel, "dir": folder, "variant": (output or {}).get("variant") or ""}


def sanitize_name(name: str, fallback: str = "file") -> str:
    """A ZIP entry / relative path that cannot escape the target folder on any system.

    Unicode is NFKC-normalised first, so look-alikes that an unzip tool or a file system may
    fold into "." or "/" are folded here, before the checks ("．．／x.png" is "../x.png", then
    "x.png"); control characters,
    backslashes and characters Windows forbids become "_"; empty, "." and ".." components are
    dropped (so "../../x.jpg" -> "x.jpg" and "/etc/passwd" -> "etc/passwd"); a drive prefix
    ("C:") loses its colon; components are trimmed of trailing dots and spaces and capped in
    length (the extension kept). Bytes of a file name that are not UTF-8 (lone surrogates, as
    os.fsdecode gives them) are kept as they are, so an export writes the name the output has:
    none of them can be a "/", a "." or a control character."""
    name = unicodedata.normalize("NFKC", name)
    cleaned = "".join("_" if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in _UNSAFE) else c for c in name)
    parts = []
    for comp in cleaned.split("/"):
        comp = comp.rstrip(" .") if comp not in (".", "..") else ""
        if not comp or set(comp) <= {"."}:
            continue
        if _size(comp) > _MAX_COMPONENT:
            comp = _shorten(comp)
        parts.append(comp)
    return "/".join(parts) or fallback


def _size(s: str) -> int:
    """Bytes of `s` as a file name (a byte that is not UTF-8 is one)."""
    return len(s.encode("utf-8", "surrogateescape"))


def _shorten(comp: str) -> str:
    stem, ext = os.path.splitext(comp)
    if _size(ext) > 16:
        stem, ext = comp, ""
    budget = _MAX_COMPONENT - _size(ext)
    n = 0
    for k, c in enumerate(stem):  # whole characters only: no UTF-8 sequence cut in two
        n += _size(c)
        if n > budget:
            return stem[:k] + ext
    return stem + ext


class UniqueNames:
    """Hands out each name once (case-insensitively, files and folders alike); a repeat gets a
    deterministic suffix before its extension: x.jpg, x_2.jpg, x_3.jpg ..."""

    def __init__(self, reserved: tuple[str, ...] = ()):
        self._seen: set[int] = set()
        self._dirs: set[int] = set()
        for r in reserved:
            self._seen.add(self._key(r))

    @staticmethod
    def _key(name: str) -> int:
        return int.from_bytes(hashlib.blake2b(name.casefold().encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")

    def _free(self, name: str) -> bool:
        k = self._key(name)
        if k in self._seen or k in self._dirs:
            return False
        parts = name.split("/")[:-1]
        return all(self._key("/".join(parts[: n + 1])) not in self._seen for n in range(len(parts)))

    def take(self, name: str) -> str:
        if not self._free(name):
            head, tail = name.rsplit("/", 1) if "/" in name else ("", name)
            stem, ext = os.path.splitext(tail)
            n = 2
            while True:
                cand = f"{stem}_{n}{ext}"
                cand = f"{head}/{cand}" if head else cand
                if self._free(cand):
                    name = cand
                    break
                n += 1
        self._seen.add(self._key(name))
        parts = name.split("/")[:-1]
        for n in range(len(parts)):
            self._dirs.add(self._key("/".join(parts[: n + 1])))
        return name


def entry_namer(snap: Snapshot, template: str | None,
                reserved: tuple[str, ...] = ()) -> Callable[[ItemView, dict[str, Any] | None], str]:
    """namer(item, output): the unique, safe entry name of one output of an item (of the item
    itself when output is None)."""
    if template:
        check_template(template)
    names = UniqueNames(reserved)
    bid = snap.paths.id

    def namer(item: ItemView, output: dict[str, Any] | None = None) -> str:
        if template:
            raw = template.format(**name_fields(snap.name, bid, item, output))
        else:
            raw = (output or {}).get("out") or item.out or item.rel
        return names.take(sanitize_name(raw, fallback=f"item_{item.i}"))

    return namer
