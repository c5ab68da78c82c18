"""AudioStreams scheduling on the tiny codec (CPU): a stream's first frame is decoded at once, then
in growing groups, and past that ramp streams that started at different steps push together on the
shared beat (one decoder call for all of them). Every stream's PCM equals a one-shot decode of its
codes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.vocoder.streams import AudioStreams
from tests.test_vocoder import make_codec, random_codes


def test_streams_started_apart_share_one_push_after_their_ramp() -> None:
    codec = make_codec()
    streams = AudioStreams(codec, max_rows=4, group_frames=4)
    calls: list[tuple[int, int, list[int]]] = []  # (step, frames, vocoder rows)
    push = streams.vocoder.push
    streams.vocoder.push = lambda rows, codes: (calls.append((step, codes.shape[-1], rows.tolist())),
                                                push(rows, codes))[1]
    starts, num_frames = {0: 0, 1: 1, 2: 3}, 30
    codes = {rid: random_codes(1, num_frames, seed=rid)[0].numpy() for rid in starts}
    pcm: dict[int, list[np.ndarray]] = {rid: [] for rid in starts}
    for step in range(num_frames + 4):
        for rid, start in starts.items():
            if step == start:
                streams.open(rid)
            if start <= step < start + num_frames:
                streams.add(rid, codes[rid][:, step - start])
        ended = {rid for rid, start in starts.items() if step == start + num_frames - 1}
        for rid, chunk in streams.decode(streams.starting() | ended):
            pcm[rid].append(chunk)
    for rid in starts:
        whole = codec.decode(torch.from_numpy(codes[rid])[None])[0, 0].numpy()
        np.testing.assert_allclose(np.concatenate(pcm[rid]), whole, atol=1e-5, rtol=0)
    # each stream: 1, 2 frames (ramp); at step 6 stream 0's group is full and the other two push
    # what they have with it; from then on every group is one call for all three
    assert [(n, rows) for step, n, rows in calls if step == 6] == [(4, [0]), (3, [1]), (1, [2])]
    shared = [(step, n, rows) for step, n, rows in calls if 7 <= step < 29]
    assert [step for step, _, _ in shared] == [10, 14, 18, 22, 26]
    assert all(n == 4 and len(rows) == 3 for _, n, rows in shared)


def test_a_stream_alone_is_pushed_the_same_way_whenever_it_starts() -> None:
    codec = make_codec()
    codes = random_codes(1, 14, seed=5)[0].numpy()
    runs = []
    for idle_steps in (0, 3):  # another stream came and went before: nothing carries over
        streams = AudioStreams(codec, max_rows=2, group_frames=4)
        sizes: list[int] = []
        push = streams.vocoder.push
        streams.vocoder.push = lambda rows, codes, sizes=sizes, push=push: (sizes.append(codes.shape[-1]),
                                                                               push(rows, codes))[1]
        for step in range(idle_steps):
            streams.open(99)
            streams.add(99, codes[:, step])
            streams.decode(streams.starting())
            streams.close(99)
        sizes.clear()
        streams.open(0)
        pcm = []
        for i in range(14):
            streams.add(0, codes[:, i])
            pcm += [p for _, p in streams.decode(streams.starting() | ({0} if i == 13 else set()))]
        runs.append((sizes, np.concatenate(pcm)))
    assert runs[0][0] == runs[1][0] == [1, 2, 4, 4, 3]
    assert np.array_equal(runs[0][1], runs[1][1])


def test_group_size_is_bounded_because_each_size_gets_a_graph() -> None:
    from engine.serving.engine_config import EngineConfig
    assert EngineConfig(vocoder_group_frames=16).vocoder_group_frames == 16
    for bad in (0, 17):
        with pytest.raises(ValueError, match=r"vocoder_group_frames must be in \[1, 16\]"):
            EngineConfig(vocoder_group_frames=bad)


def test_large_groups_are_split_into_pushes_of_push_rows() -> None:
    codec = make_codec()
    streams = AudioStreams(codec, max_rows=5, group_frames=4, push_rows=2)
    assert streams.buckets == [1, 2]
    rows_per_call: list[int] = []
    push = streams.vocoder.push
    streams.vocoder.push = lambda rows, codes: (rows_per_call.append(len(rows)), push(rows, codes))[1]
    codes = {rid: random_codes(1, 7, seed=10 + rid)[0].numpy() for rid in range(5)}
    pcm: dict[int, list[np.ndarray]] = {rid: [] for rid in codes}
    for rid in codes:
        streams.open(rid)
    for step in range(7):
        for rid in codes:
            streams.add(rid, codes[rid][:, step])
        for rid, chunk in streams.decode(streams.starting() | (set(codes) if step == 6 else set())):
            pcm[rid].append(chunk)
    assert max(rows_per_call) == 2 and rows_per_call[:3] == [2, 2, 1]  # five first frames: 2 + 2 + 1
    for rid in codes:
        whole = codec.decode(torch.from_numpy(codes[rid])[None])[0, 0].numpy()
        np.testing.assert_allclose(np.concatenate(pcm[rid]), whole, atol=1e-5, rtol=0)
    for rid in codes:
        streams.close(rid)
    assert streams.rows_free() == 5


def test_rows_are_taken_at_the_first_frame_and_never_overcommitted() -> None:
    codec = make_codec()
    streams = AudioStreams(codec, max_rows=1, group_frames=4)
    codes = random_codes(1, 2, seed=3)[0].numpy()
    for rid in (1, 2):
        streams.open(rid)  # opening takes no row: requests wait for a decode slot without one
    assert streams.rows_free() == 1
    streams.add(1, codes[:, 0])
    streams.decode(streams.starting())
    assert streams.rows_free() == 0
    streams.add(2, codes[:, 1])  # a second decoding stream with one row is an engine bug: said loudly
    with pytest.raises(AssertionError, match="all 1 vocoder rows are taken"):
        streams.decode(streams.starting())


def test_first_frame_and_ramp_groups_are_handed_out_in_the_step_they_are_read() -> None:
    """starting(): a stream's first frame and each due ramp group (2, then 4 frames with groups of 8)
    are due now, so their PCM comes back from the same decode call; a group past the ramp (8
    frames) is picked up later, in order, and everything equals the one-shot decode."""
    codec = make_codec()
    streams = AudioStreams(codec, max_rows=2, group_frames=8)
    codes = random_codes(1, 15, seed=7)[0].numpy()
    streams.open(0)
    now: list[int] = []  # frames handed out in the step their last frame was added
    pcm: list[np.ndarray] = []
    for t in range(15):
        streams.add(0, codes[:, t])
        due = streams.starting()
        got = streams.decode(due)
        pcm += [chunk for _, chunk in got]
        if due:
            assert due == {0} and len(got) == 1
            now.append(len(got[0][1]) // 2048)
    pcm += [chunk for _, chunk in streams.decode({0})]
    assert now == [1, 2, 4]  # frames 1, 3 and 7 end ramp groups; frames 8-15 form one later group
    whole = codec.decode(torch.from_numpy(codes)[None])[0, 0].numpy()
    np.testing.assert_allclose(np.concatenate(pcm), whole, atol=1e-5, rtol=0)
