"""The shared plumbing (emdm_core): one registry class, typed configs from dataclass fields, one CLI wrapper."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emdm_core import typed
from emdm_core.cli import run_cli
from emdm_core.errors import ConfigError, EMDMError
from emdm_core.registry import Registry
from emdm_core.typed import in_range, option

ROOT = Path(__file__).resolve().parents[1]


def test_registry_registers_gets_lists_and_unregisters():
    class Base:
        name = ""

    reg = Registry("widget", base=Base)

    @reg.register("b")
    class B(Base):
        pass

    @reg.register("a")
    class A(Base):
        pass

    assert reg.get("a") is A and A.name == "a" and reg.available() == ["a", "b"] and "b" in reg
    with pytest.raises(ConfigError, match=r"^unknown widget 'c'; registered widgets: a, b$"):
        reg.get("c")
    with pytest.raises(TypeError, match="subclasses of"):
        reg.register("x")(object)
    reg.unregister("a")
    reg.unregister("never-registered")
    assert reg.available() == ["b"]


def test_every_pluggable_kind_uses_the_one_registry():
    from emdm_models.denoiser import ADAPTERS
    from emdm_sampling.schedules import SCHEDULES
    from emdm_sampling.strategies import SAMPLERS
    from emdm_train.masking import MASKINGS

    for reg in (ADAPTERS, SCHEDULES, SAMPLERS, MASKINGS):
        assert isinstance(reg, Registry) and reg.available()
        with pytest.raises(EMDMError, match=f"unknown {reg.kind} 'nope'; registered {reg.kind}s: "):
            reg.get("nope")


@pytest.mark.parametrize("value, hint, expected", [
    ("3", int, 3), ("3.0", int, 3), (4.0, int, 4), ("0.5", float, 0.5), ("yes", bool, True), ("off", bool, False),
    ("none", int | None, None), ("", float | None, None), ("x", str, "x"), ("a=1,b=two", dict[str, str],
                                                                            {"a": "1", "b": "two"}),
    ("4,8", tuple[float, ...], (4.0, 8.0)), ([0, "1"], tuple[int, ...], (0, 1)), ("high", tuple[str, ...], ("high",)),
])
def test_coerce_converts_by_type_hint(value, hint, expected):
    assert typed.coerce(value, hint, "opt") == expected


@pytest.mark.parametrize("value, hint, needle", [
    ("2.5", int, "opt='2.5' is not a valid int"), ("maybe", bool, "is not a valid bool"), (True, int, "int"),
    ("nan", float, "not a finite number"), ("inf", float, "not a finite number"), (None, int, "needs a value"),
    ("a", dict[str, str], "expected key=value"), ("1,x", tuple[int, ...], "opt='x' is not a valid int"),
])
def test_coerce_rejects_bad_values_in_one_line(value, hint, needle):
    with pytest.raises(ConfigError) as info:
        typed.coerce(value, hint, "opt")
    assert needle in str(info.value) and "\n" not in str(info.value)


def _boom(kind):
    def main(argv):
        if kind == "emdm":
            raise ConfigError("steps must be >= 1 (got 0)")
        if kind == "os":
            open("/nonexistent-dir/x/y", "w")
        raise KeyboardInterrupt
    return main


def test_run_cli_prints_one_line(capsys, monkeypatch):
    monkeypatch.delenv("EMDM_TRACEBACK", raising=False)
    assert run_cli(_boom("emdm"), []) == 2
    assert capsys.readouterr().err == "error: steps must be >= 1 (got 0)\n"
    assert run_cli(_boom("os"), []) == 2
    assert capsys.readouterr().err.startswith("error: No such file or directory: /nonexistent-dir/x/y")
    assert run_cli(_boom("int"), [], interrupted="interrupted; rerun to resume") == 130
    assert capsys.readouterr().err.strip() == "interrupted; rerun to resume"
    monkeypatch.setenv("EMDM_TRACEBACK", "1")
    with pytest.raises(ConfigError):
        run_cli(_boom("emdm"), [])


# --- a new shared sampler option is one field plus its check ----------------------------------------------------

def _extended_config():
    from emdm_sampling import SamplerConfig

    @dataclasses.dataclass(frozen=True)
    class WithAlpha(SamplerConfig):
        alpha: float = option(0.5, "a new shared option", check=in_range(0.0, 1.0))

    return WithAlpha


def test_a_new_shared_option_reaches_the_config_the_cli_and_lm_eval(tiny_checkpoints):
    from emdm_eval.model import EMDMLM
    from emdm_sampling.__main__ import build_parser, config_from_args

    WithAlpha = _extended_config()
    # the config: typed from strings, checked by its own check, immutable
    assert WithAlpha.from_kwargs(alpha="0.25").alpha == 0.25
    with pytest.raises(ConfigError, match=r"alpha must be in \[0.0, 1.0\] \(got 2.0\)"):
        WithAlpha.from_kwargs(alpha=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        WithAlpha().alpha = 0.1
    # the CLI of python -m emdm_sampling: the flag exists with the field's default and help
    parser = build_parser(WithAlpha)
    assert "--alpha" in parser.format_help() and "a new shared option" in parser.format_help()
    args = parser.parse_args(["--alpha", "0.75", "--steps", "3"])
    cfg = config_from_args(args, WithAlpha)
    assert (cfg.alpha, cfg.steps) == (0.75, 3)
    assert config_from_args(parser.parse_args([]), WithAlpha).alpha == 0.5

    # the lm-eval model arguments and per-request gen_kwargs
    class AlphaLM(EMDMLM):
        config_class = WithAlpha

    lm = AlphaLM(pretrained=tiny_checkpoints["bert"], alpha="0.1", steps=2)
    assert lm.sampler_config.alpha == 0.1 and lm.get_model_info()["emdm"]["sampler"]["alpha"] == 0.1
    request_config, _until = lm._request_config({"alpha": 0.9, "max_gen_toks": 2})
    assert request_config.alpha == 0.9 and request_config.gen_length == 2
    with pytest.raises(ConfigError, match="alpha must be in"):
        AlphaLM(pretrained=tiny_checkpoints["bert"], alpha=3)


def test_sampler_cli_defaults_are_the_config_defaults():
    from emdm_sampling import SamplerConfig
    from emdm_sampling.__main__ import build_parser, config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args([])) == SamplerConfig()
    help_text = parser.format_help()
    for name in SamplerConfig.field_names():
        assert typed.flag_name(name) in help_text, name
    assert "--no-stop-at-eos" in help_text


def test_nonfinite_temperature_is_one_line_on_the_cli():
    proc = subprocess.run([sys.executable, "-m", "emdm_sampling", "--temperature", "nan"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == ("error: temperature='nan' is not a finite number; "
                                                            "give a finite value"), proc.stderr
    assert math.isnan(float("nan"))


# --- paired statistics -------------------------------------------------------------------------------------------
def test_mcnemar_exact_against_hand_computed_cases():
    from emdm_core.stats import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair
    assert mcnemar_exact(1, 0) == 1.0  # 2 * P[X <= 0], X ~ Bin(1, .5) = 2 * 1/2
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # 2 * (1/2)^5
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # symmetric
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 0.03857
    assert mcnemar_exact(4, 4) == 1.0  # capped at 1
    assert mcnemar_exact(3, 2) == 1.0  # 2 * (1 + 5 + 10) / 32 = 1
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.1094
    assert 0 < mcnemar_exact(600, 400) < 1e-9  # big counts stay exact, no underflow to 0 or NaN
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_paired_counts_and_difference():
    from emdm_core.stats import paired_counts

    a = [1, 1, 1, 0, 0, 1, 0, 1]
    b = [1, 0, 0, 0, 1, 1, 0, 0]
    counts = paired_counts(a, b)
    assert (counts.both, counts.only_a, counts.only_b, counts.neither, counts.n) == (2, 3, 1, 2, 8)
    assert counts.p_value == pytest.approx(2 * (1 + 4) / 16)
    diff, low, high = counts.difference()
    # d = a - b per item: [0, 1, 1, 0, -1, 0, 0, 1]: mean .25, var of the mean (4/8 - .0625) / 8
    assert diff == 0.25 and high - diff == pytest.approx(1.959963984540054 * math.sqrt((0.5 - 0.0625) / 8))
    assert low < diff < high
    with pytest.raises(ValueError, match="same items"):
        paired_counts([1], [1, 0])
    with pytest.raises(ValueError, match="0 or 1"):
        paired_counts([0.5], [1])


def test_holm_adjustment():
    from emdm_core.stats import holm

    # the textbook example: p = (0.01, 0.04, 0.03, 0.005), m = 4 -> sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1, monotone
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0]) and holm([]) == []
    # the README's margin-vs-top_prob family: the one p = 0.015 of six is 0.09 after adjustment
    assert holm([0.015, 0.2, 0.3, 0.5, 0.6, 0.9])[0] == pytest.approx(0.09)


def test_unpaired_difference_and_wilson_intervals():
    from emdm_core.stats import unpaired_difference_ci
    from emdm_eval.frontier import wilson

    diff, low, high = unpaired_difference_ci(90, 100, 80, 100)  # 0.9 vs 0.8: se = sqrt(.09/100 + .16/100) = 0.05
    assert diff == pytest.approx(0.1) and high - diff == pytest.approx(1.959963984540054 * 0.05)
    assert low == pytest.approx(0.1 - 1.959963984540054 * 0.05)
    with pytest.raises(ValueError):
        unpaired_difference_ci(1, 0, 1, 1)
    low, high = wilson(0, 20)  # Wilson stays informative at 0% (Wald would give [0, 0])
    assert low == 0 and 0.15 < high < 0.17
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)


def test_the_sampling_cli_writes_no_library_bar_into_a_log(tmp_path):
    """Issue 26 item 7: with stderr a file (not a terminal), loading weights draws no transformers bar there."""
    from emdm_models.tiny import build_tiny_checkpoint

    ckpt = build_tiny_checkpoint(tmp_path / "llada", family="llada")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "emdm_sampling", "--pretrained", str(ckpt), "--prompt", "the cat",
                           "--gen-length", "4", "--steps", "4"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "Loading weights" not in proc.stderr and "it/s]" not in proc.stderr, proc.stderr
