"""``POST /v1/<model>``: one route per registered model, its body model built from ``protocol.MODELS``.

No ``from __future__ import annotations`` here: FastAPI reads each route's body model from its signature.
"""

import logging
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, create_model, model_validator

from flux_nb import protocol
from flux_nb.errors import ValidationError
from flux_nb.server.engines import JobRefused, RenderJob, review, unserved
from flux_nb.server.keys import Caller, caller
from flux_nb.server.reference_inputs import field_error, load_references
from flux_nb.server.schemas import APIError, SubmitAnswer, error_responses
from flux_nb.server.task_table import ServerTask, TaskTable, TooManyActiveTasks

log = logging.getLogger("flux_nb.server")


class SubmitBody(BaseModel):
    """Fields every FLUX.2 endpoint shares; per-model subclasses add images and extras.

    Like BFL's request models, unknown fields are accepted and ignored (and logged).
    """

    model_config = ConfigDict(extra="allow")

    prompt: str = Field(min_length=1, max_length=protocol.PROMPT_MAX)
    seed: int | None = Field(None, ge=protocol.SEED_RANGE[0], le=protocol.SEED_RANGE[1])
    width: int | None = Field(None, ge=protocol.MIN_SIDE)
    height: int | None = Field(None, ge=protocol.MIN_SIDE)
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


# The endpoints whose BFL schema takes ``input_image_blob_path`` (a path in BFL's own blob store).
BLOB_PATH_MODELS = ("flux-2-flex",)


def body_model(spec: protocol.ModelSpec) -> type[SubmitBody]:
    """The request body model of one endpoint."""
    fields: dict[str, Any] = {name: (str | None, None) for name in spec.image_fields()}
    for extra in spec.extra_fields:
        kind = int if extra.kind is int else float
        fields[extra.name] = (kind | None, Field(None, ge=extra.minimum, le=extra.maximum))
    for flag in spec.flag_fields:
        fields[flag] = (StrictBool | None, None)  # true or false only: "yes" and 1 are refused
    if spec.name in BLOB_PATH_MODELS:
        fields["input_image_blob_path"] = (str | None, None)  # in BFL's flex schema; this server has no blob store
    name = "".join(part.capitalize() for part in spec.name.split("-")) + "Request"
    return create_model(name, __base__=SubmitBody, **fields)


async def build_job(spec: protocol.ModelSpec, body: SubmitBody, request: Request) -> tuple[RenderJob, list[float], int]:
    """The render job of a submit (reference images loaded; each side down to a multiple of 16), each
    reference's megapixels, and the bytes its references hold in the table's reference memory."""
    state = request.app.state
    given = [(name, value) for name in spec.image_fields() if (value := getattr(body, name)) is not None]
    if body.model_extra:
        log.info("ignored unknown field(s) of a %s submit: %s", spec.name, ", ".join(sorted(body.model_extra)))
    references, reserved = await load_references(given, state.config, state.table.reference_memory, state.resolver)
    width, height = protocol.output_size(
        protocol.FluxRequest(body.prompt, width=body.width, height=body.height),
        references[0].size if references else None,
    )
    settings = [f.name for f in spec.extra_fields] + list(spec.flag_fields)
    extra = {name: getattr(body, name) for name in settings if getattr(body, name) is not None}
    # Like BFL, a request without a seed gets a random one, reported in the result.
    seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
    job = RenderJob(body.prompt, seed, width, height, spec.name, tuple(references), extra)
    return job, [protocol.megapixels(*r.size) for r in references], reserved


def base_url(request: Request) -> str:
    return (request.app.state.public_url or str(request.base_url)).rstrip("/")


async def accept(spec: protocol.ModelSpec, body: SubmitBody, request: Request, who: Caller) -> SubmitAnswer:
    """Check, create and start the task of one submit; its BFL-shaped answer."""
    state = request.app.state
    if refusal := unserved(state.table.engine, spec.name):  # no weights of this model: refused before any fetch
        raise HTTPException(422, detail=[{"loc": ["path", "model"], "msg": refusal, "type": "value_error"}])
    job, reference_mp, reserved = await build_job(spec, body, request)
    table: TaskTable = state.table
    task: ServerTask | None = None
    try:
        warnings = review(table.engine, job)
        task = table.submit(
            spec.name,
            job,
            output_format=body.output_format,
            reference_mp=reference_mp,
            webhook_url=body.webhook_url,
            webhook_secret=body.webhook_secret,
            base_url=base_url(request),
            owner=who.owner,
            warnings=warnings,
            reference_bytes=reserved,
        )
    except JobRefused as exc:
        raise field_error(exc.field, str(exc)) from None
    except TooManyActiveTasks as exc:
        raise APIError(429, str(exc), {"Retry-After": f"{state.config.retry_after:g}"}) from None
    finally:
        if task is None:  # no task holds the references: their memory is free again
            table.reference_memory.give_back(reserved)
    answer = SubmitAnswer(id=task.id, cost=task.cost, input_mp=task.input_mp, output_mp=task.output_mp)
    if body.webhook_url:
        answer.status, answer.webhook_url = task.status, body.webhook_url
    else:
        answer.polling_url = f"{state.poll_url or base_url(request)}/v1/get_result?id={task.id}"
    return answer


def submit_route(spec: protocol.ModelSpec) -> Any:
    """The route function of one model: its body model in the signature, so FastAPI validates and documents it."""
    model = body_model(spec)

    async def submit(body: model, request: Request, who: Annotated[Caller, Depends(caller)]) -> SubmitAnswer:  # type: ignore[valid-type]
        return await accept(spec, body, request, who)

    return submit


def router() -> APIRouter:
    """A route for every registered model."""
    routes = APIRouter()
    for spec in protocol.MODELS.values():
        routes.post(
            spec.path,
            response_model=SubmitAnswer,
            response_model_exclude_none=True,
            responses=error_responses(400, 403, 402, 413, 429),
            name=f"submit_{spec.name}",
            summary=f"Submit a {spec.name} request",
        )(submit_route(spec))
    return routes
