"""EMDMLM in-process: argument errors, stop strings, batch invariance, the MC ELBO, rolling windows, PEFT."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from emdm_models.denoiser import Denoiser
from emdm_core.errors import CheckpointError, ConfigError, EMDMError, InputTooLongError

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from emdm_core.seeds import stable_seed  # noqa: E402
from emdm_eval.likelihood import draw_masks, elbo_loglikelihood, stratified_mask_counts  # noqa: E402
from emdm_eval.model import EMDMLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TASKS = Path(__file__).resolve().parents[1] / "tasks" / "demo"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm(tiny_checkpoints):
    return EMDMLM(pretrained=tiny_checkpoints["bert"], steps=4, mc_num=8, device="cuda:0")


def gen_req(context, doc_id=0, **gen_kwargs):
    return Instance("generate_until", {}, (context, gen_kwargs), 0, ("t", doc_id, 1))


def ll_req(context, continuation):
    return Instance("loglikelihood", {}, (context, continuation), 0, ("t", 0, 1))


# --- construction and errors ---------------------------------------------------------------------------------

def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and isinstance(exc, EMDMError)
    return msg


def test_cuda_request_falls_back_to_cpu(lm):
    assert lm.device.type == "cpu"
    assert lm.max_length == 128 and lm.rank == 0 and lm.world_size == 1


def test_seed_comes_from_lm_eval_torch_seed(tiny_checkpoints):
    torch.manual_seed(4321)  # what lm-eval's --seed does before it builds the model
    assert EMDMLM(pretrained=tiny_checkpoints["bert"]).seed == 4321
    assert EMDMLM(pretrained=tiny_checkpoints["bert"], seed=7).seed == 7


@pytest.mark.parametrize("kwargs, expected", [
    ({"sampler": "nonsense"}, "unknown sampler 'nonsense'; registered samplers:"),
    ({"bogus": 1, "steps": 4}, "unknown --model_args key(s) bogus"),
    ({"greedy": "maybe"}, "greedy='maybe' is unknown; use one of onepass, decode, off"),
    ({"mc_num": 0}, "mc_num must be >= 1"),
    ({"batch_size": "many"}, "batch_size='many' is not an integer"),
    ({"dtype": "float8"}, "unknown dtype"),
])
def test_bad_model_args_fail_with_one_line(tiny_checkpoints, kwargs, expected):
    with pytest.raises(ConfigError) as info:
        EMDMLM(pretrained=tiny_checkpoints["bert"], **kwargs)
    assert expected in one_line(info.value)


def test_missing_checkpoint_and_pretrained(tmp_path):
    with pytest.raises(CheckpointError) as info:
        EMDMLM(pretrained=str(tmp_path / "nope" / "ckpt"))
    assert "does not exist; pass pretrained=" in one_line(info.value)
    with pytest.raises(ConfigError) as info:
        EMDMLM()
    assert "pass --model_args pretrained=" in one_line(info.value)


def test_prompt_longer_than_model_fails_or_truncates(lm, tiny_checkpoints):
    long_prompt = " ".join(["the cat sleeps on the warm mat ."] * 20)  # ~160 tokens > 128
    with pytest.raises(InputTooLongError) as info:
        lm.generate_until([gen_req(long_prompt, max_gen_toks=4)])
    assert "truncation=left" in one_line(info.value) and "--num_fewshot" in str(info.value)
    with pytest.raises(InputTooLongError) as info:
        lm.loglikelihood([ll_req(long_prompt, " mat")])
    assert "truncation=left" in one_line(info.value)
    cut = EMDMLM(pretrained=tiny_checkpoints["bert"], steps=4, mc_num=4, truncation="left")
    assert len(cut.generate_until([gen_req(long_prompt, max_gen_toks=4)])) == 1
    assert math.isfinite(cut.loglikelihood([ll_req(long_prompt, " mat")])[0][0])


# --- generate_until ------------------------------------------------------------------------------------------

def test_each_request_keeps_its_own_stop_strings(lm):
    prompt = "the capital of france is"
    full = lm.generate_until([gen_req(prompt, until=[], max_gen_toks=8)])[0]
    words = full.split()
    assert len(words) >= 3, full
    stop = " " + words[1]
    # Greedy decoding: the same prompt decodes the same way whatever its stop strings; a batch of both must not
    # apply the first request's stops to the second.
    lm.batch_size = 4
    try:
        cut, uncut = lm.generate_until([gen_req(prompt, until=[stop], max_gen_toks=8),
                                        gen_req(prompt, doc_id=1, until=[], max_gen_toks=8)])
    finally:
        lm.batch_size = 1
    assert cut == full.split(stop)[0] and stop not in cut
    assert uncut == full


def test_sampled_generation_is_the_same_at_any_batch_size(lm):
    prompts = ["the capital of france is", "the dog runs in the", "one two three", "she writes a long letter to",
               "the sun rises over the quiet sea and"]
    reqs = [gen_req(p, doc_id=i, until=[], max_gen_toks=6, do_sample=True, temperature=1.0)
            for i, p in enumerate(prompts)]
    outs = {}
    for bs in (1, 2, 4):
        lm.batch_size = bs
        outs[bs] = lm.generate_until(reqs)
    lm.batch_size = 1
    assert outs[1] == outs[2] == outs[4]
    assert len(set(outs[1])) > 1  # really sampled, per request
    # a repeated request (pass@k) draws new numbers; an unchanged call draws the same ones again
    again = lm.generate_until([reqs[0], reqs[0]])
    assert again[0] == outs[1][0] and again[1] != again[0]


def test_generation_stats_and_model_info(lm):
    lm.generate_until([gen_req("the dog runs in the", until=["."], max_gen_toks=4)])
    info = lm.get_model_info()["emdm"]
    g = info["stats"]["generate_until"]
    assert g["requests"] >= 1 and g["forward_passes"] >= 1 and "tokens_per_second" in g and "empty" in g
    assert info["sampler"]["sampler"] == "margin" and info["seed"] == lm.seed


def test_chat_template_from_file(tiny_checkpoints, tmp_path):
    tpl = tmp_path / "chat.jinja"
    tpl.write_text("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} . {% endfor %}"
                   "{% if add_generation_prompt %}assistant :{% endif %}")
    lm = EMDMLM(pretrained=tiny_checkpoints["bert"], steps=2, chat_template=str(tpl))
    text = lm.apply_chat_template([{"role": "user", "content": "the cat"}])
    assert text == "user : the cat . assistant :"
    assert lm.chat_template(True) == tpl.read_text()
    bare = EMDMLM(pretrained=tiny_checkpoints["bert"], steps=2)
    with pytest.raises(ConfigError, match="has no chat template; pass chat_template="):
        bare.apply_chat_template([{"role": "user", "content": "x"}])


# --- the MC ELBO ---------------------------------------------------------------------------------------------

class TableDenoiser(Denoiser):
    """Logits that ignore the input: row i of `table` at position i (uniform when no table)."""

    def __init__(self, vocab=12, mask_token_id=11, max_length=32, table=None):
        super().__init__(torch.nn.Linear(1, 1), tokenizer=None, mask_token_id=mask_token_id, eos_token_id=None,
                         pad_token_id=0, max_length=max_length)
        self.V, self.table = vocab, table

    def logits(self, input_ids, attention_mask=None):
        self.forward_calls += 1
        B, L = input_ids.shape
        if self.table is None:
            return torch.zeros(B, L, self.V)
        return self.table[:L].unsqueeze(0).expand(B, L, self.V).clone()


def test_mask_draws_are_stratified_and_uniform():
    g = torch.Generator().manual_seed(0)
    counts = stratified_mask_counts(7, 7, g)
    assert sorted(counts.tolist()) == list(range(1, 8))  # n = L: every l exactly once
    masks = draw_masks(5, 64, torch.Generator().manual_seed(1))
    assert masks.shape == (64, 5) and masks.sum(1).min() >= 1


def test_elbo_is_exact_for_uniform_logits():
    den = TableDenoiser(vocab=12)
    for mc in (1, 3, 16):
        res = elbo_loglikelihood(den, [1, 2, 3], [4, 5, 6, 7], mc_num=mc, seed=mc, rows=5)
        assert res.logprob == pytest.approx(-4 * math.log(12), rel=1e-6)


def test_elbo_is_unbiased_for_position_dependent_logits():
    torch.manual_seed(0)
    table = torch.randn(8, 12) * 2
    den = TableDenoiser(vocab=12, table=table)
    ctx, cont = [1, 2, 3], [4, 5, 6, 7, 8]
    exact = sum(torch.log_softmax(table[3 + i], -1)[t].item() for i, t in enumerate(cont))
    est = elbo_loglikelihood(den, ctx, cont, mc_num=4000, seed=3, rows=None).logprob
    assert est == pytest.approx(exact, rel=0.03)
    # deterministic for a seed, independent of how the draws are chunked into forward passes
    a = elbo_loglikelihood(den, ctx, cont, mc_num=32, seed=5, rows=7)
    b = elbo_loglikelihood(den, ctx, cont, mc_num=32, seed=5, rows=None)
    assert a.logprob == pytest.approx(b.logprob, rel=1e-12) and a.forward_passes == 5 and b.forward_passes == 1
    assert elbo_loglikelihood(den, ctx, cont, mc_num=32, seed=6).logprob != a.logprob


def test_is_greedy_onepass_and_decode(lm):
    table = torch.full((8, 12), -5.0)
    table[:, 4] = 5.0  # token 4 is the argmax everywhere
    den = TableDenoiser(vocab=12, table=table)
    assert elbo_loglikelihood(den, [1], [4, 4], mc_num=2, seed=0).is_greedy is True
    assert elbo_loglikelihood(den, [1], [4, 5], mc_num=2, seed=0).is_greedy is False
    saved = lm.denoiser, lm.greedy
    try:
        lm.denoiser = den
        for mode in ("onepass", "decode"):
            lm.greedy = mode
            res = lm._loglikelihood_tokens([(("a", "b"), [1], [4, 4]), (("a", "c"), [1], [4, 5])])
            assert [r[1] for r in res] == [True, False]
        lm.greedy = "off"
        assert [r[1] for r in lm._loglikelihood_tokens([(("a", "b"), [1], [4, 4])])] == [False]
    finally:
        lm.denoiser, lm.greedy = saved


def test_rolling_windows_score_every_token_once(lm):
    saved = lm.denoiser
    try:
        lm.denoiser = TableDenoiser(vocab=len(lm.tokenizer), mask_token_id=lm.denoiser.mask_token_id,
                                    max_length=16)
        text = " ".join(["the cat sleeps on the warm mat ."] * 6)
        n = len(lm.tok_encode(text, add_special_tokens=False))
        assert n > 2 * 16
        stats = lm._stats["loglikelihood_rolling"]
        before = stats["windows"]
        (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
        assert total == pytest.approx(-n * math.log(len(lm.tokenizer)), rel=1e-6)
        assert stats["windows"] - before == math.ceil(n / 15)
    finally:
        lm.denoiser = saved


def test_loglikelihood_ranks_the_right_answer_first(tmp_path):
    """Fine-tune a tiny BERT on the demo questions' right answers: the ELBO must rank them first, 10 of 10."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from emdm_models.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_path / "ft", "bert")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path)
    rows = [json.loads(line) for line in (TASKS / "emdm_demo_mc.jsonl").read_text().splitlines()]
    pairs = [([tok.cls_token_id] + tok(r["question"], add_special_tokens=False)["input_ids"],
              tok(" " + r["choices"][r["label"]], add_special_tokens=False)["input_ids"]) for r in rows]
    width = max(len(q) + len(a) for q, a in pairs)
    ids = torch.full((len(pairs), width), tok.pad_token_id)
    att, ans = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    for i, (q, a) in enumerate(pairs):
        ids[i, :len(q) + len(a)] = torch.tensor(q + a)
        att[i, :len(q) + len(a)] = 1
        ans[i, len(q):len(q) + len(a)] = True
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.eval()  # no dropout: deterministic, and the 10 facts are learnt fast
    for _ in range(600):  # masked-diffusion objective, the answer always masked
        t = torch.rand(len(pairs), 1, generator=g).clamp(min=0.1)
        m = ((torch.rand(ids.shape, generator=g) < t) | ans) & att.bool()
        logits = model(input_ids=ids.masked_fill(m, tok.mask_token_id), attention_mask=att).logits
        loss = torch.nn.functional.cross_entropy(logits[m], ids[m])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(path)

    lm = EMDMLM(pretrained=str(path), mc_num=16)
    reqs = [ll_req(r["question"], " " + c) for r in rows for c in r["choices"]]
    res = lm.loglikelihood(reqs)
    for i, r in enumerate(rows):
        lls = [x[0] for x in res[4 * i:4 * i + 4]]
        right = lls.pop(r["label"])
        assert right > max(lls) + 1.0, (r, right, lls)  # first, by a wide margin
    assert res == lm.loglikelihood(reqs)  # deterministic for a seed


