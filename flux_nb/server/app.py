"""The local server's HTTP face: an app over the task table, its middleware, and the polling listener.

Routes live in ``server/routes/``; request models are built from ``flux_nb.protocol.MODELS``, so
every registered model has a route, invalid bodies get FastAPI's 422, and the OpenAPI schema is accurate.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flux_nb.server.config import ServerConfig
from flux_nb.server.engines import Engine, get_engine
from flux_nb.server.fault_injection import FaultCounter, FaultMiddleware
from flux_nb.server.outbound import Resolver, system_resolver
from flux_nb.server.routes import include_routes
from flux_nb.server.routes.meta import server_stats
from flux_nb.server.schemas import APIError, api_error_handler
from flux_nb.server.task_table import TaskTable

__all__ = ["CountAndLimit", "PollListener", "create_app", "server_stats"]


class BodyTooLarge(Exception):
    """A request body grew past the size limit while it was read."""


class CountAndLimit:
    """Pure ASGI middleware: counts requests by route, and reads each body whole before the app sees it.

    A declared Content-Length over ``max_body_bytes`` is refused before the body is read (413); a body
    sent without one (chunked) is counted as it arrives and refused once it passes the limit. A body
    that has not fully arrived ``body_timeout`` seconds after its head is answered 408 and the
    connection closed, so a client that stalls mid-body cannot hold a connection slot.
    """

    def __init__(self, app: ASGIApp, table: TaskTable, max_body_bytes: int, body_timeout: float) -> None:
        self.app, self.table, self.max_body_bytes, self.body_timeout = app, table, max_body_bytes, body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.table.stats.http_requests[f"{scope['method']} {scope['path'].split('/')[1]}"] += 1
        too_large = JSONResponse({"detail": f"request body over {self.max_body_bytes} bytes"}, status_code=413)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await too_large(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.body_timeout):
                body = await read_body(receive, self.max_body_bytes)
        except TimeoutError:
            late = f"request body not received within {self.body_timeout:g} s"
            await JSONResponse({"detail": late}, status_code=408, headers={"connection": "close"})(scope, receive, send)
            return
        except BodyTooLarge:
            await too_large(scope, receive, send)
            return
        if body is None:  # the client went away
            return
        await self.app(scope, replay(body, receive), send)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """A request's whole body (None when the client disconnects first); BodyTooLarge past ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body already read, then what the client sends next."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def next_message() -> Message:
        return pending.pop() if pending else await receive()

    return next_message


class PollListener:
    """The app as served on the second listener (``ServerConfig.poll_port``): same routes, same tasks.

    Counts the requests that arrive there (``poll_listener_requests`` in the stats), and once
    ``bind`` is called, every polling URL the app hands out points at this listener.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def bind(self, url: str) -> None:
        """Write ``url`` (this listener's base URL) into every polling URL from now on."""
        self.app.state.poll_url = url.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.app.state.poll_listener_requests[f"{scope['method']} {scope['path']}"] += 1
        await self.app(scope, receive, send)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 in FastAPI's shape, trimmed to loc, msg and type (no echo of the input)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def create_app(
    config: ServerConfig | None = None, engine: Engine | None = None, *, resolver: Resolver = system_resolver
) -> FastAPI:
    """The local BFL-compatible server as an ASGI app.

    ``engine`` overrides ``config.engine``; ``resolver`` resolves the hosts of reference-image URLs and
    webhooks before they are checked (tests pass a fake one).
    """
    config = config or ServerConfig()
    faults = FaultCounter(config.faults)
    table = TaskTable(config, engine or get_engine(config.engine, config.engine_options), faults, resolver)
    docs = config.serves_docs
    app = FastAPI(
        title="flux_nb local server",
        summary="Speaks the BFL FLUX.2 protocol, offline.",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.config = config
    app.state.table = table
    app.state.resolver = resolver
    app.state.public_url = config.public_url
    app.state.poll_url = None  # set by PollListener.bind when a second listener serves the polls
    app.state.poll_listener_requests = Counter()
    if config.faults.active:
        app.add_middleware(FaultMiddleware, counter=faults)
    app.add_middleware(
        CountAndLimit, table=table, max_body_bytes=config.max_body_bytes, body_timeout=config.body_timeout
    )
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(APIError, api_error_handler)
    include_routes(app)
    return app
