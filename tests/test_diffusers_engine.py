"""The diffusers engine end to end, on a tiny randomly initialised FLUX.2 [klein] built offline.

Skipped, with the reason, when the [local] extra (torch, diffusers, transformers) is not installed.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from flux_nb.http.client import AsyncFluxClient
from flux_nb.images import prepare_image
from flux_nb.protocol import FluxRequest
from flux_nb.server import EmbeddedServer, ServerConfig


def test_the_base_install_never_imports_torch() -> None:
    code = (
        "import sys, flux_nb, flux_nb.notebook.magic, flux_nb.server.app\n"
        "flux_nb.server.app.create_app()\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


pytest.importorskip("torch", reason="the [local] extra is not installed (pip install 'flux-nb[local]')")
pytest.importorskip("diffusers", reason="the [local] extra is not installed (pip install 'flux-nb[local]')")

from flux_nb.server.engines.diffusers import DiffusersEngine, DiffusersOptions, EngineUnavailable  # noqa: E402

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> DiffusersEngine:
    # The pro and flex routes are served by the tiny weights too, so the tests below can reach them.
    routes = {"flux-2-pro": str(tiny_model), "flux-2-flex": str(tiny_model)}
    return DiffusersEngine(DiffusersOptions(model=str(tiny_model), model_for=routes, device="cpu"))


@pytest.fixture(scope="module")
def server(engine: DiffusersEngine) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(ServerConfig(engine="diffusers"), engine=engine) as running:
        yield running


def generate(server: EmbeddedServer, request: FluxRequest) -> Any:
    async def run() -> Any:
        async with AsyncFluxClient(None, server.url) as client:
            return await client.generate(request)

    return asyncio.run(run())


def count_image_tokens(engine: DiffusersEngine) -> list[int]:
    """What the transformer receives: the number of image tokens of each call."""
    seen: list[int] = []
    engine.pipeline.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[1]), with_kwargs=True
    )
    return seen


def test_text_to_image_through_the_server(server: EmbeddedServer) -> None:
    result = generate(server, FluxRequest("a red fox", seed=1, width=64, height=64, output_format="png"))
    assert (result.width, result.height) == (64, 64) and result.engine == "diffusers"
    assert Image.open(io.BytesIO(result.image)).format == "PNG"


def test_width_and_height_are_honoured(server: EmbeddedServer) -> None:
    result = generate(server, FluxRequest("a tall kite", seed=2, width=64, height=128))
    assert (result.width, result.height) == (64, 128)


def test_same_seed_same_image_other_seed_other_image(server: EmbeddedServer) -> None:
    def png(seed: int) -> bytes:
        return generate(server, FluxRequest("determinism", seed=seed, width=64, height=64, output_format="png")).image

    first, again, other = png(7), png(7), png(8)
    assert first == again and first != other


def test_editing_feeds_both_references_to_the_transformer(server: EmbeddedServer, engine: DiffusersEngine) -> None:
    tokens = count_image_tokens(engine)
    refs = [prepare_image(Image.new("RGB", (64, 64), c)).value for c in ("red", "blue")]
    generate(server, FluxRequest("plain", seed=3, width=64, height=64))
    plain = tokens[-1]
    result = generate(server, FluxRequest("an edit", seed=3, width=64, height=64, images=tuple(refs)))
    assert result.width == 64
    assert plain == 256 and tokens[-1] == 256 * 3  # the image's own tokens, then 256 per reference


def test_requests_run_one_at_a_time_in_arrival_order(
    server: EmbeddedServer, engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, most, order = 0, 0, []
    render = engine.render

    def watched(job: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        order.append(job.seed)
        try:
            return render(job)
        finally:
            running -= 1

    monkeypatch.setattr(engine, "render", watched)

    async def many() -> list[Any]:
        async with AsyncFluxClient(None, server.url) as client:
            # Each submit is answered before the next goes out: the arrival order is known, not timed.
            tasks = [await client.submit(FluxRequest("q", seed=seed, width=64, height=64)) for seed in range(5)]
            return await asyncio.gather(*(client.resume(task) for task in tasks))

    results = asyncio.run(many())
    assert len({r.task.id for r in results}) == 5
    assert most == 1 and order == [0, 1, 2, 3, 4]


def test_missing_weights_say_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="Download them first"):
        DiffusersEngine(DiffusersOptions(model=str(tmp_path / "no-weights-here"), device="cpu"))


def test_asking_for_a_missing_gpu_says_so() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(EngineUnavailable, match="no CUDA GPU"):
        DiffusersEngine(DiffusersOptions(device="cuda"))


def test_serve_command_loads_the_engine(tiny_model: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flux_nb",
            "serve",
            "--port",
            "0",
            "--engine",
            "diffusers",
            "--model",
            str(tiny_model),
            "--device",
            "cpu",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "engine diffusers" in line, line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert f"loading {tiny_model}" in err and "ready in" in err


def submit_and_wait(server: EmbeddedServer, model: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """POST ``body`` to ``model``'s route; the status, and the final get_result answer (or the error body)."""
    import time

    import httpx

    with httpx.Client(timeout=30) as http:
        answer = http.post(f"{server.url}/v1/{model}", json={"width": 64, "height": 64, "seed": 1, **body})
        if answer.status_code != 200:
            return answer.status_code, answer.json()
        deadline = time.monotonic() + 60
        while (result := http.get(answer.json()["polling_url"]).json())["status"] == "Pending":
            assert time.monotonic() < deadline, result
            time.sleep(0.02)
        return 200, result


