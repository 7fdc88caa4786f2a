"""Damaged or mismatched inputs end in one line that names the fix (issue 26, item 3): truncated or empty weight
files (sampling, lm-eval, training; an adapter's too), a PEFT adapter of another shape or whose target modules the
base lacks, training a DiffusionGemma checkpoint, and `--lora --resume` on a full-model run's checkpoint."""

from __future__ import annotations

import shutil
import warnings

import pytest

from emdm_core.errors import CheckpointError, EMDMError
from emdm_models.tiny import build_tiny_checkpoint
from emdm_sampling import load_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_weights_are_one_line_errors_everywhere(tiny_checkpoints, tmp_path, damage, capsys):
    path = _copy(tiny_checkpoints["bert"], tmp_path / "bert")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(CheckpointError) as err:
        load_denoiser(path)
    assert "model.safetensors" in _one_line(err.value) and "truncated or damaged" in str(err.value)

    from emdm_sampling.__main__ import main

    assert main(["--pretrained", str(path), "--prompt", "the cat", "--steps", "2", "--gen-length", "2"]) == 2
    assert "truncated or damaged" in capsys.readouterr().err.strip().splitlines()[-1]

    from emdm_eval.model import EMDMLM

    with pytest.raises(CheckpointError, match="truncated or damaged"):
        EMDMLM(pretrained=str(path))

    from emdm_train.config import TrainConfig
    from emdm_train.trainer import train

    data_file = tmp_path / "d.txt"
    data_file.write_text("the cat sleeps .\n" * 20)
    with pytest.raises(EMDMError, match="truncated or damaged"):
        train(TrainConfig(model=str(path), data=str(data_file), output=str(tmp_path / "run"), max_steps=1,
                          progress=False, report_to="none", save_every=0, eval_every=0))


def _adapter(base_path, out, target_modules):
    """A PEFT LoRA adapter of the model at `base_path`, saved to `out`."""
    peft = pytest.importorskip("peft")
    den = load_denoiser(base_path)
    model = peft.get_peft_model(den.model, peft.LoraConfig(r=4, target_modules=target_modules))
    model.peft_config["default"].base_model_name_or_path = str(base_path)
    model.save_pretrained(out)
    return out


def test_adapters_that_do_not_fit_are_one_line_errors(tiny_checkpoints, tmp_path):
    small = tiny_checkpoints["bert"]
    wide = build_tiny_checkpoint(tmp_path / "wide", "bert", hidden_size=48)
    adapter = _adapter(small, tmp_path / "adapter", ["query", "value"])
    with pytest.raises(CheckpointError) as err:  # trained on a base of another shape
        load_denoiser(wide, peft=str(adapter))
    assert "does not fit this base" in _one_line(err.value) and str(small) in str(err.value)
    llada_adapter = _adapter(tiny_checkpoints["llada"], tmp_path / "llada-adapter", ["q_proj"])
    with pytest.raises(CheckpointError, match="does not fit this base"):  # target modules the base lacks
        load_denoiser(small, peft=str(llada_adapter))
    truncated = _copy(adapter, tmp_path / "truncated-adapter")
    weights = truncated / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_denoiser(small, peft=str(truncated))
    same_shape = build_tiny_checkpoint(tmp_path / "other-bert", "bert", seed=5)
    with warnings.catch_warnings(record=True) as caught:  # another base of the same shape: merged, with a word
        warnings.simplefilter("always")
        load_denoiser(same_shape, peft=str(adapter))
    assert any("was trained on" in str(w.message) for w in caught)


def test_training_a_diffusion_gemma_checkpoint_is_refused_in_one_line(tmp_path):
    from emdm_train.config import TrainConfig
    from emdm_train.errors import TrainConfigError
    from emdm_train.trainer import train

    path = build_tiny_checkpoint(tmp_path / "dg", "diffusion_gemma")
    data_file = tmp_path / "d.txt"
    data_file.write_text("the cat sleeps .\n" * 20)
    with pytest.raises(TrainConfigError) as err:
        train(TrainConfig(model=str(path), data=str(data_file), output=str(tmp_path / "run"), max_steps=1,
                          progress=False, report_to="none", save_every=0, eval_every=0))
    assert "does not train DiffusionGemma" in _one_line(err.value)


