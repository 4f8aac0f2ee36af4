"""The diffusers engine's routes and setup: each route served by its own weights or refused, references
checked as the pipeline checks them, base vs distilled defaults, offload, compile and attention choices.

On the tiny FLUX.2 [klein] built offline; skipped, with the reason, without the [local] extra.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flux_nb.errors import ValidationError
from flux_nb.images import prepare_image
from flux_nb.server import EmbeddedServer, ServerConfig
from flux_nb.server.engines.checkpoints import parse_model_for

pytest.importorskip("torch", reason="the [local] extra is not installed (pip install 'flux-nb[local]')")
pytest.importorskip("diffusers", reason="the [local] extra is not installed (pip install 'flux-nb[local]')")

import torch

from flux_nb.server.engines.diffusers import DiffusersEngine, DiffusersOptions, EngineUnavailable
from flux_nb.server.engines.placement import place
from tests.test_diffusers_engine import count_image_tokens, submit_and_wait
from tests.tiny_klein import tiny_pipeline

pytestmark = pytest.mark.local


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny checkpoint (other random weights), standing in for klein-9B."""
    folder = tmp_path_factory.mktemp("tiny-klein-other")
    tiny_pipeline(seed=1).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def server(tiny_model: Path, other_model: Path) -> Iterator[EmbeddedServer]:
    options = DiffusersOptions(model=str(tiny_model), model_for={"flux-2-klein-9b": str(other_model)}, device="cpu")
    with EmbeddedServer(ServerConfig(engine="diffusers"), engine=DiffusersEngine(options)) as running:
        yield running


def png(server: EmbeddedServer, route: str, **body: Any) -> tuple[bytes, dict[str, Any]]:
    status, result = submit_and_wait(server, route, {"prompt": "a fox", "output_format": "png", **body})
    assert status == 200 and result["status"] == "Ready", result
    return httpx.get(result["result"]["sample"]).content, result["details"]


def test_a_route_without_weights_is_refused_naming_what_the_server_holds(
    server: EmbeddedServer, tiny_model: Path, other_model: Path
) -> None:
    submits = server.stats()["submits"]
    for route in ("flux-2-pro", "flux-2-max", "flux-2-flex", "flux-2-klein-9b-preview"):
        status, answer = submit_and_wait(server, route, {"prompt": "a fox"})
        assert status == 422, answer
        (detail,) = answer["detail"]
        assert detail["loc"] == ["path", "model"]
        assert f"holds no weights for {route}" in detail["msg"]
        assert (
            f"flux-2-klein-4b ({tiny_model})" in detail["msg"] and f"flux-2-klein-9b ({other_model})" in detail["msg"]
        )
    assert server.stats()["submits"] == submits  # refused before a task was made


def test_each_served_route_is_drawn_by_its_own_weights(
    server: EmbeddedServer, tiny_model: Path, other_model: Path
) -> None:
    four, four_details = png(server, "flux-2-klein-4b", seed=5)
    nine, nine_details = png(server, "flux-2-klein-9b", seed=5)
    assert four != nine  # same request, other weights: another image
    assert four_details["weights"] == str(tiny_model) and nine_details["weights"] == str(other_model)
    assert png(server, "flux-2-klein-4b", seed=5)[0] == four


def test_stats_list_the_routes_served(server: EmbeddedServer, tiny_model: Path, other_model: Path) -> None:
    served = httpx.get(f"{server.url}/_flux/stats").json()["routes"]
    assert served == {"flux-2-klein-4b": str(tiny_model), "flux-2-klein-9b": str(other_model)}
    with EmbeddedServer(ServerConfig(engine="preview")) as preview:
        routes = httpx.get(f"{preview.url}/_flux/stats").json()["routes"]
        assert set(routes) == {"flux-2-klein-4b", "flux-2-klein-9b", "flux-2-klein-9b-preview", "flux-2-pro",
                               "flux-2-pro-preview", "flux-2-max", "flux-2-flex"}  # fmt: skip
        assert all("stand-in images, not the model" in what for what in routes.values())
        status, result = submit_and_wait(preview, "flux-2-max", {"prompt": "still served"})
        assert status == 200 and result["details"]["engine"] == "preview"


