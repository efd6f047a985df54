"""Helpers for the server tests and benchmarks: a real `batchcli serve` process on 127.0.0.1
(a free port, read from its first line of output), plain HTTP calls, WebSocket events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))


def need_serve_extra() -> None:
    for mod in ("fastapi", "uvicorn", "websockets", "python_multipart", "fastapi_offline"):
        pytest.importorskip(mod, reason="the serve extra is not installed")


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    home: str
    log: str

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_env(home) -> dict:
    env = dict(os.environ)
    env.pop("CI", None)
    env.pop("BATCHCLI_TOKEN", None)
    env.update(BATCHCLI_HOME=str(home), BATCHCLI_TEST_OPS="crashops",
               PYTHONPATH=os.pathsep.join(p for p in (TESTS, env.get("PYTHONPATH", "")) if p))
    return env


def serve_photos(tmp_path_factory, name: str, photos: int, *args) -> Server:
    """A server for a test module: `photos` PNGs in root/photos, the root its allowed folder
    (`server.root`), `args` its flags."""
    from crashops import make_pngs

    base = tmp_path_factory.mktemp(name)
    root = base / "root"
    make_pngs(root / "photos", photos)
    server = start_server(base / "home", root, *args)
    server.root = root  # type: ignore[attr-defined]
    return server


def start_server(home, root, *args, timeout: float = 30.0, env: dict | None = None) -> Server:
    """`batchcli serve --port 0 ARGS` run from `root` (the default allowed root)."""
    log = os.path.join(str(home), "..", f"serve-{time.monotonic_ns()}.log")
    os.makedirs(str(home), exist_ok=True)
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "batchcli", "serve", "--port", "0", *map(str, args)],
                            cwd=str(root), env={**server_env(home), **(env or {})}, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT)
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(log, "rb") as fh:
            text = fh.read().decode(errors="replace")
        if text.startswith("serving "):
            return Server(proc, text.split()[1], str(home), log)
        if proc.poll() is not None:
            raise AssertionError(f"batchcli serve exited {proc.returncode}: {text}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("batchcli serve did not start")


def call(url: str, method: str = "GET", body=None, headers: dict | None = None, data: bytes | None = None,
         timeout: float = 60) -> tuple[int, dict, bytes]:
    """One HTTP request: (status, response headers, body bytes); JSON `body` is encoded."""
    h = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("content-type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def jcall(url: str, method: str = "GET", body=None, headers: dict | None = None, **kw) -> tuple[int, dict]:
    status, _, raw = call(url, method, body, headers, **kw)
    return status, json.loads(raw) if raw else {}


def multipart(fields: list[tuple[str, str]], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body: (bytes, content type)."""
    boundary = "----batchcli-test-boundary"
    parts = []
    for name, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, filename, blob in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + blob + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def wait_status(server: Server, batch: str, states=("completed", "failed", "cancelled"), timeout: float = 60,
                headers: dict | None = None) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, s = jcall(f"{server.url}/api/v1/batches/{batch}", headers=headers)
        assert status == 200, s
        if s["status"] in states:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch} still {s['status']} after {timeout} s")
        time.sleep(0.05)


def ws_url(server: Server, path: str) -> str:
    return server.url.replace("http://", "ws://") + path


def ws_events(server: Server, batch: str, query: str = "", timeout: float = 60) -> list[dict]:
    """Every message of a batch's WebSocket until the server closes it."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    out = []
    with connect(ws_url(server, f"/api/v1/batches/{batch}/events{query}"), open_timeout=10) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                out.append(json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic()))))
            except ConnectionClosed:
                return out
            except TimeoutError:
                break
    raise AssertionError(f"the event stream did not end in {timeout} s; got {[e['type'] for e in out][-5:]}")
