"""Inputs -> items.jsonl: walk folders and files in a deterministic order, skip the output
folder, merge duplicates, and give each item a unique output stem. Streams: the list is written
as it is found, never held in memory whole."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

import orjson

from batchcli.errors import ConfigError

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp")


@dataclass
class Found:
    src: str  # absolute path (or URL)
    rel: str  # path relative to its input root, with the root's name when several roots are given
    size: int = 0
    mtime: float = 0.0


def _norm_exts(exts: Iterable[str] | None) -> frozenset[str]:
    return frozenset(e.lower().lstrip(".") for e in (exts or DEFAULT_EXTENSIONS))


def _walk(root: str, skip: set[str], exts: frozenset[str]) -> Iterator[os.DirEntry]:
    """Names sorted, files before sub-folders, symlinked folders not followed, `skip` folders skipped."""
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    dirs = []
    for entry in entries:  # the files of a folder first, then its sub-folders
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            if os.path.realpath(entry.path) not in skip:
                dirs.append(entry.path)
        elif os.path.splitext(entry.name)[1].lower().lstrip(".") in exts:
            yield entry
    for d in dirs:
        yield from _walk(d, skip, exts)


def find(inputs: list[str], exts: Iterable[str] | None = None, skip_dirs: Iterable[str] = ()) -> Iterator[Found]:
    """Resolve inputs (files and folders) to Found items, in order, without duplicates."""
    extset = _norm_exts(exts)
    skip = {os.path.realpath(d) for d in skip_dirs if d}
    roots: list[tuple[str, str]] = []  # (realpath, label)
    seen_files: set[str] = set()  # explicit files and symlinks only: folders cannot repeat
    multi = len(inputs) > 1
    labels: dict[str, int] = {}
    for raw in inputs:
        path = os.path.abspath(os.path.expanduser(raw))
        if not os.path.lexists(path):
            raise ConfigError(f"{raw}: no such file or folder")
        real = os.path.realpath(path)
        if os.path.isdir(path):
            if any(real == r or real.startswith(r + os.sep) for r, _ in roots):
                continue  # already covered by an earlier folder
            name = os.path.basename(real.rstrip(os.sep)) or "root"
            n = labels.get(name, 0)
            labels[name] = n + 1
            label = name if n == 0 else f"{name}_{n + 1}"
            roots.append((real, label))
            for entry in _walk(path, skip, extset):
                rel = os.path.relpath(entry.path, path)
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if target in seen_files:
                        continue
                    seen_files.add(target)
                yield _found(entry.path, os.path.join(label, rel) if multi else rel)
        else:
            if real in seen_files or any(real.startswith(r + os.sep) for r, _ in roots):
                continue
            seen_files.add(real)
            yield _found(path, os.path.basename(path))


def _found(path: str, rel: str) -> Found:
    try:
        st = os.stat(path)
        return Found(path, rel, st.st_size, st.st_mtime)
    except OSError:  # broken symlink, vanished file: the worker reports it on its own item
        return Found(path, rel)


def write_items(found: Iterable[Found], fh: IO[bytes]) -> int:
    """Write items.jsonl; give each item an output stem unique within its folder. Returns the count."""
    n = 0
    cur_dir, stems = None, set()
    for f in found:
        folder, name = os.path.split(f.rel)
        if folder != cur_dir:
            cur_dir, stems = folder, set()
        stem, ext = os.path.splitext(name)
        out = stem
        if out.lower() in stems:  # a.jpg and a.png in one folder: the second becomes a_png
            out = f"{stem}_{ext.lstrip('.').lower()}"
            k = 2
            while out.lower() in stems:
                out = f"{stem}_{ext.lstrip('.').lower()}{k}"
                k += 1
        stems.add(out.lower())
        rec = {"i": n, "src": f.src, "rel": f.rel, "stem": os.path.join(folder, out),
               "size": f.size, "mtime": f.mtime}
        fh.write(orjson.dumps(rec) + b"\n")
        n += 1
    return n


def iter_items(path: str, start: int = 0) -> Iterator[dict]:
    """Stream items.jsonl (written once, never modified)."""
    with open(path, "rb") as fh:
        for line in fh:
            rec = orjson.loads(line)
            if rec["i"] >= start:
                yield rec
