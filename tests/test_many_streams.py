"""Far more streaming requests than max_batch (tiny checkpoint, CPU): every request that is not aborted
finishes with all its frames, equal to the reference loop, and its streamed PCM equals the one-shot
decode of its codes; at the end every KV block, decode slot and vocoder row is back. Also: a request
rejected while its prompt is built keeps nothing, and the waiting queue is bounded (EngineBusy)."""
from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
import torch

from engine.loader import LoadedModel
from engine.params import SamplingParams
from engine.reference import generate
from engine.serving.admission import EngineBusy
from engine.serving.async_engine import AsyncEngine
from engine.serving.engine import Engine
from engine.serving.engine_config import EngineConfig
from engine.serving.request import SynthesisRequest
from tests.test_engine import random_prompt

MAX_BATCH = 4


def serve(engine: Engine, arrivals: list[tuple[int, torch.Tensor, SamplingParams, int]],
          aborts: dict[int, int]) -> tuple[dict[int, list], int, int]:
    """arrivals: (step, prompt, params, frames) of streaming requests; aborts: arrival index -> step at
    which it is aborted. Returns the events of each arrival, the most streams open and the most rows
    in use at once."""
    ids: dict[int, int] = {}
    events: dict[int, list] = {i: [] for i in range(len(arrivals))}
    most_open, most_rows, step = 0, 0, 0
    while len(ids) < len(arrivals) or engine.has_work():
        for i, (at, prompt, params, frames) in enumerate(arrivals):
            if at == step:
                ids[engine.add_prompt(prompt, params, frames, stream_pcm=True)] = i
        for i, at in aborts.items():
            if at == step and i in ids.values():
                engine.abort(next(rid for rid, j in ids.items() if j == i))
        for ev in engine.step():
            events[ids[ev.request_id]].append(ev)
        most_open = max(most_open, len(engine.streams.streams))
        most_rows = max(most_rows, engine.streams.max_rows - engine.streams.rows_free())
        step += 1
        assert step < 5_000, "the engine did not drain"
    return events, most_open, most_rows


def assert_everything_back(engine: Engine) -> None:
    assert not engine.jobs and not engine.scheduler.running and not engine.scheduler.waiting
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert all(b.ref_count == 0 for b in engine.blocks.blocks)
    assert sorted(engine.scheduler.free_slots) == list(range(MAX_BATCH))
    assert not engine.streams.streams and engine.streams.rows_free() == engine.streams.max_rows == MAX_BATCH


