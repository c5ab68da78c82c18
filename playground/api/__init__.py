"""The OpenAI-compatible API on the playground's app: `install(app, state)` adds everything.

Routes: POST /v1/audio/speech (speech), /v1/voices... (voices), GET /v1/models here,
GET /health and GET /metrics (metrics). The gate (playground/server/gate.py) in front of every route does the
access rule and body limits; errors makes every error OpenAI-shaped. docs/API.md is the guide.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute

from playground.api import metrics, speech, voices
from playground.api.errors import APIError, brief, install_handlers
from playground.api.metrics import MODEL_ID, ApiCounters
from playground.state import AppState

MODEL_CREATED = 1767225600  # 2026-01-01: a fixed timestamp, as OpenAI's model objects carry one


def model_json() -> dict[str, Any]:
    return {"id": MODEL_ID, "object": "model", "created": MODEL_CREATED, "owned_by": "fishaudio"}


def models_router() -> APIRouter:
    r = APIRouter(prefix="/v1/models")

    @r.get("")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_json()]}

    @r.get("/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != MODEL_ID:
            raise APIError(404, f"The model {brief(model_id)} does not exist; this server serves {MODEL_ID!r}.",
                           param="model", code="model_not_found")
        return model_json()

    return r


def fallback_router(routers: list[APIRouter]) -> APIRouter:
    """Unknown /v1 paths and methods get OpenAI-shaped 404/405s here, before the playground mounted
    at / could answer them with its own pages. `routers` are the real ones, for the 405's Allow list."""
    routes = [route for router in routers for route in router.routes if isinstance(route, APIRoute)]
    r = APIRouter()

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

    @r.api_route("/v1", methods=methods, include_in_schema=False)
    @r.api_route("/v1/{rest:path}", methods=methods, include_in_schema=False)
    async def unknown_route(request: Request) -> None:
        path = request.scope["path"]
        allowed = sorted({m for route in routes if route.path_regex.fullmatch(path) for m in route.methods or ()})
        if allowed:
            raise APIError(405, f"Method {request.method} is not allowed on {brief(path)}; use {', '.join(allowed)}.",
                           code="method_not_allowed", headers={"Allow": ", ".join(allowed)})
        raise APIError(404, f"Unknown API route: {request.method} {brief(path)} (see docs/API.md).",
                       code="not_found")

    return r


def install(app: FastAPI, state: AppState, counters: ApiCounters) -> None:
    install_handlers(app)
    routers = [speech.router(state), voices.router(state, counters), models_router(),
               metrics.router(state, counters)]
    for router in routers:
        app.include_router(router)
    app.include_router(fallback_router(routers))  # last: after every real /v1 route
