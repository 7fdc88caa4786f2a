"""Training small tokenizers with `tokenizers`, in one place (tiny test checkpoints, the studies' corpora).

Two kinds: `wordpiece` (lower-cased, whitespace pre-tokenised: readable demo and test vocabularies) and `bpe`
(byte-level, lossless, so bits per character are exact). Note that the trainers break frequency ties in a
per-process hash order, so two processes can give slightly different vocabularies for the same texts: save a
tokenizer (as a checkpoint does) when ids must match across runs.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

WORDPIECE_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                      "mask_token": "[MASK]", "eos_token": "[EOS]"}
BPE_SPECIALS = {"pad_token": "[PAD]", "mask_token": "[MASK]", "eos_token": "[EOS]"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 256, kind: str = "wordpiece",
                    specials: Mapping[str, str] | None = None) -> Any:
    """Train a `kind` tokenizer on `texts` and wrap it as a `PreTrainedTokenizerFast` with `specials`
    (role -> token, e.g. {"mask_token": "[MASK]"}; default: all of the kind's roles)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in ("wordpiece", "bpe"):
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose wordpiece or bpe")
    roles = dict(specials if specials is not None else (WORDPIECE_SPECIALS if kind == "wordpiece" else BPE_SPECIALS))
    special_tokens = list(dict.fromkeys(roles.values()))
    texts = list(texts)
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=roles.get("unk_token", "[UNK]")))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                                                 show_progress=False))
        tok.decoder = decoders.WordPiece()
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                           show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