def test_model_for_pairs_and_mapping_files_are_read_and_checked(tmp_path: Path) -> None:
    mapping = tmp_path / "models.json"
    mapping.write_text(json.dumps({"flux-2-klein-9b": "/models/nine", "flux-2-pro": "/models/other"}))
    assert parse_model_for(["flux-2-pro=/models/pro"], str(mapping)) == {
        "flux-2-klein-9b": "/models/nine",
        "flux-2-pro": "/models/pro",
    }
    with pytest.raises(ValidationError, match="ROUTE=PATH"):
        parse_model_for(["flux-2-klein-9b"])
    with pytest.raises(ValidationError, match="no route called flux-2-klein-99b"):
        parse_model_for(["flux-2-klein-99b=/models/x"])
    mapping.write_text('["not", "a", "mapping"]')
    with pytest.raises(ValidationError, match="JSON object"):
        parse_model_for([], str(mapping))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model-for", "flux-2-klein-99b=/models/x"], "no route called flux-2-klein-99b"),
        (["--model-for", "flux-2-klein-9b"], "--model-for takes ROUTE=PATH"),
        (["--prompt-cache", "-1"], "--prompt-cache must be 0 (no cache) or more"),
    ],
)
def test_serve_refuses_bad_engine_options_before_loading_anything(options: list[str], message: str) -> None:
    command = [sys.executable, "-m", "flux_nb", "serve", "--port", "0", "--engine", "diffusers", *options]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "loading" not in proc.stderr


def reference(width: int, height: int) -> str:
    return prepare_image(Image.new("RGB", (width, height), "red")).value


@pytest.mark.parametrize(
    ("images", "field", "message"),
    [
        ({"input_image": reference(63, 64)}, "input_image", "at least 64 px"),
        ({"input_image": reference(64, 64), "input_image_2": reference(576, 64)}, "input_image_2", "up to 8:1"),
        ({"input_image": reference(64, 600)}, "input_image", "up to 8:1"),
    ],
)
def test_references_the_pipeline_would_refuse_are_refused_at_submit(
    server: EmbeddedServer, images: dict[str, str], field: str, message: str
) -> None:
    submits = server.stats()["submits"]
    status, answer = submit_and_wait(server, "flux-2-klein-4b", {"prompt": "an edit", **images})
    assert status == 422, answer
    (detail,) = answer["detail"]
    assert detail["loc"] == ["body", field] and message in detail["msg"], detail
    assert server.stats()["submits"] == submits


def test_references_at_the_pipelines_limits_are_accepted(server: EmbeddedServer) -> None:
    status, result = submit_and_wait(
        server, "flux-2-klein-4b", {"prompt": "an edit", "input_image": reference(64, 512)}
    )  # 64 px and exactly 8:1 pass check_image_input
    assert status == 200 and result["status"] == "Ready", result


def test_base_weights_run_their_own_defaults_with_guidance_and_take_the_requests_settings() -> None:
    base = tiny_pipeline()
    base.register_to_config(is_distilled=False)
    engine = DiffusersEngine(
        DiffusersOptions(model="base", model_for={"flux-2-flex": "base"}, device="cpu"), pipeline=base
    )
    tokens = count_image_tokens(engine)
    with EmbeddedServer(ServerConfig(engine="diffusers"), engine=engine) as running:
        status, klein = submit_and_wait(running, "flux-2-klein-4b", {"prompt": "a fox"})
        assert status == 200 and klein["status"] == "Ready"
        assert len(tokens) == 2 * 50  # 50 steps, each with a guidance pass
        status, flex = submit_and_wait(running, "flux-2-flex", {"prompt": "a fox", "steps": 6, "guidance": 2.5})
        assert status == 200 and "warnings" not in flex["details"]
        assert len(tokens) == 100 + 2 * 6
    distilled = DiffusersEngine(DiffusersOptions(model="tiny", device="cpu"), pipeline=tiny_pipeline())
    assert distilled.defaults(distilled.pipeline) == (4, 1.0) and engine.defaults(engine.pipeline) == (50, 4.0)


