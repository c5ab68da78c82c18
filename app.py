"""Server entry point: `python app.py` (what ./start.sh runs). Honours PORT and GRADIO_SERVER_NAME."""
from __future__ import annotations

import argparse
import os

import uvicorn
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse


def build_app() -> FastAPI:
    app = FastAPI(title="S2 Pro Playground")

    @app.get("/health")
    def health() -> JSONResponse:
        return JSONResponse({"status": "starting"})

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return "<!doctype html><title>S2 Pro Playground</title><h1>S2 Pro Playground</h1>" \
               "<p>The playground is being built; the engine CLI works: python -m engine synthesize.</p>"

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "7860")))
    args = parser.parse_args()
    uvicorn.run(build_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
