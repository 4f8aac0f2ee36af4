"""The panel's gallery: a card per image made, newest first, to remix or to edit further.

A card holds a thumbnail (the full image stays on disk), the caption every notebook view uses,
two buttons: Remix (load the settings into the form) and Edit this (use it as a reference), and a
review row: five stars and a favourite heart, showing the result's current rating. Below the cards,
"Whole history" opens the history browser (``flux.browse()``): every image, not only the panel's.
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
from flux_nb.notebook.render import TEXT, caption, shown_path

#: Width in pixels of a card's thumbnail (encoded at twice that, for sharp high-DPI screens).
CARD_THUMB = 224
STARS = 5
#: The glyphs of a lit and an unlit star (Font Awesome's solid and outline stars).
FILLED, EMPTY = "star", "star-o"
#: Rate a card's result (1-5) and mark it a favourite (on/off); either may raise, the panel shows why.
Rate = Callable[[Result, int], None]
Favour = Callable[[Result, bool], None]


def card_thumbnail(path: Path | str) -> bytes:
    """A card's JPEG thumbnail of the image at ``path``."""
    with Image.open(path) as image:
        image.draft("RGB", (CARD_THUMB * 2, CARD_THUMB * 2))
        return thumbnail(image, CARD_THUMB * 2, "jpeg")


def card_caption(result: Result) -> str:
    """A card's caption in two short lines (seed, size, model; credits, time); the whole caption is its tooltip."""
    whole = caption(result) + (f" · {shown_path(result.path)}" if result.path else "")
    size = f"{result.width}×{result.height}" if result.width and result.height else "auto size"
    credits = result.cost if result.cost is not None else result.estimated_cost
    spent = "0 credits · cached" if result.cached else f"{credits or 0:.2f} credits"
    took = f" · {result.elapsed:.2f} s" if result.elapsed is not None and not result.cached else ""
    lines = (f"seed {result.seed} · {size} · {result.model}", spent + took)
    style = (
        f"font-size:11px;line-height:1.3;color:{TEXT};display:-webkit-box;-webkit-line-clamp:2;"
        "-webkit-box-orient:vertical;overflow:hidden"
    )
    body = "<br/>".join(html.escape(line) for line in lines)
    return f'<div class="flux-caption" title="{html.escape(whole, quote=True)}" style="{style}">{body}</div>'


class Review(w.HBox):
    """Five star buttons and a favourite toggle for one result, showing what was last stored.

    ``rate`` and ``favour`` store a review and say whether they did; when not, nothing changes.
    """

    def __init__(
        self,
        result: Result,
        rate: Callable[[Result, int], bool],
        favour: Callable[[Result, bool], bool],
        rating: int = 0,
        favourite: bool = False,
    ) -> None:
        self.result, self._rate, self._favour = result, rate, favour
        self.stars = []
        for n in range(1, STARS + 1):
            star = w.Button(icon=EMPTY, tooltip=f"Rate {n} of {STARS}", layout=w.Layout(width="30px", padding="0"))
            star.add_class("flux-star")
            star.add_class(f"flux-star-{n}")
            star.on_click(lambda _, n=n: self.rate(n))
            self.stars.append(star)
        self.heart = w.ToggleButton(
            value=favourite, icon="heart", tooltip="Favourite", layout=w.Layout(width="40px", padding="0")
        )
        self.heart.add_class("flux-favourite")
        self.heart.observe(self._toggled, names="value")
        self.heart.button_style = "danger" if favourite else ""
        self.rating = 0
        self._show(rating)
        super().__init__([*self.stars, self.heart])
        self.add_class("flux-review")

    def rate(self, stars: int) -> None:
        """Rate the result (the session stores it); the stars show it once stored."""
        if self._rate(self.result, stars):
            self._show(stars)

    def _show(self, stars: int) -> None:
        self.rating = stars
        for n, star in enumerate(self.stars, start=1):
            star.icon = FILLED if n <= stars else EMPTY  # a shape apart, in the text's own colour
            star.tooltip = f"Rated {stars} of {STARS}" if n == stars else f"Rate {n} of {STARS}"

    def _toggled(self, change: Any) -> None:
        if self._favour(self.result, bool(change["new"])):
            self.heart.button_style = "danger" if change["new"] else ""
            return
        self.heart.unobserve(self._toggled, names="value")
        self.heart.value = bool(change["old"])  # not stored: show what is
        self.heart.observe(self._toggled, names="value")


