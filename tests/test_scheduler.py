"""The scheduler's step plans over a real block pool: chunked prefill and when decoding starts."""
from __future__ import annotations

from engine.serving.kv_cache import BlockManager
from engine.serving.request import Sequence
from engine.serving.scheduler import Scheduler


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
    scheduler = Scheduler(BlockManager(128, 16), max_batch=8, prefill_budget=700, hold_tokens=700)
    for i in range(4):
        scheduler.add(Sequence(i, prompt(300, i), 20, 0))
    prefill, decode = run_plan(scheduler)
    assert prefill == [(0, 0, 300), (1, 0, 300), (2, 0, 100)] and decode == []
    prefill, decode = run_plan(scheduler)
    assert prefill == [(2, 100, 200), (3, 0, 300)] and decode == [0, 1, 2, 3]
    scheduler.add(Sequence(4, prompt(300, 4), 20, 0))
    prefill, decode = run_plan(scheduler)
    assert prefill == [(4, 0, 300)] and decode == [0, 1, 2, 3, 4]  # nothing else left to prefill


def test_backlog_beyond_the_hold_does_not_hold_the_first_to_finish() -> None:
    """When the rest of the burst needs more than hold_tokens, whoever finishes starts at once; the
    sequences that finish next to a last step of backlog wait for it, once."""
    scheduler = Scheduler(BlockManager(128, 16), max_batch=8, prefill_budget=400, hold_tokens=400)
    for i in range(5):
        scheduler.add(Sequence(i, prompt(300, i), 20, 0))
    steps = [run_plan(scheduler) for _ in range(5)]
    assert steps[0] == ([(0, 0, 300), (1, 0, 100)], [0])  # 1,200 tokens left: no hold
    assert steps[1] == ([(1, 100, 200), (2, 0, 200)], [0, 1])  # 800 left
    assert steps[2] == ([(2, 200, 100), (3, 0, 300)], [0, 1])  # 300 left: 2 and 3 wait one step
    assert steps[3] == ([(4, 0, 300)], [0, 1, 2, 3, 4])
    assert steps[4] == ([], [0, 1, 2, 3, 4])


def test_a_burst_within_the_hold_is_prefilled_first_and_starts_together() -> None:
    """Five 300-token prompts, 400 tokens a step, a 1,200-token hold: every prompt finishing while
    the rest of the burst fits in the hold waits (the whole burst here), and all five decode from
    the step after the last prompt is done."""
    scheduler = Scheduler(BlockManager(128, 16), max_batch=8, prefill_budget=400, hold_tokens=1200)
    assert scheduler.max_hold_steps == 3
    for i in range(5):
        scheduler.add(Sequence(i, prompt(300, i), 20, 0))
    steps = [run_plan(scheduler) for _ in range(5)]
    assert steps[0] == ([(0, 0, 300), (1, 0, 100)], [])  # 1,100 tokens left
    assert steps[1] == ([(1, 100, 200), (2, 0, 200)], [])
    assert steps[2] == ([(2, 200, 100), (3, 0, 300)], [])
    assert steps[3] == ([(4, 0, 300)], [0, 1, 2, 3, 4])
    assert steps[4] == ([], [0, 1, 2, 3, 4])
    assert [s.held for s in scheduler.running] == [3, 2, 1, 1, 0]


def test_hold_is_bounded_per_sequence_and_skips_later_chunks() -> None:
    """Arrivals that keep the backlog from emptying hold a finished prompt at most max_hold_steps
    steps; a text's later chunk (frame_offset > 0) and a sequence already decoding never wait, and a
    hold of 0 tokens never holds."""
    scheduler = Scheduler(BlockManager(256, 16), max_batch=8, prefill_budget=400, hold_tokens=800)
    scheduler.add(Sequence(0, prompt(300, 0), 20, 0))
    scheduler.add(Sequence(1, prompt(300, 1), 20, 5))  # a later chunk of another request
    decoded = []
    for i in range(2, 6):  # a new 300-token request before every step: the backlog never empties
        scheduler.add(Sequence(i, prompt(300, i), 20, 0))
        decoded.append(run_plan(scheduler)[1])
    assert decoded[0] == []  # 0 held (backlog 500 + 300 queued); 1 not done yet
    assert decoded[1] == [1]  # the later chunk starts when done
    assert decoded[2] == [0, 1]  # 0 released after two holds (800 // 400)
    assert 0 in decoded[3] and 1 in decoded[3]
    assert scheduler.running[0].held == 2 and scheduler.running[1].held == 0

    scheduler = Scheduler(BlockManager(128, 16), max_batch=8, prefill_budget=400, hold_tokens=0)
    for i in range(3):
        scheduler.add(Sequence(i, prompt(300, i), 20, 0))
    assert run_plan(scheduler) == ([(0, 0, 300), (1, 0, 100)], [0])


def test_prefill_steps_shrink_to_the_decoding_budget_while_sequences_decode() -> None:
    """Nothing decoding: a step prefills the whole budget (700). Once a sequence decodes, every step
    carries its frame, and prefills at most decode_prefill_budget (250) tokens; when nothing decodes
    any more the full budget comes back. A decoding budget above the budget is the budget."""
    scheduler = Scheduler(BlockManager(128, 16), max_batch=8, prefill_budget=700, hold_tokens=0,
                          decode_prefill_budget=250)
    scheduler.add(Sequence(0, prompt(300, 0), 3, 0))
    assert run_plan(scheduler) == ([(0, 0, 300)], [0])
    for i in (1, 2):
        scheduler.add(Sequence(i, prompt(300, i), 20, 0))
    assert run_plan(scheduler) == ([(1, 0, 250)], [0])
    assert run_plan(scheduler) == ([(1, 250, 50), (2, 0, 200)], [0, 1])
    scheduler.finish(scheduler.running[0])
    scheduler.finish(scheduler.running[0])
    scheduler.add(Sequence(3, prompt(600, 3), 20, 0))
    assert run_plan(scheduler) == ([(2, 200, 100), (3, 0, 600)], [2, 3])
    assert Scheduler(BlockManager(8, 16), 2, 300, 0, decode_prefill_budget=900).decode_prefill_budget == 300
