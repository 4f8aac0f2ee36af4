"""What a batch may spend before it is sent: the budget, the large-batch guard, and the settings behind them.

The estimate counts each distinct request once and leaves out what the cache answers for free. A budget
refuses a batch that would pass it; the guard refuses, unless confirmed, a batch whose estimate passes
``confirm_over`` (on a billed backend 50 credits unless set; off on a local server). Settings are checked
when they are set: a NaN or a negative limit is an error, never a silent "off" (``inf`` says "never").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from flux_nb.core.batch import PreparedRequest
from flux_nb.errors import BudgetError, LargeBatchError, ValidationError

#: The guard's threshold on a billed backend when ``Flux.confirm_over`` is left unset (None).
BILLED_CONFIRM_OVER = 50.0


def estimate(batch: Sequence[PreparedRequest], is_cached: Callable[[PreparedRequest], bool]) -> float:
    """Credits the batch is expected to cost: each distinct request once, cache hits free."""
    unique = {p.identity(): p for p in batch}.values()
    return sum(p.estimated_cost for p in unique if not is_cached(p))


def check_webhooks(batch: Sequence[PreparedRequest], *, to_bfl: bool) -> None:
    """BFL posts webhooks to ``https://`` URLs only: an ``http://`` one would silently never arrive."""
    if not to_bfl:
        return  # a local server posts to http too
    for prepared in batch:
        url = prepared.request.webhook_url
        if url and not url.lower().startswith("https://"):
            raise ValidationError(
                f"webhook_url {url!r}: BFL sends webhooks to https:// URLs only, so it would never arrive; "
                "use an https URL"
            )


def confirm_threshold(confirm_over: float | None, billed: bool) -> float | None:
    """The guard's threshold in credits (None: off): the setting, else 50 on a billed backend."""
    if confirm_over is not None:
        return confirm_over
    return BILLED_CONFIRM_OVER if billed else None


def check_spending(
    count: int,
    cost: float,
    *,
    spent: float,
    budget: float | None,
    threshold: float | None,
    confirm: bool,
    at_most: bool = False,
    balance: float | None = None,
) -> None:
    """Refuse a batch of ``count`` requests estimated at ``cost`` that passes the budget, the account's
    ``balance`` (when known) or, unconfirmed, the guard.

    ``at_most``: the estimate is an upper bound (megapixels rounded up, or a URL reference priced at the largest
    size the API takes); else it is exact and said "about".
    """
    bound = "at most " if at_most else "about "
    if budget is not None and spent + cost > budget + 1e-9:
        raise BudgetError(
            f"estimated cost {bound}{cost:.2f} credits for {count} request(s) would pass the budget: "
            f"{spent:.2f} of {budget:.2f} spent"
        )
    if balance is not None and cost > balance + 1e-9:
        raise BudgetError(
            f"estimated cost {bound}{cost:.2f} credits for {count} request(s) passes the account's balance of "
            f"{balance:.2f} credits: nothing was sent"
        )
    if not confirm and threshold is not None and cost > threshold + 1e-9:
        raise LargeBatchError(
            f"{count} request(s) estimated at {bound}{cost:.2f} credits pass the confirmation threshold of "
            f"{threshold:g} credits: nothing was sent",
            count=count,
            estimate=cost,
            hint="pass confirm=True to send it, or raise Flux.confirm_over",
        )


# -- settings, checked when they are set -----------------------------------------------------------


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValidationError(f"Flux.{name} must be a number, got {value!r}")
    return float(value)


def credit_limit(name: str, value: float | None) -> float | None:
    """A budget or a threshold: None (no limit) or a number of credits, 0 or more (``inf``: never)."""
    if value is None:
        return None
    if _number(name, value) < 0:
        raise ValidationError(f"Flux.{name} must be a number of credits, 0 or more (None: no limit), got {value!r}")
    return value


def positive(name: str, value: float, *, integer: bool = False, most: float | None = None) -> float:
    """A count or a duration that must be above 0 (and finite, and at most ``most`` when given)."""
    number = _number(name, value)
    if number <= 0 or math.isinf(number) or (most is not None and number > most):
        bound = f" and at most {most:g}" if most is not None else ""
        what = "a whole number above 0" if integer else "a finite number above 0"
        raise ValidationError(f"Flux.{name} must be {what}{bound}, got {value!r}")
    return value


__all__ = [
    "BILLED_CONFIRM_OVER",
    "check_spending",
    "check_webhooks",
    "confirm_threshold",
    "credit_limit",
    "estimate",
    "positive",
]
