"""Results comparable with the references and budgets that mean what they say: the ELBO's mask counts, step
budgets with blocks and thresholds, EOS handling, LLaDA's options, non-finite values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from emdm_core.errors import ConfigError
from emdm_eval.likelihood import elbo_loglikelihood, mask_count_distribution, stratified_mask_counts
from emdm_sampling import generate


# --- the Monte Carlo ELBO ------------------------------------------------------------------------------------

@pytest.mark.parametrize("length", range(1, 9))
def test_every_draw_count_is_exactly_uniform_for_every_mc_num(length):
    for n in range(1, 21):
        dist = mask_count_distribution(length, n)
        assert torch.allclose(dist, torch.full_like(dist, 1 / length), atol=1e-12), (length, n)


def test_sampled_counts_follow_the_exact_distribution():
    length, n, draws = 5, 3, 20000
    g = torch.Generator().manual_seed(0)
    counts = torch.stack([stratified_mask_counts(length, n, g) for _ in range(draws)])  # [draws, n]
    for j in range(n):
        freq = torch.bincount(counts[:, j] - 1, minlength=length).double() / draws
        assert (freq - 1 / length).abs().max() < 4 * math.sqrt(0.2 * 0.8 / draws)
    # and the draws of one request cover the range evenly: n distinct counts when n <= L
    assert all(len(set(row.tolist())) == n for row in counts[:200])


def test_llada_scheme_reproduces_eval_llada_rounding():
    """LLaDA's own stratification (batch 16, L = 4): P(l) = .1875/.3125/.1875/.3125 over its random k."""
    length, batch = 4, 16
    hist = torch.zeros(length, dtype=torch.float64)
    for k in range(1, length + 1):  # enumerate LLaDA's k ~ U{1..L} exactly
        x = torch.round(torch.linspace(float(k), k + (batch - 1) * (length / batch), steps=batch,
                                       dtype=torch.float64)).long()
        hist += torch.bincount(((x - 1) % length), minlength=length).double() / (batch * length)
    assert torch.allclose(hist, torch.tensor([0.1875, 0.3125, 0.1875, 0.3125], dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    sampled = torch.cat([stratified_mask_counts(length, batch, g, "llada", batch) for _ in range(4000)])
    freq = torch.bincount(sampled - 1, minlength=length).double() / len(sampled)
    assert (freq - hist).abs().max() < 0.01


class TableDenoiser:
    """A fake denoiser: logits depend on the position and on which context/continuation tokens are masked."""

    def __init__(self, vocab=6, mask=5):
        g = torch.Generator().manual_seed(3)
        self.w = torch.randn(8, vocab, generator=g) * 2
        self.mix = torch.randn(vocab, vocab, generator=g)
        self.mask_token_id, self.device, self.forward_calls = mask, torch.device("cpu"), 0

    def logits(self, ids, attention_mask=None):
        self.forward_calls += 1
        return self.w[: ids.shape[1]].unsqueeze(0) + self.mix[ids].mean(1, keepdim=True)


def _exact_elbo(den, context, continuation):
    """-E_l E_subset[L / l * sum of the masked tokens' CE], l uniform on 1..L, by enumeration."""
    L = len(continuation)
    total = 0.0
    for l in range(1, L + 1):
        subsets = list(itertools.combinations(range(L), l))
        for subset in subsets:
            cont = [den.mask_token_id if i in subset else t for i, t in enumerate(continuation)]
            logp = torch.log_softmax(den.logits(torch.tensor([context + cont]))[0, len(context):].double(), -1)
            nll = -sum(logp[i, continuation[i]] for i in subset)
            total += (1 / L) * (1 / len(subsets)) * (L / l) * float(nll)
    return -total


@pytest.mark.parametrize("continuation", [[1, 2], [3, 1, 4], [2, 2, 0, 1]])
def test_elbo_estimate_is_unbiased_against_the_exact_expectation(continuation):
    den, context = TableDenoiser(), [4, 3]
    exact = _exact_elbo(den, context, continuation)
    draws = [elbo_loglikelihood(den, context, continuation, mc_num=1, seed=s, greedy_row=False).logprob
             for s in range(3000)]
    mean = sum(draws) / len(draws)
    se = math.sqrt(sum((d - mean) ** 2 for d in draws) / (len(draws) - 1) / len(draws))
    assert abs(mean - exact) < 4 * se + 1e-9, (mean, exact, se)
    # the estimate of a request does not depend on how its draws are split over passes
    a = elbo_loglikelihood(den, context, continuation, mc_num=16, seed=5, rows=16).logprob
    b = elbo_loglikelihood(den, context, continuation, mc_num=16, seed=5, rows=3).logprob
    assert a == pytest.approx(b, abs=1e-12)


# --- budgets ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gen, block, steps, threshold", [
    (gen, block, steps, threshold) for gen in (8, 16) for block in (None, 3, 5, 8) for steps in (4, 8, 16, 32)
    for threshold in (None, 0.5, 0.99)])
