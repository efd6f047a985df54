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

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from batchcli.atomic import fsync_dir, tmp_name
from batchcli.engine.liveness import note_export
from batchcli.engine.store import BatchPaths
from batchcli.errors import ConfigError, NothingToExport
from batchcli.results.dest import check_file_target
from batchcli.results.manifest import ManifestWriter, manifest_row
from batchcli.results.names import check_template, entry_namer
from batchcli.results.snapshot import MANIFEST_CSV, MANIFEST_JSONL, Changed, ItemView, Snapshot, copy_verified, open_output
from batchcli.results.zipstream import DEFLATED, ZipStream

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


def _selection(snap: Snapshot, namer: Callable[[ItemView, dict[str, Any] | None], str] | None,
               visit: Callable[[ItemView, dict[str, Any], str], str | None], res: ExportResult,
               rows: ManifestWriter | None) -> None:
    """For each output of each item (one per variant): decide its entry and let `visit` write
    it (returns None when written, or 'missing' / 'changed'); feed the manifest, one row per
    output (one per item that has none)."""
    for item in snap:
        outputs = snap.outputs(item)
        if not outputs and rows is not None:
            rows.write(manifest_row(item, None, item.state))
            res.manifest_rows += 1
        for out in outputs:
            entry = None
            status = item.state
            name = namer(item, out) if namer else out["out"]
            problem = visit(item, out, name)
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
                rows.write(manifest_row(item, entry, status, problem, out))
                res.manifest_rows += 1


