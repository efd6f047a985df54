"""Files sent with a request: multipart uploads streamed to the batch's uploads/ folder (each
capped as it arrives, never held in memory) and base64 images from JSON; names sanitised."""

from __future__ import annotations

import base64
import binascii
import os
import re
import unicodedata
from collections.abc import AsyncIterator
from typing import Any

from batchcli.errors import BatchcliError, ConfigError


def format_bytes(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n} bytes"


class TooLarge(BatchcliError):
    """An upload over --max-upload, or more files than --max-upload-files (HTTP 413)."""


FIELD_CAP = 1 << 20
"""Bytes of one non-file form field (a pipeline, a name)."""


def safe_name(raw: str | None, taken: set[str]) -> str:
    """A file name for an upload: the last path component, NFC, no control or odd characters,
    no leading dot, at most 120 characters, unique in `taken` (compared case-insensitively)."""
    name = re.split(r"[\\/]", raw or "")[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(c if c.isalnum() or c in "._-+ ()" else "_" for c in name).strip(" .") or "file"
    stem, ext = os.path.splitext(name)
    stem, ext = stem[:100] or "file", ext[:20]
    out, n = stem + ext, 1
    while out.lower() in taken:
        n += 1
        out = f"{stem}_{n}{ext}"
    taken.add(out.lower())
    return out


class Uploads:
    """Writes the files of one request into `folder`, enforcing the caps."""

    def __init__(self, folder: str, max_bytes: int, max_files: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.taken: set[str] = set()
        self.count = 0
        self.paths: list[str] = []  # the files written, in the order they came

    def _open(self, raw_name: str | None) -> tuple[str, int]:
        self.count += 1
        if self.count > self.max_files:
            raise TooLarge(f"more than {self.max_files} files in one request (--max-upload-files)")
        os.makedirs(self.folder, exist_ok=True)
        name = safe_name(raw_name, self.taken)
        path = os.path.join(self.folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.paths.append(path)
        return name, fd

    def _over(self, name: str) -> TooLarge:
        return TooLarge(f"upload {name}: larger than the {format_bytes(self.max_bytes)} allowed per file (--max-upload)")

    def add_base64(self, data: str, raw_name: str | None) -> str:
        """One base64 image from JSON; returns its file name."""
        if len(data) > self.max_bytes * 4 // 3 + 4:
            raise self._over(safe_name(raw_name, set()))
        try:
            blob = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"images: {safe_name(raw_name, set())}: not valid base64") from None
        name, fd = self._open(raw_name)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return name

    async def read_multipart(self, content_type: str, stream: AsyncIterator[bytes]) -> dict[str, list[str]]:
        """Stream a multipart/form-data body: file parts into the folder, the other fields
        returned (name -> values, in order)."""
        from python_multipart.multipart import MultipartParser, parse_options_header

        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise ConfigError("multipart body without a boundary")
        fields: dict[str, list[str]] = {}
        cur: dict[str, Any] = {}
        headers: dict[bytes, bytes] = {}
        hname = bytearray()
        hvalue = bytearray()
        errors: list[BaseException] = []

        def on_part_begin() -> None:
            headers.clear()
            cur.clear()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            hname.extend(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            hvalue.extend(data[start:end])

        def on_header_end() -> None:
            headers[bytes(hname).lower()] = bytes(hvalue)
            hname.clear()
            hvalue.clear()

        def on_headers_finished() -> None:
            _, opts = parse_options_header(headers.get(b"content-disposition", b""))
            field = opts.get(b"name", b"").decode("utf-8", "replace")
            filename = opts.get(b"filename")
            cur.update(field=field, size=0)
            if filename is not None:
                name, fd = self._open(filename.decode("utf-8", "replace"))
                cur.update(fd=fd, name=name)
            else:
                cur["buf"] = bytearray()

        def on_part_data(data: bytes, start: int, end: int) -> None:
            cur["size"] += end - start
            if "fd" in cur:
                if cur["size"] > self.max_bytes:
                    raise self._over(cur["name"])
                view = memoryview(data)[start:end]
                while view:
                    view = view[os.write(cur["fd"], view):]
            else:
                if cur["size"] > FIELD_CAP:
                    raise TooLarge(f"form field {cur['field']!r}: over {format_bytes(FIELD_CAP)}")
                cur["buf"].extend(data[start:end])

        def on_part_end() -> None:
            if "fd" in cur:
                os.close(cur.pop("fd"))
            elif "buf" in cur:
                fields.setdefault(cur["field"], []).append(cur["buf"].decode("utf-8", "replace"))

        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data, "on_part_end": on_part_end,
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_headers_finished": on_headers_finished})
        try:
            async for chunk in stream:
                parser.write(chunk)
            parser.finalize()
        except BatchcliError:
            raise
        except Exception as exc:  # a malformed body
            errors.append(exc)
        finally:
            if "fd" in cur:
                os.close(cur.pop("fd"))
        if errors:
            raise ConfigError("malformed multipart body")
        return fields
