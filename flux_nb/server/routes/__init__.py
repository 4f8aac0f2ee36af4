"""The local server's routes, thin over the task table: submits, results and deliveries, account and stats."""

from __future__ import annotations

from fastapi import FastAPI

from flux_nb.server.routes import delivery, meta, submit


def include_routes(app: FastAPI) -> None:
    """Add every route to ``app`` (its state holds the config and the task table)."""
    app.include_router(submit.router())
    app.include_router(delivery.router)
    app.include_router(meta.router)