class Gallery(w.HBox):
    """Cards of ready results, newest first; ``on_remix`` and ``on_reuse`` receive a card's result.

    ``on_rate(result, stars)`` and ``on_favourite(result, on)`` store a review; when they raise,
    ``on_error`` gets the exception and the card keeps showing what is stored.
    """

    children: tuple[w.Widget, ...]  # the widget's trait, declared for type checkers

    def __init__(
        self,
        on_remix: Callable[[Result], None],
        on_reuse: Callable[[Result], None],
        on_rate: Rate | None = None,
        on_favourite: Favour | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(layout=w.Layout(flex_flow="row wrap"), **kwargs)
        self.add_class("flux-gallery")
        self._on_remix, self._on_reuse = on_remix, on_reuse
        self._on_rate, self._on_favourite, self._on_error = on_rate, on_favourite, on_error
        #: The review row of each card, by record id.
        self.reviews: dict[str, Review] = {}

    def add(self, result: Result, rating: int = 0, favourite: bool = False) -> None:
        """Put a card for a ready result first (its stars showing ``rating``, its heart ``favourite``)."""
        if result.path is None:
            raise ValueError(f"result {result.record_id} has no image to show (status {result.status})")
        self.children = (self._card(result, result.path, rating, favourite), *self.children)

    def _card(self, result: Result, path: Path, rating: int, favourite: bool) -> w.VBox:
        image = w.Image(value=card_thumbnail(path), format="jpeg", layout=w.Layout(max_width=f"{CARD_THUMB}px"))
        image.add_class("flux-result-image")
        text = w.HTML(card_caption(result), layout=w.Layout(width=f"{CARD_THUMB}px"))
        remix = w.Button(description="Remix", tooltip="Load these settings into the form", layout=w.Layout(width="48%"))
        remix.add_class("flux-remix")
        reuse = w.Button(description="Edit this", tooltip="Use as a reference image", layout=w.Layout(width="48%"))
        reuse.add_class("flux-reuse")
        remix.on_click(lambda _: self._on_remix(result))
        reuse.on_click(lambda _: self._on_reuse(result))
        parts: list[w.Widget] = [image, text, w.HBox([remix, reuse])]
        if self._on_rate is not None and self._on_favourite is not None:
            review = Review(result, self._guard(self._on_rate), self._guard(self._on_favourite), rating, favourite)
            self.reviews[result.record_id] = review
            parts.append(review)
        card = w.VBox(parts, layout=w.Layout(width=f"{CARD_THUMB + 16}px", margin="4px"))
        card.add_class("flux-card")
        return card

    def _guard(self, store: Callable[[Result, Any], None]) -> Callable[[Result, Any], bool]:
        """``store`` saying whether it stored; a failure goes to ``on_error`` (a click never raises)."""

        def call(result: Result, value: Any) -> bool:
            try:
                store(result, value)
            except Exception as exc:
                if self._on_error is not None:
                    self._on_error(exc)
                return False
            return True

        return call


class WholeHistory(w.VBox):
    """A "Whole history" toggle: on, the browser ``browse()`` returns opens below it; off, it closes.

    A browser that cannot open goes to ``on_error`` and the toggle goes back off.
    """

    children: tuple[w.Widget, ...]  # the widget's trait, declared for type checkers

    def __init__(self, browse: Callable[[], Any], on_error: Callable[[BaseException], None]) -> None:
        self._browse, self._on_error = browse, on_error
        self.button = w.ToggleButton(
            value=False, description="Whole history", icon="history", tooltip="Browse every image in the history"
        )
        self.button.add_class("flux-whole-history")
        self.browser: Any = None
        self.button.observe(self._toggled, names="value")
        super().__init__([self.button])

    def _toggled(self, change: Any) -> None:
        if not change["new"]:
            self._close()
            return
        try:
            self.browser = self._browse()
        except Exception as exc:
            self._on_error(exc)
            self.button.value = False
            return
        self.children = (self.button, self.browser.widget)

    def _close(self) -> None:
        browser, self.browser = self.browser, None
        self.children = (self.button,)
        if browser is not None:
            browser.close()
