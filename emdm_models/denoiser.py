"""The `Denoiser` interface every model family implements, and the registry of families (adapters).

A denoiser turns token ids + an attention mask into logits over the vocabulary at every position, aligned so that
`logits[:, i]` predicts the token at position i, and carries the ids the sampler needs (mask, EOS, pad) and the
maximum length. A family (adapter) is a `Denoiser` subclass registered with `@register_adapter`: it says which
checkpoints it matches, how to build or load their network, where their mask id lives and how to align their
logits. Inference (`load_denoiser`) and training (`emdm_train`) both go through it.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from emdm_core.contract import ModelContract
from emdm_core.errors import CheckpointError
from emdm_core.registry import Registry


class Denoiser:
    """A masked-diffusion model behind a uniform interface (see the module docstring)."""

    name = "base"
    uses_absolute_positions = True  # rotary models (LLaDA, Dream) are unaffected by a constant position shift
    needs_remote_code = False  # whether the family's own model code (auto_map) must be trusted
    # LoRA's default target modules for this family (emdm_train --lora): PEFT's "all-linear" (every linear layer
    # but the output head) unless the family names its projections
    lora_target_modules: str | tuple[str, ...] = "all-linear"
    # the diffusion's noise: "mask" (masked diffusion) or "uniform" (uniform-state: Duo, DiffusionGemma), whose
    # noise tokens are drawn from `noise_vocabulary` ([K] ids; None: the whole output vocabulary); a checkpoint's
    # noise.json sets them on the loaded model
    noise = "mask"
    noise_vocabulary: torch.Tensor | None = None
    training_problem: str | None = None  # why emdm_train cannot train this family (None: it can)
    trained_options: dict[str, dict[str, Any]] = {}  # set by load_denoiser from the checkpoint's training recipe
    recipe_dirs: tuple[str, ...] = ()  # where its emdm_train recipe may be (a LoRA adapter's folder, then the base)

    @property
    def contract(self) -> ModelContract:
        """What this model declares to the decoding loop (see `emdm_core.contract.ModelContract`); a family with
        more capabilities (KV caches, block-causal attention, its own forward) extends its parent's."""
        return ModelContract(family=self.name, noise=self.noise, noise_vocabulary=self.noise_vocabulary,
                             sampler_defaults=self.sampler_defaults(), eot_token_id=self.eot_token_id,
                             surprise_table=self.surprise is not None, trained_options=dict(self.trained_options))

    @property
    def eot_token_id(self) -> int | None:
        """The tokenizer's end-of-turn token (LLaDA's <|eot_id|>), if it has one."""
        tok = self.tokenizer
        if tok is None or not hasattr(tok, "convert_tokens_to_ids"):
            return None
        tid = tok.convert_tokens_to_ids("<|eot_id|>")
        return None if tid is None or tid == getattr(tok, "unk_token_id", None) else int(tid)

    @property
    def likelihood_problem(self) -> str | None:
        """Why emdm cannot score a continuation's likelihood with this model (None: the masked ELBO applies)."""
        if self.noise == "uniform":
            return ("a uniform-state diffusion model (trained with --noise uniform): emdm's likelihood estimator is "
                    "the masked-diffusion ELBO, which does not hold for it; generation tasks (generate_until) work, "
                    "loglikelihood tasks do not")
        return None

    def sampler_defaults(self) -> dict[str, Any]:
        """The family's own decoding settings (SamplerConfig fields and strategy options), used by lm-eval when
        `--model_args` name no sampler; {} = emdm's defaults."""
        return {}

    def __init__(self, model: torch.nn.Module, tokenizer: Any, mask_token_id: int, eos_token_id: int | None,
                 pad_token_id: int, max_length: int, path: str = "", surprise: torch.Tensor | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.mask_token_id = int(mask_token_id)
        self.eos_token_id = None if eos_token_id is None else int(eos_token_id)
        self.pad_token_id = int(pad_token_id)
        self.max_length = int(max_length)
        self.path = path
        self.surprise = surprise
        self.forward_calls = 0

    # -- the family: which checkpoints, which network ------------------------------------------------------------
    @classmethod
    def matches(cls, config: Any) -> bool:
        """Whether this adapter is the natural choice for a checkpoint with this config."""
        return False

    @classmethod
    def auto_class(cls, config: Any) -> Any:
        """The transformers Auto class that builds this family's network."""
        from transformers import AutoModelForMaskedLM

        return AutoModelForMaskedLM

    @classmethod
    def load_model(cls, path: str, config: Any, dtype: torch.dtype, trust_remote_code: bool,
                   **load_kwargs: Any) -> torch.nn.Module:
        """Load the network with its weights (`load_kwargs`: more `from_pretrained` arguments, e.g. a
        `quantization_config`)."""
        return cls.auto_class(config).from_pretrained(path, config=config, dtype=dtype,
                                                      trust_remote_code=trust_remote_code, **load_kwargs)

    @classmethod
    def build_model(cls, config: Any, trust_remote_code: bool) -> torch.nn.Module:
        """A randomly initialised network from `config` (training from scratch)."""
        return cls.auto_class(config).from_config(config, trust_remote_code=trust_remote_code)

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        """The mask id when the user gives none: the tokenizer's, else `config.mask_token_id`."""
        tok_id = getattr(tokenizer, "mask_token_id", None)
        return tok_id if tok_id is not None else getattr(config, "mask_token_id", None)

    # -- inference ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return output_vocab_size(self.model)

    @classmethod
    def forward_logits(cls, model: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        """The network's logits aligned so that `[:, i]` predicts token i (with autograd: the trainer uses it)."""
        kwargs: dict[str, torch.Tensor] = {"attention_mask": attention_mask}
        if cls.uses_absolute_positions and "position_ids" in inspect.signature(model.forward).parameters:
            # Left padding must not shift absolute positions: count positions from each row's first real token.
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return model(input_ids=input_ids, **kwargs).logits

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L, V] (float32) where `logits[:, i]` predicts the token at position i."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self.forward_calls += 1
        return self.forward_logits(self.model, input_ids.to(self.device), attention_mask.to(self.device)).float()

    def guided_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt: torch.Tensor,
                      scale: float) -> torch.Tensor:
        """Classifier-free guidance (LLaDA's cfg_scale s): u + (s + 1)(c - u), with c the logits of `input_ids` and
        u those of the same rows with the `prompt` positions [B, L] masked, both in one batched pass."""
        unconditional = input_ids.masked_fill(prompt, self.mask_token_id)
        both = self.logits(torch.cat([input_ids, unconditional]), torch.cat([attention_mask, attention_mask]))
        conditional, uncond = both.chunk(2)
        return uncond + (scale + 1) * (conditional - uncond)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={self.path!r}, mask_token_id={self.mask_token_id}, "
                f"eos_token_id={self.eos_token_id}, max_length={self.max_length})")


