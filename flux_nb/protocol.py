"""The FLUX.2 protocol as data: models, requests, validation, statuses and cost.

Pure: no I/O. The client, the server and the session all read their rules here, so a
rule lives in one place. Adding a model is one entry in ``MODELS``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Final

from flux_nb.errors import ValidationError

# Where the BFL cloud lives; regional hosts pin data residency.
BFL_HOSTS: dict[str, str] = {
    "global": "https://api.bfl.ai",
    "eu": "https://api.eu.bfl.ai",
    "us": "https://api.us.bfl.ai",
}
DEFAULT_MODEL = "flux-2-klein-4b"
KEY_HEADER = "x-key"
KEY_ENV = "BFL_API_KEY"


def is_bfl_hostname(host: str) -> bool:
    """True for bfl.ai and its subdomains (the API's regional hosts)."""
    return host == "bfl.ai" or host.endswith(".bfl.ai")


# Size rules shared by every FLUX.2 endpoint.
MIN_SIDE = 64
SIDE_STEP = 16
MAX_PIXELS = 4 * 1024 * 1024
DEFAULT_SIDE = 1024
# One megapixel as the pricing counts it: a 1024x1024 image is 1 MP.
PIXELS_PER_MP = 1024 * 1024
# A reference whose size is not known before sending (a URL the API fetches) is priced at the most it can be.
REFERENCE_MP_CAP = MAX_PIXELS / PIXELS_PER_MP

SAFETY_RANGE = (0, 5)
DEFAULT_SAFETY = 2
OUTPUT_FORMATS = ("jpeg", "png", "webp")
DEFAULT_FORMAT: Final = "jpeg"
WEBHOOK_URL_MAX = 2083
# BFL's schema sets no bound on seeds; ComfyUI's BFL nodes send any unsigned 64-bit value.
SEED_RANGE = (0, 2**64 - 1)
# BFL takes prompts of up to 32K tokens. A token is at least one character and rarely more than 16, so the
# character cap (a guard on memory, not BFL's rule) sits far above any prompt BFL accepts.
PROMPT_MAX_TOKENS = 32_000
PROMPT_MAX = PROMPT_MAX_TOKENS * 16
# The API's limit of tasks in flight per key; a task counts until it finishes.
MAX_ACTIVE_TASKS = 24
# Delivery URLs expire this long after the result is ready.
DELIVERY_TTL_SECONDS = 600.0


class Status(StrEnum):
    """Task statuses the API reports. Any other value means "still running"."""

    PENDING = "Pending"
    READY = "Ready"
    ERROR = "Error"
    REQUEST_MODERATED = "Request Moderated"
    CONTENT_MODERATED = "Content Moderated"
    TASK_NOT_FOUND = "Task not found"


def parse_status(value: str | None) -> Status:
    """Map a status string to ``Status``; unknown values count as still pending."""
    try:
        return Status(value or "")
    except ValueError:
        return Status.PENDING


@dataclass(frozen=True)
class NumberField:
    """An extra numeric field one model takes (flex's steps and guidance)."""

    name: str
    kind: type[int] | type[float]
    minimum: float
    maximum: float
    default: float


@dataclass(frozen=True)
class ModelSpec:
    """One FLUX.2 endpoint: its path, reference-image limit, prices and extra fields."""

    name: str
    max_images: int
    first_mp_credits: float
    extra_mp_credits: float
    extra_fields: tuple[NumberField, ...] = ()
    flag_fields: tuple[str, ...] = ()  # boolean settings, e.g. flex's prompt_upsampling

    @property
    def path(self) -> str:
        return f"/v1/{self.name}"

    def image_fields(self) -> list[str]:
        """The payload keys for reference images: input_image, input_image_2, ..."""
        return ["input_image"] + [f"input_image_{i}" for i in range(2, self.max_images + 1)]


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("flux-2-klein-4b", 4, 1.4, 0.1),
        ModelSpec("flux-2-klein-9b", 4, 1.5, 0.2),
        ModelSpec("flux-2-klein-9b-preview", 4, 1.5, 0.2),
        # BFL's skills docs say [pro] takes prompt_upsampling, though the schema lists it on flex only.
        ModelSpec("flux-2-pro", 8, 3.0, 1.5, flag_fields=("prompt_upsampling",)),
        ModelSpec("flux-2-pro-preview", 8, 3.0, 1.5),
        ModelSpec("flux-2-max", 8, 7.0, 3.0),
        ModelSpec(
            "flux-2-flex",
            8,
            5.0,
            5.0,
            (
                NumberField("steps", int, 1, 50, 50),
                NumberField("guidance", float, 1.5, 10.0, 5.0),
            ),
            ("prompt_upsampling",),
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    """The spec of a registered model, or a ValidationError listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(MODELS)
        raise ValidationError(f"model {name!r} is not a FLUX.2 model flux_nb knows (known: {known})") from None


def nearest_sides(value: int) -> tuple[int, int]:
    """The multiples of 16 just below and just above ``value``."""
    low = max(MIN_SIDE, value // SIDE_STEP * SIDE_STEP)
    return low, low + SIDE_STEP


def rendered_side(value: int) -> int:
    """The side an image asked ``value`` wide comes back: BFL renders multiples of 16 (the exact rounding is
    unconfirmed; the local server takes the nearest lower multiple, and the history records what came back)."""
    return nearest_sides(value)[0]


def size_note(width: int | None, height: int | None) -> str | None:
    """What a size that is not in multiples of 16 comes back as, in words (None when it comes back as asked)."""
    w, h = width or DEFAULT_SIDE, height or DEFAULT_SIDE
    if (rendered_side(w), rendered_side(h)) == (w, h):
        return None
    return (
        f"{w}x{h} comes back as {rendered_side(w)}x{rendered_side(h)}: the API renders sides in multiples of "
        f"{SIDE_STEP} (the history records the size that came back)"
    )


def check_side(name: str, value: object) -> int:
    """Validate one of width/height (any whole number from 64, as BFL documents) and return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be a whole number of pixels, got {value!r}")
    if value < MIN_SIDE:
        raise ValidationError(f"{name} {value} is below the minimum of {MIN_SIDE} pixels")
    return value


def check_safety(name: str, value: object) -> int:
    """Validate a moderation strictness (a whole number in ``SAFETY_RANGE``) and return it."""
    low, high = SAFETY_RANGE
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise ValidationError(f"{name} {value} is out of range ({low} strictest to {high} most permissive)")
    return value


def check_size(width: int | None, height: int | None) -> None:
    """Validate width and height, alone and together (at most 4 MP)."""
    if width is not None:
        check_side("width", width)
    if height is not None:
        check_side("height", height)
    w = width if width is not None else DEFAULT_SIDE
    h = height if height is not None else DEFAULT_SIDE
    if w * h > MAX_PIXELS:
        raise ValidationError(
            f"size {w}x{h} is {w * h / 1e6:.2f} megapixels; the API allows at most "
            f"{MAX_PIXELS / 1e6:.2f} (4 MP), e.g. 2048x2048 or 2560x1632"
        )


def aspect_size(aspect: str, megapixels: float = 1.0) -> tuple[int, int]:
    """A valid (width, height) near ``megapixels`` for an aspect like "16:9" or "1.5"."""
    try:
        if ":" in aspect:
            a, b = (float(part) for part in aspect.split(":", 1))
            ratio = a / b
        else:
            ratio = float(aspect)
    except (ValueError, ZeroDivisionError):
        raise ValidationError(f"aspect {aspect!r} is not a ratio like 16:9 or 1.5") from None
    if not math.isfinite(ratio) or not 1 / 16 <= ratio <= 16:
        raise ValidationError(f"aspect {aspect!r} must be between 1:16 and 16:1")
    pixels = megapixels * PIXELS_PER_MP
    width = max(MIN_SIDE, round(math.sqrt(pixels * ratio) / SIDE_STEP) * SIDE_STEP)
    height = max(MIN_SIDE, round(math.sqrt(pixels / ratio) / SIDE_STEP) * SIDE_STEP)
    check_size(width, height)
    return width, height


def parse_size(text: str) -> tuple[int, int]:
    """Parse "1024x768" into a validated (width, height)."""
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValidationError(f"size {text!r} is not of the form WIDTHxHEIGHT, e.g. 1024x768")
    width, height = int(parts[0]), int(parts[1])
    check_size(width, height)
    return width, height


def megapixels(width: int, height: int) -> float:
    return width * height / PIXELS_PER_MP


def priced_megapixels(mp: float) -> int:
    """Megapixels as the estimate prices them: rounded up, at least 1.

    BFL's rounding is not published. An observed flux-2-pro answer charged 4.5 credits for 1.98 MP (so the
    output is rounded up), and ComfyUI's BFL nodes price ``max(1, ceil(MP))`` for the output and for each
    reference: rounding every image up to whole megapixels, at least one each, keeps an estimate from being
    lower than the bill. Where every image is a whole number of megapixels the estimate is exact.
    """
    return max(1, math.ceil(mp - 1e-9))


def estimate_cost(model: str, width: int, height: int, reference_megapixels: Sequence[float] = ()) -> float:
    """Credits a request costs at most: first MP + further output MP + each reference's MP, all rounded up.

    >>> estimate_cost("flux-2-klein-4b", 1024, 1024)
    1.4
    >>> estimate_cost("flux-2-pro", 1024, 1040)
    4.5
    """
    spec = model_spec(model)
    further = (
        priced_megapixels(megapixels(width, height)) - 1 + sum(priced_megapixels(mp) for mp in reference_megapixels)
    )
    return round(spec.first_mp_credits + further * spec.extra_mp_credits, 4)


def estimate_is_exact(width: int, height: int, reference_megapixels: Sequence[float] = ()) -> bool:
    """True when rounding cannot matter: the output and every reference are whole megapixels (the output at
    least 1)."""
    return all(mp >= 1 and float(mp).is_integer() for mp in (megapixels(width, height), *reference_megapixels))


@dataclass(frozen=True)
class FluxRequest:
    """What we send: one FLUX.2 request, its images already encoded (URL or base64).

    ``width``/``height`` of ``None`` are sent as absent, never as 0.
    """

    prompt: str
    model: str = DEFAULT_MODEL
    images: tuple[str, ...] = ()
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    safety_tolerance: int = DEFAULT_SAFETY
    output_format: str = DEFAULT_FORMAT
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    steps: int | None = None
    guidance: float | None = None
    # flex only; None leaves it to the API (which upsamples: its default is true)
    prompt_upsampling: bool | None = None

    def validate(self) -> FluxRequest:
        """Check every rule; raise ValidationError naming the field, else return self.

        The checks run once per request: the builder validates, and the client's own call finds it done.
        """
        if self.__dict__.get("_valid"):
            return self
        self._check()
        object.__setattr__(self, "_valid", True)  # not a field: equality and hashing ignore it
        return self

    def _check(self) -> None:
        spec = model_spec(self.model)
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ValidationError("prompt is empty: describe the image you want")
        if len(self.prompt) > PROMPT_MAX:
            raise ValidationError(
                f"prompt is {len(self.prompt):,} characters; BFL takes up to {PROMPT_MAX_TOKENS:,} tokens, "
                f"and flux_nb sends at most {PROMPT_MAX:,} characters"
            )
        if len(self.images) > spec.max_images:
            raise ValidationError(
                f"{len(self.images)} reference images given; {self.model} takes at most {spec.max_images}"
            )
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, int):
                raise ValidationError(f"seed must be a whole number, got {self.seed!r}")
            if not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
                raise ValidationError(f"seed {self.seed} is out of range ({SEED_RANGE[0]} to 2**64-1)")
        check_size(self.width, self.height)
        check_safety("safety_tolerance", self.safety_tolerance)
        if self.output_format not in OUTPUT_FORMATS:
            raise ValidationError(f"output_format {self.output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        self._validate_webhook()
        self._validate_extra_fields(spec)

    def _validate_webhook(self) -> None:
        if self.webhook_url is None:
            if self.webhook_secret is not None:
                raise ValidationError("webhook_secret was given without a webhook_url")
            return
        url = self.webhook_url
        if not 1 <= len(url) <= WEBHOOK_URL_MAX:
            raise ValidationError(f"webhook_url must be 1 to {WEBHOOK_URL_MAX} characters, got {len(url)}")
        if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
            raise ValidationError(f"webhook_url {url!r} must be an http(s) URL")

    def _validate_extra_fields(self, spec: ModelSpec) -> None:
        allowed = {f.name: f for f in spec.extra_fields}
        for name in ("steps", "guidance"):
            value = getattr(self, name)
            if value is None:
                continue
            rule = allowed.get(name)
            if rule is None:
                takers = [m.name for m in MODELS.values() if any(f.name == name for f in m.extra_fields)]
                raise ValidationError(f"{name} is not a setting of {self.model} (only of {', '.join(takers)})")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValidationError(f"{name} must be a number, got {value!r}")
            if rule.kind is int and not float(value).is_integer():
                raise ValidationError(f"{name} must be a whole number, got {value!r}")
            if not rule.minimum <= value <= rule.maximum:
                raise ValidationError(f"{name} {value} is out of range ({rule.minimum:g} to {rule.maximum:g})")
        if self.prompt_upsampling is not None:
            if "prompt_upsampling" not in spec.flag_fields:
                takers = [m.name for m in MODELS.values() if "prompt_upsampling" in m.flag_fields]
                only = ", ".join(takers)
                raise ValidationError(f"prompt_upsampling is not a setting of {self.model} (only of {only})")
            if not isinstance(self.prompt_upsampling, bool):
                raise ValidationError(f"prompt_upsampling must be True or False, got {self.prompt_upsampling!r}")

    def to_payload(self) -> dict[str, Any]:
        """The JSON body to POST; unset fields are left out."""
        spec = model_spec(self.model)
        body: dict[str, Any] = {"prompt": self.prompt}
        for key, image in zip(spec.image_fields(), self.images, strict=False):
            body[key] = image
        optional = {
            "seed": self.seed,
            "width": self.width,
            "height": self.height,
            "webhook_url": self.webhook_url,
            "webhook_secret": self.webhook_secret,
            "steps": self.steps,
            "guidance": self.guidance,
            "prompt_upsampling": self.prompt_upsampling,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        body["safety_tolerance"] = self.safety_tolerance
        body["output_format"] = self.output_format
        return body

    def with_(self, **changes: Any) -> FluxRequest:
        """A copy with some fields changed."""
        return replace(self, **changes)


def output_size(request: FluxRequest, first_input_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The size the API will render: as asked (each side down to a multiple of 16), else the first
    reference's size, else 1024x1024."""
    if request.width is not None and request.height is not None:
        return rendered_side(request.width), rendered_side(request.height)
    if first_input_size is not None and request.width is None and request.height is None:
        w, h = first_input_size
        scale = min(1.0, math.sqrt(PIXELS_PER_MP / max(1, w * h)))
        return (
            max(MIN_SIDE, int(w * scale) // SIDE_STEP * SIDE_STEP),
            max(MIN_SIDE, int(h * scale) // SIDE_STEP * SIDE_STEP),
        )
    return rendered_side(request.width or DEFAULT_SIDE), rendered_side(request.height or DEFAULT_SIDE)
