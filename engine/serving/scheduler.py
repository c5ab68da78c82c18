"""Admission and batching: which sequences prefill and which decode in the next step.

Pure Python. A sequence is admitted only when the pool can reserve blocks for its prompt plus its
whole generation budget, so a running sequence never runs out of KV space: when the pool is full,
new sequences wait in FIFO order and nothing is truncated or preempted.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.serving.kv_cache import BlockManager
from engine.serving.request import Sequence, Status


@dataclass
class StepPlan:
    prefill: list[tuple[Sequence, int, int]] = field(default_factory=list)  # (seq, start, num_tokens)
    decode: list[Sequence] = field(default_factory=list)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_batch: int, prefill_budget: int, hold_tokens: int,
                 decode_prefill_budget: int | None = None) -> None:
        self.blocks = blocks
        self.max_batch = max_batch
        self.prefill_budget = prefill_budget
        # While any sequence decodes, each step carries its frame: a smaller prefill keeps that step
        # short, so streams already playing stay ahead of real time while new prompts prefill.
        self.decode_prefill_budget = min(prefill_budget, decode_prefill_budget or prefill_budget)
        # A burst whose remaining prompts fit in this many tokens starts decoding together (see schedule).
        self.hold_tokens = hold_tokens
        self.max_hold_steps = -(-self.hold_tokens // prefill_budget)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.free_slots = list(range(max_batch - 1, -1, -1))
        self.admitted = 0  # sequences that left the queue so far (admission control measures the rate)

    def add(self, seq: Sequence, front: bool = False) -> None:
        if self.blocks.blocks_for(seq.total_tokens) > self.blocks.num_blocks:
            raise ValueError(f"request needs {seq.total_tokens} tokens of KV cache; the whole pool holds "
                             f"{self.blocks.num_blocks * self.blocks.block_size}")
        seq.status = Status.WAITING
        (self.waiting.appendleft if front else self.waiting.append)(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def queue_position(self, request_id: int) -> int:
        """0 when running, else 1 + the number of sequences ahead in the queue, -1 when unknown."""
        if any(s.request_id == request_id for s in self.running):
            return 0
        for i, s in enumerate(self.waiting):
            if s.request_id == request_id:
                return i + 1
        return -1

    def _admit(self) -> None:
        while self.waiting and self.free_slots:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq.prompt, seq.total_tokens):
                break  # FIFO: later requests never overtake a waiting one
            self.waiting.popleft()
            seq.alloc = self.blocks.allocate(seq.prompt, seq.total_tokens)
            seq.num_computed = seq.alloc.num_cached_tokens
            seq.slot = self.free_slots.pop()
            seq.status = Status.RUNNING
            self.running.append(seq)
            self.admitted += 1

    def schedule(self) -> StepPlan:
        self._admit()
        plan = StepPlan()
        budget = self.decode_prefill_budget if any(s.decoding for s in self.running) else self.prefill_budget
        for seq in self.running:
            if seq.in_prefill and budget > 0:
                n = min(budget, seq.prompt_len - seq.num_computed)
                plan.prefill.append((seq, seq.num_computed, n))
                budget -= n
        after = {id(s): s.num_computed + n for s, _, n in plan.prefill}
        # A burst is prefilled at full speed and starts decoding together: a new sequence whose prompt
        # is done waits while the rest of the admitted prompts fit in hold_tokens. Otherwise the first
        # to finish would carry every later prefill step in its frame times, with little audio
        # buffered. Each waits at most max_hold_steps steps; a text's later chunks never wait.
        backlog = sum(max(0, s.prompt_len - after.get(id(s), s.num_computed)) for s in self.running)
        hold = 0 < backlog <= self.hold_tokens
        for s in self.running:
            if after.get(id(s), s.num_computed) < s.prompt_len:
                continue
            if not s.decoding and hold and s.frame_offset == 0 and s.held < self.max_hold_steps:
                s.held += 1
                continue
            s.decoding = True
            plan.decode.append(s)
        return plan

    def finish(self, seq: Sequence) -> None:
        """Free a sequence (finished or aborted), publishing its computed blocks for prefix reuse."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
            computed = seq.prompt[:seq.num_computed]
            if not seq.in_prefill:
                computed = seq.prompt + seq.frames
            assert seq.alloc is not None  # a running sequence holds its blocks
            self.blocks.register(seq.alloc, computed)
            self.blocks.release(seq.alloc)
            self.free_slots.append(seq.slot)
            seq.slot = -1
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = Status.FINISHED

    def publish_prompt(self, seq: Sequence) -> None:
        """Make a fully prefilled prompt's blocks findable by later requests with the same prefix."""
        assert seq.alloc is not None
        self.blocks.register(seq.alloc, seq.prompt)
