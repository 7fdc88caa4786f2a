"""Model adapters: the only model-specific code in emdm.

An adapter turns a checkpoint into a `Denoiser`: token ids + attention mask -> logits over the vocabulary at every
position, aligned so that `logits[:, i]` predicts the token at position i, plus the ids the sampler needs (mask,
EOS, pad) and the maximum length. Adapters are registered and chosen from the checkpoint's config; `adapter=`
overrides the choice.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

LLADA_MASK_TOKEN_ID = 126336  # LLaDA's <|mdm_mask|>; its tokenizer does not expose it as mask_token_id

_ADAPTERS: dict[str, type["Denoiser"]] = {}


def register_adapter(name: str) -> Callable[[type["Denoiser"]], type["Denoiser"]]:
    """Class decorator: register a `Denoiser` subclass under `name` (later registrations are tried first)."""

    def deco(cls: type[Denoiser]) -> type[Denoiser]:
        cls.name = name
        _ADAPTERS[name] = cls
        return cls

    return deco


def available_adapters() -> list[str]:
    """Names of the registered adapters."""
    return sorted(_ADAPTERS)


class Denoiser:
    """A masked-diffusion model behind a uniform interface (see module docstring)."""

    name = "base"

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

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def matches(cls, config: Any) -> bool:
        """Whether this adapter is the natural choice for a checkpoint with this config."""
        return False

    @classmethod
    def load_model(cls, path: str, config: Any, dtype: torch.dtype, trust_remote_code: bool) -> torch.nn.Module:
        """Load the network itself."""
        raise NotImplementedError

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        """The mask id when the user gives none: the tokenizer's, else `config.mask_token_id`."""
        tok_id = getattr(tokenizer, "mask_token_id", None)
        return tok_id if tok_id is not None else getattr(config, "mask_token_id", None)

    uses_absolute_positions = True  # rotary models (LLaDA, Dream) are unaffected by a constant position shift

    # -- inference ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0]) if hasattr(
            self.model, "get_output_embeddings") and self.model.get_output_embeddings() is not None else int(
            self.model.config.vocab_size)

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

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={self.path!r}, mask_token_id={self.mask_token_id}, "
                f"eos_token_id={self.eos_token_id}, max_length={self.max_length})")


@register_adapter("masked_lm")
class MaskedLMDenoiser(Denoiser):
    """Any `transformers` masked LM (BERT, RoBERTa, DistilBERT, ModernBERT, emdm's own architectures)."""

    @classmethod
    def matches(cls, config: Any) -> bool:
        return True

    @classmethod
    def load_model(cls, path: str, config: Any, dtype: torch.dtype, trust_remote_code: bool) -> torch.nn.Module:
        from transformers import AutoModelForMaskedLM

        try:
            return AutoModelForMaskedLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            if "Unrecognized configuration class" in str(exc):
                raise CheckpointError(
                    f"{path} is a {config.model_type!r} checkpoint with no masked-LM head; emdm needs a masked LM "
                    f"(BERT/RoBERTa/ModernBERT), a LLaDA- or Dream-style checkpoint, or adapter=<one of "
                    f"{', '.join(available_adapters())}>") from None
            raise


@register_adapter("llada")
class LLaDADenoiser(Denoiser):
    """LLaDA-style checkpoints: `AutoModel` with remote code; the mask id (126336) is not the tokenizer's."""

    @classmethod
    def matches(cls, config: Any) -> bool:
        arch = " ".join(getattr(config, "architectures", None) or [])
        return getattr(config, "model_type", "").lower() == "llada" or "LLaDA" in arch

    @classmethod
    def load_model(cls, path: str, config: Any, dtype: torch.dtype, trust_remote_code: bool) -> torch.nn.Module:
        from transformers import AutoModel

        return AutoModel.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        cfg_id = getattr(config, "mask_token_id", None)
        return cfg_id if cfg_id is not None else LLADA_MASK_TOKEN_ID

    uses_absolute_positions = False


