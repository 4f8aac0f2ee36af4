"""The panel's gallery: a card per image made, newest first, to remix or to edit further.

A card holds a thumbnail (the full image stays on disk), the caption every notebook view uses,
and two buttons: Remix (load the settings into the form) and Edit this (use it as a reference).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipywidgets as w
from PIL import Image

from flux_nb.core.results import Result
from flux_nb.images import thumbnail
from flux_nb.notebook.render import caption

#: Width in pixels of a card's thumbnail (encoded at twice that, for sharp high-DPI screens).
CARD_THUMB = 224


def card_thumbnail(path: Path | str) -> bytes:
    """A card's JPEG thumbnail of the image at ``path``."""
    with Image.open(path) as image:
        image.draft("RGB", (CARD_THUMB * 2, CARD_THUMB * 2))
        return thumbnail(image, CARD_THUMB * 2, "jpeg")


class Gallery(w.HBox):
    """Cards of ready results, newest first; ``on_remix`` and ``on_reuse`` receive a card's result."""

    def __init__(self, on_remix: Callable[[Result], None], on_reuse: Callable[[Result], None], **kwargs: Any) -> None:
        super().__init__(layout=w.Layout(flex_flow="row wrap"), **kwargs)
        self.add_class("flux-gallery")
        self._on_remix, self._on_reuse = on_remix, on_reuse

    def add(self, result: Result) -> None:
        """Put a card for a ready result first."""
        if result.path is None:
            raise ValueError(f"result {result.record_id} has no image to show (status {result.status})")
        self.children = (self._card(result, result.path), *self.children)

    def _card(self, result: Result, path: Path) -> w.VBox:
        image = w.Image(value=card_thumbnail(path), format="jpeg", layout=w.Layout(max_width=f"{CARD_THUMB}px"))
        image.add_class("flux-result-image")
        text = w.HTML(
            f'<div class="flux-caption" style="font-size:11px;line-height:1.3">{html.escape(caption(result))}</div>',
            layout=w.Layout(width=f"{CARD_THUMB}px"),
        )
        remix = w.Button(description="Remix", tooltip="Load these settings into the form", layout=w.Layout(width="48%"))
        remix.add_class("flux-remix")
        reuse = w.Button(description="Edit this", tooltip="Use as a reference image", layout=w.Layout(width="48%"))
        reuse.add_class("flux-reuse")
        remix.on_click(lambda _: self._on_remix(result))
        reuse.on_click(lambda _: self._on_reuse(result))
        card = w.VBox(
            [image, text, w.HBox([remix, reuse])], layout=w.Layout(width=f"{CARD_THUMB + 16}px", margin="4px")
        )
        card.add_class("flux-card")
        return card