def test_peft_adapter_changes_the_model(tiny_checkpoints, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForMaskedLM

    base = AutoModelForMaskedLM.from_pretrained(tiny_checkpoints["bert"])
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False)
    peft.get_peft_model(base, cfg).save_pretrained(tmp_path / "lora")
    plain = EMDMLM(pretrained=tiny_checkpoints["bert"], mc_num=4)
    tuned = EMDMLM(pretrained=tiny_checkpoints["bert"], mc_num=4, peft=str(tmp_path / "lora"))
    req = [ll_req("the capital of france is", " paris")]
    assert plain.loglikelihood(req)[0][0] != pytest.approx(tuned.loglikelihood(req)[0][0])
    assert tuned.get_model_info()["emdm"]["peft"] == str(tmp_path / "lora")


def test_stable_seed_is_stable():
    assert stable_seed(1234, "x", "ctx", 3) == stable_seed(1234, "x", "ctx", 3)
    assert stable_seed(1234, "x", "ctx", 3) != stable_seed(1235, "x", "ctx", 3)
    assert 0 <= stable_seed("anything") < 2 ** 63


def test_auto_batch_size_and_max_length(tiny_checkpoints):
    lm = EMDMLM(pretrained=tiny_checkpoints["bert"], steps=2, batch_size="auto:4", max_length=64)
    assert lm.max_length == 64 and lm.batch_size == "auto"
    out = lm.generate_until([gen_req("the dog runs in the", doc_id=i, until=["."], max_gen_toks=4) for i in range(3)])
    assert len(out) == 3 and lm._auto_batch == 8  # on the CPU: min(max_batch_size, 8)


