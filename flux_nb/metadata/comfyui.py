"""Request fields from ComfyUI's PNG ``prompt`` chunk (its API-format graph), where the graph names them.

The graph is data from another tool: it is parsed as JSON (size-capped), walked without running
anything, and only a prompt, seed, size, steps, CFG, model and negative prompt are read. A graph that
does not name one prompt, a seed and a size is refused with a ValidationError saying what is missing.
"""

from __future__ import annotations

import json
from typing import Any

from flux_nb.errors import ValidationError

GRAPH_MAX = 2_000_000  # characters of a ComfyUI graph read
_SAMPLER_SEEDS = ("seed", "noise_seed")
_HOPS = 8  # links followed from a sampler's conditioning back to the text


def _graph(text: str, name: str) -> dict[str, dict[str, Any]]:
    if len(text) > GRAPH_MAX:
        raise ValidationError(f"{name}'s ComfyUI graph is {len(text):,} characters; flux_nb reads {GRAPH_MAX:,}")
    try:
        graph = json.loads(text)
    except (ValueError, RecursionError):
        raise ValidationError(f"{name}'s ComfyUI prompt chunk is not valid JSON") from None
    if not isinstance(graph, dict):
        raise ValidationError(f"{name}'s ComfyUI prompt chunk is not a graph of nodes")
    return {str(k): v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(graph: dict[str, dict[str, Any]], link: Any, hops: int = _HOPS) -> str | None:
    """The text a conditioning link comes from, following links back through other nodes."""
    if not (isinstance(link, list) and link and str(link[0]) in graph) or hops == 0:
        return None
    inputs = graph[str(link[0])]["inputs"]
    for key in ("text", "text_g", "prompt"):
        if isinstance(inputs.get(key), str):
            return str(inputs[key])
    found = [_text(graph, value, hops - 1) for value in inputs.values() if isinstance(value, list)]
    texts = [t for t in found if t is not None]
    return texts[0] if len(set(texts)) == 1 else None


def _one(values: list[Any]) -> Any:
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    return distinct[0] if len(distinct) == 1 else None


def parse_comfyui(text: str, name: str) -> dict[str, Any]:
    """Request fields from a ComfyUI ``prompt`` chunk: prompt, seed, width, height, and (where named) steps,
    guidance, model, negative_prompt; ValidationError where the graph names no single prompt, seed or size."""
    graph = _graph(text, name)
    samplers = [n["inputs"] for n in graph.values() if "Sampler" in str(n.get("class_type", ""))]
    guiders = [n["inputs"] for n in graph.values() if "Guider" in str(n.get("class_type", ""))]
    conditioned = samplers + guiders
    prompt = _one([_text(graph, s.get("positive") or s.get("conditioning")) for s in conditioned])
    if prompt is None:
        encoders = [n["inputs"]["text"] for n in graph.values() if isinstance(n["inputs"].get("text"), str)]
        prompt = encoders[0] if len(encoders) == 1 else None
    seeds = [_int(n["inputs"].get(k)) for n in graph.values() for k in _SAMPLER_SEEDS]
    latents = [n["inputs"] for n in graph.values() if "Latent" in str(n.get("class_type", ""))]
    sizes = [(_int(i.get("width")), _int(i.get("height"))) for i in latents]
    size = _one([s for s in sizes if None not in s])
    fields: dict[str, Any] = {"prompt": prompt, "seed": _one(seeds), "width": size and size[0]}
    fields["height"] = size and size[1]
    missing = [k for k in ("prompt", "seed", "width") if fields[k] is None]
    if missing:
        said = {"prompt": "one prompt", "seed": "one seed", "width": "one image size"}
        raise ValidationError(
            f"{name} is a ComfyUI image whose graph does not name {' or '.join(said[k] for k in missing)} "
            "(several, or wired from other nodes); read its workflow in ComfyUI and give the request yourself"
        )
    fields["steps"] = _one([_int(s.get("steps")) for s in samplers])
    cfg = _one([s.get("cfg") for s in samplers if isinstance(s.get("cfg"), int | float)])
    guidance = _one([n["inputs"].get("guidance") for n in graph.values() if "Guidance" in str(n.get("class_type"))])
    fields["guidance"] = guidance if isinstance(guidance, int | float) else cfg
    negative = _one([_text(graph, s.get("negative")) for s in samplers])
    if negative:
        fields["negative_prompt"] = negative
    models = [n["inputs"].get(k) for n in graph.values() for k in ("ckpt_name", "unet_name")]
    fields["model"] = _one([m for m in models if isinstance(m, str)])
    return {k: v for k, v in fields.items() if v is not None}
