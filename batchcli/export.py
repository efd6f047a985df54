"""Export: the completed outputs of a batch as a streaming, deterministic ZIP, a folder, or a manifest.

One snapshot is taken when an export starts (a replay of the journal): records written after it
(a runner still working) are ignored, so a running batch exports exactly what was completed then.
Only outputs whose bytes still hash to the sha256 in their `item_completed` record are exported;
the others are listed in the manifest as missing.

Memory stays flat whatever the batch size: the snapshot keeps one byte and one journal offset per
item, file data is streamed in 1 MiB blocks, and the ZIP's central directory and the manifests are
spooled to temporary files. Only the set of entry names (to keep them unique) grows with the number
of exported files (about 80 bytes each).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import string
import struct
import tempfile
import time
import unicodedata
import zlib
from array import array
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Iterator

import orjson

from batchcli.atomic import fsync_dir, tmp_name
from batchcli.errors import ConfigError, NothingToExport
from batchcli.journal import COMPLETED, FAILED, STATE_NAMES, decode, replay
from batchcli.store import BatchPaths

BLOCK = 1 << 20
MANIFEST_CSV = "manifest.csv"
MANIFEST_JSONL = "manifest.jsonl"

# --------------------------------------------------------------------------------------------
# Snapshot: the journal as it was when the export started.


@dataclass
class ItemView:
    """One item as the snapshot sees it."""

    i: int
    src: str
    rel: str
    stem: str
    state: str  # pending / completed / failed / skipped
    record: dict[str, Any] | None  # its last item_completed / item_failed record, if any

    @property
    def out(self) -> str | None:
        """The output path relative to the batch's out_dir (completed items that wrote a file)."""
        rec = self.record
        if self.state == "completed" and rec and rec.get("out"):
            return rec["out"]
        return None


class Snapshot:
    """A consistent, read-only view of a batch: replay once, then read records by offset."""

    def __init__(self, paths: BatchPaths):
        self.paths = paths
        self.manifest = paths.load_manifest()
        self.total = int(self.manifest["total"])
        self.out_dir: str | None = self.manifest.get("out_dir")
        self.taken_at = time.time()
        st = replay(paths.journal, self.total)
        self.replay = st
        self.items = st.items
        self.last_seq = st.last_seq
        self.running = st.state == "running" and _runner_alive(paths)
        # Offset of each item's last item record with seq <= last_seq (-1: none).
        self.offsets = array("q", [-1]) * self.total
        self.meta_keys: dict[str, None] = {}  # flattened meta columns, in first-seen order
        self._scan()

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.paths.id

    def _scan(self) -> None:
        offsets, total, cutoff = self.offsets, self.total, self.last_seq
        with open(self.paths.journal, "rb") as fh:
            pos = 0
            for raw in fh:
                here, pos = pos, pos + len(raw)
                if not raw.endswith(b"\n") or b'"type":"item_' not in raw:
                    continue
                rec = decode(raw[:-1])
                if rec is None or rec.get("seq", 0) > cutoff:
                    continue
                i = rec.get("i")
                if not isinstance(i, int) or not 0 <= i < total:
                    continue
                if rec.get("type") in ("item_completed", "item_failed"):
                    offsets[i] = here
                    meta = rec.get("meta")
                    if meta and len(self.meta_keys) < MAX_META_COLUMNS:
                        for k in flatten_meta(meta):
                            self.meta_keys.setdefault(k, None)

    def record(self, fh: IO[bytes], i: int) -> dict[str, Any] | None:
        off = self.offsets[i]
        if off < 0:
            return None
        fh.seek(off)
        return decode(fh.readline()[:-1])

    def __iter__(self) -> Iterator[ItemView]:
        """Every item in item order, with its state and last record."""
        from batchcli.discover import iter_items

        with open(self.paths.journal, "rb") as jf:
            for it in iter_items(self.paths.items):
                i = it["i"]
                if not 0 <= i < self.total:
                    continue
                state = self.items[i]
                rec = self.record(jf, i) if state in (COMPLETED, FAILED) else None
                if rec is not None and (rec.get("type") == "item_completed") != (state == COMPLETED):
                    rec = None  # an older record of the other kind: not this state's story
                yield ItemView(i, it["src"], it.get("rel") or os.path.basename(it["src"]),
                               it.get("stem") or "", STATE_NAMES[state], rec)


