"""One HTTP exchange (send, headers, body) within a byte cap and one deadline, its faults sorted.

This is where "safe to retry" is decided, once for every call: a fault before the request
can have reached the server, a 429 or a 5xx is ``Transient``; any other fault is transient
only for an idempotent call (a GET). A submit that may have reached the server and whose
answer was lost raises UnknownOutcomeError: the API has no idempotency key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from flux_nb.errors import FluxError, TransportError, UnknownOutcomeError
from flux_nb.http.read_limits import Stalled, TooLarge, read_capped
from flux_nb.http.responses import Answer, error_for_answer, retry_after
from flux_nb.http.retry import Transient

# Faults where the request cannot have reached the server: always safe to retry.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class Call:
    """What one exchange is: its words for errors, its limits, and whether resending is safe.

    ``what`` names it in messages ("the submit", "polling task t1"); ``oversize`` is the error
    kind for a body past ``limit`` bytes; ``stall`` ends the exchange, not retried, with a
    TransportError once no byte arrived for that many seconds (None: only the deadline applies).
    """

    method: str
    url: str
    what: str
    limit: int
    idempotent: bool = True
    oversize: type[FluxError] = TransportError
    json: Any = field(default=None, repr=False)  # the payload: base64 images, maybe a webhook secret
    send_key: bool = True
    stall: float | None = None


def describe(exc: BaseException) -> str:
    """An exception as ``Type: message`` (just ``Type`` when it has no message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def exchange(http: httpx.AsyncClient, call: Call, *, deadline: float, scrub: Callable[[str], str]) -> Answer:
    """Send ``call`` and read its answer by ``deadline`` (``time.monotonic()``).

    Returns every answer but 429 and 5xx (which raise Transient); faults raise Transient,
    UnknownOutcomeError (a non-idempotent call that may have arrived) or ``call.oversize``.
    """
    host = httpx.URL(call.url).host if call.url.startswith(("http://", "https://")) else call.url[:80]
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            answer = await _send(http, call, scrub)
    except TooLarge as big:
        raise call.oversize(f"{call.what}: the answer from {host} is larger than {big.limit:,} bytes") from None
    except Stalled as stalled:
        raise TransportError(f"{call.what}: {host} sent nothing for {stalled.seconds:g} s (it stalled)") from None
    except TimeoutError:
        lost = f"{call.what}: the answer did not arrive in time"
        raise _lost(call, lost) from None
    except NOT_SENT as exc:
        raise Transient(TransportError(f"could not reach {host}: {describe(exc)}")) from None
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise TransportError(f"{call.what}: {call.url[:200]!r} is not a usable URL ({describe(exc)})") from None
    except httpx.HTTPError as exc:
        raise _lost(call, f"{call.what}: the answer was lost ({describe(exc)})") from None
    if answer.status == 429:
        raise Transient(error_for_answer(answer), retry_after=retry_after(answer.headers), rate_limited=True)
    if answer.status >= 500:
        raise Transient(error_for_answer(answer), retry_after=retry_after(answer.headers))
    return answer


def _lost(call: Call, message: str) -> Exception:
    """A fault after the request may have arrived: transient for a GET, unknown outcome for a submit."""
    if call.idempotent:
        return Transient(TransportError(message))
    return UnknownOutcomeError(f"{message}; it was sent, so it may have created a task")


async def _send(http: httpx.AsyncClient, call: Call, scrub: Callable[[str], str]) -> Answer:
    auth: Any = httpx.USE_CLIENT_DEFAULT if call.send_key else None
    idle = asyncio.timeout(call.stall)  # rearmed by every chunk: fires only after ``stall`` s without a byte

    def rearm() -> None:
        if call.stall is not None:
            idle.reschedule(asyncio.get_running_loop().time() + call.stall)

    try:
        async with idle, http.stream(call.method, call.url, json=call.json, auth=auth) as response:
            body = await read_capped(response, call.limit, truncate=response.is_error, on_bytes=rearm)
    except TimeoutError:
        if call.stall is not None and idle.expired():
            raise Stalled(call.stall) from None
        raise
    return Answer(response.status_code, body, response.url, response.headers, scrub)
