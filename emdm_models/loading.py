"""Loading checkpoints, in one place for inference and training: config, tokenizer, network, mask id, extras.

`load_denoiser` is the sampler's and lm-eval's entry point; `emdm_train` uses the same `read_config`,
`load_tokenizer`, `resolve_mask_token` and the adapter's `load_model` / `build_model`. Error messages name the fix
the way the caller's user spells it (`trust_remote_code=True` in `--model_args`, `--trust-remote-code` on the
training command line).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from emdm_core.devices import resolve_device, resolve_dtype
from emdm_core.errors import CheckpointError, ConfigError, first_line
from emdm_core.paths import looks_local

from .denoiser import Denoiser, adapter_for, config_max_length, mask_token_problem

EMBEDDED_DIR = Path(__file__).resolve().parent / "checkpoints"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Spelling:
    """How the user of one entry point names an option: `key=value` (`--model_args`) or `--flag value`."""

    style: str  # "kwargs" or "flags"
    model_option: str  # the option that names the checkpoint
    can_add_mask: bool = False  # whether the entry point can add a mask token (emdm_train --add-mask-token)

    def __call__(self, option: str, value: Any = None) -> str:
        if self.style == "kwargs":
            return f"{option}={'...' if value is None else value}"
        flag = "--" + option.replace("_", "-")
        return flag if value in (None, True) else f"{flag} {value}"


KWARGS = Spelling("kwargs", "pretrained")
FLAGS = Spelling("flags", "model", can_add_mask=True)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings off for a moment (they would repeat what emdm reports in one line)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def register_architectures() -> None:
    """Register emdm's own model classes and the built-in families with transformers' Auto classes (idempotent)."""
    from . import architectures, families  # noqa: F401


# --- where the checkpoint is -----------------------------------------------------------------------------------


def available_embedded() -> list[str]:
    """Names of the checkpoints shipped inside the package (usable as `pretrained=emdm:NAME`)."""
    if not EMBEDDED_DIR.is_dir():
        return []
    return sorted(p.name for p in EMBEDDED_DIR.iterdir() if (p / "config.json").exists())


def resolve_embedded(path: str) -> str:
    """`emdm:NAME` -> the directory of the embedded checkpoint NAME; other strings unchanged."""
    if not str(path).startswith("emdm:"):
        return str(path)
    name = str(path)[len("emdm:"):]
    if name not in available_embedded():
        raise CheckpointError(f"no embedded checkpoint {name!r}; embedded checkpoints: "
                              f"{', '.join(available_embedded()) or 'none'}")
    return str(EMBEDDED_DIR / name)


def has_weights(path: str | os.PathLike) -> bool:
    """Whether a local directory holds model weights (else it is a config-only directory)."""
    return any((Path(path) / f).exists() for f in WEIGHT_FILES)


def raw_config(path: str, name: str | None = None) -> dict[str, Any]:
    """config.json of a local directory, a bare config file, or a Hub id `name` (from the local cache when
    offline), as a dict ({} when a directory has none)."""
    if os.path.isfile(path):
        file = Path(path)
    elif os.path.isdir(path):
        file = Path(path) / "config.json"
    else:
        from transformers.utils import cached_file

        try:
            file = Path(cached_file(name or path, "config.json"))
        except OSError as exc:
            raise CheckpointError(f"cannot load {name}: {first_line(exc)} (offline? give a local directory)") \
                from None
    try:
        return json.loads(file.read_text()) if file.is_file() else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is not valid JSON ({exc.msg}); fix or regenerate it") from None


def read_config(name: str, trust_remote_code: bool = False, spell: Spelling = KWARGS,
                overrides: str | None = None, adapter: str | None = None) -> tuple[Any, bool, str]:
    """(config, has weights, resolved path) of a checkpoint directory, a config-only directory, a bare config
    `.json` file, an embedded `emdm:NAME` or a Hub id; `overrides` ("k=v,k2=v2") edit the config.

    A config of a family emdm runs on its own backbones (LLaDA, Dream, SDAR, A2D) is converted to that backbone's
    config, so no remote code is needed (`adapter=remote` keeps the checkpoint's own code instead)."""
    from transformers import AutoConfig

    from .families import native_family_for

    register_architectures()
    path = os.path.expanduser(resolve_embedded(str(name)))
    what = spell(spell.model_option, "<a directory written by save_pretrained>") + " or a Hub model id"
    if os.path.isdir(path) and not (Path(path) / "config.json").exists():
        written = spell(spell.model_option, "<a directory written by save_pretrained (or emdm_train)>")
        raise CheckpointError(f"{path} has no config.json; pass {written}")
    if not os.path.exists(path) and looks_local(str(name)):
        raise CheckpointError(f"checkpoint directory {name} does not exist; pass {what}")
    raw = raw_config(path, str(name))
    family = native_family_for(str(raw.get("model_type", "")), adapter) if adapter != "remote" else None
    weights = has_weights(path) if os.path.isdir(path) else not os.path.isfile(path)
    try:
        if family is not None:
            try:
                config = family.convert_config(raw, str(name))
            except CheckpointError as exc:
                if not trust_remote_code or adapter is not None or not raw.get("auto_map"):
                    raise
                # the user allowed the checkpoint's own code: run it, saying why emdm's backbone is not used
                warnings.warn(f"{name}: running the checkpoint's own code (adapter=remote), since {exc}",
                              stacklevel=2)
                config = AutoConfig.from_pretrained(path, trust_remote_code=True)
        elif os.path.isfile(path):  # a bare config .json file
            data = dict(raw)
            model_type = data.pop("model_type", None)
            if not model_type:
                raise CheckpointError(f"{name} has no model_type; give a config.json written by save_pretrained")
            config = AutoConfig.for_model(model_type, **data)
        else:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except CheckpointError:
        raise
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise CheckpointError(f"{name} needs its own model code; pass {spell('trust_remote_code', True)} if you "
                                  f"trust it") from None
        raise CheckpointError(f"cannot read the config of {name}: {first_line(exc)}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot load {name}: {first_line(exc)} (offline? give a local directory)") from None
    if overrides:
        try:
            config.update_from_string(overrides)
        except (ValueError, AttributeError) as exc:
            raise ConfigError(f"{spell('config_overrides', repr(overrides))}: {first_line(exc)}; give key=value "
                              f"pairs of existing config fields, separated by commas") from None
    return config, weights, path


def load_tokenizer(name: str, trust_remote_code: bool = False, spell: Spelling = KWARGS) -> Any:
    """`AutoTokenizer.from_pretrained` with a one-line error that names the option to fix."""
    from transformers import AutoTokenizer

    path = os.path.expanduser(resolve_embedded(str(name)))
    fix = spell("tokenizer", "<a directory written by save_pretrained>")
    if looks_local(str(name)) and not os.path.exists(path):
        raise CheckpointError(f"tokenizer path {name} does not exist; pass {fix}")
    try:
        with quiet_transformers():  # it warns that a llada/Dream/sdar config is not a tokenizer's model type
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise CheckpointError(f"cannot load a tokenizer from {name}: {first_line(exc)}; pass {fix}") from None


def check_remote_code(cls: type[Denoiser], config: Any, path: str, trust_remote_code: bool,
                      spell: Spelling = KWARGS) -> None:
    """A checkpoint that ships its own model code needs the user's consent."""
    if cls.needs_remote_code and not trust_remote_code and getattr(config, "auto_map", None):
        raise CheckpointError(f"{path} is a {cls.name}-style checkpoint with its own model code; pass "
                              f"{spell('trust_remote_code', True)} if you trust it")


def resolve_mask_token(cls: type[Denoiser], config: Any, tokenizer: Any, requested: int | None, path: str,
                       spell: Spelling = KWARGS) -> int:
    """The mask id: the user's, else the family's default (tokenizer or config; LLaDA: 126336), checked."""
    mask_id = requested if requested is not None else cls.default_mask_token_id(config, tokenizer)
    problem = mask_token_problem(mask_id, config)
    if problem:
        fix = spell("mask_token_id", "<the id the model was trained with>")
        if mask_id is None and spell.can_add_mask:
            fix = f"{spell('mask_token_id', 'ID')} or {spell('add_mask_token')}"
        raise CheckpointError(f"checkpoint {path}: {problem}; pass {fix}")
    return int(mask_id)


def add_mask_token(tokenizer: Any, model: torch.nn.Module) -> None:
    """Give a tokenizer without a mask token a `[MASK]` special token and grow the model's embeddings to match."""
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    emb = model.get_input_embeddings()
    if emb is not None and emb.weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))


