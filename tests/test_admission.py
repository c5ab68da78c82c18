"""Admission arithmetic (plain Python): the rate at which sequences leave the queue, the Retry-After of a
refused request, and the memory plan that sizes the KV pool."""
from __future__ import annotations

import pytest

from engine.serving.admission import EngineBusy, QueueRate, retry_after_s
from engine.serving.engine_config import EngineConfig
from engine.serving.memory_plan import GIB, MemoryPlan, available_bytes, kv_blocks_for, streams_held
from playground.settings import Settings, parse_settings


def test_queue_rate_follows_departures() -> None:
    rate = QueueRate(half_life_s=10.0, default_s=2.0)
    assert rate.seconds_for(3) == 6.0  # nothing seen yet: the default interval
    for i in range(20):
        rate.departed(2, at=100.0 + 0.5 * i)  # two every half second
    assert rate.seconds_for(4) == pytest.approx(1.0)
    rate.departed(0, at=200.0)  # a step that started nothing changes nothing
    assert rate.seconds_for(4) == pytest.approx(1.0)


def test_retry_after_is_the_time_until_the_queue_has_room() -> None:
    rate = QueueRate()
    for i in range(10):
        rate.departed(1, at=float(i))  # one a second
    assert retry_after_s(rate, waiting=70, limit=64) == pytest.approx(7.0)
    assert retry_after_s(rate, waiting=64, limit=64) == 1.0  # never less than a second
    assert retry_after_s(rate, waiting=500, limit=64) == 60.0  # nor more than a minute
    busy = EngineBusy(7.0, 71, 70, 64)
    assert "70 requests are already waiting (limit 64); retry in 7 s" in str(busy)


def test_waiting_limit_defaults_to_two_batches() -> None:
    assert EngineConfig(max_batch=32).waiting_limit == 64
    assert EngineConfig(max_batch=32, max_waiting=0).waiting_limit == 0
    assert EngineConfig().step_limit_s(cuda=True) == 30.0 and EngineConfig().step_limit_s(cuda=False) == 600.0
    assert EngineConfig(step_timeout_s=0).step_limit_s(cuda=True) == 0
    for bad in (lambda: EngineConfig(max_waiting=-1), lambda: EngineConfig(step_timeout_s=-1.0),
                lambda: EngineConfig(vocoder_push_rows=0)):
        with pytest.raises(ValueError):
            bad()


def test_memory_plan_counts_streams_and_names_the_batch_that_fits() -> None:
    one_block = 9_437_184  # S2 Pro: 36 layers x 2 x 64 tokens x 8 kv heads x 128 x bf16
    blocks = kv_blocks_for(60 * GIB, 0.8, one_block)
    assert blocks == (int(60 * GIB * 0.8) - GIB) // one_block == 5347
    assert streams_held(blocks, 64) == 5347 // 16 == 334  # 1,024 tokens = 16 blocks
    plan = MemoryPlan(10 * GIB, 3 * GIB, GIB // 4, blocks, one_block, 64, max_batch=256)
    assert plan.largest_batch == 334 and "334 streams of 1024 tokens" in plan.describe()
    assert "fits" not in plan.describe() and f"({blocks * 64} tokens)" in plan.describe()
    graphs = MemoryPlan(10 * GIB, 3 * GIB, GIB // 4, blocks, one_block, 64, 256, (1, 2, 4, 256))
    assert "frame graphs for batches 1,2,4,256" in graphs.describe()
    small = MemoryPlan(10 * GIB, 3 * GIB, GIB // 4, 800, one_block, 64, max_batch=256)
    assert small.largest_batch == 50 and "--max-batch 50 fits this card" in small.describe()


def test_a_gpu_memory_cap_sizes_the_pool_from_what_the_cap_leaves() -> None:
    """--gpu-memory: free memory is the cap less what is allocated (weights, vocoder), never more than
    the card has free; a 24 GiB cap with ~12 GiB allocated leaves ~12 GiB, of which the pool gets its
    share. Below 1 GiB the setting is refused (on the CPU the engine refuses it: test_engine_lifecycle.py)."""
    free, reserved, allocated = 60 * GIB, 13 * GIB, 12 * GIB
    assert available_bytes(free, reserved, allocated, None) == 61 * GIB
    assert available_bytes(free, reserved, allocated, 24 * GIB) == 12 * GIB
    assert available_bytes(2 * GIB, reserved, allocated, 24 * GIB) == 3 * GIB  # the card is the tighter bound
    assert available_bytes(free, reserved, allocated, 10 * GIB) == 0
    one_block = 9_437_184
    assert kv_blocks_for(available_bytes(free, reserved, allocated, 24 * GIB), 0.8, one_block) == 978
    with pytest.raises(ValueError, match="at least 1 GiB"):
        EngineConfig(gpu_memory_bytes=GIB // 2)
    assert parse_settings(["--gpu-memory", "24"]).gpu_memory_gb == 24.0
    assert parse_settings([]).gpu_memory_gb is None


def test_weights_come_from_the_flag_or_the_environment(monkeypatch) -> None:
    assert parse_settings([]).weights == "bf16"
    assert parse_settings(["--weights", "int8"]).weights == "int8"
    monkeypatch.setenv("S2PRO_WEIGHTS", "int8")
    assert parse_settings([]).weights == "int8"
    with pytest.raises(SystemExit):  # argparse names the choices
        parse_settings(["--weights", "int4"])
    with pytest.raises(ValueError, match="weights must be one of bf16, int8"):
        Settings(weights="fp8")

