"""The settings of a ``Flux`` session, as traitlets: ``%config Flux`` lists them with their help.

Each is checked when it is set, whichever way it is set (``flux.budget = ...``, ``%config Flux.budget = ...``, a
config file, the constructor): a bad value is one clear line and the value before it stays. The checks run in
the traits' own ``validate``, which traitlets calls at assignment even while it holds notifications to load a
config (a cross-validator would run only afterwards, after the value was set).
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Enum, Float, Int, Unicode
from traitlets.config import Configurable

from flux_nb import protocol
from flux_nb.core import spending

LIMITS = {"thumbnail_size": 4096.0}


class CreditLimit(Float[float | None, float | None]):
    """Credits: None (no limit), or a number of credits, 0 or more."""

    def validate(self, obj: Any, value: Any) -> float | None:
        return spending.credit_limit(str(self.name), super().validate(obj, value))


class PositiveFloat(Float[float, float]):
    """A finite number above 0 (a duration)."""

    def validate(self, obj: Any, value: Any) -> float:
        return spending.positive(str(self.name), super().validate(obj, value))


class PositiveInt(Int[int, int]):
    """A whole number above 0 (a count, a size)."""

    def validate(self, obj: Any, value: Any) -> int:
        name = str(self.name)
        return int(spending.positive(name, super().validate(obj, value), integer=True, most=LIMITS.get(name)))


class Side(Int[int | None, int | None]):
    """A default width or height: None (the API chooses), or whole pixels from 64."""

    def validate(self, obj: Any, value: Any) -> int | None:
        value = super().validate(obj, value)
        return None if value is None else protocol.check_side(f"Flux.{self.name}", value)


class Safety(Int[int, int]):
    """Moderation strictness, a whole number in ``protocol.SAFETY_RANGE``."""

    def validate(self, obj: Any, value: Any) -> int:
        return protocol.check_safety(f"Flux.{self.name}", super().validate(obj, value))


class FluxSettings(Configurable):
    """Defaults for requests, where they go, what they may spend, how results show."""

    model = Unicode(protocol.DEFAULT_MODEL, help="FLUX.2 model used when none is given.").tag(config=True)
    default_width = Side(None, allow_none=True, help="Width when none is given (None lets the API choose).").tag(
        config=True
    )
    default_height = Side(None, allow_none=True, help="Height when none is given (None lets the API choose).").tag(
        config=True
    )
    safety_tolerance = Safety(protocol.DEFAULT_SAFETY, help="Moderation strictness, 0 (strict) to 5.").tag(config=True)
    output_format = Enum(
        list(protocol.OUTPUT_FORMATS), protocol.DEFAULT_FORMAT, help="Image format the API returns."
    ).tag(config=True)
    history_dir = Unicode(".flux", help="Folder of the history database and image files.").tag(config=True)
    max_concurrency = PositiveInt(
        protocol.MAX_ACTIVE_TASKS, help="Tasks in flight at once (the API allows 24 per key)."
    ).tag(config=True)
    budget = CreditLimit(None, allow_none=True, help="Credits this session may spend; None for no limit.").tag(
        config=True
    )
    thumbnail_size = PositiveInt(384, help="Longest side, in pixels, of the thumbnails shown in notebooks.").tag(
        config=True
    )
    thumbnail_format = Enum(["jpeg", "webp"], "jpeg", help="Format of notebook thumbnails.").tag(config=True)
    endpoint = Unicode("", help="Server base URL; empty: BFL cloud with a key, else the local server.").tag(config=True)
    region = Enum(list(protocol.BFL_HOSTS), "global", help="BFL cloud region: global, eu or us.").tag(config=True)
    task_timeout = PositiveFloat(600.0, help="Seconds to wait for one task before leaving it to resume.").tag(
        config=True
    )
    download_stall = PositiveFloat(
        30.0, help="Seconds without a byte after which an image download is given up (the task stays to resume)."
    ).tag(config=True)
    cache = Bool(True, help="Answer a request identical to a stored one from the history, for free.").tag(config=True)
    experiment = Unicode("", help="Experiment recorded on every row from now on; empty for none.").tag(config=True)
    share_slots = Bool(
        True, help="Share the key's active-task slots (24) with every flux_nb process on this machine."
    ).tag(config=True)
    slots_say_after = PositiveFloat(
        30.0, help="Seconds a request waits for a shared slot before flux_nb says which processes hold them."
    ).tag(config=True)
    measure_references = Bool(
        True,
        help="Learn a URL reference's size (a ranged GET of its first bytes) to price it; off: priced as the largest.",
    ).tag(config=True)
    billed = Bool(
        None,
        allow_none=True,
        help="Whether the endpoint bills: None (auto) for BFL's hosts yes, other endpoints no; True for a gateway "
        "that bills (budget, confirm_over and billed totals apply).",
    ).tag(config=True)
    confirm_over = CreditLimit(
        None, allow_none=True, help="Credits above which a batch needs confirming; None: 50 when billed, else off."
    ).tag(config=True)