def _runner_alive(paths: BatchPaths) -> bool:
    try:
        from batchcli.runner import runner_alive

        return runner_alive(paths) is not None
    except Exception:  # a stale runner.json must not stop an export
        return False


# --------------------------------------------------------------------------------------------
# Metadata flattening (for CSV columns).

MAX_META_COLUMNS = 200


def flatten_meta(meta: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Nested dicts become dotted keys (two levels); lists and deeper dicts become JSON text."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and depth < 1:
            out.update(flatten_meta(v, key + ".", depth + 1))
        elif isinstance(v, (dict, list, tuple)):
            out[key] = json.dumps(v, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------------------
# Entry names.

TEMPLATE_FIELDS = ("name", "id", "stem", "ext", "i", "rel", "dir")
_UNSAFE = set('<>:"|?*\\')
_MAX_COMPONENT = 240


def check_template(template: str) -> None:
    """Raise ConfigError for an unknown field or a malformed template (before any work)."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"--name-template {template!r}: {exc}") from None
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
    return {"name": "batch", "id": "id", "stem": "stem", "ext": "jpg", "i": 0, "rel": "a/stem", "dir": "a"}


def name_fields(snap_name: str, batch_id: str, item: ItemView) -> dict[str, Any]:
    out = item.out
    if out:
        rel, ext = os.path.splitext(out)
    else:  # no output file (e.g. an analyze-only pipeline): the input's name
        rel, ext = os.path.splitext(item.rel)
    folder, stem = os.path.split(rel)
    return {"name": snap_name, "id": batch_id, "stem": stem, "ext": ext.lstrip("."), "i": item.i,
            "rel": rel, "dir": folder}


def sanitize_name(name: str, fallback: str = "file") -> str:
    """A ZIP entry / relative path that cannot escape the target folder on any system.

    Unicode is NFC-normalised; control characters, backslashes and characters Windows forbids
    become "_"; empty, "." and ".." components are dropped (so "../../x.jpg" -> "x.jpg" and
    "/etc/passwd" -> "etc/passwd"); a drive prefix ("C:") loses its colon; components are
    trimmed of trailing dots and spaces and capped in length (the extension kept)."""
    name = unicodedata.normalize("NFC", name)
    cleaned = "".join("_" if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c in _UNSAFE) else c for c in name)
    parts = []
    for comp in cleaned.split("/"):
        comp = comp.rstrip(" .") if comp not in (".", "..") else ""
        if not comp or set(comp) <= {"."}:
            continue
        if len(comp.encode("utf-8")) > _MAX_COMPONENT:
            comp = _shorten(comp)
        parts.append(comp)
    return "/".join(parts) or fallback


def _shorten(comp: str) -> str:
    stem, ext = os.path.splitext(comp)
    if len(ext.encode()) > 16:
        stem, ext = comp, ""
    budget = _MAX_COMPONENT - len(ext.encode())
    raw = stem.encode("utf-8")[:budget]
    return raw.decode("utf-8", "ignore") + ext


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
        return int.from_bytes(hashlib.blake2b(name.casefold().encode("utf-8"), digest_size=8).digest(), "little")

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


def entry_namer(snap: Snapshot, template: str | None, reserved: tuple[str, ...] = ()) -> Callable[[ItemView], str]:
    if template:
        check_template(template)
    names = UniqueNames(reserved)
    bid = snap.paths.id

    def namer(item: ItemView) -> str:
        if template:
            raw = template.format(**name_fields(snap.name, bid, item))
        else:
            raw = item.out or item.rel
        return names.take(sanitize_name(raw, fallback=f"item_{item.i}"))

    return namer


# --------------------------------------------------------------------------------------------
# Verified reading of one output.


class Changed(Exception):
    """The output's bytes no longer match its journal record."""


def open_output(out_dir: str, rec: dict[str, Any]) -> tuple[IO[bytes], int] | tuple[None, str]:
    """Open a recorded output: (file, size), or (None, "missing" / "changed")."""
    path = os.path.join(out_dir, rec["out"])
    try:
        fh = open(path, "rb")
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None, "missing"
    except OSError:
        return None, "missing"
    size = os.fstat(fh.fileno()).st_size
    if rec.get("bytes") is not None and size != rec["bytes"]:
        fh.close()
        return None, "changed"
    return fh, size


def copy_verified(src: IO[bytes], dst: IO[bytes] | None, want_sha: str | None,
                  crc: bool = False) -> tuple[int, int, str]:
    """Stream src -> dst (if any) in blocks; returns (bytes, crc32, sha256 hex). Raises Changed."""
    h = hashlib.sha256()
    n = c = 0
    while True:
        block = src.read(BLOCK)
        if not block:
            break
        h.update(block)
        if crc:
            c = zlib.crc32(block, c)
        if dst is not None:
            dst.write(block)
        n += len(block)
    digest = h.hexdigest()
    if want_sha and digest != want_sha:
        raise Changed(digest)
    return n, c, digest


# --------------------------------------------------------------------------------------------
# Streaming ZIP writer (deterministic; ZIP64 when needed).

_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01
_DOS_TIME = 0
_ATTR_FILE = (0o100644 << 16)
_MADE_BY = (3 << 8) | 45  # Unix, spec 4.5
_U32 = 0xFFFFFFFF  # the "see the ZIP64 record" marker
ZIP64_LIMIT = 0xFFFFFFFF
"""Sizes and offsets from here on go into ZIP64 records (a test lowers it to exercise them)."""
STORED, DEFLATED = 0, 8


class ZipStream:
    """Writes a ZIP to a seekable binary file object, one streamed entry at a time.

    Fixed timestamps (1980-01-01 00:00), fixed permissions (0644 regular file), no extra fields
    except ZIP64's: the same entries in the same order give the same bytes. The central directory
    is spooled to a temporary file, so memory does not grow with the number of entries.
    ZIP64 records are used for entries of 4 GiB or more, offsets past 4 GiB and more than
    65,535 entries."""

    def __init__(self, fh: IO[bytes], spool_dir: str | None = None):
        self.fh = fh
        self.count = 0
        self._cd = tempfile.TemporaryFile(dir=spool_dir)
        self._cd_size = 0
        self.zip64 = False
        self._closed = False

    def add(self, name: str, src: IO[bytes], size: int, method: int = STORED,
            check: Callable[[IO[bytes], IO[bytes]], tuple[int, int]] | None = None) -> int:
        """Add one entry from `src` (its `size` must be known for STORED). Returns the bytes
        written. `check(src, dst) -> (n, crc)` replaces the plain copy (and may raise, in which
        case nothing of the entry stays in the ZIP)."""
        fh = self.fh
        start = fh.tell()
        bname = name.encode("utf-8")
        flags = 0x800 if not name.isascii() else 0
        limit = ZIP64_LIMIT
        need64 = size >= limit - (limit >> 12)  # leaves room for deflate's worst case
        extra = struct.pack("<HHQQ", 1, 16, 0, 0) if need64 else b""
        version = 45 if need64 else 20
        header = struct.pack("<IHHHHHIIIHH", 0x04034B50, version, flags, method, _DOS_TIME, _DOS_DATE,
                             0, _U32 if need64 else 0, _U32 if need64 else 0, len(bname), len(extra))
        fh.write(header + bname + extra)
        data_start = fh.tell()
        try:
            if method == DEFLATED:
                usize, crc = _deflate(src, fh)
            elif check is not None:
                usize, crc = check(src, fh)
            else:
                usize, crc = _copy_crc(src, fh)
        except BaseException:
            fh.seek(start)
            fh.truncate()
            raise
        end = fh.tell()
        csize = end - data_start
        if not need64 and (csize >= limit or usize >= limit):
            raise ValueError(f"{name}: entry grew past 4 GiB; size it before adding")  # never for STORED
        # patch the local header with the real CRC and sizes
        fh.seek(start + 14)
        if need64:
            fh.write(struct.pack("<I", crc))
            fh.seek(start + 30 + len(bname) + 4)
            fh.write(struct.pack("<QQ", usize, csize))
        else:
            fh.write(struct.pack("<III", crc, csize, usize))
        fh.seek(end)
        # central directory record
        ex: list[int] = []
        if need64:
            ex += [usize, csize]
        if start >= limit:
            ex.append(start)
        cextra = struct.pack("<HH", 1, 8 * len(ex)) + struct.pack(f"<{len(ex)}Q", *ex) if ex else b""
        cver = 45 if ex else 20
        rec = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | cver, cver, flags, method, _DOS_TIME, _DOS_DATE, crc,
                          _U32 if need64 else csize, _U32 if need64 else usize,
                          len(bname), len(cextra), 0, 0, 0, _ATTR_FILE,
                          _U32 if start >= limit else start) + bname + cextra
        if ex:
            self.zip64 = True
        self._cd.write(rec)
        self._cd_size += len(rec)
        self.count += 1
        return end - start

    def add_bytes(self, name: str, data: bytes, method: int = STORED) -> int:
        return self.add(name, io.BytesIO(data), len(data), method)

    def close(self) -> None:
        """Write the central directory and the end records. Does not close `fh`."""
        if self._closed:
            return
        self._closed = True
        fh = self.fh
        cd_start = fh.tell()
        self._cd.seek(0)
        shutil.copyfileobj(self._cd, fh, BLOCK)
        self._cd.close()
        cd_size, count = self._cd_size, self.count
        eocd64_at = fh.tell()
        limit = ZIP64_LIMIT
        big = count > 0xFFFF or cd_start >= limit or cd_size >= limit or eocd64_at >= limit
        if big:
            self.zip64 = True
            fh.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, _MADE_BY, 45, 0, 0, count, count,
                                 cd_size, cd_start))
            fh.write(struct.pack("<IIQI", 0x07064B50, 0, eocd64_at, 1))
        n16 = 0xFFFF if count > 0xFFFF else count
        fh.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n16, n16, _U32 if big else cd_size,
                             _U32 if big else cd_start, 0))

    def abort(self) -> None:
        self._closed = True
        self._cd.close()


