"""Streaming decoder tests: any split of the codes into pushes gives `Codec.decode` of all codes, the
carried state stays bounded, lockstep batches match single streams. Tiny codec, CPU, float32."""
from __future__ import annotations

import pytest
import torch

from engine.models.codec import Codec
from engine.vocoder.stream_decode import StreamingDecoder
from tests.test_codec import HOP, make_codec, random_codes


def stream(decoder: StreamingDecoder, codes: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    chunks, start = [], 0
    for n in sizes:
        chunks.append(decoder.push(codes[..., start:start + n]))
        start += n
    assert start == codes.shape[-1]
    return chunks


@pytest.fixture(scope="module")
def codec() -> Codec:
    return make_codec()


SPLITS = [[1, 1, 2, 3, 5, 8, 13], [33], [1] * 12 + [21], [4, 4, 4, 4, 17]]


@pytest.mark.parametrize("sizes", SPLITS)
def test_pushes_equal_one_shot_decode(codec: Codec, sizes: list[int]) -> None:
    codes = random_codes(1, 33)[0]  # 33 frames: well past the tiny windows (4 frames, 16 steps)
    reference = codec.decode(codes[None])[0, 0]
    assert 0.01 < reference.std() < 0.9
    chunks = stream(StreamingDecoder(codec), codes, sizes)
    assert [c.shape[0] for c in chunks] == [n * HOP for n in sizes]
    torch.testing.assert_close(torch.cat(chunks), reference, atol=1e-5, rtol=0)


def test_chunk_boundaries_are_continuous(codec: Codec) -> None:
    codes = random_codes(1, 12, seed=5)[0]
    reference = codec.decode(codes[None])[0, 0]
    audio = torch.cat(stream(StreamingDecoder(codec), codes, [1, 2, 3, 1, 5]))
    for frame in (1, 3, 6, 7):
        edge = slice(frame * HOP - 64, frame * HOP + 64)
        torch.testing.assert_close(audio[edge], reference[edge], atol=1e-5, rtol=0)
        # no click: the step across the boundary is as small as the steps around it
        steps = audio[edge].diff().abs()
        assert steps[63] <= 3 * steps.max().item()


def test_state_is_bounded(codec: Codec) -> None:
    decoder = StreamingDecoder(codec)
    codes = random_codes(1, 30, seed=3)[0]
    sizes = []
    for i in range(30):
        decoder.push(codes[:, i:i + 1])
        sizes.append(decoder.state_size())
    assert decoder.num_frames == 30
    assert len(set(sizes)) == 1  # fixed-size contexts and KV windows from the first push on
    window = codec.config.quantizer_window
    cache = next(iter(decoder._caches.values()))
    assert cache.pos == 30 and all(k is not None and k.shape[2] == window - 1 for k in cache.keys)


def test_batched_push_matches_single_streams(codec: Codec) -> None:
    codes = random_codes(3, 9, seed=7)
    batched = torch.cat(stream(StreamingDecoder(codec), codes, [2, 1, 6]), dim=-1)
    assert batched.shape == (3, 9 * HOP)
    for b in range(3):
        single = torch.cat(stream(StreamingDecoder(codec), codes[b], [4, 5]))
        torch.testing.assert_close(batched[b], single, atol=1e-5, rtol=0)


def test_reset_starts_a_new_stream(codec: Codec) -> None:
    decoder = StreamingDecoder(codec)
    first, second = random_codes(1, 6, seed=8)[0], random_codes(1, 5, seed=9)[0]
    stream(decoder, first, [6])
    decoder.reset()
    assert decoder.num_frames == 0 and decoder.state_size() == 0
    torch.testing.assert_close(torch.cat(stream(decoder, second, [2, 3])),
                               codec.decode(second[None])[0, 0], atol=1e-5, rtol=0)


def test_empty_and_bad_pushes(codec: Codec) -> None:
    decoder = StreamingDecoder(codec)
    assert decoder.push(torch.zeros(10, 0, dtype=torch.long)).shape == (0,)
    with pytest.raises(ValueError, match="integer codes"):
        decoder.push(torch.zeros(9, 2, dtype=torch.long))
    decoder.push(random_codes(1, 1)[0])
    with pytest.raises(ValueError, match="batches of 1"):
        decoder.push(random_codes(2, 1))
