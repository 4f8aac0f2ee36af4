"""The comparison widget on anywidget (the ``compare`` extra): a small ES module, no build step.

The slider, the flip and the mode buttons run in the browser; the kernel only makes the difference
image when the pair changes. Works in JupyterLab, Notebook 7 and VS Code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from flux_nb.notebook.compare_images import MODES, data_url, difference

ESM = Path(__file__).with_name("compare.js")


class CompareWidget(anywidget.AnyWidget):
    """Two or more images with a slider, a flip, side by side and a difference view."""

    _esm = ESM
    images = traitlets.List(traitlets.Unicode()).tag(sync=True)
    labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    modes = traitlets.List(traitlets.Unicode(), default_value=list(MODES)).tag(sync=True)
    mode = traitlets.Enum(MODES, default_value="slider").tag(sync=True)
    a = traitlets.Int(0).tag(sync=True)
    b = traitlets.Int(1).tag(sync=True)
    position = traitlets.Float(50.0).tag(sync=True)
    flipped = traitlets.Bool(False).tag(sync=True)
    difference = traitlets.Unicode("").tag(sync=True)
    caption = traitlets.Unicode("").tag(sync=True)

    @classmethod
    def of(cls, comparison: Any) -> CompareWidget:
        images = [data_url(i) for i in comparison.images()]
        widget = cls(images=images, labels=comparison.labels, caption=comparison.caption)
        widget._comparison = comparison
        widget._pair({})
        return widget

    @traitlets.observe("a", "b")
    def _pair(self, change: dict[str, Any]) -> None:
        comparison = getattr(self, "_comparison", None)
        if comparison is not None:
            a, b = comparison.items[self.a].image(), comparison.items[self.b].image()
            self.difference = data_url(difference(a, b))