def test_prompts_are_encoded_as_the_checkpoint_was_fine_tuned(tiny_checkpoints, tmp_path):
    """A checkpoint emdm_train fine-tuned on prompt/response rows is prompted with the same ids its training rows
    began with (the tokenizer's special tokens, then the separator), through lm-eval's generate and loglikelihood
    paths; without a recipe, or with prompt_format=bos, lm-eval's BOS convention stays."""
    import shutil

    import datasets

    from emdm_train.corpus import tokenize_prompt_response

    ckpt = tmp_path / "tuned"
    shutil.copytree(tiny_checkpoints["bert"], ckpt)
    (ckpt / "emdm_train_config.yaml").write_text("data_format: prompt_response\nseparator: ' answer:'\n")
    tuned = EMDMLM(pretrained=str(ckpt), steps=2, gen_length=2)
    rows, _ = tokenize_prompt_response(datasets.Dataset.from_list([{"p": "the cat", "r": "sat down"}]),
                                       tuned.tokenizer, "p", "r", 64, " answer:", add_eos=False)
    row, prompt_len = rows.row(0).tolist(), int(rows.prompt_lengths[0])
    assert tuned.prompt_format == "tokenizer"
    assert tuned.encode_prompt("the cat") == row[:prompt_len]
    assert tuned.encode_prompt("the cat") != tuned.tok_encode("the cat")  # lm-eval's BOS-first ids differ
    context, continuation = tuned._encode_pair("the cat", "sat down")
    assert context + continuation == row
    # the decoded request really starts from those ids
    seen = []
    inner = tuned.denoiser.logits
    tuned.denoiser.logits = lambda ids, *a, **k: (seen.append(ids[0].tolist()), inner(ids, *a, **k))[1]
    tuned.generate_until([Instance("generate_until", {}, ("the cat", {"max_gen_toks": 2, "until": []}), 0)])
    assert seen[0][:prompt_len] == row[:prompt_len]

    plain = EMDMLM(pretrained=tiny_checkpoints["bert"], steps=2)
    assert plain.prompt_format == "bos" and plain.encode_prompt("the cat") == plain.tok_encode("the cat")
    forced = EMDMLM(pretrained=str(ckpt), steps=2, prompt_format="bos")
    assert forced.encode_prompt("the cat") == plain.tok_encode("the cat") != row[:prompt_len]
    (ckpt / "emdm_train_config.yaml").write_text("data_format: text\n")
    assert EMDMLM(pretrained=str(ckpt), steps=2).prompt_format == "bos"


