"""`EMDMLM`: the lm-evaluation-harness model `emdm` for masked diffusion language models.

    lm_eval --model emdm --model_args pretrained=DIR,sampler=margin,steps=64 --tasks TASKS

Generation goes through `emdm_sampling.generate` (any registered sampler), log-likelihoods through the Monte Carlo
ELBO of `emdm_eval.likelihood`. Every source of randomness is seeded per request from lm-eval's `--seed` (its torch
seed, or `seed=` in `--model_args`) and the request itself, so scores do not move with `--batch_size` or the number
of processes. See docs/lm-eval.md for every argument.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from emdm_sampling import SamplerConfig, generate, get_sampler, load_denoiser
from emdm_sampling.errors import ConfigError, EMDMError, InputTooLongError

from emdm_sampling.cpu_launch import relaunch_on_cpu, requested_cpu_processes
from .likelihood import elbo_loglikelihood, stable_seed
from .registration import register as _register

eval_logger = logging.getLogger("lm_eval.models.emdm")

# model_args that are not sampler options, with their defaults.
MODEL_ARGS: dict[str, Any] = {
    "pretrained": None,
    "adapter": None,
    "tokenizer": None,
    "mask_token_id": None,
    "max_length": None,
    "dtype": None,
    "trust_remote_code": False,
    "peft": None,
    "device": None,
    "batch_size": 1,
    "max_batch_size": 64,
    "max_gen_toks": 256,
    "gen_length": None,
    "mc_num": 128,
    "mc_batch_size": 32,
    "greedy": "onepass",
    "truncation": "error",
    "add_bos_token": True,
    "chat_template": None,
    "seed": None,
}
# SamplerConfig fields the model sets itself (per request): not user options of the sampler config here.
_SAMPLER_RESERVED = ("gen_length", "seed")
_GREEDY_MODES = ("onepass", "decode", "off")
_TRUNCATION_MODES = ("error", "left")


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    low = str(value).strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", "none"):
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; use True or False")


def _as_int(name: str, value: Any, minimum: int | None = None, allow_none: bool = False) -> int | None:
    if value is None or (allow_none and str(value).strip().lower() in ("none", "null", "")):
        if allow_none:
            return None
        raise ConfigError(f"{name} needs a value")
    try:
        out = int(value) if not isinstance(value, str) else int(float(value))
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not an integer") from None
    if minimum is not None and out < minimum:
        raise ConfigError(f"{name} must be >= {minimum} (got {out})")
    return out


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


class EMDMLM(TemplateLM):
    """lm-eval model for masked diffusion LMs (registered as `emdm`)."""

    backend = "causal"  # context + continuation are encoded together, then split (TemplateLM._encode_pair)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        nprocs = requested_cpu_processes()
        if nprocs > 1:  # `accelerate launch --cpu --num_processes N` started one process: run N, then stop here
            raise SystemExit(relaunch_on_cpu(nprocs))
        # lm-eval seeds torch (--seed, default 1234) right before it builds the model: that is our base seed.
        lm_eval_seed = torch.initial_seed()
        args = {k: kwargs.pop(k) for k in list(kwargs) if k in MODEL_ARGS}
        opts = {**MODEL_ARGS, **args}
        if opts["pretrained"] in (None, ""):
            raise ConfigError("emdm needs a checkpoint: pass --model_args pretrained=<checkpoint directory or Hub id>")

        self._set_sampler(kwargs)  # sampler: shared fields and the strategy's own options; else unknown

        self.mc_num = _as_int("mc_num", opts["mc_num"], minimum=1)
        self.mc_batch_size = _as_int("mc_batch_size", opts["mc_batch_size"], minimum=1, allow_none=True)
        self.greedy = str(opts["greedy"]).lower()
        if self.greedy not in _GREEDY_MODES:
            raise ConfigError(f"greedy={opts['greedy']!r} is unknown; use one of {', '.join(_GREEDY_MODES)}")
        self.truncation = str(opts["truncation"]).lower()
        if self.truncation not in _TRUNCATION_MODES:
            raise ConfigError(f"truncation={opts['truncation']!r} is unknown; use one of "
                              f"{', '.join(_TRUNCATION_MODES)}")
        self._max_gen_toks = _as_int("max_gen_toks", opts["max_gen_toks"], minimum=0)
        self.gen_length = _as_int("gen_length", opts["gen_length"], minimum=0, allow_none=True)
        self.add_bos_token = _as_bool("add_bos_token", opts["add_bos_token"])
        self.seed = int(opts["seed"]) if opts["seed"] not in (None, "None", "") else int(lm_eval_seed)
        self.max_batch_size = _as_int("max_batch_size", opts["max_batch_size"] or 64, minimum=1)
        self.batch_size = self._parse_batch_size(opts["batch_size"])
        self._auto_batch: int | None = None
        trust_remote_code = _as_bool("trust_remote_code", opts["trust_remote_code"])

        # --- processes and device (accelerate launch -> data parallel) ----------------------------------------
        self.accelerator = None
        if _launched_world_size() > 1:
            from datetime import timedelta

            from accelerate import Accelerator, InitProcessGroupKwargs

            # On a machine without CUDA (or with device=cpu) the processes talk over gloo: accelerate only picks
            # its MULTI_CPU mode when asked for the CPU explicitly.
            use_cpu = not torch.cuda.is_available() or str(opts["device"] or "").startswith("cpu")
            acc = Accelerator(cpu=use_cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))])
            if acc.num_processes > 1:
                self.accelerator = acc
                self._rank, self._world_size = acc.process_index, acc.num_processes
        device = self.accelerator.device if self.accelerator is not None else self._pick_device(opts["device"])
        if self.world_size > 1 and opts["seed"] in (None, "None", ""):
            shared = [self.seed]  # without lm-eval's --seed the processes would start from different seeds
            torch.distributed.broadcast_object_list(shared, src=0)
            self.seed = int(shared[0])

        # --- the model -----------------------------------------------------------------------------------------
        self.pretrained = str(opts["pretrained"])
        self.peft = opts["peft"]
        self.denoiser = load_denoiser(
            self.pretrained, adapter=opts["adapter"], device=device, dtype=opts["dtype"],
            trust_remote_code=trust_remote_code,
            mask_token_id=_as_int("mask_token_id", opts["mask_token_id"], allow_none=True),
            tokenizer=opts["tokenizer"], max_length=_as_int("max_length", opts["max_length"], 2, allow_none=True),
            peft=self.peft)
        self._device = self.denoiser.device
        self.tokenizer = self.denoiser.tokenizer
        if opts["chat_template"]:
            self._set_chat_template(str(opts["chat_template"]))
        self._bos = self._find_bos()
        eos = self.denoiser.eos_token_id
        self._eos_str = (self.tokenizer.decode([eos], skip_special_tokens=False)
                         if eos is not None and eos < len(self.tokenizer) else None)
        self._stats: dict[str, Counter] = defaultdict(Counter)
        self._warned: set[str] = set()
        if self.rank == 0:
            eval_logger.info(
                f"emdm: {type(self.denoiser).__name__} {self.pretrained} on {self.device} "
                f"(max_length {self.max_length}, mask id {self.denoiser.mask_token_id}); sampler "
                f"{self._sampler_kwargs}; seed {self.seed}; processes {self.world_size}")

    # --- construction helpers --------------------------------------------------------------------------------
    def _set_sampler(self, kwargs: dict[str, Any]) -> None:
        """Validate and store the sampler arguments (shared fields and the strategy's options)."""
        sampler_name = str(kwargs.get("sampler", SamplerConfig.sampler))
        strategy = get_sampler(sampler_name)  # ConfigError naming the registered samplers
        sampler_fields = set(SamplerConfig.field_names()) - set(_SAMPLER_RESERVED)
        unknown = sorted(k for k in kwargs if k not in sampler_fields and k not in strategy.options)
        if unknown:
            raise ConfigError(
                f"unknown --model_args key(s) {', '.join(unknown)} for --model emdm; model arguments: "
                f"{', '.join(MODEL_ARGS)}; sampler arguments: {', '.join(sorted(sampler_fields))}; "
                f"sampler {sampler_name!r} options: {', '.join(sorted(strategy.options)) or 'none'}")
        sampler_kwargs = dict(kwargs)
        sampler_kwargs.setdefault("sampler", sampler_name)
        self._default_temperature = float(SamplerConfig.from_kwargs(**dict(sampler_kwargs)).temperature)
        self._sampler_kwargs = sampler_kwargs

    def configure_sampler(self, **kwargs: Any) -> None:
        """Replace the sampler arguments (as in --model_args) and reset the statistics; the model stays loaded.

        For sweeps in one process (`emdm_eval.ablation`): each `simple_evaluate(model=lm, ...)` after this call
        decodes with the new settings and reports only its own forward passes and time.
        """
        self._set_sampler(kwargs)
        self._stats = defaultdict(Counter)

    def _parse_batch_size(self, value: Any) -> int | str:
        text = str(value).strip().lower()
        if text.startswith("auto"):
            return "auto"
        return _as_int("batch_size", value, minimum=1)

    @staticmethod
    def _pick_device(device: Any) -> str:
        """The requested device; CUDA requests fall back to the CPU (lm-eval passes cuda:0 by default)."""
        if device in (None, "", "auto"):
            return "cuda" if torch.cuda.is_available() else "cpu"
        dev = str(device)
        if dev.startswith("cuda") and not torch.cuda.is_available():
            eval_logger.warning(f"emdm: device={dev} requested but CUDA is not available; running on the CPU")
            return "cpu"
        if dev.startswith("mps") and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            eval_logger.warning(f"emdm: device={dev} requested but MPS is not available; running on the CPU")
            return "cpu"
        return dev

    def _set_chat_template(self, value: str) -> None:
        path = Path(os.path.expanduser(value))
        try:
            is_file = path.is_file()
        except OSError:  # a long Jinja string is not a path
            is_file = False
        self.tokenizer.chat_template = path.read_text(encoding="utf-8") if is_file else value

    def _find_bos(self) -> int | None:
        tok = self.tokenizer
        for name in ("bos_token_id", "cls_token_id"):
            tid = getattr(tok, name, None)
            if tid is not None:
                return int(tid)
        return None

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
    def _fit(self, context: list[int], continuation: list[int], what: str) -> list[int]:
        """The context, cut from the left with truncation=left, so that context + continuation fit."""
        room = self.max_length - len(continuation)
        if len(context) <= room:
            return context
        if room < 1:
            raise InputTooLongError(
                f"{what}: the continuation alone has {len(continuation)} tokens, more than the model's maximum "
                f"length {self.max_length} minus one; pass max_length=<larger> if the model supports it")
        if self.truncation == "left":
            return context[len(context) - room:]
        raise InputTooLongError(
            f"{what}: context of {len(context)} tokens + {len(continuation)} to score exceeds the model's maximum "
            f"length {self.max_length}; lower --num_fewshot or pass truncation=left in --model_args to drop the "
            f"oldest context tokens")

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
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
                                     rows=self.mc_batch_size, greedy_row=self.greedy == "onepass")
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
        kw = {**self._sampler_kwargs, "temperature": 0.0, "gen_length": len(continuation),
              "steps": len(continuation), "block_length": None, "threshold": None, "stop_at_eos": False}
        cfg = SamplerConfig.from_kwargs(**kw)
        res = generate(self.denoiser, [context], cfg, seeds=[stable_seed(self.seed, "greedy", context)])
        return res.generated[0] == list(continuation)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
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
                                         greedy_row=False)
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
    def _request_config(self, gen_kwargs: dict) -> tuple[dict, list[str]]:
        """The sampler kwargs for one request (its own gen_kwargs over the model's) and its stop strings."""
        gen_kwargs = dict(gen_kwargs or {})
        kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kw.pop("until", None), eos=self._eos_str)
        gen_length = self.gen_length if self.gen_length is not None else int(kw.pop("max_gen_toks"))
        kw.pop("max_gen_toks", None)
        do_sample = gen_kwargs.get("do_sample")
        if do_sample is False or str(do_sample).lower() == "false":
            temperature = 0.0
        elif "temperature" in gen_kwargs:
            temperature = float(gen_kwargs["temperature"])
        elif do_sample:
            temperature = self._default_temperature or 1.0
        else:
            temperature = self._default_temperature
        cfg = {**self._sampler_kwargs, "gen_length": gen_length, "temperature": temperature}
        sampler = str(kw.get("sampler", cfg["sampler"]))
        allowed = (set(SamplerConfig.field_names()) - set(_SAMPLER_RESERVED)) | set(get_sampler(sampler).options)
        for key, value in kw.items():
            if key in ("do_sample", "temperature", "until"):
                continue
            if key in allowed:
                cfg[key] = value
            elif key not in self._warned:
                self._warned.add(key)
                eval_logger.warning(f"emdm: generation argument {key}={value!r} has no meaning for a masked "
                                    f"diffusion sampler; ignored")
        if int(cfg.get("steps", SamplerConfig.steps)) > gen_length > 0:
            cfg["steps"] = gen_length  # a step reveals at least one token: more steps than tokens cannot be used
        return cfg, until

    def _fit_prompt(self, prompt: list[int], gen_length: int) -> list[int]:
        room = self.max_length - gen_length
        if len(prompt) <= room:
            return prompt
        if room < 1:
            raise InputTooLongError(
                f"generate_until: max_gen_toks={gen_length} leaves no room for a prompt in the model's maximum length "
                f"{self.max_length}; lower max_gen_toks (or gen_length in --model_args)")
        if self.truncation == "left":
            keep = prompt[len(prompt) - room:]
            if self._bos is not None and prompt[:1] == [self._bos] and keep[:1] != [self._bos]:
                keep = [self._bos] + keep[1:]
            return keep
        raise InputTooLongError(
            f"generate_until: prompt of {len(prompt)} tokens + max_gen_toks={gen_length} exceeds the model's maximum "
            f"length {self.max_length}; lower --num_fewshot or max_gen_toks, or pass truncation=left in "
            f"--model_args to drop the oldest prompt tokens")

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
        if self.device.type != "cuda":
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
        prepared = []  # (index, prompt ids, sampler kwargs, stop strings)
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            cfg, until = self._request_config(gen_kwargs)
            prompt = self._fit_prompt(self.tok_encode(context), int(cfg["gen_length"]))
            prepared.append((i, prompt, cfg, until))
        groups: dict[str, list] = defaultdict(list)
        for item in prepared:  # requests that share a sampler configuration are batched together
            groups[json.dumps(item[2], sort_keys=True, default=str)].append(item)

        # batch_size=auto is settled once, on every process (a collective under accelerate), for the longest row
        bs = self._resolve_batch_size(max(len(p) + int(c["gen_length"]) for _i, p, c, _u in prepared))
        results: list[str | None] = [None] * len(requests)
        pbar = tqdm(total=len(requests), desc="emdm generate_until", disable=disable_tqdm or self.rank != 0)
        start, passes0 = time.perf_counter(), self.denoiser.forward_calls
        for items in groups.values():
            items.sort(key=lambda it: (-len(it[1]), it[0]))  # similar lengths together, longest first
            config = SamplerConfig.from_kwargs(**dict(items[0][2]))
            for b in range(0, len(items), bs):
                chunk = items[b:b + bs]
                out = generate(self.denoiser, [it[1] for it in chunk], config, seeds=[seeds[it[0]] for it in chunk])
                stats["row_forward_passes"] += sum(out.row_nfe)  # passes each request took part in
                for (i, _prompt, _cfg, until), gen in zip(chunk, out.generated):
                    text = postprocess_generated_text(self.tok_decode(gen), until, None)
                    results[i] = text
                    stats["generated_tokens"] += len(gen)
                    stats["empty"] += int(len(gen) == 0)
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                pbar.update(len(chunk))
        pbar.close()
        stats["requests"] += len(requests)
        stats["forward_passes"] += self.denoiser.forward_calls - passes0
        stats["seconds"] += time.perf_counter() - start
        self._summary("generate_until")
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
                   f"{int(tot['empty'])} empty (EOS at once)")
        else:
            msg = (f"{int(tot['requests'])} requests, {int(tot['forward_passes'])} forward passes, "
                   f"{int(tot['scored_tokens'])} scored tokens in {secs:.1f}s, mc_num={self.mc_num}")
        eval_logger.info(f"emdm {kind}: {msg} (all {self.world_size} processes)")

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
        info["emdm"] = {"adapter": type(self.denoiser).__name__, "sampler": self._sampler_kwargs,
                        "mc_num": self.mc_num, "mc_batch_size": self.mc_batch_size, "greedy": self.greedy,
                        "seed": self.seed, "processes": self.world_size, "peft": self.peft, "stats": stats}
        return info


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    """Uncaught emdm errors print as one line (`EMDM_TRACEBACK=1` for the traceback)."""
    if isinstance(exc, EMDMError) and not os.environ.get("EMDM_TRACEBACK"):
        sys.stderr.write(f"error: {exc}\n")
        return
    _previous(exc_type, exc, tb)


if not getattr(sys.excepthook, "_emdm", False):
    _excepthook._emdm = True  # type: ignore[attr-defined]
    sys.excepthook = _excepthook

_register()  # imported directly (not through lm-eval's registry): make sure `emdm` is registered, built-ins first
