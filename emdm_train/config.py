"""The training recipe: one dataclass, filled from a YAML file (`--config`) and command-line options (which win).

Every field is a command-line option (`learning_rate` -> `--learning-rate`) and a YAML key (either spelling).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emdm_core import typed
from emdm_core.typed import at_least, greater_than, in_range, option

from .errors import TrainConfigError


def _opt(default: Any, help: str, group: str, **extra: Any) -> Any:
    return option(default, help, group=group, **extra)


def _alias(schedule: str, name: str, help: str, **extra: Any) -> Any:
    """A per-schedule flag kept as a short spelling of `--masking-option NAME=VALUE` for that schedule."""
    return option(None, f"{schedule} masking: {help} (= --masking-option {name}=...)", group="masking",
                  masking_alias=(schedule, name), **extra)


def _known_masking(name: str) -> str | None:
    from .masking import available_maskings

    return None if name in available_maskings() else f"is unknown; choose one of {', '.join(available_maskings())}"


@dataclass
class TrainConfig:
    """A fine-tuning recipe (see `python -m emdm_train --help` for every field)."""

    # -- model ----------------------------------------------------------------------------------------------------
    model: str | None = _opt(None, "checkpoint directory or hub id to fine-tune; or a directory holding only a "
                             "config.json (or a config .json file), which trains from random initialisation",
                             "model")
    tokenizer: str | None = _opt(None, "tokenizer directory or hub id (default: the --model directory)", "model")
    trust_remote_code: bool = _opt(False, "allow checkpoints that ship their own model code (LLaDA/Dream style)",
                                   "model")
    mask_token_id: int | None = _opt(None, "id of the mask token when neither the tokenizer nor the config "
                                     "defines one", "model")
    from_scratch: bool = _opt(False, "ignore the weights of --model and train from random initialisation with its "
                              "config and tokenizer (pre-training from scratch)", "model")
    config_overrides: str | None = _opt(None, "comma-separated key=value changes to the model config, e.g. "
                                        "'hidden_dropout_prob=0.0,initializer_range=0.02' (as in transformers' "
                                        "run_mlm.py)", "model")
    add_mask_token: bool = _opt(False, "add a [MASK] token to a tokenizer that has none (and grow the embeddings)",
                                "model")
    dropout: bool = _opt(True, "keep the model's dropout during training (--no-dropout trains in eval mode, "
                         "which makes runs with different process counts numerically comparable)", "model")
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass instead of storing "
                                        "them (activation checkpointing: less memory, ~30% more compute)", "model")

    # -- LoRA -----------------------------------------------------------------------------------------------------
    lora: bool = _opt(False, "train LoRA adapters (PEFT) instead of every weight; the output holds the adapter "
                      "(load with pretrained=BASE,peft=OUT or pretrained=OUT)", "lora")
    lora_rank: int = _opt(16, "LoRA rank r", "lora", check=at_least(1))
    lora_alpha: float = _opt(32.0, "LoRA scaling alpha (the update is scaled by alpha / r)", "lora",
                             check=greater_than(0))
    lora_dropout: float = _opt(0.05, "dropout on the LoRA input", "lora", check=in_range(0, 1, high_open=True))
    lora_target_modules: str | None = _opt(None, "comma-separated names of the linear layers to adapt, or "
                                           "all-linear (default: the family's: q/k/v/o and MLP projections for "
                                           "Llama/Qwen-style models, every linear layer otherwise)", "lora")
    qlora: bool = _opt(False, "QLoRA: load the base in 4-bit NF4 (bitsandbytes, CUDA) and train LoRA on it", "lora")
    merge_lora: bool = _opt(False, "after training also write OUT/merged: the base with the adapter merged in "
                            "(a plain checkpoint)", "lora")

    # -- data -----------------------------------------------------------------------------------------------------
    data: str | None = _opt(None, "training data: a local .jsonl/.json/.txt/.parquet/.csv file, a folder of them, "
                            "or a hub dataset name (offline: must be in the local cache)", "data")
    data_config: str | None = _opt(None, "configuration name of a hub dataset (e.g. wikitext-2-raw-v1)", "data")
    split: str = _opt("train", "split of --data to train on", "data")
    data_format: str = _opt("auto", "auto | text | prompt_response | chat. auto picks chat when the "
                            "--messages-field column exists, prompt_response when the --prompt-field and "
                            "--response-field columns do, else text", "data",
                            choices=("auto", "text", "prompt_response", "chat"))
    messages_field: str = _opt("messages", "column holding the conversations (chat format: lists of {role, "
                               "content}, rendered with the chat template; only assistant turns are trained on)",
                               "data")
    chat_template: str | None = _opt(None, "a Jinja chat template (file or string) for tokenizers without one "
                                     "(chat format)", "data")
    pad_with_eos: bool = _opt(False, "LLaDA's SFT convention: fill every prompt/response or chat row to "
                              "--max-length with EOS tokens that are masked and trained like the response", "data")
    text_column: str = _opt("text", "column holding the text (text format)", "data")
    prompt_field: str = _opt("prompt", "column holding the prompt (prompt_response format; never masked)", "data")
    response_field: str = _opt("response", "column holding the response (prompt_response format; the only part "
                               "that is masked and trained on)", "data")
    separator: str | None = _opt(None, "text placed between prompt and response, e.g. '[SEP]' (part of the prompt)",
                                 "data")
    max_length: int | None = _opt(None, "sequence length in tokens (default: the model's maximum, capped at 512)",
                                  "data", check=at_least(1))
    pack: bool | None = _opt(None, "text format: concatenate documents (each ended by EOS) and cut them into "
                             "max_length blocks (default) or keep one document per row (--no-pack)", "data")
    add_eos: bool = _opt(True, "end every document / response with the EOS token (SEP when there is no EOS)",
                         "data")
    mask_eos: bool = _opt(True, "let the EOS that ends a document/response be masked and predicted, so that the "
                          "model learns where text ends (all other special tokens are never masked)", "data")
    val_data: str | None = _opt(None, "held-out data source (default: --val-split of --data)", "data")
    val_split: float = _opt(0.05, "fraction of the documents of --data held out for evaluation when --val-data "
                            "is not given", "data", check=in_range(0, 1, high_open=True))
    max_eval_examples: int = _opt(256, "evaluate on at most this many held-out sequences", "data",
                                  check=greater_than(0))
    max_examples: int | None = _opt(None, "use only the first N documents of --data (quick runs)", "data",
                                    check=at_least(1))
    augment: str | None = _opt(None, "MODULE:FUNCTION transforming every training batch afresh (data augmentation "
                               "without a bigger file), e.g. studies.sudoku.augment:symmetries; it gets "
                               "(input_ids [b, L], prompt_lengths [b], generator) and returns new input_ids",
                               "data", check=lambda v: None if v is None or ":" in v else
                               "must be MODULE:FUNCTION, e.g. studies.sudoku.augment:symmetries")

    # -- masking --------------------------------------------------------------------------------------------------
    masking: str = _opt("uniform", "masking schedule: uniform (MDLM, t~U(eps,1), weight 1/t) | llada (t~U(0.15,"
                        "0.99), weight 1/t) | surprise (seed 000: k=round(t n) tokens drawn by softmax(S/T), weight "
                        "n/k) | entropy (ENS: lowest model entropy masked first, weight n/k), or a registered one",
                        "masking")
    masking_options: dict[str, Any] = _opt({}, "options of the masking schedule: --masking-option K=V (repeat; "
                                           "YAML: masking_options: {K: V}); the README lists each schedule's",
                                           "masking")
    eps: float = _opt(1e-3, "smallest noise level t of uniform/surprise/entropy", "masking",
                      check=in_range(0, 1, low_open=True, high_open=True))
    t_min: float | None = _opt(None, "override the schedule's lowest noise level (llada: 0.15)", "masking",
                               check=in_range(0, 1, low_open=True))
    t_max: float | None = _opt(None, "override the schedule's highest noise level (llada: 0.99)", "masking",
                               check=in_range(0, 1, low_open=True))
    stratified_t: bool = _opt(True, "spread the noise levels of a batch evenly over [t_min, t_max] (MDLM's "
                              "low-discrepancy sampler) instead of drawing them independently", "masking")
    surprise_table: str = _opt("auto", "auto: reuse the --model checkpoint's surprise.safetensors if it has one, "
                               "else count the training data; data: always count the training data; or a path "
                               "to a directory/file holding surprise.safetensors", "masking")
    surprise_temperature: float | None = _alias("surprise", "temperature", "T of softmax(S/T) (> 0; default 1): "
                                                "small = (near) deterministic order by surprise, large (1e6) = "
                                                "uniform masking")
    surprise_direction: str | None = _alias("surprise", "direction", "the reveal order the model is trained for, "
                                            "in the sampler's words: low_first (default, seed 000's formula: "
                                            "high-surprise tokens masked first) or high_first (the seed's stated "
                                            "aim: informative tokens predicted first)",
                                            choices=("low_first", "high_first"))
    surprise_mask_first: str | None = _alias("surprise", "mask_first", "old spelling of --surprise-direction: high "
                                             "(= low_first) or low (= high_first)", choices=("high", "low"))
    entropy_temperature: float | None = _alias("entropy", "temperature", "0 (default) = ENS's deterministic "
                                               "order, T > 0 samples the order from softmax(-H/T)")
    entropy_direction: str | None = _alias("entropy", "direction", "high_first (default, ENS: low-entropy tokens "
                                           "masked first) or low_first", choices=("high_first", "low_first"))
    entropy_mask_first: str | None = _alias("entropy", "mask_first", "old spelling of --entropy-direction: low "
                                            "(= high_first) or high (= low_first)", choices=("low", "high"))
    entropy_probe_passes: int | None = _alias("entropy", "probe_passes", "0 (default) = one no-grad pass on the "
                                              "clean sequence; P >= 1 = P passes, each masking 1/P of the tokens, "
                                              "entropy read where masked")

    # -- noise (uniform-state diffusion) --------------------------------------------------------------------------
    noise: str = _opt("mask", "the diffusion's noise: mask (masked diffusion, the --masking schedules) or uniform "
                      "(Duo: one-hot tokens + Gaussian noise -> argmax, a symmetric-KL loss scaled per row; the "
                      "checkpoint then decodes with the uniform-state samplers duo, entropy_bound, margin, ...)",
                      "noise", choices=("mask", "uniform"))
    noise_weight_range: tuple[float, ...] | None = _opt(None, "--noise uniform: draw the noise weight w ~ U(lo, hi) "
                                                         "per row (the seed's 0.25,0.5) instead of from t ~ U(t_min, "
                                                         "t_max) with alpha_t = 1 - t", "noise",
                                                         check=lambda v: "must be two numbers lo,hi" if len(v) != 2
                                                         else None if 0 < v[0] <= v[1] <= 1 else
                                                         "must satisfy 0 < lo <= hi <= 1; e.g. 0.25,0.5 (the seed's)")
    soft_token_steps: int = _opt(0, "--noise uniform: Duo's curriculum: for the first N steps the model reads soft "
                                 "tokens softmax(latent / tau) instead of the argmax, tau falling linearly from "
                                 "--soft-token-temperature to 0", "noise", check=at_least(0))
    soft_token_temperature: float = _opt(0.1, "--noise uniform: tau at the start of the soft-token curriculum",
                                         "noise", check=greater_than(0))
    kl_smoothing: float = _opt(0.01, "--noise uniform: the target of the reverse KL is the one-hot smoothed by this "
                               "mass (keeps KL(p || q) finite)", "noise", check=in_range(0, 1, low_open=True,
                                                                                         high_open=True))

    # -- reinforcement learning (--objective grpo | wd1) ----------------------------------------------------------
    objective: str = _opt("mdm", "what the steps optimise: mdm (the masked-diffusion loss of --masking), grpo (d1's "
                          "diffu-GRPO: rollouts, verifiable rewards, clipped policy ratio) or wd1 (wd1's weighted "
                          "likelihood); RL reads prompt_response data: the prompts, and the responses its rewards "
                          "compare with", "rl", choices=("mdm", "grpo", "wd1"))
    rl_group_size: int = _opt(4, "G: rollouts per prompt (group-relative advantages need >= 2); --batch-size counts "
                              "rollouts, so batch_size / G prompts per rollout step", "rl", check=at_least(2))
    rl_iterations: int = _opt(1, "mu: optimizer steps per batch of rollouts (d1's num_iterations), each with a fresh "
                              "prompt mask", "rl", check=at_least(1))
    rl_epsilon: float = _opt(0.2, "clip range of the policy ratio (grpo)", "rl", check=greater_than(0))
    rl_beta: float = _opt(0.0, "weight of the KL to the starting model (grpo; d1: 0.04; 0 skips the reference)",
                          "rl", check=at_least(0))
    rl_p_mask_prompt: float = _opt(0.15, "d1's estimator: each prompt token masked with this probability",
                                   "rl", check=in_range(0, 1, high_open=True))
    rl_likelihood: str = _opt("d1", "wd1's sequence log-likelihood: d1 (the summed one-pass token estimate, as "
                              "wd1's code) or elbo (the sequence ELBO, --rl-elbo-draws masked passes; grpo's token "
                              "ratio needs d1)", "rl", choices=("d1", "elbo"))
    rl_elbo_draws: int = _opt(4, "masked passes per rollout of the elbo likelihood", "rl", check=at_least(1))
    rl_reward: str = _opt("exact_match", "rewards, summed: registered names (exact_match, leading_digits, "
                          "sudoku_valid, digit_format) or module:function", "rl")
    rl_sampler: str = _opt("margin", "the strategy that draws the rollouts (any registered sampler)", "rl")
    rl_temperature: float = _opt(0.9, "sampling temperature of the rollouts (> 0: RL needs distinct rollouts)", "rl",
                                 check=greater_than(0))
    rl_steps: int | None = _opt(None, "decoding passes per rollout (default: one per token)", "rl",
                                check=at_least(1))
    rl_gen_length: int = _opt(64, "tokens per rollout", "rl", check=at_least(1))
    rl_block_length: int | None = _opt(None, "semi-autoregressive block length of the rollouts (none: one block)",
                                       "rl", check=at_least(1))

    # -- optimisation -----------------------------------------------------------------------------------------------
    max_steps: int | None = _opt(None, "optimizer steps to train (or give --num-epochs)", "optimisation",
                                 check=at_least(1))
    num_epochs: float | None = _opt(None, "epochs over the training data, when --max-steps is not given",
                                    "optimisation", check=greater_than(0))
    max_minutes: float | None = _opt(None, "wall-clock budget: stop after the first step that ends past it, then "
                                     "evaluate, save and export as at the last step (the learning-rate schedule "
                                     "still spans --max-steps: size it to the budget with a throughput probe)",
                                     "optimisation", check=greater_than(0))
    batch_size: int = _opt(32, "sequences per optimizer step, over all processes and accumulation steps (so a "
                           "recipe trains the same on 1 or 8 devices)", "optimisation",
                           check=greater_than(0))
    micro_batch_size: int | None = _opt(None, "sequences per forward pass on one device (default: batch_size / "
                                        "(processes * grad_accum)); sets grad_accum when given", "optimisation",
                                        check=at_least(1))
    grad_accum: int | None = _opt(None, "gradient accumulation steps (default 1, or derived from "
                                  "--micro-batch-size)", "optimisation", check=at_least(1))
    learning_rate: float = _opt(1e-4, "peak learning rate (AdamW)", "optimisation", check=greater_than(0))
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to biases and norms)", "optimisation",
                               check=at_least(0))
    adam_beta1: float = _opt(0.9, "AdamW beta1", "optimisation")
    adam_beta2: float = _opt(0.999, "AdamW beta2", "optimisation")
    adam_eps: float = _opt(1e-8, "AdamW epsilon", "optimisation")
    warmup_steps: int | None = _opt(None, "linear warm-up steps (default: 5% of the steps)", "optimisation",
                                    check=at_least(0))
    lr_scheduler: str = _opt("cosine", "learning-rate decay after warm-up: cosine | linear | constant",
                             "optimisation", choices=("cosine", "linear", "constant"))
    min_lr_ratio: float = _opt(0.1, "final learning rate as a fraction of the peak (cosine/linear)",
                               "optimisation", check=in_range(0, 1))
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 disables)", "optimisation", check=at_least(0))
    mixed_precision: str = _opt("auto", "auto (bf16 on a GPU that supports it, else fp32) | no | bf16 | fp16",
                                "optimisation", choices=("auto", "no", "bf16", "fp16"))
    cpu: bool = _opt(False, "train on the CPU even when a GPU is present", "optimisation")
    seed: int = _opt(0, "seed of the data order, the masking noise, dropout and random initialisation",
                     "optimisation")

    # -- output -----------------------------------------------------------------------------------------------------
    output: str | None = _opt(None, "output directory: checkpoint-N/ every --save-every steps, and the final "
                              "model files at its top level (load it with pretrained=OUTPUT)", "output")
    save_every: int = _opt(500, "write checkpoint-N/ (model + optimizer state) every N steps (0: only at the end)",
                           "output", check=at_least(0))
    save_total_limit: int | None = _opt(2, "keep only the newest N checkpoints (none keeps all)", "output",
                                        check=at_least(1))
    eval_every: int = _opt(500, "held-out loss every N steps (0: only before and after training)", "output",
                           check=at_least(0))
    log_every: int = _opt(10, "log loss, learning rate and tokens/s every N steps", "output", check=greater_than(0))
    report_to: str = _opt("auto", "experiment trackers, through accelerate: auto (TensorBoard when installed) | "
                          "tensorboard | wandb | tensorboard,wandb | none", "output",
                          check=lambda v: None if set(v.split(",")) <= {"tensorboard", "wandb"} or v in ("auto", "none")
                          else "must be auto, none, or a comma-separated list of tensorboard and wandb")
    resume: str | None = _opt(None, "continue a killed run: --resume (newest complete checkpoint in --output) or "
                              "--resume PATH/checkpoint-N", "output")
    overwrite: bool = _opt(False, "start over in an --output directory that already holds checkpoints", "output")
    progress: bool = _opt(True, "show progress bars", "output")

    # -- methods ----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain dict."""
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | os.PathLike) -> None:
        """Write the recipe as YAML (atomically)."""
        import yaml

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        os.replace(tmp, path)

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "recipe") -> "TrainConfig":
        """Build from a dict whose keys are field names (dashes allowed); unknown keys are an error."""
        try:
            return typed.build(cls, values, origin=origin, error=TrainConfigError)
        except TrainConfigError as exc:
            if str(exc).startswith("unknown option"):
                raise TrainConfigError(str(exc).split("; options:")[0] + "; see python -m emdm_train --help") \
                    from None
            raise

    def validate(self) -> "TrainConfig":
        """Check required fields and ranges; raise `TrainConfigError` with the option to fix."""
        for name in ("model", "data", "output"):
            if not getattr(self, name):
                raise TrainConfigError(f"--{name.replace('_', '-')} is required (or set {name}: in the --config "
                                       f"YAML)")
        if self.max_steps is None and self.num_epochs is None:
            raise TrainConfigError("give --max-steps N or --num-epochs E")
        if _known_masking(self.masking):
            from .masking import available_maskings

            raise TrainConfigError(f"unknown --masking {self.masking!r}; choose one of "
                                   f"{', '.join(available_maskings())}")
        typed.check_fields(self, TrainConfigError, label=typed.flag_name)
        if self.noise == "uniform" and self.masking != "uniform":
            raise TrainConfigError(f"--masking {self.masking} chooses which tokens become masks; --noise uniform "
                                   f"corrupts every token with Gaussian-argmax noise instead: drop --masking")
        if self.noise == "mask" and (self.noise_weight_range is not None or self.soft_token_steps):
            raise TrainConfigError("--noise-weight-range and --soft-token-steps belong to --noise uniform; add "
                                   "--noise uniform or drop them")
        from .lora import check_lora_config

        check_lora_config(self)
        if self.objective != "mdm":
            if self.data_format not in ("prompt_response", "auto"):
                raise TrainConfigError(f"--objective {self.objective} reads prompts and reference responses: use "
                                       f"--data-format prompt_response (got {self.data_format})")
            if self.noise != "mask":
                raise TrainConfigError(f"--objective {self.objective} is for masked diffusion; drop --noise uniform")
            if self.objective == "grpo" and self.rl_likelihood != "d1":
                raise TrainConfigError("--objective grpo's per-token policy ratio needs --rl-likelihood d1; the "
                                       "sequence ELBO (--rl-likelihood elbo) is for --objective wd1")
            if self.batch_size % self.rl_group_size:
                raise TrainConfigError(f"--batch-size {self.batch_size} counts rollouts and must be a multiple of "
                                       f"--rl-group-size {self.rl_group_size}")
            from .rl.rewards import resolve_rewards

            resolve_rewards(self.rl_reward)
        if self.pad_with_eos and not self.mask_eos:
            raise TrainConfigError("--pad-with-eos trains the EOS padding, which --no-mask-eos forbids; drop one")
        if self.pad_with_eos and self.data_format == "text":
            raise TrainConfigError("--pad-with-eos pads responses; it needs prompt_response or chat data")
        for schedule, (options, labels) in masking_option_sets(self).items():
            from .masking import MASKINGS

            MASKINGS.get(schedule).resolve_options(options, labels)  # the schedule's own checks, once
        return self


