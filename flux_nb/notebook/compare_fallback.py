"""The comparison widget on plain ipywidgets, where anywidget is not installed: the kernel redraws each view."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from flux_nb.notebook.compare_images import MODES, STATIC_HEIGHT, difference, png, side_by_side, slider_view


def fallback_widget(comparison: Any) -> Any:
    """Mode buttons, a pair to compare (for more than two), a position slider, and the drawn view."""
    images = comparison.images()
    options = list(zip(comparison.labels, range(len(images)), strict=True))
    mode = widgets.ToggleButtons(options=list(MODES), value="slider")
    first = widgets.Dropdown(options=options, value=0, description="A")
    second = widgets.Dropdown(options=options, value=1, description="B")
    position = widgets.FloatSlider(value=50.0, min=0.0, max=100.0, step=0.5, description="A | B")
    flip = widgets.ToggleButton(value=False, description="flip")
    view = widgets.Image(format="png")
    caption = widgets.Label(comparison.caption)

    def draw(_: Any = None) -> None:
        a, b = images[first.value], images[second.value]
        shown = {
            "slider": lambda: slider_view(a, b, position.value),
            "flip": lambda: b if flip.value else a,
            "side by side": lambda: side_by_side(images, max(STATIC_HEIGHT, a.height)),
            "difference": lambda: difference(a, b),
        }[mode.value]()
        view.value = png(shown)
        position.layout.display = "" if mode.value == "slider" else "none"
        flip.layout.display = "" if mode.value == "flip" else "none"

    for control in (mode, first, second, position, flip):
        control.observe(draw, names="value")
    draw()
    pair = [widgets.HBox([first, second])] if len(images) > 2 else []
    return widgets.VBox([mode, *pair, position, flip, view, widgets.Label(" | ".join(comparison.labels)), caption])
