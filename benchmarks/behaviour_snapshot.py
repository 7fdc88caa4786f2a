"""Behaviour snapshot for refactors: generations, training losses and a Sudoku solve rate on fixed seeds.

    python benchmarks/behaviour_snapshot.py --models snap-models --out before.json       # on the old code
    python benchmarks/behaviour_snapshot.py --models snap-models --out after.json --compare before.json

Records, offline on the CPU: (1) the tokens every registered built-in sampler generates on tiny random checkpoints
of every family (blocks, temperature, threshold, cosine schedule and infilling variants); (2) the loss of every
logged step of 20 training steps for every masking schedule on a tiny BERT; (3) the solve rate of the embedded
`emdm:sudoku` checkpoint on the first `--sudoku-n` easy test puzzles with `margin` at 50 steps. `--compare`
prints every difference and exits 1 when there is one (losses compared to 1e-6 relative).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLERS = ["vanilla", "top_prob", "margin", "entropy", "low_confidence_remask", "eags", "remdm", "surprise"]
TEXTS = ["the cat sleeps", "the capital of france is", "one two three four five six seven"]
VARIANTS = {
    "plain": dict(steps=8, gen_length=8),
    "blocks_t1": dict(steps=6, gen_length=12, block_length=4, temperature=1.0),
    "threshold": dict(steps=8, gen_length=8, threshold=0.3),
    "cosine_blocks": dict(steps=8, gen_length=10, block_length=5, schedule="cosine"),
}
EXTRA_VARIANTS = {  # strategies and shared options beyond the grid above
    "order_noise": dict(sampler="top_prob", steps=8, gen_length=8, order_noise=0.5, order_noise_decay="linear"),
    "topk_remask": dict(sampler="margin", steps=8, gen_length=8, topk_remask="cosine"),
    "eb_masked": dict(sampler="entropy_bound", steps=8, gen_length=8, entropy_bound=0.5),
    # emdm's former `conf` schedule, kept as `conf_eta` (`conf` is now the reference's, which takes no eta)
    "remdm_conf": dict(sampler="remdm", steps=8, gen_length=8, temperature=1.0, remdm_schedule="conf_eta",
                       eta=0.5),
    "remdm_rescale": dict(sampler="remdm", steps=8, gen_length=8, block_length=4, temperature=1.0,
                          remdm_schedule="rescale", eta=0.5),
    "dream_schedule": dict(sampler="entropy", steps=8, gen_length=8, schedule="dream"),
    "eot_eos": dict(sampler="margin", steps=8, gen_length=8, logits_eos_inf=True, confidence_eos_eot_inf=True,
                    stop_at_eos=True),
}
MASKINGS = ["uniform", "llada", "surprise", "entropy"]


def _tiny_builder():
    try:
        from emdm_models.tiny import build_tiny_checkpoint
    except ImportError:
        from emdm_sampling.tiny import build_tiny_checkpoint
    return build_tiny_checkpoint


def _checkpoint(models: Path, name: str, family: str, **kw) -> Path:
    """A tiny checkpoint, built once into `models` and reused (the tokenizer trainer breaks ties differently in
    every process, so a rebuilt checkpoint would not give comparable token ids)."""
    path = models / name
    if not (path / "config.json").exists():
        _tiny_builder()(path, family, **kw)
    return path


def _load(load_denoiser, path: Path):
    """The checkpoint as its own adapter loads it; snapshots taken before the transformers backbones hold
    remote-code stand-ins for llada/dream, which now load with adapter=remote."""
    from emdm_core.errors import CheckpointError

    try:
        return load_denoiser(path, trust_remote_code=True)
    except CheckpointError as exc:
        if "adapter=remote" not in str(exc):
            raise
        return load_denoiser(path, trust_remote_code=True, adapter="remote")


def generations(models: Path, skip: tuple[str, ...] = ()) -> dict:
    from emdm_core.errors import ConfigError
    from emdm_sampling import generate, load_denoiser

    out = {}
    for family in [f for f in ("bert", "modernbert", "llada", "dream") if f not in skip]:
        den = _load(load_denoiser, _checkpoint(models, family, family))
        den.surprise = torch.linspace(0, 9, den.vocab_size)
        prompts = [den.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
        for sampler in SAMPLERS:
            for name, kw in VARIANTS.items():
                try:
                    res = generate(den, prompts, sampler=sampler, seed=3, stop_at_eos=False, **kw)
                except ConfigError as exc:  # a setting the strategy does not honour (refused since issue 22)
                    out[f"{family}/{sampler}/{name}"] = {"refused": str(exc)}
                    continue
                out[f"{family}/{sampler}/{name}"] = {"sequences": res.sequences, "nfe": res.nfe}
        # infilling: masks inside the prompt, EOS stopping on
        infill = [prompts[1][:2] + [den.mask_token_id] * 3 + prompts[1][2:]]
        res = generate(den, infill, sampler="margin", steps=4, gen_length=4, seed=1)
        out[f"{family}/margin/infill"] = {"sequences": res.sequences, "generated": res.generated, "nfe": res.nfe}
        for name, kw in EXTRA_VARIANTS.items():
            res = generate(den, prompts, seed=5, **{"stop_at_eos": False, **kw})
            out[f"{family}/{kw['sampler']}/{name}"] = {"sequences": res.sequences, "nfe": res.nfe}
    out.update(_cached_and_uniform(models))
    return out


def _record(res) -> dict:
    return {"sequences": res.sequences, "nfe": res.nfe, "nfe_full": res.nfe_full, "nfe_partial": res.nfe_partial,
            "row_nfe": res.row_nfe}


def _cached_and_uniform(models: Path) -> dict:
    """KV-cache modes (llada, sdar), a uniform-state (Duo-style) BERT and DiffusionGemma's canvases."""
    from emdm_sampling import generate, load_denoiser

    out = {}
    for family, caches in (("llada", ("prefix", "dual")), ("sdar", ("exact", "none"))):
        den = load_denoiser(_checkpoint(models, family, family))
        prompts = [den.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
        for cache in caches:
            for name, kw in (("blocks", dict(steps=8, gen_length=12, block_length=4)),
                             ("threshold", dict(steps=12, gen_length=12, block_length=4, threshold=0.2)),
                             ("eags", dict(sampler="eags", steps=8, gen_length=8, block_length=4))):
                kw = {"sampler": "margin", **kw}
                res = generate(den, prompts, seed=2, cache=cache, **kw)
                out[f"{family}/{cache}/{name}"] = _record(res)
    den = load_denoiser(_checkpoint(models, "bert", "bert"))
    den.noise = "uniform"
    prompts = [den.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    for sampler, kw in (("duo", dict(steps=8, gen_length=8, temperature=1.0)),
                        ("entropy_bound", dict(steps=8, gen_length=8, temperature=0.8, temperature_end=0.4)),
                        ("margin", dict(steps=6, gen_length=8, block_length=4)),
                        ("remdm", dict(steps=8, gen_length=8, temperature=1.0, eta=0.3))):
        out[f"uniform-bert/{sampler}"] = _record(generate(den, prompts, sampler=sampler, seed=4, **kw))
    dg = load_denoiser(_checkpoint(models, "diffusion_gemma", "diffusion_gemma"))
    prompts = [dg.tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    for name, kw in (("defaults", dict(gen_length=12)),
                     ("torch_rng", dict(gen_length=12, rng="torch")),
                     ("margin", dict(sampler="margin", steps_per_block=4, gen_length=12, temperature=1.0)),
                     ("nocache", dict(gen_length=12, cache="none"))):
        from emdm_sampling import SamplerConfig

        res = generate(dg, prompts, SamplerConfig.for_denoiser(dg, **kw), seeds=[1, 2, 3])
        out[f"diffusion_gemma/{name}"] = _record(res)
    return out


def training(models: Path, root: Path) -> dict:
    from emdm_train.config import TrainConfig
    from emdm_train.trainer import train

    lines = [f"the {a} {n} {v} in the {p} ." for a in ("small", "big", "old") for n, v in
             (("cat", "sleeps"), ("dog", "runs"), ("bird", "sings")) for p in ("park", "house", "river")] * 8
    data = root / "corpus.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in lines))
    model = _checkpoint(models, "train-bert", "bert", corpus=lines, hidden_size=32)
    out = {}
    torch.set_num_threads(1)
    for masking in MASKINGS:
        cfg = TrainConfig(model=str(model), data=str(data), output=str(root / f"run-{masking}"), max_steps=20,
                          batch_size=8, learning_rate=3e-3, eval_every=10, save_every=0, log_every=5,
                          progress=False, pack=False, val_split=0.1, max_length=24, masking=masking,
                          report_to="none")
        res = train(cfg)
        out[masking] = [{k: v for k, v in rec.items() if k in ("step", "loss", "eval_loss", "eval_accuracy")}
                        for rec in res.history]
    return out


def sudoku(n: int) -> dict:
    from emdm_sampling import generate, load_denoiser

    spec_path = ROOT / "tasks" / "sudoku" / "utils.py"
    import importlib.util

    spec = importlib.util.spec_from_file_location("sudoku_task_utils", spec_path)
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    rows = [json.loads(line) for line in (ROOT / "tasks" / "sudoku" / "data" / "test_easy.jsonl").open()][:n]
    den = load_denoiser("emdm:sudoku")
    tok = den.tokenizer
    prompts = [tok(r["puzzle"], add_special_tokens=False)["input_ids"] for r in rows]
    res = generate(den, prompts, sampler="margin", steps=50, gen_length=81, seed=0)
    texts = [tok.decode(g) for g in res.generated]
    solved = [bool(utils.process_results(r, [t])["solved"]) for r, t in zip(rows, texts)]
    return {"n": n, "solved": sum(solved), "outputs": texts}


def compare(before: dict, after: dict, skip: tuple[str, ...] = ()) -> list[str]:
    """Every difference; a generation the new code refuses (a setting its strategy ignored before) is listed on
    stdout, not counted."""
    problems = []
    for key, value in before["generations"].items():
        if key.split("/")[0] in skip:
            continue
        new = after["generations"].get(key)
        if isinstance(new, dict) and "refused" in new and "refused" not in value:
            print(f"refused now: {key}: {new['refused']}")
            continue
        if new != value:
            problems.append(f"generation {key}: {value} -> {after['generations'].get(key)}")
    for masking, recs in before["training"].items():
        new = after["training"].get(masking)
        if new is None or len(new) != len(recs):
            problems.append(f"training {masking}: {len(recs)} records -> {None if new is None else len(new)}")
            continue
        for a, b in zip(recs, new):
            for k, v in a.items():
                w = b.get(k)
                if isinstance(v, float) and isinstance(w, float):
                    if abs(v - w) > 1e-6 * max(1.0, abs(v)):
                        problems.append(f"training {masking} step {a['step']} {k}: {v} -> {w}")
                elif v != w:
                    problems.append(f"training {masking} step {a['step']} {k}: {v} -> {w}")
    if before["sudoku"] != after["sudoku"]:
        problems.append(f"sudoku: solved {before['sudoku']['solved']} -> {after['sudoku']['solved']} "
                        f"(outputs equal: {before['sudoku']['outputs'] == after['sudoku']['outputs']})")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="write the snapshot JSON here")
    ap.add_argument("--compare", help="a snapshot written earlier: print the differences, exit 1 if any")
    ap.add_argument("--models", required=True, help="folder for the tiny checkpoints (built on the first run, "
                    "reused by later ones)")
    ap.add_argument("--sudoku-n", type=int, default=200)
    ap.add_argument("--skip", nargs="*", default=[], help="families to leave out of the generations (and of the "
                                                          "comparison), e.g. a stand-in model a change no longer "
                                                          "fits")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = Path(args.models)
        snap = {"generations": generations(models, tuple(args.skip)), "training": training(models, root),
                "sudoku": sudoku(args.sudoku_n)}
    Path(args.out).write_text(json.dumps(snap))
    print(f"{len(snap['generations'])} generations, {len(snap['training'])} training runs, sudoku "
          f"{snap['sudoku']['solved']}/{snap['sudoku']['n']} solved -> {args.out}")
    if args.compare:
        problems = compare(json.loads(Path(args.compare).read_text()), snap, tuple(args.skip))
        print("\n".join(problems) if problems else f"identical to {args.compare}")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
