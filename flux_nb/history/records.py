"""What a history row is: ``Record``, its ``RecordStatus``, its cache key, and the cleaning of values.

Values reach the store from API answers and user code; a value of the wrong kind (a cost of
"abc") is stored as missing rather than refused, so one odd answer never loses a record.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from flux_nb.history.files import image_file
from flux_nb.protocol import FluxRequest


class RecordStatus(StrEnum):
    """Where a record stands. ``pending`` and ``submitted`` may still change; the rest are final."""

    PENDING = "pending"  # written before the request is sent (waiting for a free slot)
    SENDING = "sending"  # the submit is going out: if its process dies now, the outcome is unknown
    SUBMITTED = "submitted"  # the API gave a task id; resumable from its polling URL
    READY = "ready"
    FAILED = "failed"
    MODERATED = "moderated"  # not charged
    UNKNOWN = "unknown"  # the submit's outcome is unknown: never resent blindly
    CANCELLED = "cancelled"


# The request fields that shape the image: the cache key and a replay are built from these.
KEY_FIELDS = ("prompt", "model", "seed", "width", "height", "safety_tolerance", "output_format", "steps", "guidance")
SHA256 = re.compile(r"[0-9a-f]{64}")


def request_key(request: FluxRequest, backend: str, input_hashes: Sequence[str]) -> str:
    """The cache key of a request: the fields that shape the image, the inputs' hashes and the backend.

    Leaves out the webhook (where a result goes, not what it is) and the endpoint URL, whose
    port changes whenever the embedded server starts.
    """
    values: dict[str, Any] = {name: getattr(request, name) for name in KEY_FIELDS}
    if values["guidance"] is not None:
        values["guidance"] = float(values["guidance"])  # guidance=5 and guidance=5.0 are one request
    canonical = json.dumps({**values, "inputs": list(input_hashes), "backend": backend}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Record:
    """One history row, as stored; ``root`` is the history folder that paths are relative to.

    A row with ``cached_from`` is a *use*: a cell showed the image of that earlier record
    (a cache hit) without a new request; its ``cost`` is 0.
    """

    record_id: str
    created_at: float
    updated_at: float
    notebook: str | None
    backend: str | None
    endpoint: str | None
    model: str
    prompt: str
    seed: int | None
    width: int | None
    height: int | None
    safety_tolerance: int | None
    output_format: str | None
    steps: int | None
    guidance: float | None
    webhook_url: str | None
    input_hashes: list[str]
    request_key: str | None
    tag: str | None
    replay_of: str | None
    owner: str | None  # "host:pid" of the process that sends it: tells a crashed run's rows from a live one's
    status: str
    task_id: str | None
    polling_url: str | None
    estimated_cost: float | None
    cost: float | None
    input_mp: float | None
    output_mp: float | None
    submitted_at: float | None
    ready_at: float | None
    finished_at: float | None
    duration_s: float | None
    error_kind: str | None
    error: str | None
    image_path: str | None
    image_sha256: str | None
    out_width: int | None
    out_height: int | None
    engine: str | None
    result_seed: int | None
    experiment: str | None = None
    cached_from: str | None = None  # a use: the record whose image a cache hit showed
    labels: str | None = None  # a sweep point's axis values, as JSON text
    batch: str | None = None  # the batch it came from: one %%flux cell, one sweep/generate call, one panel click
    batch_axes: str | None = None  # the names of the axes that batch varied, as a JSON list
    root: Path | None = None

    def request_fields(self) -> dict[str, Any]:
        """The fields that rebuild this record's request (reference images aside)."""
        return {name: getattr(self, name) for name in KEY_FIELDS}

    @property
    def image_file(self) -> Path | None:
        """The absolute path of the result image, if there is one (ValidationError if it leaves the folder)."""
        return image_file(self.root, self.image_path) if self.image_path and self.root else None

    @property
    def cached(self) -> bool:
        """True for a use of an earlier record's image (a cache hit), which cost nothing."""
        return self.cached_from is not None


# -- cleaning values on their way in --------------------------------------------------------------


def as_float(value: object) -> float | None:
    """A finite number as float; anything else (text, NaN, a bool) as None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


#: The backend label of an endpoint that is not BFL's but bills (a gateway, ``Flux.billed = True``).
BILLED_PREFIX = "billed:"


def is_billed_label(label: object) -> bool:
    """True for the history label of a billed backend: BFL's API, or an endpoint said to bill (``Flux.billed``)."""
    return isinstance(label, str) and (label == "bfl" or label.startswith(BILLED_PREFIX))


def seed_to_sql(seed: Any) -> Any:
    """A seed as SQLite stores it: BFL seeds run to 2**64-1, SQLite's INTEGER is signed 64-bit, so a seed from
    2**63 is kept as its two's complement (negative: no real seed is)."""
    return seed - 2**64 if isinstance(seed, int) and not isinstance(seed, bool) and 2**63 <= seed < 2**64 else seed


def seed_from_sql(value: Any) -> Any:
    """The seed ``seed_to_sql`` stored."""
    return value + 2**64 if isinstance(value, int) and not isinstance(value, bool) and value < 0 else value


def as_int(value: object) -> int | None:
    """A whole number that fits SQLite's 64 bits; anything else as None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and -(2**63) <= value < 2**63 else None


def as_text(value: object) -> str | None:
    """A str as itself; anything else as None."""
    return value if isinstance(value, str) else None


def labels_json(labels: dict[str, Any] | None) -> str | None:
    """A sweep point's labels as JSON text (values JSON cannot hold are written as their text)."""
    return json.dumps(labels, sort_keys=True, default=str) if labels else None
