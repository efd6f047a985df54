"""Download one http(s) input inside a worker: a timeout, the --max-file-size limit, a short
transient retry, and one-line errors that carry the HTTP status.

Error classes: ``http`` for 4xx answers (permanent: retrying will not help), ``network`` for 5xx,
429, timeouts and connection failures (transient: the runner's --retries may try again),
``too_large`` for a body over the limit, ``unsupported`` for a body that is not an image."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit, urlunsplit

from batchcli.errors import ItemError
from batchcli.units import env_seconds, fmt_bytes

DEFAULT_TIMEOUT = 30.0
"""Seconds without progress (connecting, or between two reads) before a download fails.
Override with the environment variable BATCHCLI_FETCH_TIMEOUT."""

TOTAL_TIMEOUT_FACTOR = 10
"""A whole download may take at most this many timeouts, so a server that trickles bytes ends too."""

ATTEMPTS = 2
"""Tries per call for transient failures (5xx, 429, timeout, connection), before the runner's --retries."""

BACKOFF = 0.5
"""Seconds before the second try (doubled for each further try); a Retry-After up to MAX_WAIT wins."""

MAX_WAIT = 5.0
CHUNK = 1 << 16
SNIFF_BYTES = 64
_IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


class _Transient(Exception):
    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


def timeout_seconds() -> float:
    return env_seconds("BATCHCLI_FETCH_TIMEOUT", DEFAULT_TIMEOUT)


def fetch_url(url: str, limits) -> bytes:
    """The body of `url` as bytes, or ItemError with a one-line reason. `limits` has max_file_size."""
    timeout = timeout_seconds()
    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _get(url, limits.max_file_size, timeout, getattr(limits, "file_size_text", None))
        except _Transient as exc:
            last = str(exc)
            if attempt < ATTEMPTS:
                wait = BACKOFF * 2 ** (attempt - 1)
                if exc.wait is not None:
                    wait = max(wait, min(exc.wait, MAX_WAIT))
                time.sleep(wait)
    raise ItemError("network", f"{last} (after {ATTEMPTS} attempts)")


def _get(url: str, max_size: int, timeout: float, shown: str | None = None) -> bytes:
    """`shown`: --max-file-size as it was given."""
    from batchcli import __version__

    req = urllib.request.Request(_ascii_url(url), headers={
        "User-Agent": f"batchcli/{__version__}", "Accept": "image/*, */*;q=0.5"})
    deadline = time.monotonic() + timeout * TOTAL_TIMEOUT_FACTOR
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        status = f"HTTP {exc.code} {exc.reason}".strip()
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Transient(status, _retry_after(exc.headers.get("Retry-After"))) from None
        raise ItemError("http", status) from None
    except urllib.error.URLError as exc:
        raise _Transient(_reason(exc.reason, timeout)) from None
    except TimeoutError as exc:
        raise _Transient(_reason(exc, timeout)) from None
    except (OSError, ValueError) as exc:  # ConnectionResetError, http.client errors, a bad URL
        raise _Transient(f"connection failed: {exc}") from None
    with resp:
        status = f"HTTP {resp.status} {resp.reason}".strip()
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_size:
            raise ItemError("too_large", f"{status}: Content-Length {fmt_bytes(int(length))}, over --max-file-size {shown or fmt_bytes(max_size, exact=True)}")
        ctype = (resp.headers.get_content_type() or "").lower() if resp.headers.get("Content-Type") else ""
        try:
            data = _read(resp, max_size, ctype, status, deadline, timeout, shown)
        except TimeoutError as exc:
            raise _Transient(f"{status}, then " + _reason(exc, timeout)) from None
        except (OSError, ValueError) as exc:  # IncompleteRead, reset mid-body
            raise _Transient(f"{status}, then the connection broke: {type(exc).__name__}") from None
    return data


def _read(resp, max_size: int, ctype: str, status: str, deadline: float, timeout: float,
          shown: str | None = None) -> bytes:
    buf = bytearray()
    checked = not ctype or ctype.startswith(_IMAGE_TYPES)
    while True:
        chunk = resp.read(CHUNK if checked else SNIFF_BYTES - len(buf))
        if not chunk:
            break
        buf += chunk
        if len(buf) > max_size:
            raise ItemError("too_large", f"{status}: body over --max-file-size {shown or fmt_bytes(max_size, exact=True)}")
        if not checked and len(buf) >= SNIFF_BYTES:
            _check_type(bytes(buf), ctype, status)
            checked = True
        if time.monotonic() > deadline:
            raise TimeoutError(f"download took over {timeout * TOTAL_TIMEOUT_FACTOR:g} s")
    if not checked:
        _check_type(bytes(buf), ctype, status)
    if _looks_html(bytes(buf[:SNIFF_BYTES])):  # a login or error page, whatever it was labelled
        raise ItemError("unsupported", f"{status} with Content-Type {ctype or '(none)'}: an HTML page, not an image")
    return bytes(buf)


def _check_type(head: bytes, ctype: str, status: str) -> None:
    """A body announced as something other than an image is accepted only if its bytes are one."""
    from batchcli.imaging.imageio import magic_format

    if magic_format(head) is None:
        raise ItemError("unsupported", f"{status} with Content-Type {ctype}: not an image")


_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")


def _looks_html(head: bytes) -> bool:
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS)


def _reason(reason, timeout: float) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)) or "timed out" in str(reason):
        detail = str(reason)
        if detail and detail != "timed out" and "took over" in detail:
            return f"timed out: {detail}"
        return f"timed out after {timeout:g} s (BATCHCLI_FETCH_TIMEOUT)"
    if isinstance(reason, OSError) and reason.strerror:
        return f"connection failed: {reason.strerror}"
    return f"connection failed: {reason}"


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _ascii_url(url: str) -> str:
    """Percent-encode what urllib cannot send (spaces, non-ASCII), leaving existing escapes alone."""
    parts = urlsplit(url)
    host = parts.netloc
    try:
        host.encode("ascii")
    except UnicodeEncodeError:
        host = parts.netloc.encode("idna").decode("ascii")
    safe = "/%:@!$&'()*+,;=~-._"
    return urlunsplit((parts.scheme, host, quote(parts.path, safe=safe),
                       quote(parts.query, safe=safe + "?"), ""))
