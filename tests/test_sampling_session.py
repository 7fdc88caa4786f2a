"""The decode session (issue 22): the per-step record, options a strategy would ignore refused before any pass,
named randomness streams, one check per config in lm-eval, and the shape of the library (a short driver, the
model contract read instead of attribute probes, no import from emdm_models up into emdm_sampling)."""

from __future__ import annotations

import ast
import zlib
from pathlib import Path

import pytest
import torch

from emdm_core.errors import ConfigError
from emdm_models.tiny import build_tiny_checkpoint
from emdm_sampling import (DecodeSession, SamplerConfig, StepResult, Strategy, available_samplers, generate,
                           get_sampler, load_denoiser, plan_decoding, register_sampler)
from emdm_sampling.rng import STREAMS, stream_id
from emdm_sampling.strategies import SAMPLERS, STRATEGY_OPTIONS

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llada(tiny_checkpoints):
    return load_denoiser(tiny_checkpoints["llada"])


def _prompt(den, text="the capital of france is"):
    return den.tokenizer(text, add_special_tokens=False)["input_ids"]


# --- the per-step record -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(sampler="margin", steps=8, gen_length=8),
                                dict(sampler="top_prob", steps=6, gen_length=12, block_length=4, temperature=1.0),
                                dict(sampler="remdm", steps=8, gen_length=8, temperature=1.0, eta=0.5),
                                dict(sampler="entropy", steps=8, gen_length=8, threshold=0.2)])
def test_recorded_logprobs_equal_a_fresh_forward_pass_at_that_state(llada, kw):
    prompt = _prompt(llada)
    out = generate(llada, [prompt], seed=3, record=True, **kw)
    record = out.record
    assert len(record.steps) == out.nfe
    mask = llada.mask_token_id
    for st in record.steps:
        state = torch.tensor([prompt + st.tokens_before[0].tolist()])
        logits = llada.logits(state)[0, len(prompt):].double()
        logits[:, mask] = torch.finfo(torch.float32).min
        fresh = torch.log_softmax(logits, -1)
        where = st.decided[0].nonzero().flatten()
        assert len(where) > 0 or kw["sampler"] == "remdm"
        expected = fresh[where, st.tokens[0, where]]
        assert torch.allclose(st.logprob[0, where].double(), expected, atol=1e-4), (st.step, kw)
        assert (st.logprob[0][~st.decided[0]] == 0).all()


def test_record_rows_positions_and_pass_split(llada):
    prompts = [_prompt(llada), _prompt(llada, "one two"), _prompt(llada, "the cat sleeps on the")]
    out = generate(llada, prompts, sampler="margin", steps=12, gen_length=12, block_length=4, cache="dual",
                   threshold=0.3, seeds=[1, 2, 3], record=True, stop_at_eos=False)
    record = out.record
    assert sum(s.full_passes for s in record.steps) == out.nfe_full
    assert sum(s.partial_passes for s in record.steps) == out.nfe_partial
    for row, prompt in enumerate(prompts):
        steps = record.for_row(row)
        assert len(steps) == out.row_nfe[row]
        decided = {p: t for s in steps for p, t in zip(s.positions, s.tokens)}  # reveal-only: each position once
        assert sorted(decided) == list(range(len(prompt), len(prompt) + 12))
        assert [decided[p] for p in sorted(decided)] == out.sequences[row][len(prompt):]
        assert record.total_logprob(row) == pytest.approx(sum(sum(s.logprobs) for s in steps))
        assert all(lp <= 0 for s in steps for lp in s.logprobs)
        # a row's record does not depend on its batch
        alone = generate(llada, [prompt], sampler="margin", steps=12, gen_length=12, block_length=4, cache="dual",
                         threshold=0.3, seeds=[row + 1], record=True, stop_at_eos=False).record.for_row(0)
        assert [(s.positions, s.tokens) for s in alone] == [(s.positions, s.tokens) for s in steps]
        assert all(a.logprobs == pytest.approx(b.logprobs, abs=1e-5) for a, b in zip(alone, steps))


def test_session_steps_one_pass_at_a_time(llada):
    config = plan_decoding(SamplerConfig(sampler="margin", steps=4, gen_length=4), llada.contract)
    session = DecodeSession(llada, [_prompt(llada)], config, record=True)
    passes = 0
    while session.step():
        passes += 1
        assert len(session.record.steps) == passes
    assert not session.step() and passes == 4
    assert session.result().sequences == generate(llada, [_prompt(llada)], config).sequences