def test_an_output_path_that_cannot_be_written_fails_before_the_model_loads(tiny_checkpoints, tmp_path,
                                                                          monkeypatch):
    from emdm_core.paths import output_problem
    from emdm_eval.__main__ import check_model_args

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert output_problem(str(tmp_path / "new" / "deeper")) is None
    assert output_problem(str(tmp_path / "results.json")) is None
    assert "is a file" in output_problem(str(blocker / "out"))
    argv = ["--model", "emdm", "--model_args", f"pretrained={tiny_checkpoints['bert']}", "--tasks", "x",
            "--output_path", str(blocker / "out")]
    with pytest.raises(ConfigError, match="--output_path .*choose a folder you can write to"):
        check_model_args(argv)  # emdm-eval: before lm-eval indexes its tasks
    monkeypatch.setattr(sys, "argv", ["/usr/bin/lm_eval", *argv])
    with pytest.raises(ConfigError, match="is a file"):  # the plain lm_eval CLI: when it builds the model
        EMDMLM(pretrained=tiny_checkpoints["bert"])


def test_empty_generations_are_counted_after_the_stop_strings(lm):
    """A generation whose text is cut to nothing by a stop string is empty for the task: the summary counts it."""
    lm._stats.clear()
    first = lm.generate_until([gen_req("the capital of france is", until=[], max_gen_toks=4)])[0]
    assert first.strip()
    lm._stats.clear()
    lm.generate_until([gen_req("the capital of france is", until=[first.strip()[:1]], max_gen_toks=4)])
    assert lm._stats["generate_until"]["empty"] == 1


