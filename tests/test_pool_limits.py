"""A request the KV pool can never hold is refused at once with a 400 that says why, and leaves nothing
behind; requests that fit are served as before (a real server with a pool of 4 blocks of 64 tokens)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api_helpers import pcm_samples, speech
from tests.server import Server


@pytest.fixture(scope="module")
def small_pool(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tiny_dir, tmp_path_factory.mktemp("pool-data"), "--num-blocks", "4").start()
    yield server
    server.stop()


def test_a_request_the_pool_can_never_hold_is_refused_at_once(small_pool: Server) -> None:
    health = httpx.get(small_pool.url + "/health", timeout=10).json()
    assert health["kv_blocks_total"] == 4
    too_big = speech(small_pool, max_frames=400)  # ~430 tokens against a pool of 256
    assert too_big.status_code == 400, too_big.text
    message = too_big.json()["error"]["message"]
    assert "KV cache" in message and "256" in message
    ok = speech(small_pool, max_frames=8)
    assert ok.status_code == 200 and len(pcm_samples(ok.content)) == 8 * 2048
    after = httpx.get(small_pool.url + "/health", timeout=10).json()
    assert after["running"] == 0 and after["kv_blocks_used"] == 0
