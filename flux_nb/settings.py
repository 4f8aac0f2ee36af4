"""The settings of a ``Flux`` session, as traitlets: ``%config Flux`` lists them with their help.

Each is checked when it is set (a bad value is one clear line, before anything is sent).
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, Enum, Float, Int, Unicode, validate
from traitlets.config import Configurable

from flux_nb import protocol
from flux_nb.core import spending

LIMITS = {"thumbnail_size": 4096.0}


class FluxSettings(Configurable):
    """Defaults for requests, where they go, what they may spend, how results show."""

    model = Unicode(protocol.DEFAULT_MODEL, help="FLUX.2 model used when none is given.").tag(config=True)
    default_width = Int(None, allow_none=True, help="Width when none is given (None lets the API choose).").tag(
        config=True
    )
    default_height = Int(None, allow_none=True, help="Height when none is given (None lets the API choose).").tag(
        config=True
    )
    safety_tolerance = Int(protocol.DEFAULT_SAFETY, help="Moderation strictness, 0 (strict) to 5.").tag(config=True)
    output_format = Enum(
        list(protocol.OUTPUT_FORMATS), protocol.DEFAULT_FORMAT, help="Image format the API returns."
    ).tag(config=True)
    history_dir = Unicode(".flux", help="Folder of the history database and image files.").tag(config=True)
    max_concurrency = Int(protocol.MAX_ACTIVE_TASKS, help="Tasks in flight at once (the API allows 24 per key).").tag(
        config=True
    )
    budget = Float(None, allow_none=True, help="Credits this session may spend; None for no limit.").tag(config=True)
    thumbnail_size = Int(384, help="Longest side, in pixels, of the thumbnails shown in notebooks.").tag(config=True)
    thumbnail_format = Enum(["jpeg", "webp"], "jpeg", help="Format of notebook thumbnails.").tag(config=True)
    endpoint = Unicode("", help="Server base URL; empty: BFL cloud with a key, else the local server.").tag(config=True)
    region = Enum(list(protocol.BFL_HOSTS), "global", help="BFL cloud region: global, eu or us.").tag(config=True)
    task_timeout = Float(600.0, help="Seconds to wait for one task before leaving it to resume.").tag(config=True)
    download_stall = Float(
        30.0, help="Seconds without a byte after which an image download is given up (the task stays to resume)."
    ).tag(config=True)
    cache = Bool(True, help="Answer a request identical to a stored one from the history, for free.").tag(config=True)
    experiment = Unicode("", help="Experiment recorded on every row from now on; empty for none.").tag(config=True)
    share_slots = Bool(
        True, help="Share the key's active-task slots (24) with every flux_nb process on this machine."
    ).tag(config=True)
    slots_say_after = Float(
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
    confirm_over = Float(
        None, allow_none=True, help="Credits above which a batch needs confirming; None: 50 when billed, else off."
    ).tag(config=True)

    @validate("budget", "confirm_over")
    def _credit_limit(self, proposal: Any) -> float | None:
        return spending.credit_limit(proposal["trait"].name, proposal["value"])

    @validate("task_timeout", "download_stall", "max_concurrency", "thumbnail_size", "slots_say_after")
    def _positive(self, proposal: Any) -> float:
        name = proposal["trait"].name
        integer = name in ("max_concurrency", "thumbnail_size")
        return spending.positive(name, proposal["value"], integer=integer, most=LIMITS.get(name))
