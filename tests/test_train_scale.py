"""The pieces of GPU-scale training that a CPU can check: the shipped accelerate configs (FSDP, DeepSpeed ZeRO-2/3)
parse to what they say, experiment trackers are chosen or refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from emdm_train.errors import TrainConfigError
from emdm_train.trainer import trackers

RECIPES = Path(__file__).resolve().parents[1] / "emdm_train" / "recipes" / "accelerate"


@pytest.mark.parametrize("name, kind, field, expected", [
    ("fsdp.yaml", "FSDP", "fsdp_config", {"fsdp_version": 2, "fsdp_state_dict_type": "SHARDED_STATE_DICT",
                                          "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}),
    ("deepspeed-zero2.yaml", "DEEPSPEED", "deepspeed_config", {"zero_stage": 2, "gradient_accumulation_steps": 1}),
    ("deepspeed-zero3.yaml", "DEEPSPEED", "deepspeed_config", {"zero_stage": 3, "zero3_init_flag": True}),
])
def test_accelerate_recipes_parse(name, kind, field, expected):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / name))
    assert str(config.distributed_type).endswith(kind) and config.mixed_precision == "bf16"
    assert expected.items() <= getattr(config, field).items()


def test_trackers_are_chosen_or_refused_in_one_line(monkeypatch):
    import accelerate.utils

    assert trackers("none") == []
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: False)
    assert trackers("auto") == []
    with pytest.raises(TrainConfigError, match=r"--report-to wandb needs the wandb package: pip install wandb"):
        trackers("wandb")
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: True)
    monkeypatch.setattr(accelerate.utils, "is_tensorboard_available", lambda: True)
    assert trackers("tensorboard,wandb") == ["tensorboard", "wandb"] and trackers("auto") == ["tensorboard"]


def test_report_to_names_the_choices():
    from emdm_train.config import parse_args

    with pytest.raises(TrainConfigError, match="report-to.*comma-separated list of tensorboard and wandb"):
        parse_args(["--model", "m", "--data", "d", "--output", "o", "--max-steps", "1", "--report-to", "mlflow"])
