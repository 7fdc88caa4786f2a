"""emdm's transformers backbones and KV caches, self-contained (no reference code needed): block-causal models
decode the same with and without their exact cache, cached decoding is batch-invariant, `cache=none` is exactly the
decoding of the version before caches existed, and checkpoints emdm cannot map fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from emdm_core.errors import CheckpointError, ConfigError
from emdm_models.denoiser import Denoiser
from emdm_sampling import generate, get_sampler, load_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the cat sleeps on the", "the capital of france is", "one two", "we walk to the old market on"]
SAMPLERS = ["vanilla", "top_prob", "margin", "entropy", "low_confidence_remask", "eags", "remdm", "margin+topk_remask"]
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def dens(tiny_checkpoints):
    return {fam: load_denoiser(tiny_checkpoints[fam]) for fam in ("llada", "dream", "sdar", "a2d")}


def _sampler(name: str) -> dict:
    """`margin+topk_remask`: the margin score under Ye et al.'s re-masking decoder."""
    sampler, _, decoder = name.partition("+")
    return {"sampler": sampler, **({"topk_remask": "linear", "order_noise": 0.5} if decoder else {})}


def _threshold(name: str, value: float) -> float | None:
    """`value`, for the strategies that read a threshold (the others refuse one)."""
    return value if "threshold" in get_sampler(_sampler(name)["sampler"]).honours and "+" not in name else None


def _prompts(den):
    return [den.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("threshold", [None, 0.5])
def test_block_causal_cached_decoding_equals_uncached(dens, sampler, threshold):
    if threshold is not None and _threshold(sampler, threshold) is None:
        pytest.skip(f"{sampler} refuses a threshold (it sets its own counts)")
    den = dens["sdar"]
    assert den.block_size == 4
    kw = dict(**_sampler(sampler), steps=12, gen_length=12, threshold=threshold, stop_at_eos=False, temperature=0.7)
    cached = generate(den, _prompts(den), seeds=[1, 2, 3, 4], **kw)  # cache=auto: exact for a block-causal model
    uncached = generate(den, _prompts(den), seeds=[1, 2, 3, 4], cache="none", **kw)
    assert cached.sequences == uncached.sequences
    assert cached.nfe == uncached.nfe and cached.nfe_partial > 0 and uncached.nfe_partial == 0


def test_block_causal_attention_hides_later_blocks(dens):
    den = dens["sdar"]
    ids = torch.tensor([_prompts(den)[3]])  # 7 tokens: blocks [0..3], [4..6]
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 50
    a, b = den.logits(ids), den.logits(changed)
    assert torch.allclose(a[0, :4], b[0, :4]) and not torch.allclose(a[0, 4:], b[0, 4:])


@pytest.mark.parametrize("family, cache", [("llada", "prefix"), ("llada", "dual"), ("dream", "prefix"),
                                           ("dream", "dual"), ("a2d", "dual"), ("sdar", "exact")])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cached_decoding_is_batch_invariant(dens, family, cache, sampler):
    den = dens[family]
    kw = dict(**_sampler(sampler), steps=12, gen_length=12, block_length=4, cache=cache, stop_at_eos=False,
              temperature=0.7, threshold=_threshold(sampler, 0.5))
    prompts = _prompts(den)
    batch = generate(den, prompts, seeds=[1, 2, 3, 4], **kw)
    assert [generate(den, [p], seeds=[s], **kw).sequences[0] for p, s in zip(prompts, [1, 2, 3, 4])] == \
        batch.sequences
    assert batch.nfe_full >= 1 and batch.nfe_partial >= 1


def test_prefix_and_dual_caches_compute_less(dens):
    den = dens["llada"]
    prompts = _prompts(den)
    outs = {c: generate(den, prompts, sampler="low_confidence_remask", steps=16, gen_length=16, block_length=4,
                        cache=c, stop_at_eos=False) for c in ("none", "prefix", "dual")}
    assert outs["none"].nfe == outs["prefix"].nfe == outs["dual"].nfe == 16
    assert (outs["prefix"].nfe_full, outs["prefix"].nfe_partial) == (4, 12)
    assert (outs["none"].nfe_full, outs["none"].nfe_partial) == (16, 0)


class Fake(Denoiser):
    """Deterministic logits from a random table indexed by (position, token) plus a term of the whole row."""

    def __init__(self):
        super().__init__(torch.nn.Linear(1, 1), tokenizer=None, mask_token_id=15, eos_token_id=14, pad_token_id=0,
                         max_length=64)
        g = torch.Generator().manual_seed(7)
        self.table = torch.randn(64, 16, 16, generator=g) * 3
        self.mix = torch.randn(16, 16, generator=g)

    @property
    def vocab_size(self):
        return 16

    def logits(self, input_ids, attention_mask=None):
        self.forward_calls += 1
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rel = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return (self.table[rel, input_ids] + self.mix[input_ids].mean(1, keepdim=True)).float()


def test_cache_none_decodes_exactly_as_before_caches_existed():
    """tests/data/golden_fake_generations.json: every built-in strategy, recorded with emdm before the KV cache
    (commit 26beff9), on a deterministic context-dependent fake model: the same tokens and passes."""
    golden = json.loads((DATA / "golden_fake_generations.json").read_text())
    variants = {"plain": dict(steps=8, gen_length=8),
                "blocks_t1": dict(steps=6, gen_length=12, block_length=4, temperature=1.0),
                "threshold": dict(steps=8, gen_length=8, threshold=0.4),
                "cosine": dict(steps=6, gen_length=10, block_length=5, schedule="cosine"),
                "eos": dict(steps=8, gen_length=8, stop_at_eos=True)}
    den = Fake()
    den.surprise = torch.linspace(0, 9, 16)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [2, 15, 15, 3]]
    assert len(golden) == 40
    for key, expected in golden.items():
        sampler, variant = key.split("/")
        # the output ends at the first EOS (14) whatever the EOS mode (it did only with stop_at_eos before)
        expected = {**expected, "generated": [g[: g.index(14)] if 14 in g else g for g in expected["generated"]]}
        options = {"stop_at_eos": False, **variants[variant]}
        ignored = [k for k in ("threshold", "schedule") if k in options and k not in get_sampler(sampler).honours]
        if ignored:  # a setting the strategy never read (the golden output equals its plain decoding): refused
            with pytest.raises(ConfigError, match=f"does not use {ignored[0]}"):
                generate(den, prompts, sampler=sampler, seeds=[3, 4, 5, 6], cache="none", **options)
            if variant == "threshold":  # same steps and length as `plain`: the golden output shows it was ignored
                assert expected["sequences"] == golden[f"{sampler}/plain"]["sequences"]
            continue
        out = generate(den, prompts, sampler=sampler, seeds=[3, 4, 5, 6], cache="none", **options)
        assert {"sequences": out.sequences, "generated": out.generated, "nfe": out.nfe,
                "row_nfe": out.row_nfe} == expected, key


