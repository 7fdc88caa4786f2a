"""The model behind `emdm:addition`: LLaDA's layout on stock Llama layers (bidirectional), with a character tokenizer.

    python -m studies.addition.model runs/addition-init [--hidden-size 128 --layers 4 --heads 4]

writes a randomly initialised `emdm_llama` checkpoint (the same backbone `pretrained=<LLaDA-8B>` runs on, so
`cache=prefix|dual`, threshold decoding and every strategy apply exactly as there) and its tokenizer; the recipe
`studies/addition/recipes/addition-cpu.yaml` trains it with `emdm_train`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[MASK]", "[EOS]")
CHARACTERS = tuple("0123456789+=")
VOCAB = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}


def build_tokenizer(model_max_length: int = 128):
    """Character-level tokenizer: every digit, `+` and `=` is one token; no special token is added to a text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="[UNK]"))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex("."), behavior="isolated")])
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   eos_token="[EOS]", model_max_length=model_max_length)


def save_init(path: str | Path, hidden_size: int = 128, layers: int = 4, heads: int = 4, max_length: int = 128,
              seed: int = 0) -> Path:
    """Write a randomly initialised LLaDA-layout Llama denoiser and the tokenizer to `path`; return it."""
    import torch

    from emdm_models.backbones import DiffusionLlamaConfig
    from emdm_models.families import BackboneDenoiser

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(max_length)
    config = DiffusionLlamaConfig(
        vocab_size=len(VOCAB), hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_length,
        rms_norm_eps=1e-5, initializer_range=0.02, tie_word_embeddings=False, pad_token_id=VOCAB["[PAD]"],
        eos_token_id=VOCAB["[EOS]"], mask_token_id=VOCAB["[MASK]"], diffusion_family="llada",
        attention="bidirectional", rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = BackboneDenoiser.lm_class(config)(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m studies.addition.model", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="directory to write (config.json, model.safetensors, tokenizer)")
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from emdm_core.progress import library_bars_follow_terminal

    library_bars_follow_terminal()
    out = save_init(args.out, args.hidden_size, args.layers, args.heads, args.max_length, args.seed)
    print(f"wrote a random addition model to {out}")


if __name__ == "__main__":
    main()