@pytest.mark.parametrize("factor,staggered,run_ahead", [(3, True, True), (10, False, False), (10, True, True)])
def test_many_more_streams_than_slots_all_finish_in_full(tiny_model: LoadedModel, factor: int, staggered: bool,
                                                         run_ahead: bool) -> None:
    rng = random.Random(factor * 2 + staggered)
    count = factor * MAX_BATCH
    arrivals = [(rng.randrange(0, count // 3) if staggered else 0,
                 random_prompt(tiny_model, 300 + i, rng.randrange(6, 12), rng.randrange(0, 8)),
                 SamplingParams(seed=i, top_k=rng.choice([5, 50])), rng.randrange(2, 6)) for i in range(count)]
    # aborted while waiting, at their first frame or midway
    aborts = {i: arrivals[i][0] + rng.randrange(0, 6) for i in rng.sample(range(count), count // 5)}
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16, max_batch=MAX_BATCH,
                                             prefill_budget=64, run_ahead=run_ahead, max_waiting=count))
    events, most_open, most_rows = serve(engine, arrivals, aborts)
    assert most_open > MAX_BATCH + 2 and most_rows == MAX_BATCH  # more streams open than rows: rows suffice
    for i, (_, prompt, params, frames) in enumerate(arrivals):
        end = events[i][-1]
        assert end.finished and end.reason in (("aborted", "length", "eos") if i in aborts else ("length", "eos"))
        codes = np.concatenate([e.codes for e in events[i] if e.codes is not None] or [np.zeros((10, 0), np.int64)],
                               axis=1)
        pcm = np.concatenate([e.pcm for e in events[i] if e.pcm is not None] or [np.zeros(0, np.float32)])
        if end.reason == "aborted":
            assert len(pcm) <= codes.shape[1] * 2048
            continue
        want = generate(tiny_model.model, prompt, params, frames).numpy()
        assert np.array_equal(codes, want), f"request {i} differs from the reference"
        whole = tiny_model.codec.decode(torch.from_numpy(codes)[None])[0, 0].numpy() if codes.shape[1] else pcm
        assert len(pcm) == codes.shape[1] * 2048
        np.testing.assert_allclose(pcm, whole, atol=1e-5, rtol=0)
    assert_everything_back(engine)


def test_a_prompt_rejected_while_built_keeps_nothing(tiny_model: LoadedModel) -> None:
    engine = Engine(tiny_model, EngineConfig(num_blocks=4, block_size=16, max_batch=2))
    with pytest.raises(ValueError, match="KV cache"):  # 30 + 100 tokens: more than the 64 of the pool
        engine.add_prompt(random_prompt(tiny_model, 1, 20, 7), SamplingParams(), 100, stream_pcm=True)
    with pytest.raises(ValueError, match="KV cache"):
        engine.add_request(SynthesisRequest("Hello there.", max_frames=500, stream_pcm=True))
    assert not engine.jobs and not engine.streams.streams and not engine.has_work()
    assert engine.streams.rows_free() == 2


def test_a_request_beyond_the_models_context_is_refused_at_once(tiny_model: LoadedModel) -> None:
    engine = Engine(tiny_model, EngineConfig(num_blocks=2304, block_size=16, max_batch=2))
    with pytest.raises(ValueError, match="the model's context holds 32768"):
        engine.add_request(SynthesisRequest("Hello there.", max_frames=32_768))
    assert not engine.jobs and not engine.has_work()


def test_the_waiting_queue_is_bounded(tiny_model: LoadedModel) -> None:
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16, max_batch=2, max_waiting=3))
    prompt = random_prompt(tiny_model, 5, 8, 4)
    ids = [engine.add_prompt(prompt, SamplingParams(seed=i), 20) for i in range(5)]  # 2 start, 3 wait
    with pytest.raises(EngineBusy) as busy:
        engine.add_prompt(prompt, SamplingParams(), 20)
    assert (busy.value.position, busy.value.waiting, busy.value.limit) == (4, 3, 3)
    assert 1 <= busy.value.retry_after_s <= 60 and "retry in" in str(busy.value)
    engine.step()
    assert [engine.queue_position(rid) for rid in ids] == [0, 0, 1, 2, 3]
    with pytest.raises(EngineBusy):  # the two that started freed no room in the queue
        engine.add_request(SynthesisRequest("Hello there."))
    engine.abort(ids[-1])
    assert engine.queue_position(engine.add_prompt(prompt, SamplingParams(), 20)) == 3
    while engine.has_work():
        engine.step()
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_async_streams_report_their_queue_place_and_refuse_beyond_it(tiny_model: LoadedModel) -> None:
    engine = Engine(tiny_model, EngineConfig(num_blocks=64, block_size=16, max_batch=1, max_waiting=1))
    aengine = AsyncEngine(engine)

    async def main() -> tuple[list[int], int, EngineBusy, int]:
        ids: list[int] = []
        first = aengine.stream(SynthesisRequest("The first one speaks.", max_frames=500), on_added=ids.append)
        announced = await first.__anext__()  # its id and text chunks, before any audio
        assert announced.text_chunks == ("The first one speaks.",) and not len(announced.pcm)
        await first.__anext__()  # its first audio: running, it holds the only slot
        second = asyncio.ensure_future(_drain(aengine.stream(SynthesisRequest("Second.", max_frames=3),
                                                             on_added=ids.append)))
        while len(ids) < 2:
            await asyncio.sleep(0.01)
        position = await aengine.queue_position(ids[1])
        with pytest.raises(EngineBusy) as busy:
            await _drain(aengine.stream(SynthesisRequest("Third.", max_frames=3)))
        await first.aclose()  # the first client leaves: the second runs
        return ids, position, busy.value, await second

    try:
        ids, position, busy, samples = asyncio.run(main())
    finally:
        aengine.shutdown()
    assert len(set(ids)) == 2 and position == 1
    assert (busy.position, busy.waiting, busy.limit) == (2, 1, 1) and busy.retry_after_s >= 1
    assert samples == 3 * 2048


async def _drain(stream) -> int:
    return sum([len(chunk.pcm) async for chunk in stream])
