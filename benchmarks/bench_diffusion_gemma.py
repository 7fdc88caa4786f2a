"""DiffusionGemma: emdm's loop against transformers' own `model.generate`, on the same weights and seeds.

    python benchmarks/bench_diffusion_gemma.py                         # CPU: a small random DiffusionGemma
    python benchmarks/bench_diffusion_gemma.py --device cuda --dtype bfloat16 --hidden 1024 --layers 8 \\
        --vocab 32768 --experts 8 --canvas 32 --gen-length 256
    python benchmarks/bench_diffusion_gemma.py --pretrained /models/diffusiongemma-26B-A4B-it --device cuda

For each prompt (one at a time: `generate`'s global generator is shared by a batch) both decoders run from the
same seed with DiffusionGemma's sampler settings; `same` says whether emdm's tokens equal transformers'. Then
emdm decodes all prompts as one left-padded batch (counter rng): the row a batch serves at the cost of one.
Tokens/s counts generated tokens up to each text's end. Prints a Markdown table; `--out FILE` also writes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["the capital of france is", "the cat sleeps on the warm", "one two three four",
           "she writes a long letter to her mother", "we walk to the old market on sunday"]


def random_checkpoint(path: Path, args: argparse.Namespace) -> Path:
    """A random DiffusionGemma of the requested shape with the demo tokenizer (vocabulary padded to --vocab)."""
    from emdm_models.tiny import diffusion_gemma_model, train_tokenizer

    tok = train_tokenizer(with_mask=False)
    torch.manual_seed(0)
    diffusion_gemma_model(max(args.vocab, len(tok)), tok, args.hidden, args.layers, 4096,
                          heads=max(2, args.hidden // 128), experts=args.experts, top_k=min(2, args.experts),
                          canvas_length=args.canvas, sliding_window=512, initializer_range=None).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", help="a DiffusionGemma checkpoint directory (default: a random one)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--canvas", type=int, default=16)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--steps-per-canvas", type=int, default=12)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from emdm_sampling import generate, load_denoiser

    path = args.pretrained or str(random_checkpoint(Path(tempfile.mkdtemp(prefix="emdm-dg-")), args))
    den = load_denoiser(path, device=args.device, dtype=args.dtype)
    model, tok = den.model, den.tokenizer
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    settings = dict(temperature=0.8, temperature_end=0.4, entropy_bound=0.1, stability_threshold=1,
                    confidence_threshold=0.005)
    rows, same_all = [], True
    t_ref = t_emdm = 0.0
    n_tokens = passes_ref = passes_emdm = 0
    for seed, prompt in enumerate(prompts):
        torch.manual_seed(seed)
        _sync(args.device)
        start = time.perf_counter()
        ref = model.generate(torch.tensor([prompt], device=den.device), max_new_tokens=args.gen_length,
                             max_denoising_steps=args.steps_per_canvas)
        _sync(args.device)
        t_ref += time.perf_counter() - start
        ref_ids = ref.sequences[0, len(prompt):].tolist()[:args.gen_length]
        start = time.perf_counter()
        out = generate(den, [prompt], sampler="entropy_bound", steps_per_block=args.steps_per_canvas,
                       gen_length=args.gen_length, rng="torch", seed=seed, **settings)
        _sync(args.device)
        t_emdm += time.perf_counter() - start
        mine = out.sequences[0][len(prompt):]
        same = mine == ref_ids
        same_all &= same
        n_tokens += len(out.generated[0])
        passes_emdm += out.nfe
        passes_ref += round(len(ref.sequences[0, len(prompt):]) / float(ref.tokens_per_forward[0]))
        rows.append(f"| {seed} | {len(prompt)} | {same} | {out.nfe} |")
    start = time.perf_counter()
    batch = generate(den, prompts, sampler="entropy_bound", steps_per_block=args.steps_per_canvas,
                     gen_length=args.gen_length, seeds=list(range(len(prompts))), **settings)
    _sync(args.device)
    t_batch = time.perf_counter() - start
    batch_tokens = sum(len(g) for g in batch.generated)
    lines = [f"DiffusionGemma {Path(path).name if args.pretrained else 'random'} on {args.device} ({args.dtype}, "
             f"{args.threads} threads): hidden {model.config.get_text_config().hidden_size}, canvas "
             f"{den.canvas_length}, {args.gen_length} tokens, {args.steps_per_canvas} steps per canvas", "",
             "| prompt | prompt tokens | emdm == model.generate | emdm passes |", "|---|---|---|---|", *rows, "",
             "| decoder | seconds | tokens/s | forward passes |", "|---|---|---|---|",
             f"| transformers `model.generate`, one prompt at a time | {t_ref:.2f} | {n_tokens / t_ref:.1f} | "
             f"{passes_ref} |",
             f"| emdm `rng=torch`, one prompt at a time | {t_emdm:.2f} | {n_tokens / t_emdm:.1f} | {passes_emdm} |",
             f"| emdm, the {len(prompts)} prompts as one batch | {t_batch:.2f} | {batch_tokens / t_batch:.1f} | "
             f"{batch.nfe} |", "", f"all equal: {same_all}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0 if same_all else 1


if __name__ == "__main__":
    sys.exit(main())