def _alias_fields() -> list[dataclasses.Field]:
    return [f for f in typed.fields(TrainConfig) if "masking_alias" in f.metadata]


def masking_option_sets(cfg: TrainConfig) -> dict[str, tuple[dict[str, Any], dict[str, str]]]:
    """For each schedule the recipe sets options of: (options, how the user named each one).

    The chosen `--masking` gets the generic noise range (`eps`, `t_min`, `t_max`, when it takes them), the
    per-schedule flags that belong to it and `masking_options` (which win); other schedules get only their own
    per-schedule flags, so that a wrong value is an error even before the schedule is chosen."""
    from .masking import MASKINGS

    sets: dict[str, tuple[dict[str, Any], dict[str, str]]] = {}
    chosen = MASKINGS.get(cfg.masking)
    opts, labels = sets.setdefault(cfg.masking, ({}, {}))
    for name in ("eps", "t_min", "t_max"):
        if name in chosen.options and getattr(cfg, name) is not None:
            opts[name], labels[name] = getattr(cfg, name), typed.flag_name(name)
    for f in _alias_fields():
        value = getattr(cfg, f.name)
        if value is None:
            continue
        schedule, option_name = f.metadata["masking_alias"]
        if schedule in MASKINGS:
            o, lab = sets.setdefault(schedule, ({}, {}))
            o[option_name], lab[option_name] = value, typed.flag_name(f.name)
    for key, value in (cfg.masking_options or {}).items():
        opts[key], labels[key] = value, f"--masking-option {key}"
    return sets


