"""`EMDMLM`: the lm-evaluation-harness model `emdm` for masked diffusion language models.

    lm_eval --model emdm --model_args pretrained=DIR,sampler=margin,steps=64 --tasks TASKS

Generation goes through `emdm_sampling.generate` (any registered sampler), log-likelihoods through the Monte Carlo
ELBO of `emdm_eval.likelihood`. Every source of randomness is seeded per request from lm-eval's `--seed` (its torch
seed, or `seed=` in `--model_args`) and the request itself, so scores do not move with `--batch_size` or the number
of processes. See the README ("Model arguments") for every argument.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from emdm_core import typed
from emdm_core.cli import install_excepthook
from emdm_core.devices import resolve_device
from emdm_core.errors import ConfigError, InputTooLongError
from emdm_core.launch import relaunch_on_cpu, requested_cpu_processes
from emdm_core.seeds import stable_seed
from emdm_core.typed import at_least, option
from emdm_core.prompts import bos_id, prompt_ids, read_chat_template, training_prompts
from emdm_models.loading import load_denoiser, resolve_embedded
from emdm_sampling import DecodePlan, SamplerConfig, generate, plan_decoding

from .likelihood import elbo_loglikelihood
from .registration import register as _register

eval_logger = logging.getLogger("lm_eval.models.emdm")


def _batch_size_problem(value: str) -> str | None:
    text = str(value).strip().lower()
    if text.startswith("auto"):
        return None
    try:
        return None if int(float(text)) >= 1 and float(text).is_integer() else "must be >= 1 or auto"
    except ValueError:
        return "is not an integer; use a positive integer, auto or auto:N"


@dataclass(frozen=True)
class EMDMArgs:
    """The `--model_args` of `--model emdm` that are not sampler options (those are `SamplerConfig`'s)."""

    pretrained: str | None = option(None, "checkpoint directory, emdm:NAME or Hub id (required)")
    adapter: str | None = option(None, "force the model family (default: from the config)")
    tokenizer: str | None = option(None, "load the tokenizer from another path or Hub id")
    mask_token_id: int | None = option(None, "the mask id, when neither the tokenizer nor the config has it")
    max_length: int | None = option(None, "maximum sequence length (default: the config's)", check=at_least(2))
    dtype: str | None = option(None, "auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16")
    trust_remote_code: bool = option(False, "allow the checkpoint's own model code")
    peft: str | None = option(None, "a LoRA/PEFT adapter directory, loaded on top of pretrained and merged")
    device: str | None = option(None, "cuda, cuda:1, cpu, ... (default: cuda when available)")
    batch_size: str = option("1", "requests per generation batch, or auto / auto:N", check=_batch_size_problem)
    max_batch_size: int = option(64, "upper bound for batch_size=auto", check=at_least(1))
    max_gen_toks: int = option(256, "generation length of requests that do not set max_gen_toks",
                               check=at_least(0))
    gen_length: int | None = option(None, "force this generation length on every request", check=at_least(0))
    mc_num: int = option(128, "Monte Carlo draws per loglikelihood request and rolling window", check=at_least(1))
    mc_batch_size: int | None = option(32, "rows per forward pass for those draws (and LLaDA's batch of draws with "
                                           "mc_counts=llada)", check=at_least(1))
    mc_counts: str = option("uniform", "how the draws' mask counts are stratified: uniform (exactly uniform on "
                                       "1..L) or llada (eval_llada.py's rounding, for its published numbers)",
                            choices=("uniform", "llada"))
    greedy: str = option("onepass", "how is_greedy is computed", choices=("onepass", "decode", "off"))
    truncation: str = option("error", "a too long prompt is an error, or loses its oldest tokens (left)",
                             choices=("error", "left"))
    add_bos_token: bool = option(True, "put the tokenizer's BOS (or CLS) token in front of prompts")
    prompt_format: str = option("auto", "how prompts become ids: bos (the BOS/CLS id in front, lm-eval's way), "
                                        "tokenizer (the tokenizer's own special tokens, e.g. [CLS] ... [SEP], then "
                                        "the fine-tuning separator: emdm_train's prompt/response rows), auto "
                                        "(tokenizer for checkpoints emdm_train fine-tuned on prompt/response data, "
                                        "else bos)", choices=("auto", "bos", "tokenizer"))
    chat_template: str | None = option(None, "a Jinja chat template (a file path or the template itself)")
    seed: int | None = option(None, "base seed (default: lm-eval's torch seed, --seed)")

    def __post_init__(self) -> None:
        typed.check_fields(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in typed.fields(cls)]


MODEL_ARGS: tuple[str, ...] = tuple(EMDMArgs.field_names())


def parse_model_args(kwargs: Mapping[str, Any],
                     config_class: type = SamplerConfig) -> tuple[EMDMArgs, dict[str, Any]]:
    """Split `--model_args` into the model arguments and the sampler arguments, typed and checked (the sampler's
    by building its config); unknown keys are one error that lists the valid ones. `emdm-eval` calls it before
    lm-eval indexes its tasks and `EMDMLM` when lm-eval builds the model: the second call reuses the first parse."""
    items = tuple(sorted(kwargs.items(), key=lambda kv: kv[0]))
    try:
        hash(items)
    except TypeError:  # values lm-eval never produces (lists, dicts): parse without the memo
        return _parse_model_args.__wrapped__(items, config_class)
    return _parse_model_args(items, config_class)


@functools.lru_cache(maxsize=8)
def _parse_model_args(items: tuple[tuple[str, Any], ...], config_class: type) -> tuple[EMDMArgs, dict[str, Any]]:
    kwargs = dict(items)
    model_kw = {k: kwargs.pop(k) for k in list(kwargs) if k in MODEL_ARGS}
    sampler = str(kwargs.get("sampler", config_class().sampler))
    from emdm_sampling.strategies import get_sampler

    strategy = get_sampler(sampler)  # ConfigError naming the registered samplers
    sampler_fields = [n for n in config_class.field_names() if n not in config_class.PER_REQUEST]
    unknown = sorted(k for k in kwargs if k not in sampler_fields and k not in strategy.options)
    if unknown:
        raise ConfigError(
            f"unknown --model_args key(s) {', '.join(unknown)} for --model emdm; model arguments: "
            f"{', '.join(MODEL_ARGS)}; sampler arguments: {', '.join(sorted(sampler_fields))}; "
            f"sampler {sampler!r} options: {', '.join(sorted(strategy.options)) or 'none'}")
    args = typed.build(EMDMArgs, model_kw, origin="--model_args")
    if args.pretrained in (None, ""):
        raise ConfigError("emdm needs a checkpoint: pass --model_args pretrained=<checkpoint directory or Hub id>")
    config = config_class.from_kwargs(**kwargs)  # the sampler arguments typed and checked, once
    typed_kwargs = {k: (config.options[k] if k in config.options else getattr(config, k)) for k in kwargs}
    return args, typed_kwargs


@functools.lru_cache(maxsize=1)
def _hf_generation_arguments() -> frozenset[str]:
    """Names transformers' `generate` takes (top_p, num_beams, ...): tasks set them; emdm ignores them."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig().to_dict()) | {"max_new_tokens", "min_new_tokens"}


def _launched_world_size() -> int:
    """Processes started by the launcher (torchrun / accelerate launch / mpirun); 1 for a plain run."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        try:
            value = int(os.environ.get(name, "1"))
        except ValueError:
            continue
        if value > 1:
            return value
    return 1


@dataclass
class _Request:
    """One generate_until request, prepared: its index, prompt ids, checked decoding plan and stop strings."""

    index: int
    prompt: list[int]
    plan: DecodePlan
    until: list[str]


class EMDMLM(TemplateLM):
    """lm-eval model for masked diffusion LMs (registered as `emdm`)."""

    backend = "causal"  # context + continuation are encoded together, then split (TemplateLM._encode_pair)
    config_class: type = SamplerConfig  # the sampler's typed config (a subclass may add shared options)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        nprocs = requested_cpu_processes()
        if nprocs > 1:  # `accelerate launch --cpu --num_processes N` started one process: run N, then stop here
            raise SystemExit(relaunch_on_cpu(nprocs))
        # lm-eval seeds torch (--seed, default 1234) right before it builds the model: that is our base seed.
        lm_eval_seed = torch.initial_seed()
        self.args, sampler_kwargs = parse_model_args(kwargs, self.config_class)
        launcher = os.path.basename(os.path.dirname(sys.argv[0] or "")) + os.path.basename(sys.argv[0] or "")
        if "lm_eval" in launcher or "lm-eval" in launcher:
            from .__main__ import _flag, check_output_path

            check_output_path(_flag(sys.argv, "--output_path"))  # the plain lm_eval CLI: before the model loads
        args = self.args
        self.mc_num, self.mc_batch_size, self.greedy, self.truncation = (args.mc_num, args.mc_batch_size,
                                                                          args.greedy, args.truncation)
        self._max_gen_toks, self.gen_length, self.add_bos_token = args.max_gen_toks, args.gen_length, \
            args.add_bos_token
        self.seed = int(args.seed) if args.seed is not None else int(lm_eval_seed)
        self.max_batch_size = args.max_batch_size
        text = str(args.batch_size).strip().lower()
        self.batch_size: int | str = "auto" if text.startswith("auto") else int(float(text))
        self._auto_batch: int | None = None

        # --- processes and device (accelerate launch -> data parallel) ----------------------------------------
        self.accelerator = None
        if _launched_world_size() > 1:
            from datetime import timedelta

            from accelerate import Accelerator, InitProcessGroupKwargs

            # On a machine without CUDA (or with device=cpu) the processes talk over gloo: accelerate only picks
            # its MULTI_CPU mode when asked for the CPU explicitly.
            use_cpu = not torch.cuda.is_available() or str(args.device or "").startswith("cpu")
            acc = Accelerator(cpu=use_cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
            if acc.num_processes > 1:
                self.accelerator = acc
                self._rank, self._world_size = acc.process_index, acc.num_processes
        device = (self.accelerator.device if self.accelerator is not None
                  else resolve_device(args.device, warn=lambda m: eval_logger.warning(f"emdm: {m}")))
        if self.world_size > 1 and args.seed is None:
            shared = [self.seed]  # without lm-eval's --seed the processes would start from different seeds
            torch.distributed.broadcast_object_list(shared, src=0)
            self.seed = int(shared[0])

        # --- the model -----------------------------------------------------------------------------------------
        self.pretrained = str(args.pretrained)
        self.peft = args.peft
        self.denoiser = load_denoiser(
            self.pretrained, adapter=args.adapter, device=device, dtype=args.dtype,
            trust_remote_code=args.trust_remote_code, mask_token_id=args.mask_token_id, tokenizer=args.tokenizer,
            max_length=args.max_length, peft=self.peft)
        self._device = self.denoiser.device
        self.tokenizer = self.denoiser.tokenizer
        # the family's own decoding (DiffusionGemma's) unless the user chose a sampler, checked against the model
        # once, before any request
        self._set_sampler(self.config_class.for_denoiser(self.denoiser, **sampler_kwargs))
        if args.chat_template:
            self.tokenizer.chat_template = read_chat_template(str(args.chat_template))
        self._bos = bos_id(self.tokenizer)
        recorded = training_prompts(self.peft, resolve_embedded(self.pretrained))
        self.prompt_format = args.prompt_format
        if self.prompt_format == "auto":
            self.prompt_format = "tokenizer" if recorded is not None else "bos"
        self._recorded, self._separator = recorded, (recorded.separator if recorded is not None else None)
        eos = self.denoiser.eos_token_id
        self._eos_str = (self.tokenizer.decode([eos], skip_special_tokens=False)
                         if eos is not None and eos < len(self.tokenizer) else None)
        self._stats: dict[str, Counter] = defaultdict(Counter)
        self._task_stats: dict[str, Counter] = defaultdict(Counter)  # generate_until, per task
        self._warned: set[str] = set()
        if self.rank == 0:
            eval_logger.info(f"emdm: {self._describe()}; seed {self.seed}; processes {self.world_size}")

    def _describe(self) -> str:
        """The start-up line: the model as its contract declares it (a uniform-state model has no mask id to
        show), and the sampler settings that hold for every request (the generation length is each request's)."""
        contract = self.denoiser.contract
        mask = f", mask id {self.denoiser.mask_token_id}" if contract.noise == "mask" else ""
        per_request = self.config_class.PER_REQUEST
        settings = {k: v for k, v in self.sampler_config.to_dict().items() if k not in per_request}
        length = f"gen_length {self.gen_length} (forced)" if self.gen_length is not None else \
            "gen_length per request (max_gen_toks)"
        return (f"{type(self.denoiser).__name__} {self.pretrained} on {self.device}: {contract.describe()}, "
                f"max_length {self.max_length}{mask}; sampler {settings}; {length}")

    # --- construction helpers --------------------------------------------------------------------------------
    def configure_sampler(self, **kwargs: Any) -> None:
        """Replace the sampler arguments (as in --model_args) and reset the statistics; the model stays loaded.

        For sweeps in one process (`emdm_eval.ablation`): each `simple_evaluate(model=lm, ...)` after this call
        decodes with the new settings and reports only its own forward passes and time.
        """
        unknown = [k for k in kwargs if k in self.config_class.PER_REQUEST]
        if unknown:
            raise ConfigError(f"{', '.join(unknown)} are model arguments, set when the model is built")
        self._set_sampler(self.config_class.from_kwargs(**kwargs))
        self._stats = defaultdict(Counter)
        self._task_stats = defaultdict(Counter)
        self._task_stats_all = {}

    def _set_sampler(self, config: SamplerConfig) -> None:
        """The model's decoding: `config` checked against the model's contract (one `DecodePlan`); requests whose
        generation arguments change something get their own plan, built once per distinct setting."""
        self.sampler_config = config
        self.plan = plan_decoding(config, self.denoiser.contract)
        self._request_plans: dict[str, tuple[DecodePlan, list[str]]] = {}


    # --- properties lm-eval uses -------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.denoiser.eos_token_id
        return int(eos) if eos is not None else int(self.denoiser.pad_token_id)

    @property
    def prefix_token_id(self) -> int:
        return self._bos if self._bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return int(self.denoiser.max_length)

    @property
    def max_gen_toks(self) -> int:
        return int(self._max_gen_toks)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.pretrained)).replace("/", "__")

    # --- distributed primitives (accelerate launch) -----------------------------------------------------------
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size <= 1:
            return tensor
        return self.accelerator.gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> list | None:
        if self.world_size <= 1:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()

    # --- tokenisation ------------------------------------------------------------------------------------------
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """Token ids of `string`, with the BOS (or CLS) id in front unless `add_special_tokens=False`."""
        ids = list(self.tokenizer(string, add_special_tokens=False)["input_ids"])
        if add_special_tokens is False or not self.add_bos_token or self._bos is None:
            return ids
        return ids if ids[:1] == [self._bos] else [self._bos] + ids

    def encode_prompt(self, context: str) -> list[int]:
        """A generation prompt's ids under `prompt_format` (`emdm_core.prompts.prompt_ids`, which
        `python -m emdm_sampling` uses too): as emdm_train built the checkpoint's prompt/response rows
        (`tokenizer`), or with lm-eval's BOS convention (`bos`)."""
        return prompt_ids(self.tokenizer, context, self.prompt_format, self._recorded, self.add_bos_token)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if self.prompt_format != "tokenizer":
            return super()._encode_pair(context, continuation)
        # the response is tokenised on its own after the prompt's special tokens and separator, as in training
        return self.encode_prompt(context), self.tok_encode(continuation, add_special_tokens=False)

    def tok_decode(self, tokens: list[int]) -> str:
        vocab = len(self.tokenizer)
        mask_id = self.denoiser.mask_token_id
        keep = [t for t in tokens if 0 <= t < vocab and t != mask_id]
        return self.tokenizer.decode(keep, skip_special_tokens=True)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"the tokenizer of {self.pretrained} has no chat template; pass "
                              f"chat_template=<Jinja file or string> in --model_args, or drop --apply_chat_template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # --- loglikelihood -----------------------------------------------------------------------------------------
    def _fit_left(self, tokens: list[int], room: int, no_room: str, too_long: str,
                  keep_bos: bool = False) -> list[int]:
        """`tokens` if they fit in `room`; else, with truncation=left, their last `room` (BOS kept in front when
        `keep_bos`); else an `InputTooLongError` (`too_long`); `no_room` when nothing fits."""
        if len(tokens) <= room:
            return tokens
        if room < 1:
            raise InputTooLongError(no_room)
        if self.truncation != "left":
            raise InputTooLongError(too_long)
        keep = tokens[len(tokens) - room:]
        if keep_bos and self._bos is not None and tokens[:1] == [self._bos] and keep[:1] != [self._bos]:
            keep = [self._bos] + keep[1:]
        return keep

    def _fit(self, context: list[int], continuation: list[int], what: str) -> list[int]:
        """The context, cut from the left with truncation=left, so that context + continuation fit."""
        return self._fit_left(
            context, self.max_length - len(continuation),
            f"{what}: the continuation alone has {len(continuation)} tokens, more than the model's maximum length "
            f"{self.max_length} minus one; pass max_length=<larger> if the model supports it",
            f"{what}: context of {len(context)} tokens + {len(continuation)} to score exceeds the model's maximum "
            f"length {self.max_length}; lower --num_fewshot or pass truncation=left in --model_args to drop the "
            f"oldest context tokens")

    def _check_likelihood(self) -> None:
        """Uniform-state models have no masked ELBO: a one-line error instead of wrong numbers."""
        problem = self.denoiser.likelihood_problem
        if problem:
            raise ConfigError(f"{self.pretrained}: {problem}")

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        self._check_likelihood()
        return super().loglikelihood(requests, disable_tqdm=disable_tqdm or self.rank != 0)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        stats = self._stats["loglikelihood"]
        start, passes0 = time.perf_counter(), self.denoiser.forward_calls
        out: list[tuple[float, bool]] = []
        for (context_str, cont_str), context, continuation in tqdm(
                requests, desc="emdm loglikelihood", disable=disable_tqdm or self.rank != 0):
            context = self._fit(list(context), list(continuation), "loglikelihood")
            # The seed depends on the context and the continuation's length only: the choices of one question
            # share their mask draws (common random numbers), which makes their comparison less noisy.
            seed = stable_seed(self.seed, "loglikelihood", context_str, len(continuation))
            res = elbo_loglikelihood(self.denoiser, context, continuation, self.mc_num, seed,
                                     rows=self.mc_batch_size, greedy_row=self.greedy == "onepass",
                                     scheme=self.args.mc_counts, cfg_scale=self.sampler_config.cfg_scale)
            if self.greedy == "decode":
                is_greedy = self._greedy_decode(context, continuation)
            else:
                is_greedy = bool(res.is_greedy) if self.greedy == "onepass" else False
            answer = (float(res.logprob), is_greedy)
            out.append(answer)
            stats["requests"] += 1
            stats["scored_tokens"] += len(continuation)
            self.cache_hook.add_partial("loglikelihood", (context_str, cont_str), answer)
        stats["forward_passes"] += self.denoiser.forward_calls - passes0
        stats["seconds"] += time.perf_counter() - start
        self._summary("loglikelihood")
        return out

    def _greedy_decode(self, context: list[int], continuation: list[int]) -> bool:
        """Whether the configured sampler, at temperature 0 and one token per step, decodes `continuation`."""
        cfg = dataclasses.replace(self.sampler_config, temperature=0.0, gen_length=len(continuation),
                                  steps=len(continuation), block_length=None, threshold=None, stop_at_eos=False)
        res = generate(self.denoiser, [context], cfg, seeds=[stable_seed(self.seed, "greedy", context)])
        return res.generated[0] == list(continuation)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        self._check_likelihood()
        stats = self._stats["loglikelihood_rolling"]
        start, passes0 = time.perf_counter(), self.denoiser.forward_calls
        out: list[float] = []
        # A window is context + the tokens it scores, all in the model's input: at most max_length in total.
        window = self.max_length - 1
        for (string,) in tqdm([req.args for req in requests], desc="emdm loglikelihood_rolling",
                              disable=disable_tqdm or self.rank != 0):
            tokens = self.tok_encode(string, add_special_tokens=False)
            windows = map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=window, context_len=1))
            total = 0.0
            for i, (context, pred) in enumerate(windows):
                seed = stable_seed(self.seed, "rolling", string, i)
                res = elbo_loglikelihood(self.denoiser, context, pred, self.mc_num, seed, rows=self.mc_batch_size,
                                         greedy_row=False, scheme=self.args.mc_counts,
                                         cfg_scale=self.sampler_config.cfg_scale)
                total += res.logprob
                stats["windows"] += 1
            out.append(total)
            stats["requests"] += 1
            stats["scored_tokens"] += len(tokens)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        stats["forward_passes"] += self.denoiser.forward_calls - passes0
        stats["seconds"] += time.perf_counter() - start
        self._summary("loglikelihood_rolling")
        return out

    # --- generation --------------------------------------------------------------------------------------------
    def _request_plan(self, gen_kwargs: dict) -> tuple[DecodePlan, list[str]]:
        """One request's checked decoding plan and its stop strings, built and checked once per distinct
        `gen_kwargs` (a task sends the same ones with every request)."""
        key = json.dumps(gen_kwargs or {}, sort_keys=True, default=str)
        if key not in self._request_plans:
            config, until = self._request_config(gen_kwargs)
            self._request_plans[key] = (plan_decoding(config, self.denoiser.contract), until)
        plan, until = self._request_plans[key]
        return plan, list(until)

    def _request_config(self, gen_kwargs: dict) -> tuple[SamplerConfig, list[str]]:
        """One request's decoding config (its own gen_kwargs over the model's) and its stop strings."""
        gen_kwargs = dict(gen_kwargs or {})
        kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kw.pop("until", None), eos=self._eos_str)
        gen_length = self.gen_length if self.gen_length is not None else int(kw.pop("max_gen_toks"))
        kw.pop("max_gen_toks", None)
        default_temperature = self.sampler_config.temperature
        do_sample = gen_kwargs.get("do_sample")
        if do_sample is False or str(do_sample).lower() == "false":
            temperature = 0.0
        elif "temperature" in gen_kwargs:
            temperature = gen_kwargs["temperature"]
        elif do_sample:
            temperature = default_temperature or 1.0
        else:
            temperature = default_temperature
        overrides: dict[str, Any] = {"gen_length": gen_length, "temperature": temperature}
        if not float(temperature) and self.sampler_config.temperature_end is not None:
            overrides["temperature_end"] = None  # greedy: argmax proposals, no temperature schedule
        sampler = str(kw.get("sampler", self.sampler_config.sampler))
        for key, value in kw.items():
            if key in ("do_sample", "temperature", "until"):
                continue
            if key not in self.config_class.PER_REQUEST and self.config_class.accepts(key, sampler):
                overrides[key] = value
            elif key not in _hf_generation_arguments():
                raise ConfigError(
                    f"unknown generation argument {key!r} (--gen_kwargs or the task's generation_kwargs); emdm takes "
                    f"until, max_gen_toks, do_sample, temperature and the sampler arguments: "
                    f"{', '.join(self.config_class.field_names())}")
            elif key not in self._warned:
                self._warned.add(key)
                eval_logger.warning(f"emdm: generation argument {key}={value!r} has no meaning for a masked "
                                    f"diffusion sampler; ignored")
        config = self.sampler_config.replace(**overrides)
        if config.steps > config.gen_length > 0:
            # a step reveals at least one token: more steps than tokens cannot be used
            config = dataclasses.replace(config, steps=config.gen_length)
        return config, until

    def _fit_prompt(self, prompt: list[int], gen_length: int) -> list[int]:
        """The prompt, cut from the left (keeping BOS) with truncation=left, so that prompt + generation fit."""
        return self._fit_left(
            prompt, self.max_length - gen_length,
            f"generate_until: max_gen_toks={gen_length} leaves no room for a prompt in the model's maximum length "
            f"{self.max_length}; lower max_gen_toks (or gen_length in --model_args)",
            f"generate_until: prompt of {len(prompt)} tokens + max_gen_toks={gen_length} exceeds the model's maximum "
            f"length {self.max_length}; lower --num_fewshot or max_gen_toks, or pass truncation=left in "
            f"--model_args to drop the oldest prompt tokens", keep_bos=True)

    def _resolve_batch_size(self, seq_len: int) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        if self._auto_batch is None:
            bs = self._detect_batch_size(seq_len)
            if self.world_size > 1:
                bs = int(self.all_gather(torch.tensor([bs], device=self.device)).min())
            self._auto_batch = bs
            if self.rank == 0:
                eval_logger.info(f"emdm: batch_size=auto -> {bs}")
        return self._auto_batch

    def _detect_batch_size(self, seq_len: int) -> int:
        if self.device.type != "cuda" or self.denoiser.contract.own_forward is not None:  # no single-pass probe
            return min(self.max_batch_size, 8)
        from accelerate.utils import find_executable_batch_size

        @find_executable_batch_size(starting_batch_size=self.max_batch_size)
        def probe(batch_size: int) -> int:
            x = torch.full((batch_size, seq_len), self.denoiser.mask_token_id, dtype=torch.long, device=self.device)
            self.denoiser.logits(x)
            self.denoiser.forward_calls -= 1
            return batch_size

        bs = probe()
        torch.cuda.empty_cache()
        return bs

    def _request_seeds(self, requests) -> list[int]:
        """One seed per request: lm-eval's seed + the request (task, doc, index, text, gen_kwargs, repeat)."""
        seen: Counter = Counter()
        seeds = []
        for req in requests:
            context, gen_kwargs = req.args
            key = json.dumps([getattr(req, "task_name", None), getattr(req, "doc_id", None),
                              getattr(req, "idx", None), context, gen_kwargs], sort_keys=True, default=str)
            seeds.append(stable_seed(self.seed, "generate_until", key, seen[key]))
            seen[key] += 1  # repeats of one request (e.g. pass@k) get different draws
        return seeds

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if not requests:
            return []
        stats = self._stats["generate_until"]
        seeds = self._request_seeds(requests)
        prepared = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            plan, until = self._request_plan(gen_kwargs)
            prompt = self._fit_prompt(self.encode_prompt(context), plan.config.gen_length)
            prepared.append(_Request(i, prompt, plan, until))
        # requests that decode alike are batched together, longest prompts first (lm-eval's own Collator)
        batches = Collator(prepared, sort_fn=lambda r: (-len(r.prompt), r.index),
                           group_fn=lambda r: {"config": r.plan.config.key()}, group_by="gen_kwargs")

        # batch_size=auto is settled once, on every process (a collective under accelerate), for the longest row
        bs = self._resolve_batch_size(max(len(r.prompt) + r.plan.config.gen_length for r in prepared))
        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), desc="emdm generate_until", disable=disable_tqdm or self.rank != 0)
        start, passes0 = time.perf_counter(), self.denoiser.forward_calls
        for chunk in batches.get_batched(n=bs):
            batch_start = time.perf_counter()
            out = generate(self.denoiser, [r.prompt for r in chunk], chunk[0].plan,
                           seeds=[seeds[r.index] for r in chunk])
            share = (time.perf_counter() - batch_start) / len(chunk)  # the batch's wall time, per request
            stats["row_forward_passes"] += sum(out.row_nfe)  # passes each request took part in
            for req, gen, passes, full in zip(chunk, out.generated, out.row_nfe, out.row_nfe_full):
                text = postprocess_generated_text(self.tok_decode(gen), req.until, None)
                results[req.index] = text
                stats["generated_tokens"] += len(gen)
                stats["empty"] += int(not text.strip())  # what the task scores: after EOS and the stop strings
                task = self._task_stats[str(getattr(requests[req.index], "task_name", None) or "?")]
                task.update({"requests": 1, "generated_tokens": len(gen), "row_passes": passes,
                             "row_full_passes": full, "seconds": share})
                self.cache_hook.add_partial("generate_until", requests[req.index].args, text)
            pbar.update(len(chunk))
        pbar.close()
        stats["requests"] += len(requests)
        stats["forward_passes"] += self.denoiser.forward_calls - passes0
        stats["seconds"] += time.perf_counter() - start
        self._summary("generate_until")
        self._gather_task_stats()
        return results  # type: ignore[return-value]

    # --- reporting ---------------------------------------------------------------------------------------------
    def _totals(self, kind: str) -> Counter:
        stats = self._stats[kind]
        if self.world_size <= 1:
            return Counter(stats)
        keys = ["requests", "forward_passes", "row_forward_passes", "generated_tokens", "empty", "scored_tokens",
                "windows", "seconds"]
        local = torch.tensor([float(stats.get(k, 0)) for k in keys], dtype=torch.float64, device=self.device)
        gathered = self.all_gather(local.unsqueeze(0)).view(self.world_size, -1).cpu()
        total = Counter({k: float(gathered[:, j].sum()) for j, k in enumerate(keys)})
        total["seconds"] = float(gathered[:, keys.index("seconds")].max())  # wall time: the slowest process
        return total

    def _summary(self, kind: str) -> None:
        tot = self._totals(kind)
        self._stats[kind + "_all"] = tot
        if self.rank != 0:
            return
        secs = max(float(tot["seconds"]), 1e-9)
        if kind == "generate_until":
            msg = (f"{int(tot['requests'])} requests, {int(tot['forward_passes'])} forward passes, "
                   f"{int(tot['generated_tokens'])} generated tokens in {secs:.1f}s "
                   f"({tot['generated_tokens'] / secs:.1f} tokens/s, prompt excluded), "
                   f"{int(tot['empty'])} empty (nothing left after EOS and the stop strings)")
        else:
            msg = (f"{int(tot['requests'])} requests, {int(tot['forward_passes'])} forward passes, "
                   f"{int(tot['scored_tokens'])} scored tokens in {secs:.1f}s, mc_num={self.mc_num}")
        eval_logger.info(f"emdm {kind}: {msg} (all {self.world_size} processes)")

    def _gather_task_stats(self) -> None:
        """Every process's per-task counts, merged on the first (a collective: every process calls it)."""
        parts = self.gather_object(dict(self._task_stats)) if self.world_size > 1 else [dict(self._task_stats)]
        merged: dict[str, Counter] = defaultdict(Counter)
        for part in parts or []:
            for name, counts in part.items():
                merged[name].update(counts)
        self._task_stats_all = merged

    def task_speed(self) -> dict[str, dict[str, float]]:
        """Per task (all processes): forward passes per item (full / cached), tokens per forward, generated tokens
        and generation seconds, as Fast-dLLM and dInfer report them."""
        out = {}
        for name, c in getattr(self, "_task_stats_all", {}).items():
            n, passes = max(c["requests"], 1), max(c["row_passes"], 1)
            out[name] = {"forward_passes_per_item": c["row_passes"] / n,
                         "full_passes_per_item": c["row_full_passes"] / n,
                         "cached_passes_per_item": (c["row_passes"] - c["row_full_passes"]) / n,
                         "tokens_per_forward": c["generated_tokens"] / passes,
                         "generated_tokens": float(c["generated_tokens"]),
                         "generation_seconds": round(float(c["seconds"]), 3)}
        return out

    def get_model_info(self) -> dict:
        info: dict[str, Any] = {
            "model_num_parameters": sum(p.numel() for p in self.denoiser.model.parameters()),
            "model_dtype": str(next(self.denoiser.model.parameters()).dtype),
            "model_revision": None,
            "model_sha": "",
        }
        stats = {}
        for kind in ("generate_until", "loglikelihood", "loglikelihood_rolling"):
            tot = self._stats.get(kind + "_all")
            if tot:
                entry = {k: (round(v, 3) if isinstance(v, float) and k == "seconds" else int(v))
                         for k, v in tot.items()}
                if kind == "generate_until":
                    entry["tokens_per_second"] = round(tot["generated_tokens"] / max(tot["seconds"], 1e-9), 2)
                stats[kind] = entry
        info["emdm"] = {"adapter": type(self.denoiser).__name__, "sampler": self.sampler_config.to_dict(),
                        "mc_num": self.mc_num, "mc_batch_size": self.mc_batch_size, "greedy": self.greedy,
                        "seed": self.seed, "processes": self.world_size, "peft": self.peft, "stats": stats}
        return info


