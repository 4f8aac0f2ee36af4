"""Sweeps: expand axes (seeds, prompts, sizes, models, any field) into requests, keeping labels.

Pure: no I/O. Ranges are inclusive ("1:4" is 1, 2, 3, 4), as artists count, with an
optional step ("0:1024:256").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from flux_nb.errors import ValidationError

AXIS_FIELDS = (
    "prompt",
    "seed",
    "width",
    "height",
    "size",
    "model",
    "safety_tolerance",
    "output_format",
    "steps",
    "guidance",
    "images",
)
MAX_VALUES = 1000
MAX_COMBINATIONS = 1024
PROMPT_SEPARATOR = "---"


@dataclass(frozen=True)
class Axis:
    """One swept field and its values."""

    name: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class SweepPoint:
    """One combination: the request fields, and the axis values that label it."""

    fields: dict[str, Any]
    labels: dict[str, Any]


def _number(text: str, name: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValidationError(f"--{name}: {text!r} is not {what}") from None


def _parse(text: str, name: str, kind: type[int] | type[float]) -> list[Any]:
    values: list[Any] = []
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValidationError(f"--{name} is empty: give a value, a list (1,2,3) or a range (1:8)")
    for part in parts:
        if not part:
            raise ValidationError(f"--{name} {text!r} has an empty item")
        if ":" in part[1:]:
            pieces = part.split(":")
            if len(pieces) not in (2, 3):
                raise ValidationError(f"--{name} range {part!r} must be START:END or START:END:STEP")
            start, end = _number(pieces[0], name, kind), _number(pieces[1], name, kind)
            step = _number(pieces[2], name, kind) if len(pieces) == 3 else 1
            if step <= 0:
                raise ValidationError(f"--{name} range {part!r} needs a positive step")
            if end < start:
                raise ValidationError(f"--{name} range {part!r} runs backwards (write {pieces[1]}:{pieces[0]})")
            count = int((end - start) / step) + 1
            if len(values) + count > MAX_VALUES:
                raise ValidationError(f"--{name} {text!r} gives more than {MAX_VALUES} values")
            values.extend(start + i * step for i in range(count))
        else:
            values.append(_number(part, name, kind))
    if len(values) > MAX_VALUES:
        raise ValidationError(f"--{name} {text!r} gives more than {MAX_VALUES} values")
    return values


def parse_numbers(text: str, name: str) -> list[int]:
    """Whole numbers from "42", "1,2,3", "1:4" (inclusive), "0:1024:256", or a mix "1,5:7".

    >>> parse_numbers("1,5:7", "seed")
    [1, 5, 6, 7]
    """
    return _parse(text, name, int)


def parse_floats(text: str, name: str) -> list[float]:
    """Numbers like ``parse_numbers``, decimals allowed: "2.5,3.5" or "2:4:0.5"."""
    return [round(v, 6) for v in _parse(text, name, float)]


def split_prompts(body: str) -> list[str]:
    """Prompts separated by a line holding only ``---``."""
    chunks: list[list[str]] = [[]]
    for line in body.splitlines():
        if line.strip() == PROMPT_SEPARATOR:
            chunks.append([])
        else:
            chunks[-1].append(line)
    prompts = ["\n".join(chunk).strip() for chunk in chunks]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValidationError("the cell holds no prompt: write what the image should show")
    return prompts


def expand(base: dict[str, Any], axes: list[Axis], limit: int = MAX_COMBINATIONS) -> list[SweepPoint]:
    """Every combination of the axes (the first axis varies slowest) over the base fields."""
    names = [axis.name for axis in axes]
    for axis in axes:
        if axis.name not in AXIS_FIELDS:
            raise ValidationError(f"cannot sweep {axis.name!r}: sweepable fields are {', '.join(AXIS_FIELDS)}")
        if not axis.values:
            raise ValidationError(f"axis {axis.name!r} has no values")
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValidationError(f"axis {', '.join(sorted(duplicated))} is given twice")
    total = 1
    for axis in axes:
        total *= len(axis.values)
    if total > limit:
        raise ValidationError(f"the sweep has {total} combinations; at most {limit} run at once (split it up)")
    points = []
    for combination in itertools.product(*(axis.values for axis in axes)):
        fields = dict(base)
        labels: dict[str, Any] = {}
        for name, value in zip(names, combination, strict=True):
            labels[name] = value
            if name == "size":
                fields["width"], fields["height"] = value
            else:
                fields[name] = value
        points.append(SweepPoint(fields, labels))
    return points


def grid_axes(labels: list[dict[str, Any]]) -> tuple[str | None, str | None, str | None]:
    """Pick grid axes from the varying labels: seed across when it varies, then in order."""
    order: list[str] = []
    for label in labels:
        for name in label:
            if name not in order:
                order.append(name)
    varying = [n for n in order if len({_hashable(lab.get(n)) for lab in labels}) > 1]
    if "seed" in varying:
        varying.remove("seed")
        varying.insert(0, "seed")
    x = varying[0] if varying else None
    y = varying[1] if len(varying) > 1 else None
    z = varying[2] if len(varying) > 2 else None
    return x, y, z


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