class Recorder:
    """Stands in for the pipeline: records the arguments of each call, and passes everything through."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline, self.calls = pipeline, []

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append({k: v for k, v in kwargs.items() if k in ("num_inference_steps", "guidance_scale")})
        return self.pipeline(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


def test_klein_runs_its_fixed_steps_and_guidance_whatever_the_route(
    server: EmbeddedServer, engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(engine.pipeline)
    monkeypatch.setattr(engine, "pipeline", recorder)
    tokens = count_image_tokens(engine)
    status, flex = submit_and_wait(server, "flux-2-flex", {"prompt": "a fox", "steps": 20, "guidance": 3.5})
    assert status == 200 and flex["status"] == "Ready"
    assert recorder.calls == [{"num_inference_steps": 4, "guidance_scale": 1.0}]
    assert len(tokens) == 4  # four transformer passes: four steps, no guidance pass
    assert flex["details"]["warnings"] == [
        "klein runs 4 steps at guidance 1; the request's steps 20, guidance 3.5 not used"
    ]
    status, klein = submit_and_wait(server, "flux-2-klein-4b", {"prompt": "a fox"})
    assert status == 200 and "warnings" not in klein["details"]
    assert recorder.calls[-1] == {"num_inference_steps": 4, "guidance_scale": 1.0}


def test_more_than_four_references_are_refused_for_klein_weights(
    server: EmbeddedServer, engine: DiffusersEngine
) -> None:
    refs = {
        ("input_image" if i == 1 else f"input_image_{i}"): prepare_image(Image.new("RGB", (64, 64), "red")).value
        for i in range(1, 6)
    }
    submits_before = server.stats()["submits"]
    status, answer = submit_and_wait(server, "flux-2-pro", {"prompt": "five references", **refs})
    assert status == 422, answer
    detail = answer["detail"][0]
    assert detail["loc"] == ["body", "input_image_5"] and "at most 4" in detail["msg"], detail
    assert server.stats()["submits"] == submits_before  # refused before a task was made
    status, four = submit_and_wait(server, "flux-2-pro", {"prompt": "four references", **dict(list(refs.items())[:4])})
    assert status == 200 and four["status"] == "Ready"


def test_a_prompt_past_the_text_encoders_512_tokens_is_reported_truncated(
    server: EmbeddedServer, engine: DiffusersEngine
) -> None:
    long_prompt = "a lighthouse on a cliff " * 30  # 720 bytes: one token each for this tokenizer
    assert engine.prompt_tokens(long_prompt) > 512 >= engine.prompt_tokens("a lighthouse")
    status, long = submit_and_wait(server, "flux-2-klein-4b", {"prompt": long_prompt})
    assert status == 200 and long["status"] == "Ready"
    assert long["details"]["warnings"] == ["prompt truncated to 512 tokens"]
    status, short = submit_and_wait(server, "flux-2-klein-4b", {"prompt": "a lighthouse"})
    assert status == 200 and "warnings" not in short["details"]
