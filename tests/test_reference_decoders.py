"""The 2025-26 decoders against their reference code (../shared/oracles: dInfer's credit and hierarchy decoders,
KLASS, PC-Sampler, DUS) and, for Prophet (no licence), against a transcription of its rule: the same tokens and the
same forward passes on a deterministic context-dependent fake model, several settings, several prompts; and every
decoder batch-invariant on a left-padded batch (issue 24)."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from emdm_models.denoiser import Denoiser
from emdm_sampling import generate
from oracles import ORACLES

MASK, EOS, V = 15, 14, 16
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 3]]


class Fake(Denoiser):
    """Logits from a table indexed by (position, token) plus a term of the whole row; the mask token never wins
    (its logit is very low, as a trained model's is)."""

    def __init__(self, vocab: int = V, mask: int = MASK, scale: float = 3.0, seed: int = 7):
        super().__init__(torch.nn.Linear(1, 1), tokenizer=None, mask_token_id=mask, eos_token_id=None,
                         pad_token_id=0, max_length=64)
        g = torch.Generator().manual_seed(seed)
        self.vocab, self.mask = vocab, mask
        self.table = torch.randn(64, 16, 16, generator=g) * scale
        self.mix = torch.randn(16, 16, generator=g)

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def logits(self, input_ids, attention_mask=None):
        self.forward_calls += 1
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        rel = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        small = input_ids.clamp(max=15)  # the mask id may lie outside the table
        real = attention_mask.unsqueeze(-1).float()  # the row term over real tokens only (padding does not count)
        row = (self.mix[small] * real).sum(1, keepdim=True) / real.sum(1, keepdim=True)
        core = (self.table[rel, small] + row).float()
        out = torch.full((*input_ids.shape, self.vocab), -30.0)
        out[..., :14] = core[..., :14]
        return out

    # the reference code calls the model itself
    @property
    def device(self):
        return torch.device("cpu")

    def __call__(self, x, *args, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.logits(x))


def _load(relpath: str, stubs=()):
    if not (ORACLES / relpath).is_file():
        pytest.skip(f"reference code not available: {ORACLES / relpath} is missing (set EMDM_ORACLES)")
    sys.path.insert(0, str(ORACLES))
    try:
        from oracle_import import load

        return load(relpath, stubs=stubs)
    finally:
        sys.path.remove(str(ORACLES))


@pytest.fixture(scope="module")
def dinfer():
    torch._dynamo.config.disable = True  # two of its helpers are torch.compile'd
    return _load("dinfer/parallel_strategy.py")


def _blockwise(den, decoder, prompt, gen_length, block_length, mask=MASK):
    """dInfer's block-wise loop with a `decode(logits, start, end, x)` decoder: one pass per iteration until the
    block holds no mask; returns (generated ids, passes)."""
    x = torch.tensor([prompt + [mask] * gen_length])
    passes = 0
    for start in range(len(prompt), len(prompt) + gen_length, block_length):
        end = start + block_length
        while bool((x[:, start:end] == mask).any()):
            logits = den.logits(x)
            passes += 1
            decoder.decode(logits[:, start:end], start, end, x)
    return x[0, len(prompt):].tolist(), passes


def _emdm(den, prompts, sampler, seeds=None, **kw):
    out = generate(den, prompts, sampler=sampler, seeds=seeds or list(range(len(prompts))), **kw)
    gens = [s[len(p):] for s, p in zip(out.sequences, prompts)]
    return gens, out


def _batch_invariant(den, sampler, **kw):
    gens, out = _emdm(den, PROMPTS, sampler, **kw)
    for i, p in enumerate(PROMPTS):
        alone, single = _emdm(den, [p], sampler, seeds=[i], **kw)
        assert alone[0] == gens[i] and single.row_nfe[0] == out.row_nfe[i], (sampler, i)
    return gens, out


@pytest.mark.parametrize("threshold, alpha, gamma, beta", [(0.9, 0.7, 0.2, 0.8), (0.5, 0.7, 0.2, 0.8),
                                                           (0.95, 1.5, 0.5, 0.5)])
@pytest.mark.parametrize("block_length", [4, 8])
def test_credit_equals_dinfer(dinfer, threshold, alpha, gamma, beta, block_length):
    den = Fake()
    kw = dict(threshold=threshold, credit_alpha=alpha, boost_gamma=gamma, decay_beta=beta, gen_length=8,
              block_length=block_length, steps=8)
    gens, out = _batch_invariant(den, "credit", **kw)
    for i, prompt in enumerate(PROMPTS):
        decoder = dinfer.CreditThresholdParallelDecoder(credit_alpha=alpha, boost_gamma=gamma, decay_beta=beta,
                                                        temperature=0.0, threshold=threshold, mask_id=MASK, eos_id=EOS)
        ref, passes = _blockwise(den, decoder, prompt, 8, block_length)
        assert gens[i] == ref and out.row_nfe[i] == passes, (i, gens[i], ref)


@pytest.mark.parametrize("threshold, low", [(None, 0.4), (0.9, 0.4), (0.6, 0.1), (None, 0.0)])
@pytest.mark.parametrize("block_length", [4, 8])
def test_hierarchy_equals_dinfer_at_any_batch_size(dinfer, threshold, low, block_length):
    den = Fake(scale=1.5)
    kw = dict(low_threshold=low, gen_length=8, block_length=block_length, steps=8)
    if threshold is not None:
        kw["threshold"] = threshold
    gens, out = _batch_invariant(den, "hierarchy", **kw)
    for i, prompt in enumerate(PROMPTS):
        decoder = dinfer.HierarchyDecoder(temperature=0.0, mask_id=MASK, eos_id=EOS, threshold=threshold,
                                          low_threshold=low)
        ref, passes = _blockwise(den, decoder, prompt, 8, block_length)
        assert gens[i] == ref and out.row_nfe[i] == passes, (i, gens[i], ref)


@pytest.mark.parametrize("conf, kl, history", [(0.9, 0.01, 2), (0.3, 0.5, 2), (0.2, 1.0, 1), (0.5, 2.0, 3)])
@pytest.mark.parametrize("steps, block_length", [(8, 8), (8, 4)])
def test_klass_equals_the_reference(conf, kl, history, steps, block_length):
    klass = _load("klass/llada_klass.py")
    den = Fake(vocab=126340, mask=126336)  # the reference hard-codes LLaDA's mask id
    kw = dict(conf_threshold=conf, kl_threshold=kl, kl_history_length=history, gen_length=8,
              block_length=block_length, steps=steps)
    den.lm_head = torch.nn.Linear(1, den.vocab)
    gens, out = _batch_invariant(den, "klass", **kw)
    for i, prompt in enumerate(PROMPTS):
        x, used = klass.stable_confident_decode(den, None, torch.tensor([prompt]), gen_length=8, steps=steps,
                                                block_length=block_length, conf_threshold=conf, kl_threshold=kl,
                                                kl_history_length=history, alg="klass")
        assert gens[i] == x[0, len(prompt):].tolist() and out.row_nfe[i] == used, (i, conf, kl)


@pytest.mark.parametrize("lambd, alpha", [(0.25, 10.0), (0.0, 1.0), (1.0, 0.5)])
@pytest.mark.parametrize("steps, block_length", [(8, 8), (8, 4), (4, 8)])
def test_pc_sampler_equals_the_reference(lambd, alpha, steps, block_length):
    pc = _load("pc_sampler/generate.py")
    den = Fake()
    g = torch.Generator().manual_seed(0)
    freq = torch.rand(V, generator=g) + 0.05
    freq = freq / freq.sum()
    den.surprise = -torch.log2(freq)
    pc.BASE_LINE = torch.exp2(-den.surprise.float())  # the same frequencies, as emdm reads them back
    kw = dict(pc_lambda=lambd, pc_alpha=alpha, gen_length=8, block_length=block_length, steps=steps)
    gens, out = _batch_invariant(den, "pc_sampler", **kw)
    for i, prompt in enumerate(PROMPTS):
        x = pc.generate_with_pc_sampler(den, torch.tensor([prompt]), steps=steps, gen_length=8,
                                        block_length=block_length, lambd=lambd, alpha=alpha, mask_id=MASK)
        assert gens[i] == x[0, len(prompt):].tolist() and out.row_nfe[i] == steps, (i, lambd, alpha)


@pytest.mark.parametrize("remask, threshold", [("none", 0.3), ("low_confidence", 0.3), ("low_confidence", 0.05)])
@pytest.mark.parametrize("block_length, base", [(8, 2), (16, 2), (16, 3)])
def test_dus_equals_the_reference(remask, threshold, block_length, base):
    dus = _load("dus/generate.py", stubs=["transformers"])
    den = Fake(scale=1.0)
    kw = dict(dus_remask=remask, dus_threshold=threshold, dus_base=base, gen_length=16, block_length=block_length,
              steps=16)
    gens, out = _batch_invariant(den, "dus", **kw)
    for i, prompt in enumerate(PROMPTS):
        x, stage = dus.generate_scheduled(den, torch.tensor([prompt]), gen_length=16, block_length=block_length,
                                          mask_id=MASK, remasking=remask, confidence_threshold=threshold,
                                          scheduler="dilated", base=base, base_skip=1)
        ref = x[0, len(prompt):].tolist()
        # the reference never revisits what it re-masked (emdm decodes it at the block's last level): up to the
        # end of the first block that keeps a mask the outputs are equal elsewhere; after it the contexts differ
        left = [j for j, t in enumerate(ref) if t == MASK]
        upto = 16 if not left else (left[0] // block_length + 1) * block_length
        assert [t for j, t in enumerate(gens[i][:upto]) if j not in left] == \
            [t for j, t in enumerate(ref[:upto]) if j not in left], (i, remask)
        assert MASK not in gens[i]
        if not left:  # then the passes are the levels: O(log B) per block
            assert out.row_nfe[i] == int(stage.max()) + 1, (i, out.row_nfe[i])
        if remask == "none":
            assert not left and gens[i] == ref


def _prophet_reference(den, prompt, steps, gen_length, block_length, answer_start, gaps):
    """Prophet's `generate_earlyexit` as the oracles README transcribes it (temperature 0, no constraints):
    LLaDA's semi-autoregressive low-confidence loop plus, before each transfer, the mean top-1 minus top-2 logit
    gap over the answer positions (5 of them from answer_start, clipped); exit when it reaches the bar of the
    progress global_step / steps (gaps[0] < 0.33, gaps[1] < 0.67, else gaps[2]): every [MASK] takes x0."""
    x = torch.tensor([prompt + [MASK] * gen_length])
    P, blocks = len(prompt), gen_length // block_length
    per_block, global_step = steps // blocks, 0
    for b in range(blocks):
        start, end = P + b * block_length, P + (b + 1) * block_length
        m = int((x[0, start:end] == MASK).sum())
        counts = [m // per_block + (1 if j < m % per_block else 0) for j in range(per_block)]
        for j in range(per_block):
            global_step += 1
            logits = den.logits(x)[0]
            x0 = logits.argmax(-1)
            top2 = logits.topk(2, -1).values
            window = range(P + answer_start, min(P + answer_start + 5, x.shape[1]))
            gap = sum(float(top2[k, 0] - top2[k, 1]) for k in window) / len(window)
            progress = global_step / steps
            bar = gaps[0] if progress < 0.33 else gaps[1] if progress < 0.67 else gaps[2]
            if gap >= bar:
                masked = x[0] == MASK
                x[0, masked] = x0[masked]
                return x[0, P:].tolist(), global_step
            p = torch.softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            conf = torch.where((x[0] == MASK) & (torch.arange(x.shape[1]) < end), p, torch.tensor(-math.inf))
            chosen = conf.topk(counts[j]).indices
            x[0, chosen] = x0[chosen]
    return x[0, P:].tolist(), global_step


@pytest.mark.parametrize("gaps", [(7.5, 5.0, 2.5), (3.0, 2.0, 1.0), (100.0, 100.0, 100.0)])
@pytest.mark.parametrize("answer_start", [0, 4])
@pytest.mark.parametrize("block_length", [4, 8])
def test_prophet_equals_the_transcribed_rule(gaps, answer_start, block_length):
    den = Fake()
    kw = dict(answer_start=answer_start, gap_thresholds=",".join(map(str, gaps)), gen_length=8,
              block_length=block_length, steps=8)
    gens, out = _batch_invariant(den, "prophet", **kw)
    for i, prompt in enumerate(PROMPTS):
        ref, passes = _prophet_reference(den, prompt, 8, 8, block_length, answer_start, gaps)
        assert gens[i] == ref and out.row_nfe[i] == passes, (i, gaps, gens[i], ref)


@pytest.mark.parametrize("number", [1, 2])
@pytest.mark.parametrize("gen_length, block_length", [(16, 16), (16, 8)])
def test_remdm_llada_equals_the_port_with_emdm_random_numbers(number, gen_length, block_length):
    """`llada_remdm_sample` draws x0 from its own categorical sampler: it is fed emdm's draws (the same counter
    uniforms, the same inverse CDF), so the rule itself is compared token for token."""
    from types import SimpleNamespace

    from emdm_sampling.proposals import inverse_cdf
    from emdm_sampling.rng import CounterRNG, fold_seed

    port = _load("remdm_llada/eval_llada.py", stubs=["accelerate", "datasets", "lm_eval", "transformers"])
    den = Fake(scale=1.0)
    steps = gen_length  # the port's setting: one token per pass outside the re-masking window
    kw = dict(remdm_number=number, gen_length=gen_length, block_length=block_length, steps=steps, temperature=1.0)
    gens, out = _batch_invariant(den, "remdm_llada", **kw)
    for i, prompt in enumerate(PROMPTS):
        length = len(prompt) + gen_length
        rng = CounterRNG(torch.tensor([fold_seed(i)]), torch.arange(length).unsqueeze(0))
        calls = []

        def draw(p, rng=rng, calls=calls):
            u = rng.uniform(len(calls), "proposal")[0]
            calls.append(1)
            weights = p[0].float()
            return inverse_cdf(weights / weights.amax(-1, keepdim=True), u).unsqueeze(0)

        real = port._sample_categorical
        port._sample_categorical = draw
        try:
            h = port.LLaDAEvalHarness.__new__(port.LLaDAEvalHarness)
            h.model, h.mask_id, h.mask_length, h.block_size = den, MASK, gen_length, block_length
            h.sampling_steps, h.remdm_number, h.tokenizer = steps, number, SimpleNamespace(eos_token_id=EOS)
            x = h.llada_remdm_sample(torch.tensor([prompt]))
        finally:
            port._sample_categorical = real
        assert gens[i] == x[0, len(prompt):].tolist() and out.row_nfe[i] == len(calls), (i, gens[i])


def _eags_transcribed(den, prompt, gen_length, steps, gibbs_steps, fraction):
    """Entropy-adaptive Gibbs sampling as emdm's docs state it (Diffusion-EAGS has no public code; this is the
    algorithm written out, one row, temperature 0): reveal the k highest-entropy masked positions per pass (LLaDA's
    linear split of the masks over `steps`), then `gibbs_steps` sweeps, each re-masking the round(n * fraction)
    (>= 1) generated positions whose entropy was highest when they were last sampled and re-sampling them all in one
    pass. Returns (generated ids, passes)."""
    x = torch.tensor([prompt + [MASK] * gen_length])
    P = len(prompt)
    counts = [gen_length // steps + (1 if j < gen_length % steps else 0) for j in range(steps)]
    entropy_at_reveal = torch.zeros(gen_length, dtype=torch.float64)
    passes, sweeps, j = 0, 0, 0
    while True:
        masked = x[0, P:] == MASK
        if not masked.any():
            if sweeps == gibbs_steps:
                return x[0, P:].tolist(), passes
            k = max(1, round(gen_length * fraction))
            order = sorted(range(gen_length), key=lambda i: (-float(entropy_at_reveal[i]), i))[:k]
            x[0, [P + i for i in order]] = MASK  # the sweep's re-masking, decoded by the next pass
            sweeps += 1
            masked = x[0, P:] == MASK
            sweeping = True
        else:
            sweeping = False
        logits = den.logits(x)[0, P:].double()
        logits[:, MASK] = -math.inf
        logp = torch.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
        passes += 1
        if sweeping:
            chosen = masked.nonzero().flatten().tolist()
        else:
            k = counts[j] if j < steps - 1 else int(masked.sum())
            score = torch.where(masked, entropy, torch.tensor(-math.inf, dtype=torch.float64))
            chosen = sorted(range(gen_length), key=lambda i: (-float(score[i]), i))[:k]
            j += 1
        for i in chosen:
            x[0, P + i] = int(logits[i].argmax())
            entropy_at_reveal[i] = entropy[i]


@pytest.mark.parametrize("gibbs_steps, fraction", [(0, 0.1), (2, 0.1), (3, 0.3)])
@pytest.mark.parametrize("steps", [8, 4])
def test_eags_equals_the_algorithm_written_out(gibbs_steps, fraction, steps):
    den = Fake(scale=1.0)
    kw = dict(gibbs_steps=gibbs_steps, gibbs_fraction=fraction, gen_length=8, steps=steps)
    gens, out = _batch_invariant(den, "eags", **kw)
    for i, prompt in enumerate(PROMPTS):
        ref, passes = _eags_transcribed(den, prompt, 8, steps, gibbs_steps, fraction)
        assert gens[i] == ref and out.row_nfe[i] == passes, (i, gens[i], ref)


def _wino_transcribed(den, prompt, gen_length, block_length, threshold, threshold_back):
    """WINO's `decoding_wino` as the oracles README transcribes it (batch 1, temperature 0), on emdm's backbone
    network called directly with WINO's own 4-D mask: x = prompt + gen masks + B shadow masks at the block's
    positions; no query sees the shadow columns, shadow rows see every shadow column, shadow row j not block column
    s + j. Returns (generated ids, model calls)."""
    M, P, B = den.mask_token_id, len(prompt), block_length
    x = torch.tensor([prompt + [M] * (gen_length + B)])
    total, calls = P + gen_length + B, 0
    for s in range(P, P + gen_length, B):
        shadow_on = torch.zeros(B, dtype=torch.bool)
        last_accept = 30
        position_ids = torch.cat([torch.arange(P + gen_length), torch.arange(s, s + B)]).unsqueeze(0)
        attend = torch.ones(total, total, dtype=torch.bool)
        attend[:, P + gen_length:] = False
        attend[P + gen_length:, P + gen_length:] = True
        attend[P + gen_length:, s:s + B] &= ~torch.eye(B, dtype=torch.bool)
        while bool((x[0, s:s + B] == M).any()):
            masked = (x[0, :P + gen_length] == M) & (torch.arange(P + gen_length) < s + B)
            logits = den.model(input_ids=x, position_ids=position_ids,
                               diffusion_mask_4d=attend[None, None]).logits[0].double()
            calls += 1
            logits[:, M] = -math.inf  # the mask is never proposed (emdm's rule everywhere; LLaDA never predicts it)
            x0 = logits.argmax(-1)
            x0[P + gen_length:] = torch.where(shadow_on, x[0, s:s + B], x0[P + gen_length:])
            p = torch.softmax(logits, -1).gather(-1, x0.unsqueeze(-1)).squeeze(-1)
            n_masked = int(masked.sum())
            most = min(max(int(0.7 * n_masked), 5), 20)
            conf = torch.where(masked, p[:P + gen_length], torch.tensor(-math.inf, dtype=torch.float64))
            accept = masked & (conf > threshold)
            if int(accept.sum()) > most:
                keep = conf.masked_fill(~accept, -math.inf).topk(most).indices
                accept = torch.zeros_like(accept)
                accept[keep] = True
            if not accept.any():
                accept = torch.zeros_like(accept)
                accept[int(conf.argmax())] = True
            x[0, :P + gen_length] = torch.where(accept, x0[:P + gen_length], x[0, :P + gen_length])
            n_accept = int(accept.sum())
            if n_accept > 1:
                shadow_p = p[P + gen_length:]
                low = shadow_on & (shadow_p < threshold_back)
                if int(low.sum()) >= last_accept:
                    chosen = shadow_p.masked_fill(~low, math.inf).topk(last_accept - 1, largest=False).indices
                    low = torch.zeros_like(low)
                    low[chosen] = True
                x[0, s:s + B] = torch.where(low, torch.tensor(M), x[0, s:s + B])
                shadow_on &= ~low
            shadow_on |= accept[s:s + B]
            last_accept = n_accept
    return x[0, P:P + gen_length].tolist(), calls


@pytest.mark.parametrize("threshold, threshold_back", [(0.6, 0.9), (0.02, 0.5), (0.01, 0.9)])
@pytest.mark.parametrize("block_length", [8, 16])
def test_wino_equals_the_transcribed_rule(tiny_checkpoints, threshold, threshold_back, block_length):
    from emdm_sampling import load_denoiser

    den = load_denoiser(tiny_checkpoints["llada"])
    prompts = [den.tokenizer(t, add_special_tokens=False)["input_ids"]
               for t in ("the cat sleeps on the", "one two", "we walk to the old market on")]
    kw = dict(wino_threshold=threshold, threshold_back=threshold_back, gen_length=16, block_length=block_length,
              steps=16)
    out = generate(den, prompts, sampler="wino", seeds=[0, 1, 2], record=True, **kw)
    if threshold < 0.05:  # wide in: several commits per pass, so narrow out has something to re-mask
        assert sum(int(s.remasked.sum()) for s in out.record.steps) > 0
    for i, prompt in enumerate(prompts):
        single = generate(den, [prompt], sampler="wino", seeds=[i], **kw)
        assert single.sequences[0] == out.sequences[i] and single.row_nfe[0] == out.row_nfe[i]
        ref, calls = _wino_transcribed(den, prompt, 16, block_length, threshold, threshold_back)
        assert out.sequences[i][len(prompt):] == ref and out.row_nfe[i] == calls, (i, threshold)


def test_wino_needs_a_family_that_verifies(tiny_checkpoints):
    from emdm_core.errors import ConfigError
    from emdm_sampling import load_denoiser

    for family, message in (("bert", "cannot run"), ("sdar", "cannot run")):
        with pytest.raises(ConfigError, match=message):
            generate(load_denoiser(tiny_checkpoints[family]), [[5, 6]], sampler="wino", steps=4, gen_length=4)
    with pytest.raises(ConfigError, match="cache=none"):
        generate(load_denoiser(tiny_checkpoints["llada"]), [[5, 6]], sampler="wino", steps=4, gen_length=4,
                 cache="dual")


def test_new_decoders_run_from_the_sampling_cli(tiny_checkpoints, capsys):
    from emdm_sampling.__main__ import main

    path = tiny_checkpoints["llada"]
    for argv in (["--sampler", "credit", "--threshold", "0.5", "--option", "credit_alpha=0.5"],
                 ["--sampler", "hierarchy", "--option", "low_threshold=0.1"],
                 ["--sampler", "klass", "--option", "conf_threshold=0.5"], ["--sampler", "dus"],
                 ["--sampler", "wino", "--cache", "none"], ["--sampler", "prophet", "--option", "answer_start=2"]):
        assert main(["--pretrained", path, "--prompt", "the cat", "--gen-length", "8", "--steps", "8", *argv]) == 0
        assert f"[{argv[1]}]" in capsys.readouterr().out
    assert main(["--pretrained", path, "--prompt", "the cat", "--sampler", "dus", "--threshold", "0.9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "does not use threshold" in err[-1] and err[-1].startswith("error:")


@pytest.mark.parametrize("args", [dict(sampler="credit", threshold=0.5, credit_alpha=0.5),
                                  dict(sampler="klass", conf_threshold=0.5), dict(sampler="dus"),
                                  dict(sampler="wino", cache="none"), dict(sampler="hierarchy")])
def test_new_decoders_run_as_the_lm_eval_model(tiny_checkpoints, args):
    from lm_eval.api.instance import Instance

    from emdm_eval.model import EMDMLM

    lm = EMDMLM(pretrained=tiny_checkpoints["llada"], steps=8, **args)
    requests = [Instance("generate_until", {}, (text, {"max_gen_toks": 8, "until": []}), 0, ("t", i, 1))
                for i, text in enumerate(["the cat", "one two three"])]
    texts = lm.generate_until(requests)
    assert len(texts) == 2 and lm.get_model_info()["emdm"]["sampler"]["sampler"] == args["sampler"]
