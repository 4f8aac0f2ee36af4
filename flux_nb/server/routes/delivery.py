"""``GET /v1/get_result`` (the caller's own tasks only) and the delivery URLs of finished images."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from flux_nb import protocol
from flux_nb.images import md5_base64
from flux_nb.server.keys import Caller, caller
from flux_nb.server.routes.submit import base_url
from flux_nb.server.schemas import ResultAnswer, error_responses
from flux_nb.server.task_table import MEDIA_TYPES

TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

router = APIRouter()


@router.get(
    "/v1/get_result",
    response_model=ResultAnswer,
    responses=error_responses(403, 429),
)
async def get_result(id: str, request: Request, who: Annotated[Caller, Depends(caller)]) -> Response:
    """The task's state; as at BFL, an unknown task (or another key's) is answered 200 "Task not found"."""
    state = request.app.state
    task = state.table.get(id, who.owner)
    if task is None:
        return JSONResponse(ResultAnswer(id=id, status=protocol.Status.TASK_NOT_FOUND.value).model_dump())
    # Polled on the polling listener, delivery URLs still point where the task was submitted.
    delivery_base = (task.base_url or base_url(request)) if state.poll_url else base_url(request)
    # The hottest route: answered as JSON directly, without re-validating our own answer.
    return JSONResponse(state.table.answer(task, delivery_base))


MD5_HEADER = {"Content-MD5": {"description": "base64 of the body's MD5 digest", "schema": {"type": "string"}}}
IMAGES = {media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in MEDIA_TYPES.values()}


@router.get(
    "/delivery/{token}/sample.{ext}",
    response_class=Response,
    responses={200: {"content": IMAGES, "description": "the image", "headers": MD5_HEADER}, **error_responses(404)},
)
async def delivery(token: str, ext: str, request: Request) -> Response:
    """The image behind an unguessable token (like BFL's signed URLs: no key needed, valid for a while)."""
    if not TOKEN_PATTERN.match(token) or ext not in MEDIA_TYPES:
        raise HTTPException(404, detail="not found")
    task = request.app.state.table.delivery(token)
    if task is None or task.image is None or task.output_format != ext:
        raise HTTPException(404, detail="this delivery URL has expired or never existed")
    # Content-MD5 as Azure Blob storage sends it: a client can tell a damaged download from a good one.
    return Response(task.image, media_type=MEDIA_TYPES[ext], headers={"Content-MD5": md5_base64(task.image)})
