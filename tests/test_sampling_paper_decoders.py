"""The decoders of Kim et al. / Ye et al.'s Sudoku experiments: Gumbel noise on the ordering score (with decay)
and the re-masking top-k decoder, pinned on fake denoisers with known probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from emdm_sampling import ConfigError, generate
from emdm_sampling.rng import CounterRNG
from emdm_sampling.strategies import StepContext

from test_sampling_order import ROWS, _table

ORDERING = ["vanilla", "top_prob", "margin", "entropy", "low_confidence_remask", "eags"]


@pytest.mark.parametrize("sampler", ORDERING)
@pytest.mark.parametrize("decay", ["none", "linear", "cosine"])
def test_zero_noise_is_exactly_todays_strategy(fake_denoiser, sampler, decay):
    den = fake_denoiser(_table())
    kw = dict(sampler=sampler, steps=4, gen_length=4, trace=True, seeds=[0, 1, 2])
    plain = generate(den, [[1]] * 3, **kw)
    zero = generate(den, [[1]] * 3, order_noise=0.0, order_noise_decay=decay, **kw)
    assert zero.sequences == plain.sequences
    assert [zero.trace.order(r) for r in range(3)] == [plain.trace.order(r) for r in range(3)]


def _first_pick_frequencies(den, n, **kw):
    out = generate(den, [[1]] * n, sampler="top_prob", steps=4, gen_length=4, trace=True, seeds=list(range(n)),
                   **kw)
    first = [out.trace.steps[0].revealed[r][0] for r in range(n)]
    return torch.tensor([first.count(p) / n for p in range(1, 5)])


def test_order_noise_samples_the_order_from_softmax_of_score_over_c(fake_denoiser):
    # top_prob scores of positions 1..4 are .50 .45 .60 .55: with c the first pick is a draw from softmax(score/c)
    den = fake_denoiser(_table())
    scores = torch.tensor([max(ROWS[p]) for p in range(1, 5)], dtype=torch.double)
    n = 3000
    for c in (0.05, 0.2):
        freq = _first_pick_frequencies(den, n, order_noise=c)
        expected = torch.softmax(scores / c, 0).float()
        assert (freq - expected).abs().max() < 4 * math.sqrt(0.25 / n), (c, freq, expected)
    # decay: at step j of S the coefficient is c (S-1-j)/S (linear) or c cos((j+1)/S pi/2) (cosine)
    for decay, rate in (("linear", 3 / 4), ("cosine", math.cos(math.pi / 8))):
        freq = _first_pick_frequencies(den, n, order_noise=0.2, order_noise_decay=decay)
        expected = torch.softmax(scores / (0.2 * rate), 0).float()
        assert (freq - expected).abs().max() < 4 * math.sqrt(0.25 / n), (decay, freq, expected)


def test_noise_scale_follows_the_decay_schedule():
    steps = torch.tensor([0, 1, 2, 3])
    ctx = StepContext(step=0, x=torch.zeros(4, 1, dtype=torch.long), dense_logits=lambda: None, scored=None,
                      flat_logits=None, flat_log_z=None, x0=None, p_x0=None, masked=None, eligible=None, block=None,
                      fillable=None, confidence=None, k=None, block_step=steps, block_steps=torch.full((4,), 4),
                      threshold=None, rng=CounterRNG(torch.zeros(4, dtype=torch.long), torch.zeros(1)),
                      mask_token_id=7, surprise=None, order_noise=0.5)
    assert ctx.noise_scale().flatten().tolist() == [0.5] * 4
    ctx.order_noise_decay = "linear"
    assert ctx.noise_scale().flatten().tolist() == [0.5 * 3 / 4, 0.5 * 2 / 4, 0.5 * 1 / 4, 0.0]
    ctx.order_noise_decay = "cosine"
    expected = [0.5 * math.cos((j + 1) / 4 * math.pi / 2) for j in range(4)]
    assert ctx.noise_scale().flatten().tolist() == pytest.approx(expected, abs=1e-12)


def _dependent_fake(fake_denoiser):
    """Position 1 predicts token 3 (p .9) while position 2 is masked and token 4 (p .9) once it is not; position 2
    is the next most confident (p .8), then positions 3 and 4."""
    def fn(ids, rel):
        probs = torch.full((*ids.shape, 8), 1e-6)
        probs[..., 0] = 1.0
        pos2_masked = (ids[:, 2] == 7).unsqueeze(-1)
        at = lambda p: (rel == p)  # noqa: E731
        row1 = torch.where(pos2_masked, torch.tensor([0, 0, 0, .9, .1, 0, 0, 0.]),
                           torch.tensor([0, 0, 0, .1, .9, 0, 0, 0.]))
        probs = torch.where(at(1).unsqueeze(-1), row1.unsqueeze(1) + 1e-6, probs)
        probs[at(2)] = torch.tensor([0, 0, .8, .1, .1, 0, 0, 0.]) + 1e-6
        probs[at(3)] = torch.tensor([0, .7, .3, 0, 0, 0, 0, 0.]) + 1e-6
        probs[at(4)] = torch.tensor([.6, .4, 0, 0, 0, 0, 0, 0.]) + 1e-6
        return torch.log(probs / probs.sum(-1, keepdim=True))
    return fake_denoiser(fn=fn)


def test_topk_remask_re_predicts_a_revealed_cell(fake_denoiser):
    den = _dependent_fake(fake_denoiser)
    # reveal-only top_prob keeps position 1's first prediction (3); the re-masking decoder updates it to 4 once
    # position 2 is filled in, since every step predicts every position
    assert generate(den, [[1]], sampler="top_prob", steps=4, gen_length=4).generated[0] == [3, 2, 1, 0]
    out = generate(den, [[1]], sampler="top_prob", topk_remask="linear", steps=4, gen_length=4, trace=True)
    assert out.generated[0] == [4, 2, 1, 0]
    assert out.trace.steps[2].tokens[0][1] == 4  # updated at step 2 (position 2 revealed at step 1)


@pytest.mark.parametrize("rate_name, rate", [("linear", lambda j, s: (s - 1 - j) / s),
                                             ("cosine", lambda j, s: math.cos((j + 1) / s * math.pi / 2))])
def test_topk_remask_keeps_n_minus_floor_n_rate_and_remasks_revealed_cells(fake_denoiser, rate_name, rate):
    n, steps = 16, 5
    den = fake_denoiser(_table(length=20))
    out = generate(den, [[1]], sampler="vanilla", topk_remask=rate_name, steps=steps, gen_length=n, trace=True,
                   seed=4)
    masked, remasked_any = n, False
    for j, st in enumerate(out.trace.steps):
        masked += len(st.remasked[0]) - len(st.revealed[0])
        remasked_any |= bool(st.remasked[0])
        assert masked == math.floor(n * rate(j, steps)), j
    assert remasked_any and len(out.trace.steps) == steps and 7 not in out.sequences[0]


@pytest.mark.parametrize("sampler, expected", [("top_prob", [3, 4, 1, 2]), ("margin", [4, 1, 3, 2]),
                                               ("entropy", [3, 2, 1, 4])])
def test_topk_remask_without_noise_keeps_the_strategys_order(fake_denoiser, sampler, expected):
    # independent positions: each step's ranking is the same, so the kept set only grows, in the strategy's order
    den = fake_denoiser(_table())
    out = generate(den, [[1]], sampler=sampler, topk_remask="linear", steps=4, gen_length=4, trace=True)
    order = out.trace.order(0)[1:]
    assert sorted(range(1, 5), key=lambda p: order[p - 1]) == expected
    assert all(not st.remasked[0] for st in out.trace.steps)


def test_top_prob_log_scale_is_ye_et_als_score(fake_denoiser):
    den = fake_denoiser(_table())
    kw = dict(sampler="top_prob", steps=4, gen_length=4, trace=True, seeds=list(range(8)))
    assert generate(den, [[1]] * 8, scale="log", **kw).trace.steps[0].revealed == \
        generate(den, [[1]] * 8, **kw).trace.steps[0].revealed  # no noise: the same order
    # with noise c the first pick is a draw from softmax(log p / c) = p^(1/c) normalised
    n, c = 3000, 0.5
    freq = _first_pick_frequencies(den, n, order_noise=c, scale="log")
    p = torch.tensor([max(ROWS[q]) for q in range(1, 5)], dtype=torch.double)
    expected = (p ** (1 / c) / (p ** (1 / c)).sum()).float()
    assert (freq - expected).abs().max() < 4 * math.sqrt(0.25 / n), (freq, expected)


def test_topk_remask_refuses_what_it_cannot_honour(fake_denoiser):
    den = fake_denoiser(_table())
    with pytest.raises(ConfigError, match="drop threshold"):
        generate(den, [[1]], sampler="margin", topk_remask="linear", threshold=0.9, gen_length=4, steps=4)
    with pytest.raises(ConfigError, match="sampler 'remdm' has its own update rule"):
        generate(den, [[1]], sampler="remdm", topk_remask="linear", gen_length=4, steps=4)
    with pytest.raises(ConfigError, match="topk_remask"):
        generate(den, [[1]], sampler="margin", topk_remask="yes", gen_length=4, steps=4)
    with pytest.raises(ConfigError, match="order_noise_decay"):
        generate(den, [[1]], sampler="margin", order_noise_decay="fast", gen_length=4, steps=4)
