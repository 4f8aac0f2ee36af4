"""The protocol as BFL speaks it: the local server answers like BFL, and the client sends what BFL documents.

Over real HTTP on 127.0.0.1: the local server, and a stand-in (``ScriptedApi``) for the headers only BFL sends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flux_nb.http.client import AsyncFluxClient
from flux_nb.protocol import FluxRequest
from flux_nb.server import EmbeddedServer
from tests.scripted import ScriptedApi, Step


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def ready(http: httpx.Client, url: str, task_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Poll the local server until the task is no longer pending."""
    for _ in range(1000):
        answer = http.get(f"{url}/v1/get_result", params={"id": task_id}, headers=headers).json()
        if answer["status"] != "Pending":
            return answer
        time.sleep(0.01)
    raise AssertionError(f"task {task_id} never finished")


def test_a_bad_key_gets_bfls_403_with_its_message_beside_it(server_factory: Any, http: httpx.Client) -> None:
    server = server_factory(api_keys=frozenset({"good-key"}))
    for headers in ({}, {"x-key": "bad-key"}):
        answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x"}, headers=headers)
        assert answer.status_code == 403
        body = answer.json()
        assert body["detail"] == body["message"] == "Not authenticated - Invalid Authentication"
        assert "bad-key" not in answer.text
    assert server.stats()["submits"] == 0


def test_unknown_fields_are_accepted_ignored_and_logged(
    server: EmbeddedServer, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"prompt": "x", "width": 64, "height": 64, "seed": 5, "raw": True, "input_image_5": "ignored"}
    with caplog.at_level(logging.INFO, logger="flux_nb.server"):
        answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json=body)
    assert answer.status_code == 200
    assert ready(http, server.url, answer.json()["id"])["status"] == "Ready"
    assert "ignored unknown field(s) of a flux-2-klein-4b submit: input_image_5, raw" in caplog.text


def test_flex_takes_input_image_blob_path(server: EmbeddedServer, http: httpx.Client) -> None:
    body = {"prompt": "x", "width": 64, "height": 64, "input_image_blob_path": "uploads/abc.png"}
    answer = http.post(f"{server.url}/v1/flux-2-flex", json=body)
    assert answer.status_code == 200
    schema = http.get(f"{server.url}/openapi.json").json()["components"]["schemas"]
    assert "input_image_blob_path" in schema["Flux2FlexRequest"]["properties"]
    assert "input_image_blob_path" not in schema["Flux2Klein4bRequest"]["properties"]


def test_an_unknown_task_is_answered_200_task_not_found(server: EmbeddedServer, http: httpx.Client) -> None:
    answer = http.get(f"{server.url}/v1/get_result", params={"id": "no-such-task"})
    assert (answer.status_code, answer.json()["status"]) == (200, "Task not found")


def test_the_server_renders_the_nearest_lower_sixteens_and_reports_them(
    server: EmbeddedServer, http: httpx.Client
) -> None:
    answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 1920, "height": 1080})
    assert answer.status_code == 200
    assert answer.json()["output_mp"] == round(1920 * 1072 / 2**20, 4)
    result = ready(http, server.url, answer.json()["id"])["result"]
    assert (result["width"], result["height"]) == (1920, 1072)
    assert http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 63}).status_code == 422


def test_the_server_takes_any_unsigned_64_bit_seed(server: EmbeddedServer, http: httpx.Client) -> None:
    top = 2**64 - 1
    answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 64, "height": 64, "seed": top})
    assert answer.status_code == 200
    assert ready(http, server.url, answer.json()["id"])["result"]["seed"] == top
    over = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "seed": 2**64})
    assert over.status_code == 422


def test_the_server_takes_a_prompt_longer_than_32000_characters(server: EmbeddedServer, http: httpx.Client) -> None:
    answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "a fox " * 6_000, "width": 64, "height": 64})
    assert answer.status_code == 200


def test_pro_takes_prompt_upsampling_sent_only_when_set(server: EmbeddedServer, http: httpx.Client) -> None:
    pro = FluxRequest("x", model="flux-2-pro", width=64, height=64)
    assert "prompt_upsampling" not in pro.validate().to_payload()
    payload = pro.with_(prompt_upsampling=False).validate().to_payload()
    assert payload["prompt_upsampling"] is False
    answer = http.post(f"{server.url}/v1/flux-2-pro", json=payload)
    assert answer.status_code == 200
    assert ready(http, server.url, answer.json()["id"])["details"]["settings"] == {"prompt_upsampling": False}


# -- X-RateLimit-* pace the submits --------------------------------------------------------------------


def test_rate_limit_headers_read_as_seconds_to_wait() -> None:
    from flux_nb.http.responses import rate_limit_wait

    now = 1_700_000_000.0
    assert rate_limit_wait(httpx.Headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(now + 3)}), now) == 3
    assert rate_limit_wait(httpx.Headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2"}), now) == 2
    assert rate_limit_wait(httpx.Headers({"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "2"}), now) is None
    assert rate_limit_wait(httpx.Headers({"X-RateLimit-Remaining": "0"}), now) is None
    assert rate_limit_wait(httpx.Headers({"X-RateLimit-Remaining": "none", "X-RateLimit-Reset": "2"}), now) is None


@pytest.fixture
def scripted() -> Iterator[ScriptedApi]:
    api = ScriptedApi().start()
    yield api
    api.stop()


async def test_no_submit_goes_out_before_the_reset_when_none_is_left(scripted: ScriptedApi) -> None:
    reset = time.time() + 0.8
    last = {"X-RateLimit-Limit": "24", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": f"{reset:.3f}"}
    scripted.submits.append(Step(body={"id": "t1", "polling_url": f"{scripted.url}/v1/get_result?id=t1"}, headers=last))
    async with AsyncFluxClient("k", scripted.url) as client:
        await client.submit(FluxRequest("x", seed=1))
        await asyncio.gather(client.submit(FluxRequest("x", seed=2)), client.submit(FluxRequest("x", seed=3)))
        done = time.time()  # the stand-in answers at once: only waiting for the reset takes time
    assert scripted.submit_count == 3
    assert done >= reset - 0.05
