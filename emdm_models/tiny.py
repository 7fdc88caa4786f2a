"""Tiny locally built checkpoints: a trained tokenizer plus a small random model, saved with `save_pretrained`.

They need no download, so tests, the README demo and CI run offline. Four families are covered:
`bert` and `modernbert` (stock `AutoModelForMaskedLM`), `llada` (remote code, `AutoModel`, a mask id that the
tokenizer does not know) and `dream` (remote code whose logits come out shifted by one position).
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

FAMILIES = ("bert", "modernbert", "llada", "dream")


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

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    remote = family in ("llada", "dream")
    tokenizer = train_tokenizer(corpus, with_mask=not remote or family == "dream")
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
    else:
        _write_remote_model(path, family, vocab, tokenizer, num_layers, common)
    tokenizer.save_pretrained(path)
    return path


# --- remote-code stand-ins ------------------------------------------------------------------------------------

_REMOTE_CODE = '''
"""Tiny stand-in for a {title} checkpoint: a BERT encoder behind {title}'s interface (tests only)."""
import torch
from transformers import BertConfig, BertModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class {cls}Config(PretrainedConfig):
    model_type = "{model_type}"

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


class {cls}Model(PreTrainedModel):
    config_class = {cls}Config
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
        logits = self.lm_head(hidden)
        if {shift}:
            # Dream-style: the prediction for position i comes out at position i - 1.
            logits = torch.cat([logits[:, 1:], logits[:, -1:]], dim=1)
        return MaskedLMOutput(logits=logits)
'''


def _write_remote_model(path: Path, family: str, vocab: int, tokenizer, num_layers: int, common: dict) -> None:
    import importlib.util
    import sys

    title, cls, model_type = ("LLaDA", "LLaDA", "llada") if family == "llada" else ("Dream", "Dream", "Dream")
    if family == "llada":
        vocab_size = vocab + 8  # the mask id lies past the tokenizer's vocabulary, as LLaDA's 126336 does
        mask_id = vocab + 4
    else:
        vocab_size, mask_id = vocab, tokenizer.mask_token_id
    code = _REMOTE_CODE.format(title=title, cls=cls, model_type=model_type, shift=family == "dream")
    module_name = f"modeling_{family}"
    (path / f"{module_name}.py").write_text(code)
    spec = importlib.util.spec_from_file_location(f"_emdm_tiny_{family}", path / f"{module_name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    config = getattr(mod, f"{cls}Config")(vocab_size=vocab_size, num_hidden_layers=num_layers, mask_token_id=mask_id,
                                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                          **common)
    model = getattr(mod, f"{cls}Model")(config)
    model.save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = model_type
    cfg["architectures"] = [f"{cls}ModelLM" if family == "llada" else f"{cls}Model"]
    cfg["auto_map"] = {"AutoConfig": f"{module_name}.{cls}Config", "AutoModel": f"{module_name}.{cls}Model"}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
