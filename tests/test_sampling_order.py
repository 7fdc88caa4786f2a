"""Each strategy's order, pinned exactly on a fake denoiser whose probabilities are known."""

from __future__ import annotations

import math

import pytest
import torch

from emdm_sampling import ConfigError, Strategy, available_samplers, generate, get_sampler, register_sampler
from emdm_sampling.strategies import SAMPLERS

# Probabilities over tokens 0..5 at generated positions 1..4 (position 0 holds the prompt token).
#            top_prob  margin  entropy
# pos 1      .50       .25     1.04
# pos 2      .45       .00     0.95
# pos 3      .60       .22     0.75
# pos 4      .55       .46     1.41
ROWS = {
    1: [0.50, 0.25, 0.25, 0, 0, 0],
    2: [0.45, 0.45, 0.10, 0, 0, 0],
    3: [0.60, 0.38, 0.02, 0, 0, 0],
    4: [0.55, 0.09, 0.09, 0.09, 0.09, 0.09],
}


def _table(rows=ROWS, vocab=8, length=16):
    probs = torch.full((length, vocab), 1e-9)
    probs[:, 0] = 1.0
    for pos, p in rows.items():
        probs[pos, :6] = torch.tensor(p) + 1e-9
    return torch.log(probs / probs.sum(-1, keepdim=True))


def _order(fake, sampler, **kw):
    den = fake(_table())
    out = generate(den, [[1]], sampler=sampler, steps=kw.pop("steps", 4), gen_length=4, trace=True, **kw)
    order = out.trace.order(0)[1:]
    return sorted(range(1, 5), key=lambda p: order[p - 1]), out


@pytest.mark.parametrize("sampler, expected", [
    ("top_prob", [3, 4, 1, 2]),
    ("margin", [4, 1, 3, 2]),
    ("entropy", [3, 2, 1, 4]),
    ("low_confidence_remask", [3, 4, 1, 2]),  # temperature 0: p(x0) is the top probability
    ("eags", [4, 1, 2, 3]),  # highest entropy first (its Gibbs sweeps are tested below)
])
def test_order_is_exact(fake_denoiser, sampler, expected):
    order, out = _order(fake_denoiser, sampler, **({"gibbs_steps": 0} if sampler == "eags" else {}))
    assert order == expected
    assert out.generated[0] == [0, 0, 0, 0]


def test_margin_and_top_prob_differ_from_random_order(fake_denoiser):
    orders = {tuple(_order(fake_denoiser, "vanilla", seed=s)[0]) for s in range(12)}
    assert len(orders) > 3  # random order actually varies with the seed


def test_block_length_never_reveals_past_the_current_block(fake_denoiser):
    order, _ = _order(fake_denoiser, "margin", block_length=2)
    assert order == [1, 2, 4, 3]  # block {1,2} first (margin inside it), then block {3,4}


def test_threshold_reveals_every_confident_position_at_once(fake_denoiser):
    den = fake_denoiser(_table())
    out = generate(den, [[1]], sampler="top_prob", steps=4, gen_length=4, threshold=0.5, trace=True)
    assert out.nfe == 2
    assert sorted(out.trace.steps[0].revealed[0]) == [1, 3, 4]
    assert out.trace.steps[1].revealed[0] == [2]


def test_surprise_reveals_most_informative_predicted_token_first(fake_denoiser):
    rows = {p: [0.0] * 6 for p in range(1, 5)}
    for pos, tok in zip(range(1, 5), [0, 1, 2, 3]):  # position p predicts token p-1 with p = 0.9
        rows[pos] = [0.02] * 6
        rows[pos][tok] = 0.9
    surprise = torch.tensor([1.0, 5.0, 3.0, 9.0, 0.0, 0.0, 0.0, 0.0])
    den = fake_denoiser(_table(rows), surprise=surprise)
    out = generate(den, [[1]], sampler="surprise", steps=4, gen_length=4, trace=True, surprise_temperature=1e-3)
    order = out.trace.order(0)[1:]
    assert sorted(range(1, 5), key=lambda p: order[p - 1]) == [4, 2, 3, 1]
    out = generate(den, [[1]], sampler="surprise", steps=4, gen_length=4, trace=True, surprise_temperature=1e-3,
                   surprise_direction="low_first")
    order = out.trace.order(0)[1:]
    assert sorted(range(1, 5), key=lambda p: order[p - 1]) == [1, 3, 2, 4]


def test_surprise_without_a_table_says_what_to_do(fake_denoiser):
    with pytest.raises(ConfigError, match="surprise table"):
        generate(fake_denoiser(_table()), [[1]], sampler="surprise", steps=4, gen_length=4)


def test_eos_stops_generation(fake_denoiser):
    rows = {p: [0.5, 0.25, 0.25, 0, 0, 0] for p in range(1, 12)}
    table = _table(rows)
    table[2] = torch.log(torch.tensor([1e-6] * 6 + [1.0, 1e-6]))  # position 2 is EOS (id 6) for sure
    den = fake_denoiser(table)
    out = generate(den, [[1]], sampler="top_prob", steps=8, gen_length=8, stop_at_eos=True)  # the speed option
    assert out.generated[0] == [0]
    assert out.sequences[0][2:] == [6] * 7
    assert out.nfe == 2  # EOS first (most confident), then position 1; the rest needed no decoding
    full = generate(den, [[1]], sampler="top_prob", steps=8, gen_length=8)  # the default: decode every position
    assert full.nfe == 8 and 7 not in full.sequences[0]
    assert full.generated[0] == [0]  # the output still ends at the first EOS, as LLaDA's evaluation cuts it


