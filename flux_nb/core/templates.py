"""Prompt templates: ``{name}`` filled from a namespace, ``{a|b|c}`` alternatives, search-and-replace axes.

Pure: no I/O and no ``eval``. Templates take plain names only: ``{name}``, never ``{obj.attr}``,
``{a[0]}``, ``{x!r}`` or ``{x:>8}`` (those would let a pasted prompt read anything reachable,
an API key included). A name holding a scalar (text, a number, a NumPy scalar) is written in;
a list, tuple, range, NumPy vector or pandas Series becomes a sweep axis named after the variable;
anything else (objects, dicts, sets, None) is refused. ``{a|b|c}`` is an axis of alternatives
(Dynamic Prompts' syntax) named ``alt1``, ``alt2``... by its place among the groups, or by the name
before ``=``: ``{light=golden hour|blue hour}`` is the axis ``light``. ``vary={"dog":
["dog", "cat"]}`` searches the prompt for the first value and replaces it by each value in turn
(A1111's Prompt S/R); the axis is named by its key.

Reference expressions (``s1[0]``, ``results.image``) follow the same rule: names, attributes
not starting with ``_`` and whole-number indexes, read by walking a parsed tree.
"""

from __future__ import annotations

import ast
import csv
import keyword
import numbers
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flux_nb.core.axes import PromptAxis, is_list_like, listed
from flux_nb.errors import FluxError, ValidationError

#: Unnamed inline alternatives are named ALTERNATIVES_NAME + their number in the prompt: alt1, alt2...
ALTERNATIVES_NAME = "alt"
#: A key shorter than this is refused only when a value equals it (not when a value contains it).
MIN_KEY_LENGTH = 8
_CHOICES = re.compile(r"\{([^{}]*\|[^{}]*)\}")
#: IPython's input and output history (_i1, In, Out, _, __...): never filled in, since any earlier cell (one
#: that held a password, say) would go out with the prompt.
IPYTHON_HISTORY = re.compile(r"_{1,3}|_i{1,3}|_i\d+|_\d+|_oh|_ih|_dh|In|Out")
_PLAIN_ONLY = (
    "only plain names are filled ({name}); attribute access, indexing, conversions and format specs are not "
    "(put the value in a variable first, or write {{ and }} for literal braces)"
)


@dataclass(frozen=True)
class Slot:
    """A place in a prompt filled, for each point of a sweep, from the label ``name``."""

    name: str


