"""Model and tokenizer construction for training: any `AutoModelForMaskedLM` checkpoint, hub id, or config
(random initialisation), plus LLaDA/Dream-style remote-code checkpoints (`AutoModel`, logits aligned here).

`load_model` is the single place that builds the network; emdm's own architectures (registered with the Auto
classes in `emdm_sampling/architectures/`) are imported first, so a config of such a model works as `--model`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import TrainError, first_line

logger = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


def register_architectures() -> None:
    """Import `emdm_sampling.architectures` (when present) so that the Auto classes know emdm's own models."""
    if importlib.util.find_spec("emdm_sampling.architectures") is not None:
        importlib.import_module("emdm_sampling.architectures")


def has_weights(path: str | os.PathLike) -> bool:
    """Whether a local directory holds model weights (else it is a config-only directory)."""
    return any((Path(path) / f).exists() for f in _WEIGHT_FILES)


def load_tokenizer(name: str, trust_remote_code: bool = False) -> Any:
    """`AutoTokenizer.from_pretrained` with a one-line error."""
    from transformers import AutoTokenizer

    path = os.path.expanduser(name)
    if _is_local(name) and not os.path.exists(path):
        raise TrainError(f"tokenizer path {name} does not exist; pass --tokenizer DIR (a directory written by "
                         f"save_pretrained)")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise TrainError(f"cannot load a tokenizer from {name}: {first_line(exc)}; pass --tokenizer DIR") from None


def load_config(name: str, trust_remote_code: bool = False, overrides: str | None = None) -> tuple[Any, bool]:
    """(config, pretrained): the model config (with `overrides` "k=v,k2=v2" applied), and whether `name` has
    weights to load (else random init)."""
    config, pretrained = _load_config(name, trust_remote_code)
    if overrides:
        try:
            config.update_from_string(overrides)
        except (ValueError, AttributeError) as exc:
            raise TrainError(f"--config-overrides {overrides!r}: {first_line(exc)}; give key=value pairs of "
                             f"existing config fields, separated by commas") from None
    return config, pretrained


def _load_config(name: str, trust_remote_code: bool) -> tuple[Any, bool]:
    from transformers import AutoConfig

    register_architectures()
    path = os.path.expanduser(name)
    try:
        if os.path.isfile(path):  # a bare config .json file
            data = json.loads(Path(path).read_text())
            model_type = data.pop("model_type", None)
            if not model_type:
                raise TrainError(f"{name} has no model_type; give a config.json written by save_pretrained")
            return AutoConfig.for_model(model_type, **data), False
        if os.path.isdir(path):
            if not (Path(path) / "config.json").exists():
                raise TrainError(f"{name} has no config.json; pass --model <a checkpoint or config directory>")
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code), has_weights(path)
        if _is_local(name):
            raise TrainError(f"model path {name} does not exist; pass --model <a checkpoint directory, a config "
                             f"directory/.json, or a hub id>")
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code), True
    except TrainError:
        raise
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise TrainError(f"{name} ships its own model code; pass --trust-remote-code if you trust it") from None
        raise TrainError(f"cannot read the model config {name}: {first_line(exc)}") from None
    except OSError as exc:
        raise TrainError(f"cannot load {name}: {first_line(exc)} (offline? give a local directory)") from None


def _is_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(os.path.expanduser(name))


def _auto_classes(config: Any) -> list[Any]:
    from transformers import AutoModel, AutoModelForMaskedLM

    auto_map = getattr(config, "auto_map", None) or {}
    if auto_map and "AutoModelForMaskedLM" not in auto_map and "AutoModel" in auto_map:
        return [AutoModel]  # LLaDA/Dream style: the base class already has the LM head
    return [AutoModelForMaskedLM]


def load_model(name: str, config: Any, pretrained: bool, trust_remote_code: bool = False,
               vocab_size: int | None = None) -> torch.nn.Module:
    """Build the network: `from_pretrained` when `pretrained`, else random init from `config` (growing the
    vocabulary to `vocab_size` when the config's is smaller)."""
    cls = _auto_classes(config)[0]
    try:
        if pretrained:
            model = cls.from_pretrained(os.path.expanduser(name), config=config,
                                        trust_remote_code=trust_remote_code, dtype=torch.float32)
        else:
            if vocab_size and getattr(config, "vocab_size", vocab_size) < vocab_size:
                logger.warning("config vocab_size %s < tokenizer size %s: using %s", config.vocab_size, vocab_size,
                               vocab_size)
                config.vocab_size = vocab_size
            model = cls.from_config(config, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise TrainError(f"{name} ({getattr(config, 'model_type', '?')}) has no masked-LM head registered with "
                             f"AutoModelForMaskedLM; give a masked LM (BERT/RoBERTa/ModernBERT/emdm architectures) "
                             f"or a LLaDA/Dream-style checkpoint") from None
        raise TrainError(f"cannot build the model from {name}: {first_line(exc)}") from None
    except OSError as exc:
        raise TrainError(f"cannot load the weights of {name}: {first_line(exc)}") from None
    if not hasattr(model, "config"):
        raise TrainError(f"{name} did not build a transformers model")
    return model


def resolve_mask_token(tokenizer: Any, config: Any, requested: int | None, name: str) -> int:
    """The mask id: --mask-token-id, else what the checkpoint's adapter finds (tokenizer or config; LLaDA: 126336)."""
    from emdm_sampling.adapters import adapter_for, mask_token_problem

    mask_id = requested if requested is not None else adapter_for(config).default_mask_token_id(config, tokenizer)
    problem = mask_token_problem(mask_id, config)
    if problem:
        fix = ("--mask-token-id ID or --add-mask-token" if mask_id is None
               else "--mask-token-id with the id the model was trained with")
        raise TrainError(f"model {name}: {problem}; pass {fix}")
    return int(mask_id)


def add_mask_token(tokenizer: Any, model: torch.nn.Module) -> None:
    """Give a tokenizer without a mask token a `[MASK]` special token and grow the model's embeddings to match."""
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    emb = model.get_input_embeddings()
    if emb is not None and emb.weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))


def logits_function(model: torch.nn.Module, config: Any) -> Callable[[torch.nn.Module, torch.Tensor, torch.Tensor],
                                                                     torch.Tensor]:
    """(model, input_ids, attention_mask) -> logits [B, L, V] with logits[:, i] predicting token i: the adapter's."""
    from emdm_sampling.adapters import adapter_for

    return adapter_for(config).forward_logits


def model_vocab_size(model: torch.nn.Module, tokenizer: Any) -> int:
    """Size of the output vocabulary (at least the tokenizer's)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    size = int(out.weight.shape[0]) if out is not None and hasattr(out, "weight") else int(model.config.vocab_size)
    return max(size, len(tokenizer))
