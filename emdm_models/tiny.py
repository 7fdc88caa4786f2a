"""Tiny locally built checkpoints: a trained tokenizer plus a small random model, saved with `save_pretrained`.

They need no download, so tests, the README demo and CI run offline. Families:
- `bert`, `modernbert`: stock `AutoModelForMaskedLM`;
- `llada`: LLaDA's own checkpoint layout (config.json `model_type: llada`, `model.transformer.blocks.N...` weights,
  a mask id the tokenizer does not know), which emdm loads onto its Llama backbone;
- `dream`: Dream's layout (`model_type: Dream`, Qwen2 weights, logits shifted by one position);
- `sdar`: SDAR's layout (`model_type: sdar`, Qwen3 weights, block-causal attention over blocks of 4);
- `a2d`: a dLLM A2D checkpoint (`model_type: a2d-qwen3`);
- `remote`: a checkpoint that ships its own model code (`auto_map`, a BERT behind a custom class), for
  `adapter=remote` and `trust_remote_code`;
- `diffusion_gemma` (uniform-state, not in `FAMILIES`, which are the masked ones): transformers'
  `DiffusionGemmaForBlockDiffusion` with two experts, a one-layer vision tower and canvases of 8 tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

DEMO_CORPUS = [
    "the cat sleeps on the warm mat .",
    "the dog runs in the green park .",
    "a bird sings in the tall tree .",
    "the child reads a small red book .",
    "my friend drinks hot tea every morning .",
    "the sun rises over the quiet sea .",
    "we walk to the old market on sunday .",
    "she writes a long letter to her mother .",
    "the river flows past the little town .",
    "he plays the piano in the evening .",
    "the capital of france is paris .",
    "the capital of italy is rome .",
    "one two three four five six seven eight nine ten .",
]

FAMILIES = ("bert", "modernbert", "llada", "dream", "sdar", "a2d", "remote")  # masked diffusion
UNIFORM_FAMILIES = ("diffusion_gemma",)  # uniform-state diffusion


def train_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 256, with_mask: bool = True):
    """The demo WordPiece tokenizer (trained on `corpus`, default `DEMO_CORPUS`), with or without a [MASK]."""
    from .tokenizers import WORDPIECE_SPECIALS, train_tokenizer as train

    specials = {k: v for k, v in WORDPIECE_SPECIALS.items() if with_mask or k != "mask_token"}
    return train(list(corpus or DEMO_CORPUS), vocab_size=vocab_size, kind="wordpiece", specials=specials)


def build_tiny_checkpoint(
    path: str | Path,
    family: str = "bert",
    corpus: Iterable[str] | None = None,
    hidden_size: int = 32,
    num_layers: int = 2,
    max_length: int = 128,
    seed: int = 0,
) -> Path:
    """Save a tiny randomly initialised checkpoint of `family` (one of FAMILIES) to `path` and return it."""
    import torch

    if family not in FAMILIES + UNIFORM_FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES + UNIFORM_FAMILIES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(corpus, with_mask=family not in ("llada", "remote", "diffusion_gemma"))
    vocab = len(tokenizer)
    # A wide initialisation keeps the random model's predictions distinct across positions (no near-ties).
    common = dict(hidden_size=hidden_size, num_attention_heads=2, intermediate_size=hidden_size * 2,
                  max_position_embeddings=max_length, initializer_range=0.3)
    if family == "bert":
        from transformers import BertConfig, BertForMaskedLM

        cfg = BertConfig(vocab_size=vocab, num_hidden_layers=num_layers, pad_token_id=tokenizer.pad_token_id, **common)
        BertForMaskedLM(cfg).save_pretrained(path)
    elif family == "modernbert":
        from transformers import ModernBertConfig, ModernBertForMaskedLM

        cfg = ModernBertConfig(vocab_size=vocab, num_hidden_layers=num_layers, pad_token_id=tokenizer.pad_token_id,
                               mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
                               bos_token_id=tokenizer.cls_token_id, cls_token_id=tokenizer.cls_token_id,
                               sep_token_id=tokenizer.sep_token_id, global_attn_every_n_layers=1,
                               local_attention=max_length, **common)
        ModernBertForMaskedLM(cfg).save_pretrained(path)
    elif family == "remote":
        _write_remote_model(path, vocab, tokenizer, num_layers, common)
    elif family == "diffusion_gemma":
        diffusion_gemma_model(vocab, tokenizer, hidden_size, num_layers, max_length).save_pretrained(path)
    else:
        _write_backbone_model(path, family, vocab, tokenizer, hidden_size, num_layers, max_length)
    tokenizer.save_pretrained(path)
    return path


# --- backbone families in their own checkpoint layouts ---------------------------------------------------------

# emdm's Llama names -> LLaDA's (the inverse of emdm_models.families.llada's key mapping)
_TO_LLADA = [("model.embed_tokens.", "model.transformer.wte."), ("model.norm.", "model.transformer.ln_f."),
             ("lm_head.", "model.transformer.ff_out."), ("model.layers.", "model.transformer.blocks."),
             (".input_layernorm.", ".attn_norm."), (".post_attention_layernorm.", ".ff_norm."),
             (".self_attn.o_proj.", ".attn_out."), (".self_attn.", "."), (".mlp.gate_proj.", ".ff_proj."),
             (".mlp.up_proj.", ".up_proj."), (".mlp.down_proj.", ".ff_out.")]


def _write_backbone_model(path: Path, family: str, vocab: int, tokenizer, hidden_size: int, num_layers: int,
                          max_length: int) -> None:
    from safetensors.torch import save_file

    from .backbones import DiffusionLlamaConfig, DiffusionQwen2Config, DiffusionQwen3Config
    from .families import BackboneDenoiser

    extra = 8 if family == "llada" else 0  # LLaDA's mask id lies past its tokenizer's vocabulary (126336)
    mask_id = vocab + 4 if family == "llada" else tokenizer.mask_token_id
    common = dict(vocab_size=vocab + extra, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=max_length, rms_norm_eps=1e-5, initializer_range=0.3,
                  tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id, mask_token_id=mask_id,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config_class = {"llada": DiffusionLlamaConfig, "dream": DiffusionQwen2Config, "sdar": DiffusionQwen3Config,
                    "a2d": DiffusionQwen3Config}[family]
    extras = {"head_dim": hidden_size // 4} if config_class is DiffusionQwen3Config else {}
    if family == "sdar":
        extras.update(attention="block_causal", block_size=4)
    config = config_class(**common, **extras)
    model = BackboneDenoiser.lm_class(config)(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    raw = {k: v for k, v in config.to_dict().items() if k in common}
    raw.update(rope_theta=10000.0, torch_dtype="float32")
    if family == "llada":
        for old, new in _TO_LLADA:
            state = {k.replace(old, new, 1): v for k, v in state.items()}
        raw = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": hidden_size, "n_heads": 4,
               "n_kv_heads": 2, "n_layers": num_layers, "mlp_hidden_size": hidden_size * 2, "mlp_ratio": 4,
               "activation_type": "silu", "block_type": "llama", "rope": True, "rope_theta": 10000.0,
               "layer_norm_type": "rms", "rms_norm_eps": 1e-5, "max_sequence_length": max_length,
               "include_bias": False, "include_qkv_bias": False, "weight_tying": False, "vocab_size": vocab + extra,
               "embedding_size": vocab + extra, "mask_token_id": mask_id, "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": tokenizer.eos_token_id, "alibi": False, "scale_logits": False}
    elif family == "dream":
        raw.update(model_type="Dream", architectures=["DreamModel"], hidden_act="silu")
    elif family == "sdar":
        raw.update(model_type="sdar", architectures=["SDARForCausalLM"], hidden_act="silu", block_size=4,
                   head_dim=hidden_size // 4)
    else:
        raw.update(model_type="a2d-qwen3", architectures=["A2DQwen3LMHeadModel"], hidden_act="silu",
                   head_dim=hidden_size // 4)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(raw, indent=2))


def diffusion_gemma_model(vocab: int, tokenizer, hidden_size: int, num_layers: int, max_length: int, *,
                          heads: int = 2, experts: int = 2, top_k: int = 1, canvas_length: int = 8,
                          sliding_window: int | None = None, initializer_range: float | None = 0.3):
    """A random DiffusionGemmaForBlockDiffusion (sliding attention layers then a full one, `experts` experts, a
    one-layer vision tower; image tokens point at [UNK]): the tiny test checkpoint, and the benchmark's larger one."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    text = dict(vocab_size=vocab, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
                num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                head_dim=hidden_size // heads, global_head_dim=hidden_size // heads,
                sliding_window=sliding_window or max_length, max_position_embeddings=max_length,
                layer_types=["sliding_attention"] * (num_layers - 1) + ["full_attention"],
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.cls_token_id, num_experts=experts, top_k_experts=top_k,
                moe_intermediate_size=hidden_size // 2)
    if initializer_range is not None:
        text["initializer_range"] = initializer_range
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    special = tokenizer.unk_token_id  # no image tokens in the tests: point them at [UNK]
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=canvas_length,
                                  boi_token_id=special, eoi_token_id=special, image_token_id=special)
    return DiffusionGemmaForBlockDiffusion(config)


