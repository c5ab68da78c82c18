"""The step watchdog on the tiny checkpoint (CPU): a step made to hang on purpose (a blocking call in
Engine.step_hooks) fails the waiting clients with EngineUnhealthy within the limit, the engine reports
itself unhealthy with the step that hung and refuses new work, and by default the process exits with
EXIT_HUNG so a supervisor restarts it."""
from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from engine.loader import LoadedModel
from engine.serving.admission import EngineUnhealthy
from engine.serving.async_engine import AsyncEngine
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from engine.serving.request import SynthesisRequest
from engine.serving.watchdog import EXIT_HUNG, Hang

ROOT = Path(__file__).resolve().parent.parent
LIMIT_S = 0.5


async def listen(aengine: AsyncEngine, text: str, frames: int) -> int:
    samples = 0
    async for chunk in aengine.stream(SynthesisRequest(text, max_frames=frames)):
        samples += len(chunk.pcm)
    return samples


def test_a_hung_step_fails_waiting_clients_within_the_limit(tiny_model: LoadedModel) -> None:
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16, max_batch=2, step_timeout_s=LIMIT_S))
    release = threading.Event()
    hangs: list[Hang] = []
    aengine = AsyncEngine(engine, on_hang=hangs.append)

    async def main() -> tuple[int, float, list]:
        served = await listen(aengine, "Hello there.", 4)  # healthy: served in full
        clients = [asyncio.ensure_future(listen(aengine, f"Client {i} speaks.", 500)) for i in range(3)]
        await asyncio.sleep(0.2)  # they are running or queued now
        def hang(_: Engine) -> None:  # a real blocking call inside the step
            release.wait(60)

        await aengine.run(lambda e: e.step_hooks.append(hang))
        start = time.monotonic()
        results = await asyncio.gather(*clients, return_exceptions=True)
        return served, time.monotonic() - start, results

    try:
        served, waited, results = asyncio.run(main())
        health = aengine.health()
        with pytest.raises(EngineUnhealthy):
            asyncio.run(aengine.status())
        with pytest.raises(EngineUnhealthy):
            asyncio.run(listen(aengine, "Anyone there?", 4))
    finally:
        release.set()
        aengine.shutdown()
    assert served == 4 * 2048
    assert all(isinstance(r, EngineUnhealthy) and "hung in 'step hook'" in str(r) for r in results), results
    assert waited < LIMIT_S + 1.0  # the limit, one poll of the watchdog and some slack
    assert len(hangs) == 1 and hangs[0].phase == "step hook" and hangs[0].seconds > LIMIT_S
    assert health["healthy"] is False and health["phase"] == "step hook" and health["step"] == hangs[0].step
    assert f"step {hangs[0].step} hung" in health["reason"] and health["limit_s"] == LIMIT_S
    assert not aengine.healthy


def test_without_a_hang_the_engine_stays_healthy(tiny_model: LoadedModel) -> None:
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16, max_batch=2, step_timeout_s=LIMIT_S))
    aengine = AsyncEngine(engine, on_hang=lambda hang: pytest.fail(hang.message))
    try:
        samples = asyncio.run(listen(aengine, "Hello there.", 6))
        time.sleep(2 * LIMIT_S)  # idle time is no hang
        health = aengine.health()
    finally:
        aengine.shutdown()
    assert samples == 6 * 2048
    assert health["healthy"] is True and health["reason"] is None and health["step"] >= 6


def test_by_default_a_hang_ends_the_process_for_a_restart(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, threading, torch
        from engine.serving.async_engine import AsyncEngine
        from engine.serving.engine import Engine
        from engine.serving.engine_config import EngineConfig
        from engine.loader import load_model_dir
        from engine.serving.request import SynthesisRequest
        from engine.tools.tiny_checkpoint import write_tiny_checkpoint
        loaded = load_model_dir(write_tiny_checkpoint({str(tmp_path)!r}, seed=0), torch.device("cpu"), torch.float32)
        engine = Engine(loaded, EngineConfig(num_blocks=64, block_size=16, max_batch=2, step_timeout_s=0.3))
        engine.step_hooks.append(lambda _: threading.Event().wait())
        aengine = AsyncEngine(engine)
        async def main():
            try:
                async for _ in aengine.stream(SynthesisRequest("Hello.", max_frames=4)):
                    pass
            except Exception as exc:
                print("client got", type(exc).__name__, flush=True)
            await asyncio.sleep(30)
        asyncio.run(main())
        print("still alive", flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == EXIT_HUNG, res.stderr[-2000:]
    assert "client got EngineUnhealthy" in res.stdout and "still alive" not in res.stdout
    assert "hung in 'step hook'" in res.stderr
