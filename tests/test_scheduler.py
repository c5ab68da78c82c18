"""The scheduler's step plans over a real block pool: chunked prefill and when decoding starts."""
from __future__ import annotations

from engine.kv_cache import BlockManager
from engine.request import Sequence
from engine.scheduler import Scheduler


def prompt(n: int, voice: int) -> list[tuple[int, ...]]:
    return [(voice, i) + (0,) * 9 for i in range(n)]


def run_plan(scheduler: Scheduler) -> tuple[list[tuple[int, int, int]], list[int]]:
    """One step as the engine takes it: plan, then the planned prompt tokens are computed."""
    plan = scheduler.schedule()
    for seq, start, n in plan.prefill:
        seq.num_computed = start + n
    return [(s.request_id, start, n) for s, start, n in plan.prefill], [s.request_id for s in plan.decode]


def test_burst_starts_decoding_together_when_the_rest_fits_in_one_step() -> None:
    """Four 300-token prompts with a 700-token budget: the first two finish in step 1, but the other
    two fit in step 2, so all four start decoding together in step 2 (no prefill meets a stream
    right after its first frame); a sequence already decoding is never held."""
    scheduler = Scheduler(BlockManager(128, 16), max_batch=8, prefill_budget=700)
    for i in range(4):
        scheduler.add(Sequence(i, prompt(300, i), 20, 0))
    prefill, decode = run_plan(scheduler)
    assert prefill == [(0, 0, 300), (1, 0, 300), (2, 0, 100)] and decode == []
    prefill, decode = run_plan(scheduler)
    assert prefill == [(2, 100, 200), (3, 0, 300)] and decode == [0, 1, 2, 3]
    scheduler.add(Sequence(4, prompt(300, 4), 20, 0))
    prefill, decode = run_plan(scheduler)
    assert prefill == [(4, 0, 300)] and decode == [0, 1, 2, 3, 4]  # nothing else left to prefill


def test_long_backlog_does_not_hold_the_first_to_finish() -> None:
    """When the rest of the burst needs more than one more step, whoever finishes starts at once
    (holding would delay its first audio by several prefill steps); the sequences that finish next
    to a last step of backlog wait for it, once."""
    scheduler = Scheduler(BlockManager(128, 16), max_batch=8, prefill_budget=400)
    for i in range(5):
        scheduler.add(Sequence(i, prompt(300, i), 20, 0))
    steps = [run_plan(scheduler) for _ in range(5)]
    assert steps[0] == ([(0, 0, 300), (1, 0, 100)], [0])  # 1,200 tokens left: no hold
    assert steps[1] == ([(1, 100, 200), (2, 0, 200)], [0, 1])  # 800 left
    assert steps[2] == ([(2, 200, 100), (3, 0, 300)], [0, 1])  # 300 left: 2 and 3 wait one step
    assert steps[3] == ([(4, 0, 300)], [0, 1, 2, 3, 4])
    assert steps[4] == ([], [0, 1, 2, 3, 4])
