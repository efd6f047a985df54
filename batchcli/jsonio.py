"""JSON that carries any file name.

On POSIX a file name is bytes; Python gives the bytes that are not UTF-8 back as lone
surrogates (os.fsdecode, "surrogateescape"), which orjson refuses to write or read. Records
holding such a name are written with them escaped (`"\\udcff"`: valid JSON; `jq` shows U+FFFD)
and read back to the same surrogates, so the name reaches the file system byte for byte. Every
other record takes orjson's fast path unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(obj: Any, sort_keys: bool = False) -> bytes:
    """Compact JSON bytes (orjson's; the escaped form only for a record with such a name)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:
        return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), sort_keys=sort_keys).encode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; escaped lone surrogates come back as the surrogates they were."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:  # (malformed JSON fails here too, as ValueError)
        return json.loads(data)


def text(obj: Any) -> str:
    """JSON text for a stream: UTF-8 as is, names that are not UTF-8 escaped."""
    s = json.dumps(obj, ensure_ascii=False, default=str)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = json.dumps(obj, ensure_ascii=True, default=str)
    return s