def eos_token_id(tokenizer: Any, config: Any = None) -> int | None:
    """The id that ends a text: the tokenizer's EOS, else its SEP, else the config's EOS."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(tokenizer, "sep_token_id", None)
    if eos is None and config is not None:
        eos = getattr(config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0] if eos else None
    return eos


def max_length_of(config: Any, tokenizer: Any, requested: int | None = None) -> int:
    """`requested`, else the config's maximum positions, else the tokenizer's `model_max_length`, else 2048."""
    if requested is not None:
        return int(requested)
    limit = config_max_length(config)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if not limit and tok_max and tok_max < 1_000_000:
        limit = tok_max
    return int(limit or 2048)


# --- the sampler's entry point ---------------------------------------------------------------------------------


def load_denoiser(pretrained: str | os.PathLike, adapter: str | None = None, device: str | torch.device | None = "cpu",
                  dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
                  mask_token_id: int | None = None, tokenizer: str | None = None, max_length: int | None = None,
                  peft: str | None = None, spelling: Spelling = KWARGS) -> Denoiser:
    """Load a checkpoint directory, `emdm:NAME` or Hub id as a `Denoiser`, choosing the adapter from its config.

    `spelling` says how the caller's user passes options, for the fixes that error messages name. A PEFT adapter
    directory as `pretrained` (an `emdm_train --lora` output) loads its base, named in its adapter config, with the
    adapter merged; the surprise table is the adapter directory's when it has one."""
    base = peft_base(pretrained)
    if base is not None and not peft:
        pretrained, peft = base, str(pretrained)
    config, weights, path = read_config(str(pretrained), trust_remote_code, spelling, adapter=adapter)
    if os.path.isdir(path) and not weights:
        raise CheckpointError(f"{path} has a config but no weights (model.safetensors); pass "
                              f"{spelling(spelling.model_option, '<a checkpoint with weights>')}, or train one from "
                              f"this config with emdm_train")
    from emdm_core.progress import library_bars_follow_terminal

    library_bars_follow_terminal()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    cls = adapter_for(config, adapter)
    check_remote_code(cls, config, path, trust_remote_code, spelling)
    tok = load_tokenizer(tokenizer or path, trust_remote_code, spelling)
    check_weight_files(path)
    model = cls.load_model(path, config, torch_dtype, trust_remote_code)
    if peft:
        model = load_peft(model, peft)
    model.to(dev).eval()
    mask_id = resolve_mask_token(cls, config, tok, mask_token_id, path, spelling)
    eos = eos_token_id(tok, config)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else mask_id)
    surprise = load_surprise(os.path.expanduser(str(peft))) if peft else None
    den = cls(model, tok, mask_id, eos, pad, max_length_of(config, tok, max_length), path=path,
              surprise=surprise if surprise is not None else load_surprise(path))
    apply_noise(den, os.path.expanduser(str(peft)) if peft else path)
    from emdm_core.prompts import training_sampler_options

    den.recipe_dirs = tuple(d for d in (os.path.expanduser(str(peft)) if peft else None, path) if d)
    den.trained_options = training_sampler_options(*den.recipe_dirs)
    return den