ADAPTERS: Registry[type[Denoiser]] = Registry("adapter", base=Denoiser)
register_adapter = ADAPTERS.register


def available_adapters() -> list[str]:
    """Names of the registered adapters."""
    return ADAPTERS.available()


def adapter_for(config: Any, adapter: str | None = None) -> type[Denoiser]:
    """The adapter class for a checkpoint config: `adapter` if given, else the registered one that matches (later
    registrations are tried first), else `masked_lm`."""
    if adapter is not None:
        return ADAPTERS.get(adapter)
    for _name, cls in reversed(ADAPTERS.items()):
        if cls.matches(config):
            return cls
    return ADAPTERS.get("masked_lm")


def output_vocab_size(model: torch.nn.Module) -> int:
    """Rows of the network's output layer (the config's vocab_size when it has none)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and hasattr(out, "weight"):
        return int(out.weight.shape[0])
    return int(model.config.vocab_size)


# Families whose position ids start after the padding id (RoBERTa's `create_position_ids_from_input_ids`): their
# `max_position_embeddings` counts pad_token_id + 1 positions no token can use (514 -> 512 for roberta-base).
PADDING_OFFSET_POSITIONS = frozenset({"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm",
                                      "data2vec-text", "longformer", "ibert", "mpnet", "xmod"})


def config_max_length(config: Any) -> int | None:
    """The longest sequence a config allows (the first positive of the usual field names; for RoBERTa-style
    position ids, less the padding offset), or None."""
    for name in ("max_position_embeddings", "max_sequence_length", "n_positions", "max_seq_len"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            pad = getattr(config, "pad_token_id", None)
            if name == "max_position_embeddings" and getattr(config, "model_type", None) in PADDING_OFFSET_POSITIONS \
                    and isinstance(pad, int):
                value -= pad + 1
            return value
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return None if text is config else config_max_length(text)  # composite configs (DiffusionGemma's text part)


def mask_token_problem(mask_id: int | None, config: Any) -> str | None:
    """Why `mask_id` cannot serve as the mask token of a model with this config, or None when it can."""
    if mask_id is None:
        return "no mask token (its tokenizer defines no mask_token and its config no mask_token_id)"
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab and not 0 <= int(mask_id) < vocab:
        return f"mask token id {mask_id} is outside the model's vocabulary (size {vocab})"
    return None


def no_mask_head_error(path: str, config: Any) -> CheckpointError:
    """The one-line error for a checkpoint that has no masked-LM head."""
    return CheckpointError(
        f"{path} is a {getattr(config, 'model_type', '?')!r} checkpoint with no masked-LM head; emdm needs a masked "
        f"LM (BERT/RoBERTa/ModernBERT), a LLaDA- or Dream-style checkpoint, or adapter=<one of "
        f"{', '.join(available_adapters())}>")
