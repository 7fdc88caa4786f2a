"""The training loop: `accelerate`, one plain loop (one CPU, one GPU, or many with `accelerate launch`).

Design choices that make runs reproducible and resumable:
- `batch_size` is global (sequences per optimizer step over all processes and accumulation steps). Step s always
  trains on the same rows (epoch permutations seeded by `seed`), with the same masks (noise drawn for the whole
  global batch from a generator seeded by (seed, s)), normalised by the same count (maskable tokens of the global
  batch), whatever the number of processes. With `--no-dropout` 1 and N processes differ only by floating-point
  summation order.
- Everything random is a function of (seed, step): dropout is reseeded every step, so a run resumed from
  checkpoint-N continues exactly as if it had not been stopped.
- Checkpoints are written to `checkpoint-N.tmp` and renamed to `checkpoint-N` when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emdm_core.diffusion_noise import NoiseSpec
from emdm_core.errors import first_line
from emdm_core.prompts import RECIPE_FILE
from emdm_core.seeds import mix_seed
from emdm_core.surprise import SurpriseTable, special_token_ids
from emdm_models.denoiser import adapter_for, output_vocab_size
from emdm_models.loading import (FLAGS, add_mask_token, check_weight_files, eos_token_id, load_tokenizer, read_config,
                                 resolve_mask_token)

from .checkpoints import STATE_DIR, checkpoint_dirs, checkpoint_problem, list_checkpoints, read_manifest, \
    write_manifest
from . import lora
from .augment import apply_augment, load_augment
from .lora import quantization_kwargs
from .config import TrainConfig, masking_options
from .corpus import DataBundle, TokenData, prepare_data
from .errors import TrainConfigError, TrainError
from .masking import MASKINGS, MaskingSchedule, Noise, UniformMasking, maskable_positions, weighted_mlm_loss_sum
from .uniform_noise import GaussianArgmaxCorruption, soft_temperature, soft_token_inputs, symmetric_kl_loss_sum

logger = logging.getLogger(__name__)

SHARDED_STATE = "accelerate"  # sharded optimizer state (FSDP / DeepSpeed), in accelerate's layout
LOG_FILE = "train_log.jsonl"


# --- small helpers ---------------------------------------------------------------------------------------------


class EpochOrder:
    """Global row order: epoch e is a permutation of the rows seeded by (seed, e); rows are consumed in order."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The row order of one epoch."""
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 17))
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            self._cache[epoch] = torch.randperm(self.n, generator=g).numpy()
        return self._cache[epoch]

    def take(self, start: int, count: int) -> np.ndarray:
        """Rows number start .. start+count-1 of the endless sequence of epochs."""
        out = []
        while count > 0:
            epoch, pos = divmod(start, self.n)
            chunk = self.permutation(epoch)[pos:pos + count]
            out.append(chunk)
            start += len(chunk)
            count -= len(chunk)
        return np.concatenate(out)


def resolve_mixed_precision(cfg: TrainConfig) -> str:
    """`auto` -> bf16 on a GPU that supports it, else no."""
    if cfg.mixed_precision != "auto":
        return cfg.mixed_precision
    if not cfg.cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def batch_geometry(cfg: TrainConfig, world: int) -> tuple[int, int]:
    """(micro batch per device, accumulation steps) so that micro * accum * world == batch_size."""
    if cfg.micro_batch_size is not None:
        per = cfg.micro_batch_size * world
        if cfg.batch_size % per:
            raise TrainConfigError(f"--batch-size {cfg.batch_size} is not a multiple of --micro-batch-size "
                                   f"{cfg.micro_batch_size} x {world} processes; adjust one of them")
        accum = cfg.batch_size // per
        if cfg.grad_accum is not None and cfg.grad_accum != accum:
            raise TrainConfigError(f"--grad-accum {cfg.grad_accum} contradicts --batch-size {cfg.batch_size} = "
                                   f"micro {cfg.micro_batch_size} x {world} processes x {accum}; give only two")
        return cfg.micro_batch_size, accum
    accum = cfg.grad_accum or 1
    if cfg.batch_size % (accum * world):
        raise TrainConfigError(f"--batch-size {cfg.batch_size} is not divisible by {world} processes x --grad-accum "
                               f"{accum}; pick a batch size that is")
    return cfg.batch_size // (accum * world), accum