def test_lora_resume_on_a_full_model_checkpoint_is_one_line(tiny_checkpoints, tmp_path):
    pytest.importorskip("peft")
    from emdm_train.config import TrainConfig
    from emdm_train.errors import TrainConfigError
    from emdm_train.trainer import train

    data_file = tmp_path / "d.txt"
    data_file.write_text("the cat sleeps on the mat .\n" * 40)
    common = dict(model=tiny_checkpoints["llada"], data=str(data_file), output=str(tmp_path / "run"),
                  progress=False, report_to="none", eval_every=0, batch_size=4, max_length=16, val_split=0.0)
    train(TrainConfig(max_steps=2, save_every=1, **common))  # a full-model run with checkpoints
    with pytest.raises(TrainConfigError) as err:
        train(TrainConfig(max_steps=4, save_every=1, lora=True, resume="latest", **common))
    assert "full-model run" in _one_line(err.value) and "without --lora" in str(err.value)


def _full_run(tiny_checkpoints, tmp_path, steps=2):
    from emdm_train.config import TrainConfig
    from emdm_train.trainer import train

    data_file = tmp_path / "d.txt"
    data_file.write_text("the cat sleeps on the mat .\n" * 40)
    common = dict(model=tiny_checkpoints["bert"], data=str(data_file), output=str(tmp_path / "run"),
                  progress=False, report_to="none", eval_every=0, batch_size=4, max_length=16, val_split=0.0,
                  save_every=1, save_total_limit=None)
    train(TrainConfig(max_steps=steps, **common))
    return common


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_a_damaged_manifest_is_damage_not_a_pre_manifest_checkpoint(tiny_checkpoints, tmp_path, damage):
    from emdm_train.checkpoints import STATE_DIR, checkpoint_problem
    from emdm_train.config import TrainConfig
    from emdm_train.errors import TrainError
    from emdm_train.trainer import train

    common = _full_run(tiny_checkpoints, tmp_path)
    newest = tmp_path / "run" / "checkpoint-2"
    manifest = newest / STATE_DIR / "manifest.json"
    if damage == "garbage":
        manifest.write_text("{ not json")
    else:
        manifest.unlink()
    problem = checkpoint_problem(newest)
    assert problem and ("damaged" in problem)
    with pytest.raises(TrainError) as err:  # named explicitly: refused in one line
        train(TrainConfig(max_steps=3, resume=str(newest), **{k: v for k, v in common.items()}))
    assert "damaged" in _one_line(err.value)
    # a checkpoint written before manifests existed (its state says nothing of one) is still accepted
    state = newest / STATE_DIR / "state.json"
    import json

    record = json.loads(state.read_text())
    record.pop("manifest")
    state.write_text(json.dumps(record))
    if manifest.exists():
        manifest.unlink()
    assert checkpoint_problem(newest) is None


def test_a_garbage_scheduler_state_is_a_one_line_error(tiny_checkpoints, tmp_path):
    import json

    from emdm_train.checkpoints import STATE_DIR
    from emdm_train.config import TrainConfig
    from emdm_train.errors import TrainError
    from emdm_train.trainer import train

    common = _full_run(tiny_checkpoints, tmp_path)
    newest = tmp_path / "run" / "checkpoint-2"
    (newest / STATE_DIR / "manifest.json").unlink()  # a pre-manifest checkpoint: nothing verifies the file
    state = newest / STATE_DIR / "state.json"
    record = json.loads(state.read_text())
    record.pop("manifest")
    state.write_text(json.dumps(record))
    (newest / STATE_DIR / "scheduler.pt").write_bytes(b"garbage")
    with pytest.raises(TrainError) as err:
        train(TrainConfig(max_steps=3, resume=str(newest), **common))
    assert "cannot be read" in _one_line(err.value)