def test_cpu_offload_goes_to_the_gpu_named_by_device() -> None:
    pipeline = place(tiny_pipeline(), "cuda:1", torch.float32, cpu_offload=True, compile=False)
    assert pipeline._offload_device == torch.device("cuda:1")  # not GPU 0
    assert all(p.device.type == "cpu" for p in pipeline.transformer.parameters())  # parked until used


def test_compile_uses_dynamic_shapes_and_warms_up_at_the_default_size(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[dict[str, Any]] = []
    real_compile = torch.compile

    def eager_compile(*args: Any, **kwargs: Any) -> Any:  # the real torch.compile, minus inductor's C++ build
        compiled.append(dict(kwargs))
        return real_compile(*args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    pipeline = tiny_pipeline()
    seen: list[int] = []
    pipeline.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["hidden_states"].shape[1]), with_kwargs=True
    )
    DiffusersEngine(DiffusersOptions(model="tiny", device="cpu", compile=True), pipeline=pipeline)
    assert compiled and all(kwargs == {"fullgraph": True, "dynamic": True} for kwargs in compiled)
    side = pipeline.default_sample_size * pipeline.vae_scale_factor  # 1024 for klein; 256 for the tiny one
    assert seen == [(side // (2 * pipeline.vae_scale_factor)) ** 2] * 4  # warmed up before the engine was ready


@pytest.fixture
def attention_registry() -> Iterator[None]:
    """set_attention_backend also sets diffusers' process-wide default: put it back."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    before = _AttentionBackendRegistry._active_backend
    yield
    _AttentionBackendRegistry._active_backend = before


def test_attention_picks_an_installed_backend_or_is_refused_clearly(attention_registry: None) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName

    engine = DiffusersEngine(
        DiffusersOptions(model="t", device="cpu", attention="_native_math"), pipeline=tiny_pipeline()
    )
    backends = {
        getattr(module.processor, "_attention_backend", None)
        for module in engine.pipeline.transformer.modules()
        if hasattr(module, "processor")
    }
    assert backends == {AttentionBackendName._NATIVE_MATH}
    with pytest.raises(EngineUnavailable, match=r"'nonsense' is not a backend .*flash"):
        DiffusersEngine(DiffusersOptions(model="t", device="cpu", attention="nonsense"), pipeline=tiny_pipeline())
    with pytest.raises(EngineUnavailable, match=r"flash cannot run here: .*flash-attn"):
        DiffusersEngine(DiffusersOptions(model="t", device="cpu", attention="flash"), pipeline=tiny_pipeline())


def test_gpu_bench_skips_with_the_reason_when_the_weights_cannot_be_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import gpu_engine

    monkeypatch.setattr(gpu_engine, "skip_reason", lambda: None)  # as on a GPU box with the packages
    assert gpu_engine.main(["--model", str(tmp_path / "no-weights-here"), "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bench.gpu_engine: skipping: could not load FLUX.2 klein weights from"), out
    assert "Download them first" in out and not (tmp_path / "out.json").exists()


def test_the_ray_front_refuses_routes_its_replicas_hold_no_weights_for() -> None:
    from flux_nb.server.engines import unserved
    from flux_nb.server.engines.checkpoints import configured_routes
    from flux_nb.server.ray_serve import RayEngine

    options = {"model": "/models/four", "model_for": {"flux-2-klein-9b": "/models/nine"}}
    routes = configured_routes("diffusers", options)
    assert routes == {"flux-2-klein-4b": "/models/four", "flux-2-klein-9b": "/models/nine"}
    assert configured_routes("diffusers", {}) == {"flux-2-klein-4b": "black-forest-labs/FLUX.2-klein-4B"}
    assert configured_routes("preview", options) is None  # the preview serves every route
    front = RayEngine(None, "diffusers", concurrency=1, routes=routes)
    try:
        assert unserved(front, "flux-2-klein-9b") is None
        assert "holds no weights for flux-2-pro: it serves flux-2-klein-4b (/models/four)" in (
            unserved(front, "flux-2-pro") or ""
        )
    finally:
        front.close()