def _copy_crc(src: IO[bytes], dst: IO[bytes]) -> tuple[int, int]:
    n = c = 0
    while True:
        block = src.read(BLOCK)
        if not block:
            return n, c
        c = zlib.crc32(block, c)
        dst.write(block)
        n += len(block)


def _deflate(src: IO[bytes], dst: IO[bytes]) -> tuple[int, int]:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15, 8)
    n = c = 0
    while True:
        block = src.read(BLOCK)
        if not block:
            break
        c = zlib.crc32(block, c)
        n += len(block)
        dst.write(comp.compress(block))
    dst.write(comp.flush())
    return n, c


# --------------------------------------------------------------------------------------------
# Manifest rows.

BASE_COLUMNS = ("i", "input", "rel", "status", "output", "bytes", "sha256", "ms", "error_class", "error")


def manifest_row(item: ItemView, entry: str | None, status: str, problem: str | None = None) -> dict[str, Any]:
    rec = item.record or {}
    row: dict[str, Any] = {
        "i": item.i, "input": item.src, "rel": item.rel, "status": status, "output": entry,
        "bytes": rec.get("bytes") if item.state == "completed" else None,
        "sha256": rec.get("sha256") if item.state == "completed" else None,
        "ms": rec.get("ms"),
        "error_class": rec.get("error_class") if item.state == "failed" else None,
        "error": rec.get("error") if item.state == "failed" else None,
    }
    if problem:
        row["error_class"] = problem
        row["error"] = (f"output {item.out} is missing" if problem == "missing"
                        else f"output {item.out} changed since it was written (sha256 mismatch)")
    meta = rec.get("meta") if item.state == "completed" else None
    if meta:
        row["meta"] = meta
    return row