def test_cache_needs_a_family_with_one(tiny_checkpoints):
    den = load_denoiser(tiny_checkpoints["bert"])
    with pytest.raises(ConfigError, match=r"cache=dual needs a model family with a KV cache .*use cache=none"):
        generate(den, [[5, 6]], sampler="margin", steps=2, gen_length=2, cache="dual")
    with pytest.raises(ConfigError, match="cache=exact needs a block-causal model"):
        generate(load_denoiser(tiny_checkpoints["llada"]), [[5, 6]], steps=2, gen_length=2, cache="exact")


def test_a_checkpoint_emdm_cannot_map_names_the_adapter_to_use(tiny_checkpoints, tmp_path):
    cfg = json.loads((Path(tiny_checkpoints["llada"]) / "config.json").read_text())
    for key, value in (("block_type", "sequential"), ("alibi", True), ("scale_logits", True)):
        bad = tmp_path / key
        bad.mkdir()
        (bad / "config.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(CheckpointError) as info:
            load_denoiser(bad)
        msg = str(info.value)
        assert "\n" not in msg and "cannot map" in msg and "adapter=remote trust_remote_code=True" in msg
    missing = tmp_path / "missing-weights"
    missing.mkdir()
    (missing / "config.json").write_text(json.dumps(cfg))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (missing / name).write_bytes((Path(tiny_checkpoints["llada"]) / name).read_bytes())
    (missing / "model.safetensors").write_bytes((Path(tiny_checkpoints["dream"]) / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="do not (match|fit)"):
        load_denoiser(missing)


def test_an_ar_checkpoint_becomes_a_diffusion_lm_with_adapter_a2d(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from emdm_models.tiny import train_tokenizer

    tok = train_tokenizer()
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                 max_position_embeddings=64)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    den = load_denoiser(tmp_path, adapter="a2d")
    assert type(den).__name__ == "A2DDenoiser" and den.mask_token_id == tok.mask_token_id
    ids = torch.tensor([[5, 6, 7, 8]])
    changed = ids.clone()
    changed[0, 3] = 9
    assert not torch.allclose(den.logits(ids)[0, 0], den.logits(changed)[0, 0])  # it looks ahead: bidirectional
    out = generate(den, [[5, 6]], sampler="margin", steps=4, gen_length=4, cache="dual", block_length=2)
    assert len(out.generated[0]) == 4


def test_remote_code_runs_only_with_consent(tiny_checkpoints):
    with pytest.raises(CheckpointError, match="trust_remote_code=True"):
        load_denoiser(tiny_checkpoints["remote"])
    den = load_denoiser(tiny_checkpoints["remote"], trust_remote_code=True)
    assert type(den).__name__ == "RemoteDenoiser" and den.mask_token_id >= len(den.tokenizer)
    assert generate(den, [[5, 6]], sampler="margin", steps=2, gen_length=2).nfe == 2


def test_backbone_checkpoints_round_trip_in_their_own_layout(dens, tmp_path):
    den = dens["llada"]
    den.model.save_pretrained(tmp_path)
    den.tokenizer.save_pretrained(tmp_path)
    again = load_denoiser(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "emdm_llama"
    ids = torch.tensor([_prompts(den)[0]])
    assert type(again) is type(den) and torch.equal(again.logits(ids), den.logits(ids))
    assert again.mask_token_id == den.mask_token_id
