"""LLaDA on emdm's Llama backbone against the reference code (../shared/oracles/llada): same logits on the same
weights, and the same tokens as LLaDA's `generate` and Fast-dLLM's prefix / dual cache decoders."""

from __future__ import annotations

import pytest
import torch

from oracles import llada_decoders, oracle_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the cat sleeps on the", "the capital of france is", "one two three four", "we walk to the old"]


@pytest.fixture(scope="module")
def llada(tmp_path_factory):
    from emdm_sampling import load_denoiser

    path, reference, tok = oracle_checkpoint("llada", tmp_path_factory.mktemp("oracle") / "llada")
    den = load_denoiser(path)  # no trust_remote_code: the reference code in the folder is not run
    return den, reference, [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


def test_loads_on_the_llama_backbone_without_remote_code(llada):
    from emdm_models.backbones import DiffusionLlamaForMaskedLM
    from emdm_models.families.llada import LLaDADenoiser

    den, _reference, _prompts = llada
    assert type(den) is LLaDADenoiser and isinstance(den.model, DiffusionLlamaForMaskedLM)
    assert den.mask_token_id == 126336 and den.supports_cache and den.block_size is None


def test_logits_equal_the_reference_including_left_padded_batches(llada):
    den, reference, prompts = llada
    width = max(len(p) for p in prompts) + 6
    rows = [p + [den.mask_token_id] * (width - len(p)) for p in prompts]  # different real lengths: left padding
    lengths = [len(p) + 6 for p in prompts]
    ids = torch.tensor([[0] * (width - n) + r[:n] for r, n in zip(rows, lengths)])
    attention = torch.tensor([[0] * (width - n) + [1] * n for n in lengths])
    mine = den.logits(ids, attention)
    for i, n in enumerate(lengths):
        ref = reference(torch.tensor([rows[i][:n]])).logits[0]  # the reference alone (it has no padding mask)
        assert (mine[i, width - n:] - ref).abs().max() <= 1e-4


CASES = [(16, 16, 16, None), (16, 8, 8, None), (16, 4, 8, None), (12, 4, 6, None), (16, 8, 16, 0.9),
         (16, 8, 16, 0.3)]


@pytest.mark.parametrize("gen, block, steps, threshold", CASES)
@pytest.mark.parametrize("decoder, cache", [("generate", "none"), ("generate_with_prefix_cache", "prefix"),
                                            ("generate_with_dual_cache", "dual")])
def test_decoding_equals_the_reference_decoders(llada, gen, block, steps, threshold, decoder, cache):
    from emdm_sampling import generate

    den, reference, prompts = llada
    fn = getattr(llada_decoders(), decoder)
    kw = dict(sampler="low_confidence_remask", steps=steps, gen_length=gen, block_length=block, threshold=threshold,
              cache=cache, temperature=0.0, stop_at_eos=False)
    batch = generate(den, prompts, **kw)  # left-padded, mixed lengths: each row as the reference decodes it alone
    for i, p in enumerate(prompts):
        ref, ref_nfe = fn(reference, torch.tensor([p]), steps=steps, gen_length=gen, block_length=block,
                          temperature=0.0, remasking="low_confidence", mask_id=den.mask_token_id,
                          threshold=threshold)
        alone = generate(den, [p], **kw)
        assert alone.sequences[0] == ref[0].tolist() == batch.sequences[i]
        assert alone.nfe == ref_nfe  # the same forward passes, full and partial
        if cache != "none":
            assert alone.nfe_full == gen // block and alone.nfe_partial == ref_nfe - gen // block


def test_lm_eval_model_decodes_with_the_dual_cache(llada, tmp_path):
    from lm_eval.api.instance import Instance

    from emdm_eval.model import EMDMLM

    den, _reference, _prompts = llada
    lm = EMDMLM(pretrained=den.path, cache="dual", threshold=0.9, steps=8, block_length=4, stop_at_eos=False,
                gen_length=8)
    req = Instance("generate_until", {}, ("the cat sleeps on the", {"until": []}), 0, ("t", 0, 1))
    assert len(lm.generate_until([req])) == 1
    assert lm.sampler_config.cache == "dual" and lm.get_model_info()["emdm"]["sampler"]["cache"] == "dual"
