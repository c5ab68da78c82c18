"""Shared pieces of the API tests: clients, requests, clips, error and metrics checks."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai

from tests.server import Server
from tests.tools import tool

FRAME = 2048  # samples per frame
CLONE_TEXT = "The quick brown fox jumps over the lazy dog near the river bank."


def client_for(server: Server, api_key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=120)


def speech(server: Server, **body: Any) -> httpx.Response:
    """POST /v1/audio/speech with a small default body; `body` overrides or adds fields."""
    payload = {"model": "s2-pro", "input": "Hello there, how are you?", "voice": "default",
               "response_format": "pcm", "max_frames": 8, "seed": 1, **body}
    return httpx.post(server.url + "/v1/audio/speech", json={k: v for k, v in payload.items() if v is not None},
                      timeout=120)


def pcm_samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2")


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None,
                        match: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and match.lower() in body["error"]["message"].lower(), body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def espeak_clip(path: Path, text: str = CLONE_TEXT) -> bytes:
    subprocess.run([tool("espeak-ng"), "-w", str(path), text], check=True, capture_output=True)
    return path.read_bytes()


def health(server: Server) -> dict[str, Any]:
    return httpx.get(server.url + "/health", timeout=30).json()


def metric(server: Server, line_prefix: str) -> float:
    """The value of the first /metrics sample line that starts with `line_prefix` (0 when absent)."""
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_idle(server: Server, kv_before: int, timeout: float = 5.0) -> dict[str, Any]:
    """Poll /health until nothing runs or waits and the KV blocks in use are back to `kv_before`."""
    deadline = time.monotonic() + timeout
    while True:
        state = health(server)
        if (state["running"], state["waiting"], state["kv_blocks_used"]) == (0, 0, kv_before):
            return state
        assert time.monotonic() < deadline, f"request still holds the engine: {state}"
        time.sleep(0.1)
