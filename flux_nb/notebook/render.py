"""How results, failures, progress and history look in a notebook (and in a terminal).

The notebook gets compact thumbnails (the full image stays on disk) so a notebook with a
hundred images stays a few MB. Display problems never break generation.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.display import HTML, display

from flux_nb.errors import FluxError
from flux_nb.images import thumbnail
from flux_nb.metadata import source_sha256
from flux_nb.notebook.hints import in_notebook_words

if TYPE_CHECKING:
    from flux_nb.core.results import Result, SweepResult

NOT_BILLED = " (not billed: local server)"  # after credits, where the backend is not BFL's API


@dataclass
class DisplaySettings:
    """How results show in notebooks (``%load_ext`` keeps it in step with ``Flux.thumbnail_*``)."""

    thumbnail_size: int = 384
    thumbnail_format: str = "jpeg"


settings = DisplaySettings()

# Colours come from the front end's theme: JupyterLab's and Notebook 7's CSS variables, then VS Code's,
# then colours that read on a light page (nbclassic, exported HTML). Each measures at least 4.5:1 on
# JupyterLab Light and Dark (tests/test_display.py and the browser suite check it).
TEXT = "var(--jp-content-font-color1, var(--vscode-foreground, #222))"
MUTED = "var(--jp-content-font-color2, var(--vscode-descriptionForeground, #555))"
ERROR = "var(--jp-error-color1, var(--vscode-errorForeground, #b00020))"
TRACK = "var(--jp-layout-color3, #ccc)"
FILL = "var(--jp-brand-color1, #1976d2)"
#: Shared rules: the spinner's turn (inline styles cannot hold keyframes). Without it the ring stands still.
STYLE = "<style>@keyframes flux-spin{to{transform:rotate(360deg)}}</style>"
#: A failure's mark: one ASCII character in a ring drawn with CSS (emoji glyphs are missing on many systems).
MARKS = {"failed": "!", "moderated": "×", "unknown": "?", "cancelled": "–", "error": "!"}
WAITING = {"submitted", "pending", "sending", "queued"}
#: Pixels of the longer side of a reference image's thumbnail under an edit's result.
REFERENCE_THUMB = 64


#: Seconds a live line's spinner turns after its last redraw: it stops when the kernel stops redrawing.
SPIN_S = 2.0
#: Seconds per turn of a spinner.
TURN_S = 0.9


def spinner(elapsed: float = 0.0) -> str:
    """A small turning ring in the text's colour, drawn with CSS (no font or emoji needed).

    It turns for ``SPIN_S`` only, from the angle ``elapsed`` seconds of waiting reached: a line the kernel keeps
    redrawing turns smoothly, and stops once the kernel is gone (restarted, interrupted).
    """
    phase = elapsed % TURN_S
    animation = f"flux-spin {TURN_S}s linear -{phase:.2f}s {(phase + SPIN_S) / TURN_S:.2f}"
    return (
        '<span class="flux-spinner" aria-hidden="true" style="display:inline-block;width:0.8em;height:0.8em;'
        "box-sizing:border-box;border:2px solid currentColor;border-right-color:transparent;border-radius:50%;"
        f'vertical-align:-0.1em;margin-right:0.4em;animation:{animation}"></span>'
    )


def icon(status: str) -> str:
    """The mark for a status: a spinner while it waits, else an ASCII character in a CSS ring.

    Nothing redraws a shown result: its spinner turns for ``SPIN_S`` only, never on after its kernel is gone.
    """
    if status in WAITING:
        return spinner()
    mark = html.escape(MARKS.get(status, "!"))
    return (
        f'<span class="flux-icon" aria-label="{html.escape(status)}" style="display:inline-block;min-width:1.1em;'
        "height:1.1em;line-height:1.1em;box-sizing:border-box;border:1.5px solid currentColor;border-radius:50%;"
        f'text-align:center;font-size:0.8em;font-weight:bold;margin-right:0.4em">{mark}</span>'
    )


def shown_path(path: Path | str) -> str:
    """A path as captions show it: relative to the working directory when it lies under it."""
    target = Path(path)
    try:
        return str(target.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(target)


@lru_cache(maxsize=512)
def _thumb_uri(path: str, mtime: float, size: int, fmt: str) -> tuple[str, int, int]:
    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        data = thumbnail(image, size, fmt)
        scale = min(1.0, size / max(image.size))
        w, h = round(image.width * scale), round(image.height * scale)
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode()}", w, h


def thumb_img(path: Path | str, size: int, fmt: str = "jpeg", alt: str = "", css: str = "") -> str:
    """An <img> holding a thumbnail of the image at ``path`` (cached per file and size)."""
    path = str(path)
    uri, w, h = _thumb_uri(path, Path(path).stat().st_mtime, size, fmt)
    return (
        f'<img src="{uri}" width="{w}" height="{h}" alt="{html.escape(alt, quote=True)}" '
        f'title="{html.escape(shown_path(path), quote=True)}" style="{css}"/>'
    )


def caption(result: Result) -> str:
    """One line: seed · size · model · cost · time · id."""
    size = f"{result.width}×{result.height}" if result.width and result.height else "auto size"
    if result.cached:
        cost, took = "0 credits", "cached"
    else:
        credits = result.cost if result.cost is not None else result.estimated_cost
        cost = f"{credits:.2f} credits" + ("" if result.billed else NOT_BILLED)
        took = f"{result.elapsed:.2f} s" if result.elapsed is not None else ""
    parts = [f"seed {result.seed}", size, result.model, cost, took, f"id {result.record_id}"]
    if result.tag:
        parts.append(f"tag {result.tag}")
    if result.references:
        parts.append("made from " + ", ".join(reference.name for reference in result.references))
    warnings = result.details.get("warnings") if isinstance(result.details, dict) else None
    if isinstance(warnings, list) and warnings:
        parts.append("note: " + "; ".join(str(w) for w in warnings))  # e.g. "prompt truncated to 512 tokens"
    return " · ".join(p for p in parts if p)


def _badge(result: Result) -> str:
    if result.engine == "preview":
        return '<span style="background:#333;color:#fff;border-radius:3px;padding:0 4px;font-size:11px">preview</span> '
    return ""


def result_html(result: Result) -> str:
    """A ready result as thumbnail + caption; anything else as one clear line."""
    if not result.ok or result.path is None or not Path(result.path).exists():
        return failure_html(result)
    img = thumb_img(result.path, settings.thumbnail_size, settings.thumbnail_format, alt=result.prompt)
    text = html.escape(caption(result))
    return (  # the image's path is its tooltip (and ``result.path``): no long hash path under every image
        f'<div class="flux-result">{img}<div class="flux-caption" style="font-size:12px;color:{TEXT}">'
        f"{_badge(result)}{text}</div>{references_html(result)}</div>"
    )


def references_html(result: Result) -> str:
    """Small thumbnails of the reference images an edit was made from ("" for a result made without any)."""
    css = "margin:2px 4px 0 0;vertical-align:middle"
    thumbs = [
        thumb_img(r.path, REFERENCE_THUMB, settings.thumbnail_format, r.name, css)
        for r in result.references
        if r.path is not None and Path(r.path).exists()
    ]
    return f'<div class="flux-references">{"".join(thumbs)}</div>' if thumbs else ""


def failure_html(result: Result) -> str:
    reason = in_notebook_words(result.error) if result.error else f"status {result.status}"
    text = html.escape(f"{result.status}: {reason} (record {result.record_id}, seed {result.seed})")
    return f'{STYLE}<div class="flux-failure flux-error" style="color:{ERROR}">{icon(result.status)}{text}</div>'


def result_bundle(result: Result) -> dict[str, Any]:
    return {"text/plain": result_text(result), "text/html": result_html(result)}


def sweep_bundle(sweep: SweepResult) -> dict[str, Any]:
    """A sweep shows as its grid, with a summary line."""
    done = len(sweep) - len(sweep.failed)
    summary = f"{done} of {len(sweep)} images · {sweep.cost:.2f} credits"
    try:
        body = sweep.grid()._repr_html_()
    except FluxError as exc:
        body = error_html(exc)
    summary_html = f'<div class="flux-summary" style="font-size:12px;color:{TEXT}">{summary}</div>'
    return {"text/plain": repr(sweep), "text/html": f"{body}{summary_html}"}


def error_html(error: FluxError | str) -> str:
    text = in_notebook_words(error)
    kind = f"{error.kind}: " if isinstance(error, FluxError) else ""
    return f'<div class="flux-error" style="color:{ERROR}">{icon("error")}{html.escape(kind + text)}</div>'


def show_error(error: FluxError | str) -> None:
    """Show an error as one clear line, no traceback."""
    if is_rich():
        display(HTML(error_html(error)))
    else:
        print(f"flux_nb: {in_notebook_words(error)}")


def is_rich() -> bool:
    """True where HTML is rendered (notebook front ends), False in terminal IPython or plain Python."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    formatter = getattr(shell, "display_formatter", None)
    return formatter is not None and "text/html" in formatter.active_types


