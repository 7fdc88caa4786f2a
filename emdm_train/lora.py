"""LoRA / QLoRA fine-tuning through PEFT (`--lora`, `--qlora`, `--merge-lora`).

The base model is loaded as usual (QLoRA: in 4-bit NF4 through bitsandbytes, CUDA only), PEFT wraps it with
LoRA adapters on the family's projections (`Denoiser.lora_target_modules`, or `--lora-target-modules`), and only
the adapters train. A checkpoint then holds the adapter (`adapter_config.json`, `adapter_model.safetensors`, whose
`base_model_name_or_path` names the base), the tokenizer and the surprise table; it loads with
`load_denoiser(BASE, peft=OUT)`, `pretrained=BASE,peft=OUT` in lm-eval, or `pretrained=OUT` (the base is read from
the adapter's config). `--merge-lora` also writes `OUT/merged/`, the base with the adapter merged in, in full
precision: a plain checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from emdm_core.prompts import RECIPE_FILE
from emdm_models.loading import load_peft

from .errors import TrainConfigError

MERGED_DIR = "merged"


def _peft():
    try:
        import peft
    except ImportError:
        raise TrainConfigError("--lora needs the peft package: pip install 'emdm[peft]'") from None
    return peft


def check_lora_config(cfg: Any) -> None:
    """The LoRA options that cannot work together, as one-line errors (before anything loads)."""
    if cfg.qlora and not cfg.lora:
        raise TrainConfigError("--qlora trains LoRA adapters on a 4-bit base: add --lora")
    if cfg.merge_lora and not cfg.lora:
        raise TrainConfigError("--merge-lora merges the LoRA adapters into the base: add --lora")
    if cfg.lora and cfg.from_scratch:
        raise TrainConfigError("--lora adapts pretrained weights; drop --from-scratch (or drop --lora to train "
                               "every weight)")
    if cfg.lora and cfg.add_mask_token:
        raise TrainConfigError("--lora with --add-mask-token would train a new embedding row outside the adapter; "
                               "add the mask token to the base checkpoint first, or train without --lora")
    if cfg.qlora:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainConfigError("--qlora needs bitsandbytes (pip install bitsandbytes) and a CUDA GPU") from None
        if not torch.cuda.is_available() or cfg.cpu:
            raise TrainConfigError("--qlora needs a CUDA GPU (bitsandbytes' 4-bit layers); use --lora on a CPU")


def quantization_kwargs(cfg: Any) -> dict[str, Any]:
    """`from_pretrained` arguments that load the base in 4-bit for QLoRA (empty otherwise)."""
    if not cfg.qlora:
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True,
                                                      bnb_4bit_compute_dtype=torch.bfloat16)}


def target_modules(cfg: Any, family: Any) -> str | list[str]:
    """`--lora-target-modules` (comma-separated, or all-linear), else the family's default."""
    if cfg.lora_target_modules:
        names = [n.strip() for n in cfg.lora_target_modules.split(",") if n.strip()]
        return "all-linear" if names == ["all-linear"] else names
    default = family.lora_target_modules
    return default if isinstance(default, str) else list(default)


def wrap(model: torch.nn.Module, cfg: Any, family: Any, base: str, resume_dir: Path | None) -> torch.nn.Module:
    """The base wrapped with trainable LoRA adapters: fresh ones, or those of `resume_dir` (a checkpoint)."""
    peft = _peft()
    if cfg.qlora:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    if resume_dir is not None:
        if not (Path(resume_dir) / "adapter_config.json").is_file():
            raise TrainConfigError(f"--resume: {resume_dir} is a checkpoint of a full-model run (no "
                                   f"adapter_config.json); resume it without --lora, or start the LoRA run in a new "
                                   f"--output")
        return peft.PeftModel.from_pretrained(model, str(resume_dir), is_trainable=True)
    targets = target_modules(cfg, family)
    if isinstance(targets, list):  # every name must adapt something (a misspelled one would be dropped silently)
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        unknown = [t for t in targets if t not in present]
        if unknown and cfg.lora_target_modules:
            raise TrainConfigError(f"--lora-target-modules: {', '.join(unknown)} name no layer of the model; its "
                                   f"linear layers include {', '.join(sorted(_linear_names(model))[:12])}")
    config = peft.LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, bias="none")
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as exc:
        raise TrainConfigError(f"--lora-target-modules: {str(exc).splitlines()[0]}; name linear layers of the "
                               f"model (e.g. q_proj,v_proj) or all-linear") from None
    wrapped.peft_config["default"].base_model_name_or_path = base
    return wrapped


def _linear_names(model: torch.nn.Module) -> set[str]:
    """The last name part of every linear layer (what --lora-target-modules takes)."""
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def base_reference(model_source: str) -> str:
    """What the adapter's config names as its base: an absolute path for a local checkpoint, else the hub id."""
    expanded = os.path.expanduser(model_source)
    return os.path.abspath(expanded) if os.path.exists(expanded) else model_source


def trainable_summary(model: torch.nn.Module) -> str:
    """'trainable 1.2M of 68.9M parameters (1.7%)'."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"trainable {trainable / 1e6:.2f}M of {total / 1e6:.2f}M parameters ({100 * trainable / max(total, 1):.2f}%)"


def write_merged(output: Path, adapter_dir: Path, family: Any, config: Any, base_path: str, tokenizer: Any,
                 table: Any, trust_remote_code: bool) -> Path:
    """`output/merged/`: the base (reloaded in float32, so QLoRA merges into full weights) plus the adapter."""
    base = family.load_model(base_path, config, torch.float32, trust_remote_code)
    merged = load_peft(base, str(adapter_dir))
    target = output / MERGED_DIR
    tmp = output / f"{MERGED_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    table.save(tmp)
    if (adapter_dir / RECIPE_FILE).is_file():  # the merged model is prompted as it was fine-tuned
        shutil.copy2(adapter_dir / RECIPE_FILE, tmp / RECIPE_FILE)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target