# --- a remote-code stand-in -----------------------------------------------------------------------------------

_REMOTE_CODE = '''
"""Tiny stand-in for a checkpoint with its own model code: a BERT encoder behind a custom class (tests only)."""
import torch
from transformers import BertConfig, BertModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class RemoteDemoConfig(PretrainedConfig):
    model_type = "emdm_remote_demo"

    def __init__(self, vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, max_position_embeddings=128, mask_token_id=None, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.mask_token_id = mask_token_id
        super().__init__(**kwargs)


class RemoteDemoModel(PreTrainedModel):
    config_class = RemoteDemoConfig
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        bert_cfg = BertConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                              num_hidden_layers=config.num_hidden_layers,
                              num_attention_heads=config.num_attention_heads,
                              intermediate_size=config.intermediate_size,
                              max_position_embeddings=config.max_position_embeddings,
                              initializer_range=getattr(config, "initializer_range", 0.02))
        self.encoder = BertModel(bert_cfg, add_pooling_layer=False)
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        position_ids = None
        if attention_mask is not None:
            # Stand-in for rotary positions: left padding must not change the output.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids).last_hidden_state
        return MaskedLMOutput(logits=self.lm_head(hidden))
'''


def _write_remote_model(path: Path, vocab: int, tokenizer, num_layers: int, common: dict) -> None:
    import importlib.util
    import sys

    (path / "modeling_remote_demo.py").write_text(_REMOTE_CODE)
    spec = importlib.util.spec_from_file_location("_emdm_tiny_remote", path / "modeling_remote_demo.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    # the mask id lies past the tokenizer's vocabulary and is given by the config, as LLaDA's is
    config = mod.RemoteDemoConfig(vocab_size=vocab + 8, num_hidden_layers=num_layers, mask_token_id=vocab + 4,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **common)
    mod.RemoteDemoModel(config).save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "emdm_remote_demo"
    cfg["architectures"] = ["RemoteDemoModel"]
    cfg["auto_map"] = {"AutoConfig": "modeling_remote_demo.RemoteDemoConfig",
                       "AutoModel": "modeling_remote_demo.RemoteDemoModel"}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
