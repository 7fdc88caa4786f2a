"""ReMDM against MDLM-ReMDM's own sampler (../shared/oracles/remdm/diffusion.py, `_ddpm_caching_update`): the
per-token re-mask and reveal probabilities of every schedule equal the reference's to 1e-15, for steps where the
block holds no revealed token yet too (issue 24, item 8)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from emdm_sampling.strategies.remasking import remdm_rates

from oracles import ORACLES

M = 7  # the mask id of the fake vocabulary (8 ids)


@pytest.fixture(scope="module")
def reference():
    if not (ORACLES / "remdm" / "diffusion.py").is_file():
        pytest.skip(f"reference code not available: {ORACLES / 'remdm'} is missing (set EMDM_ORACLES)")
    sys.path.insert(0, str(ORACLES))
    try:
        from oracle_import import load

        return load("remdm/diffusion.py", stubs=["hydra", "lightning", "torchmetrics", "dataloader", "models",
                                                 "noise_schedule", "utils"])
    finally:
        sys.path.remove(str(ORACLES))


def _reference_probabilities(mod, schedule, eta, j, s, x, p_x0, conf):
    """(re-mask probability at the unmasked positions, reveal probability at the masked ones) that the reference
    hands to its categorical draw (q_xs[..., mask] is the probability of being masked after the step)."""
    captured = {}

    def capture(q):
        captured["q"] = q.clone()
        return torch.zeros(q.shape[:-1], dtype=torch.long)

    fake = SimpleNamespace(config=SimpleNamespace(noise=SimpleNamespace(type="loglinear"), sampling=SimpleNamespace(
        sampler=f"remdm-{schedule}", eta=eta, nucleus_p=1.0)), noise=lambda t: (t, t), mask_index=M)
    real = mod._sample_categorical
    mod._sample_categorical = capture
    try:
        t = torch.full((x.shape[0], 1), 1 - j / s, dtype=torch.float64)
        mod.Diffusion._ddpm_caching_update(fake, x, t, 1 / s, p_x0=p_x0, conf=conf.clone())
    finally:
        mod._sample_categorical = real
    q_mask = captured["q"][..., M]
    return q_mask, 1 - q_mask


@pytest.mark.parametrize("schedule, eta", [(s, e) for s in ("cap", "rescale") for e in (0.0, 0.04, 0.5, 1.0)]
                         + [("conf", 0.04)])  # the reference's conf schedule has no eta
@pytest.mark.parametrize("revealed_count", [0, 1, 4])
def test_remdm_probabilities_equal_the_reference(reference, schedule, eta, revealed_count):
    g = torch.Generator().manual_seed(revealed_count)
    batch, width, steps = 2, 6, 8
    for j in range(steps):
        x = torch.full((batch, width), M)
        x[:, :revealed_count] = torch.randint(0, M, (batch, revealed_count), generator=g)
        revealed = x != M
        logits = torch.randn(batch, width, 8, generator=g, dtype=torch.float64)
        logits[..., M] = -1e6
        p_x0 = torch.softmax(logits, -1)
        p_x0[revealed] = torch.nn.functional.one_hot(x[revealed], 8).double()  # SUBS: revealed rows one-hot
        confidence = torch.rand(batch, width, generator=g, dtype=torch.float64) * revealed
        conf = torch.where(revealed, -confidence, torch.full_like(confidence, float("-inf")))
        ref_remask, ref_reveal = _reference_probabilities(reference, schedule, eta, j, steps, x, p_x0, conf)
        remask, reveal = remdm_rates(schedule, eta, torch.full((batch,), j), torch.full((batch,), steps), revealed,
                                     confidence)
        reveal = reveal.expand_as(remask)
        assert torch.allclose(remask[revealed], ref_remask[revealed], rtol=0, atol=1e-15), (schedule, eta, j)
        assert torch.allclose(reveal[~revealed], ref_reveal[~revealed].clamp(0, 1), rtol=0, atol=1e-15), \
            (schedule, eta, j)


def test_conf_eta_keeps_emdm_variant_and_conf_refuses_an_eta():
    from emdm_core.errors import ConfigError
    from emdm_sampling import SamplerConfig

    with pytest.raises(ConfigError, match="uses no eta"):
        SamplerConfig(sampler="remdm").replace(remdm_schedule="conf", eta=0.5)
    revealed = torch.tensor([[True, True, False, False]])
    confidence = torch.tensor([[0.9, 0.2, 0.0, 0.0]])
    remask, reveal = remdm_rates("conf_eta", 0.0, torch.tensor([2]), torch.tensor([4]), revealed, confidence)
    assert remask.sum() == 0  # eta = 0: emdm's variant never re-masks ...
    remask, _ = remdm_rates("conf", 0.04, torch.tensor([2]), torch.tensor([4]), revealed, confidence)
    assert remask[0, 1] > remask[0, 0] > 0  # ... the reference's always does, the least confident most


def test_duo_posterior_equals_duo_reference():
    """emdm's `duo` step draws from Duo's ancestral posterior: normalised, its weights equal DUO's
    `_posterior_from_x0` (s-sahoo/duo @ 7c9b498f) to 1e-15 in float64 (the noise over the whole vocabulary, as
    DUO's). Documented differences: alpha = j/S within a block and a final argmax instead of DUO's eps and
    noise-removal pass; emdm's noise may be restricted to a noise vocabulary."""
    if not (ORACLES / "duo" / "algo.py").is_file():
        pytest.skip(f"reference code not available: {ORACLES / 'duo'} is missing (set EMDM_ORACLES)")
    from emdm_sampling.strategies.uniform import posterior_weights

    sys.path.insert(0, str(ORACLES))
    try:
        from oracle_import import load

        tb = load("duo/trainer_base.py", stubs=["hydra", "lightning", "dataloader", "metrics", "models", "utils"])
        algo = load("duo/algo.py", stubs=["utils"], provide={"trainer_base": tb})
    finally:
        sys.path.remove(str(ORACLES))
    vocab = 9
    duo = algo.DUO_BASE.__new__(algo.DUO_BASE)
    duo.config = SimpleNamespace(sampling=SimpleNamespace(use_float64=True))
    duo.vocab_size, duo.dtype, duo.device = vocab, torch.float64, torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    for j, steps in ((0, 4), (1, 4), (3, 4), (5, 8)):
        probs = torch.softmax(torch.randn(2, 5, vocab, generator=g, dtype=torch.float64) * 2, -1)
        current = torch.randint(0, vocab, (2, 5), generator=g)
        alpha_t, alpha_s = j / steps, (j + 1) / steps
        ref = duo._posterior_from_x0(probs, current, torch.full((2, 1), alpha_s, dtype=torch.float64),
                                     torch.full((2, 1), alpha_t, dtype=torch.float64))
        uniform = torch.full((vocab,), 1.0 / vocab, dtype=torch.float64)
        mine = posterior_weights(probs.view(-1, vocab), current.flatten(), torch.tensor(alpha_s, dtype=torch.float64),
                                 torch.tensor(alpha_t / alpha_s, dtype=torch.float64), uniform)
        mine = (mine / mine.sum(-1, keepdim=True)).view_as(ref)
        assert torch.allclose(mine, ref, rtol=0, atol=1e-15), (j, steps, (mine - ref).abs().max())
