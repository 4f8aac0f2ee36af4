"""``Result``: what the user gets back from one request, displayed inline in notebooks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flux_nb.errors import FluxError

if TYPE_CHECKING:
    from PIL import Image

    from flux_nb.notebook.grid import Grid, GridPages


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
    tag: str | None = None
    error: FluxError | None = field(default=None, repr=False)
    labels: dict[str, Any] = field(default_factory=dict)
    thumbnail_size: int = 384
    thumbnail_format: str = "jpeg"

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
        with Image.open(self.path) as image:
            image.load()
            return image

    @property
    def error_message(self) -> str | None:
        return self.error.one_line() if self.error else None

    def raise_for_error(self) -> Result:
        """Raise the request's error, if it failed; return self otherwise."""
        if self.error is not None:
            raise self.error
        return self

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from flux_nb.notebook.render import result_bundle

        return result_bundle(self)

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

    def grid(
        self, x: str | None = None, y: str | None = None, z: str | None = None, **options: Any
    ) -> Grid | GridPages:
        """A comparison grid; axes default to the sweep's varying fields."""
        from flux_nb.core.axes import grid_axes
        from flux_nb.notebook.grid import grid

        if x is None and y is None and z is None:
            x, y, z = grid_axes([r.labels for r in self.results])
        return grid(self.results, x=x, y=y, z=z, **options)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from flux_nb.notebook.render import sweep_bundle

        return sweep_bundle(self)

    def __repr__(self) -> str:
        return f"SweepResult({len(self.results)} results, {len(self.failed)} failed)"