def test_infilling_fills_masks_inside_the_prompt_only(fake_denoiser):
    den = fake_denoiser(_table())
    out = generate(den, [[1, 7, 5, 7, 2]], sampler="margin", steps=2, gen_length=0)
    assert out.sequences[0] == [1, 0, 5, 0, 2]
    assert out.generated[0] == []


def test_remdm_remasks_and_still_finishes(fake_denoiser):
    den = fake_denoiser(_table())
    out = generate(den, [[1]], sampler="remdm", steps=8, gen_length=4, temperature=1.0, trace=True, eta=1.0,
                   remdm_schedule="rescale", seed=3)
    assert any(st.remasked[0] for st in out.trace.steps)
    assert 7 not in out.sequences[0] and out.nfe <= 8


def test_eags_gibbs_sweeps_cost_one_pass_each(fake_denoiser):
    den = fake_denoiser(_table())
    out = generate(den, [[1]], sampler="eags", steps=4, gen_length=4, trace=True, gibbs_steps=3, gibbs_fraction=0.5)
    assert out.nfe == 4 + 3
    assert [len(st.remasked[0]) for st in out.trace.steps] == [0, 0, 0, 2, 2, 2, 0]
    assert 7 not in out.sequences[0]


def test_cosine_schedule_reveals_few_first_and_many_last(fake_denoiser):
    den = fake_denoiser(_table(length=20))
    out = generate(den, [[1]], sampler="margin", steps=4, gen_length=16, schedule="cosine", trace=True,
                   stop_at_eos=False)
    counts = [len(st.revealed[0]) for st in out.trace.steps]
    assert sum(counts) == 16 and counts[0] < counts[-1]
    expected = [16 - math.floor(16 * math.cos(math.pi / 2 * j / 4)) for j in range(5)]
    assert counts == [max(1, b - a) for a, b in zip(expected, expected[1:])]


def test_registry_lists_the_eight_builtin_samplers():
    assert {"vanilla", "top_prob", "margin", "entropy", "eags", "low_confidence_remask", "remdm",
            "surprise"} <= set(available_samplers())


def test_unknown_sampler_lists_the_registered_ones():
    with pytest.raises(ConfigError, match="registered samplers: .*margin"):
        get_sampler("nonsense")


def test_unknown_option_names_the_known_ones(fake_denoiser):
    with pytest.raises(ConfigError, match="gibbs_steps"):
        generate(fake_denoiser(_table()), [[1]], sampler="eags", gen_length=4, steps=4, eta=0.1)


def test_third_party_strategy_registers_without_editing_the_library(fake_denoiser):
    @register_sampler("right_to_left_test")
    class RightToLeft(Strategy):
        """Reveal the rightmost masked position first."""

        def score(self, ctx):
            return torch.arange(ctx.x.shape[1], dtype=torch.float).expand_as(ctx.p_x0)

    try:
        assert "right_to_left_test" in available_samplers()
        order, _ = _order(fake_denoiser, "right_to_left_test")
        assert order == [4, 3, 2, 1]
    finally:
        SAMPLERS.unregister("right_to_left_test")
    assert "right_to_left_test" not in available_samplers()


def test_each_step_sees_the_tokens_revealed_so_far(fake_denoiser):
    """A chain: a position is certain only once its left neighbour is revealed, and then predicts neighbour + 1."""

    def chain(ids, rel):
        vocab = 8
        out = torch.zeros(*ids.shape, vocab)
        left = torch.cat([ids[:, :1], ids[:, :-1]], dim=1)
        known = left != 7
        nxt = (left + 1).clamp(max=5)
        out[known] = torch.nn.functional.one_hot(nxt[known], vocab).float() * 20.0
        return out

    den = fake_denoiser(fn=chain)
    out = generate(den, [[1]], sampler="top_prob", steps=4, gen_length=4)
    assert out.sequences[0] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("vocab", [5, 256, 300, 1025])
def test_two_level_inverse_cdf_equals_the_full_float64_cdf(vocab):
    """The proposal sampler's chunked CDF picks exactly the token a full float64 running sum picks, never a
    zero-weight token (the mask), and a row's pick does not depend on the other rows."""
    from emdm_sampling.proposals import inverse_cdf as _inverse_cdf

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(400, vocab, generator=g) * 3
    logits[:, 1] = torch.finfo(torch.float32).min  # the mask token
    weights = (logits - logits.amax(-1, keepdim=True)).exp()
    u = torch.rand(400, generator=g, dtype=torch.float64)
    cdf = weights.double().cumsum(-1)
    expected = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    got = _inverse_cdf(weights, u)
    assert torch.equal(got, expected)
    assert (got != 1).all()
    assert torch.equal(_inverse_cdf(weights[7:19], u[7:19]), got[7:19])


def test_entropy_from_the_loop_exponentials_equals_the_textbook_entropy():
    from emdm_sampling.strategies import StepContext

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 2
    log_z = torch.logsumexp(logits, -1)
    shifted = (logits - logits.amax(-1, keepdim=True)).exp()
    scored = torch.ones(2, 3, dtype=torch.bool)
    common = dict(step=0, x=torch.zeros(2, 3, dtype=torch.long), dense_logits=lambda: None, scored=scored,
                  flat_logits=logits, flat_log_z=log_z, x0=None, p_x0=None, masked=scored, eligible=scored,
                  block=scored, fillable=scored, confidence=None, k=None, block_step=None, block_steps=None,
                  threshold=None, rng=None, mask_token_id=0, surprise=None)
    textbook = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1).view(2, 3)
    for extra in ({}, {"flat_exp": shifted, "flat_sum_exp": shifted.sum(-1)}):
        ctx = StepContext(**common, **extra)
        torch.testing.assert_close(ctx.entropy(), textbook, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ctx.flat_probs, torch.softmax(logits, -1))
