"""``GET /v1/credits`` and ``GET /_flux/stats`` (counts for tests, benchmarks and operators; never prompts)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request

from flux_nb.server.engines import served_routes
from flux_nb.server.keys import Caller, caller
from flux_nb.server.schemas import error_responses

router = APIRouter()

# Per-request entries of the in-process statistics that name what was asked (prompts): never served.
PRIVATE = ("requests_seen",)
# Timings by task id: served without keys (one user) and to admin keys, not to one tenant about the others.
TASK_TIMINGS = ("submitted_times", "ready_times")


@router.get("/v1/credits", responses=error_responses(401))
async def credits(who: Annotated[Caller, Depends(caller)]) -> dict[str, float]:
    return {"credits": 1_000_000.0}


def public_stats(stats: dict[str, Any], who: Caller) -> dict[str, Any]:
    """The statistics as served over HTTP: counts; task timings only to those who may see every task."""
    hidden = PRIVATE + (TASK_TIMINGS if who.owner is not None and not who.admin else ())
    return {name: value for name, value in stats.items() if name not in hidden}


def server_stats(app: FastAPI) -> dict[str, Any]:
    """The server's counters: the task table's, the requests that arrived on the polling listener, and the
    routes served (route -> the weights that render it)."""
    table = app.state.table
    polls = dict(app.state.poll_listener_requests)
    return {**table.snapshot(), "poll_listener_requests": polls, "routes": served_routes(table.engine)}


@router.get("/_flux/stats", responses=error_responses(401))
async def stats(request: Request, who: Annotated[Caller, Depends(caller)]) -> dict[str, Any]:
    return public_stats(server_stats(request.app), who)
