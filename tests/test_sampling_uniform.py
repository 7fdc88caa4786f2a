"""Uniform-state decoding pinned on a fake denoiser: which positions each strategy accepts, keeps, renoises and
settles, Duo's posterior marginals, the entropy-bound stop rule; masked models are unchanged by the noise option."""

from __future__ import annotations

import math

import pytest
import torch

from emdm_sampling import ConfigError, generate

NOISE = torch.tensor([0, 1, 2, 3, 4, 5])  # the fake's noise vocabulary (its states): not EOS (6) nor the mask (7)


def _table(rows: dict[int, list[float]], vocab: int = 8, length: int = 16) -> torch.Tensor:
    probs = torch.full((length, vocab), 1e-9)
    probs[:, 5] = 1.0
    for pos, p in rows.items():
        probs[pos, :len(p)] = torch.tensor(p) + 1e-9
    return torch.log(probs / probs.sum(-1, keepdim=True))


def _uniform(fake, table):
    den = fake(table)
    den.noise, den.noise_vocabulary = "uniform", NOISE
    return den


# argmax 5 everywhere; entropies (nats) 0.00, 0.05, 0.08 and 1.39 at positions 1-4
def _spread(h_target: float) -> list[float]:
    """A distribution over tokens 0-5 with mode 5 and entropy close to `h_target` (bisection on the tail mass)."""
    lo, hi = 1e-9, 0.5
    for _ in range(60):
        tail = (lo + hi) / 2
        p = [tail / 5] * 5 + [1 - tail]
        h = -sum(x * math.log(x) for x in p)
        lo, hi = (tail, hi) if h < h_target else (lo, tail)
    return p


ENTROPIES = {1: 0.0, 2: 0.05, 3: 0.08, 4: 1.39}
EB_TABLE = {pos: (_spread(h) if h > 0 else [0, 0, 0, 0, 0, 1.0]) for pos, h in ENTROPIES.items()}
EB_TABLE[4] = [0.16] * 5 + [0.2]  # high entropy, still mode 5


@pytest.mark.parametrize("bound, accepted", [(0.1, {1, 2, 3}), (0.04, {1, 2}), (0.001, {1, 2}), (1e-9, {1})])
def test_entropy_bound_accepts_the_lowest_entropies_within_the_bound_and_renoises_the_rest(
        fake_denoiser, bound, accepted):
    """Over 300 rows (seeds): an accepted position always holds its proposal (the argmax 5 at temperature 0), a
    renoised one a fresh uniform noise token (5 in about 1 of 6 rows)."""
    den = _uniform(fake_denoiser, _table(EB_TABLE))
    rows = 300
    out = generate(den, [[4]] * rows, sampler="entropy_bound", steps=4, gen_length=4, entropy_bound=bound,
                   confidence_threshold=1e-9, trace=True, seeds=list(range(rows)))
    after_first = torch.tensor(out.trace.to_dict()["steps"][0]["tokens"])[:, 1:]
    assert set(after_first.flatten().tolist()) <= set(NOISE.tolist())
    for pos in range(1, 5):
        share = float((after_first[:, pos - 1] == 5).float().mean())
        if pos in accepted:
            assert share == 1.0, (pos, share)
        else:
            assert abs(share - 1 / 6) < 0.1, (pos, share)  # renoised: uniform over the 6 states
    assert out.nfe == 4  # never confident: the block runs its 4 steps, then settles on the argmax
    assert all(g == [5, 5, 5, 5] for g in out.generated)


@pytest.mark.parametrize("stability, confidence, passes", [(0, 100.0, 1), (1, 100.0, 2), (2, 100.0, 3),
                                                           (1, 1e-9, 6)])
def test_entropy_bound_stops_when_stable_and_confident(fake_denoiser, stability, confidence, passes):
    """The fake's argmax never changes: the block stops after `stability` + 1 passes when confident, else at its
    step budget."""
    den = _uniform(fake_denoiser, _table(EB_TABLE))
    out = generate(den, [[4]], sampler="entropy_bound", steps=6, gen_length=4, stability_threshold=stability,
                   confidence_threshold=confidence)
    assert out.nfe == passes and out.generated[0] == [5, 5, 5, 5]


def test_entropy_bound_on_a_masked_model_is_the_eb_sampler(fake_denoiser):
    den = fake_denoiser(_table(EB_TABLE))
    out = generate(den, [[4]], sampler="entropy_bound", steps=4, gen_length=4, entropy_bound=0.1, trace=True)
    order = out.trace.order(0)[1:]
    assert order == [0, 0, 0, 1]  # positions 1-3 in the first step, 4 in the second
    assert out.nfe == 2