Part = str | Slot


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with its axes: ``render(labels)`` gives the text for one point of the sweep.

    >>> t = choices("a {red|blue} car")
    >>> t.label, [t.render({"alt1": v}) for v in t.axes[0].values]
    ('a {alt1} car', ['a red car', 'a blue car'])
    """

    parts: tuple[Part, ...]
    axes: tuple[PromptAxis, ...] = ()
    replacements: tuple[tuple[str, str], ...] = ()  # (axis name, text to find)

    @property
    def label(self) -> str:
        """The prompt as a grid labels it: fixed values written in, axes as ``{name}``."""
        return "".join(p if isinstance(p, str) else f"{{{p.name}}}" for p in self.parts)

    def render(self, labels: Mapping[str, Any]) -> str:
        """The prompt for one point: slots filled from ``labels``, then the replacements made."""
        text = "".join(p if isinstance(p, str) else text_of(labels[p.name]) for p in self.parts)
        for name, find in self.replacements:
            text = text.replace(find, text_of(labels[name]))
        return text


def text_of(value: Any) -> str:
    """How a scalar reads in a prompt (as ``str.format`` writes it)."""
    return format(value, "")


def is_scalar(value: Any) -> bool:
    """Text and numbers (NumPy scalars included): what a template writes in."""
    return isinstance(value, (str, numbers.Number)) or _is_numpy_scalar(value)


def _is_numpy_scalar(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.generic) and not isinstance(value, numpy.void)


def _plain(value: Any) -> Any:
    """NumPy scalars as Python ones, so labels sort and print plainly."""
    return value.item() if _is_numpy_scalar(value) else value


def refuse_keys(name: str, value: Any, keys: Iterable[str]) -> None:
    """A ValidationError when ``value`` is (or holds) one of ``keys``; the message never shows the key."""
    if not isinstance(value, str):
        value = text_of(value) if is_scalar(value) else ""
    for key in keys:
        if key and (value == key or (len(key) >= MIN_KEY_LENGTH and key in value)):
            raise ValidationError(f"{name} holds an API key; a key is never put into a prompt or a request field")


def _kind(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, Mapping):
        return "a dict"
    if isinstance(value, (set, frozenset)):
        return "a set (it has no order: use a list)"
    kind = type(value).__name__
    return "a plain object" if kind == "object" else f"{'an' if kind[0] in 'aeiouAEIOU' else 'a'} {kind} object"


def _axis_values(name: str, value: Any, keys: Iterable[str]) -> tuple[Any, ...]:
    items = listed(value, f"prompt template: {{{name}}}")
    if not items:
        raise ValidationError(f"prompt template: {{{name}}} is an empty list; give it at least one value")
    for i, item in enumerate(items):
        if not is_scalar(item):
            raise ValidationError(
                f"prompt template: {{{name}}}[{i}] is {_kind(item)}; list items must be text or numbers"
            )
        refuse_keys(f"prompt template: {{{name}}}[{i}]", item, keys)
    return tuple(_plain(item) for item in items)


def _field(body: str, start: int) -> tuple[str, int]:
    """The text inside the ``{`` at ``start`` and the index after its ``}``."""
    end = body.find("}", start + 1)
    inner = body.find("{", start + 1)
    if end < 0 or 0 <= inner < end:
        raise ValidationError(
            f"prompt template: the {{ at character {start + 1} is not closed; write {{{{ for a literal brace"
        )
    return body[start + 1 : end], end + 1


def parse(body: str) -> list[Part | tuple[str, ...]]:
    """Split a cell's prompt into text, ``Slot``s for ``{name}`` and tuples for ``{a|b}``; ``{{ }}`` are braces."""
    parts: list[Part | tuple[str, ...]] = []
    text: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char in "{}" and body[i + 1 : i + 2] == char:
            text.append(char)
            i += 2
        elif char == "}":
            raise ValidationError(f"prompt template: a single }} at character {i + 1}; write }}}} for a literal brace")
        elif char == "{":
            inner, i = _field(body, i)
            parts.append("".join(text))
            text = []
            if "|" in inner:
                parts.append(tuple(inner.split("|")))
            elif inner.isidentifier() and not keyword.iskeyword(inner):
                parts.append(Slot(inner))
            else:
                raise ValidationError(f"prompt template {{{_shown(inner)}}}: {_PLAIN_ONLY}")
        else:
            text.append(char)
            i += 1
    parts.append("".join(text))
    return [p for p in parts if p != ""]


