"""Errors in BFL's documented shape: ``{"error": "<code>", "message": "<text>"}``.

403 ``invalid_api_key`` (the live API answers a bad key 403 ``{"detail": "Not authenticated - Invalid
Authentication"}``), 402 ``insufficient_credits``, 429 ``rate_limit_exceeded``; ``detail`` carries the same
text beside them, for clients written against FastAPI's ``{"detail": ...}``.
Free of FastAPI, so the fault middleware can use it without loading the app.
"""

from __future__ import annotations

import json

#: What BFL answers a missing or wrong key (HTTP 403).
NOT_AUTHENTICATED = "Not authenticated - Invalid Authentication"
ERROR_CODES = {401: "invalid_api_key", 403: "invalid_api_key", 402: "insufficient_credits", 429: "rate_limit_exceeded"}


class APIError(Exception):
    """An error answered in BFL's shape (see ``error_body``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_body(status: int, message: str) -> dict[str, str]:
    """``{"error", "message", "detail"}`` for the statuses BFL documents, else just ``detail``."""
    code = ERROR_CODES.get(status)
    return {"error": code, "message": message, "detail": message} if code else {"detail": message}


def error_bytes(status: int, message: str) -> bytes:
    """``error_body`` as JSON bytes, for answers written below FastAPI (middleware)."""
    return json.dumps(error_body(status, message)).encode()
