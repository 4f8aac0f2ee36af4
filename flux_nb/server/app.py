"""The local server's HTTP face: an app over the task table, its middleware, and the polling listener.

Routes live in ``server/routes/``; request models are built from ``flux_nb.protocol.MODELS``, so
every registered model has a route, invalid bodies get FastAPI's 422, and the OpenAPI schema is accurate.
"""

from __future__ import annotations

from collections import Counter

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flux_nb.server.answers import APIError, api_error_handler
from flux_nb.server.config import ServerConfig
from flux_nb.server.engines import Engine, get_engine
from flux_nb.server.faults import FaultCounter, FaultMiddleware
from flux_nb.server.outbound import Resolver, system_resolver
from flux_nb.server.routes import include_routes
from flux_nb.server.routes.meta import server_stats
from flux_nb.server.tasks import TaskTable

__all__ = ["CountAndLimit", "PollListener", "create_app", "server_stats"]


class CountAndLimit:
    """Pure ASGI middleware: counts requests by route and refuses bodies over the size limit (413).

    A declared Content-Length over the limit is refused before the body is read; a body sent
    without one (chunked) is counted as it arrives and refused once it passes the limit.
    """

    def __init__(self, app: ASGIApp, table: TaskTable, max_body_bytes: int) -> None:
        self.app, self.table, self.max_body_bytes = app, table, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.table.stats.http_requests[f"{scope['method']} {scope['path'].split('/')[1]}"] += 1
        too_large = f"request body over {self.max_body_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit():
            if int(length) > self.max_body_bytes:
                await JSONResponse({"detail": too_large}, status_code=413)(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                # FastAPI lets an HTTPException raised while reading the body through to its handler.
                raise HTTPException(413, detail=too_large)
            return message

        await self.app(scope, counted, send)


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
    app.add_middleware(CountAndLimit, table=table, max_body_bytes=config.max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(APIError, api_error_handler)
    include_routes(app)
    return app
