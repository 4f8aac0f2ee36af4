"""The local server's HTTP face: the BFL routes over the task table.

Request models are built from ``flux_nb.protocol.MODELS``, so every registered model has a
route, invalid bodies get FastAPI's 422, and the OpenAPI schema is accurate.
"""

import asyncio
import base64
import binascii
import re
import secrets
from collections import Counter
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flux_nb import protocol
from flux_nb.errors import ValidationError
from flux_nb.images import md5_base64, open_image
from flux_nb.server.config import ServerConfig
from flux_nb.server.engines import Engine, RenderJob, get_engine
from flux_nb.server.faults import FaultCounter, FaultMiddleware
from flux_nb.server.tasks import MEDIA_TYPES, TaskTable, TooManyActiveTasks

TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class SubmitBody(BaseModel):
    """Fields every FLUX.2 endpoint shares; per-model subclasses add images and extras."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=protocol.PROMPT_MAX)
    seed: int | None = Field(None, ge=protocol.SEED_RANGE[0], le=protocol.SEED_RANGE[1])
    width: int | None = Field(None, ge=protocol.MIN_SIDE, multiple_of=protocol.SIDE_STEP)
    height: int | None = Field(None, ge=protocol.MIN_SIDE, multiple_of=protocol.SIDE_STEP)
    safety_tolerance: int = Field(protocol.DEFAULT_SAFETY, ge=protocol.SAFETY_RANGE[0], le=protocol.SAFETY_RANGE[1])
    output_format: Literal["jpeg", "png", "webp"] = protocol.DEFAULT_FORMAT
    webhook_url: str | None = Field(None, min_length=1, max_length=protocol.WEBHOOK_URL_MAX, pattern=r"^https?://.+")
    webhook_secret: str | None = None

    @model_validator(mode="after")
    def _size_within_limit(self) -> "SubmitBody":
        try:
            protocol.check_size(self.width, self.height)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None
        return self


def body_model(spec: protocol.ModelSpec) -> type[SubmitBody]:
    """The request body model of one endpoint."""
    fields: dict[str, Any] = {name: (str | None, None) for name in spec.image_fields()}
    for extra in spec.extra_fields:
        kind = int if extra.kind is int else float
        fields[extra.name] = (kind | None, Field(None, ge=extra.minimum, le=extra.maximum))
    name = "".join(part.capitalize() for part in spec.name.split("-")) + "Request"
    return create_model(name, __base__=SubmitBody, **fields)


class SubmitAnswer(BaseModel):
    id: str
    polling_url: str | None = None
    status: str | None = None
    webhook_url: str | None = None
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None


class ResultAnswer(BaseModel):
    id: str
    status: str
    result: dict[str, Any] | None = None
    progress: float | None = None
    details: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None


class ErrorAnswer(BaseModel):
    """The body of every error but 422: FastAPI's ``{"detail": "<message>"}``."""

    detail: str


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route really answers (422 is FastAPI's own)."""
    meaning = {
        400: "the body could not be read (e.g. JSON that is not UTF-8)",
        401: "missing x-key header (when the server has keys)",
        403: "invalid key (when the server has keys)",
        404: "the delivery URL has expired or never existed",
        413: "request body over the server's limit",
        429: "too many active tasks (or an injected rate limit); see Retry-After",
    }
    return {code: {"model": ErrorAnswer, "description": meaning[code]} for code in codes}


def field_error(field: str, message: str) -> HTTPException:
    """A 422 in FastAPI's own shape, for checks made after parsing (reference images)."""
    return HTTPException(422, detail=[{"loc": ["body", field], "msg": message, "type": "value_error"}])


async def load_reference(field: str, value: str, config: ServerConfig) -> Image.Image:
    """Decode a reference image given as base64 (raw or data: URI) or fetch it from an http(s) URL."""
    if value.startswith(("http://", "https://")):
        data = await fetch_reference(field, value, config)
    else:
        payload = value.split(",", 1)[1] if value.startswith("data:") else value
        payload = "".join(payload.split())  # line-wrapped base64 (as `base64` prints it) is still base64
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise field_error(field, "not base64 image data nor an http(s) URL") from None
    try:
        return open_image(data, field).convert("RGB")
    except ValidationError as exc:
        raise field_error(field, str(exc)) from None


async def fetch_reference(field: str, url: str, config: ServerConfig) -> bytes:
    """GET a reference image with a size limit and one deadline for the whole fetch.

    ``fetch_timeout`` bounds every read and also the fetch as a whole: a host trickling a
    byte now and then cannot hold a submit open past it.
    """
    if not config.allows_outbound(url):
        raise field_error(field, f"fetching {urlsplit(url).hostname!r} is not allowed by this server")
    try:
        async with asyncio.timeout(config.fetch_timeout):
            # No redirects: a redirect could lead past the outbound host list.
            client = httpx.AsyncClient(timeout=config.fetch_timeout, follow_redirects=False)
            async with client, client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise field_error(field, f"fetching {url} answered HTTP {response.status_code}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > config.fetch_max_bytes:
                        raise field_error(field, f"image at {url} is over {config.fetch_max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
    except TimeoutError:
        raise field_error(field, f"could not fetch {url}: not done within {config.fetch_timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise field_error(field, f"could not fetch {url}: {type(exc).__name__}") from None


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


def server_stats(app: FastAPI) -> dict[str, Any]:
    """The server's counters: the task table's, and the requests that arrived on the polling listener."""
    return {**app.state.table.snapshot(), "poll_listener_requests": dict(app.state.poll_listener_requests)}


def create_app(config: ServerConfig | None = None, engine: Engine | None = None) -> FastAPI:
    """The local BFL-compatible server as an ASGI app (``engine`` overrides ``config.engine``)."""
    config = config or ServerConfig()
    faults = FaultCounter(config.faults)
    table = TaskTable(config, engine or get_engine(config.engine, config.engine_options), faults)
    app = FastAPI(title="flux_nb local server", summary="Speaks the BFL FLUX.2 protocol, offline.")
    app.state.table = table
    app.state.public_url = config.public_url
    app.state.poll_url = None  # set by PollListener.bind when a second listener serves the polls
    app.state.poll_listener_requests = Counter()
    if config.faults.active:
        app.add_middleware(FaultMiddleware, counter=faults)

    async def check_key(x_key: Annotated[str | None, Header()] = None) -> None:  # async: no thread hop per request
        if not config.api_keys:
            return
        if not x_key:
            raise HTTPException(401, detail="missing x-key header")
        if x_key not in config.api_keys:
            raise HTTPException(403, detail="invalid key")

    def base_url(request: Request) -> str:
        return (app.state.public_url or str(request.base_url)).rstrip("/")

    app.add_middleware(CountAndLimit, table=table, max_body_bytes=config.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    def submit_route(spec: protocol.ModelSpec, model: type[SubmitBody]) -> Any:
        async def submit(body: model, request: Request) -> SubmitAnswer:  # type: ignore[valid-type]
            references = [
                await load_reference(name, value, config)
                for name in spec.image_fields()
                if (value := getattr(body, name)) is not None
            ]
            width, height = protocol.output_size(
                protocol.FluxRequest(body.prompt, width=body.width, height=body.height),
                references[0].size if references else None,
            )
            extra = {f.name: getattr(body, f.name) for f in spec.extra_fields if getattr(body, f.name) is not None}
            # Like BFL, a request without a seed gets a random one, reported in the result.
            seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
            job = RenderJob(body.prompt, seed, width, height, spec.name, tuple(references), extra)
            input_mp = sum(protocol.megapixels(*r.size) for r in references)
            try:
                task = table.submit(
                    spec.name,
                    job,
                    output_format=body.output_format,
                    input_mp=input_mp,
                    webhook_url=body.webhook_url,
                    webhook_secret=body.webhook_secret,
                    base_url=base_url(request),
                )
            except TooManyActiveTasks as exc:
                raise HTTPException(429, detail=str(exc), headers={"Retry-After": f"{config.retry_after:g}"}) from None
            answer = SubmitAnswer(id=task.id, cost=task.cost, input_mp=task.input_mp, output_mp=task.output_mp)
            if body.webhook_url:
                answer.status, answer.webhook_url = task.status, body.webhook_url
            else:
                answer.polling_url = f"{app.state.poll_url or base_url(request)}/v1/get_result?id={task.id}"
            return answer

        return submit

    for spec in protocol.MODELS.values():
        app.post(
            spec.path,
            response_model=SubmitAnswer,
            response_model_exclude_none=True,
            dependencies=[Depends(check_key)],
            responses=error_responses(400, 401, 403, 413, 429),
            name=f"submit_{spec.name}",
            summary=f"Submit a {spec.name} request",
        )(submit_route(spec, body_model(spec)))

    @app.get(
        "/v1/get_result",
        response_model=ResultAnswer,
        dependencies=[Depends(check_key)],
        responses=error_responses(401, 403, 429),
    )
    async def get_result(id: str, request: Request) -> Response:
        # The hottest route: answered as JSON directly, without re-validating our own answer.
        task = table.get(id)
        if task is None:
            return JSONResponse(ResultAnswer(id=id, status=protocol.Status.TASK_NOT_FOUND.value).model_dump())
        # Polled on the polling listener, delivery URLs still point where the task was submitted.
        delivery_base = (task.base_url or base_url(request)) if app.state.poll_url else base_url(request)
        return JSONResponse(table.answer(task, delivery_base))

    md5_header = {"Content-MD5": {"description": "base64 of the body's MD5 digest", "schema": {"type": "string"}}}
    images = {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in MEDIA_TYPES.values()}

    @app.get(
        "/delivery/{token}/sample.{ext}",
        response_class=Response,
        responses={200: {"content": images, "description": "the image", "headers": md5_header}, **error_responses(404)},
    )
    async def delivery(token: str, ext: str) -> Response:
        if not TOKEN_PATTERN.match(token) or ext not in MEDIA_TYPES:
            raise HTTPException(404, detail="not found")
        task = table.delivery(token)
        if task is None or task.image is None or task.output_format != ext:
            raise HTTPException(404, detail="this delivery URL has expired or never existed")
        # Content-MD5 as Azure Blob storage sends it: a client can tell a damaged download from a good one.
        return Response(task.image, media_type=MEDIA_TYPES[ext], headers={"Content-MD5": md5_base64(task.image)})

    @app.get("/v1/credits", dependencies=[Depends(check_key)], responses=error_responses(401, 403))
    async def credits() -> dict[str, float]:
        return {"credits": 1_000_000.0}

    @app.get("/_flux/stats")
    async def stats() -> dict[str, Any]:
        return server_stats(app)

    return app