class ManifestWriter:
    """Streams rows to CSV and/or JSONL files (text, UTF-8)."""

    def __init__(self, meta_keys: list[str], csv_fh: IO[bytes] | None, jsonl_fh: IO[bytes] | None):
        self.meta_keys = meta_keys
        self.jsonl = jsonl_fh
        self._csv_text = None
        self._csv = None
        if csv_fh is not None:
            self._csv_text = io.TextIOWrapper(csv_fh, encoding="utf-8", newline="", write_through=True)
            self._csv = csv.writer(self._csv_text, lineterminator="\n")
            self._csv.writerow(list(BASE_COLUMNS) + [f"meta.{k}" for k in meta_keys])

    def write(self, row: dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.write(orjson.dumps(row, option=orjson.OPT_SORT_KEYS) + b"\n")
        if self._csv is not None:
            flat = flatten_meta(row["meta"]) if row.get("meta") else {}
            self._csv.writerow([_cell(row.get(c)) for c in BASE_COLUMNS] + [_cell(flat.get(k)) for k in self.meta_keys])

    def close(self) -> None:
        if self._csv_text is not None:
            self._csv_text.flush()
            self._csv_text.detach()


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


# --------------------------------------------------------------------------------------------
# The exports.


@dataclass
class ExportResult:
    batch_id: str
    name: str | None
    snapshot_at: float
    running: bool
    exported: int = 0  # files written
    exported_bytes: int = 0
    completed: int = 0  # completed items in the snapshot
    missing: int = 0
    changed: int = 0
    failed: int = 0
    pending: int = 0
    skipped: int = 0
    total: int = 0
    target: str | None = None
    zip64: bool = False
    linked: int = 0
    copied: int = 0
    manifest_rows: int = 0
    files: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["snapshot_at"] = _iso(self.snapshot_at)
        return d


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def _result(snap: Snapshot, target: str | None) -> ExportResult:
    st = snap.replay
    return ExportResult(batch_id=snap.paths.id, name=snap.manifest.get("name"), snapshot_at=snap.taken_at,
                        running=snap.running, completed=st.completed, failed=st.failed,
                        pending=st.remaining, skipped=st.skipped, total=snap.total, target=target)


def _require_results(snap: Snapshot) -> None:
    if snap.replay.completed == 0:
        raise NothingToExport(f"no completed results to export (batch {snap.paths.id}: "
                              f"{snap.replay.failed} failed, {snap.replay.remaining} pending)")


def _require_exported(snap: Snapshot, res: ExportResult, manifest: bool) -> None:
    """Completed items, yet nothing to put in the export (outputs gone, no metadata to list)."""
    if res.exported == 0 and not (manifest and snap.meta_keys):
        if not snap.out_dir:
            raise NothingToExport("no completed results to export: this pipeline writes no files and "
                                  "recorded no metadata (export --manifest lists the items)")
        raise NothingToExport(
            f"no completed results to export: {res.missing} output(s) missing and {res.changed} "
            f"changed since they were written (see 'batchcli verify {snap.paths.id}')")


def _selection(snap: Snapshot, namer: Callable[[ItemView], str] | None,
               visit: Callable[[ItemView, str], str | None], res: ExportResult,
               rows: ManifestWriter | None) -> None:
    """For each item: decide its entry and let `visit` write it (returns None when written, or
    'missing' / 'changed'); feed the manifest."""
    for item in snap:
        entry = None
        status = item.state
        problem = None
        if item.out and snap.out_dir:
            name = namer(item) if namer else item.out
            problem = visit(item, name)
            if problem is None:
                entry = name
                res.exported += 1
            else:
                status = "missing"
                if problem == "missing":
                    res.missing += 1
                else:
                    res.changed += 1
        if rows is not None:
            rows.write(manifest_row(item, entry, status, problem))
            res.manifest_rows += 1


def export_zip(paths: BatchPaths, zip_path: str, name_template: str | None = None,
               manifest: bool = True, snapshot: Snapshot | None = None) -> ExportResult:
    """Write the ZIP atomically (temp file next to it, then rename)."""
    if name_template:
        check_template(name_template)
    snap = snapshot or Snapshot(paths)
    _require_results(snap)
    zip_path = os.path.abspath(zip_path)
    folder = os.path.dirname(zip_path)
    os.makedirs(folder, exist_ok=True)
    res = _result(snap, zip_path)
    reserved = (MANIFEST_CSV, MANIFEST_JSONL) if manifest else ()
    namer = entry_namer(snap, name_template, reserved)
    tmp = tmp_name(zip_path)
    with open(tmp, "w+b") as fh, tempfile.TemporaryFile(dir=folder) as csv_fh, \
            tempfile.TemporaryFile(dir=folder) as jsonl_fh:
        try:
            zs = ZipStream(fh, spool_dir=folder)
            rows = ManifestWriter(list(snap.meta_keys), csv_fh, jsonl_fh) if manifest else None

            def visit(item: ItemView, name: str) -> str | None:
                src, size = open_output(snap.out_dir, item.record)  # type: ignore[arg-type]
                if src is None:
                    return size  # type: ignore[return-value]
                want = item.record.get("sha256")  # type: ignore[union-attr]
                with src:
                    try:
                        zs.add(name, src, size, check=lambda s, d: _checked(s, d, want))
                    except Changed:
                        return "changed"
                res.exported_bytes += size
                return None

            _selection(snap, namer, visit, res, rows)
            _require_exported(snap, res, manifest)
            if rows is not None:
                rows.close()
                for name, spool in ((MANIFEST_CSV, csv_fh), (MANIFEST_JSONL, jsonl_fh)):
                    spool.seek(0, os.SEEK_END)
                    size = spool.tell()
                    spool.seek(0)
                    zs.add(name, spool, size, method=DEFLATED)
                res.files = [MANIFEST_CSV, MANIFEST_JSONL]
            zs.close()
            res.zip64 = zs.zip64
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            fh.close()
            _unlink(tmp)
            raise
    os.replace(tmp, zip_path)
    fsync_dir(folder)
    return res


def _checked(src: IO[bytes], dst: IO[bytes], want: str | None) -> tuple[int, int]:
    n, crc, _ = copy_verified(src, dst, want, crc=True)
    return n, crc


def export_manifest(paths: BatchPaths, path: str, fmt: str | None = None,
                    name_template: str | None = None, snapshot: Snapshot | None = None) -> ExportResult:
    """Only the manifest (CSV or JSONL by extension), outputs verified as for a ZIP; atomic."""
    fmt = fmt or os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in ("csv", "jsonl"):
        raise ConfigError(f"--manifest {path}: the name must end in .csv or .jsonl")
    if name_template:
        check_template(name_template)
    snap = snapshot or Snapshot(paths)
    _require_results(snap)
    path = os.path.abspath(path)
    res = _result(snap, path)
    namer = entry_namer(snap, name_template)
    tmp = tmp_name(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(tmp, "wb") as fh:
            rows = ManifestWriter(list(snap.meta_keys), fh if fmt == "csv" else None, fh if fmt == "jsonl" else None)

            def visit(item: ItemView, name: str) -> str | None:
                src, size = open_output(snap.out_dir, item.record)  # type: ignore[arg-type]
                if src is None:
                    return size  # type: ignore[return-value]
                with src:
                    try:
                        copy_verified(src, None, item.record.get("sha256"))  # type: ignore[union-attr]
                    except Changed:
                        return "changed"
                res.exported_bytes += size
                return None

            _selection(snap, namer, visit, res, rows)
            rows.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    fsync_dir(os.path.dirname(path))
    return res


def export_dir(paths: BatchPaths, dest: str, name_template: str | None = None,
               manifest: bool = True, snapshot: Snapshot | None = None) -> ExportResult:
    """The same selection and names into a folder: hard links on the same file system, copies
    otherwise; every file appears atomically (temp name, verify, rename)."""
    if name_template:
        check_template(name_template)
    snap = snapshot or Snapshot(paths)
    _require_results(snap)
    dest = os.path.abspath(dest)
    if snap.out_dir and os.path.realpath(dest) == os.path.realpath(snap.out_dir):
        raise ConfigError(f"--to {dest}: that is the batch's own output folder")
    os.makedirs(dest, exist_ok=True)
    res = _result(snap, dest)
    reserved = (MANIFEST_CSV, MANIFEST_JSONL) if manifest else ()
    namer = entry_namer(snap, name_template, reserved)
    made: set[str] = {dest}

    def visit(item: ItemView, name: str) -> str | None:
        target = os.path.join(dest, *name.split("/"))
        folder = os.path.dirname(target)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        src_path = os.path.join(snap.out_dir, item.record["out"])  # type: ignore[arg-type,index]
        want = item.record.get("sha256")  # type: ignore[union-attr]
        tmp = tmp_name(target)
        try:
            try:
                os.link(src_path, tmp)
                linked = True
            except FileNotFoundError:
                return "missing"
            except OSError:
                linked = False
            if linked:  # the link is the same inode: verifying it verifies what we publish
                with open(tmp, "rb") as fh:
                    if item.record.get("bytes") is not None and os.fstat(fh.fileno()).st_size != item.record["bytes"]:  # type: ignore[union-attr]
                        raise Changed("size")
                    n, _, _ = copy_verified(fh, None, want)
                res.linked += 1
            else:
                src, size = open_output(snap.out_dir, item.record)  # type: ignore[arg-type]
                if src is None:
                    return size  # type: ignore[return-value]
                with src, open(tmp, "xb") as out:
                    n, _, _ = copy_verified(src, out, want)
                    out.flush()
                    os.fsync(out.fileno())
                res.copied += 1
            os.replace(tmp, target)
        except Changed:
            _unlink(tmp)
            return "changed"
        except BaseException:
            _unlink(tmp)
            raise
        res.exported_bytes += n
        return None

    csv_tmp, jsonl_tmp = tmp_name(os.path.join(dest, MANIFEST_CSV)), tmp_name(os.path.join(dest, MANIFEST_JSONL))
    try:
        with open(csv_tmp, "wb") as cf, open(jsonl_tmp, "wb") as jf:
            rows = ManifestWriter(list(snap.meta_keys), cf, jf) if manifest else None
            _selection(snap, namer, visit, res, rows)
            _require_exported(snap, res, manifest)
            if rows is not None:
                rows.close()
                for f in (cf, jf):
                    f.flush()
                    os.fsync(f.fileno())
        if manifest:
            os.replace(csv_tmp, os.path.join(dest, MANIFEST_CSV))
            os.replace(jsonl_tmp, os.path.join(dest, MANIFEST_JSONL))
            res.files = [MANIFEST_CSV, MANIFEST_JSONL]
    finally:
        _unlink(csv_tmp)
        _unlink(jsonl_tmp)
    for folder in made:
        fsync_dir(folder)
    return res


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
