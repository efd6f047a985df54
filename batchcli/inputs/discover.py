"""Inputs -> items.jsonl: resolve folders, files, glob patterns, list files, stdin and URLs in a
deterministic order; filter by extension and --exclude; skip the output folder; merge the same
file reached twice; optionally skip byte-identical files; give each item a unique output stem.

Everything streams: items are written as they are found, and the sets that remember what was
already seen hold fixed-size digests in flat arrays, not one Python object per item."""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from operator import attrgetter
from typing import IO
from urllib.parse import unquote, urlsplit

import orjson

from batchcli import jsonio
from batchcli.argfiles import check_file, open_checked
from batchcli.errors import ConfigError
from batchcli.inputs.names import Namer, is_url, safe_component
from batchcli.inputs.seen import DigestSet, SpillSet, identity_key, key64  # noqa: F401  (DigestSet: owners)

DEFAULT_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "tif", "tiff", "bmp", "heic", "heif", "avif", "gif",
                      "dng", "cr2", "cr3", "nef", "arw", "raf", "orf", "rw2", "pef")
VIDEO_EXTENSIONS = ("mp4", "mov", "m4v", "mkv", "webm", "avi")
MEDIA = ("image", "video", "all")
HASH_CHUNK = 1 << 20
_NAME = attrgetter("name")


@dataclass
class Found:
    src: str  # absolute path (or URL)
    rel: str  # path relative to its input root, with the root's name when several roots are given
    size: int = 0
    mtime: float = 0.0
    dev: int = 0  # the input's identity (device, inode); 0 when unknown (URLs, missing files)
    ino: int = 0


@dataclass
class DiscoveryStats:
    """What discovery left out, for the manifest (filled while `find` is consumed)."""

    excluded: int = 0  # matched an --exclude pattern
    duplicates: int = 0  # the same file (or URL) reached through another input
    dedupe_skipped: int = 0  # --dedupe content: same bytes as an earlier item
    in_output: int = 0  # files inside the output folder (or the batch home): never re-ingested
    out_folders: list = field(default_factory=list)  # folders pruned as the output folder (or the home)
    videos: int = 0  # items that are videos (by extension), counted by write_items
    identities: list | bytes | None = None  # set to a list: write_items keeps each item's (src, size,
    # mtime, device, inode) while all are plain files (else None), then marshal's version 2 bytes of
    # the list (the record a sync keeps: engine/syncfast.py)

    def pruned(self, folder: str) -> None:
        if len(self.out_folders) < 5:  # a few, to name them
            self.out_folders.append(folder)


def parse_exts(exts: Iterable[str] | None, media: str = "image") -> tuple[str, ...]:
    """`--ext jpg --ext .PNG,webp` -> ("jpg", "png", "webp"); None -> the extensions of `media`
    (--media image, video or all)."""
    if media not in MEDIA:
        raise ConfigError(f"--media {media}: expected image, video or all")
    if not exts:
        return {"image": DEFAULT_EXTENSIONS, "video": VIDEO_EXTENSIONS, "all": DEFAULT_EXTENSIONS + VIDEO_EXTENSIONS}[media]
    out: list[str] = []
    for value in exts:
        for part in value.split(","):
            e = part.strip().lstrip(".").lower()
            if e and e not in out:
                out.append(e)
    if not out:
        raise ConfigError("--ext: no extension given")
    return tuple(out)


def _digest(*parts: str | bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p if isinstance(p, bytes) else os.fsencode(p))
        h.update(b"\0")
    return h.digest()


def file_digest(path: str) -> bytes | None:
    """blake2b-128 of a file's bytes, streamed; None when it cannot be read."""
    h = hashlib.blake2b(digest_size=16)
    buf = bytearray(HASH_CHUNK)
    view = memoryview(buf)
    try:
        with open(path, "rb") as fh:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    except OSError:
        return None
    return h.digest()


# --- resolving inputs --------------------------------------------------------------------------

