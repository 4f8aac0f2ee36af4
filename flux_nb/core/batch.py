"""Building batches: the one place where fields and axes become validated, priced requests.

Every front end (the magic, the panel, the CLI, ``Flux.generate``/``sweep``) hands its fields
here. A list, tuple or range is an axis, anything else a fixed field; each combination becomes a
``PreparedRequest`` with an explicit seed (drawn when none is given), its encoded reference images
and its estimated cost. No network and no history: those come after.
"""

from __future__ import annotations

import numbers
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flux_nb import protocol
from flux_nb.core.axes import Axis, expand
from flux_nb.core.results import Result
from flux_nb.errors import ValidationError
from flux_nb.images import ImageInput, prepare_images
from flux_nb.protocol import FluxRequest

# Seeds drawn client-side stay within 32 bits: easy to read, type and share.
SEED_DRAW_LIMIT = 2**32
#: Fields of a request a caller may set (besides the prompt and the reference images).
REQUEST_FIELDS = (
    "seed",
    "width",
    "height",
    "safety_tolerance",
    "output_format",
    "model",
    "webhook_url",
    "webhook_secret",
    "steps",
    "guidance",
)
#: Ways to give a size besides width/height: ``size=(w, h)`` or ``"1024x768"``, ``aspect="16:9"``.
SIZE_FIELDS = ("size", "aspect")
#: What flux_nb keeps beside a request: a history label, a cache bypass, grid labels.
RECORD_OPTIONS = ("tag", "fresh", "labels")


def draw_seed() -> int:
    return secrets.randbelow(SEED_DRAW_LIMIT)


@dataclass(frozen=True)
class Defaults:
    """What a request gets for the fields its caller left out (a session's settings)."""

    model: str = protocol.DEFAULT_MODEL
    width: int | None = None
    height: int | None = None
    safety_tolerance: int = protocol.DEFAULT_SAFETY
    output_format: str = protocol.DEFAULT_FORMAT


@dataclass
class PreparedRequest:
    """A validated, priced request with its encoded inputs, ready to send."""

    request: FluxRequest
    inputs: tuple[ImageInput, ...]
    estimated_cost: float
    tag: str | None = None
    fresh: bool = False
    replay_of: str | None = None
    labels: dict[str, Any] = field(default_factory=dict)

    @property
    def input_hashes(self) -> list[str]:
        return [i.sha256 for i in self.inputs]

    def identity(self) -> tuple[Any, ...]:
        """Two requests with the same identity would make the same image (and be billed twice)."""
        return (self.request, tuple(self.input_hashes), self.fresh)


