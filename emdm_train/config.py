"""The training recipe: one dataclass, filled from a YAML file (`--config`) and command-line options (which win).

Every field is a command-line option (`learning_rate` -> `--learning-rate`) and a YAML key (either spelling).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TrainConfigError


def _opt(default: Any, help: str, group: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "group": group, **extra})


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

    # -- data -----------------------------------------------------------------------------------------------------
    data: str | None = _opt(None, "training data: a local .jsonl/.json/.txt/.parquet/.csv file, a folder of them, "
                            "or a hub dataset name (offline: must be in the local cache)", "data")
    data_config: str | None = _opt(None, "configuration name of a hub dataset (e.g. wikitext-2-raw-v1)", "data")
    split: str = _opt("train", "split of --data to train on", "data")
    data_format: str = _opt("auto", "auto | text | prompt_response. auto picks prompt_response when the "
                            "--prompt-field and --response-field columns exist, else text", "data",
                            choices=("auto", "text", "prompt_response"))
    text_column: str = _opt("text", "column holding the text (text format)", "data")
    prompt_field: str = _opt("prompt", "column holding the prompt (prompt_response format; never masked)", "data")
    response_field: str = _opt("response", "column holding the response (prompt_response format; the only part "
                               "that is masked and trained on)", "data")
    separator: str | None = _opt(None, "text placed between prompt and response, e.g. '[SEP]' (part of the prompt)",
                                 "data")
    max_length: int | None = _opt(None, "sequence length in tokens (default: the model's maximum, capped at 512)",
                                  "data")
    pack: bool | None = _opt(None, "text format: concatenate documents (each ended by EOS) and cut them into "
                             "max_length blocks (default) or keep one document per row (--no-pack)", "data")
    add_eos: bool = _opt(True, "end every document / response with the EOS token (SEP when there is no EOS)",
                         "data")
    mask_eos: bool = _opt(True, "let the EOS that ends a document/response be masked and predicted, so that the "
                          "model learns where text ends (all other special tokens are never masked)", "data")
    val_data: str | None = _opt(None, "held-out data source (default: --val-split of --data)", "data")
    val_split: float = _opt(0.05, "fraction of the documents of --data held out for evaluation when --val-data "
                            "is not given", "data")
    max_eval_examples: int = _opt(256, "evaluate on at most this many held-out sequences", "data")
    max_examples: int | None = _opt(None, "use only the first N documents of --data (quick runs)", "data")

    # -- masking --------------------------------------------------------------------------------------------------
    masking: str = _opt("uniform", "masking schedule: uniform (MDLM, t~U(eps,1), weight 1/t) | llada (t~U(0.15,"
                        "0.99), weight 1/t) | surprise (seed 000: k=round(t n) tokens drawn by softmax(S/T), weight "
                        "n/k) | entropy (ENS: lowest model entropy masked first, weight n/k)", "masking")
    eps: float = _opt(1e-3, "smallest noise level t of uniform/surprise/entropy", "masking")
    t_min: float | None = _opt(None, "override the schedule's lowest noise level (llada: 0.15)", "masking")
    t_max: float | None = _opt(None, "override the schedule's highest noise level (llada: 0.99)", "masking")
    stratified_t: bool = _opt(True, "spread the noise levels of a batch evenly over [t_min, t_max] (MDLM's "
                              "low-discrepancy sampler) instead of drawing them independently", "masking")
    surprise_temperature: float = _opt(1.0, "T of softmax(S/T) (> 0): small = (near) deterministic order by "
                                       "surprise, large (1e6) = uniform masking", "masking")
    surprise_mask_first: str = _opt("high", "high: seed 000's formula, high-surprise tokens masked first (so "
                                    "revealed last in generation); low: the seed's stated aim, frequent tokens "
                                    "masked first so informative ones are predicted first", "masking",
                                    choices=("high", "low"))
    surprise_table: str = _opt("auto", "auto: reuse the --model checkpoint's surprise.safetensors if it has one, "
                               "else count the training data; data: always count the training data; or a path "
                               "to a directory/file holding surprise.safetensors", "masking")
    entropy_temperature: float = _opt(0.0, "entropy masking: 0 = ENS's deterministic order, T > 0 samples the "
                                      "order from softmax(-H/T)", "masking")
    entropy_mask_first: str = _opt("low", "entropy masking: low (ENS) or high entropy masked first", "masking",
                                   choices=("low", "high"))
    entropy_probe_passes: int = _opt(0, "entropy masking: 0 = one no-grad pass on the clean sequence; P >= 1 = P "
                                     "passes, each masking 1/P of the tokens, entropy read where masked", "masking")

    # -- optimisation -----------------------------------------------------------------------------------------------
    max_steps: int | None = _opt(None, "optimizer steps to train (or give --num-epochs)", "optimisation")
    num_epochs: float | None = _opt(None, "epochs over the training data, when --max-steps is not given",
                                    "optimisation")
    batch_size: int = _opt(32, "sequences per optimizer step, over all processes and accumulation steps (so a "
                           "recipe trains the same on 1 or 8 devices)", "optimisation")
    micro_batch_size: int | None = _opt(None, "sequences per forward pass on one device (default: batch_size / "
                                        "(processes * grad_accum)); sets grad_accum when given", "optimisation")
    grad_accum: int | None = _opt(None, "gradient accumulation steps (default 1, or derived from "
                                  "--micro-batch-size)", "optimisation")
    learning_rate: float = _opt(1e-4, "peak learning rate (AdamW)", "optimisation")
    weight_decay: float = _opt(0.01, "AdamW weight decay (not applied to biases and norms)", "optimisation")
    adam_beta1: float = _opt(0.9, "AdamW beta1", "optimisation")
    adam_beta2: float = _opt(0.999, "AdamW beta2", "optimisation")
    adam_eps: float = _opt(1e-8, "AdamW epsilon", "optimisation")
    warmup_steps: int | None = _opt(None, "linear warm-up steps (default: 5% of the steps)", "optimisation")
    lr_scheduler: str = _opt("cosine", "learning-rate decay after warm-up: cosine | linear | constant",
                             "optimisation", choices=("cosine", "linear", "constant"))
    min_lr_ratio: float = _opt(0.1, "final learning rate as a fraction of the peak (cosine/linear)",
                               "optimisation")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm (0 disables)", "optimisation")
    mixed_precision: str = _opt("auto", "auto (bf16 on a GPU that supports it, else fp32) | no | bf16 | fp16",
                                "optimisation", choices=("auto", "no", "bf16", "fp16"))
    cpu: bool = _opt(False, "train on the CPU even when a GPU is present", "optimisation")
    seed: int = _opt(0, "seed of the data order, the masking noise, dropout and random initialisation",
                     "optimisation")

    # -- output -----------------------------------------------------------------------------------------------------
    output: str | None = _opt(None, "output directory: checkpoint-N/ every --save-every steps, and the final "
                              "model files at its top level (load it with pretrained=OUTPUT)", "output")
    save_every: int = _opt(500, "write checkpoint-N/ (model + optimizer state) every N steps (0: only at the end)",
                           "output")
    save_total_limit: int | None = _opt(2, "keep only the newest N checkpoints (none keeps all)", "output")
    eval_every: int = _opt(500, "held-out loss every N steps (0: only before and after training)", "output")
    log_every: int = _opt(10, "log loss, learning rate and tokens/s every N steps", "output")
    report_to: str = _opt("auto", "auto (TensorBoard when installed) | tensorboard | none", "output",
                          choices=("auto", "tensorboard", "none"))
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
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                close = [k for k in known if k.startswith(key[:4])]
                hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
                raise TrainConfigError(f"unknown option {raw_key!r} in {origin}{hint}; see python -m emdm_train "
                                       f"--help")
            kwargs[key] = _coerce(key, value, hints[key], origin)
        return cls(**kwargs)

    def validate(self) -> "TrainConfig":
        """Check required fields and ranges; raise `TrainConfigError` with the option to fix."""
        from .masking import available_maskings

        for name in ("model", "data", "output"):
            if not getattr(self, name):
                raise TrainConfigError(f"--{name.replace('_', '-')} is required (or set {name}: in the --config "
                                       f"YAML)")
        if self.max_steps is None and self.num_epochs is None:
            raise TrainConfigError("give --max-steps N or --num-epochs E")
        if self.max_steps is not None and self.max_steps < 1:
            raise TrainConfigError(f"--max-steps must be >= 1 (got {self.max_steps})")
        if self.num_epochs is not None and not self.num_epochs > 0:
            raise TrainConfigError(f"--num-epochs must be > 0 (got {self.num_epochs})")
        if self.masking not in available_maskings():
            raise TrainConfigError(f"unknown --masking {self.masking!r}; choose one of "
                                   f"{', '.join(available_maskings())}")
        if not self.surprise_temperature > 0 or math.isnan(self.surprise_temperature):
            raise TrainConfigError(f"--surprise-temperature must be > 0 (got {self.surprise_temperature}); small "
                                   f"values such as 0.1 are near-greedy, large ones such as 1e6 give uniform masking")
        if not self.entropy_temperature >= 0:
            raise TrainConfigError(f"--entropy-temperature must be >= 0 (got {self.entropy_temperature})")
        if self.entropy_probe_passes < 0:
            raise TrainConfigError(f"--entropy-probe-passes must be >= 0 (got {self.entropy_probe_passes})")
        if not 0 < self.eps < 1:
            raise TrainConfigError(f"--eps must be in (0, 1) (got {self.eps})")
        for name in ("t_min", "t_max"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be in (0, 1] (got {v})")
        positive = ("batch_size", "learning_rate", "log_every", "max_eval_examples")
        for name in positive:
            if not getattr(self, name) > 0:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)})")
        for name in ("micro_batch_size", "grad_accum", "max_length", "max_examples", "save_total_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
        for name in ("save_every", "eval_every", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise TrainConfigError(f"--warmup-steps must be >= 0 (got {self.warmup_steps})")
        if not 0 <= self.val_split < 1:
            raise TrainConfigError(f"--val-split must be in [0, 1) (got {self.val_split})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise TrainConfigError(f"--min-lr-ratio must be in [0, 1] (got {self.min_lr_ratio})")
        for name, choices in _choices().items():
            if getattr(self, name) not in choices:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)} (got "
                                       f"{getattr(self, name)!r})")
        return self


def _choices() -> dict[str, tuple[str, ...]]:
    return {f.name: f.metadata["choices"] for f in dataclasses.fields(TrainConfig) if "choices" in f.metadata}


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the non-None type of a hint, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return hint, False


def _coerce(key: str, value: Any, hint: Any, origin: str) -> Any:
    base, optional = _base_type(hint)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or key in ("model", "data", "output"):
            return None
        raise TrainConfigError(f"option {key!r} in {origin} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "yes", "1", "on"):
                    return True
                if low in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise TrainConfigError(f"option {key!r} in {origin} must be {base.__name__} (got {value!r})") from None


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
    hints = typing.get_type_hints(TrainConfig)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(TrainConfig):
        group_name = f.metadata["group"]
        group = groups.get(group_name) or groups.setdefault(group_name, parser.add_argument_group(group_name))
        flag = "--" + f.name.replace("_", "-")
        base, optional = _base_type(hints[f.name])
        default = f.default
        help_text = (f.metadata["help"] + ("" if default is None else f" [default: {default}]")).replace("%", "%%")
        if f.name == "resume":
            group.add_argument(flag, nargs="?", const="latest", metavar="CHECKPOINT", help=help_text)
        elif base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            kwargs: dict[str, Any] = {"help": help_text, "metavar": f.name.upper()}
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
                kwargs.pop("metavar")
            group.add_argument(flag, type=str, **kwargs)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse the command line (with an optional --config recipe) into a validated `TrainConfig`."""
    args = vars(build_parser().parse_args(argv))
    recipe_path = args.pop("config", None)
    values: dict[str, Any] = {}
    if recipe_path:
        values.update({str(k).replace("-", "_"): v for k, v in load_recipe(recipe_path).items()})
        TrainConfig.from_dict(values, origin=str(recipe_path))  # report a bad recipe key by its file
    values.update(args)
    cfg = TrainConfig.from_dict(values, origin="the command line" if not recipe_path else
                                f"{recipe_path} / the command line")
    return cfg.validate()