def apply_noise(den: Denoiser, path: str) -> None:
    """A checkpoint trained with `emdm_train --noise uniform` (its `noise.json`) decodes with uniform noise."""
    from emdm_core.diffusion_noise import NoiseSpec

    spec = NoiseSpec.load(path) if os.path.isdir(path) else None
    if spec is not None and spec.noise == "uniform":
        den.noise = "uniform"
        den.noise_vocabulary = spec.vocabulary()


def peft_base(path: str | os.PathLike) -> str | None:
    """The base checkpoint a PEFT adapter directory names (`base_model_name_or_path`), if `path` is one (an
    adapter config and no model config of its own)."""
    directory = Path(os.path.expanduser(str(path)))
    adapter = directory / "adapter_config.json"
    if not adapter.is_file() or (directory / "config.json").is_file():
        return None
    base = json.loads(adapter.read_text()).get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{path} is a PEFT adapter without base_model_name_or_path; pass pretrained=BASE,"
                              f"peft={path}")
    return str(base)


def check_weight_files(path: str) -> None:
    """Every safetensors file of a checkpoint directory opens (a truncated or empty file is a one-line error naming
    it, not a traceback from the loader)."""
    if not os.path.isdir(path):
        return
    from safetensors import safe_open

    for name in sorted(Path(path).glob("*.safetensors")):
        try:
            with safe_open(str(name), framework="pt") as f:
                f.keys()
        except Exception as exc:  # safetensors raises its own error types (header, truncated buffer, empty file)
            raise CheckpointError(f"{name}: the weights cannot be read ({first_line(exc)}): the file is truncated or "
                                  f"damaged; copy or save the checkpoint again") from None


