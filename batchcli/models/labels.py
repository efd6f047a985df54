"""Labels files for models (one label per line, or `index,label`) and labels as folder names."""

from __future__ import annotations

import re

from batchcli.argfiles import read_text
from batchcli.errors import ConfigError

_LABEL_LINE = re.compile(r"^\s*(\d+)\s*[,:\t]\s*(.+?)\s*$")


def read_labels(path: str) -> list[str]:
    """One label per line; `index,label` (or `index: label`) lines are accepted too."""
    text = read_text(path, "model labels=", "labels").removeprefix("\ufeff")  # (a BOM, as Notepad writes)
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ConfigError(f"{path}: labels file is empty")
    parsed = [_LABEL_LINE.match(ln) for ln in lines]
    if all(parsed):
        idx = [int(m.group(1)) for m in parsed]  # type: ignore[union-attr]
        if idx == list(range(len(idx))):
            return [m.group(2) for m in parsed]  # type: ignore[union-attr]
    return [ln.strip() for ln in lines]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def folder_name(label: str) -> str:
    """A label -> a safe folder name ('golden retriever, ...' -> 'golden_retriever')."""
    first = label.split(",")[0].strip()
    name = _UNSAFE.sub("_", first).strip("._-")[:64]
    return name or "unlabeled"
