"""LLaDA on emdm's Llama backbone against the reference code (../shared/oracles/llada): same logits on the same
weights, and the same tokens as LLaDA's `generate` and Fast-dLLM's prefix / dual cache decoders."""

from __future__ import annotations

import json

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
    assert den.mask_token_id == 126336 and "dual" in den.contract.cache_modes and den.contract.attention_block is None


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


@pytest.fixture(scope="module")
def llada_eos(tmp_path_factory):
    """A reference LLaDA whose EOS is frequently the most likely token."""
    from emdm_sampling import load_denoiser

    def frequent_eos(model, tok):
        model.get_output_embeddings().weight[tok.eos_token_id] *= 3  # frequent, yet not p = 1.0 ties

    path, reference, tok = oracle_checkpoint("llada", tmp_path_factory.mktemp("oracle") / "llada-eos", seed=1,
                                             edit=frequent_eos)
    return load_denoiser(path), reference, [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


@pytest.mark.parametrize("gen, block, steps", [(16, 16, 16), (16, 4, 8), (12, 4, 12)])
def test_default_eos_handling_reproduces_llada_with_eos_frequent(llada_eos, gen, block, steps):
    from emdm_sampling import generate

    den, reference, prompts = llada_eos
    eos = den.eos_token_id
    eos_rows = 0
    for p in prompts:
        out = generate(den, [p], sampler="low_confidence_remask", steps=steps, gen_length=gen, block_length=block,
                       temperature=0.0)  # the default: every position decoded, the text cut at the first EOS
        ref, _ = llada_decoders().generate(reference, torch.tensor([p]), steps=steps, gen_length=gen,
                                           block_length=block, temperature=0.0, remasking="low_confidence",
                                           mask_id=den.mask_token_id)
        ref_gen = ref[0, len(p):].tolist()
        eos_rows += eos in ref_gen[: gen // 2]
        assert out.sequences[0] == ref[0].tolist()
        assert out.generated[0] == (ref_gen[: ref_gen.index(eos)] if eos in ref_gen else ref_gen)
    assert eos_rows >= 2  # the case this test is about: EOS comes early in most rows


class _GuidedReference(torch.nn.Module):
    """LLaDA generate.py's classifier-free guidance around the reference model: the prompt (every position that was
    not a mask at the start) masked in a second batch, logits = u + (s + 1)(c - u)."""

    def __init__(self, model, prompt_length: int, mask_id: int, scale: float):
        super().__init__()
        self.model, self.prompt_length, self.mask_id, self.scale = model, prompt_length, mask_id, scale

    @property
    def device(self):
        return self.model.device

    def forward(self, x):
        uncond = x.clone()
        uncond[:, : self.prompt_length] = self.mask_id
        cond, un = self.model(torch.cat([x, uncond])).logits.chunk(2)
        return type("Out", (), {"logits": un + (self.scale + 1) * (cond - un)})()


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_cfg_scale_equals_llada_guidance(llada, scale):
    from emdm_sampling import generate

    den, reference, prompts = llada
    out = generate(den, prompts, sampler="low_confidence_remask", steps=8, gen_length=16, block_length=8,
                   temperature=0.0, cfg_scale=scale)
    plain = generate(den, prompts, sampler="low_confidence_remask", steps=8, gen_length=16, block_length=8,
                     temperature=0.0)
    assert out.sequences != plain.sequences  # guidance changes the decoding
    for i, p in enumerate(prompts):
        guided = _GuidedReference(reference, len(p), den.mask_token_id, scale)
        ref, _ = llada_decoders().generate(guided, torch.tensor([p]), steps=8, gen_length=16, block_length=8,
                                           temperature=0.0, remasking="low_confidence", mask_id=den.mask_token_id)
        assert out.sequences[i] == ref[0].tolist()


def test_trust_remote_code_runs_a_config_the_native_backbone_cannot_express(tmp_path):
    """A LLaDA-layout config the Llama mapping cannot express: without trust_remote_code the one-line error says
    how to run the checkpoint's own code; with it, that code runs, with one warning saying why (issue 26, item 2)."""
    import warnings

    from emdm_core.errors import CheckpointError
    from emdm_sampling import generate, load_denoiser

    path, _reference, tok = oracle_checkpoint("llada", tmp_path / "llada")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "scale_logits": True}))
    with pytest.raises(CheckpointError, match="pass adapter=remote trust_remote_code=True") as err:
        load_denoiser(path)
    assert "\n" not in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        den = load_denoiser(path, trust_remote_code=True)
    why = [str(w.message) for w in caught if "checkpoint's own code" in str(w.message)]
    assert len(why) == 1 and "scale_logits=True" in why[0]
    assert den.name == "remote"
    prompt = tok("the cat", add_special_tokens=False)["input_ids"]
    assert len(generate(den, [prompt], sampler="margin", steps=4, gen_length=4).generated) == 1