def lr_lambda(step: int, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine/linear decay to `min_ratio` (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms and other 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class TrainResult:
    """What `train` returns: the output directory, steps done, the last eval loss and the log history."""

    output: Path
    step: int
    eval_loss: float | None
    history: list[dict[str, Any]]


# --- the loop --------------------------------------------------------------------------------------------------


def trackers(report_to: str) -> list[str]:
    """accelerate's `log_with` for --report-to: each named tracker must be installed (auto: TensorBoard if it is)."""
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    if report_to == "none":
        return []
    if report_to == "auto":
        return ["tensorboard"] if is_tensorboard_available() else []
    available = {"tensorboard": (is_tensorboard_available, "tensorboard"), "wandb": (is_wandb_available, "wandb")}
    names = [n for n in report_to.split(",") if n]
    for name in names:
        check, package = available[name]
        if not check():
            raise TrainConfigError(f"--report-to {name} needs the {package} package: pip install {package} (or "
                                   f"--report-to none)")
    return names


class Trainer:
    """Builds everything from a `TrainConfig` and runs the loop (`run`)."""

    def __init__(self, cfg: TrainConfig):
        from accelerate import Accelerator

        self.cfg = cfg.validate()
        self.output = Path(os.path.expanduser(cfg.output))
        log_with = trackers(cfg.report_to) or None
        self.log_with = log_with
        # several processes without CUDA (torchrun, `accelerate launch --multi_gpu` on a CPU machine): gloo on CPU
        cpu = cfg.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
        self.acc = Accelerator(cpu=cpu, mixed_precision=resolve_mixed_precision(cfg), log_with=log_with,
                               project_dir=str(self.output))
        from accelerate.utils import DistributedType

        # FSDP / DeepSpeed shard the optimizer state over processes: it is saved and restored through accelerate
        self.sharded = self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.main = self.acc.is_main_process
        self.device = self.acc.device
        self.history: list[dict[str, Any]] = []
        self.noise_spec: NoiseSpec | None = None  # --noise uniform: the noise vocabulary (set up with the model)
        self.step_metrics: dict[str, float] = {}  # what a step logs besides its loss (an RL step: reward, KL ...)
        self._quiet_libraries()

    # -- setup ----------------------------------------------------------------------------------------------------
    def _quiet_libraries(self) -> None:
        import datasets
        import transformers

        if not (self.main and self.cfg.progress):
            datasets.disable_progress_bars()
            transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()

    def log(self, msg: str) -> None:
        """Print a line on the main process (above the progress bar)."""
        if self.main:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stdout)
            sys.stdout.flush()

    def _prepare_output(self) -> Path | None:
        """Check the output directory; return the checkpoint to resume from, if any."""
        cfg, out = self.cfg, self.output
        if out.exists() and not out.is_dir():
            raise TrainError(f"--output {out} is a file; give a directory")
        existing = checkpoint_dirs(out)
        resume_dir = None
        if cfg.resume:
            if cfg.resume == "latest":
                for _step, candidate in reversed(existing):  # the newest complete one
                    problem = checkpoint_problem(candidate, hashes=True)
                    if problem is None:
                        resume_dir = candidate
                        break
                    self.log(f"warning: --resume skips {candidate.name}: {problem}")
                if resume_dir is None:
                    self.log(f"--resume: no complete checkpoint in {out} yet; starting from step 0")
            else:
                resume_dir = Path(os.path.expanduser(cfg.resume))
                problem = checkpoint_problem(resume_dir, hashes=True)
                if problem:
                    raise TrainError(f"--resume {cfg.resume} is not a complete emdm_train checkpoint ({problem}); "
                                     f"pass --resume alone to take the newest complete one in --output")
        elif not cfg.overwrite and (existing or (out / LOG_FILE).exists()):
            what = existing[-1][1].name if existing else LOG_FILE
            raise TrainError(f"--output {out} already holds another run ({what}); pass --resume to continue that "
                             f"run or --overwrite to start over")
        self.acc.wait_for_everyone()
        if self.main:
            try:
                out.mkdir(parents=True, exist_ok=True)
                probe = out / ".emdm_write_test"
                probe.write_text("")
                probe.unlink()
            except OSError as exc:
                raise TrainError(f"--output {out}: cannot write there ({exc.strerror or type(exc).__name__}); "
                                 f"give a directory you can write to") from None
            for p in out.glob("checkpoint-*.tmp"):  # half-written by a killed run
                shutil.rmtree(p, ignore_errors=True)
            if cfg.overwrite and not resume_dir:
                finals = {name for _, p in existing for name in (read_manifest(p) or {}) if "/" not in name}
                for _, p in existing:
                    shutil.rmtree(p, ignore_errors=True)
                for name in finals | {LOG_FILE}:
                    (out / name).unlink(missing_ok=True)
            elif resume_dir is not None:
                self._truncate_log(int(json.loads((resume_dir / STATE_DIR / "state.json").read_text())["step"]))
            elif cfg.resume:  # killed before its first checkpoint: the run starts over, and so does its log
                (out / LOG_FILE).unlink(missing_ok=True)
        self.acc.wait_for_everyone()
        return resume_dir

    def _truncate_log(self, step: int) -> None:
        """Drop the log records after `step` (a resumed run writes them again): no duplicates."""
        path = self.output / LOG_FILE
        if not path.is_file():
            return
        keep = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = path.with_name(LOG_FILE + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, path)

    def _build_model(self, resume_dir: Path | None) -> None:
        """Config, tokenizer and network (pretrained, or random init from a config), through the model family;
        with --lora the base of --model wrapped with adapters (a resumed run's adapters from its checkpoint)."""
        cfg = self.cfg
        # a LoRA checkpoint holds the adapter only: the base always comes from --model
        base_from_model = resume_dir is None or cfg.lora
        source = cfg.model if base_from_model else str(resume_dir)
        config, weights, path = read_config(source, cfg.trust_remote_code, FLAGS,
                                            cfg.config_overrides if base_from_model else None)
        pretrained = weights and (bool(resume_dir) or not cfg.from_scratch)
        tok_source = str(resume_dir) if resume_dir else (cfg.tokenizer or cfg.model)
        if not resume_dir and not cfg.tokenizer and not pretrained and os.path.isfile(os.path.expanduser(cfg.model)):
            raise TrainError(f"--model {cfg.model} is a config file; pass --tokenizer DIR as well")
        self.tokenizer = load_tokenizer(tok_source, cfg.trust_remote_code, FLAGS)
        torch.manual_seed(mix_seed(cfg.seed, 0, 3))  # same random init on every process
        family = adapter_for(config)
        if family.training_problem:
            raise TrainConfigError(f"--model {cfg.model}: {family.training_problem}")
        if cfg.lora and not weights:
            raise TrainConfigError(f"--lora adapts pretrained weights, and {cfg.model} has none; pass a checkpoint "
                                   f"with weights, or drop --lora")
        if pretrained:
            check_weight_files(path)
        try:
            if pretrained:
                self.model = family.load_model(path, config, torch.float32, cfg.trust_remote_code,
                                               **quantization_kwargs(cfg))
            else:
                if getattr(config, "vocab_size", len(self.tokenizer)) < len(self.tokenizer):
                    logger.warning("config vocab_size %s < tokenizer size %s: using %s", config.vocab_size,
                                   len(self.tokenizer), len(self.tokenizer))
                    config.vocab_size = len(self.tokenizer)
                self.model = family.build_model(config, cfg.trust_remote_code)
        except OSError as exc:
            raise TrainError(f"cannot load the weights of {source}: {first_line(exc)}") from None
        if cfg.add_mask_token:
            add_mask_token(self.tokenizer, self.model)
        if cfg.gradient_checkpointing:
            if not getattr(self.model, "supports_gradient_checkpointing", False):
                raise TrainConfigError(f"--gradient-checkpointing: {type(self.model).__name__} does not support "
                                       f"activation checkpointing; drop the flag")
            self.model.activation_checkpointing_enable({"use_reentrant": False})
        self.family, self.base_path, self.base_config = family, path, config
        if cfg.lora:
            self.model = lora.wrap(self.model, cfg, family, lora.base_reference(cfg.model), resume_dir)
            self.log(f"LoRA ({'resumed from ' + str(resume_dir) if resume_dir else 'new'}): "
                     f"{lora.trainable_summary(self.model)}")
        self.mask_token_id = resolve_mask_token(family, self.model.config, self.tokenizer, cfg.mask_token_id, source,
                                                FLAGS)
        self.forward_logits = family.forward_logits
        self.vocab_size = max(output_vocab_size(self.model), len(self.tokenizer))
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = eos_token_id(self.tokenizer)
        self.pad_token_id = int(pad if pad is not None else self.mask_token_id)

    def _build_surprise(self, data: DataBundle, resume_dir: Path | None) -> SurpriseTable:
        cfg = self.cfg
        specials = special_token_ids(self.tokenizer, extra=[self.mask_token_id, self.pad_token_id])
        table = None
        origin = ""
        if resume_dir is not None:
            table, origin = SurpriseTable.load(resume_dir), f"{resume_dir}"
        elif cfg.surprise_table not in ("auto", "data"):
            table, origin = SurpriseTable.load(os.path.expanduser(cfg.surprise_table)), cfg.surprise_table
            if table is None:
                raise TrainError(f"--surprise-table {cfg.surprise_table} holds no surprise.safetensors; pass a "
                                 f"checkpoint directory that has one, or auto")
        elif cfg.surprise_table == "auto" and os.path.isdir(os.path.expanduser(cfg.model)):
            table, origin = SurpriseTable.load(os.path.expanduser(cfg.model)), cfg.model
        if table is not None and table.vocab_size < self.vocab_size:
            raise TrainError(f"surprise table from {origin} covers {table.vocab_size} ids but the model has "
                             f"{self.vocab_size}; pass --surprise-table data to recount")
        if table is None:
            tokens, chunk = data.train.tokens, 1 << 22
            chunks = (tokens[i:i + chunk] for i in range(0, len(tokens), chunk))
            table = SurpriseTable.from_token_batches(
                chunks, self.vocab_size, specials, progress=self.main and cfg.progress,
                total=-(-len(tokens) // chunk), desc="counting tokens",
                metadata={"source": str(cfg.data), "tokenizer": str(cfg.tokenizer or cfg.model)})
            origin = "the training data"
        self.log(f"surprise table from {origin}: {table}")
        return table

    def _build_schedule(self, table: SurpriseTable) -> MaskingSchedule:
        """The chosen schedule with its options (`--masking-option`, the per-schedule flags, the noise range);
        with --noise uniform, Duo's Gaussian-argmax corruption over the noise vocabulary."""
        if self.noise_spec is not None:
            return self._corruption(self.cfg.t_min or self.cfg.eps, self.cfg.t_max or 1.0,
                                    self.cfg.noise_weight_range)
        options, labels = masking_options(self.cfg)
        cls = MASKINGS.get(self.cfg.masking)
        resources = {"surprise": table} if cls.needs_surprise else {}
        return cls(self.mask_token_id, labels=labels, **resources, **options)

    def _corruption(self, t_min: float, t_max: float, weights: Any = None) -> GaussianArgmaxCorruption:
        return GaussianArgmaxCorruption(self.noise_spec.vocabulary(), self.vocab_size, t_min, t_max,
                                        tuple(weights) if weights else None)

    def _noise_spec(self, unmaskable: torch.Tensor) -> NoiseSpec | None:
        """--noise uniform: noise tokens are the ids a trained position may hold (the tokenizer's ordinary ids and
        EOS when it is trained), or those the architecture declares (`config.noise_token_ids`: emdm's Sudoku model
        takes digits only); saved with every checkpoint so that the sampler draws the same noise."""
        if self.cfg.noise != "uniform":
            return None
        size = min(len(self.tokenizer), output_vocab_size(self.model))
        excluded = unmaskable[:size].clone()
        declared = getattr(self.model.config, "noise_token_ids", None)
        if declared is not None:
            excluded = torch.ones(size, dtype=torch.bool)
            excluded[torch.tensor([int(i) for i in declared if 0 <= int(i) < size], dtype=torch.long)] = False
        return NoiseSpec("uniform", size, tuple(int(i) for i in excluded.nonzero().flatten().tolist()))

    def loss_sum(self, logits: torch.Tensor, mb: Any) -> torch.Tensor:
        """The objective's sum over a micro-batch: weighted masked cross-entropy, or Duo's symmetric KL."""
        if self.noise_spec is not None:
            return symmetric_kl_loss_sum(logits, mb.labels, mb.weights, self.cfg.kl_smoothing)
        return weighted_mlm_loss_sum(logits, mb.labels, mb.weights)

    def _logits(self, model: torch.nn.Module, mb: Any, attn: torch.Tensor) -> torch.Tensor:
        """The network's logits for a (masked or corrupted) micro-batch; soft tokens through the embedding."""
        soft = getattr(mb, "soft", None)
        context = (soft_token_inputs(self.acc.unwrap_model(model), mb, self.noise_spec.vocabulary())
                   if soft is not None else contextlib.nullcontext())
        with context, self.acc.autocast():
            return self.forward_logits(model, mb.input_ids, attn)

    def _unmaskable_table(self) -> torch.Tensor:
        ids = special_token_ids(self.tokenizer, extra=[self.mask_token_id, self.pad_token_id])
        table = torch.zeros(self.vocab_size, dtype=torch.bool)
        table[torch.tensor(ids, dtype=torch.long)] = True
        end = eos_token_id(self.tokenizer)
        if self.cfg.mask_eos and end is not None:  # padding is excluded by the attention mask, even if pad == EOS
            table[end] = False
        return table

    # -- forward / loss -------------------------------------------------------------------------------------------
    def _probe(self, ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """No-grad logits for the entropy schedule (eval mode: no dropout)."""
        model = self.acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.acc.autocast():
                return self.forward_logits(model, ids, attn)
        finally:
            model.train(was_training)

    def _micro_batch(self, run: "Run", data: TokenData, rows: np.ndarray, noise: Noise, schedule: MaskingSchedule,
                     augment_seed: int | None = None, step: int | None = None, first_row: int = 0):
        ids, attn, plen = data.collate(rows, self.pad_token_id)
        if augment_seed is not None and run.augment is not None:
            gen = torch.Generator().manual_seed(augment_seed)
            ids = apply_augment(run.augment, self.cfg.augment, ids, plen, gen)
        ids, attn, plen = ids.to(self.device), attn.to(self.device), plen.to(self.device)
        maskable = maskable_positions(ids, attn, run.unmaskable, plen, data.collate_trainable(rows, ids.shape[1]))
        logits_fn = self._probe if schedule.needs_model else None
        extra: dict[str, Any] = {}
        if self.noise_spec is not None and step is not None:  # Duo's soft-token curriculum (Gaussian per row)
            extra["soft_temperature"] = soft_temperature(step, self.cfg.soft_token_steps,
                                                         self.cfg.soft_token_temperature)
            extra["row_seeds"] = [mix_seed(self.cfg.seed, step, 6, first_row + i) for i in range(len(rows))]
        return schedule(ids, maskable, noise=noise.take(slice(None), ids.shape[1]).to(self.device),
                        attention_mask=attn, logits_fn=logits_fn, **extra), attn

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def save_checkpoint(self, run: "Run", state: "RunState", step: int) -> Path:
        """Write checkpoint-<step> atomically (model, tokenizer, surprise table, optimizer/scheduler state)."""
        final = self.output / f"checkpoint-{step}"
        tmp = self.output / f"checkpoint-{step}.tmp"
        state_dir = tmp / STATE_DIR
        self.acc.wait_for_everyone()
        state_dict = self.acc.get_state_dict(self.model)  # gathered in full (FSDP, ZeRO-3) on the main process
        if self.main:
            shutil.rmtree(tmp, ignore_errors=True)
            model = self.acc.unwrap_model(self.model)
            model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            run.table.save(tmp)
            if self.noise_spec is not None:
                self.noise_spec.save(tmp)
            # the data format as resolved (auto -> prompt_response ...): evaluation prompts the model as it trained
            dataclasses.replace(self.cfg, data_format=run.data.format).save_yaml(tmp / RECIPE_FILE)
            state_dir.mkdir()
            torch.save(run.scheduler.state_dict(), state_dir / "scheduler.pt")
            if not self.sharded:
                torch.save(run.optimizer.state_dict(), state_dir / "optimizer.pt")
        if self.sharded:  # FSDP / DeepSpeed: every process writes its shard of the optimizer state (accelerate)
            self.acc.wait_for_everyone()
            self.acc.save_state(str(state_dir / SHARDED_STATE))
            self.acc.wait_for_everyone()
        if self.main:
            examples = step * self.cfg.batch_size
            record = {"step": step, "max_steps": run.max_steps, "examples_seen": examples,
                      "epoch": examples // run.n_train, "position_in_epoch": examples % run.n_train,
                      "tokens_seen": state.tokens_seen, "num_processes": self.world, "seed": self.cfg.seed,
                      "batch_size": self.cfg.batch_size, "masking": self.cfg.masking,
                      "eval_loss": state.last_eval, "time": time.time(),
                      "manifest": True}  # this checkpoint has a manifest: without one it is damaged
            (state_dir / "state.json").write_text(json.dumps(record, indent=2))
            self.save_extra_state(state_dir)
            write_manifest(tmp)  # written last: the checkpoint is complete only with it
            if final.exists():
                old = self.output / f"checkpoint-{step}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            self._prune_checkpoints()
        self.acc.wait_for_everyone()
        state.last_saved = step
        return final

    def _prune_checkpoints(self) -> None:
        limit = self.cfg.save_total_limit
        if limit is None:
            return
        for _, p in list_checkpoints(self.output)[:-limit]:
            shutil.rmtree(p, ignore_errors=True)

    def export_final(self, checkpoint: Path) -> None:
        """Copy the model files of `checkpoint` to the top of the output directory (each file atomically), then
        check them against the checkpoint's manifest."""
        if self.main:
            problem = checkpoint_problem(checkpoint)
            if problem:
                raise TrainError(f"the final checkpoint is incomplete ({problem}); rerun with --resume")
            files = read_manifest(checkpoint) or {  # a checkpoint written before manifests: its top-level files
                f.name: {"size": f.stat().st_size} for f in checkpoint.iterdir() if f.is_file()}
            for name in sorted(n for n in files if "/" not in n):
                tmp = self.output / f".{name}.tmp"
                shutil.copy2(checkpoint / name, tmp)
                os.replace(tmp, self.output / name)
            for name in (n for n in files if "/" not in n):
                final = self.output / name
                if not final.is_file() or final.stat().st_size != files[name]["size"]:
                    raise TrainError(f"the final model in {self.output} is incomplete ({name}); free disk space and "
                                     f"rerun with --resume")
        self.acc.wait_for_everyone()

    def _load_state(self, run: "Run", state: "RunState") -> int:
        """Restore optimizer, scheduler and progress from `run.resume_dir`; return the step to continue at."""
        state_dir = run.resume_dir / STATE_DIR
        saved = json.loads((state_dir / "state.json").read_text())
        if (state_dir / SHARDED_STATE).is_dir() != self.sharded:
            raise TrainError(f"{run.resume_dir} was written {'with' if not self.sharded else 'without'} FSDP/DeepSpeed "
                             f"sharding; resume it under the same accelerate configuration")
        try:
            if self.sharded:
                self.acc.load_state(str(state_dir / SHARDED_STATE))
            else:
                run.optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", map_location="cpu",
                                                         weights_only=True))
            run.scheduler.load_state_dict(torch.load(state_dir / "scheduler.pt", map_location="cpu",
                                                     weights_only=False))
        except Exception as exc:  # a damaged optimizer / scheduler file (torch and pickle raise many types)
            raise TrainError(f"{run.resume_dir}: its optimizer or scheduler state cannot be read "
                             f"({first_line(exc)[:160]}); resume from another checkpoint (--resume "
                             f"PATH/checkpoint-N)") from None
        self._check_same_recipe(run.resume_dir)
        self.load_extra_state(state_dir)
        state.tokens_seen = int(saved.get("tokens_seen", 0))
        state.last_eval = saved.get("eval_loss")
        return int(saved["step"])

    def save_extra_state(self, state_dir: Path) -> None:
        """A subclass's own resume state, written into the checkpoint before its manifest (none here)."""

    def load_extra_state(self, state_dir: Path) -> None:
        """Read back what `save_extra_state` wrote."""

    def _check_same_recipe(self, resume_dir: Path) -> None:
        import yaml

        from emdm_core.errors import EMDMError

        path = resume_dir / RECIPE_FILE
        if not path.is_file():
            return
        old = yaml.safe_load(path.read_text()) or {}
        keys = ("masking", "noise", "soft_token_steps", "batch_size", "learning_rate", "seed", "max_length", "data",
                "lr_scheduler", "warmup_steps", "lora", "lora_rank", "lora_alpha", "lora_target_modules")
        changed = [f"{k} {old[k]!r} -> {getattr(self.cfg, k)!r}" for k in keys
                   if k in old and old[k] != getattr(self.cfg, k)]
        try:
            old_cfg = TrainConfig.from_dict(old, origin=str(path))
            if old_cfg.masking == self.cfg.masking:
                before, now = masking_options(old_cfg)[0], masking_options(self.cfg)[0]
                if before != now:
                    changed.append(f"masking options {before} -> {now}")
        except EMDMError:
            pass
        if changed:
            self.log("warning: resuming with a changed recipe: " + ", ".join(changed))

    def _write_log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if self.main:
            with open(self.output / LOG_FILE, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if self.acc.trackers:
                self.acc.log({k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))},
                             step=record["step"])

    # -- evaluation -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, run: "Run") -> tuple[float | None, float | None]:
        """Held-out (loss, accuracy): the uniform-masking ELBO (nats per maskable token) with fixed noise, and the
        accuracy on masked tokens, over all processes; (None, None) without held-out data."""
        val = run.data.val
        if val is None:
            return None, None
        model = self.acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        rows = np.arange(self.rank, len(val), self.world)
        totals = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss sum, maskable, correct, masked
        for start in range(0, len(rows), run.micro):
            chunk = rows[start:start + run.micro]
            ids, attn, plen = val.collate(chunk, self.pad_token_id)
            ids, attn, plen = ids.to(self.device), attn.to(self.device), plen.to(self.device)
            maskable = maskable_positions(ids, attn, run.unmaskable, plen, val.collate_trainable(chunk, ids.shape[1]))
            noise = run.eval_noise.take(torch.from_numpy(chunk), ids.shape[1]).to(self.device)
            mb = run.eval_schedule(ids, maskable, noise=noise, attention_mask=attn)
            logits = self._logits(model, mb, attn)
            totals[0] += self.loss_sum(logits, mb).double()
            totals[1] += mb.n_maskable.sum()
            sel = mb.mask
            totals[2] += (logits.argmax(-1)[sel] == mb.labels[sel]).sum()
            totals[3] += sel.sum()
        model.train(was_training)
        totals = self.acc.reduce(totals, reduction="sum")
        return float(totals[0] / totals[1].clamp(min=1)), float(totals[2] / totals[3].clamp(min=1))

    def _evaluate_and_log(self, run: "Run", state: "RunState", step: int) -> None:
        state.last_eval, state.last_eval_acc = self.evaluate(run)
        self._write_log({"step": step, "eval_loss": state.last_eval, "eval_accuracy": state.last_eval_acc})
        self.log(f"step {step} | eval_loss {state.last_eval:.4f} | eval_acc {state.last_eval_acc:.3f}")

    # -- run --------------------------------------------------------------------------------------------------------
    def set_up(self) -> "Run":
        """Output directory, model, data, surprise table, schedules, optimizer; resume state when asked."""
        cfg = self.cfg
        augment = load_augment(cfg.augment) if cfg.augment else None  # a bad spec fails before any loading
        resume_dir = self._prepare_output()
        micro, accum = batch_geometry(cfg, self.world)
        from accelerate.utils import DistributedType

        if accum > 1 and self.acc.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed steps its engine inside every backward: emdm's accumulation would step too often
            raise TrainConfigError(f"under DeepSpeed, --batch-size {cfg.batch_size} must be processes ({self.world}) "
                                   f"x --micro-batch-size, without accumulation (here {accum} steps); raise "
                                   f"--micro-batch-size, or use the FSDP recipe")
        self._build_model(resume_dir)
        data = prepare_data(cfg, self.tokenizer, self.model.config, progress=self.main and cfg.progress)
        for split, stats in data.stats.items():
            if stats.get("not_text"):
                self.log(f"warning: {stats['not_text']} {split} rows of column {cfg.text_column!r} are not text "
                         f"(null or a number) and were skipped")
        if data.train.tokens.size and int(data.train.tokens.max()) >= self.vocab_size:
            raise TrainError(f"the tokenizer produces id {int(data.train.tokens.max())} but the model's "
                             f"vocabulary has {self.vocab_size} ids; pass the model's own --tokenizer")
        table = self._build_surprise(data, resume_dir)
        unmaskable = self._unmaskable_table()
        self.noise_spec = self._noise_spec(unmaskable)
        counts = data.train.maskable_counts(unmaskable.numpy())
        if int(counts.sum()) == 0:
            raise TrainError("no token of the training data may be masked (all special or prompt); check the data "
                             "format and --response-field")
        schedule = self._build_schedule(table)
        n_train = len(data.train)
        max_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * n_train / cfg.batch_size))
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else int(0.05 * max_steps)
        eval_noise = None
        if data.val is not None:
            g = torch.Generator().manual_seed(mix_seed(cfg.seed, 99))
            eval_noise = Noise.draw(len(data.val), data.max_length, generator=g, stratified=True)
        optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.learning_rate,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, warmup, max_steps, cfg.lr_scheduler, cfg.min_lr_ratio))
        # the scheduler stays outside `prepare` (accelerate would step it once per process)
        self.model, optimizer = self.acc.prepare(self.model, optimizer)
        self.model.train(cfg.dropout)
        return Run(resume_dir=resume_dir, micro=micro, accum=accum, data=data, table=table,
                   unmaskable=unmaskable.to(self.device), schedule=schedule,
                   eval_schedule=(self._corruption(cfg.eps, 1.0) if self.noise_spec is not None
                                  else UniformMasking(self.mask_token_id, eps=cfg.eps)), eval_noise=eval_noise,
                   counts=counts, lengths=data.train.lengths, n_train=n_train, max_steps=max_steps,
                   optimizer=optimizer, scheduler=scheduler, order=EpochOrder(n_train, cfg.seed),
                   augment=augment)

    def train_step(self, run: "Run", step: int) -> tuple[torch.Tensor, int]:
        """One optimizer step on the global batch `step`: (its loss per maskable token, tokens it trained on)."""
        cfg = self.cfg
        rows = run.order.take(step * cfg.batch_size, cfg.batch_size)
        n_norm = max(1, int(run.counts[rows].sum()))
        gen = torch.Generator(device=self.device).manual_seed(mix_seed(cfg.seed, step, 1))
        noise = Noise.draw(cfg.batch_size, run.data.max_length, generator=gen, device=self.device,
                           stratified=cfg.stratified_t)
        torch.manual_seed(mix_seed(cfg.seed, step, 2, self.rank))  # dropout: a function of the step
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        for g in range(run.accum):
            first = (g * self.world + self.rank) * run.micro
            part = slice(first, first + run.micro)
            mb, attn = self._micro_batch(run, run.data.train, rows[part], noise.take(part, run.data.max_length),
                                         run.schedule, augment_seed=mix_seed(cfg.seed, step, 5, first), step=step,
                                         first_row=first)
            sync = contextlib.nullcontext() if g == run.accum - 1 else self.acc.no_sync(self.model)
            with sync:
                logits = self._logits(self.model, mb, attn)
                loss_sum = self.loss_sum(logits, mb)
                # DDP averages gradients over processes: scale so that the result is sum / n_norm
                self.acc.backward(loss_sum * (self.world / n_norm))
            step_loss += loss_sum.detach().double() / n_norm
        if cfg.max_grad_norm > 0:
            self.acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        return step_loss, int(run.lengths[rows].sum())

    def _all_agree(self, flag: bool) -> bool:
        """True when `flag` holds on any process (so that all processes take the same branch)."""
        if self.world == 1:
            return flag
        return bool(self.acc.reduce(torch.tensor(float(flag), device=self.device), reduction="sum") > 0)

    def log_eval_save(self, run: "Run", state: "RunState", done: int, final: bool = False) -> None:
        """After step `done`: the training log line, the held-out evaluation and the checkpoint when due (all
        three after the `final` step)."""
        cfg = self.cfg
        final = final or done == run.max_steps
        window = state.window
        if done % cfg.log_every == 0 or final:
            total = float(self.acc.reduce(window.loss.clone(), reduction="sum"))
            elapsed = max(time.perf_counter() - window.started, 1e-9)
            rec = {"step": done, "loss": total / window.steps, "lr": run.scheduler.get_last_lr()[0],
                   "tokens_per_s": window.tokens / elapsed, "epoch": done * cfg.batch_size / run.n_train,
                   **self.step_metrics}
            self._write_log(rec)
            extra = "".join(f" | {k} {v:.3f}" for k, v in self.step_metrics.items())
            self.log(f"step {done}/{run.max_steps} | loss {rec['loss']:.4f} | lr {rec['lr']:.2e} | "
                     f"tok/s {rec['tokens_per_s']:,.0f} | epoch {rec['epoch']:.2f}{extra}")
            state.bar.set_postfix(loss=f"{rec['loss']:.3f}")
            window.reset()
        if run.data.val is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or final):
            self._evaluate_and_log(run, state, done)
            window.started = time.perf_counter()  # evaluation time is not training throughput
        if (cfg.save_every and done % cfg.save_every == 0) or final:
            self.save_checkpoint(run, state, done)
            window.started = time.perf_counter()

    def run(self) -> TrainResult:
        """Train to `max_steps`, with evaluation, logging and checkpoints; return where the model is."""
        from emdm_core.progress import progress_bar

        # === 1. set-up: model, data, schedules, optimizer; the state to resume from ===
        cfg = self.cfg
        run = self.set_up()
        state = RunState(window=LogWindow(torch.zeros((), dtype=torch.float64, device=self.device)))
        start = self._load_state(run, state) if run.resume_dir else 0
        state.last_saved = start if run.resume_dir else -1
        if self.log_with:
            self.acc.init_trackers("emdm_train", config={k: v for k, v in cfg.to_dict().items()
                                                         if isinstance(v, (int, float, str, bool))})
        objective = (f"noise uniform (Duo, {self.noise_spec.vocabulary_size - len(self.noise_spec.excluded)} noise "
                     f"tokens)" if self.noise_spec is not None else f"masking {cfg.masking}")
        self.log(f"emdm_train: {type(self.acc.unwrap_model(self.model)).__name__} "
                 f"({sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params), {run.data.format} data: "
                 f"{run.n_train} train rows / {0 if run.data.val is None else len(run.data.val)} held-out, "
                 f"max_length {run.data.max_length}; {objective}; {run.max_steps} steps of "
                 f"{cfg.batch_size} rows = {self.world} process(es) x {run.accum} accumulation x {run.micro}; "
                 f"device {self.device}, precision {self.acc.mixed_precision}"
                 + (f"; resuming at step {start} from {run.resume_dir}" if run.resume_dir else ""))
        if start == 0 and run.data.val is not None:
            self._evaluate_and_log(run, state, 0)

        state.bar = progress_bar(total=run.max_steps, initial=start, desc="training", unit="step",
                                 dynamic_ncols=True, enabled=self.main and cfg.progress)
        state.window.reset()
        deadline = time.perf_counter() + 60 * cfg.max_minutes if cfg.max_minutes else None
        final_step = max(start, run.max_steps)
        for step in range(start, run.max_steps):
            # === 2. train step ===
            loss, tokens = self.train_step(run, step)
            state.tokens_seen += tokens
            state.window.add(loss, tokens)
            state.bar.update(1)
            # === 3. log, evaluate, save (the time budget ends the run on every process at the same step) ===
            out_of_time = deadline is not None and self._all_agree(time.perf_counter() > deadline)
            self.log_eval_save(run, state, step + 1, final=out_of_time)
            if out_of_time:
                final_step = step + 1
                self.log(f"time budget of {cfg.max_minutes:g} min reached at step {final_step}/{run.max_steps}")
                break
        state.bar.close()

        # === 4. the final model at the top of the output directory ===
        if state.last_saved != final_step:
            self.save_checkpoint(run, state, final_step)
        self.export_final(self.output / f"checkpoint-{final_step}")
        if cfg.merge_lora and self.main:
            merged = lora.write_merged(self.output, self.output, self.family, self.base_config, self.base_path,
                                       self.tokenizer, run.table, cfg.trust_remote_code)
            self.log(f"merged base + adapter: {merged} (load it with pretrained={merged})")
        self.acc.wait_for_everyone()
        self.log(f"done: step {final_step}; model saved to {self.output} (load it with pretrained={self.output})")
        self.acc.end_training()
        return TrainResult(self.output, final_step, state.last_eval, self.history)


