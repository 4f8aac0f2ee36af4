"""The guards that keep money and data safe, each tested at the point a one-character slip would break it.

Every test here was checked against a hand-made mutant of the code it guards (named in its docstring):
it fails with the mutant in place and passes without it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from flux_nb import Flux
from flux_nb.errors import BudgetError, DeliveryError, ValidationError
from flux_nb.http.client import AsyncFluxClient, RetryPolicy
from flux_nb.protocol import FluxRequest, check_size, estimate_cost
from flux_nb.server import ServerConfig, create_app
from flux_nb.server.webhooks import SIGNATURE_HEADER, sign_webhook, verify_webhook

# An in-process server behind httpx.ASGITransport: no socket opens, the loopback address is only a name.
IN_PROCESS = "http://127.0.0.1:8800"
FAST_RETRY = RetryPolicy(attempts=3, rate_limit_attempts=3, base_delay=0.0, max_delay=0.0)


class Hooked(httpx.AsyncBaseTransport):
    """An in-process local server with a hook that sees each request before the server does."""

    def __init__(self, hook: Callable[[httpx.Request], None], **config: Any) -> None:
        self.inner = httpx.ASGITransport(create_app(ServerConfig(**config)))
        self.hook = hook

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.hook(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def is_submit(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.startswith("/v1/flux-2-")


# -- the "sending" status is on disk before the submit leaves -------------------------------------


def test_a_record_is_sending_at_the_moment_its_submit_reaches_the_server(history_dir: Path) -> None:
    """Mutant: Executor.execute's on_sending no longer calls store.mark_sending (or the client skips on_sending).

    A submit cut off mid-flight must be found as ``sending`` after a crash (never resent); that holds only if
    the status is written before the POST goes out, so the server itself reads the history when the POST arrives.
    """
    seen: list[list[str]] = []
    flux: Flux | None = None

    def read_history(request: httpx.Request) -> None:
        if is_submit(request):
            assert flux is not None
            seen.append(list(flux.store.query()["status"]))

    flux = Flux(endpoint=IN_PROCESS, history_dir=history_dir, transport=Hooked(read_history))
    try:
        result = flux.generate("a lighthouse", seed=1, width=64, height=64)
        assert result.ok
        assert seen == [["sending"]]
        assert list(flux.store.query()["status"]) == ["ready"]
    finally:
        flux.close()


def test_a_batch_writes_every_pending_record_before_its_first_submit(history_dir: Path) -> None:
    """A sweep's rows are written in one go before anything is sent: the first submit finds them all pending
    (but its own, sending), with distinct creation times in batch order; a crash from then on loses none."""
    seen: list[list[str]] = []
    flux: Flux | None = None

    def read_history(request: httpx.Request) -> None:
        if is_submit(request) and not seen:
            assert flux is not None
            seen.append(sorted(flux.store.query()["status"]))

    flux = Flux(endpoint=IN_PROCESS, history_dir=history_dir, transport=Hooked(read_history), max_concurrency=1)
    writes: list[str] = []
    write = flux.store._db.write
    flux.store._db.write = lambda work, doing: (writes.append(doing), write(work, doing))[1]  # type: ignore[method-assign]
    try:
        results = flux.sweep("a lighthouse", seed=[1, 2, 3, 4, 5], width=64, height=64)
        assert all(r.ok for r in results)
        assert seen == [["pending"] * 4 + ["sending"]]
        assert writes.count("add 5 records") == 1 and "add a record" not in writes  # one transaction
        frame = flux.history()
        assert frame["seed"].tolist() == [1, 2, 3, 4, 5] and frame["created_at"].is_monotonic_increasing
        assert frame["created_at"].nunique() == 5
    finally:
        flux.close()


async def test_the_client_calls_on_sending_before_the_submit_and_only_once() -> None:
    """Mutant: AsyncFluxClient.generate drops (or moves after the submit) ``await on_sending()``."""
    order: list[str] = []

    def note(request: httpx.Request) -> None:
        order.append("submit" if is_submit(request) else request.method)

    async def on_sending() -> None:
        order.append("sending")

    async def on_submitted(task: Any) -> None:
        order.append("submitted")

    client = AsyncFluxClient(None, IN_PROCESS, transport=Hooked(note))
    async with client:
        await client.generate(
            FluxRequest("a fox", seed=2, width=64, height=64), on_sending=on_sending, on_submitted=on_submitted
        )
    assert order[:3] == ["sending", "submit", "submitted"]
    assert order.count("sending") == 1 and order.count("submit") == 1


# -- the budget, at its exact boundary ------------------------------------------------------------


def test_a_budget_is_spent_to_the_last_credit_and_not_one_more(history_dir: Path) -> None:
    """Mutant: ``>`` turned into ``>=`` (or the tolerance's sign flipped) in Flux.check_budget."""
    submits: list[str] = []
    hook = Hooked(lambda r: submits.append(r.url.path) if is_submit(r) else None)
    flux = Flux(endpoint=IN_PROCESS, history_dir=history_dir, transport=hook, budget=2.8)
    try:
        assert flux.generate("one", seed=1).ok  # 1.4 of 2.8
        assert flux.generate("two", seed=2).ok  # 2.8 of 2.8: exactly the budget, still allowed
        with pytest.raises(BudgetError, match="would pass the budget"):
            flux.generate("three", seed=3)
        assert len(submits) == 2
        assert flux.spent() == pytest.approx(2.8)
    finally:
        flux.close()


def test_a_budget_within_rounding_of_the_estimate_allows_it(history_dir: Path) -> None:
    """Mutant: ``>`` turned into ``>=``; a nano-credit of float rounding never refuses a request."""
    flux = Flux(endpoint=IN_PROCESS, history_dir=history_dir, transport=Hooked(lambda r: None))
    try:
        batch = flux.batch("a cat", seed=1)
        assert batch[0].estimated_cost == 1.4
        flux.budget = 1.4 - 1e-9  # 1.4 - 1e-9 + 1e-9 == 1.4 exactly: the check's own tolerance
        flux.check_budget(batch)
        flux.budget = 1.4
        flux.check_budget(batch)
        flux.budget = 1.39
        with pytest.raises(BudgetError):
            flux.check_budget(batch)
    finally:
        flux.close()


# -- the 4 MP limit, at its exact boundary --------------------------------------------------------


def test_four_megapixels_exactly_is_accepted_and_one_step_more_is_refused() -> None:
    """Mutant: ``w * h > MAX_PIXELS`` turned into ``>=``, which refuses 2048x2048 (the size the error suggests)."""
    check_size(2048, 2048)
    FluxRequest("x", width=2048, height=2048).validate()
    check_size(4096, None)  # height unset counts as 1024: 4 MP exactly
    for width, height in ((2048, 2064), (2064, 2048), (4112, None)):
        with pytest.raises(ValidationError, match=r"at most 4\.19 \(4 MP\), e\.g\. 2048x2048"):
            check_size(width, height)
    assert estimate_cost("flux-2-klein-4b", 2048, 2048) == pytest.approx(1.4 + 3 * 0.1)


async def test_the_server_takes_2048x2048_and_refuses_2048x2064() -> None:
    """Mutant: the same ``>=`` as the server reads it (it checks sizes with protocol.check_size)."""
    app = create_app(ServerConfig(latency=60.0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=IN_PROCESS) as http:
        ok = await http.post("/v1/flux-2-klein-4b", json={"prompt": "x", "width": 2048, "height": 2048})
        refused = await http.post("/v1/flux-2-klein-4b", json={"prompt": "x", "width": 2048, "height": 2064})
    assert ok.status_code == 200 and ok.json()["output_mp"] == pytest.approx(4.0)
    assert refused.status_code == 422 and "4 MP" in refused.text


# -- webhook signatures against an independent HMAC-SHA256 -------------------------------------------


def test_a_webhook_signature_is_hmac_sha256_of_the_raw_body() -> None:
    """Mutant: sign_webhook switched to SHA-1 (or to another key or message)."""
    body = json.dumps({"id": "t1", "status": "Ready", "result": {"sample": "x"}}).encode()
    secret = "s3cret"
    independent = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert sign_webhook(body, secret) == f"sha256={independent}"
    assert verify_webhook(body, f"sha256={independent}", secret)
    sha1 = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    assert not verify_webhook(body, f"sha1={sha1}", secret)
    assert not verify_webhook(body, f"sha256={sha1}", secret)
    assert not verify_webhook(body, independent, secret)  # the "sha256=" prefix is part of the format
    assert SIGNATURE_HEADER == "X-BFL-Signature"


# -- a corrupted delivery, caught by its Content-MD5 -------------------------------------------------


class WrongChecksum(httpx.AsyncBaseTransport):
    """The local server, with the first ``bad`` deliveries' Content-MD5 replaced by the MD5 of other bytes."""

    def __init__(self, bad: int) -> None:
        self.inner = httpx.ASGITransport(create_app())
        self.bad = bad
        self.deliveries = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "GET" or request.url.path.startswith("/v1/"):
            return response
        self.deliveries += 1
        body = await response.aread()
        headers = dict(response.headers)
        assert headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
        if self.deliveries <= self.bad:
            headers["content-md5"] = base64.b64encode(hashlib.md5(body + b"!").digest()).decode()
        return httpx.Response(response.status_code, headers=headers, content=body)


async def test_a_delivery_with_a_wrong_content_md5_is_fetched_again() -> None:
    """Mutant: the client ignores Content-MD5 (the image itself decodes fine: only the checksum tells)."""
    transport = WrongChecksum(bad=1)
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        result = await client.generate(FluxRequest("a boat", seed=3, width=64, height=64, output_format="png"))
    assert transport.deliveries == 2
    assert (result.width, result.height) == (64, 64)


async def test_a_delivery_whose_content_md5_never_matches_is_refused() -> None:
    transport = WrongChecksum(bad=99)
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError, match="does not match Content-MD5"):
            await client.generate(FluxRequest("a boat", seed=3, width=64, height=64))
    assert transport.deliveries == FAST_RETRY.attempts