# --- options a strategy would ignore ---------------------------------------------------------------------------

SETTINGS = {"threshold": 0.5, "schedule": "cosine", "order_noise": 0.5, "order_noise_decay": "linear",
            "topk_remask": "linear"}


@pytest.mark.parametrize("sampler", ["remdm", "entropy_bound", "duo", "eags", "margin", "vanilla", "surprise"])
@pytest.mark.parametrize("option", STRATEGY_OPTIONS)
def test_a_setting_the_strategy_ignores_is_refused_naming_those_that_read_it(sampler, option):
    kw = {option: SETTINGS[option]}
    if option == "order_noise_decay":
        kw["order_noise"] = 0.5
    honoured = option in get_sampler(sampler).honours and (
        "order_noise" in get_sampler(sampler).honours or option != "order_noise_decay")
    if honoured:
        SamplerConfig(sampler=sampler).replace(**kw)
        return
    with pytest.raises(ConfigError) as err:
        SamplerConfig(sampler=sampler).replace(**kw)
    message = str(err.value)
    assert "\n" not in message and "does not use" in message and sampler in message
    readers = [n for n in SAMPLERS.available() if option in SAMPLERS.get(n).honours]
    assert all(r in message for r in readers) and "margin" in readers


def test_remdm_threshold_and_schedule_no_longer_silently_ignored(llada):
    kw = dict(sampler="remdm", steps=16, gen_length=16)
    for extra in ({"threshold": 0.5}, {"schedule": "cosine"}):
        with pytest.raises(ConfigError, match="does not use"):
            generate(llada, [_prompt(llada)], **kw, **extra)
    assert set(get_sampler("entropy_bound").honours) == set(get_sampler("duo").honours) == set()
    assert set(get_sampler("margin").honours) == set(STRATEGY_OPTIONS)


def test_a_custom_step_strategy_must_declare_what_it_reads(fake_denoiser):
    @register_sampler("test_first_masked")
    class FirstMasked(Strategy):
        def step(self, ctx):
            first = ctx.eligible & (ctx.eligible.long().cumsum(-1) == 1)
            return StepResult(reveal=first)

    @register_sampler("test_first_by_select")
    class FirstBySelect(Strategy):
        honours = ("threshold",)

        def step(self, ctx):
            return StepResult(reveal=ctx.select(-torch.arange(ctx.x.shape[1]).expand_as(ctx.p_x0).double()))

    try:
        den = fake_denoiser(torch.randn(16, 8))
        with pytest.raises(ConfigError, match="test_first_masked.*does not use threshold"):
            generate(den, [[1]], sampler="test_first_masked", threshold=0.5, steps=4, gen_length=4)
        assert generate(den, [[1]], sampler="test_first_masked", steps=4, gen_length=4).nfe == 4
        out = generate(den, [[1]], sampler="test_first_by_select", threshold=0.999, steps=4, gen_length=4)
        assert out.nfe == 4
        with pytest.raises(ConfigError, match="does not use schedule"):
            generate(den, [[1]], sampler="test_first_by_select", schedule="cosine", steps=4, gen_length=4)
    finally:
        SAMPLERS.unregister("test_first_masked")
        SAMPLERS.unregister("test_first_by_select")


# --- randomness streams --------------------------------------------------------------------------------------

def test_streams_have_names_and_new_names_need_no_constant(fake_denoiser):
    assert STREAMS["proposal"] == 0 and STREAMS["order"] == 1 and STREAMS["duo_ancestral"] == 9
    assert stream_id("my_decoder") == 64 + zlib.crc32(b"my_decoder") % 4096 == stream_id("my_decoder")
    assert stream_id("my_decoder") not in STREAMS.values()

    @register_sampler("test_random_named")
    class RandomNamed(Strategy):
        def score(self, ctx):
            return ctx.uniform("test_random_named")

    try:
        den = fake_denoiser(torch.randn(16, 8))
        kw = dict(steps=6, gen_length=6, seeds=[4, 5, 6], trace=True)
        batch = generate(den, [[1], [2, 3], [1]], sampler="test_random_named", **kw)
        orders = [batch.trace.order(r) for r in range(3)]
        alone = generate(den, [[2, 3]], sampler="test_random_named", steps=6, gen_length=6, seeds=[5], trace=True)
        assert alone.trace.order(0) == orders[1]  # batch-invariant
        vanilla = generate(den, [[1], [2, 3], [1]], sampler="vanilla", **kw)
        assert [vanilla.trace.order(r) for r in range(3)] != orders  # its own stream, not vanilla's "order"
    finally:
        SAMPLERS.unregister("test_random_named")


