"""The ASGI application: routes under /api/v1, live events (WebSocket, SSE), /metrics, the
dashboard at /, the token check, JSON errors, and `serve` (uvicorn on a socket bound here)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

from fastapi import FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from batchcli import __version__
from batchcli.engine.store import Store
from batchcli.errors import (
    BatchcliError,
    BatchLocked,
    BatchNotFound,
    ConfigError,
    InvalidTransition,
    NothingToExport,
)
from batchcli.server import files, routes
from batchcli.server.events import Hub
from batchcli.server.security import PathGuard, ServerConfig, is_loopback, token_ok
from batchcli.server.uploads import TooLarge

log = logging.getLogger("batchcli.server")

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/api/v1"
SSE_PING = 15.0
"""Seconds between keep-alive comments on an idle SSE stream."""
EVENT_TYPES = ("started", "progress", "item_completed", "item_failed", "paused", "finished", "removed")


@dataclass
class Context:
    cfg: ServerConfig
    store: Store
    guard: PathGuard
    hub: Hub


def _status_of(exc: BatchcliError) -> int:
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, (BatchNotFound, NothingToExport)):
        return 404
    if isinstance(exc, (InvalidTransition, BatchLocked)):
        return 409
    if isinstance(exc, ConfigError):
        return 400
    return 409 if exc.exit_code in (3, 4) else 400


def _error(status: int, msg: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": msg, "status": status}, status_code=status, headers=headers)


class Gate:
    """ASGI middleware, before anything else: what a browser on another site could make this
    server do is refused.

    - Without a token, the Host a request was sent to must be a loopback name (a page that
      rebinds its own name to 127.0.0.1 gets 403).
    - A browser's POST, DELETE or WebSocket from another origin (its `Origin` header) is 403
      unless that origin was named with --cors.
    - With a token, /api and /metrics need `Authorization: Bearer T` (or `?token=T`, for what a
      browser cannot add headers to: links, images, EventSource, WebSocket), else 401."""

    def __init__(self, app: Any, token: str | None, cors: list[str]):
        self.app = app
        self.token = token
        self.cors = set(cors)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        host = headers.get(b"host", b"").decode("latin-1")
        problem = None
        if not self.token and not is_loopback(urlsplit("//" + host).hostname or ""):
            problem = 403, f"Host {host!r} is not a loopback name; serving other names needs a token"
        origin = headers.get(b"origin", b"").decode("latin-1")
        if problem is None and origin and (scope["type"] == "websocket" or scope.get("method") not in SAFE) \
                and origin not in self.cors and urlsplit(origin).netloc != host:
            problem = 403, f"a request from the page of {origin} is refused (--cors {origin} allows it)"
        if problem is None and self.token and (scope["path"].startswith("/api/") or scope["path"] == "/metrics") \
                and scope.get("method") != "OPTIONS" and not token_ok(_presented(scope), self.token):
            problem = 401, "missing or wrong token: send Authorization: Bearer TOKEN"
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 4000 + problem[0], "reason": problem[1][:120]})
        else:  # a WebSocket handshake is refused with the same HTTP status and body
            extra = {"WWW-Authenticate": "Bearer"} if problem[0] == 401 else None
            await _error(problem[0], problem[1], extra)(scope, receive, send)


SAFE = ("GET", "HEAD", "OPTIONS")
"""Methods a page of another site may send without being asked where it comes from."""


def _presented(scope: dict) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == b"authorization":
            kind, _, value = v.decode("latin-1").partition(" ")
            if kind.lower() == "bearer":
                return value.strip()
    from urllib.parse import parse_qs

    got = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return got[-1] if got else None


def create_app(cfg: ServerConfig) -> FastAPI:
    from fastapi_offline import FastAPIOffline

    store = Store(cfg.home, wait_for_starts=False)  # resolved in the event loop: never waits for a `start`
    os.makedirs(store.home, exist_ok=True)
    ctx = Context(cfg, store, PathGuard(cfg.roots, store.home), Hub(store))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.hub.loop = asyncio.get_running_loop()
        yield
        await ctx.hub.close_streams()

    app = FastAPIOffline(title="batchcli", version=__version__, lifespan=lifespan, redoc_url=None,
                         description="Batches of image operations with a durable journal. "
                                     "Errors are {\"error\": \"...\", \"status\": N}.")
    app.state.ctx = ctx
    if cfg.cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Gate, token=cfg.token, cors=cfg.cors)

    @app.exception_handler(BatchcliError)
    async def batchcli_error(request: Request, exc: BatchcliError) -> JSONResponse:
        return _error(_status_of(exc), ctx.guard.scrub(str(exc)))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")) or "request"
        return _error(400, f"{where}: {err.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error (the server's log has the details)")

    app.include_router(routes.router, prefix=PREFIX)
    app.include_router(files.router, prefix=PREFIX)

    @app.get(PREFIX + "/info")
    def info() -> dict[str, Any]:
        """What the dashboard needs to know: version, allowed roots, upload caps."""
        return {"version": __version__, "roots": ctx.guard.roots, "token_required": bool(cfg.token),
                "max_upload": cfg.max_upload, "max_upload_files": cfg.max_files}

    @app.websocket(PREFIX + "/batches/{batch}/events")
    async def batch_events(ws: WebSocket, batch: str, since: Optional[str] = None) -> None:
        """One batch's events as JSON messages until the `finished` of its current run; `since=SEQ`
        replays the records after SEQ first. An unknown batch is 404, a bad `since` 400, a
        damaged batch 409, as over HTTP."""
        try:
            seq = _since_seq(since)
            paths = routes.whole(ctx, batch)
        except BatchcliError as exc:
            await _deny(ws, _status_of(exc), ctx.guard.scrub(str(exc)))
            return
        await ws.accept()
        sub = await asyncio.to_thread(ctx.hub.subscribe, paths, seq)
        ctx.hub.ensure_polling()
        watcher = asyncio.create_task(_drain(ws))
        closing = asyncio.create_task(ctx.hub.closing.wait())
        ctx.hub.streams += 1
        try:
            while True:
                getter = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait({getter, watcher, closing}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    if closing in done:
                        await ws.close(code=1001, reason="the server is shutting down")
                    return
                kind, text, _seq = getter.result()
                if kind == "overflow":
                    await ws.close(code=1013, reason="too slow: reconnect with ?since=SEQ")
                    return
                await ws.send_text(text)
                if kind in ("finished", "removed"):
                    await ws.close(code=1000)
                    return
        except (WebSocketDisconnect, RuntimeError, ConnectionError):
            return
        finally:
            watcher.cancel()
            closing.cancel()
            ctx.hub.unsubscribe(sub)
            ctx.hub.stream_ended()

    @app.get(PREFIX + "/events", response_class=StreamingResponse)
    async def all_events(request: Request, types: Optional[str] = Query(None)) -> StreamingResponse:
        """Server-Sent Events for every batch of the home (`types=progress,finished` to narrow)."""
        wanted = None
        if types:
            wanted = frozenset(t.strip() for t in types.split(",") if t.strip())
            bad = sorted(wanted - set(EVENT_TYPES))
            if bad:
                raise ConfigError(f"types {','.join(bad)}: expected some of {', '.join(EVENT_TYPES)}")
        sub = await asyncio.to_thread(ctx.hub.subscribe, None, None, wanted)
        ctx.hub.ensure_polling()

        async def stream():
            ctx.hub.streams += 1
            closing = asyncio.ensure_future(ctx.hub.closing.wait())
            try:
                yield b"retry: 2000\n\n"
                while True:
                    getter = asyncio.ensure_future(sub.queue.get())
                    done, _ = await asyncio.wait({getter, closing}, timeout=SSE_PING,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        if closing in done:  # the server stops: the stream ends (the browser reconnects)
                            return
                        yield b": ping\n\n"
                        continue
                    kind, text, _ = getter.result()
                    if kind == "overflow":
                        return
                    yield f"data: {text}\n\n".encode()
            finally:
                closing.cancel()
                ctx.hub.unsubscribe(sub)
                ctx.hub.stream_ended()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics(since: Optional[str] = None) -> PlainTextResponse:
        """The `batchcli stats` figures in the Prometheus text format (`since=30d`: a window)."""
        from batchcli.results.stats import home_stats, prometheus_text
        from batchcli.units import parse_age

        window = parse_age(since, "since") if since else None
        return PlainTextResponse(prometheus_text(home_stats(ctx.store, window)), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _document(app)
    return app


def _since_seq(since: str | None) -> int | None:
    if since is None:
        return None
    try:
        return int(since)
    except ValueError:
        raise ConfigError(f"since {since[:40]!r}: expected a journal seq (a whole number)") from None


async def _deny(ws: WebSocket, status: int, msg: str) -> None:
    """Refuse a WebSocket handshake with an HTTP status and the JSON error, as over HTTP (a
    server without the denial-response extension can only close it: code 4000 + status)."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(_error(status, msg))
    else:
        await ws.close(code=4000 + status, reason=msg[:120])


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends; returns when it goes away."""
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
    except Exception:
        return


def _document(app: FastAPI) -> None:
    """The request bodies that handlers read by hand (streamed, capped) go into the OpenAPI
    document's components, with the bearer token scheme."""
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = base()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in routes.SCHEMAS:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas[model.__name__] = schema
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is a one-line error, not a log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: {exc.strerror}") from None
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets (else each response's
    # body waits 40 ms for the client's delayed ACK of its headers)
    sock = socket.socket(info[0][0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(info[0][4])
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def serve(cfg: ServerConfig, on_ready=None) -> None:
    """Run until SIGINT/SIGTERM. `on_ready(url)` is called once the socket is bound."""
    import uvicorn

    cfg.check()
    sock = bind(cfg.host, cfg.port)
    port = sock.getsockname()[1]
    app = create_app(cfg)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, ws_ping_interval=20,
                            proxy_headers=False, server_header=False)
    hub = app.state.ctx.hub

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Optional[list[socket.socket]] = None) -> None:
            await hub.close_streams()  # else uvicorn waits for them, then cancels them with a traceback
            await super().shutdown(sockets)

    server = Server(config)
    if on_ready is not None:
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        on_ready(f"http://{host}:{port}")
    server.run(sockets=[sock])