def test_forward_passes_never_exceed_the_stated_bound(fake_denoiser, gen, block, steps, threshold):
    torch.manual_seed(0)
    den = fake_denoiser(torch.randn(64, 8) * 2)
    blocks = -(-gen // (block or gen))
    kw = dict(sampler="margin", steps=steps, gen_length=gen, block_length=block, threshold=threshold)
    if steps < blocks:
        with pytest.raises(ConfigError, match=f"steps={steps} is fewer than the {blocks} blocks.*steps >= {blocks}"):
            generate(den, [[1, 2]], **kw)
        return
    out = generate(den, [[1, 2]], **kw)
    # without a threshold: at most `steps`; with one: each pass reveals at least one token, `steps` is not used
    assert out.nfe <= (steps if threshold is None else gen)
    assert out.nfe >= blocks


# --- EOS and LLaDA's options -----------------------------------------------------------------------------------

def test_generated_ends_at_the_first_eos_in_both_modes(fake_denoiser):
    table = torch.zeros(16, 8)
    table[:, 3] = 2.0
    table[4, 6] = 9.0  # position 4 is EOS (6)
    den = fake_denoiser(table)
    full = generate(den, [[1]], sampler="top_prob", steps=8, gen_length=8)
    fast = generate(den, [[1]], sampler="top_prob", steps=8, gen_length=8, stop_at_eos=True)
    assert full.generated == fast.generated == [[3, 3, 3]]
    assert full.sequences[0][5:] == [3, 3, 3, 3] and fast.sequences[0][5:] == [6, 6, 6, 6]
    assert fast.nfe < full.nfe == 8


def test_logits_eos_inf_never_proposes_eos(fake_denoiser):
    table = torch.zeros(16, 8)
    table[:, 6] = 5.0  # EOS everywhere
    den = fake_denoiser(table)
    assert generate(den, [[1]], sampler="top_prob", steps=4, gen_length=4).generated == [[]]
    out = generate(den, [[1]], sampler="top_prob", steps=4, gen_length=4, logits_eos_inf=True)
    assert 6 not in out.sequences[0] and len(out.generated[0]) == 4


def test_cfg_scale_needs_cache_none(tiny_checkpoints):
    from emdm_sampling import load_denoiser

    den = load_denoiser(tiny_checkpoints["llada"])
    with pytest.raises(ConfigError, match="cfg_scale needs cache=none"):
        generate(den, [[5, 6]], steps=2, gen_length=2, cfg_scale=1.0, cache="dual")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "nan", "inf", "-inf"])
def test_non_finite_temperature_and_threshold_are_one_line_errors(bad):
    from emdm_sampling import SamplerConfig

    for field in ("temperature", "threshold", "cfg_scale", "order_noise"):
        with pytest.raises(ConfigError, match="not a finite number") as info:
            SamplerConfig.from_kwargs(**{field: bad})
        assert "\n" not in str(info.value)


# --- lm-eval: bad generation arguments and non-finite values -----------------------------------------------

def test_lm_eval_rejects_typos_and_non_finite_values_in_one_line(tiny_checkpoints):
    from lm_eval.api.instance import Instance

    from emdm_eval.model import EMDMLM

    lm = EMDMLM(pretrained=tiny_checkpoints["bert"], steps=2)

    def req(**gen_kwargs):
        return Instance("generate_until", {}, ("the cat", {"max_gen_toks": 2, **gen_kwargs}), 0, ("t", 0, 1))

    assert len(lm.generate_until([req(top_p=0.9)])) == 1  # a transformers argument: ignored with a warning
    for bad, needle in (({"stpes": 4}, "unknown generation argument 'stpes'"),
                        ({"temperature": float("nan"), "do_sample": True}, "not a finite number"),
                        ({"threshold": "inf"}, "not a finite number")):
        with pytest.raises(ConfigError, match=needle) as info:
            lm.generate_until([req(**bad)])
        assert "\n" not in str(info.value)
    for bad in ({"temperature": "nan"}, {"threshold": float("inf")}):
        with pytest.raises(ConfigError, match="not a finite number"):
            EMDMLM(pretrained=tiny_checkpoints["bert"], **bad)