def test_emdm_eval_help_lists_the_emdm_arguments_samplers_and_tasks(capsys):
    from emdm_core import typed
    from emdm_eval.__main__ import emdm_help
    from emdm_sampling import SamplerConfig, available_samplers

    text = emdm_help()
    for name in [f.name for f in typed.fields(SamplerConfig) if f.name not in SamplerConfig.PER_REQUEST]:
        assert f"  {name} " in text, name
    assert all(s in text for s in available_samplers()) and "sudoku_easy" in text and "_sudoku" not in text
    assert "  pretrained " in text and "  mc_num " in text


def test_one_prompt_builder_for_the_sampling_cli_and_lm_eval(tiny_checkpoints, tmp_path, capsys):
    """Issue 26, item 4: `python -m emdm_sampling` and `lm_eval --model emdm` encode a prompt the same way (the BOS
    convention, or a fine-tuned checkpoint's recorded prompt/response layout), so they generate the same text."""
    import shutil

    from emdm_sampling.__main__ import encode_cli_prompts, main

    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_checkpoints["bert"], tuned)
    (tuned / "emdm_train_config.yaml").write_text("data_format: prompt_response\nseparator: ' ||'\n")
    for path in (tiny_checkpoints["bert"], str(tuned)):
        lm = EMDMLM(pretrained=path, sampler="margin", steps=6)
        texts = ["the capital of france is", "one two"]
        assert encode_cli_prompts(lm.denoiser, texts) == [lm.encode_prompt(t) for t in texts]
        if path != str(tuned):  # lm-eval's BOS convention: [CLS] in front (the CLI used to leave it out)
            assert lm.encode_prompt(texts[0])[0] == lm.tokenizer.cls_token_id
        assert main(["--pretrained", path, "--prompt", texts[0], "--steps", "6", "--gen-length", "6"]) == 0
        cli_text = capsys.readouterr().out.splitlines()[0].split(" -> ", 1)[1]
        (gen,) = lm.generate_until([gen_req(texts[0], until=[], max_gen_toks=6)])
        assert lm.tokenizer.decode(lm.tokenizer(cli_text, add_special_tokens=False)["input_ids"],
                                   skip_special_tokens=True).strip() == gen.strip()