def plain(value: Any) -> Any:
    """NumPy and other numeric scalars as Python ints and floats (``np.int64(7)`` -> ``7``)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (int, float)):
        return float(value)
    return value


def reference_images(images: Any) -> tuple[ImageInput, ...]:
    """Encode and check reference images once: paths, URLs, bytes, PIL images, arrays or earlier Results."""
    if isinstance(images, tuple) and all(isinstance(i, ImageInput) for i in images):
        return images
    if images is None:
        return ()
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    return prepare_images([_reference(item, i) for i, item in enumerate(items)])


def _reference(item: Any, index: int) -> Any:
    if not isinstance(item, Result):
        return item
    if not item.ok or item.path is None:
        raise ValidationError(
            f"images[{index}]: result {item.record_id} has no image to use (status {item.status}); "
            "use a result that is ready"
        )
    return item.path  # the stored bytes, as the API delivered them


def _size(fields: dict[str, Any]) -> None:
    """Turn ``size``/``aspect`` into width and height, in place."""
    size, aspect = fields.pop("size", None), fields.pop("aspect", None)
    if size is not None and aspect is not None:
        raise ValidationError("give either size or aspect, not both (aspect picks the size itself)")
    if size is None and aspect is None:
        return
    if fields.get("width") is not None or fields.get("height") is not None:
        raise ValidationError("give either size/aspect or width/height, not both")
    if aspect is not None:
        fields["width"], fields["height"] = protocol.aspect_size(str(aspect))
    elif isinstance(size, str):
        fields["width"], fields["height"] = protocol.parse_size(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        fields["width"], fields["height"] = (plain(v) for v in size)
    else:
        raise ValidationError(f"size {size!r} must be WIDTHxHEIGHT like '1024x768' or a pair like (1024, 768)")


def prepare(
    prompt: str,
    defaults: Defaults,
    *,
    images: Any = None,
    tag: str | None = None,
    fresh: bool = False,
    labels: Mapping[str, Any] | None = None,
    **fields: Any,
) -> PreparedRequest:
    """Validate and price one request; draws a seed when none is given."""
    unknown = sorted(set(fields) - set(REQUEST_FIELDS) - set(SIZE_FIELDS))
    if unknown:
        raise ValidationError(f"unknown field(s) {', '.join(unknown)}; a request takes {', '.join(REQUEST_FIELDS)}")
    fields = {k: plain(v) for k, v in fields.items()}
    _size(fields)
    width, height = fields.pop("width", None), fields.pop("height", None)
    protocol.check_size(width, height)
    if (width is None) != (height is None) and defaults.width is None and defaults.height is None:
        given, missing = ("width", "height") if height is None else ("height", "width")
        raise ValidationError(
            f"{given}={width if height is None else height} was given without {missing}: "
            "give both (or size=(W, H), or aspect='16:9')"
        )
    if not isinstance(prompt, str):
        raise ValidationError(f"prompt must be text, got {type(prompt).__name__} {prompt!r}")
    inputs = reference_images(images)
    seed = fields.pop("seed", None)
    request = FluxRequest(
        prompt=prompt,
        model=fields.pop("model", None) or defaults.model,
        images=tuple(i.value for i in inputs),
        seed=draw_seed() if seed is None else seed,
        width=width if width is not None else defaults.width,
        height=height if height is not None else defaults.height,
        safety_tolerance=_or(fields.pop("safety_tolerance", None), defaults.safety_tolerance),
        output_format=fields.pop("output_format", None) or defaults.output_format,
        **fields,
    ).validate()
    first_size = inputs[0].size if inputs else None
    out_w, out_h = protocol.output_size(request, first_size)
    estimate = protocol.estimate_cost(request.model, out_w, out_h, sum(i.megapixels for i in inputs))
    return PreparedRequest(request, inputs, estimate, tag=tag, fresh=fresh, labels=dict(labels or {}))


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def split_axes(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[Axis]]:
    """Fixed fields and axes: a list, tuple or range value sweeps (``size`` takes a list of pairs)."""
    base: dict[str, Any] = {}
    axes: list[Axis] = []
    for name, value in fields.items():
        if name == "size" and isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], tuple):
            base[name] = value  # one (width, height) pair
        elif isinstance(value, (list, tuple, range)):
            axes.append(_axis(name, [plain(v) for v in value]))
        else:
            base[name] = value
    return base, axes


def _axis(name: str, values: list[Any]) -> Axis:
    """An axis; sizes given as text ("1024x768") or aspects ("16:9") become (width, height) pairs."""
    if name == "size":
        return Axis("size", tuple(protocol.parse_size(v) if isinstance(v, str) else tuple(v) for v in values))
    if name == "aspect":
        return Axis("size", tuple(protocol.aspect_size(str(v)) for v in values))
    return Axis(name, tuple(values))


def build(
    prompts: str | Sequence[str],
    defaults: Defaults,
    *,
    axes: Sequence[Axis] = (),
    images: Any = None,
    **fields: Any,
) -> list[PreparedRequest]:
    """Every combination of the prompts, the given ``axes`` and the list-valued ``fields``, prepared.

    >>> [p.request.seed for p in build("a fox", Defaults(), seed=[1, 2])]
    [1, 2]
    """
    prompt_axis = Axis("prompt", (prompts,) if isinstance(prompts, str) else tuple(prompts))
    options = {k: fields.pop(k) for k in RECORD_OPTIONS if k in fields}
    base, field_axes = split_axes(fields)
    inputs = reference_images(images)
    points = expand(base, [prompt_axis, *axes, *field_axes])
    batch = []
    for point in points:
        fields = dict(point.fields)
        prompt = fields.pop("prompt")
        labels = {**options.get("labels", {}), **point.labels}
        batch.append(
            prepare(
                prompt,
                defaults,
                images=inputs,
                tag=options.get("tag"),
                fresh=bool(options.get("fresh", False)),
                labels=labels,
                **fields,
            )
        )
    return batch


def one_request(fields: Mapping[str, Any]) -> None:
    """Refuse list-valued fields where one image is asked for, pointing at ``sweep``."""
    for name, value in fields.items():
        if name in ("images", "labels", "size"):
            continue
        if isinstance(value, (list, tuple, range)):
            raise ValidationError(
                f"{name}={list(value)!r} is a list: generate makes one image; use flux.sweep(...) for several"
            )


__all__ = [
    "Defaults",
    "PreparedRequest",
    "build",
    "draw_seed",
    "one_request",
    "plain",
    "prepare",
    "reference_images",
    "split_axes",
]
