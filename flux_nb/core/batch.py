"""Building batches: the one place where fields and axes become validated, priced requests.

Every front end (the magic, the panel, the CLI, ``Flux.generate``/``sweep``) hands its fields
here. A list, tuple or range is an axis, anything else a fixed field; each combination becomes a
``PreparedRequest`` with an explicit seed (drawn when none is given), its encoded reference images
and its estimated cost. No network and no history: those come after.
"""

from __future__ import annotations

import math
import numbers
import secrets
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from flux_nb import protocol
from flux_nb.core.axes import MAX_COMBINATIONS, Axis, expand, is_list_like, listed
from flux_nb.core.results import Result
from flux_nb.core.templates import PromptTemplate, choices, refuse_keys, replacement_axes, with_replacements
from flux_nb.errors import SizeWarning, ValidationError
from flux_nb.images import ImageInput, prepare_images
from flux_nb.protocol import FluxRequest

SizeOfUrl = Callable[[str], "tuple[int, int] | None"]
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
    "prompt_upsampling",
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
    #: Learns a URL reference's (width, height) to price it, or None when it cannot (``flux_nb.http.probe``).
    measure_url: SizeOfUrl | None = field(default=None, compare=False)
    #: API keys no prompt, axis value or request field may carry (``refuse_secrets``).
    keys: tuple[str, ...] = field(default=(), compare=False, repr=False)


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
    #: True when the estimate is an upper bound ("at most"): megapixels rounded up (BFL's rounding is not
    #: published), or a URL reference's size not known before sending.
    estimate_is_bound: bool = False

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


def reference_images(images: Any, measure_url: SizeOfUrl | None = None) -> tuple[ImageInput, ...]:
    """Encode and check reference images once: paths, URLs, bytes, PIL images, arrays or earlier Results.

    With ``measure_url``, a URL reference gets the size it measures (else it stays unknown: priced at the cap).
    """
    if isinstance(images, tuple) and all(isinstance(i, ImageInput) for i in images):
        return images
    if images is None:
        return ()
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    inputs = prepare_images([_reference(item, i) for i, item in enumerate(items)])
    if measure_url is None:
        return inputs
    return tuple(replace(i, size=measure_url(i.value)) if i.is_url and i.size is None else i for i in inputs)


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
    check_text(prompt, "prompt")
    refuse_secrets(defaults.keys, prompt, labels or {}, fields)
    if tag is not None:
        check_text(tag, "tag")
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
    inputs = reference_images(images, defaults.measure_url)
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
    if note := protocol.size_note(request.width, request.height):
        warnings.warn(f"flux_nb: {note}", SizeWarning, stacklevel=2)
    first_size = inputs[0].size if inputs else None
    out_w, out_h = protocol.output_size(request, first_size)
    references = [_priced_megapixels(i) for i in inputs]
    estimate = protocol.estimate_cost(request.model, out_w, out_h, references)
    prepared = PreparedRequest(request, inputs, estimate, tag=tag, fresh=fresh, labels=dict(labels or {}))
    exact = all(i.size is not None for i in inputs) and protocol.estimate_is_exact(out_w, out_h, references)
    prepared.estimate_is_bound = not exact
    return prepared


def refuse_secrets(keys: Sequence[str], prompt: str, labels: Mapping[str, Any], fields: Mapping[str, Any]) -> None:
    """The one check that no API key goes out, however it got there (typed, a template variable, a vary value, an
    alternative): in the prompt, an axis value or a request field. The ValidationError never shows the key."""
    refuse_keys("prompt", prompt, keys)
    for name, value in (*labels.items(), *fields.items()):
        refuse_keys(name, value, keys)


def _priced_megapixels(image: ImageInput) -> float:
    """A reference's megapixels as the API bills them; a URL's size is unknown here, so the largest it takes."""
    return image.megapixels if image.size is not None else protocol.REFERENCE_MP_CAP


