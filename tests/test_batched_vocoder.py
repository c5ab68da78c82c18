"""RowVocoder tests: streams that start at different times, share pushes in any subsets and reuse
reset rows each decode to exactly `Codec.decode` of their own codes; rows not pushed keep their
state; the state tensors never change size. Tiny codec (windows of 4 frames), CPU, float32."""
from __future__ import annotations

import random

import pytest
import torch

from engine.models.codec import Codec
from engine.vocoder.rows import RowVocoder
from tests.test_vocoder import HOP, make_codec, random_codes


@pytest.fixture(scope="module")
def codec() -> Codec:
    return make_codec()


class Stream:
    """One stream's codes [10, N] and the PCM pushed for it so far."""

    def __init__(self, num_frames: int, seed: int) -> None:
        self.codes = random_codes(1, num_frames, seed=seed)[0]
        self.done = 0
        self.pieces: list[torch.Tensor] = []

    @property
    def left(self) -> int:
        return self.codes.shape[-1] - self.done

    def take(self, n: int) -> torch.Tensor:
        self.done += n
        return self.codes[:, self.done - n:self.done]


def assert_decodes_alone(codec: Codec, stream: Stream) -> None:
    reference = codec.decode(stream.codes[None])[0, 0]
    torch.testing.assert_close(torch.cat(stream.pieces), reference, atol=1e-5, rtol=0)


def push_and_check_others(vocoder: RowVocoder, active: dict[int, Stream], chosen: list[int],
                          n: int) -> None:
    """Push n frames for the `chosen` rows; every other row's state and position stay bit-equal."""
    state, positions = vocoder.state.clone(), vocoder.positions.clone()
    codes = torch.stack([active[s].take(n) for s in chosen])  # [B, 10, n]
    pcm = vocoder.push(torch.tensor(chosen), codes)
    assert pcm.shape == (len(chosen), n * HOP)
    for row, samples in zip(chosen, pcm):
        active[row].pieces.append(samples)
    others = [s for s in range(vocoder.max_rows) if s not in chosen]
    assert torch.equal(vocoder.state[others], state[others])
    assert torch.equal(vocoder.positions[others], positions[others])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_interleaved_streams_decode_alone(codec: Codec, seed: int) -> None:
    rng = random.Random(seed)
    # per row: (first step, stream lengths in order); rows 1 and 3 are reset and reused
    plan = {0: (0, [13]), 1: (2, [9, 8]), 2: (5, [11]), 3: (1, [5, 7])}
    queued = {row: list(lengths) for row, (_, lengths) in plan.items()}
    vocoder, active, finished = RowVocoder(codec, 4), {}, []
    batch_sizes, ns = set(), set()
    for step in range(200):
        for row, (first, _) in plan.items():
            if row not in active and queued[row] and step >= first:
                vocoder.reset(row)
                active[row] = Stream(queued[row].pop(0), seed=100 * seed + len(finished) + row)
        if not active:
            break
        chosen = sorted(s for s in active if rng.random() < 0.6) or [rng.choice(sorted(active))]
        n = rng.choice([k for k in (1, 2, 3) if k <= min(active[s].left for s in chosen)])
        push_and_check_others(vocoder, active, chosen, n)
        batch_sizes.add(len(chosen))
        ns.add(n)
        for row in chosen:
            if active[row].left == 0:
                assert vocoder.positions[row] == active[row].codes.shape[-1]
                finished.append(active.pop(row))
    assert len(finished) == 6 and ns == {1, 2, 3} and max(batch_sizes) >= 3
    for stream in finished:
        assert_decodes_alone(codec, stream)


def test_long_streams_cross_the_window_with_fixed_state(codec: Codec) -> None:
    vocoder = RowVocoder(codec, 2)
    shape, pointer = vocoder.state.shape, vocoder.state.data_ptr()
    streams = {0: Stream(40, seed=11), 1: Stream(40, seed=12)}  # 10× the 4-frame attention window
    vocoder.reset(0)
    for step in range(57):  # row 1 joins 17 frames later, row 0 leaves 17 frames earlier
        if step == 17:
            vocoder.reset(1)
        chosen = [s for s in (0, 1) if streams[s].left and (s == 0 or step >= 17)]
        push_and_check_others(vocoder, streams, chosen, 1)
        assert vocoder.state.shape == shape and vocoder.state.data_ptr() == pointer
    assert vocoder.positions.tolist() == [40, 40]
    for stream in streams.values():
        assert_decodes_alone(codec, stream)


def test_reset_slot_ignores_the_previous_streams_keys(codec: Codec) -> None:
    vocoder = RowVocoder(codec, 2)
    vocoder.reset(0)
    old = Stream(10, seed=21)
    push_and_check_others(vocoder, {0: old}, [0], 3)
    vocoder.reset(0)
    assert vocoder.positions[0] == 0 and not vocoder.state[0].any()
    # keys and values of any earlier occupant sit before the new stream's start: masked, not zeroed
    kv = vocoder.layout[codec.quantizer.post_module]
    vocoder.state[0, kv.start:kv.start + kv.numel].normal_()
    new = Stream(9, seed=22)
    for n in (1, 2, 3, 3):
        push_and_check_others(vocoder, {0: new}, [0], n)
    assert_decodes_alone(codec, new)


def test_empty_and_bad_pushes(codec: Codec) -> None:
    vocoder = RowVocoder(codec, 3)
    assert vocoder.push(torch.tensor([0, 2]), torch.zeros(2, 10, 0, dtype=torch.long)).shape == (2, 0)
    assert not vocoder.positions.any()
    codes = random_codes(2, 1)
    with pytest.raises(ValueError, match="one row per codes row"):
        vocoder.push(torch.tensor([0]), codes)
    with pytest.raises(ValueError, match="int64"):
        vocoder.push(torch.tensor([0, 1], dtype=torch.int32), codes)
    with pytest.raises(ValueError, match="integer codes"):
        vocoder.push(torch.tensor([0, 1]), codes[:, :9])
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        vocoder.reset(3)
    with pytest.raises(ValueError, match="max_rows"):
        RowVocoder(codec, 0)
