"""Named ``{name=a|b}`` alternatives, and requests read from other tools' files (A1111, ComfyUI) saying
in one line what they left out. Requests go to a real local server on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from flux_nb import Flux
from flux_nb.core.templates import choices, fill
from flux_nb.errors import ValidationError
from flux_nb.metadata import parse_parameters, request_from_file


def test_an_alternatives_group_takes_the_name_before_the_equals_sign() -> None:
    template = fill("a fox at {light=golden hour|blue hour}, {red|grey} fur", {})
    assert [(a.name, a.values) for a in template.axes] == [
        ("light", ("golden hour", "blue hour")),
        ("alt2", ("red", "grey")),
    ]
    assert template.render({"light": "blue hour", "alt2": "red"}) == "a fox at blue hour, red fur"
    assert [a.name for a in choices("{light=dawn|dusk} and {a=b}").axes] == ["light"]
    assert choices("json {like: this|that}").axes[0].values == ("like: this", "that")


def test_a_group_name_that_clashes_is_refused() -> None:
    with pytest.raises(ValidationError, match="light"):
        fill("{light=a|b} {light=c|d}", {})
    with pytest.raises(ValidationError, match="light"):
        fill("{light} {light=c|d}", {"light": ["x", "y"]})
    with pytest.raises(ValidationError, match="kept for unnamed"):
        fill("{alt2=a|b}", {})
    with pytest.raises(ValidationError, match="two"):
        choices("{x=a|b} {x=c|d}")


def test_a_sweep_labels_and_grids_by_the_group_name(flux: Flux, server: Any) -> None:
    sweep = flux.sweep("a fox at {light=golden hour|blue hour}", seed=3, size=(64, 64))
    assert [r.labels["light"] for r in sweep] == ["golden hour", "blue hour"]
    assert [r.prompt for r in sweep] == ["a fox at golden hour", "a fox at blue hour"]
    assert sweep.grid().x == "light"
    assert server.stats()["submits"] == 2


A1111 = (
    "a castle, <lora:add_detail:0.5> on a hill\nNegative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x768, Model: sd_xl_base_1.0"
)


def _png(path: Path, **texts: str) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, text in texts.items():
        info.add_text(key, text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_an_a1111_import_takes_extra_networks_out_and_says_what_it_left_out(
    flux: Flux, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fields = parse_parameters(A1111)
    assert fields["prompt"] == "a castle, on a hill"
    assert (fields["extra_networks"], fields["negative_prompt"]) == (["<lora:add_detail:0.5>"], "blurry, lowres")
    request = flux.request_from(_png(tmp_path / "a1111.png", parameters=A1111)).request
    assert (request.prompt, request.seed, request.width, request.height) == ("a castle, on a hill", 1234, 512, 768)
    assert (request.model, request.steps, request.guidance) == (flux.model, None, None)
    assert capsys.readouterr().err == (
        f"flux_nb: a1111.png was made by another tool; left out: model sd_xl_base_1.0 (not a FLUX.2 model: "
        f"{flux.model} is used), steps 20, CFG scale 7, the negative prompt, <lora:add_detail:0.5> "
        "(taken out of the prompt)\n"
    )


def _comfy_graph(**changes: Any) -> dict[str, Any]:
    graph: dict[str, Any] = {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 77,
                "steps": 28,
                "cfg": 3.5,
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "model": ["4", 0],
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 768, "height": 512, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a heron in the reeds", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    }
    graph.update(changes)
    return graph


def test_a_comfyui_graph_gives_prompt_seed_and_size(
    flux: Flux, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _png(tmp_path / "comfy.png", prompt=json.dumps(_comfy_graph()), workflow="{}")
    fields = request_from_file(path)
    assert [fields[k] for k in ("prompt", "seed", "width", "height")] == ["a heron in the reeds", 77, 768, 512]
    request = flux.request_from(path).request
    assert (request.prompt, request.seed, request.width, request.height) == ("a heron in the reeds", 77, 768, 512)
    err = capsys.readouterr().err
    assert "model flux1-dev.safetensors (not a FLUX.2 model" in err and "the negative prompt" in err


def test_a_comfyui_guidance_node_between_sampler_and_text_is_followed(tmp_path: Path) -> None:
    graph = _comfy_graph(**{"8": {"class_type": "FluxGuidance", "inputs": {"guidance": 4.0, "conditioning": ["6", 0]}}})
    graph["3"]["inputs"]["positive"] = ["8", 0]
    fields = request_from_file(_png(tmp_path / "g.png", prompt=json.dumps(graph)))
    assert (fields["prompt"], fields["guidance"]) == ("a heron in the reeds", 4.0)


def test_a_comfyui_graph_that_does_not_name_them_is_refused_clearly(flux: Flux, tmp_path: Path, server: Any) -> None:
    wired = _comfy_graph()
    wired["5"]["inputs"]["width"] = ["9", 0]
    two_seeds = _comfy_graph(**{"9": {"class_type": "KSampler", "inputs": {"seed": 5, "positive": ["6", 0]}}})
    cases = {
        "wired.png": (dict(prompt=json.dumps(wired)), "does not name one image size"),
        "seeds.png": (dict(prompt=json.dumps(two_seeds)), "does not name one seed"),
        "broken.png": (dict(prompt="{not json"), "not valid JSON"),
        "ui.png": (dict(workflow=json.dumps({"nodes": []})), "carries a ComfyUI workflow but not its prompt graph"),
    }
    for name, (texts, message) in cases.items():
        with pytest.raises(ValidationError, match=message):
            flux.request_from(_png(tmp_path / name, **texts))
    assert server.stats()["submits"] == 0 and len(flux.history()) == 0


def test_a_comfyui_graph_is_read_field_by_field() -> None:
    from flux_nb.metadata.comfyui import GRAPH_MAX, parse_comfyui

    assert parse_comfyui(json.dumps(_comfy_graph()), "g.png") == {
        "prompt": "a heron in the reeds",
        "seed": 77,
        "width": 768,
        "height": 512,
        "steps": 28,
        "guidance": 3.5,
        "negative_prompt": "blurry",
        "model": "flux1-dev.safetensors",
    }
    flux = {  # Flux's own nodes: a UNET loader, a random-noise seed, a guider, an SDXL-style text_g encoder
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "flux2-dev.safetensors"}},
        "2": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "3": {"class_type": "CLIPTextEncodeSDXL", "inputs": {"text_g": "a quiet harbour", "clip": ["9", 0]}},
        "4": {"class_type": "BasicGuider", "inputs": {"conditioning": ["3", 0], "model": ["1", 0]}},
        "5": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1024, "height": 640}},
        "6": {"class_type": "SamplerCustomAdvanced", "inputs": {"guider": ["4", 0], "noise": ["2", 0]}},
        "7": "not a node",
    }
    assert parse_comfyui(json.dumps(flux), "f.png") == {
        "prompt": "a quiet harbour",
        "seed": 5,
        "width": 1024,
        "height": 640,
        "model": "flux2-dev.safetensors",
    }
    lone = {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lone tree"}}, **{k: flux[k] for k in "25"}}
    assert parse_comfyui(json.dumps(lone), "l.png")["prompt"] == "a lone tree"
    loop = {  # links that run in a circle end after a few hops, naming no prompt
        "1": {"class_type": "KSampler", "inputs": {"seed": 1, "positive": ["2", 0]}},
        "2": {"class_type": "Reroute", "inputs": {"x": ["3", 0]}},
        "3": {"class_type": "Reroute", "inputs": {"x": ["2", 0]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}},
    }
    with pytest.raises(ValidationError) as refused:
        parse_comfyui(json.dumps(loop), "loop.png")
    assert str(refused.value) == (
        "loop.png is a ComfyUI image whose graph does not name one prompt (several, or wired from other nodes); "
        "read its workflow in ComfyUI and give the request yourself"
    )
    with pytest.raises(ValidationError, match="does not name one prompt or one seed or one image size"):
        parse_comfyui("{}", "empty.png")
    with pytest.raises(ValidationError, match=r"^x.png's ComfyUI prompt chunk is not a graph of nodes$"):
        parse_comfyui("[1, 2]", "x.png")
    with pytest.raises(ValidationError, match=r"^x.png's ComfyUI prompt chunk is not valid JSON$"):
        parse_comfyui("[" * 100_000, "x.png")
    with pytest.raises(ValidationError, match=f"^big.png's ComfyUI graph is {GRAPH_MAX + 1:,} characters"):
        parse_comfyui(" " * (GRAPH_MAX + 1), "big.png")
    text = json.dumps(_comfy_graph())
    assert parse_comfyui(" " * (GRAPH_MAX - len(text)) + text, "edge.png")["seed"] == 77