def result_text(result: Result) -> str:
    """A result as one plain line: its caption and image path, or why it has no image."""
    if result.ok and result.path is not None:
        return f"{caption(result)} · {shown_path(result.path)}"
    return f"{result.status}: {result.error_message or 'no image'} (record {result.record_id}, seed {result.seed})"


def side_by_side_html(left: Result, right: Result, left_title: str, right_title: str) -> str:
    """Two results next to each other, saying whether their images are byte-identical."""
    cells = "".join(
        f'<td style="vertical-align:top"><b>{html.escape(title)}</b><br/>{result_html(result)}</td>'
        for title, result in ((left_title, left), (right_title, right))
    )
    verdict = _verdict(left, right)
    return f'<table class="flux-replay"><tr>{cells}</tr></table><div style="font-size:12px">{verdict}</div>'


def side_by_side_text(left: Result, right: Result, left_title: str, right_title: str) -> str:
    """Two results as caption lines with their image paths, then whether the images are byte-identical."""
    return f"{left_title}: {result_text(left)}\n{right_title}: {result_text(right)}\n{_verdict(left, right)}"


def _verdict(left: Result, right: Result) -> str:
    def digest(result: Result) -> str | None:
        return source_sha256(result.path) if result.ok and result.path else None  # the API's bytes

    a, b = digest(left), digest(right)
    return "byte-identical images" if a and a == b else "the images differ"