def test_duo_ancestral_marginals_follow_the_schedule(fake_denoiser):
    """p puts all mass on token 5: after step j of S the share of 5 is q(x_s = 5) = alpha_s + (1 - alpha_s) / K with
    alpha_s = (j+1)/S, K = 6 states (the ancestral posterior keeps the forward marginals)."""
    den = _uniform(fake_denoiser, _table({}))
    rows, steps, k = 600, 4, len(NOISE)
    out = generate(den, [[4]] * rows, sampler="duo", steps=steps, gen_length=4, temperature=1.0,
                   seeds=list(range(rows)), trace=True)
    frames = [torch.tensor(s["tokens"])[:, 1:] for s in out.trace.to_dict()["steps"]]
    n = rows * 4
    for j, tokens in enumerate(frames[:-1]):
        share = float((tokens == 5).float().mean())
        alpha = (j + 1) / steps
        expected = alpha + (1 - alpha) / k
        assert abs(share - expected) < 4 * math.sqrt(expected * (1 - expected) / n), (j, share)
        assert set(tokens.flatten().tolist()) <= set(NOISE.tolist())
    assert bool((frames[-1] == 5).all())  # the last step takes the argmax


def test_ordering_strategies_settle_top_k_and_keep_the_noise_elsewhere(fake_denoiser):
    from test_sampling_order import ROWS, _table as order_table

    masked_order = generate(fake_denoiser(order_table()), [[1]], sampler="margin", steps=4, gen_length=4,
                            trace=True).trace.order(0)[1:]
    den = _uniform(fake_denoiser, order_table())
    out = generate(den, [[1]], sampler="margin", steps=4, gen_length=4, trace=True)
    assert out.trace.order(0)[1:] == masked_order  # the same order as on the masked canvas
    for s in out.trace.to_dict()["steps"]:
        assert set(s["tokens"][0][1:]) <= set(NOISE.tolist())  # noise tokens or decided ones, never the mask
    first = out.trace.to_dict()["steps"][0]["tokens"][0][1:]
    assert all(first[p] == 0 for p in range(4) if masked_order[p] == 0)  # the proposal (argmax 0 in this table)
    assert out.generated[0] == [0, 0, 0, 0] and len(ROWS) == 4


def test_remdm_renoises_with_random_tokens_on_a_uniform_canvas(fake_denoiser):
    den = _uniform(fake_denoiser, _table({}))
    out = generate(den, [[4]] * 20, sampler="remdm", steps=8, gen_length=8, block_length=8, temperature=1.0,
                   eta=0.5, remdm_schedule="rescale", seeds=list(range(20)), trace=True)
    steps = out.trace.to_dict()["steps"]
    remasked = [(r, p) for s in steps for r, ps in enumerate(s["remasked"]) for p in ps]
    assert remasked  # some settled tokens were renoised
    for i, s in enumerate(steps):
        for r, ps in enumerate(s["remasked"]):
            for p in ps:
                assert s["tokens"][r][p] in NOISE.tolist()  # a fresh noise token, not the mask
    assert all(t == 5 for g in out.generated for t in g)  # and every position settled again on the argmax


def test_uniform_rows_decode_alike_in_any_batch(fake_denoiser):
    def fn(ids, rel):  # context-dependent logits: each position leans to (token to its left + 1) mod 6
        left = torch.cat([ids[:, :1], ids[:, :-1]], 1) % 6
        return torch.nn.functional.one_hot((left + 1) % 6, 8).float() * 3 + torch.sin(rel.float()).unsqueeze(-1)

    den = fake_denoiser(fn=fn)
    den.noise, den.noise_vocabulary = "uniform", NOISE
    prompts = [[1], [2, 3, 4], [5, 5]]
    for sampler in ("duo", "entropy_bound", "margin"):
        batch = generate(den, prompts, sampler=sampler, steps=6, gen_length=6, temperature=1.0, seeds=[3, 4, 5])
        for i, p in enumerate(prompts):
            assert generate(den, [p], sampler=sampler, steps=6, gen_length=6, temperature=1.0,
                            seeds=[3 + i]).sequences[0] == batch.sequences[i], sampler


def test_uniform_only_strategies_refuse_masked_models_in_one_line(fake_denoiser):
    with pytest.raises(ConfigError, match="uniform-state") as err:
        generate(fake_denoiser(_table({})), [[4]], sampler="duo", steps=4, gen_length=4)
    assert "\n" not in str(err.value)


def test_temperature_schedule_and_torch_rng_on_masked_models(fake_denoiser):
    den = fake_denoiser(_table(EB_TABLE))
    with pytest.raises(ConfigError, match="temperature > 0"):
        generate(den, [[4]], steps=4, gen_length=4, temperature_end=0.5)
    prompts = [[4], [4, 4]]
    for rng in ("counter", "torch"):
        batch = generate(den, prompts, steps=4, gen_length=4, temperature=1.5, temperature_end=0.5, rng=rng,
                         seeds=[1, 2])
        for i, p in enumerate(prompts):
            assert generate(den, [p], steps=4, gen_length=4, temperature=1.5, temperature_end=0.5, rng=rng,
                            seeds=[1 + i]).sequences[0] == batch.sequences[i]
