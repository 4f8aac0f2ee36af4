"""The history and credits tables, as HTML for notebooks and as plain text for terminals and the CLI.

The credits table names each backend and keeps what BFL billed apart from what a local server or
another endpoint would have cost (never added together, never shown as True/False).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from flux_nb.core.backend import label_in_words
from flux_nb.history.records import is_billed_label
from flux_nb.notebook.render import shown_path, thumb_img

REVIEW_COLUMNS = ("rating", "fav", "note")
HISTORY_COLUMNS = ("id", "time", "status", "prompt", "seed", "size", "model", "credits", "s", "tag", *REVIEW_COLUMNS)
EMPTY_HISTORY = "no history yet: run a %%flux cell"


def _text(value: Any) -> str:
    return "" if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)) else str(value)


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text[:width] + ("…" if len(text) > width else "")


def _history_rows(
    frame: pd.DataFrame, limit: int, prompt_width: int = 80, when: str = "%Y-%m-%d %H:%M:%S"
) -> list[tuple[Any, list[str]]]:
    """The newest ``limit`` rows, newest first: (image path or None, one text cell per HISTORY_COLUMNS)."""
    rows = []
    for _, row in frame.tail(limit).iloc[::-1].iterrows():
        path = row.get("image_path")
        w, h = (row["out_width"], row["out_height"]) if not pd.isna(row["out_width"]) else (row["width"], row["height"])
        prompt = " ".join(str(row["prompt"]).split())
        values = [
            row["record_id"],
            row["created_at"].strftime(when) if not pd.isna(row["created_at"]) else "",
            row["status"],
            prompt[:prompt_width] + ("…" if len(prompt) > prompt_width else ""),
            row["seed"],
            f"{w}×{h}" if not pd.isna(w) and not pd.isna(h) else "auto",
            row["model"],
            "" if pd.isna(row["cost"]) else f"{row['cost']:.2f}",
            "" if pd.isna(row["duration_s"]) else f"{row['duration_s']:.2f}",
            _text(row["tag"]),
            _text(row.get("rating")),
            "★" if bool(row.get("favourite", False)) else "",
            _short(_text(row.get("note")), prompt_width // 2),
        ]
        rows.append((path if isinstance(path, str) else None, [str(v) for v in values]))
    return rows


def history_html(frame: pd.DataFrame, limit: int = 20, thumbnail_size: int = 128) -> str:
    """The newest ``limit`` history rows as a table with thumbnails large enough to judge."""
    head = "".join(f"<th>{h}</th>" for h in ("", *HISTORY_COLUMNS))
    body = []
    for path, values in _history_rows(frame, limit):
        img = thumb_img(path, thumbnail_size) if path and Path(path).exists() else ""
        cells = [img] + [html.escape(v) for v in values]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="flux-history"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def history_text(frame: pd.DataFrame, limit: int = 20, empty: str = EMPTY_HISTORY) -> str:
    """The newest ``limit`` history rows as a plain text table, with each image's path as captions show it
    (relative to the working directory), or ``empty`` if none."""
    rows = _history_rows(frame, limit, prompt_width=32, when="%m-%d %H:%M")
    if not rows:
        return empty
    table = pd.DataFrame(
        [[*values, shown_path(path) if path else ""] for path, values in rows], columns=[*HISTORY_COLUMNS, "image"]
    )
    unreviewed = [c for c in REVIEW_COLUMNS if (table[c] == "").all()]  # a terminal line has no room to spare
    return table.drop(columns=unreviewed).to_string(index=False)


def backend_name(backend: Any) -> str:
    """A backend label in words: ``BFL API``, ``local preview server``, ``endpoint HOST:PORT``."""
    return label_in_words(_text(backend))


def _money(value: Any) -> str:
    return f"{float(value):.2f}"


def cost_rows(summary: pd.DataFrame) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Header, one row per model and backend, and the totals (billed, then not billed, only those present).

    ``summary`` is ``Flux.cost()`` / ``HistoryStore.spent()``: model, backend, [notebook_requests,
    notebook_credits], requests, credits, billed.
    """
    mine = "notebook_requests" in summary.columns
    counts = [("notebook_requests", "notebook_credits")] if mine else []
    counts.append(("requests", "credits"))
    header = ["model", "backend"]
    header += ["here: requests", "here: credits", "all: requests", "all: credits"] if mine else ["requests", "credits"]
    billed = summary["billed"].astype(bool) if "billed" in summary.columns else summary["backend"].map(is_billed_label)
    rows = []
    for (_, row), is_billed in zip(summary.iterrows(), billed, strict=True):
        where = f"{backend_name(row['backend'])} ({'billed' if is_billed else 'not billed'})"
        values = [str(row["model"]), where]
        for n, c in counts:
            values += [str(int(row[n])), _money(row[c])]
        rows.append(values)
    totals = []
    for name, part in (("total billed", summary[billed]), ("total not billed", summary[~billed])):
        if part.empty:
            continue
        values = [name, ""]
        for n, c in counts:
            values += [str(int(part[n].sum())), _money(part[c].sum())]
        totals.append(values)
    return header, rows, totals


def charged_rows(charged: pd.DataFrame) -> list[list[str]]:
    """One row per model and backend: requests, the estimate before sending, what the API said it charged."""
    return [
        [str(row["model"]), backend_name(row["backend"]), str(int(row["requests"])), _money(row["estimated"]),
         _money(row["charged"])]
        for _, row in charged.iterrows()
    ]  # fmt: skip


CHARGED_HEADER = ["model", "backend", "requests", "estimated", "charged"]


def charged_text(charged: pd.DataFrame) -> str:
    """Estimate against charge, as plain text ("" when no answer said what it cost)."""
    rows = charged_rows(charged)
    if not rows:
        return ""
    table = pd.DataFrame(rows, columns=CHARGED_HEADER).to_string(index=False)
    return f"estimated before sending vs charged by the API (requests whose answer gave a cost):\n{table}"


def charged_html(charged: pd.DataFrame) -> str:
    """Estimate against charge, as an HTML table ("" when no answer said what it cost)."""
    rows = charged_rows(charged)
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in CHARGED_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    caption = "<caption>estimated before sending vs charged by the API</caption>"
    return f'<table class="flux-charged">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def cost_html(summary: pd.DataFrame) -> str:
    """Credits by model and backend, with billed and not-billed totals kept apart."""
    header, rows, totals = cost_rows(summary)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    bold = "<tr style='font-weight:bold'>"
    body += [bold + "".join(f"<td>{html.escape(c)}</td>" for c in t) + "</tr>" for t in totals]
    if not rows:
        body.append(f"<tr><td colspan='{len(header)}'>no credits spent yet</td></tr>")
    return f'<table class="flux-cost"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def cost_text(summary: pd.DataFrame) -> str:
    """Credits by model and backend as a plain text table, with billed and not-billed totals kept apart."""
    header, rows, totals = cost_rows(summary)
    if not rows:
        return "no credits spent yet"
    return pd.DataFrame([*rows, *totals], columns=header).to_string(index=False)
