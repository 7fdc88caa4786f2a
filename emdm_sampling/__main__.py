"""`python -m emdm_sampling`: generate from a checkpoint with any sampler, optionally animating the decoding.

    python -m emdm_sampling --pretrained DIR --prompt "The capital of France is" --sampler margin --animate
    python -m emdm_sampling --list
Without --pretrained it builds a tiny random demo checkpoint (no download) to show the mechanics. The sampler flags
(--sampler, --steps, --gen-length, ...) are `SamplerConfig`'s fields, with its defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from typing import Any, Sequence

from emdm_core import typed
from emdm_core.cli import run_cli
from emdm_core.errors import ConfigError

from . import available_samplers, generate
from emdm_core.progress import interactive

from .config import SamplerConfig


def build_parser(config_class: type = SamplerConfig) -> argparse.ArgumentParser:
    """The CLI: model and I/O flags, then one flag per field of `config_class`."""
    p = argparse.ArgumentParser(prog="python -m emdm_sampling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", help="checkpoint directory, emdm:NAME or Hub id (default: a tiny random demo "
                                        "model)")
    p.add_argument("--prompt", action="append", help="prompt text (repeat for a batch)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a strategy option, e.g. --option eta=0.1 for remdm")
    model = p.add_argument_group("model")
    model.add_argument("--adapter", help="force the model family (default: from the config)")
    model.add_argument("--tokenizer", help="load the tokenizer from another directory or Hub id")
    model.add_argument("--mask-token-id", type=int, help="the mask id, when neither tokenizer nor config has one")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: CUDA when available)")
    model.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    model.add_argument("--trust-remote-code", action="store_true", help="allow checkpoints' own model code")
    out = p.add_argument_group("output")
    out.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    out.add_argument("--prompt-format", default="auto", choices=("auto", "bos", "tokenizer", "raw"),
                     help="how a prompt becomes ids, as lm-eval's prompt_format: auto (as emdm_train encoded the "
                          "checkpoint's prompt/response rows when it was fine-tuned on them, else bos), bos (the "
                          "BOS/CLS id in front), tokenizer (the tokenizer's special tokens), raw (the text's ids)")
    out.add_argument("--animate", action="store_true", help="replay the decoding step by step in the terminal")
    out.add_argument("--delay", type=float, default=0.15, help="seconds per frame with --animate")
    out.add_argument("--trace-json", help="write the per-step trace to this JSON file")
    out.add_argument("--list", action="store_true", help="list the registered samplers and exit")
    typed.add_arguments(p.add_argument_group("sampler (SamplerConfig)"), config_class, grouped=False)
    return p


def sampler_values(args: argparse.Namespace, config_class: type = SamplerConfig) -> dict[str, Any]:
    """The sampler settings the user gave: flags and `--option`s."""
    values: dict[str, Any] = {name: getattr(args, name) for name in config_class.field_names() if hasattr(args, name)}
    for item in args.option:
        values.update(typed.parse_mapping(item, "--option"))
    return values


def config_from_args(args: argparse.Namespace, config_class: type = SamplerConfig) -> SamplerConfig:
    """The sampler config of parsed arguments: the given flags and `--option`s over the class defaults."""
    return config_class.from_kwargs(**sampler_values(args, config_class))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line message on bad input)."""
    return run_cli(_run, argv)


def _run(argv: Sequence[str] | None) -> int:
    from emdm_models.loading import Spelling, load_denoiser

    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(available_samplers()))
        return 0
    config = config_from_args(args)
    pretrained = args.pretrained
    if pretrained is None:
        from emdm_models.tiny import build_tiny_checkpoint

        pretrained = str(build_tiny_checkpoint(tempfile.mkdtemp(prefix="emdm-demo-"), "bert"))
        print(f"(no --pretrained: using a tiny random demo model at {pretrained}; its words are random)")
    den = load_denoiser(pretrained, adapter=args.adapter, device=args.device, dtype=args.dtype,
                        trust_remote_code=args.trust_remote_code, mask_token_id=args.mask_token_id,
                        tokenizer=args.tokenizer, spelling=Spelling("flags", "pretrained"))
    config = SamplerConfig.for_denoiser(den, **sampler_values(args))  # the family's decoding, if no --sampler
    texts = args.prompt or ["the capital of france is"]
    tok = den.tokenizer
    if args.chat:
        if not getattr(tok, "chat_template", None):
            raise ConfigError(f"--chat: the tokenizer of {pretrained} has no chat template; drop --chat (the prompt "
                              f"is then used as it is) or use a checkpoint whose tokenizer has one")
        prompts = [list(tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)) for t in texts]
    else:
        prompts = encode_cli_prompts(den, texts, args.prompt_format)
    start = time.perf_counter()
    out = generate(den, prompts, config, trace=args.animate or bool(args.trace_json), progress=interactive())
    elapsed = time.perf_counter() - start
    if args.animate:
        _animate(out.trace, tok, args.delay, len(prompts))
    for text, gen in zip(texts, out.generated):
        print(f"{text} -> {tok.decode(gen, skip_special_tokens=False)}")
    n_tokens = sum(len(g) for g in out.generated)  # up to the first EOS: what the user gets
    print(f"[{config.sampler}] {out.nfe} forward passes, {n_tokens} tokens in {elapsed:.2f}s "
          f"({n_tokens / max(elapsed, 1e-9):.1f} tokens/s)")
    if args.trace_json:
        with open(args.trace_json, "w") as fh:
            json.dump(out.trace.to_dict(), fh)
    return 0


def encode_cli_prompts(den: Any, texts: list[str], prompt_format: str = "auto") -> list[list[int]]:
    """The prompts' ids as lm-eval encodes them for this checkpoint (one builder: `emdm_core.prompts.prompt_ids`,
    following the checkpoint's recorded recipe), so both entry points give the same text."""
    from emdm_core.prompts import prompt_ids, training_prompts

    recorded = training_prompts(*den.recipe_dirs)
    fmt = "bos" if prompt_format == "raw" else prompt_format
    return [prompt_ids(den.tokenizer, t, fmt, recorded, add_bos=prompt_format != "raw") for t in texts]


def _animate(trace, tok, delay: float, rows: int) -> None:
    """Redraw each row's text after every step: masks as `_`, the tokens revealed this step in brackets."""
    frames = [trace.frames(r, lambda t: tok.decode([t]), mark_revealed=True)[1:] for r in range(rows)]
    for i in range(len(trace.steps)):
        sys.stdout.write("\x1b[2J\x1b[H" if sys.stdout.isatty() else "")
        sys.stdout.write(f"step {i + 1}/{len(trace.steps)}\n" + "\n".join(f[i] for f in frames) + "\n")
        sys.stdout.flush()
        time.sleep(delay if sys.stdout.isatty() else 0)


if __name__ == "__main__":
    sys.exit(main())