def _shown(text: str) -> str:
    """Text safe to print in a message (lone surrogates escaped, long text cut)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 60 else text[:57] + "..."


def alternative(values: tuple[str, ...], number: int) -> PromptAxis:
    """The axis of ``{a|b}`` group ``number``: ``{name=a|b}`` names it ``name``, else it is ``alt<number>``.

    >>> alternative(("light=golden hour", "blue hour"), 1)
    PromptAxis(name='light', values=('golden hour', 'blue hour'))
    """
    head, equals, first = values[0].partition("=")
    if equals and head.isidentifier() and not keyword.iskeyword(head):
        if head.startswith(ALTERNATIVES_NAME) and head[len(ALTERNATIVES_NAME) :].isdigit():
            raise ValidationError(f"prompt template: {{{head}=...}}: {head} is a name kept for unnamed alternatives")
        return PromptAxis(head, (first, *values[1:]))
    return PromptAxis(f"{ALTERNATIVES_NAME}{number}", values)


def fill(body: str, namespace: Mapping[str, Any], *, keys: Sequence[str] = ()) -> PromptTemplate:
    """A cell's prompt as a template: scalars written in, list-likes and ``{a|b}`` as axes.

    ``keys`` are refused wherever a value would carry one into the prompt.

    >>> fill("a {animal} in {places}", {"animal": "fox", "places": ["snow", "rain"]}).label
    'a fox in {places}'
    """
    parts: list[Part] = []
    axes: dict[str, PromptAxis] = {}
    alternatives = 0
    for part in parse(body):
        if isinstance(part, tuple):
            alternatives += 1
            axis = alternative(part, alternatives)
            if axis.name in axes:
                raise ValidationError(
                    f"prompt template: {{{axis.name}}} is both a variable (or another group's name) and the name "
                    f"of {{a|b}} number {alternatives}; rename one of them"
                )
            axes[axis.name] = axis
            parts.append(Slot(axis.name))
        elif isinstance(part, Slot):
            parts.append(_fill_slot(part.name, namespace, axes, keys))
        else:
            parts.append(part)
    merged: list[Part] = []
    for part in parts:  # neighbouring text joins up again
        if isinstance(part, str) and merged and isinstance(merged[-1], str):
            merged[-1] += part
        else:
            merged.append(part)
    return PromptTemplate(tuple(merged), tuple(axes.values()))


def _fill_slot(name: str, namespace: Mapping[str, Any], axes: dict[str, PromptAxis], keys: Sequence[str]) -> Part:
    if IPYTHON_HISTORY.fullmatch(name):
        raise ValidationError(
            f"prompt template: {{{name}}} is IPython's input/output history, which can hold any earlier cell; "
            f"it is never filled in: assign what you mean to a normal name (e.g. subject = ...) and write {{subject}}"
        )
    if name not in namespace:
        raise ValidationError(
            f"prompt template: {{{name}}} is not defined in the notebook (define it, or write {{{{{name}}}}} "
            "for literal braces)"
        )
    value = namespace[name]
    if is_scalar(value):
        refuse_keys(f"prompt template: {{{name}}}", value, keys)
        return text_of(_plain(value))
    if not is_list_like(value):
        raise ValidationError(
            f"prompt template: {{{name}}} is {_kind(value)}; a template takes text, a number, "
            "or a list of them (which sweeps)"
        )
    if name not in axes:
        if name.startswith(ALTERNATIVES_NAME) and name[len(ALTERNATIVES_NAME) :].isdigit():
            raise ValidationError(f"prompt template: {{{name}}} is a name kept for {{a|b}} alternatives; rename it")
        axes[name] = PromptAxis(name, _axis_values(name, value, keys))
    return Slot(name)


def choices(prompt: str) -> PromptTemplate:
    """A prompt given as plain text (the Python API, the CLI): only ``{a|b|c}`` groups are special.

    >>> choices("json {like: this}").axes
    ()
    """
    parts: list[Part] = []
    axes: list[PromptAxis] = []
    position = 0
    for match in _CHOICES.finditer(prompt):
        axis = alternative(tuple(match.group(1).split("|")), len(axes) + 1)
        if axis.name in {a.name for a in axes}:
            raise ValidationError(f"prompt: two {{a|b}} groups are named {axis.name}; give each its own name")
        axes.append(axis)
        parts += [prompt[position : match.start()], Slot(axis.name)]
        position = match.end()
    parts.append(prompt[position:])
    return PromptTemplate(tuple(p for p in parts if p != ""), tuple(axes))


def parse_vary(items: Sequence[str]) -> dict[str, list[str]]:
    """Search-and-replace axes from option text: ``NAME=FIND,REPLACEMENT,...`` (quote a value holding commas).

    >>> parse_vary(['animal=dog,cat,"red, fox"'])
    {'animal': ['dog', 'cat', 'red, fox']}
    """
    vary: dict[str, list[str]] = {}
    for item in items:
        name, equals, values = item.partition("=")
        name = name.strip()
        if not equals or not name.isidentifier():
            raise ValidationError(
                f"vary {_shown(item)!r} must read NAME=FIND,REPLACEMENT,... (e.g. animal=dog,cat,fox: "
                "the first value is the text to find in the prompt)"
            )
        if name in vary:
            raise ValidationError(f"vary {name} is given twice; put all its values in one list")
        vary[name] = [v.strip() for v in next(csv.reader([values], skipinitialspace=True), [])]
    return vary


def replacement_axes(vary: Mapping[str, Any], keys: Sequence[str] = ()) -> list[tuple[PromptAxis, str]]:
    """Checked search-and-replace axes: each with the text it finds (its first value)."""
    if not isinstance(vary, Mapping):
        raise ValidationError(f"vary must be a dict like {{'animal': ['dog', 'cat']}}, got {_kind(vary)}")
    axes = []
    for name, values in vary.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValidationError(f"vary: the name {name!r} must be a plain name like animal")
        if not is_list_like(values):
            raise ValidationError(
                f"vary {name}: give a list whose first value is the text to find, e.g. {name}=['dog', 'cat']"
            )
        values = _axis_values(name, values, keys)
        if not text_of(values[0]):
            raise ValidationError(f"vary {name}: the first value is the text to find in the prompt; it is empty")
        axes.append((PromptAxis(name, values), text_of(values[0])))
    return axes


def with_replacements(template: PromptTemplate, axes: Sequence[tuple[PromptAxis, str]]) -> PromptTemplate:
    """``template`` with the search-and-replace axes whose text it holds (with every axis at its first value)."""
    first = {axis.name: axis.values[0] for axis in template.axes}
    text = template.render(first)
    found = [(axis, find) for axis, find in axes if find in text]
    taken = {axis.name for axis in template.axes}
    for axis, _find in found:
        if axis.name in taken:
            raise ValidationError(f"vary {axis.name} has the name of a prompt template axis; rename one of them")
    return PromptTemplate(
        template.parts,
        (*template.axes, *(axis for axis, _ in found)),
        (*template.replacements, *((axis.name, find) for axis, find in found)),
    )


#: ``reference`` returns this for text that is not a name or an expression on one (a path or a URL).
NOT_A_REFERENCE = object()


def reference(text: str, namespace: Mapping[str, Any], *, what: str, keys: Sequence[str] = ()) -> Any:
    """The value ``text`` names in ``namespace`` (``s1[0]``, ``results.image``), or ``NOT_A_REFERENCE``.

    Names, attributes not starting with ``_`` and whole-number indexes are followed; nothing is
    called or evaluated. Text that is not such an expression, or whose name is not defined, is
    ``NOT_A_REFERENCE`` (a path or a URL); an expression reaching further is refused.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return NOT_A_REFERENCE
    root = _root(tree)
    if root is None or root not in namespace:
        return NOT_A_REFERENCE
    if not _allowed(tree):
        raise ValidationError(
            f"{what}: only a name, attributes not starting with _ and whole-number indexes are looked up "
            "(like s1[0] or results.image); nothing is called or evaluated"
        )
    value = _walk(tree, namespace, what)
    if isinstance(value, str):
        refuse_keys(what, value, keys)
    return value


def _root(node: ast.expr) -> str | None:
    """The name an expression starts from (``s1`` in ``s1[0].image``), if it is a chain on one name."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _index(node: ast.expr) -> int | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _index(node.operand)
        return None if inner is None else -inner
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _allowed(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return True
    if isinstance(node, ast.Attribute):
        return not node.attr.startswith("_") and _allowed(node.value)
    if isinstance(node, ast.Subscript):
        return _index(node.slice) is not None and _allowed(node.value)
    return False


def _walk(node: ast.expr, namespace: Mapping[str, Any], what: str) -> Any:
    if isinstance(node, ast.Name):
        return namespace[node.id]
    assert isinstance(node, (ast.Attribute, ast.Subscript))
    base = _walk(node.value, namespace, what)
    try:
        if isinstance(node, ast.Attribute):
            return getattr(base, node.attr)
        return base[_index(node.slice)]
    except FluxError:
        raise
    except Exception as exc:
        raise ValidationError(f"{what}: {type(exc).__name__}: {_shown(str(exc))}") from None
