"""The base of the families that run on emdm's transformers backbones (LLaDA, Dream, SDAR, A2D).

A family converts its checkpoints' `config.json` into a backbone config (`convert_config`) and, when the weights
are stored under other names, maps them (`key_mapping`, applied by `from_pretrained`, which also gives `dtype`,
`device_map` and quantised loading). A checkpoint saved by emdm is in the backbone's own layout and loads without
a mapping. On top of `Denoiser.logits`, these families offer windowed, cached forward passes (`window_logits`),
which the sampler's `cache=` modes use.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import torch

from emdm_core.contract import ModelContract
from emdm_core.errors import CheckpointError

from ..backbones import BACKBONES, DiffusionCache, diffusion_mask, positions_from_mask
from ..denoiser import Denoiser


class BackboneDenoiser(Denoiser):
    """A family on a transformers backbone (see the module docstring)."""

    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    foreign_model_types: ClassVar[tuple[str, ...]] = ()  # config.json model types this family converts
    key_mapping: ClassVar[dict[str, str] | None] = None  # checkpoint weight names (regex) -> backbone names

    @classmethod
    def matches(cls, config: Any) -> bool:
        return getattr(config, "diffusion_family", None) == cls.name

    @classmethod
    def accepts_model_type(cls, model_type: str, explicit: bool) -> bool:
        """Whether `convert_config` handles a config.json of this model type (`explicit`: the user chose this
        family with adapter=...)."""
        return model_type in cls.foreign_model_types

    @classmethod
    def convert_config(cls, raw: dict[str, Any], path: str) -> Any:
        """The backbone config (with `diffusion_family` set) of a checkpoint's config.json."""
        raise NotImplementedError

    @classmethod
    def lm_class(cls, config: Any) -> type:
        for config_class, lm in BACKBONES.values():
            if isinstance(config, config_class):
                return lm
        raise CheckpointError(f"{type(config).__name__} is not an emdm backbone config; pass adapter=remote "
                              f"trust_remote_code=True to run the checkpoint's own code")

    @classmethod
    def load_model(cls, path: str, config: Any, dtype: torch.dtype, trust_remote_code: bool,
                   **load_kwargs: Any) -> torch.nn.Module:
        from ..loading import quiet_transformers, raw_config

        foreign = os.path.isdir(path) and raw_config(path).get("model_type") in cls.foreign_model_types
        mapping = cls.key_mapping if foreign else None

        try:
            with quiet_transformers():  # a mismatch is reported below, in one line
                model, info = cls.lm_class(config).from_pretrained(path, config=config, dtype=dtype,
                                                                   key_mapping=mapping, output_loading_info=True,
                                                                   **load_kwargs)
        except RuntimeError as exc:  # transformers raises on mismatched shapes
            raise CheckpointError(f"{path}: the {cls.name} weights do not fit its config ({str(exc).splitlines()[0]}"
                                  f"); pass adapter=remote trust_remote_code=True to run the checkpoint's own "
                                  f"code") from None
        if mapping is not None:
            model._weight_conversions = []  # save in the backbone's own names (config.json says emdm_*), not back
        missing = [k for k in info.get("missing_keys", []) if not k.endswith("rotary_emb.inv_freq")]
        if config.tie_word_embeddings:
            missing = [k for k in missing if k != "lm_head.weight"]
        unexpected = list(info.get("unexpected_keys", []))
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: the {cls.name} weights do not match the backbone ({len(missing)} missing, e.g. "
                f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); pass adapter=remote "
                f"trust_remote_code=True to run the checkpoint's own code")
        return model

    @classmethod
    def build_model(cls, config: Any, trust_remote_code: bool) -> torch.nn.Module:
        return cls.lm_class(config)(config)

    @classmethod
    def forward_logits(cls, model: torch.nn.Module, input_ids: torch.Tensor,
                       attention_mask: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=positions_from_mask(attention_mask)).logits
        config = getattr(model, "module", model).config  # a DDP-wrapped model (emdm_train on several processes)
        if getattr(config, "logits_shift", False):  # AR-initialised: position i-1 predicts token i
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits

    # -- windowed, cached forward passes --------------------------------------------------------------------------
    @property
    def block_size(self) -> int | None:
        """The attention block of a block-causal model (its cache is exact), None for a bidirectional one."""
        cfg = self.model.config
        return int(cfg.block_size) if getattr(cfg, "attention", "") == "block_causal" else None

    @property
    def contract(self) -> ModelContract:
        """KV caches: Fast-dLLM's approximate prefix / dual caches, or the exact cache of block-causal attention."""
        block = self.block_size
        shifted = bool(getattr(self.model.config, "logits_shift", False))
        return dataclasses.replace(super().contract, attention_block=block,
                                   cache_modes=("none", "exact") if block else ("none", "prefix", "dual"),
                                   verification=block is None and not shifted)

    @torch.no_grad()
    def verified_logits(self, tokens: torch.Tensor, attention: torch.Tensor, block_start: torch.Tensor,
                        block_end: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [b, L, V], shadow logits [b, S, V]) of one model call: the sequence as usual, plus S = the longest
        block of "shadow" mask tokens, slot j at the position of the row's block column block_start + j, attending
        to every real token but that column (and to the other slots); no real token attends to the slots, so the
        sequence's logits are unchanged. Slot j predicts the block's j-th token with it hidden (WINO's verification).
        """
        self.forward_calls += 1
        batch, length = tokens.shape
        span = int((block_end - block_start).max())
        slot = torch.arange(span, device=tokens.device)
        column = block_start.unsqueeze(1) + slot  # [b, S] the block column each slot stands for
        positions = positions_from_mask(attention)
        shadow_positions = positions.gather(1, column.clamp(max=length - 1))
        ids = torch.cat([tokens, torch.full((batch, span), self.mask_token_id, dtype=tokens.dtype,
                                            device=tokens.device)], 1)
        keys = torch.arange(length + span, device=tokens.device)
        real = torch.cat([attention.bool(), torch.zeros_like(column, dtype=torch.bool)], 1)  # [b, L + S]
        mask = real[:, None, :].expand(-1, length + span, -1).clone()
        valid_slot = slot.unsqueeze(0) < (block_end - block_start).unsqueeze(1)  # [b, S]
        shadow_rows = mask[:, length:]
        shadow_rows[:, :, length:] = valid_slot[:, None, :] | torch.eye(span, dtype=torch.bool, device=tokens.device)
        shadow_rows &= keys[None, None, :] != column[:, :, None]  # slot j does not see its own column
        logits = self.model(input_ids=ids, position_ids=torch.cat([positions, shadow_positions], 1),
                            diffusion_mask_4d=mask[:, None]).logits.float()
        return logits[:, :length], logits[:, length:]

    def new_cache(self, batch: int, length: int) -> DiffusionCache:
        return DiffusionCache(batch, length)

    @torch.no_grad()
    def window_logits(self, tokens: torch.Tensor, attention: torch.Tensor, rows: torch.Tensor | slice, start: int,
                      end: int, cache: DiffusionCache, recompute: torch.Tensor, store: torch.Tensor) -> torch.Tensor:
        """Logits [b, end - start, V] (float32) of columns `start:end` for batch rows `rows`, attending to the
        cached canvas merged with this pass's fresh keys/values (`recompute`/`store` [b, end - start])."""
        self.forward_calls += 1
        shift = bool(getattr(self.model.config, "logits_shift", False))
        first = max(start - 1, 0) if shift else start  # a shifted model reads column c's logits at c - 1
        if first < start:
            pad = torch.zeros_like(recompute[:, :1])
            recompute, store = torch.cat([pad, recompute], 1), torch.cat([pad, store], 1)
        positions = positions_from_mask(attention)
        mask = diffusion_mask(attention, positions[:, first:end], positions, self.block_size)
        cache.plan(rows, first, end, recompute, store)
        logits = self.model(input_ids=tokens[:, first:end], position_ids=positions[:, first:end], cache=cache,
                            diffusion_mask_4d=mask).logits
        if shift:
            logits = logits[:, : end - start] if first < start else torch.cat([logits[:, :1], logits[:, :-1]], 1)
        return logits.float()