@register_adapter("dream")
class DreamDenoiser(LLaDADenoiser):
    """Dream-style checkpoints: the prediction for position i comes out at position i-1; undo the shift."""

    @classmethod
    def matches(cls, config: Any) -> bool:
        arch = " ".join(getattr(config, "architectures", None) or [])
        return getattr(config, "model_type", "").lower() == "dream" or "Dream" in arch

    @classmethod
    def default_mask_token_id(cls, config: Any, tokenizer: Any) -> int | None:
        return Denoiser.default_mask_token_id(config, tokenizer)

    @classmethod
    def forward_logits(cls, model: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        logits = super().forward_logits(model, input_ids, attention_mask)
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


# --- loading -------------------------------------------------------------------------------------------------

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device, or the CPU (with a warning) when CUDA is asked for but not available."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"device={device} requested but CUDA is not available; running on the CPU", stacklevel=2)
        return torch.device("cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float32 on CPU, bfloat16 on a GPU, unless `dtype` names one of float32/bfloat16/float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of auto, float32, bfloat16, float16") from None


def _looks_local(path: str) -> bool:
    """True for strings that can only be local paths (a Hub id is `name` or `org/name`)."""
    return path.startswith((".", "/", "~")) or path.count("/") > 1


EMBEDDED_DIR = Path(__file__).resolve().parent / "checkpoints"


def available_embedded() -> list[str]:
    """Names of the checkpoints shipped inside the package (usable as `pretrained=emdm:NAME`)."""
    if not EMBEDDED_DIR.is_dir():
        return []
    return sorted(p.name for p in EMBEDDED_DIR.iterdir() if (p / "config.json").exists())


def resolve_embedded(path: str) -> str:
    """`emdm:NAME` -> the directory of the embedded checkpoint NAME; other strings unchanged."""
    if not path.startswith("emdm:"):
        return path
    name = path[len("emdm:"):]
    if name not in available_embedded():
        raise CheckpointError(f"no embedded checkpoint {name!r}; embedded checkpoints: "
                              f"{', '.join(available_embedded()) or 'none'}")
    return str(EMBEDDED_DIR / name)


def adapter_for(config: Any, adapter: str | None = None) -> type[Denoiser]:
    """The adapter class for a checkpoint config: `adapter` if given, else the registered one that matches."""
    if adapter is not None:
        if adapter not in _ADAPTERS:
            raise ConfigError(f"unknown adapter {adapter!r}; registered adapters: {', '.join(available_adapters())}")
        return _ADAPTERS[adapter]
    for cls in reversed(list(_ADAPTERS.values())):
        if cls.matches(config):
            return cls
    return MaskedLMDenoiser


def mask_token_problem(mask_id: int | None, config: Any) -> str | None:
    """Why `mask_id` cannot serve as the mask token of a model with this config, or None when it can."""
    if mask_id is None:
        return "no mask token (its tokenizer defines no mask_token and its config no mask_token_id)"
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab and not 0 <= int(mask_id) < vocab:
        return f"mask token id {mask_id} is outside the model's vocabulary (size {vocab})"
    return None


def load_denoiser(pretrained: str | os.PathLike, adapter: str | None = None, device: str | torch.device | None = "cpu",
                  dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
                  mask_token_id: int | None = None, tokenizer: str | None = None, max_length: int | None = None,
                  peft: str | None = None) -> Denoiser:
    """Load a checkpoint directory (or Hub id) as a `Denoiser`, choosing the adapter from its config."""
    from transformers import AutoConfig, AutoTokenizer

    _register_architectures()

    path = resolve_embedded(str(pretrained))
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        path = expanded
        if not (Path(path) / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json; pass pretrained=<a directory written by "
                                  f"save_pretrained (or emdm_train)>")
    elif _looks_local(path):
        raise CheckpointError(f"checkpoint directory {path} does not exist; pass pretrained=<a directory written by "
                              f"save_pretrained> or a Hub model id")
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise CheckpointError(f"{path} needs its own model code; pass trust_remote_code=True if you trust it") \
                from None
        raise CheckpointError(f"cannot read the config of {path}: {str(exc).splitlines()[0]}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot load {path}: {str(exc).splitlines()[0]} (offline? give a local "
                              f"directory)") from None
    cls = adapter_for(config, adapter)
    if cls is not MaskedLMDenoiser and not trust_remote_code and getattr(config, "auto_map", None):
        raise CheckpointError(f"{path} is a {cls.name}-style checkpoint with its own model code; pass "
                              f"trust_remote_code=True if you trust it")
    tok = AutoTokenizer.from_pretrained(tokenizer or path, trust_remote_code=trust_remote_code)
    model = cls.load_model(path, config, torch_dtype, trust_remote_code)
    if peft:
        model = _load_peft(model, peft)
    model.to(dev).eval()

    mask_id = mask_token_id if mask_token_id is not None else cls.default_mask_token_id(config, tok)
    problem = mask_token_problem(mask_id, config)
    if problem:
        raise CheckpointError(f"checkpoint {path}: {problem}; pass mask_token_id=<the id the model was trained with>")
    eos = tok.eos_token_id if tok.eos_token_id is not None else getattr(tok, "sep_token_id", None)
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else mask_id)
    if max_length is None:
        max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "max_sequence_length", None)
        tok_max = getattr(tok, "model_max_length", None)
        if not max_length and tok_max and tok_max < 1_000_000:
            max_length = tok_max
        max_length = max_length or 2048
    surprise = _load_surprise(path)
    return cls(model, tok, mask_id, eos, pad, int(max_length), path=path, surprise=surprise)


def _register_architectures() -> None:
    """Import emdm's own model classes so that the Auto classes know them."""
    import importlib.util

    if importlib.util.find_spec(f"{__package__}.architectures") is not None:
        importlib.import_module(f"{__package__}.architectures")


def _load_peft(model: torch.nn.Module, adapter_dir: str) -> torch.nn.Module:
    try:
        from peft import PeftModel
    except ImportError:
        raise ConfigError("peft=... needs the peft package: pip install 'emdm[peft]'") from None
    if not os.path.isdir(os.path.expanduser(adapter_dir)):
        raise CheckpointError(f"PEFT adapter directory {adapter_dir} does not exist")
    return PeftModel.from_pretrained(model, os.path.expanduser(adapter_dir)).merge_and_unload()


def _load_surprise(path: str) -> torch.Tensor | None:
    try:
        from .surprise import SurpriseTable
    except ImportError:
        return None
    if not os.path.isdir(path):
        return None
    table = SurpriseTable.load(path)
    return None if table is None else table.surprise