def _quiet_git_hash() -> str | None:
    """lm-eval's `git_hash` of the working folder, without git's "fatal: not a git repository" on the terminal when
    the folder is not a repository (lm-eval lets git's stderr through)."""
    import subprocess

    try:
        done = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from lm_eval.loggers.utils import get_commit_from_path

    return get_commit_from_path(os.getcwd())


def _add_task_speed(results: dict, lm: Any) -> None:
    """lm-eval's `add_tokenizer_info(results, lm)`, then (for `--model emdm`) each generation task's speed in its
    results and in the printed table: forward passes per item (full / cached), tokens per forward, tokens, seconds."""
    _ADD_TOKENIZER_INFO(results, lm)
    if isinstance(lm, EMDMLM):
        for task, speed in lm.task_speed().items():
            if task in results.get("results", {}):
                results["results"][task].update({f"{k},none": v for k, v in speed.items()})


def _quiet_lm_eval_git() -> None:
    """Install emdm's wrappers in lm-eval's evaluator (the quiet git hash, the per-task speed)."""
    global _ADD_TOKENIZER_INFO
    import lm_eval.evaluator

    lm_eval.evaluator.get_git_commit_hash = _quiet_git_hash
    if lm_eval.evaluator.add_tokenizer_info is not _add_task_speed:
        _ADD_TOKENIZER_INFO = lm_eval.evaluator.add_tokenizer_info
        lm_eval.evaluator.add_tokenizer_info = _add_task_speed


_ADD_TOKENIZER_INFO: Any = None


install_excepthook()
_quiet_lm_eval_git()
_register()  # imported directly (not through lm-eval's registry): make sure `emdm` is registered, built-ins first