class _Resolver:
    def __init__(self, exts: Iterable[str] | None, skip_dirs: Iterable[str | None], exclude: Iterable[str],
                 dedupe: str | None, stats: DiscoveryStats, multi: bool, keep_dirs: Iterable[str] = (),
                 spill_dir: str | None = None):
        self.exts = frozenset(parse_exts(exts))
        self.skip = {os.path.realpath(d) for d in skip_dirs if d}
        self.keep = tuple(os.path.realpath(d).rstrip(os.sep) + os.sep for d in keep_dirs)
        self.exclude = tuple(p for p in exclude if p)
        self.dedupe = dedupe
        self.stats = stats
        self.multi = multi
        self.seen = SpillSet(spill_dir)  # identity of every item: (device, inode), or the path / URL
        self.contents = DigestSet() if dedupe == "content" else None
        self.roots: list[str] = []  # folders walked so far (real paths)
        self.labels: dict[str, int] = {}
        self._dir, self._dir_real = "", ""

    # -- filters --
    def excluded(self, *names: str) -> bool:
        return any(fnmatchcase(n, p) for p in self.exclude for n in names if n)

    def excluded_path(self, rel: str) -> bool:
        """--exclude against a relative path, its name, and each of its folders (path and name)."""
        if not self.exclude:
            return False
        if self.excluded(rel, os.path.basename(rel)):
            return True
        folder = os.path.dirname(rel)
        while folder:
            if self.excluded(folder, os.path.basename(folder)):
                return True
            folder = os.path.dirname(folder)
        return False

    def in_skip(self, real: str) -> bool:
        if self.keep and (real + os.sep).startswith(self.keep):
            return False  # a folder inside a skipped one that is read all the same (a batch's uploads)
        return any(real == s or real.startswith(s.rstrip(os.sep) + os.sep) for s in self.skip)

    def ext_ok(self, name: str) -> bool:
        """The extension (os.path.splitext's, without its dot) is one of ours."""
        return file_ext(name) in self.exts

    def label(self, path: str) -> str:
        name = os.path.basename(os.path.realpath(path).rstrip(os.sep)) or "root"
        n = self.labels.get(name, 0)
        self.labels[name] = n + 1
        return name if n == 0 else f"{name}_{n + 1}"

    # -- emitting --
    def emit(self, path: str, rel: str, st: os.stat_result | None = None, walked: bool = False,
             stat_done: bool = False) -> Iterator[Found]:
        """One candidate file -> at most one Found (duplicates, exclusions and the output folder
        dropped). `walked`: not a symlink, found in a folder walk whose folder is not skipped.
        `stat_done`: `st` is the result of os.stat already (None: the path cannot be stat'ed)."""
        if self.exclude and (self.excluded(rel, os.path.basename(rel)) if walked else self.excluded_path(rel)):
            self.stats.excluded += 1
            return
        if st is None and not stat_done:
            try:
                st = os.stat(path)
            except OSError:
                st = None
        if st is None:  # broken symlink, vanished or missing file: the worker reports it on its own item
            if not self.seen.add(key64(_digest("p", os.path.abspath(path)))):
                self.stats.duplicates += 1
                return
            yield Found(path, rel)
            return
        if not walked and self.skip and self.in_skip(self.real(path)):
            self.stats.in_output += 1
            return
        if not self.seen.add(identity_key(st.st_ino, st.st_dev)):  # exact on one file system
            self.stats.duplicates += 1
            return
        if self.contents is not None:
            d = file_digest(path)
            if d is not None and not self.contents.add(d):
                self.stats.dedupe_skipped += 1
                return
        yield Found(path, rel, st.st_size, st.st_mtime, st.st_dev, st.st_ino)

    def real(self, path: str) -> str:
        """realpath, with the folder's resolved path cached (lists come grouped by folder)."""
        if os.path.islink(path):
            return os.path.realpath(path)
        folder, name = os.path.split(path)
        if folder != self._dir:
            self._dir, self._dir_real = folder, os.path.realpath(folder)
        return os.path.join(self._dir_real, name)

    def emit_url(self, url: str) -> Iterator[Found]:
        rel = url_name(url)
        if self.excluded(url, rel):
            self.stats.excluded += 1
            return
        if not self.seen.add(key64(_digest("u", url))):
            self.stats.duplicates += 1
            return
        yield Found(url, rel)

    def walk(self, top: str, prefix: str) -> Iterator[Found]:
        """A folder, recursively: names sorted, files before sub-folders, symlinked folders not
        followed, the output folder and --exclude'd folders pruned. `prefix` goes before each rel."""
        real = os.path.realpath(top)
        if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots):
            return  # already covered by an earlier folder
        if self.in_skip(real):  # an input folder that is (inside) the output folder
            self.stats.pruned(top)
            return
        self.roots.append(real)
        yield from self._walk(top, "", prefix)

    def _walk(self, folder: str, inner: str, prefix: str) -> Iterator[Found]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=_NAME)
        except OSError:
            return
        dirs = []
        exts, seen_add = self.exts, self.seen.add
        plain = self.contents is None and not self.exclude  # emit's work is spelled out below
        for entry in entries:  # the files of a folder first, then its sub-folders
            name = entry.name
            sub = f"{inner}/{name}" if inner else name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir:
                if os.path.realpath(entry.path) in self.skip:
                    self.stats.pruned(entry.path)
                elif self.excluded(sub, name, _join(prefix, sub)):
                    self.stats.excluded += 1
                else:
                    dirs.append((entry.path, sub))
            elif file_ext(name) in exts:
                if self.exclude and self.excluded(sub):
                    self.stats.excluded += 1
                    continue
                st = None
                try:
                    st = entry.stat()
                except OSError:
                    pass
                if st is not None and plain and not entry.is_symlink():
                    # emit's work for a plain file of a walk, without its generator
                    if seen_add(identity_key(st.st_ino, st.st_dev)):
                        yield Found(entry.path, _join(prefix, sub) if prefix else sub, st.st_size, st.st_mtime,
                                    st.st_dev, st.st_ino)
                    else:
                        self.stats.duplicates += 1
                    continue
                yield from self.emit(entry.path, _join(prefix, sub), st, walked=not entry.is_symlink())
        for path, sub in dirs:
            yield from self._walk(path, sub, prefix)

    # -- inputs --
    def argument(self, raw: str) -> Iterator[Found]:
        """A command-line input: URL, folder, file (always taken) or glob pattern."""
        if is_url(raw):
            yield from self.emit_url(raw)
            return
        path = os.path.abspath(os.path.expanduser(raw))
        if os.path.lexists(path):
            if os.path.isdir(path):
                yield from self.walk(path, self.label(path) if self.multi else "")
            else:
                yield from self.emit(path, os.path.basename(path))
            return
        if glob.has_magic(raw):
            yield from self.pattern(raw, os.getcwd(), listed=False)
            return
        raise ConfigError(f"{raw}: no such file or folder")

    def pattern(self, pat: str, base: str, listed: bool) -> Iterator[Found]:
        """A glob pattern (`**` crosses folders), matches sorted. Files keep their path below the
        pattern's fixed part (or, from a list, below the list's folder)."""
        full = os.path.join(base, os.path.expanduser(pat))
        matches = sorted(glob.glob(full, recursive=True))
        if not matches and not listed:
            raise ConfigError(f"{pat}: no file matches this pattern")
        fixed = _fixed_part(full)
        prefix = self.label(fixed) if self.multi and not listed else ""
        for m in matches:
            m = os.path.abspath(m)
            rel = _list_rel(m, base) if listed else _join(prefix, os.path.relpath(m, fixed))
            if os.path.isdir(m):
                if self.excluded_path(rel):
                    self.stats.excluded += 1
                else:
                    yield from self.walk(m, rel)
            elif self.ext_ok(m):
                yield from self.emit(m, rel)

    def listed(self, line: str, base: str) -> Iterator[Found]:
        """One line of a list (--from-file or stdin): a URL, a file, a folder or a pattern.
        A path that does not exist becomes an item that fails on its own."""
        if is_url(line):
            yield from self.emit_url(line)
            return
        path = os.path.normpath(os.path.join(base, os.path.expanduser(line)))
        st = _stat(path)
        if st is None and not os.path.lexists(path):
            stripped = line.strip()
            alt = os.path.normpath(os.path.join(base, os.path.expanduser(stripped)))
            if stripped != line and os.path.lexists(alt):
                path, st = alt, _stat(alt)
            elif glob.has_magic(line):
                yield from self.pattern(line, base, listed=True)
                return
        if st is not None and stat.S_ISDIR(st.st_mode):
            yield from self.walk(path, _list_rel(path, base))
        elif self.ext_ok(path):
            yield from self.emit(path, _list_rel(path, base), st, stat_done=True)


