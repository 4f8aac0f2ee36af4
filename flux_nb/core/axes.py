"""Sweeps: expand axes (seeds, prompts, sizes, models, any field) into requests, keeping labels.

Pure: no I/O. Number options read the way artists count: ranges are inclusive ("1:4" is
1, 2, 3, 4, not Python's 1, 2, 3), take an optional step ("0:1024:256" is 0, 256, 512, 768,
1024) and mix with lists ("1,5:7" is 1, 5, 6, 7).
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flux_nb import protocol
from flux_nb.errors import ValidationError

# Request fields a sweep can vary; "size" holds (width, height) pairs and sets both.
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
#: Names a prompt axis cannot take: request fields and what a result or a grid row holds beside them.
RESERVED_NAMES = frozenset(
    {*AXIS_FIELDS, "aspect", "labels", "record_id", "id", "status", "path", "image_path", "cost", "estimated_cost"}
    | {"billed", "elapsed", "cached", "task_id", "engine", "tag", "error", "out_width", "out_height", "image"}
)
MAX_VALUES = 1000
MAX_COMBINATIONS = 1024
PROMPT_SEPARATOR = "---"
# Joins the names of axes folded into one grid axis: "model+steps" labels pages by both.
COMBINED = "+"
# Float ranges end on their END despite rounding: 2:3:0.1 includes 3.0.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Axis:
    """One swept field and its values, e.g. ``Axis("seed", (1, 2, 3))``."""

    name: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        values: Iterable[Any] = self.values
        if hasattr(values, "__len__"):
            values = listed(values, f"axis {self.name!r}", MAX_COMBINATIONS)
        object.__setattr__(self, "values", tuple(values))


def is_list_like(value: Any) -> bool:
    """A list, tuple, range, 1-d NumPy array, pandas Series or Index: a value that sweeps."""
    if isinstance(value, (list, tuple, range)):
        return True
    numpy, pandas = sys.modules.get("numpy"), sys.modules.get("pandas")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return value.ndim == 1
    return pandas is not None and isinstance(value, (pandas.Series, pandas.Index))


def listed(value: Any, what: str, most: int = MAX_VALUES) -> list[Any]:
    """The items of a sized ``value`` as a list, counted with ``len()`` first: more than ``most`` is refused
    before any item is copied (``range(10**9)`` is one error, not gigabytes).

    >>> listed(range(3), "seed")
    [0, 1, 2]
    """
    count = len(value)
    if count > most:
        raise ValidationError(f"{what} has {count} values; at most {most} run at once (narrow it or split it up)")
    return value.tolist() if hasattr(value, "tolist") else list(value)


@dataclass(frozen=True)
class PromptAxis(Axis):
    """An axis that varies the prompt's text (a template list, ``{a|b}`` alternatives, a search-and-replace).

    It only labels a point: the prompt is rendered from the labels (``core.templates``).
    """


@dataclass(frozen=True)
class SweepPoint:
    """One combination: the request fields, and the axis values that label it (in axis order)."""

    fields: dict[str, Any]
    labels: dict[str, Any]


def _option(name: str) -> str:
    return name if name.startswith("-") else f"--{name}"


def _number(text: str, name: str, kind: type[int] | type[float]) -> int | float:
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        raise ValidationError(f"{_option(name)}: {text!r} is not {what}") from None
    if not math.isfinite(value):
        raise ValidationError(f"{_option(name)}: {text!r} is not {what}")
    return value


def _range(part: str, name: str, kind: type[int] | type[float], room: int, text: str) -> list[Any]:
    option = _option(name)
    pieces = [p.strip() for p in part.split(":")]
    if len(pieces) not in (2, 3):
        raise ValidationError(f"{option} range {part!r} must be START:END or START:END:STEP")
    start, end = _number(pieces[0], name, kind), _number(pieces[1], name, kind)
    step = _number(pieces[2], name, kind) if len(pieces) == 3 else 1
    if step <= 0:
        raise ValidationError(f"{option} range {part!r} needs a positive step (END is included: 0:1024:256)")
    if end < start:
        raise ValidationError(f"{option} range {part!r} runs backwards (write {pieces[1]}:{pieces[0]})")
    count = int((end - start) / step + _EPSILON) + 1
    if count > room:
        raise ValidationError(f"{option} {text!r} gives more than {MAX_VALUES} values; narrow the range or raise STEP")
    return [start + i * step for i in range(count)]


def _parse(text: str, name: str, kind: type[int] | type[float]) -> list[Any]:
    option = _option(name)
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise ValidationError(f"{option} is empty: give a value (42), a list (1,2,3) or a range (1:8)")
    values: list[Any] = []
    for part in parts:
        if not part:
            raise ValidationError(f"{option} {text!r} has an empty item between commas")
        if ":" in part[1:]:  # a leading "-" is a sign, not a range
            values += _range(part, name, kind, MAX_VALUES - len(values), text)
        else:
            values.append(_number(part, name, kind))
        if len(values) > MAX_VALUES:
            raise ValidationError(f"{option} {text!r} gives more than {MAX_VALUES} values")
    return values


def parse_numbers(text: str, name: str) -> list[int]:
    """Whole numbers from "42", "1,2,3", "1:4" (inclusive), "0:1024:256", or a mix "1,5:7".

    ``name`` is the option, used in error messages ("seed" reads as ``--seed``).

    >>> parse_numbers("1,5:7", "seed")
    [1, 5, 6, 7]
    """
    return _parse(text, name, int)


def parse_floats(text: str, name: str) -> list[float]:
    """Numbers like ``parse_numbers``, decimals allowed: "2.5,3.5" or "2:4:0.5".

    >>> parse_floats("2:3:0.5", "guidance")
    [2.0, 2.5, 3.0]
    """
    return [round(float(v), 6) for v in _parse(text, name, float)]


def split_prompts(body: str) -> list[str]:
    """Prompts in one cell body, separated by a line holding only ``---``; each stripped.

    >>> split_prompts("a fox\\n---\\na hare")
    ['a fox', 'a hare']
    """
    chunks: list[list[str]] = [[]]
    for line in body.splitlines():
        if line.strip() == PROMPT_SEPARATOR:
            chunks.append([])
        else:
            chunks[-1].append(line)
    prompts = [p for p in ("\n".join(chunk).strip() for chunk in chunks) if p]
    if not prompts:
        raise ValidationError("the cell holds no prompt: write what the image should show")
    return prompts


def _check_axes(axes: list[Axis], limit: int) -> None:
    names = [axis.name for axis in axes]
    for axis in axes:
        if isinstance(axis, PromptAxis):
            if axis.name in RESERVED_NAMES:
                raise ValidationError(
                    f"the prompt axis {{{axis.name}}} has the name of a request field or of a result's detail; "
                    f"rename it (e.g. {axis.name}s)"
                )
        elif axis.name not in AXIS_FIELDS:
            raise ValidationError(f"cannot sweep {axis.name!r}: sweepable fields are {', '.join(AXIS_FIELDS)}")
        if not axis.values:
            raise ValidationError(f"axis {axis.name!r} has no values")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValidationError(f"axis {', '.join(duplicated)} is given twice; merge its values into one list")
    if "size" in names and ("width" in names or "height" in names):
        raise ValidationError("sweep either size or width/height, not both (size sets width and height)")
    for size in next((a.values for a in axes if a.name == "size"), ()):
        if not (isinstance(size, (tuple, list)) and len(size) == 2):
            raise ValidationError(f"size {size!r} must be a (width, height) pair like (1024, 768)")
    total = math.prod(len(axis.values) for axis in axes)
    if total > limit:
        raise ValidationError(f"the sweep has {total} combinations; at most {limit} run at once (split it up)")


def expand(base: dict[str, Any], axes: list[Axis], limit: int = MAX_COMBINATIONS) -> list[SweepPoint]:
    """Every combination of the axes over the base fields; the first axis varies slowest.

    >>> [p.labels for p in expand({}, [Axis("prompt", ("a", "b")), Axis("seed", (1, 2))])]
    [{'prompt': 'a', 'seed': 1}, {'prompt': 'a', 'seed': 2}, {'prompt': 'b', 'seed': 1}, {'prompt': 'b', 'seed': 2}]
    """
    _check_axes(axes, limit)
    names = [axis.name for axis in axes]
    points = []
    for combination in itertools.product(*(axis.values for axis in axes)):
        fields = dict(base)
        labels = dict(zip(names, combination, strict=True))
        for axis, value in zip(axes, combination, strict=True):
            name = axis.name
            if isinstance(axis, PromptAxis):
                continue  # labels only: the prompt is rendered from them
            if name == "size":
                fields["width"], fields["height"] = value
            else:
                fields[name] = value
        points.append(SweepPoint(fields, labels))
    return points


def grid_axes(labels: list[dict[str, Any]]) -> tuple[str | None, str | None, str | None]:
    """Grid axes (x, y, z) from a sweep's labels: only varying axes count.

    Seed goes across when it varies (seeds compare best side by side); the other varying
    axes follow in sweep order: x, then y, then z. A fourth and later axis fold into z,
    named "a+b" (``grid`` pages by the pair).

    >>> grid_axes([{"prompt": p, "seed": s} for p in "ab" for s in (1, 2)])
    ('seed', 'prompt', None)
    """
    order = list(dict.fromkeys(name for label in labels for name in label))
    varying = [n for n in order if len({_key(label.get(n)) for label in labels}) > 1]
    if "seed" in varying:
        varying.remove("seed")
        varying.insert(0, "seed")
    padded: list[str | None] = [*varying, None, None]
    x, y, *rest = padded
    z = COMBINED.join(n for n in rest if n) or None
    return x, y, z


def _key(value: Any) -> Any:
    """A hashable stand-in for a label value (lists of images included)."""
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value


def option_axes(
    *,
    seed: str | None = None,
    width: str | None = None,
    height: str | None = None,
    size: str | None = None,
    aspect: str | None = None,
    safety: str | None = None,
    steps: str | None = None,
    guidance: str | None = None,
    models: list[str] | None = None,
) -> list[Axis]:
    """Axes from option text as the magic and the CLI take it ("1:4", "512,1024", "1024x768", "16:9").

    >>> [(a.name, a.values) for a in option_axes(seed="1:2", size="512x512")]
    [('seed', (1, 2)), ('size', ((512, 512),))]
    """
    axes = []
    for name, option, raw in (
        ("seed", "--seed", seed),
        ("safety_tolerance", "--safety", safety),
        ("steps", "--steps", steps),
    ):
        if raw is not None:
            axes.append(Axis(name, tuple(parse_numbers(raw, option))))
    if guidance is not None:
        axes.append(Axis("guidance", tuple(parse_floats(guidance, "guidance"))))
    if size is not None and aspect is not None:
        raise ValidationError("give either --size or --aspect, not both (--aspect picks the size itself)")
    if size is not None or aspect is not None:
        if width is not None or height is not None:
            raise ValidationError("give either --size/--aspect or --width/--height, not both")
        sizes = [protocol.parse_size(s) for s in size.split(",")] if size else []
        if aspect:
            sizes += [protocol.aspect_size(a.strip()) for a in aspect.split(",")]
        axes.append(Axis("size", tuple(sizes)))
    for name, raw in (("width", width), ("height", height)):
        if raw is not None:
            axes.append(Axis(name, tuple(parse_numbers(raw, name))))
    names = [v.strip() for item in models or [] for v in item.split(",") if v.strip()]
    if names:
        for model in names:
            protocol.model_spec(model)
        axes.append(Axis("model", tuple(names)))
    return axes


def axes_of_options(args: Any) -> list[Axis]:
    """``option_axes`` from a parsed command line (the magic's and the CLI's options share their names)."""
    return option_axes(
        seed=args.seed,
        width=args.width,
        height=args.height,
        size=args.size,
        aspect=args.aspect,
        safety=args.safety,
        steps=args.steps,
        guidance=args.guidance,
        models=args.model,
    )
