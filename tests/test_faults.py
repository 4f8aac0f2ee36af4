"""Under injected faults nothing paid for is lost, nothing is paid twice, every request ends on record."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flux_nb import Flux
from flux_nb.api import FluxRequest
from flux_nb.client import AsyncFluxClient, RetryPolicy
from flux_nb.errors import DeliveryError, UnknownOutcomeError
from flux_nb.server import EmbeddedServer
from flux_nb.server.faults import Fault, FaultPlan

FAST = RetryPolicy(attempts=8, rate_limit_attempts=80, base_delay=0.02, max_delay=0.2)

MIXED = FaultPlan(
    seed=7,
    submit_5xx=Fault(0.2),
    poll_5xx=Fault(0.2),
    drop_before=Fault(0.025),
    drop_after=Fault(0.025),
    storm_429=Fault(0.1, on=frozenset(range(40, 70))),
    task_error=Fault(0.02),
    content_moderated=Fault(0.02),
    request_moderated=Fault(0.01),
    delivery_404=Fault(0.03),
    delivery_truncated=Fault(0.03),
    delivery_corrupt=Fault(0.03),
)


def test_plan_parsing_from_the_command_line_form() -> None:
    plan = FaultPlan.parse("submit_5xx=0.2, drop_after=#3|#9, slow_seconds=2", seed=4)
    assert plan.submit_5xx == Fault(0.2) and plan.drop_after == Fault(on=frozenset({3, 9}))
    assert plan.slow_seconds == 2 and plan.seed == 4 and plan.active
    assert not FaultPlan().active
    with pytest.raises(ValueError, match="unknown fault 'nope'"):
        FaultPlan.parse("nope=1")
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan.parse("poll_5xx=3")


def test_a_300_request_sweep_under_mixed_faults_loses_nothing(server_factory: Any, history_dir: Path) -> None:
    server = server_factory(latency=0.05, max_active=24, faults=MIXED)
    flux = Flux(endpoint=server.url, history_dir=history_dir, cache=False)
    flux.executor.client.retry = FAST
    try:
        sweep = flux.sweep("under fire", seed=list(range(300)), width=64, height=64)
    finally:
        flux.close()
    stats = server.stats()
    frame = flux.history()
    assert len(sweep) == len(frame) == 300
    ready = frame[frame["status"] == "ready"]
    for path, digest in zip(ready["image_path"], ready["image_sha256"], strict=True):
        data = Path(path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        Image.open(path).load()
    ended = frame[frame["status"] != "ready"]
    assert set(ended["status"]) <= {"failed", "moderated", "unknown"}
    assert ended["error"].notna().all() and (ended["error"].str.len() > 0).all()

    # Nothing paid for is lost: every task the server finished and the client knows of is stored.
    tasks = server.app.state.table.tasks  # read past the injected faults
    for row in frame[frame["task_id"].notna()].itertuples():
        if tasks[row.task_id].status == "Ready":
            assert row.status == "ready", (row.record_id, row.status, row.error)
    # Nothing is paid twice, and the server never saw more than its limit.
    assert stats["most_tasks_for_one_request"] == 1
    assert stats["peak_active"] <= 24
    unknown = (frame["status"] == "unknown").sum()
    assert len(ready) <= stats["charged"] <= len(ready) + unknown
    fired = stats["faults_fired"]
    for kind in ("submit_5xx", "poll_5xx", "drop_before", "drop_after", "storm_429", "delivery_corrupt"):
        assert fired.get(kind, 0) > 0, fired
    print(f"\n300 requests: {len(ready)} ready, {len(ended)} ended on record; faults fired: {fired}")


async def test_a_slow_submit_past_the_timeout_is_unknown_and_not_resent(server_factory: Any) -> None:
    server = server_factory(faults=FaultPlan(slow_submit=Fault(on=frozenset({1})), slow_seconds=1.0))
    timeout = httpx.Timeout(connect=2.0, read=0.3, write=2.0, pool=2.0)
    async with AsyncFluxClient(None, server.url, timeout=timeout, retry=FAST) as client:
        with pytest.raises(UnknownOutcomeError):
            await client.generate(FluxRequest("slow", seed=1, width=64, height=64))
    await asyncio.sleep(1.2)
    assert server.stats()["requests_by_route"]["submit"] == 1  # never sent again


async def test_dropped_answers_are_unknown_never_resent(server_factory: Any) -> None:
    plan = FaultPlan(drop_before=Fault(on=frozenset({1})), drop_after=Fault(on=frozenset({2})))
    server = server_factory(faults=plan)
    async with AsyncFluxClient(None, server.url, retry=FAST) as client:
        for _ in range(2):
            with pytest.raises(UnknownOutcomeError, match="answer was lost"):
                await client.generate(FluxRequest("dropped", seed=1, width=64, height=64))
        assert (await client.generate(FluxRequest("fine", seed=2, width=64, height=64))).width == 64
    stats = server.stats()
    assert stats["submits"] == 2  # drop_before never reached the task table, drop_after did
    assert stats["faults_fired"] == {"drop_before": 1, "drop_after": 1}


async def test_corrupt_and_truncated_downloads_are_retried_never_stored(server_factory: Any) -> None:
    plan = FaultPlan(delivery_truncated=Fault(on=frozenset({1})), delivery_corrupt=Fault(on=frozenset({2})))
    server = server_factory(faults=plan)
    async with AsyncFluxClient(None, server.url, retry=FAST) as client:
        result = await client.generate(FluxRequest("damaged", seed=3, width=128, height=128, output_format="png"))
    Image.open(__import__("io").BytesIO(result.image)).load()
    assert server.stats()["downloads"] == 3


async def test_an_early_expired_delivery_is_asked_for_again(server_factory: Any) -> None:
    server = server_factory(faults=FaultPlan(delivery_404=Fault(on=frozenset({1}))))
    async with AsyncFluxClient(None, server.url, retry=FAST) as client:
        result = await client.generate(FluxRequest("expired", seed=3, width=64, height=64))
    assert result.width == 64
    server = server_factory(faults=FaultPlan(delivery_404=Fault(1.0)))
    async with AsyncFluxClient(None, server.url, retry=FAST) as client:
        with pytest.raises(DeliveryError, match="expired"):
            await client.generate(FluxRequest("always expired", seed=3, width=64, height=64))


async def test_a_polling_url_on_another_host_and_port_is_followed(server_factory: Any) -> None:
    submit_host = server_factory()
    with EmbeddedServer(app=submit_host.app) as poll_host:
        submit_host.app.state.public_url = poll_host.url.replace("127.0.0.1", "localhost")
        async with AsyncFluxClient(None, submit_host.url) as client:
            task = await client.submit(FluxRequest("elsewhere", seed=1, width=64, height=64))
            assert task.polling_url.startswith(f"http://localhost:{poll_host.port}/")
            result = await client.resume(task)
    assert result.width == 64


def test_task_failures_and_moderation_are_recorded_and_not_charged(server_factory: Any, history_dir: Path) -> None:
    plan = FaultPlan(task_error=Fault(on=frozenset({1})), content_moderated=Fault(on=frozenset({2})))
    server = server_factory(faults=plan)
    flux = Flux(endpoint=server.url, history_dir=history_dir, cache=False)
    try:
        results = [flux.run([flux.prepare("x", seed=i, width=64, height=64)])[0] for i in range(3)]
    finally:
        flux.close()
    assert [r.status for r in results] == ["failed", "moderated", "ready"]
    assert "injected task_error" in results[0].error_message and "not charged" in results[1].error_message
    assert server.stats()["charged"] == 1
    assert flux.cost()["credits"].sum() == pytest.approx(1.4)