def load_peft(model: torch.nn.Module, adapter_dir: str) -> torch.nn.Module:
    """Load a PEFT (LoRA) adapter directory on top of `model` and merge it (an adapter that does not fit the base,
    or a damaged one, is a one-line error naming the base it was trained on)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ConfigError("peft=... needs the peft package: pip install 'emdm[peft]'") from None
    directory = os.path.expanduser(str(adapter_dir))
    if not os.path.isdir(directory):
        raise CheckpointError(f"PEFT adapter directory {adapter_dir} does not exist")
    if not (Path(directory) / "adapter_config.json").is_file():
        raise CheckpointError(f"{adapter_dir} holds no adapter_config.json; pass peft=<a directory written by "
                              f"PEFT's save_pretrained (or emdm_train --lora)>")
    check_weight_files(directory)
    trained_on = json.loads((Path(directory) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    base = getattr(model.config, "_name_or_path", "") or ""
    if trained_on and base and _same_checkpoint(trained_on, base) is False:
        warnings.warn(f"the adapter {adapter_dir} was trained on {trained_on}; merging it into {base}", stacklevel=2)
    try:
        return PeftModel.from_pretrained(model, directory).merge_and_unload()
    except (RuntimeError, ValueError) as exc:  # shapes that differ, target modules the base lacks
        raise CheckpointError(f"the adapter {adapter_dir} does not fit this base ({first_line(exc)[:200]}); it was "
                              f"trained on {trained_on or 'another model'}: pass that base as pretrained") from None


def _same_checkpoint(a: str, b: str) -> bool | None:
    """Whether two checkpoint names are the same: the same directory when both are local, different when only one
    is, unknown (None) when neither is (two Hub ids)."""
    a, b = os.path.expanduser(str(a)), os.path.expanduser(str(b))
    local_a, local_b = os.path.exists(a), os.path.exists(b)
    if local_a and local_b:
        return os.path.samefile(a, b)
    return None if not (local_a or local_b) else False


def load_surprise(path: str) -> torch.Tensor | None:
    """The checkpoint's surprise table S = -log2 p [V], when it has `surprise.safetensors`."""
    from emdm_core.surprise import SurpriseTable

    if not os.path.isdir(path):
        return None
    table = SurpriseTable.load(path)
    return None if table is None else table.surprise
