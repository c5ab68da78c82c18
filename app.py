"""Server entry point: `python app.py` (what ./start.sh runs); honours PORT and GRADIO_SERVER_NAME.

One FastAPI app: the OpenAI-compatible API under /v1 (plus /health, /metrics) and the Gradio
playground at /. Wiring only: the parts live in playground/ and engine/.
"""
from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI

from playground.settings import Settings, parse_settings
from playground.state import AppState, create_state


def build_app(state: AppState) -> FastAPI:
    from playground import api, ui
    app = FastAPI(title="S2 Pro Playground", version="1.0")
    app.state.s2 = state
    api.install(app, state)  # /v1/..., /health, /metrics
    return ui.install(app, state)  # the playground at / (and its own routes)


def main(settings: Settings | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings or parse_settings()
    state = create_state(settings)
    logging.getLogger("app").info("%s", state.describe())
    uvicorn.run(build_app(state), host=settings.host, port=settings.port, log_level="info")


if __name__ == "__main__":
    main()
