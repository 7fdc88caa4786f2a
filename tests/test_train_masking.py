"""Statistics of the masking schedules, measured over many draws (no model training here)."""

from __future__ import annotations

import pytest
import torch

from emdm_core.errors import EMDMError
from emdm_train.masking import (MaskingCollator, Noise, available_maskings, build_masking, maskable_positions,
                                weighted_mlm_loss_sum)

V, MASK, CLS, SEP, PAD = 64, 1, 2, 3, 0
SPECIALS = [PAD, MASK, CLS, SEP]


def _surprise() -> torch.Tensor:
    """Surprise rising with the id: id 63 is the rarest token; specials 0."""
    s = torch.linspace(1.0, 12.0, V)
    s[SPECIALS] = 0.0
    return s


def _batch(rows: int = 4000, length: int = 24, seed: int = 0):
    """Random rows of distinct ordinary ids: [CLS] prompt... response... [SEP] [PAD]..., with prompt lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(V - 4, generator=g)[:length] + 4 for _ in range(rows)])
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g)
    pos = torch.arange(length)
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    attn = (pos[None] < lengths[:, None]).long()
    ids = torch.where(attn.bool(), ids, torch.full_like(ids, PAD))
    prompt = torch.randint(0, 4, (rows,), generator=g)
    unmaskable = torch.zeros(V, dtype=torch.bool)
    unmaskable[SPECIALS] = True
    return ids, attn, prompt, maskable_positions(ids, attn, unmaskable, prompt)


def _schedule(name: str, **kw):
    if name == "surprise":
        kw = {"surprise": _surprise(), "special_ids": SPECIALS, **kw}
    return build_masking(name, MASK, **kw)


def _fake_logits(ids: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """Logits whose entropy rises with the position: position 0 is certain, later ones flatter."""
    b, length = ids.shape
    scale = torch.linspace(20.0, 0.0, length)
    logits = torch.zeros(b, length, V)
    logits[:, :, 5] = scale
    return logits


def _run(schedule, ids, attn, maskable, seed=1, **kw):
    g = torch.Generator().manual_seed(seed)
    fn = _fake_logits if schedule.needs_model else None
    return schedule(ids, maskable, generator=g, attention_mask=attn, logits_fn=fn, **kw)


def test_registry_lists_the_four_schedules():
    assert {"uniform", "llada", "surprise", "entropy"} <= set(available_maskings())
    with pytest.raises(EMDMError, match="unknown masking"):
        build_masking("nope", MASK)


@pytest.mark.parametrize("name", ["uniform", "llada", "surprise", "entropy", "discrete"])
def test_masked_fraction_tracks_t_and_specials_and_prompt_are_never_masked(name):
    ids, attn, prompt, maskable = _batch()
    out = _run(_schedule(name), ids, attn, maskable)
    assert not (out.mask & ~maskable).any(), "masked a special, padding or prompt token"
    pos = torch.arange(ids.shape[1])
    assert not (out.mask & (pos[None] < prompt[:, None])).any()
    assert not out.mask[torch.isin(ids, torch.tensor(SPECIALS))].any()
    n = maskable.sum(1).float()
    frac = out.mask.sum(1) / n
    lo, hi = (0.15, 0.99) if name == "llada" else (1e-3, 1.0)
    assert out.t.min() >= lo and out.t.max() <= hi
    assert abs(float((frac - out.t).mean())) < 0.01
    for a in (0.0, 0.25, 0.5, 0.75):  # per band of t, the mean masked fraction is the mean t
        band = (out.t >= a) & (out.t < a + 0.25)
        if band.sum() > 100:
            assert abs(float(frac[band].mean() - out.t[band].mean())) < 0.03
    # inputs, labels and weights follow the mask
    assert torch.equal(out.input_ids[out.mask], torch.full((int(out.mask.sum()),), MASK))
    assert torch.equal(out.input_ids[~out.mask], ids[~out.mask])
    assert torch.equal(out.labels[out.mask], ids[out.mask]) and (out.labels[~out.mask] == -100).all()
    assert (out.weights[~out.mask] == 0).all()
    k = out.mask.sum(1).float()
    expected = (1.0 / out.t) if name in ("uniform", "llada") else n / k.clamp(min=1)
    if name == "discrete":  # T - j with j = tT - 1, times n/k
        expected = (20 - (out.t * 20 - 1)) * n / k.clamp(min=1)
    rows = k > 0
    got = out.weights.max(1).values
    assert torch.allclose(got[rows], expected[rows], rtol=1e-5)


def _top_token_mask_rate(temperature: float, mask_first: str = "high", t_band=(0.05, 0.3)) -> float:
    """How often the highest-surprise maskable token of a row is masked, for rows with small t."""
    ids, attn, prompt, maskable = _batch(seed=3)
    out = _run(_schedule("surprise", temperature=temperature, mask_first=mask_first), ids, attn, maskable)
    s = _surprise()[ids].masked_fill(~maskable, -1.0)
    top = s.argmax(1)
    rows = (out.t > t_band[0]) & (out.t < t_band[1])
    return float(out.mask[torch.arange(len(ids)), top][rows].float().mean())


def test_small_temperature_masks_the_most_surprising_tokens_first():
    cold, hot = _top_token_mask_rate(0.05), _top_token_mask_rate(100.0)
    assert cold > 0.95  # (near) greedy: the rarest token goes first
    assert hot < 0.35  # near uniform: masked about as often as t
    assert cold > hot + 0.5
    # the opposite direction keeps the most surprising token visible until t is large
    assert _top_token_mask_rate(0.05, mask_first="low") < 0.02


def test_gumbel_top_k_draws_the_first_token_from_softmax_of_surprise():
    """With one token masked per row, the chosen position is distributed as softmax(S / T) over the row."""
    rows, temperature = 20000, 2.0
    row = torch.tensor([CLS, 10, 20, 30, 40, 50, 60, SEP])
    ids = row.expand(rows, -1).clone()
    maskable = ~torch.isin(ids, torch.tensor(SPECIALS))
    sched = _schedule("surprise", temperature=temperature, t_min=1e-3, t_max=1e-3)
    out = sched(ids, maskable, generator=torch.Generator().manual_seed(0))
    assert (out.mask.sum(1) == 1).all()
    freq = out.mask.float().mean(0)[1:-1]
    expected = torch.softmax(_surprise()[row[1:-1]] / temperature, 0)
    assert torch.allclose(freq, expected, atol=0.015), (freq, expected)


def test_infinite_temperature_matches_uniform_within_sampling_error():
    ids, attn, prompt, maskable = _batch(rows=8000, seed=5)
    s = _surprise()[ids]
    high = maskable & (s > 8.0)  # the rarer third of the tokens
    rates = {}
    for name, kw in (("uniform", {}), ("surprise", {"temperature": 1e9})):
        out = _run(_schedule(name, **kw), ids, attn, maskable, seed=11)
        rates[name] = (float(out.mask[high].float().mean()), float(out.mask[maskable].float().mean()),
                       int(high.sum()))
    (u_high, u_all, n), (s_high, s_all, _) = rates["uniform"], rates["surprise"]
    # masking is correlated within a row (shared t): allow a generous 4-sigma band on row-level variance
    sigma = (0.25 / (len(ids) * 0.5)) ** 0.5
    assert abs(u_high - s_high) < 4 * sigma + 0.01
    assert abs(u_all - s_all) < 4 * sigma + 0.01
    # and a cold temperature is far from uniform on the same tokens
    cold = _run(_schedule("surprise", temperature=0.1), ids, attn, maskable, seed=11)
    assert float(cold.mask[high].float().mean()) > u_high + 0.1


def test_entropy_masks_low_entropy_tokens_first():
    ids, attn, prompt, maskable = _batch(rows=500, seed=7)
    out = _run(_schedule("entropy"), ids, attn, maskable)  # fake entropy rises with the position
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    for r in range(50):
        masked = pos[r][out.mask[r]]
        visible = pos[r][maskable[r] & ~out.mask[r]]
        if len(masked) and len(visible):
            assert masked.max() < visible.min()  # deterministic ENS order: lowest entropy (earliest) first
    out_high = _run(_schedule("entropy", mask_first="high"), ids, attn, maskable)
    for r in range(50):
        masked = pos[r][out_high.mask[r]]
        visible = pos[r][maskable[r] & ~out_high.mask[r]]
        if len(masked) and len(visible):
            assert masked.min() > visible.max()


def test_entropy_probe_passes_mask_each_token_once():
    ids, attn, prompt, maskable = _batch(rows=64, seed=8)
    seen = []

    def fn(x, a):
        seen.append(x.clone())
        return _fake_logits(x, a)

    sched = _schedule("entropy", probe_passes=3)
    out = sched(ids, maskable, generator=torch.Generator().manual_seed(0), attention_mask=attn, logits_fn=fn)
    assert len(seen) == 3
    hits = sum((x == MASK).long() for x in seen)
    assert torch.equal(hits.bool(), maskable) and hits.max() == 1
    assert not (out.mask & ~maskable).any()
    with pytest.raises(EMDMError, match="needs the model"):
        sched(ids, maskable)


def test_bad_options_are_one_line_errors():
    for kw, msg in (({"temperature": 0.0}, "temperature must be > 0"), ({"temperature": -1.0}, "must be > 0"),
                    ({"mask_first": "middle"}, "mask_first")):
        with pytest.raises(EMDMError, match=msg) as info:
            _schedule("surprise", **kw)
        assert "\n" not in str(info.value)
    with pytest.raises(EMDMError, match="t range"):
        _schedule("llada", t_min=0.9, t_max=0.2)


def test_masks_of_a_row_do_not_depend_on_the_batch_split():
    """The trainer draws noise for the global batch and slices it: any split gives the same masks."""
    ids, attn, prompt, maskable = _batch(rows=32, seed=9)
    for name in ("uniform", "surprise"):
        sched = _schedule(name)
        noise = Noise.draw(32, ids.shape[1], generator=torch.Generator().manual_seed(4), stratified=True)
        whole = sched(ids, maskable, noise=noise)
        parts = [sched(ids[sl], maskable[sl], noise=noise.take(sl, ids.shape[1]))
                 for sl in (slice(0, 5), slice(5, 32))]
        assert torch.equal(whole.mask, torch.cat([p.mask for p in parts]))
    # stratified t covers [0, 1) evenly: one draw per 1/32 band
    bands = torch.sort((noise.u_t * 32).long()).values
    assert torch.equal(bands, torch.arange(32))


def test_collator_pads_and_never_masks_the_prompt():
    sched = _schedule("uniform", t_min=0.99, t_max=1.0)
    unmaskable = torch.zeros(V, dtype=torch.bool)
    unmaskable[SPECIALS] = True
    coll = MaskingCollator(sched, PAD, unmaskable, generator=torch.Generator().manual_seed(0))
    batch = coll([{"input_ids": [CLS, 10, 11, SEP, 20, 21, 22], "prompt_length": 4},
                  {"input_ids": [CLS, 12, 30], "prompt_length": 2}])
    assert batch["input_ids"].shape == (2, 7) and batch["attention_mask"].sum().item() == 10
    masked = batch["labels"] != -100
    assert masked[0].tolist() == [False] * 4 + [True] * 3
    assert masked[1].tolist() == [False, False, True] + [False] * 4
    logits = torch.zeros(2, 7, V, requires_grad=True)
    loss = weighted_mlm_loss_sum(logits, batch["labels"], batch["loss_weights"])
    loss.backward()
    assert torch.isclose(loss, (batch["loss_weights"][masked] * torch.log(torch.tensor(float(V)))).sum())


# --- options are pluggable: declared by the schedule, passed through by the trainer ---------------------------

def _trainer_schedule(**cfg_kwargs):
    """The schedule the trainer builds from a recipe (its real `_build_schedule`, no data needed)."""
    from emdm_core.surprise import SurpriseTable
    from emdm_train.config import TrainConfig
    from emdm_train.trainer import Trainer

    cfg = TrainConfig(model="m", data="d", output="/tmp/emdm-unused", max_steps=1, report_to="none", **cfg_kwargs)
    trainer = Trainer(cfg)
    trainer.mask_token_id = MASK
    return trainer._build_schedule(SurpriseTable(torch.arange(V) + 1, special_ids=SPECIALS))


@pytest.mark.parametrize("masking, given, expected", [
    ("uniform", {"eps": 0.02}, {"t_min": 0.02}),
    ("uniform", {"t_min": 0.2, "t_max": 0.7}, {"t_min": 0.2, "t_max": 0.7}),
    ("llada", {"t_min": 0.3}, {"t_min": 0.3, "t_max": 0.99}),
    ("surprise", {"surprise_temperature": 0.25}, {"temperature": 0.25, "direction": "low_first", "sign": 1.0}),
    ("surprise", {"surprise_mask_first": "low"}, {"direction": "high_first", "sign": -1.0}),
    ("surprise", {"surprise_mask_first": "high"}, {"direction": "low_first", "sign": 1.0}),
    ("surprise", {"surprise_direction": "high_first"}, {"direction": "high_first", "sign": -1.0}),
    ("surprise", {"masking_options": {"temperature": "3", "direction": "high_first"}},
     {"temperature": 3.0, "direction": "high_first"}),
    ("surprise", {"surprise_temperature": 0.5, "masking_options": {"temperature": 2.0}}, {"temperature": 2.0}),
    ("entropy", {"entropy_temperature": 0.5, "entropy_probe_passes": 2},
     {"temperature": 0.5, "probe_passes": 2, "direction": "high_first", "sign": -1.0}),
    ("entropy", {"entropy_mask_first": "high"}, {"direction": "low_first", "sign": 1.0}),
    ("entropy", {"masking_options": {"probe_passes": 3, "eps": 0.05}}, {"probe_passes": 3, "t_min": 0.05}),
])
def test_every_option_reaches_the_schedule(masking, given, expected):
    sched = _trainer_schedule(masking=masking, **given)
    assert sched.name == masking
    for attr, value in expected.items():
        assert getattr(sched, attr) == value, attr


def test_options_of_other_schedules_are_checked_and_unknown_ones_refused():
    from emdm_train.config import TrainConfig

    base = dict(model="m", data="d", output="o", max_steps=1)
    with pytest.raises(EMDMError, match=r"^--entropy-temperature must be >= 0"):
        TrainConfig(**base, masking="uniform", entropy_temperature=-1).validate()
    with pytest.raises(EMDMError, match=r"unknown option '--masking-option temperature' for masking 'uniform'"):
        TrainConfig(**base, masking="uniform", masking_options={"temperature": 1}).validate()
    with pytest.raises(EMDMError, match=r"--masking-option direction must be high_first or low_first"):
        TrainConfig(**base, masking="surprise", masking_options={"direction": "up"}).validate()


def test_a_registered_schedule_gets_its_declared_options_from_the_command_line():
    from emdm_train.config import parse_args
    from emdm_train.masking import MASKINGS, RANGE_OPTIONS, MaskingSchedule, Opt, register_masking

    @register_masking("every_other_test")
    class EveryOther(MaskingSchedule):
        options = {**RANGE_OPTIONS, "phase": Opt(0, int, lambda v: None if v in (0, 1) else "must be 0 or 1")}

        def select(self, input_ids, maskable, t, noise, attention_mask, logits_fn):
            pos = torch.arange(input_ids.shape[1])
            return (pos % 2 == self.opt["phase"]).expand_as(maskable), torch.full_like(t, 2.0)

    try:
        cfg = parse_args(["--model", "m", "--data", "d", "--output", "o", "--max-steps", "1", "--masking",
                          "every_other_test", "--masking-option", "phase=1", "--t-max", "0.5"])
        sched = _trainer_schedule(masking=cfg.masking, masking_options=cfg.masking_options, t_max=cfg.t_max)
        assert sched.opt["phase"] == 1 and sched.t_max == 0.5
        ids, attn, prompt, maskable = _batch()
        out = sched(ids, maskable, generator=torch.Generator().manual_seed(0), attention_mask=attn)
        assert not out.mask[:, 0::2].any() and torch.equal(out.mask[:, 1::2], maskable[:, 1::2])
        with pytest.raises(EMDMError, match=r"--masking-option phase must be 0 or 1 \(got 2\)"):
            parse_args(["--model", "m", "--data", "d", "--output", "o", "--max-steps", "1", "--masking",
                        "every_other_test", "--masking-option", "phase=2"])
    finally:
        MASKINGS.unregister("every_other_test")


def test_discrete_schedule_is_ye_et_als_sudoku_objective():
    """Issue 26 item 14: HKUNLP/diffusion-vs-ar's MDMTrainer with --time_reweighting linear: j ~ U{0..T-1}, each
    maskable token masked with probability (j+1)/T (never below 1/T), weight T - j, the weighted cross-entropy
    averaged over the masked tokens (here per row: weight x n/k, so sum / n_maskable is that average)."""
    torch.manual_seed(0)
    rows, length, steps = 4000, 40, 20
    ids = torch.randint(5, 50, (rows, length))
    maskable = torch.ones(rows, length, dtype=torch.bool)
    out = build_masking("discrete", mask_token_id=3)(ids, maskable, generator=torch.Generator().manual_seed(1))
    levels = torch.round(out.t * steps) - 1
    assert set(levels.long().tolist()) == set(range(steps))  # every discrete level, none other
    assert out.t.min() == pytest.approx(1 / steps)
    k = out.mask.sum(1)
    assert abs(k.float().mean() / length - out.t.mean()) < 0.01  # independent masking at rate (j+1)/T
    row = int(torch.nonzero(k > 0)[0])
    expected = (steps - levels[row]) * length / k[row]
    assert torch.allclose(out.weights[row][out.mask[row]], expected.float())
    assert (out.weights[~out.mask] == 0).all()
    original = build_masking("discrete", mask_token_id=3, time_weight="original", steps=5)
    out = original(ids[:50], maskable[:50], generator=torch.Generator().manual_seed(2))
    j = torch.round(out.t * 5) - 1
    r = int(torch.nonzero(out.mask.sum(1) > 0)[0])
    assert out.weights[r][out.mask[r]][0] == pytest.approx(float(length / (j[r] + 1) / out.mask[r].sum()))
    with pytest.raises(EMDMError, match="time_weight"):
        build_masking("discrete", mask_token_id=3, time_weight="cosine")