def quick_walk(top: str, exts: Iterable[str], skip_dirs: Iterable[str | None],
               part: tuple[float, float] = (0.0, 1.0)) -> list[tuple] | None:
    """What `find([top], exts, skip_dirs)` of one folder finds when nothing is excluded or
    deduplicated by content and it meets only plain files and folders: (path, size, mtime,
    device, inode) per file, in find's order, with the same file reached twice left in (find
    would drop the second). None when the walk meets what only find handles (a symbolic link
    to a file, a file or folder it cannot read). Used to tell a tree unchanged since the last
    walk (engine/syncfast.py) at the cost of a listing and a stat per file. `part` (from, to):
    only that share of the folder's sub-folders (in order), and its own files when `from` is 0
    (two processes walk a folder in two parts; their lists, joined, are the whole walk's)."""
    top = os.path.abspath(os.path.expanduser(top))
    res = _Resolver(exts, skip_dirs, (), None, DiscoveryStats(), multi=False)
    real = os.path.realpath(top)
    if not os.path.isdir(top) or os.path.islink(top) or res.in_skip(real):
        return None
    out: list[tuple] = []
    try:
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        return out if _quick(fd, top, real, frozenset(res.exts), res.skip, out, part) else None
    finally:
        os.close(fd)


def _quick(fd: int, folder: str, real: str, exts: frozenset[str], skip: set[str], out: list[tuple],
           part: tuple[float, float] = (0.0, 1.0)) -> bool:
    """_Resolver._walk's plain case of one folder (open as `fd`; `real`: its realpath), without
    its Found objects, each stat relative to the folder; False on anything else."""
    try:
        with os.scandir(fd) as it:
            entries = sorted(it, key=_NAME)
    except OSError:
        return False
    base, real_base = os.path.join(folder, ""), os.path.join(real, "")
    dirs, add = [], out.append
    files = part[0] == 0
    for entry in entries:
        name = entry.name
        try:
            if entry.is_symlink():  # find follows one to a file (emit); one to a folder it leaves alone
                if files and file_ext(name) in exts:
                    return False
            elif entry.is_dir(follow_symlinks=False):
                if real_base + name not in skip:  # realpath(entry.path): no link on the way
                    dirs.append(name)
            else:
                dot = name.rfind(".")  # file_ext, spelled out
                if files and dot > 0 and name[dot + 1:].lower() in exts and name[:dot].strip("."):
                    st = entry.stat()
                    add((base + name, st.st_size, st.st_mtime, st.st_dev, st.st_ino))
        except OSError:
            return False
    for name in dirs[int(part[0] * len(dirs)):int(part[1] * len(dirs))]:
        try:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            return False
        try:
            if not _quick(sub, base + name, real_base + name, exts, skip, out):
                return False
        finally:
            os.close(sub)
    return True


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _join(prefix: str, rel: str) -> str:
    return os.path.join(prefix, rel) if prefix else rel


