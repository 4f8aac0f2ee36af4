"""The local server's errors in BFL's documented shape, as three kinds of client read them, and flex's fields."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from flux_nb.errors import AuthError, CreditsError, RateLimitError, ValidationError
from flux_nb.http.client import AsyncFluxClient, RetryPolicy
from flux_nb.protocol import MODELS, FluxRequest
from flux_nb.server import ServerConfig, create_app
from flux_nb.server.fault_injection import FaultPlan
from tests import official_client

ONCE = RetryPolicy(attempts=1, rate_limit_attempts=1, base_delay=0.0, max_delay=0.0)
BODY = {"prompt": "x", "width": 64, "height": 64}


class AuthenticationError(Exception): ...


class InsufficientCreditsError(Exception): ...


class RateLimited(Exception): ...


def classify_like_bfls_example_client(response: httpx.Response) -> Exception | None:
    """How BFL's example client (skills/bfl-api python-client.py) reads an answer: status, then error/message."""
    if response.status_code == 200:
        return None
    try:
        data = response.json()
    except ValueError:
        data = {"message": response.text}
    code, message = data.get("error", "unknown"), data.get("message", "Unknown error")
    kinds = {401: AuthenticationError, 402: InsufficientCreditsError, 429: RateLimited}
    return kinds.get(response.status_code, Exception)(f"{code}: {message}")


def app_client(**options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(create_app(ServerConfig(**options))), base_url="http://l")


@pytest.mark.parametrize(
    ("options", "headers", "status", "code", "kind"),
    [
        ({"api_keys": frozenset({"good-key"})}, {}, 403, "invalid_api_key", Exception),  # BFL's 403 for a bad key
        ({"api_keys": frozenset({"good-key"})}, {"x-key": "bad-key"}, 403, "invalid_api_key", Exception),
        ({"faults": FaultPlan.parse("credits_402=#1")}, {}, 402, "insufficient_credits", InsufficientCreditsError),
        ({"faults": FaultPlan.parse("storm_429=#1")}, {}, 429, "rate_limit_exceeded", RateLimited),
        ({"max_active": 0}, {}, 429, "rate_limit_exceeded", RateLimited),
    ],
)
async def test_errors_have_bfls_shape_and_bfls_client_reads_them(
    options: dict[str, Any], headers: dict[str, str], status: int, code: str, kind: type[Exception]
) -> None:
    async with app_client(**options) as http:
        answer = await http.post("/v1/flux-2-klein-4b", json=BODY, headers=headers)
    body = answer.json()
    assert answer.status_code == status and body["error"] == code
    assert body["message"] and body["detail"] == body["message"]  # detail beside it, for FastAPI-style clients
    error = classify_like_bfls_example_client(answer)
    assert isinstance(error, kind) and str(error) == f"{code}: {body['message']}"
    assert "bad-key" not in answer.text


@pytest.mark.parametrize(
    ("options", "key", "error", "words"),
    [
        ({"api_keys": frozenset({"good-key"})}, None, AuthError, "HTTP 403): Not authenticated - Invalid Auth"),
        ({"api_keys": frozenset({"good-key"})}, "bad-key", AuthError, "HTTP 403): Not authenticated - Invalid Auth"),
        ({"faults": FaultPlan.parse("credits_402=#1")}, None, CreditsError, "insufficient credits"),
        ({"max_active": 0}, None, RateLimitError, "more than 0 active tasks"),
    ],
)
async def test_flux_nbs_client_reports_the_right_error(
    options: dict[str, Any], key: str | None, error: type[Exception], words: str
) -> None:
    transport = httpx.ASGITransport(create_app(ServerConfig(**options)))
    async with AsyncFluxClient(key, "http://127.0.0.1", transport=transport, retry=ONCE) as client:
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")) as raised:
            await client.submit(FluxRequest("x", seed=1, width=64, height=64))
    assert "bad-key" not in str(raised.value)


def test_flex_takes_prompt_upsampling_sent_only_when_set() -> None:
    flex = FluxRequest("x", model="flux-2-flex")
    assert "prompt_upsampling" not in flex.validate().to_payload()
    assert flex.with_(prompt_upsampling=False).validate().to_payload()["prompt_upsampling"] is False
    assert flex.with_(prompt_upsampling=True).prompt_upsampling is True
    with pytest.raises(ValidationError, match="prompt_upsampling is not a setting of flux-2-max"):
        FluxRequest("x", model="flux-2-max", prompt_upsampling=True).validate()
    with pytest.raises(ValidationError, match="must be True or False, got 'yes'"):
        flex.with_(prompt_upsampling="yes").validate()
    guidance = {f.name: f.default for f in MODELS["flux-2-flex"].extra_fields}["guidance"]
    assert guidance == 5.0  # the OpenAPI schema's default


def test_the_preview_endpoints_are_registered_like_their_siblings() -> None:
    for preview, sibling in (("flux-2-pro-preview", "flux-2-pro"), ("flux-2-klein-9b-preview", "flux-2-klein-9b")):
        a, b = MODELS[preview], MODELS[sibling]
        assert a.path == f"/v1/{preview}"
        assert (a.max_images, a.first_mp_credits, a.extra_mp_credits, a.extra_fields) == (
            b.max_images,
            b.first_mp_credits,
            b.extra_mp_credits,
            b.extra_fields,
        )


async def test_the_server_takes_records_and_checks_prompt_upsampling() -> None:
    async with app_client() as http:
        accepted = await http.post("/v1/flux-2-flex", json={**BODY, "prompt_upsampling": False})
        assert accepted.status_code == 200
        for _ in range(500):
            result = (await http.get("/v1/get_result", params={"id": accepted.json()["id"]})).json()
            if result["status"] != "Pending":
                break
            await asyncio.sleep(0.01)
        refused = [
            await http.post("/v1/flux-2-flex", json={**BODY, "prompt_upsampling": value})
            for value in ("yes", 1, "true")
        ]
        elsewhere = await http.post("/v1/flux-2-max", json={**BODY, "prompt_upsampling": True})
    assert result["status"] == "Ready" and result["details"]["settings"] == {"prompt_upsampling": False}
    assert [r.status_code for r in refused] == [422] * 3
    assert all(r.json()["detail"][0]["loc"] == ["body", "prompt_upsampling"] for r in refused)
    assert elsewhere.status_code == 200  # max does not take it: an unknown field, ignored as BFL does


@pytest.mark.slow
def test_the_official_client_generates_and_reads_an_invalid_key_the_way_bfl_documents_it(
    server_factory: Any,
) -> None:
    """BFL's own ``blackforest`` package, a second independent client: it works with a good key, and reports
    the ``message`` of a 403 (it reads ``message`` from the body; a body without one left it a bare HTTPError)."""
    server = server_factory(api_keys=frozenset({"good-key"}))
    code, last = official_client.generate(server.url, "good-key")
    assert code == 0, last
    seed, size = last.split()
    assert seed == "3" and int(size) > 1000
    code, last = official_client.generate(server.url, "bad-key")
    assert code == 1 and last == "BFLError API request failed: Not authenticated - Invalid Authentication", last
    assert server.stats()["submits"] == 1
