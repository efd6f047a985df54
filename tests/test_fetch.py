"""URL inputs against a real HTTP server on 127.0.0.1: statuses, retry, timeout, size, type."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
from conftest import cli

from batchcli.errors import ItemError
from batchcli.imaging.imageio import Limits
from batchcli.inputs import fetch
from batchcli.units import fmt_bytes

PNG = cv2.imencode(".png", np.full((16, 16, 3), (40, 120, 200), np.uint8))[1].tobytes()
BIG = PNG + b"\0" * 4096  # over the 1 KiB limit the tests use
SLOW_SECONDS = 3


class Handler(BaseHTTPRequestHandler):
    hits: Counter = Counter()

    def log_message(self, *args):  # keep the test output clean
        pass

    def _send(self, code: int, body: bytes, ctype: str | None = "image/png", length: bool = True, headers=()):
        self.send_response(code)
        if ctype:
            self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        Handler.hits[path] += 1
        try:
            if path == "/good.png":
                self._send(200, PNG)
            elif path == "/disguised.png":  # a wrong type, but the bytes are a PNG
                self._send(200, PNG, "text/html; charset=utf-8")
            elif path == "/page.jpg":
                self._send(200, b"<!doctype html><html><body>login required</body></html>" * 4, "text/html")
            elif path == "/login.jpg":  # a login page served under the image's own type
                self._send(200, b"\n  <!DOCTYPE html>\n<html><body>sign in</body></html>" * 4, "image/jpeg")
            elif path == "/untyped.jpg":  # no Content-Type at all
                self._send(200, b"<html><head><title>404</title></head></html>" * 4, None)
            elif path == "/big.png":
                self._send(200, BIG)
            elif path == "/big-stream.png":  # no Content-Length: only the streaming cap can stop it
                self._send(200, BIG, length=False)
                self.close_connection = True
            elif path == "/always500.png":
                self._send(500, b"boom", "text/plain")
            elif path.startswith("/flaky"):  # 500 on the first request, then the image
                if Handler.hits[path] == 1:
                    self._send(500, b"boom", "text/plain")
                else:
                    self._send(200, PNG)
            elif path.startswith("/busy"):
                if Handler.hits[path] == 1:
                    self._send(429, b"slow down", "text/plain", headers=[("Retry-After", "0")])
                else:
                    self._send(200, PNG)
            elif path == "/slow.png":
                time.sleep(SLOW_SECONDS)
                self._send(200, PNG)
            elif path == "/gone.png":
                self._send(410, b"gone", "text/plain")
            else:
                self._send(404, b"not here", "text/plain")
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.block_on_close = False
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setenv("BATCHCLI_FETCH_TIMEOUT", "0.5")
    monkeypatch.setattr(fetch, "BACKOFF", 0.01)


LIMITS = Limits(max_file_size=1024, max_pixels=10_000)


def fails(url: str) -> ItemError:
    with pytest.raises(ItemError) as info:
        fetch.fetch_url(url, LIMITS)
    return info.value


def test_good_and_disguised_images_download(server, quick):
    assert fetch.fetch_url(f"{server}/good.png", LIMITS) == PNG
    assert fetch.fetch_url(f"{server}/disguised.png?x=1", LIMITS) == PNG


@pytest.mark.parametrize("path, error_class, message", [
    ("/missing.png", "http", "HTTP 404 Not Found"),
    ("/gone.png", "http", "HTTP 410 Gone"),
    ("/always500.png", "network", "HTTP 500 Internal Server Error (after 2 attempts)"),
    ("/page.jpg", "unsupported", "HTTP 200 OK with Content-Type text/html: not an image"),
    ("/login.jpg", "unsupported", "HTTP 200 OK with Content-Type image/jpeg: an HTML page, not an image"),
    ("/untyped.jpg", "unsupported", "HTTP 200 OK with Content-Type (none): an HTML page, not an image"),
    ("/big.png", "too_large", f"HTTP 200 OK: Content-Length {fmt_bytes(len(BIG))}, over --max-file-size 1K"),
    ("/big-stream.png", "too_large", "HTTP 200 OK: body over --max-file-size 1K"),
])
def test_failures_are_classified_with_the_status(server, quick, path, error_class, message):
    err = fails(server + path)
    assert (err.error_class, str(err)) == (error_class, message)
    assert err.transient == (error_class == "network")


def test_transient_failures_are_retried_once(server, quick):
    assert fetch.fetch_url(f"{server}/flaky-unit.png", LIMITS) == PNG
    assert fetch.fetch_url(f"{server}/busy-unit.png", LIMITS) == PNG  # 429 with Retry-After
    assert Handler.hits["/flaky-unit.png"] == Handler.hits["/busy-unit.png"] == 2
    assert Handler.hits["/missing.png"] <= 1  # a 4xx is never retried


def test_timeout_and_refused_connection(server, quick):
    t0 = time.monotonic()
    err = fails(f"{server}/slow.png")
    assert err.error_class == "network"
    assert str(err) == "timed out after 0.5 s (BATCHCLI_FETCH_TIMEOUT) (after 2 attempts)"
    assert time.monotonic() - t0 < SLOW_SECONDS
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = fails(f"http://127.0.0.1:{port}/x.png")
    assert err.error_class == "network" and str(err).startswith("connection failed: ")


def test_url_items_through_the_cli(server, tmp_path, home):
    """One real batch: each URL ends as it should, with its class and the status in its message."""
    urls = [f"{server}/good.png", f"{server}/missing.png", f"{server}/flaky-cli.png", f"{server}/always500.png",
            f"{server}/slow.png", f"{server}/big.png", f"{server}/page.jpg", f"{server}/good.png?v=2"]
    out = tmp_path / "out"
    r = cli("start", *urls, "--out", str(out), "--max-file-size", "1K", "--retries", "0", "-w", "3",
            home=home, env={"BATCHCLI_FETCH_TIMEOUT": "1"})
    assert r.returncode == 1, r.stderr  # some items failed
    rows = {row["src"]: row for row in json.loads(cli("status", "--items", "--json", home=home).stdout)["items"]}
    got = {u.removeprefix(server): (rows[u]["status"], rows[u]["error_class"], rows[u]["error"]) for u in urls}
    assert got == {
        "/good.png": ("completed", None, None),
        "/missing.png": ("failed", "http", f"{server}/missing.png: HTTP 404 Not Found"),
        "/flaky-cli.png": ("completed", None, None),
        "/always500.png": ("failed", "network",
                           f"{server}/always500.png: HTTP 500 Internal Server Error (after 2 attempts)"),
        "/slow.png": ("failed", "network", f"{server}/slow.png: timed out after 1 s (BATCHCLI_FETCH_TIMEOUT) "
                                           "(after 2 attempts)"),
        "/big.png": ("failed", "too_large",
                     f"{server}/big.png: HTTP 200 OK: Content-Length {fmt_bytes(len(BIG))}, over --max-file-size 1K"),
        "/page.jpg": ("failed", "unsupported",
                      f"{server}/page.jpg: HTTP 200 OK with Content-Type text/html: not an image"),
        "/good.png?v=2": ("completed", None, None),
    }
    assert sorted(p.name for p in out.iterdir()) == ["flaky-cli.png", "good.png", "good_2.png"]
    assert cv2.imread(str(out / "good.png")).shape == (16, 16, 3)