def _fixed_part(pattern: str) -> str:
    """The folder part of a pattern before its first wildcard: photos/**/*.jpg -> photos."""
    parts = pattern.split(os.sep)
    keep = []
    for p in parts[:-1]:
        if glob.has_magic(p):
            break
        keep.append(p)
    return os.path.abspath(os.sep.join(keep) or os.sep)


def _list_rel(path: str, base: str) -> str:
    """A listed path mirrors its place below the list's folder; a path outside it mirrors its
    absolute path (without the leading /)."""
    rel = os.path.relpath(path, base)
    if rel == os.curdir:  # the list's folder itself ("find ." prints it first)
        return ""
    if rel.startswith(os.pardir + os.sep) or rel == os.pardir:
        return path.lstrip(os.sep) or "root"
    return rel


def url_name(url: str) -> str:
    """The file name an URL item gets: the last segment of its path (or its host), made safe."""
    parts = urlsplit(url)
    name = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    if not name:
        name = (parts.hostname or "download").replace(".", "_")
    return safe_component(name) or "download"


def iter_list(fh: IO[bytes]) -> Iterator[str]:
    """Lines of a list: line endings removed, blank lines and # comments skipped. Streams."""
    for raw in fh:
        line = os.fsdecode(raw.rstrip(b"\r\n"))
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        yield line


