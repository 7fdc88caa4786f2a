"""Dream on emdm's Qwen2 backbone against the reference code (../shared/oracles/dream): same logits on the same
weights (left-padded batches included) and, with the `dream` reveal schedule, the same tokens as its
`diffusion_generate` for `entropy` / `maskgit_plus` / `topk_margin` (= emdm's entropy / top_prob / margin)."""

from __future__ import annotations

import pytest
import torch

from oracles import dream_generation_config, oracle_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the cat sleeps on the", "the capital of france is", "one two", "we walk to the old market"]


@pytest.fixture(scope="module")
def dream(tmp_path_factory):
    from emdm_sampling import load_denoiser

    path, reference, tok = oracle_checkpoint("dream", tmp_path_factory.mktemp("oracle") / "dream")
    return load_denoiser(path), reference, tok, [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def _padded(prompts, pad):
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, attention


def test_loads_on_the_qwen2_backbone_and_undoes_the_shift(dream):
    from emdm_models.backbones import DiffusionQwen2ForMaskedLM
    from emdm_models.families.dream import DreamDenoiser

    den, reference, _tok, prompts = dream
    assert type(den) is DreamDenoiser and isinstance(den.model, DiffusionQwen2ForMaskedLM)
    ids, attention = _padded(prompts, den.pad_token_id)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    ref = reference(ids, attention_mask=attention, position_ids=positions).logits
    raw = den.model(input_ids=ids, attention_mask=attention, position_ids=positions).logits
    for i, p in enumerate(prompts):
        real = slice(ids.shape[1] - len(p), None)
        assert (raw[i, real] - ref[i, real]).abs().max() <= 1e-4
    aligned = den.logits(ids, attention)
    assert torch.allclose(aligned[:, 1:], raw[:, :-1]) and torch.allclose(aligned[:, 0], raw[:, 0])


@pytest.mark.parametrize("alg, sampler", [("entropy", "entropy"), ("maskgit_plus", "top_prob"),
                                          ("topk_margin", "margin")])
@pytest.mark.parametrize("steps, gen", [(16, 16), (8, 16), (5, 12), (16, 8)])
def test_dream_schedule_equals_diffusion_generate(dream, alg, sampler, steps, gen):
    from emdm_sampling import generate

    den, reference, tok, prompts = dream
    ids, attention = _padded(prompts, tok.pad_token_id)
    mask = den.mask_token_id

    def never_propose_the_mask(step, x, logits):  # emdm never proposes the mask token; Dream's hook for it
        logits[..., mask] = float("-inf")
        return logits

    config = dream_generation_config(reference, max_new_tokens=gen, steps=steps, alg=alg, temperature=0.0,
                                     mask_token_id=mask, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    ref = reference.diffusion_generate(ids, attention_mask=attention, generation_config=config,
                                       generation_logits_hook_func=never_propose_the_mask)
    out = generate(den, prompts, sampler=sampler, steps=steps, gen_length=gen, schedule="dream", temperature=0.0,
                   stop_at_eos=False)
    expected = [row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
                for row in ref[:, ids.shape[1]:].tolist()]  # emdm's text ends at the first EOS
    assert out.generated == expected
    assert out.nfe == steps  # Dream runs every step, some reveal nothing
