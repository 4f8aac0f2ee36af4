"""Selecting history rows without reading the whole history: filters and sums pushed into SQL.

Used by the ``%flux`` verbs and by ``flux-nb``. ``--where`` takes a pandas query expression; the parts
of it that are plain ``column == value`` (or ``column in [values]``) comparisons on a stored column,
joined by ``and``/``&``, are first sent to SQL (``HistoryStore.query``), then the whole expression is
applied to what came back with ``DataFrame.query``. The result is exactly pandas' answer (SQL only
narrows first), and a selective ``--where`` never builds a million-row frame. Messages are neutral.
"""

from __future__ import annotations

import ast
import io
import tokenize
from typing import TYPE_CHECKING, Any

import pandas as pd

from flux_nb.errors import ValidationError
from flux_nb.history.filters import FILTERABLE
from flux_nb.history.schema import TIME_COLUMNS

if TYPE_CHECKING:
    from flux_nb.session import Flux

# Columns whose stored form is what pandas compares (times are numbers in SQL, timestamps in the frame;
# ``tags`` is one joined string in the frame; ``note``/``rating`` compare missing values differently).
PUSHABLE = frozenset(FILTERABLE) - {*TIME_COLUMNS, "tags", "input_hashes", "note", "rating", "labels"}


def filters(experiment: str | None = None, tag: str | None = None) -> dict[str, Any]:
    """``column == value`` filters from the --experiment and --tag options (only those given)."""
    return {k: v for k, v in (("experiment", experiment), ("tag", tag)) if v is not None}


def _constant(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
        values = [_constant(e) for e in node.elts]
        return None if any(v is None or isinstance(v, list) for v in values) else values
    return None


def _term(node: ast.expr) -> tuple[str, Any] | None:
    """``name == constant`` or ``name in [constants]`` (either side), else None."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
        return None
    left, right, op = node.left, node.comparators[0], node.ops[0]
    if isinstance(right, ast.Name) and isinstance(op, ast.Eq):
        left, right = right, left
    if not isinstance(left, ast.Name) or left.id not in PUSHABLE:
        return None
    value = _constant(right)
    if value is None or (isinstance(op, ast.Eq) and isinstance(value, list)):
        return None
    if isinstance(op, ast.In) and isinstance(value, list):
        return left.id, value
    if isinstance(op, ast.Eq) and not isinstance(value, bool):
        return left.id, value
    return None


def _terms(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [t for value in node.values for t in _terms(value)]
    return [node]


def _pandas_precedence(where: str) -> str:
    """``&``/``|`` as ``and``/``or``: pandas gives them the precedence of the boolean operators."""
    words = {"&": "and", "|": "or"}
    tokens = [
        (tokenize.NAME, words[t.string]) if t.type == tokenize.OP and t.string in words else (t.type, t.string)
        for t in tokenize.generate_tokens(io.StringIO(where.strip()).readline)
    ]
    return tokenize.untokenize(tokens).strip()


def sql_part(where: str) -> dict[str, Any]:
    """The ``column == value`` filters implied by a pandas query expression (every row passing ``where``
    passes them); {} when nothing can be pushed down (an ``or``, a ``>``, a backtick, ``@var``...).

    >>> sql_part("model == 'flux-2-pro' and seed > 3")
    {'model': 'flux-2-pro'}
    """
    try:
        tree = ast.parse(_pandas_precedence(where), mode="eval")
    except (SyntaxError, tokenize.TokenError, IndentationError):
        return {}
    found: dict[str, Any] = {}
    for term in _terms(tree.body):
        pair = _term(term)
        if pair is not None and pair[0] not in found:
            found[pair[0]] = pair[1]
    return found


def select(session: Flux, where: str | None = None, **equals: Any) -> pd.DataFrame:
    """History rows matching ``equals`` and the pandas expression ``where``, read without the rest."""
    pushed = {**sql_part(where), **equals} if where else dict(equals)
    frame = session.store.query(**pushed)
    frame.attrs["history_dir"] = str(session.history_dir)
    if where:
        try:
            mask = frame.eval(where)
        except Exception as exc:
            raise ValidationError(f"--where {where!r} failed: {exc}") from None
        if not (isinstance(mask, pd.Series) and pd.api.types.is_bool_dtype(mask.dtype)):
            raise ValidationError(f'--where {where!r} is not a condition on the rows (e.g. "seed == 3")')
        frame = frame[mask.fillna(False).astype(bool)]
    return frame


def cost_summary(
    session: Flux, experiment: str | None = None, tag: str | None = None, *, everywhere: bool = False
) -> pd.DataFrame:
    """Credits by model and backend (``HistoryStore.spent`` columns), summed in SQL; a tag sums only that
    tag's records. The session's own share (its notebook) is added unless ``everywhere``."""
    if everywhere or tag is not None:
        notebook = None if everywhere else (session.notebook or None)
        return session.store.spent(notebook, experiment=experiment, tag=tag)
    return session.cost(experiment=experiment) if experiment is not None else session.cost()
