"""Sampling benchmark: per strategy and batch size, wall time, forward passes, generated tokens/s and the share of
time spent outside the model's forward pass (the loop's own overhead).

    python benchmarks/bench_sampling.py                      # small BERT on the CPU, batch 1/16/64
    python benchmarks/bench_sampling.py --device cuda --batch-sizes 1 16 64 256
Prints a Markdown table. Prompt tokens are not counted as generated.
"""

from __future__ import annotations

import argparse
import time

import torch

from emdm_sampling import available_samplers, generate
from emdm_core.devices import resolve_device
from emdm_models.families.masked_lm import MaskedLMDenoiser


def build_model(vocab: int, hidden: int, layers: int, max_length: int, device: torch.device) -> MaskedLMDenoiser:
    """A randomly initialised BERT masked LM of the given size behind the standard adapter."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                     intermediate_size=4 * hidden, max_position_embeddings=max_length, initializer_range=0.3)
    model = BertForMaskedLM(cfg).to(device).eval()
    return MaskedLMDenoiser(model, tokenizer=None, mask_token_id=vocab - 1, eos_token_id=None, pad_token_id=0,
                            max_length=max_length)


class ForwardTimer:
    """Wraps a denoiser's `logits` to accumulate the time spent inside the model's forward pass."""

    def __init__(self, den: MaskedLMDenoiser):
        self.den, self.seconds, self._inner = den, 0.0, den.logits
        den.logits = self._timed  # type: ignore[method-assign]

    def _timed(self, *args, **kwargs):
        sync = torch.cuda.synchronize if self.den.device.type == "cuda" else (lambda: None)
        sync()
        t = time.perf_counter()
        out = self._inner(*args, **kwargs)
        sync()
        self.seconds += time.perf_counter() - t
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--samplers", nargs="+", default=None)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--prompt-length", type=int, default=32)
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--threshold", type=float, default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    den = build_model(args.vocab, args.hidden, args.layers, args.prompt_length + args.gen_length + 8, device)
    den.surprise = torch.rand(args.vocab) * 16
    timer = ForwardTimer(den)
    n_params = sum(t.numel() for t in den.model.parameters())
    print(f"model: BERT {n_params / 1e6:.1f}M params, vocab {args.vocab}, device {device}, threads "
          f"{torch.get_num_threads()}; prompt {args.prompt_length}, gen {args.gen_length}, steps {args.steps}, "
          f"block {args.block_length}, threshold {args.threshold}\n")
    print("| sampler | batch | wall s | forward passes | gen tokens/s | outside forward |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for sampler in args.samplers or available_samplers(den):
        for bs in args.batch_sizes:
            prompts = torch.randint(1, args.vocab - 2, (bs, args.prompt_length), generator=g).tolist()
            kw = dict(sampler=sampler, steps=args.steps, gen_length=args.gen_length, block_length=args.block_length,
                      threshold=args.threshold, temperature=1.0 if sampler == "remdm" else 0.0)
            generate(den, prompts[:1], **{**kw, "steps": 2, "gen_length": 4})  # warm-up
            timer.seconds = 0.0
            t = time.perf_counter()
            out = generate(den, prompts, seeds=list(range(bs)), **kw)
            wall = time.perf_counter() - t
            tokens = sum(len(s) - args.prompt_length for s in out.sequences)
            outside = 1 - timer.seconds / wall
            print(f"| {sampler} | {bs} | {wall:.2f} | {out.nfe} | {tokens / wall:.0f} | {outside:.1%} |", flush=True)


if __name__ == "__main__":
    main()
