"""The panel's reference images: slots filled from uploads, a notebook variable by name, or a result.

Each slot holds the prepared image (checked and encoded once, when it is added), shows a small
preview and can be removed. The upload button's count is kept equal to the attached slots.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ipywidgets as w
import numpy as np
from PIL import Image

from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import FluxError, ValidationError
from flux_nb.images import ImageInput, prepare_image, thumbnail

MAX_SLOTS = 4
#: Width in pixels of a slot's preview (encoded at twice that, for sharp high-DPI screens).
SLOT_THUMB = 96
#: What a notebook variable may hold to become a reference image (prepare_image's inputs, and a Result).
REFERENCE_TYPES = (Result, ImageInput, Image.Image, np.ndarray, bytes, bytearray, memoryview, str, os.PathLike)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class Slot:
    """One reference image slot: the prepared image, what it is called, and its widget."""

    image: ImageInput
    widget: w.Widget
    name: str = "reference"


def notebook_namespace() -> Mapping[str, Any] | None:
    """The running IPython shell's user namespace, or None outside IPython."""
    from IPython import get_ipython

    shell = get_ipython()
    return shell.user_ns if shell is not None else None


def lookup(namespace: Mapping[str, Any] | None, name: str) -> Any:
    """The value of notebook variable ``name``, if a reference image can be made of it.

    ``namespace`` None means the running notebook's.
    """
    if not name:
        raise ValidationError("type the name of a notebook variable that holds an image, then Add")
    namespace = namespace if namespace is not None else notebook_namespace()
    if namespace is None:
        raise ValidationError(f"no notebook namespace to look {name!r} up in (not running in IPython)")
    if name not in namespace:
        hint = "" if name.isidentifier() else " (give a plain variable name: assign the image to one first)"
        raise ValidationError(f"no variable named {name!r} in the notebook{hint}")
    value = namespace[name]
    if isinstance(value, REFERENCE_TYPES):
        return value
    hint = ""
    if isinstance(value, (list, tuple, SweepResult)) and len(value):
        hint = f" (it holds {len(value)} items: pick one, e.g. img = {name}[0], and add img)"
    raise ValidationError(
        f"variable {name!r} holds a {type(value).__name__}, not an image; use a PIL image, a NumPy array, "
        f"bytes, a path or URL string, or a Result{hint}"
    )


class References:
    """Up to ``MAX_SLOTS`` reference images for the next request, with the widgets that add and show them.

    ``report`` shows a refusal (a ``FluxError``) in the panel; ``clear`` empties the panel's error area
    once an image is accepted.
    """

    def __init__(
        self,
        namespace: Mapping[str, Any] | None,
        report: Callable[[BaseException], None],
        clear: Callable[[], None],
    ) -> None:
        self.namespace = namespace
        self._report, self._clear = report, clear
        self.slots: list[Slot] = []
        self._mirroring = False  # set while the upload button's value is rewritten to count the slots
        # The button reads "References (N)": ipywidgets 8 always appends len(value), which holds the attached slots.
        self.upload = w.FileUpload(
            accept="image/*",
            multiple=True,
            description="References",
            tooltip=f"Upload reference images (at most {MAX_SLOTS}); the count is how many are attached",
            layout=w.Layout(width="auto"),
        )
        self.upload.add_class("flux-upload")
        self.variable = w.Text(placeholder="variable name", layout=w.Layout(width="150px"))
        self.variable.add_class("flux-variable")
        self.add_variable = w.Button(
            description="Add", tooltip="Add the image a notebook variable holds", layout=w.Layout(width="56px")
        )
        self.add_variable.add_class("flux-add-variable")
        self.slots_box = w.HBox()
        self.upload.observe(self._on_upload, "value")
        self.add_variable.on_click(lambda _: self.add_from_variable())

    @property
    def images(self) -> tuple[ImageInput, ...]:
        """The attached images, in order: what the next request sends."""
        return tuple(s.image for s in self.slots)

    def add(self, image: Any, name: str = "reference") -> bool:
        """Attach ``image`` (a path, URL, bytes, PIL image, array or Result); whether it was accepted."""
        if isinstance(image, Result):
            if not image.ok or image.path is None:
                self._report(FluxError(f"result {image.record_id} has no image to use (status {image.status})"))
                return False
            image, name = image.path, f"result {image.record_id}"  # the stored bytes, as they came
        try:
            if len(self.slots) >= MAX_SLOTS:
                raise ValidationError(f"at most {MAX_SLOTS} reference images; remove one first")
            prepared = prepare_image(image, name)
        except FluxError as exc:
            self._report(exc)
            return False
        self.slots.append(self._slot(prepared, name))
        self._changed()
        self._clear()
        return True

    def add_from_variable(self, name: str | None = None) -> None:
        """Attach the image a notebook variable holds (default: the name typed in the field, emptied once added)."""
        typed = name is None
        name = (self.variable.value if name is None else name).strip()
        try:
            value = lookup(self.namespace, name)
        except FluxError as exc:
            self._report(exc)
            return
        if self.add(value, name) and typed:
            self.variable.value = ""

    def remove(self, slot: Slot) -> None:
        """Detach one slot."""
        self.slots = [s for s in self.slots if s is not slot]
        self._changed()

    def clear(self) -> None:
        """Empty every slot."""
        self.slots = []
        self._changed()

    def _slot(self, image: ImageInput, name: str) -> Slot:
        preview = w.Image(value=_preview(image), format="jpeg", layout=w.Layout(max_width=f"{SLOT_THUMB}px"))
        remove = w.Button(description="remove", tooltip=name, layout=w.Layout(width=f"{SLOT_THUMB}px"))
        box = w.VBox([preview, remove])
        box.add_class("flux-slot")
        slot = Slot(image, box, name)
        remove.on_click(lambda _: self.remove(slot))
        return slot

    def _on_upload(self, change: dict[str, Any]) -> None:
        if self._mirroring:
            return
        for item in change["new"] or ():
            self.add(bytes(item["content"]), item.get("name", "upload"))
        self._changed()  # the consumed files give way to the count of attached references

    def _changed(self) -> None:
        """Show the slots, and count them on the upload button.

        ipywidgets 8 labels a FileUpload ``f"{description} ({len(value)})"``, with no way to hide the count;
        so its value lists the attached references (names only, no content), never files already consumed.
        """
        self.slots_box.children = [s.widget for s in self.slots]
        self._mirroring = True
        try:
            self.upload.value = tuple(_upload_entry(s) for s in self.slots)
        finally:
            self._mirroring = False


def _upload_entry(slot: Slot) -> dict[str, Any]:
    """A FileUpload value entry standing for an attached reference (its content is not sent back)."""
    image = slot.image
    kind = f"image/{image.format}" if image.format else "text/uri-list"
    size = len(image.data) if image.data is not None else 0
    return {"name": slot.name, "type": kind, "size": size, "content": memoryview(b""), "last_modified": _EPOCH}


def _preview(image: ImageInput) -> bytes:
    """A slot's preview JPEG (empty for a URL, whose bytes flux_nb never sees)."""
    if image.data is None:
        return b""
    with Image.open(io.BytesIO(image.data)) as opened:
        return thumbnail(opened, SLOT_THUMB * 2, "jpeg")
