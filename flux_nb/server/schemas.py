"""What the local server answers: the BFL answer models, and errors in BFL's shape (see ``bfl_errors``)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from flux_nb.server.bfl_errors import APIError, error_body

__all__ = ["APIError", "ErrorAnswer", "ResultAnswer", "SubmitAnswer", "api_error_handler", "error_responses"]


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
    """The body of every error but 422: ``detail``, and for 403/402/429 also BFL's ``error`` and ``message``."""

    detail: str
    error: str | None = None
    message: str | None = None


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse(error_body(exc.status, exc.message), status_code=exc.status, headers=exc.headers)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route really answers (422 is FastAPI's own)."""
    meaning = {
        400: "the body could not be read (e.g. JSON that is not UTF-8)",
        401: "missing or invalid x-key header (when the server has keys): error invalid_api_key",
        403: "missing or invalid x-key header (when the server has keys): BFL's 403, error invalid_api_key",
        402: "out of credits (injected): error insufficient_credits",
        404: "the delivery URL has expired or never existed",
        413: "request body over the server's limit",
        429: "too many active tasks (or an injected rate limit): error rate_limit_exceeded; see Retry-After",
    }
    return {code: {"model": ErrorAnswer, "description": meaning[code]} for code in codes}
