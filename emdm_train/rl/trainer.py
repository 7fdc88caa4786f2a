"""RL fine-tuning of a masked diffusion LM (`--objective grpo | wd1`): rollouts through the decode session, verifiable
rewards, group-relative advantages, d1's clipped policy ratio or wd1's weighted likelihood.

The run is emdm_train's (`Trainer`: model loading, LoRA, accelerate, checkpoints, exact resume, logging); only the
step differs. A step is one optimizer step, as in d1: every `--rl-iterations` (mu) steps a new batch of rollouts is
drawn from the model, and each of the mu steps that use it masks the prompt afresh (its own mask seed):

    === 1. rollouts (steps where step % mu == 0) ===  batch_size / G prompts, each decoded G times by --rl-sampler
        at --rl-temperature (per-rollout seeds from (seed, step, row)), the completion cut after its first EOS;
        rewards; advantages = reward - group mean; the old policy's (and with beta > 0 the reference's)
        log-probabilities for each of the mu mask seeds, computed once with the model as it is now.
    === 2. the policy's log-probabilities ===  d1's estimator: the completion fully masked, the prompt masked
        with probability p, one pass (with gradients).
    === 3. the loss ===  grpo: -min(r A, clip(r) A) + beta KL per completion token; wd1: the weighted likelihood.

The current rollouts are part of every checkpoint (`emdm_train_state/rollouts.pt`), so a run resumed in the middle
of a group of mu steps continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from emdm_core.seeds import mix_seed
from emdm_models.loading import eos_token_id, max_length_of

from ..errors import TrainConfigError
from ..trainer import Run, Trainer
from .objectives import clipped_policy_loss, d1_token_logps, elbo_sequence_logps, group_advantages, wd1_weights
from .rewards import resolve_rewards, score

ROLLOUTS_FILE = "rollouts.pt"


class RLTrainer(Trainer):
    """`Trainer` whose step is an RL step (see the module docstring)."""

    def set_up(self) -> Run:
        run = super().set_up()
        cfg = self.cfg
        if run.data.format != "prompt_response":
            raise TrainConfigError(f"--objective {cfg.objective} needs prompt_response data (prompts, and the "
                                   f"responses the rewards compare with); {cfg.data} reads as {run.data.format}")
        from emdm_sampling.strategies import get_sampler

        get_sampler(cfg.rl_sampler)  # an unknown sampler fails here, in one line
        if (cfg.batch_size // cfg.rl_group_size) % self.world:
            raise TrainConfigError(f"--batch-size {cfg.batch_size} / --rl-group-size {cfg.rl_group_size} prompts per "
                                   f"step must split evenly over {self.world} processes")
        self.rewards = resolve_rewards(cfg.rl_reward)
        self.reference = None
        if cfg.objective == "grpo" and cfg.rl_beta > 0:  # the starting model, also when resuming
            from emdm_models.loading import load_denoiser

            self.reference = load_denoiser(cfg.model, device=str(self.device), dtype="float32").model
            self.reference.requires_grad_(False)
        self.rollouts: dict[str, Any] | None = None
        return run

    # --- 1. rollouts ------------------------------------------------------------------------------------------
    def _denoiser(self) -> Any:
        """The model being trained as a `Denoiser` (for the decode session), without copying its weights; its end
        token and length come from the same helpers `load_denoiser` uses."""
        model = self.acc.unwrap_model(self.model)
        return self.family(model, self.tokenizer, self.mask_token_id, eos_token_id(self.tokenizer, model.config),
                           self.pad_token_id, max_length_of(model.config, self.tokenizer))

    def _references(self, run: Run, rows: list[int]) -> tuple[list[list[int]], list[str], list[str]]:
        """(prompt ids, prompt text, reference response text) of training rows."""
        prompts, prompt_texts, references = [], [], []
        special = set(self.tokenizer.all_special_ids)
        for i in rows:
            ids = run.data.train.row(i).tolist()
            cut = int(run.data.train.prompt_lengths[i])
            prompts.append(ids[:cut])
            prompt_texts.append(self.tokenizer.decode([t for t in ids[:cut] if t not in special]))
            references.append(self.tokenizer.decode([t for t in ids[cut:] if t not in special]))
        return prompts, prompt_texts, references

    @torch.no_grad()
    def _draw_rollouts(self, run: Run, step: int) -> dict[str, Any]:
        from emdm_sampling import generate

        cfg = self.cfg
        group, prompts_per_step = cfg.rl_group_size, cfg.batch_size // cfg.rl_group_size
        rows = run.order.take((step // cfg.rl_iterations) * prompts_per_step, prompts_per_step).tolist()
        share = prompts_per_step // self.world  # each process decodes and trains on its own prompts' groups
        rows = rows[self.rank * share:(self.rank + 1) * share]
        first = self.rank * share * group  # the global index of this process's first rollout (its seed)
        prompts, prompt_texts, references = self._references(run, rows)
        prompts = [p for p in prompts for _ in range(group)]  # G consecutive rollouts per prompt
        model = self.acc.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        denoiser = self._denoiser()
        out = generate(denoiser, prompts, sampler=cfg.rl_sampler, temperature=cfg.rl_temperature,
                       gen_length=cfg.rl_gen_length, steps=cfg.rl_steps or cfg.rl_gen_length,
                       block_length=cfg.rl_block_length,
                       seeds=[mix_seed(cfg.seed, step, 11, first + i) for i in range(len(prompts))])
        model.train(was_training and cfg.dropout)
        # left-pad the prompts to one width (d1's layout: prompt block, then the completion block)
        width = max(len(p) for p in prompts)
        prompt_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            prompt_ids[i, width - len(p):] = torch.tensor(p)
        completion = torch.tensor([list(g) + [self.pad_token_id] * (cfg.rl_gen_length - len(g))
                                   for g in out.generated], dtype=torch.long)
        eos = denoiser.eos_token_id  # the token the decode session stops at
        is_eos = completion == eos if eos is not None else torch.zeros_like(completion, dtype=torch.bool)
        after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0  # positions after the first EOS
        completion_mask = ~after_eos & (torch.arange(cfg.rl_gen_length) < torch.tensor(
            [len(g) for g in out.generated])[:, None])
        texts = [self.tokenizer.decode(g, skip_special_tokens=True) for g in out.generated]
        rewards = torch.tensor(score(self.rewards, texts, [r for r in references for _ in range(group)],
                                     [p for p in prompt_texts for _ in range(group)]))
        ids = torch.cat([prompt_ids, completion], 1).to(self.device)
        mask_seeds = [mix_seed(cfg.seed, step, 13, k) for k in range(cfg.rl_iterations)]
        rollouts = {"step": step, "ids": ids, "completion_mask": completion_mask.to(self.device),
                    "rewards": rewards, "advantages": group_advantages(rewards, group).to(self.device),
                    "mask_seeds": mask_seeds}
        logits = lambda m: (lambda x: self.forward_logits(m, x, torch.ones_like(x)))  # noqa: E731
        sources = {"old": self.model if cfg.rl_iterations > 1 else None, "ref": self.reference}
        for name, source in sources.items():
            if source is not None:  # the policy that drew the rollouts / the reference, under each step's mask
                rollouts[name] = torch.stack([
                    d1_token_logps(logits(source), ids, cfg.rl_gen_length, self.mask_token_id, cfg.rl_p_mask_prompt,
                                   uniforms=self._prompt_mask_uniforms(ids, seed)) for seed in mask_seeds])
        return rollouts

    def _prompt_mask_uniforms(self, ids: torch.Tensor, seed: int) -> torch.Tensor:
        """The uniforms of d1's prompt mask for an inner step's seed (one draw for all rollouts; d1 draws the same
        after `set_seed(seed)`): the old policy, the reference and the step itself all read this one draw."""
        return torch.rand(ids.shape, generator=torch.Generator(device=ids.device).manual_seed(int(seed)),
                          device=ids.device)

    # --- the step -------------------------------------------------------------------------------------------
    def train_step(self, run: Run, step: int) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        # === 1. rollouts (a new batch every mu steps; a resumed run has the saved one) ===
        if step % cfg.rl_iterations == 0 or self.rollouts is None:
            self.rollouts = self._draw_rollouts(run, step - step % cfg.rl_iterations)
        r = self.rollouts
        inner = step % cfg.rl_iterations
        torch.manual_seed(mix_seed(cfg.seed, step, 2, self.rank))  # dropout: a function of the step
        # === 2.-3. log-likelihood of the rollouts under the policy, and the loss, micro-batch by micro-batch ===
        # (this inner step's mask seed; the prompt-mask uniforms are drawn for all rollouts at once and sliced, so
        # the micro-batch size changes nothing; each part's loss is weighted by its share of the tokens / rows)
        policy = lambda x: self.forward_logits(self.model, x, torch.ones_like(x))  # noqa: E731
        seed, rows = r["mask_seeds"][inner], r["ids"].shape[0]
        uniforms = self._prompt_mask_uniforms(r["ids"], seed)
        tokens = r["completion_mask"].sum().clamp(min=1)
        step_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        metrics: dict[str, float] = {}
        parts = list(range(0, rows, run.micro))
        for index, first in enumerate(parts):
            part = slice(first, first + run.micro)
            sync = contextlib.nullcontext() if index == len(parts) - 1 else self.acc.no_sync(self.model)
            with sync:
                with self.acc.autocast():
                    if cfg.rl_likelihood == "elbo":  # wd1 on the sequence ELBO, each rollout its own draws
                        seq_logps = elbo_sequence_logps(policy, r["ids"][part], r["completion_mask"][part],
                                                        self.mask_token_id, cfg.rl_elbo_draws,
                                                        [mix_seed(seed, first + i) for i in range(run.micro)])
                    else:  # d1's estimator: completion masked, prompt masked with probability p
                        logps = d1_token_logps(policy, r["ids"][part], cfg.rl_gen_length, self.mask_token_id,
                                               cfg.rl_p_mask_prompt, uniforms=uniforms[part])
                        seq_logps = (logps * r["completion_mask"][part]).sum(1)
                if cfg.objective == "grpo":
                    mask = r["completion_mask"][part]
                    old = r["old"][inner][part] if "old" in r else logps.detach()
                    loss, part_metrics = clipped_policy_loss(
                        logps, old, r["advantages"][part], mask, cfg.rl_epsilon, cfg.rl_beta,
                        r["ref"][inner][part] if "ref" in r else None)
                    share = mask.sum() / tokens  # the batch's loss is the mean over all its completion tokens
                    for key, value in part_metrics.items():
                        metrics[key] = metrics.get(key, 0.0) + value * float(share)
                else:  # wd1's weights are softmaxes over the process's whole batch of rollouts
                    weights = wd1_weights(r["advantages"])[part]
                    loss, share = (seq_logps * weights).sum(), torch.ones((), device=self.device)
                self.acc.backward(loss * share)
            step_loss += (loss * share).detach().double()
        if cfg.max_grad_norm > 0:
            self.acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        local = {"reward": float(r["rewards"].mean()),
                 "reward_std_in_group": float(r["rewards"].view(-1, cfg.rl_group_size).std(1).mean()),
                 "completion_tokens": float(r["completion_mask"].sum(1).float().mean()), **metrics}
        if self.world > 1:  # every process holds its own groups: log their mean
            values = self.acc.reduce(torch.tensor(list(local.values()), device=self.device), reduction="mean")
            local = dict(zip(local, values.tolist()))
        self.step_metrics = local
        return step_loss, int(r["completion_mask"].sum())

    # --- the rollouts travel with the checkpoint -------------------------------------------------------------
    def save_extra_state(self, state_dir: Any) -> None:
        if self.rollouts is not None:
            torch.save({k: (v.cpu() if torch.is_tensor(v) else v) for k, v in self.rollouts.items()},
                       state_dir / ROLLOUTS_FILE)

    def load_extra_state(self, state_dir: Any) -> None:
        path = state_dir / ROLLOUTS_FILE
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            self.rollouts = {k: (v.to(self.device) if torch.is_tensor(v) and k != "rewards" else v)
                             for k, v in saved.items()}

