"""RL objectives for masked diffusion LMs (issue 25): d1's estimator and loss and wd1's loss equal to their public
code (../shared/oracles/d1, wd1), the sequence ELBO equal to its definition enumerated exactly on a toy model."""

from __future__ import annotations

import itertools
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from emdm_train.rl.objectives import (clipped_policy_loss, d1_token_logps, elbo_sequence_logps, group_advantages,
                                      wd1_loss)

from oracles import ORACLES

MASK, VOCAB = 7, 8


class ToyModel(torch.nn.Module):
    """A context-mixing toy denoiser: each position's logits read its own token and the sequence's mean embedding,
    so masking prompt tokens changes the completion's predictions. `.device` and `.logits` as d1's code expects."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(VOCAB, 16)
        self.pos = torch.nn.Parameter(torch.randn(64, 16))
        self.out = torch.nn.Linear(32, VOCAB)

    @property
    def device(self):
        return self.out.weight.device

    def forward(self, ids):
        h = self.emb(ids) + self.pos[: ids.shape[1]]
        ctx = h.mean(1, keepdim=True).expand_as(h)
        return SimpleNamespace(logits=self.out(torch.cat([h, ctx], -1)))


def logits_fn(model):
    return lambda ids: model(ids).logits


def _oracle(name: str, path: str):
    if not (ORACLES / path).is_file():
        pytest.skip(f"reference code not available: {ORACLES / path} is missing (set EMDM_ORACLES)")
    sys.path.insert(0, str(ORACLES))
    try:
        from oracle_import import load
    finally:
        sys.path.remove(str(ORACLES))
    return load(path, stubs=["trl", "wandb"])


def _d1_self(module, cls, p=0.15, iterations=1, beta=0.0, epsilon=0.2):
    fake = SimpleNamespace(args=SimpleNamespace(p_mask_prompt=p, mask_id=MASK, cfg_scale=0.0,
                                                num_iterations=iterations),
                           _step=0, beta=beta, epsilon=epsilon, num_iterations=iterations,
                           _metrics={"train": {"clip_ratio": [], "kl": []}},
                           control=SimpleNamespace(should_evaluate=False),
                           accelerator=SimpleNamespace(gather_for_metrics=lambda t: t))
    for method in ("forward_process", "get_logits", "_get_per_token_logps"):
        setattr(fake, method, types.MethodType(getattr(cls, method), fake))
    return fake


def _batch(rows=6, prompt=5, completion=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(0, MASK, (rows, prompt), generator=g)
    completion_ids = torch.randint(0, MASK, (rows, completion), generator=g)
    completion_mask = torch.ones(rows, completion, dtype=torch.long)
    completion_mask[0, -1] = 0  # a row that ended early
    return prompt_ids, completion_ids, completion_mask


@pytest.mark.parametrize("p", [0.15, 0.5])
def test_d1_token_logps_equal_d1s_get_per_token_logps(p):
    d1 = _oracle("d1", "d1/diffu_grpo_trainer.py")
    model = ToyModel()
    prompt_ids, completion_ids, _ = _batch()
    ids = torch.cat([prompt_ids, completion_ids], 1)
    for seed in (3, 41):
        expected = d1.DiffuGRPOTrainer._get_per_token_logps(_d1_self(d1, d1.DiffuGRPOTrainer, p), model, ids[None],
                                                            completion_ids.shape[1], [seed])[0]
        got = d1_token_logps(logits_fn(model), ids, completion_ids.shape[1], MASK, p_mask_prompt=p, seed=seed)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # the prompt mask matters: another seed gives other values (so the equality above is not vacuous)
    other = d1_token_logps(logits_fn(model), ids, completion_ids.shape[1], MASK, p_mask_prompt=p, seed=4)
    assert not torch.equal(other, got)


@pytest.mark.parametrize("beta, iterations", [(0.0, 1), (0.04, 2)])
def test_clipped_policy_loss_equals_d1s_compute_loss(beta, iterations):
    d1 = _oracle("d1", "d1/diffu_grpo_trainer.py")
    model = ToyModel()
    prompt_ids, completion_ids, completion_mask = _batch()
    ids = torch.cat([prompt_ids, completion_ids], 1)
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0]), 3)
    seeds = [11, 12]
    old = torch.stack([d1_token_logps(logits_fn(ToyModel(1)), ids, 4, MASK, seed=s) for s in seeds])  # [it, B, C]
    ref = torch.stack([d1_token_logps(logits_fn(ToyModel(2)), ids, 4, MASK, seed=s) for s in seeds])
    fake = _d1_self(d1, d1.DiffuGRPOTrainer, iterations=iterations, beta=beta)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": completion_mask, "mask_seeds": seeds, "advantages": advantages,
              "old_per_token_logps": old[:, None], "ref_per_token_logps": ref[:, None]}
    expected = d1.DiffuGRPOTrainer.compute_loss(fake, model, inputs)
    logps = d1_token_logps(logits_fn(model), ids, 4, MASK, seed=seeds[0])
    got, metrics = clipped_policy_loss(logps, old[0] if iterations > 1 else logps.detach(), advantages,
                                       completion_mask, epsilon=0.2, beta=beta, ref_logps=ref[0])
    torch.testing.assert_close(got, expected)
    assert metrics["clip_ratio"] == pytest.approx(fake._metrics["train"]["clip_ratio"][0])
    if beta:
        assert metrics["kl"] == pytest.approx(fake._metrics["train"]["kl"][0], rel=1e-5)


def test_wd1_loss_equals_wd1s_compute_loss():
    wd1 = _oracle("wd1", "wd1/rev_grpo_trainer.py")
    model = ToyModel()
    prompt_ids, completion_ids, completion_mask = _batch()
    ids = torch.cat([prompt_ids, completion_ids], 1)
    advantages = group_advantages(torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 0.0]), 3)
    fake = _d1_self(wd1, wd1.RevDiffuGRPOTrainer)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": completion_mask, "mask_seeds": [5], "advantages": advantages}
    expected = wd1.RevDiffuGRPOTrainer.compute_loss(fake, model, inputs)
    logps = d1_token_logps(logits_fn(model), ids, 4, MASK, seed=5)
    got = wd1_loss((logps * completion_mask).sum(1), advantages)
    torch.testing.assert_close(got, expected)


def test_sequence_elbo_equals_its_definition_enumerated_exactly():
    """ELBO(y | x) = E_{l ~ U{1..L}} E_{|M| = l} [(L / l) sum_{i in M} log p(y_i | x, y with M masked)]: enumerated
    over every l and every mask on a toy model, against the estimator's mean over many stratified draws."""
    model = ToyModel(3)
    prompt_ids, completion_ids, completion_mask = _batch(rows=2, completion=3)
    completion_mask[0, -1] = 0  # row 0 has 2 real tokens, row 1 has 3
    ids = torch.cat([prompt_ids, completion_ids], 1)
    exact = []
    with torch.no_grad():
        for row in range(2):
            length = int(completion_mask[row].sum())
            start = ids.shape[1] - completion_ids.shape[1]
            total = 0.0
            for l in range(1, length + 1):
                subsets = list(itertools.combinations(range(length), l))
                for subset in subsets:
                    noisy = ids[row].clone()
                    noisy[[start + i for i in subset]] = MASK
                    logp = torch.log_softmax(model(noisy[None]).logits[0].float(), -1)
                    value = sum(float(logp[start + i, ids[row, start + i]]) for i in subset)
                    total += (length / l) * value / len(subsets) / length
            exact.append(total)
        estimate = elbo_sequence_logps(logits_fn(model), ids, completion_mask, MASK, draws=20000,
                                       seeds=torch.Generator().manual_seed(0))
    # Monte Carlo error of 20,000 draws is ~0.01 here; a wrong weight (1/l, or no L/l) is off by > 1
    torch.testing.assert_close(estimate, torch.tensor(exact), atol=0.04, rtol=0)
    # differentiable: a gradient step on -ELBO raises the ELBO
    est = elbo_sequence_logps(logits_fn(model), ids, completion_mask, MASK, draws=64,
                              seeds=torch.Generator().manual_seed(1))
    (-est.sum()).backward()
    assert model.out.weight.grad is not None and model.out.weight.grad.abs().sum() > 0


def test_advantages_and_their_bad_inputs():
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    assert adv.tolist() == [0.5, -0.5, 0.0, 0.0]
    with pytest.raises(ValueError, match=">= 2 rollouts"):
        group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match="divide"):
        group_advantages(torch.ones(5), 2)
    with pytest.raises(ValueError, match="ref_logps"):
        clipped_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), torch.ones(2, 3), beta=0.1)
