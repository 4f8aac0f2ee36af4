"""Safe row filters: ``column == value`` given as keyword arguments, turned into SQL with bound values.

No user text is ever formatted into SQL: column names are checked against the known columns
and every value is a bound parameter. A list (or tuple, set) of values means "any of these",
None means "missing". ``tags="best"`` keeps rows whose image was tagged "best" (a list: all of them),
``cached=True`` keeps uses (cache hits shown again), ``rating``/``favourite``/``note`` match the review.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flux_nb.errors import ValidationError
from flux_nb.history.schema import COLUMNS, REVIEW_EXPERIMENT, REVIEW_IMAGE

# A row's review: the one of its experiment and the image it shows.
_OF_ROW = f"v.experiment = {REVIEW_EXPERIMENT.format(r='records')} AND v.image = {REVIEW_IMAGE.format(r='records')}"
_REVIEW = {
    "rating": f"(SELECT rating FROM reviews v WHERE {_OF_ROW})",
    "note": f"(SELECT note FROM reviews v WHERE {_OF_ROW})",
    "favourite": f"COALESCE((SELECT favourite FROM reviews v WHERE {_OF_ROW}), 0)",
}
FILTERABLE = sorted([*COLUMNS, "cached", "tags", *_REVIEW])


def _simple(expression: str, value: Any) -> tuple[str, list[Any]]:
    if value is None:
        return f"{expression} IS NULL", []
    if isinstance(value, list | tuple | set | frozenset):
        values = list(value)
        if not values:
            return "0", []
        return f"{expression} IN ({', '.join('?' * len(values))})", values
    return f"{expression} = ?", [value]


def _check_value(name: str, value: Any) -> None:
    items = list(value) if isinstance(value, list | tuple | set | frozenset) else [value]
    for item in items:
        if item is not None and not isinstance(item, str | int | float):
            raise ValidationError(f"filter {name}={item!r}: give text, a number, None, or a list of those")


def where_clause(equals: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """SQL (without ``WHERE``) and its parameters for ``column == value`` filters; "" matches every row."""
    parts: list[str] = []
    params: list[Any] = []
    for name, value in equals.items():
        if name not in FILTERABLE:
            known = ", ".join(FILTERABLE)
            raise ValidationError(f"cannot filter on {name!r}: not a history column (try one of {known})")
        _check_value(name, value)
        if name == "cached":
            parts.append("records.cached_from IS NOT NULL" if value else "records.cached_from IS NULL")
            continue
        if name == "tags":
            for tag in [value] if isinstance(value, str) else list(value or []):
                parts.append(f"EXISTS (SELECT 1 FROM review_tags v WHERE {_OF_ROW} AND v.tag = ?)")
                params.append(tag)
            continue
        if name == "favourite":
            value = int(bool(value))
        sql, values = _simple(_REVIEW.get(name, f"records.{name}"), value)
        parts.append(sql)
        params.extend(values)
    return " AND ".join(parts), params