def find(inputs: list[str], exts: Iterable[str] | None = None, skip_dirs: Iterable[str | None] = (), *,
         exclude: Iterable[str] = (), from_file: str | None = None, dedupe: str | None = None,
         stdin: IO[bytes] | None = None, stats: DiscoveryStats | None = None,
         keep_dirs: Iterable[str] = (), spill_dir: str | None = None) -> Iterator[Found]:
    """Resolve inputs to Found items, in order, without duplicates.

    `inputs` are files, folders, glob patterns, URLs, or "-" (a list on stdin); `from_file` is a
    list file ("-" = stdin) read after them. List lines that are relative paths are relative to
    the list's folder (the current folder for stdin). Nothing under `skip_dirs` is read, except
    under `keep_dirs`. `spill_dir`: where the identities seen may spill (inputs/seen.py)."""
    if dedupe not in (None, "content"):
        raise ConfigError(f"--dedupe {dedupe}: expected 'content'")
    if from_file == "-" and "-" in inputs or inputs.count("-") > 1:
        raise ConfigError("stdin can be read only once: give - once (as an input or as --from-file -)")
    sources = len(inputs) + (1 if from_file else 0)
    res = _Resolver(exts, skip_dirs, exclude or (), dedupe, stats or DiscoveryStats(), multi=sources > 1,
                    keep_dirs=keep_dirs, spill_dir=spill_dir)
    try:
        for raw in inputs:
            if raw == "-":
                yield from _from_list(res, stdin if stdin is not None else sys.stdin.buffer, os.getcwd())
            else:
                yield from res.argument(raw)
        if from_file == "-":
            yield from _from_list(res, stdin if stdin is not None else sys.stdin.buffer, os.getcwd())
        elif from_file:
            path = os.path.abspath(os.path.expanduser(from_file))
            fd, _ = open_checked(path, "--from-file", "list")
            with os.fdopen(fd, "rb") as fh:
                yield from _from_list(res, fh, os.path.dirname(path))
    finally:
        res.seen.close()


def _from_list(res: _Resolver, fh: IO[bytes], base: str) -> Iterator[Found]:
    for line in iter_list(fh):
        yield from res.listed(line, base)


def check_inputs(inputs: list[str], from_file: str | None) -> None:
    """Fail fast (before a batch is created) on inputs that cannot work."""
    for raw in inputs:
        if raw == "-" or is_url(raw):
            continue
        path = os.path.abspath(os.path.expanduser(raw))
        if not os.path.lexists(path) and not glob.has_magic(raw):
            raise ConfigError(f"{raw}: no such file or folder")
    if from_file and from_file != "-":
        check_file(os.path.expanduser(from_file), "--from-file", "list")


_PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")


def is_video(src: str) -> bool:
    """A local file whose extension names a video container (such items run as videos)."""
    if src.endswith(_PHOTO_SUFFIXES):  # the usual item, told without file_ext
        return False
    return file_ext(src) in VIDEO_EXTENSIONS and not is_url(src)


