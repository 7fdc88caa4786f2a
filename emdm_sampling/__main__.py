"""`python -m emdm_sampling`: generate from a checkpoint with any sampler, optionally animating the decoding.

    python -m emdm_sampling --pretrained DIR --prompt "The capital of France is" --sampler margin --animate
    python -m emdm_sampling --list
Without --pretrained it builds a tiny random demo checkpoint (no download) to show the mechanics.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Sequence

from . import available_samplers, generate, load_denoiser
from .config import SamplerConfig
from .errors import EMDMError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m emdm_sampling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", help="checkpoint directory or Hub id (default: a tiny random demo model)")
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    p.add_argument("--sampler", default="margin", help="strategy name; --list shows them")
    p.add_argument("--steps", type=int, default=32, help="forward passes for the whole generation")
    p.add_argument("--gen-length", type=int, default=32, help="tokens to generate after each prompt")
    p.add_argument("--block-length", type=int, default=None, help="semi-autoregressive block size")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = argmax; > 0 samples")
    p.add_argument("--schedule", default="linear", help="reveal schedule: linear or cosine")
    p.add_argument("--threshold", type=float, default=None, help="parallel decoding confidence threshold")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a strategy option, e.g. --option eta=0.1 for remdm")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: CUDA when available)")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--trust-remote-code", action="store_true", help="allow LLaDA/Dream checkpoints' own code")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--animate", action="store_true", help="replay the decoding step by step in the terminal")
    p.add_argument("--delay", type=float, default=0.15, help="seconds per frame with --animate")
    p.add_argument("--trace-json", help="write the per-step trace to this JSON file")
    p.add_argument("--list", action="store_true", help="list the registered samplers and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line message on bad input)."""
    args = _parser().parse_args(argv)
    if args.list:
        print("\n".join(available_samplers()))
        return 0
    try:
        return _run(args)
    except EMDMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    options = {}
    for item in args.option:
        name, sep, value = item.partition("=")
        if not sep:
            raise EMDMError(f"--option {item!r} must look like NAME=VALUE")
        options[name] = value
    config = SamplerConfig.from_kwargs(sampler=args.sampler, steps=args.steps, gen_length=args.gen_length,
                                       block_length=args.block_length, temperature=args.temperature,
                                       schedule=args.schedule, threshold=args.threshold, seed=args.seed, **options)
    pretrained = args.pretrained
    if pretrained is None:
        from .tiny import build_tiny_checkpoint

        pretrained = str(build_tiny_checkpoint(tempfile.mkdtemp(prefix="emdm-demo-"), "bert"))
        print(f"(no --pretrained: using a tiny random demo model at {pretrained}; its words are random)")
    den = load_denoiser(pretrained, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    texts = args.prompt or ["the capital of france is"]
    tok = den.tokenizer
    if args.chat:
        prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                           tokenize=True) for t in texts]
    else:
        prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    start = time.perf_counter()
    out = generate(den, prompts, config, trace=args.animate or bool(args.trace_json))
    elapsed = time.perf_counter() - start
    if args.animate:
        _animate(out.trace, tok, den.mask_token_id, args.delay, len(prompts))
    for text, gen in zip(texts, out.generated):
        print(f"{text} -> {tok.decode(gen, skip_special_tokens=False)}")
    n_tokens = sum(len(s) - len(p) for s, p in zip(out.sequences, prompts))
    print(f"[{config.sampler}] {out.nfe} forward passes, {n_tokens} tokens in {elapsed:.2f}s "
          f"({n_tokens / max(elapsed, 1e-9):.1f} tokens/s)")
    if args.trace_json:
        with open(args.trace_json, "w") as fh:
            json.dump(out.trace.to_dict(), fh)
    return 0


def _animate(trace, tok, mask_id: int, delay: float, rows: int) -> None:
    """Redraw each row's text after every step: masks as `_`, the tokens revealed this step in brackets."""
    for st in trace.steps:
        lines = []
        for r in range(rows):
            new = set(st.revealed[r])
            words = ["_" if t == mask_id else tok.decode([t]) for t in st.tokens[r]]
            words = [f"[{w}]" if i in new else w for i, w in enumerate(words)]
            lines.append(" ".join(words))
        sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "")
        sys.stdout.write(f"step {st.step + 1}/{len(trace.steps)}\n" + "\n".join(lines) + "\n")
        sys.stdout.flush()
        time.sleep(delay if sys.stdout.isatty() else 0)


if __name__ == "__main__":
    sys.exit(main())
