"""Server entry point: `python app.py` (what ./start.sh runs); honours PORT and GRADIO_SERVER_NAME.

One FastAPI app: the OpenAI-compatible API under /v1 (plus /health, /metrics) and the Gradio
playground at /. Wiring only: the parts live in playground/ and engine/.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI

from playground.settings import Settings, parse_settings
from playground.state import AppState, create_state


def build_app(state: AppState) -> FastAPI:
    from playground import api, ui
    from playground.api.metrics import ApiCounters
    from playground.server.gate import BodyLimits, Gate
    app = FastAPI(title="S2 Pro Playground", version="1.0")
    app.state.s2 = state
    counters = ApiCounters()
    # In front of every route: the access rule, sessions, body limits and timeouts, the login page.
    app.add_middleware(Gate, access=state.access, limits=BodyLimits(upload_mb=state.settings.max_upload_mb),
                       counters=counters)
    api.install(app, state, counters)  # /v1/..., /health, /metrics
    return ui.install(app, state)  # the playground at / (and its own routes)


def main(settings: Settings | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings or parse_settings()
    state = create_state(settings)
    logging.getLogger("app").info("%s", state.describe())
    from playground.server.http import serve
    serve(build_app(state), settings.host, settings.port, settings.max_connections)


if __name__ == "__main__":
    main()