def test_lm_eval_git_hash_is_quiet_outside_a_repository(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator

    import emdm_eval.model  # noqa: F401  (installs the quiet git hash)

    monkeypatch.chdir(tmp_path)
    lm_eval.evaluator.get_git_commit_hash()
    assert "fatal" not in capfd.readouterr().err


def test_generation_speed_goes_into_each_tasks_results(tiny_checkpoints, tmp_path):
    """Issue 23, item 3: per task, the results carry forward passes per item (full / cached), tokens per forward,
    generated tokens and generation seconds (lm-eval prints them in its table too)."""
    import lm_eval

    import emdm_eval.model  # noqa: F401  (installs the results hook)

    lm = EMDMLM(pretrained=tiny_checkpoints["llada"], sampler="margin", steps=8, block_length=4, cache="dual",
                threshold=0.5)
    out = lm_eval.simple_evaluate(model=lm, tasks=["emdm_demo_gen"], limit=3,
                                  task_manager=lm_eval.tasks.TaskManager(include_path=str(ROOT / "tasks")))
    got = out["results"]["emdm_demo_gen"]
    from emdm_eval import SPEED_METRICS

    assert all(f"{name},none" in got for name in SPEED_METRICS)
    passes = got["forward_passes_per_item,none"]
    assert passes > 0 and got["full_passes_per_item,none"] + got["cached_passes_per_item,none"] == \
        pytest.approx(passes)
    assert got["cached_passes_per_item,none"] > 0  # the dual cache's windowed passes
    assert got["tokens_per_forward,none"] == pytest.approx(got["generated_tokens,none"] / (3 * passes))
    assert got["generation_seconds,none"] > 0

    # a sweep in one process (the ablation grid, benchmarks/accuracy_vs_passes.py): after configure_sampler each
    # evaluation reports its own passes, not the sum over the settings before it
    lm.configure_sampler(sampler="margin", steps=2, cache="none")
    again = lm_eval.simple_evaluate(model=lm, tasks=["emdm_demo_gen"], limit=3,
                                    task_manager=lm_eval.tasks.TaskManager(include_path=str(ROOT / "tasks")))
    assert again["results"]["emdm_demo_gen"]["forward_passes_per_item,none"] == pytest.approx(2)
    assert again["results"]["emdm_demo_gen"]["cached_passes_per_item,none"] == 0