def file_ext(path: str) -> str:
    """os.path.splitext(path)[1], lower case, without its dot."""
    dot, base = path.rfind("."), path.rfind(os.sep) + 1
    return path[dot + 1:].lower() if dot > base and path[base:dot].strip(".") else ""


class ItemWriter:
    """Numbers items and gives each an output stem unique in the whole batch (compared
    case-insensitively), one items.jsonl line each. A batch that grows (`watch`) keeps one and
    seeds it with the items it already has."""

    def __init__(self, fh: IO[bytes], namer: Namer | None = None, stats: DiscoveryStats | None = None,
                 spill_dir: str | None = None):
        self.fh, self.namer, self.stats = fh, namer or Namer(), stats
        self.taken = SpillSet(spill_dir)  # names given (a rare false "taken" would only rename)
        self.n = 0

    def seed(self, rec: dict) -> None:
        """An item the batch already has: its number and stem are taken."""
        self.n = max(self.n, rec["i"] + 1)
        ext = os.path.splitext(rec.get("rel") or "")[1]
        self.taken.add(hash(("with-ext", rec["stem"].casefold(), ext.casefold())), keep=False)
        self.taken.add(hash(rec["stem"].casefold()))

    def add(self, f: Found) -> dict:
        taken, namer, n = self.taken, self.namer, self.n
        stem, ext = namer.candidate(n, f)
        out, folded = stem, stem.casefold()
        # (stem, ext) seen before: a hint only (a list of millions may forget it: a_jpg, not a_2)
        new_name = taken.add(hash(("with-ext", folded, ext.casefold())), keep=False)
        if not taken.add(hash(folded)):
            # a.jpg and a.png in one folder (default naming): the second becomes a_png; then _2, _3...
            by_ext = namer.template is None and ext and new_name
            base = f"{stem}_{ext.lstrip('.').lower()}" if by_ext else stem
            out, k = base, 2
            if base == stem:
                out, k = f"{base}_2", 3
            while not taken.add(hash(out.casefold())):
                out, k = f"{base}_{k}", k + 1
        src = f.src
        rec = {"i": n, "src": src, "rel": f.rel, "stem": out, "size": f.size, "mtime": f.mtime}
        if f.ino:
            rec["dev"], rec["ino"] = f.dev, f.ino
        if not src.endswith(_PHOTO_SUFFIXES) and is_video(src):
            rec["video"] = 1
            if self.stats is not None:
                self.stats.videos += 1
        if self.stats is not None and self.stats.identities is not None:
            if f.ino and "video" not in rec:
                self.stats.identities.append((src, f.size, f.mtime, f.dev, f.ino))  # type: ignore[union-attr]
            else:
                self.stats.identities = None
        try:  # _dumps, spelled out
            line = orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:
            line = _dumps(rec) + b"\n"
        self.fh.write(line)
        self.n = n + 1
        return rec


def write_items(found: Iterable[Found], fh: IO[bytes], namer: Namer | None = None,
                stats: DiscoveryStats | None = None, spill_dir: str | None = None) -> int:
    """Write items.jsonl (see ItemWriter); mark videos (`"video": 1`, counted in `stats`).
    `spill_dir`: where the names given may spill (inputs/seen.py). Returns the count."""
    w = ItemWriter(fh, namer, stats, spill_dir)
    try:
        for f in found:
            w.add(f)
    finally:
        w.taken.close()
    if stats is not None and isinstance(stats.identities, list):
        import marshal

        stats.identities = marshal.dumps(stats.identities, 2)
    return w.n


def _dumps(rec: dict) -> bytes:
    """A file name that is not valid UTF-8 is kept byte for byte (batchcli/jsonio.py)."""
    return jsonio.dumps(rec)


def iter_items(path: str, start: int = 0) -> Iterator[dict]:
    """Stream items.jsonl (written once, never modified)."""
    with open(path, "rb") as fh:
        for line in fh:
            rec = jsonio.loads(line)
            if rec["i"] >= start:
                yield rec