def check_text(value: Any, name: str) -> str:
    """``value`` if it is text that can be sent and stored (UTF-8), else a ValidationError naming the problem."""
    if not isinstance(value, str):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValidationError(f"{name} must be text, got {type(value).__name__} {shown}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = value[exc.start]
        raise ValidationError(
            f"{name} holds a lone surrogate \\u{ord(char):04x} at character {exc.start + 1} (half of a character, "
            "often from a bad copy and paste); delete it and type that character again"
        ) from None
    return value


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def split_axes(fields: Mapping[str, Any]) -> tuple[dict[str, Any], list[Axis]]:
    """Fixed fields and axes: a list-like value (list, tuple, range, NumPy vector, Series) sweeps (``size`` takes a
    list of pairs)."""
    base: dict[str, Any] = {}
    axes: list[Axis] = []
    for name, value in fields.items():
        if name == "size" and isinstance(value, tuple) and len(value) == 2 and not isinstance(value[0], tuple):
            base[name] = value  # one (width, height) pair
        elif is_list_like(value):
            axes.append(_axis(name, [plain(v) for v in listed(value, name, MAX_COMBINATIONS)]))
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
    prompts: str | PromptTemplate | Sequence[str | PromptTemplate],
    defaults: Defaults,
    *,
    axes: Sequence[Axis] = (),
    images: Any = None,
    vary: Mapping[str, Sequence[Any]] | None = None,
    **fields: Any,
) -> list[PreparedRequest]:
    """Every combination of the prompts, their axes, the given ``axes`` and the list-valued ``fields``, prepared.

    A prompt given as text sweeps its ``{a|b|c}`` alternatives (axes alt1, alt2...); ``vary={"dog": ["dog",
    "cat"]}`` replaces the first value, found in the prompt, by each value in turn (an axis named "dog").

    >>> [p.request.seed for p in build("a fox", Defaults(), seed=[1, 2])]
    [1, 2]
    >>> [p.request.prompt for p in build("a {red|blue} fox", Defaults(), seed=1)]
    ['a red fox', 'a blue fox']
    """
    templates = prompt_templates(prompts, vary)
    options = {k: fields.pop(k) for k in RECORD_OPTIONS if k in fields}
    base, field_axes = split_axes(fields)
    shared = [*axes, *field_axes]
    total = sum(math.prod(len(a.values) for a in (*t.axes, *shared)) for t in templates)
    if total > MAX_COMBINATIONS:
        raise ValidationError(
            f"the sweep has {total} combinations; at most {MAX_COMBINATIONS} run at once (split it up)"
        )
    planned = []
    for template in templates:
        label = template.label if template.axes else template.render({})
        for point in expand(base, [Axis("prompt", (label,)), *template.axes, *shared]):
            fields = dict(point.fields)
            fields.pop("prompt")
            planned.append((template.render(point.labels), {**options.get("labels", {}), **point.labels}, fields))
    for prompt, labels, fields in planned:  # before a reference is read or a URL measured
        refuse_secrets(defaults.keys, prompt, labels, fields)
    inputs = reference_images(images, defaults.measure_url)
    tag, fresh = options.get("tag"), bool(options.get("fresh", False))
    return [
        prepare(prompt, defaults, images=inputs, tag=tag, fresh=fresh, labels=labels, **fields)
        for prompt, labels, fields in planned
    ]


def prompt_templates(
    prompts: str | PromptTemplate | Sequence[str | PromptTemplate], vary: Mapping[str, Any] | None = None
) -> list[PromptTemplate]:
    """The prompts as templates (text sweeps its ``{a|b}`` alternatives), with the ``vary`` replacements they hold."""
    items = [prompts] if isinstance(prompts, (str, PromptTemplate)) else prompts
    if not isinstance(items, (list, tuple)) or not items:
        check_text(prompts, "prompt")  # names what was given instead of text
        raise ValidationError("no prompt given: write what the image should show")
    templates = [item if isinstance(item, PromptTemplate) else choices(check_text(item, "prompt")) for item in items]
    if vary is None:
        return templates
    found = replacement_axes(vary)
    templates = [with_replacements(t, found) for t in templates]
    used = {a.name for t in templates for a in t.axes}
    for axis, find in found:
        if axis.name not in used:
            raise ValidationError(
                f"vary {axis.name}: {find!r} is not in the prompt (the first value is the text to find)"
            )
    return templates


def one_request(fields: Mapping[str, Any]) -> None:
    """Refuse list-valued fields where one image is asked for, pointing at ``sweep``."""
    if "vary" in fields:
        raise ValidationError("vary= sweeps the prompt: generate makes one image; use flux.sweep(..., vary=...)")
    for name, value in fields.items():
        if name in ("images", "labels", "size"):
            continue
        if is_list_like(value):
            raise ValidationError(
                f"{name} is a list of {len(value)} values: generate makes one image; use flux.sweep(...) for several"
            )


__all__ = [
    "Defaults",
    "PreparedRequest",
    "build",
    "check_text",
    "draw_seed",
    "one_request",
    "plain",
    "prepare",
    "prompt_templates",
    "reference_images",
    "refuse_secrets",
    "split_axes",
]
