"""One retry policy for every call: backoff with jitter, a capped ``Retry-After``, one deadline.

A call hands ``RetryPolicy.run`` one attempt; the attempt raises ``Transient`` for an answer
that may be tried again (the call itself decides what is safe: a submit only when it never
reached the server or got 429/5xx, a GET always) and any other error to stop at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from flux_nb.errors import FluxError

T = TypeVar("T")
# Backoff grows for this many failures, then stays at max_delay.
GROWTH_STEPS = 5


class Transient(Exception):
    """An attempt failed in a way that may be tried again; ``error`` is raised when no try is left."""

    def __init__(self, error: FluxError, *, retry_after: float | None = None, rate_limited: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.rate_limited = rate_limited


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; ``Retry-After`` honoured up to ``max_retry_after`` seconds.

    ``attempts`` bounds faults (5xx, lost connections, damaged bodies); ``rate_limit_attempts``
    bounds 429s of a submit (a poll's 429s are waited out until the task's deadline).
    """

    attempts: int = 6
    rate_limit_attempts: int = 40
    base_delay: float = 0.25
    max_delay: float = 10.0
    max_retry_after: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before try ``attempt + 1``: jittered backoff, at least the capped ``Retry-After``."""
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** min(attempt, GROWTH_STEPS)))
        if retry_after is None or retry_after != retry_after:  # absent or NaN
            return backoff
        return max(backoff, min(max(0.0, retry_after), self.max_retry_after))

    async def run(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        deadline: float,
        rate_limit_attempts: int | None = None,
        on_deadline: Callable[[FluxError], FluxError] | None = None,
    ) -> T:
        """Call ``attempt`` until it returns, retrying ``Transient`` failures.

        ``deadline`` (``time.monotonic()``) ends the waiting: a wait that would pass it raises
        ``on_deadline(last error)`` (default: the last error). ``rate_limit_attempts`` None means
        429s are retried until the deadline.
        """
        failures = limited = 0
        while True:
            try:
                return await attempt()
            except Transient as again:
                if again.rate_limited:
                    limited += 1
                    count, cap = limited, rate_limit_attempts
                else:
                    failures += 1
                    count, cap = failures, self.attempts
                if cap is not None and count >= cap:
                    raise again.error from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise (on_deadline or _same)(again.error) from None
                await asyncio.sleep(min(self.delay(count, again.retry_after), left))


def _same(error: FluxError) -> FluxError:
    return error
