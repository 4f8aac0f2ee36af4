"""Which weights serve which route of the diffusers engine; routes without weights are refused.

``--model`` holds klein-4B's weights (the ``flux-2-klein-4b`` route); ``--model-for ROUTE=PATH``
(repeatable) or a JSON mapping file (``{"flux-2-klein-9b": "/models/klein-9b"}``) add more.
Torch-free, so the command line and the server can read a mapping without loading a model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from flux_nb import protocol
from flux_nb.errors import ValidationError

DEFAULT_ROUTE = "flux-2-klein-4b"
DEFAULT_WEIGHTS = "black-forest-labs/FLUX.2-klein-4B"


def route_weights(model: str, model_for: Mapping[str, str]) -> dict[str, str]:
    """Route -> weights: ``model`` on klein-4B's route, then ``model_for``; unknown routes are refused."""
    unknown = sorted(set(model_for) - set(protocol.MODELS))
    if unknown:
        raise ValidationError(f"no route called {', '.join(unknown)} (routes: {', '.join(protocol.MODELS)})")
    return {DEFAULT_ROUTE: model, **model_for}


def configured_routes(engine: str, options: Mapping[str, Any]) -> dict[str, str] | None:
    """The routes the engine ``engine`` built with ``options`` serves; None: every route (the preview)."""
    if engine != "diffusers":
        return None
    return route_weights(options.get("model") or DEFAULT_WEIGHTS, options.get("model_for") or {})


def parse_model_for(pairs: Iterable[str], mapping_file: str | None = None) -> dict[str, str]:
    """``--model-for ROUTE=PATH`` pairs over the routes of a JSON mapping file; a clear error for either malformed."""
    mapping: dict[str, str] = {}
    if mapping_file is not None:
        try:
            loaded = json.loads(Path(mapping_file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValidationError(f"could not read the model mapping {mapping_file}: {exc}") from None
        if not isinstance(loaded, dict) or not all(isinstance(v, str) and v for v in loaded.values()):
            raise ValidationError(f"{mapping_file} must be a JSON object of route -> weights (Hub id or folder)")
        mapping.update(loaded)
    for pair in pairs:
        route, _, weights = pair.partition("=")
        if not route.strip() or not weights.strip():
            raise ValidationError(f"--model-for takes ROUTE=PATH (e.g. flux-2-klein-9b=/models/klein-9b), not {pair!r}")
        mapping[route.strip()] = weights.strip()
    route_weights("", mapping)  # unknown routes are refused now, before anything loads
    return mapping


def held(routes: Mapping[str, str]) -> str:
    """What a server holds, for messages: ``flux-2-klein-4b (black-forest-labs/FLUX.2-klein-4B), ...``."""
    return ", ".join(f"{route} ({weights})" for route, weights in routes.items())


def unserved_message(route: str, engine: str, routes: Mapping[str, str]) -> str:
    """Why ``route`` is refused: no weights of that model here; names what the server holds and how to add it."""
    return (
        f"this server's {engine} engine holds no weights for {route}: it serves {held(routes)}. "
        f"Use one of those routes, or start the server with --model-for {route}=PATH"
    )
