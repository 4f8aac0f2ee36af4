"""The panel's form: the fields of a request as widgets (prompt, model, seed, size, safety, format, count).

It knows what a valid form is (a prompt, a size the API accepts) and turns itself into the
fields ``Flux.batch`` takes; a remix loads a stored request back into it.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from flux_nb import protocol
from flux_nb.core.batch import draw_seed
from flux_nb.errors import ValidationError
from flux_nb.notebook.render import ERROR, MUTED

if TYPE_CHECKING:
    from flux_nb.core.results import Result
    from flux_nb.history.store import Record
    from flux_nb.session import Flux

SIZE_PRESETS: dict[str, tuple[int, int] | None] = {
    "1:1 · 1024×1024": (1024, 1024),
    "4:3 · 1184×880": protocol.aspect_size("4:3"),
    "3:4 · 880×1184": protocol.aspect_size("3:4"),
    "16:9 · 1360×768": protocol.aspect_size("16:9"),
    "9:16 · 768×1360": protocol.aspect_size("9:16"),
    "3:2 · 1248×832": protocol.aspect_size("3:2"),
    "2:3 · 832×1248": protocol.aspect_size("2:3"),
    "512×512 (fast drafts)": (512, 512),
    "custom": None,
}
DEFAULT_PRESET = "1:1 · 1024×1024"
#: Most images one click of Generate makes (one request per seed).
MAX_COUNT = 8


def preset_of(width: int, height: int) -> str:
    """The size preset for ``width`` × ``height``, or "custom"."""
    return next((name for name, size in SIZE_PRESETS.items() if size == (width, height)), "custom")


def _side(label: str) -> w.BoundedIntText:
    """A width or height box with room for four digits beside its one-letter label."""
    return w.BoundedIntText(
        value=1024,
        min=16,
        max=8192,
        step=16,
        description=label,
        style={"description_width": "1.5em"},
        layout=w.Layout(width="9em"),
    )


class Form:
    """The request's fields as widgets, starting from the session's defaults.

    ``on_change`` is called when the form's validity may have changed (the size, for now).
    """

    def __init__(self, session: Flux, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self.prompt = w.Textarea(placeholder="Describe the image…", layout=w.Layout(width="100%", height="80px"))
        self.prompt.add_class("flux-prompt")
        self.model = w.Dropdown(options=list(protocol.MODELS), value=session.model, description="Model")
        self.seed = w.IntText(value=draw_seed(), description="Seed", layout=w.Layout(width="220px"))
        self.random_seed = w.Button(icon="random", tooltip="New random seed", layout=w.Layout(width="40px"))
        self.lock_seed = w.Checkbox(value=False, description="Keep seed", indent=False)
        self.size = w.Dropdown(options=list(SIZE_PRESETS), value=DEFAULT_PRESET, description="Size")
        self.width, self.height = _side("W"), _side("H")
        self.size_note = w.HTML()
        self.safety = w.IntSlider(value=session.safety_tolerance, min=0, max=5, description="Safety")
        self.format = w.ToggleButtons(
            options=list(protocol.OUTPUT_FORMATS),
            value=session.output_format,
            tooltips=[f"save as {name}" for name in protocol.OUTPUT_FORMATS],
            style={"button_width": "4.5em"},  # a compact toggle, lighter than Generate
        )
        self.format.add_class("flux-format")
        self.count = w.IntSlider(value=1, min=1, max=MAX_COUNT, description="Images")
        #: Whether the size is one the API accepts (Generate waits for it).
        self.size_ok = False

        self.random_seed.on_click(lambda _: setattr(self.seed, "value", draw_seed()))
        for field in (self.size, self.width, self.height):
            field.observe(lambda _: self._size_changed(), "value")
        self.refresh_size()

    def _size_changed(self) -> None:
        self.refresh_size()
        self._on_change()

    def refresh_size(self) -> bool:
        """Follow the size preset, check the size, and say why it is refused (or its megapixels, and the size that
        comes back where a side is not a multiple of 16)."""
        preset = SIZE_PRESETS[self.size.value]
        self.width.disabled = self.height.disabled = preset is not None
        if preset is not None and (self.width.value, self.height.value) != preset:
            self.width.value, self.height.value = preset
        try:
            protocol.check_size(self.width.value, self.height.value)
        except ValidationError as exc:
            self.size_note.value = f'<span class="flux-size-error" style="color:{ERROR}">{html.escape(str(exc))}</span>'
            self.size_ok = False
            return False
        mp = protocol.megapixels(self.width.value, self.height.value)
        words = f"{mp:.2f} MP"
        asked = (self.width.value, self.height.value)
        back = tuple(protocol.rendered_side(side) for side in asked)
        if back != asked:
            words += f" · {asked[0]}x{asked[1]} comes back as {back[0]}x{back[1]}"
        self.size_note.value = f'<span class="flux-size-note" style="color:{MUTED}">{html.escape(words)}</span>'
        self.size_ok = True
        return True

    def request(self) -> tuple[str, dict[str, Any]]:
        """The prompt and the fields for ``Flux.batch``: one request per seed, counting up from the seed field."""
        if not self.prompt.value.strip():
            raise ValidationError("the prompt is empty: describe the image you want")
        first = self.seed.value
        return self.prompt.value, {
            "seed": list(range(first, first + self.count.value)),
            "width": self.width.value,
            "height": self.height.value,
            "safety_tolerance": self.safety.value,
            "output_format": self.format.value,
            "model": self.model.value,
        }

    def next_seed(self) -> None:
        """After a Generate: a new random seed, unless the seed is kept."""
        if not self.lock_seed.value:
            self.seed.value = draw_seed()

    def load(self, result: Result, record: Record) -> None:
        """Load a result's settings: prompt, model, seed (kept), size, safety and format."""
        self.prompt.value = result.prompt
        if result.model in self.model.options:
            self.model.value = result.model
        self.seed.value = result.seed
        self.lock_seed.value = True
        if result.width and result.height:
            self.size.value = preset_of(result.width, result.height)
            self.width.value, self.height.value = result.width, result.height
        if record.safety_tolerance is not None:
            self.safety.value = record.safety_tolerance
        if record.output_format in self.format.options:
            self.format.value = record.output_format