def export_zip(paths: BatchPaths, zip_path: str, name_template: str | None = None,
               manifest: bool = True, snapshot: Snapshot | None = None) -> ExportResult:
    """Write the ZIP atomically (temp file next to it, then rename)."""
    if name_template:
        check_template(name_template)
    check_file_target(paths, "--zip", zip_path)
    snap = snapshot or Snapshot(paths)
    _require_results(snap)
    zip_path = os.path.abspath(zip_path)
    folder = os.path.dirname(zip_path)
    os.makedirs(folder, exist_ok=True)
    note_export(paths, "file", zip_path)  # and the temp files a killed export left there go
    res = _result(snap, zip_path)
    reserved = (MANIFEST_CSV, MANIFEST_JSONL) if manifest else ()
    namer = entry_namer(snap, name_template, reserved)
    tmp = tmp_name(zip_path)
    with open(tmp, "w+b") as fh, tempfile.TemporaryFile(dir=folder) as csv_fh, \
            tempfile.TemporaryFile(dir=folder) as jsonl_fh:
        try:
            zs = ZipStream(fh, spool_dir=folder)
            rows = ManifestWriter(list(snap.meta_keys), csv_fh, jsonl_fh, bool(snap.variants)) if manifest else None

            def visit(item: ItemView, out: dict[str, Any], name: str) -> str | None:
                src, size = open_output(snap.out_dir, out)  # type: ignore[arg-type]
                if src is None:
                    return size  # type: ignore[return-value]
                want = out.get("sha256")
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
            fh.close()
            os.replace(tmp, zip_path)
        except BaseException:
            fh.close()
            _unlink(tmp)
            raise
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
    check_file_target(paths, "--manifest", path)
    snap = snapshot or Snapshot(paths)
    _require_results(snap)
    path = os.path.abspath(path)
    res = _result(snap, path)
    namer = entry_namer(snap, name_template)
    tmp = tmp_name(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    note_export(paths, "file", path)
    try:
        with open(tmp, "wb") as fh:
            rows = ManifestWriter(list(snap.meta_keys), fh if fmt == "csv" else None, fh if fmt == "jsonl" else None,
                                  bool(snap.variants))

            def visit(item: ItemView, out: dict[str, Any], name: str) -> str | None:
                src, size = open_output(snap.out_dir, out)  # type: ignore[arg-type]
                if src is None:
                    return size  # type: ignore[return-value]
                with src:
                    try:
                        copy_verified(src, None, out.get("sha256"))
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
    otherwise; every file appears atomically (temp name, verify, rename). Nothing is written
    through a link inside the folder (results/dest.py), and a target that is one of the batch's
    inputs (same device and inode) is refused before anything is written."""
    from batchcli.results.dest import Dest, split, tmp_in

    if name_template:
        check_template(name_template)
    snap = snapshot or Snapshot(paths)
    _require_results(snap)
    dest = os.path.abspath(dest)
    reserved = (MANIFEST_CSV, MANIFEST_JSONL) if manifest else ()
    _check_dest(snap, dest, entry_namer(snap, name_template, reserved))
    note_export(paths, "dir", dest)
    res = _result(snap, dest)
    namer = entry_namer(snap, name_template, reserved)
    with Dest(dest) as out:

        def visit(item: ItemView, rec: dict[str, Any], name: str) -> str | None:
            folder, base = split(name)
            fd = out.folder(folder)
            src_path = os.path.join(snap.out_dir, rec.get("shard") or rec["out"])  # type: ignore[arg-type]
            want = rec.get("sha256")
            tmp = tmp_in(base)
            try:
                try:
                    linked = False  # a member of a tar shard is copied out, below
                    if not rec.get("shard"):
                        os.link(src_path, tmp, dst_dir_fd=fd)
                        linked = True
                except FileNotFoundError:
                    return "missing"
                except OSError:
                    linked = False
                if linked:  # the link is the same inode: verifying it verifies what we publish
                    with os.fdopen(os.open(tmp, os.O_RDONLY | _NOFOLLOW, dir_fd=fd), "rb") as fh:
                        if rec.get("bytes") is not None and os.fstat(fh.fileno()).st_size != rec["bytes"]:
                            raise Changed("size")
                        n, _, _ = copy_verified(fh, None, want)
                    res.linked += 1
                else:
                    src, size = open_output(snap.out_dir, rec)  # type: ignore[arg-type]
                    if src is None:
                        return size  # type: ignore[return-value]
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
                    with src, os.fdopen(os.open(tmp, flags, 0o644, dir_fd=fd), "wb") as dst:
                        n, _, _ = copy_verified(src, dst, want)
                        dst.flush()
                        os.fsync(dst.fileno())
                    res.copied += 1
                os.replace(tmp, base, src_dir_fd=fd, dst_dir_fd=fd)  # a link named `base` is replaced, not followed
            except Changed:
                _unlink_at(tmp, fd)
                return "changed"
            except BaseException:
                _unlink_at(tmp, fd)
                raise
            res.exported_bytes += n
            return None

        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW
        csv_tmp, jsonl_tmp = tmp_in(MANIFEST_CSV), tmp_in(MANIFEST_JSONL)
        try:
            with os.fdopen(os.open(csv_tmp, flags, 0o644, dir_fd=out.root), "wb") as cf, \
                    os.fdopen(os.open(jsonl_tmp, flags, 0o644, dir_fd=out.root), "wb") as jf:
                rows = ManifestWriter(list(snap.meta_keys), cf, jf, bool(snap.variants)) if manifest else None
                _selection(snap, namer, visit, res, rows)
                _require_exported(snap, res, manifest)
                if rows is not None:
                    rows.close()
                    for f in (cf, jf):
                        f.flush()
                        os.fsync(f.fileno())
            if manifest:
                for tmp, final in ((csv_tmp, MANIFEST_CSV), (jsonl_tmp, MANIFEST_JSONL)):
                    os.replace(tmp, final, src_dir_fd=out.root, dst_dir_fd=out.root)
                res.files = [MANIFEST_CSV, MANIFEST_JSONL]
        finally:
            _unlink_at(csv_tmp, out.root)
            _unlink_at(jsonl_tmp, out.root)
        out.fsync_all()
    return res


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
MAX_REPLACED = 1_000_000
"""Existing files an export into a folder checks against the batch's inputs (their identities
are held in memory, about 150 bytes each)."""


def _check_dest(snap: Snapshot, dest: str, namer: Callable[[ItemView, dict[str, Any] | None], str]) -> None:
    """Before anything is written to `dest`: not the batch's own output folder (by identity),
    no link among the folders the entries go to, and no entry that would replace one of the
    batch's inputs (same device and inode: a bind mount, a link). ConfigError (exit 2) otherwise."""
    from batchcli.inputs.discover import iter_items
    from batchcli.results.dest import lookup

    same = f"--to {dest}: that is the batch's own output folder"
    if snap.out_dir and os.path.realpath(dest) == os.path.realpath(snap.out_dir):
        raise ConfigError(same)
    try:
        here, there = os.stat(dest), os.stat(snap.out_dir or "")
        if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
            raise ConfigError(same + " (the same folder by device and inode)")
    except OSError:
        pass
    if not os.path.isdir(dest):
        return  # made by the export: nothing in it can be an input or a link
    there: dict[tuple[int, int], str] = {}  # identities of the files the export would replace
    for item in snap:
        for out in snap.outputs(item):
            name = namer(item, out)
            link, st = lookup(dest, name)
            if link is not None:
                raise ConfigError(f"--to {dest}: {link} is a symbolic link or a file, not a folder; export never "
                                  "writes through a link inside the destination (remove it, or export elsewhere)")
            if st is not None and len(there) < MAX_REPLACED:
                there.setdefault((st.st_dev, st.st_ino), os.path.join(dest, name))
    if not there:
        return
    for rec in iter_items(snap.paths.items):
        hit = there.get((rec.get("dev"), rec.get("ino")))  # type: ignore[arg-type]
        if hit is not None:
            raise ConfigError(f"--to {dest}: {hit} is the batch's input {rec['src']} (the same file, device "
                              f"{rec['dev']} inode {rec['ino']}); exporting would replace it")


def _unlink_at(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