def masking_options(cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """The options (and their labels) the chosen schedule is built with."""
    return masking_option_sets(cfg)[cfg.masking]


def load_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML recipe into a dict (keys as written)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TrainConfigError(f"config file {path} does not exist; give the path of a YAML recipe (see "
                               f"emdm_train/recipes/)")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path} must hold a mapping of option: value")
    return data


# --- command line --------------------------------------------------------------------------------------------

_EPILOG = """\
examples:
  python -m emdm_train --model tiny-bert --data corpus.txt --output runs/tiny --max-steps 200
  python -m emdm_train --model tiny-bert --data corpus.txt --output runs/s --masking surprise \\
      --surprise-temperature 1.0 --max-steps 200
  python -m emdm_train --config emdm_train/recipes/tiny-cpu.yaml --model tiny-bert --data corpus.txt
  accelerate launch --num_processes 8 -m emdm_train --config recipe.yaml       # several GPUs
  python -m emdm_train ... --resume                                            # continue a killed run
"""


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: one option per `TrainConfig` field, plus --config."""
    parser = argparse.ArgumentParser(
        prog="python -m emdm_train",
        description="Fine-tune (or pre-train) a masked diffusion language model with uniform, LLaDA, surprise-"
                    "weighted or entropy-ordered masking. Options override the --config YAML recipe.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="YAML", help="YAML recipe whose keys are the options below "
                        "(e.g. emdm_train/recipes/tiny-cpu.yaml); command-line options win")

    def resume_flag(group: Any, flag: str, help_text: str) -> None:
        group.add_argument(flag, nargs="?", const="latest", metavar="CHECKPOINT", help=help_text)

    def masking_option_flag(group: Any, flag: str, help_text: str) -> None:
        group.add_argument("--masking-option", flag, dest="masking_options", action="append", metavar="K=V",
                           help=help_text)

    typed.add_arguments(parser, TrainConfig, special={"resume": resume_flag,
                                                      "masking_options": masking_option_flag})
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line (with an optional --config recipe) into a validated `TrainConfig`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # a value that starts with a minus and a digit ("--noise-weight-range -1,2") is a value, not a flag: argparse
    # only takes plain negative numbers, so attach such values to their flag
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1].startswith("--") and "=" not in joined[-1] and re.match(r"^-\d", token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    args = vars(build_parser().parse_args(joined))
    recipe_path = args.pop("config", None)
    values: dict[str, Any] = {}
    if recipe_path:
        values.update({str(k).replace("-", "_"): v for k, v in load_recipe(recipe_path).items()})
        TrainConfig.from_dict(values, origin=str(recipe_path))  # report a bad recipe key by its file
    if "masking_options" in args:  # --masking-option k=v (repeated) adds to the recipe's mapping
        merged = dict(typed.coerce(values.get("masking_options") or {}, dict[str, Any], "masking_options",
                                   TrainConfigError))
        for item in args.pop("masking_options"):
            merged.update(typed.parse_mapping(item, "--masking-option"))
        values["masking_options"] = merged
    values.update(args)
    cfg = TrainConfig.from_dict(values, origin="the command line" if not recipe_path else
                                f"{recipe_path} / the command line")
    return cfg.validate()
