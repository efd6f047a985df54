"""Manifest rows: one per output (one per item without variants), CSV or JSONL, with the item's
metadata flattened into columns."""

from __future__ import annotations

import csv
import io
from typing import IO, Any

from batchcli import jsonio
from batchcli.results.snapshot import ItemView, flatten_meta

# --------------------------------------------------------------------------------------------
# Manifest rows.

BASE_COLUMNS = ("i", "input", "rel", "status", "output", "bytes", "sha256", "ms", "error_class", "error")
VARIANT_COLUMNS = BASE_COLUMNS[:4] + ("variant",) + BASE_COLUMNS[4:]
"""The columns of a batch with variants: one row per variant output, named in `variant`."""


def manifest_row(item: ItemView, entry: str | None, status: str, problem: str | None = None,
                 output: dict[str, Any] | None = None) -> dict[str, Any]:
    """The row of one output of an item (`output`, an entry of its outputs; None: its record's)."""
    rec = item.record or {}
    done = item.state == "completed"
    out = output or rec
    row: dict[str, Any] = {
        "i": item.i, "input": item.src, "rel": item.rel, "status": status, "output": entry,
        "bytes": out.get("bytes") if done else None,
        "sha256": out.get("sha256") if done else None,
        "ms": rec.get("ms"),
        "error_class": rec.get("error_class") if item.state == "failed" else None,
        "error": rec.get("error") if item.state == "failed" else None,
    }
    if output is not None and output.get("variant"):
        row["variant"] = output["variant"]
    if problem:
        row["error_class"] = problem
        row["error"] = (f"output {out.get('out')} is missing" if problem == "missing"
                        else f"output {out.get('out')} changed since it was written (sha256 mismatch)")
    meta = {**(rec.get("meta") or {}), **((output or {}).get("meta") or {})} if done else None
    if meta:
        row["meta"] = meta
    return row


class ManifestWriter:
    """Streams rows to CSV and/or JSONL files (text, UTF-8)."""

    def __init__(self, meta_keys: list[str], csv_fh: IO[bytes] | None, jsonl_fh: IO[bytes] | None,
                 variants: bool = False):
        self.meta_keys = meta_keys
        self.columns = VARIANT_COLUMNS if variants else BASE_COLUMNS
        self.jsonl = jsonl_fh
        self._csv_text = None
        self._csv = None
        if csv_fh is not None:
            self._csv_text = io.TextIOWrapper(csv_fh, encoding="utf-8", errors="surrogateescape",  # names as their bytes
                                              newline="", write_through=True)
            self._csv = csv.writer(self._csv_text, lineterminator="\r\n")  # RFC 4180; cells with a CR are quoted too
            self._csv.writerow(list(self.columns) + [f"meta.{k}" for k in meta_keys])

    def write(self, row: dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.write(jsonio.dumps(row, sort_keys=True) + b"\n")
        if self._csv is not None:
            flat = flatten_meta(row["meta"]) if row.get("meta") else {}
            self._csv.writerow([_cell(row.get(c)) for c in self.columns] + [_cell(flat.get(k)) for k in self.meta_keys])

    def close(self) -> None:
        if self._csv_text is not None:
            self._csv_text.flush()
            self._csv_text.detach()


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(v: Any) -> Any:
    """A CSV cell. Text that a spreadsheet would run as a formula (it starts with = + - @, a
    tab or a carriage return) gets a leading apostrophe (OWASP, CSV injection)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and v.startswith(_FORMULA):
        return "'" + v
    return v
