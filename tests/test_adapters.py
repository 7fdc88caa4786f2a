"""The adapter layer: each family loads through one interface, and unusable checkpoints fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from emdm_sampling import CheckpointError, ConfigError, load_denoiser
from emdm_models.families.masked_lm import MaskedLMDenoiser
from emdm_models.families.dream import DreamDenoiser
from emdm_models.families.llada import LLaDADenoiser
from emdm_models.tiny import build_tiny_checkpoint, train_tokenizer


@pytest.mark.parametrize("family, cls", [("bert", MaskedLMDenoiser), ("modernbert", MaskedLMDenoiser),
                                         ("llada", LLaDADenoiser), ("dream", DreamDenoiser)])
def test_adapter_is_chosen_from_the_config(tiny_checkpoints, family, cls):
    den = load_denoiser(tiny_checkpoints[family], trust_remote_code=True)
    assert type(den) is cls
    ids = torch.tensor([[5, 6, den.mask_token_id, 8]])
    assert den.logits(ids).shape == (1, 4, den.vocab_size)


def test_llada_mask_id_comes_from_the_config_not_the_tokenizer(tiny_checkpoints):
    den = load_denoiser(tiny_checkpoints["llada"], trust_remote_code=True)
    cfg = json.load(open(f"{tiny_checkpoints['llada']}/config.json"))
    assert den.tokenizer.mask_token_id is None
    assert den.mask_token_id == cfg["mask_token_id"] >= len(den.tokenizer)


def test_dream_shift_is_undone(tiny_checkpoints):
    den = load_denoiser(tiny_checkpoints["dream"], trust_remote_code=True)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    raw = den.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits  # prediction for i sits at i-1
    aligned = den.logits(ids)
    assert torch.allclose(aligned[0, 1:], raw[0, :-1])


def test_left_padding_does_not_change_the_logits(tiny_checkpoints):
    den = load_denoiser(tiny_checkpoints["bert"])
    ids = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[0, 0, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    assert torch.allclose(den.logits(padded, mask)[0, 2:], den.logits(ids)[0], atol=1e-5)


def test_adapter_override_and_unknown_adapter(tiny_checkpoints):
    den = load_denoiser(tiny_checkpoints["bert"], adapter="masked_lm")
    assert type(den) is MaskedLMDenoiser
    with pytest.raises(ConfigError, match="registered adapters: .*masked_lm"):
        load_denoiser(tiny_checkpoints["bert"], adapter="nonsense")


def test_missing_directory_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_denoiser(tmp_path / "nope")


def test_remote_code_needs_consent(tiny_checkpoints):
    with pytest.raises(CheckpointError, match="trust_remote_code=True"):
        load_denoiser(tiny_checkpoints["remote"])
    load_denoiser(tiny_checkpoints["llada"])  # LLaDA runs on emdm's Llama backbone: no remote code to trust


def test_checkpoint_without_mask_token_says_so(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    tok = train_tokenizer(with_mask=False)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no mask token.*mask_token_id="):
        load_denoiser(tmp_path)
    assert load_denoiser(tmp_path, mask_token_id=3).mask_token_id == 3


def test_model_without_masked_lm_head_says_so(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = train_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no masked-LM head"):
        load_denoiser(tmp_path)


def test_cuda_request_falls_back_to_cpu(tiny_checkpoints):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.warns(UserWarning, match="CUDA is not available"):
        den = load_denoiser(tiny_checkpoints["bert"], device="cuda:0")
    assert den.device.type == "cpu"


def test_bad_dtype_says_which_exist(tiny_checkpoints):
    with pytest.raises(ConfigError, match="bfloat16"):
        load_denoiser(tiny_checkpoints["bert"], dtype="float8")


def test_out_of_vocab_mask_id_is_rejected(tiny_checkpoints):
    with pytest.raises(CheckpointError, match="outside the model's vocabulary"):
        load_denoiser(tiny_checkpoints["bert"], mask_token_id=10**6)


def test_prompt_longer_than_the_model_says_what_to_do(tmp_path):
    from emdm_sampling import InputTooLongError, generate

    den = load_denoiser(build_tiny_checkpoint(tmp_path / "short", "bert", max_length=16))
    with pytest.raises(InputTooLongError, match="exceeds the model's maximum length 16; shorten"):
        generate(den, [[5] * 10], sampler="margin", steps=4, gen_length=8)


def test_unknown_embedded_checkpoint_lists_the_embedded_ones():
    from emdm_models.loading import available_embedded

    with pytest.raises(CheckpointError, match="no embedded checkpoint 'nope'; embedded checkpoints: "):
        load_denoiser("emdm:nope")
    for name in available_embedded():
        assert load_denoiser(f"emdm:{name}").path.endswith(name)
