"""Under injected faults nothing paid for is lost, nothing is paid twice, every request ends on record."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flux_nb import Flux
from flux_nb.errors import AuthError, DeliveryError, FluxTimeout, UnknownOutcomeError
from flux_nb.http.client import AsyncFluxClient, RetryPolicy
from flux_nb.metadata import source_sha256
from flux_nb.notebook.hints import in_notebook_words
from flux_nb.protocol import FluxRequest
from flux_nb.server.fault_injection import Fault, FaultPlan
from tests.scripted import ScriptedApi, Step

FAST = RetryPolicy(attempts=8, rate_limit_attempts=80, base_delay=0.02, max_delay=0.2)

MIXED = FaultPlan(
    seed=7,
    submit_5xx=Fault(0.3),
    poll_5xx=Fault(0.3),
    drop_before=Fault(0.05),
    drop_after=Fault(0.05),
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


@pytest.mark.slow
def test_a_300_request_sweep_under_mixed_faults_loses_nothing(server_factory: Any, history_dir: Path) -> None:
    # The server would take 1000 at once: staying within 24 in flight is the client's own doing.
    server = server_factory(latency=0.05, max_active=1000, max_active_per_key=1000, faults=MIXED)
    flux = Flux(endpoint=server.url, history_dir=history_dir, cache=False)
    flux._ready_executor().client.retry = FAST
    try:
        sweep = flux.sweep("under fire", seed=list(range(300)), width=64, height=64)
        # A task whose every download came back damaged is kept as submitted; resume finishes it.
        left_open = {r.record_id for r in sweep if r.status == "submitted"}
        resumed = flux.resume()
        assert {r.record_id for r in resumed} == left_open
    finally:
        flux.close()
    stats = server.stats()
    frame = flux.history()
    assert len(sweep) == len(frame) == 300
    assert not (frame["status"] == "submitted").any()
    ready = frame[frame["status"] == "ready"]
    for path, digest in zip(ready["image_path"], ready["image_sha256"], strict=True):
        data = Path(path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        Image.open(path).load()
    ended = frame[frame["status"] != "ready"]
    assert set(ended["status"]) <= {"failed", "moderated", "unknown"}
    assert ended["error"].notna().all() and (ended["error"].str.len() > 0).all()
    # A paid task whose delivery kept failing stays resumable, and its result says why.
    for result in sweep:
        if result.status == "submitted":
            assert result.error is not None and "%flux resume" in in_notebook_words(result.error)

    # Nothing paid for is lost: every task the server finished and the client knows of is stored.
    tasks = server.app.state.table.tasks  # read past the injected faults
    for row in frame[frame["task_id"].notna()].itertuples():
        if tasks[row.task_id].status == "Ready":
            assert row.status == "ready", (row.record_id, row.status, row.error)
    # Nothing is paid twice, and the server never saw more than its limit.
    assert stats["most_tasks_for_one_request"] == 1
    assert stats["peak_active"] <= 24
    # Every stored image is the server's own bytes (with its provenance written in): a damaged download
    # never passes for a good one.
    for row in ready.itertuples():
        assert source_sha256(row.image_path) == hashlib.sha256(tasks[row.task_id].image).hexdigest()
    # Every task the server created is known to the client, or is one of its "unknown" records (a submit
    # whose answer was dropped: it may have been charged, and the user is told so instead of paying again).
    unknown = int((frame["status"] == "unknown").sum())
    fired = stats["faults_fired"]
    # A reset connection looks the same to the client whether the server got the request or not.
    assert unknown == fired.get("drop_before", 0) + fired.get("drop_after", 0)
    assert len(set(tasks) - set(frame["task_id"].dropna())) == fired.get("drop_after", 0)
    for kind in ("submit_5xx", "poll_5xx", "drop_before", "drop_after", "storm_429", "delivery_corrupt"):
        assert fired.get(kind, 0) > 0, fired
    # At least 20% 5xx and 5% dropped connections, counted over every submit and poll that reached the server.
    submits, polls = stats["requests_by_route"]["submit"], stats["requests_by_route"]["poll"]
    assert fired["submit_5xx"] / submits >= 0.2 and fired["poll_5xx"] / polls >= 0.2
    assert (fired["drop_before"] + fired["drop_after"]) / submits >= 0.05
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
    server = server_factory(poll_port=0)
    poll = httpx.URL(server.poll_url)
    assert poll.host == "localhost" and poll.port not in (None, server.port)  # host and port both differ
    async with AsyncFluxClient(None, server.url) as client:
        task = await client.submit(FluxRequest("elsewhere", seed=1, width=64, height=64))
        assert task.polling_url == f"{server.poll_url}/v1/get_result?id={task.id}"
        result = await client.resume(task)
        answer = await client.poll(task)
    assert result.width == 64
    assert answer["result"]["sample"].startswith(f"{server.url}/delivery/")  # delivery stays on the main address
    stats = server.stats()
    assert stats["poll_listener_requests"] == {"GET /v1/get_result": stats["polls"]}
    assert stats["submits"] == stats["downloads"] == 1


def test_polls_on_the_other_host_through_a_session_and_a_sweep(server_factory: Any, history_dir: Path) -> None:
    server = server_factory(poll_port=0, latency=0.05)
    flux = flux_for(server.url, history_dir, cache=False)
    try:
        single = flux.generate("one elsewhere", seed=1, width=64, height=64)
        sweep = flux.sweep("many elsewhere", seed=list(range(20)), width=64, height=64)
    finally:
        flux.close()
    assert single.status == "ready" and single.path is not None
    assert [r.status for r in sweep] == ["ready"] * 20
    stats = server.stats()
    assert stats["submits"] == stats["downloads"] == 21
    # Every poll went to the polling listener, and nothing else did.
    assert stats["polls"] >= 21
    assert stats["poll_listener_requests"] == {"GET /v1/get_result": stats["polls"]}


async def test_the_key_is_not_sent_to_a_polling_host_other_than_the_submit_host(server_factory: Any) -> None:
    server = server_factory(poll_port=0, api_keys=frozenset({"submit-host-key"}))
    async with AsyncFluxClient("submit-host-key", server.url, retry=FAST) as client:
        task = await client.submit(FluxRequest("keyed", seed=1, width=64, height=64))
        assert task.polling_url.startswith(f"{server.poll_url}/")
        with pytest.raises(AuthError, match=r"HTTP 403\): Not authenticated - Invalid Authentication"):
            await client.resume(task)
    # The listener itself takes the key: the 403 is the client withholding it from another host.
    assert httpx.get(task.polling_url, headers={"x-key": "submit-host-key"}).json()["status"] == "Ready"
    stats = server.stats()
    assert stats["submits"] == 1 and stats["poll_listener_requests"] == {"GET /v1/get_result": 2}


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


def flux_for(url: str, history_dir: Path, **options: Any) -> Flux:
    """A Flux session on ``url`` whose client retries quickly."""
    flux = Flux(endpoint=url, history_dir=history_dir, **options)
    flux._ready_executor().client.retry = FAST
    return flux


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
async def test_a_poll_429_storm_is_waited_out(server_factory: Any) -> None:
    # More 429s than FAST.attempts: a poll is a GET, so it is repeated until the task's deadline.
    server = server_factory(faults=FaultPlan(poll_429=Fault(on=frozenset(range(1, 15)))))
    async with AsyncFluxClient(None, server.url, retry=FAST) as client:
        result = await client.generate(FluxRequest("storm", seed=1, width=64, height=64))
    assert result.width == 64 and result.polls == 1
    stats = server.stats()
    assert stats["faults_fired"] == {"poll_429": 14}
    assert stats["submits"] == 1 and stats["requests_by_route"]["poll"] == 15


def test_rate_limited_polls_never_fail_a_paid_task(server_factory: Any, history_dir: Path) -> None:
    server = server_factory(faults=FaultPlan(poll_429=Fault(on=frozenset(range(1, 13)))))
    flux = flux_for(server.url, history_dir, cache=False)
    try:
        result = flux.run([flux.prepare("limited", seed=1, width=64, height=64)])[0]
    finally:
        flux.close()
    assert result.status == "ready", result.error_message
    assert list(flux.history()["status"]) == ["ready"]


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
def test_polls_rate_limited_past_the_deadline_stay_submitted_then_resume(
    server_factory: Any, history_dir: Path
) -> None:
    server = server_factory(faults=FaultPlan(poll_429=Fault(on=frozenset(range(1, 31)))))
    flux = flux_for(server.url, history_dir, cache=False, task_timeout=0.5)
    try:
        first = flux.run([flux.prepare("limited", seed=2, width=64, height=64)])[0]
        assert first.status == "submitted" and isinstance(first.error, FluxTimeout)
        assert "resume finishes it" in (first.error_message or "")  # neutral words in the history and scripts
        assert "%flux resume" in in_notebook_words(first.error)  # the notebook's own words
        assert list(flux.history()["status"]) == ["submitted"]
        flux.task_timeout = 30.0
        flux._ready_executor().client.retry = FAST
        resumed = flux.resume()
    finally:
        flux.close()
    assert [r.status for r in resumed] == ["ready"] and resumed[0].record_id == first.record_id
    assert list(flux.history()["status"]) == ["ready"]
    assert server.stats()["submits"] == 1


@pytest.fixture
def scripted() -> Iterator[ScriptedApi]:
    api = ScriptedApi().start()
    yield api
    api.stop()


def test_a_download_failing_after_ready_stays_submitted_then_resumes(scripted: ScriptedApi, history_dir: Path) -> None:
    scripted.downloads.extend([Step(503)] * FAST.attempts)
    flux = flux_for(scripted.url, history_dir, cache=False)
    try:
        first = flux.run([flux.prepare("paid", seed=3, width=64, height=64)])[0]
        assert first.status == "submitted" and isinstance(first.error, DeliveryError)
        assert "HTTP 503" in (first.error_message or "") and "resume finishes it" in (first.error_message or "")
        assert "%flux resume" in in_notebook_words(first.error)
        assert list(flux.history()["status"]) == ["submitted"]
        assert "HTTP 503" in flux.history()["error"].iloc[0]  # why it is still open, in the history too
        resumed = flux.resume()
        assert flux.history()["error"].isna().all()
    finally:
        flux.close()
    assert [r.status for r in resumed] == ["ready"] and resumed[0].record_id == first.record_id
    assert resumed[0].path is not None and source_sha256(resumed[0].path) == hashlib.sha256(scripted.image).hexdigest()
    assert scripted.submit_count == 1 and scripted.download_count == FAST.attempts + 1


def test_a_corrupt_download_is_never_stored_and_resume_finishes_it(server_factory: Any, history_dir: Path) -> None:
    # Every try the retry policy allows comes back damaged: one counter for every kind of download fault.
    tries = FAST.attempts
    server = server_factory(faults=FaultPlan(delivery_corrupt=Fault(on=frozenset(range(1, tries + 1)))))
    flux = flux_for(server.url, history_dir, cache=False)
    try:
        first = flux.run([flux.prepare("damaged", seed=4, width=128, height=128, output_format="png")])[0]
        assert first.status == "submitted" and first.path is None
        assert isinstance(first.error, DeliveryError) and "corrupt" in (first.error_message or "")
        resumed = flux.resume()
    finally:
        flux.close()
    assert [r.status for r in resumed] == ["ready"]
    row = flux.history().iloc[0]
    data = Path(row["image_path"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == row["image_sha256"]
    Image.open(io.BytesIO(data)).load()
    stats = server.stats()
    assert stats["submits"] == 1 and stats["charged"] == 1 and stats["downloads"] == tries + 1


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A plain HTTP server on 127.0.0.1 that keeps the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            received.append(json.loads(body or b"{}"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    httpd.shutdown()


def test_a_request_with_a_webhook_is_never_answered_from_the_cache(
    server_factory: Any, history_dir: Path, webhook_receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    hook, received = webhook_receiver
    server = server_factory()
    flux = flux_for(server.url, history_dir, cache=True)
    try:
        plain = flux.run([flux.prepare("hooked", seed=5, width=64, height=64)])[0]
        again = flux.run([flux.prepare("hooked", seed=5, width=64, height=64)])[0]
        hooked = flux.run([flux.prepare("hooked", seed=5, width=64, height=64, webhook_url=hook)])[0]
    finally:
        flux.close()
    assert plain.status == again.status == hooked.status == "ready"
    assert again.cached and not hooked.cached
    assert server.stats()["submits"] == 2
    deadline = time.monotonic() + 5.0
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [body.get("id") for body in received] == [hooked.task_id]