def test_a_surprise_masked_model_decodes_in_the_order_it_was_trained_for(tiny_checkpoints, tmp_path):
    """Issue 26, item 5: the training recipe's surprise options are the surprise sampler's defaults; an explicit
    option still wins, with a warning naming what the model was trained for."""
    import torch

    from emdm_sampling import SamplerConfig, generate

    path = _copy(tiny_checkpoints["bert"], tmp_path / "surprise-trained")
    (path / "emdm_train_config.yaml").write_text("masking: surprise\nsurprise_direction: low_first\n"
                                                  "masking_options: {temperature: 0.5}\n")
    den = load_denoiser(path)
    den.surprise = torch.rand(den.vocab_size, generator=torch.Generator().manual_seed(0)) * 30
    assert den.contract.trained_options == {"surprise": {"surprise_direction": "low_first",
                                                         "surprise_temperature": 0.5}}
    config = SamplerConfig.for_denoiser(den, sampler="surprise")
    assert dict(config.options) == {"surprise_direction": "low_first", "surprise_temperature": 0.5}
    prompt = [den.tokenizer("the capital of france is", add_special_tokens=False)["input_ids"]]
    kw = dict(steps=12, gen_length=12, seed=1, trace=True, temperature=1.0)
    implied = generate(den, prompt, sampler="surprise", **kw)
    explicit = generate(den, prompt, sampler="surprise", surprise_direction="low_first", surprise_temperature=0.5,
                        **kw)
    assert implied.trace.order(0) == explicit.trace.order(0)
    with pytest.warns(UserWarning, match="overrides the checkpoint's training, which used surprise_direction=low"):
        other = generate(den, prompt, sampler="surprise", surprise_direction="high_first", **kw)
    assert other.trace.order(0) != implied.trace.order(0)
    assert dict(SamplerConfig.for_denoiser(den, sampler="margin").options) == {}  # other samplers: untouched


def test_a_config_declaring_more_layers_than_the_weights_hold_is_refused(tiny_checkpoints, tmp_path):
    import json

    path = _copy(tiny_checkpoints["bert"], tmp_path / "bert-3-layers")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": config["num_hidden_layers"] + 1}))
    with pytest.raises(CheckpointError) as err:
        load_denoiser(path)
    assert "not in its weight file" in _one_line(err.value)


def test_emdm_eval_accepts_a_lora_output_as_pretrained(tiny_checkpoints, tmp_path):
    from emdm_eval.__main__ import check_model_args

    adapter = _adapter(tiny_checkpoints["bert"], tmp_path / "lora-out", ["query", "value"])
    check_model_args(["--model", "emdm", "--model_args", f"pretrained={adapter}", "--tasks", "x"])  # no error
    assert load_denoiser(adapter).path == str(tiny_checkpoints["bert"])


def test_resume_without_a_checkpoint_starts_the_log_over(tiny_checkpoints, tmp_path):
    """A run killed before its first checkpoint, resumed: it starts from step 0, and its log has each record once."""
    import json

    from emdm_train.config import TrainConfig
    from emdm_train.trainer import train

    data_file = tmp_path / "d.txt"
    data_file.write_text("the cat sleeps on the mat .\n" * 40)
    common = dict(model=tiny_checkpoints["bert"], data=str(data_file), output=str(tmp_path / "run"), progress=False,
                  report_to="none", eval_every=0, batch_size=4, max_length=16, val_split=0.0, log_every=2,
                  max_steps=4, save_every=0)
    train(TrainConfig(**common))
    for name in ("model.safetensors", "emdm_train_state"):  # as if killed before anything was saved
        target = tmp_path / "run" / name
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    train(TrainConfig(resume="latest", **common))
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps)) and steps == sorted(steps)
