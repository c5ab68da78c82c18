"""Overload and a stuck device, over HTTP on real servers (tiny checkpoint, CPU): a full waiting queue
answers 503 with Retry-After at once (never a request that hangs), and a step made to hang on purpose
gives waiting clients a clear 503 within the watchdog limit, /health says unhealthy (and which step),
and every new request is refused at once."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from app import build_app
from engine.loader import LoadedModel
from engine.serving.async_engine import AsyncEngine
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from engine.serving.watchdog import Hang
from playground.server.access import Access, load_secret
from playground.settings import Settings
from playground.state import AppState
from playground.store import Store
from tests.api_helpers import assert_openai_error, speech
from tests.server import Server, free_port

LIMIT_S = 5.0  # generous: a first step on a busy 2-core machine can take over a second
LONG = {"model": "s2-pro", "input": "A long one.", "voice": "default", "response_format": "pcm",
        "stream_format": "audio", "max_frames": 32000, "seed": 1}  # far longer than the test


@pytest.fixture(scope="module")
def narrow(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One request decodes at a time and one more may wait."""
    server = Server(tiny_dir, tmp_path_factory.mktemp("narrow"), "--max-batch", "1", "--max-waiting", "1").start()
    yield server
    server.stop()


@pytest.mark.timeout(180)
def test_a_full_queue_answers_503_with_retry_after(narrow: Server) -> None:
    with httpx.Client(base_url=narrow.url, timeout=120) as c1, httpx.Client(base_url=narrow.url, timeout=120) as c2:
        with c1.stream("POST", "/v1/audio/speech", json=LONG) as running:
            chunks = running.iter_bytes()  # kept: a dropped iterator closes the connection
            assert running.status_code == 200 and next(chunks)
            queued = threading.Thread(target=lambda: c2.post("/v1/audio/speech", json={**LONG, "stream_format": None,
                                                                                          "max_frames": 4}))
            queued.start()
            deadline = time.monotonic() + 30
            while httpx.get(narrow.url + "/health", timeout=10).json()["waiting"] < 1:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.05)
            start = time.perf_counter()
            refused = speech(narrow, max_frames=4)
            assert time.perf_counter() - start < 5  # at once, not after the queue
            error = assert_openai_error(refused, 503, match="busy")
            assert error["code"] == "server_busy" and 1 <= int(refused.headers["retry-after"]) <= 60
        queued.join(60)  # the first stream closed: the queued one runs and finishes
    assert speech(narrow, max_frames=4).status_code == 200


@pytest.fixture
def hanging(tiny_model: LoadedModel, tmp_path: Path) -> Iterator[tuple[str, list[Hang], threading.Event]]:
    """The real app under uvicorn with an engine whose watchdog reports hangs to a list instead of
    ending the process; a step hook blocks every step once `hang` is set."""
    hang, release, hangs = threading.Event(), threading.Event(), []
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16, max_batch=2, step_timeout_s=LIMIT_S))

    def block_while_hung(_: Engine) -> None:
        if hang.is_set():
            release.wait(120)

    engine.step_hooks.append(block_while_hung)
    settings = Settings(model_path=str(tmp_path), device="cpu", data_dir=tmp_path)
    state = AppState(settings, tiny_model, AsyncEngine(engine, on_hang=hangs.append), Store(tmp_path),
                     Access(load_secret(tmp_path)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", hangs, hang
    finally:
        release.set()
        server.should_exit = True
        thread.join(20)
        state.engine.shutdown()


@pytest.mark.timeout(120)
def test_a_hung_step_gives_clients_a_clear_503(hanging: tuple[str, list[Hang], threading.Event]) -> None:
    url, hangs, hang = hanging
    assert httpx.post(url + "/v1/audio/speech", json={**LONG, "stream_format": None, "max_frames": 3},
                      timeout=60).status_code == 200
    hang.set()
    start = time.monotonic()
    stuck = httpx.post(url + "/v1/audio/speech", json={**LONG, "stream_format": None, "max_frames": 3}, timeout=60)
    waited = time.monotonic() - start
    error = assert_openai_error(stuck, 503, match="stopped serving")
    assert error["code"] == "engine_unhealthy" and waited < LIMIT_S + 3 and len(hangs) == 1
    health = httpx.get(url + "/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert health.json()["phase"] == "step hook" and "hung" in health.json()["reason"]
    start = time.monotonic()
    assert_openai_error(httpx.post(url + "/v1/audio/speech", json=LONG, timeout=60), 503, match="stopped serving")
    assert time.monotonic() - start < 2  # refused at once
