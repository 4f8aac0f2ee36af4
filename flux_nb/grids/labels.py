"""How values read on a grid: headers, axis titles, natural order, and only what varies between rows.

``varying`` finds the words every value of an axis shares (a common prompt prefix or suffix), so
the title can say them once and each header shows only the differing part, as A1111's Prompt S/R does.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from flux_nb.core.axes import COMBINED

#: Shared words shorter than this (in characters) are not worth a title: the values stay whole.
MIN_SHARED = 8
ELLIPSIS = "…"


def label(value: Any) -> str:
    """How a value reads in a header: sizes as 1024×768, whole floats without ".0", paths by name."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}×{value[1]}"
    if isinstance(value, (tuple, list)):
        return ", ".join(label(v) for v in value)
    if isinstance(value, Image.Image):
        return f"image {value.width}×{value.height}"
    if isinstance(value, Path):
        return value.name
    return str(value)


def axis_label(name: str, value: Any) -> str:
    """A value with its axis name, as in titles: "seed: 42", or "model: pro · steps: 4" for folded axes."""
    parts = name.split(COMBINED)
    if len(parts) > 1 and isinstance(value, tuple) and len(value) == len(parts):
        return " · ".join(f"{n}: {label(v)}" for n, v in zip(parts, value, strict=True))
    return f"{name}: {label(value)}"


def header(axis: str, value: Any) -> str:
    """A header: the bare value, or "name: value" pairs for a folded axis like "model+steps"."""
    return axis_label(axis, value) if COMBINED in axis else label(value)


def heading(axis: str, value: Any) -> str:
    """A drawn header names its axis, as A1111's "Seed: 1" does: "seed 1", "model pro · steps 4".

    A prompt is its own name: it reads as the text alone.
    """
    parts = axis.split(COMBINED)
    if len(parts) > 1 and isinstance(value, tuple) and len(value) == len(parts):
        return " · ".join(heading(n, v) for n, v in zip(parts, value, strict=True))
    return label(value) if axis == "prompt" else f"{axis} {label(value)}"


def plain(value: Any) -> Any:
    """A hashable cell key for a value: lists become tuples, NA becomes None, images their label."""
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        hash(value)
    except TypeError:
        return label(value)
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # NumPy numbers too


def ordered(values: Iterable[Any]) -> list[Any]:
    """Distinct values: numbers (and sizes) sorted, anything else in order of first appearance; None last."""
    distinct = list(dict.fromkeys(values))
    seen = [v for v in distinct if v is not None]
    numeric = all(is_number(v) for v in seen) or all(
        isinstance(v, tuple) and all(is_number(p) for p in v) for v in seen
    )
    if seen and numeric:
        seen.sort()
    return [*seen, None] if None in distinct else seen


def varying(values: list[Any]) -> tuple[str, dict[Any, str]]:
    """The words all text values share ("a photo of … , oil painting") and each value's own part.

    Returns ("", {}) when the values are not all text, fewer than two, or share too little to say once.
    """
    texts = [v for v in values if v is not None]
    if len(texts) < 2 or not all(isinstance(v, str) for v in texts):
        return "", {}
    words = [v.split() for v in texts]
    shortest = min(len(w) for w in words)
    head = 0
    while head < shortest - 1 and all(w[head] == words[0][head] for w in words):
        head += 1
    tail = 0
    while tail < shortest - head - 1 and all(w[-1 - tail] == words[0][-1 - tail] for w in words):
        tail += 1
    prefix, suffix = " ".join(words[0][:head]), " ".join(words[0][len(words[0]) - tail :])
    if len(prefix) + len(suffix) < MIN_SHARED:
        return "", {}
    own = {v: " ".join(w[head : len(w) - tail]) for v, w in zip(texts, words, strict=True)}
    shared = " ".join(part for part in (prefix, ELLIPSIS, suffix) if part)
    return shared, own


def file_part(text: str) -> str:
    """Text made safe for a file name: "prompt: a cat" -> "prompt_a_cat"."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_")[:100]


def cell_label(name: str, value: Any) -> str:
    """A per-cell caption: "rating 4/5" (or "unrated"), else "name value"."""
    if name == "rating":
        return "unrated" if value is None else f"rating {label(value)}/5"
    return f"{name} {label(value)}"
