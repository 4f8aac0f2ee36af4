"""``Result`` and ``SweepResult``: what the user gets back. Data only.

How they look (inline HTML, grids) is the notebook layer's business: it installs a ``Presenter``
here when flux_nb is imported, so these classes never import upward.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flux_nb.core.axes import grid_axes
from flux_nb.errors import FluxError

if TYPE_CHECKING:
    from PIL import Image


class Presenter(Protocol):
    """Renders results in rich front ends and draws their grids (the notebook layer provides it)."""

    def result_bundle(self, result: Result) -> dict[str, Any]: ...
    def sweep_bundle(self, sweep: SweepResult) -> dict[str, Any]: ...
    def grid(self, results: list[Result], **options: Any) -> Any: ...
    def panel(self, session: Any) -> Any: ...
    def compare(self, session: Any, items: tuple[Any, ...]) -> Any: ...
    def browse(self, session: Any, filters: dict[str, Any]) -> Any: ...


_presenter: Presenter | None = None


def use_presenter(presenter: Presenter) -> None:
    """Install how results render and draw grids (done once, by ``flux_nb/__init__``)."""
    global _presenter
    _presenter = presenter


def presenter() -> Presenter:
    if _presenter is None:
        raise RuntimeError("no presenter installed: import flux_nb (its __init__ installs one)")
    return _presenter


@dataclass(frozen=True)
class Reference:
    """A reference image a result was made from: its name (the record id of the result it came from, else a short
    name) and its file, to show small (None where only a URL is known)."""

    name: str
    path: Path | None = None


@dataclass
class Result:
    """One request's outcome: its image on disk and everything needed to replay it.

    ``status`` is a record status: "ready", "failed", "moderated", "unknown" or "submitted"
    (still running on the API; ``flux.resume()`` finishes it).
    """

    record_id: str
    status: str
    prompt: str
    model: str
    seed: int
    width: int | None
    height: int | None
    path: Path | None = None
    cost: float | None = None
    estimated_cost: float = 0.0
    billed: bool = True
    elapsed: float | None = None
    cached: bool = False
    task_id: str | None = None
    engine: str | None = None
    #: What the server said about the task: its engine, a replica, warnings (e.g. a truncated prompt).
    details: dict[str, Any] = field(default_factory=dict)
    tag: str | None = None
    error: FluxError | None = field(default=None, repr=False)
    labels: dict[str, Any] = field(default_factory=dict)
    #: The reference images of an edit, in the order they were sent.
    references: tuple[Reference, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "ready" and self.path is not None

    @property
    def id(self) -> str:
        """The history record id (``%flux replay ID`` takes it)."""
        return self.record_id

    @cached_property
    def image(self) -> Image.Image:
        """The full image, loaded from disk on first use."""
        from PIL import Image

        if self.path is None:
            raise self.error or FluxError(f"record {self.record_id} has no image (status {self.status})")
        try:
            with Image.open(self.path) as image:
                image.load()
                return image
        except FileNotFoundError:
            raise FluxError(
                f"record {self.record_id}: its image file {self.path} is gone (deleted or moved); "
                f"the request is still on record: replay {self.record_id} makes it again (same seed, same image)"
            ) from None

    @property
    def error_message(self) -> str | None:
        return self.error.one_line() if self.error else None

    def raise_for_error(self) -> Result:
        """Raise the request's error, if it failed; return self otherwise."""
        if self.error is not None:
            raise self.error
        return self

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return presenter().result_bundle(self)

    def __repr__(self) -> str:
        size = f"{self.width}x{self.height}" if self.width and self.height else "auto"
        extra = f", error={self.error_message!r}" if self.error else f", path={str(self.path)!r}"
        return f"Result(id={self.record_id!r}, status={self.status!r}, seed={self.seed}, size={size}{extra})"


@dataclass
class SweepResult:
    """The results of a sweep, in expansion order; displays as a labelled grid."""

    results: list[Result]

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Result]:
        return iter(self.results)

    def __getitem__(self, index: int) -> Result:
        return self.results[index]

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    @property
    def cost(self) -> float:
        return sum(r.cost or 0.0 for r in self.results)

    def grid(self, x: str | None = None, y: str | None = None, z: str | None = None, **options: Any) -> Any:
        """A comparison grid (a ``Grid``, or ``GridPages`` with ``z``); axes default to the varying fields."""
        if x is None and y is None and z is None:
            x, y, z = grid_axes([r.labels for r in self.results])
        return presenter().grid(self.results, x=x, y=y, z=z, **options)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return presenter().sweep_bundle(self)

    def __repr__(self) -> str:
        return f"SweepResult({len(self.results)} results, {len(self.failed)} failed)"
