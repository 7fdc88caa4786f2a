"""lm-eval model benchmark: `EMDMLM` request throughput per batch size, and whether the answers move with it.

    python benchmarks/bench_eval.py                                   # tiny BERT built on the fly, CPU
    python benchmarks/bench_eval.py --pretrained DIR --device cuda --batch-sizes 1 8 32 --requests 64

For `generate_until` (sampled, temperature 1) and `loglikelihood` (MC ELBO) it prints a Markdown table: wall time,
forward passes, generated tokens/s (prompt excluded) or scored requests/s, and whether the outputs equal those of
the first batch size (they should: every request draws from its own seed).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrained", help="checkpoint directory (default: a tiny BERT built in a temp dir)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sampler", default="margin")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--gen-length", type=int, default=16)
    ap.add_argument("--mc-num", type=int, default=32)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--trust-remote-code", action="store_true")
    args = ap.parse_args()

    from lm_eval.api.instance import Instance

    from emdm_eval.model import EMDMLM
    from emdm_models.tiny import DEMO_CORPUS, build_tiny_checkpoint

    path = args.pretrained or str(build_tiny_checkpoint(tempfile.mkdtemp() + "/bert", "bert"))
    lm = EMDMLM(pretrained=path, device=args.device, sampler=args.sampler, steps=args.steps, mc_num=args.mc_num,
                trust_remote_code=args.trust_remote_code, seed=0)
    prompts = [DEMO_CORPUS[i % len(DEMO_CORPUS)].rsplit(" ", 2)[0] for i in range(args.requests)]
    gen = [Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": args.gen_length, "do_sample": True,
                                                "temperature": 1.0}), 0, ("bench", i, 1))
           for i, p in enumerate(prompts)]
    ll = [Instance("loglikelihood", {}, (p, " " + s.rsplit(" ", 2)[1]), 0, ("bench", i, 1))
          for i, (p, s) in enumerate(zip(prompts, [DEMO_CORPUS[i % len(DEMO_CORPUS)] for i in range(len(prompts))]))]

    print(f"model {path} on {lm.device}, sampler {args.sampler}, steps {args.steps}, gen_length {args.gen_length}, "
          f"mc_num {args.mc_num}, {args.requests} requests\n")
    print("| request type | batch size | wall s | forward passes | throughput | same as first |")
    print("|---|---:|---:|---:|---:|---|")
    first: dict[str, list] = {}
    for kind, reqs in (("generate_until", gen), ("loglikelihood", ll)):
        for bs in args.batch_sizes:
            lm.batch_size = bs
            passes = lm.denoiser.forward_calls
            sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
            sync()
            t0 = time.perf_counter()
            out = getattr(lm, kind)(reqs, disable_tqdm=True)
            sync()
            wall = time.perf_counter() - t0
            n_pass = lm.denoiser.forward_calls - passes
            if kind == "generate_until":
                toks = sum(len(lm.tok_encode(o, add_special_tokens=False)) for o in out)
                rate = f"{toks / wall:.1f} tok/s"
            else:
                rate = f"{len(reqs) / wall:.1f} req/s"
            same = first.setdefault(kind, out) == out
            print(f"| {kind} | {bs} | {wall:.2f} | {n_pass} | {rate} | {same} |")


if __name__ == "__main__":
    main()