@dataclass
class Run:
    """Everything `Trainer.set_up` builds for one run (fixed while it trains)."""

    resume_dir: Path | None
    micro: int  # sequences per forward pass on one device
    accum: int  # accumulation steps per optimizer step
    data: DataBundle
    table: SurpriseTable
    unmaskable: torch.Tensor  # [V] bool: ids never masked
    schedule: MaskingSchedule
    eval_schedule: MaskingSchedule
    eval_noise: Noise | None  # fixed noise of the held-out evaluation
    counts: np.ndarray  # maskable tokens per training row (the loss normaliser)
    lengths: np.ndarray  # tokens per training row
    n_train: int
    max_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    order: EpochOrder
    augment: Any = None  # the --augment batch transform, if any


@dataclass
class LogWindow:
    """Loss, steps and tokens since the last log line (for the logged mean loss and tokens/s)."""

    loss: torch.Tensor
    steps: int = 0
    tokens: int = 0
    started: float = 0.0

    def add(self, loss: torch.Tensor, tokens: int) -> None:
        self.loss += loss
        self.steps += 1
        self.tokens += tokens

    def reset(self) -> None:
        self.loss.zero_()
        self.steps, self.tokens, self.started = 0, 0, time.perf_counter()


@dataclass
class RunState:
    """What changes while a run trains: progress counters, the last evaluation, the last checkpoint."""

    window: LogWindow
    tokens_seen: int = 0
    last_eval: float | None = None
    last_eval_acc: float | None = None
    last_saved: int = -1
    bar: Any = None


def train(cfg: TrainConfig) -> TrainResult:
    """Run one training recipe (see `TrainConfig`); the output directory then loads with `from_pretrained`.
    `--objective grpo | wd1` runs the RL step (`emdm_train.rl.trainer.RLTrainer`) in the same run."""
    if cfg.objective != "mdm":
        from .rl.trainer import RLTrainer

        return RLTrainer(cfg).run()
    return Trainer(cfg).run()
