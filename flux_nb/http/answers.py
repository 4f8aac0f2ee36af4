"""What the API's answers mean: HTTP errors and final task statuses as typed FluxErrors."""

from __future__ import annotations

from typing import Any

import httpx

from flux_nb.errors import (
    AuthError,
    CreditsError,
    FluxError,
    ModeratedError,
    RateLimitError,
    RejectedError,
    TaskFailedError,
    TaskNotFoundError,
    TransportError,
    ValidationError,
)
from flux_nb.protocol import Status


def error_for_response(response: httpx.Response) -> FluxError:
    """The typed error for an HTTP error answer, with the API's own words."""
    code = response.status_code
    detail = detail_text(response)
    if code in (400, 422):
        return RejectedError(f"the API rejected the request: {detail}")
    if code == 413:
        return ValidationError(
            f"the request is too large for the API (HTTP 413): {detail}",
            hint="downscale the reference images (or pass them as URLs) and send it again",
        )
    if code in (401, 403):
        return AuthError(f"the API refused the key (HTTP {code}): {detail}")
    if code == 402:
        return CreditsError(f"out of credits (HTTP 402): {detail}")
    if code == 429:
        return RateLimitError(f"too many active tasks (HTTP 429): {detail}")
    return TransportError(f"HTTP {code} from {response.request.url.host}: {detail}")


def detail_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        return "; ".join(parts) or str(detail)
    return str(detail)[:300]


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_for_status(task_id: str, status: Status, answer: dict[str, Any]) -> FluxError:
    details = answer.get("details") or {}
    if status in (Status.REQUEST_MODERATED, Status.CONTENT_MODERATED):
        reasons = details.get("Moderation Reasons") if isinstance(details, dict) else None
        reasons = [str(r) for r in reasons] if isinstance(reasons, list) else []
        which = "the request" if status is Status.REQUEST_MODERATED else "the generated image"
        because = f": {', '.join(reasons)}" if reasons else ""
        return ModeratedError(f"{which} was moderated{because} (not charged)", status=status.value, reasons=reasons)
    if status is Status.TASK_NOT_FOUND:
        return TaskNotFoundError(f"task {task_id} is unknown to the API (expired or never created)")
    message = details.get("error") if isinstance(details, dict) else None
    return TaskFailedError(f"task {task_id} failed{': ' + str(message) if message else ''}")