# --- one check per config in lm-eval ---------------------------------------------------------------------------

def test_lm_eval_parses_model_args_once_and_plans_each_setting_once(tiny_checkpoints, monkeypatch):
    from emdm_eval import model as model_module
    from emdm_eval.model import EMDMLM, parse_model_args

    kwargs = {"pretrained": tiny_checkpoints["bert"], "sampler": "margin", "steps": 4}
    first = parse_model_args(kwargs)
    assert parse_model_args(dict(kwargs)) is first  # emdm-eval's pre-check and EMDMLM share one parse
    lm = EMDMLM(**kwargs)
    calls = []
    real = model_module.plan_decoding
    monkeypatch.setattr(model_module, "plan_decoding", lambda *a: calls.append(a) or real(*a))
    for _ in range(3):
        plan, until = lm._request_plan({"max_gen_toks": 4, "until": ["\n"]})
    assert len(calls) == 1 and plan.config.gen_length == 4 and until[0] == "\n"
    lm._request_plan({"max_gen_toks": 5})
    assert len(calls) == 2
    with pytest.raises(ConfigError, match="does not use threshold"):
        EMDMLM(pretrained=tiny_checkpoints["bert"], sampler="remdm", threshold=0.5)


# --- the shape of the library ----------------------------------------------------------------------------------

def _functions(folder: str):
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_generate_is_a_short_driver_and_no_sampling_function_is_long():
    lengths = {(p.name, n.name): n.end_lineno - n.lineno + 1 for p, n in _functions("emdm_sampling")}
    assert lengths[("loop.py", "generate")] <= 40
    assert max(lengths.values()) <= 80, max(lengths.items(), key=lambda kv: kv[1])


def test_the_loop_reads_the_contract_instead_of_probing_the_model():
    for path in (ROOT / "emdm_sampling").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr"):
                target = ast.unparse(node.args[0])
                assert target not in ("denoiser", "den", "self.denoiser", "forward", "self.forward"), \
                    f"{path.name}:{node.lineno} probes {target}"
    for path in (ROOT / "emdm_models").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("emdm_sampling") for n in names), f"{path}:{node.lineno} imports up"


def test_every_family_declares_its_contract(tiny_checkpoints, tmp_path):
    expected = {"bert": ("none",), "llada": ("none", "prefix", "dual"), "sdar": ("none", "exact"),
                "diffusion_gemma": ("none",)}
    paths = {**tiny_checkpoints, "diffusion_gemma": build_tiny_checkpoint(tmp_path / "dg", "diffusion_gemma")}
    for family, caches in expected.items():
        den = load_denoiser(paths[family])
        contract = den.contract
        assert contract.cache_modes == caches, family
        assert (contract.attention_block is not None) == (family == "sdar")
        assert (contract.own_forward is not None) == contract.self_conditioning == (family == "diffusion_gemma")
        assert contract.noise == ("uniform" if family == "diffusion_gemma" else "mask")
        fits = set(available_samplers(den))
        assert fits == {n for n in SAMPLERS.available() if contract.noise in SAMPLERS.get(n).noises and
                        (contract.verification or not SAMPLERS.get(n).verifies) and
                        (contract.surprise_table or not SAMPLERS.get(n).needs_surprise)}
        assert ("wino" in fits) == (family == "llada") and "surprise" not in fits


def test_lm_eval_start_up_line_says_what_the_model_is(tiny_checkpoints):
    from emdm_eval.model import EMDMLM

    lm = EMDMLM(pretrained=tiny_checkpoints["llada"], sampler="margin")
    line = lm._describe()
    assert "masked-diffusion" in line and "mask id" in line and "prefix/dual" in line
    assert "'gen_length'" not in line and "per request" in line  # each request sets its own length
    lm.denoiser.noise = "uniform"  # as a Duo checkpoint's noise.json sets it
    assert "uniform-state" in lm._describe() and "mask id" not in lm._describe()
