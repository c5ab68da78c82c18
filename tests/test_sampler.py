import pytest
import torch

from engine.ar.sampler import (
    RAS_WINDOW,
    BatchParams,
    exponential_noise,
    filtered_probs,
    push_recent,
    sample,
    sample_fast,
    sample_slow,
)
from engine.params import SamplingParams


def params(**kw) -> BatchParams:
    return BatchParams.build([SamplingParams(**kw)], "cpu")


def test_top_k_1_is_argmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 4097)
    p = BatchParams.build([SamplingParams(top_k=1, seed=s, temperature=1.5) for s in range(6)], "cpu")
    for counter in range(5):
        got = sample(logits, p.temperature, p.top_p, p.top_k, p.seed, torch.full((6,), counter))
        assert torch.equal(got, logits.argmax(-1))


def test_top_p_removes_the_crossing_token() -> None:
    # Untempered probs 0.5, 0.3, 0.2: cum 0.5, 0.8, 1.0. With top_p 0.7 the token crossing 0.7 (rank 1)
    # is removed too, so only rank 0 survives.
    logits = torch.log(torch.tensor([[0.3, 0.5, 0.2]]))
    one = torch.ones(1)
    probs = filtered_probs(logits, one, torch.tensor([0.7]), torch.tensor([30]))
    assert probs.tolist() == [[0.0, 1.0, 0.0]]
    # top_p 0.85 keeps ranks whose cum <= 0.85: ranks 0 and 1 (cum 0.8), renormalized.
    probs = filtered_probs(logits, one, torch.tensor([0.85]), torch.tensor([30]))
    torch.testing.assert_close(probs, torch.tensor([[0.375, 0.625, 0.0]]))


def test_top_p_uses_untempered_logits_and_temperature_after() -> None:
    logits = torch.log(torch.tensor([[0.3, 0.5, 0.2]]))
    probs = filtered_probs(logits, torch.tensor([2.0]), torch.tensor([0.85]), torch.tensor([30]))
    kept = torch.tensor([0.3, 0.5]).log() / 2.0
    want = torch.softmax(kept, 0)
    torch.testing.assert_close(probs[0, :2], want)
    assert probs[0, 2] == 0


def test_top_k_limits_support() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, 100)
    p = params(top_k=5, top_p=1.0, temperature=1.0)
    seen = {int(sample(logits, p.temperature, p.top_p, p.top_k, torch.tensor([s]), torch.tensor([0])))
            for s in range(300)}
    assert seen == set(logits.topk(5).indices[0].tolist())


def test_exponential_race_matches_the_distribution() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(4000, 3)
    n = 4000
    seeds = torch.arange(n)
    p = BatchParams.build([SamplingParams(top_p=1.0, top_k=3, temperature=1.0)] * n, "cpu")
    got = sample(logits, p.temperature, p.top_p, p.top_k, seeds, torch.zeros(n, dtype=torch.long))
    freq = torch.bincount(got, minlength=3).float() / n
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.7]), atol=0.025, rtol=0)


def test_noise_depends_only_on_seed_and_counter() -> None:
    a = exponential_noise(torch.tensor([5, 9, 5]), torch.tensor([3, 3, 4]), 50)
    b = exponential_noise(torch.tensor([9]), torch.tensor([3]), 50)
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    big = exponential_noise(torch.tensor([2**40 + 5]), torch.tensor([0]), 50)
    assert not torch.equal(big[0], exponential_noise(torch.tensor([5]), torch.tensor([0]), 50)[0])
    assert torch.isfinite(a).all() and (a > 0).all()
    mean = exponential_noise(torch.arange(64), torch.zeros(64, dtype=torch.long), 4096).mean()
    assert abs(float(mean) - 1.0) < 0.01


def test_same_seed_same_output_different_seed_differs() -> None:
    torch.manual_seed(2)
    logits = torch.randn(1, 4097)
    frame = torch.tensor([3])
    recent = torch.full((1, RAS_WINDOW), -1)
    runs = [sample_slow(logits, params(seed=s, top_p=0.99, top_k=500), frame, recent) for s in (7, 7, 8, 9, 10)]
    assert torch.equal(runs[0], runs[1])
    assert len({int(r) for r in runs}) > 2


def test_ras_swaps_in_high_temperature_sample_on_repeat() -> None:
    torch.manual_seed(3)
    logits = torch.randn(1, 4097) * 3
    p = params(seed=11, temperature=0.3, top_p=0.5, top_k=30)
    frame = torch.tensor([4])
    fresh = torch.full((1, RAS_WINDOW), -1)
    normal = sample_slow(logits, p, frame, fresh)
    counter = frame * 16 + 1
    high = sample(logits, torch.tensor([1.0]), torch.tensor([0.9]), p.top_k, p.seed, counter)
    repeated = push_recent(fresh, normal)
    assert torch.equal(sample_slow(logits, p, frame, repeated), high)
    off = BatchParams.build([SamplingParams(seed=11, temperature=0.3, top_p=0.5, ras=False)], "cpu")
    assert torch.equal(sample_slow(logits, off, frame, repeated), normal)
    # Outside the window (pushed out by 10 other tokens) it no longer counts as a repeat.
    for t in range(RAS_WINDOW):
        repeated = push_recent(repeated, torch.tensor([4000 + t]))
    assert torch.equal(sample_slow(logits, p, frame, repeated), normal)


def test_ras_never_replaces_end_of_speech() -> None:
    logits = torch.full((1, 4097), -10.0)
    logits[0, 4096] = 10.0
    p = params(seed=1)
    recent = torch.full((1, RAS_WINDOW), 4096)
    assert int(sample_slow(logits, p, torch.tensor([0]), recent)) == 4096


def test_batched_rows_are_independent() -> None:
    torch.manual_seed(4)
    logits = torch.randn(3, 4096)
    ps = [SamplingParams(seed=s, temperature=t, top_p=tp, top_k=k)
          for s, t, tp, k in [(1, 0.5, 0.9, 10), (2, 1.0, 0.7, 30), (3, 0.8, 0.8, 100)]]
    frames = torch.tensor([0, 5, 9])
    batched = sample_fast(logits, BatchParams.build(ps, "cpu"), frames, 3)
    for i, sp in enumerate(ps):
        alone = sample_fast(logits[i:i + 1], BatchParams.build([sp], "cpu"), frames[i:i + 1], 3)
        assert int(alone) == int(batched[i])


@pytest.mark.parametrize("kw", [{"temperature": -1}, {"top_p": 0}, {"top_k": 0}, {"seed": -1}])
def test_invalid_params_are_rejected(kw: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kw)
