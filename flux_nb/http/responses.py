"""What the API's answers mean: HTTP errors and final statuses as typed FluxErrors, and fields read safely.

Every field of an answer is read as if the server could send anything: a number where a
string belongs, an object where a number belongs. Optional numbers that are not numbers
become None; what cannot be done without (a task id, a sample URL) is a clear error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
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
from flux_nb.protocol import Status, parse_status

# Longest task id taken from an answer; BFL's are UUIDs.
MAX_ID_LENGTH = 200
MAX_URL_LENGTH = 4096
EXCERPT_CHARS = 300


def _keep(text: str) -> str:
    return text


@dataclass
class Answer:
    """One HTTP answer read in full (within its cap): status, headers, body, and where it came from."""

    status: int
    body: bytes = field(repr=False)  # may echo what was sent: shown only through excerpt()
    url: httpx.URL
    headers: httpx.Headers = field(default_factory=httpx.Headers, repr=False)
    scrub: Callable[[str], str] = field(default=_keep, repr=False)

    @property
    def is_error(self) -> bool:
        return self.status >= 400

    def json(self) -> Any:
        """The parsed body; ValueError when it is not JSON."""
        return json.loads(self.body)

    def excerpt(self) -> Any:
        """A short, key-free form of the body for errors: small JSON parsed, else the start of the text."""
        if len(self.body) <= 4 * EXCERPT_CHARS:
            try:
                return json.loads(self.scrub(self.body.decode("utf-8", "replace")))
            except ValueError:
                pass
        return self.scrub(self.body[: 4 * EXCERPT_CHARS].decode("utf-8", "replace"))[:EXCERPT_CHARS]


def error_for_answer(answer: Answer) -> FluxError:
    """The typed error for an HTTP error answer, with the API's own words (and never the key)."""
    code = answer.status
    detail = answer.scrub(detail_text(answer))
    facts: dict[str, Any] = {"status": code, "answer": answer.excerpt()}
    if code in (400, 422):
        return RejectedError(f"the API rejected the request: {detail}", **facts)
    if code == 413:
        return ValidationError(
            f"the request is too large for the API (HTTP 413): {detail}",
            hint="downscale the reference images (or pass them as URLs) and send it again",
            **facts,
        )
    if code in (401, 403):
        return AuthError(f"the API refused the key (HTTP {code}): {detail}", **facts)
    if code == 402:
        return CreditsError(f"out of credits (HTTP 402): {detail}", **facts)
    if code == 429:
        return RateLimitError(f"too many active tasks (HTTP 429): {detail}", **facts)
    return TransportError(f"HTTP {code} from {answer.url.host}: {detail}", **facts)


def detail_text(answer: Answer) -> str:
    """The API's explanation: FastAPI's ``detail`` (a list of field errors joined), else the text."""
    try:
        body = answer.json()
    except ValueError:
        return answer.body[:EXCERPT_CHARS].decode("utf-8", "replace") or f"HTTP {answer.status}"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = item.get("loc")
                loc = ".".join(str(p) for p in where if p != "body") if isinstance(where, list) else ""
                parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
        return ("; ".join(parts) or str(detail))[:EXCERPT_CHARS]
    return str(detail)[:EXCERPT_CHARS]


def retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds when it is a finite number (callers cap it), else None."""
    value = headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def rate_limit_wait(headers: httpx.Headers, now: float) -> float | None:
    """Seconds until the key may submit again, when ``X-RateLimit-Remaining`` says none is left and
    ``X-RateLimit-Reset`` says when (BFL's notes show epoch seconds; a small number is read as seconds
    from now); else None."""
    try:
        remaining = float(headers.get("x-ratelimit-remaining", "nan"))
        reset = float(headers.get("x-ratelimit-reset", "nan"))
    except ValueError:
        return None
    if not (math.isfinite(remaining) and math.isfinite(reset)) or remaining > 0:
        return None
    seconds = reset - now if reset > 1e9 else reset
    return max(0.0, seconds)


def error_for_status(task_id: str, status: Status, answer: dict[str, Any]) -> FluxError:
    """The typed error for a final status other than Ready."""
    details = answer.get("details")
    details = details if isinstance(details, dict) else {}
    if status in (Status.REQUEST_MODERATED, Status.CONTENT_MODERATED):
        reasons = details.get("Moderation Reasons")
        reasons = [str(r)[:100] for r in reasons] if isinstance(reasons, list) else []
        which = "the request" if status is Status.REQUEST_MODERATED else "the generated image"
        because = f": {', '.join(reasons)}" if reasons else ""
        return ModeratedError(
            f"{which} was moderated{because} (not charged)", task_status=status.value, reasons=reasons, status=200
        )
    if status is Status.TASK_NOT_FOUND:
        return TaskNotFoundError(f"task {task_id} is unknown to the API (expired or never created)", status=200)
    message = details.get("error")
    return TaskFailedError(f"task {task_id} failed{': ' + str(message)[:EXCERPT_CHARS] if message else ''}", status=200)


# -- fields ------------------------------------------------------------------------------------


def number_or_none(value: Any) -> float | None:
    """A finite, non-negative number as float; anything else (strings, objects, NaN, booleans) is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def task_id_of(body: Any) -> str | None:
    """The task id of a submit answer: a non-empty string (or whole number) of printable characters."""
    value = body.get("id") if isinstance(body, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        return None
    return value


def url_or_none(value: Any) -> str | None:
    """An absolute http(s) URL httpx can parse, else None."""
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or not value.startswith(("http://", "https://")):
        return None
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError):
        return None
    return value if url.host else None


def status_of(answer: dict[str, Any]) -> tuple[Status, str]:
    """The parsed status and its text; a non-string status counts as still pending."""
    raw = answer.get("status")
    text = raw[:60] if isinstance(raw, str) else "Pending"
    return parse_status(raw if isinstance(raw, str) else None), text


def progress_of(answer: dict[str, Any]) -> float | None:
    """The progress fraction clamped to 0..1, or None when absent or not a number."""
    number = number_or_none(answer.get("progress"))
    return min(number, 1.0) if number is not None else None


def result_field(answer: dict[str, Any], name: str) -> Any:
    """``answer["result"][name]`` when the result is an object, else None."""
    result = answer.get("result")
    return result.get(name) if isinstance(result, dict) else None


def seed_of(answer: dict[str, Any]) -> int | None:
    seed = result_field(answer, "seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def details_of(answer: dict[str, Any]) -> dict[str, Any]:
    """The task's ``details`` (what the engine says: its name, a replica, warnings), only if it is small JSON."""
    details = answer.get("details")
    if not isinstance(details, dict) or len(details) > 50:
        return {}
    return {
        str(k)[:100]: v for k, v in details.items() if isinstance(v, (str, int, float, bool, list, dict, type(None)))
    }


def engine_of(answer: dict[str, Any]) -> str | None:
    details = answer.get("details")
    engine = details.get("engine") if isinstance(details, dict) else None
    return engine[:100] if isinstance(engine, str) else None
